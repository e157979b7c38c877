// Fuzz the virtio-vsock model: random (mostly malformed) headers, ops, lengths, credit fields and
// descriptor chains from the guest, interleaved with host clients that connect, send good and bad
// CONNECT lines, write and close. Only VirtqueueError may escape (the transport then resets the
// device); the device never writes outside the receive buffers (canary bytes stay intact), never
// buffers beyond its cap, and keeps working after each reset. STV_FUZZ_SEED picks the seed,
// STV_FUZZ_CASES the iterations, STV_FUZZ_OPS runs until the device was called that often
// (processQueue / onFdReady; npm run soak: 10^6).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as libc from '../../sys/libc.js';
import { VirtqueueError, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../queue.js';
import { Op, MAX_PKT_PAYLOAD } from './packet.js';
import { VsockRig, encodeHeader, readNow, writeSome } from './harness.fixture.js';
import { fuzzBudget, fuzzDeviceWanted, mulberry32 as rng, seedFromEnv } from '../../testing/prng.js';

const BUDGET = fuzzBudget(3000);
const SEED = seedFromEnv('STV_FUZZ_SEED', 0x750c);
/** Guest memory no queue or buffer uses (between the rings and the data areas). */
const CANARY_START = 0x30000;
const CANARY_LEN = 0xd0000;

test(`fuzz: ${BUDGET.label} of random guest packets and host clients; only VirtqueueError or RSTs, no stray writes (seed ${SEED})`, { skip: fuzzDeviceWanted('vsock') ? false : `not in STV_FUZZ_DEVICES=${process.env.STV_FUZZ_DEVICES}` }, () => {
  process.stdout.write(`# vsock fuzz seed ${SEED} (STV_FUZZ_SEED to repeat)\n`);
  const r = rng(SEED);
  const int = (n: number) => Math.floor(r() * n);
  const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]!;
  const bufAlloc = 16 * 1024;
  const rig = new VsockRig({ bufAlloc, maxConnections: 16, maxPendingClients: 8 });
  const canary = () => rig.mem.slice(CANARY_START, CANARY_LEN);
  canary().fill(0xa5);
  const lfds = [rig.listenPort(5000), rig.listenPort(5001)];
  const hostFds: number[] = [];
  const ports = [0, 1, 1234, 5000, 5001, 0xffffffff, 1 << 30, (1 << 30) + 1, (1 << 30) + 2];
  let resets = 0;
  let live: Array<{ host: number; guest: number }> = [];
  const rstSeen = { n: 0 };
  let it = 0;
  const t0 = performance.now();
  try {
    for (; BUDGET.more(it, rig.deviceCalls); it++) {
      try {
        switch (int(14)) {
          case 0: case 1: case 2: case 3: case 4: { // a guest packet, often malformed
            const op = int(10) < 8 ? pick([Op.REQUEST, Op.RESPONSE, Op.RST, Op.SHUTDOWN, Op.RW, Op.CREDIT_UPDATE, Op.CREDIT_REQUEST]) : int(0x10000);
            const plen = pick([0, 1, 100, 4096, bufAlloc + 1, MAX_PKT_PAYLOAD + 1]);
            const payload = new Uint8Array(Math.min(plen, 70_000)).fill(it & 0xff);
            const hdr = encodeHeader({
              op, srcPort: pick(ports), dstPort: pick(ports), payload,
              ...(int(6) === 0 ? { len: int(2) === 0 ? int(0x100000000) : plen + 1 } : {}),
              ...(int(8) === 0 ? { srcCid: BigInt(int(5)) } : {}),
              ...(int(8) === 0 ? { dstCid: BigInt(int(5)) } : {}),
              ...(int(8) === 0 ? { type: int(4) } : {}),
              flags: int(4) === 0 ? int(0x100000000) : int(4),
              bufAlloc: pick([0, 1, 1000, 1 << 20, 0xffffffff]), fwdCnt: pick([0, 1, 1000, 0xffffffff]),
            });
            const cut = int(5) === 0 ? int(hdr.length) : hdr.length; // sometimes a short header
            rig.tx.addChain(cut > 0 ? [hdr.subarray(0, cut), ...(payload.length > 0 ? [payload] : [])] : [payload], int(6) === 0 ? [16] : []);
            rig.deviceCalls++;
            rig.dev.processQueue(1);
            rig.tx.used();
            if (rig.tx.usedIdx === rig.tx.availIdx) rig.tx.resetData();
            break;
          }
          case 5: { // a raw, possibly broken chain on tx or rx
            const d = int(2) === 0 ? rig.tx : rig.rx;
            const head = int(d.layout.size + 2);
            d.writeDesc(head % d.layout.size, pick([0, 0x900000, 0x100000, 1 << 40, 0x1fffff0]), pick([0, 1, 44, 4096, 0xffffffff]), pick([0, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 4]), int(d.layout.size + 2));
            d.publish(head);
            if (d === rig.rx) rig.noteRawRx();
            rig.deviceCalls++;
            rig.dev.processQueue(d === rig.tx ? 1 : 0);
            break;
          }
          case 6: // receive buffers, sometimes tiny
            rig.postRx(1 + int(8), pick([44, 45, 100, 4140, 4140, 65580]));
            break;
          case 7: { // a host client with a good or bad line
            if (hostFds.length > 24) { libc.close(hostFds.shift()!); break; }
            const fd = rig.client();
            hostFds.push(fd);
            const line = pick(['CONNECT 1234\n', 'connect 5000\n', 'CONNECT\n', 'CONNECT -1\n', 'CONNECT 99999999999\n', 'x'.repeat(40), '', 'CONNECT 7\r\n']);
            if (line !== '') writeSome(fd, Buffer.from(line), true);
            break;
          }
          case 8: { // host bytes or a close
            if (hostFds.length === 0) break;
            const i = int(hostFds.length);
            if (int(3) === 0) { libc.close(hostFds[i]!); hostFds.splice(i, 1); } else writeSome(hostFds[i]!, new Uint8Array(int(20000)), true);
            break;
          }
          case 9: // accept and talk on <socket>_<port>
            for (const l of lfds) {
              const fd = libc.accept4Raw(l, libc.SOCK_NONBLOCK | libc.SOCK_CLOEXEC);
              if (fd >= 0) { hostFds.push(fd); writeSome(fd, new Uint8Array(int(5000)), true); }
            }
            for (const fd of hostFds) if (int(2) === 0) readNow(fd);
            break;
          case 10: { // well-formed traffic on a connection the device knows
            if (live.length === 0) break;
            const c = pick(live);
            const op = pick([Op.RW, Op.RW, Op.RW, Op.CREDIT_UPDATE, Op.CREDIT_REQUEST, Op.SHUTDOWN]);
            rig.send({ op, srcPort: c.guest, dstPort: c.host, payload: op === Op.RW ? new Uint8Array(int(4097)) : new Uint8Array(0), flags: op === Op.SHUTDOWN ? 1 + int(3) : 0, bufAlloc: pick([0, 4096, 1 << 18]), fwdCnt: int(1 << 18) });
            break;
          }
          default:
            rig.pump(20);
        }
        rig.pump(5);
        for (const p of rig.received()) {
          if (p.op === Op.RST) { rstSeen.n++; live = live.filter((c) => c.host !== p.srcPort || c.guest !== p.dstPort); }
          if (p.op === Op.RESPONSE) live.push({ host: p.srcPort, guest: p.dstPort });
          if (p.op === Op.REQUEST && int(4) !== 0) {
            rig.send({ op: Op.RESPONSE, srcPort: p.dstPort, dstPort: p.srcPort, bufAlloc: 1 << 18 });
            live.push({ host: p.srcPort, guest: p.dstPort });
          }
        }
        if (live.length > 32) live.shift();
      } catch (e) {
        // The test driver's own limits (its data area, free descriptors): start the rings over.
        if (!(e instanceof VirtqueueError) && /^test driver/.test((e as Error).message)) { live = []; rig.restart(); continue; }
        if (!(e instanceof VirtqueueError)) assert.fail(`iteration ${it} (seed ${SEED}): ${(e as Error).stack ?? String(e)}`);
        resets++;
        live = [];
        rig.restart();
      }
      assert.ok(rig.dev.bufferedBytes <= bufAlloc * 16, `iteration ${it} (seed ${SEED}): ${rig.dev.bufferedBytes} bytes buffered`);
      assert.ok(rig.dev.connectionCount <= 16 && rig.dev.pendingClientCount <= 8, `iteration ${it} (seed ${SEED}): tables over their bounds`);
    }
    assert.ok(canary().every((b) => b === 0xa5), `the device wrote outside the receive buffers (seed ${SEED})`);
    assert.ok(rstSeen.n > 0, 'the fuzz reached the RST paths');
    const ms = performance.now() - t0;
    process.stdout.write(`# @@fuzz:${JSON.stringify({ device: 'vsock', seed: SEED, cases: it, ops: rig.deviceCalls, ms: Math.round(ms) })}@@\n`);
    process.stdout.write(`# vsock fuzz: ${it} iterations, ${rig.deviceCalls} virtqueue operations in ${(ms / 1000).toFixed(1)} s, ${resets} VirtqueueError resets, ${rig.unverifiedRx} received packets unchecked (a raw chain aliased their buffer), ${rstSeen.n} RSTs, counters ${JSON.stringify(rig.dev.counters)}\n`);
    // Still works: a clean guest-initiated connection after everything.
    rig.restart();
    rig.postRx(4);
    rig.dev.processQueue(1);
    const l = rig.listenPort(6000);
    rig.send({ op: Op.REQUEST, srcPort: 77, dstPort: 6000, bufAlloc: 1 << 16 });
    assert.deepEqual(rig.received().map((p) => p.op), [Op.RESPONSE]);
    const peer = rig.accept(l);
    rig.send({ op: Op.RW, srcPort: 77, dstPort: 6000, payload: Buffer.from('alive'), bufAlloc: 1 << 16 });
    assert.equal(readNow(peer).data.toString(), 'alive');
  } finally {
    for (const fd of hostFds) { try { libc.close(fd); } catch { /* closed */ } }
    rig.close();
  }
});
