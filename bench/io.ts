// Virtio I/O benchmark, run inside scripts/kvm-sandbox by `npm run bench` (alone:
// STV_BENCH_ONLY=io). QEMU q35 (modern virtio-*-pci, tap without vhost) and Stratovisor boot the
// same kernel and initramfs (2 vCPUs, 512 MiB) with a fresh raw disk image and a tap, alternating
// VMMs run by run; the guest (guest/scenarios/iobench.sh, guest/tools/stvio.c) measures:
//   - /dev/vda, O_DIRECT, queue depth 1: sequential write then read of the first STV_BENCH_IO_MIB
//     MiB in 1 MiB requests (MB/s), and 4 KiB random reads for STV_BENCH_RAND_S seconds (IOPS);
//   - TCP over the tap to this process (bound to the tap's host address): STV_BENCH_NET_MIB MiB
//     guest→host (port 5201, a sink) and host→guest (port 5202, a source), MB/s timed in the guest.
// Prints medians and Stratovisor/QEMU ratios (higher is better for every row); raw samples go to
// .cache/bench/io.json.
import { closeSync, ftruncateSync, mkdirSync, openSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { explain, REPO, type GuestRun } from '../test/e2e/lib/guest.js';
import { listenWhenAddressExists, NET, qemuQ35, runVirtio, scratchDir, stratovisor, type VirtioVmm } from '../test/e2e/lib/virtio.js';
import { fmt, median, ratio, table } from './stats.js';

const IO_MIB = Number(process.env.STV_BENCH_IO_MIB ?? 64);
const RAND_S = Number(process.env.STV_BENCH_RAND_S ?? 5);
const NET_MIB = Number(process.env.STV_BENCH_NET_MIB ?? 32);
const SINK_PORT = 5201;
const SOURCE_PORT = 5202;

export const IO_VMMS: VirtioVmm[] = [qemuQ35, stratovisor];

const METRICS = [
  ['seqwrite', `virtio-blk sequential write, MB/s (1 MiB O_DIRECT, ${IO_MIB} MiB)`],
  ['seqread', `virtio-blk sequential read, MB/s (1 MiB O_DIRECT, ${IO_MIB} MiB)`],
  ['randread', `virtio-blk 4 KiB random read, IOPS (O_DIRECT, QD1, ${RAND_S} s)`],
  ['tcpsend', `virtio-net TCP guest→host, MB/s (${NET_MIB} MiB)`],
  ['tcprecv', `virtio-net TCP host→guest, MB/s (${NET_MIB} MiB)`],
] as const;
type Metric = (typeof METRICS)[number][0];
export type IoSample = Record<Metric, number> & { ok: boolean; errors: string[] };

/** The host's two TCP endpoints on the tap's address: a sink (closes after EOF) and a source. */
function tcpEndpoints(): { sink: net.Server; source: net.Server; received: () => number } {
  let received = 0;
  const sink = net.createServer((s) => {
    s.on('data', (b: Buffer) => { received += b.length; });
    s.on('end', () => s.end());
    s.on('error', () => {});
  });
  const chunk = Buffer.alloc(1 << 20, 0x5a);
  const source = net.createServer((s) => {
    s.on('error', () => {});
    let left = NET_MIB;
    const pump = () => {
      while (left > 0) {
        left--;
        if (!s.write(chunk)) { s.once('drain', pump); return; }
      }
      s.end();
    };
    pump();
  });
  return { sink, source, received: () => received };
}

function closeServer(s: net.Server): Promise<void> {
  return new Promise((r) => s.close(() => r()));
}

export async function ioOnce(vmm: VirtioVmm, run: number): Promise<IoSample> {
  const dir = scratchDir(`bench-io-${vmm.name}`);
  const image = join(dir, 'disk.raw');
  const fd = openSync(image, 'w');
  ftruncateSync(fd, IO_MIB * 1024 * 1024);
  closeSync(fd);
  const { sink, source, received } = tcpEndpoints();
  let finished = false;
  let r: GuestRun | undefined;
  try {
    r = await runVirtio(vmm, {
      name: `bench-io-${vmm.name}-${run}`, scenario: 'iobench', timeoutMs: 900_000,
      devices: { disk: { path: image, numQueues: 1 }, net: { tap: NET.tap, hostIp: NET.hostIp, mask: NET.mask, prefix: NET.prefix, mac: NET.mac } },
      cmdline: [`stv.io_mib=${IO_MIB}`, `stv.rand_s=${RAND_S}`, `stv.net_mib=${NET_MIB}`, `stv.ip=${NET.guestIp}/${NET.prefix}`, `stv.peer=${NET.hostIp}`],
      whileRunning: () => {
        for (const [srv, port] of [[sink, SINK_PORT], [source, SOURCE_PORT]] as const) {
          listenWhenAddressExists(srv, NET.hostIp, port, 300_000, () => finished)
            .catch((e: Error) => process.stderr.write(`bench: io: ${vmm.name}: host port ${port}: ${e.message}\n`));
        }
      },
    });
  } finally {
    finished = true;
    await Promise.all([closeServer(sink), closeServer(source)]);
    rmSync(dir, { recursive: true, force: true });
  }
  const value = (m: Metric): number => {
    const d = r!.markers.find((x) => x.event === `io-${m}`)?.data;
    return d === undefined ? NaN : Number(d.split(':')[0]);
  };
  const s = { ok: false, errors: r.markers.filter((m) => m.event === 'io-error').map((m) => m.data) } as IoSample;
  for (const [m] of METRICS) s[m] = value(m);
  const rxBytes = Number(r.markers.find((x) => x.event === 'io-tcprecv')?.data.split(':')[1]);
  if (Number.isFinite(s.tcprecv) && rxBytes !== NET_MIB * 1024 * 1024) {
    s.errors.push(`tcprecv: the guest got ${rxBytes} bytes, not ${NET_MIB} MiB`);
    s.tcprecv = NaN;
  }
  if (Number.isFinite(s.tcpsend) && received() !== NET_MIB * 1024 * 1024) {
    s.errors.push(`tcpsend: the host got ${received()} bytes, not ${NET_MIB} MiB`);
    s.tcpsend = NaN;
  }
  s.ok = METRICS.every(([m]) => Number.isFinite(s[m])) && r.exitCode === 0 && r.markers.some((m) => m.event === 'iobench-done');
  if (!s.ok) process.stderr.write(`bench: io: ${vmm.name} run ${run} incomplete: ${s.errors.join('; ') || 'no error marker'}\n${explain(r, 12)}\n`);
  return s;
}

export async function main(): Promise<void> {
  const runs = Number(process.env.STV_BENCH_RUNS ?? 5);
  const wanted = (process.env.STV_BENCH_VMMS ?? IO_VMMS.map((v) => v.name).join(',')).split(',');
  const vmms = IO_VMMS.filter((v) => wanted.includes(v.name)).filter((v) => {
    const why = v.unavailable() ?? (process.getuid?.() !== 0 ? 'tap devices need root' : null);
    if (why) process.stderr.write(`bench: io: skipping ${v.name}: ${why}\n`);
    return !why;
  });
  if (!vmms.length) {
    process.stderr.write(`bench: io: no VMM to run (STV_BENCH_VMMS=${process.env.STV_BENCH_VMMS ?? ''}; io knows ${IO_VMMS.map((v) => v.name).join(', ')})\n`);
    return;
  }
  const samples = new Map<string, IoSample[]>(vmms.map((v) => [v.name, []]));
  for (let i = 0; i < runs; i++) {
    for (const v of vmms) {
      const s = await ioOnce(v, i);
      samples.get(v.name)!.push(s);
      process.stderr.write(`bench: io run ${i + 1}/${runs} ${v.name}: ${METRICS.map(([m]) => `${m} ${fmt(s[m], m === 'randread' ? 0 : 1)}`).join(', ')}\n`);
    }
  }
  const med = (name: string, m: Metric) => median((samples.get(name) ?? []).map((s) => s[m]));
  const q = 'qemu-q35';
  const stv = 'stratovisor';
  const both = samples.has(q) && samples.has(stv);
  const headers = ['I/O (2 vCPU, 512 MiB, inside the KVM sandbox)', ...vmms.map((v) => v.name), ...(both ? ['stratovisor vs q35'] : [])];
  const rows = METRICS.map(([m, label]) => [
    label, ...vmms.map((v) => fmt(med(v.name, m), m === 'randread' ? 0 : 1)), ...(both ? [ratio(med(stv, m), med(q, m))] : []),
  ]);
  rows.push(['runs with every figure', ...vmms.map((v) => `${samples.get(v.name)!.filter((s) => s.ok).length}/${runs}`), ...(both ? [''] : [])]);
  console.log(`\n${table(headers, rows)}\n(medians of ${runs} alternating runs; higher is better; QEMU's tap without vhost)`);
  const dir = join(REPO, '.cache', 'bench');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'io.json'), JSON.stringify(Object.fromEntries(samples), null, 2));
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.stack : e);
  process.exitCode = 1;
});
