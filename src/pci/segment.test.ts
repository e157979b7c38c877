// PCI segments: ECAM accesses on the MMIO bus reach the root of the segment whose window they
// fall in, each root has its own host bridge, and devices are placed per segment (device numbers
// from 1, BARs inside the segment's own window).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createMmioBus } from '../devices/bus.js';
import { PciConfiguration } from './config.js';
import type { PciDevice } from './bus.js';
import { attachPciSegments, placePciDevices } from './segment.js';
import { e820Map, E820_RESERVED, MAX_PCI_SEGMENTS, MiB, pciSegmentLayouts, PCI_ECAM_SIZE, PCI_ECAM_START, PCI_MMIO32_SIZE, PCI_MMIO32_START } from '../arch/x86_64/layout.js';

class Fn implements PciDevice {
  readonly config: PciConfiguration;
  constructor(deviceId: number) {
    this.config = new PciConfiguration({ vendorId: 0x1af4, deviceId, revisionId: 1, classCode: 0x010000, subsystemVendorId: 0x1af4, subsystemId: 2 });
  }
  readConfig(offset: number, data: Uint8Array): void { this.config.read(offset, data); }
  writeConfig(offset: number, data: Uint8Array): void { this.config.write(offset, data); }
}

const u32 = (d: Uint8Array): number => new DataView(d.buffer, d.byteOffset, 4).getUint32(0, true);

test('ECAM on the MMIO bus: each segment window reaches its own root and host bridge', () => {
  const segs = pciSegmentLayouts(3);
  const mmio = createMmioBus();
  const roots = attachPciSegments(mmio, segs).map((s) => s.root);
  roots[1]!.add(new Fn(0x1042), 1);
  roots[2]!.add(new Fn(0x1041), 3);
  const d = new Uint8Array(4);
  const id = (gpa: number): number => { mmio.read(gpa, d); return u32(d); };
  const fn = (seg: number, dev: number, reg = 0): number => segs[seg]!.ecamBase + (dev << 15) + reg;
  for (let s = 0; s < 3; s++) assert.equal(id(fn(s, 0)), 0x0d578086, `segment ${s} has its host bridge at 00.0`);
  assert.equal(id(fn(1, 1)), 0x10421af4, 'segment 1, device 1');
  assert.equal(id(fn(0, 1)), 0xffffffff, 'segment 0 has no device 1');
  assert.equal(id(fn(2, 1)), 0xffffffff, 'segment 2 has no device 1');
  assert.equal(id(fn(2, 3)), 0x10411af4, 'segment 2, device 3');
  // A write through segment 2's window lands on segment 2's device only (the command register).
  mmio.write(fn(2, 3, 4), Uint8Array.of(0x06, 0));
  mmio.read(fn(2, 3, 4), d.subarray(0, 2));
  assert.equal(d[0]! & 0x06, 0x06);
  mmio.read(fn(1, 1, 4), d.subarray(0, 2));
  assert.equal(d[0]! & 0x06, 0, "segment 1's device is untouched");
  // Past the last segment's window: no PCI device answers there.
  assert.ok(mmio.isFree(segs[2]!.ecamBase + segs[2]!.ecamSize, 4096));
});

test('one segment keeps the 256-bus ECAM and the whole BAR window; N segments are laid out as Cloud Hypervisor does', () => {
  assert.deepEqual(pciSegmentLayouts(1), [{
    segment: 0, ecamBase: PCI_ECAM_START, ecamSize: PCI_ECAM_SIZE, busStart: 0, busEnd: 255,
    mmio32: { start: PCI_MMIO32_START, size: PCI_MMIO32_SIZE },
  }]);
  for (const n of [2, 3, 7, MAX_PCI_SEGMENTS]) {
    const segs = pciSegmentLayouts(n);
    assert.equal(segs.length, n);
    let next = PCI_MMIO32_START;
    segs.forEach((s, k) => {
      assert.equal(s.segment, k);
      assert.equal(s.ecamBase, 0xe8000000 + k * MiB, 'ECAM: 1 MiB (one bus) per segment');
      assert.equal(s.ecamSize, MiB);
      assert.deepEqual([s.busStart, s.busEnd], [0, 0]);
      assert.equal(s.mmio32.start, next, 'BAR windows are contiguous');
      assert.equal(s.mmio32.start % 4096, 0);
      assert.ok(s.mmio32.size >= Math.floor(PCI_MMIO32_SIZE / n / 4096) * 4096);
      next = s.mmio32.start + s.mmio32.size;
      // e820 reserves every ECAM window (Linux checks MCFG ranges against e820 early on).
      assert.ok(e820Map(512 * MiB).some((e) => e.type === E820_RESERVED && e.addr <= s.ecamBase && s.ecamBase + s.ecamSize <= e.addr + e.size), `segment ${k} ECAM in e820 reserved`);
    });
    assert.equal(next, PCI_MMIO32_START + PCI_MMIO32_SIZE, 'the windows cover the 32-bit BAR area exactly');
  }
  for (const bad of [0, 17, 1.5, -1]) assert.throws(() => pciSegmentLayouts(bad), /outside 1\.\.16/);
});

test('devices are placed per segment: device numbers from 1 and BARs inside their own segment window', () => {
  const segs = pciSegmentLayouts(3);
  const BAR = 0x10000;
  const p = placePciDevices([
    { id: 'a', segment: 0 }, { id: 'b', segment: 1 }, { id: 'c', segment: 1 }, { id: 'd', segment: 2 }, { id: 'e', segment: 0 },
  ], segs, BAR);
  assert.deepEqual(p.map((x) => [x.segment, x.slot]), [[0, 1], [1, 1], [1, 2], [2, 1], [0, 2]]);
  p.forEach((x) => {
    const w = segs[x.segment]!.mmio32;
    assert.ok(x.barAddr >= w.start && x.barAddr + BAR <= w.start + w.size, `BAR 0x${x.barAddr.toString(16)} inside segment ${x.segment}'s window`);
    assert.equal(x.barAddr % BAR, 0, 'naturally aligned');
  });
  assert.equal(new Set(p.map((x) => x.barAddr)).size, p.length, 'no two BARs overlap');
  assert.throws(() => placePciDevices([{ id: 'x', segment: 3 }], segs, BAR), /x: PCI segment 3 does not exist \(segments 0\.\.2\)/);
  const many = Array.from({ length: 32 }, (_, i) => ({ id: `n${i}`, segment: 2 }));
  assert.throws(() => placePciDevices(many, segs, BAR), /n31: PCI segment 2 is full \(at most 31 devices/);
  assert.equal(placePciDevices(many.slice(0, 31), segs, BAR).length, 31);
});

test('placement keeps a slot a device already has (hotplug, a later boot) and gives the others the free ones; BAR by slot', () => {
  const segs = pciSegmentLayouts(2);
  const BAR = 0x10000;
  const p = placePciDevices([
    { id: 'a', segment: 0 }, { id: 'hot', segment: 0, slot: 2 }, { id: 'b', segment: 0 }, { id: 'c', segment: 0 }, { id: 'd', segment: 1, slot: 31 },
  ], segs, BAR);
  assert.deepEqual(p.map((x) => x.slot), [1, 2, 3, 4, 31]);
  // A device's BAR depends only on its slot: removing a device elsewhere never moves it.
  assert.deepEqual(p.map((x) => x.barAddr), [0, 1, 2, 3].map((k) => segs[0]!.mmio32.start + k * BAR).concat(segs[1]!.mmio32.start + 30 * BAR));
  const again = placePciDevices([{ id: 'b', segment: 0 }, { id: 'hot', segment: 0, slot: 2 }], segs, BAR);
  assert.deepEqual(again.map((x) => [x.slot, x.barAddr]), [[1, p[0]!.barAddr], [2, p[1]!.barAddr]]);
  assert.throws(() => placePciDevices([{ id: 'x', segment: 0, slot: 3 }, { id: 'y', segment: 0, slot: 3 }], segs, BAR), /y: PCI slot 3 of segment 0 is taken twice/);
  assert.throws(() => placePciDevices([{ id: 'x', segment: 0, slot: 0 }], segs, BAR), /x: PCI slot 0 outside 1\.\.31/);
});
