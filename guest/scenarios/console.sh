# virtio-console: write a marker carrying the token from stv.token= to /dev/hvc0 (not to the
# serial console); the host finds it in the console's sink (a file).
console_main() {
  token=$(stv_arg token) || token=none
  if ! stv_wait_for /dev/hvc0 10; then
    echo "@@stv:console-error:no /dev/hvc0: the guest found no virtio-console@@"
    return
  fi
  # A VMM that never consumes the queue would block the write: bound it.
  if timeout 30 sh -c "echo '@@stv:hvc:$token@@' > /dev/hvc0 && echo 'hello from the guest over virtio-console' > /dev/hvc0"; then
    echo "@@stv:console-written@@"
  else
    echo "@@stv:console-error:writing to /dev/hvc0 failed or timed out@@"
  fi
}
console_main
