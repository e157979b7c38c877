// virtio-pmem (virtio 1.2, 5.19) driven by the test driver, with a real backing file.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { fsyncSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GuestMemory } from '../../memory/guest_memory.js';
import { VirtioDeviceType } from '../device.js';
import { VirtqueueError } from '../queue.js';
import { VirtioStateMismatchError } from '../state.js';
import { TestDriver } from '../testing/driver.js';
import { PmemDevice, VIRTIO_PMEM_REQ_TYPE_FLUSH, VIRTIO_PMEM_RESP_TYPE_EIO, VIRTIO_PMEM_RESP_TYPE_OK } from './device.js';

const dir = mkdtempSync(join(tmpdir(), 'stv-pmem-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const START = 0x1_4000_0000;
const SIZE = 2 << 20;

function le32(v: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v, true);
  return b;
}

function rig(opts: { discardWrites?: boolean } = {}) {
  const path = join(dir, `backing-${Math.random().toString(36).slice(2)}`);
  writeFileSync(path, new Uint8Array(4096).fill(0x5a));
  const fd = openSync(path, 'r+');
  const synced: number[] = [];
  const dev = new PmemDevice({ fd, start: START, size: SIZE, ...opts, fsync: (f) => { fsyncSync(f); synced.push(f); } });
  const mem = GuestMemory.fromBuffers([{ gpa: 0, buffer: new ArrayBuffer(1 << 20) }]);
  const drv = new TestDriver(mem, { size: 16 });
  const notified: number[] = [];
  dev.activate({ mem, queues: [drv.queue({ eventIdx: true, indirect: true })], features: dev.features, notifyQueue: (i) => notified.push(i), notifyConfig: () => {} });
  return { dev, drv, mem, notified, synced, fd, path };
}

test('configuration space: start and size, le64 (5.19.4); read-only', () => {
  const { dev } = rig();
  assert.equal(dev.deviceType, VirtioDeviceType.Pmem);
  assert.equal(dev.deviceType, 27);
  assert.equal(dev.numQueues, 1);
  const cfg = new Uint8Array(24).fill(0xff);
  dev.readConfig(0, cfg);
  const v = new DataView(cfg.buffer);
  assert.equal(v.getBigUint64(0, true), BigInt(START));
  assert.equal(v.getBigUint64(8, true), BigInt(SIZE));
  assert.deepEqual([...cfg.subarray(16)], [0, 0, 0, 0, 0, 0, 0, 0], 'past the end reads 0');
  const part = new Uint8Array(4);
  dev.readConfig(8, part);
  assert.deepEqual([...part], [0x00, 0x00, 0x20, 0x00]);
  dev.writeConfig(0, new Uint8Array(8)); // ignored
  dev.readConfig(0, cfg);
  assert.equal(new DataView(cfg.buffer).getBigUint64(0, true), BigInt(START));
  dev.close();
});

test('flush: fsync of the backing file, response OK; other types EIO (5.19.6)', () => {
  const { dev, drv, mem, notified, synced, fd } = rig();
  const a = drv.addChain([le32(VIRTIO_PMEM_REQ_TYPE_FLUSH)], [4]);
  const b = drv.addChain([le32(7)], [4], { indirect: true });
  // Request split over two descriptors, response over two.
  const c = drv.addChain([Uint8Array.of(0, 0), Uint8Array.of(0, 0)], [1, 3]);
  dev.processQueue(0);
  assert.deepEqual(drv.used(), [{ id: a.head, len: 4 }, { id: b.head, len: 4 }, { id: c.head, len: 4 }]);
  assert.equal(mem.readU32(a.writable[0]!), VIRTIO_PMEM_RESP_TYPE_OK);
  assert.equal(mem.readU32(b.writable[0]!), VIRTIO_PMEM_RESP_TYPE_EIO);
  assert.equal(mem.readU8(c.writable[0]!), 0);
  assert.deepEqual([...mem.slice(c.writable[1]!, 3)], [0, 0, 0]);
  assert.deepEqual(synced, [fd, fd]);
  assert.deepEqual(notified, [0]);
  assert.deepEqual(dev.counters, { flushes: 2, flush_errors: 0, unsupported_requests: 1 });
  dev.close();
});

test('a request shorter than its 4-byte type is answered EIO; a chain with no room for the response is a VirtqueueError', () => {
  const { dev, drv, mem, synced } = rig();
  const a = drv.addChain([Uint8Array.of(0, 0)], [4]);
  const none = drv.addChain([], [4]);
  dev.processQueue(0);
  assert.deepEqual(drv.used(), [{ id: a.head, len: 4 }, { id: none.head, len: 4 }]);
  assert.equal(mem.readU32(a.writable[0]!), VIRTIO_PMEM_RESP_TYPE_EIO);
  assert.equal(mem.readU32(none.writable[0]!), VIRTIO_PMEM_RESP_TYPE_EIO);
  assert.deepEqual(synced, []);
  drv.addChain([le32(0)], [3]);
  assert.throws(() => dev.processQueue(0), (e: Error) => e instanceof VirtqueueError && e.reason === 'request' && /3 device-writable bytes/.test(e.message));
  drv.addChain([le32(0)], []);
  assert.throws(() => dev.processQueue(0), VirtqueueError);
  dev.close();
});

test('guest descriptors outside RAM are a VirtqueueError, never a host access', () => {
  const { dev, drv } = rig();
  drv.writeDesc(0, 0x10_0000 - 2, 4, 0 /* readable, crosses the end of RAM */, 0);
  drv.publish(0);
  assert.throws(() => dev.processQueue(0), (e: Error) => e instanceof VirtqueueError && e.reason === 'desc-out-of-range');
  dev.close();
});

test('discard_writes: a flush succeeds without touching the file', () => {
  const { dev, drv, mem, synced, path } = rig({ discardWrites: true });
  const a = drv.addChain([le32(VIRTIO_PMEM_REQ_TYPE_FLUSH)], [4]);
  dev.processQueue(0);
  assert.deepEqual(drv.used(), [{ id: a.head, len: 4 }]);
  assert.equal(mem.readU32(a.writable[0]!), VIRTIO_PMEM_RESP_TYPE_OK);
  assert.deepEqual(synced, []);
  assert.deepEqual(readFileSync(path), Buffer.from(new Uint8Array(4096).fill(0x5a)));
  dev.close();
});

test('a failing fsync answers EIO and is counted', () => {
  const path = join(dir, 'eio');
  writeFileSync(path, '');
  const dev = new PmemDevice({ fd: openSync(path, 'r'), start: START, size: SIZE, fsync: () => { throw new Error('EIO'); } });
  const mem = GuestMemory.fromBuffers([{ gpa: 0, buffer: new ArrayBuffer(1 << 20) }]);
  const drv = new TestDriver(mem, { size: 4 });
  dev.activate({ mem, queues: [drv.queue()], features: dev.features, notifyQueue: () => {}, notifyConfig: () => {} });
  const a = drv.addChain([le32(0)], [4]);
  dev.processQueue(0);
  assert.equal(mem.readU32(a.writable[0]!), VIRTIO_PMEM_RESP_TYPE_EIO);
  assert.equal(dev.counters['flush_errors'], 1);
  dev.reset();
  drv.addChain([le32(0)], [4]);
  dev.processQueue(0); // inactive after reset
  assert.equal(drv.used().length, 1);
  dev.close();
});

test('state: saved start/size; restoring another region or kind is refused by name', () => {
  const { dev } = rig();
  const s = dev.saveState();
  assert.deepEqual(s, { kind: 'pmem', start: BigInt(START), size: BigInt(SIZE) });
  dev.restoreState(s);
  assert.throws(() => dev.restoreState({ kind: 'pmem', start: BigInt(START), size: BigInt(SIZE * 2) }), (e: Error) => e instanceof VirtioStateMismatchError && /4194304 bytes at 0x140000000/.test(e.message));
  assert.throws(() => dev.restoreState({ kind: 'rng' }), /saved rng state for a virtio-pmem device/);
  dev.close();
});

test('bad options are named', () => {
  assert.throws(() => new PmemDevice({ fd: -1, start: 0, size: SIZE }), /invalid fd/);
  assert.throws(() => new PmemDevice({ fd: 0, start: 0, size: 0 }), /invalid size/);
  assert.throws(() => new PmemDevice({ fd: 0, start: -1, size: SIZE }), /invalid start/);
  assert.throws(() => new PmemDevice({ fd: 0, start: 0, size: SIZE, queueSize: 3 }), /queue size 3/);
});
