// virtio-vsock in-process benchmark (no hypervisor, no sandbox): the device runs in the VMM's real
// I/O thread (dist/src/vmm/virtio_worker.js) behind the virtio-pci transport, and this thread plays
// both the guest driver (answers OP_REQUEST with OP_RESPONSE at once, returns receive buffers,
// grants credit the way Linux does) and the host client of the hybrid socket
// (`CONNECT 1234\n` -> `OK <port>\n`). Prints medians of the CONNECT->OK latency with its two hops
// (client connect to the guest seeing OP_REQUEST; OP_RESPONSE kick to the client reading OK) and
// host->guest / guest->host stream MB/s.
//
//   npx tsc -p tsconfig.json && node dist/bench/vsock_inproc.js [CONNS=200] [MIB=64]
import { Worker } from 'node:worker_threads';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as libc from '../src/sys/libc.js';
import { GuestMemory } from '../src/memory/guest_memory.js';
import { TestDriver } from '../src/virtio/testing/driver.js';
import { VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../src/virtio/queue.js';
import { DeviceStatus, VirtioDeviceType, VIRTIO_F_VERSION_1, VIRTIO_F_EVENT_IDX } from '../src/virtio/device.js';
import { Command, Word, postCommand } from '../src/virtio/pci/shared.js';
import { NOTIFY_OFFSET, MSIX_TABLE_OFFSET } from '../src/virtio/pci/transport.js';
import { ONE, le, transportRig } from '../src/vmm/testing/transport_rig.js';
import { Hdr, Op } from '../src/virtio/vsock/packet.js';
import { encodeHeader } from '../src/virtio/vsock/harness.fixture.js';
import { THREAD_OPTIONS } from '../src/vmm/thread_options.js';
import type { VirtioWorkerData } from '../src/vmm/virtio_protocol.js';
import { median } from './stats.js';

const CONNS = Number(process.argv[2] ?? 200);
const MIB = Number(process.argv[3] ?? 64);
const GUEST_BUF_ALLOC = 256 * 1024;
const RX_CHAINS = 64;
const RX_BUF = 4096; // payload bytes per receive buffer (Linux: 4 KiB)
const TX_CHAINS = 32;
const TX_PAYLOAD = 64 * 1024;

const now = () => Number(process.hrtime.bigint()) / 1e6;

const dir = mkdtempSync(join(tmpdir(), 'stv-vsock-bench-'));
const path = join(dir, 'v.sock');
const listenFd = libc.socket(libc.AF_UNIX, libc.SOCK_STREAM | libc.SOCK_NONBLOCK | libc.SOCK_CLOEXEC);
libc.bind(listenFd, libc.sockaddrUn(path));
libc.listen(listenFd, 64);
const mem = GuestMemory.allocate([{ gpa: 0, size: 32 << 20 }]);
const numQueues = 3;
const vectors = 4;
const { t, shared, controlFd, queueFds, irqFds } = transportRig(VirtioDeviceType.Vsock, numQueues, vectors);
const wr = (off: number, v: number, len: number) => t.write(off, le(v, len));
const rd = (off: number, len: number): number => {
  const b = new Uint8Array(len);
  t.read(off, b);
  let v = 0;
  for (let i = len - 1; i >= 0; i--) v = v * 256 + b[i]!;
  return v;
};
function findCap(id: number): number {
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

const worker = new Worker(new URL('../src/vmm/virtio_worker.js', import.meta.url), THREAD_OPTIONS);
const exited = new Promise<number>((r) => worker.once('exit', r));
worker.on('message', (m: { type: string; message?: string }) => { if (m.type === 'error' || m.type === 'needs-reset') console.error(`worker: ${m.message ?? m.type}`); });
const data: VirtioWorkerData = {
  name: '', mem: mem.describe(), controlFd,
  devices: [{ id: 'vsock-bench', spec: { kind: 'vsock', cid: 3, listenFd, socketPath: path }, numQueues, shared, queueFds, irqFds, counters: new SharedArrayBuffer(128) }],
};
worker.postMessage(data);

const drv = [0, 1, 2].map((q) => new TestDriver(mem, { size: 256, base: 0x10000 * q, dataStart: 0x100000 + q * 0x800000, dataEnd: 0x900000 + q * 0x800000 }));
for (const d of drv) d.reset();
const sleep1 = () => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1);
wr(0x14, 0, 1);
for (let i = 0; rd(0x14, 1) !== 0 && i < 5000; i++) sleep1();
wr(0x14, DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER, 1);
const want = (1n << VIRTIO_F_VERSION_1) | (1n << VIRTIO_F_EVENT_IDX);
wr(0x08, 0, 4); wr(0x0c, Number(want & 0xffffffffn), 4);
wr(0x08, 1, 4); wr(0x0c, Number(want >> 32n), 4);
wr(0x14, DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK, 1);
t.writeConfig(findCap(0x11) + 2, le(0x8000, 2));
for (let v = 0; v < vectors; v++) {
  wr(MSIX_TABLE_OFFSET + v * 16, 0xfee00000, 4);
  wr(MSIX_TABLE_OFFSET + v * 16 + 8, 0x30 + v, 4);
  wr(MSIX_TABLE_OFFSET + v * 16 + 12, 0, 4);
}
wr(0x10, 0, 2);
for (let q = 0; q < numQueues; q++) {
  const l = drv[q]!.layout;
  wr(0x16, q, 2); wr(0x18, l.size, 2); wr(0x1a, q + 1, 2);
  wr(0x20, l.descTable, 4); wr(0x24, 0, 4);
  wr(0x28, l.availRing, 4); wr(0x2c, 0, 4);
  wr(0x30, l.usedRing, 4); wr(0x34, 0, 4);
  wr(0x1c, 1, 2);
}
wr(0x14, DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK | DeviceStatus.DRIVER_OK, 1);

// ---- the guest driver: fixed receive and transmit chains (descriptors 2i, 2i+1) ----------------
const rx = drv[0]!;
const tx = drv[1]!;
const rxHdr: number[] = [];
const rxData: number[] = [];
for (let i = 0; i < RX_CHAINS; i++) {
  rxHdr.push(rx.alloc(Hdr.size)); rxData.push(rx.alloc(RX_BUF));
  rx.writeDesc(2 * i, rxHdr[i]!, Hdr.size, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 2 * i + 1);
  rx.writeDesc(2 * i + 1, rxData[i]!, RX_BUF, VIRTQ_DESC_F_WRITE, 0);
  rx.publish(2 * i);
}
const txHdr: number[] = [];
const txData: number[] = [];
const txFree: number[] = [];
for (let i = 0; i < TX_CHAINS; i++) { txHdr.push(tx.alloc(Hdr.size)); txData.push(tx.alloc(TX_PAYLOAD)); txFree.push(i); }
let rxSeen = 0;
let txSeen = 0;
/** avail.idx at the last kick of each queue: kick only when the device asked (vring_need_event on avail_event, 2.7.10), as Linux does. */
const kickedAt = [0, 0];
function kick(q: 0 | 1): void {
  const d = drv[q]!;
  const nw = d.availIdx;
  const old = kickedAt[q]!;
  kickedAt[q] = nw;
  if (((nw - d.availEvent - 1) & 0xffff) < ((nw - old) & 0xffff)) wr(NOTIFY_OFFSET + 4 * q, q, 2);
}
const kickRx = () => kick(0);

interface Pkt { op: number; srcPort: number; dstPort: number; len: number; flags: number; bufAlloc: number; fwdCnt: number; data: number }
const hv = new DataView(new ArrayBuffer(Hdr.size));
/** Receive-queue packets now (their buffers go back to the device at once); re-arms used_event. */
function takeRx(out: Pkt[]): void {
  for (const u of rx.used()) {
    const i = u.id >> 1;
    new Uint8Array(hv.buffer).set(mem.slice(rxHdr[i]!, Hdr.size));
    out.push({
      op: hv.getUint16(Hdr.op, true), srcPort: hv.getUint32(Hdr.srcPort, true), dstPort: hv.getUint32(Hdr.dstPort, true),
      len: hv.getUint32(Hdr.len, true), flags: hv.getUint32(Hdr.flags, true), bufAlloc: hv.getUint32(Hdr.bufAlloc, true), fwdCnt: hv.getUint32(Hdr.fwdCnt, true), data: rxData[i]!,
    });
    rx.publish(u.id);
    rxSeen = (rxSeen + 1) & 0xffff;
  }
  rx.setUsedEvent(rxSeen); // virtio 1.2, 2.7.10: interrupt me at the next used buffer
  if (out.length > 0) kickRx();
}
function reapTx(): void {
  for (const u of tx.used()) { txFree.push(u.id >> 1); txSeen = (txSeen + 1) & 0xffff; }
  tx.setUsedEvent(txSeen);
}
/** One packet on the transmit queue (payload copied from `payload`, `len` bytes); false when no chain is free. */
function send(p: Parameters<typeof encodeHeader>[0], payload?: Uint8Array, len = 0, doKick = true): boolean {
  reapTx();
  const i = txFree.pop();
  if (i === undefined) return false;
  mem.writeBytes(txHdr[i]!, encodeHeader({ ...p, len }));
  if (payload !== undefined && len > 0) mem.slice(txData[i]!, len).set(payload.subarray(0, len));
  if (len > 0) {
    tx.writeDesc(2 * i, txHdr[i]!, Hdr.size, VIRTQ_DESC_F_NEXT, 2 * i + 1);
    tx.writeDesc(2 * i + 1, txData[i]!, len, 0, 0);
  } else {
    tx.writeDesc(2 * i, txHdr[i]!, Hdr.size, 0, 0);
  }
  tx.publish(2 * i);
  if (doKick) kick(1);
  return true;
}

const pfd = libc.pollFds(3);
const scratch = new Uint8Array(8);
const drainFd = (fd: number) => { libc.readRaw(fd, scratch, 8); };
/** Block until the receive-queue interrupt, the transmit-queue interrupt or `fd` (events `evs`); returns revents of fd. */
function waitFor(fd: number, evs: number): number {
  libc.pollFdSet(pfd, 0, irqFds[1]!, libc.POLLIN);
  libc.pollFdSet(pfd, 1, irqFds[2]!, libc.POLLIN);
  libc.pollFdSet(pfd, 2, fd, evs);
  try { libc.poll(pfd, 2000); } catch (e) { if (!(e instanceof libc.SysError && e.errno === libc.EINTR)) throw e; return 0; }
  if (libc.pollRevents(pfd, 0) !== 0) drainFd(irqFds[1]!);
  if (libc.pollRevents(pfd, 1) !== 0) drainFd(irqFds[2]!);
  return fd < 0 ? 0 : libc.pollRevents(pfd, 2);
}

const pkts: Pkt[] = [];
const lineBuf = new Uint8Array(64);
const connectLine = new TextEncoder().encode('CONNECT 1234\n');

/** One host-initiated connection: returns the client fd, the guest's peer port, and the hop times. */
function connectOnce(): { fd: number; port: number; total: number; toReq: number; toOk: number } {
  const t0 = now();
  const fd = libc.socket(libc.AF_UNIX, libc.SOCK_STREAM | libc.SOCK_NONBLOCK | libc.SOCK_CLOEXEC);
  if (libc.connectRaw(fd, libc.sockaddrUn(path)) !== 0) throw new Error('connect to the hybrid socket failed');
  if (libc.writeRaw(fd, connectLine, connectLine.length) !== connectLine.length) throw new Error('CONNECT line not written');
  let port = -1;
  let tReq = 0;
  let tResp = 0;
  let got = 0;
  const deadline = t0 + 10_000;
  while (got === 0 || lineBuf[got - 1] !== 0x0a) {
    if (now() > deadline) throw new Error(`no OK within 10 s (request seen: ${port >= 0})`);
    const re = waitFor(fd, libc.POLLIN);
    pkts.length = 0;
    takeRx(pkts);
    for (const p of pkts) {
      if (p.op === Op.REQUEST && p.dstPort === 1234 && port < 0) {
        tReq = now();
        port = p.srcPort;
        send({ op: Op.RESPONSE, srcPort: 1234, dstPort: port, bufAlloc: GUEST_BUF_ALLOC });
        tResp = now();
      } else if (p.op === Op.SHUTDOWN || p.op === Op.RST) {
        if (p.op === Op.SHUTDOWN) send({ op: Op.RST, srcPort: p.dstPort, dstPort: p.srcPort });
      }
    }
    if ((re & libc.POLLIN) !== 0) {
      const r = libc.readRaw(fd, lineBuf.subarray(got), lineBuf.length - got);
      if (r > 0) got += r;
      else if (r === 0) throw new Error('the device closed the client');
    }
  }
  const t1 = now();
  return { fd, port, total: t1 - t0, toReq: tReq - t0, toOk: t1 - tResp };
}

/** Close a connection from the host side and let the guest answer the SHUTDOWN with RST. */
function closeConn(fd: number): void {
  libc.close(fd);
  const until = now() + 5000;
  for (;;) {
    pkts.length = 0;
    takeRx(pkts);
    let done = false;
    for (const p of pkts) if (p.op === Op.SHUTDOWN) { send({ op: Op.RST, srcPort: p.dstPort, dstPort: p.srcPort }); done = true; }
    if (done || now() > until) return;
    waitFor(-1, 0);
  }
}

function connectBench(): void {
  const warm = 20;
  const total: number[] = []; const toReq: number[] = []; const toOk: number[] = [];
  const t0 = now();
  for (let i = 0; i < warm + CONNS; i++) {
    const r = connectOnce();
    closeConn(r.fd);
    if (i < warm) continue;
    total.push(r.total); toReq.push(r.toReq); toOk.push(r.toOk);
  }
  const wall = now() - t0;
  const f = (v: number) => `${(v * 1000).toFixed(0)} µs`;
  const sorted = [...total].sort((a, b) => a - b);
  console.log(`connect (CONNECT -> OK), median of ${CONNS}: ${f(median(total))} (p10 ${f(sorted[Math.floor(CONNS * 0.1)]!)}, p90 ${f(sorted[Math.floor(CONNS * 0.9)]!)}, max ${f(sorted[CONNS - 1]!)})`);
  console.log(`  hop 1, client connect -> guest sees OP_REQUEST: ${f(median(toReq))}`);
  console.log(`  hop 2, guest kicks OP_RESPONSE -> client reads OK: ${f(median(toOk))}`);
  console.log(`  per connection incl. close and RST: ${f(wall / (warm + CONNS))}`);
}

function streamBench(): void {
  const { fd, port } = connectOnce();
  const bytes = MIB << 20;
  const chunk = new Uint8Array(256 * 1024).fill(0x5a);
  // host -> guest: the guest consumes every RW packet and grants credit every 64 KiB (as Linux does when its free space runs low).
  let written = 0; let recv = 0; let fwd = 0; let lastAdv = 0;
  let t0 = now();
  while (recv < bytes) {
    if (written < bytes) {
      const r = libc.writeRaw(fd, chunk, Math.min(chunk.length, bytes - written));
      if (r > 0) written += r;
    }
    waitFor(fd, written < bytes ? libc.POLLOUT : 0);
    pkts.length = 0;
    takeRx(pkts);
    for (const p of pkts) if (p.op === Op.RW) { recv += p.len; fwd = (fwd + p.len) >>> 0; }
    if (((fwd - lastAdv) >>> 0) >= 64 * 1024) {
      lastAdv = fwd;
      while (!send({ op: Op.CREDIT_UPDATE, srcPort: 1234, dstPort: port, bufAlloc: GUEST_BUF_ALLOC, fwdCnt: fwd })) waitFor(-1, 0);
    }
  }
  const h2g = bytes / ((now() - t0) / 1000) / 1e6;
  // guest -> host: 64 KiB packets within the host's credit; the host client reads them.
  let peerAlloc = 256 * 1024; let peerFwd = 0; let sent = 0; let got = 0;
  const rbuf = new Uint8Array(256 * 1024);
  t0 = now();
  while (got < bytes) {
    let kicked = false;
    while (sent < bytes) {
      const credit = peerAlloc - ((sent - peerFwd) >>> 0);
      const n = Math.min(TX_PAYLOAD, bytes - sent, credit);
      if (n <= 0) break;
      if (!send({ op: Op.RW, srcPort: 1234, dstPort: port, bufAlloc: GUEST_BUF_ALLOC, fwdCnt: fwd }, chunk, n, false)) break;
      sent += n; kicked = true;
    }
    if (kicked) kick(1);
    for (;;) { const r = libc.readRaw(fd, rbuf, rbuf.length); if (r <= 0) break; got += r; }
    if (got >= bytes) break;
    waitFor(fd, libc.POLLIN);
    pkts.length = 0;
    takeRx(pkts);
    for (const p of pkts) { peerAlloc = p.bufAlloc; peerFwd = p.fwdCnt; }
  }
  const g2h = bytes / ((now() - t0) / 1000) / 1e6;
  console.log(`stream ${MIB} MiB: host->guest ${h2g.toFixed(0)} MB/s, guest->host ${g2h.toFixed(0)} MB/s`);
  closeConn(fd);
}

try {
  connectBench();
  streamBench();
} finally {
  postCommand(new Int32Array(shared, 0, Word.QueueBase), Command.Stop);
  libc.write(controlFd, ONE);
  await exited;
  for (const fd of [controlFd, ...queueFds, ...irqFds, listenFd]) { try { libc.close(fd); } catch { /* closed */ } }
  mem.free();
  rmSync(dir, { recursive: true, force: true });
}
