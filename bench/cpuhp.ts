// CPU hotplug benchmark, run inside scripts/kvm-sandbox by `npm run bench` (STV_BENCH_ONLY=
// cpuhp): QEMU q35 (`-smp 1,sockets=4,maxcpus=4`, QMP device_add/device_del of host-x86_64-cpu)
// and Stratovisor (`--cpus boot=1,max=4`, vm.resize desired_vcpus), the same kernel and initramfs
// (scenario "shell"). Per run, each from the host's request to the guest shell's answer:
//   - add: three vCPUs plugged in until the guest has all three in sysfs (cpu1..cpu3);
//   - online: `echo 1 > cpuN/online` for the three (INIT/SIPI through the VMM, the guest's bring-up);
//   - remove: the three asked to go until the guest has ejected them (gone from sysfs).
// The guest polls sysfs every 50 ms in a shell loop that was already running when the request went out.
// Alternating VMMs run by run; medians of STV_BENCH_RUNS (default 3 here: each run boots).
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { guestImages, REPO } from '../test/e2e/lib/guest.js';
import { qemuArgs } from '../test/e2e/lib/qemu.js';
import { STRATOVISOR } from '../test/e2e/lib/stratovisor.js';
import { apiRequest } from '../src/cli/remote.js';
import { waitForPing } from '../src/api/testing/spawn_vmm.js';
import { median, fmt, ratio, table } from './stats.js';
import { Proc, Qmp } from './procs.js';

const QEMU = '/usr/bin/qemu-system-x86_64';
const MAX = 4;
const CPU = '/sys/devices/system/cpu';
const ADDED = [1, 2, 3];
const img = guestImages();

interface Sample {
  addMs: number; onlineMs: number; removeMs: number;
  /** Stratovisor only (its -v log): from the add request to the last new vCPU thread running, and to the online request. */
  threadsMs?: number; onlineAtMs?: number;
}

const allThere = ADDED.map((n) => `[ -e ${CPU}/cpu${n} ]`).join(' && ');
const allGone = ADDED.map((n) => `[ ! -e ${CPU}/cpu${n} ]`).join(' && ');

async function online(p: Proc): Promise<number> {
  const mark = p.out.length;
  const t = performance.now();
  p.child.stdin.write(`${ADDED.map((n) => `echo 1 > ${CPU}/cpu${n}/online`).join('; ')}; echo "ON $(cat ${CPU}/online) LINE"\n`);
  await p.waitFor(/ON \S+ LINE/, mark);
  const ms = performance.now() - t;
  const m = /ON (\S+) LINE/.exec(p.out.slice(mark));
  if (m?.[1] !== `0-${MAX - 1}`) throw new Error(`the guest's online CPUs after onlining: ${m?.[1]}`);
  return ms;
}

async function qemuRun(dir: string): Promise<Sample> {
  const qmpPath = join(dir, 'qmp.sock');
  const args = qemuArgs({ machine: 'q35', kernel: img.bzImage, initramfs: img.initramfs, cpus: 1, memMiB: 256, scenario: 'shell' });
  args[args.indexOf('-smp') + 1] = `1,sockets=${MAX},cores=1,threads=1,maxcpus=${MAX}`;
  const p = new Proc(QEMU, [...args, '-qmp', `unix:${qmpPath},server=on,wait=off`]);
  try {
    await p.waitFor(/stv# /, 0);
    const q = await Qmp.connect(qmpPath);
    try {
      const addMs = await p.timed(allThere, async () => {
        for (const n of ADDED) await q.cmd('device_add', { driver: 'host-x86_64-cpu', id: `cpu${n}`, 'socket-id': n, 'core-id': 0, 'thread-id': 0 });
      });
      const onlineMs = await online(p);
      const removeMs = await p.timed(allGone, async () => {
        for (const n of [...ADDED].reverse()) await q.cmd('device_del', { id: `cpu${n}` });
      });
      return { addMs, onlineMs, removeMs };
    } finally {
      q.close();
    }
  } finally {
    await p.kill();
  }
}

async function stratovisorRun(dir: string): Promise<Sample> {
  const sock = join(dir, 'api.sock');
  const p = new Proc(process.execPath, [STRATOVISOR, '--api-socket', `path=${sock}`, '--kernel', img.bzImage, '--initramfs', img.initramfs,
    '--cmdline', 'console=ttyS0 quiet stv.scenario=shell', '--cpus', `boot=1,max=${MAX}`, '--memory', 'size=256M', '--serial', 'tty', '--console', 'off', '-v']);
  // When each hot-added vCPU's thread starts running (its worker's 'started'), host time.
  const running = new Map<number, number>();
  let err = '';
  p.child.stderr.on('data', (b: Buffer) => {
    err += b.toString('latin1');
    for (let i; (i = err.indexOf('\n')) >= 0; err = err.slice(i + 1)) {
      const m = /vCPU (\d+) thread running/.exec(err.slice(0, i));
      if (m && Number(m[1]) > 0) running.set(Number(m[1]), performance.now());
    }
  });
  let addAt = NaN;
  const resize = async (n: number) => {
    const r = await apiRequest(sock, 'PUT', 'vm.resize', JSON.stringify({ desired_vcpus: n }));
    if (r.status !== 204) throw new Error(`vm.resize ${n}: ${r.status} ${r.text}`);
  };
  try {
    await waitForPing(sock, p.child);
    await p.waitFor(/stv# /, 0);
    const addMs = await p.timed(allThere, () => { addAt = performance.now(); return resize(MAX); });
    const onlineAt = performance.now();
    const onlineMs = await online(p);
    const threadsMs = running.size === ADDED.length ? Math.max(...running.values()) - addAt : NaN;
    const removeMs = await p.timed(allGone, () => resize(1));
    return { addMs, onlineMs, removeMs, threadsMs, onlineAtMs: onlineAt - addAt };
  } finally {
    await p.kill();
  }
}

async function main(): Promise<void> {
  const runs = Number(process.env.STV_BENCH_RUNS ?? 3);
  const vmms: Array<[string, (d: string) => Promise<Sample>]> = [['stratovisor', stratovisorRun]];
  if (existsSync(QEMU)) vmms.unshift(['qemu-q35', qemuRun]);
  else process.stderr.write(`bench: skipping qemu-q35: ${QEMU} not installed\n`);
  const results: Record<string, Sample[]> = {};
  for (let i = 0; i < runs; i++) {
    for (const [name, run] of vmms) {
      const dir = mkdtempSync(join(process.env.TMPDIR ?? tmpdir(), 'stv-bench-cpuhp-'));
      try {
        const s = await run(dir);
        (results[name] ??= []).push(s);
        process.stderr.write(`bench: cpuhp ${name} run ${i + 1}/${runs}: add ${fmt(s.addMs)} ms, online ${fmt(s.onlineMs)} ms, remove ${fmt(s.removeMs)} ms${s.threadsMs !== undefined ? ` (new vCPU threads all running ${fmt(s.threadsMs)} ms after the add request; online asked at ${fmt(s.onlineAtMs!)} ms)` : ''}\n`);
      } catch (e) {
        process.stderr.write(`bench: cpuhp ${name} run ${i + 1} failed: ${(e as Error).message}\n`);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    }
  }
  const med = (k: string, f: 'addMs' | 'onlineMs' | 'removeMs') => median((results[k] ?? []).map((s) => s[f]));
  const rows = vmms.map(([name]) => [name, `${(results[name] ?? []).length}/${runs}`,
    fmt(med(name, 'addMs')), ratio(med(name, 'addMs'), med('qemu-q35', 'addMs')),
    fmt(med(name, 'onlineMs')), ratio(med(name, 'onlineMs'), med('qemu-q35', 'onlineMs')),
    fmt(med(name, 'removeMs')), ratio(med(name, 'removeMs'), med('qemu-q35', 'removeMs'))]);
  console.log(`\n${table([`CPU hotplug (1 -> ${MAX} vCPUs, shell guest)`, 'ok', 'add 3 ms', 'vs QEMU', 'online 3 ms', 'vs QEMU', 'remove 3 ms', 'vs QEMU'], rows)}\n(medians inside the KVM sandbox; from the request to the guest's sysfs: QEMU q35 QMP device_add/device_del host-x86_64-cpu, Stratovisor vm.resize desired_vcpus)`);
  const out = join(REPO, '.cache', 'bench');
  mkdirSync(out, { recursive: true });
  writeFileSync(join(out, 'cpuhp.json'), JSON.stringify(results, null, 2));
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.stack : e);
  process.exitCode = 1;
});
