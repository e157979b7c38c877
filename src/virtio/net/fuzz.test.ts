// Seeded fuzzing of the virtio-net model with malformed virtqueues: random descriptors
// (addresses in and out of RAM, lengths, flags, next links, loops, indirect tables), random
// available-ring entries and index jumps, on the receive, transmit and control queues, with frames
// arriving from the tap side. Only VirtqueueError may escape processQueue/onFdReady, and after
// reset() the device must still carry traffic. STV_FUZZ_SEED replays a run, STV_FUZZ_CASES sets
// the iterations, STV_FUZZ_OPS runs until the device was called that often (npm run soak: 10^6).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as libc from '../../sys/libc.js';
import { VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, bit } from '../device.js';
import { VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VirtqueueError } from '../queue.js';
import { writeDescAt, type TestDriver } from '../testing/driver.js';
import {
  VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MQ,
  VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU,
} from './device.js';
import { Harness, MEM_SIZE, packet } from './harness.fixture.js';
import { fuzzBudget, fuzzDeviceWanted, mulberry32 as rng, seedFromEnv } from '../../testing/prng.js';

const BUDGET = fuzzBudget(3000);
const SEED = seedFromEnv('STV_FUZZ_SEED', 0x5eed);

type R = () => number;
const int = (r: R, n: number): number => Math.floor(r() * n);
const pick = <T>(r: R, xs: readonly T[]): T => xs[int(r, xs.length)]!;

function randAddr(r: R, d: TestDriver): number | bigint {
  switch (int(r, 9)) {
    case 0: return 0;
    case 1: return MEM_SIZE - int(r, 64);
    case 2: return MEM_SIZE + int(r, 1 << 20);
    case 3: return 2 ** 52 - int(r, 16);
    case 4: return 0xffffffffffffffffn - BigInt(int(r, 16));
    case 5: return d.layout.descTable + 16 * int(r, d.layout.size); // inside the rings
    default: return d.dataStart + int(r, d.dataEnd - d.dataStart - 16) ;
  }
}

function randLen(r: R): number {
  return pick(r, [0, 1, 2, 10, 11, 12, 13, 26, 100, 1514, 4096, 65561, 65562, 65563, 70000, 0x7fffffff, 0xffffffff, int(r, 3000), int(r, 3000)]);
}

function randFlags(r: R): number {
  const f = int(r, 8);
  return r() < 0.1 ? f | (int(r, 0x10000) & ~7) : f;
}

/** Scribble over a queue: descriptors, indirect tables, avail entries and index. */
function scribble(r: R, d: TestDriver, ctrl: boolean): void {
  const size = d.layout.size;
  const mem = d.mem;
  const nDesc = int(r, size + 1);
  for (let i = 0; i < nDesc; i++) {
    const idx = int(r, size);
    let next = int(r, size);
    if (r() < 0.1) next = idx; // self loop
    if (r() < 0.05) next = size + int(r, 100);
    if (r() < 0.15) {
      // An indirect table of random descriptors.
      const n = 1 + int(r, 8);
      const t = d.alloc(16 * n, 16);
      for (let j = 0; j < n; j++) {
        writeDescAt(mem, t + 16 * j, randAddr(r, d), randLen(r), randFlags(r), r() < 0.2 ? int(r, 20) : j + 1);
      }
      const tlen = r() < 0.8 ? 16 * n : int(r, 16 * n + 20);
      d.writeDesc(idx, r() < 0.9 ? t : randAddr(r, d), tlen, VIRTQ_DESC_F_INDIRECT | (r() < 0.1 ? VIRTQ_DESC_F_NEXT : 0), next);
    } else {
      d.writeDesc(idx, randAddr(r, d), randLen(r), randFlags(r), next);
    }
  }
  // Some well-formed (or nearly) chains too.
  const nChains = int(r, 4);
  for (let i = 0; i < nChains; i++) {
    try {
      if (ctrl) {
        const len = int(r, 6);
        const b = new Uint8Array(len);
        if (len > 0) b[0] = r() < 0.7 ? VIRTIO_NET_CTRL_MQ : int(r, 256);
        if (len > 1) b[1] = r() < 0.7 ? VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET : int(r, 256);
        for (let j = 2; j < len; j++) b[j] = int(r, 4);
        d.addChain(len > 0 ? [b] : [], r() < 0.9 ? [1] : [], { indirect: r() < 0.3 });
      } else {
        const readable = r() < 0.5 ? [packet(int(r, 3000), int(r, 100))] : [];
        const writable = r() < 0.5 ? [int(r, 3000)] : [int(r, 20)];
        d.addChain(readable, writable, { indirect: r() < 0.3 });
      }
    } catch {
      d.resetData(); // the test driver ran out of descriptors or data space
    }
  }
  for (let i = int(r, 8); i > 0; i--) d.writeAvailEntry(int(r, 0x10000), r() < 0.8 ? int(r, size) : int(r, 0x10000));
  const roll = r();
  if (roll < 0.1) d.setAvailIdx(int(r, 0x10000));
  else if (roll < 0.6) d.setAvailIdx(d.availIdx + int(r, size + 2));
  if (r() < 0.2) d.setAvailFlags(int(r, 4));
  if (r() < 0.2) d.setUsedEvent(int(r, 0x10000));
}

function drainDeviceSide(h: Harness): void {
  const buf = new Uint8Array(70000);
  for (const fd of h.fds) while (libc.readRaw(fd, buf, buf.length) >= 0) { /* discard */ }
}

/** After reset(): a clean activation still moves one frame each way. */
function sanity(h: Harness, where: string): void {
  h.reset();
  h.drainPeers();
  drainDeviceSide(h);
  const feats = bit(VIRTIO_F_EVENT_IDX) | bit(VIRTIO_F_INDIRECT_DESC) | bit(VIRTIO_NET_F_MRG_RXBUF);
  h.activate(feats);
  const p = packet(300, 42);
  h.drivers[1]!.addChain([p], []);
  h.dev.processQueue(1);
  assert.deepEqual(h.peerRecv(0), p, `${where}: TX after reset`);
  const b = h.drivers[0]!.addChain([], [2048]);
  h.peerSend(0, packet(200, 43));
  h.dev.onFdReady(h.fds[0]!);
  assert.deepEqual(h.drivers[0]!.used(), [{ id: b.head, len: 212 }], `${where}: RX after reset`);
  h.reset();
}

test(`fuzz: ${BUDGET.label} of malformed virtqueues on rx, tx and ctrl; only VirtqueueError escapes (seed ${SEED})`, { skip: fuzzDeviceWanted('net') ? false : `not in STV_FUZZ_DEVICES=${process.env.STV_FUZZ_DEVICES}` }, () => {
  const r = rng(SEED);
  const hs = [new Harness({ pairs: 2, queueSize: 16, mem: 'host', mtu: 1500 }), new Harness({ pairs: 2, queueSize: 16, mem: 'buffer', mtu: 1500 })];
  let vqErrors = 0;
  let ops = 0;
  let it = 0;
  const t0 = performance.now();
  try {
    for (; BUDGET.more(it, ops); it++) {
      const h = hs[it & 1]!;
      h.reset();
      h.drainPeers();
      for (const d of h.drivers) d.resetData();
      let feats = 0n;
      for (const b of [VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MQ, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MTU]) {
        if (r() < 0.5) feats |= bit(b);
      }
      h.activate(feats);
      const steps = 1 + int(r, 6);
      for (let s = 0; s < steps; s++) {
        const qi = int(r, h.drivers.length);
        scribble(r, h.drivers[qi]!, qi === 4);
        if (r() < 0.5) {
          const k = int(r, 2);
          h.peerSend(k, r() < 0.1 ? new Uint8Array(int(r, 30)) : packet(pick(r, [20, 60, 1514, 3000, 9000, 65550]) , it, int(r, 4)));
        }
        try {
          ops++;
          switch (int(r, 4)) {
            case 0: h.dev.onFdReady(pick(r, [h.fds[0]!, h.fds[1]!, h.fds[1]!, 999])); break;
            case 1: h.dev.processQueue(pick(r, [0, 1, 2, 3, 4, 5, -1])); break;
            default: h.dev.processQueue(qi);
          }
          h.dev.pollFds();
        } catch (e) {
          if (!(e instanceof VirtqueueError)) {
            assert.fail(`iteration ${it} (seed ${SEED}): ${(e as Error).stack ?? String(e)}`);
          }
          vqErrors++;
          break; // the transport now sets DEVICE_NEEDS_RESET and stops calling in
        }
        for (const d of h.drivers) d.used();
      }
      if (it % 250 === 249) sanity(h, `after iteration ${it}`);
    }
    sanity(hs[0]!, 'at the end (host memory)');
    sanity(hs[1]!, 'at the end (buffer memory)');
    const ms = performance.now() - t0;
    assert.ok(vqErrors > it / 10, `malformed queues were detected (${vqErrors})`);
    const c = (k: 'txFrames' | 'txDropped' | 'rxFrames' | 'rxTruncated' | 'rxDropped'): number => hs[0]!.dev.counters[k] + hs[1]!.dev.counters[k];
    console.log(`# @@fuzz:${JSON.stringify({ device: 'net', seed: SEED, cases: it, ops, ms: Math.round(ms) })}@@`);
    console.log(`# fuzz: ${vqErrors} VirtqueueErrors in ${it} iterations, ${ops} virtqueue operations in ${(ms / 1000).toFixed(1)} s; tx ${c('txFrames')} sent ${c('txDropped')} refused; rx ${c('rxFrames')} delivered ${c('rxTruncated')} truncated ${c('rxDropped')} dropped`);
  } finally {
    for (const h of hs) h.close();
  }
});
