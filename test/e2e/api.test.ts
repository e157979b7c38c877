// The Cloud Hypervisor-compatible REST API driving a real guest (Debian's kernel):
//   a. Kata's flow: `stratovisor --api-socket path=…` waits for vm.create; create, boot, pause,
//      resume, shutdown, vmm.shutdown, with the lifecycle written to --event-monitor;
//   b. a client generated from the OpenAPI document (openapi-typescript types + openapi-fetch,
//      undici over the Unix socket) drives the lifecycle, including host reboot and boot after
//      shutdown;
//   (pause, quiesce, the command-line VM and the Node library: api_pause.test.ts).
//
// test/e2e/lib/cloud-hypervisor-api.ts is generated, not written: regenerate it with
//   npx openapi-typescript src/api/openapi/cloud-hypervisor.yaml --default-non-nullable=false -o test/e2e/lib/cloud-hypervisor-api.ts
// (src/api/generated_client.test.ts checks that it matches the document).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import createClient from 'openapi-fetch';
import { Agent, fetch as undiciFetch, Request as UndiciRequest } from 'undici';
import type { paths } from './lib/cloud-hypervisor-api.js';
import { apiRequest } from '../../src/cli/remote.js';
import { img, GUEST_TIMEOUT_MS, kataLikeConfig, sockDir, waitForPing, state, put, startVmm } from './lib/api_vmm.js';

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
