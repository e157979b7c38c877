// virtio-net under Cloud Hypervisor's rate_limiter_config, on a fake clock: TX frames beyond the
// tokens stay in the available ring, RX frames beyond them wait in the device (the tap is not
// read meanwhile), and both resume when the clock moved on and the throttle timer fires.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, bit } from '../device.js';
import { RateLimiter } from '../rate_limiter.js';
import { VIRTIO_NET_HDR_SIZE } from './device.js';
import { Harness, packet } from './harness.fixture.js';

const RING = bit(VIRTIO_F_EVENT_IDX) | bit(VIRTIO_F_INDIRECT_DESC);

function fakeClock(): { now: () => number; advance: (ms: number) => void } {
  let t = 0;
  return { now: () => t, advance: (ms) => { t += ms; } };
}

test('TX: a 3000-byte bucket sends exactly the frames it covers; the rest stay available until the timer', () => {
  const clock = fakeClock();
  const tx = new RateLimiter({ bandwidth: { size: 3000, refill_time: 100 } }, clock.now);
  const h = new Harness({ txRateLimiter: tx });
  try {
    h.activate(RING);
    const d = h.drivers[1]!;
    for (let i = 0; i < 5; i++) d.addChain([packet(1000, i)], []); // 1000 bytes each after the header
    h.dev.processQueue(1);
    assert.equal(d.used().length, 3);
    assert.equal(d.availIdx - d.usedIdx, 2, 'two frames still in the avail ring');
    assert.equal(h.drainPeers(), 3);
    assert.equal(h.dev.counters.txBytes, 3000);
    assert.equal(h.dev.counters.txRateLimited, 1);
    const timer = h.dev.pollFds().at(-1)!;
    assert.ok(!h.fds.includes(timer), 'the throttle timer is polled beside the tap');
    h.dev.processQueue(1); // a guest kick with no time passed: nothing
    assert.equal(d.used().length, 0);
    clock.advance(50); // 1500 tokens: one frame
    h.dev.onFdReady(timer);
    assert.equal(d.used().length, 1);
    clock.advance(100);
    h.dev.onFdReady(timer);
    assert.equal(d.used().length, 1);
    const got: Uint8Array[] = [];
    let r;
    while ((r = h.peerRecv(0)) !== null) got.push(r);
    assert.deepEqual(got, [packet(1000, 3), packet(1000, 4)], 'in order, whole');
  } finally {
    h.close();
  }
});

test('RX: beyond the ops bucket a frame waits in the device and its tap leaves the poll set; RX and TX are independent', () => {
  const clock = fakeClock();
  const cfg = { ops: { size: 2, refill_time: 1000 } };
  const h = new Harness({ rxRateLimiter: new RateLimiter(cfg, clock.now), txRateLimiter: new RateLimiter(cfg, clock.now) });
  try {
    h.activate(RING);
    const rx = h.drivers[0]!;
    for (let i = 0; i < 8; i++) rx.addChain([], [2048]);
    for (let i = 0; i < 4; i++) h.peerSend(0, packet(100, i));
    const timer = h.dev.pollFds().at(-1)!;
    assert.deepEqual(h.dev.pollFds(), [h.fds[0], timer]);
    h.dev.onFdReady(h.fds[0]!);
    assert.equal(rx.used().length, 2);
    assert.deepEqual(h.dev.pollFds(), [timer], 'throttled: the tap is not polled');
    assert.equal(h.dev.counters.rxRateLimited, 1);
    // TX has its own bucket: two frames go out although RX is out of ops.
    const tx = h.drivers[1]!;
    tx.addChain([packet(60, 9)], []);
    tx.addChain([packet(60, 10)], []);
    h.dev.processQueue(1);
    assert.equal(tx.used().length, 2);
    clock.advance(500); // one op
    h.dev.onFdReady(timer);
    const u = rx.used();
    assert.equal(u.length, 1);
    assert.equal(u[0]!.len, VIRTIO_NET_HDR_SIZE + 100);
    assert.deepEqual(h.dev.pollFds(), [timer]);
    clock.advance(500);
    h.dev.onFdReady(timer);
    assert.equal(rx.used().length, 1);
    assert.equal(h.dev.counters.rxFrames, 4);
    assert.deepEqual(h.dev.pollFds(), [h.fds[0], timer], 'no frame waits: the tap is polled although the ops are out');
    h.peerSend(0, packet(100, 5));
    h.dev.onFdReady(h.fds[0]!);
    assert.equal(rx.used().length, 0);
    assert.deepEqual(h.dev.pollFds(), [timer]);
    clock.advance(500);
    h.dev.onFdReady(timer);
    assert.equal(rx.used().length, 1);
    assert.deepEqual(h.dev.pollFds(), [h.fds[0], timer], 'tokens back: the tap is polled again');
  } finally {
    h.close();
  }
});

test('reset() drops the throttled state: the device works again after reactivation', () => {
  const clock = fakeClock();
  const h = new Harness({ txRateLimiter: new RateLimiter({ ops: { size: 1, refill_time: 1000 } }, clock.now) });
  try {
    h.activate(RING);
    h.drivers[1]!.addChain([packet(60, 1)], []);
    h.drivers[1]!.addChain([packet(60, 2)], []);
    h.dev.processQueue(1);
    assert.equal(h.drivers[1]!.used().length, 1);
    h.reset();
    h.drainPeers();
    h.activate(RING);
    clock.advance(1000);
    h.drivers[1]!.addChain([packet(60, 3)], []);
    h.dev.processQueue(1);
    assert.equal(h.drivers[1]!.used().length, 1);
    assert.deepEqual(h.peerRecv(0), packet(60, 3));
  } finally {
    h.close();
  }
});
