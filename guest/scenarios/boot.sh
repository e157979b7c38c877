# Report what the guest sees, then power off.
echo "@@stv:cpus:$(grep -c ^processor /proc/cpuinfo)@@"
echo "@@stv:online:$(cat /sys/devices/system/cpu/online)@@"
echo "@@stv:memtotal-kb:$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)@@"
echo "@@stv:kernel:$(uname -r)@@"
echo "@@stv:cmdline:$(cat /proc/cmdline)@@"
