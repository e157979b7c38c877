// vm.snapshot over the API on a real guest (Debian's kernel). The vCPUs, the legacy devices, PCI
// and guest RAM are saved (unit tests: src/vmm/snapshot.test.ts); virtio device state is not
// wired into the snapshot yet, and every VM has at least the virtio-rng Cloud Hypervisor's
// config always holds, so here:
//   - refused while running (405) and for a URL that is not an existing directory or not
//     file:// (400);
//   - paused: refused with an error naming the virtio device whose state is not saved, and
//     nothing is written into the directory;
//   - resumed, the guest's shell still answers and the guest powers off.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { guestImages, LOG_DIR } from './lib/guest.js';
import { STRATOVISOR } from './lib/stratovisor.js';
import { apiRequest } from '../../src/cli/remote.js';
import { waitForPing } from '../../src/api/testing/spawn_vmm.js';

const img = guestImages();
const TIMEOUT_MS = 300_000;
const MEM = 256 * 1024 * 1024;

test('vm.snapshot over the API: 405 while running, 400 for a bad URL, a clear refusal for virtio devices; the guest resumes', { timeout: TIMEOUT_MS }, async (t) => {
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
  await waitFor(/stv# $/m, 0, 'the guest shell prompt');
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
  assert.equal(r.status, 500, `vm.snapshot with a virtio device: ${r.status} ${r.text}\n${explain()}`);
  assert.match(r.text, /saving the state of virtio devices is not implemented yet \(_rng0\)/);
  assert.deepEqual(readdirSync(snapDir), [], 'a refused snapshot wrote files');
  assert.equal((await api('GET', 'vm.info')).text.includes('"Paused"'), true, 'the VM is still paused');

  assert.equal((await api('PUT', 'vm.resume')).status, 204);
  const mark = out.length;
  child.stdin.write('echo snap-$((6*7))\n');
  await waitFor(/snap-42/, mark, 'the shell answered after resume');
  child.stdin.write('poweroff\n');
  await waitFor(/@@stv:poweroff@@/, mark, 'the guest powered off');
  await api('PUT', 'vmm.shutdown').catch(() => undefined);
  await exited;
});
