// Boot benchmark, run inside scripts/kvm-sandbox by `npm run bench`: each VMM boots the same
// kernel + initramfs (scenario "wait"), alternating VMMs run by run. Per run: ms from process
// start to the guest's init marker, ms to process exit (the guest powers off as soon as the VMM's
// memory has been sampled), and the VMM's memory excluding guest RAM at that point: RSS, PSS and
// private (USS), see vmm-memory.ts, with each thread's CPU time so far (/proc/PID/task/*/stat).
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { guestImages, runGuest, explain, REPO } from '../test/e2e/lib/guest.js';
import { qemuArgs } from '../test/e2e/lib/qemu.js';
import { STRATOVISOR } from '../test/e2e/lib/stratovisor.js';
import { vmmMemory, threadCpu, type ThreadCpu } from './vmm-memory.js';
import { median, fmt, ratio, table } from './stats.js';

const MEM_MIB = 512;
const CPUS = 2;

interface Vmm {
  name: string;
  argv: (kernel: string, initramfs: string) => [string, string[]];
  available: () => string | null;
  env?: NodeJS.ProcessEnv;
  /** Run only when STV_BENCH_VMMS names it. */
  optIn?: boolean;
}

const cmdline = 'console=ttyS0 quiet stv.scenario=wait';
const stratovisorMain = STRATOVISOR;

export const VMMS: Vmm[] = [
  {
    name: 'qemu-microvm',
    argv: (k, i) => ['qemu-system-x86_64', qemuArgs({ machine: 'microvm', kernel: k, initramfs: i, cpus: CPUS, memMiB: MEM_MIB, scenario: 'wait' })],
    available: () => (existsSync('/usr/bin/qemu-system-x86_64') ? null : 'qemu-system-x86_64 not installed'),
  },
  {
    name: 'qemu-q35',
    argv: (k, i) => ['qemu-system-x86_64', qemuArgs({ machine: 'q35', kernel: k, initramfs: i, cpus: CPUS, memMiB: MEM_MIB, scenario: 'wait' })],
    available: () => (existsSync('/usr/bin/qemu-system-x86_64') ? null : 'qemu-system-x86_64 not installed'),
  },
  {
    name: 'stratovisor',
    argv: (k, i) => [process.execPath, [stratovisorMain, '--kernel', k, '--initramfs', i, '--cmdline', cmdline,
      '--cpus', `boot=${CPUS}`, '--memory', `size=${MEM_MIB}M`, '--serial', 'tty', '--console', 'off']],
    available: () => (existsSync(stratovisorMain) ? null : `${stratovisorMain} not built`),
  },
  // For measuring the worker young-generation cap (src/vmm/thread_options.ts): V8's default.
  {
    name: 'stratovisor-young-default',
    argv: (k, i) => VMMS.find((v) => v.name === 'stratovisor')!.argv(k, i),
    available: () => (existsSync(stratovisorMain) ? null : `${stratovisorMain} not built`),
    env: { ...process.env, STV_WORKER_YOUNG_MB: '0' },
    optIn: true,
  },
];

export interface BootSample { initMs: number; exitMs: number; rssMiB: number; pssMiB: number; ussMiB: number; threads: ThreadCpu[]; ok: boolean }

export async function bootOnce(vmm: Vmm, kernel: string, initramfs: string, run: number): Promise<BootSample> {
  const [cmd, args] = vmm.argv(kernel, initramfs);
  let mem = { rssMiB: NaN, pssMiB: NaN, ussMiB: NaN };
  let threads: ThreadCpu[] = [];
  const r = await runGuest(cmd, args, {
    name: `bench-${vmm.name}-${run}`,
    ...(vmm.env ? { env: vmm.env } : {}),
    timeoutMs: 180_000,
    onMarker: (m, ctl) => {
      if (m.event === 'waiting') {
        if (ctl.pid !== undefined) {
          mem = vmmMemory(ctl.pid, MEM_MIB * 1024 * 1024);
          threads = threadCpu(ctl.pid);
        }
        ctl.send('\n');
      }
    },
  });
  const init = r.markers.find((m) => m.event === 'init');
  const ok = !!init && r.exitCode === 0 && r.markers.some((m) => m.event === 'poweroff');
  if (!ok) process.stderr.write(`bench: ${vmm.name} run ${run} failed: ${explain(r, 10)}\n`);
  return { initMs: init?.atMs ?? NaN, exitMs: ok ? r.exitMs : NaN, ...mem, threads, ok };
}

export async function main(): Promise<void> {
  const runs = Number(process.env.STV_BENCH_RUNS ?? 5);
  const wanted = (process.env.STV_BENCH_VMMS ?? VMMS.filter((v) => !v.optIn).map((v) => v.name).join(',')).split(',');
  const img = guestImages();
  const vmms = VMMS.filter((v) => wanted.includes(v.name)).filter((v) => {
    const why = v.available();
    if (why) process.stderr.write(`bench: skipping ${v.name}: ${why}\n`);
    return !why;
  });
  const samples = new Map<string, BootSample[]>(vmms.map((v) => [v.name, []]));
  for (let i = 0; i < runs; i++) {
    for (const v of vmms) {
      const s = await bootOnce(v, img.bzImage, img.initramfs, i);
      samples.get(v.name)!.push(s);
      process.stderr.write(`bench: run ${i + 1}/${runs} ${v.name}: init ${fmt(s.initMs)} ms, exit ${fmt(s.exitMs)} ms, rss ${fmt(s.rssMiB, 1)} pss ${fmt(s.pssMiB, 1)} uss ${fmt(s.ussMiB, 1)} MiB; CPU by thread at init ${threadSummary(s.threads)}\n`);
    }
  }
  const med = (name: string, k: keyof BootSample) => median((samples.get(name) ?? []).filter((s) => s.ok).map((s) => s[k] as number));
  const ref = 'qemu-microvm';
  const rows = vmms.map((v) => {
    const ok = samples.get(v.name)!.filter((s) => s.ok).length;
    return [v.name, `${ok}/${runs}`, fmt(med(v.name, 'initMs')), ratio(med(v.name, 'initMs'), med(ref, 'initMs')),
      fmt(med(v.name, 'exitMs')), ratio(med(v.name, 'exitMs'), med(ref, 'exitMs')),
      ...(['rssMiB', 'pssMiB', 'ussMiB'] as const).flatMap((k) => [fmt(med(v.name, k), 1), ratio(med(v.name, k), med(ref, k))])];
  });
  const out = table(['boot (bzImage, 2 vCPU, 512 MiB)', 'ok', 'init ms', 'vs microvm', 'exit ms', 'vs microvm',
    'RSS MiB', 'vs microvm', 'PSS MiB', 'vs microvm', 'USS MiB', 'vs microvm'], rows);
  console.log(`\n${out}\n(medians of ${runs} runs inside the KVM sandbox; memory excludes guest RAM, sampled at the guest's init)`);
  const dir = join(REPO, '.cache', 'bench');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'boot.json'), JSON.stringify(Object.fromEntries(samples), null, 2));
}

/** "comm+N:ms" per thread with >= 20 ms of CPU (N: tid - pid, so the main thread is +0), in tid order. */
function threadSummary(ts: ThreadCpu[]): string {
  const pid = ts.length ? Math.min(...ts.map((t) => t.tid)) : 0;
  const busy = ts.filter((t) => t.cpuMs >= 20).map((t) => `${t.comm}+${t.tid - pid}:${t.cpuMs}`);
  return `${ts.reduce((a, t) => a + t.cpuMs, 0)} ms in ${ts.length} threads (${busy.join(' ')})`;
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.stack : e);
  process.exitCode = 1;
});
