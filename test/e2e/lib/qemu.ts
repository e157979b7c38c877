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

export function qemuArgs(b: QemuBoot): string[] {
  const cmdline = `console=ttyS0 quiet stv.scenario=${b.scenario}${b.extraCmdline ? ' ' + b.extraCmdline : ''}`;
  const machine = b.machine === 'microvm' ? 'microvm,rtc=on' : 'q35';
  return [
    '-accel', 'kvm', '-M', machine, '-cpu', 'host', '-smp', String(b.cpus), '-m', `${b.memMiB}M`,
    '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
    '-serial', 'stdio', '-kernel', b.kernel, '-initrd', b.initramfs, '-append', cmdline,
  ];
}
