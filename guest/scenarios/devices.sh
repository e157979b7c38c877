# List the PCI and virtio devices the guest found.
for d in /sys/bus/pci/devices/*; do
  [ -e "$d" ] && echo "@@stv:pci:$(basename "$d"):$(cat "$d/vendor"):$(cat "$d/device")@@"
done
for d in /sys/bus/virtio/devices/*; do
  [ -e "$d" ] && echo "@@stv:virtio:$(basename "$d"):$(cat "$d/device")@@"
done
echo "@@stv:devices-done@@"
