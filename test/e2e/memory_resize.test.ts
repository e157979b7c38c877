// Memory resize on a real guest: ACPI memory hotplug (CH's default hotplug_method; the second
// test below) and virtio-mem.
//
// virtio-mem (virtio 1.2, 5.15) on a real guest (Debian's kernel: virtio_mem, loaded by the
// initramfs's init), as Cloud Hypervisor's --memory hotplug_method=virtio-mem and vm.resize
// desired_ram:
//   - 512 MiB of RAM and a 512 MiB virtio-mem region, nothing plugged at boot: MemTotal is the
//     boot RAM's, vm.info memory_actual_size 512 MiB. The guest onlines hot-added memory movable
//     (auto_online_blocks: Debian's default leaves it offline; ZONE_MOVABLE is what lets Linux
//     unplug it again).
//   - vm.resize desired_ram=1 GiB: the driver plugs 512 MiB (requested_size) and the guest's
//     MemTotal grows by at least 400 MiB; memory_actual_size becomes 1 GiB; the guest fills a
//     tmpfs file of 560 MiB (more than the boot RAM has free: some of it must lie in the plugged
//     blocks) and removes it.
//   - vm.resize desired_ram=512 MiB: the driver unplugs (its memory is movable and free):
//     memory_actual_size and MemTotal drop. Linux unplugs what it can at once and retries the
//     rest after a back-off of 50 s and more (drivers/virtio/virtio_mem.c, its retry timer), so
//     only a drop is asserted; how far it got is reported.
//   - desired_ram below memory.size, above size + hotplug_size, or not whole 2 MiB blocks: 400.
// Nothing is timed: the test polls until the guest's driver has done what it was asked (the
// test's timeout bounds it).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { join } from 'node:path';
import { guestImages } from './lib/guest.js';
import { VmmProcess as Vmm } from './lib/vmm_process.js';
import { scratchDir } from './lib/virtio.js';
import { waitForPing } from '../../src/api/testing/spawn_vmm.js';

const img = guestImages();
const TIMEOUT_MS = 600_000;
const MiB = 1024 * 1024;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function memTotal(vmm: Vmm): Promise<number> {
  const r = await vmm.shellOutput('echo "MEM""TOTAL $(grep MemTotal /proc/meminfo | tr -s " " | cut -d" " -f2) E""ND"', /MEMTOTAL (\d+) END/, 'MemTotal');
  return Number(r.m[1]) * 1024;
}

interface Info { memory_actual_size: number; config: { memory: { size: number; hotplug_size?: number; hotplugged_size?: number; hotplug_method?: string } } }

async function info(vmm: Vmm): Promise<Info> {
  const r = await vmm.api('GET', 'vm.info');
  assert.equal(r.status, 200, r.text);
  return JSON.parse(r.text) as Info;
}

async function counters(vmm: Vmm): Promise<Record<string, number>> {
  const r = await vmm.api('GET', 'vm.counters');
  assert.equal(r.status, 200, r.text);
  return (JSON.parse(r.text) as Record<string, Record<string, number>>)['_mem0'] ?? {};
}

/** Poll until `ok`; the test's timeout bounds it. */
async function until<T>(what: string, get: () => Promise<T>, ok: (v: T) => boolean, vmm: Vmm): Promise<T> {
  for (;;) {
    const v = await get();
    if (ok(v)) return v;
    if (vmm.done) assert.fail(`the VMM exited while waiting for ${what}\n${vmm.explain()}`);
    await sleep(1000);
  }
}

test('virtio-mem: vm.resize desired_ram plugs memory into the guest (MemTotal, memory_actual_size) and unplugs it again', { timeout: TIMEOUT_MS }, async (t) => {
  const name = 'virtio-mem';
  const dir = scratchDir(name);
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const vmm = new Vmm(name, join(dir, 'api.sock'), [
    '--kernel', img.bzImage, '--initramfs', img.initramfs,
    '--cmdline', 'console=ttyS0 quiet stv.scenario=shell',
    '--cpus', 'boot=1', '--memory', 'size=512M,hotplug_method=virtio-mem,hotplug_size=512M', '--serial', 'tty', '--console', 'off', '-v',
  ]);
  t.after(() => vmm.end());
  await waitForPing(vmm.sock, vmm.child);
  await vmm.waitFor(/stv# /, 0, 'the guest shell prompt');
  // Hot-added memory onlined into ZONE_MOVABLE (Documentation/admin-guide/mm/memory-hotplug.rst),
  // before the driver adds any; then wait for the driver to bind the device.
  const b = await vmm.shellOutput(
    'echo online_movable > /sys/devices/system/memory/auto_online_blocks; ' +
    'for i in 1 2 3 4 5 6 7 8 9 10; do ls /sys/bus/virtio/drivers/virtio_mem 2>/dev/null | grep -q virtio && break; sleep 1; done; ' +
    'echo "BOUND $(ls /sys/bus/virtio/drivers/virtio_mem 2>/dev/null | grep -c virtio) $(cat /sys/devices/system/memory/auto_online_blocks) E""ND"',
    /BOUND (\d+) (\S+) END/, 'the virtio_mem driver');
  assert.equal(b.m[1], '1', `the guest's virtio_mem driver bound the device\n${vmm.explain()}`);
  assert.equal(b.m[2], 'online_movable', `auto_online_blocks\n${vmm.explain()}`);

  const i0 = await info(vmm);
  assert.equal(i0.memory_actual_size, 512 * MiB, 'nothing plugged at boot');
  assert.equal(i0.config.memory.hotplug_method, 'VirtioMem');
  assert.equal(i0.config.memory.hotplug_size, 512 * MiB);
  const total0 = await memTotal(vmm);

  // Refused, nothing changes (CH's rules).
  for (const bad of [256 * MiB, 1024 * MiB + 2 * MiB, 600 * MiB + 4096]) {
    const r = await vmm.api('PUT', 'vm.resize', { desired_ram: bad });
    assert.equal(r.status, 400, `desired_ram ${bad}: ${r.text}`);
  }

  // Plug 512 MiB.
  let r = await vmm.api('PUT', 'vm.resize', { desired_ram: 1024 * MiB });
  assert.equal(r.status, 204, r.text);
  const plugged = await until('the guest to plug 512 MiB', () => info(vmm), (i) => i.memory_actual_size === 1024 * MiB, vmm);
  assert.equal(plugged.config.memory.hotplugged_size, 512 * MiB, 'vm.info config keeps the plugged size (hotplugged_size)');
  const total1 = await until('MemTotal to grow', () => memTotal(vmm), (v) => v - total0 >= 400 * MiB, vmm);
  t.diagnostic(`plug 512 MiB: MemTotal ${(total0 / MiB).toFixed(1)} -> ${(total1 / MiB).toFixed(1)} MiB`);
  const online = await vmm.shellOutput(
    'echo "ONLINE $(cat /sys/devices/system/memory/memory*/state | grep -c online) E""ND"', /ONLINE (\d+) END/, 'online memory blocks');
  t.diagnostic(`online memory blocks: ${online.m[1]}`);

  // Use the new memory: 560 MiB of tmpfs cannot fit into the boot RAM alone.
  const f = await vmm.shellOutput(
    'mkdir -p /mnt/t; mount -t tmpfs -o size=800m tmpfs /mnt/t; dd if=/dev/zero of=/mnt/t/f bs=1M count=560 2>/dev/null && echo "DD ""OK"; rm -f /mnt/t/f; umount /mnt/t; echo FIL""LED',
    /FILLED/, 'the guest filling 560 MiB of tmpfs');
  assert.match(f.text, /DD OK/, `dd of 560 MiB into tmpfs with 1 GiB of memory\n${vmm.explain()}`);

  // Unplug it again: free movable memory, so the driver can.
  r = await vmm.api('PUT', 'vm.resize', { desired_ram: 512 * MiB });
  assert.equal(r.status, 204, r.text);
  assert.equal((await info(vmm)).config.memory.hotplugged_size, 0, 'vm.info config: hotplugged_size 0');
  const unplugged = await until('the guest to unplug', () => info(vmm), (i) => i.memory_actual_size < 1024 * MiB, vmm);
  const total2 = await until('MemTotal to shrink', () => memTotal(vmm), (v) => v < total1, vmm);
  t.diagnostic(`unplug: memory_actual_size ${unplugged.memory_actual_size / MiB} MiB; MemTotal ${(total1 / MiB).toFixed(1)} -> ${(total2 / MiB).toFixed(1)} MiB (at boot ${(total0 / MiB).toFixed(1)})`);
  assert.ok(unplugged.memory_actual_size >= 512 * MiB, `memory_actual_size ${unplugged.memory_actual_size} below the boot RAM`);

  const c = await counters(vmm);
  t.diagnostic(`vm.counters _mem0: ${JSON.stringify(c)}`);
  assert.ok((c['plug_requests'] ?? 0) >= 1, `plug_requests ${c['plug_requests']}`);
  assert.ok((c['unplug_requests'] ?? 0) + (c['unplug_all_requests'] ?? 0) >= 1, 'unplug requests');
  assert.equal(c['errors'], 0);
  assert.equal(c['discard_errors'], 0);
  assert.equal(c['bad_chains'], 0);
  assert.equal(c['malformed_requests'], 0);

  await vmm.shell('poweroff', /@@stv:poweroff@@/, 'the guest powered off');
  await vmm.api('PUT', 'vmm.shutdown').catch(() => undefined);
  await vmm.exited;
});

// ACPI memory hotplug (src/devices/memory_hotplug.ts; Debian's kernel: acpi_memhotplug built in),
// as Cloud Hypervisor's --memory size=512M,hotplug_size=1G (hotplug_method Acpi, the default):
//   - at boot the DSDT's 32 memory devices (PNP0C80) are all absent; MemTotal is the boot RAM's.
//     memhp_default_state=online onlines hot-added memory (Debian's default leaves it offline).
//   - vm.resize desired_ram=1 GiB: a memory device appears with 512 MiB, the guest adds and
//     onlines it (MemTotal grows by at least 480 MiB) and fills 560 MiB of tmpfs; vm.info says
//     memory.size 1 GiB (CH's form) and memory_actual_size 1 GiB.
//   - again to 1280 MiB: a second memory device, MemTotal grows by at least 240 MiB.
//   - refused with 400: less than now (ACPI memory hotplug only adds), not whole 128 MiB blocks,
//     above size + hotplug_size.
//   - a guest reboot: the new guest finds the added memory in its boot-time ACPI scan (MemTotal
//     as before the reboot, within 16 MiB).
//   - another 128 MiB, then pause, snapshot, and restore in a second VMM: the restored guest has
//     the same MemTotal and its tmpfs file; one more resize there adds a memory device again;
//   - then a live migration of it to a third VMM: the same MemTotal, tmpfs file and
//     memory_actual_size there.
test('ACPI memory hotplug: vm.resize desired_ram adds memory devices the guest onlines (MemTotal, vm.info), kept across a reboot', { timeout: TIMEOUT_MS }, async (t) => {
  const name = 'acpi-memory';
  const dir = scratchDir(name);
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const vmm = new Vmm(name, join(dir, 'api.sock'), [
    '--kernel', img.bzImage, '--initramfs', img.initramfs,
    '--cmdline', 'console=ttyS0 quiet memhp_default_state=online stv.scenario=shell',
    '--cpus', 'boot=1', '--memory', 'size=512M,hotplug_size=1G', '--serial', 'tty', '--console', 'off', '-v',
  ]);
  t.after(() => vmm.end());
  await waitForPing(vmm.sock, vmm.child);
  await vmm.waitFor(/stv# /, 0, 'the guest shell prompt');
  const devices = 'echo "MEMDEV $(ls /sys/bus/acpi/devices | grep -c PNP0C80) $(cat /sys/bus/acpi/devices/PNP0C80:*/status 2>/dev/null | grep -c 15) E""ND"';
  const d0 = await vmm.shellOutput(devices, /MEMDEV (\d+) (\d+) END/, 'the ACPI memory devices');
  t.diagnostic(`ACPI memory devices at boot: ${d0.m[1]} enumerated, ${d0.m[2]} present`);
  assert.equal(d0.m[2], '0', `no memory device present at boot\n${vmm.explain()}`);

  const i0 = await info(vmm);
  assert.equal(i0.memory_actual_size, 512 * MiB);
  assert.equal(i0.config.memory.hotplug_size, 1024 * MiB);
  const total0 = await memTotal(vmm);

  for (const bad of [256 * MiB, 512 * MiB + 64 * MiB, 1536 * MiB + 128 * MiB]) {
    const r = await vmm.api('PUT', 'vm.resize', { desired_ram: bad });
    assert.equal(r.status, 400, `desired_ram ${bad}: ${r.text}`);
  }

  let r = await vmm.api('PUT', 'vm.resize', { desired_ram: 1024 * MiB });
  assert.equal(r.status, 204, r.text);
  const i1 = await info(vmm);
  assert.deepEqual([i1.memory_actual_size, i1.config.memory.size], [1024 * MiB, 1024 * MiB], 'vm.info: the new total, in memory.size as Cloud Hypervisor');
  const total1 = await until('MemTotal to grow by 480 MiB', () => memTotal(vmm), (v) => v - total0 >= 480 * MiB, vmm);
  t.diagnostic(`add 512 MiB: MemTotal ${(total0 / MiB).toFixed(1)} -> ${(total1 / MiB).toFixed(1)} MiB`);
  const f = await vmm.shellOutput(
    'mkdir -p /mnt/t; mount -t tmpfs -o size=800m tmpfs /mnt/t; dd if=/dev/zero of=/mnt/t/f bs=1M count=560 2>/dev/null && echo "DD ""OK"; rm -f /mnt/t/f; umount /mnt/t; echo FIL""LED',
    /FILLED/, 'the guest filling 560 MiB of tmpfs');
  assert.match(f.text, /DD OK/, `dd of 560 MiB into tmpfs with 1 GiB of memory\n${vmm.explain()}`);

  r = await vmm.api('PUT', 'vm.resize', { desired_ram: 1280 * MiB });
  assert.equal(r.status, 204, r.text);
  const total2 = await until('MemTotal to grow by 240 MiB more', () => memTotal(vmm), (v) => v - total1 >= 240 * MiB, vmm);
  const d2 = await vmm.shellOutput(devices, /MEMDEV (\d+) (\d+) END/, 'the ACPI memory devices');
  t.diagnostic(`add 256 MiB: MemTotal ${(total1 / MiB).toFixed(1)} -> ${(total2 / MiB).toFixed(1)} MiB; memory devices present: ${d2.m[2]}`);
  assert.equal(d2.m[2], '2', `two memory devices present\n${vmm.explain()}`);

  r = await vmm.api('PUT', 'vm.resize', { desired_ram: 1024 * MiB });
  assert.equal(r.status, 400, `ACPI memory is only added: ${r.text}`);
  assert.match(r.text, /only adds memory/);
  assert.equal((await info(vmm)).memory_actual_size, 1280 * MiB, 'refused: nothing changed');

  // Reboot: the guest boots with the added memory (memory devices present at boot).
  const mark = vmm.out.length;
  vmm.child.stdin.write('reboot\n');
  await vmm.waitFor(/stv# /, mark, 'the shell prompt after the reboot');
  const total3 = await memTotal(vmm);
  t.diagnostic(`after the reboot: MemTotal ${(total3 / MiB).toFixed(1)} MiB (before ${(total2 / MiB).toFixed(1)})`);
  assert.ok(Math.abs(total3 - total2) <= 16 * MiB, `MemTotal after the reboot ${total3} vs ${total2} before\n${vmm.explain()}`);
  assert.equal((await info(vmm)).memory_actual_size, 1280 * MiB);

  // After the reboot (one memory device of 768 MiB from boot), 128 MiB more: a second device.
  r = await vmm.api('PUT', 'vm.resize', { desired_ram: 1408 * MiB });
  assert.equal(r.status, 204, r.text);
  const total4 = await until('MemTotal to grow by 112 MiB', () => memTotal(vmm), (v) => v - total3 >= 112 * MiB, vmm);
  // Snapshot with the added memory in use (a tmpfs file across it), restore in a second VMM.
  const tok = await vmm.shell('X=$RANDOM$RANDOM; mkdir -p /mnt/t; mount -t tmpfs -o size=1200m tmpfs /mnt/t; dd if=/dev/urandom of=/mnt/t/f bs=1M count=256 2>/dev/null; echo "TOK$X $(md5sum < /mnt/t/f | cut -c1-32) K"', /TOK(\d+) ([0-9a-f]{32}) K/, 'a 256 MiB tmpfs file and its md5');
  const snap = join(dir, 'snap');
  mkdirSync(snap);
  assert.equal((await vmm.api('PUT', 'vm.pause')).status, 204);
  r = await vmm.api('PUT', 'vm.snapshot', { destination_url: pathToFileURL(snap).href });
  assert.equal(r.status, 204, `vm.snapshot: ${r.text}\n${vmm.explain()}`);
  await vmm.api('PUT', 'vmm.shutdown').catch(() => undefined);
  await vmm.exited;
  const vmm2 = new Vmm(`${name}-restored`, join(dir, 'api2.sock'), ['-v']);
  t.after(() => vmm2.end());
  await waitForPing(vmm2.sock, vmm2.child);
  r = await vmm2.api('PUT', 'vm.restore', { source_url: pathToFileURL(snap).href });
  assert.equal(r.status, 204, `vm.restore: ${r.text}\n${vmm2.explain()}`);
  assert.equal((await info(vmm2)).memory_actual_size, 1408 * MiB);
  assert.equal((await vmm2.api('PUT', 'vm.resume')).status, 204);
  const total5 = await memTotal(vmm2);
  const sum = await vmm2.shell('echo "SUM $(md5sum < /mnt/t/f | cut -c1-32) M"', /SUM ([0-9a-f]{32}) M/, 'the tmpfs file after the restore');
  t.diagnostic(`snapshot/restore: MemTotal ${(total4 / MiB).toFixed(1)} -> ${(total5 / MiB).toFixed(1)} MiB; tmpfs file md5 ${tok[2] === sum[1] ? 'the same' : 'DIFFERENT'}`);
  assert.equal(total5, total4, 'MemTotal after the restore');
  assert.equal(sum[1], tok[2], 'the 256 MiB tmpfs file (page cache prefers ZONE_NORMAL: the hot-added memory) after the restore');
  r = await vmm2.api('PUT', 'vm.resize', { desired_ram: 1536 * MiB });
  assert.equal(r.status, 204, `vm.resize after the restore: ${r.text}`);
  const total6 = await until('MemTotal to grow by 112 MiB in the restored guest', () => memTotal(vmm2), (v) => v - total5 >= 112 * MiB, vmm2);
  t.diagnostic(`after the restore, +128 MiB: MemTotal ${(total5 / MiB).toFixed(1)} -> ${(total6 / MiB).toFixed(1)} MiB`);

  // Live migration of that guest (three memory devices, two of them from the snapshot) to a third
  // VMM over a Unix socket: MemTotal, the tmpfs file and memory_actual_size arrive with it.
  const vmm3 = new Vmm(`${name}-migrated`, join(dir, 'api3.sock'), ['-v']);
  t.after(() => vmm3.end());
  await waitForPing(vmm3.sock, vmm3.child);
  const usock = join(dir, 'migrate.sock');
  const received = vmm3.api('PUT', 'vm.receive-migration', { receiver_url: `unix:${usock}` });
  for (let i = 0; i < 300 && !existsSync(usock); i++) await new Promise((res) => setTimeout(res, 100));
  r = await vmm2.api('PUT', 'vm.send-migration', { destination_url: `unix:${usock}` });
  assert.equal(r.status, 204, `send-migration with ACPI-hotplugged memory: ${r.status} ${r.text}\n${vmm2.explain()}\n${vmm3.explain()}`);
  const got = await received;
  assert.equal(got.status, 204, `receive-migration: ${got.status} ${got.text}\n${vmm3.explain()}`);
  assert.equal(await vmm2.exited, 0, `the source exits 0 after the migration\n${vmm2.explain()}`);
  t.diagnostic(vmm2.err.split('\n').find((l) => /migration to/.test(l)) ?? '');
  assert.equal((await info(vmm3)).memory_actual_size, 1536 * MiB, 'memory_actual_size in the destination');
  const total7 = await memTotal(vmm3);
  const sum3 = await vmm3.shell('echo "SUM $(md5sum < /mnt/t/f | cut -c1-32) M"', /SUM ([0-9a-f]{32}) M/, 'the tmpfs file after the migration');
  t.diagnostic(`migrated: MemTotal ${(total6 / MiB).toFixed(1)} -> ${(total7 / MiB).toFixed(1)} MiB; tmpfs file md5 ${sum3[1] === tok[2] ? 'the same' : 'DIFFERENT'}`);
  assert.equal(total7, total6, 'MemTotal after the migration');
  assert.equal(sum3[1], tok[2], 'the 256 MiB tmpfs file after the migration');

  await vmm3.shell('umount /mnt/t; poweroff', /@@stv:poweroff@@/, 'the migrated guest powered off');
  await vmm3.api('PUT', 'vmm.shutdown').catch(() => undefined);
  await vmm3.exited;
});
