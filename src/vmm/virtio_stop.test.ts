// Stopping virtio I/O threads: a thread stuck in a blocking system call into guest RAM (a read
// from an entropy source nobody writes) must not write into memory the host reuses after stop.
// Real VirtioManager, real virtio_worker thread, real virtio-rng device, real mmapped guest RAM
// and a real FIFO; only the VM's irqfd registration is a stand-in (no /dev/kvm here).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, openSync, closeSync, readSync, writeSync, readFileSync, readdirSync, rmSync, constants } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VirtioManager } from './virtio_manager.js';
import { createVmConfig, type VmConfigInput } from './config.js';
import { GuestMemory } from '../memory/guest_memory.js';
import { TestDriver } from '../virtio/testing/driver.js';
import { Word, QueueWord, Command, queueWord, postCommand } from '../virtio/pci/shared.js';
import { VirtioDeviceType } from '../virtio/device.js';
import * as libc from '../sys/libc.js';
import type { Vm } from '../hypervisor/hypervisor.js';

const dir = mkdtempSync(join(tmpdir(), 'stv-virtio-stop-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

const ONE = new Uint8Array(new BigUint64Array([1n]).buffer);

/** The two Vm methods VirtioManager uses for irqfds (KVM is not under test here). */
function irqfdOnlyVm(): Vm {
  const vm = { registerIrqfd: () => {}, unregisterIrqfd: () => {} };
  return vm as unknown as Vm;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Threads of this process blocked reading a pipe (wchan pipe_read / anon_pipe_read). */
function threadsInPipeRead(): number {
  let n = 0;
  for (const tid of readdirSync('/proc/self/task')) {
    try { if (/pipe_read/.test(readFileSync(`/proc/self/task/${tid}/wchan`, 'utf8'))) n++; } catch { /* thread gone */ }
  }
  return n;
}

/** The /proc/self/maps line of the mapping that starts at `addr`, if any. */
function mappingAt(addr: bigint): string | undefined {
  const hex = addr.toString(16);
  return readFileSync('/proc/self/maps', 'utf8').split('\n').find((l) => l.startsWith(`${hex}-`));
}

test('stop() with the rng thread blocked in read(2) on a FIFO: guest RAM becomes PROT_NONE, fds stay open, late data lands nowhere', { timeout: 60_000 }, async (t) => {
  const fifo = join(dir, 'entropy.fifo');
  execFileSync('mkfifo', [fifo]);
  // Our end: read-write so that the device's open does not block and its reads never see EOF.
  const ours = openSync(fifo, constants.O_RDWR | constants.O_NONBLOCK);
  t.after(() => closeSync(ours));

  const logs: string[] = [];
  const m = new VirtioManager((l) => logs.push(l));
  m.stopTimeouts = { graceMs: 300, terminateMs: 300 };
  m.open(createVmConfig({ payload: { kernel: '/nonexistent' }, console: { mode: 'Off' }, rng: { src: fifo } } as VmConfigInput), 1);
  const mem = GuestMemory.allocate([{ gpa: 0, size: 4 << 20 }]);
  const ramAddr = mem.regions[0]!.hostAddress;
  const vm = irqfdOnlyVm();
  const before = threadsInPipeRead();
  const inits = m.start(vm, mem, (e) => assert.fail(`worker error: ${e}`));
  const rng = inits.find((d) => d.deviceType === VirtioDeviceType.Rng)!;
  const words = new Int32Array(rng.shared, 0, Word.QueueBase + Word.QueueStride);
  while (Atomics.load(words, Word.Ready) === 0) await sleep(10);
  assert.equal(Atomics.load(words, Word.Ready), 1, 'the rng worker is ready');

  // Driver side: one 4 KiB device-writable buffer on queue 0, then DRIVER_OK and a kick.
  const drv = new TestDriver(mem, { size: 16 });
  const w = new Int32Array(rng.shared);
  const set64 = (lo: number, v: number) => { Atomics.store(w, queueWord(0, lo), v >>> 0); Atomics.store(w, queueWord(0, lo + 1), 0); };
  Atomics.store(w, queueWord(0, QueueWord.Size), 16);
  set64(QueueWord.DescLo, drv.layout.descTable);
  set64(QueueWord.AvailLo, drv.layout.availRing);
  set64(QueueWord.UsedLo, drv.layout.usedRing);
  Atomics.store(w, queueWord(0, QueueWord.Enable), 1);
  const chain = drv.addChain([], [4096]);
  postCommand(w, Command.Activate);
  libc.write(rng.controlFd, ONE);
  libc.write(rng.queueFds[0]!, ONE);
  // Wait until the I/O thread sits in read(2) on the FIFO (no data: it blocks).
  while (threadsInPipeRead() <= before) await sleep(10);
  assert.deepEqual(drv.used(), [], 'nothing completed: the thread is blocked');

  const res = await m.stop(vm);
  assert.deepEqual(res.stuck, ['_rng0'], 'the blocked thread is reported as stuck');
  assert.ok(logs.some((l) => /_rng0: the I\/O thread did not stop/.test(l)), logs.join('\n'));
  // What vm.ts does with a stuck thread: retire guest RAM instead of unmapping it.
  const ranges = mem.retire(res.allExited);
  assert.deepEqual(ranges, [[ramAddr, 4 << 20]]);
  assert.match(mappingAt(ramAddr) ?? 'no mapping', / ---p /, 'the RAM range is reserved and inaccessible');
  // The thread's eventfds are still open (not closed, so never reused under it).
  assert.doesNotThrow(() => libc.write(rng.queueFds[0]!, ONE), 'queue eventfd still open while the thread lives');

  // Now the source delivers: the thread's read copies into the PROT_NONE range, fails with
  // EFAULT, and leaves the bytes in the FIFO; then the thread exits.
  const nonce = new Uint8Array(4096);
  crypto.getRandomValues(nonce);
  assert.equal(writeSync(ours, nonce), 4096);
  await res.allExited;
  assert.equal(threadsInPipeRead(), before, 'the thread is gone');
  const back = new Uint8Array(8192);
  const n = readSync(ours, back, 0, back.length, null);
  assert.equal(n, 4096, 'the late read consumed nothing: the copy into guest RAM failed');
  assert.deepEqual(back.subarray(0, n), nonce);
  await sleep(50); // the exit handlers (close fds, unmap) run after allExited's own reactions
  assert.equal(mappingAt(ramAddr), undefined, 'the range is unmapped once the thread exited');
  assert.ok(logs.some((l) => /stuck I\/O thread has exited; its fds are closed/.test(l)), logs.join('\n'));
  assert.throws(() => libc.write(rng.queueFds[0]!, ONE), /EBADF/, 'its eventfds are closed after it exited');
  void chain;
  m.close();
});

test('stop() of idle I/O threads: all exit, nothing is reported stuck', { timeout: 30_000 }, async () => {
  const m = new VirtioManager(() => {});
  m.open(createVmConfig({ payload: { kernel: '/nonexistent' }, console: { mode: 'Off' } } as VmConfigInput), 1);
  const mem = GuestMemory.allocate([{ gpa: 0, size: 2 << 20 }]);
  const vm = irqfdOnlyVm();
  const inits = m.start(vm, mem, (e) => assert.fail(`worker error: ${e}`));
  const words = new Int32Array(inits[0]!.shared, 0, Word.QueueBase);
  while (Atomics.load(words, Word.Ready) === 0) await sleep(10);
  const res = await m.stop(vm);
  assert.deepEqual(res.stuck, []);
  assert.ok(mem.revoked, 'stop() revoked guest memory for the devices');
  mem.free();
  m.close();
});
