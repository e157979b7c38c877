// The API as Cloud Hypervisor's real clients (Kata Containers) speak it: Kata's own bodies,
// one kept-alive connection, and tap fds sent with the request bytes (SCM_RIGHTS).

import assert from 'node:assert/strict';
import { readdirSync, readlinkSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import * as libc from '../sys/libc.js';
import { FdClient, type RawReply } from './testing/fd_client.js';
import { KATA_RS_RESIZE_BODY, kataGoAddNetBody, kataGoAddNetRequest, kataGoVmCreateBody } from './testing/kata.js';
import { startTestServer, type TestServer } from './test_server.fixture.js';

function messages(r: RawReply): string {
  assert.ok(Array.isArray(r.json), `error body is a JSON array of strings: ${r.text}`);
  return (r.json as string[]).join(' | ');
}

function openFds(): number {
  return readdirSync('/proc/self/fd').length;
}

function memfd(name: string): number {
  return libc.memfdCreate(name, libc.MFD_CLOEXEC);
}

function fdTarget(fd: number): string {
  return readlinkSync(`/proc/self/fd/${fd}`);
}

/** Kata's Go vm.create body, whole: every feature it uses (vsock, virtio-fs on PCI segment 1) exists. */
async function createKataVm(c: FdClient, body: Record<string, unknown>): Promise<{ reply: RawReply; dropped: string[] }> {
  return { reply: await c.request('PUT', 'vm.create', body), dropped: [] };
}

describe('Kata Containers as the client', () => {
  let t: TestServer;
  let c: FdClient;
  const log: string[] = [];
  before(async () => {
    t = await startTestServer({ log: (l) => log.push(l) });
    c = await FdClient.connect(t.socketPath);
  });
  after(async () => {
    c.close();
    for (const n of t.controller.config?.net ?? []) for (const fd of n.fds ?? []) libc.close(fd);
    await t.close();
  });

  test("the Go runtime's vm.create body is accepted (204, empty body), its unknown fields logged", async () => {
    const body = kataGoVmCreateBody({ kernel: '/opt/kata/share/kata-containers/vmlinux.container', initramfs: '/opt/kata/share/kata-containers/kata-containers-initrd.img', maxVcpus: 1 });
    const { reply } = await createKataVm(c, body);
    assert.equal(reply.status, 204, reply.text);
    assert.equal(reply.text, '');
    assert.ok(log.some((l) => l.includes('ignoring unknown field serial.iommu')), log.join('\n'));
    const cfg = t.controller.config!;
    assert.equal(cfg.payload.initramfs, '/opt/kata/share/kata-containers/kata-containers-initrd.img');
    assert.equal(cfg.memory.size, 2048 * 1024 * 1024);
    assert.equal(cfg.memory.shared, true);
    assert.equal(cfg.serial.mode, 'Off');
    const info = await c.request('GET', 'vm.info');
    assert.equal(info.status, 200);
    assert.equal((info.json as { state: string }).state, 'Created');
  });

  test("the Go runtime's vm.add-net: the tap fd comes with the request (SCM_RIGHTS) and is attached", async () => {
    const fd = memfd('stv-kata-tap0');
    try {
      const r = await c.send(kataGoAddNetRequest('52:54:00:12:34:56'), [fd]);
      // CH answers 204 for a NIC added to a VM not booted yet (vmm/src/lib.rs vm_add_net).
      assert.equal(r.status, 204, r.text);
    } finally {
      libc.close(fd);
    }
    const net = t.controller.config!.net!;
    assert.equal(net.length, 1);
    assert.equal(net[0]!.mac, '52:54:00:12:34:56');
    assert.equal(net[0]!.fds?.length, 1);
    const got = net[0]!.fds![0]!;
    assert.notEqual(got, fd);
    assert.match(fdTarget(got), /^\/memfd:stv-kata-tap0/, 'the received fd is the file that was sent');
  });

  test('one connection serves request after request, also after more than 5 s idle', async () => {
    assert.equal((await c.request('GET', 'vmm.ping')).status, 200);
    await new Promise((r) => setTimeout(r, 5500));
    const r = await c.request('GET', 'vmm.ping');
    assert.equal(r.status, 200, 'the kept-alive connection still works');
    const info = await c.request('GET', 'vm.info');
    assert.equal(info.status, 200);
  });

  test("the Rust runtime's resize (nulls, no Content-Type) passes validation", async () => {
    const r = await c.request('PUT', 'vm.resize', KATA_RS_RESIZE_BODY);
    assert.equal(r.status, 500);
    assert.match(messages(r), /vm\.resize: not implemented yet in Stratovisor/);
  });

  test('vm.add-net after boot answers a clear error (hotplug is not implemented)', async () => {
    assert.equal((await c.request('PUT', 'vm.boot')).status, 204);
    const before = openFds();
    const fd = memfd('stv-late');
    const r = await c.send(kataGoAddNetRequest('52:54:00:12:34:57'), [fd]);
    libc.close(fd);
    assert.equal(r.status, 500);
    assert.match(messages(r), /vm\.add-net on a booted VM \(network device hotplug\)/);
    assert.equal(openFds(), before, 'the received fd was closed');
    assert.equal((await c.request('PUT', 'vm.shutdown')).status, 204);
  });
});

describe('fds sent with requests', () => {
  let t: TestServer;
  let c: FdClient;
  before(async () => {
    t = await startTestServer();
    c = await FdClient.connect(t.socketPath);
  });
  after(async () => {
    c.close();
    for (const n of t.controller.config?.net ?? []) for (const fd of n.fds ?? []) libc.close(fd);
    await t.close();
  });

  /** Send with `n` fresh memfds; return the reply and the fd count after (ours closed). */
  async function withFds(n: number, send: (fds: number[]) => Promise<RawReply>): Promise<{ r: RawReply; leaked: number }> {
    const before = openFds();
    const fds = Array.from({ length: n }, (_, i) => memfd(`stv-stray-${i}`));
    const r = await send(fds);
    for (const fd of fds) libc.close(fd);
    return { r, leaked: openFds() - before };
  }

  test('to an endpoint that takes none: answered, and closed', async () => {
    const { r, leaked } = await withFds(3, (fds) => c.request('GET', 'vmm.ping', undefined, fds));
    assert.equal(r.status, 200);
    assert.equal(leaked, 0, 'no received fd left open');
  });

  test('with vm.add-net before vm.create: 404, closed', async () => {
    const { r, leaked } = await withFds(1, (fds) => c.request('PUT', 'vm.add-net', kataGoAddNetBody('52:54:00:00:00:01'), fds));
    assert.equal(r.status, 404);
    assert.match(messages(r), /the VM is not created/);
    assert.equal(leaked, 0);
  });

  test('bad input: wrong type (400 naming the field), fd count mismatch, malformed JSON; all closed', async () => {
    assert.equal((await c.request('PUT', 'vm.create', { payload: { kernel: '/k' } })).status, 204);
    let x = await withFds(1, (fds) => c.request('PUT', 'vm.add-net', { ...kataGoAddNetBody('52:54:00:00:00:02'), queue_size: 'big' }, fds));
    assert.equal(x.r.status, 400);
    assert.match(messages(x.r), /queue_size: must be integer, got string/);
    assert.equal(x.leaked, 0);

    x = await withFds(1, (fds) => c.request('PUT', 'vm.add-net', { ...kataGoAddNetBody('52:54:00:00:00:03'), num_queues: 4 }, fds));
    assert.equal(x.r.status, 400);
    assert.match(messages(x.r), /num_queues: \(4\) does not match the 1 tap fd\(s\) sent with the request/);
    assert.equal(x.leaked, 0);

    x = await withFds(2, (fds) => c.request('PUT', 'vm.add-net', kataGoAddNetBody('52:54:00:00:00:04'), fds));
    assert.equal(x.r.status, 400);
    assert.match(messages(x.r), /num_queues: \(2\) does not match the 2 tap fd\(s\)/);
    assert.equal(x.leaked, 0);

    x = await withFds(1, (fds) => c.request('PUT', 'vm.add-net', '{"mac": "52:54', fds));
    assert.equal(x.r.status, 400);
    assert.match(messages(x.r), /malformed JSON/);
    assert.equal(x.leaked, 0);
    assert.equal(t.controller.config?.net, undefined, 'no NIC was added');
    assert.equal((await c.request('PUT', 'vm.delete')).status, 204);
  });

  test('vm.create: `net[].fds` placeholders take the fds sent, in order; a count mismatch is 400', async () => {
    const body = { payload: { kernel: '/k' }, cpus: { boot_vcpus: 2, max_vcpus: 2 }, net: [{ fds: [-1], mac: '52:54:00:00:00:05' }, { tap: 'tapx' }, { fds: [-1, -1], num_queues: 4 }] };
    const bad = await withFds(2, (fds) => c.request('PUT', 'vm.create', body, fds));
    assert.equal(bad.r.status, 400);
    assert.match(messages(bad.r), /2 fd\(s\) sent with the request, but the net entries list 3 fd placeholder\(s\)/);
    assert.equal(bad.leaked, 0);

    const fds = [memfd('stv-a'), memfd('stv-b'), memfd('stv-c')];
    const r = await c.request('PUT', 'vm.create', body, fds);
    for (const fd of fds) libc.close(fd);
    assert.equal(r.status, 204, r.text);
    const net = t.controller.config!.net!;
    assert.deepEqual(net.map((n) => (n.fds ?? []).map((fd) => fdTarget(fd).replace(/^\/memfd:(\S+).*$/, '$1'))), [['stv-a'], [], ['stv-b', 'stv-c']]);
  });
});
