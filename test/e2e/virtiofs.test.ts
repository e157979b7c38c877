// virtio-fs through Stratovisor's vhost-user front-end with Debian's virtiofsd (QEMU's C daemon,
// /usr/lib/qemu/virtiofsd from qemu-system-common), in the spirit of Cloud Hypervisor's
// test_virtio_fs: the guest mounts the shared host directory, reads a host file, writes one the
// host then checks. Also: a back-end that is not there (clear one-line error at start, naming the
// socket), and a back-end killed while the guest is idle (a logged device error; the guest's fs
// I/O fails, the other devices work, the guest powers off and the VMM exits 0); and a
// vm.pause / vm.resume while the guest reads through the share.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { explain, guestImages, runGuest, type GuestRun } from './lib/guest.js';
import { HostService, stopAll } from './lib/services.js';
import { STRATOVISOR, stratovisorArgs } from './lib/stratovisor.js';
import { scratchDir, sha256 } from './lib/virtio.js';
import { apiRequest } from '../../src/cli/remote.js';

const VIRTIOFSD = '/usr/lib/qemu/virtiofsd';

function skipWhy(): string | null {
  if (!existsSync(STRATOVISOR)) return `${STRATOVISOR} is not built`;
  if (!existsSync(VIRTIOFSD)) return `${VIRTIOFSD} is missing (Debian package qemu-system-common)`;
  if (process.getuid?.() !== 0) return 'virtiofsd needs root to share a directory';
  return null;
}

interface Share {
  dir: string;
  shared: string;
  socket: string;
  hostBin: string;
}

function makeShare(name: string): Share {
  const dir = scratchDir(name);
  const shared = join(dir, 'shared');
  mkdirSync(shared);
  const bin = randomBytes(3 << 20);
  writeFileSync(join(shared, 'host.bin'), bin);
  writeFileSync(join(shared, 'host.txt'), `stratovisor host file ${randomBytes(8).toString('hex')}\n`);
  return { dir, shared, socket: join(dir, 'vfsd.sock'), hostBin: sha256(bin) };
}

function startVirtiofsd(name: string, s: Share): Promise<HostService> {
  return HostService.start({
    name,
    cmd: VIRTIOFSD,
    // sandbox=chroot: no namespaces needed (the test may itself run in a chroot).
    args: [`--socket-path=${s.socket}`, '-o', `source=${s.shared}`, '-o', 'cache=none', '-o', 'sandbox=chroot'],
    readyPath: s.socket,
  });
}

function fsArgs(socket: string, extraCmdline: string, scenario = 'virtiofs'): string[] {
  const img = guestImages();
  return stratovisorArgs({
    kernel: img.bzImage, initramfs: img.initramfs, cpus: 2, memMiB: 512, scenario, extraCmdline,
    extraArgs: ['--fs', `tag=myfs,socket=${socket},num_queues=1,queue_size=1024`],
  }).map((a) => (a === 'size=512M' ? 'size=512M,shared=on' : a));
}

const marker = (run: GuestRun, event: string) => run.markers.find((m) => m.event === event);
const keyed = (run: GuestRun, event: string, key: string) =>
  run.markers.find((m) => m.event === event && m.data.startsWith(`${key}:`))?.data.slice(key.length + 1);

test('virtio-fs with virtiofsd: the guest mounts the tag, reads the host file, its write reaches the host', async (t) => {
  const why = skipWhy();
  if (why) return t.skip(why);
  const s = makeShare('virtiofs');
  let vfsd: HostService | null = null;
  try {
    vfsd = await startVirtiofsd('virtiofsd', s);
    const token = randomBytes(8).toString('hex');
    const run = await runGuest(process.execPath, fsArgs(s.socket, `stv.fs_token=${token}`), { name: 'stratovisor-virtiofs', timeoutMs: 300_000 });
    const why2 = () => `${explain(run)}\n${vfsd!.explain()}`;
    assert.ok(marker(run, 'init'), `the guest did not boot\n${why2()}`);
    const errs = run.markers.filter((m) => m.event === 'fs-error').map((m) => m.data);
    assert.deepEqual(errs, [], `the guest reported errors\n${why2()}`);
    assert.ok(marker(run, 'fs-mounted'), `the guest did not mount myfs\n${why2()}`);
    assert.equal(keyed(run, 'fs-read', 'host.bin'), s.hostBin, `the guest read host.bin wrong (sha256 differs)\n${why2()}`);
    assert.ok(marker(run, 'fs-done'), `the guest did not finish (umount)\n${why2()}`);
    const got = readFileSync(join(s.shared, 'guest.bin'));
    const nl = got.indexOf(10);
    assert.equal(got.subarray(0, nl).toString(), token, 'guest.bin starts with the token the guest was given');
    assert.equal(got.length, nl + 1 + (4 << 20), 'guest.bin holds the token line and 4 MiB');
    assert.equal(sha256(got), keyed(run, 'fs-wrote', 'guest.bin'), `the host reads the bytes the guest wrote\n${why2()}`);
    assert.ok(marker(run, 'poweroff'), `the guest did not power off\n${why2()}`);
    assert.equal(run.exitCode, 0, `the VMM did not exit 0\n${why2()}`);
  } finally {
    await stopAll(vfsd);
    rmSync(s.dir, { recursive: true, force: true });
  }
});

test('virtio-fs without a back-end: a clear one-line error naming the socket, exit non-zero', async (t) => {
  if (!existsSync(STRATOVISOR)) return t.skip(`${STRATOVISOR} is not built`);
  const dir = scratchDir('virtiofs-missing');
  try {
    // No such socket.
    const missing = join(dir, 'nobody.sock');
    let r = spawnSync(process.execPath, fsArgs(missing, ''), { encoding: 'utf8', timeout: 60_000 });
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, new RegExp(`vhost-user socket '${missing.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}' does not exist`), r.stderr);
    assert.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
    // A socket file nobody listens on (its server was killed).
    const stale = join(dir, 'stale.sock');
    spawnSync(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(stale)}, () => process.kill(process.pid, 'SIGKILL'))`]);
    assert.ok(existsSync(stale), 'the stale socket file exists');
    r = spawnSync(process.execPath, fsArgs(stale, ''), { encoding: 'utf8', timeout: 60_000 });
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /has nobody listening/, r.stderr);
    assert.ok(r.stderr.includes(stale), r.stderr);
    // Private guest RAM: refused before anything starts.
    const priv = fsArgs(missing, '').map((a) => (a === 'size=512M,shared=on' ? 'size=512M' : a));
    r = spawnSync(process.execPath, priv, { encoding: 'utf8', timeout: 60_000 });
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /virtio-fs needs --memory shared=on \(guest RAM must be shareable with the vhost-user backend\)/, r.stderr);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('virtio-fs: virtiofsd killed while the guest is idle: a logged device error, fs I/O fails, the guest powers off', async (t) => {
  const why = skipWhy();
  if (why) return t.skip(why);
  const s = makeShare('virtiofs-kill');
  let vfsd: HostService | null = null;
  try {
    vfsd = await startVirtiofsd('virtiofsd-kill', s);
    const v = vfsd;
    const run = await runGuest(process.execPath, [...fsArgs(s.socket, 'stv.fs_mode=kill'), '-v'], {
      name: 'stratovisor-virtiofs-kill', timeoutMs: 300_000,
      onMarker: (m, ctl) => {
        if (m.event !== 'fs-idle') return;
        v.kill('SIGKILL');
        void v.exited.then(() => setTimeout(() => ctl.send('go\n'), 1000));
      },
    });
    const why2 = () => `${explain(run, 40)}\n${v.explain()}`;
    assert.equal(keyed(run, 'fs-read', 'host.bin'), s.hostBin, `the guest read host.bin before the kill\n${why2()}`);
    assert.ok(marker(run, 'fs-idle'), `no fs-idle marker\n${why2()}`);
    assert.match(run.output, /vhost-user back-end .* hung up/, `the VMM logs the back-end's death\n${why2()}`);
    const after = marker(run, 'fs-after-kill');
    assert.ok(after, `the guest did not get past its fs I/O after the kill\n${why2()}`);
    assert.notEqual(after!.data.split(':')[0], '0', `reading a file after the kill must fail\n${why2()}`);
    assert.equal(marker(run, 'fs-rng-after-kill')?.data, '64', `virtio-rng still works\n${why2()}`);
    assert.ok(marker(run, 'poweroff'), `the guest did not power off\n${why2()}`);
    assert.equal(run.exitCode, 0, `the VMM did not exit 0\n${why2()}`);
  } finally {
    await stopAll(vfsd);
    rmSync(s.dir, { recursive: true, force: true });
  }
});

test('virtio-fs across a guest reboot: the device is set up again (new guest RAM, same back-end connection)', async (t) => {
  const why = skipWhy();
  if (why) return t.skip(why);
  const s = makeShare('virtiofs-reboot');
  let vfsd: HostService | null = null;
  try {
    vfsd = await startVirtiofsd('virtiofsd-reboot', s);
    const token = randomBytes(8).toString('hex');
    const run = await runGuest(process.execPath, [...fsArgs(s.socket, `stv.fs_mode=reboot stv.fs_token=${token}`), '-v'], {
      name: 'stratovisor-virtiofs-reboot', timeoutMs: 400_000,
    });
    const why2 = () => `${explain(run, 40)}\n${vfsd!.explain()}`;
    assert.equal(run.markers.filter((m) => m.event === 'init').length, 2, `the guest should boot twice\n${why2()}`);
    assert.ok(marker(run, 'fs-rebooting'), `no reboot\n${why2()}`);
    assert.deepEqual(run.markers.filter((m) => m.event === 'fs-error').map((m) => m.data), [], why2());
    assert.equal(marker(run, 'fs-second-boot')?.data, token, `the second boot reads what the first wrote\n${why2()}`);
    assert.equal(readFileSync(join(s.shared, 'boot1.txt'), 'utf8').trim(), token);
    assert.ok(marker(run, 'fs-done'), why2());
    assert.equal(run.exitCode, 0, `the VMM did not exit 0\n${why2()}`);
  } finally {
    await stopAll(vfsd);
    rmSync(s.dir, { recursive: true, force: true });
  }
});

test('virtio-fs across vm.pause / vm.resume: the rings stop and start again where they were; the guest\'s reads and writes complete correctly', async (t) => {
  const why = skipWhy();
  if (why) return t.skip(why);
  const s = makeShare('virtiofs-pause');
  const sock = join(s.dir, 'api.sock');
  let vfsd: HostService | null = null;
  const paused: string[] = [];
  try {
    vfsd = await startVirtiofsd('virtiofsd-pause', s);
    const token = randomBytes(8).toString('hex');
    let cycle: Promise<void> | null = null;
    const run = await runGuest(process.execPath, [...fsArgs(s.socket, `stv.fs_token=${token}`), '--api-socket', sock, '-v'], {
      name: 'stratovisor-virtiofs-pause', timeoutMs: 300_000,
      // While the guest reads host.bin (3 MiB of FUSE requests in flight): pause, stay paused 2 s, resume.
      onMarker: (m) => {
        if (m.event !== 'fs-mounted' || cycle !== null) return;
        cycle = (async () => {
          const pause = await apiRequest(sock, 'PUT', 'vm.pause');
          paused.push(`pause ${pause.status} ${pause.text}`);
          const info = await apiRequest(sock, 'GET', 'vm.info');
          paused.push(`state ${(JSON.parse(info.text) as { state: string }).state}`);
          await new Promise((r) => setTimeout(r, 2000));
          const resume = await apiRequest(sock, 'PUT', 'vm.resume');
          paused.push(`resume ${resume.status} ${resume.text}`);
        })().catch((e: Error) => { paused.push(`error ${e.message}`); });
      },
    });
    await cycle;
    const why2 = () => `${paused.join('\n')}\n${explain(run, 40)}\n${vfsd!.explain()}`;
    assert.deepEqual(paused, ['pause 204 ', 'state Paused', 'resume 204 '], why2());
    assert.deepEqual(run.markers.filter((m) => m.event === 'fs-error').map((m) => m.data), [], `the guest reported errors\n${why2()}`);
    assert.equal(keyed(run, 'fs-read', 'host.bin'), s.hostBin, `the guest read host.bin right across the pause\n${why2()}`);
    const got = readFileSync(join(s.shared, 'guest.bin'));
    assert.equal(sha256(got), keyed(run, 'fs-wrote', 'guest.bin'), `the host reads the bytes the guest wrote\n${why2()}`);
    assert.ok(marker(run, 'fs-done') && marker(run, 'poweroff'), `the guest did not finish\n${why2()}`);
    assert.equal(run.exitCode, 0, `the VMM did not exit 0\n${why2()}`);
  } finally {
    await stopAll(vfsd);
    rmSync(s.dir, { recursive: true, force: true });
  }
});
