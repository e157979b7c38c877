# The I/O benchmark (bench/io.ts): on /dev/vda, O_DIRECT sequential write and read of the first
# stv.io_mib MiB (1 MiB requests) and 4 KiB random reads at queue depth 1 for stv.rand_s seconds;
# then TCP over eth0 (stv.ip=, peer stv.peer=): stv.net_mib MiB guest→host to port 5201 and
# host→guest from port 5202. /bin/stvio (guest/tools/stvio.c) prints @@stv:io-*@@ markers; a
# part whose device is missing prints @@stv:io-error:...@@ and the others still run.
iobench_main() {
  mib=$(stv_arg io_mib) || mib=64
  secs=$(stv_arg rand_s) || secs=5
  netmib=$(stv_arg net_mib) || netmib=64
  addr=$(stv_arg ip) || addr=192.168.249.2/24
  peer=$(stv_arg peer) || peer=192.168.249.1
  if stv_wait_for /dev/vda 10; then
    timeout 300 stvio seqwrite /dev/vda "$mib" 1024 || echo "@@stv:io-error:seqwrite:failed or timed out@@"
    timeout 300 stvio seqread /dev/vda "$mib" 1024 || echo "@@stv:io-error:seqread:failed or timed out@@"
    timeout 300 stvio randread /dev/vda "$mib" "$secs" || echo "@@stv:io-error:randread:failed or timed out@@"
  else
    echo "@@stv:io-error:disk:no /dev/vda@@"
  fi
  if stv_wait_for /sys/class/net/eth0 10; then
    ip link set lo up
    ip link set eth0 up
    ip addr add "$addr" dev eth0
    echo "@@stv:net-up:$(cat /sys/class/net/eth0/address)@@"
    timeout 300 stvio tcpsend "$peer" 5201 "$netmib" || echo "@@stv:io-error:tcpsend:failed or timed out@@"
    timeout 300 stvio tcprecv "$peer" 5202 || echo "@@stv:io-error:tcprecv:failed or timed out@@"
  else
    echo "@@stv:io-error:net:no eth0@@"
  fi
  echo "@@stv:iobench-done@@"
}
iobench_main
