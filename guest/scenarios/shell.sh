# An interactive shell on the console; leaving it powers the guest off.
echo "Stratovisor test guest: busybox shell. 'poweroff' or exit to stop the VM."
export PS1='stv# '
setsid cttyhack sh -i
