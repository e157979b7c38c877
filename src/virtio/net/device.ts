// virtio-net device model (virtio 1.2, 5.1) over host tap fds.
//
// Queues (5.1.2): receiveq k = 2k, transmitq k = 2k+1, controlq = 2N where N = max_virtqueue_pairs
// when VIRTIO_NET_F_MQ is negotiated, else 1. Every frame on the tap carries the same 12-byte
// struct virtio_net_hdr the guest uses (the tap is opened with IFF_VNET_HDR and TUNSETVNETHDRSZ
// 12), so headers pass through unchanged in both directions; only num_buffers is ours to fill.
//
// TX: each transmit chain is written to the tap with one writev(2) straight from guest memory
// (iovecs point at the host mapping of guest RAM). Memory without a host address (test buffers)
// or a chain of more than IOV_MAX segments is gathered into a bounce buffer and written instead.
// EAGAIN keeps the chain in hand; it is retried on the next notification of its queue or the next
// readiness of its tap fd (nothing polls for POLLOUT: tap writes practically never block).
//
// RX: each frame is read from the tap into a per-receive-queue bounce buffer (the frame length is
// unknown until read, and with VIRTIO_NET_F_MRG_RXBUF it may take several chains), then copied
// into as many chains as it needs; num_buffers is written last and all of them are published
// together. Without buffers the tap fd leaves pollFds() and the frame waits (in the bounce
// buffer or in the tap's queue) until the guest posts buffers and notifies the receive queue.
// A multi-queue tap whose queues outnumber the guest's active pairs still has every fd read:
// fd k feeds receive queue k mod active pairs (optionally the VMM detaches the extra tap queues
// through `setQueueEnabled`, so that the kernel steers to the active ones only).
//
// No allocation on the hot paths: chains, iovecs and bounce buffers are preallocated, host
// addresses are plain numbers (below 2^47) written into the iovec array as two u32 halves.

import * as libc from '../../sys/libc.js';
import type { GuestMemory } from '../../memory/guest_memory.js';
import { VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VirtioDeviceType, bit, type VirtioActivation, type VirtioDevice } from '../device.js';
import { DescriptorChain, MAX_QUEUE_SIZE, VirtqueueError, type SplitQueue } from '../queue.js';
import { VirtioStateMismatchError, type VirtioDeviceSpecificState } from '../state.js';
import { TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN, TUN_F_UFO } from '../../net/tap.js';
import { LimiterTimer, type RateLimiter } from '../rate_limiter.js';

// ---------------------------------------------------------------------------------------------
// 5.1.3 Feature bits

export const VIRTIO_NET_F_CSUM = 0n;
export const VIRTIO_NET_F_GUEST_CSUM = 1n;
export const VIRTIO_NET_F_MTU = 3n;
export const VIRTIO_NET_F_MAC = 5n;
export const VIRTIO_NET_F_GUEST_TSO4 = 7n;
export const VIRTIO_NET_F_GUEST_TSO6 = 8n;
export const VIRTIO_NET_F_GUEST_ECN = 9n;
export const VIRTIO_NET_F_GUEST_UFO = 10n;
export const VIRTIO_NET_F_HOST_TSO4 = 11n;
export const VIRTIO_NET_F_HOST_TSO6 = 12n;
export const VIRTIO_NET_F_HOST_ECN = 13n;
export const VIRTIO_NET_F_HOST_UFO = 14n;
export const VIRTIO_NET_F_MRG_RXBUF = 15n;
export const VIRTIO_NET_F_STATUS = 16n;
export const VIRTIO_NET_F_CTRL_VQ = 17n;
export const VIRTIO_NET_F_MQ = 22n;

/** 5.1.4 status field. */
export const VIRTIO_NET_S_LINK_UP = 1;

/** 5.1.6 struct virtio_net_hdr (virtio 1.x: always with num_buffers, 12 bytes). */
export const VIRTIO_NET_HDR_SIZE = 12;
export const VIRTIO_NET_HDR_F_NEEDS_CSUM = 1;
export const VIRTIO_NET_HDR_F_DATA_VALID = 2;
export const VIRTIO_NET_HDR_GSO_NONE = 0;
export const VIRTIO_NET_HDR_GSO_TCPV4 = 1;
export const VIRTIO_NET_HDR_GSO_UDP = 3;
export const VIRTIO_NET_HDR_GSO_TCPV6 = 4;
export const VIRTIO_NET_HDR_GSO_ECN = 0x80;
/** Offset of num_buffers in the header. */
const HDR_NUM_BUFFERS = 10;

/** 5.1.6.5 control virtqueue. */
export const VIRTIO_NET_OK = 0;
export const VIRTIO_NET_ERR = 1;
export const VIRTIO_NET_CTRL_MQ = 4;
export const VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET = 0;
export const VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN = 1;
export const VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX = 0x8000;

/** Largest frame after the header (5.1.6.3.1: 65562-byte receive buffers hold header + frame). */
export const VIRTIO_NET_MAX_FRAME = 65550;
const MAX_PACKET = VIRTIO_NET_HDR_SIZE + VIRTIO_NET_MAX_FRAME;
const ETH_HLEN = 14;
const VLAN_HLEN = 4;
/** Bounce buffers: 17 pages, more than header + the largest frame + a VLAN tag. */
const BOUNCE_SIZE = 17 * 4096;
const TWO_32 = 2 ** 32;

/** Configuration space layout (5.1.4): mac[6], status, max_virtqueue_pairs, mtu. */
export const NET_CONFIG_SIZE = 12;

export interface NetDeviceOptions {
  /**
   * One open tap fd per queue pair (non-blocking, IFF_VNET_HDR with a 12-byte header; see
   * net/tap.ts), or any fds with the same datagram semantics (tests: a socketpair). The caller
   * keeps ownership: close() leaves them open.
   */
  tapFds: number[];
  /** Guest MAC address (config space, VIRTIO_NET_F_MAC). */
  mac: Uint8Array;
  /** Queue pairs (1..32768); more than one offers VIRTIO_NET_F_MQ and VIRTIO_NET_F_CTRL_VQ. */
  queuePairs: number;
  /** Largest queue size (power of two, <= 32768). */
  queueSize: number;
  /** Offered as VIRTIO_NET_F_MTU when given (68..65535). */
  mtu?: number;
  /** Apply TUN_F_* offload flags to the tap (TUNSETOFFLOAD); called at every activate(). */
  setOffload: (tunFlags: number) => void;
  /**
   * Optional: attach/detach tap queue `pair` (TUNSETQUEUE), so that the kernel steers received
   * traffic only to the queue pairs the guest enabled (5.1.6.5.5). Called for every pair at
   * activate() and for the changed ones on VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET. Without it all fds
   * stay in use and the device itself maps fd k to receive queue k mod active pairs.
   */
  setQueueEnabled?: (pair: number, enabled: boolean) => void;
  /**
   * Cloud Hypervisor's rate_limiter_config, one limiter per direction (RX and TX are throttled
   * independently, over all queue pairs): each frame takes its bytes after the virtio_net_hdr and
   * one op. A transmit chain without tokens stays in the available ring; a received frame
   * without tokens waits in the bounce buffer (its tap is not read meanwhile).
   */
  rxRateLimiter?: RateLimiter;
  txRateLimiter?: RateLimiter;
}

/** Frame and error counts (monotonic; reset() keeps them). */
export type NetCounters = {
  txFrames: number;
  txBytes: number;
  /** Frames the tap refused (EINVAL for a bad header, EIO when the link is down, ...). */
  txDropped: number;
  rxFrames: number;
  rxBytes: number;
  /** Runt frames from the host side, and oversized frames when VIRTIO_NET_F_MTU is negotiated. */
  rxDropped: number;
  /** Frames cut short because the guest's buffers could not hold them (driver ignored 5.1.6.3.1). */
  rxTruncated: number;
  /** Read errors on a tap fd (the fd is then not polled until the receive queue is notified). */
  rxErrors: number;
  /** setQueueEnabled failures. */
  steeringErrors: number;
  /** With a rate limiter: how many times a queue stopped to wait for tokens. */
  rxRateLimited?: number;
  txRateLimited?: number;
};

/** Receive state of one receive queue. */
class RxState {
  readonly bounce: Uint8Array;
  readonly bounceHost: number;
  /** Bytes of the frame in `bounce` (header included); 0 = none. */
  len = 0;
  /** Bytes of it already copied into held chains. */
  off = 0;
  /** Chains filled for the current frame, not yet published (MRG_RXBUF spans several). */
  readonly heldHead: Uint16Array;
  readonly heldLen: Uint32Array;
  held = 0;
  /** Guest addresses of the two num_buffers bytes in the frame's first chain. */
  nb0 = 0;
  nb1 = 0;
  /** No buffers: the sources are not polled until the guest notifies this queue. */
  starved = false;
  /** Round-robin start among this queue's source fds. */
  rr = 0;
  /** The frame in `bounce` has its rate-limiter tokens. */
  admitted = false;
  /** The frame in `bounce` waits for tokens: the sources are not polled until the timer fires. */
  throttled = false;

  constructor(bounce: Uint8Array, bounceHost: number, queueSize: number) {
    this.bounce = bounce;
    this.bounceHost = bounceHost;
    this.heldHead = new Uint16Array(queueSize);
    this.heldLen = new Uint32Array(queueSize);
  }

  clear(): void {
    this.len = 0;
    this.off = 0;
    this.held = 0;
    this.starved = false;
    this.rr = 0;
    this.admitted = false;
    this.throttled = false;
  }
}

const EMPTY: readonly number[] = Object.freeze([]);

export class NetDevice implements VirtioDevice {
  readonly deviceType = VirtioDeviceType.Net;
  readonly numQueues: number;
  readonly queueMaxSize: number;
  readonly features: bigint;
  readonly counters: NetCounters = {
    txFrames: 0, txBytes: 0, txDropped: 0, rxFrames: 0, rxBytes: 0, rxDropped: 0, rxTruncated: 0, rxErrors: 0, steeringErrors: 0,
  };

  private readonly fds: readonly number[];
  private readonly pairs: number;
  private readonly mtu: number | undefined;
  private readonly setOffload: (tunFlags: number) => void;
  private readonly setQueueEnabled: ((pair: number, enabled: boolean) => void) | undefined;
  private readonly config: Uint8Array;

  private act: VirtioActivation | null = null;
  private mem: GuestMemory | null = null;
  private closed = false;
  // Negotiated behaviour.
  private mrg = false;
  private guestCsum = false;
  private mtuNegotiated = false;
  private mq = false;
  /** Queue pairs the guest may use (max_virtqueue_pairs with MQ, else 1). */
  private usablePairs = 1;
  /** Pairs enabled by VQ_PAIRS_SET (5.1.6.5.5: 1 until the driver says otherwise). */
  private activePairs = 1;
  private ctrlIndex = -1;

  // Host addresses of guest RAM (hostMode: every region has one).
  private hostMode = false;
  private regStart: number[] = [];
  private regEnd: number[] = [];
  private regHost: number[] = [];

  // Preallocated per-device buffers (mmapped at first activation so their host addresses are known).
  private bufHost = 0n;
  private bufSize = 0;
  private rx: RxState[] = [];
  private txBounce: Uint8Array = new Uint8Array(0);
  private txBounceHost = 0;
  private readonly iov8: Uint8Array;
  private readonly iov32: Uint32Array;
  private readonly txChains: DescriptorChain[];
  private readonly txPending: Uint8Array;
  private readonly rxChain: DescriptorChain;
  private readonly ctrlChain: DescriptorChain;
  /** Per fd: a read error happened; not polled until its receive queue is notified. */
  private readonly fdPaused: Uint8Array;

  private pollList: readonly number[] = EMPTY;
  private pollDirty = true;
  /** Queue pairs the restored driver had enabled (VQ_PAIRS_SET), for the next activate(). */
  private restoredPairs = 0;

  private readonly rxLimiter: RateLimiter | null;
  private readonly txLimiter: RateLimiter | null;
  /** Armed while a queue waits for tokens; in pollFds() whenever there is a limiter. */
  private readonly timer: LimiterTimer | null;
  /** Per pair: its transmit queue waits for tokens. */
  private readonly txThrottled: Uint8Array;

  constructor(opts: NetDeviceOptions) {
    const { tapFds, mac, queuePairs, queueSize, mtu } = opts;
    if (!Number.isInteger(queuePairs) || queuePairs < 1 || queuePairs > VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX) {
      throw new RangeError(`virtio-net: queue pairs ${queuePairs} not in 1..${VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX}`);
    }
    if (!Array.isArray(tapFds) || tapFds.length !== queuePairs || tapFds.some((fd) => !Number.isInteger(fd) || fd < 0)) {
      throw new RangeError(`virtio-net: need ${queuePairs} tap fd(s), one per queue pair, got ${JSON.stringify(tapFds)}`);
    }
    if (!Number.isInteger(queueSize) || queueSize < 1 || queueSize > MAX_QUEUE_SIZE || (queueSize & (queueSize - 1)) !== 0) {
      throw new RangeError(`virtio-net: queue size ${queueSize} is not a power of two in 1..${MAX_QUEUE_SIZE}`);
    }
    if (!(mac instanceof Uint8Array) || mac.length !== 6) throw new RangeError('virtio-net: the MAC address must be 6 bytes');
    if (mtu !== undefined && (!Number.isInteger(mtu) || mtu < 68 || mtu > 65535)) throw new RangeError(`virtio-net: MTU ${mtu} not in 68..65535`);
    this.fds = tapFds.slice();
    this.pairs = queuePairs;
    this.mtu = mtu;
    this.setOffload = opts.setOffload;
    this.setQueueEnabled = opts.setQueueEnabled;
    this.queueMaxSize = queueSize;
    this.numQueues = 2 * queuePairs + (queuePairs > 1 ? 1 : 0);

    let f = bit(VIRTIO_NET_F_CSUM) | bit(VIRTIO_NET_F_GUEST_CSUM) | bit(VIRTIO_NET_F_MAC)
      | bit(VIRTIO_NET_F_GUEST_TSO4) | bit(VIRTIO_NET_F_GUEST_TSO6) | bit(VIRTIO_NET_F_GUEST_ECN) | bit(VIRTIO_NET_F_GUEST_UFO)
      | bit(VIRTIO_NET_F_HOST_TSO4) | bit(VIRTIO_NET_F_HOST_TSO6) | bit(VIRTIO_NET_F_HOST_ECN) | bit(VIRTIO_NET_F_HOST_UFO)
      | bit(VIRTIO_NET_F_MRG_RXBUF) | bit(VIRTIO_NET_F_STATUS)
      | bit(VIRTIO_F_EVENT_IDX) | bit(VIRTIO_F_INDIRECT_DESC);
    if (queuePairs > 1) f |= bit(VIRTIO_NET_F_MQ) | bit(VIRTIO_NET_F_CTRL_VQ);
    if (mtu !== undefined) f |= bit(VIRTIO_NET_F_MTU);
    this.features = f;

    // 5.1.4: le16 fields; max_virtqueue_pairs and mtu are meaningful with MQ / MTU only.
    const cfg = new Uint8Array(NET_CONFIG_SIZE);
    const dv = new DataView(cfg.buffer);
    cfg.set(mac, 0);
    dv.setUint16(6, VIRTIO_NET_S_LINK_UP, true);
    dv.setUint16(8, queuePairs, true);
    dv.setUint16(10, mtu ?? 0, true);
    this.config = cfg;

    this.iov8 = new Uint8Array(libc.IOV_MAX * libc.IOVEC_SIZE);
    this.iov32 = new Uint32Array(this.iov8.buffer);
    this.txChains = [];
    for (let k = 0; k < queuePairs; k++) this.txChains.push(new DescriptorChain(queueSize));
    this.txPending = new Uint8Array(queuePairs);
    this.rxChain = new DescriptorChain(queueSize);
    this.ctrlChain = new DescriptorChain(queueSize);
    this.fdPaused = new Uint8Array(queuePairs);
    const lim = (l: RateLimiter | undefined): RateLimiter | null => (l !== undefined && !l.unlimited ? l : null);
    this.rxLimiter = lim(opts.rxRateLimiter);
    this.txLimiter = lim(opts.txRateLimiter);
    if (this.rxLimiter !== null) this.counters.rxRateLimited = 0;
    if (this.txLimiter !== null) this.counters.txRateLimited = 0;
    this.timer = this.rxLimiter !== null || this.txLimiter !== null ? new LimiterTimer() : null;
    this.txThrottled = new Uint8Array(queuePairs);
  }

  /** The MAC address in config space. */
  get mac(): Uint8Array {
    return this.config.slice(0, 6);
  }

  // --- VirtioDevice ---------------------------------------------------------------------------

  readConfig(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) {
      const o = offset + i;
      data[i] = o >= 0 && o < NET_CONFIG_SIZE ? this.config[o]! : 0;
    }
  }

  /** 5.1.4.2: the driver does not write the configuration space (the legacy MAC write is not supported). */
  writeConfig(_offset: number, _data: Uint8Array): void {}

  activate(a: VirtioActivation): void {
    if (this.closed) throw new Error('virtio-net: device is closed');
    this.clearState();
    const f = a.features;
    const has = (b: bigint): boolean => (f & bit(b)) !== 0n;
    this.mrg = has(VIRTIO_NET_F_MRG_RXBUF);
    this.guestCsum = has(VIRTIO_NET_F_GUEST_CSUM);
    this.mtuNegotiated = has(VIRTIO_NET_F_MTU) && this.mtu !== undefined;
    this.mq = has(VIRTIO_NET_F_MQ) && this.pairs > 1;
    this.usablePairs = this.mq ? this.pairs : 1;
    this.activePairs = this.restoredPairs > 0 && this.restoredPairs <= this.usablePairs ? this.restoredPairs : 1;
    this.restoredPairs = 0;
    // 5.1.2: controlq is 2N, N = max_virtqueue_pairs with MQ, else 1.
    this.ctrlIndex = has(VIRTIO_NET_F_CTRL_VQ) && this.pairs > 1 ? 2 * this.usablePairs : -1;

    const regs = a.mem.regions;
    this.hostMode = regs.length > 0 && regs.every((r) => r.hostAddress !== 0n);
    this.regStart = regs.map((r) => r.gpa);
    this.regEnd = regs.map((r) => r.gpa + r.size);
    this.regHost = regs.map((r) => Number(r.hostAddress));
    this.ensureBuffers();

    // 5.1.6.3 / tuntap.rst: the tap may hand us what the guest accepts, nothing more. The
    // dependencies of 5.1.3.1 (GUEST_TSO*/UFO need GUEST_CSUM, GUEST_ECN needs a GUEST_TSO) are
    // applied here too: the tap refuses TSO/UFO without CSUM and ECN without TSO (EINVAL).
    let tun = 0;
    if (this.guestCsum) {
      tun |= TUN_F_CSUM;
      if (has(VIRTIO_NET_F_GUEST_TSO4)) tun |= TUN_F_TSO4;
      if (has(VIRTIO_NET_F_GUEST_TSO6)) tun |= TUN_F_TSO6;
      if (has(VIRTIO_NET_F_GUEST_ECN) && (tun & (TUN_F_TSO4 | TUN_F_TSO6)) !== 0) tun |= TUN_F_TSO_ECN;
      if (has(VIRTIO_NET_F_GUEST_UFO)) tun |= TUN_F_UFO;
    }
    this.setOffload(tun);

    this.act = a;
    this.mem = a.mem;
    if (this.setQueueEnabled !== undefined && this.pairs > 1) {
      for (let k = 0; k < this.pairs; k++) this.steer(k, k < this.activePairs);
    }
    this.pollDirty = true;
  }

  processQueue(index: number): void {
    const a = this.act;
    if (a === null || !Number.isInteger(index) || index < 0) return;
    if (index === this.ctrlIndex) {
      this.ctrlPump(a);
      return;
    }
    const k = index >> 1;
    if (k >= this.usablePairs) return;
    if ((index & 1) === 1) {
      this.txPump(a, k);
      return;
    }
    // The guest added receive buffers: poll the sources again.
    const s = this.rx[k]!;
    if (s.starved) {
      s.starved = false;
      this.pollDirty = true;
      a.queues[index]?.disableNotification();
    }
    for (let fd = k; fd < this.pairs; fd += this.activePairs) {
      if (this.fdPaused[fd] !== 0) { this.fdPaused[fd] = 0; this.pollDirty = true; }
    }
    if (k < this.activePairs) this.rxPump(a, k, k);
  }

  pollFds(): readonly number[] {
    if (!this.pollDirty) return this.pollList;
    this.pollDirty = false;
    const a = this.act;
    if (a === null) {
      this.pollList = EMPTY;
      return EMPTY;
    }
    const list: number[] = [];
    for (let fd = 0; fd < this.pairs; fd++) {
      const j = fd % this.activePairs;
      const q = a.queues[2 * j];
      const s = this.rx[j]!;
      if (q === undefined || q === null || s.starved || s.throttled || this.fdPaused[fd] !== 0) continue;
      list.push(this.fds[fd]!);
    }
    if (this.timer !== null) list.push(this.timer.fd);
    this.pollList = list;
    return list;
  }

  onFdReady(fd: number): void {
    const a = this.act;
    if (a === null) return;
    if (this.timer !== null && fd === this.timer.fd) {
      this.onTimer(a);
      return;
    }
    const k = this.fds.indexOf(fd);
    if (k < 0) return;
    if (k < this.usablePairs && this.txPending[k] !== 0) this.txPump(a, k);
    const j = k % this.activePairs;
    const s = this.rx[j]!;
    if (!s.starved && !s.throttled && this.fdPaused[k] === 0) this.rxPump(a, j, k);
  }

  /** The throttle timer fired: resume the queues that were waiting for tokens. */
  private onTimer(a: VirtioActivation): void {
    this.timer!.ack();
    for (let k = 0; k < this.pairs; k++) {
      if (this.txThrottled[k] !== 0) {
        this.txThrottled[k] = 0;
        if (k < this.usablePairs) this.txPump(a, k);
      }
      const s = this.rx[k];
      if (s !== undefined && s.throttled) {
        s.throttled = false;
        this.pollDirty = true;
        if (k < this.activePairs) this.rxPump(a, k, k);
      }
    }
  }

  private throttle(ms: number): void {
    const t = this.timer!;
    if (!t.armed) t.arm(ms);
  }

  reset(): void {
    this.act = null;
    this.mem = null;
    this.clearState();
    if (this.timer?.armed) this.timer.disarm();
  }

  /**
   * Hand back what is held without being published: a transmit chain the tap refused (EAGAIN;
   * sent again after resume) and the receive chains a frame was being spread over (MRG_RXBUF;
   * the frame stays in the bounce buffer and is copied again after resume).
   */
  pause(): void {
    const a = this.act;
    if (a === null) return;
    for (let k = 0; k < this.usablePairs; k++) {
      if (this.txPending[k] !== 0) {
        a.queues[2 * k + 1]?.rewind(1);
        this.txPending[k] = 0;
      }
      const s = this.rx[k];
      if (s !== undefined && s.held > 0) {
        a.queues[2 * k]?.rewind(s.held);
        s.held = 0;
        s.off = 0;
      }
    }
  }

  saveState(): VirtioDeviceSpecificState {
    return { kind: 'net', mac: this.config.slice(0, 6), config: this.config.slice(), activePairs: this.activePairs };
  }

  /** The saved MAC and configuration must be this device's; the enabled queue pairs are taken over. */
  restoreState(s: VirtioDeviceSpecificState): void {
    if (s.kind !== 'net') throw new VirtioStateMismatchError(`saved ${s.kind} state for a virtio-net device`);
    const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join(':');
    if (s.mac.some((b, i) => b !== this.config[i])) throw new VirtioStateMismatchError(`the saved MAC is ${hex(s.mac)}, this device has ${hex(this.config.subarray(0, 6))}`);
    if (s.config.length !== this.config.length || s.config.some((b, i) => b !== this.config[i])) throw new VirtioStateMismatchError('the saved network configuration (5.1.4: status, queue pairs, MTU) differs from this device\'s');
    if (s.activePairs < 1 || s.activePairs > this.pairs) throw new VirtioStateMismatchError(`the saved driver enabled ${s.activePairs} queue pairs, this device has ${this.pairs}`);
    this.restoredPairs = s.activePairs;
  }

  /** Releases the bounce buffers; the tap fds belong to the caller and stay open. */
  close(): void {
    this.reset();
    this.closed = true;
    this.timer?.close();
    if (this.bufHost !== 0n) {
      const h = this.bufHost;
      this.bufHost = 0n;
      this.rx = [];
      this.txBounce = new Uint8Array(0);
      libc.munmap(h, this.bufSize);
    }
  }

  // --- internals --------------------------------------------------------------------------------

  private clearState(): void {
    for (const s of this.rx) s.clear();
    this.txPending.fill(0);
    this.txThrottled.fill(0);
    this.fdPaused.fill(0);
    this.activePairs = 1;
    this.ctrlIndex = -1;
    this.pollDirty = true;
  }

  /** One mapping: a receive bounce buffer per pair, then the transmit bounce buffer. */
  private ensureBuffers(): void {
    if (this.bufHost !== 0n) return;
    const size = (this.pairs + 1) * BOUNCE_SIZE;
    const host = libc.mmap(size, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_PRIVATE | libc.MAP_ANONYMOUS | libc.MAP_NORESERVE, -1, 0);
    const all = new Uint8Array(libc.view(host, size));
    const base = Number(host);
    const rx: RxState[] = [];
    for (let k = 0; k < this.pairs; k++) {
      rx.push(new RxState(all.subarray(k * BOUNCE_SIZE, (k + 1) * BOUNCE_SIZE), base + k * BOUNCE_SIZE, this.queueMaxSize));
    }
    this.rx = rx;
    this.txBounce = all.subarray(this.pairs * BOUNCE_SIZE);
    this.txBounceHost = base + this.pairs * BOUNCE_SIZE;
    this.bufHost = host;
    this.bufSize = size;
  }

  /** Host address of guest [gpa, gpa+len) (the queue checked it is RAM; checked again here). */
  private host(gpa: number, len: number): number {
    const st = this.regStart;
    for (let i = 0; i < st.length; i++) {
      if (gpa >= st[i]! && gpa + len <= this.regEnd[i]!) return this.regHost[i]! + (gpa - st[i]!);
    }
    throw new VirtqueueError('desc-out-of-range', `buffer 0x${gpa.toString(16)}+0x${len.toString(16)} is not inside guest RAM`);
  }

  private steer(pair: number, enabled: boolean): boolean {
    try {
      this.setQueueEnabled?.(pair, enabled);
      return true;
    } catch {
      this.counters.steeringErrors++;
      return false;
    }
  }

  // --- transmit (5.1.6.2) ---------------------------------------------------------------------

  private txPump(a: VirtioActivation, k: number): void {
    const q = a.queues[2 * k + 1];
    if (q === undefined || q === null) return;
    const c = this.txChains[k]!;
    let done = 0;
    try {
      if (this.txPending[k] !== 0) {
        if (!this.send(k, c)) return;
        this.txPending[k] = 0;
        q.addUsed(c.head, 0);
        done++;
      }
      for (;;) {
        q.disableNotification();
        while (q.pop(c)) {
          const lim = this.txLimiter;
          if (lim !== null) {
            const bytes = c.readableBytes > VIRTIO_NET_HDR_SIZE ? c.readableBytes - VIRTIO_NET_HDR_SIZE : 0;
            if (!lim.consume(bytes, 1)) {
              // No tokens: the chain stays in the available ring until the timer fires.
              q.undoPop();
              this.txThrottled[k] = 1;
              this.counters.txRateLimited!++;
              this.throttle(lim.waitMs(bytes, 1));
              return;
            }
          }
          if (!this.send(k, c)) {
            // Tap full: keep the chain; retried on the next notification or tap readiness.
            this.txPending[k] = 1;
            q.enableNotification();
            return;
          }
          q.addUsed(c.head, 0);
          done++;
        }
        if (!q.enableNotification()) break;
      }
    } finally {
      if (done > 0 && q.needsInterrupt()) a.notifyQueue(2 * k + 1);
    }
  }

  /** Write one transmit chain (header + frame) to the tap. False on EAGAIN (chain kept). */
  private send(k: number, c: DescriptorChain): boolean {
    const total = c.readableBytes;
    // 5.1.6.2: the header, then a frame of at most 65550 bytes.
    if (total < VIRTIO_NET_HDR_SIZE || total > MAX_PACKET) {
      throw new VirtqueueError('request', `transmit chain (head ${c.head}) has ${total} device-readable bytes; a packet is a ${VIRTIO_NET_HDR_SIZE}-byte virtio_net_hdr and at most ${VIRTIO_NET_MAX_FRAME} bytes of frame`);
    }
    // Pair k's fd, or an active pair's one when the guest transmits beyond VQ_PAIRS_SET.
    const fd = this.fds[k < this.activePairs ? k : k % this.activePairs]!;
    let r: number;
    if (this.hostMode && c.readableCount <= libc.IOV_MAX) {
      const iov = this.iov32;
      let n = 0;
      for (let i = 0; i < c.readableCount; i++) {
        const len = c.len[i]!;
        if (len === 0) continue;
        const h = this.host(c.addr[i]!, len);
        const o = n * 4;
        iov[o] = h >>> 0;
        iov[o + 1] = Math.floor(h / TWO_32);
        iov[o + 2] = len;
        iov[o + 3] = 0;
        n++;
      }
      do r = libc.writevRaw(fd, this.iov8, n); while (r === -libc.EINTR);
    } else {
      let off = 0;
      for (let i = 0; i < c.readableCount; i++) {
        const len = c.len[i]!;
        if (len === 0) continue;
        this.fromGuest(c.addr[i]!, off, len);
        off += len;
      }
      do r = libc.writeRaw(fd, this.txBounce, total); while (r === -libc.EINTR);
    }
    if (r === -libc.EAGAIN) return false;
    if (r < 0) {
      this.counters.txDropped++;
    } else {
      this.counters.txFrames++;
      this.counters.txBytes += total - VIRTIO_NET_HDR_SIZE;
    }
    return true;
  }

  private fromGuest(gpa: number, dstOff: number, n: number): void {
    if (this.hostMode) libc.memcpyHost(this.txBounceHost + dstOff, this.host(gpa, n), n);
    else this.mem!.readBytes(gpa, this.txBounce.subarray(dstOff, dstOff + n)); // test memory only
  }

  // --- receive (5.1.6.3, 5.1.6.4) ---------------------------------------------------------------

  /** Move frames from the tap fds feeding receive queue `j` (starting with fd `first`) into it. */
  private rxPump(a: VirtioActivation, j: number, first: number): void {
    const q = a.queues[2 * j];
    if (q === undefined || q === null) return;
    const s = this.rx[j]!;
    let frames = 0;
    try {
      for (;;) {
        if (s.len === 0) {
          // Leave frames in the tap while there is nowhere to put them.
          if (s.held === 0 && !q.hasAvailable() && !q.enableNotification()) {
            s.starved = true;
            this.pollDirty = true;
            return;
          }
          if (!this.readFrame(s, j, first)) return;
        }
        const lim = this.rxLimiter;
        if (lim !== null && !s.admitted) {
          const bytes = s.len - VIRTIO_NET_HDR_SIZE;
          if (!lim.consume(bytes, 1)) {
            // No tokens: the frame waits in the bounce buffer, the taps are not read meanwhile.
            s.throttled = true;
            this.pollDirty = true;
            this.counters.rxRateLimited!++;
            this.throttle(lim.waitMs(bytes, 1));
            return;
          }
          s.admitted = true;
        }
        if (!this.fill(q, s)) {
          s.starved = true;
          this.pollDirty = true;
          return;
        }
        frames++;
      }
    } finally {
      if (frames > 0 && q.needsInterrupt()) a.notifyQueue(2 * j);
    }
  }

  /** Read the next frame for queue `j` into its bounce buffer. False when no source has one. */
  private readFrame(s: RxState, j: number, first: number): boolean {
    const step = this.activePairs;
    // Sources of queue j: fds j, j + step, ...; start with `first` when it is one, else round-robin.
    const nsrc = Math.floor((this.pairs - 1 - j) / step) + 1;
    let idx = first % step === j && first < this.pairs ? Math.floor((first - j) / step) : s.rr % nsrc;
    for (let tries = 0; tries < nsrc; tries++, idx = (idx + 1) % nsrc) {
      const fdIndex = j + idx * step;
      if (this.fdPaused[fdIndex] !== 0) continue;
      for (;;) {
        const n = libc.readRaw(this.fds[fdIndex]!, s.bounce, BOUNCE_SIZE);
        if (n === -libc.EAGAIN || n === -libc.EINTR) break;
        if (n <= 0) {
          // An error (or EOF on a test socket): stop polling it until the queue is notified.
          this.counters.rxErrors++;
          this.fdPaused[fdIndex] = 1;
          this.pollDirty = true;
          break;
        }
        if (n < VIRTIO_NET_HDR_SIZE + ETH_HLEN) {
          this.counters.rxDropped++;
          continue;
        }
        const b = s.bounce;
        // 5.1.6.3.2: no oversized non-GSO frames to a driver that negotiated VIRTIO_NET_F_MTU.
        if (this.mtuNegotiated && (b[1]! & ~VIRTIO_NET_HDR_GSO_ECN) === VIRTIO_NET_HDR_GSO_NONE
          && n - VIRTIO_NET_HDR_SIZE > this.mtu! + ETH_HLEN + VLAN_HLEN) {
          this.counters.rxDropped++;
          continue;
        }
        // 5.1.6.4.1: without VIRTIO_NET_F_GUEST_CSUM the device sets flags to zero.
        if (!this.guestCsum) b[0] = 0;
        s.len = n;
        s.off = 0;
        s.rr = idx + 1;
        return true;
      }
    }
    return false;
  }

  /**
   * Copy the pending frame of `s` into receive chains and publish them. False when the queue ran
   * out of buffers first (what was filled stays held for the next call).
   */
  private fill(q: SplitQueue, s: RxState): boolean {
    const c = this.rxChain;
    while (s.off < s.len) {
      if (s.held >= q.size || s.held >= s.heldHead.length) {
        // Every descriptor of the ring is held and the frame still does not fit: the driver
        // cannot add more, so deliver what fits rather than wait forever.
        this.counters.rxTruncated++;
        break;
      }
      if (!q.pop(c)) {
        if (q.enableNotification()) continue;
        return false;
      }
      // 5.1.6.3.1: every receive buffer holds at least the header (the first always must).
      if (c.writableBytes < VIRTIO_NET_HDR_SIZE) {
        throw new VirtqueueError('request', `receive chain (head ${c.head}) has ${c.writableBytes} device-writable bytes, less than the ${VIRTIO_NET_HDR_SIZE}-byte virtio_net_hdr`);
      }
      const n = this.copyIn(c, s, s.held === 0);
      s.heldHead[s.held] = c.head;
      s.heldLen[s.held] = n;
      s.held++;
      s.off += n;
      if (!this.mrg) {
        // Without MRG_RXBUF a packet takes exactly one buffer (5.1.6.3.1 asks for big enough ones).
        if (s.off < s.len) this.counters.rxTruncated++;
        break;
      }
    }
    // 5.1.6.4: num_buffers = how many buffers the packet spans (1 without MRG_RXBUF).
    const mem = this.mem!;
    mem.writeU8(s.nb0, s.held & 0xff);
    mem.writeU8(s.nb1, s.held >> 8);
    for (let i = 0; i < s.held; i++) q.addUsed(s.heldHead[i]!, s.heldLen[i]!);
    this.counters.rxFrames++;
    this.counters.rxBytes += s.len - VIRTIO_NET_HDR_SIZE;
    s.len = 0;
    s.off = 0;
    s.held = 0;
    s.admitted = false;
    return true;
  }

  /** Copy as much of the rest of the frame as fits into the writable segments of `c`. */
  private copyIn(c: DescriptorChain, s: RxState, first: boolean): number {
    const want = s.len - s.off;
    let done = 0;
    for (let i = c.readableCount; i < c.length && done < want; i++) {
      const len = c.len[i]!;
      if (len === 0) continue;
      const n = len < want - done ? len : want - done;
      const gpa = c.addr[i]!;
      if (first) {
        if (done <= HDR_NUM_BUFFERS && HDR_NUM_BUFFERS < done + n) s.nb0 = gpa + HDR_NUM_BUFFERS - done;
        if (done <= HDR_NUM_BUFFERS + 1 && HDR_NUM_BUFFERS + 1 < done + n) s.nb1 = gpa + HDR_NUM_BUFFERS + 1 - done;
      }
      const src = s.off + done;
      if (this.hostMode) libc.memcpyHost(this.host(gpa, n), s.bounceHost + src, n);
      else this.mem!.writeBytes(gpa, s.bounce.subarray(src, src + n)); // test memory only
      done += n;
    }
    return done;
  }

  // --- control queue (5.1.6.5) ------------------------------------------------------------------

  private ctrlPump(a: VirtioActivation): void {
    const q = a.queues[this.ctrlIndex];
    if (q === undefined || q === null) return;
    const c = this.ctrlChain;
    const mem = a.mem;
    let done = 0;
    try {
      do {
        q.disableNotification();
        while (q.pop(c)) {
          // struct virtio_net_ctrl: u8 class, u8 command, data (device-readable); u8 ack (device-writable).
          if (c.readableBytes < 2 || c.writableBytes < 1) {
            throw new VirtqueueError('request', `control command (head ${c.head}) has ${c.readableBytes} device-readable and ${c.writableBytes} device-writable bytes; it needs class, command and an ack byte`);
          }
          const ack = this.command(c);
          let i = c.readableCount;
          while (c.len[i] === 0) i++;
          mem.writeU8(c.addr[i]!, ack);
          q.addUsed(c.head, 1);
          done++;
        }
      } while (q.enableNotification());
    } finally {
      if (done > 0 && q.needsInterrupt()) a.notifyQueue(this.ctrlIndex);
    }
  }

  private command(c: DescriptorChain): number {
    const cls = this.ctrlByte(c, 0);
    const cmd = this.ctrlByte(c, 1);
    if (cls === VIRTIO_NET_CTRL_MQ && cmd === VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET && this.mq) {
      // 5.1.6.5.5: le16 virtqueue_pairs in [1, max_virtqueue_pairs].
      if (c.readableBytes < 4) return VIRTIO_NET_ERR;
      const n = this.ctrlByte(c, 2) | (this.ctrlByte(c, 3) << 8);
      if (n < VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN || n > this.pairs) return VIRTIO_NET_ERR;
      return this.setActivePairs(n) ? VIRTIO_NET_OK : VIRTIO_NET_ERR;
    }
    // Classes whose features are not offered (RX mode, MAC, VLAN, announce, offloads) and RSS.
    return VIRTIO_NET_ERR;
  }

  /** Byte `off` of the device-readable part of `c` (off < c.readableBytes). */
  private ctrlByte(c: DescriptorChain, off: number): number {
    let base = 0;
    for (let i = 0; i < c.readableCount; i++) {
      const len = c.len[i]!;
      if (off < base + len) return this.mem!.readU8(c.addr[i]! + (off - base));
      base += len;
    }
    return 0;
  }

  private setActivePairs(n: number): boolean {
    const old = this.activePairs;
    if (n === old) return true;
    if (this.setQueueEnabled !== undefined) {
      // Attach the new queues first / detach the dropped ones, so that one always stays attached.
      for (let k = Math.min(n, old); k < Math.max(n, old); k++) {
        if (!this.steer(k, n > old)) {
          for (let u = Math.min(n, old); u < k; u++) this.steer(u, n < old);
          return false;
        }
      }
    }
    this.activePairs = n;
    this.pollDirty = true;
    return true;
  }
}
