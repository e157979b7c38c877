# A serial sink nobody reads: print stv.flood_lines= lines of 129 bytes (default 1536, ~200 KiB)
# to the serial console (ttyS0), then report on the virtio console (hvc0, a file the host reads)
# that the guest is still running, and power off.
flood_main() {
  stv_wait_for /dev/hvc0 10 || true
  echo "@@stv:flood-start@@" > /dev/hvc0
  i=0
  n=$(stv_arg flood_lines) || n=1536
  line=$(printf '%0128d' 0)
  # Each byte is a port write (more than a few ten KiB is slow under TCG): the host side makes
  # its pipe and the VMM's sink buffer small so that a little output overruns both.
  while [ "$i" -lt "$n" ]; do
    echo "$line"
    i=$((i + 1))
  done
  echo "@@stv:flood-done:$i@@" > /dev/hvc0
}
flood_main
