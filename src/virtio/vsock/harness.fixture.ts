// Test rig for the virtio-vsock model: a guest driver side built on TestDriver (receive, transmit
// and event queues in one GuestMemory), real non-blocking Unix sockets on the host side, and an
// event loop that does what the VMM's worker does (poll(2) over pollFds()/pollEvents(), then
// onFdReady) without a thread.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as libc from '../../sys/libc.js';
import { GuestMemory } from '../../memory/guest_memory.js';
import { TestDriver, type BuiltChain } from '../testing/driver.js';
import { VsockDevice, type VsockDeviceOptions } from './device.js';
import { Hdr, VIRTIO_VSOCK_TYPE_STREAM, VMADDR_CID_HOST } from './packet.js';

export const GUEST_CID = 3;

export interface Packet {
  srcCid: bigint;
  dstCid: bigint;
  srcPort: number;
  dstPort: number;
  len: number;
  type: number;
  op: number;
  flags: number;
  bufAlloc: number;
  fwdCnt: number;
  payload: Uint8Array;
}

export function encodeHeader(p: Partial<Packet>): Uint8Array {
  const b = new Uint8Array(Hdr.size);
  const v = new DataView(b.buffer);
  v.setBigUint64(Hdr.srcCid, p.srcCid ?? BigInt(GUEST_CID), true);
  v.setBigUint64(Hdr.dstCid, p.dstCid ?? BigInt(VMADDR_CID_HOST), true);
  v.setUint32(Hdr.srcPort, p.srcPort ?? 0, true);
  v.setUint32(Hdr.dstPort, p.dstPort ?? 0, true);
  v.setUint32(Hdr.len, p.len ?? p.payload?.length ?? 0, true);
  v.setUint16(Hdr.type, p.type ?? VIRTIO_VSOCK_TYPE_STREAM, true);
  v.setUint16(Hdr.op, p.op ?? 0, true);
  v.setUint32(Hdr.flags, p.flags ?? 0, true);
  v.setUint32(Hdr.bufAlloc, p.bufAlloc ?? 0, true);
  v.setUint32(Hdr.fwdCnt, p.fwdCnt ?? 0, true);
  return b;
}

export function decodeHeader(b: Uint8Array): Omit<Packet, 'payload'> {
  const v = new DataView(b.buffer, b.byteOffset, Hdr.size);
  return {
    srcCid: v.getBigUint64(Hdr.srcCid, true), dstCid: v.getBigUint64(Hdr.dstCid, true),
    srcPort: v.getUint32(Hdr.srcPort, true), dstPort: v.getUint32(Hdr.dstPort, true),
    len: v.getUint32(Hdr.len, true), type: v.getUint16(Hdr.type, true), op: v.getUint16(Hdr.op, true),
    flags: v.getUint32(Hdr.flags, true), bufAlloc: v.getUint32(Hdr.bufAlloc, true), fwdCnt: v.getUint32(Hdr.fwdCnt, true),
  };
}

export class VsockRig {
  readonly dir = mkdtempSync(join(tmpdir(), 'stv-vsock-'));
  readonly path = join(this.dir, 'v.sock');
  readonly listenFd: number;
  readonly mem = GuestMemory.fromBuffers([{ gpa: 0, buffer: new ArrayBuffer(32 << 20) }]);
  readonly rx = new TestDriver(this.mem, { size: 256, base: 0, dataStart: 0x100000, dataEnd: 0x800000 });
  readonly tx = new TestDriver(this.mem, { size: 256, base: 0x10000, dataStart: 0x800000, dataEnd: 0x1f00000 });
  readonly ev = new TestDriver(this.mem, { size: 8, base: 0x20000, dataStart: 0x1f00000, dataEnd: 0x2000000 });
  readonly dev: VsockDevice;
  readonly notified: number[] = [];
  /** Calls into the device (processQueue / onFdReady) made through the rig: the fuzz's operation count. */
  deviceCalls = 0;
  private readonly rxChains = new Map<number, BuiltChain>();
  private readonly rxLens = new Map<number, number>();
  /** Raw receive chains published so far (noteRawRx), and that count when each chain was posted. */
  private rawRx = 0;
  private readonly rxRawAt = new Map<number, number>();
  /**
   * Packets received() could not check because a raw receive chain was published while their
   * buffer was outstanding: such a chain may alias it (the fuzz points raw chains into the data
   * area and the rings), so the device rightly wrote over it.
   */
  unverifiedRx = 0;
  private readonly extraFds: number[] = [];

  constructor(opts: Partial<VsockDeviceOptions> = {}, queues: { eventIdx?: boolean } = {}) {
    this.listenFd = libc.socket(libc.AF_UNIX, libc.SOCK_STREAM | libc.SOCK_NONBLOCK | libc.SOCK_CLOEXEC);
    libc.bind(this.listenFd, libc.sockaddrUn(this.path));
    libc.listen(this.listenFd, 64);
    this.dev = new VsockDevice({ cid: GUEST_CID, listenFd: this.listenFd, socketPath: this.path, ...opts });
    this.eventIdx = queues.eventIdx ?? true;
    this.activate();
  }

  private readonly eventIdx: boolean;

  /** What the transport does after DEVICE_NEEDS_RESET and the guest's reset: start over. */
  restart(): void {
    this.dev.reset();
    for (const d of [this.rx, this.tx, this.ev]) d.reset();
    this.rxChains.clear();
    this.rxLens.clear();
    this.rxRawAt.clear();
    this.activate();
  }

  private activate(): void {
    const q = { eventIdx: this.eventIdx, indirect: true };
    this.dev.activate({
      mem: this.mem, queues: [this.rx.queue(q), this.tx.queue(q), this.ev.queue(q)], features: this.dev.features,
      notifyQueue: (i) => this.notified.push(i), notifyConfig: () => {},
    });
  }

  /**
   * Post `n` receive buffers of `len` bytes (a 44-byte header segment and the rest, as Linux
   * does), never more than 100 outstanding (the ring has 256 descriptors).
   */
  postRx(n: number, len = 4096 + Hdr.size): void {
    for (let i = 0; i < n && this.rxChains.size < 100; i++) {
      const lens = len > Hdr.size ? [Hdr.size, len - Hdr.size] : [len];
      const c = this.rx.addChain([], lens);
      this.rxChains.set(c.head, c);
      this.rxLens.set(c.head, len);
      this.rxRawAt.set(c.head, this.rawRx);
    }
    this.deviceCalls++;
    this.dev.processQueue(0);
  }

  /** A test published a receive chain it wrote by hand (it may alias the rig's buffers). */
  noteRawRx(): void {
    this.rawRx++;
  }

  /** Packets the device put in the receive queue since the last call. */
  received(): Packet[] {
    const out: Packet[] = [];
    for (const u of this.rx.used()) {
      const c = this.rxChains.get(u.id);
      if (c === undefined) continue; // a raw chain a test wrote by hand
      this.rxChains.delete(u.id);
      const aliased = this.rxRawAt.get(u.id) !== this.rawRx;
      this.rxRawAt.delete(u.id);
      const total = this.rxLens.get(u.id)!;
      const flat = new Uint8Array(total);
      let off = 0;
      const lens = total > Hdr.size ? [Hdr.size, total - Hdr.size] : [total];
      c.writable.forEach((a, i) => { flat.set(this.mem.slice(a, lens[i]!), off); off += lens[i]!; });
      const h = u.len < Hdr.size ? undefined : decodeHeader(flat);
      if (h === undefined || u.len !== Hdr.size + h.len) {
        if (aliased) { this.unverifiedRx++; continue; }
        throw new Error(h === undefined ? `used length ${u.len} below a header` : `used length ${u.len} but header len ${h.len} (op ${h.op}, head ${u.id})`);
      }
      out.push({ ...h, payload: flat.slice(Hdr.size, Hdr.size + h.len) });
    }
    if (this.rxChains.size === 0) this.rx.resetData();
    return out;
  }

  /** One guest packet on the transmit queue (header and payload in two descriptors). */
  send(p: Partial<Packet>): void {
    const parts = [encodeHeader(p)];
    if (p.payload !== undefined && p.payload.length > 0) parts.push(p.payload);
    this.tx.addChain(parts, []);
    this.deviceCalls++;
    this.dev.processQueue(1);
    const done = this.tx.used().length;
    if (done > 0 && this.tx.usedIdx === this.tx.availIdx) this.tx.resetData();
  }

  /** Run the device's host side until nothing is ready (poll timeout 0), at most `rounds` rounds. */
  pump(rounds = 200): void {
    for (let r = 0; r < rounds; r++) {
      const fds = this.dev.pollFds();
      const ev = this.dev.pollEvents();
      if (fds.length === 0) return;
      const p = libc.pollFds(fds.length);
      for (let i = 0; i < fds.length; i++) libc.pollFdSet(p, i, fds[i]!, ev[i]!);
      const ready = libc.poll(p, 0);
      if (ready === 0) return;
      const list = [...fds];
      for (let i = 0; i < list.length; i++) {
        const re = libc.pollRevents(p, i);
        if (re !== 0) { this.deviceCalls++; this.dev.onFdReady(list[i]!, re); }
      }
    }
  }

  /** A host client on the hybrid socket (non-blocking). */
  client(): number {
    const fd = libc.socket(libc.AF_UNIX, libc.SOCK_STREAM | libc.SOCK_NONBLOCK | libc.SOCK_CLOEXEC);
    if (libc.connectRaw(fd, libc.sockaddrUn(this.path)) !== 0) throw new Error('connect to the hybrid socket failed');
    this.extraFds.push(fd);
    return fd;
  }

  /** A host listener on `<socket>_<port>`. */
  listenPort(port: number): number {
    const fd = libc.socket(libc.AF_UNIX, libc.SOCK_STREAM | libc.SOCK_NONBLOCK | libc.SOCK_CLOEXEC);
    libc.bind(fd, libc.sockaddrUn(`${this.path}_${port}`));
    libc.listen(fd, 16);
    this.extraFds.push(fd);
    return fd;
  }

  accept(listenFd: number): number {
    const fd = libc.accept4Raw(listenFd, libc.SOCK_NONBLOCK | libc.SOCK_CLOEXEC);
    if (fd < 0) throw new Error(`accept: errno ${-fd}`);
    this.extraFds.push(fd);
    return fd;
  }

  close(): void {
    this.dev.close();
    for (const fd of this.extraFds) { try { libc.close(fd); } catch { /* closed by the test */ } }
    libc.close(this.listenFd);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * write(2) all of `b` to a non-blocking socket; returns the bytes written before EAGAIN. With
 * `lenient`, an error (the VMM closed the socket) ends the write instead of throwing.
 */
export function writeSome(fd: number, b: Uint8Array, lenient = false): number {
  let off = 0;
  while (off < b.length) {
    const r = libc.writeRaw(fd, b.subarray(off), b.length - off);
    if (r < 0) { if (r === -libc.EAGAIN || lenient) break; throw new Error(`write: errno ${-r}`); }
    off += r;
  }
  return off;
}

/** Everything readable now: the bytes, and whether EOF (0) or an error was seen. */
export function readNow(fd: number): { data: Buffer; eof: boolean; errno: number } {
  const chunks: Buffer[] = [];
  const buf = new Uint8Array(65536);
  for (;;) {
    const r = libc.readRaw(fd, buf, buf.length);
    if (r === -libc.EAGAIN) return { data: Buffer.concat(chunks), eof: false, errno: 0 };
    if (r < 0) return { data: Buffer.concat(chunks), eof: false, errno: -r };
    if (r === 0) return { data: Buffer.concat(chunks), eof: true, errno: 0 };
    chunks.push(Buffer.from(buf.subarray(0, r)));
  }
}
