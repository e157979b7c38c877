import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { createSocket } from 'node:dgram';
import * as libc from '../../sys/libc.js';
import { VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VirtioDeviceType, bit } from '../device.js';
import { VirtqueueError } from '../queue.js';
import { Tap, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN, TUN_F_UFO } from '../../net/tap.js';
import {
  NetDevice, VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, VIRTIO_NET_ERR, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_CTRL_VQ,
  VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_UFO,
  VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO, VIRTIO_NET_F_MAC,
  VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS, VIRTIO_NET_HDR_F_DATA_VALID,
  VIRTIO_NET_OK,
} from './device.js';
import { Harness, packet, type MemKind } from './harness.fixture.js';

const F = (...bits: bigint[]): bigint => bits.reduce((a, b) => a | bit(b), 0n);
const RING = F(VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC);
const MEMS: MemKind[] = ['host', 'buffer'];

function throwsVq(fn: () => unknown, re: RegExp): void {
  assert.throws(fn, (e: unknown) => e instanceof VirtqueueError && re.test(e.message));
}

test('features, queue count and config space (5.1.3, 5.1.4)', () => {
  const h1 = new Harness();
  try {
    const d = h1.dev;
    assert.equal(d.deviceType, VirtioDeviceType.Net);
    assert.equal(d.numQueues, 2);
    assert.equal(d.queueMaxSize, 256);
    const want = F(VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_ECN,
      VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_UFO,
      VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC);
    assert.equal(d.features, want);
    const cfg = new Uint8Array(14);
    d.readConfig(0, cfg);
    assert.deepEqual([...cfg], [0x52, 0x54, 0, 0x12, 0x34, 0x56, 1, 0, 1, 0, 0, 0, 0, 0]);
    const tail = new Uint8Array(2);
    d.readConfig(6, tail);
    assert.deepEqual([...tail], [1, 0], 'status: VIRTIO_NET_S_LINK_UP');
    d.writeConfig(0, new Uint8Array(6)); // ignored
    d.readConfig(0, cfg);
    assert.equal(cfg[0], 0x52);
  } finally {
    h1.close();
  }
  const h2 = new Harness({ pairs: 3, mtu: 9000 });
  try {
    const d = h2.dev;
    assert.equal(d.numQueues, 7);
    assert.equal(d.features & F(VIRTIO_NET_F_MQ, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_MTU), F(VIRTIO_NET_F_MQ, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_MTU));
    const cfg = new Uint8Array(12);
    d.readConfig(0, cfg);
    assert.equal(cfg[8]! | (cfg[9]! << 8), 3);
    assert.equal(cfg[10]! | (cfg[11]! << 8), 9000);
  } finally {
    h2.close();
  }
  assert.throws(() => new NetDevice({ tapFds: [1], mac: new Uint8Array(6), queuePairs: 2, queueSize: 256, setOffload: () => {} }), /2 tap fd/);
  assert.throws(() => new NetDevice({ tapFds: [1], mac: new Uint8Array(6), queuePairs: 1, queueSize: 100, setOffload: () => {} }), /power of two/);
  assert.throws(() => new NetDevice({ tapFds: [1], mac: new Uint8Array(5), queuePairs: 1, queueSize: 64, setOffload: () => {} }), /MAC/);
});

test('activate() sets the tap offloads matching the accepted GUEST_* features (5.1.6.3)', () => {
  const h = new Harness();
  try {
    h.activate(RING);
    h.dev.reset();
    h.activate(RING | F(VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4));
    h.dev.reset();
    h.activate(RING | F(VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_TSO4));
    h.dev.reset();
    // A driver ignoring 5.1.3.1's dependencies: the tap would refuse TSO without CSUM, ECN without TSO.
    h.activate(RING | F(VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_ECN));
    h.dev.reset();
    h.activate(RING | F(VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_UFO));
    assert.deepEqual(h.offloads, [0, TUN_F_CSUM | TUN_F_TSO4, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN | TUN_F_UFO, 0, TUN_F_CSUM | TUN_F_UFO]);
  } finally {
    h.close();
  }
});

for (const kind of MEMS) {
  test(`TX: header and frame reach the tap side byte for byte, from split and indirect chains (${kind} memory)`, () => {
    const h = new Harness({ mem: kind });
    try {
      h.activate(RING);
      const tx = h.drivers[1]!;
      const p1 = packet(1500, 1);
      const p2 = packet(60, 2);
      // Header alone, then the frame in two pieces.
      tx.addChain([p1.subarray(0, 12), p1.subarray(12, 700), p1.subarray(700)], []);
      tx.addChain([p2.subarray(0, 5), p2.subarray(5)], [], { indirect: true });
      h.dev.processQueue(1);
      assert.deepEqual(h.peerRecv(0), p1);
      assert.deepEqual(h.peerRecv(0), p2);
      assert.equal(h.peerRecv(0), null);
      const used = tx.used();
      assert.equal(used.length, 2);
      assert.ok(used.every((u) => u.len === 0));
      assert.deepEqual(h.notified, [1]);
      assert.equal(h.dev.counters.txFrames, 2);
      assert.equal(h.dev.counters.txBytes, 1500 + 60);
    } finally {
      h.close();
    }
  });
}

test('TX: a chain of more segments than IOV_MAX is gathered and sent whole', () => {
  const h = new Harness({ queueSize: 2048 });
  try {
    h.activate(RING);
    const p = packet(1200, 8);
    const pieces: Uint8Array[] = [p.subarray(0, 12)];
    for (let o = 12; o < p.length; o++) pieces.push(p.subarray(o, o + 1));
    assert.ok(pieces.length > libc.IOV_MAX);
    h.drivers[1]!.addChain(pieces, [], { indirect: true });
    h.dev.processQueue(1);
    assert.deepEqual(h.peerRecv(0), p);
  } finally {
    h.close();
  }
});

test('TX: a chain too short for the header or longer than 65562 bytes is a VirtqueueError', () => {
  const h = new Harness();
  try {
    h.activate(RING);
    h.drivers[1]!.addChain([new Uint8Array(11)], []);
    throwsVq(() => h.dev.processQueue(1), /11 device-readable bytes/);
    h.reset();
    h.activate(RING);
    h.drivers[1]!.addChain([new Uint8Array(65536), new Uint8Array(27)], []);
    throwsVq(() => h.dev.processQueue(1), /65563 device-readable bytes/);
    // Writable descriptors in a transmit chain are ignored.
    h.reset();
    h.activate(RING);
    const p = packet(100);
    h.drivers[1]!.addChain([p], [64]);
    h.dev.processQueue(1);
    assert.deepEqual(h.peerRecv(0), p);
  } finally {
    h.close();
  }
});

test('TX: EAGAIN on the tap keeps the chain and resumes on the next notification, in order', () => {
  const h = new Harness();
  try {
    h.activate(RING);
    const tx = h.drivers[1]!;
    // Large datagrams fill the socketpair's send buffer (about 200 KiB) after a few frames.
    const N = 40;
    const SZ = 30000;
    for (let i = 0; i < N; i++) tx.addChain([packet(SZ, i)], []);
    h.dev.processQueue(1);
    const first = tx.used().length;
    assert.ok(first > 0 && first < N, `an AF_UNIX datagram queue fills before ${N} frames (sent ${first})`);
    const got: Uint8Array[] = [];
    let r;
    while ((r = h.peerRecv(0)) !== null) got.push(r);
    for (let round = 0; round < 10 && got.length < N; round++) {
      h.dev.processQueue(1);
      while ((r = h.peerRecv(0)) !== null) got.push(r);
    }
    assert.equal(got.length, N);
    got.forEach((g, i) => assert.deepEqual(g, packet(SZ, i)));
    assert.equal(first + tx.used().length, N);
    assert.equal(h.dev.counters.txDropped, 0);
  } finally {
    h.close();
  }
});

for (const kind of MEMS) {
  test(`RX without MRG_RXBUF: one frame per buffer, num_buffers 1, flags cleared without GUEST_CSUM (${kind} memory)`, () => {
    const h = new Harness({ mem: kind });
    try {
      h.activate(RING);
      const rx = h.drivers[0]!;
      const b1 = rx.addChain([], [12, 2036]); // header in its own descriptor
      const b2 = rx.addChain([], [2048], { indirect: true });
      const p1 = packet(1000, 3, VIRTIO_NET_HDR_F_DATA_VALID);
      const p2 = packet(64, 4);
      assert.equal(h.peerSend(0, p1), p1.length);
      assert.equal(h.peerSend(0, p2), p2.length);
      assert.deepEqual(h.dev.pollFds(), [h.fds[0]]);
      h.dev.onFdReady(h.fds[0]!);
      const used = rx.used();
      assert.deepEqual(used, [{ id: b1.head, len: p1.length }, { id: b2.head, len: p2.length }]);
      const hdr = h.mem.slice(b1.writable[0]!, 12);
      assert.equal(hdr[0], 0, 'flags cleared: GUEST_CSUM not negotiated');
      assert.equal(hdr[10]! | (hdr[11]! << 8), 1, 'num_buffers');
      assert.deepEqual(h.mem.slice(b1.writable[1]!, 1000), p1.subarray(12));
      const h2 = h.mem.slice(b2.writable[0]!, p2.length);
      assert.deepEqual(h2.subarray(12), p2.subarray(12));
      assert.equal(h2[10], 1);
      assert.deepEqual(h.notified, [0]);
      assert.equal(h.dev.counters.rxFrames, 2);
    } finally {
      h.close();
    }
  });

  test(`RX with MRG_RXBUF: a frame spans several buffers and num_buffers says how many (${kind} memory)`, () => {
    const h = new Harness({ mem: kind });
    try {
      h.activate(RING | F(VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_GUEST_CSUM));
      const rx = h.drivers[0]!;
      const bufs = [rx.addChain([], [1000]), rx.addChain([], [400, 600]), rx.addChain([], [1000], { indirect: true }), rx.addChain([], [1000])];
      const p = packet(2988 - 500, 9, VIRTIO_NET_HDR_F_DATA_VALID); // 2500 bytes with the header
      h.peerSend(0, p);
      h.dev.onFdReady(h.fds[0]!);
      const used = rx.used();
      assert.deepEqual(used, [{ id: bufs[0]!.head, len: 1000 }, { id: bufs[1]!.head, len: 1000 }, { id: bufs[2]!.head, len: 500 }]);
      const hdr = h.mem.slice(bufs[0]!.writable[0]!, 12);
      assert.equal(hdr[0], VIRTIO_NET_HDR_F_DATA_VALID, 'flags kept with GUEST_CSUM');
      assert.equal(hdr[10]! | (hdr[11]! << 8), 3, 'num_buffers');
      const joined = new Uint8Array(2500);
      joined.set(h.mem.slice(bufs[0]!.writable[0]!, 1000), 0);
      joined.set(h.mem.slice(bufs[1]!.writable[0]!, 400), 1000);
      joined.set(h.mem.slice(bufs[1]!.writable[1]!, 600), 1400);
      joined.set(h.mem.slice(bufs[2]!.writable[0]!, 500), 2000);
      assert.deepEqual(joined.subarray(12), p.subarray(12));
      // A 64 KiB frame over 1 KiB buffers (a GSO frame with GUEST_TSO4).
      const big = packet(65550, 5);
      const more = [];
      for (let i = 0; i < 70; i++) more.push(rx.addChain([], [1024]));
      h.peerSend(0, big);
      h.dev.onFdReady(h.fds[0]!);
      const u2 = rx.used();
      const n = Math.ceil(big.length / 1024);
      assert.equal(u2.length, n);
      assert.equal(u2[0]!.id, bufs[3]!.head, 'the buffer left over from the first frame comes first');
      assert.equal(h.mem.readU16(bufs[3]!.writable[0]! + 10), n);
      assert.equal(u2.reduce((a, u) => a + u.len, 0), big.length);
    } finally {
      h.close();
    }
  });
}

test('RX: without buffers the tap fd leaves pollFds() and the frame waits for the guest', () => {
  const h = new Harness();
  try {
    h.activate(RING | F(VIRTIO_NET_F_MRG_RXBUF));
    const rx = h.drivers[0]!;
    const p = packet(2988, 7);
    h.peerSend(0, p);
    assert.deepEqual(h.dev.pollFds(), [h.fds[0]]);
    h.dev.onFdReady(h.fds[0]!);
    assert.deepEqual(h.dev.pollFds(), [], 'starved: not polled');
    assert.equal(h.drivers[0]!.availEvent, 0, 'EVENT_IDX: asks to be notified at the next buffer');
    // One buffer: not enough for 3000 bytes; it is held, nothing published.
    const a = rx.addChain([], [1024]);
    h.dev.processQueue(0);
    assert.deepEqual(rx.used(), []);
    assert.deepEqual(h.dev.pollFds(), []);
    const b = rx.addChain([], [1024]);
    const c = rx.addChain([], [1024]);
    h.dev.processQueue(0);
    assert.deepEqual(rx.used(), [{ id: a.head, len: 1024 }, { id: b.head, len: 1024 }, { id: c.head, len: 3000 - 2048 }]);
    assert.equal(h.mem.readU16(a.writable[0]! + 10), 3);
    assert.deepEqual(h.dev.pollFds(), [], 'all buffers used: starved again');
    rx.addChain([], [1024]);
    h.dev.processQueue(0);
    assert.deepEqual(h.dev.pollFds(), [h.fds[0]], 'polled again');
    assert.equal(h.dev.counters.rxFrames, 1);
  } finally {
    h.close();
  }
});

test('RX: a buffer too small (no MRG_RXBUF) truncates and counts; one under 12 bytes is a VirtqueueError', () => {
  const h = new Harness({ mem: 'buffer' });
  try {
    h.activate(RING);
    const rx = h.drivers[0]!;
    const b = rx.addChain([], [100]);
    h.peerSend(0, packet(300));
    h.dev.onFdReady(h.fds[0]!);
    assert.deepEqual(rx.used(), [{ id: b.head, len: 100 }]);
    assert.equal(h.dev.counters.rxTruncated, 1);
    assert.deepEqual(h.dev.pollFds(), [], 'no buffers left');
    rx.addChain([new Uint8Array(20)], [11]);
    h.peerSend(0, packet(300));
    throwsVq(() => h.dev.processQueue(0), /11 device-writable bytes/);
    // A runt from the host side is dropped and counted.
    h.reset();
    h.activate(RING);
    h.drivers[0]!.addChain([], [2048]);
    h.peerSend(0, new Uint8Array(20));
    h.dev.onFdReady(h.fds[0]!);
    assert.deepEqual(h.drivers[0]!.used(), []);
    assert.equal(h.dev.counters.rxDropped, 1);
  } finally {
    h.close();
  }
});

test('RX: with every ring descriptor held and the frame still too big, it is delivered truncated', () => {
  const h = new Harness({ queueSize: 4 });
  try {
    h.activate(RING | F(VIRTIO_NET_F_MRG_RXBUF));
    const rx = h.drivers[0]!;
    for (let i = 0; i < 4; i++) rx.addChain([], [100]);
    h.peerSend(0, packet(1000));
    h.dev.onFdReady(h.fds[0]!);
    const used = rx.used();
    assert.equal(used.length, 4);
    assert.equal(h.dev.counters.rxTruncated, 1);
    assert.equal(h.mem.readU16(h.drivers[0]!.dataStart + 10), 4);
  } finally {
    h.close();
  }
});

test('RX: with VIRTIO_NET_F_MTU, oversized non-GSO frames are dropped (5.1.6.3.2)', () => {
  const h = new Harness({ mtu: 1000 });
  try {
    h.activate(RING | F(VIRTIO_NET_F_MTU, VIRTIO_NET_F_MRG_RXBUF));
    const rx = h.drivers[0]!;
    for (let i = 0; i < 4; i++) rx.addChain([], [2048]);
    h.peerSend(0, packet(1000 + 14 + 4 + 1));
    h.peerSend(0, packet(1000 + 14));
    h.dev.onFdReady(h.fds[0]!);
    assert.deepEqual(rx.used().map((u) => u.len), [12 + 1014]);
    assert.equal(h.dev.counters.rxDropped, 1);
  } finally {
    h.close();
  }
});

function ctrlCmd(h: Harness, ctrl: number, bytes: number[], split = false): { head: number; ack: number } {
  const d = h.drivers[ctrl]!;
  const b = Uint8Array.from(bytes);
  const c = split ? d.addChain([b.subarray(0, 1), b.subarray(1, 2), b.subarray(2)], [1]) : d.addChain([b], [1]);
  h.mem.writeU8(c.writable[0]!, 0xee);
  h.dev.processQueue(ctrl);
  return { head: c.head, ack: h.mem.readU8(c.writable[0]!) };
}

test('control queue: VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET enables pairs; other classes get VIRTIO_NET_ERR (5.1.6.5)', () => {
  const h = new Harness({ pairs: 2, steering: true });
  try {
    h.activate(RING | F(VIRTIO_NET_F_MQ, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_MRG_RXBUF));
    const CTRL = 4;
    assert.deepEqual(h.steer, [[0, true], [1, false]], 'multiqueue is off until the driver enables it');
    // Before VQ_PAIRS_SET both fds feed receive queue 0.
    assert.deepEqual(h.dev.pollFds(), [h.fds[0], h.fds[1]]);
    h.drivers[0]!.addChain([], [2048]);
    h.peerSend(1, packet(100, 1));
    h.dev.onFdReady(h.fds[1]!);
    assert.equal(h.drivers[0]!.used().length, 1, 'fd 1 delivered on receiveq 0');

    let r = ctrlCmd(h, CTRL, [VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, 2, 0]);
    assert.equal(r.ack, VIRTIO_NET_OK);
    assert.deepEqual(h.drivers[CTRL]!.used(), [{ id: r.head, len: 1 }]);
    assert.deepEqual(h.steer.slice(2), [[1, true]]);
    assert.ok(h.notified.includes(CTRL));
    const rb = h.drivers[2]!.addChain([], [2048]);
    h.peerSend(1, packet(100, 2));
    h.dev.onFdReady(h.fds[1]!);
    assert.deepEqual(h.drivers[2]!.used(), [{ id: rb.head, len: 112 }], 'fd 1 now delivers on receiveq 1');
    assert.deepEqual(h.mem.slice(rb.writable[0]! + 12, 100), packet(100, 2).subarray(12));
    assert.ok(h.notified.includes(2));
    // TX on pair 1 goes to fd 1.
    h.drivers[3]!.addChain([packet(80, 3)], []);
    h.dev.processQueue(3);
    assert.deepEqual(h.peerRecv(1), packet(80, 3));

    assert.equal(ctrlCmd(h, CTRL, [VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, 3, 0]).ack, VIRTIO_NET_ERR);
    assert.equal(ctrlCmd(h, CTRL, [VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, 0, 0]).ack, VIRTIO_NET_ERR);
    assert.equal(ctrlCmd(h, CTRL, [VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, 1]).ack, VIRTIO_NET_ERR, 'data too short');
    assert.equal(ctrlCmd(h, CTRL, [0, 0, 1]).ack, VIRTIO_NET_ERR, 'VIRTIO_NET_CTRL_RX is not offered');
    assert.equal(ctrlCmd(h, CTRL, [VIRTIO_NET_CTRL_MQ, 1, 0, 0]).ack, VIRTIO_NET_ERR, 'RSS is not offered');
    assert.equal(ctrlCmd(h, CTRL, [VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, 1, 0], true).ack, VIRTIO_NET_OK, 'command split over descriptors');
    assert.deepEqual(h.steer.slice(3), [[1, false]]);

    h.drivers[CTRL]!.addChain([Uint8Array.of(VIRTIO_NET_CTRL_MQ)], [1]);
    throwsVq(() => h.dev.processQueue(CTRL), /control command/);
  } finally {
    h.close();
  }
});

test('control queue without MQ is queue 2 and refuses MQ commands (5.1.2)', () => {
  const h = new Harness({ pairs: 2 });
  try {
    h.activate(RING | F(VIRTIO_NET_F_CTRL_VQ), [0, 1, 2]);
    assert.deepEqual(h.dev.pollFds(), [h.fds[0], h.fds[1]], 'both tap queues feed receiveq 0');
    assert.equal(ctrlCmd(h, 2, [VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, 2, 0]).ack, VIRTIO_NET_ERR);
    h.dev.processQueue(4); // not a queue of this configuration: ignored
  } finally {
    h.close();
  }
});

test('reset() forgets everything and the device works again after reactivation', () => {
  const h = new Harness();
  try {
    h.activate(RING | F(VIRTIO_NET_F_MRG_RXBUF));
    h.drivers[0]!.addChain([], [1024]);
    h.peerSend(0, packet(3000)); // held half-delivered
    h.dev.onFdReady(h.fds[0]!);
    h.reset();
    assert.deepEqual(h.dev.pollFds(), []);
    h.dev.processQueue(0);
    h.dev.onFdReady(h.fds[0]!);
    h.activate(RING);
    const b = h.drivers[0]!.addChain([], [2048]);
    h.peerSend(0, packet(500, 2));
    h.dev.onFdReady(h.fds[0]!);
    assert.deepEqual(h.drivers[0]!.used(), [{ id: b.head, len: 512 }]);
    assert.deepEqual(h.mem.slice(b.writable[0]! + 12, 500), packet(500, 2).subarray(12));
  } finally {
    h.close();
  }
});

// --- a real tap -------------------------------------------------------------------------------

function tapSkipReason(): string | null {
  if (!existsSync('/dev/net/tun')) return '/dev/net/tun is missing';
  try {
    Tap.open({ vnetHdr: true }).close();
    return null;
  } catch (e) {
    return `cannot create a tap: ${(e as Error).message}`;
  }
}

function ipv4Checksum(b: Uint8Array): number {
  let s = 0;
  for (let i = 0; i < b.length; i += 2) s += (b[i]! << 8) | (b[i + 1] ?? 0);
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return ~s & 0xffff;
}

/** Ethernet + IPv4 + UDP (checksum 0) from 192.168.248.2:5555 to 192.168.248.1:port. */
function udpFrame(dstMac: Uint8Array, srcMac: Uint8Array, port: number, payload: Uint8Array): Uint8Array {
  const f = new Uint8Array(14 + 20 + 8 + payload.length);
  const dv = new DataView(f.buffer);
  f.set(dstMac, 0);
  f.set(srcMac, 6);
  dv.setUint16(12, 0x0800);
  const ip = f.subarray(14, 34);
  ip.set([0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 17, 0, 0, 192, 168, 248, 2, 192, 168, 248, 1]);
  new DataView(f.buffer, 14).setUint16(2, 20 + 8 + payload.length);
  new DataView(f.buffer, 14).setUint16(10, ipv4Checksum(ip));
  dv.setUint16(34, 5555);
  dv.setUint16(36, port);
  dv.setUint16(38, 8 + payload.length);
  f.set(payload, 42);
  return f;
}

test('through a real tap: a guest UDP datagram reaches a host socket; the host ARP request reaches the guest', async (t) => {
  const why = tapSkipReason();
  if (why !== null) {
    console.log(`# skipped: ${why}`);
    t.skip(why);
    return;
  }
  const tap = Tap.open({ vnetHdr: true });
  const sock = createSocket('udp4');
  const h = new Harness({ fds: [...tap.fds] });
  try {
    tap.configure({ ip: '192.168.248.1', mask: '255.255.255.0' });
    const hostMac = Uint8Array.from(readFileSync(`/sys/class/net/${tap.name}/address`, 'utf8').trim().split(':').map((x) => parseInt(x, 16)));
    await new Promise<void>((resolve, reject) => { sock.once('error', reject); sock.bind(0, '192.168.248.1', resolve); });
    const port = sock.address().port;
    h.activate(RING | F(VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_CSUM));
    assert.deepEqual(h.offloads, [TUN_F_CSUM]);

    // TX: guest -> host socket.
    const payload = Buffer.from('hello from the guest');
    const received = new Promise<Buffer>((resolve) => sock.once('message', (m) => resolve(m)));
    const frame = udpFrame(hostMac, h.dev.mac, port, payload);
    const pkt = new Uint8Array(12 + frame.length);
    pkt.set(frame, 12);
    h.drivers[1]!.addChain([pkt.subarray(0, 12), pkt.subarray(12)], []);
    h.dev.processQueue(1);
    assert.equal(h.dev.counters.txFrames, 1, `tx dropped: ${h.dev.counters.txDropped}`);
    const got = await Promise.race([received, new Promise<null>((r) => setTimeout(() => r(null), 3000))]);
    assert.ok(got !== null, 'the host socket received the guest datagram');
    assert.equal(got.toString(), payload.toString());

    // RX: host sends to 192.168.248.2 -> the kernel asks who has it (ARP) on the tap.
    const rx = h.drivers[0]!;
    const bufs = [];
    for (let i = 0; i < 32; i++) bufs.push(rx.addChain([], [2048]));
    sock.send(Buffer.from('to the guest'), 9, '192.168.248.2');
    const pfd = libc.pollFds(1);
    let arp: Uint8Array | null = null;
    const deadline = Date.now() + 5000;
    while (arp === null && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
      libc.pollFdSet(pfd, 0, tap.fds[0]!, libc.POLLIN);
      if (libc.poll(pfd, 0) === 0) continue;
      h.dev.onFdReady(tap.fds[0]!);
      for (const u of rx.used()) {
        const b = bufs.find((c) => c.head === u.id)!;
        const f = h.mem.slice(b.writable[0]!, u.len);
        assert.equal(f[10]! | (f[11]! << 8), 1, 'num_buffers');
        const eth = f.subarray(12);
        if (eth[12] === 0x08 && eth[13] === 0x06 && eth[21] === 1 && eth.subarray(38, 42).join('.') === '192.168.248.2') arp = eth;
      }
    }
    assert.ok(arp !== null, 'an ARP request for 192.168.248.2 arrived in the receive queue');
    assert.deepEqual([...arp.subarray(6, 12)], [...hostMac]);
  } finally {
    sock.close();
    h.dev.close();
    tap.close();
  }
});

test('through a real multi-queue tap: offloads are accepted and queue steering follows VQ_PAIRS_SET', (t) => {
  const why = tapSkipReason();
  if (why !== null) {
    console.log(`# skipped: ${why}`);
    t.skip(why);
    return;
  }
  const tap = Tap.open({ queues: 2, vnetHdr: true });
  const dev = new NetDevice({
    tapFds: [...tap.fds], mac: Uint8Array.from([0x52, 0x54, 0, 0, 0, 1]), queuePairs: 2, queueSize: 256,
    setOffload: (f) => tap.setOffload(f), setQueueEnabled: (k, en) => tap.setQueueEnabled(k, en),
  });
  const h = new Harness({ pairs: 2, fds: [...tap.fds] });
  try {
    // The harness's own device only lays out the queues; drive `dev` over the same rings.
    // Every GUEST_* offload: the real tap accepts the TUN_F_* set the device derives.
    const feats = RING | F(VIRTIO_NET_F_MQ, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4,
      VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_UFO);
    const queues = h.drivers.map((d) => d.queue({ eventIdx: true, indirect: true }));
    dev.activate({ mem: h.mem, queues, features: feats, notifyQueue: () => {}, notifyConfig: () => {} });
    assert.equal(dev.counters.steeringErrors, 0);
    const send = (n: number): number => {
      const c = h.drivers[4]!.addChain([Uint8Array.of(VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, n, 0)], [1]);
      dev.processQueue(4);
      return h.mem.readU8(c.writable[0]!);
    };
    assert.equal(send(2), VIRTIO_NET_OK);
    assert.equal(send(1), VIRTIO_NET_OK);
    assert.equal(send(2), VIRTIO_NET_OK);
    assert.equal(dev.counters.steeringErrors, 0);
    assert.deepEqual(dev.pollFds(), tap.fds);
    dev.reset();
    dev.activate({ mem: h.mem, queues, features: feats, notifyQueue: () => {}, notifyConfig: () => {} });
    assert.equal(dev.counters.steeringErrors, 0, 're-activation re-steers without errors');
  } finally {
    dev.close();
    h.dev.close();
    h.mem.free();
    tap.close();
  }
});

test('pause hands back the transmit chain the tap refused and the receive chains a frame was being spread over; after resume both go through, nothing lost or doubled', () => {
  const h = new Harness();
  try {
    h.activate(RING | F(VIRTIO_NET_F_MRG_RXBUF));
    const tx = h.drivers[1]!;
    const rx = h.drivers[0]!;
    const txq = h.queues[1]!;
    const rxq = h.queues[0]!;
    const N = 40;
    const SZ = 30000;
    for (let i = 0; i < N; i++) tx.addChain([packet(SZ, i)], []);
    h.dev.processQueue(1);
    const sent = tx.used().length;
    assert.ok(sent > 0 && sent < N, 'the tap (socketpair) filled: one chain is held');
    assert.equal(txq.lastAvailIdx, sent + 1, 'the refused chain is held in flight');
    // A 3000-byte frame and only one 2048-byte receive buffer: it waits half copied.
    const b1 = rx.addChain([], [2048]);
    const frame = packet(3000, 9);
    h.peerSend(0, frame);
    h.dev.onFdReady(h.fds[0]!);
    assert.equal(rxq.lastAvailIdx, 1, 'the receive buffer holds the first part of the frame');
    h.dev.pause();
    assert.equal(txq.lastAvailIdx, sent, 'the refused transmit chain is given back');
    assert.equal(rxq.lastAvailIdx, 0, 'the half-filled receive chain is given back');
    assert.deepEqual(rx.used(), []);
    assert.deepEqual(h.dev.saveState(), { kind: 'net', mac: Uint8Array.from([0x52, 0x54, 0, 0x12, 0x34, 0x56]), config: (() => { const c = new Uint8Array(12); h.dev.readConfig(0, c); return c; })(), activePairs: 1 });
    // Resume: the driver of the device looks at every queue once.
    const got: Uint8Array[] = [];
    let r;
    while ((r = h.peerRecv(0)) !== null) got.push(r);
    const b2 = rx.addChain([], [2048]);
    for (let round = 0; round < 10 && got.length < N; round++) {
      h.dev.processQueue(1);
      while ((r = h.peerRecv(0)) !== null) got.push(r);
    }
    h.dev.processQueue(0);
    assert.equal(got.length, N, 'every frame sent once');
    got.forEach((g, i) => assert.deepEqual(g, packet(SZ, i)));
    const used = rx.used();
    assert.deepEqual(used.map((u) => u.id), [b1.head, b2.head], 'the frame spans the two buffers, the given-back one first');
    assert.equal(used[0]!.len + used[1]!.len, frame.length);
    const hdr = h.mem.slice(b1.writable[0]!, 12);
    assert.equal(hdr[10]! | (hdr[11]! << 8), 2, 'num_buffers');
  } finally {
    h.close();
  }
});
