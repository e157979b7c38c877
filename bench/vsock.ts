// virtio-vsock benchmark, run inside scripts/kvm-sandbox by `npm run bench` (alone:
// STV_BENCH_ONLY=vsock). QEMU q35 with `-device vhost-vsock-pci,guest-cid=3` (in-kernel vhost; the
// sandbox loads vhost_vsock) and Stratovisor with `--vsock cid=3,socket=S` (bytes move in user space
// through the hybrid Unix socket) boot the same kernel and initramfs (2 vCPUs, 512 MiB), alternating
// run by run. The guest (guest/scenarios/vsockbench.sh) listens with `stvsock count 1234`; the host
// side is one C helper for both (bench/c/vsock_host.c: AF_VSOCK to CID 3, or CONNECT/OK on S):
// STV_BENCH_VSOCK_MIB MiB host→guest then the same back (MB/s), then STV_BENCH_VSOCK_CONNS
// connections: connect (connect() / CONNECT→OK) and connect until the first answer byte (ms,
// lower is better). Medians and Stratovisor/QEMU ratios; raw samples in .cache/bench/vsock.json.
import { execFile, execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { explain, guestImages, REPO, runGuest } from '../test/e2e/lib/guest.js';
import { qemuArgs } from '../test/e2e/lib/qemu.js';
import { STRATOVISOR, stratovisorArgs } from '../test/e2e/lib/stratovisor.js';
import { scratchDir } from '../test/e2e/lib/virtio.js';
import { fmt, median, ratio, table } from './stats.js';

const MIB = Number(process.env.STV_BENCH_VSOCK_MIB ?? 64);
const CONNS = Number(process.env.STV_BENCH_VSOCK_CONNS ?? 20);
const QEMU = '/usr/bin/qemu-system-x86_64';
type Vmm = 'qemu-q35' | 'stratovisor';
const METRICS = [
  ['h2g', `vsock stream host→guest, MB/s (${MIB} MiB)`, 1],
  ['g2h', `vsock stream guest→host, MB/s (${MIB} MiB)`, 1],
  ['conn', `connect, ms (median of ${CONNS}; lower is better)`, 2],
  ['first', `connect to first answer byte, ms (lower is better)`, 2],
] as const;
type Metric = (typeof METRICS)[number][0];
type Sample = Record<Metric, number> & { ok: boolean };

function helper(bin: string, args: string[]): Promise<{ out: string; err: string | null }> {
  return new Promise((res) => execFile(bin, args, { timeout: 600_000 }, (e, out, err) => res({ out, err: e ? `${e.message} ${err}` : null })));
}

async function once(vmm: Vmm, run: number, bin: string): Promise<Sample> {
  const dir = scratchDir(`bench-vsock-${vmm}`);
  const sock = join(dir, 'v.sock');
  const img = guestImages();
  const s = { ok: false, h2g: NaN, g2h: NaN, conn: NaN, first: NaN } as Sample;
  let cmd: string; let args: string[];
  if (vmm === 'qemu-q35') {
    cmd = QEMU;
    args = [...qemuArgs({ machine: 'q35', kernel: img.bzImage, initramfs: img.initramfs, cpus: 2, memMiB: 512, scenario: 'vsockbench' }), '-device', 'vhost-vsock-pci,guest-cid=3'];
  } else {
    cmd = process.execPath;
    args = stratovisorArgs({ kernel: img.bzImage, initramfs: img.initramfs, cpus: 2, memMiB: 512, scenario: 'vsockbench', extraArgs: ['--vsock', `cid=3,socket=${sock}`] });
  }
  const target = vmm === 'qemu-q35' ? ['vsock', '3'] : ['unix', sock];
  let host: Promise<{ out: string; err: string | null }> | null = null;
  try {
    const r = await runGuest(cmd, args, {
      name: `bench-vsock-${vmm}-${run}`, timeoutMs: 900_000,
      onMarker: (m) => {
        if (m.event === 'vsock-listening' && m.data === '1234' && host === null) host = helper(bin, [...target, '1234', String(MIB << 20), String(CONNS), '1235']);
      },
    });
    const h = host ? await host : { out: '', err: 'the guest never listened on port 1234' };
    const num = (re: RegExp) => [...h.out.matchAll(re)].map((x) => Number(x[1]));
    s.h2g = num(/h2g_mbs ([\d.]+)/g)[0] ?? NaN;
    s.g2h = num(/g2h_mbs ([\d.]+)/g)[0] ?? NaN;
    s.conn = median(num(/conn_ms ([\d.]+)/g));
    s.first = median(num(/first_byte_ms ([\d.]+)/g));
    s.ok = h.err === null && METRICS.every(([m]) => Number.isFinite(s[m])) && r.markers.some((x) => x.event === 'vsockbench-done');
    if (!s.ok) process.stderr.write(`bench: vsock: ${vmm} run ${run} incomplete: ${h.err ?? ''}\n${explain(r, 12)}\n`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return s;
}

export async function main(): Promise<void> {
  const runs = Number(process.env.STV_BENCH_RUNS ?? 3);
  const src = fileURLToPath(new URL('../../bench/c/vsock_host.c', import.meta.url));
  const bin = join(REPO, '.cache', 'bench', 'vsock_host');
  mkdirSync(join(REPO, '.cache', 'bench'), { recursive: true });
  execFileSync('cc', ['-O2', '-o', bin, src], { stdio: 'pipe' });
  const vmms: Vmm[] = [];
  if (existsSync(QEMU) && existsSync('/dev/vhost-vsock')) vmms.push('qemu-q35');
  else process.stderr.write('bench: vsock: skipping qemu-q35: no qemu-system-x86_64 or /dev/vhost-vsock (module vhost_vsock)\n');
  if (existsSync(STRATOVISOR)) vmms.push('stratovisor');
  const samples = new Map<Vmm, Sample[]>(vmms.map((v) => [v, []]));
  for (let i = 0; i < runs; i++) {
    for (const v of vmms) {
      const s = await once(v, i, bin);
      samples.get(v)!.push(s);
      process.stderr.write(`bench: vsock run ${i + 1}/${runs} ${v}: ${METRICS.map(([m, , d]) => `${m} ${fmt(s[m], d)}`).join(', ')}\n`);
    }
  }
  const med = (v: Vmm, m: Metric) => median((samples.get(v) ?? []).map((s) => s[m]));
  const both = samples.has('qemu-q35') && samples.has('stratovisor');
  const rows = METRICS.map(([m, label, d]) => [label, ...vmms.map((v) => fmt(med(v, m), d)), ...(both ? [ratio(med('stratovisor', m), med('qemu-q35', m))] : [])]);
  rows.push(['runs with every figure', ...vmms.map((v) => `${samples.get(v)!.filter((s) => s.ok).length}/${runs}`), ...(both ? [''] : [])]);
  console.log(`\n${table(['virtio-vsock (2 vCPU, 512 MiB, inside the KVM sandbox)', ...vmms, ...(both ? ['stratovisor vs q35'] : [])], rows)}\n(medians of ${runs} alternating runs; MB/s higher is better, ms lower is better; QEMU: in-kernel vhost-vsock, Stratovisor: user space via the hybrid socket)`);
  writeFileSync(join(REPO, '.cache', 'bench', 'vsock.json'), JSON.stringify(Object.fromEntries(samples), null, 2));
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.stack : e);
  process.exitCode = 1;
});
