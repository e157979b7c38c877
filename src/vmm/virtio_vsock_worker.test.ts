// virtio-vsock in its real I/O worker behind the virtio-pci transport (no hypervisor): the worker's
// poll set follows the device's (listener, pending clients, connection sockets with POLLIN and
// POLLOUT), grows past its initial size, and a host client's CONNECT reaches the guest driver
// and carries data both ways.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import * as libc from '../sys/libc.js';
import { GuestMemory } from '../memory/guest_memory.js';
import { TestDriver, type BuiltChain } from '../virtio/testing/driver.js';
import { DeviceStatus, VirtioDeviceType, VIRTIO_F_VERSION_1, VIRTIO_F_EVENT_IDX } from '../virtio/device.js';
import { Word, Command, postCommand } from '../virtio/pci/shared.js';
import { type VirtioPciTransport, NOTIFY_OFFSET, MSIX_TABLE_OFFSET } from '../virtio/pci/transport.js';
import { ONE, le, rd, wr, transportRig } from './testing/transport_rig.js';
import { Hdr, Op } from '../virtio/vsock/packet.js';
import { decodeHeader, encodeHeader, readNow, writeSome } from '../virtio/vsock/harness.fixture.js';
import type { VirtioWorkerData } from './virtio_protocol.js';

function findCap(t: VirtioPciTransport, id: number): number {
  const b = new Uint8Array(1);
  t.readConfig(0x34, b);
  let p = b[0]!;
  while (p) {
    t.readConfig(p, b);
    if (b[0] === id) return p;
    t.readConfig(p + 1, b);
    p = b[0]!;
  }
  throw new Error(`capability ${id} not found`);
}

test('virtio-vsock worker: CONNECT through the real worker, 512 KiB host->guest and back, 24 idle clients grow the poll set', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'stv-vsock-worker-'));
  const path = join(dir, 'v.sock');
  const listenFd = libc.socket(libc.AF_UNIX, libc.SOCK_STREAM | libc.SOCK_NONBLOCK | libc.SOCK_CLOEXEC);
  libc.bind(listenFd, libc.sockaddrUn(path));
  libc.listen(listenFd, 64);
  const mem = GuestMemory.allocate([{ gpa: 0, size: 8 << 20 }]);
  const numQueues = 3;
  const vectors = 4;
  const rig = transportRig(VirtioDeviceType.Vsock, numQueues, vectors);
  const { t, shared, controlFd, queueFds, irqFds } = rig;
  const worker = new Worker(new URL('./virtio_worker.js', import.meta.url));
  const exited = new Promise<number>((r) => worker.once('exit', r));
  const errors: string[] = [];
  worker.on('message', (m: { type: string; message?: string }) => { if (m.type === 'error' || m.type === 'needs-reset') errors.push(m.message ?? m.type); });
  const data: VirtioWorkerData = {
    name: '', mem: mem.describe(), controlFd,
    devices: [{ id: 'vsock-test', spec: { kind: 'vsock', cid: 3, listenFd, socketPath: path }, numQueues, shared, queueFds, irqFds, counters: new SharedArrayBuffer(128) }],
  };
  worker.postMessage(data);
  const words = new Int32Array(shared, 0, Word.QueueBase);
  const fds: number[] = [];
  try {
    const drv = [0, 1, 2].map((q) => new TestDriver(mem, { size: 256, base: 0x10000 * q, dataStart: 0x100000 + q * 0x200000, dataEnd: 0x300000 + q * 0x200000 }));
    for (const d of drv) d.reset();
    // Linux's probe order (virtio 1.2, 3.1.1).
    wr(t, 0x14, 0, 1);
    for (let i = 0; rd(t, 0x14, 1) !== 0 && i < 5000; i++) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1);
    wr(t, 0x14, DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER, 1);
    const want = (1n << VIRTIO_F_VERSION_1) | (1n << VIRTIO_F_EVENT_IDX);
    wr(t, 0x08, 0, 4); wr(t, 0x0c, Number(want & 0xffffffffn), 4);
    wr(t, 0x08, 1, 4); wr(t, 0x0c, Number(want >> 32n), 4);
    wr(t, 0x14, DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK, 1);
    assert.ok(rd(t, 0x14, 1) & DeviceStatus.FEATURES_OK);
    t.writeConfig(findCap(t, 0x11) + 2, le(0x8000, 2));
    for (let v = 0; v < vectors; v++) {
      wr(t, MSIX_TABLE_OFFSET + v * 16, 0xfee00000, 4);
      wr(t, MSIX_TABLE_OFFSET + v * 16 + 8, 0x30 + v, 4);
      wr(t, MSIX_TABLE_OFFSET + v * 16 + 12, 0, 4);
    }
    wr(t, 0x10, 0, 2);
    for (let q = 0; q < numQueues; q++) {
      const l = drv[q]!.layout;
      wr(t, 0x16, q, 2);
      wr(t, 0x18, l.size, 2);
      wr(t, 0x1a, q + 1, 2);
      wr(t, 0x20, l.descTable, 4); wr(t, 0x24, 0, 4);
      wr(t, 0x28, l.availRing, 4); wr(t, 0x2c, 0, 4);
      wr(t, 0x30, l.usedRing, 4); wr(t, 0x34, 0, 4);
      wr(t, 0x1c, 1, 2);
    }
    wr(t, 0x14, DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK | DeviceStatus.DRIVER_OK, 1);

    const rx = drv[0]!;
    const tx = drv[1]!;
    const posted = new Map<number, BuiltChain>();
    const post = (n: number) => {
      for (let i = 0; i < n && posted.size < 100; i++) { const c = rx.addChain([], [Hdr.size, 4096]); posted.set(c.head, c); }
      wr(t, NOTIFY_OFFSET, 0, 2);
    };
    /** Wait (bounded) for receive-queue packets until `enough` says so. */
    const collect = async (enough: (ps: Array<ReturnType<typeof decodeHeader> & { payload: Buffer }>) => boolean) => {
      const out: Array<ReturnType<typeof decodeHeader> & { payload: Buffer }> = [];
      const until = Date.now() + 20_000;
      while (!enough(out) && Date.now() < until) {
        await new Promise((r) => setTimeout(r, 5));
        for (const u of rx.used()) {
          const c = posted.get(u.id)!;
          posted.delete(u.id);
          const h = decodeHeader(mem.slice(c.writable[0]!, Hdr.size));
          out.push({ ...h, payload: Buffer.from(mem.slice(c.writable[1]!, h.len)) });
        }
        if (posted.size === 0) rx.resetData();
        post(16);
      }
      return out;
    };
    const send = (p: Parameters<typeof encodeHeader>[0]) => {
      tx.addChain(p.payload ? [encodeHeader(p), p.payload] : [encodeHeader(p)], []);
      wr(t, NOTIFY_OFFSET + 4, 1, 2);
    };
    const connectClient = () => {
      const fd = libc.socket(libc.AF_UNIX, libc.SOCK_STREAM | libc.SOCK_NONBLOCK | libc.SOCK_CLOEXEC);
      assert.equal(libc.connectRaw(fd, libc.sockaddrUn(path)), 0);
      fds.push(fd);
      return fd;
    };
    // 24 clients that never speak: the poll set grows beyond its initial 15 slots.
    for (let i = 0; i < 24; i++) connectClient();
    const c = connectClient();
    writeSome(c, Buffer.from('CONNECT 1234\n'));
    post(16);
    const req = (await collect((ps) => ps.some((p) => p.op === Op.REQUEST))).find((p) => p.op === Op.REQUEST);
    assert.ok(req, `no OP_REQUEST reached the guest (worker: ${errors.join('; ')})`);
    assert.equal(req.dstPort, 1234);
    send({ op: Op.RESPONSE, srcPort: 1234, dstPort: req.srcPort, bufAlloc: 1 << 20 });
    let ok = Buffer.alloc(0);
    for (let i = 0; i < 400 && !ok.includes(0x0a); i++) { await new Promise((r) => setTimeout(r, 5)); ok = Buffer.concat([ok, readNow(c).data]); }
    assert.equal(ok.toString(), `OK ${req.srcPort}\n`);
    // 512 KiB host -> guest, within the guest's 1 MiB credit.
    const up = randomBytes(512 * 1024);
    let off = 0;
    const got: Buffer[] = [];
    let have = 0;
    const until = Date.now() + 30_000;
    while (have < up.length && Date.now() < until) {
      off += writeSome(c, up.subarray(off));
      for (const p of await collect((ps) => ps.length > 0)) if (p.op === Op.RW) { got.push(p.payload); have += p.payload.length; }
    }
    assert.equal(have, up.length, `only ${have} bytes reached the guest (worker: ${errors.join('; ')})`);
    assert.ok(Buffer.concat(got).equals(up), 'the guest got the host bytes in order');
    // guest -> host
    const down = randomBytes(100_000);
    for (let o = 0; o < down.length; o += 4096) send({ op: Op.RW, srcPort: 1234, dstPort: req.srcPort, payload: down.subarray(o, o + 4096), bufAlloc: 1 << 20, fwdCnt: have });
    let back = Buffer.alloc(0);
    for (let i = 0; i < 2000 && back.length < down.length; i++) { await new Promise((r) => setTimeout(r, 5)); back = Buffer.concat([back, readNow(c).data]); }
    assert.ok(back.equals(down), `the host got ${back.length} of ${down.length} bytes`);
    assert.deepEqual(errors, []);
  } finally {
    postCommand(words, Command.Stop);
    libc.write(controlFd, ONE);
    await exited;
    for (const fd of [controlFd, ...queueFds, ...irqFds, ...fds, listenFd]) { try { libc.close(fd); } catch { /* closed */ } }
    mem.free();
    rmSync(dir, { recursive: true, force: true });
  }
});
