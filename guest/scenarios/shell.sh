# An interactive shell on the console; leaving it powers the guest off.
# Our /init is a script, not a real init: poweroff/reboot must act directly (-f).
echo "Stratovisor test guest: busybox shell. 'poweroff' or exit to stop the VM."
cat > /etc/profile <<'PROFILE'
export PS1='stv# '
poweroff() { sync; echo "@@stv:poweroff@@"; command poweroff -f; }
reboot() { sync; command reboot -f; }
halt() { sync; command poweroff -f; }
PROFILE
ENV=/etc/profile setsid cttyhack sh -i
