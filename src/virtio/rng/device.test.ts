// virtio-rng (virtio 1.2, 5.4) driven by the test driver.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GuestMemory } from '../../memory/guest_memory.js';
import { VirtioDeviceType } from '../device.js';
import { TestDriver } from '../testing/driver.js';
import { RngDevice } from './device.js';

const dir = mkdtempSync(join(tmpdir(), 'stv-rng-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function rig(fd: number, maxBytesPerRequest?: number): { dev: RngDevice; drv: TestDriver; mem: GuestMemory; notified: number[] } {
  const dev = new RngDevice({ fd, ...(maxBytesPerRequest !== undefined ? { maxBytesPerRequest } : {}) });
  const mem = GuestMemory.fromBuffers([{ gpa: 0, buffer: new ArrayBuffer(1 << 20) }]);
  const drv = new TestDriver(mem, { size: 16 });
  const notified: number[] = [];
  dev.activate({ mem, queues: [drv.queue({ eventIdx: true, indirect: true })], features: dev.features, notifyQueue: (i) => notified.push(i), notifyConfig: () => {} });
  return { dev, drv, mem, notified };
}

test('fills device-writable buffers from the source, capped per request', () => {
  const src = join(dir, 'entropy');
  const bytes = Uint8Array.from({ length: 300 }, (_, i) => (i * 7 + 3) & 0xff);
  writeFileSync(src, bytes);
  const { dev, drv, mem, notified } = rig(openSync(src, 'r'), 100);
  assert.equal(dev.deviceType, VirtioDeviceType.Rng);
  assert.equal(dev.numQueues, 1);
  const cfg = new Uint8Array(4).fill(9);
  dev.readConfig(0, cfg);
  assert.deepEqual([...cfg], [0, 0, 0, 0]);
  const a = drv.addChain([], [40, 40]);
  const b = drv.addChain([new Uint8Array(8)], [64], { indirect: true }); // readable part ignored
  const c = drv.addChain([], [500]);
  const d = drv.addChain([], [500]);
  dev.processQueue(0);
  assert.deepEqual(drv.used(), [{ id: a.head, len: 80 }, { id: b.head, len: 64 }, { id: c.head, len: 100 }, { id: d.head, len: 56 }]);
  assert.deepEqual(mem.slice(a.writable[0]!, 40), bytes.subarray(0, 40));
  assert.deepEqual(mem.slice(a.writable[1]!, 40), bytes.subarray(40, 80));
  assert.deepEqual(mem.slice(b.writable[0]!, 64), bytes.subarray(80, 144));
  assert.deepEqual(mem.slice(c.writable[0]!, 100), bytes.subarray(144, 244));
  assert.deepEqual(mem.slice(d.writable[0]!, 56), bytes.subarray(244, 300)); // source ran out
  assert.deepEqual(notified, [0]);
  dev.close();
});

test('/dev/urandom: full buffers of random bytes', () => {
  const { dev, drv, mem } = rig(openSync('/dev/urandom', 'r'));
  const a = drv.addChain([], [4096]);
  dev.processQueue(0);
  assert.deepEqual(drv.used(), [{ id: a.head, len: 4096 }]);
  assert.ok(new Set(mem.slice(a.writable[0]!, 4096)).size > 200);
  dev.reset();
  drv.addChain([], [16]);
  dev.processQueue(0); // inactive after reset
  assert.deepEqual(drv.used(), []);
  dev.close();
});
