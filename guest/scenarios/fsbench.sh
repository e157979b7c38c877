# The virtio-fs benchmark (bench/fs.ts): mount tag myfs (virtiofsd, cache=none), then with
# /bin/stvio an O_DIRECT sequential write of stv.fs_mib MiB to /mnt/bench.bin in 1 MiB requests
# (fdatasync included) and a sequential read of it back; @@stv:io-seqwrite/seqread:MB/s@@.
fsbench_main() {
  mib=$(stv_arg fs_mib) || mib=64
  if ! mount -t virtiofs myfs /mnt 2>/tmp/mount.err; then
    echo "@@stv:io-error:mount:$(head -n 1 /tmp/mount.err)@@"
    return
  fi
  : > /mnt/bench.bin
  timeout 300 stvio seqwrite /mnt/bench.bin "$mib" 1024 || echo "@@stv:io-error:seqwrite:failed or timed out@@"
  timeout 300 stvio seqread /mnt/bench.bin "$mib" 1024 || echo "@@stv:io-error:seqread:failed or timed out@@"
  rm -f /mnt/bench.bin
  umount /mnt || echo "@@stv:io-error:umount failed@@"
  echo "@@stv:fsbench-done@@"
}
fsbench_main
