# virtio-net over a host tap: eth0 gets stv.ip= (default 192.168.249.2/24); the guest fetches
# http://PEER:PORT/blob (stv.peer=, stv.port=; the test's HTTP server on the tap's host side) and
# reports its sha256, then serves a 3 MiB file it generated with busybox httpd on port 80,
# reports that file's sha256, and polls http://PEER:PORT/done until the host has fetched it and
# answers with its verdict. Every wait is bounded and ends in a marker.
# busybox 1.35's `wget -T` segfaults: each wget is bounded with `timeout` instead.
net_main() {
  addr=$(stv_arg ip) || addr=192.168.249.2/24
  peer=$(stv_arg peer) || peer=192.168.249.1
  port=$(stv_arg port) || port=8080
  if ! stv_wait_for /sys/class/net/eth0 10; then
    echo "@@stv:net-error:no eth0: the guest found no virtio-net device@@"
    return
  fi
  ip link set lo up
  ip link set eth0 up || { echo "@@stv:net-error:ip link set eth0 up failed@@"; return; }
  ip addr add "$addr" dev eth0 || { echo "@@stv:net-error:ip addr add $addr dev eth0 failed@@"; return; }
  echo "@@stv:net-up:$(cat /sys/class/net/eth0/address)@@"
  # Queue pairs in use (virtio-net MQ: the driver sets as many as CPUs, up to the device's maximum).
  echo "@@stv:net-queues:$(ls -d /sys/class/net/eth0/queues/rx-* | wc -l)@@"

  n=0
  while :; do
    rm -f /tmp/hostblob
    timeout 30 wget -q -O /tmp/hostblob "http://$peer:$port/blob" 2>/dev/null && break
    n=$((n + 1))
    if [ "$n" -ge 60 ]; then
      echo "@@stv:net-error:fetching http://$peer:$port/blob failed $n times@@"
      return
    fi
    sleep 1
  done
  echo "@@stv:net-fetched:$(sha256sum < /tmp/hostblob | cut -d ' ' -f 1):$(wc -c < /tmp/hostblob)@@"

  mkdir -p /www
  dd if=/dev/urandom of=/www/blob bs=1024 count=3072 2>/dev/null
  if ! httpd -p 80 -h /www; then
    echo "@@stv:net-error:busybox httpd did not start@@"
    return
  fi
  echo "@@stv:net-serving:$(sha256sum < /www/blob | cut -d ' ' -f 1):$(wc -c < /www/blob)@@"

  n=0
  verdict=timeout
  while [ "$n" -lt 180 ]; do
    if timeout 10 wget -q -O /tmp/done "http://$peer:$port/done" 2>/dev/null; then
      verdict=$(cat /tmp/done)
      break
    fi
    n=$((n + 1))
    sleep 1
  done
  echo "@@stv:net-host-done:$verdict@@"
}
net_main
