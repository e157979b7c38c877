import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import * as libc from '../sys/libc.js';
import { SysError } from '../sys/libc.js';
import { Tap, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, VNET_HDR_SIZE, parseIpv4, parseMac, IFREQ_SIZE, TUNSETIFF, TUNSETOFFLOAD, TUNSETVNETHDRSZ, TUNSETQUEUE, TUNGETIFF, IFF_TAP, IFF_NO_PI } from './tap.js';

/** Why tap tests cannot run here, or null. */
function noTap(): string | null {
  if (!existsSync('/dev/net/tun')) return '/dev/net/tun is missing';
  try {
    const t = Tap.open({ vnetHdr: true });
    t.close();
    return null;
  } catch (e) {
    return `cannot create a tap: ${(e as Error).message}`;
  }
}
const skipReason = noTap();

function skip(t: { skip: (m: string) => void }): boolean {
  if (skipReason === null) return false;
  console.log(`# skipped: ${skipReason}`);
  t.skip(skipReason);
  return true;
}

function ip(...args: string[]): string {
  return execFileSync('ip', args, { encoding: 'utf8' });
}

function linkExists(name: string): boolean {
  try { ip('link', 'show', 'dev', name); return true; } catch { return false; }
}

test('ioctl numbers and struct ifreq size match the kernel headers', () => {
  assert.equal(TUNSETIFF, 0x400454ca);
  assert.equal(TUNSETOFFLOAD, 0x400454d0);
  assert.equal(TUNSETVNETHDRSZ, 0x400454d8);
  assert.equal(TUNSETQUEUE, 0x400454d9);
  assert.equal(IFREQ_SIZE, 40);
  assert.equal(VNET_HDR_SIZE, 12);
});

test('address parsing', () => {
  assert.deepEqual([...parseIpv4('192.168.249.1')], [192, 168, 249, 1]);
  assert.throws(() => parseIpv4('192.168.249.256'), /invalid IPv4 address/);
  assert.throws(() => parseIpv4('1.2.3'), /invalid IPv4 address/);
  assert.deepEqual([...parseMac('52:54:00:AB:cd:01')], [0x52, 0x54, 0, 0xab, 0xcd, 0x01]);
  assert.throws(() => parseMac('52:54:00:ab:cd'), /invalid MAC/);
});

test('bad names and queue counts are refused before touching the kernel', () => {
  assert.throws(() => Tap.open({ name: 'a-name-that-is-too-long', vnetHdr: true }), /invalid tap name/);
  assert.throws(() => Tap.open({ name: 'bad/name', vnetHdr: true }), /invalid tap name/);
  assert.throws(() => Tap.open({ queues: 0, vnetHdr: true }), /queue count/);
});

test('a kernel-named tap gets an address, comes up, takes a frame and goes away on close', (t) => {
  if (skip(t)) return;
  const tap = Tap.open({ vnetHdr: true });
  const name = tap.name;
  try {
    assert.match(name, /^tap\d+$/);
    assert.equal(tap.fds.length, 1);
    // Non-blocking: nothing to read yet is EAGAIN, not a hang.
    const flags = libc.readRaw(tap.fds[0]!, new Uint8Array(2048), 2048);
    assert.ok(flags === -libc.EAGAIN || flags > 0, `read on a fresh tap: ${flags}`);
    tap.setOffload(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6);
    tap.setOffload(0);
    tap.configure({ ip: '192.168.249.1', mask: '255.255.255.0', mac: '02:00:00:00:f9:01', mtu: 1400 });
    const addr = ip('-4', 'addr', 'show', 'dev', name);
    assert.match(addr, /inet 192\.168\.249\.1\/24/);
    assert.match(addr, /<[^>]*\bUP\b[^>]*>/);
    assert.match(ip('link', 'show', 'dev', name), /link\/ether 02:00:00:00:f9:01/);
    assert.match(ip('link', 'show', 'dev', name), /mtu 1400/);
    // A broadcast ARP request from the "guest" (vnet header of zeros: no offloads).
    const frame = new Uint8Array(VNET_HDR_SIZE + 42);
    const eth = frame.subarray(VNET_HDR_SIZE);
    eth.fill(0xff, 0, 6);
    eth.set([0x02, 0, 0, 0, 0xf9, 0x02], 6);
    eth.set([0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1], 12);
    eth.set([0x02, 0, 0, 0, 0xf9, 0x02, 192, 168, 249, 2], 22);
    eth.set([192, 168, 249, 1], 38);
    assert.equal(libc.writeRaw(tap.fds[0]!, frame, frame.length), frame.length);
  } finally {
    tap.close();
  }
  assert.equal(linkExists(name), false, 'a non-persistent tap disappears with its last fd');
  tap.close(); // idempotent
  assert.throws(() => tap.setOffload(0), /closed/);
});

test('a named multi-queue tap opens one fd per queue; queues detach and reattach', (t) => {
  if (skip(t)) return;
  const name = `stvmq${process.pid % 100000}`;
  const tap = Tap.open({ name, queues: 3, vnetHdr: true });
  try {
    assert.equal(tap.name, name);
    assert.equal(tap.fds.length, 3);
    assert.equal(new Set(tap.fds).size, 3);
    assert.match(ip('link', 'show', 'dev', name), new RegExp(`${name}:`));
    tap.setQueueEnabled(2, false);
    tap.setQueueEnabled(2, false); // idempotent
    tap.setQueueEnabled(1, false);
    tap.setQueueEnabled(2, true);
    tap.setQueueEnabled(2, true);
    tap.setQueueEnabled(1, true);
    tap.setQueueEnabled(0, true);
    assert.throws(() => tap.setQueueEnabled(3, true), /no queue 3/);
    // A single-queue open of the multi-queue tap is refused with a clear error.
    assert.throws(() => Tap.open({ name, vnetHdr: true }), (e: unknown) =>
      e instanceof SysError && /TUNSETIFF/.test(e.message) && e.message.includes(name));
    tap.configure({});
    assert.match(ip('link', 'show', 'dev', name), /<[^>]*\bUP\b[^>]*>/);
  } finally {
    tap.close();
  }
  assert.equal(linkExists(name), false);
});

test('released fds stay open after Tap.close()', (t) => {
  if (skip(t)) return;
  const tap = Tap.open({ vnetHdr: true });
  const fds = tap.releaseFds();
  tap.close();
  assert.ok(linkExists(tap.name));
  for (const fd of fds) libc.close(fd);
  assert.equal(linkExists(tap.name), false);
});

test('configuring an interface that is gone names the ioctl and the tap', (t) => {
  if (skip(t)) return;
  const tap = Tap.open({ vnetHdr: true });
  const fds = tap.releaseFds();
  for (const fd of fds) libc.close(fd);
  assert.throws(() => tap.configure({ ip: '192.168.247.1' }), (e: unknown) =>
    e instanceof SysError && /SIOCSIFADDR/.test(e.message) && e.message.includes(tap.name) && e.code === 'ENODEV');
});

test('Tap.fromFds adopts a tap opened elsewhere (TUNGETIFF checks), and refuses other fds', (t) => {
  if (skip(t)) return;
  assert.equal(TUNGETIFF, 0x800454d2);
  const owner = Tap.open({ name: 'stvfromfd0', vnetHdr: true });
  try {
    const dup = libc.dupCloexec(owner.fds[0]!);
    const adopted = Tap.fromFds([dup]);
    assert.equal(adopted.name, 'stvfromfd0');
    assert.deepEqual(adopted.fds, [dup]);
    adopted.close();
    // A tap without IFF_VNET_HDR: virtio-net cannot use it.
    const plain = libc.open('/dev/net/tun', libc.O_RDWR | libc.O_CLOEXEC);
    const req = new Uint8Array(IFREQ_SIZE);
    req.set(Buffer.from('stvfromfd1'), 0);
    new DataView(req.buffer).setUint16(16, IFF_TAP | IFF_NO_PI, true);
    libc.ioctl(plain, TUNSETIFF, req, 'TUNSETIFF');
    assert.throws(() => Tap.fromFds([plain]), /stvfromfd1 \(fd \d+\) was opened without IFF_VNET_HDR/);
    // fromFds closed it (it owns what it is given, also on failure).
    assert.throws(() => libc.close(plain), /EBADF/);
    const memfd = libc.memfdCreate('not-a-tap', libc.MFD_CLOEXEC);
    assert.throws(() => Tap.fromFds([memfd]), /is not a tun\/tap fd \(TUNGETIFF: (ENOTTY|EBADFD|EINVAL)\)/);
    // Two fds of a single-queue tap: not multi-queue.
    const a = libc.dupCloexec(owner.fds[0]!);
    const b = libc.dupCloexec(owner.fds[0]!);
    assert.throws(() => Tap.fromFds([a, b]), /2 fds given but tap stvfromfd0 is not multi-queue/);
  } finally {
    owner.close();
  }
});
