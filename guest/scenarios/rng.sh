# virtio-rng: the hw_random core picks the virtio device; 4 KiB read from /dev/hwrng arrive and
# are not all zero. Reports: rng-current (e.g. virtio_rng.0) and rng-read:BYTES:NONZERO:DISTINCT
# (how many of the 256 byte values occur; ~256 for random data).
rng_main() {
  if ! stv_wait_for /dev/hwrng 10; then
    echo "@@stv:rng-error:no /dev/hwrng@@"
    return
  fi
  # /dev/hwrng exists as soon as the hw_random core does; a device registers with it on probe.
  i=0
  while [ "$(cat /sys/class/misc/hw_random/rng_current 2>/dev/null)" = none ] && [ "$i" -lt 10 ]; do
    sleep 1
    i=$((i + 1))
  done
  current=$(cat /sys/class/misc/hw_random/rng_current 2>/dev/null)
  echo "@@stv:rng-current:$current@@"
  echo "@@stv:rng-available:$(cat /sys/class/misc/hw_random/rng_available 2>/dev/null)@@"
  if [ "$current" = none ]; then
    echo "@@stv:rng-error:no hw_random device (rng_current is none): the guest found no virtio-rng@@"
    return
  fi
  if ! timeout 60 dd if=/dev/hwrng of=/tmp/rng bs=4096 count=1 iflag=fullblock 2>/tmp/dd.err; then
    echo "@@stv:rng-error:reading /dev/hwrng failed or timed out: $(grep -v records /tmp/dd.err | head -n 1)@@"
  fi
  bytes=$(wc -c < /tmp/rng)
  nonzero=$(tr -d '\000' < /tmp/rng | wc -c)
  distinct=$(od -An -v -tx1 /tmp/rng | tr -s ' ' '\n' | grep . | sort -u | wc -l)
  echo "@@stv:rng-read:$bytes:$nonzero:$distinct@@"
}
rng_main
