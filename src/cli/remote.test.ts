import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { FULL_VM, startTestServer, type TestServer } from '../api/test_server.fixture.js';
import { apiRequest, ApiConnectionError, runRemote } from './remote.js';

interface Run {
  code: number;
  out: string;
  err: string;
}

async function remote(...argv: string[]): Promise<Run> {
  let out = '';
  let err = '';
  const code = await runRemote(argv, { stdout: (s) => (out += s), stderr: (s) => (err += s) });
  return { code, out, err };
}

describe('stratovisor remote', () => {
  let t: TestServer;
  let sock: string;
  before(async () => {
    t = await startTestServer();
    sock = t.socketPath;
  });
  after(async () => {
    await t.close();
  });

  test('snapshot URL and restore source_url=…,prefault=on,resume=off (or a bare URL): the bodies vm.snapshot and vm.restore get; bad options exit 2', async () => {
    t.controller.state = undefined;
    let r = await remote('--api-socket', sock, 'restore', 'source_url=file:///tmp/snap,prefault=on,resume=off');
    assert.equal(r.code, 0, r.err);
    assert.equal(r.out, 'VM restored\n');
    assert.deepEqual(t.controller.restores.at(-1), { source_url: 'file:///tmp/snap', prefault: true, resume: false });
    assert.equal(t.controller.state, 'Paused');
    r = await remote('--api-socket', sock, 'snapshot', 'file:///tmp/snap2');
    assert.equal(r.code, 0, r.err);
    assert.equal(t.controller.snapshots.at(-1), 'file:///tmp/snap2');
    r = await remote('--api-socket', sock, 'restore', 'file:///tmp/snap');
    assert.equal(r.code, 1, 'a VM exists: the API refuses');
    assert.match(r.err, /vm\.restore failed: 409/);
    t.controller.state = undefined;
    r = await remote('--api-socket', sock, 'restore', 'file:///tmp/snap');
    assert.equal(r.code, 0, r.err);
    assert.deepEqual(t.controller.restores.at(-1), { source_url: 'file:///tmp/snap' });
    for (const [arg, why] of [['prefault=on', /source_url= is required/], ['source_url=file:///x,resume=maybe', /resume=maybe: expected on or off/], ['source_url=file:///x,speed=9', /unknown key "speed"/]] as const) {
      r = await remote('--api-socket', sock, 'restore', arg);
      assert.equal(r.code, 2, arg);
      assert.match(r.err, why);
    }
    t.controller.state = undefined;
  });

  test('resize --balloon <size> (ch-remote syntax): the VmResize body passes the API\'s validation; bad options exit 2', async () => {
    for (const args of [['--balloon', '256M'], ['--balloon=1G', '--cpus', '2']]) {
      const r = await remote('--api-socket', sock, 'resize', ...args);
      // The test server's controller has no resizeVm: a valid body reaches it (500, not 400).
      assert.equal(r.code, 1, r.err);
      assert.match(r.err, /vm\.resize failed: 500 .*\n.*vm\.resize: not implemented yet in Stratovisor/s);
    }
    for (const [args, why] of [[[], /resize: give --balloon <size>/], [['--balloon', 'lots'], /resize: bad value "lots" for --balloon/], [['--balloon'], /resize: --balloon needs a value/], [['--swap', '1G'], /resize: unknown option "--swap"/], [['--cpus', '1.5'], /bad value "1\.5" for --cpus/]] as const) {
      const r = await remote('--api-socket', sock, 'resize', ...args);
      assert.equal(r.code, 2, args.join(' '));
      assert.match(r.err, why);
    }
  });

  test('ping, human-readable and --json', async () => {
    let r = await remote('remote', '--api-socket', sock, 'ping');
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /^version: \d+\.\d+\.\d+\nbuild_version: .*\npid: \d+\nfeatures: kvm, test\n$/);
    r = await remote('--api-socket', sock, 'ping', '--json');
    assert.equal(r.code, 0);
    assert.equal((JSON.parse(r.out) as { pid: number }).pid, process.pid);
  });

  test('create FILE, info, boot, counters, pause, resume, reboot, power-button, shutdown, delete', async () => {
    const file = join(t.dir, 'vm.json');
    writeFileSync(file, JSON.stringify(FULL_VM));
    let r = await remote('--api-socket', sock, 'create', file);
    assert.deepEqual(r, { code: 0, out: 'VM created\n', err: '' });
    r = await remote('--api-socket', sock, 'info');
    assert.equal(r.code, 0);
    assert.match(r.out, /^state: Created\ncpus: 2 \(max 2\)\nmemory: 256 MiB \(actual 256 MiB\)\nkernel: \/boot\/vmlinuz\n/);
    assert.match(r.out, /disk disk0: \/tmp\/disk\.raw \(readonly\)\n/);
    r = await remote('--api-socket', sock, 'info', '--json');
    assert.equal((JSON.parse(r.out) as { state: string }).state, 'Created');
    for (const [cmd, msg] of [
      ['boot', 'VM booted'],
      ['pause', 'VM paused'],
      ['resume', 'VM resumed'],
      ['reboot', 'VM rebooted'],
      ['power-button', 'power button pressed'],
    ]) {
      r = await remote('--api-socket', sock, cmd!);
      assert.deepEqual(r, { code: 0, out: `${msg!}\n`, err: '' }, cmd);
    }
    r = await remote('--api-socket', sock, 'counters');
    assert.equal(r.out, '_disk0:\n  read_bytes: 4096\n  read_ops: 1\n  write_bytes: 0\n  write_ops: 0\n');
    r = await remote('--api-socket', sock, 'counters', '--json');
    assert.deepEqual(JSON.parse(r.out), { _disk0: { read_bytes: 4096, write_bytes: 0, read_ops: 1, write_ops: 0 } });
    r = await remote('--api-socket', sock, 'shutdown');
    assert.equal(r.out, 'VM shut down\n');
    r = await remote('--api-socket', sock, 'delete');
    assert.equal(r.out, 'VM deleted\n');
    assert.equal(t.controller.state, undefined);
  });

  test('an error answer is printed with its messages, exit 1', async () => {
    let r = await remote('--api-socket', sock, 'boot');
    assert.equal(r.code, 1);
    assert.equal(r.out, '');
    assert.match(r.err, /vm\.boot failed: 404 Not Found\n {2}vm\.boot: cannot boot: the VM is not created\n$/);
    r = await remote('--api-socket', sock, 'boot', '--json');
    assert.equal(r.code, 1);
    assert.deepEqual(JSON.parse(r.out), ['vm.boot: cannot boot: the VM is not created']);
    const bad = join(t.dir, 'bad.json');
    writeFileSync(bad, JSON.stringify({ payload: { kernel: '/k' }, cpus: { boot_vcpus: 'two', max_vcpus: 2 } }));
    r = await remote('--api-socket', sock, 'create', bad);
    assert.equal(r.code, 1);
    assert.match(r.err, /400 Bad Request\n {2}vm\.create: invalid VmConfig body\n {2}cpus\.boot_vcpus: must be integer, got string/);
  });

  test('usage errors exit 2', async () => {
    let r = await remote('--api-socket', sock, 'create');
    assert.equal(r.code, 2);
    assert.match(r.err, /create takes <FILE>, got none/);
    r = await remote('--api-socket', sock, 'boot', 'now');
    assert.equal(r.code, 2);
    assert.match(r.err, /boot takes no arguments/);
    r = await remote('ping');
    assert.equal(r.code, 2);
    assert.match(r.err, /--api-socket <path> is required/);
    r = await remote('--api-socket', sock, 'explode');
    assert.equal(r.code, 2);
    assert.match(r.err, /unknown command "explode"/);
    r = await remote('--api-socket', sock, 'nmi');
    assert.equal(r.code, 2);
    assert.match(r.err, /"nmi" is not supported yet/);
    r = await remote('--help');
    assert.equal(r.code, 0);
    assert.match(r.out, /Usage: stratovisor remote/);
  });

  test('missing file for create exits 1', async () => {
    const r = await remote('--api-socket', sock, 'create', join(t.dir, 'nope.json'));
    assert.equal(r.code, 1);
    assert.match(r.err, /cannot read VM config .*nope\.json/);
  });

  test('no socket / stale socket / not a socket: clear errors, exit 1', async () => {
    let r = await remote('--api-socket', join(t.dir, 'missing.sock'), 'ping');
    assert.equal(r.code, 1);
    assert.match(r.err, /API socket .*missing\.sock does not exist \(is stratovisor running/);
    const notSock = join(t.dir, 'plain');
    writeFileSync(notSock, '');
    r = await remote('--api-socket', notSock, 'ping');
    assert.equal(r.code, 1);
    assert.match(r.err, /stratovisor remote: .*plain/);
    await assert.rejects(apiRequest(join(t.dir, 'missing.sock'), 'GET', 'vmm.ping'), (e: unknown) => e instanceof ApiConnectionError && e.code === 'ENOENT');
  });

  test('shutdown-vmm', async () => {
    const r = await remote('--api-socket', sock, 'shutdown-vmm');
    assert.deepEqual(r, { code: 0, out: 'VMM shut down\n', err: '' });
    assert.equal(t.controller.vmmShutdown, true);
  });
});

test('remote add-disk / add-net / remove-device: --disk / --net syntax to a VMM core; before boot they change its configuration', async () => {
  const { VmmCore } = await import('../vmm/controller.js');
  const { ApiServer } = await import('../api/server.js');
  const { createVmConfig } = await import('../vmm/config.js');
  const { mkdtempSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const core = new VmmCore();
  await core.createVm(createVmConfig({ payload: { kernel: '/nonexistent/k' }, memory: { size: 64 << 20 } }));
  const dir = mkdtempSync(join(tmpdir(), 'stv-remote-add-'));
  const server = await ApiServer.listen({ controller: core, socket: { path: join(dir, 'api.sock') } });
  try {
    const sock = server.socketPath!;
    let r = await remote('--api-socket', sock, 'add-disk', 'path=/img/a.raw,readonly=on,id=data');
    assert.equal(r.code, 0, r.err);
    assert.equal(r.out, "disk added to the VM's configuration\n");
    assert.deepEqual(core.info().config.disks?.map((d) => [d.path, d.readonly, d.id]), [['/img/a.raw', true, 'data']]);
    r = await remote('--api-socket', sock, 'add-net', 'tap=stvx0,mac=52:54:00:00:00:09,id=n1');
    assert.equal(r.code, 0, r.err);
    assert.equal(core.info().config.net?.[0]?.mac, '52:54:00:00:00:09');
    r = await remote('--api-socket', sock, 'add-disk', 'path=/img/b.raw,id=data');
    assert.equal(r.code, 1);
    assert.match(r.err, /409 Conflict[\s\S]*identifier 'data' is already in use/);
    r = await remote('--api-socket', sock, 'add-disk', 'path=/img/b.raw,colour=red');
    assert.equal(r.code, 2);
    assert.match(r.err, /unknown key "colour"/);
    r = await remote('--api-socket', sock, 'remove-device', 'data');
    assert.equal(r.code, 0, r.err);
    assert.deepEqual(core.info().config.disks, []);
    r = await remote('--api-socket', sock, 'remove-device', 'data');
    assert.equal(r.code, 1);
    assert.match(r.err, /404/);
  } finally {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
