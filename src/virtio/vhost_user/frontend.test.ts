import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import * as libc from '../../sys/libc.js';
import { GuestMemory } from '../../memory/guest_memory.js';
import { FsDevice, FS_CONNECTION_STATE_BYTES } from '../fs/device.js';
import { VhostUserFrontend, VhostUserError } from './frontend.js';
import {
  Request, HEADER_SIZE, VHOST_USER_NEED_REPLY_MASK, encodeMessage, decodeHeader, u64Payload, decodeU64, vringStatePayload,
  decodeVringState, vringAddrPayload, decodeVringAddr, memTablePayload, decodeMemTable,
} from './message.js';
import type { BackendJob, BackendMode, BackendReport } from './backend.fixture.js';

test('message encoding: header, u64, vring state/address, memory table round trips (vhost-user.rst layouts)', () => {
  const m = encodeMessage(Request.SET_VRING_NUM, 0x1 | VHOST_USER_NEED_REPLY_MASK, vringStatePayload(3, 256));
  assert.equal(m.length, HEADER_SIZE + 8);
  assert.deepEqual([...m.subarray(0, 12)], [8, 0, 0, 0, 9, 0, 0, 0, 8, 0, 0, 0]);
  assert.deepEqual(decodeHeader(m), { request: 8, flags: 9, size: 8 });
  assert.deepEqual(decodeVringState(m.subarray(12)), { index: 3, num: 256 });
  assert.equal(decodeU64(u64Payload(0x1_0000_0001n)), 0x1_0000_0001n);
  const a = { index: 1, flags: 0, desc: 0x7f00_0000_1000n, used: 0x7f00_0000_3000n, avail: 0x7f00_0000_2000n, log: 0n };
  const ap = vringAddrPayload(a);
  assert.equal(ap.length, 40);
  // desc at 8, used at 16, avail at 24 (struct vhost_vring_addr order).
  assert.equal(new DataView(ap.buffer).getBigUint64(16, true), a.used);
  assert.deepEqual(decodeVringAddr(ap), a);
  const regions = [
    { guestPhysAddr: 0n, memorySize: 0xc000_0000n, userAddr: 0x7f12_0000_0000n, mmapOffset: 0n },
    { guestPhysAddr: 0x1_0000_0000n, memorySize: 0x4000_0000n, userAddr: 0x7f13_0000_0000n, mmapOffset: 0n },
  ];
  const mp = memTablePayload(regions);
  assert.equal(mp.length, 8 + 2 * 32);
  assert.equal(new DataView(mp.buffer).getUint32(0, true), 2);
  assert.deepEqual(decodeMemTable(mp), regions);
  assert.throws(() => memTablePayload([]), RangeError);
  assert.throws(() => memTablePayload(Array(9).fill(regions[0])), RangeError);
  assert.throws(() => decodeHeader(new Uint8Array(11)), RangeError);
});

test('sendmsgFds/recvmsgFds pass fds over a socketpair (SCM_RIGHTS)', () => {
  const [a, b] = libc.socketpair(libc.AF_UNIX, libc.SOCK_STREAM | libc.SOCK_CLOEXEC);
  const efd = libc.eventfd(0, libc.EFD_CLOEXEC | libc.EFD_NONBLOCK);
  try {
    assert.equal(libc.sendmsgFds(a, new Uint8Array([1, 2, 3]), [efd, efd]), 3);
    const buf = new Uint8Array(16);
    const r = libc.recvmsgFds(b, buf, 4);
    assert.equal(r.n, 3);
    assert.deepEqual([...buf.subarray(0, 3)], [1, 2, 3]);
    assert.equal(r.fds.length, 2);
    assert.ok(r.fds.every((f) => f !== efd), 'received fds are new descriptors');
    // They are the same eventfd: a write through one is read through the original.
    libc.write(r.fds[0]!, u64Payload(5n));
    const got = new Uint8Array(8);
    libc.read(efd, got);
    assert.equal(decodeU64(got), 5n);
    for (const f of r.fds) libc.close(f);
    // Without fds; a peer that has gone is EPIPE (no SIGPIPE).
    assert.equal(libc.sendmsgFds(a, new Uint8Array([9]), []), 1);
    assert.equal(libc.recvmsgFds(b, buf, 0).n, 1);
    libc.close(b);
    assert.equal(libc.sendmsgFds(a, new Uint8Array([9]), []), -libc.EPIPE);
  } finally {
    libc.close(a);
    libc.close(efd);
  }
});

/** The back-end in a worker; resolves once it runs (the front-end's calls then block this thread). */
async function backend(mode: BackendMode, extra: Partial<BackendJob> = {}): Promise<{ fe: number; done: Promise<BackendReport> }> {
  const [fe, be] = libc.socketpair(libc.AF_UNIX, libc.SOCK_STREAM | libc.SOCK_CLOEXEC | libc.SOCK_NONBLOCK);
  const job: BackendJob = { fd: be, mode, peekAt: 0x100, ...extra };
  const w = new Worker(new URL('./backend.fixture.js', import.meta.url), { workerData: job });
  const messages: unknown[] = [];
  let wake: (() => void) | null = null;
  w.on('message', (m: unknown) => { messages.push(m); wake?.(); });
  const next = async (): Promise<unknown> => {
    while (messages.length === 0) {
      await new Promise<void>((res, rej) => { wake = res; w.once('error', rej); });
    }
    return messages.shift();
  };
  assert.equal(await next(), 'ready');
  return { fe, done: next() as Promise<BackendReport> };
}

test('virtio-fs front-end conversation with an in-process back-end: features, owner, memory table (fds mapped), rings, stop', async () => {
  const { fe, done } = await backend('good');
  const mem = GuestMemory.allocate([{ gpa: 0, size: 4 << 20 }], { shared: true });
  const kick = [0, 1].map(() => libc.eventfd(0, libc.EFD_CLOEXEC | libc.EFD_NONBLOCK));
  const call = [0, 1].map(() => libc.eventfd(0, libc.EFD_CLOEXEC | libc.EFD_NONBLOCK));
  const connection = new SharedArrayBuffer(FS_CONNECTION_STATE_BYTES);
  try {
    mem.writeU32(0x100, 0x600df00d);
    const dev = new FsDevice({ socketFd: fe, socketPath: 'test.sock', tag: 'myfs', numRequestQueues: 1, queueSize: 256, connection, timeoutMs: 5000 });
    // Offered: the back-end's INDIRECT_DESC and EVENT_IDX (VERSION_1 comes from the transport).
    assert.equal(dev.features, (1n << 28n) | (1n << 29n));
    const cfg = new Uint8Array(40);
    dev.readConfig(0, cfg);
    assert.equal(new TextDecoder().decode(cfg.subarray(0, 4)), 'myfs');
    assert.equal(cfg[4], 0);
    assert.equal(new DataView(cfg.buffer).getUint32(36, true), 1);
    const queues = [0, 1].map((i) => ({ size: 256, descTable: 0x10000 + i * 0x10000, availRing: 0x11000 + i * 0x10000, usedRing: 0x12000 + i * 0x10000, kickFd: kick[i]!, callFd: call[i]! }));
    dev.activateExternal({ mem, features: (1n << 32n) | (1n << 29n), queues, notifyQueue: () => {} });
    dev.reset();
    // A second device over the same connection (a guest reboot) does not send SET_OWNER again.
    const dev2 = new FsDevice({ socketFd: fe, socketPath: 'test.sock', tag: 'myfs', numRequestQueues: 1, queueSize: 256, connection, timeoutMs: 5000 });
    dev2.reset();
    libc.close(fe);
    const r = await done;
    assert.equal(r.error, undefined);
    const reqs = r.messages.map((m) => m.request);
    assert.equal(reqs.filter((q) => q === Request.SET_OWNER).length, 1, 'SET_OWNER once per connection');
    assert.deepEqual(reqs.slice(0, 5), [Request.GET_FEATURES, Request.GET_PROTOCOL_FEATURES, Request.SET_PROTOCOL_FEATURES, Request.GET_QUEUE_NUM, Request.SET_OWNER]);
    const spf = r.messages.find((m) => m.request === Request.SET_PROTOCOL_FEATURES)!;
    assert.equal(decodeU64(Uint8Array.from(spf.payload)), (1n << 0n) | (1n << 3n), 'MQ and REPLY_ACK (CONFIG is not used)');
    const sf = r.messages.find((m) => m.request === Request.SET_FEATURES)!;
    assert.equal(decodeU64(Uint8Array.from(sf.payload)), (1n << 32n) | (1n << 29n) | (1n << 30n), 'driver features plus PROTOCOL_FEATURES');
    assert.ok((sf.flags & VHOST_USER_NEED_REPLY_MASK) !== 0, 'REPLY_ACK negotiated: NEED_REPLY set');
    // The memory table: guest address 0, our mapping's address, one fd, which maps the same bytes.
    const mt = r.messages.find((m) => m.request === Request.SET_MEM_TABLE)!;
    assert.equal(mt.nfds, 1);
    const table = decodeMemTable(Uint8Array.from(mt.payload));
    assert.deepEqual(table, [{ guestPhysAddr: 0n, memorySize: BigInt(4 << 20), userAddr: mem.regions[0]!.hostAddress, mmapOffset: 0n }]);
    assert.deepEqual(r.peeked, [0x600df00d], 'the back-end read guest RAM through the memfd it got');
    // Ring addresses are front-end user addresses (host address of each part).
    const addrs = r.messages.filter((m) => m.request === Request.SET_VRING_ADDR).map((m) => decodeVringAddr(Uint8Array.from(m.payload)));
    const base = mem.regions[0]!.hostAddress;
    assert.deepEqual(addrs.map((x) => [x.index, x.desc - base, x.avail - base, x.used - base]), [[0, 0x10000n, 0x11000n, 0x12000n], [1, 0x20000n, 0x21000n, 0x22000n]]);
    assert.deepEqual(r.messages.filter((m) => m.request === Request.SET_VRING_NUM).map((m) => decodeVringState(Uint8Array.from(m.payload))), [{ index: 0, num: 256 }, { index: 1, num: 256 }]);
    for (const q of [Request.SET_VRING_KICK, Request.SET_VRING_CALL, Request.SET_VRING_ERR]) {
      assert.deepEqual(r.messages.filter((m) => m.request === q).map((m) => m.nfds), [1, 1], `${q}: one fd per ring`);
    }
    // The call fds the back-end got are ours: its writes arrive on our eventfds.
    assert.deepEqual(r.called, [0, 1]);
    for (const c of call) {
      const b = new Uint8Array(8);
      libc.read(c, b);
      assert.equal(decodeU64(b), 1n);
    }
    const enables = r.messages.filter((m) => m.request === Request.SET_VRING_ENABLE).map((m) => decodeVringState(Uint8Array.from(m.payload)));
    assert.deepEqual(enables, [{ index: 0, num: 1 }, { index: 1, num: 1 }, { index: 0, num: 0 }, { index: 1, num: 0 }]);
    assert.deepEqual(r.messages.filter((m) => m.request === Request.GET_VRING_BASE).map((m) => decodeVringState(Uint8Array.from(m.payload)).index), [0, 1], 'rings stopped on reset');
  } finally {
    mem.free();
    for (const f of [...kick, ...call]) libc.close(f);
  }
});

const BAD: Array<[BackendMode, RegExp]> = [
  ['bad-echo', /answered GET_FEATURES with SET_FEATURES \(malformed reply\)/],
  ['no-reply-flag', /lacks the REPLY flag/],
  ['bad-version', /has version 2, expected 1/],
  ['bad-size', /has 4 payload bytes, expected 8/],
  ['huge-size', /announces 1073741824 payload bytes/],
  ['hangup', /hung up \(waiting for the reply to GET_FEATURES\)/],
  ['silent', /timed out after 300 ms waiting for the reply to GET_FEATURES/],
];

for (const [mode, re] of BAD) {
  test(`a malformed or missing reply is a clear VhostUserError naming the socket: ${mode}`, async () => {
    const { fe, done } = await backend(mode);
    const f = new VhostUserFrontend(fe, { name: '/run/vfsd.sock', timeoutMs: mode === 'silent' ? 300 : 10_000 });
    assert.throws(() => f.getFeatures(), (e: unknown) => e instanceof VhostUserError && re.test(e.message) && e.message.includes('/run/vfsd.sock'));
    // The connection is broken from then on: later calls fail at once, clearly.
    assert.throws(() => f.getProtocolFeatures(), /connection is broken/);
    libc.close(fe);
    await done;
  });
}

test('REPLY_ACK: a back-end that refuses a request (non-zero ack) is an error', async () => {
  const { fe, done } = await backend('nack');
  const f = new VhostUserFrontend(fe, { name: 's', timeoutMs: 2000 });
  f.setProtocolFeatures(1n << 3n);
  assert.throws(() => f.setOwner(), /refused SET_OWNER \(status 1\)/);
  libc.close(fe);
  await done;
});

test('fuzz: random replies never crash the front-end (only VhostUserError or a valid answer)', async () => {
  let seed = 12345;
  const rnd = () => { seed = (seed * 1103515245 + 12345) >>> 0; return seed; };
  for (let i = 0; i < 40; i++) {
    const len = rnd() % 40;
    const raw = new Uint8Array(len);
    for (let k = 0; k < len; k++) raw[k] = rnd() & 0xff;
    // Half of them with a plausible header start, so the checks further in are reached.
    if (i % 2 === 0 && len >= 12) { raw.set([1, 0, 0, 0, 5, 0, 0, 0], 0); raw[8] = rnd() % 16; raw[9] = 0; raw[10] = 0; raw[11] = 0; }
    const { fe, done } = await backend('raw', { raw });
    const f = new VhostUserFrontend(fe, { name: 'fuzz', timeoutMs: 100 });
    try {
      const v = f.getFeatures();
      assert.equal(typeof v, 'bigint');
    } catch (e) {
      assert.ok(e instanceof VhostUserError, `unexpected ${(e as Error).stack}`);
    }
    libc.close(fe);
    await done;
  }
});

test('virtio-fs pause stops every ring (SET_VRING_ENABLE 0, GET_VRING_BASE) and resume sets each up again from the index the back-end stopped at, then kicks it', async () => {
  const { fe, done } = await backend('good');
  const mem = GuestMemory.allocate([{ gpa: 0, size: 4 << 20 }], { shared: true });
  const kick = [0, 1].map(() => libc.eventfd(0, libc.EFD_CLOEXEC | libc.EFD_NONBLOCK));
  const call = [0, 1].map(() => libc.eventfd(0, libc.EFD_CLOEXEC | libc.EFD_NONBLOCK));
  try {
    const dev = new FsDevice({ socketFd: fe, socketPath: 'test.sock', tag: 'myfs', numRequestQueues: 1, queueSize: 256, connection: new SharedArrayBuffer(FS_CONNECTION_STATE_BYTES), timeoutMs: 5000 });
    const queues = [0, 1].map((i) => ({ size: 256, descTable: 0x10000 + i * 0x10000, availRing: 0x11000 + i * 0x10000, usedRing: 0x12000 + i * 0x10000, kickFd: kick[i]!, callFd: call[i]! }));
    mem.writeU16(0x22000 + 2, 5); // ring 1's used.idx as the back-end left it
    dev.activateExternal({ mem, features: (1n << 32n) | (1n << 29n), queues, notifyQueue: () => {} });
    dev.pause();
    assert.deepEqual(dev.externalQueueIndexes(), [{ lastAvailIdx: 7, usedIdx: 0 }, { lastAvailIdx: 7, usedIdx: 5 }], 'the back-end\'s stop index, used.idx from guest RAM');
    assert.deepEqual(dev.saveState(), { kind: 'fs', tag: 'myfs', numRequestQueues: 1 });
    dev.resume();
    for (const k of kick) {
      const b = new Uint8Array(8);
      libc.read(k, b);
      assert.equal(decodeU64(b), 1n, 'each ring is kicked after resume (a kick while stopped may have been dropped)');
    }
    dev.reset();
    libc.close(fe);
    const r = await done;
    assert.equal(r.error, undefined);
    const name = (q: number) => Object.entries(Request).find(([, v]) => v === q)?.[0] ?? String(q);
    const conv = r.messages.slice(r.messages.findIndex((m) => m.request === Request.SET_VRING_ENABLE && decodeVringState(Uint8Array.from(m.payload)).num === 1));
    const steps = conv.map((m) => {
      const n = name(m.request);
      if (m.request === Request.SET_VRING_ENABLE || m.request === Request.SET_VRING_BASE || m.request === Request.GET_VRING_BASE || m.request === Request.SET_VRING_NUM) {
        const s = decodeVringState(Uint8Array.from(m.payload));
        return `${n} ${s.index} ${m.request === Request.GET_VRING_BASE ? '' : s.num}`.trim();
      }
      return n;
    });
    assert.deepEqual(steps.slice(0, 18), [
      'SET_VRING_ENABLE 0 1', 'SET_VRING_ENABLE 1 1', // activation
      'SET_VRING_ENABLE 0 0', 'GET_VRING_BASE 0', 'SET_VRING_ENABLE 1 0', 'GET_VRING_BASE 1', // pause
      'SET_VRING_NUM 0 256', 'SET_VRING_BASE 0 7', 'SET_VRING_ADDR', 'SET_VRING_CALL', 'SET_VRING_KICK', 'SET_VRING_ENABLE 0 1', // resume
      'SET_VRING_NUM 1 256', 'SET_VRING_BASE 1 7', 'SET_VRING_ADDR', 'SET_VRING_CALL', 'SET_VRING_KICK', 'SET_VRING_ENABLE 1 1',
    ]);
  } finally {
    for (const f of [...kick, ...call]) libc.close(f);
    mem.free();
  }
});
