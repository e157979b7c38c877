// virtio-vsock device model (virtio 1.2, 5.10), stream sockets only, with the hybrid Unix-socket
// backend of Firecracker and Cloud Hypervisor:
//
// - Host-initiated: a client connects to the listening socket `socket` and sends a line
//   `CONNECT <port>\n` (keyword in any case); the device sends the guest OP_REQUEST from a local
//   ephemeral port to guest port <port>. OP_RESPONSE: the client gets `OK <local port>\n` and the
//   bytes flow; OP_RST (nobody listens): the client's socket is closed.
// - Guest-initiated: OP_REQUEST to CID 2 port P connects to `<socket>_<P>`; OP_RESPONSE on
//   success, OP_RST on failure.
//
// Flow control (5.10.6.3): every packet to the guest carries this device's buf_alloc (the fixed
// per-connection buffer for guest->host bytes) and fwd_cnt (bytes of the guest's written to the
// host socket). A guest that sends beyond that credit gets its connection reset. Towards the
// guest, the device never sends more than the guest's buf_alloc - (tx_cnt - fwd_cnt), and reads
// a host socket only while that credit and a receive buffer exist: a slow guest leaves bytes in
// the host socket (its writer blocks); a slow host peer fills at most buf_alloc bytes here, and
// the guest's TX stops on credit. Nothing buffers without bound.
//
// Threading: the model owns no thread. Its driver (the VMM's virtio worker, or a test) polls
// pollFds()/pollEvents() (the listener, clients still sending their CONNECT line, connection
// sockets) and calls onFdReady(); queue kicks call processQueue(). All sockets are non-blocking.
// The listening socket belongs to the caller (close() leaves it open).

import * as libc from '../../sys/libc.js';
import type { GuestMemory } from '../../memory/guest_memory.js';
import { VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VirtioDeviceType, bit, type VirtioActivation, type VirtioDevice } from '../device.js';
import { DescriptorChain, MAX_QUEUE_SIZE, VirtqueueError, type SplitQueue } from '../queue.js';
import { HeldChain } from '../held_chain.js';
import { VirtioStateMismatchError, type VirtioDeviceSpecificState } from '../state.js';
import {
  Hdr, MAX_PKT_PAYLOAD, MIN_GUEST_CID, Op, VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE, VIRTIO_VSOCK_SHUTDOWN_F_SEND,
  VIRTIO_VSOCK_TYPE_STREAM, VMADDR_CID_HOST, VSOCK_CONFIG_SIZE, VSOCK_RX, VSOCK_TX, VSOCK_EVENT, VIRTIO_VSOCK_EVENT_TRANSPORT_RESET,
} from './packet.js';

export interface VsockDeviceOptions {
  /** The guest's CID (>= 3). */
  cid: number;
  /** Listening, non-blocking Unix stream socket for host-initiated connections (owned by the caller); -1: none. */
  listenFd: number;
  /** Its path: guest-initiated connections to port P go to `<socketPath>_<P>`. */
  socketPath: string;
  /** Largest queue size (power of two); default 256. */
  queueSize?: number;
  /** Per-connection buffer for guest->host bytes (the buf_alloc advertised); default 256 KiB. */
  bufAlloc?: number;
  /** Most connections at once (guest- and host-initiated); default 256. */
  maxConnections?: number;
  /** Most host clients still sending their CONNECT line; default 32. */
  maxPendingClients?: number;
}

export const DEFAULT_BUF_ALLOC = 256 * 1024;
const DEFAULT_MAX_CONNECTIONS = 256;
const DEFAULT_MAX_PENDING = 32;
/** `CONNECT 4294967295\r\n` is 20 bytes: a longer line is garbage. */
const MAX_CONNECT_LINE = 32;
/** Host-initiated connections get local ports from here up (Firecracker's choice too). */
const FIRST_EPHEMERAL_PORT = 1 << 30;
/** RSTs for packets that match no connection, waiting for a receive buffer; more are dropped. */
const MAX_PENDING_RST = 128;
const NO_FDS: readonly number[] = Object.freeze([]);
const CID_HOST_BIG = BigInt(VMADDR_CID_HOST);

/**
 * The port of a `CONNECT <port>` line (`len` bytes, no newline; keyword in any case, an optional
 * trailing CR), or -1 when the line is anything else or the port is not a u32.
 */
export function parseConnectLine(line: Uint8Array, len: number): number {
  let end = len;
  if (end > 0 && line[end - 1] === 0x0d) end--;
  const KW = 'connect ';
  if (end <= KW.length || end > KW.length + 10) return -1;
  for (let i = 0; i < KW.length; i++) {
    const ch = line[i]! | (i < KW.length - 1 ? 0x20 : 0); // ASCII lower case for the letters
    if (ch !== KW.charCodeAt(i)) return -1;
  }
  let port = 0;
  for (let i = KW.length; i < end; i++) {
    const d = line[i]! - 0x30;
    if (d < 0 || d > 9) return -1;
    port = port * 10 + d;
  }
  return port > 0xffffffff ? -1 : port;
}

/** Write `OK <port>\n` into `b`; returns its length. */
function putOkLine(b: Uint8Array, port: number): number {
  b[0] = 0x4f; b[1] = 0x4b; b[2] = 0x20;
  let n = 3;
  let div = 1;
  while (div * 10 <= port) div *= 10;
  for (; div >= 1; div /= 10) b[n++] = 0x30 + (Math.floor(port / div) % 10);
  b[n++] = 0x0a;
  return n;
}

const ConnState = {
  /** OP_REQUEST sent (or to be sent) to the guest; waiting for OP_RESPONSE. */
  LocalInit: 1,
  Established: 2,
} as const;

/** Control packets a connection has to send the guest (bit set). */
const Pend = {
  REQUEST: 1,
  RESPONSE: 2,
  CREDIT_UPDATE: 4,
  SHUTDOWN: 8,
} as const;

class Conn {
  state: number;
  pend = 0;
  /** Flags of the SHUTDOWN to send. */
  shutFlags = 0;
  /** SHUTDOWN flags received from the guest (5.10.6.5), accumulated. */
  peerShut = 0;
  /** The host socket read EOF (a SHUTDOWN SEND went or goes to the guest). */
  hostEof = false;
  /** shutdown(SHUT_WR) done on the host socket. */
  hostWrShut = false;
  /** The host socket was reported readable and has not been drained yet. */
  readable = false;
  /** In the device's list of connections with something for the receive queue. */
  inRx = false;
  dead = false;
  // Guest -> host: bytes received but not yet written to the socket, in a ring of bufAlloc bytes.
  buf: Uint8Array | null = null;
  bufHead = 0;
  bufLen = 0;
  /** Bytes of payload received from the guest (u32, wrapping). */
  rxCnt = 0;
  /** Bytes of those written to the host socket (the fwd_cnt advertised). */
  fwdCnt = 0;
  /** fwd_cnt in the last packet sent to the guest. */
  lastAdvFwd = 0;
  // Host -> guest credit (5.10.6.3).
  txCnt = 0;
  peerBufAlloc = 0;
  peerFwdCnt = 0;

  constructor(readonly fd: number, readonly localPort: number, readonly peerPort: number, state: number) {
    this.state = state;
  }

  /** Bytes the guest can take now: buf_alloc - (tx_cnt - fwd_cnt), never negative. */
  peerCredit(): number {
    const inFlight = (this.txCnt - this.peerFwdCnt) >>> 0;
    return inFlight >= this.peerBufAlloc ? 0 : this.peerBufAlloc - inFlight;
  }
}

interface Client {
  fd: number;
  line: Uint8Array;
  len: number;
}

export type VsockCounters = {
  connectionsOpened: number;
  connectionsReset: number;
  rxPackets: number;
  rxBytes: number;
  txPackets: number;
  txBytes: number;
  malformedPackets: number;
  refusedClients: number;
};

export class VsockDevice implements VirtioDevice {
  readonly deviceType = VirtioDeviceType.Vsock;
  readonly numQueues = 3;
  readonly queueMaxSize: number;
  readonly features = bit(VIRTIO_F_INDIRECT_DESC) | bit(VIRTIO_F_EVENT_IDX);
  readonly counters: VsockCounters = {
    connectionsOpened: 0, connectionsReset: 0, rxPackets: 0, rxBytes: 0, txPackets: 0, txBytes: 0, malformedPackets: 0, refusedClients: 0,
  };

  readonly cid: number;
  readonly bufAlloc: number;
  private readonly listenFd: number;
  private readonly socketPath: string;
  private readonly maxConns: number;
  private readonly maxPending: number;
  private readonly creditThreshold: number;
  private readonly config = new Uint8Array(VSOCK_CONFIG_SIZE);

  private act: VirtioActivation | null = null;
  /** The receiveq chain popped for a packet that could not be written yet. */
  private readonly rx: HeldChain;
  private txChain: DescriptorChain;
  private readonly hdr = new Uint8Array(Hdr.size);
  private readonly hdrView = new DataView(this.hdr.buffer);
  private readonly out = new Uint8Array(Hdr.size);
  /** `OK <port>\n` for the host client, built in place. */
  private readonly okLine = new Uint8Array(16);
  private readonly cidBig: bigint;
  private readonly outView = new DataView(this.out.buffer);

  /** localPort -> peerPort -> connection. */
  private readonly byPort = new Map<number, Map<number, Conn>>();
  private readonly byFd = new Map<number, Conn>();
  private nConns = 0;
  private readonly clients = new Map<number, Client>();
  private readonly rxList: Conn[] = [];
  /** Pending RSTs without a connection: [localPort, peerPort] pairs. */
  private readonly rstPorts = new Float64Array(MAX_PENDING_RST * 2);
  private rstCount = 0;
  private nextPort = FIRST_EPHEMERAL_PORT;

  private readonly pollOut: number[] = [];
  private readonly pollEv: number[] = [];
  /** Restored from saved state: the guest's connections are gone; tell it (5.10.6.6) once running. */
  private transportResetPending = false;
  private evChain: DescriptorChain;

  constructor(opts: VsockDeviceOptions) {
    const qs = opts.queueSize ?? 256;
    if (!Number.isInteger(qs) || qs < 1 || qs > MAX_QUEUE_SIZE || (qs & (qs - 1)) !== 0) {
      throw new RangeError(`virtio-vsock: queue size ${qs} is not a power of two in 1..${MAX_QUEUE_SIZE}`);
    }
    if (!Number.isSafeInteger(opts.cid) || opts.cid < MIN_GUEST_CID || opts.cid >= 0xffffffff) {
      throw new RangeError(`virtio-vsock: cid ${opts.cid} must be an integer in ${MIN_GUEST_CID}..${0xffffffff - 1}`);
    }
    const ba = opts.bufAlloc ?? DEFAULT_BUF_ALLOC;
    if (!Number.isInteger(ba) || ba < 4096 || ba > 64 << 20) throw new RangeError(`virtio-vsock: bufAlloc ${ba} is not in 4 KiB..64 MiB`);
    this.queueMaxSize = qs;
    this.cid = opts.cid;
    this.cidBig = BigInt(opts.cid);
    this.bufAlloc = ba;
    this.creditThreshold = ba >>> 2;
    this.listenFd = opts.listenFd;
    this.socketPath = opts.socketPath;
    this.maxConns = opts.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
    this.maxPending = opts.maxPendingClients ?? DEFAULT_MAX_PENDING;
    this.rx = new HeldChain(qs);
    this.txChain = new DescriptorChain(qs);
    this.evChain = new DescriptorChain(qs);
    new DataView(this.config.buffer).setBigUint64(0, BigInt(opts.cid), true);
  }

  /** Connections in the table (tests, diagnostics). */
  get connectionCount(): number { return this.nConns; }
  /** Host clients still sending their CONNECT line. */
  get pendingClientCount(): number { return this.clients.size; }
  /** Guest->host bytes buffered in the device, over all connections. */
  get bufferedBytes(): number {
    let n = 0;
    for (const c of this.byFd.values()) n += c.bufLen;
    return n;
  }

  readConfig(offset: number, data: Uint8Array): void {
    data.fill(0);
    for (let i = 0; i < data.length; i++) {
      const o = offset + i;
      if (o >= 0 && o < VSOCK_CONFIG_SIZE) data[i] = this.config[o]!;
    }
  }

  /** guest_cid is read-only (5.10.4). */
  writeConfig(): void {}

  activate(a: VirtioActivation): void {
    let max = this.txChain.capacity;
    for (const q of a.queues) if (q !== null && q.size > max) max = q.size;
    if (max > this.txChain.capacity) {
      this.txChain = new DescriptorChain(max);
      this.evChain = new DescriptorChain(max);
    }
    this.rx.grow(max);
    this.act = a;
  }

  processQueue(index: number): void {
    const a = this.act;
    if (a === null) return;
    if (index === VSOCK_TX) {
      const q = a.queues[VSOCK_TX];
      if (q !== undefined && q !== null) this.processTx(a, q);
      this.fillRx();
    } else if (index === VSOCK_RX) {
      this.fillRx();
    } else if (index === VSOCK_EVENT) {
      this.sendTransportReset();
    }
  }

  /** Hand back the receive buffer held for a packet not written yet (host data stays in the sockets). */
  pause(): void {
    const q = this.act?.queues[VSOCK_RX];
    if (q !== undefined && q !== null) this.rx.giveBack(q);
  }

  resume(): void {
    this.sendTransportReset();
  }

  saveState(): VirtioDeviceSpecificState {
    return { kind: 'vsock', cid: BigInt(this.cid) };
  }

  /**
   * The guest CID must be the saved one. Connections are not saved (Firecracker and Cloud
   * Hypervisor do the same): the guest gets VIRTIO_VSOCK_EVENT_TRANSPORT_RESET when it runs again.
   */
  restoreState(s: VirtioDeviceSpecificState): void {
    if (s.kind !== 'vsock') throw new VirtioStateMismatchError(`saved ${s.kind} state for a virtio-vsock device`);
    if (s.cid !== BigInt(this.cid)) throw new VirtioStateMismatchError(`the saved guest CID is ${s.cid}, this device has ${this.cid}`);
    this.transportResetPending = true;
  }

  /** 5.10.6.6: the event, in the next event-queue buffer (le32 id), once one is there. */
  private sendTransportReset(): void {
    const a = this.act;
    if (!this.transportResetPending || a === null) return;
    const q = a.queues[VSOCK_EVENT];
    if (q === undefined || q === null) return;
    const c = this.evChain;
    if (!q.pop(c)) { q.enableNotification(); return; }
    this.transportResetPending = false;
    let k = c.readableCount;
    while (k < c.length && c.len[k]! < 4) k++;
    if (k < c.length) a.mem.writeU32(c.addr[k]!, VIRTIO_VSOCK_EVENT_TRANSPORT_RESET);
    q.addUsed(c.head, k < c.length ? 4 : 0);
    if (q.needsInterrupt()) a.notifyQueue(VSOCK_EVENT);
  }

  pollFds(): readonly number[] {
    if (this.act === null) return NO_FDS;
    const fds = this.pollOut;
    const ev = this.pollEv;
    let n = 0;
    if (this.listenFd >= 0 && this.clients.size < this.maxPending) { fds[n] = this.listenFd; ev[n++] = libc.POLLIN; }
    for (const c of this.clients.values()) { fds[n] = c.fd; ev[n++] = libc.POLLIN; }
    for (const c of this.byFd.values()) {
      let e = 0;
      if (c.state === ConnState.Established && !c.readable && !c.hostEof && (c.peerShut & VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE) === 0 && c.peerCredit() > 0) e |= libc.POLLIN;
      if (c.bufLen > 0) e |= libc.POLLOUT;
      if (e !== 0) { fds[n] = c.fd; ev[n++] = e; }
    }
    fds.length = n;
    ev.length = n;
    return fds;
  }

  pollEvents(): ArrayLike<number> {
    return this.pollEv;
  }

  onFdReady(fd: number, revents: number = libc.POLLIN): void {
    if (this.act === null) return;
    if (fd === this.listenFd) { this.acceptClients(); return; }
    const cl = this.clients.get(fd);
    if (cl !== undefined) { this.readConnectLine(cl); this.fillRx(); return; }
    const c = this.byFd.get(fd);
    if (c === undefined) return;
    const problem = (revents & (libc.POLLERR | libc.POLLHUP | libc.POLLNVAL)) !== 0;
    if (c.bufLen > 0 && ((revents & libc.POLLOUT) !== 0 || problem)) this.flush(c);
    if (!c.dead && c.state === ConnState.Established && ((revents & libc.POLLIN) !== 0 || problem) && !c.hostEof) {
      c.readable = true;
      this.wantRx(c);
    }
    this.fillRx();
  }

  reset(): void {
    this.act = null;
    this.rx.release();
    this.transportResetPending = false;
    for (const c of this.byFd.values()) { c.dead = true; libc.close(c.fd); }
    this.byFd.clear();
    this.byPort.clear();
    this.nConns = 0;
    for (const cl of this.clients.values()) libc.close(cl.fd);
    this.clients.clear();
    this.rxList.length = 0;
    this.rstCount = 0;
  }

  /** Closes every connection; the listening socket belongs to the caller. */
  close(): void {
    this.reset();
  }

  // ---- host clients (hybrid backend) --------------------------------------------------------

  private acceptClients(): void {
    let any = false;
    // At most maxPending accepts per call, even when each client's line completes at once (the
    // listener stays readable: the next poll round takes the rest, other fds get their turn).
    for (let n = 0; n < this.maxPending && this.clients.size < this.maxPending; n++) {
      const fd = libc.accept4Raw(this.listenFd, libc.SOCK_NONBLOCK | libc.SOCK_CLOEXEC);
      if (fd < 0) break; // EAGAIN, or an error the next poll reports again
      const cl: Client = { fd, line: new Uint8Array(MAX_CONNECT_LINE), len: 0 };
      this.clients.set(fd, cl);
      // A client usually wrote its CONNECT line before it was accepted: take it now rather than
      // one poll round later (EAGAIN leaves the client waiting in the poll set).
      this.readConnectLine(cl);
      any = true;
    }
    if (any) this.fillRx();
  }

  /**
   * Read the CONNECT line, leaving the bytes after it in the socket for the guest: peek at what
   * is queued (MSG_PEEK), then take exactly the bytes up to the newline. EOF, an error, garbage
   * or an over-long line close this client only.
   */
  private readConnectLine(cl: Client): void {
    const line = cl.line;
    const r = libc.recvRaw(cl.fd, line, MAX_CONNECT_LINE, libc.MSG_PEEK);
    if (r === -libc.EAGAIN || r === -libc.EINTR) return;
    if (r <= 0) { this.dropClient(cl); return; }
    let nl = Math.min(cl.len, r); // the bytes before cl.len were peeked before and hold no newline
    while (nl < r && line[nl] !== 0x0a) nl++;
    if (nl === r) {
      // No newline yet: wait for more, unless the line is already too long.
      if (r >= MAX_CONNECT_LINE) this.dropClient(cl);
      else cl.len = r;
      return;
    }
    // Take the line and its newline off the socket (a Unix stream gives back what was peeked).
    if (libc.readRaw(cl.fd, line, nl + 1) !== nl + 1) { this.dropClient(cl); return; }
    cl.len = nl;
    this.clients.delete(cl.fd);
    const port = parseConnectLine(line, nl);
    if (port < 0 || this.nConns >= this.maxConns) {
      this.counters.refusedClients++;
      libc.close(cl.fd);
      return;
    }
    const c = new Conn(cl.fd, this.allocPort(), port, ConnState.LocalInit);
    this.addConn(c);
    c.pend |= Pend.REQUEST;
    this.wantRx(c);
  }

  private dropClient(cl: Client): void {
    this.clients.delete(cl.fd);
    libc.close(cl.fd);
    this.counters.refusedClients++;
  }

  private allocPort(): number {
    for (;;) {
      const p = this.nextPort;
      this.nextPort = p >= 0xfffffffe ? FIRST_EPHEMERAL_PORT : p + 1;
      if (!this.byPort.has(p)) return p;
    }
  }

  // ---- connection table ---------------------------------------------------------------------

  private addConn(c: Conn): void {
    let m = this.byPort.get(c.localPort);
    if (m === undefined) this.byPort.set(c.localPort, (m = new Map()));
    m.set(c.peerPort, c);
    this.byFd.set(c.fd, c);
    this.nConns++;
    this.counters.connectionsOpened++;
  }

  private find(localPort: number, peerPort: number): Conn | undefined {
    return this.byPort.get(localPort)?.get(peerPort);
  }

  /** Forget `c` and close its socket; with `rst`, tell the guest (OP_RST). */
  private kill(c: Conn, rst: boolean): void {
    if (c.dead) return;
    c.dead = true;
    const m = this.byPort.get(c.localPort);
    if (m !== undefined) {
      m.delete(c.peerPort);
      if (m.size === 0) this.byPort.delete(c.localPort);
    }
    this.byFd.delete(c.fd);
    this.nConns--;
    libc.close(c.fd);
    if (rst) this.queueRst(c.localPort, c.peerPort);
  }

  private queueRst(localPort: number, peerPort: number): void {
    this.counters.connectionsReset++;
    if (this.rstCount >= MAX_PENDING_RST) return;
    this.rstPorts[this.rstCount * 2] = localPort;
    this.rstPorts[this.rstCount * 2 + 1] = peerPort;
    this.rstCount++;
  }

  private wantRx(c: Conn): void {
    if (c.inRx || c.dead) return;
    c.inRx = true;
    this.rxList.push(c);
  }

  /** Whether `c` has something for the receive queue now. */
  private hasRxWork(c: Conn): boolean {
    if (c.dead) return false;
    if (c.pend !== 0) return true;
    return c.readable && c.state === ConnState.Established && !c.hostEof && (c.peerShut & VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE) === 0 && c.peerCredit() > 0;
  }

  // ---- transmitq: guest -> host -------------------------------------------------------------

  private processTx(a: VirtioActivation, q: SplitQueue): void {
    const c = this.txChain;
    try {
      do {
        q.disableNotification();
        while (q.pop(c)) {
          this.txPacket(a.mem, c);
          q.addUsed(c.head, 0);
        }
      } while (q.enableNotification());
    } finally {
      if (q.needsInterrupt()) a.notifyQueue(VSOCK_TX);
    }
  }

  /** Copy the header out of the chain's readable segments; false when they hold fewer than 44 bytes. */
  private readHeader(mem: GuestMemory, ch: DescriptorChain): boolean {
    if (ch.readableBytes < Hdr.size) return false;
    if (ch.len[0]! >= Hdr.size) { mem.readBytes(ch.addr[0]!, this.hdr); return true; } // the usual layout: no view per packet
    let got = 0;
    for (let k = 0; k < ch.readableCount && got < Hdr.size; k++) {
      const n = Math.min(ch.len[k]!, Hdr.size - got);
      this.hdr.set(mem.slice(ch.addr[k]!, n), got);
      got += n;
    }
    return true;
  }

  private txPacket(mem: GuestMemory, ch: DescriptorChain): void {
    this.counters.txPackets++;
    if (!this.readHeader(mem, ch)) { this.counters.malformedPackets++; return; }
    const h = this.hdrView;
    const srcCid = h.getBigUint64(Hdr.srcCid, true);
    const dstCid = h.getBigUint64(Hdr.dstCid, true);
    const srcPort = h.getUint32(Hdr.srcPort, true);
    const dstPort = h.getUint32(Hdr.dstPort, true);
    const len = h.getUint32(Hdr.len, true);
    const type = h.getUint16(Hdr.type, true);
    const op = h.getUint16(Hdr.op, true);
    // 5.10.6.1: packets not from this guest or not to the host are dropped.
    if (srcCid !== this.cidBig || dstCid !== CID_HOST_BIG) { this.counters.malformedPackets++; return; }
    const c = this.find(dstPort, srcPort);
    const payload = ch.readableBytes - Hdr.size;
    if (type !== VIRTIO_VSOCK_TYPE_STREAM || len > MAX_PKT_PAYLOAD || len > payload || (op !== Op.RW && len !== 0)) {
      this.counters.malformedPackets++;
      if (op === Op.RST) { if (c !== undefined) this.kill(c, false); return; }
      if (c !== undefined) this.kill(c, true);
      else this.queueRst(dstPort, srcPort);
      return;
    }
    if (c === undefined) {
      if (op === Op.REQUEST) this.guestConnect(dstPort, srcPort);
      else if (op !== Op.RST) this.queueRst(dstPort, srcPort); // 5.10.6.2: unknown connection
      return;
    }
    // Every packet carries the sender's credit (5.10.6.3).
    c.peerBufAlloc = h.getUint32(Hdr.bufAlloc, true);
    c.peerFwdCnt = h.getUint32(Hdr.fwdCnt, true);
    if (c.readable && c.peerCredit() > 0) this.wantRx(c);
    switch (op) {
      case Op.REQUEST: // a second request on a live connection: both are void
        this.kill(c, true);
        return;
      case Op.RESPONSE:
        if (c.state !== ConnState.LocalInit) { this.kill(c, true); return; }
        c.state = ConnState.Established;
        this.hostBound(c, this.okLine, putOkLine(this.okLine, c.localPort));
        return;
      case Op.RST:
        this.kill(c, false);
        return;
      case Op.SHUTDOWN:
        c.peerShut |= h.getUint32(Hdr.flags, true) & (VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE | VIRTIO_VSOCK_SHUTDOWN_F_SEND);
        this.afterShutdown(c);
        return;
      case Op.RW:
        if (c.state !== ConnState.Established || (c.peerShut & VIRTIO_VSOCK_SHUTDOWN_F_SEND) !== 0) { this.kill(c, true); return; }
        this.guestData(mem, ch, c, len);
        return;
      case Op.CREDIT_UPDATE: // the credit was taken above
        return;
      case Op.CREDIT_REQUEST:
        c.pend |= Pend.CREDIT_UPDATE;
        this.wantRx(c);
        return;
      default:
        this.counters.malformedPackets++;
        this.kill(c, true);
    }
  }

  /** OP_REQUEST from the guest to host port `localPort`: connect to `<socket>_<localPort>`. */
  private guestConnect(localPort: number, peerPort: number): void {
    if (this.nConns >= this.maxConns) { this.queueRst(localPort, peerPort); return; }
    let addr: Uint8Array;
    try {
      addr = libc.sockaddrUn(`${this.socketPath}_${localPort}`);
    } catch {
      this.queueRst(localPort, peerPort);
      return;
    }
    let fd: number;
    try {
      fd = libc.socket(libc.AF_UNIX, libc.SOCK_STREAM | libc.SOCK_NONBLOCK | libc.SOCK_CLOEXEC);
    } catch { // EMFILE and the like: this connection fails, the device goes on
      this.queueRst(localPort, peerPort);
      return;
    }
    // A Unix-socket connect completes at once, or fails (ENOENT, ECONNREFUSED, EAGAIN for a full backlog).
    if (libc.connectRaw(fd, addr) !== 0) {
      libc.close(fd);
      this.queueRst(localPort, peerPort);
      return;
    }
    const c = new Conn(fd, localPort, peerPort, ConnState.Established);
    const h = this.hdrView;
    c.peerBufAlloc = h.getUint32(Hdr.bufAlloc, true);
    c.peerFwdCnt = h.getUint32(Hdr.fwdCnt, true);
    this.addConn(c);
    c.pend |= Pend.RESPONSE;
    this.wantRx(c);
  }

  /** OP_RW payload to the host socket: straight from guest memory, the rest into the buffer. */
  private guestData(mem: GuestMemory, ch: DescriptorChain, c: Conn, len: number): void {
    // 5.10.6.3: the guest may not send more than the credit this device gave it (the fwd_cnt it
    // last saw is lastAdvFwd at most): so the buffer can always take what the socket does not.
    if (len > this.bufAlloc - ((c.rxCnt - c.lastAdvFwd) >>> 0)) {
      this.counters.malformedPackets++;
      this.kill(c, true);
      return;
    }
    c.rxCnt = (c.rxCnt + len) >>> 0;
    this.counters.txBytes += len;
    let skip: number = Hdr.size;
    let left = len;
    for (let k = 0; k < ch.readableCount && left > 0; k++) {
      let segLen = ch.len[k]!;
      let addr = ch.addr[k]!;
      if (skip >= segLen) { skip -= segLen; continue; }
      addr += skip;
      segLen -= skip;
      skip = 0;
      const n = Math.min(segLen, left);
      left -= n;
      if (!this.pushHostBound(c, mem.slice(addr, n))) return;
    }
    this.creditCheck(c);
  }

  /** Bytes to the host socket in order: written now while nothing is buffered, else buffered. False if the connection died. */
  private pushHostBound(c: Conn, bytes: Uint8Array): boolean {
    let off = 0;
    if (c.bufLen === 0) {
      while (off < bytes.length) {
        const r = libc.sendRaw(c.fd, off === 0 ? bytes : bytes.subarray(off), bytes.length - off, libc.MSG_NOSIGNAL);
        if (r === -libc.EAGAIN || r === -libc.EINTR) break;
        if (r < 0) { this.kill(c, true); return false; }
        off += r;
        c.fwdCnt = (c.fwdCnt + r) >>> 0;
      }
    }
    if (off < bytes.length) {
      const n = bytes.length - off;
      // Cannot happen for a guest within its credit (checked by the caller); never grow.
      if (c.bufLen + n > this.bufAlloc) { this.kill(c, true); return false; }
      let b = c.buf;
      if (b === null) b = c.buf = new Uint8Array(this.bufAlloc);
      const tail = (c.bufHead + c.bufLen) % this.bufAlloc;
      const first = Math.min(n, this.bufAlloc - tail);
      b.set(off === 0 && first === bytes.length ? bytes : bytes.subarray(off, off + first), tail);
      if (first < n) b.set(bytes.subarray(off + first), 0);
      c.bufLen += n;
    }
    return true;
  }

  /**
   * Device-generated bytes for the host peer (the `OK <port>` line), not guest data: they must go
   * out at once (a fresh socket always takes a few bytes); otherwise the connection is reset.
   */
  private hostBound(c: Conn, bytes: Uint8Array, len: number): void {
    const r = libc.sendRaw(c.fd, bytes, len, libc.MSG_NOSIGNAL);
    if (r !== len) this.kill(c, true);
  }

  /** POLLOUT: write buffered guest bytes. */
  private flush(c: Conn): void {
    const b = c.buf;
    while (b !== null && c.bufLen > 0) {
      const n = Math.min(c.bufLen, this.bufAlloc - c.bufHead);
      const r = libc.sendRaw(c.fd, b.subarray(c.bufHead, c.bufHead + n), n, libc.MSG_NOSIGNAL);
      if (r === -libc.EAGAIN || r === -libc.EINTR) break;
      if (r < 0) { this.kill(c, true); return; }
      c.bufHead = (c.bufHead + r) % this.bufAlloc;
      c.bufLen -= r;
      c.fwdCnt = (c.fwdCnt + r) >>> 0;
    }
    if (c.bufLen === 0) c.bufHead = 0;
    this.creditCheck(c);
    this.afterShutdown(c);
  }

  /** Tell the guest about freed buffer space once enough was consumed (5.10.6.3). */
  private creditCheck(c: Conn): void {
    if (c.dead) return;
    if (((c.fwdCnt - c.lastAdvFwd) >>> 0) >= this.creditThreshold) {
      c.pend |= Pend.CREDIT_UPDATE;
      this.wantRx(c);
    }
  }

  /** Apply shutdowns whose buffered bytes are out: SHUT_WR for the host, RST once both directions ended. */
  private afterShutdown(c: Conn): void {
    if (c.dead || c.bufLen > 0) return;
    if ((c.peerShut & VIRTIO_VSOCK_SHUTDOWN_F_SEND) !== 0 && !c.hostWrShut) {
      c.hostWrShut = true;
      libc.shutdownRaw(c.fd, libc.SHUT_WR);
    }
    // 5.10.6.5: after a shutdown of both directions the guest waits for an RST (Linux sends one
    // when its socket closes), sent once the host has all the guest's bytes.
    const both = VIRTIO_VSOCK_SHUTDOWN_F_SEND | VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE;
    if ((c.peerShut & both) === both) this.kill(c, true);
  }

  // ---- receiveq: host -> guest --------------------------------------------------------------

  private fillRx(): void {
    const a = this.act;
    if (a === null) return;
    const q = a.queues[VSOCK_RX];
    if (q === undefined || q === null) return;
    try {
      while (this.rstCount > 0 || this.rxList.length > 0) {
        const ch = this.rx.next(q, true);
        if (ch === null) return;
        if (ch.writableBytes < Hdr.size) {
          throw new VirtqueueError('request', `vsock receive buffer of ${ch.writableBytes} bytes cannot hold a ${Hdr.size}-byte header`);
        }
        let used = 0;
        if (this.rstCount > 0) {
          this.rstCount--;
          const i = this.rstCount * 2;
          used = this.writeControl(a.mem, ch, this.rstPorts[i]!, this.rstPorts[i + 1]!, Op.RST, 0, null);
        } else {
          const c = this.rxList.shift()!;
          c.inRx = false;
          if (!this.hasRxWork(c)) continue;
          used = this.rxPacket(a.mem, ch, c);
          if (this.hasRxWork(c)) {
            this.wantRx(c);
            if (used === 0) return; // no progress possible now: the next event retries
          }
        }
        if (used > 0) {
          this.rx.complete(q, used);
          this.counters.rxPackets++;
        }
      }
    } finally {
      if (q.needsInterrupt()) a.notifyQueue(VSOCK_RX);
    }
  }

  /** One packet of `c`'s into the held chain: bytes written, or 0 when there was nothing after all. */
  private rxPacket(mem: GuestMemory, ch: DescriptorChain, c: Conn): number {
    if ((c.pend & Pend.REQUEST) !== 0) { c.pend &= ~Pend.REQUEST; return this.writeControl(mem, ch, c.localPort, c.peerPort, Op.REQUEST, 0, c); }
    if ((c.pend & Pend.RESPONSE) !== 0) { c.pend &= ~Pend.RESPONSE; return this.writeControl(mem, ch, c.localPort, c.peerPort, Op.RESPONSE, 0, c); }
    if ((c.pend & Pend.SHUTDOWN) !== 0) {
      c.pend &= ~(Pend.SHUTDOWN | Pend.CREDIT_UPDATE);
      return this.writeControl(mem, ch, c.localPort, c.peerPort, Op.SHUTDOWN, c.shutFlags, c);
    }
    if (c.readable && c.state === ConnState.Established) {
      const n = this.readData(mem, ch, c);
      if (n > 0) return n;
      if (c.dead) return 0;
      if ((c.pend & Pend.SHUTDOWN) !== 0) {
        c.pend &= ~(Pend.SHUTDOWN | Pend.CREDIT_UPDATE);
        return this.writeControl(mem, ch, c.localPort, c.peerPort, Op.SHUTDOWN, c.shutFlags, c);
      }
    }
    if ((c.pend & Pend.CREDIT_UPDATE) !== 0) { c.pend &= ~Pend.CREDIT_UPDATE; return this.writeControl(mem, ch, c.localPort, c.peerPort, Op.CREDIT_UPDATE, 0, c); }
    return 0;
  }

  /** Fill the header fields common to every packet to the guest. */
  private setHeader(localPort: number, peerPort: number, op: number, len: number, flags: number, c: Conn | null): void {
    const o = this.outView;
    o.setBigUint64(Hdr.srcCid, CID_HOST_BIG, true);
    o.setBigUint64(Hdr.dstCid, this.cidBig, true);
    o.setUint32(Hdr.srcPort, localPort, true);
    o.setUint32(Hdr.dstPort, peerPort, true);
    o.setUint32(Hdr.len, len, true);
    o.setUint16(Hdr.type, VIRTIO_VSOCK_TYPE_STREAM, true);
    o.setUint16(Hdr.op, op, true);
    o.setUint32(Hdr.flags, flags, true);
    o.setUint32(Hdr.bufAlloc, c === null ? 0 : this.bufAlloc, true);
    o.setUint32(Hdr.fwdCnt, c === null ? 0 : c.fwdCnt, true);
    if (c !== null) c.lastAdvFwd = c.fwdCnt;
  }

  /** Scatter the 44 header bytes over the chain's writable segments. */
  private putHeader(mem: GuestMemory, ch: DescriptorChain): void {
    const k0 = ch.readableCount;
    if (ch.len[k0]! >= Hdr.size) { mem.writeBytes(ch.addr[k0]!, this.out); return; } // the usual layout: no view per packet
    let put = 0;
    for (let k = k0; k < ch.length && put < Hdr.size; k++) {
      const n = Math.min(ch.len[k]!, Hdr.size - put);
      mem.slice(ch.addr[k]!, n).set(this.out.subarray(put, put + n));
      put += n;
    }
  }

  private writeControl(mem: GuestMemory, ch: DescriptorChain, localPort: number, peerPort: number, op: number, flags: number, c: Conn | null): number {
    this.setHeader(localPort, peerPort, op, 0, flags, c);
    this.putHeader(mem, ch);
    return Hdr.size;
  }

  /**
   * OP_RW: read the host socket straight into the chain's writable space after the header, at
   * most the guest's credit. EOF queues SHUTDOWN(SEND); an error resets the connection.
   */
  private readData(mem: GuestMemory, ch: DescriptorChain, c: Conn): number {
    const max = Math.min(ch.writableBytes - Hdr.size, c.peerCredit(), MAX_PKT_PAYLOAD);
    if (max <= 0) {
      // A receive buffer with room for the header only: it carries a CREDIT_UPDATE instead.
      if (ch.writableBytes === Hdr.size && c.peerCredit() > 0) return this.writeControl(mem, ch, c.localPort, c.peerPort, Op.CREDIT_UPDATE, 0, c);
      return 0;
    }
    let skip: number = Hdr.size;
    let got = 0;
    let eof = false;
    for (let k = ch.readableCount; k < ch.length && got < max; k++) {
      let segLen = ch.len[k]!;
      let addr = ch.addr[k]!;
      if (skip >= segLen) { skip -= segLen; continue; }
      addr += skip;
      segLen -= skip;
      skip = 0;
      const want = Math.min(segLen, max - got);
      const r = libc.readRaw(c.fd, mem.slice(addr, want), want);
      if (r === -libc.EAGAIN || r === -libc.EINTR) { c.readable = false; break; }
      if (r < 0) {
        if (got > 0) { c.readable = false; break; } // deliver what came; the error shows again
        this.kill(c, true);
        return 0;
      }
      if (r === 0) { eof = true; break; }
      got += r;
      if (r < want) { c.readable = false; break; }
    }
    if (eof) this.hostEnded(c);
    if (got === 0) return 0;
    c.txCnt = (c.txCnt + got) >>> 0;
    this.counters.rxBytes += got;
    this.setHeader(c.localPort, c.peerPort, Op.RW, got, 0, c);
    this.putHeader(mem, ch);
    return Hdr.size + got;
  }

  /**
   * The host peer will send no more: SHUTDOWN(SEND) to the guest (a half-close: the guest may go
   * on sending; its close brings SHUTDOWN of both directions, answered with RST).
   */
  private hostEnded(c: Conn): void {
    c.hostEof = true;
    c.readable = false;
    c.shutFlags = VIRTIO_VSOCK_SHUTDOWN_F_SEND;
    c.pend |= Pend.SHUTDOWN;
    this.wantRx(c);
  }
}
