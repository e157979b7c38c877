# Durability of a guest flush: write the nonce from stv.nonce= (hex, no spaces) to sector 2048
# of the raw disk /dev/vda, fsync it (blkdev_fsync: writes back, then a cache FLUSH request) and
# sync, and report the disk's flush requests before and after (/sys/block/vda/stat fields 16-17,
# Documentation/block/stat.rst). The host SIGKILLs the VMM the moment it sees durable-synced and
# then looks for the nonce in the image.
durable_main() {
  if ! stv_wait_for /dev/vda 10; then
    echo "@@stv:durable-error:no /dev/vda@@"
    return
  fi
  nonce=$(stv_arg nonce) || { echo "@@stv:durable-error:no stv.nonce= on the command line@@"; return; }
  before=$(awk '{print $16}' /sys/block/vda/stat)
  if ! printf 'STV-NONCE:%s\n' "$nonce" | dd of=/dev/vda bs=512 seek=2048 conv=sync,fsync 2>/tmp/dd.err; then
    echo "@@stv:durable-error:dd to /dev/vda failed: $(tail -n 1 /tmp/dd.err)@@"
    return
  fi
  sync
  after=$(awk '{print $16}' /sys/block/vda/stat)
  echo "@@stv:durable-flushes:${before:-none}:${after:-none}@@"
  echo "@@stv:durable-synced@@"
  # Stay up: the host kills the VMM now.
  sleep 600
}
durable_main
