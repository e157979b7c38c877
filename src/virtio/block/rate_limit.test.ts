// virtio-blk under a rate limiter (Cloud Hypervisor's rate_limiter_config / rate_limit_group):
// with a fake clock, exactly the requests the buckets allow complete; the rest stay in the
// available ring until the clock has moved on and the throttle timer fires.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as libc from '../../sys/libc.js';
import { GuestMemory } from '../../memory/guest_memory.js';
import { TestDriver } from '../testing/driver.js';
import { RateLimiter, type RateLimiterConfig } from '../rate_limiter.js';
import { createDeviceModel } from '../../vmm/virtio_factory.js';
import { BlockDevice, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT } from './device.js';

const dir = mkdtempSync(join(tmpdir(), 'stv-blk-rl-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const IMAGE = 1 << 20;
let n = 0;

function image(): { fd: number; path: string } {
  const path = join(dir, `d${n++}.img`);
  const b = new Uint8Array(IMAGE);
  for (let i = 0; i < b.length; i++) b[i] = (i * 7 + (i >> 9)) & 0xff;
  writeFileSync(path, b);
  return { fd: openSync(path, 'r+'), path };
}

function fakeClock(): { now: () => number; advance: (ms: number) => void } {
  let t = 0;
  return { now: () => t, advance: (ms) => { t += ms; } };
}

interface Rig {
  dev: BlockDevice;
  drv: TestDriver;
  mem: GuestMemory;
  /** Post one request (not processed); returns the address of its status byte. */
  post(type: number, sector: number, o?: { inLen?: number; outLen?: number }): number;
}

function rig(dev: BlockDevice): Rig {
  const mem = GuestMemory.fromBuffers([{ gpa: 0, buffer: new ArrayBuffer(4 << 20) }]);
  const drv = new TestDriver(mem, { size: 64, dataStart: 0x100000, dataEnd: 0x400000 });
  dev.activate({ mem, queues: [drv.queue({ eventIdx: false, indirect: false })], features: dev.features, notifyQueue: () => {}, notifyConfig: () => {} });
  const post: Rig['post'] = (type, sector, o = {}) => {
    const hdr = new Uint8Array(16);
    const dv = new DataView(hdr.buffer);
    dv.setUint32(0, type, true);
    dv.setUint32(8, sector, true);
    const readable = o.outLen !== undefined ? [hdr, new Uint8Array(o.outLen).fill(0x5a)] : [hdr];
    const c = drv.addChain(readable, o.inLen !== undefined ? [o.inLen, 1] : [1]);
    return c.writable[c.writable.length - 1]!;
  };
  return { dev, drv, mem, post };
}

function blockDevice(rateLimiter: RateLimiter): BlockDevice {
  return new BlockDevice({ fd: image().fd, size: IMAGE, readonly: false, numQueues: 1, queueSize: 64, serial: 'rl', rateLimiter });
}

/** The throttle timer fired (the device's only poll fd): what the I/O thread does on POLLIN. */
function fire(dev: BlockDevice): void {
  const fds = dev.pollFds();
  assert.equal(fds.length, 1, 'a rate-limited disk polls its throttle timer');
  dev.onFdReady(fds[0]!);
}

test('bandwidth bucket of 8 KiB: two 4 KiB reads complete, the others wait in the avail ring for the clock', () => {
  const clock = fakeClock();
  const lim = new RateLimiter({ bandwidth: { size: 8192, refill_time: 1000 } }, clock.now);
  const { dev, drv, mem, post } = rig(blockDevice(lim));
  const status = [0, 8, 16, 24].map((s) => post(VIRTIO_BLK_T_IN, s, { inLen: 4096 }));
  dev.processQueue(0);
  assert.deepEqual(drv.used().map((u) => u.len), [4097, 4097]);
  assert.equal(drv.usedIdx, 2);
  assert.equal(drv.availIdx, 4); // the other two are still available, untouched
  assert.equal(dev.counters.read_ops, 2);
  assert.equal(dev.counters.rate_limited, 1);
  // A kick without time passing changes nothing.
  dev.processQueue(0);
  assert.equal(drv.used().length, 0);
  // Half the refill time: 4096 tokens, one more read.
  clock.advance(499);
  fire(dev);
  assert.equal(drv.used().length, 0);
  clock.advance(1);
  fire(dev);
  assert.equal(drv.used().length, 1);
  clock.advance(500);
  fire(dev);
  assert.equal(drv.used().length, 1);
  for (const s of status) assert.equal(mem.readU8(s), VIRTIO_BLK_S_OK);
  assert.equal(dev.counters.read_bytes, 4 * 4096);
});

test('ops bucket: a flush costs an op and no bytes; writes count their data bytes', () => {
  const clock = fakeClock();
  const lim = new RateLimiter({ bandwidth: { size: 4096, refill_time: 1000 }, ops: { size: 3, refill_time: 300 } }, clock.now);
  const { dev, drv, post } = rig(blockDevice(lim));
  post(VIRTIO_BLK_T_OUT, 0, { outLen: 4096 }); // bandwidth now empty
  post(VIRTIO_BLK_T_FLUSH, 0); // 0 bytes: passes
  post(VIRTIO_BLK_T_OUT, 8, { outLen: 512 }); // no bandwidth left
  dev.processQueue(0);
  assert.equal(drv.used().length, 2);
  assert.equal(lim.ops!.budget, 1);
  clock.advance(125); // 512 bytes and 1.25 ops back
  fire(dev);
  assert.equal(drv.used().length, 1);
  assert.equal(dev.counters.write_bytes, 4096 + 512);
  // Ops run out before bytes: three flushes, one op (+1/3 refilled since) left.
  post(VIRTIO_BLK_T_FLUSH, 0);
  post(VIRTIO_BLK_T_FLUSH, 0);
  dev.processQueue(0);
  assert.equal(drv.used().length, 1);
  clock.advance(100);
  fire(dev);
  assert.equal(drv.used().length, 1);
});

test('a request larger than the bucket completes once the bucket is full (no starvation), then the debt is paid', () => {
  const clock = fakeClock();
  const lim = new RateLimiter({ bandwidth: { size: 1024, refill_time: 1000 } }, clock.now);
  const { dev, drv, post } = rig(blockDevice(lim));
  post(VIRTIO_BLK_T_IN, 0, { inLen: 512 });
  post(VIRTIO_BLK_T_IN, 8, { inLen: 4096 }); // 4 buckets' worth
  post(VIRTIO_BLK_T_IN, 16, { inLen: 512 });
  dev.processQueue(0);
  assert.equal(drv.used().length, 1); // the big one waits for a full bucket
  clock.advance(500);
  fire(dev);
  assert.equal(drv.used().length, 1); // it passed, leaving 3072 tokens of debt
  clock.advance(3000);
  fire(dev);
  assert.equal(drv.used().length, 0);
  clock.advance(500);
  fire(dev);
  assert.equal(drv.used().length, 1);
});

test('the throttle timer is armed for the wait and fires; reset() disarms it and forgets the throttled queue', () => {
  const clock = fakeClock();
  // 1000 tokens per 20 ms of the fake clock; the timer runs on the real monotonic clock.
  const lim = new RateLimiter({ bandwidth: { size: 1024, refill_time: 20 } }, clock.now);
  const dev = blockDevice(lim);
  const r = rig(dev);
  r.post(VIRTIO_BLK_T_IN, 0, { inLen: 1024 });
  r.post(VIRTIO_BLK_T_IN, 8, { inLen: 1024 });
  dev.processQueue(0);
  assert.equal(r.drv.used().length, 1);
  const fd = dev.pollFds()[0]!;
  const p = libc.pollFds(1);
  libc.pollFdSet(p, 0, fd, libc.POLLIN);
  libc.poll(p, -1); // returns once the timer fired (armed for 20 ms)
  assert.notEqual(libc.pollRevents(p, 0) & libc.POLLIN, 0);
  clock.advance(20);
  dev.onFdReady(fd);
  assert.equal(r.drv.used().length, 1);
  // Throttled again, then reset: the timer is disarmed (not readable) and nothing is retried.
  r.post(VIRTIO_BLK_T_IN, 16, { inLen: 1024 });
  dev.processQueue(0);
  assert.equal(r.drv.used().length, 0);
  dev.reset();
  libc.pollFdSet(p, 0, fd, libc.POLLIN);
  libc.poll(p, 0);
  assert.equal(libc.pollRevents(p, 0), 0);
  dev.close();
});

test('rate_limit_group: disks built by one I/O thread share one limiter; a disk of its own does not', async () => {
  // The factory's limiters run on the real clock: a refill time of 46 days keeps refills negligible.
  const group: RateLimiterConfig = { bandwidth: { size: 8192, refill_time: 4e9 } };
  const groups = new Map<string, RateLimiter>();
  const spec = (rateLimit: { config: RateLimiterConfig; group?: string }) => ({
    kind: 'block' as const, fd: image().fd, size: IMAGE, readonly: false, numQueues: 1, queueSize: 64, serial: 's', rateLimit,
  });
  const a = rig(await createDeviceModel(spec({ config: group, group: 'g0' }), 'a', () => {}, groups) as BlockDevice);
  const b = rig(await createDeviceModel(spec({ config: group, group: 'g0' }), 'b', () => {}, groups) as BlockDevice);
  const own = rig(await createDeviceModel(spec({ config: group }), 'c', () => {}, groups) as BlockDevice);
  assert.equal(groups.size, 1);
  a.post(VIRTIO_BLK_T_IN, 0, { inLen: 4096 });
  a.post(VIRTIO_BLK_T_IN, 8, { inLen: 2048 });
  a.dev.processQueue(0);
  assert.equal(a.drv.used().length, 2); // 6 KiB of the group's 8 KiB
  b.post(VIRTIO_BLK_T_IN, 0, { inLen: 2048 });
  b.post(VIRTIO_BLK_T_IN, 8, { inLen: 2048 });
  b.dev.processQueue(0);
  assert.equal(b.drv.used().length, 1); // the group's last 2 KiB; the second waits
  assert.equal(b.drv.availIdx - b.drv.usedIdx, 1);
  own.post(VIRTIO_BLK_T_IN, 0, { inLen: 8192 });
  own.dev.processQueue(0);
  assert.equal(own.drv.used().length, 1); // its own full bucket
  for (const r of [a, b, own]) r.dev.close();
});
