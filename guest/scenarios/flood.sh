# A serial sink nobody reads: print 200 KiB to the serial console (ttyS0), then report on the
# virtio console (hvc0, a file the host reads) that the guest is still running, and power off.
flood_main() {
  stv_wait_for /dev/hvc0 10 || true
  echo "@@stv:flood-start@@" > /dev/hvc0
  i=0
  line=$(printf '%0128d' 0)
  # 1536 lines of 129 bytes, about 200 KiB through the UART: three times what the pipe and the
  # VMM's sink buffer hold together (each byte is a port write: more would be slow under TCG).
  while [ "$i" -lt 1536 ]; do
    echo "$line"
    i=$((i + 1))
  done
  echo "@@stv:flood-done:$i@@" > /dev/hvc0
}
flood_main
