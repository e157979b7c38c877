// vm.snapshot over the API on a real guest (Debian's kernel; serial console and the virtio-rng
// every Cloud Hypervisor config holds):
//   - refused while running (405) and for a URL that is not an existing directory or not
//     file:// (400);
//   - paused (vCPUs and devices quiesced): config.json, state.json and memory-ranges appear;
//     state.json parses strictly with the guest's vCPUs, legacy devices, PCI and the virtio-rng
//     the driver set up; memory-ranges spans guest RAM and is sparse;
//   - a second snapshot into the same directory is refused (400) and changes nothing;
//   - resumed, the guest's shell still answers and the guest powers off.
// vm.restore of that snapshot in a second VMM (the first one gone), as Kata's templating does:
//   - a missing directory and a state.json with a wrong field are refused (400, naming it);
//   - the restored VM is Paused; a second restore is refused (409); resumed, the guest goes on
//     where it was: its shell still holds the variable set before the snapshot, its clock went
//     on, a counter in its RAM counts on from where it was, its virtio-blk disk and virtio-rng
//     answer, and it powers off (guest RAM mapped copy-on-write from memory-ranges);
// --restore …,prefault=on,resume=on on the command line: the same guest runs (RAM read in first).
// (A clones test, two VMMs restored from this snapshot with different VM Generation IDs, is not
// here yet: in its last run the restored guest saw no GED interrupt, so the reseed through
// VMGenID is not proven; see the issue 10 note.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, ftruncateSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { guestImages } from './lib/guest.js';
import { VmmProcess as Vmm } from './lib/vmm_process.js';
import { waitForPing } from '../../src/api/testing/spawn_vmm.js';
import { readSnapshot, CONFIG_FILE, MEMORY_FILE, STATE_FILE } from '../../src/vmm/snapshot.js';

const img = guestImages();
const TIMEOUT_MS = 300_000;
const MEM = 256 * 1024 * 1024;
/** The first bytes of the disk, read back by the restored guest. */
const DISK_MARK = 'stv-restore-disk';

// Shared by the two tests: the second restores what the first wrote.
const dir = mkdtempSync(join(tmpdir(), 'stv-snap-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
const snapDir = join(dir, 'snap');
const disk = join(dir, 'disk.img');
/** What the first test saw the guest print just before the snapshot. */
let saved: { mark: string; uptime: number; count: number } | null = null;

test('vm.snapshot of a paused guest: config.json, state.json (strict), sparse memory-ranges; the guest resumes', { timeout: TIMEOUT_MS }, async (t) => {
  mkdirSync(snapDir);
  const fd = openSync(disk, 'w');
  writeSync(fd, DISK_MARK);
  ftruncateSync(fd, 16 << 20);
  closeSync(fd);
  const vmm = new Vmm('snapshot', join(dir, 'api.sock'), [
    '--kernel', img.bzImage, '--initramfs', img.initramfs,
    '--cmdline', 'console=ttyS0 quiet stv.scenario=shell',
    '--cpus', 'boot=2', '--memory', `size=${MEM}`, '--serial', 'tty', '--console', 'off',
    '--disk', `path=${disk},id=disk0`, '-v',
  ]);
  t.after(() => vmm.end());
  const explain = () => vmm.explain();
  const api = (method: string, ep: string, body?: unknown) => vmm.api(method, ep, body);

  await waitForPing(vmm.sock, vmm.child);
  await vmm.waitFor(/stv# /, 0, 'the guest shell prompt');
  // Guest state the restored VM must still have: a shell variable, a counter in RAM (a file in
  // the initramfs' tmpfs, bumped every second by a background loop), and its clock.
  // (Written to a new file and renamed over: a cat never sees it truncated and empty.)
  await vmm.shell('(i=0; while :; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; sleep 1; done) & sleep 2; echo started-$(cat /tmp/count)', /started-\d+/, 'the counter running');
  const m = await vmm.shell('X=$RANDOM$RANDOM; echo mark-$X; cut -d" " -f1 /proc/uptime; echo count-$(cat /tmp/count)', /mark-(\d+)\s+(\d+\.\d+)\s+count-(\d+)\s/, 'the mark before the snapshot');
  saved = { mark: m[1]!, uptime: Number(m[2]), count: Number(m[3]) };
  const url = pathToFileURL(snapDir).href;

  let r = await api('PUT', 'vm.snapshot', { destination_url: url });
  assert.equal(r.status, 405, `snapshot of a running VM: ${r.status} ${r.text}`);
  assert.match(r.text, /not paused/);

  assert.equal((await api('PUT', 'vm.pause')).status, 204);
  r = await api('PUT', 'vm.snapshot', { destination_url: pathToFileURL(join(dir, 'missing')).href });
  assert.equal(r.status, 400, `missing directory: ${r.status} ${r.text}`);
  assert.match(r.text, /is not an existing directory/);
  r = await api('PUT', 'vm.snapshot', { destination_url: 'http://example.com/x' });
  assert.equal(r.status, 400);
  assert.match(r.text, /only file:\/\/ URLs/);

  r = await api('PUT', 'vm.snapshot', { destination_url: url });
  assert.equal(r.status, 204, `vm.snapshot: ${r.status} ${r.text}\n${explain()}`);
  const snap = readSnapshot(snapDir); // throws a StateFormatError naming the field if anything is off
  const config = snap.config as { cpus: { boot_vcpus: number }; memory: { size: number }; payload: { kernel: string } };
  assert.equal(config.cpus.boot_vcpus, 2);
  assert.equal(config.memory.size, MEM);
  assert.equal(config.payload.kernel, img.bzImage);
  assert.equal(snap.state.hypervisor.vcpus.length, 2);
  assert.ok(snap.state.hypervisor.vcpus.every((v) => v.sregs.cr0 & 1n), 'every vCPU is in protected mode (a booted Linux)');
  assert.ok(snap.state.devices.serial !== null && snap.state.devices.cmos !== null, 'the serial port and CMOS are saved');
  assert.equal(snap.state.pci.configAddress.length, 2, 'one CONFIG_ADDRESS latch per vCPU');
  const rng = snap.state.virtio.find((d) => d.id === '_rng0');
  assert.ok(rng, `the virtio-rng is in the state (${snap.state.virtio.map((d) => d.id).join(', ')})`);
  assert.ok((rng.transport.deviceStatus & 4) !== 0, `the guest's driver set DRIVER_OK on the virtio-rng (status 0x${rng.transport.deviceStatus.toString(16)})`);
  assert.ok(rng.transport.queues.some((q) => q.ready), 'its queue is ready');
  const total = snap.state.memory.ranges.reduce((n, m) => n + m.length, 0);
  assert.equal(total, MEM, 'the memory ranges cover guest RAM');
  const st = statSync(join(snapDir, MEMORY_FILE));
  assert.equal(st.size, MEM);
  t.diagnostic(`memory-ranges: ${st.size} bytes, ${st.blocks * 512} on disk; state.json ${statSync(join(snapDir, STATE_FILE)).size} bytes`);
  assert.ok(st.blocks * 512 < MEM / 2, `memory-ranges takes ${st.blocks * 512} bytes on disk for ${MEM} of RAM: not sparse`);

  const before = readFileSync(join(snapDir, STATE_FILE));
  r = await api('PUT', 'vm.snapshot', { destination_url: url });
  assert.equal(r.status, 400, `second snapshot into the same directory: ${r.status} ${r.text}`);
  assert.match(r.text, /exists already/);
  assert.deepEqual(readFileSync(join(snapDir, STATE_FILE)), before, 'the first snapshot was changed');
  assert.ok(statSync(join(snapDir, CONFIG_FILE)).size > 0);

  assert.equal((await api('PUT', 'vm.resume')).status, 204);
  await vmm.shell('echo snap-$((6*7))', /snap-42/, 'the shell answered after resume');
  await vmm.shell('poweroff', /@@stv:poweroff@@/, 'the guest powered off');
  await api('PUT', 'vmm.shutdown').catch(() => undefined);
  await vmm.exited;
});

test('vm.restore in a new VMM: bad snapshots refused by name; the restored guest is Paused, then goes on where it was', { timeout: TIMEOUT_MS }, async (t) => {
  if (saved === null) { t.skip('the snapshot test did not get as far as the snapshot'); return; }
  const vmm = new Vmm('restore', join(dir, 'api2.sock'), ['-v']);
  t.after(() => vmm.end());
  const explain = () => vmm.explain();
  await waitForPing(vmm.sock, vmm.child);

  let r = await vmm.api('PUT', 'vm.restore', { source_url: pathToFileURL(join(dir, 'missing')).href });
  assert.equal(r.status, 400, `missing directory: ${r.status} ${r.text}`);
  assert.match(r.text, /is not an existing directory/);
  // A state.json with one wrong field (the other files as they are): refused, the field named.
  const bad = join(dir, 'bad');
  mkdirSync(bad);
  symlinkSync(join(snapDir, CONFIG_FILE), join(bad, CONFIG_FILE));
  symlinkSync(join(snapDir, MEMORY_FILE), join(bad, MEMORY_FILE));
  const doc = JSON.parse(readFileSync(join(snapDir, STATE_FILE), 'utf8')) as { hypervisor: { vcpus: Array<{ regs: Record<string, unknown> }> } };
  doc.hypervisor.vcpus[1]!.regs.rip = 'elsewhere';
  writeFileSync(join(bad, STATE_FILE), JSON.stringify(doc));
  r = await vmm.api('PUT', 'vm.restore', { source_url: pathToFileURL(bad).href });
  assert.equal(r.status, 400, `bad state.json: ${r.status} ${r.text}`);
  assert.match(r.text, /hypervisor\.vcpus\[1\]\.regs\.rip/);
  assert.equal((await vmm.api('GET', 'vm.info')).status, 404, 'a refused restore leaves no VM');

  const t0 = performance.now();
  r = await vmm.api('PUT', 'vm.restore', { source_url: pathToFileURL(snapDir).href });
  const restoreMs = performance.now() - t0;
  assert.equal(r.status, 204, `vm.restore: ${r.status} ${r.text}\n${explain()}`);
  const info = JSON.parse((await vmm.api('GET', 'vm.info')).text) as { state: string; config: { cpus: { boot_vcpus: number } } };
  assert.equal(info.state, 'Paused');
  assert.match(vmm.err, /guest RAM mapped copy-on-write from/, 'by default guest RAM is mapped, not read in');
  assert.equal(info.config.cpus.boot_vcpus, 2);
  r = await vmm.api('PUT', 'vm.restore', { source_url: pathToFileURL(snapDir).href });
  assert.equal(r.status, 409, `a second restore: ${r.status} ${r.text}`);

  const t1 = performance.now();
  assert.equal((await vmm.api('PUT', 'vm.resume')).status, 204);
  // The shell is the one of the snapshot: it still holds X; the guest's clock went on from there.
  const m = await vmm.shell('echo got-$X; cut -d" " -f1 /proc/uptime', /got-(\d*)\s+(\d+\.\d+)\s/, 'the restored shell answering');
  t.diagnostic(`vm.restore answered in ${restoreMs.toFixed(0)} ms; resume to the shell's answer ${(performance.now() - t1).toFixed(0)} ms (the sandbox is ~10x slower than a host)`);
  assert.equal(m[1], saved.mark, 'the shell variable set before the snapshot');
  assert.ok(Number(m[2]) >= saved.uptime, `uptime went on: ${m[2]} after ${saved.uptime}`);
  // The counter goes on from where it was (no reboot, no lost RAM) and keeps counting.
  const c1 = Number((await vmm.shell('echo count-$(cat /tmp/count)', /count-(\d+)\s/, 'the counter after restore'))[1]);
  const c2 = Number((await vmm.shell('sleep 3; echo count-$(cat /tmp/count)', /count-(\d+)\s/, 'the counter still counting'))[1]);
  assert.ok(c1 >= saved.count && c2 > c1, `counter ${saved.count} at the snapshot, ${c1} then ${c2} after the restore`);
  // Its virtio devices work on from their saved queues.
  await vmm.shell('dd if=/dev/vda bs=512 count=1 2>/dev/null | head -c 16; echo', new RegExp(DISK_MARK), 'the disk read by the restored guest');
  await vmm.shell('head -c 8 /dev/hwrng | od -An -tx1 | wc -w', /^\s*8\s*$/m, 'virtio-rng bytes in the restored guest');
  await vmm.shell('poweroff', /@@stv:poweroff@@/, 'the restored guest powered off');
  await vmm.api('PUT', 'vmm.shutdown').catch(() => undefined);
  assert.equal(await vmm.exited, 0, explain());
});

test('--restore source_url=…,prefault=on,resume=on on the command line: the guest runs on (RAM read in first), powers off, the VMM exits 0', { timeout: TIMEOUT_MS }, async (t) => {
  if (saved === null) { t.skip('the snapshot test did not get as far as the snapshot'); return; }
  const vmm = new Vmm('restore-cli', join(dir, 'api3.sock'), ['--restore', `source_url=${pathToFileURL(snapDir).href},prefault=on,resume=on`, '-v']);
  t.after(() => vmm.end());
  const m = await vmm.shell('echo cli-$X', /cli-(\d+)\s/, 'the shell of the snapshot answering');
  assert.equal(m[1], saved.mark);
  assert.match(vmm.err, /guest RAM read from/, 'prefault=on reads guest RAM in (Copy)');
  await vmm.shell('poweroff', /@@stv:poweroff@@/, 'the restored guest powered off');
  assert.equal(await vmm.exited, 0, vmm.explain());
});
