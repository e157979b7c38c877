// Rate limiting (Cloud Hypervisor's --disk/--net bw_size=,bw_refill_time=) with Debian's stock
// kernel: the I/O benchmark scenario (guest/scenarios/iobench.sh: O_DIRECT 1 MiB sequential
// write then read of /dev/vda, 4 KiB random reads, TCP both ways over the tap) once with the disk
// and the NIC limited to 1 MiB/s and once unlimited.
//
// Asserted, for the limited run, only what the limit implies whatever the speed of the sandbox:
// a bucket of 1 MiB refilled at 1 MiB/s lets at most 1 MiB + t·1 MiB/s through in t seconds, and
// no request of the guest's 1 MiB O_DIRECT reads is larger than the bucket; so reading
// STV_RL_MIB MiB takes at least STV_RL_MIB - 1 seconds of host time. That time is measured by
// the host, between the console markers that end the write and the read (2 s of slack for the
// console's own delays). The guest's own MB/s figures for both runs are printed, not asserted:
// a slow sandbox or guest clock could move them either way.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, ftruncateSync, openSync, rmSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { explain, type GuestRun } from './lib/guest.js';
import { listenWhenAddressExists, NET, runVirtio, scratchDir, skipReason, stratovisor } from './lib/virtio.js';

const MIB = Number(process.env.STV_RL_MIB ?? 8);
const NET_MIB = 4;
const LIMIT = 'bw_size=1048576,bw_refill_time=1000';

/** A TCP sink (port 5201) and a NET_MIB MiB source (port 5202) on the tap's host address. */
function endpoints(): net.Server[] {
  const sink = net.createServer((s) => { s.on('data', () => {}); s.on('end', () => s.end()); s.on('error', () => {}); });
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

async function iobench(name: string, limited: boolean, withNet: boolean): Promise<GuestRun> {
  const dir = scratchDir(name);
  const image = join(dir, 'disk.raw');
  const fd = openSync(image, 'w');
  ftruncateSync(fd, MIB << 20);
  closeSync(fd);
  const servers = withNet ? endpoints() : [];
  let finished = false;
  try {
    return await runVirtio(stratovisor, {
      name, scenario: 'iobench', timeoutMs: 600_000,
      devices: {
        disk: { path: image, numQueues: 1, ...(limited ? { extra: LIMIT } : {}) },
        ...(withNet ? { net: { tap: NET.tap, hostIp: NET.hostIp, mask: NET.mask, prefix: NET.prefix, mac: NET.mac } } : {}),
        ...(withNet && limited ? { netExtra: LIMIT } : {}),
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

test('Stratovisor --disk/--net bw_size=1M,bw_refill_time=1000: the guest\'s I/O completes and the disk read takes the time the limit implies', { timeout: 1_300_000 }, async (t) => {
  const why = skipReason(stratovisor);
  if (why) return t.skip(why);
  const withNet = skipReason(stratovisor, { tap: true }) === null;
  if (!withNet) t.diagnostic(`no NIC in these runs: ${skipReason(stratovisor, { tap: true })}`);
  const lim = await iobench('stratovisor-ratelimit-1MiBps', true, withNet);
  const free = await iobench('stratovisor-ratelimit-unlimited', false, withNet);
  const interval = (r: GuestRun): number => {
    const w = r.markers.find((m) => m.event === 'io-seqwrite');
    const rd = r.markers.find((m) => m.event === 'io-seqread');
    return w && rd ? rd.atMs - w.atMs : NaN;
  };
  const rows = [['', 'seqwrite MB/s', 'seqread MB/s', 'randread IOPS', 'tcpsend MB/s', 'tcprecv MB/s', 'seqread host s']];
  for (const [label, r] of [['1 MiB/s', lim], ['unlimited', free]] as const) {
    rows.push([label, figure(r, 'seqwrite'), figure(r, 'seqread'), figure(r, 'randread'), figure(r, 'tcpsend'), figure(r, 'tcprecv'), (interval(r) / 1000).toFixed(1)]);
  }
  t.diagnostic(`rate limit measurement (guest figures, ${MIB} MiB O_DIRECT, QD1):\n${rows.map((r) => r.join(' | ')).join('\n')}`);
  for (const r of [lim, free]) {
    const errs = r.markers.filter((m) => m.event === 'io-error' && !/^net:/.test(m.data) && (withNet || !/^tcp/.test(m.data)));
    assert.deepEqual(errs.map((m) => m.data), [], `the guest reported I/O errors\n${explain(r)}`);
    assert.ok(r.markers.some((m) => m.event === 'iobench-done'), `the benchmark did not finish\n${explain(r)}`);
    assert.ok(Number.isFinite(interval(r)), `no io-seqwrite / io-seqread markers\n${explain(r)}`);
  }
  const minMs = (MIB - 1) * 1000;
  assert.ok(interval(lim) >= minMs - 2000, `reading ${MIB} MiB through a 1 MiB/s limit took ${interval(lim)} ms of host time; the limit allows no less than ${minMs} ms\n${explain(lim)}`);
});
