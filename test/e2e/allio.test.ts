// Every virtio device of one VM at once, under load (issue 15's acceptance): virtio-blk, -net,
// -console, -rng and -vsock run their streams in parallel (guest/scenarios/allio.sh), all served
// by the VM's one I/O thread, and every stream's sha256 is checked on both sides:
//   blk     the host's 32 MiB of random bytes read by the guest; 16 MiB the guest wrote behind
//           them, read back in the guest (page cache dropped) and from the image on the host;
//   net     8 MiB host -> guest over HTTP on the tap, 4 MiB guest -> host;
//   console 256 KiB as hex on /dev/hvc0, found in the console's file;
//   rng     256 KiB from /dev/hwrng (the bytes cannot be compared: they must all arrive and
//           look random);
//   vsock   8 MiB each way over the hybrid socket (CONNECT 1234).
// The same load once more with blk and net on I/O threads of their own (iothread=), which must
// not change any stream. The VMM's thread count while the load runs is printed (t.diagnostic).
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, readdirSync, rmSync, writeFileSync, openSync, readSync, closeSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { join } from 'node:path';
import { explain, guestImages, marker, runGuest, type GuestRun } from './lib/guest.js';
import { NET, deleteTap, httpGet, listenWhenAddressExists, scratchDir, skipReason, stratovisor, tapAddresses } from './lib/virtio.js';

const sha256 = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');
const MIB = 1 << 20;
const VSOCK_BYTES = 8 * MIB;

/** Bytes [off, off+len) of a file. */
function readRange(path: string, off: number, len: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const b = Buffer.alloc(len);
    let got = 0;
    while (got < len) {
      const n = readSync(fd, b, got, len - got, off + got);
      if (n === 0) break;
      got += n;
    }
    return b.subarray(0, got);
  } finally {
    closeSync(fd);
  }
}

/** One host client on the hybrid vsock socket: CONNECT, send `payload`, half-close, read to EOF. */
function vsockExchange(path: string, port: number, payload: Buffer): Promise<{ ok: string | null; data: Buffer; end: string }> {
  return new Promise((resolve) => {
    const s = net.createConnection({ path, allowHalfOpen: true });
    let head = Buffer.alloc(0);
    let ok: string | null = null;
    const chunks: Buffer[] = [];
    let done = false;
    const finish = (end: string) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.destroy();
      resolve({ ok, data: Buffer.concat(chunks), end });
    };
    const timer = setTimeout(() => finish('timeout'), 400_000);
    s.on('connect', () => s.write(`CONNECT ${port}\n`));
    s.on('data', (b: Buffer) => {
      if (ok !== null) { chunks.push(b); return; }
      head = Buffer.concat([head, b]);
      const nl = head.indexOf(0x0a);
      if (nl < 0) return;
      ok = head.subarray(0, nl).toString('latin1');
      if (nl + 1 < head.length) chunks.push(head.subarray(nl + 1));
      s.end(payload);
    });
    s.on('end', () => finish('closed'));
    s.on('error', (e) => finish(`error: ${e.message}`));
  });
}

/** Threads of a process (/proc/PID/task), or -1 when it is gone. */
function threads(pid: number | undefined): number {
  try { return pid === undefined ? -1 : readdirSync(`/proc/${pid}/task`).length; } catch { return -1; }
}

async function allAtOnce(t: TestContext, variant: string, iothreads: boolean): Promise<void> {
  const why0 = skipReason(stratovisor, { tap: true });
  if (why0) { t.skip(why0); return; }
  const dir = scratchDir(`allio-${variant}`);
  const disk = join(dir, 'disk.raw');
  const sink = join(dir, 'hvc0.out');
  const sock = join(dir, 'v.sock');
  const hostDisk = randomBytes(32 * MIB);
  writeFileSync(disk, Buffer.concat([hostDisk, Buffer.alloc(32 * MIB)]));
  const blob = randomBytes(8 * MIB);
  const vsockOut = randomBytes(VSOCK_BYTES);
  const log: string[] = [];
  const note = (s: string) => log.push(`${new Date().toISOString()} ${s}`);
  let fromGuestSha: string | null = null;
  let finished = false;
  const server = http.createServer((req, res) => {
    note(`HTTP ${req.method} ${req.url}`);
    if (req.url === '/blob') {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': blob.length });
      res.end(blob);
    } else if (req.url === '/done' && fromGuestSha !== null) {
      res.writeHead(200);
      res.end('fetched');
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  let vsock: Promise<Awaited<ReturnType<typeof vsockExchange>>> | null = null;
  let netFetch: Promise<void> | null = null;
  let threadsUnderLoad = -1;
  let run: GuestRun | undefined;
  try {
    const [cmd, args] = stratovisor.command({
      images: guestImages(), scenario: 'allio',
      cmdline: [`stv.ip=${NET.guestIp}/${NET.prefix}`, `stv.peer=${NET.hostIp}`, `stv.port=${NET.httpPort}`],
      devices: { disk: { path: disk }, net: { tap: NET.tap, hostIp: NET.hostIp, mask: NET.mask, prefix: NET.prefix, mac: NET.mac }, rng: true, consoleFile: sink },
    });
    args.push('--vsock', `cid=3,socket=${sock}`);
    if (iothreads) {
      // Own I/O threads for the disk and the NIC: the command's --disk/--net values get iothread=.
      for (let i = 0; i < args.length - 1; i++) {
        if (args[i] === '--disk') args[i + 1] += ',iothread=blk';
        if (args[i] === '--net') args[i + 1] += ',iothread=net';
      }
    }
    deleteTap(NET.tap);
    const running = runGuest(cmd, args, {
      name: `stratovisor-allio-${variant}`, timeoutMs: 900_000,
      onMarker: (m, ctl) => {
        if (m.event === 'vsock-listening' && m.data === '1234' && vsock === null) {
          vsock = vsockExchange(sock, 1234, vsockOut);
          threadsUnderLoad = threads(ctl.pid);
        }
        if (m.event === 'allio-net-serving' && netFetch === null) {
          netFetch = (async () => {
            for (let i = 0; i < 10 && !finished; i++) {
              try {
                const body = await httpGet(`http://${NET.guestIp}/blob`, 300_000);
                fromGuestSha = `${sha256(body)}:${body.length}`;
                note(`fetched ${body.length} bytes from the guest`);
                return;
              } catch (e) {
                note(`fetch from the guest failed: ${(e as Error).message}`);
                await new Promise((r) => setTimeout(r, 1000));
              }
            }
          })();
        }
      },
    });
    listenWhenAddressExists(server, NET.hostIp, NET.httpPort, 300_000, () => finished)
      .then(() => note(`listening on ${NET.hostIp}:${NET.httpPort}`))
      .catch((e: Error) => note(`listen failed: ${e.message}`));
    run = await running;
    finished = true;
    await (netFetch ?? Promise.resolve());
  } finally {
    finished = true;
    server.closeAllConnections();
    await new Promise<void>((r) => server.close(() => r()));
    deleteTap(NET.tap);
  }
  const v = vsock === null ? null : await (vsock as Promise<Awaited<ReturnType<typeof vsockExchange>>>);
  const sinkText = existsSync(sink) ? readFileSync(sink, 'latin1') : '(no sink file)';
  try {
    const r = run!;
    const why = () => `${explain(r, 40)}\n--- host side ---\n${log.join('\n')}\ntap: ${tapAddresses(NET.tap)}\nvsock: ${v ? `${v.ok} ${v.data.length} bytes, ${v.end}` : 'never connected'}`;
    t.diagnostic(`${variant}: ${threadsUnderLoad} threads in the VMM while the load ran`);
    assert.ok(marker(r, 'init'), `the guest did not boot\n${why()}`);
    const errs = r.markers.filter((m) => m.event === 'allio-error' || m.event === 'vsock-error' || m.event === 'vsock-conn-failed');
    assert.equal(errs.length, 0, `the guest reported: ${errs.map((m) => m.data).join('; ')}\n${why()}`);
    assert.ok(marker(r, 'allio-done'), `the scenario did not finish\n${why()}`);
    // blk
    assert.equal(marker(r, 'allio-blk-read')?.data, sha256(hostDisk), `virtio-blk: the guest read other bytes than the host's 32 MiB\n${why()}`);
    const [wrote, readBack] = (marker(r, 'allio-blk-wrote')?.data ?? ':').split(':');
    assert.equal(readBack, wrote, `virtio-blk: the guest read back other bytes than it wrote\n${why()}`);
    assert.equal(sha256(readRange(disk, 32 * MIB, 16 * MIB)), wrote, `virtio-blk: the image holds other bytes than the guest wrote\n${why()}`);
    // net
    assert.equal(marker(r, 'allio-net-fetched')?.data, `${sha256(blob)}:${blob.length}`, `virtio-net: the guest's copy of the host's 8 MiB differs\n${why()}`);
    assert.equal(fromGuestSha, marker(r, 'allio-net-serving')?.data, `virtio-net: the host's copy of the guest's 4 MiB differs\n${why()}`);
    // console: between the HVCBEGIN and HVCEND lines (the tty turns \n into \r\n)
    const text = sinkText.replace(/\r/g, '');
    const b = text.indexOf('HVCBEGIN\n');
    const e = text.indexOf('\nHVCEND');
    const hex = b >= 0 && e > b ? text.slice(b + 'HVCBEGIN\n'.length, e) : '';
    assert.equal(`${sha256(hex)}:${hex.length}`, marker(r, 'allio-console')?.data, `virtio-console: the sink holds other bytes than the guest wrote (${hex.length} hex digits found)\n${why()}`);
    // rng
    const [bytes, distinct] = (marker(r, 'allio-rng')?.data ?? '').split(':').map(Number);
    assert.equal(bytes, 256 * 1024, `virtio-rng: 256 KiB should come from /dev/hwrng\n${why()}`);
    assert.equal(distinct, 256, `virtio-rng: every byte value should occur in 256 KiB of random bytes\n${why()}`);
    // vsock
    assert.ok(v, `virtio-vsock: the guest never listened on port 1234\n${why()}`);
    assert.match(v.ok ?? '', /^OK \d+$/, `virtio-vsock: CONNECT 1234 got ${JSON.stringify(v.ok)}\n${why()}`);
    const served = r.markers.find((m) => m.event === 'vsock-served')?.data.split(':');
    assert.ok(served, `virtio-vsock: the guest reported no exchange\n${why()}`);
    assert.equal(served[1], String(VSOCK_BYTES), `virtio-vsock: the guest got ${served[1]} bytes\n${why()}`);
    assert.equal(served[2], sha256(vsockOut), `virtio-vsock: the guest received other bytes than the host sent\n${why()}`);
    assert.equal(v.data.length, VSOCK_BYTES, `virtio-vsock: the host got ${v.data.length} bytes back\n${why()}`);
    assert.equal(sha256(v.data), served[4], `virtio-vsock: the host received other bytes than the guest sent\n${why()}`);
    assert.ok(marker(r, 'poweroff'), `the guest did not power off\n${why()}`);
    assert.equal(r.exitCode, 0, `the VMM did not exit 0\n${why()}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('blk, net, console, rng and vsock at once on one VM (one I/O thread): every stream arrives intact', { timeout: 1_000_000 }, (t) => allAtOnce(t, 'shared', false));
test('the same load with blk and net on I/O threads of their own (iothread=): every stream arrives intact', { timeout: 1_000_000 }, (t) => allAtOnce(t, 'iothreads', true));
