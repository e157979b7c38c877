// Stratovisor command lines for e2e tests and benchmarks.
import { join } from 'node:path';
import { REPO } from './guest.js';

/** The VMM as it runs: the CLI bundled by `npm run build` (scripts/lib/bundle.mjs), its threads bundled too. */
export const STRATOVISOR = join(REPO, 'dist', 'bundle', 'main.cjs');

export interface StvBoot {
  kernel: string;
  initramfs: string;
  cpus: number;
  memMiB: number;
  scenario: string;
  extraCmdline?: string;
  extraArgs?: string[];
}

export function stratovisorArgs(b: StvBoot): string[] {
  const cmdline = `console=ttyS0 quiet stv.scenario=${b.scenario}${b.extraCmdline ? ' ' + b.extraCmdline : ''}`;
  return [
    STRATOVISOR, '--kernel', b.kernel, '--initramfs', b.initramfs, '--cmdline', cmdline,
    '--cpus', `boot=${b.cpus}`, '--memory', `size=${b.memMiB}M`, '--serial', 'tty', '--console', 'off',
    ...(b.extraArgs ?? []),
    ...(b.extraArgs?.some((a) => a === '--seccomp' || a === '--landlock') ? [] : confineArgs()),
  ];
}

/** Extra confinement flags from STV_VMM_CONFINE (e.g. "--seccomp strict --landlock"); none by default. */
export function confineArgs(): string[] {
  return (process.env.STV_VMM_CONFINE ?? '').split(/\s+/).filter((a) => a !== '');
}
