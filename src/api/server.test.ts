import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import type { Stream } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { MemoryController } from './memory_controller.fixture.js';
import { ApiServer, parseApiSocketArg } from './server.js';
import { FULL_VM, MINIMAL_VM, request, startTestServer, tempDir, type TestServer } from './test_server.fixture.js';
import { listOperations } from './validate.js';

function messages(r: { json: unknown }): string {
  assert.ok(Array.isArray(r.json), `error body is a JSON array: ${JSON.stringify(r.json)}`);
  return (r.json as string[]).join(' | ');
}

describe('API routes', () => {
  let t: TestServer;
  before(async () => {
    t = await startTestServer();
  });
  after(async () => {
    await t.close();
  });

  test('vmm.ping answers version, build_version, pid, features', async () => {
    const r = await request(t.socketPath, 'GET', 'vmm.ping');
    assert.equal(r.status, 200);
    assert.equal(r.headers['content-type'], 'application/json');
    const v = r.json as Record<string, unknown>;
    assert.match(String(v.version), /^\d+\.\d+\.\d+/);
    assert.equal(typeof v.build_version, 'string');
    assert.equal(v.pid, process.pid);
    assert.deepEqual(v.features, ['kvm', 'test']);
  });

  test('full lifecycle: create, info, boot, counters, pause, resume, reboot, power-button, shutdown, boot, delete', async () => {
    const s = t.socketPath;
    assert.equal((await request(s, 'GET', 'vm.info')).status, 404);
    assert.equal((await request(s, 'PUT', 'vm.create', JSON.stringify(FULL_VM))).status, 204);
    let info = await request(s, 'GET', 'vm.info');
    assert.equal(info.status, 200);
    const v = info.json as { state: string; config: Record<string, Record<string, unknown>> };
    assert.equal(v.state, 'Created');
    // Defaults were applied (createVmConfig) and the body's values kept.
    assert.equal(v.config.cpus!.boot_vcpus, 2);
    assert.equal(v.config.memory!.size, 256 * 1024 * 1024);
    assert.equal((v.config.disks as unknown as Record<string, unknown>[])[0]!.queue_size, 128);
    assert.equal((v.config.console as Record<string, unknown>).mode, 'Off');

    for (const [ep, state] of [
      ['vm.boot', 'Running'],
      ['vm.pause', 'Paused'],
      ['vm.resume', 'Running'],
      ['vm.reboot', 'Running'],
      ['vm.power-button', 'Running'],
      ['vm.shutdown', 'Shutdown'],
      ['vm.boot', 'Running'],
    ] as const) {
      const r = await request(s, 'PUT', ep);
      assert.equal(r.status, 204, `${ep}: ${r.text}`);
      assert.equal(r.text, '');
      info = await request(s, 'GET', 'vm.info');
      assert.equal((info.json as { state: string }).state, state, ep);
      if (ep === 'vm.boot') {
        const c = await request(s, 'GET', 'vm.counters');
        assert.equal(c.status, 200);
        assert.equal((c.json as Record<string, Record<string, number>>)._disk0!.read_bytes, 4096);
      }
    }
    assert.equal((await request(s, 'PUT', 'vm.delete')).status, 204);
    assert.equal((await request(s, 'GET', 'vm.info')).status, 404);
    // Deleting nothing succeeds (CH vm_delete).
    assert.equal((await request(s, 'PUT', 'vm.delete')).status, 204);
  });

  test('wrong-state requests get the status the document prescribes', async () => {
    const s = t.socketPath;
    t.controller.state = undefined;
    for (const ep of ['vm.boot', 'vm.pause', 'vm.resume', 'vm.shutdown', 'vm.reboot', 'vm.power-button']) {
      const r = await request(s, 'PUT', ep);
      assert.equal(r.status, 404, ep);
      assert.match(messages(r), /not created/);
    }
    assert.equal((await request(s, 'GET', 'vm.counters')).status, 404);
    assert.equal((await request(s, 'PUT', 'vm.create', JSON.stringify(MINIMAL_VM))).status, 204);
    // Created, not booted: 405 "not booted" / "not paused".
    for (const ep of ['vm.pause', 'vm.resume', 'vm.shutdown', 'vm.reboot', 'vm.power-button']) {
      const r = await request(s, 'PUT', ep);
      assert.equal(r.status, 405, ep);
      assert.match(messages(r), /cannot .*: the VM is created/);
    }
    assert.equal((await request(s, 'GET', 'vm.counters')).status, 405);
    const again = await request(s, 'PUT', 'vm.create', JSON.stringify(MINIMAL_VM));
    assert.equal(again.status, 409);
    assert.match(messages(again), /already created/);
    assert.equal((await request(s, 'PUT', 'vm.boot')).status, 204);
    assert.equal((await request(s, 'PUT', 'vm.boot')).status, 405);
    assert.equal((await request(s, 'PUT', 'vm.resume')).status, 405);
    assert.equal((await request(s, 'PUT', 'vm.delete')).status, 204);
  });

  test('a controller failure that is not an ApiError becomes 500 with its message', async () => {
    const s = t.socketPath;
    await request(s, 'PUT', 'vm.create', JSON.stringify(MINIMAL_VM));
    t.controller.failNext = new Error('KVM_CREATE_VCPU failed: EINVAL');
    const r = await request(s, 'PUT', 'vm.boot');
    assert.equal(r.status, 500);
    assert.match(messages(r), /vm.boot failed \| KVM_CREATE_VCPU failed/);
    await request(s, 'PUT', 'vm.delete');
  });

  test('every 500 leaves its cause, with the stack, in the error log', async () => {
    const lines: string[] = [];
    const t2 = await startTestServer({ errorLog: (l) => lines.push(l) });
    try {
      const s = t2.socketPath;
      await request(s, 'PUT', 'vm.create', JSON.stringify(MINIMAL_VM));
      const err = new Error('KVM_SET_MSRS set 3 of 4 MSRs');
      t2.controller.failNext = err;
      assert.equal((await request(s, 'PUT', 'vm.boot')).status, 500);
      assert.equal(lines.length, 1);
      assert.match(lines[0]!, /^API PUT \/api\/v1\/vm.boot -> 500 caused by: Error: KVM_SET_MSRS set 3 of 4 MSRs\n/);
      assert.ok(lines[0]!.includes(err.stack!.split('\n')[1]!), 'the stack is logged');
    } finally {
      await t2.close();
    }
  });

  describe('request body validation', () => {
    const cases: [string, string | undefined, RegExp][] = [
      ['malformed JSON', '{"payload": {"kernel": "/k"', /malformed JSON/],
      ['not JSON at all', 'kernel=/k', /malformed JSON/],
      ['empty body', undefined, /request body required \(VmConfig JSON\)/],
      ['null for a required field', JSON.stringify({ payload: null }), /payload: must be object, got null/],
      ['null for a required nested field', JSON.stringify({ ...MINIMAL_VM, cpus: { boot_vcpus: 1, max_vcpus: null } }), /cpus\.max_vcpus: must be integer, got null/],
      ['wrong type next to an unknown field', JSON.stringify({ ...MINIMAL_VM, bogus: 1, rng: { src: 7 } }), /rng\.src: must be string, got integer/],
      ['wrong type', JSON.stringify({ ...MINIMAL_VM, cpus: { boot_vcpus: '2', max_vcpus: 2 } }), /cpus\.boot_vcpus: must be integer, got string/],
      ['kvm_hyperv not a boolean', JSON.stringify({ ...MINIMAL_VM, cpus: { boot_vcpus: 1, max_vcpus: 1, kvm_hyperv: 'on' } }), /cpus\.kvm_hyperv: must be boolean, got string/],
      ['wrong type at the root', '[1,2]', /must be object, got array/],
      ['missing payload', JSON.stringify({ cpus: { boot_vcpus: 1, max_vcpus: 1 } }), /payload: missing required field/],
      ['missing nested required', JSON.stringify({ ...MINIMAL_VM, cpus: { boot_vcpus: 1 } }), /cpus\.max_vcpus: missing required field/],
      ['enum', JSON.stringify({ ...MINIMAL_VM, serial: { mode: 'Serial' } }), /serial\.mode: must be one of "Off", "Pty"/],
      ['minimum', JSON.stringify({ ...MINIMAL_VM, cpus: { boot_vcpus: 0, max_vcpus: 1 } }), /cpus\.boot_vcpus: must be >= 1/],
      ['integer format range', JSON.stringify({ ...MINIMAL_VM, disks: [{ path: '/d', pci_device_id: 256 }] }), /disks\[0\]\.pci_device_id: must be an integer in uint8 range 0\.\.255, got 256/],
      ['semantic check (config.ts)', JSON.stringify({ ...MINIMAL_VM, cpus: { boot_vcpus: 4, max_vcpus: 2 } }), /cpus\.max_vcpus: \(2\) is lower than boot_vcpus/],
      ['no kernel nor firmware', JSON.stringify({ payload: {} }), /a kernel or a firmware is required/],
      ['unsupported feature', JSON.stringify({ ...MINIMAL_VM, balloon: { size: 1 << 20, pci_device_id: 3 } }), /balloon\.pci_device_id: not supported yet in Stratovisor/],
      ['balloon not smaller than RAM', JSON.stringify({ ...MINIMAL_VM, memory: { size: 256 << 20 }, balloon: { size: 256 << 20 } }), /balloon\.size: 268435456 bytes is not smaller than guest RAM/],
      ['balloon without size', JSON.stringify({ ...MINIMAL_VM, balloon: { deflate_on_oom: true } }), /balloon\.size: missing required field/],
    ];
    for (const [name, body, re] of cases) {
      test(name, async () => {
        const r = await request(t.socketPath, 'PUT', 'vm.create', body);
        assert.equal(r.status, 400, r.text);
        assert.match(messages(r), re);
        assert.equal(t.controller.state, undefined);
      });
    }

    test('cpus.kvm_hyperv: true reaches the VM\'s config (and vm.info); absent is false', async () => {
      const t2 = await startTestServer({});
      try {
        const body = { ...MINIMAL_VM, cpus: { boot_vcpus: 2, max_vcpus: 2, kvm_hyperv: true } };
        assert.equal((await request(t2.socketPath, 'PUT', 'vm.create', JSON.stringify(body))).status, 204);
        assert.equal(t2.controller.config?.cpus.kvm_hyperv, true);
        const info = await request(t2.socketPath, 'GET', 'vm.info');
        assert.equal((info.json as { config: { cpus: { kvm_hyperv: unknown } } }).config.cpus.kvm_hyperv, true);
      } finally {
        await t2.close();
      }
      const t3 = await startTestServer({});
      try {
        assert.equal((await request(t3.socketPath, 'PUT', 'vm.create', JSON.stringify(MINIMAL_VM))).status, 204);
        assert.equal(t3.controller.config?.cpus.kvm_hyperv, false);
      } finally {
        await t3.close();
      }
    });

    test('unknown fields are ignored (and logged), as Cloud Hypervisor\'s serde structs do', async () => {
      const lines: string[] = [];
      const t2 = await startTestServer({ log: (l) => lines.push(l) });
      try {
        const body = { ...MINIMAL_VM, kernel: '/k', payload: { kernel: '/k', kernal: '/x' }, serial: { mode: 'Off', iommu: false }, disks: [{ path: '/d', raedonly: true }] };
        const r = await request(t2.socketPath, 'PUT', 'vm.create', JSON.stringify(body));
        assert.equal(r.status, 204, r.text);
        assert.equal(r.text, '', 'a 204 has no body');
        for (const f of ['kernel', 'payload.kernal', 'serial.iommu', 'disks[0].raedonly']) {
          assert.ok(lines.some((l) => l.includes(`ignoring unknown field ${f}`)), `${f} logged: ${lines.join('\n')}`);
        }
        assert.equal(t2.controller.config?.payload.kernel, '/k');
        assert.equal(t2.controller.config?.disks?.[0]?.readonly, false);
      } finally {
        await t2.close();
      }
    });

    test('null for an optional field (Option<T> in CH) is the field absent', async () => {
      const body = { payload: { kernel: '/k', cmdline: null, initramfs: null }, cpus: { boot_vcpus: 1, max_vcpus: 1, topology: null }, disks: null, net: [{ mac: null, tap: 'tap9' }], platform: null };
      const r = await request(t.socketPath, 'PUT', 'vm.create', JSON.stringify(body));
      assert.equal(r.status, 204, r.text);
      const cfg = t.controller.config!;
      assert.equal(cfg.payload.cmdline, undefined);
      assert.equal(cfg.disks, undefined);
      assert.equal(cfg.net?.[0]?.mac, undefined);
      assert.equal((await request(t.socketPath, 'PUT', 'vm.delete')).status, 204);
    });

    test("Kata's Rust runtime resize body (nulls, no Content-Type) passes validation", async () => {
      // kata-containers src/runtime-rs crates/hypervisor/ch-config: VmResize with Option fields
      // serialized as null, sent by its hand-written client without a Content-Type header.
      const body = JSON.stringify({ desired_vcpus: 2, desired_ram: null, desired_balloon: null });
      const r = await request(t.socketPath, 'PUT', 'vm.resize', body);
      assert.equal(r.status, 500, r.text);
      assert.match(messages(r), /vm\.resize: not implemented yet in Stratovisor/);
      const bad = await request(t.socketPath, 'PUT', 'vm.resize', JSON.stringify({ desired_vcpus: 2, desired_ram: 'lots' }));
      assert.equal(bad.status, 400);
      assert.match(messages(bad), /desired_ram: must be integer, got string/);
    });

    test('balloon (BalloonConfig) reaches the VM\'s config with CH\'s defaults', async () => {
      const r = await request(t.socketPath, 'PUT', 'vm.create', JSON.stringify({ ...MINIMAL_VM, memory: { size: 1 << 30 }, balloon: { size: 64 << 20, free_page_reporting: true } }));
      assert.equal(r.status, 204, r.text);
      assert.deepEqual(t.controller.config!.balloon, { size: 64 << 20, deflate_on_oom: false, free_page_reporting: true });
      assert.equal((await request(t.socketPath, 'PUT', 'vm.delete')).status, 204);
    });

    test('unsupported fields that ask for nothing ([], schema defaults) are accepted', async () => {
      const body = { ...MINIMAL_VM, fs: [], pmem: [], platform: { tdx: false, iommufd: false }, landlock_enable: false, cpus: { boot_vcpus: 1, max_vcpus: 1, affinity: [] } };
      const r = await request(t.socketPath, 'PUT', 'vm.create', JSON.stringify(body));
      assert.equal(r.status, 204, r.text);
      assert.equal((await request(t.socketPath, 'PUT', 'vm.delete')).status, 204);
    });
  });

  test('documented endpoints Stratovisor lacks answer 500 "not implemented yet in Stratovisor", after validating the body', async () => {
    const s = t.socketPath;
    let r = await request(s, 'PUT', 'vm.resize', JSON.stringify({ desired_vcpus: 2 }));
    assert.equal(r.status, 500);
    assert.match(messages(r), /vm\.resize: not implemented yet in Stratovisor/);
    r = await request(s, 'PUT', 'vm.nmi');
    assert.equal(r.status, 500);
    assert.match(messages(r), /not implemented yet in Stratovisor/);
    r = await request(s, 'PUT', 'vm.resize', JSON.stringify({ desired_vcpus: 'two' }));
    assert.equal(r.status, 400);
    r = await request(s, 'PUT', 'vm.add-disk', JSON.stringify({ path: 5, bogus: 1 }));
    assert.equal(r.status, 400);
    assert.match(messages(r), /path: must be string, got integer/);
    r = await request(s, 'PUT', 'vm.snapshot');
    assert.equal(r.status, 400, 'required body missing');
  });

  test('every documented operation is routed (no 404/405 for the document method)', async () => {
    for (const op of listOperations()) {
      const r = await request(t.socketPath, op.method, op.path.slice(1), op.bodySchema ? '{}' : undefined);
      assert.ok(!(r.status === 404 && r.text.includes('unknown endpoint')), `${op.path} unrouted`);
      assert.notEqual(r.status, 405, op.path);
    }
    await request(t.socketPath, 'PUT', 'vm.delete');
  });

  test('unknown paths 404, wrong methods 405 with Allow', async () => {
    const s = t.socketPath;
    for (const p of ['vm.bogus', 'vm.boot/x', '', 'VM.BOOT']) {
      const r = await request(s, 'PUT', p);
      assert.equal(r.status, 404, p);
      assert.match(messages(r), /unknown endpoint/);
    }
    assert.equal((await request(s, 'PUT', '//vm.boot')).status, 404, 'outside /api/v1');
    assert.equal((await request(s, 'GET', '//api/v2/vmm.ping')).status, 404);
    let r = await request(s, 'GET', 'vm.boot');
    assert.equal(r.status, 405);
    assert.equal(r.headers.allow, 'PUT');
    r = await request(s, 'POST', 'vmm.ping', '{}');
    assert.equal(r.status, 405);
    assert.equal(r.headers.allow, 'GET');
    r = await request(s, 'DELETE', 'vm.delete');
    assert.equal(r.status, 405);
    // Query strings are ignored.
    assert.equal((await request(s, 'GET', 'vmm.ping?x=1')).status, 200);
  });

  test('bodies over the cap get 413 (declared length and streamed)', async () => {
    const s = t.socketPath;
    const big = Buffer.alloc(2 * 1024 * 1024, 0x20);
    let r = await request(s, 'PUT', 'vm.create', big);
    assert.equal(r.status, 413);
    assert.match(messages(r), /exceeds the limit/);
    r = await request(s, 'PUT', 'vm.create', big, { 'Transfer-Encoding': 'chunked' });
    assert.equal(r.status, 413);
    assert.equal((await request(s, 'GET', 'vmm.ping')).status, 200);
  });

  test('aborted connections and garbage do not take the server down', async () => {
    const s = t.socketPath;
    const send = (data: string, wait = true) =>
      new Promise<string>((resolve) => {
        const c = net.connect(s);
        let out = '';
        c.on('data', (d) => (out += d.toString()));
        c.on('error', () => resolve(out));
        c.on('close', () => resolve(out));
        c.on('connect', () => {
          c.write(data);
          if (!wait) c.destroy();
        });
      });
    assert.match(await send('GARBAGE\r\n\r\n'), /^HTTP\/1\.1 400/);
    assert.match(await send(`GET /api/v1/vmm.ping HTTP/1.1\r\nX: ${'a'.repeat(20000)}\r\n\r\n`), /^HTTP\/1\.1 431/);
    await send('PUT /api/v1/vm.create HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"pay', false);
    await send('PUT /api/v1/vm.create HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n', false);
    assert.match(await send('GET /api/v1/vmm.ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'), /^HTTP\/1\.1 200/);
    assert.match(await send('PUT /api/v1/vm.create HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n'), /^HTTP\/1\.1 400/);
    assert.equal((await request(s, 'GET', 'vmm.ping')).status, 200);
  });

  test('slow clients are timed out', async () => {
    const slow = await startTestServer({ headersTimeoutMs: 200, requestTimeoutMs: 300 });
    try {
      const out = await new Promise<string>((resolve) => {
        const c = net.connect(slow.socketPath);
        let o = '';
        c.on('data', (d) => (o += d.toString()));
        c.on('close', () => resolve(o));
        c.on('error', () => resolve(o));
        c.on('connect', () => c.write('PUT /api/v1/vm.create HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{'));
      });
      // The connection is closed by the server (with a 408 if it could still answer).
      assert.ok(out === '' || /^HTTP\/1\.1 408/.test(out), out);
      assert.equal((await request(slow.socketPath, 'GET', 'vmm.ping')).status, 200);
    } finally {
      await slow.close();
    }
  });
});

describe('API socket', () => {
  test('is created with mode 0600 and removed on close', async () => {
    const t = await startTestServer();
    const st = statSync(t.socketPath);
    assert.ok(st.isSocket());
    assert.equal(st.mode & 0o777, 0o600);
    // No temporary directory is left behind.
    assert.deepEqual(readdirSync(t.dir), ['api.sock']);
    await t.server.close();
    assert.equal(existsSync(t.socketPath), false);
    await t.close();
  });

  test('a stale socket file is replaced', async (ctx) => {
    const dir = tempDir();
    const path = join(dir, 'api.sock');
    try {
      // A process that binds the path and dies without unlinking it.
      const r = spawnSync(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(path)}, () => process.kill(process.pid, 'SIGKILL'))`]);
      if (!existsSync(path)) {
        ctx.skip(`could not make a stale socket (child status ${String(r.status)} ${String(r.signal)})`);
        return;
      }
      assert.ok(lstatSync(path).isSocket());
      const s = await ApiServer.listen({ controller: new MemoryController(), socket: { path } });
      assert.equal((await request(path, 'GET', 'vmm.ping')).status, 200);
      assert.equal(statSync(path).mode & 0o777, 0o600);
      await s.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('a live socket or a regular file at the path is refused, and left alone', async () => {
    const t = await startTestServer();
    try {
      await assert.rejects(ApiServer.listen({ controller: new MemoryController(), socket: { path: t.socketPath } }), /in use by another process/);
      assert.equal((await request(t.socketPath, 'GET', 'vmm.ping')).status, 200);
      const file = join(t.dir, 'file');
      writeFileSync(file, 'keep me');
      await assert.rejects(ApiServer.listen({ controller: new MemoryController(), socket: { path: file } }), /exists and is not a socket/);
      assert.ok(lstatSync(file).isFile());
    } finally {
      await t.close();
    }
  });

  test('fd=N: listens on an inherited listening socket', async (ctx) => {
    const dir = tempDir();
    const path = join(dir, 'fd.sock');
    const moved = join(dir, 'moved.sock');
    const holder = net.createServer();
    await new Promise<void>((r) => holder.listen(path, r));
    const script = `
      const { ApiServer } = await import(${JSON.stringify(new URL('./server.js', import.meta.url).href)});
      const { MemoryController } = await import(${JSON.stringify(new URL('./memory_controller.fixture.js', import.meta.url).href)});
      const s = await ApiServer.listen({ controller: new MemoryController(), socket: { fd: 3 } });
      s.once('vmm-shutdown', () => s.close().then(() => process.exit(0)));
      process.stdout.write('ready\\n');`;
    // The child inherits the listening socket as fd 3 (Node dups a handle given in stdio).
    // (getValidStdio takes any object with a _handle; it pauses it in the parent.)
    const inherit = { _handle: (holder as unknown as { _handle: unknown })._handle, pause() {}, _readableState: {} } as unknown as Stream;
    let child: ReturnType<typeof spawn>;
    try {
      child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit', inherit] });
    } catch (e) {
      holder.close();
      rmSync(dir, { recursive: true, force: true });
      ctx.skip(`this Node cannot pass a listening handle to a child through stdio: ${(e as Error).message}`);
      return;
    }
    try {
      // Move the socket file away before closing our handle (closing unlinks the bound path),
      // so only the child accepts connections.
      renameSync(path, moved);
      await new Promise<void>((r) => holder.close(() => r()));
      await new Promise<void>((resolve, reject) => {
        child.stdout!.on('data', (d: Buffer) => {
          if (d.toString().includes('ready')) resolve();
        });
        child.once('exit', (code) => reject(new Error(`child exited ${String(code)}`)));
      });
      const r = await request(moved, 'GET', 'vmm.ping');
      assert.equal(r.status, 200);
      assert.equal((r.json as { pid: number }).pid, child.pid);
      const exited = new Promise<number | null>((r2) => child.once('exit', (code) => r2(code)));
      assert.equal((await request(moved, 'PUT', 'vmm.shutdown')).status, 204);
      assert.equal(await exited, 0);
    } finally {
      child.kill();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('in a directory too long for a temporary name next to the socket, it is bound in place, still 0600', async () => {
    const top = tempDir();
    // sun_path holds 107 bytes; the temporary name adds 26 to the directory.
    const dir = join(top, 'd'.repeat(95 - Buffer.byteLength(top)));
    mkdirSync(dir);
    const path = join(dir, 'a.sock');
    assert.ok(Buffer.byteLength(path) <= 107 && Buffer.byteLength(dir) + 26 > 107);
    try {
      const s = await ApiServer.listen({ controller: new MemoryController(), socket: { path } });
      assert.equal(statSync(path).mode & 0o777, 0o600);
      assert.equal((await request(path, 'GET', 'vmm.ping')).status, 200);
      assert.deepEqual(readdirSync(dir), ['a.sock']);
      await s.close();
      assert.equal(existsSync(path), false);
      await assert.rejects(ApiServer.listen({ controller: new MemoryController(), socket: { path: join(dir, 'x'.repeat(20)) } }), /too long for a Unix socket/);
    } finally {
      rmSync(top, { recursive: true, force: true });
    }
  });

  test('vmm.shutdown answers 204 then emits vmm-shutdown', async () => {
    const t = await startTestServer();
    try {
      const emitted = new Promise<void>((r) => t.server.once('vmm-shutdown', r));
      const r = await request(t.socketPath, 'PUT', 'vmm.shutdown');
      assert.equal(r.status, 204);
      await emitted;
      assert.equal(t.controller.vmmShutdown, true);
    } finally {
      await t.close();
    }
  });

  test('parseApiSocketArg', () => {
    assert.deepEqual(parseApiSocketArg('path=/run/a.sock'), { path: '/run/a.sock' });
    assert.deepEqual(parseApiSocketArg('/run/a.sock'), { path: '/run/a.sock' });
    assert.deepEqual(parseApiSocketArg('fd=3'), { fd: 3 });
    assert.throws(() => parseApiSocketArg('fd=x'), /fd must be a non-negative integer/);
    assert.throws(() => parseApiSocketArg('path='), /path or fd required/);
  });
});
