// virtio-mem (memory device, virtio 1.2, 5.15; device ID 24). The device manages a region of
// guest physical address space [addr, addr + region_size), cut into blocks of block_size bytes
// that are each plugged or unplugged. The host asks for an amount of memory (requested_size, set
// at run time: setRequestedSize / onHostValue, then a configuration change notification); the
// driver plugs and unplugs blocks on the one request queue (guestq) to get plugged_size there.
// All blocks start unplugged (5.15, "On initial start").
//
// This is the model only: the bitmap of plugged blocks, the request protocol and the
// configuration. What a plug or an unplug means for host memory is the VMM's, injected as
// callbacks: `discard` gives the host pages of unplugged blocks back (madvise MADV_DONTNEED /
// MADV_REMOVE, a hole punched in a memfd), `populate` (optional) prepares blocks being plugged.
// A callback that fails answers the request BUSY (5.15.6.1/2/3: "MAY reject ... with
// VIRTIO_MEM_RESP_BUSY if the request can currently not be processed"), state unchanged: Linux
// retries BUSY later, while ERROR would make it mark the device broken.
//
// Everything the guest sends is checked: a range that is not block aligned, empty, outside the
// usable region or overflowing is ERROR; a request too short for its fields, or of an unknown
// type, is answered ERROR; a chain without room for the 10-byte response is completed with used
// length 0 and counted (bad_chains) — nothing thrown: the model never needs a reset for it.
// Buffers outside guest RAM are refused by the queue itself (SplitQueue.pop: VirtqueueError).

import { VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VirtioDeviceType, bit, serveQueue, type VirtioActivation, type VirtioDevice } from '../device.js';
import { DescriptorChain, MAX_QUEUE_SIZE } from '../queue.js';
import { GPA_LIMIT } from '../../memory/guest_memory.js';
import { MEM_MAX_BITMAP_BYTES, VirtioStateMismatchError, type VirtioDeviceSpecificState } from '../state.js';

/** Feature bits (5.15.3). */
export const VIRTIO_MEM_F_ACPI_PXM = 0n;
export const VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE = 1n;

/** Request types (5.15.6). */
export const VIRTIO_MEM_REQ_PLUG = 0;
export const VIRTIO_MEM_REQ_UNPLUG = 1;
export const VIRTIO_MEM_REQ_UNPLUG_ALL = 2;
export const VIRTIO_MEM_REQ_STATE = 3;

/** Response types (5.15.6). */
export const VIRTIO_MEM_RESP_ACK = 0;
export const VIRTIO_MEM_RESP_NACK = 1;
export const VIRTIO_MEM_RESP_BUSY = 2;
export const VIRTIO_MEM_RESP_ERROR = 3;

/** STATE response states (5.15.6.4). */
export const VIRTIO_MEM_STATE_PLUGGED = 0;
export const VIRTIO_MEM_STATE_UNPLUGGED = 1;
export const VIRTIO_MEM_STATE_MIXED = 2;

/** The one queue (5.15.2). */
export const GUESTQ = 0;

/**
 * struct virtio_mem_config (5.15.4), little-endian: le64 block_size, le16 node_id, u8 padding[6],
 * le64 addr, le64 region_size, le64 usable_region_size, le64 plugged_size, le64 requested_size.
 */
export const MemConfig = {
  blockSize: 0,
  nodeId: 8,
  addr: 16,
  regionSize: 24,
  usableRegionSize: 32,
  pluggedSize: 40,
  requestedSize: 48,
} as const;
export const MEM_CONFIG_BYTES = 56;

/**
 * struct virtio_mem_req (5.15.6): le16 type, le16 padding[3], then for PLUG, UNPLUG and STATE
 * le64 addr, le16 nb_blocks, le16 padding[3]: 24 bytes. The padding is ignored (5.15.6.1), so
 * 18 bytes carry all a request needs; UNPLUG_ALL needs only its type.
 */
export const MEM_REQ_BYTES = 24;
const REQ_TYPE_BYTES = 2;
const REQ_RANGE_BYTES = 18;
const REQ_ADDR = 8;
const REQ_NB_BLOCKS = 16;
/** struct virtio_mem_resp (5.15.6): le16 type, le16 padding[3], le16 state (STATE only): 10 bytes. */
export const MEM_RESP_BYTES = 10;
const RESP_STATE = 8;

/** Smallest block: 2 MiB, the x86 THP size, as Cloud Hypervisor and QEMU use. */
export const MEM_MIN_BLOCK_SIZE = 2 << 20;
/** Most blocks in one device (the bitmap stays at most 8 MiB: 128 TiB of 2 MiB blocks). */
export const MAX_BLOCKS = MEM_MAX_BITMAP_BYTES * 8;

const MiB = 1 << 20;

export interface MemDeviceOptions {
  /** Guest physical address of the region (5.15.4 addr): a multiple of blockSize. */
  addr: number;
  /** Bytes (region_size): a non-zero multiple of blockSize, at most MAX_BLOCKS blocks. */
  regionSize: number;
  /** Bytes of one block (block_size): a power of two >= 2 MiB; default 2 MiB. */
  blockSize?: number;
  /** The initial requested_size in bytes (default 0): a multiple of blockSize, <= regionSize. */
  requestedSize?: number;
  /**
   * Offer VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE (default true): the driver then never touches
   * unplugged blocks, so the VMM may leave them unmapped. QEMU offers it on x86 since its 7.0
   * machines; Linux accepts it since 5.16 (Debian 12's 6.1 does).
   */
  unpluggedInaccessible?: boolean;
  /** Largest queue size (power of two); default 128. */
  queueSize?: number;
  /**
   * Give the host memory of [gpa, gpa+len) back (blocks being unplugged, whole blocks, inside the
   * region); false: it could not, and the request is answered BUSY with the blocks still plugged.
   */
  discard: (gpa: number, len: number) => boolean;
  /** Prepare [gpa, gpa+len) before it is plugged (map, preallocate); false: BUSY, nothing plugged. Absent: nothing to do. */
  populate?: (gpa: number, len: number) => boolean;
}

/** Popcount of a 32-bit value. */
function popcount32(v: number): number {
  v -= (v >>> 1) & 0x55555555;
  v = (v & 0x33333333) + ((v >>> 2) & 0x33333333);
  return (Math.imul((v + (v >>> 4)) & 0x0f0f0f0f, 0x01010101) >>> 24);
}

/** Bits [lo, hi) of a 32-bit word, 0 <= lo < hi <= 32. */
function mask(lo: number, hi: number): number {
  return ((hi === 32 ? 0xffffffff : (1 << hi) - 1) & ~((1 << lo) - 1)) >>> 0;
}

export class MemDevice implements VirtioDevice {
  readonly deviceType = VirtioDeviceType.Mem;
  readonly numQueues = 1;
  readonly queueMaxSize: number;
  /** VIRTIO_F_VERSION_1 is the transport's; not VIRTIO_MEM_F_ACPI_PXM (no NUMA here, node_id is 0). */
  readonly features: bigint;

  /** Region, in bytes (numbers: exact below 2^53; all of it lies below GPA_LIMIT). */
  readonly addr: number;
  readonly regionSize: number;
  readonly blockSize: number;
  readonly blockCount: number;
  /**
   * usable_region_size (5.15.4) is the whole region, always, as Cloud Hypervisor has it. QEMU
   * keeps it near requested_size (plus 256 MiB) because without UNPLUGGED_INACCESSIBLE the
   * driver may read unplugged blocks inside it (dumps), which QEMU must then keep mapped. Here
   * unplugged blocks need no backing whether readable or not (the host pages were discarded: a
   * read faults in zeroes), so nothing is gained by a smaller usable region, and a constant one
   * needs no configuration change on resize and no shrinking on UNPLUG_ALL.
   */
  readonly usableRegionSize: number;

  private requested: number;
  private plugged = 0;
  /** Bit i of word i>>5 set: block i is plugged. */
  private readonly bitmap: Uint32Array;
  private readonly doDiscard: (gpa: number, len: number) => boolean;
  private readonly doPopulate: ((gpa: number, len: number) => boolean) | null;
  private readonly config = new Uint8Array(MEM_CONFIG_BYTES);
  private readonly configView = new DataView(this.config.buffer);
  private readonly req = new Uint8Array(MEM_REQ_BYTES);
  private readonly reqView = new DataView(this.req.buffer);
  private readonly resp = new Uint8Array(MEM_RESP_BYTES);
  private readonly respView = new DataView(this.resp.buffer);
  private chain: DescriptorChain;
  private act: VirtioActivation | null = null;
  private inaccessibleNegotiated = false;
  /** Set while a request round changed plugged_size (republished once at its end). */
  private configDirty = false;
  private readonly stats = {
    plug_requests: 0, unplug_requests: 0, unplug_all_requests: 0, state_requests: 0,
    acks: 0, nacks: 0, busy: 0, errors: 0, invalid_requests: 0, bad_chains: 0,
    discard_errors: 0, populate_errors: 0,
  };

  constructor(opts: MemDeviceOptions) {
    const bs = opts.blockSize ?? MEM_MIN_BLOCK_SIZE;
    const qs = opts.queueSize ?? 128;
    // A power of two as a double: exact, so bs & (bs-1) can be done on the quotient by MiB.
    if (!Number.isSafeInteger(bs) || bs < MEM_MIN_BLOCK_SIZE || bs % MiB !== 0 || ((bs / MiB) & (bs / MiB - 1)) !== 0 || bs > 2 ** 40) {
      throw new RangeError(`virtio-mem: block size ${opts.blockSize} is not a power of two of at least 2 MiB (and at most 1 TiB)`);
    }
    if (!Number.isSafeInteger(opts.regionSize) || opts.regionSize <= 0 || opts.regionSize % bs !== 0) {
      throw new RangeError(`virtio-mem: region size ${opts.regionSize} is not a non-zero multiple of the ${bs}-byte block size`);
    }
    if (opts.regionSize / bs > MAX_BLOCKS) {
      throw new RangeError(`virtio-mem: region size ${opts.regionSize} is ${opts.regionSize / bs} blocks of ${bs} bytes, more than ${MAX_BLOCKS}`);
    }
    if (!Number.isSafeInteger(opts.addr) || opts.addr <= 0 || opts.addr % bs !== 0 || opts.addr + opts.regionSize > GPA_LIMIT) {
      throw new RangeError(`virtio-mem: region address ${opts.addr} is not a non-zero multiple of the ${bs}-byte block size with the region below 2^52`);
    }
    if (!Number.isInteger(qs) || qs < 1 || qs > MAX_QUEUE_SIZE || (qs & (qs - 1)) !== 0) {
      throw new RangeError(`virtio-mem: queue size ${qs} is not a power of two in 1..${MAX_QUEUE_SIZE}`);
    }
    this.addr = opts.addr;
    this.regionSize = opts.regionSize;
    this.blockSize = bs;
    this.blockCount = opts.regionSize / bs;
    this.usableRegionSize = opts.regionSize;
    this.bitmap = new Uint32Array(Math.ceil(this.blockCount / 32));
    this.queueMaxSize = qs;
    this.features = bit(VIRTIO_F_INDIRECT_DESC) | bit(VIRTIO_F_EVENT_IDX)
      | (opts.unpluggedInaccessible === false ? 0n : bit(VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE));
    this.doDiscard = opts.discard;
    this.doPopulate = opts.populate ?? null;
    this.chain = new DescriptorChain(qs);
    this.requested = this.checkRequested(opts.requestedSize ?? 0, 'requested size');
    const cv = this.configView;
    cv.setBigUint64(MemConfig.blockSize, BigInt(bs), true);
    cv.setUint16(MemConfig.nodeId, 0, true);
    cv.setBigUint64(MemConfig.addr, BigInt(this.addr), true);
    cv.setBigUint64(MemConfig.regionSize, BigInt(this.regionSize), true);
    cv.setBigUint64(MemConfig.usableRegionSize, BigInt(this.usableRegionSize), true);
    this.updateConfig();
  }

  get counters(): Readonly<Record<string, number>> {
    return this.stats;
  }

  /** requested_size, bytes. */
  get requestedSize(): number {
    return this.requested;
  }

  /** plugged_size, bytes. */
  get pluggedSize(): number {
    return this.plugged * this.blockSize;
  }

  /** The driver accepted VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE (known after activate): unplugged blocks may be unmapped. */
  get unpluggedInaccessibleNegotiated(): boolean {
    return this.inaccessibleNegotiated;
  }

  /** Block `i` (0-based from addr) is plugged. */
  isPlugged(i: number): boolean {
    return i >= 0 && i < this.blockCount && (this.bitmap[i >>> 5]! & (1 << (i & 31))) !== 0;
  }

  private checkRequested(bytes: number, what: string): number {
    if (!Number.isSafeInteger(bytes) || bytes < 0 || bytes % this.blockSize !== 0 || bytes > this.regionSize) {
      throw new RangeError(`virtio-mem: ${what} ${bytes} is not a multiple of the ${this.blockSize}-byte block size in 0..${this.regionSize} (the region size)`);
    }
    return bytes;
  }

  private updateConfig(): void {
    // Multiples of block_size below 2^53: exact in a double, split without BigInt.
    const cv = this.configView;
    const p = this.plugged * this.blockSize;
    cv.setUint32(MemConfig.pluggedSize, p % 2 ** 32, true);
    cv.setUint32(MemConfig.pluggedSize + 4, Math.floor(p / 2 ** 32), true);
    cv.setUint32(MemConfig.requestedSize, this.requested % 2 ** 32, true);
    cv.setUint32(MemConfig.requestedSize + 4, Math.floor(this.requested / 2 ** 32), true);
  }

  /**
   * The host's new requested_size (bytes; a multiple of block_size, at most region_size, else a
   * RangeError). While the device is active the driver gets a configuration change notification
   * (5.15.4: "MUST send a configuration update notification when changing ... requested_size").
   * Blocks plugged beyond it stay: the driver is expected to unplug them.
   */
  setRequestedSize(bytes: number): void {
    this.requested = this.checkRequested(bytes, 'requested size');
    this.updateConfig();
    this.act?.notifyConfig();
  }

  /**
   * The VMM's new requested_size through Word.HostValue (a u32): in MiB (block sizes are whole
   * MiB). As for the balloon's target, the driver of the device republishes the configuration
   * and signals the change itself, so nothing is notified here.
   */
  onHostValue(mib: number): void {
    this.requested = this.checkRequested(mib * MiB, `requested size (${mib} MiB)`);
    this.updateConfig();
  }

  /** 5.15.4: read-only, little-endian; bytes beyond the structure read 0. */
  readConfig(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) {
      const o = offset + i;
      data[i] = o >= 0 && o < MEM_CONFIG_BYTES ? this.config[o]! : 0;
    }
  }

  /** 5.15.4: "The driver MUST NOT write to device configuration fields"; writes are ignored. */
  writeConfig(_offset: number, _data: Uint8Array): void {}

  activate(a: VirtioActivation): void {
    const q = a.queues[GUESTQ];
    if (q !== undefined && q !== null && q.size > this.chain.capacity) this.chain = new DescriptorChain(q.size);
    this.inaccessibleNegotiated = (a.features & bit(VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE)) !== 0n;
    this.act = a;
  }

  processQueue(index: number): void {
    const a = this.act;
    if (a === null || index !== GUESTQ) return;
    try {
      serveQueue(a, GUESTQ, this.chain, this.serve);
    } finally {
      if (this.configDirty) {
        this.configDirty = false;
        a.publishConfig?.();
      }
    }
  }

  /** Bound once: processQueue allocates nothing. */
  private readonly serve = (c: DescriptorChain): number => this.handle(this.act!, c);

  /**
   * One request (5.15.6): a device-readable virtio_mem_req, then a device-writable
   * virtio_mem_resp. Returns the used length: the 10-byte response, or 0 for a chain without
   * room for it (nothing written).
   */
  private handle(a: VirtioActivation, c: DescriptorChain): number {
    if (c.writableBytes < MEM_RESP_BYTES) {
      this.stats.bad_chains++;
      return 0;
    }
    const got = this.gather(a, c);
    let type = -1;
    let result = VIRTIO_MEM_RESP_ERROR;
    let state = 0;
    if (got >= REQ_TYPE_BYTES) type = this.reqView.getUint16(0, true);
    if (type === VIRTIO_MEM_REQ_UNPLUG_ALL) {
      this.stats.unplug_all_requests++;
      result = this.unplugAllBlocks();
    } else if (type === VIRTIO_MEM_REQ_PLUG || type === VIRTIO_MEM_REQ_UNPLUG || type === VIRTIO_MEM_REQ_STATE) {
      if (type === VIRTIO_MEM_REQ_PLUG) this.stats.plug_requests++;
      else if (type === VIRTIO_MEM_REQ_UNPLUG) this.stats.unplug_requests++;
      else this.stats.state_requests++;
      if (got < REQ_RANGE_BYTES) {
        this.stats.invalid_requests++;
      } else {
        const first = this.firstBlock();
        const n = this.reqView.getUint16(REQ_NB_BLOCKS, true);
        if (first >= 0 && n > 0 && first + n <= this.usableRegionSize / this.blockSize) {
          if (type === VIRTIO_MEM_REQ_PLUG) result = this.plug(first, n);
          else if (type === VIRTIO_MEM_REQ_UNPLUG) result = this.unplug(first, n);
          else {
            const k = this.countPlugged(first, n);
            state = k === n ? VIRTIO_MEM_STATE_PLUGGED : k === 0 ? VIRTIO_MEM_STATE_UNPLUGGED : VIRTIO_MEM_STATE_MIXED;
            result = VIRTIO_MEM_RESP_ACK;
          }
        }
      }
    } else {
      this.stats.invalid_requests++; // too short for its type, or an unknown type
    }
    if (result === VIRTIO_MEM_RESP_ACK) this.stats.acks++;
    else if (result === VIRTIO_MEM_RESP_NACK) this.stats.nacks++;
    else if (result === VIRTIO_MEM_RESP_BUSY) this.stats.busy++;
    else this.stats.errors++;
    this.resp.fill(0);
    this.respView.setUint16(0, result, true);
    this.respView.setUint16(RESP_STATE, state, true);
    this.scatter(a, c);
    return MEM_RESP_BYTES;
  }

  /**
   * The index of the block at the request's addr, or -1 when addr is not the start of a block of
   * the region (5.15.6.1: not aligned to block_size, or outside the region; an addr at or above
   * 2^53 cannot be, and is not converted).
   */
  private firstBlock(): number {
    const lo = this.reqView.getUint32(REQ_ADDR, true);
    const hi = this.reqView.getUint32(REQ_ADDR + 4, true);
    if (hi >= 2 ** 21) return -1;
    const off = hi * 2 ** 32 + lo - this.addr;
    if (off < 0 || off % this.blockSize !== 0) return -1;
    return off / this.blockSize; // may be past the region: the caller compares with the block count
  }

  /** 5.15.6.1: blocks [first, first+n) inside the usable region; none may be plugged; not beyond requested_size. */
  private plug(first: number, n: number): number {
    if ((this.plugged + n) * this.blockSize > this.requested) return VIRTIO_MEM_RESP_NACK;
    if (this.countPlugged(first, n) !== 0) return VIRTIO_MEM_RESP_ERROR;
    if (this.doPopulate !== null && !this.callHost(this.doPopulate, first, n)) {
      this.stats.populate_errors++;
      return VIRTIO_MEM_RESP_BUSY;
    }
    this.setRange(first, n, true);
    this.plugged += n;
    this.changed();
    return VIRTIO_MEM_RESP_ACK;
  }

  /** 5.15.6.2: blocks [first, first+n) inside the usable region, all plugged; their host memory is given back. */
  private unplug(first: number, n: number): number {
    if (this.countPlugged(first, n) !== n) return VIRTIO_MEM_RESP_ERROR;
    if (!this.callHost(this.doDiscard, first, n)) {
      this.stats.discard_errors++;
      return VIRTIO_MEM_RESP_BUSY;
    }
    this.setRange(first, n, false);
    this.plugged -= n;
    this.changed();
    return VIRTIO_MEM_RESP_ACK;
  }

  /**
   * 5.15.6.3: every plugged block is unplugged, run by run of consecutive plugged blocks. A run
   * the host could not give back stays plugged and the answer is BUSY (the driver asks again).
   */
  private unplugAllBlocks(): number {
    if (this.plugged === 0) return VIRTIO_MEM_RESP_ACK;
    let ok = true;
    const words = this.bitmap.length;
    let i = 0;
    while (i < this.blockCount) {
      const w = i >>> 5;
      if (w < words && (i & 31) === 0 && this.bitmap[w] === 0) { i += 32; continue; }
      if (!this.isPlugged(i)) { i++; continue; }
      let end = i + 1;
      while (end < this.blockCount && this.isPlugged(end)) end++;
      if (this.callHost(this.doDiscard, i, end - i)) {
        this.setRange(i, end - i, false);
        this.plugged -= end - i;
        this.changed();
      } else {
        this.stats.discard_errors++;
        ok = false;
      }
      i = end;
    }
    return ok ? VIRTIO_MEM_RESP_ACK : VIRTIO_MEM_RESP_BUSY;
  }

  /**
   * The host unplugs every block (a system reset: 5.15.6, "The device SHOULD unplug all memory
   * blocks during system resets"). False when some range could not be given back (it stays
   * plugged). The driver is not notified: it reads plugged_size when it starts.
   */
  unplugAll(): boolean {
    return this.unplugAllBlocks() === VIRTIO_MEM_RESP_ACK;
  }

  /** A host callback for blocks [first, first+n); what it throws counts as a failure. */
  private callHost(f: (gpa: number, len: number) => boolean, first: number, n: number): boolean {
    try {
      return f(this.addr + first * this.blockSize, n * this.blockSize) === true;
    } catch {
      return false;
    }
  }

  /** plugged_size changed: the configuration is republished (no notification, 5.15.4). */
  private changed(): void {
    this.updateConfig();
    this.configDirty = true;
  }

  /** How many of blocks [first, first+n) are plugged (inside the bitmap). */
  private countPlugged(first: number, n: number): number {
    let count = 0;
    this.eachWord(first, n, (w, m) => { count += popcount32((this.bitmap[w]! & m) >>> 0); });
    return count;
  }

  private setRange(first: number, n: number, plugged: boolean): void {
    this.eachWord(first, n, (w, m) => { this.bitmap[w] = plugged ? this.bitmap[w]! | m : this.bitmap[w]! & ~m; });
  }

  /** Blocks [first, first+n) as (bitmap word, mask of its bits in the range), word by word. */
  private eachWord(first: number, n: number, fn: (w: number, m: number) => void): void {
    let i = first;
    const end = first + n;
    while (i < end) {
      const lo = i & 31;
      const hi = Math.min(32, lo + (end - i));
      fn(i >>> 5, mask(lo, hi));
      i += hi - lo;
    }
  }

  /** The first MEM_REQ_BYTES device-readable bytes (they may span descriptors); returns how many there were. */
  private gather(a: VirtioActivation, c: DescriptorChain): number {
    this.req.fill(0);
    if (c.readableCount > 0 && c.len[0]! >= MEM_REQ_BYTES) {
      a.mem.readBytes(c.addr[0]!, this.req); // the usual case: no view allocated
      return MEM_REQ_BYTES;
    }
    let got = 0;
    for (let k = 0; k < c.readableCount && got < MEM_REQ_BYTES; k++) {
      const n = Math.min(c.len[k]!, MEM_REQ_BYTES - got);
      if (n === 0) continue;
      this.req.set(a.mem.slice(c.addr[k]!, n), got);
      got += n;
    }
    return got;
  }

  /** The response into the first MEM_RESP_BYTES device-writable bytes. */
  private scatter(a: VirtioActivation, c: DescriptorChain): void {
    const k0 = c.readableCount;
    if (c.len[k0]! >= MEM_RESP_BYTES) {
      a.mem.writeBytes(c.addr[k0]!, this.resp);
      return;
    }
    let put = 0;
    for (let k = k0; k < c.length && put < MEM_RESP_BYTES; k++) {
      const n = Math.min(c.len[k]!, MEM_RESP_BYTES - put);
      if (n === 0) continue;
      a.mem.slice(c.addr[k]!, n).set(this.resp.subarray(put, put + n));
      put += n;
    }
  }

  /** 5.15.5: "The device MUST NOT change the state of memory blocks during device reset": the bitmap stays. */
  reset(): void {
    this.act = null;
    this.inaccessibleNegotiated = false;
    this.configDirty = false;
  }

  /** Requests complete within processQueue: nothing is held. */
  pause(): void {}

  saveState(): VirtioDeviceSpecificState {
    const bytes = new Uint8Array(Math.ceil(this.blockCount / 8));
    for (let i = 0; i < bytes.length; i++) bytes[i] = (this.bitmap[i >>> 2]! >>> (8 * (i & 3))) & 0xff;
    return {
      kind: 'mem', addr: BigInt(this.addr), regionSize: BigInt(this.regionSize), blockSize: BigInt(this.blockSize),
      requestedSize: BigInt(this.requested), plugged: bytes,
    };
  }

  /** Checks everything before taking anything: a state that does not fit leaves the device as it was. */
  restoreState(s: VirtioDeviceSpecificState): void {
    if (s.kind !== 'mem') throw new VirtioStateMismatchError(`saved ${s.kind} state for a virtio-mem device`);
    const bad = (field: string, why: string): never => { throw new VirtioStateMismatchError(`virtio-mem state: ${field}: ${why}`); };
    if (s.addr !== BigInt(this.addr)) bad('addr', `0x${s.addr.toString(16)}, this device's region is at 0x${this.addr.toString(16)}`);
    if (s.regionSize !== BigInt(this.regionSize)) bad('regionSize', `${s.regionSize} bytes, this device's region has ${this.regionSize}`);
    if (s.blockSize !== BigInt(this.blockSize)) bad('blockSize', `${s.blockSize} bytes, this device's blocks have ${this.blockSize}`);
    const bs = BigInt(this.blockSize);
    if (s.requestedSize % bs !== 0n || s.requestedSize > BigInt(this.regionSize)) {
      bad('requestedSize', `${s.requestedSize} is not a multiple of ${this.blockSize} in 0..${this.regionSize}`);
    }
    const want = Math.ceil(this.blockCount / 8);
    if (s.plugged.length !== want) bad('plugged', `a bitmap of ${s.plugged.length} bytes, this device's ${this.blockCount} blocks take ${want}`);
    const tail = this.blockCount % 8;
    if (tail !== 0 && (s.plugged[want - 1]! >>> tail) !== 0) bad('plugged', `bits set beyond block ${this.blockCount - 1}, the last block`);
    this.bitmap.fill(0);
    let count = 0;
    for (let i = 0; i < want; i++) {
      const b = s.plugged[i]!;
      this.bitmap[i >>> 2] = (this.bitmap[i >>> 2]! | (b << (8 * (i & 3)))) >>> 0;
      count += popcount32(b);
    }
    this.plugged = count;
    this.requested = Number(s.requestedSize);
    this.updateConfig();
  }

  close(): void {
    this.act = null;
  }
}
