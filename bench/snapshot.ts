// Snapshot/restore benchmark, run inside scripts/kvm-sandbox by `npm run bench` (STV_BENCH_ONLY=
// snapshot): QEMU q35 and Stratovisor, the same kernel, initramfs (scenario "shell") and size,
// 2 vCPUs, guests of 512 MiB and 2 GiB (STV_BENCH_SNAP_MIB, comma list). Per run:
//   - boot to the shell prompt, then pause + snapshot: QEMU `stop` + `migrate exec:cat > file` (QMP; done
//     when query-migrate says completed), Stratovisor vm.pause + vm.snapshot; ms, and the bytes
//     the snapshot takes on disk (QEMU's stream file, Stratovisor's directory, sparse);
//   - the VMM killed (SIGKILL), then restore to running: a new process; ms from its spawn until
//     the restored guest's shell answers `echo` typed after the resume: QEMU `-incoming exec:cat file`
//     then `cont`; Stratovisor vm.restore (RAM mapped copy-on-write, the default, and
//     prefault=on, read in first) then vm.resume.
// Alternating VMMs run by run; medians of STV_BENCH_RUNS (default 3 here: each run boots).
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { guestImages, REPO } from '../test/e2e/lib/guest.js';
import { qemuArgs } from '../test/e2e/lib/qemu.js';
import { STRATOVISOR } from '../test/e2e/lib/stratovisor.js';
import { apiRequest } from '../src/cli/remote.js';
import { waitForPing } from '../src/api/testing/spawn_vmm.js';
import { median, fmt, ratio, table } from './stats.js';
import { Proc, Qmp } from './procs.js';

const QEMU = '/usr/bin/qemu-system-x86_64';
const CPUS = 2;
const img = guestImages();

function diskBytes(path: string): number {
  const st = statSync(path);
  if (!st.isDirectory()) return st.blocks * 512;
  return readdirSync(path).reduce((n, f) => n + statSync(join(path, f)).blocks * 512, 0);
}

interface Sample { snapMs: number; snapBytes: number; restoreMs: number; prefaultMs?: number }

async function qemuRun(memMiB: number, dir: string): Promise<Sample> {
  const qmpPath = join(dir, 'qmp.sock');
  const base = [...qemuArgs({ machine: 'q35', kernel: img.bzImage, initramfs: img.initramfs, cpus: CPUS, memMiB, scenario: 'shell' }), '-qmp', `unix:${qmpPath},server=on,wait=off`];
  const file = join(dir, 'qemu.state');
  const a = new Proc(QEMU, base);
  try {
    await a.waitFor(/stv# /, 0);
    const q = await Qmp.connect(qmpPath);
    const t = performance.now();
    await q.cmd('stop');
    // exec: (bookworm's QEMU 7.2 has no file: URI): the stream through cat into the file.
    await q.cmd('migrate', { uri: `exec:cat > ${file}` });
    for (;;) {
      const r = (await q.cmd('query-migrate')).return as { status?: string };
      if (r.status === 'completed') break;
      if (r.status === 'failed') throw new Error('QEMU migrate to file failed');
      await new Promise((res) => setTimeout(res, 10));
    }
    const snapMs = performance.now() - t;
    q.close();
    await a.kill();
    rmSync(qmpPath, { force: true });
    const b = new Proc(QEMU, [...base, '-incoming', `exec:cat ${file}`]);
    try {
      const q2 = await Qmp.connect(qmpPath);
      for (;;) {
        const s = (await q2.cmd('query-status')).return as { status?: string };
        if (s.status === 'paused' || s.status === 'running') break;
        await new Promise((res) => setTimeout(res, 10));
      }
      await q2.cmd('cont');
      await b.answers();
      const restoreMs = performance.now() - b.t0;
      q2.close();
      return { snapMs, snapBytes: diskBytes(file), restoreMs };
    } finally {
      await b.kill();
    }
  } finally {
    await a.kill();
  }
}

async function stratovisorRun(memMiB: number, dir: string): Promise<Sample> {
  const sock = join(dir, 'a.sock');
  const snap = join(dir, 'snap');
  mkdirSync(snap);
  const a = new Proc(process.execPath, [STRATOVISOR, '--api-socket', `path=${sock}`, '--kernel', img.bzImage, '--initramfs', img.initramfs,
    '--cmdline', 'console=ttyS0 quiet stv.scenario=shell', '--cpus', `boot=${CPUS}`, '--memory', `size=${memMiB}M`, '--serial', 'tty', '--console', 'off']);
  let snapMs: number;
  try {
    await waitForPing(sock, a.child);
    await a.waitFor(/stv# /, 0);
    const t = performance.now();
    const p = await apiRequest(sock, 'PUT', 'vm.pause');
    const s = await apiRequest(sock, 'PUT', 'vm.snapshot', JSON.stringify({ destination_url: pathToFileURL(snap).href }));
    snapMs = performance.now() - t;
    if (p.status !== 204 || s.status !== 204) throw new Error(`pause ${p.status} ${p.text}, snapshot ${s.status} ${s.text}`);
  } finally {
    await a.kill();
  }
  const restore = async (n: number, prefault: boolean) => {
    const sock2 = join(dir, `r${n}.sock`);
    const b = new Proc(process.execPath, [STRATOVISOR, '--api-socket', `path=${sock2}`]);
    try {
      await waitForPing(sock2, b.child, { pollMs: 2 });
      const r = await apiRequest(sock2, 'PUT', 'vm.restore', JSON.stringify({ source_url: pathToFileURL(snap).href, prefault }));
      if (r.status !== 204) throw new Error(`vm.restore ${r.status} ${r.text}`);
      const m = await apiRequest(sock2, 'PUT', 'vm.resume');
      if (m.status !== 204) throw new Error(`vm.resume ${m.status} ${m.text}`);
      await b.answers();
      return performance.now() - b.t0;
    } finally {
      await b.kill();
    }
  };
  const restoreMs = await restore(1, false);
  const prefaultMs = await restore(2, true);
  return { snapMs, snapBytes: diskBytes(snap), restoreMs, prefaultMs };
}

async function main(): Promise<void> {
  const runs = Number(process.env.STV_BENCH_RUNS ?? 3);
  const sizes = (process.env.STV_BENCH_SNAP_MIB ?? '512,2048').split(',').map(Number);
  const vmms: Array<[string, (m: number, d: string) => Promise<Sample>]> = [['stratovisor', stratovisorRun]];
  if (existsSync(QEMU)) vmms.unshift(['qemu-q35', qemuRun]);
  else process.stderr.write(`bench: skipping qemu-q35: ${QEMU} not installed\n`);
  const results: Record<string, Sample[]> = {};
  for (const mem of sizes) {
    for (let i = 0; i < runs; i++) {
      for (const [name, run] of vmms) {
        const dir = mkdtempSync(join(process.env.TMPDIR ?? tmpdir(), 'stv-bench-snap-'));
        try {
          const s = await run(mem, dir);
          (results[`${name}@${mem}`] ??= []).push(s);
          process.stderr.write(`bench: snapshot ${name} ${mem} MiB run ${i + 1}/${runs}: snapshot ${fmt(s.snapMs)} ms, ${fmt(s.snapBytes / 2 ** 20, 1)} MiB on disk; restore to running ${fmt(s.restoreMs)} ms${s.prefaultMs !== undefined ? ` (prefault ${fmt(s.prefaultMs)} ms)` : ''}\n`);
        } catch (e) {
          process.stderr.write(`bench: snapshot ${name} ${mem} MiB run ${i + 1} failed: ${(e as Error).message}\n`);
        } finally {
          rmSync(dir, { recursive: true, force: true });
        }
      }
    }
  }
  const med = (k: string, f: keyof Sample) => median((results[k] ?? []).map((s) => s[f] ?? NaN));
  const rows: string[][] = [];
  for (const mem of sizes) {
    const q = `qemu-q35@${mem}`;
    for (const [name] of vmms) {
      const k = `${name}@${mem}`;
      rows.push([`${name}, ${mem} MiB`, `${(results[k] ?? []).length}/${runs}`,
        fmt(med(k, 'snapMs')), ratio(med(k, 'snapMs'), med(q, 'snapMs')),
        fmt(med(k, 'snapBytes') / 2 ** 20, 1), ratio(med(k, 'snapBytes'), med(q, 'snapBytes')),
        fmt(med(k, 'restoreMs')), ratio(med(k, 'restoreMs'), med(q, 'restoreMs')),
        fmt(med(k, 'prefaultMs')), ratio(med(k, 'prefaultMs'), med(q, 'restoreMs'))]);
    }
  }
  console.log(`\n${table(['snapshot/restore (2 vCPU, shell guest)', 'ok', 'pause+snapshot ms', 'vs QEMU', 'on disk MiB', 'vs QEMU',
    'restore to running ms', 'vs QEMU', 'prefaulted ms', 'vs QEMU'], rows)}\n(medians inside the KVM sandbox; restore to running: from the new process's spawn to the guest shell's answer after resume; QEMU: stop + migrate exec:cat > file, -incoming exec:cat file + cont)`);
  const out = join(REPO, '.cache', 'bench');
  mkdirSync(out, { recursive: true });
  writeFileSync(join(out, 'snapshot.json'), JSON.stringify(results, null, 2));
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.stack : e);
  process.exitCode = 1;
});
