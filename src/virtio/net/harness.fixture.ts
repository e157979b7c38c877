// Test harness for the virtio-net model: guest memory, one TestDriver per queue, and a
// SOCK_DGRAM socketpair per queue pair standing in for the tap (datagrams keep frame boundaries
// like a tap does). Used by device.test.ts and fuzz.test.ts.
import * as libc from '../../sys/libc.js';
import { GuestMemory } from '../../memory/guest_memory.js';
import { VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, bit, type VirtioActivation } from '../device.js';
import type { SplitQueue } from '../queue.js';
import { TestDriver } from '../testing/driver.js';
import { NetDevice, VIRTIO_NET_HDR_SIZE } from './device.js';
import type { RateLimiter } from '../rate_limiter.js';

export type MemKind = 'host' | 'buffer';

export const MEM_SIZE = 32 << 20;
/** Ring area of queue i: [i * RING_STRIDE, ...); data area: [DATA_BASE + i * DATA_STRIDE, +DATA_STRIDE). */
const RING_STRIDE = 0x10000;
const DATA_BASE = 4 << 20;
const DATA_STRIDE = 2 << 20;

export function makeMemory(kind: MemKind): GuestMemory {
  return kind === 'host'
    ? GuestMemory.allocate([{ gpa: 0, size: MEM_SIZE }])
    : GuestMemory.fromBuffers([{ gpa: 0, buffer: new ArrayBuffer(MEM_SIZE) }]);
}

export interface HarnessOptions {
  pairs?: number;
  queueSize?: number;
  mtu?: number;
  mem?: MemKind | GuestMemory;
  /** Device-side fds (default: one end of a fresh socketpair per pair). */
  fds?: number[];
  steering?: boolean;
  /** Rate limiters for the device (RX and TX). */
  rxRateLimiter?: RateLimiter;
  txRateLimiter?: RateLimiter;
}

export class Harness {
  readonly mem: GuestMemory;
  readonly dev: NetDevice;
  readonly drivers: TestDriver[] = [];
  /** Device ends and test ends of the socketpairs (empty peers when fds were given). */
  readonly fds: number[] = [];
  readonly peers: number[] = [];
  readonly notified: number[] = [];
  readonly offloads: number[] = [];
  readonly steer: Array<[number, boolean]> = [];
  queues: Array<SplitQueue | null> = [];
  private readonly ownMem: boolean;

  constructor(opts: HarnessOptions = {}) {
    const pairs = opts.pairs ?? 1;
    const queueSize = opts.queueSize ?? 256;
    if (opts.mem instanceof GuestMemory) {
      this.mem = opts.mem;
      this.ownMem = false;
    } else {
      this.mem = makeMemory(opts.mem ?? 'host');
      this.ownMem = true;
    }
    if (opts.fds !== undefined) {
      this.fds.push(...opts.fds);
    } else {
      for (let k = 0; k < pairs; k++) {
        const [a, b] = libc.socketpair(libc.AF_UNIX, libc.SOCK_DGRAM | libc.SOCK_NONBLOCK | libc.SOCK_CLOEXEC);
        this.fds.push(a);
        this.peers.push(b);
      }
    }
    this.dev = new NetDevice({
      tapFds: this.fds, mac: Uint8Array.from([0x52, 0x54, 0, 0x12, 0x34, 0x56]), queuePairs: pairs, queueSize,
      ...(opts.mtu !== undefined ? { mtu: opts.mtu } : {}),
      ...(opts.rxRateLimiter !== undefined ? { rxRateLimiter: opts.rxRateLimiter } : {}),
      ...(opts.txRateLimiter !== undefined ? { txRateLimiter: opts.txRateLimiter } : {}),
      setOffload: (f) => { this.offloads.push(f); },
      ...(opts.steering === true ? { setQueueEnabled: (k: number, en: boolean) => { this.steer.push([k, en]); } } : {}),
    });
    for (let i = 0; i < this.dev.numQueues; i++) {
      this.drivers.push(new TestDriver(this.mem, {
        size: queueSize, base: i * RING_STRIDE, dataStart: DATA_BASE + i * DATA_STRIDE, dataEnd: DATA_BASE + (i + 1) * DATA_STRIDE,
      }));
    }
  }

  /** Activate with `features` (a subset of dev.features); queues not in `enabled` are null. */
  activate(features: bigint, enabled?: readonly number[]): VirtioActivation {
    const opts = { eventIdx: (features & bit(VIRTIO_F_EVENT_IDX)) !== 0n, indirect: (features & bit(VIRTIO_F_INDIRECT_DESC)) !== 0n };
    this.queues = this.drivers.map((d, i) => (enabled === undefined || enabled.includes(i) ? d.queue(opts) : null));
    const a: VirtioActivation = {
      mem: this.mem, queues: this.queues, features,
      notifyQueue: (i) => { this.notified.push(i); },
      notifyConfig: () => {},
    };
    this.dev.activate(a);
    return a;
  }

  /** Guest reset: device and all drivers back to their initial state. */
  reset(): void {
    this.dev.reset();
    for (const d of this.drivers) d.reset();
    this.notified.length = 0;
  }

  /** Host side sends a frame (header included) on pair k. Returns bytes written or -errno. */
  peerSend(k: number, pkt: Uint8Array): number {
    return libc.writeRaw(this.peers[k]!, pkt, pkt.length);
  }

  /** Next datagram the device wrote on pair k, or null. */
  peerRecv(k: number): Uint8Array | null {
    const buf = new Uint8Array(70000);
    const n = libc.readRaw(this.peers[k]!, buf, buf.length);
    return n < 0 ? null : buf.slice(0, n);
  }

  /** Read everything waiting on every peer. */
  drainPeers(): number {
    let n = 0;
    for (let k = 0; k < this.peers.length; k++) while (this.peerRecv(k) !== null) n++;
    return n;
  }

  close(): void {
    this.dev.close();
    for (const fd of [...this.fds, ...this.peers]) {
      try { libc.close(fd); } catch { /* test-supplied fd already closed */ }
    }
    if (this.ownMem) this.mem.free();
  }
}

/** A packet: a 12-byte virtio_net_hdr (flags, gso_type as given) and an Ethernet frame of `frameLen` bytes. */
export function packet(frameLen: number, seed = 1, flags = 0): Uint8Array {
  const p = new Uint8Array(VIRTIO_NET_HDR_SIZE + frameLen);
  p[0] = flags;
  for (let i = VIRTIO_NET_HDR_SIZE; i < p.length; i++) p[i] = (i * 7 + seed * 13) & 0xff;
  if (frameLen >= 14) {
    p.set([0x52, 0x54, 0, 0x12, 0x34, 0x56], VIRTIO_NET_HDR_SIZE);
    p[VIRTIO_NET_HDR_SIZE + 12] = 0x88;
    p[VIRTIO_NET_HDR_SIZE + 13] = 0xb5; // local experimental ethertype
  }
  return p;
}
