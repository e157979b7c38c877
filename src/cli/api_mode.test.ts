// `stratovisor --api-socket …` without a VM waits for vm.create, answers the API, writes the
// event monitor, and exits 0 on vmm.shutdown or SIGTERM. (Booting a guest this way needs a
// KVM that runs stock kernels: test/e2e/api.test.ts.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { waitForPing } from '../api/testing/spawn_vmm.js';
import { apiRequest } from './remote.js';

const MAIN = fileURLToPath(new URL('./main.js', import.meta.url));

function start(args: string[]): { child: ChildProcess; exit: Promise<{ code: number | null; stderr: string }>; ready: (sock: string) => Promise<number> } {
  const child = spawn(process.execPath, [MAIN, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (b: Buffer) => { stderr += b.toString(); });
  child.stdout!.resume();
  const exit = new Promise<{ code: number | null; stderr: string }>((r) => child.on('close', (code) => r({ code, stderr })));
  return { child, exit, ready: (sock) => waitForPing(sock, child, { explain: () => stderr }) };
}

test('--api-socket path=: ping, create, info, delete; vmm.shutdown exits 0; events written', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'stv-apimode-'));
  const sock = join(dir, 'api.sock');
  const evFile = join(dir, 'events.jsonl');
  const { exit, ready } = start(['--api-socket', `path=${sock}`, '--event-monitor', `path=${evFile}`]);
  await ready(sock);
  const ping = JSON.parse((await apiRequest(sock, 'GET', 'vmm.ping')).text) as { version: string; pid: number };
  assert.match(ping.version, /^\d+\.\d+\.\d+/);
  assert.equal((await apiRequest(sock, 'GET', 'vm.info')).status, 404);
  const create = await apiRequest(sock, 'PUT', 'vm.create', JSON.stringify({ payload: { kernel: '/nonexistent/k' }, serial: { mode: 'Tty' }, console: { mode: 'Off' } }));
  assert.equal(create.status, 204, create.text);
  assert.equal((JSON.parse((await apiRequest(sock, 'GET', 'vm.info')).text) as { state: string }).state, 'Created');
  const boot = await apiRequest(sock, 'PUT', 'vm.boot');
  assert.equal(boot.status, 500);
  assert.match(boot.text, /kernel '\/nonexistent\/k' does not exist/);
  assert.equal((await apiRequest(sock, 'PUT', 'vm.shutdown')).status, 405);
  assert.equal((await apiRequest(sock, 'PUT', 'vmm.shutdown')).status, 204);
  const r = await exit;
  assert.equal(r.code, 0, r.stderr);
  assert.equal(existsSync(sock), false, 'socket removed');
  const events = readFileSync(evFile, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { source: string; event: string });
  assert.deepEqual(events.map((e) => `${e.source}:${e.event}`), ['vmm:starting', 'vm:created', 'vm:booting', 'vm:deleted', 'vmm:shutdown']);
});

test('bare socket path; SIGTERM stops the VMM cleanly (status 0, socket removed)', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'stv-apimode-'));
  const sock = join(dir, 'api.sock');
  const { child, exit, ready } = start(['--api-socket', sock]);
  await ready(sock);
  child.kill('SIGTERM');
  const r = await exit;
  assert.equal(r.code, 0, r.stderr);
  assert.equal(existsSync(sock), false);
});

test('a socket path that is in use is a one-line error', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'stv-apimode-'));
  const sock = join(dir, 'api.sock');
  const first = start(['--api-socket', sock]);
  await first.ready(sock);
  const second = start(['--api-socket', sock]);
  const r = await second.exit;
  assert.notEqual(r.code, 0);
  assert.match(r.stderr.trim(), /^stratovisor: error: --api-socket: .* in use/);
  first.child.kill('SIGTERM');
  assert.equal((await first.exit).code, 0);
});

test('no VM and no API socket: still the one-line "no VM to run" error', async () => {
  const r = await start(['--event-monitor', `path=${join(tmpdir(), 'stv-unused-ev')}`]).exit;
  assert.equal(r.code, 1);
  assert.match(r.stderr, /^stratovisor: error: no VM to run: give --kernel/);
});
