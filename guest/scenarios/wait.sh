# Stay up until a line arrives on the console (or 30 s pass), then power off.
# The benchmark samples the VMM's memory while the guest waits here.
echo "@@stv:waiting@@"
read -t 30 _line
