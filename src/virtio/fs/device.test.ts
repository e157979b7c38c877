import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import * as libc from '../../sys/libc.js';
import { GuestMemory } from '../../memory/guest_memory.js';
import { TestDriver } from '../testing/driver.js';
import { FsDevice, FS_CONNECTION_STATE_BYTES } from './device.js';
import type { BackendJob, BackendReport } from '../vhost_user/backend.fixture.js';

/** struct fuse_in_header (40 bytes): len, opcode, unique, nodeid, uid, gid, pid, padding. */
function fuseIn(opcode: number, unique: bigint): Uint8Array {
  const b = new Uint8Array(40);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, 40, true);
  dv.setUint32(4, opcode, true);
  dv.setBigUint64(8, unique, true);
  return b;
}

test('virtio-fs: a back-end that hangs up while running: its rings are taken over and every request fails with EIO', async () => {
  const [fe, be] = libc.socketpair(libc.AF_UNIX, libc.SOCK_STREAM | libc.SOCK_CLOEXEC | libc.SOCK_NONBLOCK);
  const job: BackendJob = { fd: be, mode: 'good', peekAt: 0, hangupAfterEnables: 2 };
  const w = new Worker(new URL('../vhost_user/backend.fixture.js', import.meta.url), { workerData: job });
  const msgs: unknown[] = [];
  let wake: (() => void) | null = null;
  w.on('message', (m: unknown) => { msgs.push(m); wake?.(); });
  w.on('error', (e) => { msgs.push(e); wake?.(); });
  const next = async (): Promise<unknown> => {
    while (msgs.length === 0) await new Promise<void>((res) => { wake = res; });
    return msgs.shift();
  };
  assert.equal(await next(), 'ready', 'the back-end runs before the front-end blocks this thread');
  const done = next() as Promise<BackendReport>;
  const mem = GuestMemory.allocate([{ gpa: 0, size: 4 << 20 }], { shared: true });
  const efd = () => libc.eventfd(0, libc.EFD_CLOEXEC | libc.EFD_NONBLOCK);
  const fds = [efd(), efd(), efd(), efd()];
  const logs: string[] = [];
  try {
    const dev = new FsDevice({ socketFd: fe, socketPath: '/run/v.sock', tag: 'myfs', numRequestQueues: 1, queueSize: 64, connection: new SharedArrayBuffer(FS_CONNECTION_STATE_BYTES), log: (m) => logs.push(m), timeoutMs: 5000 });
    const drivers = [new TestDriver(mem, { size: 64, base: 0x10000, dataEnd: 0x80000 }), new TestDriver(mem, { size: 64, base: 0x100000, dataEnd: 0x180000 })];
    const notified: number[] = [];
    dev.activateExternal({
      mem, features: 1n << 32n, notifyQueue: (i) => notified.push(i),
      queues: drivers.map((d, i) => ({ ...d.layout, kickFd: fds[i]!, callFd: fds[2 + i]! })),
    });
    const r = await done;
    assert.equal(r.error, undefined);
    // While the back-end ran, the rings were its own: we do not touch them.
    drivers[1]!.addChain([fuseIn(15 /* FUSE_READ */, 0x1234n)], [16, 4096]);
    dev.processQueue(1);
    assert.deepEqual(drivers[1]!.used(), []);
    assert.equal(dev.takenOver, false);
    // The worker's poll sees the hang-up on the socket.
    const p = libc.pollFds(1);
    libc.pollFdSet(p, 0, fe, libc.POLLIN);
    assert.equal(libc.poll(p, 5000), 1);
    assert.ok(dev.pollFds().includes(fe));
    dev.onFdReady(fe);
    assert.equal(dev.takenOver, true);
    assert.deepEqual(dev.pollFds(), [], 'the dead socket is not polled any more');
    assert.match(logs.join('\n'), /vhost-user back-end \/run\/v.sock hung up .* requests now fail with EIO/);
    // The request posted before the takeover is answered at once: fuse_out_header {16, -EIO, unique}.
    const u = drivers[1]!.used();
    assert.equal(u.length, 1);
    assert.equal(u[0]!.len, 16);
    assert.deepEqual(notified, [1]);
    // Later requests too; FORGET (no reply buffer) on hiprio just comes back.
    const c = drivers[1]!.addChain([fuseIn(26 /* FUSE_INIT */, 0x99n)], [16, 64]);
    dev.processQueue(1);
    assert.equal(drivers[1]!.used()[0]!.len, 16);
    assert.equal(mem.readU32(c.writable[0]!), 16);
    assert.equal(mem.readU32(c.writable[0]! + 4) | 0, -5);
    assert.equal(mem.readU64(c.writable[0]! + 8), 0x99n);
    drivers[0]!.addChain([fuseIn(2 /* FUSE_FORGET */, 0x7n), new Uint8Array(8)], []);
    dev.processQueue(0);
    assert.deepEqual(drivers[0]!.used().map((e) => e.len), [0]);
    assert.equal(dev.counters.failedRequests, 3);
    // Fuzz: whatever chains the guest posts (short headers, no reply buffer, tiny reply buffers),
    // each comes back once, with 16 bytes written only where a whole fuse_out_header fits.
    let seed = 7;
    const rnd = (n: number) => { seed = (seed * 1103515245 + 12345) >>> 0; return seed % n; };
    for (let i = 0; i < 300; i++) {
      const d = drivers[1]!;
      d.resetData();
      const inLen = [0, 8, 15, 16, 40, 100][rnd(6)]!;
      const outs = Array.from({ length: rnd(3) }, () => [1, 8, 15, 16, 4096][rnd(5)]!);
      const head = new Uint8Array(inLen);
      for (let k = 0; k < inLen; k++) head[k] = rnd(256);
      d.addChain(inLen > 0 ? [head] : [], outs.length > 0 || inLen > 0 ? outs : [16]);
      dev.processQueue(1);
      const u = d.used();
      assert.equal(u.length, 1);
      const fits = inLen >= 16 && outs.length > 0 && outs[0]! >= 16;
      assert.equal(u[0]!.len, fits ? 16 : 0, `in ${inLen}, out ${outs.join(',')}`);
    }
    // A reset (guest reboot) does not throw although the back-end is gone.
    dev.reset();
  } finally {
    mem.free();
    for (const f of fds) libc.close(f);
    libc.close(fe);
  }
});
