// vm.pause for the virtio devices (VirtioManager.pause/resume/getState over real I/O threads,
// real device models, mmapped guest RAM; only the VM's irqfd registration is a stand-in): a
// pause resolves only after every request the thread had taken completed and was published;
// while paused the driver may post and kick, yet no descriptor is taken, used.idx does not
// move and the image does not change; resume serves what was posted. The saved state of a
// paused device restores into a fresh device (another VMM's, here on a copy of the image) that
// carries on from the same ring positions.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, constants, copyFileSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VirtioManager, VirtioQuiesceError } from './virtio_manager.js';
import { createVmConfig, type VmConfigInput } from './config.js';
import { GuestMemory } from '../memory/guest_memory.js';
import { TestDriver } from '../virtio/testing/driver.js';
import { Word, QueueWord, Command, queueWord, vectorWord, postCommand, lo32 } from '../virtio/pci/shared.js';
import { DeviceStatus, VirtioDeviceType, VIRTIO_F_VERSION_1 } from '../virtio/device.js';
import { parseVirtioState, stringifyVirtioState, type VirtioDeviceState } from '../virtio/state.js';
import * as libc from '../sys/libc.js';
import type { Vm } from '../hypervisor/hypervisor.js';
import type { VirtioPciInit } from './pci_setup.js';

const dir = mkdtempSync(join(tmpdir(), 'stv-pause-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
const ONE = new Uint8Array(new BigUint64Array([1n]).buffer);
const SECTOR = 512;

function irqfdOnlyVm(): Vm {
  const vm = { registerIrqfd: () => {}, unregisterIrqfd: () => {} };
  return vm as unknown as Vm;
}

/** What Linux's virtio_pci does for one queue and DRIVER_OK, straight into the shared words (vector 0). */
function setQueue(d: VirtioPciInit, q: number, drv: TestDriver): void {
  const w = new Int32Array(d.shared);
  const set64 = (lo: number, v: number) => { Atomics.store(w, queueWord(q, lo), v >>> 0); Atomics.store(w, queueWord(q, lo + 1), 0); };
  Atomics.store(w, queueWord(q, QueueWord.Size), drv.layout.size);
  set64(QueueWord.DescLo, drv.layout.descTable);
  set64(QueueWord.AvailLo, drv.layout.availRing);
  set64(QueueWord.UsedLo, drv.layout.usedRing);
  Atomics.store(w, queueWord(q, QueueWord.Vector), 0);
  Atomics.store(w, queueWord(q, QueueWord.Enable), 1);
}

function activate(d: VirtioPciInit): void {
  const w = new Int32Array(d.shared);
  Atomics.store(w, vectorWord(d.numQueues, 0), 0); // vector 0 unmasked
  const f = BigInt(Atomics.load(w, Word.DeviceFeaturesLo) >>> 0) | (1n << VIRTIO_F_VERSION_1);
  Atomics.store(w, Word.DriverFeaturesLo, lo32(f));
  Atomics.store(w, Word.DriverFeaturesHi, 1); // VERSION_1 (bit 32)
  Atomics.store(w, Word.Status, DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK | DeviceStatus.DRIVER_OK);
  postCommand(w, Command.Activate);
  libc.write(d.controlFd, ONE);
}

/** Until `cond` holds (checked on every turn of the event loop); bounded so that a bug fails instead of hanging. */
async function until(what: string, cond: () => boolean): Promise<void> {
  for (let i = 0; !cond(); i++) {
    if (i > 2_000_000) throw new Error(`never: ${what}`);
    await new Promise<void>((r) => setImmediate(r));
  }
}

/** virtio-blk OUT (5.2.6): header {type 1, sector}, the data, a status byte. */
function postWrite(drv: TestDriver, sector: number, data: Uint8Array): void {
  const hdr = new Uint8Array(16);
  const dv = new DataView(hdr.buffer);
  dv.setUint32(0, 1, true);
  dv.setBigUint64(8, BigInt(sector), true);
  drv.addChain([hdr, data], [1]);
}

const sha = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');

function blkConfig(img: string): VmConfigInput {
  return { payload: { kernel: '/nonexistent' }, disks: [{ path: img, queue_size: 128 }], console: { mode: 'Off' } } as VmConfigInput;
}

test('pause: requests the I/O thread had taken complete before pause resolves; while paused nothing is taken, used.idx and the image stay put; resume serves what was posted', { timeout: 120_000 }, async (t) => {
  const img = join(dir, 'pause.img');
  writeFileSync(img, new Uint8Array(64 << 20));
  const m = new VirtioManager(() => {});
  m.open(createVmConfig(blkConfig(img)), 1);
  const mem = GuestMemory.allocate([{ gpa: 0, size: 64 << 20 }]);
  const vm = irqfdOnlyVm();
  const inits = m.start(vm, mem, (e) => assert.fail(`I/O thread error: ${e}`));
  try {
    await m.whenReady();
    const blk = inits.find((d) => d.deviceType === VirtioDeviceType.Block)!;
    const drv = new TestDriver(mem, { size: 128, base: 0x100000, dataStart: 0x110000, dataEnd: 0x3f00000 });
    setQueue(blk, 0, drv);
    activate(blk);
    // A batch big enough to be in the thread's hands when the pause is asked for.
    const N = 40;
    const CHUNK = 1 << 20;
    const payloads = Array.from({ length: N + 8 }, () => randomBytes(CHUNK));
    for (let i = 0; i < N; i++) postWrite(drv, i * (CHUNK / SECTOR), payloads[i]!);
    libc.write(blk.queueFds[0]!, ONE);
    await until('the thread started on the batch', () => drv.usedIdx >= 1);
    const before = drv.usedIdx;
    await m.pause();
    const atPause = drv.usedIdx;
    t.diagnostic(`${N - before} of ${N} requests were still in flight when the pause was asked for`);
    assert.equal(atPause, N, 'every request of the batch the thread had started completed (and was published) before pause resolved');
    const st = (await m.getState()).find((s) => s.id === '_disk0')!;
    assert.equal(st.transport.queues[0]!.lastAvailIdx, N, 'the device took exactly the posted requests');
    assert.equal(st.transport.queues[0]!.usedIdx, N, 'and holds none of them in flight');
    const imgAtPause = sha(img);
    assert.equal(drv.used().length, N); // the driver takes its completions (frees the descriptors)

    // Paused: the driver posts more and kicks, several times.
    for (let i = N; i < N + 8; i++) postWrite(drv, i * (CHUNK / SECTOR), payloads[i]!);
    for (let k = 0; k < 3; k++) libc.write(blk.queueFds[0]!, ONE);
    // A state request is a round trip through the I/O thread's loop, after the kicks.
    const st2 = (await m.getState()).find((s) => s.id === '_disk0')!;
    assert.equal(st2.transport.queues[0]!.lastAvailIdx, N, 'no descriptor taken while paused');
    assert.equal(drv.usedIdx, N, 'used.idx did not move while paused');
    assert.equal(sha(img), imgAtPause, 'the image did not change while paused');
    const cnt = new Uint8Array(8);
    libc.read(blk.queueFds[0]!, cnt);
    assert.equal(new DataView(cnt.buffer).getBigUint64(0, true), 3n, 'the kicks wait, unread, in the queue eventfd');
    libc.write(blk.queueFds[0]!, cnt); // put them back

    await m.resume();
    await until('the requests posted while paused complete', () => drv.usedIdx === N + 8);
    const all = readFileSync(img);
    for (let i = 0; i < N + 8; i++) assert.ok(all.subarray(i * CHUNK, (i + 1) * CHUNK).equals(payloads[i]!), `request ${i} wrote its data`);
    const rest = drv.used();
    assert.equal(rest.length, 8);
    for (const u of rest) assert.equal(u.len, 1, 'status byte only');
  } finally {
    await m.stop(vm);
    mem.free();
    m.close();
  }
});

test('pause waits for a request blocked inside its device (virtio-rng reading a FIFO) and resolves with it completed', { timeout: 60_000 }, async () => {
  const fifo = join(dir, 'entropy.fifo');
  execFileSync('mkfifo', [fifo]);
  const ours = openSync(fifo, constants.O_RDWR | constants.O_NONBLOCK);
  const m = new VirtioManager(() => {});
  m.open(createVmConfig({ payload: { kernel: '/nonexistent' }, console: { mode: 'Off' }, rng: { src: fifo } } as VmConfigInput), 1);
  const mem = GuestMemory.allocate([{ gpa: 0, size: 4 << 20 }]);
  const vm = irqfdOnlyVm();
  const inits = m.start(vm, mem, (e) => assert.fail(`I/O thread error: ${e}`));
  try {
    await m.whenReady();
    const rng = inits.find((d) => d.deviceType === VirtioDeviceType.Rng)!;
    const drv = new TestDriver(mem, { size: 16, base: 0x100000, dataStart: 0x110000, dataEnd: 0x200000 });
    setQueue(rng, 0, drv);
    activate(rng);
    drv.addChain([], [4096]);
    // One byte in the FIFO: the thread takes the request, reads it, and blocks for the rest.
    writeSync(ours, Uint8Array.of(0x5a));
    libc.write(rng.queueFds[0]!, ONE);
    const p = libc.pollFds(1);
    await until('the thread read the first byte (it is blocked in read(2) now)', () => {
      libc.pollFdSet(p, 0, ours, libc.POLLIN);
      return libc.poll(p, 0) === 0;
    });
    let usedAtPause = -1;
    const paused = m.pause(30_000).then(() => { usedAtPause = drv.usedIdx; });
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(usedAtPause, -1, 'not paused while the request is in the device');
    writeSync(ours, randomBytes(4095));
    await paused;
    assert.equal(usedAtPause, 1, 'the blocked request completed and was published before pause resolved');
    assert.equal(drv.used()[0]!.len, 4096);
    await m.resume();
  } finally {
    await m.stop(vm);
    closeSync(ours);
    mem.free();
    m.close();
  }
});

test('a device whose thread stays busy fails the pause with a VirtioQuiesceError naming it; the others are paused, and resume brings everything back', { timeout: 60_000 }, async () => {
  const fifo = join(dir, 'slow.fifo');
  execFileSync('mkfifo', [fifo]);
  const ours = openSync(fifo, constants.O_RDWR | constants.O_NONBLOCK);
  const img = join(dir, 'own.img');
  writeFileSync(img, new Uint8Array(1 << 20));
  const m = new VirtioManager(() => {});
  // The disk has its own I/O thread; the rng (on the shared thread) blocks in read(2).
  m.open(createVmConfig({ payload: { kernel: '/nonexistent' }, disks: [{ path: img, iothread: 'disk' }], console: { mode: 'Off' }, rng: { src: fifo } } as VmConfigInput), 1);
  const mem = GuestMemory.allocate([{ gpa: 0, size: 4 << 20 }]);
  const vm = irqfdOnlyVm();
  const inits = m.start(vm, mem, (e) => assert.fail(`I/O thread error: ${e}`));
  try {
    await m.whenReady();
    const rng = inits.find((d) => d.deviceType === VirtioDeviceType.Rng)!;
    const drv = new TestDriver(mem, { size: 16, base: 0x100000, dataStart: 0x110000, dataEnd: 0x200000 });
    setQueue(rng, 0, drv);
    activate(rng);
    drv.addChain([], [64]);
    writeSync(ours, Uint8Array.of(1));
    libc.write(rng.queueFds[0]!, ONE);
    const p = libc.pollFds(1);
    await until('the rng thread is blocked in read(2)', () => { libc.pollFdSet(p, 0, ours, libc.POLLIN); return libc.poll(p, 0) === 0; });
    await assert.rejects(m.pause(300), (e: unknown) => e instanceof VirtioQuiesceError && e.ids.join() === '_rng0' && /_rng0 did not pause within 300 ms/.test(e.message));
    const disk = await m.getState(300).catch((e: Error) => e);
    assert.ok(disk instanceof VirtioQuiesceError && /_rng0/.test(disk.message), 'no state while a device is not paused');
    writeSync(ours, randomBytes(63));
    await m.resume();
    await until('the rng request completes', () => drv.usedIdx === 1);
    await m.pause();
    const st = await m.getState();
    assert.deepEqual(st.map((s) => s.id), ['_disk0', '_rng0'], 'configuration order');
    await m.resume();
  } finally {
    await m.stop(vm);
    closeSync(ours);
    mem.free();
    m.close();
  }
});

test('the state of a paused virtio-blk restores into a fresh device (another manager, a copy of the image): it carries on from the saved ring positions', { timeout: 60_000 }, async () => {
  const img = join(dir, 'src.img');
  const copy = join(dir, 'copy.img');
  writeFileSync(img, new Uint8Array(1 << 20));
  const m1 = new VirtioManager(() => {});
  m1.open(createVmConfig(blkConfig(img)), 1);
  const mem = GuestMemory.allocate([{ gpa: 0, size: 8 << 20 }]);
  const vm = irqfdOnlyVm();
  const inits1 = m1.start(vm, mem, (e) => assert.fail(`I/O thread error: ${e}`));
  let m2: VirtioManager | null = null;
  try {
    await m1.whenReady();
    const blk1 = inits1.find((d) => d.deviceType === VirtioDeviceType.Block)!;
    const drv = new TestDriver(mem, { size: 16, base: 0x100000, dataStart: 0x110000, dataEnd: 0x700000 });
    setQueue(blk1, 0, drv);
    activate(blk1);
    const first = randomBytes(SECTOR);
    postWrite(drv, 0, first);
    libc.write(blk1.queueFds[0]!, ONE);
    await until('the first write completes', () => drv.usedIdx === 1);
    await m1.pause();
    const saved = await m1.getState();
    copyFileSync(img, copy); // the image as of the pause: consistent with the saved state
    const text = stringifyVirtioState(saved);
    const back = parseVirtioState(text);
    assert.deepEqual(back, saved, 'the JSON form decodes to the same state');
    const disk = back.find((s) => s.id === '_disk0')!;
    assert.equal(disk.device.kind, 'block');
    assert.equal(disk.transport.deviceStatus & DeviceStatus.DRIVER_OK, DeviceStatus.DRIVER_OK);
    assert.deepEqual([disk.transport.queues[0]!.lastAvailIdx, disk.transport.queues[0]!.usedIdx], [1, 1]);
    assert.equal(disk.transport.queues[0]!.descTable, BigInt(drv.layout.descTable));

    // A fresh VMM's devices from the saved state: they come up paused and driven (no probe).
    m2 = new VirtioManager(() => {});
    m2.open(createVmConfig(blkConfig(copy)), 1);
    const inits2 = m2.start(vm, mem, (e) => assert.fail(`I/O thread error: ${e}`), new Map(back.map((s) => [s.id, s])));
    await m2.whenReady();
    const blk2 = inits2.find((d) => d.deviceType === VirtioDeviceType.Block)!;
    const w2 = new Int32Array(blk2.shared);
    assert.equal(Atomics.load(w2, Word.Status), disk.transport.deviceStatus, 'the transport registers are the saved ones');
    assert.equal(Atomics.load(w2, queueWord(0, QueueWord.Size)), 16);
    const again = (await m2.getState()).find((s) => s.id === '_disk0')!;
    assert.deepEqual(again, disk, 'the restored device saves the same state again');
    const second = randomBytes(SECTOR);
    postWrite(drv, 1, second);
    libc.write(blk2.queueFds[0]!, ONE);
    await m2.resume();
    await until('the restored device serves the next request', () => drv.usedIdx === 2);
    const c = readFileSync(copy);
    assert.ok(c.subarray(0, SECTOR).equals(first) && c.subarray(SECTOR, 2 * SECTOR).equals(second), 'both writes are on the restored image');
    assert.ok(readFileSync(img).subarray(SECTOR, 2 * SECTOR).every((b) => b === 0), 'the paused original took nothing');
  } finally {
    if (m2) { await m2.stop(vm); m2.close(); }
    await m1.stop(vm);
    mem.free();
    m1.close();
  }
});

test('restore refuses a saved state that does not fit the device: a different disk size, a missing or an unknown device', { timeout: 60_000 }, async () => {
  const img = join(dir, 'a.img');
  writeFileSync(img, new Uint8Array(1 << 20));
  const m1 = new VirtioManager(() => {});
  m1.open(createVmConfig(blkConfig(img)), 1);
  const mem = GuestMemory.allocate([{ gpa: 0, size: 4 << 20 }]);
  const vm = irqfdOnlyVm();
  m1.start(vm, mem, (e) => assert.fail(`I/O thread error: ${e}`));
  let saved: VirtioDeviceState[];
  try {
    await m1.whenReady();
    await m1.pause();
    saved = await m1.getState();
  } finally {
    await m1.stop(vm);
    m1.close();
  }
  const other = join(dir, 'b.img');
  writeFileSync(other, new Uint8Array(2 << 20));
  const m2 = new VirtioManager(() => {});
  m2.open(createVmConfig(blkConfig(other)), 1);
  const mem2 = GuestMemory.allocate([{ gpa: 0, size: 4 << 20 }]);
  const errors: string[] = [];
  try {
    const byId = new Map(saved.map((s) => [s.id, s]));
    assert.throws(() => m2.start(vm, mem2, () => {}, new Map([...byId, ['_disk9', byId.get('_disk0')!]])), /saved state has virtio device '_disk9', which this VM does not have/);
    assert.throws(() => m2.start(vm, mem2, () => {}, new Map([...byId].filter(([k]) => k !== '_rng0'))), /saved state has nothing for virtio device '_rng0'/);
    m2.start(vm, mem2, (e) => errors.push(e), byId);
    await assert.rejects(m2.whenReady(), /_disk0 could not be started/);
    assert.match(errors.join('\n'), /cannot create _disk0: _disk0: saved state of _disk0 does not fit: .*2048 sectors, this image has 4096|the saved disk had 2048 sectors, this image has 4096/);
  } finally {
    await m2.stop(vm);
    mem2.free();
    m2.close();
  }
});
