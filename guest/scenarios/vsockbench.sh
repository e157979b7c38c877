# virtio-vsock benchmark (bench/vsock.ts): the guest listens on port 1234 with `stvsock count`
# (read to EOF, answer as many zero bytes; no checksums, so the guest's CPU does not bound the
# figures) and ends once the host has made one connection to port 1235 (its "done"), or after
# 600 s.
vsockbench_main() {
  stvsock count 1234 &
  server=$!
  stvsock serve 1235 1 &
  finish=$!
  n=0
  while kill -0 "$finish" 2>/dev/null; do
    if [ "$n" -ge 600 ]; then
      echo "@@stv:vsock-error:the host never connected to port 1235@@"
      kill "$finish" 2>/dev/null
      break
    fi
    sleep 1
    n=$((n + 1))
  done
  kill "$server" 2>/dev/null
  echo "@@stv:vsockbench-done@@"
}
vsockbench_main
