# virtio-blk, read-write: mount the ext4 disk /dev/vda the host made (scripts/lib/images.mjs
# makeExt4Image), report the sha256 of the host's files, write guest.txt (a fixed line plus the
# kernel release) and guest.bin (2 MiB of random bytes, its sha256 reported), sync, unmount. The
# host then reads both back from the image with debugfs and checks the file system with e2fsck.
blk_main() {
  if ! stv_wait_for /dev/vda 10; then
    echo "@@stv:blk-error:no /dev/vda: the guest found no virtio-blk disk@@"
    return
  fi
  echo "@@stv:blk-sectors:$(cat /sys/block/vda/size)@@"
  echo "@@stv:blk-ro:$(cat /sys/block/vda/ro)@@"
  echo "@@stv:blk-queues:$(ls /sys/block/vda/mq | wc -l)@@"
  if ! mount -t ext4 /dev/vda /mnt 2>/tmp/mount.err; then
    echo "@@stv:blk-error:mount -t ext4 /dev/vda failed: $(head -n 1 /tmp/mount.err)@@"
    return
  fi
  for f in host.txt host.bin; do
    if [ -f "/mnt/$f" ]; then
      echo "@@stv:blk-read:$f:$(sha256sum < "/mnt/$f" | cut -d ' ' -f 1)@@"
    else
      echo "@@stv:blk-error:/mnt/$f is missing@@"
    fi
  done
  echo "@@stv:kernel:$(uname -r)@@"
  echo "stratovisor guest wrote this on $(uname -r)" > /mnt/guest.txt || echo "@@stv:blk-error:writing guest.txt failed@@"
  if dd if=/dev/urandom of=/mnt/guest.bin bs=1024 count=2048 2>/dev/null; then
    echo "@@stv:blk-wrote:guest.bin:$(sha256sum < /mnt/guest.bin | cut -d ' ' -f 1)@@"
  else
    echo "@@stv:blk-error:writing guest.bin failed@@"
  fi
  sync
  if umount /mnt 2>/tmp/umount.err; then
    echo "@@stv:blk-done@@"
  else
    echo "@@stv:blk-error:umount failed: $(head -n 1 /tmp/umount.err)@@"
  fi
}
blk_main
