// Rate limiting through the real I/O thread: a VirtioManager worker builds two disks of one
// rate_limit_group (one shared limiter), and the request the group's bucket refuses completes
// later without another guest kick: the I/O thread polls the disk's throttle timer and resumes
// the queue. Real worker and device models over mmapped guest RAM; no /dev/kvm needed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VirtioManager } from './virtio_manager.js';
import { createVmConfig, validateVmConfig, type VmConfigInput } from './config.js';
import { GuestMemory } from '../memory/guest_memory.js';
import { TestDriver } from '../virtio/testing/driver.js';
import { Word, QueueWord, Command, queueWord, vectorWord, postCommand } from '../virtio/pci/shared.js';
import * as libc from '../sys/libc.js';
import type { Vm } from '../hypervisor/hypervisor.js';
import type { VirtioPciInit } from './pci_setup.js';

const dir = mkdtempSync(join(tmpdir(), 'stv-rl-io-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
const ONE = new Uint8Array(new BigUint64Array([1n]).buffer);
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function ready(d: VirtioPciInit): Promise<void> {
  const w = new Int32Array(d.shared, 0, Word.QueueBase);
  for (let i = 0; i < 2000 && Atomics.load(w, Word.Ready) === 0; i++) await sleep(10);
  assert.equal(Atomics.load(w, Word.Ready), 1, `${d.id} is ready`);
}

/** What Linux's virtio_pci does for queue 0 and DRIVER_OK, straight into the shared words. */
function start(d: VirtioPciInit, drv: TestDriver): void {
  const w = new Int32Array(d.shared);
  const set64 = (lo: number, v: number) => { Atomics.store(w, queueWord(0, lo), v >>> 0); Atomics.store(w, queueWord(0, lo + 1), 0); };
  Atomics.store(w, queueWord(0, QueueWord.Size), drv.layout.size);
  set64(QueueWord.DescLo, drv.layout.descTable);
  set64(QueueWord.AvailLo, drv.layout.availRing);
  set64(QueueWord.UsedLo, drv.layout.usedRing);
  Atomics.store(w, queueWord(0, QueueWord.Vector), 0);
  Atomics.store(w, queueWord(0, QueueWord.Enable), 1);
  Atomics.store(w, vectorWord(d.numQueues, 0), 0);
  postCommand(new Int32Array(d.shared), Command.Activate);
  libc.write(d.controlFd, ONE);
}

test('rate_limit_group through the I/O thread: the refused request completes on the throttle timer, with no second kick', { timeout: 60_000 }, async () => {
  const imgs = ['a', 'b'].map((n) => {
    const p = join(dir, `${n}.img`);
    writeFileSync(p, Buffer.alloc(1 << 20, n.charCodeAt(0)));
    return p;
  });
  // One op per second for the two disks together.
  const input: VmConfigInput = {
    payload: { kernel: '/nonexistent' },
    disks: imgs.map((path, i) => ({ path, id: `d${i}`, rate_limit_group: 'g0' })),
    rate_limit_groups: [{ id: 'g0', rate_limiter_config: { ops: { size: 1, refill_time: 1000 } } }],
    console: { mode: 'Off' },
  };
  const cfg = createVmConfig(input);
  assert.deepEqual(validateVmConfig(cfg), []);
  const m = new VirtioManager(() => {});
  m.open(cfg, 1);
  const mem = GuestMemory.allocate([{ gpa: 0, size: 8 << 20 }]);
  const vm = { registerIrqfd: () => {}, unregisterIrqfd: () => {} } as unknown as Vm;
  const inits = m.start(vm, mem, (e) => assert.fail(`I/O thread error: ${e}`));
  try {
    const disks = inits.filter((d) => d.id === 'd0' || d.id === 'd1');
    assert.equal(disks.length, 2);
    for (const d of disks) await ready(d);
    const drvs = disks.map((_, k) => new TestDriver(mem, { size: 16, base: (k + 1) * 0x100000, dataStart: (k + 1) * 0x100000 + 0x10000, dataEnd: (k + 2) * 0x100000 }));
    disks.forEach((d, k) => start(d, drvs[k]!));
    const reqs = drvs.map((q) => q.addChain([new Uint8Array(16)], [512, 1])); // read sector 0
    for (const d of disks) libc.write(d.queueFds[0]!, ONE); // one kick each, never again
    const done = [false, false];
    for (let i = 0; i < 1000 && !(done[0] && done[1]); i++) {
      drvs.forEach((q, k) => { if (q.used().length > 0) done[k] = true; });
      await sleep(10);
    }
    assert.deepEqual(done, [true, true], 'both reads completed');
    reqs.forEach((r, k) => {
      assert.equal(mem.slice(r.writable[1]!, 1)[0], 0, 'VIRTIO_BLK_S_OK');
      assert.equal(mem.slice(r.writable[0]!, 1)[0], 'ab'.charCodeAt(k), 'each disk read its own image');
    });
    // The group's one op went to one disk; the other waited for the refill (1 s away: only a
    // second-long stall of the thread between the two requests could have avoided that).
    let c = m.counters();
    for (let i = 0; i < 200 && c['d0']!['read_ops']! + c['d1']!['read_ops']! < 2; i++) { await sleep(10); c = m.counters(); }
    assert.equal((c['d0']!['rate_limited'] ?? 0) + (c['d1']!['rate_limited'] ?? 0) >= 1, true, JSON.stringify(c));
    assert.equal(c['d0']!['read_ops']! + c['d1']!['read_ops']!, 2);
  } finally {
    const res = await m.stop(vm);
    assert.deepEqual(res.stuck, []);
    mem.free();
    m.close();
  }
});
