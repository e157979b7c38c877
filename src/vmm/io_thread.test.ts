// One I/O thread for all of a VM's virtio devices: the real VirtioManager starts one worker for
// virtio-blk, -console and -rng together (and one more per iothread= name), each device's queue
// is served from the one poll set with its interrupt on its own irqfd, and a thread stuck in a
// system call stops only the devices it serves. Real workers, real device models over mmapped
// guest RAM; only the VM's irqfd registration is a stand-in (no /dev/kvm here).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, openSync, closeSync, writeFileSync, readFileSync, rmSync, constants } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VirtioManager } from './virtio_manager.js';
import { createVmConfig, validateVmConfig, type VmConfigInput } from './config.js';
import { GuestMemory } from '../memory/guest_memory.js';
import { TestDriver } from '../virtio/testing/driver.js';
import { Word, QueueWord, Command, queueWord, vectorWord, postCommand } from '../virtio/pci/shared.js';
import { VirtioDeviceType } from '../virtio/device.js';
import * as libc from '../sys/libc.js';
import type { Vm } from '../hypervisor/hypervisor.js';
import type { VirtioPciInit } from './pci_setup.js';

const dir = mkdtempSync(join(tmpdir(), 'stv-iothread-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
const ONE = new Uint8Array(new BigUint64Array([1n]).buffer);
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function irqfdOnlyVm(): Vm {
  const vm = { registerIrqfd: () => {}, unregisterIrqfd: () => {} };
  return vm as unknown as Vm;
}

async function ready(d: VirtioPciInit): Promise<void> {
  const w = new Int32Array(d.shared, 0, Word.QueueBase);
  for (let i = 0; i < 2000 && Atomics.load(w, Word.Ready) === 0; i++) await sleep(10);
  assert.equal(Atomics.load(w, Word.Ready), 1, `${d.id} is ready`);
}

/** What Linux's virtio_pci does for one queue, straight into the shared words (vector 0). */
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
  // Vector 0 unmasked, as the transport leaves it after the driver's MSI-X table write.
  Atomics.store(new Int32Array(d.shared), vectorWord(d.numQueues, 0), 0);
  postCommand(new Int32Array(d.shared), Command.Activate);
  libc.write(d.controlFd, ONE);
}

/** Wait (bounded) for a used element; also consumes the device's interrupt eventfd (unless -1). */
async function usedOne(drv: TestDriver, irqFd: number): Promise<{ id: number; len: number; irq: boolean }> {
  for (let i = 0; i < 2000; i++) {
    const u = drv.used();
    if (u.length > 0) {
      let irq = false;
      const b = new Uint8Array(8);
      for (let k = 0; k < 200 && !irq && irqFd >= 0; k++) {
        try { libc.read(irqFd, b); irq = true; } catch { await sleep(5); }
      }
      return { ...u[0]!, irq };
    }
    await sleep(10);
  }
  throw new Error('no used element');
}

test('one I/O thread serves virtio-blk, -console and -rng: each request completes and interrupts on its own vector', { timeout: 60_000 }, async () => {
  const img = join(dir, 'disk.img');
  const sector0 = randomBytes(512);
  writeFileSync(img, Buffer.concat([sector0, Buffer.alloc((1 << 20) - 512)]));
  const out = join(dir, 'hvc.out');
  const m = new VirtioManager(() => {});
  m.open(createVmConfig({ payload: { kernel: '/nonexistent' }, disks: [{ path: img }], console: { mode: 'File', file: out } } as VmConfigInput), 1);
  const mem = GuestMemory.allocate([{ gpa: 0, size: 8 << 20 }]);
  const vm = irqfdOnlyVm();
  const inits = m.start(vm, mem, (e) => assert.fail(`I/O thread error: ${e}`));
  try {
    assert.equal(m.threadCount, 1, 'one I/O thread for the three devices');
    assert.equal(new Set(inits.map((d) => d.controlFd)).size, 1, 'the devices share the thread\'s control eventfd');
    for (const d of inits) await ready(d);
    const blk = inits.find((d) => d.deviceType === VirtioDeviceType.Block)!;
    const con = inits.find((d) => d.deviceType === VirtioDeviceType.Console)!;
    const rng = inits.find((d) => d.deviceType === VirtioDeviceType.Rng)!;
    const region = (k: number) => ({ size: 16, base: k * 0x100000, dataStart: k * 0x100000 + 0x10000, dataEnd: (k + 1) * 0x100000 });
    const blkQ = new TestDriver(mem, region(1));
    const conQ = new TestDriver(mem, region(2));
    const rngQ = new TestDriver(mem, region(3));
    setQueue(blk, 0, blkQ);
    setQueue(con, 1, conQ); // transmitq
    setQueue(rng, 0, rngQ);
    for (const d of [blk, con, rng]) activate(d);
    // virtio-blk: read sector 0 (5.2.6: type IN, sector 0; data; status).
    const hdr = new Uint8Array(16);
    const rq = blkQ.addChain([hdr], [512, 1]);
    const line = `hello over one I/O thread ${randomBytes(4).toString('hex')}\n`;
    conQ.addChain([new TextEncoder().encode(line)], []);
    const rn = rngQ.addChain([], [64]);
    libc.write(blk.queueFds[0]!, ONE);
    libc.write(con.queueFds[1]!, ONE);
    libc.write(rng.queueFds[0]!, ONE);
    const ub = await usedOne(blkQ, blk.irqFds[0]!);
    assert.equal(ub.id, rq.head);
    assert.equal(mem.slice(rq.writable[1]!, 1)[0], 0, 'VIRTIO_BLK_S_OK');
    assert.deepEqual(Buffer.from(mem.slice(rq.writable[0]!, 512)), sector0, 'the disk\'s first sector');
    assert.ok(ub.irq, 'virtio-blk interrupted on its vector');
    const uc = await usedOne(conQ, con.irqFds[0]!);
    assert.ok(uc.irq, 'virtio-console interrupted on its vector');
    assert.equal(readFileSync(out, 'utf8'), line, 'the console line reached its file');
    const ur = await usedOne(rngQ, rng.irqFds[0]!);
    assert.equal(ur.id, rn.head);
    assert.ok(ur.len > 0 && ur.irq, 'virtio-rng filled its buffer and interrupted');
  } finally {
    const res = await m.stop(vm);
    assert.deepEqual(res.stuck, []);
    mem.free();
    m.close();
  }
});

test('iothread=: a device gets a thread of its own; a thread stuck in read(2) stops only its devices', { timeout: 60_000 }, async () => {
  const fifo = join(dir, 'entropy.fifo');
  execFileSync('mkfifo', [fifo]);
  const ours = openSync(fifo, constants.O_RDWR | constants.O_NONBLOCK);
  const img = join(dir, 'own.img');
  writeFileSync(img, new Uint8Array(1 << 20));
  const input = { payload: { kernel: '/nonexistent' }, disks: [{ path: img, iothread: 'blk' }], console: { mode: 'Off' }, rng: { src: fifo } } as VmConfigInput;
  const cfg = createVmConfig(input);
  assert.deepEqual(validateVmConfig(cfg), []);
  assert.match(JSON.stringify(validateVmConfig({ ...cfg, disks: [{ ...cfg.disks![0]!, iothread: 'no spaces' }] })), /disks\[0\]\.iothread.*must be a name/);
  const logs: string[] = [];
  const m = new VirtioManager((l) => logs.push(l));
  m.stopTimeouts = { graceMs: 300, terminateMs: 300 };
  m.open(cfg, 1);
  const mem = GuestMemory.allocate([{ gpa: 0, size: 4 << 20 }]);
  const vm = irqfdOnlyVm();
  const inits = m.start(vm, mem, (e) => assert.fail(`I/O thread error: ${e}`));
  assert.equal(m.threadCount, 2, 'the VM\'s shared thread and the disk\'s own');
  for (const d of inits) await ready(d);
  const rng = inits.find((d) => d.deviceType === VirtioDeviceType.Rng)!;
  const blk = inits.find((d) => d.deviceType === VirtioDeviceType.Block)!;
  assert.notEqual(rng.controlFd, blk.controlFd, 'each thread has its own control eventfd');
  const drv = new TestDriver(mem, { size: 16 });
  setQueue(rng, 0, drv);
  drv.addChain([], [4096]);
  activate(rng);
  libc.write(rng.queueFds[0]!, ONE);
  // Wait until the rng's thread sits in read(2) on the FIFO (nothing completes meanwhile).
  for (let i = 0; i < 50; i++) await sleep(10);
  assert.deepEqual(drv.used(), []);
  const res = await m.stop(vm);
  assert.deepEqual(res.stuck, ['_rng0'], 'only the devices of the stuck thread are reported');
  mem.retire(res.allExited);
  writeFileSync(fifo, randomBytes(4096)); // the blocked read returns (EFAULT into PROT_NONE), the thread exits
  await res.allExited;
  closeSync(ours);
  m.close();
  assert.ok(logs.some((l) => /^_rng0: the I\/O thread did not stop/.test(l)), logs.join('\n'));
});

test('interrupts are delivered once per poll round: two queues completing on one vector in one round write its irqfd once', { timeout: 60_000 }, async () => {
  const img = join(dir, 'mq.img');
  writeFileSync(img, randomBytes(1 << 20));
  const m = new VirtioManager(() => {});
  m.open(createVmConfig({ payload: { kernel: '/nonexistent' }, cpus: { boot_vcpus: 2 }, disks: [{ path: img, num_queues: 2 }], console: { mode: 'Off' } } as VmConfigInput), 1);
  const mem = GuestMemory.allocate([{ gpa: 0, size: 8 << 20 }]);
  const vm = irqfdOnlyVm();
  const inits = m.start(vm, mem, (e) => assert.fail(`I/O thread error: ${e}`));
  try {
    const blk = inits.find((d) => d.deviceType === VirtioDeviceType.Block)!;
    await ready(blk);
    const q = [0, 1].map((k) => new TestDriver(mem, { size: 16, base: (k + 1) * 0x100000, dataStart: (k + 1) * 0x100000 + 0x10000, dataEnd: (k + 2) * 0x100000 }));
    setQueue(blk, 0, q[0]!);
    setQueue(blk, 1, q[1]!); // the same vector 0
    for (const d of q) d.addChain([new Uint8Array(16)], [512, 1]);
    // Kicks before DRIVER_OK: the thread looks at every queue once when it activates the device,
    // so both complete in that one round.
    libc.write(blk.queueFds[0]!, ONE);
    libc.write(blk.queueFds[1]!, ONE);
    activate(blk);
    const got = [await usedOne(q[0]!, -1), await usedOne(q[1]!, -1)];
    assert.ok(got.every((u) => u.len === 513), 'both reads completed (512 data bytes + status)');
    const count = new Uint8Array(8);
    libc.read(blk.irqFds[0]!, count);
    assert.equal(new DataView(count.buffer).getBigUint64(0, true), 1n, 'one irqfd write for the round');
  } finally {
    await m.stop(vm);
    mem.free();
    m.close();
  }
});
