// QEMU command lines for the reference runs (tests and `npm run bench`).
export interface QemuBoot {
  machine: 'microvm' | 'q35';
  kernel: string;
  initramfs: string;
  cpus: number;
  memMiB: number;
  scenario: string;
  extraCmdline?: string;
}

/**
 * No `-no-reboot`: a guest reset reboots the guest, as it does under Stratovisor (a triple fault
 * resets the VM, as Cloud Hypervisor does). The sandbox's nested SVM sometimes triple-faults a
 * guest early in its boot under either VMM; with `-no-reboot` QEMU then exited 0 with an empty
 * console and failed a reference test that Stratovisor's own reboot would have survived.
 */
export function qemuArgs(b: QemuBoot): string[] {
  const cmdline = `console=ttyS0 quiet stv.scenario=${b.scenario}${b.extraCmdline ? ' ' + b.extraCmdline : ''}`;
  const machine = b.machine === 'microvm' ? 'microvm,rtc=on' : 'q35';
  return [
    '-accel', 'kvm', '-M', machine, '-cpu', 'host', '-smp', String(b.cpus), '-m', `${b.memMiB}M`,
    '-nodefaults', '-no-user-config', '-display', 'none',
    '-serial', 'stdio', '-kernel', b.kernel, '-initrd', b.initramfs, '-append', cmdline,
  ];
}
