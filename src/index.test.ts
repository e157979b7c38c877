// The Node library (package "main"): typed calls over VmmCore, with events. Booting a guest
// needs a KVM that runs stock kernels (test/e2e/api.test.ts); here: everything before that.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createVm, Stratovisor, ApiError, type LifecycleEvent } from './index.js';
import { request } from './api/test_server.fixture.js';

const input = { payload: { kernel: '/nonexistent/stv-kernel', cmdline: 'console=ttyS0' }, memory: { size: 64 * 1024 * 1024 } };

test('package.json main/types point at this module', () => {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { main: string; types: string };
  assert.equal(pkg.main, 'dist/src/index.js');
  assert.equal(pkg.types, 'dist/src/index.d.ts');
});

test('createVm fills in defaults; info, state, events, delete, close', async () => {
  const events: string[] = [];
  const vmm = new Stratovisor();
  vmm.on('event', (e: LifecycleEvent) => events.push(`${e.source}:${e.event}`));
  assert.equal(vmm.state, undefined);
  await vmm.create(input);
  const info = vmm.info();
  assert.equal(info.state, 'Created');
  assert.equal(info.config.cpus.boot_vcpus, 1);
  assert.equal(info.config.payload.kernel, '/nonexistent/stv-kernel');
  await assert.rejects(vmm.pause(), (e: unknown) => e instanceof ApiError && e.status === 405);
  await assert.rejects(vmm.boot(), /does not exist/);
  assert.equal(vmm.state, 'Created');
  await vmm.delete();
  await vmm.close();
  assert.deepEqual(events, ['vm:created', 'vm:booting', 'vm:deleted', 'vmm:shutdown']);
});

test('resize() before boot: desired_vcpus becomes boot_vcpus, up to max_vcpus; above it a 400 naming the limit', async () => {
  const vmm = new Stratovisor();
  await vmm.create({ ...input, cpus: { boot_vcpus: 1, max_vcpus: 4 } });
  await vmm.resize({ desired_vcpus: 3 });
  assert.deepEqual([vmm.info().config.cpus.boot_vcpus, vmm.info().config.cpus.max_vcpus], [3, 4]);
  await assert.rejects(vmm.resize({ desired_vcpus: 5 }), (e: unknown) => e instanceof ApiError && e.status === 400 && /1\.\.4/.test(e.message));
  assert.equal(vmm.info().config.cpus.boot_vcpus, 3);
  await vmm.close();
});

test('events() is an async iterator of lifecycle events', async () => {
  const vmm = await createVm(input);
  const ac = new AbortController();
  const seen: string[] = [];
  const reader = (async () => {
    for await (const e of vmm.events(ac.signal)) {
      seen.push(e.event);
      if (e.event === 'deleted') ac.abort();
    }
  })();
  const deleted = vmm.waitFor('deleted');
  await vmm.delete();
  await reader;
  assert.equal((await deleted).event, 'deleted');
  assert.deepEqual(seen, ['deleted']);
  await vmm.close();
});

test('serve() exposes the same core over the REST API; vmm.shutdown over the API closes it', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'stv-lib-'));
  const sock = join(dir, 'api.sock');
  try {
    const vmm = await createVm(input);
    const server = await vmm.serve(`path=${sock}`);
    const info = await request(sock, 'GET', 'vm.info');
    assert.equal((info.json as { state: string }).state, 'Created');
    await vmm.delete();
    assert.equal((await request(sock, 'GET', 'vm.info')).status, 404);
    assert.equal((await request(sock, 'PUT', 'vm.create', JSON.stringify({ payload: { kernel: '/k' } }))).status, 204);
    assert.equal(vmm.info().config.payload.kernel, '/k');
    const closed = new Promise<void>((r) => server.server.once('close', () => r()));
    assert.equal((await request(sock, 'PUT', 'vmm.shutdown')).status, 204);
    await closed;
    assert.equal(vmm.state, undefined);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
