// FsDevice against Debian's real virtiofsd (/usr/lib/qemu/virtiofsd, package qemu-system-common)
// on this host, without a guest: the test plays the guest driver with TestDriver rings in shared
// guest RAM, sends FUSE requests through the request queue, kicks the queue's eventfd and waits
// for the call eventfd. Two runs over one connection with different guest RAM (a guest reboot).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as libc from '../../sys/libc.js';
import { GuestMemory } from '../../memory/guest_memory.js';
import { TestDriver } from '../testing/driver.js';
import { FsDevice, FS_CONNECTION_STATE_BYTES } from './device.js';

const VIRTIOFSD = '/usr/lib/qemu/virtiofsd';
const FUSE_INIT = 26;
const FUSE_GETATTR = 3;

function fuseReq(opcode: number, unique: bigint, nodeid: bigint, body: Uint8Array): Uint8Array {
  const b = new Uint8Array(40 + body.length);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, b.length, true);
  dv.setUint32(4, opcode, true);
  dv.setBigUint64(8, unique, true);
  dv.setBigUint64(16, nodeid, true);
  b.set(body, 40);
  return b;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * One FUSE request on queue 1: post it, kick, wait (bounded) for the call eventfd; returns the
 * fuse_out_header (len, error, unique) and whether the call eventfd fired.
 */
function roundTrip(mem: GuestMemory, d: TestDriver, kick: number, call: number, req: Uint8Array, outLen: number): { error: number; unique: bigint; len: number; called: boolean } {
  const drain = (): boolean => { try { libc.read(call, new Uint8Array(8)); return true; } catch { return false; } };
  drain(); // libvhost-user signals a new call fd once when it gets it
  const usedBefore = mem.readU16(d.layout.usedRing + 2);
  const c = d.addChain([req], [16, outLen]);
  libc.write(kick, new Uint8Array(new BigUint64Array([1n]).buffer));
  const p = libc.pollFds(1);
  libc.pollFdSet(p, 0, call, libc.POLLIN);
  let called = false;
  for (let i = 0; i < 100 && !(called && mem.readU16(d.layout.usedRing + 2) !== usedBefore); i++) {
    libc.poll(p, 100);
    if (drain()) called = true;
  }
  return { len: mem.readU32(c.writable[0]!), error: mem.readU32(c.writable[0]! + 4) | 0, unique: mem.readU64(c.writable[0]! + 8), called };
}

test("FsDevice with Debian's virtiofsd: FUSE requests through the rings, across a second run with new guest RAM", async (t) => {
  if (!existsSync(VIRTIOFSD)) return t.skip(`${VIRTIOFSD} is missing (Debian package qemu-system-common)`);
  if (process.getuid?.() !== 0) return t.skip('virtiofsd needs root');
  const dir = mkdtempSync(join(tmpdir(), 'stv-vfsd-'));
  writeFileSync(join(dir, 'f'), 'x');
  const sock = join(dir, 's.sock');
  const child = spawn(VIRTIOFSD, [`--socket-path=${sock}`, '-o', `source=${dir}`, '-o', 'cache=none', '-o', 'sandbox=chroot'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stdout.on('data', (b: Buffer) => { log += b.toString(); });
  child.stderr.on('data', (b: Buffer) => { log += b.toString(); });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const fds: number[] = [];
  try {
    for (let i = 0; i < 100 && !existsSync(sock); i++) await sleep(50);
    assert.ok(existsSync(sock), `virtiofsd did not create its socket\n${log}`);
    const fe = libc.socket(libc.AF_UNIX, libc.SOCK_STREAM | libc.SOCK_CLOEXEC | libc.SOCK_NONBLOCK);
    fds.push(fe);
    libc.connectUnix(fe, sock);
    const connection = new SharedArrayBuffer(FS_CONNECTION_STATE_BYTES);
    const efd = () => { const f = libc.eventfd(0, libc.EFD_CLOEXEC | libc.EFD_NONBLOCK); fds.push(f); return f; };
    const kick = [efd(), efd()];
    const call = [efd(), efd()];
    for (const [run, opcode] of [[0, FUSE_INIT], [1, FUSE_GETATTR]] as const) {
      // A new GuestMemory each run, as a guest reboot makes (other host addresses, a new memfd).
      const mem = GuestMemory.allocate([{ gpa: 0, size: 8 << 20 }], { shared: true });
      try {
        const dev = new FsDevice({ socketFd: fe, socketPath: sock, tag: 'myfs', numRequestQueues: 1, queueSize: 64, connection, timeoutMs: 10_000 });
        const drivers = [new TestDriver(mem, { size: 64, base: 0x10000, dataEnd: 0x100000 }), new TestDriver(mem, { size: 64, base: 0x200000, dataEnd: 0x400000 })];
        dev.activateExternal({ mem, features: (1n << 32n) | dev.features, notifyQueue: () => {}, queues: drivers.map((d, i) => ({ ...d.layout, kickFd: kick[i]!, callFd: call[i]! })) });
        const body = new Uint8Array(16);
        if (opcode === FUSE_INIT) { new DataView(body.buffer).setUint32(0, 7, true); new DataView(body.buffer).setUint32(4, 31, true); }
        const unique = BigInt(100 + run);
        const r = roundTrip(mem, drivers[1]!, kick[1]!, call[1]!, fuseReq(opcode, unique, 1n, body), opcode === FUSE_INIT ? 64 : 104);
        assert.ok(r.called, `run ${run}: virtiofsd signalled our call eventfd (the MSI-X irqfd in the VMM)\n${log}`);
        assert.equal(r.unique, unique, `run ${run}: virtiofsd answered the request (it read and wrote our guest RAM through the memfd)\n${log}`);
        assert.equal(r.error, 0, `run ${run}: ${opcode === FUSE_INIT ? 'FUSE_INIT' : 'FUSE_GETATTR of the root'} succeeded\n${log}`);
        assert.ok(r.len > 16, `run ${run}: a reply body came back`);
        dev.reset();
      } finally {
        mem.free();
      }
    }
    assert.ok(child.exitCode === null, `virtiofsd is still running after the second run\n${log}`);
    assert.doesNotMatch(log, /panic/);
  } finally {
    child.kill('SIGTERM');
    await exited;
    for (const f of fds) libc.close(f);
    rmSync(dir, { recursive: true, force: true });
  }
});

test("FsDevice with Debian's virtiofsd across pause / resume: the rings stop (GET_VRING_BASE), a request posted while paused waits, and is answered after the rings restart", async (t) => {
  if (!existsSync(VIRTIOFSD)) return t.skip(`${VIRTIOFSD} is missing (Debian package qemu-system-common)`);
  if (process.getuid?.() !== 0) return t.skip('virtiofsd needs root');
  const dir = mkdtempSync(join(tmpdir(), 'stv-vfsd-pause-'));
  writeFileSync(join(dir, 'f'), 'x');
  const sock = join(dir, 's.sock');
  const child = spawn(VIRTIOFSD, [`--socket-path=${sock}`, '-o', `source=${dir}`, '-o', 'cache=none', '-o', 'sandbox=chroot'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stdout.on('data', (b: Buffer) => { log += b.toString(); });
  child.stderr.on('data', (b: Buffer) => { log += b.toString(); });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const fds: number[] = [];
  const mem = GuestMemory.allocate([{ gpa: 0, size: 8 << 20 }], { shared: true });
  try {
    for (let i = 0; i < 100 && !existsSync(sock); i++) await sleep(50);
    assert.ok(existsSync(sock), `virtiofsd did not create its socket\n${log}`);
    const fe = libc.socket(libc.AF_UNIX, libc.SOCK_STREAM | libc.SOCK_CLOEXEC | libc.SOCK_NONBLOCK);
    fds.push(fe);
    libc.connectUnix(fe, sock);
    const efd = () => { const f = libc.eventfd(0, libc.EFD_CLOEXEC | libc.EFD_NONBLOCK); fds.push(f); return f; };
    const kick = [efd(), efd()];
    const call = [efd(), efd()];
    const dev = new FsDevice({ socketFd: fe, socketPath: sock, tag: 'myfs', numRequestQueues: 1, queueSize: 64, connection: new SharedArrayBuffer(FS_CONNECTION_STATE_BYTES), timeoutMs: 10_000 });
    const drivers = [new TestDriver(mem, { size: 64, base: 0x10000, dataEnd: 0x100000 }), new TestDriver(mem, { size: 64, base: 0x200000, dataEnd: 0x400000 })];
    dev.activateExternal({ mem, features: (1n << 32n) | dev.features, notifyQueue: () => {}, queues: drivers.map((d, i) => ({ ...d.layout, kickFd: kick[i]!, callFd: call[i]! })) });
    const init = new Uint8Array(16);
    new DataView(init.buffer).setUint32(0, 7, true);
    new DataView(init.buffer).setUint32(4, 31, true);
    const r1 = roundTrip(mem, drivers[1]!, kick[1]!, call[1]!, fuseReq(FUSE_INIT, 200n, 1n, init), 64);
    assert.equal(r1.unique, 200n, `FUSE_INIT answered before the pause\n${log}`);
    dev.pause();
    assert.deepEqual(dev.externalQueueIndexes(), [{ lastAvailIdx: 0, usedIdx: 0 }, { lastAvailIdx: 1, usedIdx: 1 }], `virtiofsd stopped each ring where the driver's requests end\n${log}`);
    // Paused: a request posted and kicked is not taken.
    const c = drivers[1]!.addChain([fuseReq(FUSE_GETATTR, 201n, 1n, new Uint8Array(16))], [16, 104]);
    libc.write(kick[1]!, new Uint8Array(new BigUint64Array([1n]).buffer));
    await sleep(300);
    assert.equal(mem.readU16(drivers[1]!.layout.usedRing + 2), 1, `nothing answered while the rings are stopped\n${log}`);
    dev.resume();
    for (let i = 0; i < 50 && mem.readU16(drivers[1]!.layout.usedRing + 2) !== 2; i++) await sleep(100); // (the event loop runs: virtiofsd's log comes in)
    assert.equal(mem.readU16(drivers[1]!.layout.usedRing + 2), 2, `the request posted while paused is answered after resume\n${log}`);
    assert.equal(mem.readU64(c.writable[0]! + 8), 201n);
    assert.equal(mem.readU32(c.writable[0]! + 4) | 0, 0, 'FUSE_GETATTR of the root succeeded');
    dev.reset();
    assert.ok(child.exitCode === null, `virtiofsd is still running\n${log}`);
    assert.doesNotMatch(log, /panic/);
  } finally {
    child.kill('SIGTERM');
    await exited;
    for (const f of fds) libc.close(f);
    mem.free();
    rmSync(dir, { recursive: true, force: true });
  }
});
