// virtio-blk (virtio 1.2, 5.2) against a temporary image file, driven by the test driver.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GuestMemory } from '../../memory/guest_memory.js';
import { VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VirtioDeviceType, bit } from '../device.js';
import { VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VirtqueueError } from '../queue.js';
import { TestDriver } from '../testing/driver.js';
import {
  BlkConfig,
  BlockDevice,
  MAX_DISCARD_SEG,
  VIRTIO_BLK_F_DISCARD,
  VIRTIO_BLK_F_FLUSH,
  VIRTIO_BLK_F_MQ,
  VIRTIO_BLK_F_RO,
  VIRTIO_BLK_F_SEG_MAX,
  VIRTIO_BLK_F_WRITE_ZEROES,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES,
  VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
  type BlockDeviceOptions,
} from './device.js';

const dir = mkdtempSync(join(tmpdir(), 'stv-blk-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let fileNo = 0;

const IMAGE = 256 * 1024; // 512 sectors

function pattern(len: number, seed: number): Uint8Array {
  const b = new Uint8Array(len);
  for (let i = 0; i < len; i++) b[i] = (i * 31 + seed * 7 + (i >> 9)) & 0xff;
  return b;
}

interface Rig {
  dev: BlockDevice;
  drv: TestDriver;
  mem: GuestMemory;
  path: string;
  notified: number[];
  /** Submit one request; returns its status, used length and the device-written data. */
  req(type: number, sector: number | bigint, o?: { out?: Uint8Array | Uint8Array[]; inLen?: number; indirect?: boolean; queue?: number }): { status: number; len: number; data: Uint8Array };
}

function rig(opts: Partial<BlockDeviceOptions> & { image?: Uint8Array; openFlags?: string; features?: bigint; mmapped?: boolean } = {}): Rig {
  const path = join(dir, `disk${fileNo++}.img`);
  writeFileSync(path, opts.image ?? pattern(IMAGE, 1));
  const ro = opts.readonly ?? false;
  const fd = openSync(path, opts.openFlags ?? (ro ? 'r' : 'r+'));
  const size = statSync(path).size;
  const dev = new BlockDevice({ fd, size, readonly: ro, numQueues: opts.numQueues ?? 1, queueSize: 64, serial: opts.serial ?? 'stv-serial-0001' });
  // mmapped memory has host addresses: requests go through one preadv/pwritev into guest RAM.
  const mem = opts.mmapped ? GuestMemory.allocate([{ gpa: 0, size: 4 << 20 }]) : GuestMemory.fromBuffers([{ gpa: 0, buffer: new ArrayBuffer(4 << 20) }]);
  const drvs: TestDriver[] = [];
  for (let i = 0; i < dev.numQueues; i++) drvs.push(new TestDriver(mem, { size: 64, base: i * 0x8000, dataStart: 0x100000 + i * 0x180000, dataEnd: 0x280000 + i * 0x180000 }));
  const features = opts.features ?? dev.features;
  const notified: number[] = [];
  const opt = { eventIdx: (features & bit(VIRTIO_F_EVENT_IDX)) !== 0n, indirect: (features & bit(VIRTIO_F_INDIRECT_DESC)) !== 0n };
  dev.activate({ mem, queues: drvs.map((d) => d.queue(opt)), features, notifyQueue: (i) => notified.push(i), notifyConfig: () => {} });
  const req: Rig['req'] = (type, sector, o = {}) => {
    const d = drvs[o.queue ?? 0]!;
    d.resetData();
    const hdr = new Uint8Array(16);
    const dv = new DataView(hdr.buffer);
    dv.setUint32(0, type, true);
    dv.setBigUint64(8, BigInt.asUintN(64, BigInt(sector)), true);
    const outs = o.out === undefined ? [] : Array.isArray(o.out) ? o.out : [o.out];
    const writable = o.inLen !== undefined ? [o.inLen, 1] : [1];
    const c = d.addChain([hdr, ...outs], writable, { indirect: o.indirect ?? false });
    dev.processQueue(o.queue ?? 0);
    const used = d.used();
    assert.equal(used.length, 1);
    assert.equal(used[0]!.id, c.head);
    const statusAddr = c.writable[c.writable.length - 1]!;
    const data = o.inLen !== undefined ? mem.slice(c.writable[0]!, o.inLen).slice() : new Uint8Array(0);
    return { status: mem.readU8(statusAddr), len: used[0]!.len, data };
  };
  return { dev, drv: drvs[0]!, mem, path, notified, req };
}

test('features and configuration space (5.2.3, 5.2.4)', () => {
  const { dev } = rig({ image: new Uint8Array(IMAGE + 100) });
  assert.equal(dev.deviceType, VirtioDeviceType.Block);
  assert.equal(dev.capacity, 512); // the partial sector at the end is not addressable
  const f = dev.features;
  for (const b of [VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_EVENT_IDX]) assert.notEqual(f & bit(b), 0n);
  assert.equal(f & bit(VIRTIO_BLK_F_RO), 0n);
  assert.equal(f & bit(VIRTIO_BLK_F_MQ), 0n);
  const cfg = new Uint8Array(64);
  dev.readConfig(0, cfg);
  const dv = new DataView(cfg.buffer);
  assert.equal(dv.getBigUint64(BlkConfig.capacity, true), 512n);
  assert.equal(dv.getUint32(BlkConfig.segMax, true), 62);
  assert.equal(dv.getUint32(BlkConfig.blkSize, true), 512);
  assert.equal(dv.getUint16(BlkConfig.numQueues, true), 1);
  assert.equal(dv.getUint32(BlkConfig.maxDiscardSeg, true), MAX_DISCARD_SEG);
  assert.ok(dv.getUint32(BlkConfig.maxDiscardSectors, true) > 0);
  assert.equal(cfg[BlkConfig.writeZeroesMayUnmap], 1);
  const tail = new Uint8Array(8).fill(0xff);
  dev.readConfig(200, tail); // beyond the structure: zeros
  assert.deepEqual([...tail], [0, 0, 0, 0, 0, 0, 0, 0]);
  const part = new Uint8Array(4);
  dev.readConfig(BlkConfig.capacity, part);
  assert.deepEqual([...part], [0, 2, 0, 0]);

  const ro = rig({ readonly: true, numQueues: 4 }).dev;
  assert.notEqual(ro.features & bit(VIRTIO_BLK_F_RO), 0n);
  assert.notEqual(ro.features & bit(VIRTIO_BLK_F_MQ), 0n);
  assert.equal(ro.features & bit(VIRTIO_BLK_F_DISCARD), 0n);
  ro.readConfig(0, cfg);
  assert.equal(dv.getUint16(BlkConfig.numQueues, true), 4);
  assert.throws(() => new BlockDevice({ fd: 0, size: 0, readonly: false, numQueues: 1, queueSize: 100, serial: '' }), RangeError);
});

for (const mmapped of [false, true]) test(`write then read round trips, split and indirect buffers (${mmapped ? 'preadv/pwritev on mmapped RAM' : 'per-segment views'})`, () => {
  const r = rig({ mmapped });
  const a = pattern(4096, 9);
  assert.deepEqual(r.req(VIRTIO_BLK_T_OUT, 8, { out: a }), { status: VIRTIO_BLK_S_OK, len: 1, data: new Uint8Array(0) });
  const rd = r.req(VIRTIO_BLK_T_IN, 8, { inLen: 4096 });
  assert.equal(rd.status, VIRTIO_BLK_S_OK);
  assert.equal(rd.len, 4097);
  assert.deepEqual(rd.data, a);
  // Data split over three descriptors, through an indirect table.
  const parts = [pattern(512, 2), pattern(1024, 3), pattern(512, 4)];
  assert.equal(r.req(VIRTIO_BLK_T_OUT, 100, { out: parts, indirect: true }).status, VIRTIO_BLK_S_OK);
  const back = r.req(VIRTIO_BLK_T_IN, 100, { inLen: 2048, indirect: true });
  assert.deepEqual(back.data, Uint8Array.from([...parts[0]!, ...parts[1]!, ...parts[2]!]));
  const file = readFileSync(r.path);
  assert.deepEqual(file.subarray(8 * 512, 8 * 512 + 4096), Buffer.from(a));
  assert.deepEqual(file.subarray(0, 8 * 512), Buffer.from(pattern(IMAGE, 1).subarray(0, 8 * 512)));
  // Last sector of the disk.
  assert.equal(r.req(VIRTIO_BLK_T_OUT, 511, { out: pattern(512, 5) }).status, VIRTIO_BLK_S_OK);
  assert.deepEqual(r.req(VIRTIO_BLK_T_IN, 511, { inLen: 512 }).data, pattern(512, 5));
  assert.equal(statSync(r.path).size, IMAGE);
  assert.ok(r.notified.length > 0 && r.notified.every((q) => q === 0));
});

test('framing (2.6.4): header split across descriptors, status byte sharing the data descriptor', () => {
  const r = rig();
  const { drv, mem, dev } = r;
  drv.resetData();
  const h1 = drv.alloc(5);
  const h2 = drv.alloc(11);
  mem.writeU32(h1, VIRTIO_BLK_T_IN); // type in the first 4 bytes, then 1 byte of reserved
  mem.writeU32(h2 + 3, 3); // sector (header bytes 8..15) = 3, all in h2
  const buf = drv.alloc(513);
  mem.writeU8(buf + 512, 0xee);
  drv.writeDesc(0, h1, 5, VIRTQ_DESC_F_NEXT, 1);
  drv.writeDesc(1, h2, 11, VIRTQ_DESC_F_NEXT, 2);
  drv.writeDesc(2, buf, 513, VIRTQ_DESC_F_WRITE, 0);
  drv.publish(0);
  dev.processQueue(0);
  assert.deepEqual(drv.used(), [{ id: 0, len: 513 }]);
  assert.equal(mem.readU8(buf + 512), VIRTIO_BLK_S_OK);
  assert.deepEqual(mem.slice(buf, 512), pattern(IMAGE, 1).subarray(3 * 512, 4 * 512));
});

test('flush, get-id and unsupported types', () => {
  const r = rig({ serial: 'short-id' });
  assert.equal(r.req(VIRTIO_BLK_T_FLUSH, 0).status, VIRTIO_BLK_S_OK);
  const id = r.req(VIRTIO_BLK_T_GET_ID, 0, { inLen: 20 });
  assert.equal(id.status, VIRTIO_BLK_S_OK);
  assert.equal(id.len, 21);
  assert.deepEqual(id.data, Uint8Array.from([...Buffer.from('short-id'), ...new Array<number>(12).fill(0)]));
  const long = rig({ serial: 'abcdefghijklmnopqrstuvwxyz' }).req(VIRTIO_BLK_T_GET_ID, 0, { inLen: 20 });
  assert.equal(Buffer.from(long.data).toString(), 'abcdefghijklmnopqrst'); // 20 bytes, no NUL
  assert.equal(r.req(99, 0).status, VIRTIO_BLK_S_UNSUPP);
  assert.equal(r.req(99, 0, { inLen: 512 }).status, VIRTIO_BLK_S_UNSUPP);
  assert.equal(r.req(VIRTIO_BLK_T_GET_ID, 0, { out: new Uint8Array(4), inLen: 20 }).status, VIRTIO_BLK_S_IOERR);
});

function dwz(...segs: Array<[number | bigint, number, number]>): Uint8Array {
  const b = new Uint8Array(16 * segs.length);
  const dv = new DataView(b.buffer);
  segs.forEach(([sector, n, flags], i) => {
    dv.setBigUint64(16 * i, BigInt.asUintN(64, BigInt(sector)), true);
    dv.setUint32(16 * i + 8, n, true);
    dv.setUint32(16 * i + 12, flags, true);
  });
  return b;
}

test('discard punches holes, write-zeroes zeroes, both keep the size (5.2.6)', () => {
  const r = rig();
  const orig = pattern(IMAGE, 1);
  assert.equal(r.req(VIRTIO_BLK_T_DISCARD, 0, { out: dwz([8, 16, 0], [64, 8, 0]) }).status, VIRTIO_BLK_S_OK);
  let file = readFileSync(r.path);
  assert.equal(file.length, IMAGE);
  assert.ok(file.subarray(8 * 512, 24 * 512).every((b) => b === 0));
  assert.ok(file.subarray(64 * 512, 72 * 512).every((b) => b === 0));
  assert.deepEqual(file.subarray(24 * 512, 64 * 512), Buffer.from(orig.subarray(24 * 512, 64 * 512)));
  assert.equal(r.req(VIRTIO_BLK_T_WRITE_ZEROES, 0, { out: dwz([100, 3, 0]) }).status, VIRTIO_BLK_S_OK);
  assert.equal(r.req(VIRTIO_BLK_T_WRITE_ZEROES, 0, { out: dwz([200, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP]) }).status, VIRTIO_BLK_S_OK);
  file = readFileSync(r.path);
  assert.ok(file.subarray(100 * 512, 103 * 512).every((b) => b === 0));
  assert.equal(file[103 * 512], orig[103 * 512]);
  assert.ok(file.subarray(200 * 512, 208 * 512).every((b) => b === 0));
  assert.deepEqual(r.req(VIRTIO_BLK_T_IN, 100, { inLen: 512 }).data, new Uint8Array(512));
  assert.equal(statSync(r.path).size, IMAGE);
  // Invalid ones change nothing.
  const before = readFileSync(r.path);
  assert.equal(r.req(VIRTIO_BLK_T_DISCARD, 0, { out: dwz([300, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP]) }).status, VIRTIO_BLK_S_UNSUPP);
  assert.equal(r.req(VIRTIO_BLK_T_WRITE_ZEROES, 0, { out: dwz([300, 8, 2]) }).status, VIRTIO_BLK_S_UNSUPP);
  assert.equal(r.req(VIRTIO_BLK_T_DISCARD, 0, { out: dwz([300, 8, 0], [510, 8, 0]) }).status, VIRTIO_BLK_S_IOERR); // 2nd beyond capacity
  assert.equal(r.req(VIRTIO_BLK_T_DISCARD, 0, { out: dwz([2n ** 64n - 1n, 2, 0]) }).status, VIRTIO_BLK_S_IOERR);
  assert.equal(r.req(VIRTIO_BLK_T_DISCARD, 0, { out: new Uint8Array(17) }).status, VIRTIO_BLK_S_IOERR);
  assert.equal(r.req(VIRTIO_BLK_T_DISCARD, 0).status, VIRTIO_BLK_S_IOERR); // no segment
  const many = Array.from({ length: MAX_DISCARD_SEG + 1 }, (_, i): [number, number, number] => [i * 8, 1, 0]);
  assert.equal(r.req(VIRTIO_BLK_T_DISCARD, 0, { out: dwz(...many) }).status, VIRTIO_BLK_S_IOERR);
  assert.deepEqual(readFileSync(r.path), before);
  // Not negotiated: unsupported.
  const nf = rig({ features: rig().dev.features & ~bit(VIRTIO_BLK_F_DISCARD) });
  assert.equal(nf.req(VIRTIO_BLK_T_DISCARD, 0, { out: dwz([8, 8, 0]) }).status, VIRTIO_BLK_S_UNSUPP);
});

test('read-only: writes, discards and write-zeroes fail, the file is unchanged', () => {
  const r = rig({ readonly: true });
  const before = readFileSync(r.path);
  assert.equal(r.req(VIRTIO_BLK_T_OUT, 0, { out: pattern(512, 7) }).status, VIRTIO_BLK_S_IOERR);
  assert.equal(r.req(VIRTIO_BLK_T_DISCARD, 0, { out: dwz([0, 8, 0]) }).status, VIRTIO_BLK_S_UNSUPP); // not offered
  assert.equal(r.req(VIRTIO_BLK_T_FLUSH, 0).status, VIRTIO_BLK_S_OK);
  const rd = r.req(VIRTIO_BLK_T_IN, 1, { inLen: 1024 });
  assert.equal(rd.status, VIRTIO_BLK_S_OK);
  assert.deepEqual(rd.data, pattern(IMAGE, 1).subarray(512, 1536));
  // Even a driver that negotiated DISCARD / WRITE_ZEROES from somewhere gets an error.
  const forced = rig({ readonly: true, features: rig().dev.features });
  assert.equal(forced.req(VIRTIO_BLK_T_WRITE_ZEROES, 0, { out: dwz([0, 8, 0]) }).status, VIRTIO_BLK_S_IOERR);
  assert.equal(forced.req(VIRTIO_BLK_T_OUT, 0, { out: pattern(512, 7) }).status, VIRTIO_BLK_S_IOERR);
  assert.deepEqual(readFileSync(r.path), before);
  assert.deepEqual(readFileSync(forced.path), before);
});

test('out-of-range and malformed requests get IOERR in-band', () => {
  const r = rig();
  const before = readFileSync(r.path);
  const bad: Array<[number, number | bigint, { out?: Uint8Array; inLen?: number }]> = [
    [VIRTIO_BLK_T_IN, 512, { inLen: 512 }], // at capacity
    [VIRTIO_BLK_T_IN, 511, { inLen: 1024 }], // runs past it
    [VIRTIO_BLK_T_OUT, 510, { out: new Uint8Array(1536) }],
    [VIRTIO_BLK_T_IN, 2n ** 53n, { inLen: 512 }],
    [VIRTIO_BLK_T_IN, 2n ** 64n - 1n, { inLen: 512 }],
    [VIRTIO_BLK_T_OUT, 2n ** 63n, { out: new Uint8Array(512) }],
    [VIRTIO_BLK_T_IN, 0, { inLen: 100 }], // not whole sectors
    [VIRTIO_BLK_T_OUT, 0, { out: new Uint8Array(511) }],
    [VIRTIO_BLK_T_IN, 0, { out: new Uint8Array(512), inLen: 512 }], // readable data on a read
    [VIRTIO_BLK_T_OUT, 0, { out: new Uint8Array(512), inLen: 512 }], // writable data on a write
  ];
  for (const [type, sector, o] of bad) {
    const res = r.req(type, sector, o);
    assert.equal(res.status, VIRTIO_BLK_S_IOERR, `type ${type} sector ${sector}`);
    assert.equal(res.len, 1);
  }
  assert.equal(r.req(VIRTIO_BLK_T_IN, 512, { inLen: 0 }).status, VIRTIO_BLK_S_OK); // zero sectors at capacity
  // A header shorter than 16 bytes.
  r.drv.resetData();
  const c = r.drv.addChain([new Uint8Array(8)], [1]);
  r.dev.processQueue(0);
  assert.deepEqual(r.drv.used(), [{ id: c.head, len: 1 }]);
  assert.equal(r.mem.readU8(c.writable[0]!), VIRTIO_BLK_S_IOERR);
  // No status byte at all: nothing to answer in-band.
  r.drv.addChain([new Uint8Array(16)], []);
  assert.throws(() => r.dev.processQueue(0), (e: unknown) => e instanceof VirtqueueError && e.reason === 'request' && /no device-writable status byte/.test(e.message));
  assert.deepEqual(readFileSync(r.path), before);
});

test('host I/O errors become IOERR', () => {
  // The device thinks it may write, but the fd is read-only: write(2) fails with EBADF.
  const r = rig({ openFlags: 'r' });
  assert.equal(r.req(VIRTIO_BLK_T_OUT, 0, { out: new Uint8Array(512) }).status, VIRTIO_BLK_S_IOERR);
  assert.equal(r.req(VIRTIO_BLK_T_IN, 0, { inLen: 512 }).status, VIRTIO_BLK_S_OK);
  r.dev.close();
  r.drv.addChain([new Uint8Array(16)], [1]);
  r.dev.processQueue(0); // closed: inactive, nothing is processed
  assert.deepEqual(r.drv.used(), []);
});

test('multiqueue: each queue is processed and signalled on its own', () => {
  const r = rig({ numQueues: 2 });
  assert.equal(r.req(VIRTIO_BLK_T_OUT, 4, { out: pattern(512, 3), queue: 1 }).status, VIRTIO_BLK_S_OK);
  assert.deepEqual(r.req(VIRTIO_BLK_T_IN, 4, { inLen: 512, queue: 0 }).data, pattern(512, 3));
  assert.deepEqual(r.notified, [1, 0]);
  r.dev.processQueue(7); // no such queue: ignored
  r.dev.reset();
  r.dev.processQueue(0); // not active: ignored
});

test('close() closes the image fd once', () => {
  const path = join(dir, 'close.img');
  writeFileSync(path, new Uint8Array(4096));
  const fd = openSync(path, 'r');
  const dev = new BlockDevice({ fd, size: 4096, readonly: true, numQueues: 1, queueSize: 8, serial: '' });
  dev.close();
  dev.close();
  assert.throws(() => closeSync(fd), /EBADF/);
});
