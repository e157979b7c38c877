// A minimal virtio driver (driver side of a split virtqueue, virtio 1.2, 2.7) for tests of queue.ts
// and of device models. It lays the three rings out in a GuestMemory, hands out data buffers from
// a bump allocator, and either builds well-formed chains (`addChain`) or writes raw, possibly
// malformed, descriptors / ring entries / indices (`writeDesc`, `writeAvailEntry`, `setAvailIdx`).
//
//   const mem = GuestMemory.fromBuffers([{ gpa: 0, buffer: new ArrayBuffer(4 << 20) }]);
//   const drv = new TestDriver(mem, { size: 256 });
//   const q = drv.queue({ eventIdx: true, indirect: true });   // the device's view of the queue
//   const c = drv.addChain([header], [512, 1]);                  // readable bytes, writable lengths
//   device.processQueue(0); drv.used() -> [{ id, len }]; mem.slice(c.writable[0]!, 512)

import type { GuestMemory } from '../../memory/guest_memory.js';
import {
  SplitQueue,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  availRingBytes,
  descTableBytes,
  usedRingBytes,
  type QueueLayout,
  type QueueOptions,
} from '../queue.js';

export interface TestDriverOptions {
  /** Queue size (not validated here: tests may want invalid sizes). */
  size: number;
  /** Where the rings go; default: packed from `base` (default 0) with the required alignment. */
  descTable?: number;
  availRing?: number;
  usedRing?: number;
  base?: number;
  /** Data area for `alloc()`; default: from the end of the rings (4 KiB aligned) to the end of the first region. */
  dataStart?: number;
  dataEnd?: number;
}

/** A chain built by addChain: its head and the guest addresses of each buffer. */
export interface BuiltChain {
  head: number;
  /** Addresses of the readable buffers, in order. */
  readable: number[];
  /** Addresses of the writable buffers, in order. */
  writable: number[];
  /** Address of the indirect table, when indirect. */
  table?: number;
}

export interface UsedElem {
  id: number;
  len: number;
}

const alignUp = (v: number, a: number): number => Math.ceil(v / a) * a;

export class TestDriver {
  readonly mem: GuestMemory;
  readonly layout: QueueLayout;
  readonly dataStart: number;
  readonly dataEnd: number;
  private dataNext: number;
  private free: number[] = [];
  /** Descriptors used by each outstanding head (returned to `free` by used()). */
  private owned = new Map<number, number[]>();
  private nextAvail = 0;
  private lastUsed = 0;

  constructor(mem: GuestMemory, opts: TestDriverOptions) {
    this.mem = mem;
    const size = opts.size;
    const base = opts.base ?? 0;
    const descTable = opts.descTable ?? alignUp(base, 16);
    const availRing = opts.availRing ?? alignUp(descTable + descTableBytes(size), 2);
    const usedRing = opts.usedRing ?? alignUp(availRing + availRingBytes(size), 4);
    this.layout = { size, descTable, availRing, usedRing };
    const ringsEnd = Math.max(descTable + descTableBytes(size), availRing + availRingBytes(size), usedRing + usedRingBytes(size));
    const r0 = mem.regions[0]!;
    this.dataStart = opts.dataStart ?? alignUp(ringsEnd, 4096);
    this.dataEnd = opts.dataEnd ?? r0.gpa + r0.size;
    this.dataNext = this.dataStart;
    for (let i = size - 1; i >= 0; i--) this.free.push(i);
  }

  /** The device side of this queue. Throws VirtqueueError for a bad layout. */
  queue(opts: QueueOptions = { eventIdx: false, indirect: false }): SplitQueue {
    return new SplitQueue(this.mem, this.layout, opts);
  }

  /** Zero the three rings and forget all state (a driver reset). */
  reset(): void {
    const { size, descTable, availRing, usedRing } = this.layout;
    for (const [a, n] of [[descTable, descTableBytes(size)], [availRing, availRingBytes(size)], [usedRing, usedRingBytes(size)]] as const) {
      if (this.mem.checkedRange(a, n)) this.mem.fill(a, n, 0);
    }
    this.free = [];
    for (let i = size - 1; i >= 0; i--) this.free.push(i);
    this.owned.clear();
    this.nextAvail = 0;
    this.lastUsed = 0;
    this.dataNext = this.dataStart;
  }

  // --- data buffers --------------------------------------------------------------------------

  /** `len` bytes of the data area (zeroed), aligned to `align`. */
  alloc(len: number, align = 16): number {
    const a = alignUp(this.dataNext, align);
    if (a + len > this.dataEnd) throw new Error(`test driver data area exhausted (${len} bytes requested)`);
    this.dataNext = a + len;
    this.mem.fill(a, len, 0);
    return a;
  }

  /** Make the whole data area available again. */
  resetData(): void {
    this.dataNext = this.dataStart;
  }

  // --- well-formed chains --------------------------------------------------------------------

  /**
   * Post one chain: `readable` buffers (their bytes are copied into fresh buffers) followed by
   * writable buffers of the given lengths; publishes it in the available ring. With `indirect`,
   * the segments go in an indirect table referenced by a single descriptor (2.7.5.3).
   */
  addChain(readable: ReadonlyArray<Uint8Array>, writableLens: ReadonlyArray<number>, opts: { indirect?: boolean; publish?: boolean } = {}): BuiltChain {
    const segs: Array<{ addr: number; len: number; write: boolean }> = [];
    const out: BuiltChain = { head: 0, readable: [], writable: [] };
    for (const r of readable) {
      const a = this.alloc(Math.max(r.length, 1));
      this.mem.writeBytes(a, r);
      segs.push({ addr: a, len: r.length, write: false });
      out.readable.push(a);
    }
    for (const n of writableLens) {
      const a = this.alloc(Math.max(n, 1));
      segs.push({ addr: a, len: n, write: true });
      out.writable.push(a);
    }
    if (opts.indirect === true) {
      const table = this.alloc(16 * segs.length, 16);
      segs.forEach((s, i) => {
        const last = i === segs.length - 1;
        writeDescAt(this.mem, table + 16 * i, s.addr, s.len, (s.write ? VIRTQ_DESC_F_WRITE : 0) | (last ? 0 : VIRTQ_DESC_F_NEXT), last ? 0 : i + 1);
      });
      const d = this.takeDesc(1);
      out.head = d[0]!;
      out.table = table;
      this.writeDesc(out.head, table, 16 * segs.length, VIRTQ_DESC_F_INDIRECT, 0);
    } else {
      const d = this.takeDesc(segs.length);
      out.head = d[0]!;
      segs.forEach((s, i) => {
        const last = i === segs.length - 1;
        this.writeDesc(d[i]!, s.addr, s.len, (s.write ? VIRTQ_DESC_F_WRITE : 0) | (last ? 0 : VIRTQ_DESC_F_NEXT), last ? 0 : d[i + 1]!);
      });
    }
    if (opts.publish !== false) this.publish(out.head);
    return out;
  }

  private takeDesc(n: number): number[] {
    if (n > this.free.length) throw new Error(`test driver: ${n} descriptors needed, ${this.free.length} free`);
    const d: number[] = [];
    for (let i = 0; i < n; i++) d.push(this.free.pop()!);
    this.owned.set(d[0]!, d);
    return d;
  }

  /** Put `head` in the next available-ring slot and bump avail.idx. */
  publish(head: number): void {
    this.writeAvailEntry(this.nextAvail, head);
    this.nextAvail = (this.nextAvail + 1) & 0xffff;
    this.setAvailIdx(this.nextAvail);
  }

  /** New used elements since the last call; frees the descriptors of chains built by addChain. */
  used(): UsedElem[] {
    const out: UsedElem[] = [];
    const idx = this.usedIdx;
    while (this.lastUsed !== idx) {
      const e = this.usedElem(this.lastUsed);
      out.push(e);
      const d = this.owned.get(e.id);
      if (d !== undefined) {
        this.owned.delete(e.id);
        for (const i of d) this.free.push(i);
      }
      this.lastUsed = (this.lastUsed + 1) & 0xffff;
    }
    return out;
  }

  // --- raw access (for malformed rings) ------------------------------------------------------

  /** Write descriptor `i` of the table (no checks; `addr` may be any u64). */
  writeDesc(i: number, addr: number | bigint, len: number, flags: number, next: number): void {
    writeDescAt(this.mem, this.layout.descTable + 16 * i, addr, len, flags, next);
  }

  /** avail.ring[slot mod size] = head. */
  writeAvailEntry(slot: number, head: number): void {
    this.mem.writeU16(this.layout.availRing + 4 + 2 * (slot % this.layout.size), head & 0xffff);
  }

  get availIdx(): number {
    return this.mem.readU16(this.layout.availRing + 2);
  }

  /** Set avail.idx (any u16; also where publish() continues from). */
  setAvailIdx(v: number): void {
    this.nextAvail = v & 0xffff;
    this.mem.writeU16(this.layout.availRing + 2, this.nextAvail);
  }

  setAvailFlags(v: number): void {
    this.mem.writeU16(this.layout.availRing, v & 0xffff);
  }

  /** used_event, the last u16 of the available ring (2.7.10). */
  setUsedEvent(v: number): void {
    this.mem.writeU16(this.layout.availRing + 4 + 2 * this.layout.size, v & 0xffff);
  }

  get usedIdx(): number {
    return this.mem.readU16(this.layout.usedRing + 2);
  }

  get usedFlags(): number {
    return this.mem.readU16(this.layout.usedRing);
  }

  /** avail_event, the last u16 of the used ring (2.7.10). */
  get availEvent(): number {
    return this.mem.readU16(this.layout.usedRing + 4 + 8 * this.layout.size);
  }

  /** Used element for used index `i` (mod size). */
  usedElem(i: number): UsedElem {
    const o = this.layout.usedRing + 4 + 8 * (i % this.layout.size);
    return { id: this.mem.readU32(o), len: this.mem.readU32(o + 4) };
  }
}

/** Write one 16-byte descriptor at `gpa` (2.7.5): le64 addr, le32 len, le16 flags, le16 next. */
export function writeDescAt(mem: GuestMemory, gpa: number, addr: number | bigint, len: number, flags: number, next: number): void {
  mem.writeU64(gpa, BigInt.asUintN(64, BigInt(addr)));
  mem.writeU32(gpa + 8, len >>> 0);
  mem.writeU16(gpa + 12, flags & 0xffff);
  mem.writeU16(gpa + 14, next & 0xffff);
}
