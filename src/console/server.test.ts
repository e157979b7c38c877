// The web console server in-process, in front of real API servers (src/api/server.ts, with the
// in-memory VMM core) and a real serial socket (src/vmm/serial_socket.ts, written to as the
// device thread writes): access control (token, cookie, Host, Origin), the VM list, lifecycle
// actions, booting on an idle VMM, the serial console over WebSockets (several viewers,
// scroll-back, floods, huge pastes, viewers that vanish), and VMMs that die while watched.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { join } from 'node:path';
import { WebSocket } from 'ws';
import { ConsoleServer, MAX_WS_MESSAGE } from './server.js';
import { startTestServer, type TestServer } from '../api/test_server.fixture.js';
import { SerialSocketSink } from '../vmm/serial_socket.js';
import { OutputSink } from '../vmm/sink.js';
import { createVmConfig } from '../vmm/config.js';
import type { VmView } from './vm_link.js';

interface Reply { status: number; headers: http.IncomingHttpHeaders; text: string }

function req(base: string, method: string, path: string, headers: Record<string, string> = {}, body?: string): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const r = http.request(`${base}${path}`, { method, headers: { ...(body !== undefined ? { 'Content-Type': 'application/json' } : {}), ...headers } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, text: Buffer.concat(chunks).toString() }));
    });
    r.on('error', reject);
    r.end(body);
  });
}

async function until<T>(what: string, f: () => Promise<T | undefined> | T | undefined, ms = 10_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

class Viewer {
  readonly ws: WebSocket;
  out = '';
  readonly statuses: Array<{ state: string; message: string }> = [];
  closed: { code: number } | null = null;
  readonly open: Promise<void>;
  constructor(url: string, headers: Record<string, string>) {
    this.ws = new WebSocket(url, { headers });
    this.ws.on('message', (d: Buffer, binary: boolean) => {
      if (binary) this.out += d.toString('latin1');
      else this.statuses.push(JSON.parse(d.toString()) as { state: string; message: string });
    });
    this.ws.on('close', (code) => { this.closed = { code }; });
    this.ws.on('error', () => {});
    this.open = new Promise((resolve, reject) => { this.ws.once('open', () => resolve()); this.ws.once('unexpected-response', (_q, res) => reject(new Error(`HTTP ${res.statusCode}`))); });
  }
  waitOut(s: string): Promise<true> { return until(`viewer output ${JSON.stringify(s)}`, () => (this.out.includes(s) ? true : undefined)); }
  waitStatus(re: RegExp): Promise<{ state: string; message: string }> {
    return until(`status ${re}`, () => this.statuses.find((m) => re.test(`${m.state}: ${m.message}`)));
  }
}

interface Fixture {
  api: TestServer;
  sink: SerialSocketSink;
  /** What the "guest" got on its serial input. */
  typed: Buffer[];
  console: ConsoleServer;
  base: string;
  cookie: string;
  auth: Record<string, string>;
  /** Whether the guest takes input now (a paused or busy guest does not). */
  reading: { on: boolean };
}

async function fixture(t: TestContext, opts: { boot?: boolean } = {}): Promise<Fixture> {
  const api = await startTestServer();
  const serialPath = join(api.dir, 'serial');
  const typed: Buffer[] = [];
  const reading = { on: true };
  const sink = new SerialSocketSink({ path: serialPath, input: (b) => { if (!reading.on) return 0; typed.push(Buffer.from(b)); return b.length; } });
  await sink.listening;
  if (opts.boot !== false) {
    await api.controller.createVm(createVmConfig({
      payload: { kernel: '/k', cmdline: 'console=ttyS0' }, cpus: { boot_vcpus: 2 }, memory: { size: 256 << 20 },
      disks: [{ path: '/d.img' }], serial: { mode: 'Socket', socket: serialPath },
    }));
    await api.controller.bootVm();
  }
  const console = new ConsoleServer({ apiSockets: [api.socketPath], pollMs: 50 });
  const url = await console.listen();
  const base = console.baseUrl();
  const token = new URL(url).hash.replace('#token=', '');
  const login = await req(base, 'POST', '/login', {}, JSON.stringify({ token }));
  assert.equal(login.status, 204);
  const cookie = String(login.headers['set-cookie']).split(';')[0]!;
  t.after(async () => { await console.close(); sink.close(); await api.close(); });
  return { api, sink, typed, console, base, cookie, auth: { Cookie: cookie, Origin: base }, reading };
}

async function vms(f: Fixture): Promise<VmView[]> {
  const r = await req(f.base, 'GET', '/api/vms', { Cookie: f.cookie });
  assert.equal(r.status, 200, r.text);
  return (JSON.parse(r.text) as { vms: VmView[] }).vms;
}

/** The "guest" prints: through the serial socket's pipe, as the device thread writes (device_worker.ts). */
function guestPrints(f: Fixture, text: string): void {
  const out = new OutputSink(f.sink.fd);
  out.write(Buffer.from(text));
  out.flush();
  assert.equal(out.pending, 0, 'the pipe took it all');
  out.close();
}

function viewer(f: Fixture, headers = f.auth): Viewer {
  return new Viewer(`${f.base.replace('http', 'ws')}/ws/serial/vm1`, headers);
}

test('no token, a wrong token, a foreign Host or Origin: refused', async (t) => {
  const f = await fixture(t);
  // Every page and API needs the token; / answers 401 with the login form.
  const root = await req(f.base, 'GET', '/');
  assert.equal(root.status, 401);
  assert.match(root.text, /<form id="f">/);
  assert.doesNotMatch(root.text, new RegExp(f.console.token), 'the login page does not carry the token');
  for (const p of ['/api/vms', '/app.js', '/index.html']) assert.equal((await req(f.base, 'GET', p)).status, 401, p);
  assert.equal((await req(f.base, 'POST', '/api/vms/vm1/pause', { Origin: f.base }, '{}')).status, 401);
  assert.equal(f.api.controller.calls.includes('pause'), false, 'nothing reached the VMM');
  assert.equal((await req(f.base, 'POST', '/login', {}, JSON.stringify({ token: 'guess' }))).status, 401);
  assert.equal((await req(f.base, 'GET', '/api/vms', { Cookie: 'stv_console=guess' })).status, 401);
  assert.equal((await req(f.base, 'GET', '/api/vms', { Authorization: `Bearer ${f.console.token}x` })).status, 401);
  // The cookie is HttpOnly and SameSite=Strict; a bearer header works for non-browser clients.
  const login = await req(f.base, 'POST', '/login', {}, JSON.stringify({ token: f.console.token }));
  assert.match(String(login.headers['set-cookie']), /HttpOnly/);
  assert.match(String(login.headers['set-cookie']), /SameSite=Strict/);
  assert.equal((await req(f.base, 'GET', '/api/vms', { Authorization: `Bearer ${f.console.token}` })).status, 200);
  // DNS rebinding: a page on another name that resolves to 127.0.0.1 is refused even with the cookie.
  assert.equal((await req(f.base, 'GET', '/api/vms', { Cookie: f.cookie, Host: `evil.example:${f.console.port}` })).status, 403);
  // Cross-site POSTs are refused before anything is done.
  assert.equal((await req(f.base, 'POST', '/api/vms/vm1/pause', { Cookie: f.cookie, Origin: 'http://evil.example' }, '{}')).status, 403);
  assert.equal((await req(f.base, 'POST', '/api/vms/vm1/pause', { Cookie: f.cookie, Origin: f.base, 'Content-Type': 'text/plain' }, '{}')).status, 415);
  assert.equal(f.api.controller.calls.includes('pause'), false);
  // WebSockets: no token 401, foreign Origin 403 (even with the cookie).
  await assert.rejects(viewer(f, { Origin: f.base }).open, /HTTP 401/);
  await assert.rejects(viewer(f, { Cookie: f.cookie, Origin: 'http://evil.example' }).open, /HTTP 403/);
  await assert.rejects(viewer(f, { Cookie: 'stv_console=nope', Origin: f.base }).open, /HTTP 401/);
  // A VM id the console does not have is not a path to anything.
  await assert.rejects(new Viewer(`${f.base.replace('http', 'ws')}/ws/serial/..%2F..%2Fetc`, f.auth).open, /HTTP 404/);
  assert.equal((await req(f.base, 'POST', '/api/vms/vm9/pause', { Cookie: f.cookie, Origin: f.base }, '{}')).status, 404);
});

test('the VM list, a lifecycle action with its answer, and the serial console for several viewers', async (t) => {
  const f = await fixture(t);
  const [vm] = await until('VM running', async () => { const v = await vms(f); return v[0]?.state === 'Running' && v[0].serial.state === 'connected' ? v : undefined; });
  assert.equal(vm!.config!.vcpus, 2);
  assert.equal(vm!.config!.memoryBytes, 256 << 20);
  assert.deepEqual(vm!.config!.disks.length, 1);
  // Output while nobody watches is kept: a viewer attaching later gets it first.
  guestPrints(f, 'early boot line\r\n');
  await until('scroll-back', async () => ((await vms(f))[0]!.serial.scrollback >= 17 ? true : undefined));
  assert.equal((await vms(f))[0]!.serial.viewers, 0, 'nobody watched while it was printed');
  const a = viewer(f);
  await a.open;
  await a.waitOut('early boot line');
  const b = viewer(f);
  await b.open;
  await b.waitOut('early boot line');
  guestPrints(f, 'stv# ');
  await a.waitOut('stv# ');
  await b.waitOut('stv# ');
  a.ws.send(Buffer.from('echo hi\r'));
  b.ws.send(JSON.stringify({ type: 'input', data: 'ls\r' }));
  await until('keystrokes at the guest', () => { const s = Buffer.concat(f.typed).toString(); return s.includes('echo hi\r') && s.includes('ls\r') ? true : undefined; });
  a.ws.send(JSON.stringify({ type: 'resize', cols: 132, rows: 43 }));
  await a.waitStatus(/^size: 132x43$/);
  // Pause through the page: the API's answer comes back, the state follows.
  const r = await req(f.base, 'POST', '/api/vms/vm1/pause', { Cookie: f.cookie, Origin: f.base }, '{}');
  assert.equal(r.status, 200);
  assert.equal((JSON.parse(r.text) as { status: number }).status, 204);
  await until('Paused', async () => ((await vms(f))[0]!.state === 'Paused' ? true : undefined));
  // A wrong-state action is not an error of the console: the API's answer is shown.
  const again = JSON.parse((await req(f.base, 'POST', '/api/vms/vm1/pause', { Cookie: f.cookie, Origin: f.base }, '{}')).text) as { status: number; text: string };
  assert.ok(again.status >= 400, `pausing a paused VM: ${again.status} ${again.text}`);
  a.ws.close();
  b.ws.close();
});

test('a flood of keystrokes, a huge paste, an oversized message and a viewer that vanishes', async (t) => {
  const f = await fixture(t);
  await until('serial connected', async () => ((await vms(f))[0]!.serial.state === 'connected' ? true : undefined));
  const a = viewer(f);
  await a.open;
  // A 1 MiB paste in the page's 16 KiB pieces reaches the guest whole and in order.
  const paste = Buffer.alloc(1 << 20);
  for (let i = 0; i < paste.length; i++) paste[i] = 0x21 + (i % 93);
  for (let off = 0; off < paste.length; off += 16 * 1024) a.ws.send(paste.subarray(off, off + 16 * 1024));
  await until('the whole paste', () => (Buffer.concat(f.typed).length >= paste.length ? true : undefined), 30_000);
  assert.ok(Buffer.concat(f.typed).equals(paste));
  // A guest that does not read: keystrokes wait (the viewer is told), the console's memory does
  // not grow with them (its WebSocket is not read meanwhile), and they arrive once it reads.
  f.reading.on = false;
  const before = Buffer.concat(f.typed).length;
  const chunk = Buffer.alloc(16 * 1024, 0x61);
  for (let i = 0; i < 64; i++) a.ws.send(chunk);
  await a.waitStatus(/^input: the guest is not reading its serial port/);
  f.reading.on = true;
  await until('the flood, once the guest reads', () => (Buffer.concat(f.typed).length - before >= 64 * chunk.length ? true : undefined), 30_000);
  // One message above the limit closes that viewer (1009, message too big) and nothing else.
  const big = viewer(f);
  await big.open;
  big.ws.send(Buffer.alloc(MAX_WS_MESSAGE + 1));
  await until('oversized message closes', () => (big.closed ? true : undefined));
  assert.equal(big.closed!.code, 1009);
  // A viewer that disappears without a close frame.
  const gone = viewer(f);
  await gone.open;
  gone.ws.terminate();
  await until('viewer count', async () => ((await vms(f))[0]!.serial.viewers === 1 ? true : undefined));
  guestPrints(f, 'still here\r\n');
  await a.waitOut('still here');
  assert.equal((await vms(f))[0]!.state, 'Running');
  a.ws.close();
});

test('a VM that dies while viewed, then its API socket closes: the page is told, the console goes on', async (t) => {
  const f = await fixture(t);
  await until('serial connected', async () => ((await vms(f))[0]!.serial.state === 'connected' ? true : undefined));
  const a = viewer(f);
  await a.open;
  await a.waitStatus(/^connected/);
  // The VMM ends the VM: its serial socket closes.
  f.sink.close();
  await a.waitStatus(/^disconnected: the VMM closed the serial socket/);
  // Then the VMM process goes: its API socket stops answering.
  await f.api.server.close();
  // (A poll racing the close may first see ECONNRESET; the next one names the cause.)
  const [vm] = await until('Unreachable, the cause named', async () => {
    const v = await vms(f);
    return v[0]!.state === 'Unreachable' && /API socket .* does not exist|nothing is listening/.test(v[0]!.error ?? '') ? v : undefined;
  });
  assert.equal(vm!.serial.state, 'disconnected');
  const r = JSON.parse((await req(f.base, 'POST', '/api/vms/vm1/resume', { Cookie: f.cookie, Origin: f.base }, '{}')).text) as { status: number; text: string };
  assert.equal(r.status, 0);
  assert.match(r.text, /API socket/);
  assert.equal(a.closed, null, 'the viewer stays connected to the console');
  a.ws.close();
});

test('booting a VM on an idle VMM through the page, and bad boot forms', async (t) => {
  const f = await fixture(t, { boot: false });
  await until('NotCreated', async () => ((await vms(f))[0]!.state === 'NotCreated' ? true : undefined));
  const post = async (body: object) => req(f.base, 'POST', '/api/vms/vm1/boot', { Cookie: f.cookie, Origin: f.base }, JSON.stringify(body));
  const bad = await post({ kernel: '', vcpus: 1, memoryMiB: 64 });
  assert.equal(bad.status, 400);
  assert.match(bad.text, /kernel: is required/);
  assert.match((await post({ kernel: '/k', vcpus: 0, memoryMiB: 64 })).text, /vcpus: must be an integer/);
  assert.match((await post({ kernel: '/k', vcpus: 1, memoryMiB: 64, disks: [3] })).text, /disks: must be a list/);
  const ok = JSON.parse((await post({ kernel: '/vmlinuz', initramfs: '/initrd', cmdline: 'console=ttyS0', vcpus: 2, memoryMiB: 128, disks: ['/a.img'] })).text) as { action: string; status: number };
  assert.deepEqual(ok, { ...ok, action: 'create+boot', status: 204 });
  const c = f.api.controller.config!;
  assert.equal(c.payload.kernel, '/vmlinuz');
  assert.equal(c.cpus.boot_vcpus, 2);
  assert.equal(c.memory.size, 128 << 20);
  assert.equal(c.disks?.[0]?.path, '/a.img');
  assert.equal(c.serial.mode, 'Socket', 'the console asks for a serial socket so the page can show it');
  await until('Running', async () => ((await vms(f))[0]!.state === 'Running' ? true : undefined));
  const twice = await post({ kernel: '/vmlinuz', vcpus: 1, memoryMiB: 64 });
  assert.equal(twice.status, 409);
});

test('a real stratovisor VMM waiting for vm.create: listed, a failed boot answered, its exit reported', async (t) => {
  const { spawn } = await import('node:child_process');
  const { mkdtempSync, rmSync, existsSync, writeFileSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const dir = mkdtempSync(join(tmpdir(), 'stv-console-vmm-'));
  const sock = join(dir, 'a.sock');
  const main = new URL('../cli/main.js', import.meta.url).pathname;
  const vmm = spawn(process.execPath, [main, '--api-socket', `path=${sock}`], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  vmm.stderr!.on('data', (b: Buffer) => { stderr += b.toString(); });
  const exited = new Promise<number | null>((r) => vmm.on('close', (c) => r(c)));
  const console = new ConsoleServer({ dir, pollMs: 50 });
  t.after(async () => { vmm.kill('SIGKILL'); await exited; await console.close(); rmSync(dir, { recursive: true, force: true }); });
  await until('the API socket', () => (existsSync(sock) ? true : undefined));
  const url = await console.listen();
  const base = console.baseUrl();
  const auth = { Authorization: `Bearer ${new URL(url).hash.replace('#token=', '')}`, Origin: base };
  const list = async () => (JSON.parse((await req(base, 'GET', '/api/vms', auth)).text) as { vms: VmView[] }).vms;
  const [vm] = await until('the VMM found in --dir', async () => { const v = await list(); return v[0]?.state === 'NotCreated' ? v : undefined; });
  assert.equal(vm!.socket, sock);
  // A kernel that is not one: the VMM's own answer comes back to the page, the console and the VMM go on.
  const notKernel = join(dir, 'not-a-kernel');
  writeFileSync(notKernel, 'hello');
  const r = JSON.parse((await req(base, 'POST', '/api/vms/vm1/boot', auth, JSON.stringify({ kernel: notKernel, vcpus: 1, memoryMiB: 64 }))).text) as { action: string; status: number; text: string };
  assert.ok(r.status >= 400, `boot answered ${r.status} ${r.text}`);
  assert.ok(r.text.length > 0, 'with the reason');
  assert.equal(vmm.exitCode, null, `the VMM is still up: ${stderr}`);
  // The VMM goes away: the page is told its socket does not answer.
  vmm.kill('SIGTERM');
  await exited;
  const [gone] = await until('Unreachable, the cause named', async () => {
    const v = await list();
    return v[0]?.state === 'Unreachable' && /does not exist|nothing is listening/.test(v[0].error ?? '') ? v : undefined;
  });
  assert.equal(gone!.socket, sock);
});

test('a VMM that accepts but never answers: shown Unreachable with the reason, the page and other VMs go on', async (t) => {
  const net = await import('node:net');
  const { mkdtempSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const dir = mkdtempSync(join(tmpdir(), 'stv-console-hung-'));
  const hungSock = join(dir, 'hung.sock');
  const held: import('node:net').Socket[] = [];
  const hung = net.createServer((c) => { held.push(c); c.on('error', () => {}); });
  await new Promise<void>((r) => hung.listen(hungSock, () => r()));
  const api = await startTestServer();
  const console = new ConsoleServer({ apiSockets: [hungSock, api.socketPath], pollMs: 50, pollTimeoutMs: 300 });
  t.after(async () => { await console.close(); for (const c of held) c.destroy(); hung.close(); await api.close(); rmSync(dir, { recursive: true, force: true }); });
  const url = await console.listen();
  const auth = { Authorization: `Bearer ${new URL(url).hash.replace('#token=', '')}` };
  const list = async () => (JSON.parse((await req(console.baseUrl(), 'GET', '/api/vms', auth)).text) as { vms: VmView[] }).vms;
  const v = await until('the hung VMM Unreachable and the other one answering', async () => {
    const l = await list();
    return l[0]?.state === 'Unreachable' && l[1]?.state === 'NotCreated' ? l : undefined;
  });
  assert.match(v[0]!.error!, /no answer to GET vm\.info within 0\.3 s/);
});
