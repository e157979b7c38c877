// vm.snapshot over the API on a real guest (Debian's kernel; serial console and the virtio-rng
// every Cloud Hypervisor config holds):
//   - refused while running (405) and for a URL that is not an existing directory or not
//     file:// (400);
//   - paused (vCPUs and devices quiesced): config.json, state.json and memory-ranges appear;
//     state.json parses strictly with the guest's vCPUs, legacy devices, PCI and the virtio-rng
//     the driver set up; memory-ranges spans guest RAM and is sparse;
//   - a second snapshot into the same directory is refused (400) and changes nothing;
//   - resumed, the guest's shell still answers and the guest powers off.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { guestImages, LOG_DIR } from './lib/guest.js';
import { STRATOVISOR } from './lib/stratovisor.js';
import { apiRequest } from '../../src/cli/remote.js';
import { waitForPing } from '../../src/api/testing/spawn_vmm.js';
import { readSnapshot, CONFIG_FILE, MEMORY_FILE, STATE_FILE } from '../../src/vmm/snapshot.js';

const img = guestImages();
const TIMEOUT_MS = 300_000;
const MEM = 256 * 1024 * 1024;

test('vm.snapshot of a paused guest: config.json, state.json (strict), sparse memory-ranges; the guest resumes', { timeout: TIMEOUT_MS }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'stv-snap-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const snapDir = join(dir, 'snap');
  mkdirSync(snapDir);
  const sock = join(dir, 'api.sock');
  const args = [
    '--api-socket', `path=${sock}`,
    '--kernel', img.bzImage, '--initramfs', img.initramfs,
    '--cmdline', 'console=ttyS0 quiet stv.scenario=shell',
    '--cpus', 'boot=2', '--memory', `size=${MEM}`, '--serial', 'tty', '--console', 'off', '-v',
  ];
  const child = spawn(process.execPath, [STRATOVISOR, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  const waiters: Array<() => void> = [];
  const wake = () => { for (const w of waiters.splice(0)) w(); };
  child.stdout.on('data', (b: Buffer) => { out += b.toString('latin1'); wake(); });
  child.stderr.on('data', (b: Buffer) => { err += b.toString('latin1'); wake(); });
  const exited = new Promise<number | null>((r) => child.on('close', (c) => { wake(); r(c); }));
  let done = false;
  void exited.then(() => { done = true; });
  t.after(() => { if (!done) child.kill('SIGKILL'); });
  const explain = () => `--- console (last 2000) ---\n${out.slice(-2000)}\n--- stderr ---\n${err.slice(-3000)}`;
  t.after(() => {
    mkdirSync(LOG_DIR, { recursive: true });
    writeFileSync(join(LOG_DIR, 'stv-snapshot.log'), `$ stratovisor ${args.join(' ')}\n${out}\n--- stderr ---\n${err}\n`);
  });
  const waitFor = async (re: RegExp, from: number, what: string) => {
    while (!re.test(out.slice(from))) {
      if (done) assert.fail(`the VMM exited before ${what}\n${explain()}`);
      await new Promise<void>((r) => { waiters.push(r); setTimeout(r, 1000); });
    }
  };

  await waitForPing(sock, child);
  await waitFor(/stv# /, 0, 'the guest shell prompt');
  const api = (method: string, ep: string, body?: unknown) => apiRequest(sock, method, ep, body === undefined ? undefined : JSON.stringify(body));
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
  const mark = out.length;
  child.stdin.write('echo snap-$((6*7))\n');
  await waitFor(/snap-42/, mark, 'the shell answered after resume');
  child.stdin.write('poweroff\n');
  await waitFor(/@@stv:poweroff@@/, mark, 'the guest powered off');
  await api('PUT', 'vmm.shutdown').catch(() => undefined);
  await exited;
});
