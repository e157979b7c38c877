// virtio-vsock end to end, in the spirit of Cloud Hypervisor's test_virtio_vsock: Stratovisor boots
// Debian's stock kernel with `--vsock cid=3,socket=S` and the guest scenario guest/scenarios/vsock.sh
// (guest/tools/stvsock.c). One boot covers:
// - host-initiated: clients on S speak `CONNECT 1234`; 16 MiB go each way, SHA-256s compared on
//   both sides; clients that close before/right after their CONNECT line, a garbage line and an
//   over-long line are closed without disturbing later connections; CONNECT to a port nobody
//   listens on gets the socket closed (the guest's RST), without an `OK`;
// - guest-initiated: the guest connects to CID 2 port 5678, which reaches the test's listener on
//   S_5678; 16 MiB each way, SHA-256s compared.
// The host side runs in this process (node:net); its account is printed with any failure.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, rmSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { explain, guestImages, marker, runGuest, type GuestRun } from './lib/guest.js';
import { STRATOVISOR, stratovisorArgs } from './lib/stratovisor.js';
import { scratchDir } from './lib/virtio.js';

const MIB16 = 16 << 20;
const GUEST_PORT = 1234;
const DONE_PORT = 1235;
const HOST_PORT = 5678;
const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

interface Talk {
  /** The line the VMM answered the CONNECT with (without "\n"), or null. */
  okLine: string | null;
  /** Bytes after the OK line. */
  data: Buffer;
  /** How the socket ended: 'closed' by the peer, 'error: ...', or 'timeout'. */
  end: string;
}

/**
 * One client on the hybrid socket: send `first` (the CONNECT line or garbage), then, once an `OK`
 * line came, `payload` and a half-close. Resolves when the VMM closes the socket (bounded).
 */
function talk(path: string, first: string | null, payload: Buffer | null, opts: { closeAtOnce?: boolean } = {}): Promise<Talk> {
  return new Promise((resolve) => {
    const s = net.createConnection({ path, allowHalfOpen: true });
    const chunks: Buffer[] = [];
    let head = Buffer.alloc(0);
    let okLine: string | null = null;
    let done = false;
    const finish = (end: string) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.destroy();
      resolve({ okLine, data: Buffer.concat(chunks), end });
    };
    const timer = setTimeout(() => finish('timeout'), 240_000);
    s.on('connect', () => {
      if (first !== null) s.write(first);
      if (opts.closeAtOnce) finish('closed by the client');
    });
    s.on('data', (b: Buffer) => {
      if (okLine !== null) { chunks.push(b); return; }
      head = Buffer.concat([head, b]);
      const nl = head.indexOf(0x0a);
      if (nl < 0) return;
      okLine = head.subarray(0, nl).toString('latin1');
      if (nl + 1 < head.length) chunks.push(head.subarray(nl + 1));
      if (payload !== null) s.end(payload);
    });
    s.on('end', () => finish('closed'));
    s.on('error', (e) => finish(`error: ${e.message}`));
  });
}

/** The guest's listener reported this exchange: vsock-served:PORT:RX:RXSHA:TX:TXSHA. */
function served(run: GuestRun, port: number, rxBytes: number): string[] | undefined {
  return run.markers.filter((m) => m.event === 'vsock-served').map((m) => m.data.split(':')).find((f) => f[0] === String(port) && f[1] === String(rxBytes));
}

test('virtio-vsock: hybrid socket both ways (CONNECT <port>, <socket>_<port>), 16 MiB each way, bad clients, RST', async (t) => {
  if (!existsSync(STRATOVISOR)) return t.skip(`${STRATOVISOR} is not built`);
  const dir = scratchDir('vsock');
  const sock = join(dir, 'v.sock');
  const log: string[] = [];
  const results: Record<string, Talk> = {};
  // Guest-initiated: the listener on <socket>_5678 hashes what comes, then answers 16 MiB.
  const hostPayload = randomBytes(MIB16);
  let fromGuest: { bytes: number; sha: string } | null = null;
  const listener = net.createServer({ allowHalfOpen: true }, (c) => {
    const h = createHash('sha256');
    let n = 0;
    c.on('data', (b: Buffer) => { h.update(b); n += b.length; });
    c.on('end', () => {
      fromGuest = { bytes: n, sha: h.digest('hex') };
      log.push(`S_${HOST_PORT}: got ${n} bytes from the guest, answering ${hostPayload.length}`);
      c.end(hostPayload);
    });
    c.on('error', (e) => log.push(`S_${HOST_PORT}: ${e.message}`));
  });
  await new Promise<void>((res) => listener.listen(`${sock}_${HOST_PORT}`, res));
  const clientPayload = randomBytes(MIB16);
  let hostSide: Promise<void> | null = null;
  const sequence = async () => {
    results.closeBeforeConnect = await talk(sock, null, null, { closeAtOnce: true });
    results.closeAfterConnect = await talk(sock, `CONNECT ${GUEST_PORT}\n`, null, { closeAtOnce: true });
    results.garbage = await talk(sock, 'HELLO THERE\n', null);
    results.overlong = await talk(sock, `CONNECT ${'9'.repeat(100)}`, null);
    results.noListener = await talk(sock, 'CONNECT 4321\n', null);
    results.big = await talk(sock, `connect ${GUEST_PORT}\n`, clientPayload);
    results.later = await talk(sock, `CONNECT ${GUEST_PORT}\n`, Buffer.from('ping'));
    results.done = await talk(sock, `CONNECT ${DONE_PORT}\n`, Buffer.from('done'));
    for (const [k, r] of Object.entries(results)) log.push(`${k}: ok=${JSON.stringify(r.okLine)} got ${r.data.length} bytes, ${r.end}`);
  };
  let run: GuestRun;
  try {
    const images = guestImages();
    const args = stratovisorArgs({
      kernel: images.bzImage, initramfs: images.initramfs, cpus: 2, memMiB: 512, scenario: 'vsock',
      extraArgs: ['--vsock', `cid=3,socket=${sock}`],
    });
    run = await runGuest(process.execPath, args, {
      name: 'stratovisor-vsock', timeoutMs: 600_000,
      onMarker: (m) => {
        if (m.event === 'vsock-listening' && m.data === String(GUEST_PORT) && hostSide === null) {
          hostSide = sequence().catch((e: Error) => { log.push(`host side failed: ${e.stack ?? e.message}`); });
        }
      },
    });
    await (hostSide ?? Promise.resolve());
  } finally {
    listener.close();
    rmSync(dir, { recursive: true, force: true });
  }
  const why = () => `${explain(run, 40)}\n--- host side ---\n${log.join('\n')}`;
  assert.ok(marker(run, 'init'), `the guest did not boot\n${why()}`);
  const errs = run.markers.filter((m) => m.event === 'vsock-error' || m.event === 'vsock-connect-failed');
  assert.equal(errs.length, 0, `the guest reported: ${errs.map((m) => m.data).join('; ')}\n${why()}`);
  assert.ok(hostSide !== null, `the guest never listened on port ${GUEST_PORT}\n${why()}`);

  // Bad clients: closed by the VMM, never an OK.
  for (const k of ['garbage', 'overlong', 'noListener'] as const) {
    const r = results[k];
    assert.ok(r !== undefined, `no result for ${k}\n${why()}`);
    assert.equal(r.okLine, null, `${k}: the VMM answered ${JSON.stringify(r.okLine)}\n${why()}`);
    assert.match(r.end, /^(closed|error: .*ECONNRESET.*)$/, `${k}: the VMM should close the client's socket\n${why()}`);
  }

  // Host-initiated, 16 MiB each way.
  const big = results.big!;
  assert.match(big.okLine ?? '', /^OK \d+$/, `CONNECT ${GUEST_PORT}: expected "OK <port>"\n${why()}`);
  const b = served(run, GUEST_PORT, MIB16);
  assert.ok(b, `the guest reported no 16 MiB exchange on port ${GUEST_PORT}\n${why()}`);
  assert.equal(b[2], sha256(clientPayload), `the guest received other bytes than the host sent\n${why()}`);
  assert.equal(big.data.length, MIB16, `the host client got ${big.data.length} bytes back\n${why()}`);
  assert.equal(sha256(big.data), b[4], `the host received other bytes than the guest sent\n${why()}`);

  // A later connection after the bad clients still works.
  const later = results.later!;
  assert.match(later.okLine ?? '', /^OK \d+$/, `a later CONNECT failed\n${why()}`);
  const l = served(run, GUEST_PORT, 4);
  assert.ok(l && l[2] === sha256(Buffer.from('ping')), `the guest did not get "ping"\n${why()}`);
  assert.equal(sha256(later.data), l[4], `the later connection's reply differs\n${why()}`);

  // Guest-initiated, 16 MiB each way.
  const c = run.markers.find((m) => m.event === 'vsock-connected')?.data.split(':');
  assert.ok(c, `the guest's connection to the host did not complete\n${why()}`);
  assert.equal(c[0], String(HOST_PORT));
  const got = fromGuest as { bytes: number; sha: string } | null;
  assert.ok(got !== null, `nothing reached ${sock}_${HOST_PORT}\n${why()}`);
  assert.equal(got.bytes, MIB16, `the host listener got ${got.bytes} bytes\n${why()}`);
  assert.equal(got.sha, c[2], `the host listener received other bytes than the guest sent\n${why()}`);
  assert.equal(c[3], String(MIB16), `the guest got ${c[3]} bytes back\n${why()}`);
  assert.equal(c[4], sha256(hostPayload), `the guest received other bytes than the host listener sent\n${why()}`);
  assert.ok(marker(run, 'vsock-done'), `the scenario did not finish\n${why()}`);
  assert.ok(marker(run, 'poweroff'), `the guest did not power off\n${why()}`);
});
