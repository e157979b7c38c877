// Split virtqueue, device side (virtio 1.2, 2.7).
//
// Everything read from the rings is guest-controlled and treated as hostile: every index is
// range-checked, every buffer is checked with GuestMemory.checkedRange before a device may touch
// it, and `pop` throws nothing but VirtqueueError. The three rings are validated once, in the
// constructor, and viewed through DataViews / Uint16Arrays created there, so pop/addUsed never
// allocate and never go through GuestMemory's region lookup for ring accesses.
//
// Ordering (2.7.13, 2.7.7.2 / 2.7.10): avail.idx and used.idx, the notification fields and the
// flags go through Atomics on a Uint16Array where the host alignment allows (always for mmapped
// guest RAM). Guest RAM is not a SharedArrayBuffer, so V8 need not emit a locked instruction for
// those Atomics: the store->load orderings the protocol needs (between "publish used.idx" and
// "read used_event", and between "write avail_event" and "re-read avail.idx", the driver doing the
// mirror image with its own full barrier) come from fullFence(), an atomic add on a real
// SharedArrayBuffer (lock xadd: a full barrier on x86). Plain stores of the used element come
// before the store of used.idx (x86 does not reorder stores with stores).

import type { GuestMemory } from '../memory/guest_memory.js';

const FENCE = new Int32Array(new SharedArrayBuffer(4));
/** A full memory barrier (store->load ordering included). */
export function fullFence(): void {
  Atomics.add(FENCE, 0, 0);
}

/** Why a virtqueue (or a request on it) is unusable. */
export type VirtqueueErrorReason =
  | 'bad-queue-size' // size not a power of two in 1..32768 (2.7)
  | 'ring-alignment' // desc table not 16-, avail not 2-, used not 4-byte aligned (2.7, table)
  | 'ring-out-of-range' // a ring not entirely inside one RAM region
  | 'avail-index' // avail.idx moved more than `size` past the last index seen (2.7.13.3)
  | 'desc-index' // head or next index >= queue size (or >= indirect table length)
  | 'desc-out-of-range' // a buffer not entirely inside guest RAM
  | 'loop' // a descriptor visited twice (2.7.5: loops are forbidden)
  | 'chain-too-long' // more segments than the queue size / chain capacity, or > 2^32 bytes (2.7.5.1)
  | 'indirect' // indirect not negotiated, nested, with NEXT, or a bad table (2.7.5.3)
  | 'order' // a device-readable descriptor after a device-writable one (2.7.4.2)
  | 'request'; // a device could not parse a request and has no in-band way to report it

export class VirtqueueError extends Error {
  readonly reason: VirtqueueErrorReason;
  constructor(reason: VirtqueueErrorReason, message: string) {
    super(message);
    this.name = 'VirtqueueError';
    this.reason = reason;
  }
}

/** Guest physical addresses of the three parts of a split virtqueue (2.7). */
export interface QueueLayout {
  size: number;
  descTable: number;
  availRing: number;
  usedRing: number;
}

/** Negotiated features that change queue behaviour. */
export interface QueueOptions {
  /** VIRTIO_F_EVENT_IDX (2.7.7.2, 2.7.10). */
  eventIdx: boolean;
  /** VIRTIO_F_INDIRECT_DESC (2.7.5.3). */
  indirect: boolean;
}

/** Descriptor flags (2.7.5). */
export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;
/** avail.flags (2.7.6): the driver does not want interrupts (without EVENT_IDX). */
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
/** used.flags (2.7.8): the device does not want notifications (without EVENT_IDX). */
export const VIRTQ_USED_F_NO_NOTIFY = 1;

/** Largest split queue size (2.7). */
export const MAX_QUEUE_SIZE = 32768;

export const DESC_SIZE = 16;
/** Bytes of each ring for `size` entries (2.7, the table under "Virtqueue Part"). */
export const descTableBytes = (size: number): number => 16 * size;
export const availRingBytes = (size: number): number => 6 + 2 * size;
export const usedRingBytes = (size: number): number => 6 + 8 * size;

const TWO_32 = 2 ** 32;
/** Addresses at or above 2^52 cannot be RAM (MAXPHYADDR), so their high word is >= 2^20. */
const ADDR_HI_LIMIT = 2 ** 20;

const hex = (n: number): string => `0x${n.toString(16)}`;

/**
 * One popped descriptor chain, flattened into segments. Preallocated by the device for its
 * largest queue; `pop` fills it in place. Device-readable segments come first
 * ([0, readableCount)), device-writable ones after ([readableCount, length)).
 */
export class DescriptorChain {
  /** Head descriptor index: the id to hand back to addUsed. */
  head = 0;
  /** Number of segments. */
  length = 0;
  /** Number of device-readable segments (they precede the writable ones). */
  readableCount = 0;
  readonly capacity: number;
  /** Segment guest physical addresses (exact integers below 2^52). */
  readonly addr: Float64Array;
  readonly len: Uint32Array;
  /** 1 where the segment is device-writable. */
  readonly writable: Uint8Array;
  readableBytes = 0;
  writableBytes = 0;

  constructor(capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1 || capacity > MAX_QUEUE_SIZE) {
      throw new RangeError(`descriptor chain capacity ${capacity} is not in 1..${MAX_QUEUE_SIZE}`);
    }
    this.capacity = capacity;
    this.addr = new Float64Array(capacity);
    this.len = new Uint32Array(capacity);
    this.writable = new Uint8Array(capacity);
  }

  /** Empty the chain (pop does this itself). */
  clear(): void {
    this.head = 0;
    this.length = 0;
    this.readableCount = 0;
    this.readableBytes = 0;
    this.writableBytes = 0;
  }
}

/** A u16 ring field accessed with Atomics when the host view is 2-aligned, else via DataView. */
function u16View(dv: DataView): Uint16Array | null {
  return dv.byteOffset % 2 === 0 && dv.byteLength % 2 === 0 ? new Uint16Array(dv.buffer, dv.byteOffset, dv.byteLength / 2) : null;
}

function viewOf(mem: GuestMemory, gpa: number, len: number): DataView {
  const s = mem.slice(gpa, len);
  return new DataView(s.buffer, s.byteOffset, s.byteLength);
}

/** Split virtqueue, device side (virtio 1.2, 2.7). */
export class SplitQueue {
  readonly size: number;
  readonly layout: Readonly<QueueLayout>;
  readonly eventIdx: boolean;
  readonly indirect: boolean;

  private readonly mem: GuestMemory;
  private readonly mask: number;
  private readonly desc: DataView;
  private readonly avail: DataView;
  private readonly used: DataView;
  private readonly avail16: Uint16Array | null;
  private readonly used16: Uint16Array | null;
  private lastAvail = 0;
  private usedIdx = 0;
  /** used.idx when needsInterrupt() last ran (vring_need_event's old_idx). */
  private signalledUsed = 0;
  /** needsInterrupt() ran since the queue was set up (before that, any new used entry signals). */
  private signalledValid = false;
  private usedFlags = 0;

  constructor(mem: GuestMemory, layout: QueueLayout, opts: QueueOptions) {
    const { size, descTable, availRing, usedRing } = layout;
    if (!Number.isInteger(size) || size < 1 || size > MAX_QUEUE_SIZE || (size & (size - 1)) !== 0) {
      throw new VirtqueueError('bad-queue-size', `queue size ${size} is not a power of two in 1..${MAX_QUEUE_SIZE}`);
    }
    // 2.7: alignment requirements of the three parts.
    const align = (name: string, gpa: number, a: number): void => {
      if (!Number.isInteger(gpa) || gpa < 0 || gpa % a !== 0) {
        throw new VirtqueueError('ring-alignment', `${name} at ${Number.isFinite(gpa) ? hex(gpa) : String(gpa)} is not ${a}-byte aligned`);
      }
    };
    align('descriptor table', descTable, 16);
    align('available ring', availRing, 2);
    align('used ring', usedRing, 4);
    const inRam = (name: string, gpa: number, len: number): void => {
      if (!mem.checkedRange(gpa, len)) {
        throw new VirtqueueError('ring-out-of-range', `${name} ${hex(gpa)}+${hex(len)} is not inside guest RAM`);
      }
    };
    inRam('descriptor table', descTable, descTableBytes(size));
    inRam('available ring', availRing, availRingBytes(size));
    inRam('used ring', usedRing, usedRingBytes(size));

    this.mem = mem;
    this.size = size;
    this.mask = size - 1;
    this.layout = Object.freeze({ size, descTable, availRing, usedRing });
    this.eventIdx = opts.eventIdx;
    this.indirect = opts.indirect;
    this.desc = viewOf(mem, descTable, descTableBytes(size));
    this.avail = viewOf(mem, availRing, availRingBytes(size));
    this.used = viewOf(mem, usedRing, usedRingBytes(size));
    this.avail16 = u16View(this.avail);
    this.used16 = u16View(this.used);
  }

  /** Index of the next available-ring entry the device will read (free-running u16). */
  get lastAvailIdx(): number {
    return this.lastAvail;
  }

  /** The device's used.idx (free-running u16). */
  get usedIndex(): number {
    return this.usedIdx;
  }

  /**
   * Continue a ring another device process served until now (a vhost-user back-end that went
   * away): the next avail entry to read and the used.idx already published (both u16).
   */
  resumeAt(lastAvail: number, usedIdx: number): void {
    this.lastAvail = lastAvail & 0xffff;
    this.usedIdx = usedIdx & 0xffff;
    this.signalledUsed = this.usedIdx;
  }

  /**
   * Give back the last `n` chains popped and not yet used, so that the next pops return them
   * again (pause: a device hands back the buffers it holds without data). Nothing is written to
   * the rings: for the driver those buffers were available all along (2.7.13). Only for devices
   * that use chains in the order they popped them (every device here).
   */
  rewind(n: number): void {
    const inFlight = (this.lastAvail - this.usedIdx) & 0xffff;
    if (!Number.isInteger(n) || n < 0 || n > inFlight) throw new RangeError(`rewind: ${n} chains, but ${inFlight} are popped and not used`);
    this.lastAvail = (this.lastAvail - n) & 0xffff;
  }

  // --- ring field accessors (byte offsets inside each ring, always even) --------------------

  private availLoad(off: number): number {
    const a = this.avail16;
    return a !== null ? Atomics.load(a, off >> 1) : this.avail.getUint16(off, true);
  }

  private usedStore(off: number, v: number): void {
    const a = this.used16;
    if (a !== null) Atomics.store(a, off >> 1, v);
    else this.used.setUint16(off, v, true);
  }

  /** avail.idx (2.7.6). */
  private availIdx(): number {
    return this.availLoad(2);
  }

  /** True when the driver has made buffers available that `pop` has not taken yet. */
  hasAvailable(): boolean {
    return this.availIdx() !== this.lastAvail;
  }

  /**
   * Take the next available descriptor chain into `chain`. Returns false when there is none.
   * Throws VirtqueueError for anything malformed; the chain is then not consumed.
   */
  pop(chain: DescriptorChain): boolean {
    const availIdx = this.availIdx(); // read once per pop
    const pending = (availIdx - this.lastAvail) & 0xffff;
    if (pending === 0) return false;
    // 2.7.13.3: the driver adds at most `size` entries beyond what the device has consumed.
    if (pending > this.size) {
      throw new VirtqueueError('avail-index', `avail.idx ${availIdx} is ${pending} entries ahead of the device's ${this.lastAvail} (queue size ${this.size})`);
    }
    const slot = this.lastAvail & this.mask;
    const head = this.avail.getUint16(4 + 2 * slot, true);
    if (head >= this.size) {
      throw new VirtqueueError('desc-index', `avail.ring[${slot}] names descriptor ${head}, beyond queue size ${this.size}`);
    }
    this.walk(chain, head);
    this.lastAvail = (this.lastAvail + 1) & 0xffff;
    return true;
  }

  /**
   * Put the chain the last pop() took back into the available ring, unconsumed (a throttled
   * device takes it again later; nothing is written to the rings).
   */
  undoPop(): void {
    this.lastAvail = (this.lastAvail - 1) & 0xffff;
  }

  /** Flatten the chain starting at `head` into `chain` (2.7.5, 2.7.5.3). */
  private walk(chain: DescriptorChain, head: number): void {
    chain.head = head;
    chain.length = 0;
    chain.readableCount = 0;
    chain.readableBytes = 0;
    chain.writableBytes = 0;
    const d = this.desc;
    const maxSegs = Math.min(this.size, chain.capacity);
    let idx = head;
    let visited = 0;
    for (;;) {
      // A chain can visit each descriptor of the table at most once; one more means a loop.
      if (++visited > this.size) {
        throw new VirtqueueError('loop', `descriptor chain from head ${head} visits more than ${this.size} descriptors (loop at ${idx})`);
      }
      const o = idx * DESC_SIZE;
      const lo = d.getUint32(o, true);
      const hi = d.getUint32(o + 4, true);
      const len = d.getUint32(o + 8, true);
      const flags = d.getUint16(o + 12, true);
      const next = d.getUint16(o + 14, true);
      if ((flags & VIRTQ_DESC_F_INDIRECT) !== 0) {
        this.walkIndirect(chain, head, idx, lo, hi, len, flags, maxSegs);
        return;
      }
      this.addSegment(chain, head, idx, lo, hi, len, flags, maxSegs);
      if ((flags & VIRTQ_DESC_F_NEXT) === 0) return;
      if (next >= this.size) {
        throw new VirtqueueError('desc-index', `descriptor ${idx} (chain head ${head}) links to ${next}, beyond queue size ${this.size}`);
      }
      idx = next;
    }
  }

  /** 2.7.5.3: one table of descriptors referenced by a descriptor with VIRTQ_DESC_F_INDIRECT. */
  private walkIndirect(chain: DescriptorChain, head: number, idx: number, lo: number, hi: number, len: number, flags: number, maxSegs: number): void {
    if (!this.indirect) {
      throw new VirtqueueError('indirect', `descriptor ${idx} (chain head ${head}) is indirect but VIRTIO_F_INDIRECT_DESC was not negotiated`);
    }
    // 2.7.5.3.1: INDIRECT and NEXT are exclusive.
    if ((flags & VIRTQ_DESC_F_NEXT) !== 0) {
      throw new VirtqueueError('indirect', `descriptor ${idx} (chain head ${head}) has both INDIRECT and NEXT`);
    }
    if (len === 0 || len % DESC_SIZE !== 0) {
      throw new VirtqueueError('indirect', `indirect table of descriptor ${idx} (chain head ${head}) has length ${len}, not a non-zero multiple of 16`);
    }
    const table = hi * TWO_32 + lo;
    if (hi >= ADDR_HI_LIMIT || !this.mem.checkedRange(table, len)) {
      throw new VirtqueueError('indirect', `indirect table ${hex(table)}+${hex(len)} of descriptor ${idx} (chain head ${head}) is not inside guest RAM`);
    }
    const n = len / DESC_SIZE;
    const mem = this.mem;
    let i = 0;
    let visited = 0;
    for (;;) {
      if (++visited > n) {
        throw new VirtqueueError('loop', `indirect table ${hex(table)} (chain head ${head}) loops (entry ${i})`);
      }
      // In RAM (checked above); read field by field, each once.
      const o = table + i * DESC_SIZE;
      const elo = mem.readU32(o);
      const ehi = mem.readU32(o + 4);
      const elen = mem.readU32(o + 8);
      const eflags = mem.readU16(o + 12);
      const enext = mem.readU16(o + 14);
      if ((eflags & VIRTQ_DESC_F_INDIRECT) !== 0) {
        throw new VirtqueueError('indirect', `indirect table ${hex(table)} entry ${i} (chain head ${head}) is itself indirect`);
      }
      this.addSegment(chain, head, i, elo, ehi, elen, eflags, maxSegs);
      if ((eflags & VIRTQ_DESC_F_NEXT) === 0) return;
      if (enext >= n) {
        throw new VirtqueueError('desc-index', `indirect table ${hex(table)} entry ${i} (chain head ${head}) links to ${enext}, beyond its ${n} entries`);
      }
      i = enext;
    }
  }

  private addSegment(chain: DescriptorChain, head: number, idx: number, lo: number, hi: number, len: number, flags: number, maxSegs: number): void {
    const addr = hi * TWO_32 + lo;
    if (hi >= ADDR_HI_LIMIT || !this.mem.checkedRange(addr, len)) {
      throw new VirtqueueError('desc-out-of-range', `descriptor ${idx} (chain head ${head}) buffer ${hi >= ADDR_HI_LIMIT ? '0x' + (BigInt(hi) << 32n | BigInt(lo)).toString(16) : hex(addr)}+${hex(len)} is not inside guest RAM`);
    }
    const n = chain.length;
    if (n >= maxSegs) {
      throw new VirtqueueError('chain-too-long', `descriptor chain from head ${head} has more than ${maxSegs} segments`);
    }
    const w = (flags & VIRTQ_DESC_F_WRITE) !== 0;
    if (w) {
      chain.writableBytes += len;
    } else {
      // 2.7.4.2: device-writable descriptors follow all device-readable ones.
      if (n !== chain.readableCount) {
        throw new VirtqueueError('order', `descriptor ${idx} (chain head ${head}) is device-readable but follows a device-writable one`);
      }
      chain.readableCount = n + 1;
      chain.readableBytes += len;
    }
    // 2.7.5.1: a chain is at most 2^32 bytes in total.
    if (chain.readableBytes + chain.writableBytes > TWO_32) {
      throw new VirtqueueError('chain-too-long', `descriptor chain from head ${head} is longer than 2^32 bytes`);
    }
    chain.addr[n] = addr;
    chain.len[n] = len;
    chain.writable[n] = w ? 1 : 0;
    chain.length = n + 1;
  }

  /**
   * Return chain `head` to the driver with `len` bytes written (2.7.8): store the used element,
   * then publish used.idx.
   */
  addUsed(head: number, len: number): void {
    if (!(Number.isInteger(head) && head >= 0 && head < this.size)) {
      throw new VirtqueueError('desc-index', `addUsed: descriptor ${head} is beyond queue size ${this.size}`);
    }
    if (!(Number.isInteger(len) && len >= 0 && len < TWO_32)) {
      throw new RangeError(`addUsed: length ${len} is not a u32`);
    }
    const o = 4 + 8 * (this.usedIdx & this.mask);
    this.used.setUint32(o, head, true);
    this.used.setUint32(o + 4, len, true);
    this.usedIdx = (this.usedIdx + 1) & 0xffff;
    this.usedStore(2, this.usedIdx);
  }

  /**
   * After one or more addUsed: whether to interrupt the driver. 2.7.7.2: without EVENT_IDX,
   * unless avail.flags has VIRTQ_AVAIL_F_NO_INTERRUPT; with EVENT_IDX, when used.idx passed
   * used_event since the last check (vring_need_event).
   */
  needsInterrupt(): boolean {
    const now = this.usedIdx;
    const old = this.signalledUsed;
    this.signalledUsed = now;
    if (old === now) return false; // nothing new since the last check
    fullFence(); // used.idx is visible before the driver's flags/used_event are read
    if (!this.eventIdx) {
      return (this.availLoad(0) & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
    }
    if (!this.signalledValid) {
      this.signalledValid = true;
      return true;
    }
    const usedEvent = this.availLoad(4 + 2 * this.size);
    return needEvent(usedEvent, now, old);
  }

  /** Ask the driver not to notify (2.7.10): used.flags without EVENT_IDX; nothing to do with it. */
  disableNotification(): void {
    if (this.eventIdx) return; // avail_event stays behind: the driver stops notifying
    if ((this.usedFlags & VIRTQ_USED_F_NO_NOTIFY) !== 0) return;
    this.usedFlags |= VIRTQ_USED_F_NO_NOTIFY;
    this.usedStore(0, this.usedFlags);
  }

  /**
   * Ask for notifications again (2.7.10): clear VIRTQ_USED_F_NO_NOTIFY, or set avail_event to
   * the next index the device will read. Returns true when buffers became available meanwhile
   * (the caller must process them: the driver may not notify for them).
   */
  enableNotification(): boolean {
    if (this.eventIdx) {
      this.usedStore(4 + 8 * this.size, this.lastAvail);
    } else if ((this.usedFlags & VIRTQ_USED_F_NO_NOTIFY) !== 0) {
      this.usedFlags &= ~VIRTQ_USED_F_NO_NOTIFY;
      this.usedStore(0, this.usedFlags);
    }
    fullFence(); // the store above is visible before avail.idx is read again
    return this.hasAvailable();
  }
}

/**
 * vring_need_event (2.7.10): true when `newIdx` moved past `event` since `oldIdx`, in u16
 * arithmetic: (u16)(new - event - 1) < (u16)(new - old).
 */
export function needEvent(event: number, newIdx: number, oldIdx: number): boolean {
  return ((newIdx - event - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
}
