// virtio-balloon (virtio 1.2, 5.5) on a real guest (Debian's kernel: virtio_balloon), as Cloud
// Hypervisor's --balloon and vm.resize desired_balloon:
//   - 1 GiB of RAM, a balloon of size 0. The guest first touches most of its memory (a file in
//     tmpfs, then removed), so the VMM's RSS holds it. vm.resize desired_balloon=256 MiB: the
//     guest's MemTotal drops by 256 MiB (no deflate_on_oom: the driver takes ballooned pages off
//     the managed count), vm.info's memory_actual_size is 768 MiB, and the VMM's RSS drops (the
//     inflated pages were given back to the host). desired_balloon=0: MemTotal and
//     memory_actual_size are back, and when the guest touches its memory again the RSS grows.
//   - free_page_reporting=on, with --memory shared=on (guest RAM a memfd): after the guest frees
//     memory it had touched, it reports the free pages, the device gives them back (holes punched
//     in the memfd; vm.counters reported_bytes) and the RSS drops, with no balloon inflated.
// Bounds are loose (the guest's own allocations move a few MiB); nothing is timed: the test
// polls until the guest has done what it was asked.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { guestImages } from './lib/guest.js';
import { VmmProcess as Vmm } from './lib/vmm_process.js';
import { scratchDir } from './lib/virtio.js';
import { waitForPing } from '../../src/api/testing/spawn_vmm.js';

const img = guestImages();
const TIMEOUT_MS = 300_000;
const MiB = 1024 * 1024;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** VmRSS of a process, in bytes (/proc/PID/status). */
function rss(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'latin1'));
  assert.ok(m, `no VmRSS for ${pid}`);
  return Number(m[1]) * 1024;
}

async function memTotal(vmm: Vmm): Promise<number> {
  const r = await vmm.shellOutput('echo "MEM""TOTAL $(grep MemTotal /proc/meminfo | tr -s " " | cut -d" " -f2) E""ND"', /MEMTOTAL (\d+) END/, 'MemTotal');
  return Number(r.m[1]) * 1024;
}

/** The guest fills a tmpfs file of `mib` MiB (its pages become resident in the VMM), then removes it. */
async function touch(vmm: Vmm, mib: number): Promise<void> {
  const r = await vmm.shellOutput(
    `mkdir -p /mnt/t; mountpoint -q /mnt/t || mount -t tmpfs -o size=900m tmpfs /mnt/t; dd if=/dev/zero of=/mnt/t/f bs=1M count=${mib} 2>/dev/null && echo "DD ""OK"; rm -f /mnt/t/f; sync; echo TOUC""HED`,
    /TOUCHED/, `the guest touching ${mib} MiB`);
  assert.match(r.text, /DD OK/, `dd of ${mib} MiB into tmpfs\n${vmm.explain()}`);
}

async function info(vmm: Vmm): Promise<{ memory_actual_size: number; config: { balloon?: { size: number } } }> {
  const r = await vmm.api('GET', 'vm.info');
  assert.equal(r.status, 200, r.text);
  return JSON.parse(r.text) as { memory_actual_size: number; config: { balloon?: { size: number } } };
}

async function counters(vmm: Vmm): Promise<Record<string, number>> {
  const r = await vmm.api('GET', 'vm.counters');
  assert.equal(r.status, 200, r.text);
  return (JSON.parse(r.text) as Record<string, Record<string, number>>)['_balloon0'] ?? {};
}

/** Poll until `ok` (the guest's driver works at its own pace); the test's timeout bounds it. */
async function until<T>(what: string, get: () => Promise<T>, ok: (v: T) => boolean, vmm: Vmm): Promise<T> {
  for (;;) {
    const v = await get();
    if (ok(v)) return v;
    if (vmm.done) assert.fail(`the VMM exited while waiting for ${what}\n${vmm.explain()}`);
    await sleep(500);
  }
}

async function boot(t: { after: (fn: () => void) => void }, name: string, balloon: string, memory = 'size=1G'): Promise<Vmm> {
  const dir = scratchDir(name);
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const vmm = new Vmm(name, join(dir, 'api.sock'), [
    '--kernel', img.bzImage, '--initramfs', img.initramfs,
    '--cmdline', 'console=ttyS0 quiet stv.scenario=shell',
    '--cpus', 'boot=1', '--memory', memory, '--serial', 'tty', '--console', 'off',
    '--balloon', balloon, '-v',
  ]);
  t.after(() => vmm.end());
  await waitForPing(vmm.sock, vmm.child);
  await vmm.waitFor(/stv# /, 0, 'the guest shell prompt');
  const b = await vmm.shellOutput(
    'for i in 1 2 3 4 5 6 7 8 9 10; do ls /sys/bus/virtio/drivers/virtio_balloon 2>/dev/null | grep -q virtio && break; sleep 1; done; echo "BOUND $(ls /sys/bus/virtio/drivers/virtio_balloon 2>/dev/null | grep -c virtio) E""ND"',
    /BOUND (\d+) END/, 'the virtio_balloon driver');
  assert.equal(b.m[1], '1', `the guest's virtio_balloon driver bound the device\n${vmm.explain()}`);
  return vmm;
}

test('virtio-balloon: vm.resize desired_balloon inflates (MemTotal, memory_actual_size and the VMM\'s RSS drop) and deflates back', { timeout: TIMEOUT_MS }, async (t) => {
  const vmm = await boot(t, 'balloon', 'size=0');
  const pid = vmm.child.pid!;
  const total0 = await memTotal(vmm);
  assert.equal((await info(vmm)).memory_actual_size, 1024 * MiB);
  await touch(vmm, 640);
  const rss1 = rss(pid);

  let r = await vmm.api('PUT', 'vm.resize', { desired_balloon: 256 * MiB });
  assert.equal(r.status, 204, r.text);
  const inflated = await until('the balloon to reach 256 MiB', () => info(vmm), (i) => i.memory_actual_size === 768 * MiB, vmm);
  assert.equal(inflated.config.balloon?.size, 256 * MiB, 'vm.info config has the new balloon size');
  const total1 = await memTotal(vmm);
  const rss2 = rss(pid);
  t.diagnostic(`inflate 256 MiB: MemTotal ${(total0 / MiB).toFixed(1)} -> ${(total1 / MiB).toFixed(1)} MiB, VMM RSS ${(rss1 / MiB).toFixed(0)} -> ${(rss2 / MiB).toFixed(0)} MiB`);
  assert.ok(total0 - total1 >= 250 * MiB && total0 - total1 <= 262 * MiB, `MemTotal dropped by ${(total0 - total1) / MiB} MiB, not about 256\n${vmm.explain()}`);
  assert.ok(rss1 - rss2 >= 64 * MiB, `the VMM's RSS dropped by only ${((rss1 - rss2) / MiB).toFixed(1)} MiB (${rss1} -> ${rss2})`);

  r = await vmm.api('PUT', 'vm.resize', { desired_balloon: 0 });
  assert.equal(r.status, 204, r.text);
  await until('the balloon to deflate', () => info(vmm), (i) => i.memory_actual_size === 1024 * MiB, vmm);
  const total2 = await memTotal(vmm);
  assert.ok(Math.abs(total2 - total0) <= 4 * MiB, `MemTotal after deflating: ${total2 / MiB} MiB, at first ${total0 / MiB} MiB`);
  await touch(vmm, 640);
  const rss3 = rss(pid);
  t.diagnostic(`deflate: MemTotal ${(total2 / MiB).toFixed(1)} MiB; after the guest touched 640 MiB again, VMM RSS ${(rss2 / MiB).toFixed(0)} -> ${(rss3 / MiB).toFixed(0)} MiB`);
  assert.ok(rss3 - rss2 >= 64 * MiB, `the VMM's RSS grew by only ${((rss3 - rss2) / MiB).toFixed(1)} MiB once the guest used its memory again`);

  const c = await counters(vmm);
  t.diagnostic(`vm.counters _balloon0: ${JSON.stringify(c)}`);
  assert.ok((c['inflated_pages'] ?? 0) >= 65536, `inflated_pages ${c['inflated_pages']}`);
  assert.ok((c['deflated_pages'] ?? 0) >= 65536, `deflated_pages ${c['deflated_pages']}`);
  assert.equal(c['invalid_pfns'], 0);
  assert.equal(c['discard_errors'], 0);
  assert.equal(c['malformed_requests'], 0);
  // Out of range: refused, nothing changes.
  r = await vmm.api('PUT', 'vm.resize', { desired_balloon: 1024 * MiB });
  assert.equal(r.status, 400, r.text);

  await vmm.shell('poweroff', /@@stv:poweroff@@/, 'the guest powered off');
  await vmm.api('PUT', 'vmm.shutdown').catch(() => undefined);
  await vmm.exited;
});

test('virtio-balloon free_page_reporting=on, shared memory: memory the guest frees goes back to the host (reported_bytes, RSS drops)', { timeout: TIMEOUT_MS }, async (t) => {
  // --memory shared=on: guest RAM is a memfd, the pages go back by punching holes in it.
  const vmm = await boot(t, 'balloon-fpr', 'size=0,free_page_reporting=on', 'size=1G,shared=on');
  const pid = vmm.child.pid!;
  // Fill without removing first, to measure the RSS with the pages in use.
  const f = await vmm.shellOutput(
    'mkdir -p /mnt/t; mount -t tmpfs -o size=900m tmpfs /mnt/t; dd if=/dev/zero of=/mnt/t/f bs=1M count=512 2>/dev/null && echo "DD ""OK"; echo FIL""LED',
    /FILLED/, 'the guest filling 512 MiB of tmpfs');
  assert.match(f.text, /DD OK/, vmm.explain());
  const full = rss(pid);
  const before = (await counters(vmm))['reported_bytes'] ?? 0;
  await vmm.shell('rm /mnt/t/f; echo REMO""VED', /REMOVED/, 'the file removed');
  const c = await until('the guest to report its free pages', () => counters(vmm), (x) => (x['reported_bytes'] ?? 0) - before >= 256 * MiB, vmm);
  const after = await until('the RSS to drop', async () => rss(pid), (x) => full - x >= 256 * MiB, vmm);
  t.diagnostic(`free page reporting: ${((c['reported_bytes']! - before) / MiB).toFixed(0)} MiB reported after the rm; VMM RSS ${(full / MiB).toFixed(0)} -> ${(after / MiB).toFixed(0)} MiB`);
  assert.equal(c['discard_errors'], 0);
  assert.equal((await info(vmm)).memory_actual_size, 1024 * MiB, 'nothing is in the balloon');
  await vmm.shell('poweroff', /@@stv:poweroff@@/, 'the guest powered off');
  await vmm.api('PUT', 'vmm.shutdown').catch(() => undefined);
  await vmm.exited;
});
