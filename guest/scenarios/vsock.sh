# virtio-vsock (Stratovisor's hybrid Unix-socket backend on the host): the guest serves port 1234
# (stvsock serve: read to EOF, answer with as many bytes of its own, report both SHA-256s) for the
# host's `CONNECT 1234` clients, connects to the host's port stv.vsockport= (default 5678) sending
# stv.vsockbytes= bytes (default 16 MiB) and reports what it sent and got back, and ends when the
# host has made one connection to port 1235 (its "done"). Every wait is bounded.
vsock_main() {
  bytes=$(stv_arg vsockbytes) || bytes=16777216
  hostport=$(stv_arg vsockport) || hostport=5678
  stvsock serve 1234 &
  server=$!
  stvsock serve 1235 1 &
  finish=$!
  timeout 300 stvsock connect 2 "$hostport" "$bytes" || echo "@@stv:vsock-error:stvsock connect 2 $hostport exited $?@@"
  n=0
  while kill -0 "$finish" 2>/dev/null; do
    if [ "$n" -ge 400 ]; then
      echo "@@stv:vsock-error:the host never connected to port 1235@@"
      kill "$finish" 2>/dev/null
      break
    fi
    sleep 1
    n=$((n + 1))
  done
  kill "$server" 2>/dev/null
  echo "@@stv:vsock-done@@"
}
vsock_main
