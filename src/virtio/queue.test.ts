// Split virtqueue (virtio 1.2, 2.7), device side, driven by the test driver.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GuestMemory } from '../memory/guest_memory.js';
import {
  DescriptorChain,
  SplitQueue,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VIRTQ_USED_F_NO_NOTIFY,
  VirtqueueError,
  availRingBytes,
  descTableBytes,
  needEvent,
  usedRingBytes,
  type VirtqueueErrorReason,
} from './queue.js';
import { TestDriver, writeDescAt } from './testing/driver.js';

const MiB = 1 << 20;
const NEXT = VIRTQ_DESC_F_NEXT;
const WRITE = VIRTQ_DESC_F_WRITE;
const INDIRECT = VIRTQ_DESC_F_INDIRECT;

interface Setup { mem: GuestMemory; drv: TestDriver; q: SplitQueue; c: DescriptorChain }

function setup(size = 16, opts = { eventIdx: false, indirect: true }): Setup {
  const mem = GuestMemory.fromBuffers([{ gpa: 0, buffer: new ArrayBuffer(MiB) }]);
  const drv = new TestDriver(mem, { size });
  return { mem, drv, q: drv.queue(opts), c: new DescriptorChain(size) };
}

function throwsReason(fn: () => unknown, reason: VirtqueueErrorReason, re?: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof VirtqueueError, `expected a VirtqueueError, got ${String(e)}`);
    assert.equal(e.reason, reason, e.message);
    if (re !== undefined) assert.match(e.message, re);
    return true;
  });
}

const segs = (c: DescriptorChain): Array<[number, number, number]> =>
  Array.from({ length: c.length }, (_, i) => [c.addr[i]!, c.len[i]!, c.writable[i]!]);

test('constructor: queue size must be a power of two in 1..32768', () => {
  const mem = GuestMemory.fromBuffers([{ gpa: 0, buffer: new ArrayBuffer(2 * MiB) }]);
  const o = { eventIdx: false, indirect: false };
  for (const size of [1, 2, 256, 32768]) {
    assert.equal(new SplitQueue(mem, { size, descTable: 0, availRing: MiB, usedRing: MiB + 0x20000 }, o).size, size);
  }
  for (const size of [0, 3, 6, 65536, 1.5, -4, Number.NaN]) {
    throwsReason(() => new SplitQueue(mem, { size, descTable: 0, availRing: MiB, usedRing: MiB + 0x20000 }, o), 'bad-queue-size', new RegExp(String(size)));
  }
});

test('constructor: ring alignment (2.7) and every ring inside one RAM region', () => {
  const mem = GuestMemory.fromBuffers([{ gpa: 0, buffer: new ArrayBuffer(0x10000) }, { gpa: 0x20000, buffer: new ArrayBuffer(0x1000) }]);
  const o = { eventIdx: true, indirect: true };
  const ok = { size: 8, descTable: 0x1000, availRing: 0x2000, usedRing: 0x3000 };
  new SplitQueue(mem, ok, o);
  throwsReason(() => new SplitQueue(mem, { ...ok, descTable: 0x1008 }, o), 'ring-alignment', /descriptor table at 0x1008/);
  throwsReason(() => new SplitQueue(mem, { ...ok, availRing: 0x2001 }, o), 'ring-alignment', /available ring/);
  throwsReason(() => new SplitQueue(mem, { ...ok, usedRing: 0x3002 }, o), 'ring-alignment', /used ring/);
  // Exactly at the end of a region is fine; one entry more straddles the end (or the gap).
  const end = 0x10000;
  new SplitQueue(mem, { ...ok, descTable: end - descTableBytes(8), availRing: end - availRingBytes(8) - 0x100, usedRing: end - usedRingBytes(8) - 0x200 - 2 }, o);
  new SplitQueue(mem, { ...ok, usedRing: end - usedRingBytes(8) - 2 }, o);
  throwsReason(() => new SplitQueue(mem, { ...ok, usedRing: end - usedRingBytes(8) + 2 }, o), 'ring-out-of-range', /used ring 0xffbc\+0x46 is not inside guest RAM/);
  throwsReason(() => new SplitQueue(mem, { ...ok, availRing: end - availRingBytes(8) + 2 }, o), 'ring-out-of-range', /available ring/);
  throwsReason(() => new SplitQueue(mem, { ...ok, descTable: end - 0x40 }, o), 'ring-out-of-range', /descriptor table/);
  throwsReason(() => new SplitQueue(mem, { ...ok, descTable: 0x18000 }, o), 'ring-out-of-range');
  throwsReason(() => new SplitQueue(mem, { ...ok, descTable: 2 ** 52 }, o), 'ring-out-of-range');
  throwsReason(() => new SplitQueue(mem, { ...ok, descTable: 2 ** 64 }, o), 'ring-out-of-range');
  throwsReason(() => new SplitQueue(mem, { ...ok, descTable: -16 }, o), 'ring-alignment');
  new SplitQueue(mem, { ...ok, descTable: 0x20000, availRing: 0x20800, usedRing: 0x20c00 }, o); // second region
});

test('well-formed chains: readable then writable segments, in avail order', () => {
  const { drv, q, c } = setup();
  assert.equal(q.hasAvailable(), false);
  assert.equal(q.pop(c), false);
  const a = drv.addChain([new Uint8Array(16), new Uint8Array(3)], [512, 1]);
  const b = drv.addChain([new Uint8Array(7)], []);
  assert.equal(q.hasAvailable(), true);
  assert.equal(q.pop(c), true);
  assert.equal(c.head, a.head);
  assert.deepEqual(segs(c), [[a.readable[0]!, 16, 0], [a.readable[1]!, 3, 0], [a.writable[0]!, 512, 1], [a.writable[1]!, 1, 1]]);
  assert.equal(c.readableCount, 2);
  assert.equal(c.readableBytes, 19);
  assert.equal(c.writableBytes, 513);
  assert.equal(q.lastAvailIdx, 1);
  assert.equal(q.pop(c), true);
  assert.equal(c.head, b.head);
  assert.deepEqual(segs(c), [[b.readable[0]!, 7, 0]]);
  assert.equal(c.writableBytes, 0);
  assert.equal(q.pop(c), false);
  assert.equal(q.hasAvailable(), false);
  assert.equal(q.lastAvailIdx, 2);
});

test('addUsed stores the element, then used.idx; the driver sees them in order', () => {
  const { drv, q, c } = setup(4);
  for (let round = 0; round < 5; round++) { // wraps the 4-entry ring
    const x = drv.addChain([], [8]);
    const y = drv.addChain([], [8]);
    assert.ok(q.pop(c)); const hx = c.head;
    assert.ok(q.pop(c)); const hy = c.head;
    q.addUsed(hy, 3);
    q.addUsed(hx, 8);
    assert.deepEqual(drv.used(), [{ id: y.head, len: 3 }, { id: x.head, len: 8 }]);
  }
  assert.equal(drv.usedIdx, 10);
  assert.equal(q.usedIndex, 10);
  throwsReason(() => q.addUsed(4, 0), 'desc-index');
  assert.throws(() => q.addUsed(0, 2 ** 32), RangeError);
});

test('indirect descriptors (2.7.5.3), alone or after direct ones', () => {
  const { mem, drv, q, c } = setup();
  const a = drv.addChain([new Uint8Array(16)], [100, 1], { indirect: true });
  assert.ok(q.pop(c));
  assert.equal(c.head, a.head);
  assert.deepEqual(segs(c), [[a.readable[0]!, 16, 0], [a.writable[0]!, 100, 1], [a.writable[1]!, 1, 1]]);
  // A direct readable descriptor followed by an indirect one holding the writable part. The
  // WRITE flag on the indirect descriptor itself is ignored (2.7.5.3.2).
  const table = drv.alloc(32, 16);
  const buf = drv.alloc(64);
  writeDescAt(mem, table, buf, 32, WRITE | NEXT, 1);
  writeDescAt(mem, table + 16, buf + 32, 32, WRITE, 0);
  drv.writeDesc(10, buf + 1000, 16, NEXT, 11);
  drv.writeDesc(11, table, 32, INDIRECT | WRITE, 0);
  drv.publish(10);
  assert.ok(q.pop(c));
  assert.deepEqual(segs(c), [[buf + 1000, 16, 0], [buf, 32, 1], [buf + 32, 32, 1]]);
});

test('without EVENT_IDX: VIRTQ_AVAIL_F_NO_INTERRUPT and VIRTQ_USED_F_NO_NOTIFY (2.7.7, 2.7.10)', () => {
  const { drv, q, c } = setup(8, { eventIdx: false, indirect: false });
  assert.equal(q.needsInterrupt(), false); // nothing used yet
  drv.addChain([], [1]);
  assert.ok(q.pop(c));
  q.addUsed(c.head, 1);
  assert.equal(q.needsInterrupt(), true);
  assert.equal(q.needsInterrupt(), false); // nothing new since
  drv.setAvailFlags(VIRTQ_AVAIL_F_NO_INTERRUPT);
  drv.addChain([], [1]);
  assert.ok(q.pop(c));
  q.addUsed(c.head, 1);
  assert.equal(q.needsInterrupt(), false);
  drv.setAvailFlags(0);
  q.disableNotification();
  assert.equal(drv.usedFlags & VIRTQ_USED_F_NO_NOTIFY, VIRTQ_USED_F_NO_NOTIFY);
  assert.equal(q.enableNotification(), false);
  assert.equal(drv.usedFlags & VIRTQ_USED_F_NO_NOTIFY, 0);
  q.disableNotification();
  drv.addChain([], [1]); // arrives while notifications are off
  assert.equal(q.enableNotification(), true);
});

test('with EVENT_IDX: used_event decides interrupts, avail_event asks for notifications', () => {
  const { drv, q, c } = setup(8, { eventIdx: true, indirect: false });
  const complete = (n: number): void => {
    for (let i = 0; i < n; i++) drv.addChain([], [1]);
    for (let i = 0; i < n; i++) { assert.ok(q.pop(c)); q.addUsed(c.head, 1); }
    drv.used();
  };
  complete(1);
  assert.equal(q.needsInterrupt(), true); // first signal ever
  drv.setUsedEvent(3); // "interrupt me when used.idx passes 3", i.e. reaches 4
  complete(2); // used.idx 1 -> 3
  assert.equal(q.needsInterrupt(), false);
  complete(1); // 3 -> 4: crosses used_event
  assert.equal(q.needsInterrupt(), true);
  complete(1); // 4 -> 5: already signalled for 3
  assert.equal(q.needsInterrupt(), false);
  // avail_event
  q.disableNotification();
  assert.equal(drv.usedFlags, 0); // flags untouched with EVENT_IDX
  assert.equal(q.enableNotification(), false);
  assert.equal(drv.availEvent, q.lastAvailIdx);
  drv.addChain([], [1]);
  assert.equal(q.enableNotification(), true);
});

test('vring_need_event arithmetic wraps at 65535 (2.7.10)', () => {
  assert.equal(needEvent(0, 1, 0), true);
  assert.equal(needEvent(1, 1, 0), false);
  assert.equal(needEvent(65535, 0, 65535), true); // new idx wrapped past the event
  assert.equal(needEvent(65535, 1, 65534), true);
  assert.equal(needEvent(0, 1, 65535), true);
  assert.equal(needEvent(1, 1, 65535), false);
  assert.equal(needEvent(65534, 2, 65530), true);
  assert.equal(needEvent(3, 2, 65530), false);
  assert.equal(needEvent(5, 5, 5), false);
});

test('EVENT_IDX interrupts and avail_event across the 16-bit index wrap', () => {
  const { drv, q, c } = setup(4, { eventIdx: true, indirect: false });
  drv.writeDesc(0, 0x8000, 1, WRITE, 0);
  const step = (): void => {
    drv.publish(0);
    assert.ok(q.pop(c));
    q.addUsed(c.head, 1);
  };
  // Run the indices up to 65533 without looking at interrupts.
  for (let i = 0; i < 65533; i++) step();
  assert.equal(q.usedIndex, 65533);
  assert.equal(q.lastAvailIdx, 65533);
  q.needsInterrupt(); // old = 65533
  drv.setUsedEvent(0); // interrupt once used.idx passes 0
  step();
  assert.equal(q.needsInterrupt(), false); // 65534
  step();
  assert.equal(q.needsInterrupt(), false); // 65535
  step();
  assert.equal(q.needsInterrupt(), false); // 0: reached, not passed
  step();
  assert.equal(q.needsInterrupt(), true); // 1: passed used_event 0
  assert.equal(q.usedIndex, 1);
  // A batch that crosses the wrap and used_event at once: 65533 -> 2 over used_event 65535.
  drv.setUsedEvent(65535);
  for (let i = 0; i < 65532; i++) step();
  assert.equal(q.needsInterrupt(), false); // 1 -> 65533
  step(); step(); step(); step(); step();
  assert.equal(q.usedIndex, 2);
  assert.equal(q.needsInterrupt(), true);
  // avail_event across the wrap
  assert.equal(q.enableNotification(), false);
  assert.equal(drv.availEvent, 2);
});

test('pop reads avail.idx once and refuses an index more than size ahead', () => {
  const { drv, q, c } = setup(8);
  drv.setAvailIdx(9);
  throwsReason(() => q.pop(c), 'avail-index', /avail\.idx 9 is 9 entries ahead of the device's 0 \(queue size 8\)/);
  drv.setAvailIdx(65535); // "behind": 65535 entries ahead in u16 arithmetic
  throwsReason(() => q.pop(c), 'avail-index');
  drv.setAvailIdx(8);
  for (let i = 0; i < 8; i++) drv.writeDesc(i, 0x8000, 1, 0, 0);
  for (let i = 0; i < 8; i++) drv.writeAvailEntry(i, i);
  for (let i = 0; i < 8; i++) assert.ok(q.pop(c));
  assert.equal(q.pop(c), false);
});

test('errors: descriptor indexes and buffers outside RAM', () => {
  const mem = GuestMemory.fromBuffers([{ gpa: 0, buffer: new ArrayBuffer(0x40000) }, { gpa: 0x80000, buffer: new ArrayBuffer(0x10000) }]);
  const drv = new TestDriver(mem, { size: 8 });
  const q = drv.queue({ eventIdx: false, indirect: true });
  const c = new DescriptorChain(8);
  const one = (addr: number | bigint, len: number, reason: VirtqueueErrorReason, re?: RegExp): void => {
    drv.writeDesc(0, addr, len, 0, 0);
    drv.writeAvailEntry(0, 0);
    drv.setAvailIdx(1);
    throwsReason(() => q.pop(c), reason, re);
    assert.equal(q.lastAvailIdx, 0); // not consumed
  };
  one(0x3fff0, 0x20, 'desc-out-of-range', /descriptor 0 \(chain head 0\) buffer 0x3fff0\+0x20/); // straddles the end
  one(0x40000, 1, 'desc-out-of-range'); // in the gap
  one(0x7ffff, 2, 'desc-out-of-range'); // straddles gap -> region 2
  one(0x90000, 1, 'desc-out-of-range'); // beyond RAM
  one(0x1000, 0xffffffff, 'desc-out-of-range'); // huge length
  one(2 ** 52 - 8, 4, 'desc-out-of-range');
  one(2n ** 52n, 4, 'desc-out-of-range', /0x10000000000000\+0x4/);
  one(2n ** 64n - 16n, 4, 'desc-out-of-range', /0xfffffffffffffff0/);
  // Exactly up to the end of a region is fine.
  drv.writeDesc(0, 0x8fff0, 16, 0, 0);
  assert.ok(q.pop(c));
  assert.deepEqual(segs(c), [[0x8fff0, 16, 0]]);
});

test('errors: head and next indexes beyond the queue size', () => {
  const { drv, q, c } = setup(8);
  drv.writeAvailEntry(0, 8);
  drv.setAvailIdx(1);
  throwsReason(() => q.pop(c), 'desc-index', /avail\.ring\[0\] names descriptor 8, beyond queue size 8/);
  drv.writeAvailEntry(0, 2);
  drv.writeDesc(2, 0x8000, 4, NEXT, 3);
  drv.writeDesc(3, 0x8000, 4, NEXT, 0xffff);
  throwsReason(() => q.pop(c), 'desc-index', /descriptor 3 \(chain head 2\) links to 65535/);
});

test('errors: loops, in the table and in an indirect table', () => {
  const { mem, drv, q, c } = setup(8);
  for (let i = 0; i < 8; i++) drv.writeDesc(i, 0x8000, 4, NEXT, (i + 1) % 8); // a ring of all 8
  drv.writeAvailEntry(0, 5);
  drv.setAvailIdx(1);
  throwsReason(() => q.pop(c), 'loop', /chain from head 5/);
  drv.writeDesc(5, 0x8000, 4, NEXT, 5); // self loop
  throwsReason(() => q.pop(c), 'loop');
  const t = drv.alloc(48, 16);
  writeDescAt(mem, t, 0x8000, 4, NEXT, 1);
  writeDescAt(mem, t + 16, 0x8000, 4, NEXT, 2);
  writeDescAt(mem, t + 32, 0x8000, 4, NEXT, 1);
  drv.writeDesc(5, t, 48, INDIRECT, 0);
  throwsReason(() => q.pop(c), 'loop', /indirect table/);
});

test('errors: chains longer than the queue size or the chain capacity', () => {
  const { mem, drv, q } = setup(8);
  const t = drv.alloc(16 * 9, 16);
  for (let i = 0; i < 9; i++) writeDescAt(mem, t + 16 * i, 0x8000, 4, i < 8 ? NEXT : 0, i + 1);
  drv.writeDesc(0, t, 16 * 9, INDIRECT, 0);
  drv.publish(0);
  throwsReason(() => q.pop(new DescriptorChain(8)), 'chain-too-long', /more than 8 segments/);
  drv.writeDesc(0, t, 16 * 8, INDIRECT, 0); // 8 entries, the last one with NEXT -> 8: beyond the table
  throwsReason(() => q.pop(new DescriptorChain(8)), 'desc-index', /links to 8, beyond its 8 entries/);
  writeDescAt(mem, t + 16 * 7, 0x8000, 4, 0, 0);
  assert.ok(q.pop(new DescriptorChain(8)));
  drv.addChain([new Uint8Array(1), new Uint8Array(1), new Uint8Array(1)], []);
  throwsReason(() => q.pop(new DescriptorChain(2)), 'chain-too-long', /more than 2 segments/);
});

test('errors: a chain of more than 2^32 bytes (2.7.5.1)', () => {
  const mem = GuestMemory.fromBuffers([{ gpa: 0, buffer: new ArrayBuffer(2 * MiB) }]);
  const drv = new TestDriver(mem, { size: 8192, base: MiB });
  const q = drv.queue({ eventIdx: false, indirect: false });
  for (let i = 0; i < 4096; i++) drv.writeDesc(i, 0, MiB, NEXT, i + 1);
  drv.writeDesc(4096, 0, 0, 0, 0);
  drv.publish(0);
  assert.ok(q.pop(new DescriptorChain(8192))); // exactly 2^32
  drv.writeDesc(4096, 0, 1, 0, 0);
  drv.publish(0);
  throwsReason(() => q.pop(new DescriptorChain(8192)), 'chain-too-long', /longer than 2\^32 bytes/);
});

test('errors: indirect descriptors (2.7.5.3)', () => {
  const { mem, drv, c } = setup(8);
  const noInd = drv.queue({ eventIdx: false, indirect: false });
  const q = drv.queue({ eventIdx: false, indirect: true });
  const t = drv.alloc(64, 16);
  writeDescAt(mem, t, 0x8000, 4, 0, 0);
  const one = (addr: number, len: number, flags: number, reason: VirtqueueErrorReason, re: RegExp, queue = q): void => {
    drv.writeDesc(0, addr, len, flags, 1);
    drv.writeDesc(1, 0x8000, 4, 0, 0);
    drv.writeAvailEntry(0, 0);
    drv.setAvailIdx(1);
    throwsReason(() => queue.pop(c), reason, re);
  };
  one(t, 16, INDIRECT, 'indirect', /not negotiated/, noInd);
  one(t, 16, INDIRECT | NEXT, 'indirect', /both INDIRECT and NEXT/);
  one(t, 0, INDIRECT, 'indirect', /length 0/);
  one(t, 24, INDIRECT, 'indirect', /length 24/);
  one(0xffff0, 32, INDIRECT, 'indirect', /0xffff0\+0x20 .* not inside guest RAM/);
  one(2 ** 52, 16, INDIRECT, 'indirect', /not inside guest RAM/);
  writeDescAt(mem, t, t, 16, INDIRECT, 0);
  one(t, 16, INDIRECT, 'indirect', /entry 0 .* is itself indirect/);
  writeDescAt(mem, t, 0x8000, 4, WRITE | NEXT, 1);
  writeDescAt(mem, t + 16, 0x8000, 4, 0, 0);
  one(t, 32, INDIRECT, 'order', /entry|descriptor 1 \(chain head 0\) is device-readable but follows a device-writable one/);
  writeDescAt(mem, t + 16, 0x40000000, 4, WRITE, 0);
  one(t, 32, INDIRECT, 'desc-out-of-range', /descriptor 1 \(chain head 0\) buffer 0x40000000\+0x4/);
  // A good one still works on the same queue.
  writeDescAt(mem, t + 16, 0x9000, 4, WRITE, 0);
  drv.writeDesc(0, t, 32, INDIRECT, 0);
  assert.ok(q.pop(c));
  assert.deepEqual(segs(c), [[0x8000, 4, 1], [0x9000, 4, 1]]);
});

test('errors: a device-readable descriptor after a device-writable one (2.7.4.2)', () => {
  const { drv, q, c } = setup(8);
  drv.writeDesc(0, 0x8000, 4, NEXT, 1);
  drv.writeDesc(1, 0x8000, 4, WRITE | NEXT, 2);
  drv.writeDesc(2, 0x8000, 4, 0, 0);
  drv.publish(0);
  throwsReason(() => q.pop(c), 'order', /descriptor 2 \(chain head 0\)/);
});

test('rings over a host view that is not 2-aligned still work (DataView fallback)', () => {
  // A region at an odd address: 16-aligned guest addresses are odd offsets in its buffer.
  const mem = GuestMemory.fromBuffers([{ gpa: 1, buffer: new ArrayBuffer(0x20000) }]);
  const drv = new TestDriver(mem, { size: 8, base: 0x1000, dataStart: 0x4000, dataEnd: 0x20000 });
  const q = drv.queue({ eventIdx: true, indirect: true });
  const c = new DescriptorChain(8);
  const a = drv.addChain([new Uint8Array(5)], [7], { indirect: true });
  assert.ok(q.hasAvailable());
  assert.ok(q.pop(c));
  q.addUsed(c.head, 7);
  assert.deepEqual(drv.used(), [{ id: a.head, len: 7 }]);
  assert.equal(q.needsInterrupt(), true);
  assert.equal(q.enableNotification(), false);
  assert.equal(drv.availEvent, 1);
});

test('rewind gives back chains popped and not used: the next pops return them again; never more than are in flight', () => {
  const mem = GuestMemory.fromBuffers([{ gpa: 0, buffer: new ArrayBuffer(1 << 20) }]);
  const drv = new TestDriver(mem, { size: 8 });
  const q = drv.queue();
  const heads = [drv.addChain([], [16]).head, drv.addChain([], [16]).head, drv.addChain([], [16]).head];
  const c = new DescriptorChain(8);
  assert.ok(q.pop(c));
  q.addUsed(c.head, 0);
  assert.ok(q.pop(c) && q.pop(c));
  assert.throws(() => q.rewind(3), /rewind: 3 chains, but 2 are popped and not used/);
  q.rewind(2);
  assert.equal(q.lastAvailIdx, 1);
  assert.ok(q.pop(c));
  assert.equal(c.head, heads[1]);
  assert.ok(q.pop(c));
  assert.equal(c.head, heads[2]);
  assert.equal(q.pop(c), false);
  assert.deepEqual(drv.used().map((u) => u.id), [heads[0]], 'nothing was written to the used ring by the rewind');
});
