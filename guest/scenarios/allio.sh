# Every virtio device at once, under load (issue 15's acceptance; test/e2e/allio.test.ts): in
# parallel, virtio-blk reads the host's first 32 MiB of the raw disk /dev/vda and writes 16 MiB of
# its own behind them (read back after dropping the page cache); virtio-net fetches the host's
# blob over HTTP and serves one of its own with busybox httpd; virtio-console carries 256 KiB as
# hex between HVCBEGIN/HVCEND lines on /dev/hvc0; virtio-rng yields 256 KiB from /dev/hwrng;
# virtio-vsock serves one host CONNECT on port 1234 (stvsock: read to EOF, answer as many bytes).
# Each stream reports its sha256; every wait is bounded and ends in a marker.
allio_blk() {
  if ! stv_wait_for /dev/vda 10; then echo "@@stv:allio-error:no /dev/vda@@"; return; fi
  echo "@@stv:allio-blk-read:$(dd if=/dev/vda bs=1M count=32 2>/dev/null | sha256sum | cut -d ' ' -f 1)@@"
  dd if=/dev/urandom of=/tmp/blk.w bs=1M count=16 2>/dev/null
  if ! dd if=/tmp/blk.w of=/dev/vda bs=1M seek=32 conv=fsync 2>/tmp/blk.err; then
    echo "@@stv:allio-error:writing /dev/vda failed: $(grep -v records /tmp/blk.err | head -n 1)@@"
    return
  fi
  sync
  echo 3 > /proc/sys/vm/drop_caches
  back=$(dd if=/dev/vda bs=1M skip=32 count=16 2>/dev/null | sha256sum | cut -d ' ' -f 1)
  echo "@@stv:allio-blk-wrote:$(sha256sum < /tmp/blk.w | cut -d ' ' -f 1):$back@@"
  rm -f /tmp/blk.w
}

allio_net() {
  addr=$(stv_arg ip) || addr=192.168.249.2/24
  peer=$(stv_arg peer) || peer=192.168.249.1
  port=$(stv_arg port) || port=8080
  if ! stv_wait_for /sys/class/net/eth0 10; then echo "@@stv:allio-error:no eth0@@"; return; fi
  ip link set lo up
  ip link set eth0 up && ip addr add "$addr" dev eth0 || { echo "@@stv:allio-error:eth0 setup failed@@"; return; }
  mkdir -p /www
  dd if=/dev/urandom of=/www/blob bs=1024 count=4096 2>/dev/null
  httpd -p 80 -h /www || { echo "@@stv:allio-error:busybox httpd did not start@@"; return; }
  echo "@@stv:allio-net-serving:$(sha256sum < /www/blob | cut -d ' ' -f 1):$(wc -c < /www/blob)@@"
  n=0
  while :; do
    rm -f /tmp/hostblob
    timeout 60 wget -q -O /tmp/hostblob "http://$peer:$port/blob" 2>/dev/null && break
    n=$((n + 1))
    if [ "$n" -ge 60 ]; then echo "@@stv:allio-error:fetching http://$peer:$port/blob failed $n times@@"; return; fi
    sleep 1
  done
  echo "@@stv:allio-net-fetched:$(sha256sum < /tmp/hostblob | cut -d ' ' -f 1):$(wc -c < /tmp/hostblob)@@"
  rm -f /tmp/hostblob
  # Stay up until the host has fetched ours (it asks for /done when it has).
  n=0
  while [ ! -f /www/done-seen ] && [ "$n" -lt 300 ]; do
    timeout 10 wget -q -O /www/done-seen "http://$peer:$port/done" 2>/dev/null || rm -f /www/done-seen
    n=$((n + 1))
    [ -f /www/done-seen ] || sleep 1
  done
  echo "@@stv:allio-net-host-done:$(cat /www/done-seen 2>/dev/null || echo timeout)@@"
}

allio_console() {
  if ! stv_wait_for /dev/hvc0 10; then echo "@@stv:allio-error:no /dev/hvc0@@"; return; fi
  dd if=/dev/urandom of=/tmp/con bs=1024 count=256 2>/dev/null
  od -An -v -tx1 /tmp/con | tr -d ' \n' > /tmp/con.hex
  if timeout 120 sh -c '{ echo HVCBEGIN; cat /tmp/con.hex; echo; echo HVCEND; } > /dev/hvc0'; then
    echo "@@stv:allio-console:$(sha256sum < /tmp/con.hex | cut -d ' ' -f 1):$(wc -c < /tmp/con.hex)@@"
  else
    echo "@@stv:allio-error:writing /dev/hvc0 failed or timed out@@"
  fi
  rm -f /tmp/con /tmp/con.hex
}

allio_rng() {
  if ! stv_wait_for /dev/hwrng 10; then echo "@@stv:allio-error:no /dev/hwrng@@"; return; fi
  if ! timeout 120 dd if=/dev/hwrng of=/tmp/rng bs=4096 count=64 iflag=fullblock 2>/dev/null; then
    echo "@@stv:allio-error:reading /dev/hwrng failed or timed out@@"
  fi
  distinct=$(od -An -v -tx1 /tmp/rng | tr -s ' ' '\n' | grep . | sort -u | wc -l)
  echo "@@stv:allio-rng:$(wc -c < /tmp/rng):$distinct:$(sha256sum < /tmp/rng | cut -d ' ' -f 1)@@"
  rm -f /tmp/rng
}

allio_vsock() {
  timeout 300 stvsock serve 1234 1 || echo "@@stv:allio-error:stvsock serve 1234 exited $?@@"
}

allio_main() {
  allio_vsock &
  v=$!
  allio_blk &
  b=$!
  allio_net &
  n=$!
  allio_console &
  c=$!
  allio_rng &
  r=$!
  wait "$b" "$n" "$c" "$r" "$v"
  echo "@@stv:allio-done@@"
}
allio_main
