# virtio-fs (Cloud Hypervisor's test_virtio_fs): mount the host directory virtiofsd shares under
# the tag myfs, report the sha256 of the host's host.bin, write guest.bin (the token from
# stv.fs_token= on its first line, then 4 MiB of random bytes; its sha256 reported) for the host to
# check, unmount. With stv.fs_mode=kill: after the first read, report fs-idle and wait for a line
# on the console (the host kills virtiofsd meanwhile), then report what fs I/O does now
# (fs-after-kill:STATUS), that another device still works (the virtio-rng) and unmount. With
# stv.fs_mode=reboot: the first boot (no boot1.txt in the share yet) writes boot1.txt and reboots;
# the second boot (a new guest RAM, the same vhost-user connection) reads it back
# (fs-second-boot:CONTENT) and powers off.
virtiofs_main() {
  if ! mount -t virtiofs myfs /mnt 2>/tmp/mount.err; then
    echo "@@stv:fs-error:mount -t virtiofs myfs /mnt failed: $(head -n 1 /tmp/mount.err)@@"
    return
  fi
  echo "@@stv:fs-mounted@@"
  if [ -f /mnt/host.bin ]; then
    echo "@@stv:fs-read:host.bin:$(sha256sum < /mnt/host.bin | cut -d ' ' -f 1)@@"
  else
    echo "@@stv:fs-error:/mnt/host.bin is missing@@"
  fi
  if [ "$(stv_arg fs_mode)" = reboot ]; then
    if [ -f /mnt/boot1.txt ]; then
      echo "@@stv:fs-second-boot:$(cat /mnt/boot1.txt)@@"
      umount /mnt && echo "@@stv:fs-done@@"
      return
    fi
    echo "$(stv_arg fs_token)" > /mnt/boot1.txt
    umount /mnt
    echo "@@stv:fs-rebooting@@"
    reboot -f
    sleep 5
    echo "@@stv:fs-error:reboot failed@@"
    return
  fi
  if [ "$(stv_arg fs_mode)" = kill ]; then
    echo "@@stv:fs-idle@@"
    read -t 120 _line
    timeout 30 cat /mnt/host.txt > /tmp/after 2>/tmp/after.err
    echo "@@stv:fs-after-kill:$?:$(head -n 1 /tmp/after.err)@@"
    if timeout 30 dd if=/dev/hwrng of=/tmp/rng bs=64 count=1 iflag=fullblock 2>/dev/null; then
      echo "@@stv:fs-rng-after-kill:$(wc -c < /tmp/rng)@@"
    fi
    timeout 30 umount /mnt 2>/tmp/umount.err
    echo "@@stv:fs-umount-after-kill:$?@@"
    return
  fi
  token=$(stv_arg fs_token)
  { echo "$token"; dd if=/dev/urandom bs=1048576 count=4 2>/dev/null; } > /mnt/guest.bin || echo "@@stv:fs-error:writing guest.bin failed@@"
  echo "@@stv:fs-wrote:guest.bin:$(sha256sum < /mnt/guest.bin | cut -d ' ' -f 1)@@"
  sync
  if umount /mnt 2>/tmp/umount.err; then
    echo "@@stv:fs-done@@"
  else
    echo "@@stv:fs-error:umount failed: $(head -n 1 /tmp/umount.err)@@"
  fi
}
virtiofs_main
