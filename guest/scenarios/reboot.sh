# Reboot through the platform; the VMM should boot the guest again (it prints @@stv:init@@ twice).
echo "@@stv:rebooting@@"
sync
reboot -f
sleep 5
echo "@@stv:reboot-failed@@"
