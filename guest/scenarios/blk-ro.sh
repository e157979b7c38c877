# virtio-blk, read-only disk: the guest sees /dev/vda read-only, mounts it read-only and reads the
# host's file; writing to the device and writing through a read-write mount both fail. Each
# outcome is a marker; the host checks the image is byte-for-byte unchanged afterwards.
blk_ro_main() {
  if ! stv_wait_for /dev/vda 10; then
    echo "@@stv:blk-error:no /dev/vda: the guest found no virtio-blk disk@@"
    return
  fi
  echo "@@stv:blk-ro:$(cat /sys/block/vda/ro)@@"
  if mount -t ext4 -o ro /dev/vda /mnt 2>/tmp/mount.err; then
    echo "@@stv:blk-read:host.txt:$(sha256sum < /mnt/host.txt | cut -d ' ' -f 1)@@"
    umount /mnt
  else
    echo "@@stv:blk-error:mount -o ro /dev/vda failed: $(head -n 1 /tmp/mount.err)@@"
  fi
  # A raw write to the device (4 KiB at 400 KiB, O_DIRECT so it cannot linger in the page cache).
  if dd if=/dev/zero of=/dev/vda bs=4096 count=1 seek=100 oflag=direct conv=notrunc,fsync 2>/tmp/dd.err; then
    echo "@@stv:blk-ro-raw-write:succeeded@@"
  else
    echo "@@stv:blk-ro-raw-write:failed:$(grep -v records /tmp/dd.err | head -n 1)@@"
  fi
  # A read-write mount: the kernel refuses it (busybox mount may then fall back to read-only), and
  # a file cannot be created either way.
  if mount -t ext4 -o rw /dev/vda /mnt 2>/tmp/mount.err; then
    opts=$(awk '$2 == "/mnt" { print $4 }' /proc/mounts)
    echo "@@stv:blk-ro-rw-mount:mounted:${opts%%,*}@@"
    if echo "guest write" > /mnt/guest.txt 2>/dev/null && sync; then
      echo "@@stv:blk-ro-fs-write:succeeded@@"
    else
      echo "@@stv:blk-ro-fs-write:failed@@"
    fi
    umount /mnt
  else
    echo "@@stv:blk-ro-rw-mount:failed:$(head -n 1 /tmp/mount.err)@@"
    echo "@@stv:blk-ro-fs-write:failed@@"
  fi
  echo "@@stv:blk-done@@"
}
blk_ro_main
