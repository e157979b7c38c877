// Virtio devices end to end, shared by the QEMU baseline (test/e2e/qemu-virtio.test.ts), the
// Stratovisor tests (test/e2e/virtio.test.ts) and the I/O benchmark (bench/io.ts): the two VMMs'
// command lines for the same devices, the host side of each check (ext4 images, a tap with an
// HTTP server on its host address, the console's sink file) and the checks themselves, so both
// VMMs are held to exactly the same assertions.
//
// Guest scenarios: guest/scenarios/{blk,blk-ro,net,rng,console,iobench}.sh.
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { explain, guestImages, marker, REPO, runGuest, type GuestImages, type GuestRun, type Marker } from './guest.js';
import { qemuArgs } from './qemu.js';
import { STRATOVISOR, confineArgs } from './stratovisor.js';

const LOG_DIR = join(REPO, '.cache', 'e2e-logs', process.env.STV_E2E_LOG_SUBDIR ?? '');
const QEMU = '/usr/bin/qemu-system-x86_64';

/** The tap network: host side HOST_IP on the tap, the guest's eth0 GUEST_IP, a /24. */
export const NET = {
  tap: 'stvtap0',
  hostIp: '192.168.249.1',
  guestIp: '192.168.249.2',
  prefix: 24,
  mask: '255.255.255.0',
  mac: '52:54:00:5e:f9:02',
  /** The host's HTTP server (net check) listens here, on hostIp. */
  httpPort: 8080,
} as const;

export interface TapNet {
  tap: string;
  hostIp: string;
  mask: string;
  prefix: number;
  mac: string;
  /** Queue pairs (virtio-net MQ + control queue when > 1; a multi-queue tap). */
  queuePairs?: number;
}

export interface VirtioDevices {
  /** `extra`: more Cloud Hypervisor --disk keys for Stratovisor (e.g. bw_size=...,bw_refill_time=...). */
  disk?: { path: string; readonly?: boolean; numQueues?: number; extra?: string };
  net?: TapNet;
  /** More --net keys for Stratovisor (e.g. a rate limit). */
  netExtra?: string;
  rng?: boolean;
  /** virtio-console into this file; without it, no virtio-console device. */
  consoleFile?: string;
}

export interface VirtioBoot {
  images: GuestImages;
  scenario: string;
  cpus?: number;
  memMiB?: number;
  /** Extra kernel command-line words (stv.token=…, stv.ip=…). */
  cmdline?: string[];
  devices: VirtioDevices;
}

export interface VirtioVmm {
  name: string;
  /** True when the VMM creates the tap and configures its host side (Stratovisor's --net tap=,ip=,mask=). */
  createsTap: boolean;
  /** Why this VMM cannot run here, or null. */
  unavailable(): string | null;
  command(b: VirtioBoot): [string, string[]];
}

/**
 * QEMU q35 with modern-only (disable-legacy=on) virtio-*-pci devices, the same device models
 * Stratovisor exposes; the tap's backend without vhost, so both VMMs move packets in userspace.
 */
export const qemuQ35: VirtioVmm = {
  name: 'qemu-q35',
  createsTap: false,
  unavailable: () => (existsSync(QEMU) ? (existsSync('/dev/kvm') ? null : '/dev/kvm is missing: run through scripts/kvm-sandbox') : 'qemu-system-x86_64 is not installed (Debian package qemu-system-x86)'),
  command(b) {
    const d = b.devices;
    const args = qemuArgs({
      machine: 'q35', kernel: b.images.bzImage, initramfs: b.images.initramfs, cpus: b.cpus ?? 2, memMiB: b.memMiB ?? 512,
      scenario: b.scenario, extraCmdline: (b.cmdline ?? []).join(' '),
    });
    if (d.disk) {
      args.push('-drive', `file=${d.disk.path},format=raw,if=none,id=d0${d.disk.readonly ? ',readonly=on' : ''}`,
        '-device', `virtio-blk-pci,drive=d0,disable-legacy=on${d.disk.numQueues ? `,num-queues=${d.disk.numQueues}` : ''}`);
    }
    if (d.net) {
      const pairs = d.net.queuePairs ?? 1;
      args.push('-netdev', `tap,id=n0,ifname=${d.net.tap},script=no,downscript=no,vhost=off${pairs > 1 ? `,queues=${pairs}` : ''}`,
        '-device', `virtio-net-pci,netdev=n0,mac=${d.net.mac},disable-legacy=on${pairs > 1 ? `,mq=on,vectors=${2 * pairs + 2}` : ''}`);
    }
    if (d.rng) args.push('-object', 'rng-random,filename=/dev/urandom,id=rng0', '-device', 'virtio-rng-pci,rng=rng0,disable-legacy=on');
    if (d.consoleFile) {
      args.push('-device', 'virtio-serial-pci,disable-legacy=on', '-chardev', `file,id=c0,path=${d.consoleFile}`, '-device', 'virtconsole,chardev=c0');
    }
    return [QEMU, args];
  },
};

/** Stratovisor's CLI, Cloud Hypervisor's flags: the VMM creates the tap and sets its host address. */
export const stratovisor: VirtioVmm = {
  name: 'stratovisor',
  createsTap: true,
  unavailable: () => (existsSync(STRATOVISOR) ? null : `${STRATOVISOR} is not built`),
  command(b) {
    const d = b.devices;
    const cmdline = ['console=ttyS0', 'quiet', `stv.scenario=${b.scenario}`, ...(b.cmdline ?? [])].join(' ');
    const args = [
      STRATOVISOR, '--kernel', b.images.bzImage, '--initramfs', b.images.initramfs, '--cmdline', cmdline,
      '--cpus', `boot=${b.cpus ?? 2}`, '--memory', `size=${b.memMiB ?? 512}M`, '--serial', 'tty',
      '--console', d.consoleFile ? `file=${d.consoleFile}` : 'off',
      // STV_VMM_VERBOSE=1: the VMM's -v log (timestamps, devices, exit counts) lands in the console log.
      ...(process.env.STV_VMM_VERBOSE === '1' ? ['-v'] : []),
      // STV_VMM_CONFINE='--seccomp strict --landlock': run the checks under other confinement flags.
      ...confineArgs(),
    ];
    if (d.disk) args.push('--disk', `path=${d.disk.path}${d.disk.readonly ? ',readonly=on' : ''}${d.disk.numQueues ? `,num_queues=${d.disk.numQueues}` : ''}${d.disk.extra ? `,${d.disk.extra}` : ''}`);
    if (d.net) args.push('--net', `tap=${d.net.tap},ip=${d.net.hostIp},mask=${d.net.mask},mac=${d.net.mac}${(d.net.queuePairs ?? 1) > 1 ? `,num_queues=${2 * d.net.queuePairs!}` : ''}${d.netExtra ? `,${d.netExtra}` : ''}`);
    if (d.rng) args.push('--rng', 'src=/dev/urandom');
    return [process.execPath, args];
  },
};

export const sha256 = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------
// Host side: taps, listening on the tap's address, HTTP fetches, ext4 images.

function ipCmd(args: string[]): { ok: boolean; out: string } {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  if (r.error) return { ok: false, out: `ip: ${r.error.message} (iproute2 is needed for tap devices)` };
  return { ok: r.status === 0, out: `${r.stdout}${r.stderr}`.trim() };
}

export function tapExists(name: string): boolean {
  return existsSync(`/sys/class/net/${name}`);
}

/** Remove a tap (left over from an earlier run, or made by a VMM that did not clean up). */
export function deleteTap(name: string): void {
  if (tapExists(name)) ipCmd(['link', 'del', name]);
}

/** Create a tap and configure its host side (what QEMU's script=no leaves to the caller). */
export function createTap(t: TapNet): void {
  deleteTap(t.tap);
  for (const args of [['tuntap', 'add', 'dev', t.tap, 'mode', 'tap', ...((t.queuePairs ?? 1) > 1 ? ['multi_queue'] : [])], ['addr', 'add', `${t.hostIp}/${t.prefix}`, 'dev', t.tap], ['link', 'set', t.tap, 'up']]) {
    const r = ipCmd(args);
    if (!r.ok) {
      deleteTap(t.tap);
      throw new Error(`ip ${args.join(' ')} failed: ${r.out} (the sandbox needs the tun module and /dev/net/tun)`);
    }
  }
}

/** The tap's link state and IPv4 addresses, as `ip -o link/-4 -o addr show dev TAP` print them. */
export function tapAddresses(name: string): string {
  if (!tapExists(name)) return `(no ${name} on the host)`;
  return `${ipCmd(['-o', 'link', 'show', 'dev', name]).out}\n${ipCmd(['-4', '-o', 'addr', 'show', 'dev', name]).out || '(no IPv4 address)'}`;
}

/**
 * Listen on ip:port as soon as that address exists on the host: at once when the test made the tap,
 * or once the VMM has created and configured it (Stratovisor). Resolves when listening; rejects
 * after timeoutMs or on any error other than EADDRNOTAVAIL, or when `cancelled()` turns true.
 */
export async function listenWhenAddressExists(server: http.Server | net.Server, ip: string, port: number, timeoutMs: number, cancelled: () => boolean = () => false): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const err = await new Promise<NodeJS.ErrnoException | null>((resolve) => {
      const onError = (e: NodeJS.ErrnoException) => { server.off('listening', onListening); resolve(e); };
      const onListening = () => { server.off('error', onError); resolve(null); };
      server.once('error', onError);
      server.once('listening', onListening);
      server.listen(port, ip);
    });
    if (!err) return;
    if (err.code !== 'EADDRNOTAVAIL') throw new Error(`listening on ${ip}:${port}: ${err.message}`);
    if (cancelled()) throw new Error(`${ip} did not appear on a host interface while the guest ran`);
    if (Date.now() > deadline) throw new Error(`${ip} did not appear on a host interface within ${timeoutMs / 1000} s`);
    await sleep(200);
  }
}

/** GET a URL into a Buffer; rejects on a non-200 status, a socket error or after timeoutMs. */
export function httpGet(url: string, timeoutMs: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { timeout: timeoutMs, agent: false }, (res) => {
      if (res.statusCode !== 200) {
        res.resume();
        reject(new Error(`GET ${url}: HTTP ${res.statusCode}`));
        return;
      }
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve(Buffer.concat(chunks)));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${url}: no answer within ${timeoutMs / 1000} s`)));
    req.on('error', reject);
  });
}

/** makeExt4Image from scripts/lib/images.mjs (plain JavaScript, loaded at run time). */
async function makeExt4Image(out: string, fromDir: string, sizeMiB: number): Promise<string> {
  const mod = (await import(pathToFileURL(join(REPO, 'scripts', 'lib', 'images.mjs')).href)) as {
    makeExt4Image: (out: string, fromDir: string, sizeMiB?: number, label?: string) => string;
  };
  return mod.makeExt4Image(out, fromDir, sizeMiB);
}

/** A scratch directory for one check's files (in the sandbox, $TMPDIR is a tmpfs). */
export function scratchDir(name: string): string {
  return mkdtempSync(join(tmpdir(), `stv-${name.replace(/[^A-Za-z0-9_.-]+/g, '_')}-`));
}

export interface HostDisk {
  path: string;
  /** sha256 of each file the host put on the disk. */
  files: Record<string, string>;
}

/** A 64 MiB ext4 image holding host.txt (a line with a random token) and host.bin (1 MiB random). */
export async function makeHostDisk(dir: string): Promise<HostDisk> {
  const content = join(dir, 'content');
  mkdirSync(content, { recursive: true });
  const txt = Buffer.from(`stratovisor host file ${randomBytes(8).toString('hex')}\n`);
  const bin = randomBytes(1 << 20);
  writeFileSync(join(content, 'host.txt'), txt);
  writeFileSync(join(content, 'host.bin'), bin);
  const path = await makeExt4Image(join(dir, 'disk.img'), content, 64);
  rmSync(content, { recursive: true, force: true });
  return { path, files: { 'host.txt': sha256(txt), 'host.bin': sha256(bin) } };
}

/** A file's bytes inside an ext4 image, through debugfs (e2fsprogs); null when it is not there. */
export function debugfsCat(image: string, path: string): Buffer | null {
  const r = spawnSync('debugfs', ['-R', `cat /${path}`, image], { maxBuffer: 256 << 20 });
  if (r.error) throw new Error(`debugfs: ${r.error.message} (Debian package e2fsprogs)`);
  const err = r.stderr.toString();
  if (r.status !== 0 || /File not found|Ext2 inode is not a directory|cat: /.test(err)) return null;
  return r.stdout;
}

/** `e2fsck -fn`: null when the file system is clean, else its report. */
export function fsckProblems(image: string): string | null {
  const r = spawnSync('e2fsck', ['-f', '-n', image], { encoding: 'utf8' });
  if (r.error) throw new Error(`e2fsck: ${r.error.message}`);
  return r.status === 0 ? null : `e2fsck -fn exited ${r.status}:\n${r.stdout}${r.stderr}`;
}

// ---------------------------------------------------------------------------------------------
// Running a guest with devices.

export interface RunVirtioOptions {
  name: string;
  scenario: string;
  devices: VirtioDevices;
  cmdline?: string[];
  timeoutMs?: number;
  onMarker?: Parameters<typeof runGuest>[2]['onMarker'];
  /** Started once the VMM is spawned (the tap exists beforehand when the test creates it). */
  whileRunning?: () => void;
}

/**
 * Boot `vmm` with the devices and run a scenario. With a net device the tap is made first when the
 * VMM does not make its own, and removed afterwards either way.
 */
export async function runVirtio(vmm: VirtioVmm, o: RunVirtioOptions): Promise<GuestRun> {
  const tap = o.devices.net;
  if (tap) {
    if (vmm.createsTap) deleteTap(tap.tap); // a stale tap would hide a VMM that configures nothing
    else createTap(tap);
  }
  try {
    const [cmd, args] = vmm.command({ images: guestImages(), scenario: o.scenario, cmdline: o.cmdline, devices: o.devices });
    const running = runGuest(cmd, args, { name: o.name, timeoutMs: o.timeoutMs ?? 300_000, onMarker: o.onMarker });
    o.whileRunning?.();
    return await running;
  } finally {
    if (tap) deleteTap(tap.tap);
  }
}

/** Save a side file (the virtio-console sink) next to the run's console log. */
function keepBeside(run: GuestRun, suffix: string, from: string): string {
  const to = run.logFile.replace(/\.log$/, `.${suffix}`);
  try {
    mkdirSync(LOG_DIR, { recursive: true });
    if (existsSync(from)) copyFileSync(from, to);
    else writeFileSync(to, `(${from} was never created)\n`);
  } catch { /* best effort */ }
  return to;
}

/** The guest booted and loaded its modules: else explain what the VMM said. */
function assertBooted(vmm: VirtioVmm, run: GuestRun): void {
  if (!marker(run, 'init')) {
    assert.fail(`${vmm.name} did not boot the guest (no @@stv:init@@ marker; exit ${run.exitCode ?? run.signal}${run.timedOut ? ', timed out' : ''})\n${explain(run)}`);
  }
  const failed = marker(run, 'modules-failed');
  assert.equal(failed, undefined, `the guest could not load modules: ${failed?.data}\n${explain(run)}`);
  assert.ok(marker(run, 'modules-loaded'), `no @@stv:modules-loaded@@ marker\n${explain(run)}`);
}

/** The scenario printed no PREFIX-error marker (the guest's own account of what was missing). */
function assertNoGuestError(run: GuestRun, event: string, why: () => string = () => explain(run)): void {
  const errs = run.markers.filter((m) => m.event === event);
  assert.equal(errs.length, 0, `the guest reported: ${errs.map((m) => m.data).join('; ')}\n${why()}`);
}

function assertPoweredOff(run: GuestRun): void {
  assert.ok(marker(run, 'poweroff'), `the guest did not reach its power-off\n${explain(run)}`);
  assert.equal(run.exitCode, 0, `the VMM did not exit 0 after the guest's power-off\n${explain(run)}`);
}

/** Data of the `event` marker whose data starts with `key:` (e.g. blk-read:host.txt:SHA). */
function keyed(run: GuestRun, event: string, key: string): string | undefined {
  return run.markers.find((m) => m.event === event && m.data.startsWith(`${key}:`))?.data.slice(key.length + 1);
}

// ---------------------------------------------------------------------------------------------
// The checks. Each boots one guest and asserts; failures carry the console's tail and log path.

/** Read-write disk: host files read correctly in the guest, guest files land on the image. */
export async function checkBlockReadWrite(vmm: VirtioVmm): Promise<void> {
  const dir = scratchDir(`${vmm.name}-blk`);
  try {
    const disk = await makeHostDisk(dir);
    const run = await runVirtio(vmm, { name: `${vmm.name}-virtio-blk`, scenario: 'blk', devices: { disk: { path: disk.path, numQueues: 2 } } });
    assertBooted(vmm, run);
    assertNoGuestError(run, 'blk-error');
    assert.equal(marker(run, 'blk-ro')?.data, '0', `/sys/block/vda/ro should be 0 for a read-write disk\n${explain(run)}`);
    assert.equal(Number(marker(run, 'blk-sectors')?.data), 64 * 2048, `/dev/vda should have 64 MiB in 512-byte sectors\n${explain(run)}`);
    assert.equal(marker(run, 'blk-queues')?.data, '2', `the guest should use both request queues (num_queues=2, 2 vCPUs)\n${explain(run)}`);
    for (const [f, sum] of Object.entries(disk.files)) {
      assert.equal(keyed(run, 'blk-read', f), sum, `the guest read ${f} wrong (sha256 differs from the host's)\n${explain(run)}`);
    }
    assert.ok(marker(run, 'blk-done'), `the guest did not finish (sync + umount)\n${explain(run)}`);
    assertPoweredOff(run);
    const kernel = marker(run, 'kernel')?.data;
    assert.ok(kernel, explain(run));
    const txt = debugfsCat(disk.path, 'guest.txt');
    assert.equal(txt?.toString(), `stratovisor guest wrote this on ${kernel}\n`, `guest.txt read back from the image (debugfs) is wrong\n${explain(run)}`);
    const bin = debugfsCat(disk.path, 'guest.bin');
    assert.equal(bin?.length, 2 << 20, `guest.bin on the image should be 2 MiB\n${explain(run)}`);
    assert.equal(sha256(bin!), keyed(run, 'blk-wrote', 'guest.bin'), `guest.bin on the image differs from what the guest wrote\n${explain(run)}`);
    const fsck = fsckProblems(disk.path);
    assert.equal(fsck, null, `the image's file system is not clean after the guest's writes: ${fsck}\n${explain(run)}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Read-only disk: the guest reads it, cannot write it, and the image is unchanged. */
export async function checkBlockReadonly(vmm: VirtioVmm): Promise<void> {
  const dir = scratchDir(`${vmm.name}-blk-ro`);
  try {
    const disk = await makeHostDisk(dir);
    const before = sha256(readFileSync(disk.path));
    const run = await runVirtio(vmm, { name: `${vmm.name}-virtio-blk-ro`, scenario: 'blk-ro', devices: { disk: { path: disk.path, readonly: true } } });
    assertBooted(vmm, run);
    assertNoGuestError(run, 'blk-error');
    assert.equal(marker(run, 'blk-ro')?.data, '1', `/sys/block/vda/ro should be 1: the device must offer VIRTIO_BLK_F_RO\n${explain(run)}`);
    assert.equal(keyed(run, 'blk-read', 'host.txt'), disk.files['host.txt'], `the guest read host.txt wrong\n${explain(run)}`);
    assert.match(marker(run, 'blk-ro-raw-write')?.data ?? '(no marker)', /^failed/, `a raw write to the read-only /dev/vda should fail\n${explain(run)}`);
    assert.equal(marker(run, 'blk-ro-fs-write')?.data, 'failed', `writing a file on the read-only disk should fail\n${explain(run)}`);
    assert.ok(marker(run, 'blk-done'), explain(run));
    assertPoweredOff(run);
    assert.equal(sha256(readFileSync(disk.path)), before, `the read-only image changed on the host\n${explain(run)}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Net: the guest fetches 3 MiB from the host's HTTP server on the tap's host address, then serves
 * 3 MiB of its own with busybox httpd, which the host fetches; both sides compare sha256.
 */
export async function checkNet(vmm: VirtioVmm): Promise<void> {
  const tap: TapNet = { tap: NET.tap, hostIp: NET.hostIp, mask: NET.mask, prefix: NET.prefix, mac: NET.mac, queuePairs: 2 };
  const blob = randomBytes(3 << 20);
  let verdict: string | null = null;
  const hostLog: string[] = [];
  const note = (s: string) => hostLog.push(`${new Date().toISOString()} ${s}`);
  const server = http.createServer((req, res) => {
    note(`HTTP ${req.method} ${req.url} from ${req.socket.remoteAddress}`);
    if (req.url === '/blob') {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': blob.length });
      res.end(blob);
    } else if (req.url === '/done' && verdict !== null) {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end(verdict);
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  let finished = false;
  let listenError: string | null = null;
  let tapAtNetUp = '';
  let hostFetchedSha: string | null = null;
  const fetchFromGuest = async (expectSha: string) => {
    let last = '';
    for (let i = 0; i < 10 && !finished; i++) {
      try {
        const body = await httpGet(`http://${NET.guestIp}/blob`, 120_000);
        hostFetchedSha = sha256(body);
        note(`fetched ${body.length} bytes from the guest, sha256 ${hostFetchedSha}`);
        verdict = hostFetchedSha === expectSha ? 'ok' : `mismatch-host-got-${hostFetchedSha}`;
        return;
      } catch (e) {
        last = (e as Error).message;
        note(`fetch from the guest failed: ${last}`);
        await sleep(1000);
      }
    }
    verdict = `host-fetch-failed`;
    note(`giving up fetching from the guest: ${last}`);
  };
  try {
    const run = await runVirtio(vmm, {
      name: `${vmm.name}-virtio-net`, scenario: 'net', devices: { net: tap }, timeoutMs: 400_000,
      cmdline: [`stv.ip=${NET.guestIp}/${NET.prefix}`, `stv.peer=${NET.hostIp}`, `stv.port=${NET.httpPort}`],
      whileRunning: () => {
        listenWhenAddressExists(server, NET.hostIp, NET.httpPort, 300_000, () => finished)
          .then(() => note(`listening on ${NET.hostIp}:${NET.httpPort}`))
          .catch((e: Error) => { listenError = e.message; note(`listen failed: ${e.message}`); });
      },
      onMarker: (m: Marker) => {
        if (m.event === 'net-up') tapAtNetUp = tapAddresses(NET.tap);
        if (m.event === 'net-serving') void fetchFromGuest(m.data.split(':')[0]!);
      },
    });
    finished = true;
    const why = () => `${explain(run)}\n--- host side ---\n${hostLog.join('\n')}${listenError ? `\nlisten: ${listenError}` : ''}\ntap ${NET.tap} when the guest's eth0 came up: ${tapAtNetUp || '(never)'}`;
    assertBooted(vmm, run);
    if (vmm.createsTap && marker(run, 'net-up')) {
      assert.match(tapAtNetUp, new RegExp(`inet ${NET.hostIp.replace(/\./g, '\\.')}/${NET.prefix}\\b`), `the VMM should create ${NET.tap} with ${NET.hostIp}/${NET.prefix} on the host side\n${why()}`);
    }
    assertNoGuestError(run, 'net-error', why);
    assert.equal(marker(run, 'net-up')?.data, NET.mac, `eth0's MAC should be the one given to the VMM\n${why()}`);
    assert.equal(marker(run, 'net-queues')?.data, '2', `eth0 should have 2 queue pairs (multi-queue, 2 vCPUs)\n${why()}`);
    assert.equal(marker(run, 'net-fetched')?.data, `${sha256(blob)}:${blob.length}`, `the guest's copy of the host's 3 MiB file differs (sha256:size)\n${why()}`);
    const serving = marker(run, 'net-serving')?.data.split(':');
    assert.equal(serving?.[1], String(3 << 20), `the guest should serve 3 MiB\n${why()}`);
    assert.equal(hostFetchedSha, serving?.[0], `the host's copy of the guest's 3 MiB file differs\n${why()}`);
    assert.equal(marker(run, 'net-host-done')?.data, 'ok', `the guest did not get the host's verdict 'ok'\n${why()}`);
    assertPoweredOff(run);
  } finally {
    finished = true;
    server.closeAllConnections();
    await new Promise<void>((r) => server.close(() => r()));
  }
}

/** Rng: /dev/hwrng is the virtio device and yields 4 KiB that look random. */
export async function checkRng(vmm: VirtioVmm): Promise<void> {
  const run = await runVirtio(vmm, { name: `${vmm.name}-virtio-rng`, scenario: 'rng', devices: { rng: true } });
  assertBooted(vmm, run);
  assertNoGuestError(run, 'rng-error');
  assert.match(marker(run, 'rng-current')?.data ?? '(no marker)', /^virtio_rng\.\d+$/, `the hw_random core should use the virtio device\n${explain(run)}`);
  const [bytes, nonzero, distinct] = (marker(run, 'rng-read')?.data ?? '').split(':').map(Number);
  assert.equal(bytes, 4096, `4096 bytes should come from /dev/hwrng\n${explain(run)}`);
  assert.ok(nonzero! > 3900, `/dev/hwrng's bytes are mostly zero (${nonzero} of 4096 non-zero)\n${explain(run)}`);
  assert.ok(distinct! >= 200, `/dev/hwrng's bytes do not look random (${distinct} distinct byte values in 4 KiB)\n${explain(run)}`);
  assertPoweredOff(run);
}

/** Console: a marker the guest writes to /dev/hvc0 reaches the console's sink file, not the serial port. */
export async function checkConsole(vmm: VirtioVmm): Promise<void> {
  const dir = scratchDir(`${vmm.name}-console`);
  const sink = join(dir, 'hvc0.out');
  const token = randomBytes(8).toString('hex');
  try {
    const run = await runVirtio(vmm, { name: `${vmm.name}-virtio-console`, scenario: 'console', devices: { consoleFile: sink }, cmdline: [`stv.token=${token}`] });
    const kept = keepBeside(run, 'hvc0.log', sink);
    const got = existsSync(sink) ? readFileSync(sink, 'latin1') : '(no sink file)';
    const why = () => `${explain(run)}\n--- virtio-console sink (${kept}) ---\n${got.slice(-2000)}`;
    assertBooted(vmm, run);
    assertNoGuestError(run, 'console-error', why);
    assert.ok(marker(run, 'console-written'), why());
    assert.ok(got.includes(`@@stv:hvc:${token}@@`), `the guest's /dev/hvc0 line did not reach ${sink}\n${why()}`);
    assert.ok(got.includes('hello from the guest over virtio-console'), why());
    assert.ok(!run.output.includes(`hvc:${token}`), `the /dev/hvc0 line came out on the serial console instead\n${why()}`);
    assertPoweredOff(run);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Why a check cannot run on this host (tests call t.skip with it), or null. */
export function skipReason(vmm: VirtioVmm, { tap = false } = {}): string | null {
  const why = vmm.unavailable();
  if (why) return why;
  if (tap && process.getuid?.() !== 0) return 'tap devices need root';
  if (tap && execFileSync('sh', ['-c', 'command -v ip || true'], { encoding: 'utf8' }).trim() === '') return 'iproute2 (ip) is not installed';
  return null;
}

/** The five checks, for the test files: [title, run, needs a tap]. */
export const CHECKS: Array<[string, (vmm: VirtioVmm) => Promise<void>, boolean]> = [
  ["virtio-blk: the guest reads the host's ext4 files and its writes land on the image (debugfs, e2fsck)", checkBlockReadWrite, false],
  ['virtio-blk readonly=on: the guest reads the disk, cannot write it, and the image is unchanged', checkBlockReadonly, false],
  ['virtio-net on a tap: 3 MiB each way over HTTP between the guest and the host side of the tap', checkNet, true],
  ['virtio-rng: /dev/hwrng is the virtio device and yields random bytes', checkRng, false],
  ['virtio-console: a line written to /dev/hvc0 reaches the console file', checkConsole, false],
];
