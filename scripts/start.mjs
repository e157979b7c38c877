#!/usr/bin/env node
// npm start: install what is needed, build, make the guest images if missing, and boot the
// default guest (Debian's kernel + the busybox initramfs) with its serial console in this
// terminal — through scripts/kvm-sandbox where this machine's /dev/kvm cannot run Linux.
// Env: STV_START_VMM=stratovisor|qemu (default stratovisor), STV_START_ARGS (extra VMM flags).
import { join } from 'node:path';
import { ensureGuestImages, REPO } from './lib/images.mjs';
import { ensureNodeModules, build, log } from './lib/setup.mjs';
import { runInSandbox } from './lib/sandbox.mjs';

const vmm = process.env.STV_START_VMM ?? 'stratovisor';
if (!['stratovisor', 'qemu'].includes(vmm)) {
  log(`STV_START_VMM must be 'stratovisor' or 'qemu', not '${vmm}'`);
  process.exit(2);
}
try {
  ensureNodeModules();
  if (!build()) process.exit(1);
  const img = ensureGuestImages({ log });
  const cmdline = 'console=ttyS0 quiet stv.scenario=shell';
  const extra = (process.env.STV_START_ARGS ?? '').split(' ').filter(Boolean);
  const argv = vmm === 'qemu'
    ? ['qemu-system-x86_64', '-accel', 'kvm', '-M', 'microvm,rtc=on', '-cpu', 'host', '-smp', '2', '-m', '512M',
      '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot', '-serial', 'stdio',
      '-kernel', img.bzImage, '-initrd', img.initramfs, '-append', cmdline, ...extra]
    : [process.execPath, join(REPO, 'dist', 'bundle', 'main.cjs'), '--kernel', img.bzImage, '--initramfs', img.initramfs,
      '--cmdline', cmdline, '--cpus', 'boot=2', '--memory', 'size=512M', '--serial', 'tty', '--console', 'off', ...extra];
  log(`booting the test guest with ${vmm} (${process.stdin.isTTY ? 'type poweroff to stop it' : 'no terminal: the shell exits at end of input'})`);
  process.exitCode = await runInSandbox(argv);
} catch (e) {
  log(e instanceof Error ? e.message : String(e));
  process.exitCode = 1;
}
