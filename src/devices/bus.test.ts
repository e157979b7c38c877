import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Bus, BusError, createMmioBus, createPioBus, readLe, writeLe, type BusDevice } from './bus.js';

class Recorder implements BusDevice {
  reads: Array<[number, number]> = [];
  writes: Array<[number, number[]]> = [];
  constructor(readonly fillByte: number) {}
  read(offset: number, data: Uint8Array): void {
    this.reads.push([offset, data.length]);
    data.fill(this.fillByte);
  }
  write(offset: number, data: Uint8Array): void {
    this.writes.push([offset, Array.from(data)]);
  }
}

test('dispatches reads and writes with the offset from the range base', () => {
  const bus = createPioBus();
  const a = new Recorder(0xaa);
  const b = new Recorder(0xbb);
  bus.insert(a, 0x3f8, 8);
  bus.insert(b, 0x60, 5);
  const d = new Uint8Array(1);
  assert.equal(bus.read(0x3fd, d), true);
  assert.deepEqual(a.reads, [[5, 1]]);
  assert.equal(d[0], 0xaa);
  assert.equal(bus.write(0x64, Uint8Array.of(0xfe)), true);
  assert.deepEqual(b.writes, [[4, [0xfe]]]);
  assert.equal(bus.lookup(0x3f8), a);
  assert.equal(bus.lookup(0x3ff), a);
  assert.equal(bus.lookup(0x400), undefined);
  assert.equal(bus.baseOf(0x62), 0x60);
  assert.equal(bus.unhandledAccesses, 0);
});

test('unknown addresses read all-ones, writes are ignored, and both are counted', () => {
  const bus = createPioBus();
  bus.insert(new Recorder(0), 0x70, 2);
  const d = new Uint8Array(4);
  assert.equal(bus.read(0x80, d), false);
  assert.deepEqual(Array.from(d), [0xff, 0xff, 0xff, 0xff]);
  assert.equal(bus.write(0x80, Uint8Array.of(1)), false);
  assert.equal(bus.unhandledReads, 1);
  assert.equal(bus.unhandledWrites, 1);
  assert.equal(bus.unhandledAccesses, 2);
  // An access crossing the end of a range is not dispatched.
  const d2 = new Uint8Array(2);
  assert.equal(bus.read(0x71, d2), false);
  assert.deepEqual(Array.from(d2), [0xff, 0xff]);
  assert.equal(bus.unhandledReads, 2);
});

test('rejects overlapping and invalid ranges with clear errors', () => {
  const bus = createPioBus();
  bus.insert(new Recorder(0), 0x100, 0x10);
  assert.throws(() => bus.insert(new Recorder(0), 0x10f, 1), /overlaps existing range \[0x100, 0x110\)/);
  assert.throws(() => bus.insert(new Recorder(0), 0xf8, 9), /overlaps/);
  assert.throws(() => bus.insert(new Recorder(0), 0x0, 0x1000), /overlaps/);
  assert.throws(() => bus.insert(new Recorder(0), 0x200, 0), /invalid length/);
  assert.throws(() => bus.insert(new Recorder(0), -1, 1), /invalid base/);
  assert.throws(() => bus.insert(new Recorder(0), 0xfffe, 4), /exceeds the address space/);
  assert.throws(() => bus.insert(new Recorder(0), 1.5, 1), BusError);
  // Adjacent ranges are fine.
  bus.insert(new Recorder(0), 0xf0, 0x10);
  bus.insert(new Recorder(0), 0x110, 0x10);
  assert.equal(bus.size, 3);
});

test('remove frees the range and lookups stay correct', () => {
  const bus = createMmioBus();
  const devs = [0x1000, 0x3000, 0x2000, 0xd000_0000, 0x1_0000_0000].map((base) => {
    const r = new Recorder(base & 0xff);
    bus.insert(r, base, 0x100);
    return { base, r };
  });
  assert.deepEqual(
    bus.ranges().map((r) => r.base),
    [0x1000, 0x2000, 0x3000, 0xd000_0000, 0x1_0000_0000],
  );
  for (const { base, r } of devs) {
    assert.equal(bus.lookup(base), r);
    assert.equal(bus.lookup(base + 0xff), r);
    assert.equal(bus.lookup(base + 0x100), undefined);
    assert.equal(bus.lookup(base - 1), undefined);
  }
  assert.equal(bus.remove(0x2000), devs[2]!.r);
  assert.equal(bus.lookup(0x2000), undefined);
  assert.throws(() => bus.remove(0x2000), /no range starts at 0x2000/);
  assert.throws(() => bus.remove(0x1001), /no range starts/);
  bus.insert(new Recorder(0), 0x2000, 0x1000);
  assert.equal(bus.size, 5);
  const d = new Uint8Array(8);
  assert.equal(bus.read(0x1_0000_0008, d), true);
  assert.deepEqual(devs[4]!.r.reads, [[8, 8]]);
});

test('binary search agrees with a linear scan on many ranges', () => {
  const bus = new Bus('t', 1 << 20);
  const bases: number[] = [];
  for (let i = 0; i < 200; i++) {
    const base = i * 64 + (i % 7);
    bus.insert(new Recorder(i), base, 1 + (i % 50));
    bases.push(base);
  }
  for (let addr = 0; addr < 200 * 64 + 64; addr++) {
    let want = -1;
    for (let i = 0; i < 200; i++) if (addr >= bases[i]! && addr < bases[i]! + 1 + (i % 50)) want = i;
    assert.equal(bus.indexOf(addr), want, `addr ${addr}`);
  }
});

test('little-endian helpers', () => {
  const d = new Uint8Array(4);
  writeLe(d, 0x12345678);
  assert.deepEqual(Array.from(d), [0x78, 0x56, 0x34, 0x12]);
  assert.equal(readLe(d), 0x12345678);
  const q = new Uint8Array(8);
  writeLe(q, 2 ** 40 + 5);
  assert.equal(readLe(q), 2 ** 40 + 5);
});
