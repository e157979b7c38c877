// virtio-blk requests larger than one system call may move (IO_CHUNK): split into chunks at the
// right offsets across descriptor boundaries, into and out of real mmapped guest RAM; and a
// request on revoked memory (the VM stopping) is abandoned before any I/O.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, openSync, closeSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GuestMemory, GuestMemoryRevokedError } from '../../memory/guest_memory.js';
import { TestDriver } from '../testing/driver.js';
import { BlockDevice, IO_CHUNK, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT } from './device.js';

const dir = mkdtempSync(join(tmpdir(), 'stv-blk-chunk-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const MiB = 1 << 20;

function pattern(len: number, seed: number): Uint8Array {
  const b = new Uint8Array(len);
  for (let i = 0; i < len; i++) b[i] = (i * 13 + seed + (i >> 12)) & 0xff;
  return b;
}

function header(type: number, sector: number): Uint8Array {
  const h = new Uint8Array(16);
  const dv = new DataView(h.buffer);
  dv.setUint32(0, type, true);
  dv.setBigUint64(8, BigInt(sector), true);
  return h;
}

function setup(name: string, image: Uint8Array) {
  const path = join(dir, name);
  writeFileSync(path, image);
  const fd = openSync(path, 'r+');
  const dev = new BlockDevice({ fd, size: image.length, readonly: false, numQueues: 1, queueSize: 64, serial: 'chunk' });
  const mem = GuestMemory.allocate([{ gpa: 0, size: 48 * MiB }]);
  const drv = new TestDriver(mem, { size: 64 });
  dev.activate({ mem, queues: [drv.queue()], features: dev.features, notifyQueue: () => {}, notifyConfig: () => {} });
  return { path, fd, dev, mem, drv };
}

test(`a 10 MiB read and a 9 MiB write in several descriptors go through in ${IO_CHUNK / MiB} MiB chunks, byte for byte`, () => {
  assert.ok(IO_CHUNK <= 8 * MiB, 'no single system call moves more than a few MiB');
  const image = pattern(24 * MiB, 1);
  const { path, fd, dev, mem, drv } = setup('rw.img', image);
  try {
    const sector = 3;
    const lens = [3 * MiB + 512, 5 * MiB - 512, 2 * MiB];
    const c = drv.addChain([header(VIRTIO_BLK_T_IN, sector)], [...lens, 1]);
    dev.processQueue(0);
    assert.equal(drv.used().length, 1);
    assert.equal(mem.readU8(c.writable[3]!), VIRTIO_BLK_S_OK);
    let off = sector * 512;
    lens.forEach((n, k) => {
      assert.ok(Buffer.from(mem.slice(c.writable[k]!, n)).equals(Buffer.from(image.subarray(off, off + n))), `descriptor ${k} holds the image at ${off}`);
      off += n;
    });

    drv.resetData();
    const a = pattern(4 * MiB + 1024, 7);
    const b = pattern(5 * MiB - 1024, 9);
    const w = drv.addChain([header(VIRTIO_BLK_T_OUT, 100), a, b], [1]);
    dev.processQueue(0);
    assert.equal(mem.readU8(w.writable[0]!), VIRTIO_BLK_S_OK);
    const file = readFileSync(path);
    assert.ok(file.subarray(100 * 512, 100 * 512 + a.length).equals(Buffer.from(a)));
    assert.ok(file.subarray(100 * 512 + a.length, 100 * 512 + a.length + b.length).equals(Buffer.from(b)));
    assert.ok(file.subarray(0, 100 * 512).equals(Buffer.from(image.subarray(0, 100 * 512))), 'nothing before the request changed');
  } finally {
    mem.free();
    closeSync(fd);
  }
});

test('a request on revoked guest memory (the VM is stopping) is abandoned before any I/O', () => {
  const image = pattern(16 * MiB, 3);
  const { fd, dev, mem, drv } = setup('revoked.img', image);
  try {
    const c = drv.addChain([header(VIRTIO_BLK_T_IN, 0)], [8 * MiB, 1]);
    mem.revoke();
    assert.throws(() => dev.processQueue(0), GuestMemoryRevokedError);
    assert.ok(mem.slice(c.writable[0]!, 8 * MiB).every((x) => x === 0), 'nothing was read into guest memory');
    assert.equal(drv.used().length, 0, 'the request was not completed');
  } finally {
    mem.free();
    closeSync(fd);
  }
});
