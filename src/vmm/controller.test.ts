// VmmCore's lifecycle and error codes, for everything that does not need a guest to run
// (booting a stock kernel needs a KVM this host lacks: test/e2e/api.test.ts covers it).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VmmCore } from './controller.js';
import { createVmConfig, defaultDiskConfig, VmConfigError } from './config.js';
import { ApiError } from '../api/controller.js';
import { EventMonitor, withLifecycleEvents, type LifecycleEvent } from '../api/events.js';
import { ApiServer } from '../api/server.js';
import { request } from '../api/test_server.fixture.js';
import { GuestMemory } from '../memory/guest_memory.js';
import { writeSnapshot } from './snapshot.js';
import { sampleSnapshotParts } from './testing/sample_snapshot.js';

const cfg = () => createVmConfig({ payload: { kernel: '/nonexistent/stv-kernel', cmdline: 'console=ttyS0' }, memory: { size: 64 * 1024 * 1024 } });

async function rejectsWith(p: Promise<unknown>, status: number, re: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof ApiError, `expected an ApiError, got ${String(e)}`);
    assert.equal(e.status, status, e.message);
    assert.match(e.message, re);
    return true;
  });
}

test('no VM: every VM action but create and delete answers 404; delete succeeds', async () => {
  const core = new VmmCore();
  assert.equal(core.vmState, undefined);
  assert.match(core.ping().version, /^\d+\.\d+\.\d+/);
  assert.deepEqual(core.ping().features, ['kvm']);
  await rejectsWith(core.bootVm(), 404, /cannot boot: the VM is not created/);
  await rejectsWith(core.pauseVm(), 404, /not created/);
  await rejectsWith(core.resumeVm(), 404, /not created/);
  await rejectsWith(core.shutdownVm(), 404, /not created/);
  await rejectsWith(core.rebootVm(), 404, /not created/);
  await rejectsWith(core.powerButton(), 404, /not created/);
  assert.throws(() => core.info(), (e: unknown) => e instanceof ApiError && e.status === 404);
  assert.throws(() => core.counters(), (e: unknown) => e instanceof ApiError && e.status === 404);
  await core.deleteVm();
  assert.equal(core.sendInput(new Uint8Array([0x61])), 0);
});

test('created: info says Created with the config; second create 409; wrong-state 405; delete forgets it', async () => {
  const core = new VmmCore();
  const c = cfg();
  await core.createVm(c);
  const info = core.info();
  assert.equal(info.state, 'Created');
  assert.equal(info.config, c);
  assert.equal(info.memory_actual_size, 64 * 1024 * 1024);
  await rejectsWith(core.createVm(cfg()), 409, /already created/);
  await rejectsWith(core.pauseVm(), 405, /cannot pause: the VM is created \(not running\)/);
  await rejectsWith(core.resumeVm(), 405, /not paused/);
  await rejectsWith(core.shutdownVm(), 405, /not booted/);
  await rejectsWith(core.rebootVm(), 405, /not booted/);
  await rejectsWith(core.powerButton(), 405, /not booted/);
  assert.throws(() => core.counters(), (e: unknown) => e instanceof ApiError && e.status === 405);
  await core.deleteVm();
  assert.equal(core.vmState, undefined);
  assert.throws(() => core.info(), (e: unknown) => e instanceof ApiError && e.status === 404);
  // Create again after delete.
  await core.createVm(cfg());
  assert.equal(core.info().state, 'Created');
});

test('an invalid configuration is refused by create (library and CLI paths skip the API validator)', async () => {
  const core = new VmmCore();
  const bad = cfg();
  bad.cpus.boot_vcpus = 0;
  await assert.rejects(core.createVm(bad), VmConfigError);
  assert.equal(core.vmState, undefined);
});

test('a boot that fails before the guest runs leaves the VM Created, with the reason', async () => {
  const core = new VmmCore();
  await core.createVm(cfg());
  await assert.rejects(core.bootVm(), /kernel '\/nonexistent\/stv-kernel' does not exist/);
  assert.equal(core.info().state, 'Created');
  assert.equal(core.machine, undefined);
  // Still bootable later (same answer), deletable.
  await assert.rejects(core.bootVm(), /does not exist/);
  await core.deleteVm();
});

test('vmm.shutdown deletes the VM and refuses new ones', async () => {
  const core = new VmmCore();
  await core.createVm(cfg());
  await core.shutdownVmm();
  assert.equal(core.vmState, undefined);
  await assert.rejects(core.createVm(cfg()), /shutting down/);
});

test('through the HTTP API with lifecycle events: create, info, failed boot (500, no "booted"), delete', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'stv-core-'));
  const sock = join(dir, 'api.sock');
  const core = new VmmCore();
  const monitor = new EventMonitor();
  const events: LifecycleEvent[] = [];
  monitor.subscribe((e) => events.push(e));
  const server = await ApiServer.listen({ controller: withLifecycleEvents(core, monitor), socket: { path: sock } });
  try {
    const body = JSON.stringify({ payload: { kernel: '/nonexistent/stv-kernel' }, cpus: { boot_vcpus: 1, max_vcpus: 1 }, memory: { size: 67108864 }, serial: { mode: 'Tty' }, console: { mode: 'Off' } });
    assert.equal((await request(sock, 'PUT', 'vm.create', body)).status, 204);
    const info = await request(sock, 'GET', 'vm.info');
    assert.equal(info.status, 200);
    assert.equal((info.json as { state: string }).state, 'Created');
    const boot = await request(sock, 'PUT', 'vm.boot');
    assert.equal(boot.status, 500);
    assert.match(boot.text, /vm.boot failed.*does not exist/);
    assert.equal((await request(sock, 'PUT', 'vm.pause')).status, 405);
    assert.equal((await request(sock, 'GET', 'vm.counters')).status, 405);
    const pb = await request(sock, 'PUT', 'vm.power-button');
    assert.equal(pb.status, 405);
    assert.equal((await request(sock, 'PUT', 'vm.delete')).status, 204);
    assert.equal((await request(sock, 'GET', 'vm.info')).status, 404);
    assert.deepEqual(events.map((e) => `${e.source}:${e.event}`), ['vm:created', 'vm:booting', 'vm:deleted']);
  } finally {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('vm.add-fs: before boot it joins the configuration (validated: shared memory, tag, id); no VM 404; through the API', async () => {
  const core = new VmmCore();
  await rejectsWith(core.addFs({ tag: 'myfs', socket: '/run/vfsd.sock', num_queues: 1, queue_size: 1024 }), 404, /not created/);
  const c = cfg();
  c.memory.shared = true;
  await core.createVm(c);
  await core.addFs({ tag: 'myfs', socket: '/run/vfsd.sock', num_queues: 1, queue_size: 1024, id: 'fs0' });
  assert.deepEqual(core.info().config.fs, [{ tag: 'myfs', socket: '/run/vfsd.sock', num_queues: 1, queue_size: 1024, id: 'fs0' }]);
  await rejectsWith(core.addFs({ tag: 'x'.repeat(37), socket: '/s', num_queues: 1, queue_size: 1024, id: 'fs0' }), 400, /fs\[1\]\.tag: .* longer than 36 bytes; fs\[1\]\.id: "fs0" is already used/);
  assert.equal(core.info().config.fs?.length, 1, 'a refused add changes nothing');
  await core.deleteVm();
  // Private guest RAM: the error Cloud Hypervisor gives.
  await core.createVm(cfg());
  await rejectsWith(core.addFs({ tag: 'myfs', socket: '/s', num_queues: 1, queue_size: 1024 }), 400, /virtio-fs needs --memory shared=on \(guest RAM must be shareable with the vhost-user backend\)/);

  const dir = mkdtempSync(join(tmpdir(), 'stv-core-'));
  const sock = join(dir, 'api.sock');
  const core2 = new VmmCore();
  const server = await ApiServer.listen({ controller: withLifecycleEvents(core2, new EventMonitor()), socket: { path: sock } });
  try {
    const body = JSON.stringify({ payload: { kernel: '/nonexistent/stv-kernel' }, memory: { size: 67108864, shared: true } });
    assert.equal((await request(sock, 'PUT', 'vm.create', body)).status, 204);
    assert.equal((await request(sock, 'PUT', 'vm.add-fs', JSON.stringify({ tag: 'myfs', socket: '/run/v.sock', num_queues: 1, queue_size: 512 }))).status, 204);
    const info = await request(sock, 'GET', 'vm.info');
    assert.deepEqual((info.json as { config: { fs: unknown } }).config.fs, [{ tag: 'myfs', socket: '/run/v.sock', num_queues: 1, queue_size: 512 }]);
    const missing = await request(sock, 'PUT', 'vm.add-fs', JSON.stringify({ tag: 'myfs' }));
    assert.equal(missing.status, 400, missing.text);
    // fs in vm.create bodies too.
    assert.equal((await request(sock, 'PUT', 'vm.delete')).status, 204);
    const withFs = JSON.stringify({ payload: { kernel: '/k' }, memory: { size: 67108864, shared: true }, fs: [{ tag: 'a', socket: '/s', num_queues: 1, queue_size: 1024 }] });
    assert.equal((await request(sock, 'PUT', 'vm.create', withFs)).status, 204);
    const noShare = JSON.stringify({ payload: { kernel: '/k' }, fs: [{ tag: 'a', socket: '/s', num_queues: 1, queue_size: 1024 }] });
    assert.equal((await request(sock, 'PUT', 'vm.delete')).status, 204);
    const r = await request(sock, 'PUT', 'vm.create', noShare);
    assert.equal(r.status, 400);
    assert.match(r.text, /virtio-fs needs --memory shared=on/);
  } finally {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('vm.resize desired_vcpus before boot: boot_vcpus of the configuration, within 1..max_vcpus', async () => {
  const core = new VmmCore();
  const c = cfg();
  c.cpus = { ...c.cpus, boot_vcpus: 1, max_vcpus: 4 };
  await core.createVm(c);
  await core.resizeVm({ desired_vcpus: 3 });
  assert.deepEqual([core.info().config.cpus.boot_vcpus, core.info().config.cpus.max_vcpus], [3, 4]);
  await rejectsWith(core.resizeVm({ desired_vcpus: 5 }), 400, /desired_vcpus must be an integer in 1\.\.4 \(cpus\.max_vcpus\), got 5/);
  await rejectsWith(core.resizeVm({ desired_vcpus: 0 }), 400, /got 0/);
  assert.equal(core.info().config.cpus.boot_vcpus, 3, 'refused resizes change nothing');
  await core.deleteVm();
});

test('vm.resize before boot: desired_balloon becomes the balloon size of the configuration; no balloon, too large, vCPUs/RAM refused; through the API', async () => {
  const core = new VmmCore();
  await rejectsWith(core.resizeVm({ desired_balloon: 0 }), 404, /not created/);
  await core.createVm(cfg());
  await rejectsWith(core.resizeVm({ desired_balloon: 1 << 20 }), 400, /vm\.resize: the VM has no balloon device/);
  await core.deleteVm();
  const c = cfg();
  c.balloon = { size: 0, deflate_on_oom: true, free_page_reporting: false };
  await core.createVm(c);
  await core.resizeVm({ desired_balloon: 16 << 20 });
  assert.deepEqual(core.info().config.balloon, { size: 16 << 20, deflate_on_oom: true, free_page_reporting: false });
  assert.equal(core.info().memory_actual_size, 64 << 20, 'not booted: nothing is in the balloon');
  await rejectsWith(core.resizeVm({ desired_balloon: 64 << 20 }), 400, /desired_balloon: 67108864 bytes is not smaller than guest RAM \(67108864 bytes\)/);
  await rejectsWith(core.resizeVm({ desired_balloon: -1 }), 400, /desired_balloon: must be an integer number of bytes >= 0/);
  await rejectsWith(core.resizeVm({ desired_vcpus: 2, desired_balloon: 0 }), 400, /vm\.resize: desired_vcpus must be an integer in 1\.\.1 \(cpus\.max_vcpus\), got 2/);
  await rejectsWith(core.resizeVm({ desired_ram: 1 << 30 }), 400, /desired_ram: the VM has no memory to add: create it with memory\.hotplug_size/);
  assert.equal(core.info().config.balloon?.size, 16 << 20, 'refused resizes change nothing');
  await core.resizeVm({});

  const dir = mkdtempSync(join(tmpdir(), 'stv-core-'));
  const sock = join(dir, 'api.sock');
  const monitor = new EventMonitor();
  const events: string[] = [];
  monitor.on('event', (e: LifecycleEvent) => events.push(`${e.source} ${e.event}`));
  const server = await ApiServer.listen({ controller: withLifecycleEvents(core, monitor), socket: { path: sock } });
  try {
    const r = await request(sock, 'PUT', 'vm.resize', JSON.stringify({ desired_balloon: 32 << 20 }));
    assert.equal(r.status, 204, r.text);
    assert.equal(core.info().config.balloon?.size, 32 << 20);
    assert.deepEqual(events, ['vm resizing', 'vm resized']);
    const big = await request(sock, 'PUT', 'vm.resize', JSON.stringify({ desired_balloon: 1 << 30 }));
    assert.equal(big.status, 400, big.text);
  } finally {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('vm.resize desired_ram before boot, hotplug_method VirtioMem: hotplugged_size of the configuration (CH\'s rules: size..size+hotplug_size, 2 MiB blocks); Acpi adds in 128 MiB blocks; through the API', async () => {
  const MiB = 1 << 20;
  const core = new VmmCore();
  const c = cfg();
  c.memory = { ...c.memory, hotplug_method: 'VirtioMem', hotplug_size: 128 * MiB };
  await core.createVm(c);
  assert.equal(core.info().memory_actual_size, 64 * MiB, 'nothing plugged before boot');
  await core.resizeVm({ desired_ram: 96 * MiB });
  assert.equal(core.info().config.memory.hotplugged_size, 32 * MiB);
  assert.equal(core.info().memory_actual_size, 64 * MiB, 'not booted: nothing plugged yet');
  await core.resizeVm({ desired_ram: 192 * MiB });
  assert.equal(core.info().config.memory.hotplugged_size, 128 * MiB, 'the whole region');
  await core.resizeVm({ desired_ram: 64 * MiB });
  assert.equal(core.info().config.memory.hotplugged_size, 0, 'back to the boot memory');
  await rejectsWith(core.resizeVm({ desired_ram: 32 * MiB }), 400, /desired_ram: 33554432 bytes is less than the boot memory \(memory\.size 67108864\)/);
  await rejectsWith(core.resizeVm({ desired_ram: 192 * MiB + 2 * MiB }), 400, /desired_ram: 203423744 bytes is more than memory\.size \+ memory\.hotplug_size \(201326592\)/);
  await rejectsWith(core.resizeVm({ desired_ram: 65 * MiB }), 400, /desired_ram: 68157440 bytes is not memory\.size \(67108864\) plus a multiple of 2 MiB/);
  await rejectsWith(core.resizeVm({ desired_ram: 1.5 }), 400, /desired_ram: must be an integer number of bytes, got 1\.5/);
  // desired_ram is checked before desired_vcpus is applied: a refused request changes nothing.
  await rejectsWith(core.resizeVm({ desired_ram: 65 * MiB, desired_vcpus: 1 }), 400, /desired_ram/);
  assert.equal(core.info().config.memory.hotplugged_size, 0, 'refused resizes change nothing');
  const dir = mkdtempSync(join(tmpdir(), 'stv-core-'));
  const sock = join(dir, 'api.sock');
  const server = await ApiServer.listen({ controller: core, socket: { path: sock } });
  try {
    const r = await request(sock, 'PUT', 'vm.resize', JSON.stringify({ desired_ram: 128 * MiB }));
    assert.equal(r.status, 204, r.text);
    assert.equal(core.info().config.memory.hotplugged_size, 64 * MiB);
    const bad = await request(sock, 'PUT', 'vm.resize', JSON.stringify({ desired_ram: 1 << 30 }));
    assert.equal(bad.status, 400, bad.text);
    const info = await request(sock, 'GET', 'vm.info');
    assert.equal(info.status, 200, info.text);
    const body = JSON.parse(info.text) as { memory_actual_size: number; config: { memory: { hotplug_method?: string; hotplug_size?: number } } };
    assert.deepEqual([body.memory_actual_size, body.config.memory.hotplug_method, body.config.memory.hotplug_size], [64 * MiB, 'VirtioMem', 128 * MiB]);
  } finally {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  }
  await core.deleteVm();
  // hotplug_size with Acpi (CH's default method): before boot, desired_ram is what the boot plugs
  // (hotplugged_size), only more and in whole 128 MiB blocks; vm.info says the total in memory.size, as CH.
  const a = cfg();
  a.memory = { ...a.memory, hotplug_size: 300 * MiB };
  await core.createVm(a);
  const base = a.memory.size;
  await core.resizeVm({ desired_ram: base + 256 * MiB });
  assert.equal(core.info().memory_actual_size, base + 256 * MiB);
  assert.equal(core.info().config.memory.size, base + 256 * MiB);
  assert.equal(core.info().config.memory.hotplugged_size, undefined);
  await rejectsWith(core.resizeVm({ desired_ram: base + 128 * MiB }), 400, /ACPI memory hotplug only adds memory/);
  await rejectsWith(core.resizeVm({ desired_ram: base + 384 * MiB }), 400, /is more than memory\.size \+ memory\.hotplug_size \(\d+, the hotplug area in whole 128 MiB blocks\)/);
  await rejectsWith(core.resizeVm({ desired_ram: base + 320 * MiB }), 400, /is more than memory\.size \+ memory\.hotplug_size/);
  await core.deleteVm();
});

test('vm.add-vsock: before boot it joins the configuration; one per VM; bad bodies named (API and core)', async () => {
  const core = new VmmCore();
  await rejectsWith(core.addVsock({ cid: 3, socket: '/tmp/v.sock' }), 404, /cannot add a vsock device: the VM is not created/);
  const dir = mkdtempSync(join(tmpdir(), 'stv-addvsock-'));
  const sock = join(dir, 'api.sock');
  const server = await ApiServer.listen({ controller: core, socket: { path: sock } });
  try {
    assert.equal((await request(sock, 'PUT', 'vm.create', JSON.stringify({ payload: { kernel: '/nonexistent/k' } }))).status, 204);
    let r = await request(sock, 'PUT', 'vm.add-vsock', JSON.stringify({ cid: 2, socket: '/tmp/v.sock' }));
    assert.equal(r.status, 400, r.text);
    r = await request(sock, 'PUT', 'vm.add-vsock', JSON.stringify({ cid: 5, socket: '/tmp/v.sock', pci_device_id: 3 }));
    assert.equal(r.status, 400, r.text);
    assert.match(r.text, /pci_device_id: not supported yet/);
    r = await request(sock, 'PUT', 'vm.add-vsock', JSON.stringify({ cid: 5, socket: '/tmp/v.sock', id: 'vs0' }));
    assert.equal(r.status, 204, r.text);
    const info = JSON.parse((await request(sock, 'GET', 'vm.info')).text) as { config: { vsock?: unknown } };
    assert.deepEqual(info.config.vsock, { cid: 5, socket: '/tmp/v.sock', id: 'vs0' });
    r = await request(sock, 'PUT', 'vm.add-vsock', JSON.stringify({ cid: 6, socket: '/tmp/w.sock' }));
    assert.equal(r.status, 400);
    assert.match(r.text, /already has one/);
  } finally {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('vm.restore without a guest: 409 with a VM; 400 for a missing directory, OnDemand of shared memory, a config.json that is no VmConfig, a kernel that is gone; nothing is left behind', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'stv-restore-core-'));
  const mem = GuestMemory.allocate([{ gpa: 0, size: 8 * 1024 * 1024 }]);
  try {
    const snap = (name: string, config: unknown) => {
      const d = join(dir, name);
      mkdirSync(d);
      writeSnapshot(d, sampleSnapshotParts(mem, config));
      return pathToFileURL(d).href;
    };
    const core = new VmmCore();
    await core.createVm(cfg());
    await rejectsWith(core.restoreVm({ source_url: snap('a', cfg()) }), 409, /cannot restore a VM: a VM is already created/);
    await core.deleteVm();
    await rejectsWith(core.restoreVm({ source_url: pathToFileURL(join(dir, 'missing')).href }), 400, /source_url .* is not an existing directory/);
    await rejectsWith(core.restoreVm({ source_url: 'http://example.com/s' }), 400, /only file:\/\/ URLs/);
    const sharedCfg = { ...cfg(), memory: { ...cfg().memory, shared: true } };
    await rejectsWith(core.restoreVm({ source_url: snap('b', sharedCfg), memory_restore_mode: 'OnDemand' }), 400, /OnDemand needs private guest memory; this VM has memory.shared=on/);
    await rejectsWith(core.restoreVm({ source_url: snap('c', [1, 2]) }), 400, /config\.json: expected a VmConfig object/);
    await rejectsWith(core.restoreVm({ source_url: snap('d', { cpus: { boot_vcpus: 2 }, memory: { size: 8 << 20 } }) }), 400, /config\.json: .*payload: is required/);
    // A config that does not fit the state, and a valid one whose kernel is gone: refused before anything is built.
    await rejectsWith(core.restoreVm({ source_url: snap('e', cfg()) }), 400, /the snapshot has 2 vCPU state\(s\), its config 1 boot vCPU\(s\)/);
    const two = { ...cfg(), cpus: { ...cfg().cpus, boot_vcpus: 2, max_vcpus: 2 } };
    await rejectsWith(core.restoreVm({ source_url: snap('f', two) }), 400, /kernel '\/nonexistent\/stv-kernel' does not exist/);
    assert.equal(core.vmState, undefined, 'no VM after a refused restore');
    await rejectsWith(Promise.resolve().then(() => core.info()), 404, /not created/);
  } finally {
    mem.free();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('vm.add-disk / vm.remove-device before boot: the configuration changes; 409 for an id or image in use, 404 for no such device; through the API too', async () => {
  const core = new VmmCore();
  await rejectsWith(core.addDisk(defaultDiskConfig({ path: '/a.img' })), 404, /cannot add a disk: the VM is not created/);
  await rejectsWith(core.removeDevice('x'), 404, /not created/);
  await core.createVm(createVmConfig({ ...cfg(), disks: [{ path: '/root.img' }], net: [{ id: 'n0' }] }));
  assert.equal(await core.addDisk(defaultDiskConfig({ path: '/data.img', id: 'data' })), undefined);
  assert.deepEqual(core.info().config.disks?.map((d) => d.path), ['/root.img', '/data.img']);
  await rejectsWith(core.addDisk(defaultDiskConfig({ path: '/other.img', id: 'data' })), 409, /identifier 'data' is already in use/);
  await rejectsWith(core.addDisk(defaultDiskConfig({ path: '/other.img', id: 'n0' })), 409, /identifier 'n0' is already in use/);
  await rejectsWith(core.addDisk(defaultDiskConfig({ path: '/other.img', id: '_disk0' })), 409, /'_disk0' is already in use/);
  await rejectsWith(core.addDisk(defaultDiskConfig({ path: '/root.img' })), 409, /image '\/root.img' is already a disk/);
  await rejectsWith(core.removeDevice('nope'), 404, /no disk or network device 'nope'/);
  await core.removeDevice('_disk0');
  assert.deepEqual(core.info().config.disks?.map((d) => d.path), ['/data.img']);
  await core.removeDevice('n0');
  assert.deepEqual(core.info().config.net, []);

  const dir = mkdtempSync(join(tmpdir(), 'stv-add-disk-'));
  const server = await ApiServer.listen({ controller: core, socket: { path: join(dir, 'api.sock') } });
  try {
    const put = (ep: string, body: unknown) => request(server.socketPath!, 'PUT', ep, JSON.stringify(body));
    let r = await put('vm.add-disk', { path: '/api.img', readonly: true });
    assert.equal(r.status, 204, r.text);
    assert.equal(core.info().config.disks?.at(-1)?.readonly, true);
    r = await put('vm.add-disk', { path: '/x.img', num_queues: 'two' });
    assert.equal(r.status, 400);
    assert.match(r.text, /num_queues/);
    r = await put('vm.add-disk', { path: '/api.img' });
    assert.equal(r.status, 409, r.text);
    r = await put('vm.remove-device', {});
    assert.equal(r.status, 400);
    r = await put('vm.remove-device', { id: 'nope' });
    assert.equal(r.status, 404, r.text);
  } finally {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
