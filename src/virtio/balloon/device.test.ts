// virtio-balloon (virtio 1.2, 5.5) driven by the test driver: configuration, inflate/deflate
// PFN arrays (given back to the host in runs of contiguous pages, hostile PFNs skipped), free
// page reports, reset and saved state.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GuestMemory } from '../../memory/guest_memory.js';
import { VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VirtioDeviceType, bit } from '../device.js';
import { TestDriver } from '../testing/driver.js';
import { VirtioStateMismatchError } from '../state.js';
import {
  BalloonDevice, DEFLATEQ, INFLATEQ, REPORTINGQ, VIRTIO_BALLOON_F_DEFLATE_ON_OOM, VIRTIO_BALLOON_F_PAGE_REPORTING,
  VIRTIO_BALLOON_F_STATS_VQ, VIRTIO_BALLOON_F_MUST_TELL_HOST,
} from './device.js';

const PAGE = 4096;
// Region A [0, 1 MiB): rings and request buffers; region B [4 MiB, 6 MiB): pages to balloon.
const B = 4 << 20;
const B_SIZE = 2 << 20;

function config(dev: BalloonDevice): { numPages: number; actual: number; beyond: number[] } {
  const b = new Uint8Array(16).fill(0xee);
  dev.readConfig(0, b);
  const dv = new DataView(b.buffer);
  return { numPages: dv.getUint32(0, true), actual: dv.getUint32(4, true), beyond: [...b.subarray(8)] };
}

function pfnArray(pfns: number[]): Uint8Array {
  const b = new Uint8Array(4 * pfns.length);
  const dv = new DataView(b.buffer);
  pfns.forEach((p, i) => dv.setUint32(4 * i, p >>> 0, true));
  return b;
}

function rig(opts: { reporting?: boolean; deflateOnOom?: boolean } = {}) {
  const bufA = new ArrayBuffer(1 << 20);
  const bufB = new ArrayBuffer(B_SIZE);
  const mem = GuestMemory.fromBuffers([{ gpa: 0, buffer: bufA }, { gpa: B, buffer: bufB }]);
  new Uint8Array(bufB).fill(0xaa);
  const discards: Array<[number, number]> = [];
  const dev = new BalloonDevice({
    numPages: 256, deflateOnOom: opts.deflateOnOom, freePageReporting: opts.reporting,
    discard: (m, gpa, len) => { discards.push([gpa, len]); return m.discard(gpa, len); },
  });
  const drivers = [0, 1, 2].map((i) => new TestDriver(mem, { size: 16, base: i * 0x1000, dataStart: 0x10000 + i * 0x20000, dataEnd: 0x30000 + i * 0x20000 }));
  const notified: number[] = [];
  const queues = drivers.slice(0, dev.numQueues).map((d) => d.queue({ eventIdx: true, indirect: true }));
  dev.activate({ mem, queues, features: dev.features, notifyQueue: (i) => notified.push(i), notifyConfig: () => {} });
  return { dev, mem, drivers, notified, discards, u8B: new Uint8Array(bufB) };
}

test('device type 5; features: DEFLATE_ON_OOM and PAGE_REPORTING as configured, never STATS_VQ or MUST_TELL_HOST; 2 or 3 queues', () => {
  const plain = new BalloonDevice({ numPages: 0 });
  assert.equal(plain.deviceType, VirtioDeviceType.Balloon);
  assert.equal(plain.deviceType, 5);
  assert.equal(plain.numQueues, 2);
  assert.equal(plain.features, bit(VIRTIO_F_INDIRECT_DESC) | bit(VIRTIO_F_EVENT_IDX));
  const all = new BalloonDevice({ numPages: 0, deflateOnOom: true, freePageReporting: true });
  assert.equal(all.numQueues, 3);
  assert.equal(all.features & bit(VIRTIO_BALLOON_F_DEFLATE_ON_OOM), bit(VIRTIO_BALLOON_F_DEFLATE_ON_OOM));
  assert.equal(all.features & bit(VIRTIO_BALLOON_F_PAGE_REPORTING), bit(VIRTIO_BALLOON_F_PAGE_REPORTING));
  assert.equal(all.features & (bit(VIRTIO_BALLOON_F_STATS_VQ) | bit(VIRTIO_BALLOON_F_MUST_TELL_HOST)), 0n);
  assert.throws(() => new BalloonDevice({ numPages: -1 }), /invalid target/);
  assert.throws(() => new BalloonDevice({ numPages: 2 ** 32 }), /invalid target/);
  assert.throws(() => new BalloonDevice({ numPages: 0, queueSize: 3 }), /power of two/);
});

test('configuration (5.5.4): num_pages from the VMM, actual written by the driver only; nothing beyond 8 bytes', () => {
  const dev = new BalloonDevice({ numPages: 65536 });
  assert.deepEqual(config(dev), { numPages: 65536, actual: 0, beyond: [0, 0, 0, 0, 0, 0, 0, 0] });
  assert.deepEqual(dev.writableConfig, { offset: 4, length: 4 });
  dev.writeConfig(4, pfnArray([1234]));
  dev.writeConfig(0, pfnArray([7])); // num_pages is the device's: ignored
  assert.deepEqual(config(dev), { numPages: 65536, actual: 1234, beyond: [0, 0, 0, 0, 0, 0, 0, 0] });
  dev.writeConfig(6, Uint8Array.of(1, 2, 3)); // bytes 6 and 7 of actual; byte 8 ignored
  assert.equal(dev.actualPages, 0x020104d2);
  dev.onHostValue(300);
  assert.equal(config(dev).numPages, 300);
  assert.equal(dev.targetPages, 300);
  dev.onHostValue(0xffffffff);
  assert.equal(config(dev).numPages, 0xffffffff);
  dev.reset();
  assert.deepEqual(config(dev), { numPages: 0xffffffff, actual: 0, beyond: [0, 0, 0, 0, 0, 0, 0, 0] }, 'a reset empties the balloon, the target stays');
  const b = new Uint8Array(2);
  dev.readConfig(3, b);
  assert.deepEqual([...b], [0xff, 0]);
});

test('inflate: PFNs given back to the host in runs of contiguous pages; PFNs outside RAM skipped and counted; used length 0', () => {
  const { dev, mem, drivers, notified, discards, u8B } = rig();
  const p0 = B / PAGE;
  const lastA = (1 << 20) / PAGE - 1;
  const pfns = [p0, p0 + 1, p0 + 2, p0 + 10, lastA + 1, 0xffffffff, p0 + 11, p0 + 3, (B + B_SIZE) / PAGE, lastA];
  const c = drivers[INFLATEQ]!.addChain([pfnArray(pfns.slice(0, 6)), pfnArray(pfns.slice(6)), Uint8Array.of(9, 9, 9)], []);
  dev.processQueue(INFLATEQ);
  assert.deepEqual(drivers[INFLATEQ]!.used(), [{ id: c.head, len: 0 }]);
  assert.deepEqual(notified, [INFLATEQ]);
  // p0..p0+2 is one run; p0+10, p0+11 another (across the two descriptors); p0+3 and lastA alone.
  assert.deepEqual(discards, [[B, 3 * PAGE], [B + 10 * PAGE, 2 * PAGE], [B + 3 * PAGE, PAGE], [lastA * PAGE, PAGE]]);
  for (const p of [0, 1, 2, 3, 10, 11]) assert.ok(u8B.subarray(p * PAGE, (p + 1) * PAGE).every((x) => x === 0), `page ${p} was given back (reads zero)`);
  for (const p of [4, 9, 12]) assert.ok(u8B.subarray(p * PAGE, (p + 1) * PAGE).every((x) => x === 0xaa), `page ${p} is untouched`);
  assert.ok(mem.slice(lastA * PAGE, PAGE).every((x) => x === 0));
  assert.deepEqual(dev.counters, { inflated_pages: 7, deflated_pages: 0, reported_bytes: 0, invalid_pfns: 3, invalid_reports: 0, discard_errors: 0 });
});

test('deflate: pages are counted, nothing is touched (no MUST_TELL_HOST: the guest uses them at once)', () => {
  const { dev, drivers, discards, u8B } = rig();
  const p0 = B / PAGE;
  drivers[DEFLATEQ]!.addChain([pfnArray([p0, p0 + 1, 17 << 20])], []);
  dev.processQueue(DEFLATEQ);
  assert.equal(drivers[DEFLATEQ]!.used().length, 1);
  assert.deepEqual(discards, []);
  assert.ok(u8B.every((x) => x === 0xaa));
  assert.equal(dev.counters['deflated_pages'], 2);
  assert.equal(dev.counters['invalid_pfns'], 1);
  // Without free page reporting there is no third queue.
  dev.processQueue(REPORTINGQ);
  dev.processQueue(7);
});

test('free page reporting (5.5.6.4): every buffer of a report is given back, whole pages only', () => {
  const { dev, mem, drivers, discards, u8B } = rig({ reporting: true });
  const q = drivers[REPORTINGQ]!;
  // Buffers inside region B, as Linux reports them (device-writable), built by hand.
  const segs: Array<[number, number]> = [[B, 64 * PAGE], [B + 100 * PAGE + 100, 2 * PAGE], [B + 200 * PAGE, 100]];
  const layout = q.layout;
  segs.forEach(([a, l], i) => {
    q.writeDesc(i, a, l, 2 /* WRITE */ | (i < segs.length - 1 ? 1 /* NEXT */ : 0), i + 1);
  });
  q.writeAvailEntry(0, 0);
  q.setAvailIdx(1);
  dev.processQueue(REPORTINGQ);
  assert.equal(mem.readU16(layout.usedRing + 2), 1, 'the report is completed');
  assert.equal(mem.readU32(layout.usedRing + 8), 0, 'with used length 0');
  assert.deepEqual(discards, [[B, 64 * PAGE], [B + 101 * PAGE, PAGE]]);
  assert.ok(u8B.subarray(0, 64 * PAGE).every((x) => x === 0));
  assert.ok(u8B.subarray(100 * PAGE, 101 * PAGE).every((x) => x === 0xaa), 'a partial page is not given back');
  assert.ok(u8B.subarray(101 * PAGE, 102 * PAGE).every((x) => x === 0));
  assert.equal(dev.counters['reported_bytes'], 65 * PAGE);
  assert.equal(dev.counters['invalid_reports'], 1);
});

test('a discard that fails is counted, the request still completes', () => {
  const mem = GuestMemory.fromBuffers([{ gpa: 0, buffer: new ArrayBuffer(1 << 20) }]);
  const dev = new BalloonDevice({ numPages: 1, discard: () => false });
  const drv = new TestDriver(mem, { size: 8 });
  dev.activate({ mem, queues: [drv.queue(), null], features: dev.features, notifyQueue: () => {}, notifyConfig: () => {} });
  drv.addChain([pfnArray([200, 201, 250])], []);
  dev.processQueue(INFLATEQ);
  assert.equal(drv.used().length, 1);
  assert.equal(dev.counters['discard_errors'], 2);
  assert.equal(dev.counters['inflated_pages'], 3);
});

test('saved state: target and actual; another device kind is refused', () => {
  const dev = new BalloonDevice({ numPages: 10 });
  dev.onHostValue(5000);
  dev.writeConfig(4, pfnArray([4321]));
  const s = dev.saveState();
  assert.deepEqual(s, { kind: 'balloon', numPages: 5000, actual: 4321 });
  const fresh = new BalloonDevice({ numPages: 0 });
  fresh.restoreState(s);
  assert.deepEqual(config(fresh), { numPages: 5000, actual: 4321, beyond: [0, 0, 0, 0, 0, 0, 0, 0] });
  assert.throws(() => fresh.restoreState({ kind: 'rng' }), VirtioStateMismatchError);
});
