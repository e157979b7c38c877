// The Cloud Hypervisor-compatible REST API driving a real guest (Debian's kernel):
//   a. Kata's flow: `stratovisor --api-socket path=…` waits for vm.create; create, boot, pause,
//      resume, shutdown, vmm.shutdown, with the lifecycle written to --event-monitor;
//   b. a client generated from the OpenAPI document (openapi-typescript types + openapi-fetch,
//      undici over the Unix socket) drives the lifecycle, including host reboot and boot after
//      shutdown;
//   c. pause stops the vCPUs: a command typed while paused is answered only after resume; a
//      guest power-off leaves an API-created VM in Shutdown with the VMM still up;
//   d. a VM given on the command line with --api-socket: the guest's power-off ends the VMM;
//   e. the Node library (src/index.ts) boots, pauses, resumes a guest in-process and reports
//      its power-off as events;
//   f. pause quiesces the devices: a guest writing its virtio-blk disk without pause leaves the
//      image unchanged for seconds while Paused; after resume its writes go on and it powers off.
//
// test/e2e/lib/cloud-hypervisor-api.ts is generated, not written: regenerate it with
//   npx openapi-typescript src/api/openapi/cloud-hypervisor.yaml --default-non-nullable=false -o test/e2e/lib/cloud-hypervisor-api.ts
// (the first test checks that it matches the document).
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import createClient from 'openapi-fetch';
import { Agent, fetch as undiciFetch, Request as UndiciRequest } from 'undici';
import { guestImages, parseMarkers, REPO, type Marker } from './lib/guest.js';
import { STRATOVISOR } from './lib/stratovisor.js';
import type { paths, components } from './lib/cloud-hypervisor-api.js';
import { apiRequest } from '../../src/cli/remote.js';
import { waitForPing as waitForVmmPing } from '../../src/api/testing/spawn_vmm.js';
import { Stratovisor, type LifecycleEvent, type VmExitInfo } from '../../src/index.js';

const img = guestImages();
const LOG_DIR = join(REPO, '.cache', 'e2e-logs');
const GUEST_TIMEOUT_MS = 240_000;

type VmConfig = components['schemas']['VmConfig'];

/** A VmConfig as Kata Containers' clh.go builds it (minus the devices Stratovisor lacks). */
function kataLikeConfig(scenario: string): VmConfig {
  return {
    payload: { kernel: img.bzImage, initramfs: img.initramfs, cmdline: `console=ttyS0 quiet stv.scenario=${scenario}` },
    cpus: { boot_vcpus: 2, max_vcpus: 2 },
    memory: { size: 512 * 1024 * 1024, shared: true },
    rng: { src: '/dev/urandom' },
    serial: { mode: 'Tty' },
    console: { mode: 'Off' },
    iommu: false,
  };
}

/** A stratovisor process: its console (stdout), markers, and exit. */
class VmmProcess {
  stdout = '';
  stderr = '';
  readonly markers: Marker[] = [];
  readonly exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private readonly t0 = performance.now();
  private scanFrom = 0;
  private waiters: Array<() => void> = [];
  private exited = false;
  readonly child;
  readonly logFile: string;

  constructor(name: string, args: string[]) {
    mkdirSync(LOG_DIR, { recursive: true });
    this.logFile = join(LOG_DIR, `${name}.log`);
    this.child = spawn(process.execPath, [STRATOVISOR, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.child.stdin.on('error', () => {});
    this.child.stdout.on('data', (b: Buffer) => {
      this.stdout += b.toString('latin1');
      const lastNl = this.stdout.lastIndexOf('\n');
      if (lastNl >= this.scanFrom) {
        const chunk = this.stdout.slice(this.scanFrom, lastNl + 1);
        this.scanFrom = lastNl + 1;
        for (const m of parseMarkers(chunk)) this.markers.push({ ...m, atMs: performance.now() - this.t0 });
      }
      this.wake();
    });
    this.child.stderr.on('data', (b: Buffer) => { this.stderr += b.toString('latin1'); });
    this.exit = new Promise((resolve) => {
      this.child.on('close', (code, signal) => {
        this.exited = true;
        writeFileSync(this.logFile, `$ stratovisor ${args.join(' ')}\n${this.stdout}\n--- stderr ---\n${this.stderr}\n[exit ${code ?? signal}]\n`);
        this.wake();
        resolve({ code, signal });
      });
    });
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** Resolves at the next change (output or exit). */
  private changed(): Promise<void> {
    return new Promise((r) => this.waiters.push(r));
  }

  count(event: string, data?: string): number {
    return this.markers.filter((m) => m.event === event && (data === undefined || m.data === data)).length;
  }

  /** Wait until `count` markers `event` (with `data`, if given) have been seen. */
  async waitMarker(event: string, count = 1, data?: string): Promise<void> {
    while (this.count(event, data) < count) {
      if (this.exited) throw new Error(`VMM exited before marker ${event}${data ? `:${data}` : ''} #${count}\n${this.explain()}`);
      await this.changed();
    }
  }

  send(s: string): void {
    this.child.stdin.write(s);
  }

  explain(lines = 25): string {
    return `log: ${this.logFile}\n--- last ${lines} console lines ---\n${this.stdout.split('\n').slice(-lines).join('\n')}\n--- stderr ---\n${this.stderr.slice(-3000)}`;
  }

  kill(): void {
    if (!this.exited) this.child.kill('SIGKILL');
  }
}

function sockDir(): string {
  // $TMPDIR is a tmpfs inside the sandbox.
  return mkdtempSync(join(process.env.TMPDIR ?? tmpdir(), 'stv-api-'));
}

/** The shared helper (src/api/testing/spawn_vmm.ts), with this VMM's console for errors. */
async function waitForPing(sock: string, vmm: VmmProcess): Promise<void> {
  await waitForVmmPing(sock, vmm.child, { explain: () => vmm.explain() });
}

async function state(sock: string): Promise<string> {
  const r = await apiRequest(sock, 'GET', 'vm.info');
  assert.equal(r.status, 200, r.text);
  return (JSON.parse(r.text) as { state: string }).state;
}

async function put(sock: string, endpoint: string, body?: unknown): Promise<void> {
  const r = await apiRequest(sock, 'PUT', endpoint, body === undefined ? undefined : JSON.stringify(body));
  assert.equal(r.status, 204, `${endpoint}: ${r.status} ${r.text}`);
}

function startVmm(t: TestContext, name: string, args: string[]): VmmProcess {
  const vmm = new VmmProcess(name, args);
  t.after(() => vmm.kill());
  return vmm;
}

test('the committed client types match what openapi-typescript generates from the document', async () => {
  const { default: openapiTS, astToString } = await import('openapi-typescript');
  const ast = await openapiTS(new URL(`file://${join(REPO, 'src', 'api', 'openapi', 'cloud-hypervisor.yaml')}`), { defaultNonNullable: false });
  const header = '/**\n * This file was auto-generated by openapi-typescript.\n * Do not make direct changes to the file.\n */\n\n';
  const committed = readFileSync(join(REPO, 'test', 'e2e', 'lib', 'cloud-hypervisor-api.ts'), 'utf8');
  assert.equal(committed, header + astToString(ast), 'regenerate with: npx openapi-typescript src/api/openapi/cloud-hypervisor.yaml --default-non-nullable=false -o test/e2e/lib/cloud-hypervisor-api.ts');
});

test('Kata-like flow: --api-socket, ping until ready, create, boot, pause, resume, shutdown, vmm.shutdown (exit 0), events', { timeout: GUEST_TIMEOUT_MS }, async (t) => {
  const dir = sockDir();
  const sock = join(dir, 'clh.sock');
  const evFile = join(dir, 'events.jsonl');
  const vmm = startVmm(t, 'stv-api-kata', ['--api-socket', `path=${sock}`, '--event-monitor', `path=${evFile}`]);
  await waitForPing(sock, vmm);
  const ping = JSON.parse((await apiRequest(sock, 'GET', 'vmm.ping')).text) as { version: string; pid: number };
  assert.equal(ping.pid, vmm.child.pid);
  assert.equal((await apiRequest(sock, 'GET', 'vm.info')).status, 404);

  await put(sock, 'vm.create', kataLikeConfig('wait'));
  assert.equal(await state(sock), 'Created');
  await put(sock, 'vm.boot');
  // The serial console (tty) is the VMM's stdout.
  await vmm.waitMarker('init');
  assert.equal(await state(sock), 'Running', vmm.explain());
  await vmm.waitMarker('waiting');
  await put(sock, 'vm.pause');
  assert.equal(await state(sock), 'Paused');
  await put(sock, 'vm.resume');
  assert.equal(await state(sock), 'Running');
  await put(sock, 'vm.shutdown');
  assert.equal(await state(sock), 'Shutdown');
  await put(sock, 'vmm.shutdown');
  const exit = await vmm.exit;
  assert.equal(exit.code, 0, vmm.explain());
  assert.equal(vmm.count('poweroff'), 0, 'the host shut the guest down; it did not power off by itself');

  const events = readFileSync(evFile, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { source: string; event: string });
  assert.deepEqual(events.map((e) => `${e.source}:${e.event}`), [
    'vmm:starting', 'vm:created', 'vm:booting', 'vm:booted', 'vm:pausing', 'vm:paused', 'vm:resuming', 'vm:resumed',
    'vm:shutdown', 'vm:deleted', 'vmm:shutdown',
  ]);
});

test('a client generated from the OpenAPI document drives create, boot, info, pause, resume, reboot, shutdown, boot again, delete', { timeout: GUEST_TIMEOUT_MS * 2 }, async (t) => {
  const dir = sockDir();
  const sock = join(dir, 'api.sock');
  const vmm = startVmm(t, 'stv-api-generated-client', ['--api-socket', sock]);
  await waitForPing(sock, vmm);
  const agent = new Agent({ connect: { socketPath: sock } });
  t.after(() => agent.close());
  const api = createClient<paths>({
    baseUrl: 'http://localhost/api/v1',
    fetch: undiciFetch as unknown as (input: Request) => Promise<Response>,
    Request: UndiciRequest as unknown as typeof Request,
    requestInitExt: { dispatcher: agent },
  });
  const info = async () => {
    const r = await api.GET('/vm.info');
    assert.equal(r.response.status, 200);
    return r.data!;
  };

  const ping = await api.GET('/vmm.ping');
  assert.equal(ping.data?.pid, vmm.child.pid);
  assert.equal((await api.PUT('/vm.create', { body: kataLikeConfig('shell') })).response.status, 204);
  assert.equal((await info()).state, 'Created');
  assert.equal((await info()).config.payload.kernel, img.bzImage);
  assert.equal((await api.PUT('/vm.boot')).response.status, 204);
  await vmm.waitMarker('scenario', 1, 'shell');
  const running = await info();
  assert.equal(running.state, 'Running');
  assert.equal(running.memory_actual_size, 512 * 1024 * 1024);
  // Per-device counters, as CH reports them: this VM has only the default virtio-rng device, and
  // its well-behaved guest sent no malformed requests.
  const counters = await api.GET('/vm.counters');
  assert.equal(counters.response.status, 200);
  assert.deepEqual(counters.data, { _rng0: { malformed_requests: 0 } });
  // (vm.power-button powers the guest off now: test/e2e/power_button.test.ts.)
  assert.equal((await api.PUT('/vm.pause')).response.status, 204);
  assert.equal((await info()).state, 'Paused');
  assert.equal((await api.PUT('/vm.boot')).response.status, 405);
  assert.equal((await api.PUT('/vm.resume')).response.status, 204);
  assert.equal((await info()).state, 'Running');

  // Host reboot: a fresh VM from the stored config (the guest's init runs again).
  assert.equal((await api.PUT('/vm.reboot')).response.status, 204);
  assert.equal((await info()).state, 'Running');
  await vmm.waitMarker('scenario', 2, 'shell');

  assert.equal((await api.PUT('/vm.shutdown')).response.status, 204);
  assert.equal((await info()).state, 'Shutdown');
  assert.equal((await api.PUT('/vm.pause')).response.status, 405);
  // CH allows vm.boot after vm.shutdown.
  assert.equal((await api.PUT('/vm.boot')).response.status, 204);
  assert.equal((await info()).state, 'Running');
  await vmm.waitMarker('scenario', 3, 'shell');

  assert.equal((await api.PUT('/vm.delete')).response.status, 204);
  assert.equal((await api.GET('/vm.info')).response.status, 404);
  assert.equal((await api.PUT('/vmm.shutdown')).response.status, 204);
  assert.equal((await vmm.exit).code, 0, vmm.explain());
});

test('pause stops the vCPUs: a command typed while paused is answered only after resume; guest poweroff leaves the VM in Shutdown', { timeout: GUEST_TIMEOUT_MS }, async (t) => {
  const dir = sockDir();
  const sock = join(dir, 'api.sock');
  const vmm = startVmm(t, 'stv-api-pause', ['--api-socket', `path=${sock}`]);
  await waitForPing(sock, vmm);
  await put(sock, 'vm.create', kataLikeConfig('shell'));
  await put(sock, 'vm.boot');
  await vmm.waitMarker('scenario', 1, 'shell');
  // The shell answers (the echoed input cannot match a marker; only the computed output can).
  const ask = (tag: string, a: number, b: number) => vmm.send(`echo "@@stv:${tag}:$((${a}*${b}))@""@"\n`);
  ask('ready', 2, 3);
  await vmm.waitMarker('ready', 1, '6');

  await put(sock, 'vm.pause');
  assert.equal(await state(sock), 'Paused');
  // Let the device thread flush what the guest wrote before it stopped.
  await new Promise((r) => setTimeout(r, 1000));
  const before = vmm.stdout.length;
  ask('tick', 6, 7);
  await new Promise((r) => setTimeout(r, 3000));
  assert.equal(vmm.count('tick'), 0, `answered while paused\n${vmm.explain()}`);
  assert.equal(vmm.stdout.slice(before), '', 'no guest output at all while paused (not even the echo of the typed line)');
  assert.equal(await state(sock), 'Paused');

  await put(sock, 'vm.resume');
  await vmm.waitMarker('tick', 1, '42');
  assert.equal(await state(sock), 'Running');

  // A guest power-off: an API-created VM goes to Shutdown and the VMM stays up.
  vmm.send('poweroff\n');
  while ((await state(sock)) !== 'Shutdown') await new Promise((r) => setTimeout(r, 100));
  assert.equal((await apiRequest(sock, 'GET', 'vmm.ping')).status, 200);
  assert.equal((await apiRequest(sock, 'PUT', 'vm.shutdown')).status, 405);
  await put(sock, 'vmm.shutdown');
  assert.equal((await vmm.exit).code, 0, vmm.explain());
});

test('pause quiesces the devices: a guest writing its disk continuously leaves the image unchanged while paused; after resume the writes go on and it powers off cleanly', { timeout: GUEST_TIMEOUT_MS }, async (t) => {
  const dir = sockDir();
  const sock = join(dir, 'api.sock');
  const disk = join(dir, 'disk.img');
  writeFileSync(disk, new Uint8Array(4 << 20));
  const imageHash = () => createHash('sha256').update(readFileSync(disk)).digest('hex');
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  const vmm = startVmm(t, 'stv-api-pause-quiesce', ['--api-socket', `path=${sock}`]);
  await waitForPing(sock, vmm);
  await put(sock, 'vm.create', { ...kataLikeConfig('shell'), disks: [{ path: disk }] });
  await put(sock, 'vm.boot');
  await vmm.waitMarker('scenario', 1, 'shell');
  // The guest writes /dev/vda without pause: each round a 512-byte record at the next sector,
  // flushed (conv=fsync: a write and a FLUSH request to virtio-blk), its count kept in /tmp/n.
  vmm.send('i=0; while :; do i=$((i+1)); echo "stv write $i" | dd of=/dev/vda bs=512 seek=$((i % 8192)) conv=notrunc,fsync 2>/dev/null; echo $i > /tmp/n; done &\n');
  const count = async (k: number): Promise<number> => {
    vmm.send(`echo "@@stv:n:$(cat /tmp/n 2>/dev/null || echo 0)@""@"\n`);
    await vmm.waitMarker('n', k);
    return Number(vmm.markers.filter((m) => m.event === 'n')[k - 1]!.data);
  };
  const h0 = imageHash();
  while (imageHash() === h0) await sleep(200); // the writes reach the image
  const n1 = await count(1);

  await put(sock, 'vm.pause');
  const hp = imageHash();
  assert.equal(await state(sock), 'Paused');
  // Quiesced: nothing reaches the image while paused, however long (here 5 s, checked 10 times).
  for (let k = 0; k < 10; k++) {
    await sleep(500);
    assert.equal(imageHash(), hp, `the image changed while paused (after ${(k + 1) * 500} ms)\n${vmm.explain()}`);
  }
  assert.equal(await state(sock), 'Paused');

  await put(sock, 'vm.resume');
  assert.equal(await state(sock), 'Running');
  while (imageHash() === hp) await sleep(200); // the guest's writes go on
  const n2 = await count(2);
  assert.ok(n2 > n1, `the write loop went on after resume (${n1} -> ${n2})`);
  t.diagnostic(`guest write rounds: ${n1} before the pause, ${n2} after resume`);

  vmm.send('kill %1; poweroff\n');
  while ((await state(sock)) !== 'Shutdown') await sleep(100);
  assert.equal(vmm.count('poweroff'), 1, vmm.explain());
  await put(sock, 'vmm.shutdown');
  assert.equal((await vmm.exit).code, 0, vmm.explain());
});

test('a VM given on the command line with --api-socket is served by the API and ends the VMM when the guest powers off', { timeout: GUEST_TIMEOUT_MS }, async (t) => {
  const dir = sockDir();
  const sock = join(dir, 'api.sock');
  const vmm = startVmm(t, 'stv-api-cli-payload', [
    '--api-socket', sock, '--kernel', img.bzImage, '--initramfs', img.initramfs,
    '--cmdline', 'console=ttyS0 quiet stv.scenario=wait', '--cpus', 'boot=1', '--memory', 'size=256M', '--serial', 'tty', '--console', 'off',
  ]);
  await waitForPing(sock, vmm);
  await vmm.waitMarker('init');
  assert.equal(await state(sock), 'Running');
  await vmm.waitMarker('waiting');
  vmm.send('\n'); // `wait` powers off once a line arrives
  const exit = await vmm.exit;
  assert.equal(vmm.count('poweroff'), 1, vmm.explain());
  assert.equal(exit.code, 0, vmm.explain());
});

test('the Node library boots a guest in-process: events, pause/resume, input, and the guest power-off', { timeout: GUEST_TIMEOUT_MS }, async () => {
  const dir = sockDir();
  const serialFile = join(dir, 'serial.log');
  const vmm = new Stratovisor();
  const events: string[] = [];
  vmm.on('event', (e: LifecycleEvent) => events.push(`${e.source}:${e.event}${e.properties?.reason ? `(${e.properties.reason})` : ''}`));
  const exited = new Promise<VmExitInfo>((r) => vmm.once('exit', r));
  const serial = () => { try { return readFileSync(serialFile, 'latin1'); } catch { return ''; } };
  const explainLib = () => `events: ${events.join(' ')}\n--- serial (${serialFile}) ---\n${serial().split('\n').slice(-25).join('\n')}`;
  const waitSerial = async (event: string) => {
    while (!parseMarkers(serial()).some((m) => m.event === event)) {
      assert.notEqual(vmm.state, 'Shutdown', `guest stopped before ${event}\n${explainLib()}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  try {
    await vmm.create({ ...kataLikeConfig('wait'), cpus: { boot_vcpus: 1, max_vcpus: 1 }, serial: { mode: 'File', file: serialFile } });
    assert.equal(vmm.info().state, 'Created');
    await vmm.boot();
    assert.equal(vmm.state, 'Running');
    await waitSerial('waiting');
    await vmm.pause();
    assert.equal(vmm.info().state, 'Paused');
    await vmm.resume();
    assert.equal(vmm.sendInput('go\n') > 0, true);
    const info = await exited;
    assert.equal(info.reason, 'poweroff', explainLib());
    assert.equal(vmm.state, 'Shutdown');
    assert.ok(parseMarkers(serial()).some((m) => m.event === 'poweroff'), explainLib());
  } finally {
    await vmm.close();
    mkdirSync(LOG_DIR, { recursive: true });
    writeFileSync(join(LOG_DIR, 'stv-api-library.log'), `${serial()}\n--- events ---\n${events.join('\n')}\n`);
  }
  // ('vmm:starting' is emitted by the constructor, before anyone can subscribe.)
  assert.deepEqual(events, [
    'vm:created', 'vm:booting', 'vm:booted', 'vm:pausing', 'vm:paused', 'vm:resuming', 'vm:resumed',
    'vm:shutdown(poweroff)', 'vm:deleted', 'vmm:shutdown',
  ]);
});
