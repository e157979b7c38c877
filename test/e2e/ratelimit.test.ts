// Rate limiting (Cloud Hypervisor's --disk/--net bw_size=,bw_refill_time=) with Debian's stock
// kernel: the I/O benchmark scenario (guest/scenarios/iobench.sh: O_DIRECT 1 MiB sequential
// write then read of /dev/vda, 4 KiB random reads, TCP both ways over the tap) once with the disk
// limited to 10 MB/s and the NIC to 5 MB/s (a bucket of 1/10 s of the rate, refilled every
// 100 ms), and once unlimited (the sandbox's own speed: ~100 MB/s disk reads, ~20 MB/s TCP).
//
// Asserted, for the limited run, only what the limit implies whatever the speed of the sandbox:
// a bucket of B bytes refilled at R bytes/s lets at most B + t·R through in t seconds, plus at
// most one request larger than the bucket (it passes once the bucket is full and leaves it in
// debt); so reading N bytes in requests of at most S bytes takes at least (N - max(B, S)) / R
// seconds of host time. For the disk that time is measured by the host between the console
// markers that end the write and the read (2 s of slack for the console's own delays); for the
// NIC by the host's TCP sink, first byte to end (payload only: the limiter also counts headers).
// The guest's own MB/s figures are printed beside the limit, not asserted: a slow sandbox or guest
// clock could move them either way.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, ftruncateSync, openSync, rmSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { explain, type GuestRun } from './lib/guest.js';
import { listenWhenAddressExists, NET, runVirtio, scratchDir, skipReason, stratovisor } from './lib/virtio.js';

const MIB = Number(process.env.STV_RL_MIB ?? 64);
const NET_MIB = 16;
/** 10 MB/s (1 MB = 10^6 bytes, as the guest's stvio counts) for the disk, 5 MB/s for the NIC. */
const DISK_RATE = 10e6;
const NET_RATE = 5e6;
const limit = (rate: number): string => `bw_size=${rate / 10},bw_refill_time=100`;
/** The largest request the guest makes: a 1 MiB O_DIRECT read, a 64 KiB TSO frame. */
const DISK_REQUEST = 1 << 20;
const NET_FRAME = 65536;

/** What the TCP sink saw: payload bytes, first byte to end (host monotonic ms). */
interface SinkRun { bytes: number; firstMs: number; endMs: number }

/** A TCP sink (port 5201) and a NET_MIB MiB source (port 5202) on the tap's host address. */
function endpoints(seen: SinkRun[]): net.Server[] {
  const sink = net.createServer((s) => {
    const run: SinkRun = { bytes: 0, firstMs: NaN, endMs: NaN };
    seen.push(run);
    s.on('data', (b: Buffer) => { if (run.bytes === 0) run.firstMs = performance.now(); run.bytes += b.length; });
    s.on('end', () => { run.endMs = performance.now(); s.end(); });
    s.on('error', () => {});
  });
  const chunk = Buffer.alloc(1 << 20, 0x5a);
  const source = net.createServer((s) => {
    s.on('error', () => {});
    let left = NET_MIB;
    const pump = () => {
      while (left > 0) { left--; if (!s.write(chunk)) { s.once('drain', pump); return; } }
      s.end();
    };
    pump();
  });
  return [sink, source];
}

async function iobench(name: string, limited: boolean, withNet: boolean, seen: SinkRun[]): Promise<GuestRun> {
  const dir = scratchDir(name);
  const image = join(dir, 'disk.raw');
  const fd = openSync(image, 'w');
  ftruncateSync(fd, MIB << 20);
  closeSync(fd);
  const servers = withNet ? endpoints(seen) : [];
  let finished = false;
  try {
    return await runVirtio(stratovisor, {
      name, scenario: 'iobench', timeoutMs: 600_000,
      devices: {
        disk: { path: image, numQueues: 1, ...(limited ? { extra: limit(DISK_RATE) } : {}) },
        ...(withNet ? { net: { tap: NET.tap, hostIp: NET.hostIp, mask: NET.mask, prefix: NET.prefix, mac: NET.mac } } : {}),
        ...(withNet && limited ? { netExtra: limit(NET_RATE) } : {}),
      },
      cmdline: [`stv.io_mib=${MIB}`, 'stv.rand_s=2', `stv.net_mib=${NET_MIB}`, `stv.ip=${NET.guestIp}/${NET.prefix}`, `stv.peer=${NET.hostIp}`],
      whileRunning: () => {
        servers.forEach((srv, i) => {
          listenWhenAddressExists(srv, NET.hostIp, 5201 + i, 300_000, () => finished).catch(() => {});
        });
      },
    });
  } finally {
    finished = true;
    await Promise.all(servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
    rmSync(dir, { recursive: true, force: true });
  }
}

const figure = (r: GuestRun, m: string): string => r.markers.find((x) => x.event === `io-${m}`)?.data.split(':')[0] ?? 'n/a';

test('Stratovisor --disk bw 10 MB/s, --net bw 5 MB/s (bw_size=rate/10, bw_refill_time=100): the guest\'s I/O completes, the disk read and the TCP send take the time the limits imply', { timeout: 1_300_000 }, async (t) => {
  const why = skipReason(stratovisor);
  if (why) return t.skip(why);
  const withNet = skipReason(stratovisor, { tap: true }) === null;
  if (!withNet) t.diagnostic(`no NIC in these runs: ${skipReason(stratovisor, { tap: true })}`);
  const limSink: SinkRun[] = [];
  const freeSink: SinkRun[] = [];
  const lim = await iobench('stratovisor-ratelimit-10MBps', true, withNet, limSink);
  const free = await iobench('stratovisor-ratelimit-unlimited', false, withNet, freeSink);
  const interval = (r: GuestRun): number => {
    const w = r.markers.find((m) => m.event === 'io-seqwrite');
    const rd = r.markers.find((m) => m.event === 'io-seqread');
    return w && rd ? rd.atMs - w.atMs : NaN;
  };
  const sinkS = (seen: SinkRun[]): string => seen.length === 1 ? ((seen[0]!.endMs - seen[0]!.firstMs) / 1000).toFixed(1) : 'n/a';
  const rows = [['', 'seqwrite MB/s', 'seqread MB/s', 'randread IOPS', 'tcpsend MB/s', 'tcprecv MB/s', 'seqread host s', 'tcpsend host s']];
  for (const [label, r, seen] of [['disk 10 MB/s, NIC 5 MB/s', lim, limSink], ['unlimited', free, freeSink]] as const) {
    rows.push([label, figure(r, 'seqwrite'), figure(r, 'seqread'), figure(r, 'randread'), figure(r, 'tcpsend'), figure(r, 'tcprecv'), (interval(r) / 1000).toFixed(1), sinkS(seen)]);
  }
  t.diagnostic(`rate limit measurement (guest figures, ${MIB} MiB O_DIRECT QD1, TCP ${NET_MIB} MiB each way):\n${rows.map((r) => r.join(' | ')).join('\n')}`);
  const off = (m: string, rate: number): string => {
    const v = Number(figure(lim, m));
    return Number.isFinite(v) ? `${m} ${v} MB/s, ${((v / (rate / 1e6) - 1) * 100).toFixed(0)}% from the limit` : `${m} n/a`;
  };
  t.diagnostic(`limited run beside its limits: ${off('seqread', DISK_RATE)}, ${off('seqwrite', DISK_RATE)}${withNet ? `, ${off('tcpsend', NET_RATE)}, ${off('tcprecv', NET_RATE)}` : ''}`);
  for (const r of [lim, free]) {
    const errs = r.markers.filter((m) => m.event === 'io-error' && !/^net:/.test(m.data) && (withNet || !/^tcp/.test(m.data)));
    assert.deepEqual(errs.map((m) => m.data), [], `the guest reported I/O errors\n${explain(r)}`);
    assert.ok(r.markers.some((m) => m.event === 'iobench-done'), `the benchmark did not finish\n${explain(r)}`);
    assert.ok(Number.isFinite(interval(r)), `no io-seqwrite / io-seqread markers\n${explain(r)}`);
  }
  const bytes = MIB * (1 << 20);
  const minMs = ((bytes - Math.max(DISK_REQUEST, DISK_RATE / 10)) / DISK_RATE) * 1000;
  assert.ok(interval(lim) >= minMs - 2000, `reading ${MIB} MiB through a 10 MB/s limit took ${interval(lim)} ms of host time; the limit allows no less than ${minMs.toFixed(0)} ms\n${explain(lim)}`);
  if (withNet) {
    assert.equal(limSink.length, 1, `the host's sink saw one TCP connection\n${explain(lim)}`);
    const run = limSink[0]!;
    assert.equal(run.bytes, NET_MIB * (1 << 20), `the host received all ${NET_MIB} MiB the guest sent\n${explain(lim)}`);
    const netMinMs = ((run.bytes - NET_RATE / 10 - NET_FRAME) / NET_RATE) * 1000;
    assert.ok(run.endMs - run.firstMs >= netMinMs - 200, `receiving ${NET_MIB} MiB through a 5 MB/s limit took ${(run.endMs - run.firstMs).toFixed(0)} ms; the limit allows no less than ${netMinMs.toFixed(0)} ms\n${explain(lim)}`);
  }
});
