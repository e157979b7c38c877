# PCI segments (--platform num_pci_segments=N, or the default one): list every PCI function (domain included)
# with its IDs, report each virtio disk's PCI address and the sha256 of its whole contents, bring
# up a virtio-net interface found on domain 0001 (if any) and ping the host side of its tap
# (stv.ip=, stv.peer=), and print the kernel's messages about MMCONFIG/ECAM, the host bridges
# and their resources for the test to check.
pciseg_main() {
  for d in /sys/bus/pci/devices/*; do
    [ -e "$d" ] && echo "@@stv:pci:$(basename "$d"):$(cat "$d/vendor"):$(cat "$d/device")@@"
  done
  # stv.disks=N (default 2): the disks to wait for.
  disks=$(stv_arg disks) || disks=2
  for n in a b c d; do
    [ "$disks" -gt 0 ] || break
    stv_wait_for "/dev/vd$n" 10 || echo "@@stv:pciseg-error:no /dev/vd$n@@"
    disks=$((disks - 1))
  done
  for b in /sys/block/vd*; do
    [ -e "$b" ] || continue
    n=$(basename "$b")
    addr=$(basename "$(dirname "$(readlink -f "$b/device")")")
    echo "@@stv:pciseg-disk:$addr:$n:$(sha256sum < "/dev/$n" | cut -d ' ' -f 1)@@"
  done
  for i in /sys/class/net/eth*; do
    [ -e "$i" ] || continue
    dev=$(basename "$i")
    addr=$(basename "$(dirname "$(readlink -f "$i/device")")")
    echo "@@stv:pciseg-net:$addr:$dev:$(cat "$i/address")@@"
    case "$addr" in
      0001:*)
        ip link set "$dev" up && ip addr add "$(stv_arg ip || echo 192.168.249.2/24)" dev "$dev"
        peer=$(stv_arg peer) || peer=192.168.249.1
        if ping -c 3 -W 10 "$peer" > /tmp/ping.out 2>&1; then
          echo "@@stv:pciseg-ping:ok@@"
        else
          echo "@@stv:pciseg-ping:failed:$(tail -n 1 /tmp/ping.out)@@"
        fi
        ;;
    esac
  done
  dmesg | grep -i -E 'mmconfig|ecam|_OSC|PNP0A08|PNP0C02|pci_bus 000|pci 000[01]:00:00|root bus|host bridge|system 00:|acpi.*pci' |
    while read -r line; do echo "@@stv:dmesg:$line@@"; done
  echo "@@stv:pciseg-done@@"
}
pciseg_main
