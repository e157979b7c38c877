// Guest physical memory: a sorted list of RAM regions, each backed by one host mapping.
//
// Addresses: guest physical addresses (GPAs) are accepted as `number` or `bigint`. x86-64
// guests have at most 52 physical address bits (SDM Vol. 3, 4.1.4 MAXPHYADDR), so every valid
// GPA and every `gpa + length` fits below 2^53 and is exactly representable as a JS number.
// Internally everything is a number (faster than bigint, no allocation); a bigint argument is
// range-checked *before* conversion so values like 2^64-16 can neither wrap nor lose precision.
//
// Host side: `GuestMemory.allocate()` mmaps each region MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE
// (the host commits pages only when touched; every thread of the process sees the same pages),
// MAP_SHARED over a memfd per region with `shared` (Cloud Hypervisor's `--memory shared=on`: a
// vhost-user backend maps the same pages from the fd), and asks for transparent huge pages unless `thp` is false (MADV_HUGEPAGE, as QEMU
// and Cloud Hypervisor's default `thp=on`; not needed, and not given, where the host's THP mode is
// `always`): 2 MiB pages mean 512 times fewer faults as the guest first touches its RAM and fewer
// TLB misses through two-level paging. (Shared anonymous memory is shmem, which gets no THP by
// default: measured in the nested sandbox, a boot took ~27 k faults in the boot vCPU's thread
// with it, ~2.8 k with private THP memory.) `describe()` returns a structured-cloneable object
// that `GuestMemory.attach()` turns into a second GuestMemory over the *same* mapping in a worker
// thread (koffi.view over the host address). Tests build memory from plain (Shared)ArrayBuffers.
//
// V8 limits a typed array to 2^32 elements (Node 20), so a region larger than 4 GiB is viewed
// through overlapping 4 GiB windows placed every 2 GiB: any access of at most 2 GiB that lies
// inside one region always fits inside one window. Only slice()/readBytes()/writeBytes() larger
// than 2 GiB that straddle a window boundary are refused (with a GuestMemoryError).

import { readFileSync } from 'node:fs';
import * as libc from '../sys/libc.js';

/** A guest physical address. Numbers must be safe integers; see the file comment. */
export type Gpa = number | bigint;

/** Exclusive upper bound of the guest physical address space (52-bit MAXPHYADDR). */
export const GPA_LIMIT = 2 ** 52;
const GPA_LIMIT_BIG = 1n << 52n;

/** Host page size assumed for region alignment. */
export const PAGE_SIZE = 4096;

/** Window geometry for regions larger than what one typed array may cover. */
export const WINDOW_STRIDE = 2 ** 31;
export const WINDOW_SIZE = 2 ** 32;

/** Raised for any guest memory access outside RAM, spanning regions, or otherwise invalid. */
export class GuestMemoryError extends Error {
  readonly gpa: Gpa;
  readonly length: number;
  constructor(message: string, gpa: Gpa, length: number) {
    super(message);
    this.name = 'GuestMemoryError';
    this.gpa = gpa;
    this.length = length;
  }
}

/** One RAM region as requested by a layout. */
export interface RegionSpec {
  gpa: Gpa;
  size: number;
}

/** One RAM region as seen by users of GuestMemory. */
export interface GuestRegion {
  readonly gpa: number;
  readonly size: number;
  /** Host virtual address of the region's first byte (0n for buffer-backed test memory). */
  readonly hostAddress: bigint;
  /** The region's bytes. For regions over 4 GiB: the first window only (see `windows`). */
  readonly buffer: ArrayBufferLike;
  /** Window i covers region offsets [i * WINDOW_STRIDE, min(size, i * WINDOW_STRIDE + WINDOW_SIZE)). */
  readonly windows: readonly ArrayBufferLike[];
  /** The memfd backing the region (shared memory), mapped from offset 0; -1 when none. */
  readonly fd: number;
  /**
   * A file the region is mapped from copy-on-write (a snapshot's memory-ranges, restored
   * lazily): pages not written since read from there, so they hold data without being present.
   */
  readonly source?: { fd: number; offset: number };
}

/** Structured-cloneable description of a GuestMemory, for `GuestMemory.attach()` in a worker. */
export interface GuestMemoryDescriptor {
  regions: Array<{
    gpa: number;
    size: number;
    hostAddress: bigint;
    /** The region's memfd (process-wide fd number; the attached copy does not own it). */
    fd?: number;
    /** Present for SharedArrayBuffer-backed (test) memory instead of a host address. */
    shared?: SharedArrayBuffer;
  }>;
  /** One Int32 shared by every GuestMemory over this mapping: non-zero once revoke()d. */
  revoked?: SharedArrayBuffer;
}

/** Thrown by device code that finds guest memory revoked (the VM is stopping): abandon the request. */
export class GuestMemoryRevokedError extends Error {
  override name = 'GuestMemoryRevokedError';
  constructor() {
    super('guest memory was revoked (the VM is stopping)');
  }
}

interface Window {
  u8: Uint8Array;
  dv: DataView;
}

interface Region {
  start: number;
  end: number; // exclusive
  hostAddress: bigint;
  windows: Window[];
  buffers: ArrayBufferLike[];
  /** memfd backing the region, or -1. */
  fd: number;
  /** mapCopyOnWrite(): the file (owned) and offset the region is mapped from. */
  source?: { fd: number; offset: number };
}

const HEX = (n: Gpa): string => `0x${n.toString(16)}`;

function toGpaNumber(gpa: Gpa, length: number): number {
  if (typeof gpa === 'number') {
    if (Number.isInteger(gpa) && gpa >= 0 && gpa <= GPA_LIMIT) return gpa;
  } else if (typeof gpa === 'bigint') {
    if (gpa >= 0n && gpa <= GPA_LIMIT_BIG) return Number(gpa);
  }
  throw new GuestMemoryError(`invalid guest physical address ${String(gpa)} (length ${length})`, gpa, length);
}

function makeWindows(size: number, view: (offset: number, len: number) => ArrayBufferLike): { windows: Window[]; buffers: ArrayBufferLike[] } {
  const windows: Window[] = [];
  const buffers: ArrayBufferLike[] = [];
  if (size <= WINDOW_SIZE) {
    const b = view(0, size);
    buffers.push(b);
    windows.push({ u8: new Uint8Array(b), dv: new DataView(b) });
    return { windows, buffers };
  }
  for (let off = 0; off < size; off += WINDOW_STRIDE) {
    const len = Math.min(WINDOW_SIZE, size - off);
    const b = view(off, len);
    buffers.push(b);
    windows.push({ u8: new Uint8Array(b), dv: new DataView(b) });
  }
  return { windows, buffers };
}

/** Huge-page size: guest RAM is placed at host addresses congruent to its GPA modulo this. */
export const HUGE_PAGE_SIZE = 2 << 20;

/**
 * mmap `size` bytes at a 2 MiB-aligned host address (regions start at 2 MiB-aligned GPAs), so
 * that a transparent huge page of the host backs a whole 2 MiB guest page and KVM can map it with
 * one large page-table entry (QEMU aligns its RAM blocks the same way). Over-allocate by 2 MiB and
 * unmap the unaligned head and tail.
 */
function mmapAligned(size: number, flags: number, fd = -1): bigint {
  if (size < HUGE_PAGE_SIZE) return libc.mmap(size, libc.PROT_READ | libc.PROT_WRITE, flags, fd, 0);
  // With a file: reserve the aligned range anonymously, then map the file over it (MAP_FIXED).
  const raw = libc.mmap(size + HUGE_PAGE_SIZE, fd < 0 ? libc.PROT_READ | libc.PROT_WRITE : libc.PROT_NONE, fd < 0 ? flags : libc.MAP_PRIVATE | libc.MAP_ANONYMOUS | libc.MAP_NORESERVE, -1, 0);
  const mask = BigInt(HUGE_PAGE_SIZE - 1);
  const aligned = (raw + mask) & ~mask;
  if (fd >= 0) {
    try {
      libc.mmapFixed(aligned, size, libc.PROT_READ | libc.PROT_WRITE, flags, fd, 0);
    } catch (e) {
      libc.munmap(raw, size + HUGE_PAGE_SIZE);
      throw e;
    }
  }
  const head = Number(aligned - raw);
  if (head > 0) libc.munmap(raw, head);
  const tail = HUGE_PAGE_SIZE - head;
  if (tail > 0) libc.munmap(aligned + BigInt(size), tail);
  return aligned;
}

/**
 * Whether guest RAM must be madvise(MADV_HUGEPAGE)d to get transparent huge pages: not when the
 * host gives them to all anonymous memory (`[always]` in /sys/kernel/mm/transparent_hugepage/
 * enabled). There the advice would only add direct reclaim and compaction to the guest's page
 * faults (the kernel's default `defrag` mode, `madvise`, stalls only advised regions).
 */
export function thpNeedsAdvice(enabled: string): boolean {
  return !/\[always\]/.test(enabled);
}

let thpMode: string | null = null;
function hostThpMode(): string {
  if (thpMode === null) {
    try {
      thpMode = readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8');
    } catch {
      thpMode = ''; // no THP in this kernel: the advice answers EINVAL, which is ignored
    }
  }
  return thpMode;
}

/**
 * Hints for a guest RAM mapping, best effort: transparent huge pages when `thp` and the host needs
 * the advice for them (a kernel without THP answers EINVAL, and the guest still runs on 4 KiB
 * pages), and no copy into a forked child (DONTFORK).
 */
function adviseGuestRam(host: bigint, size: number, thp: boolean): void {
  // thp=off: no huge pages at all, even where the host's mode is `always` (and so no khugepaged
  // passes over guest RAM either).
  const wanted = !thp ? [libc.MADV_NOHUGEPAGE, libc.MADV_DONTFORK]
    : thpNeedsAdvice(hostThpMode()) ? [libc.MADV_HUGEPAGE, libc.MADV_DONTFORK] : [libc.MADV_DONTFORK];
  for (const advice of wanted) {
    try {
      libc.madvise(host, size, advice);
    } catch (e) {
      if (!(e instanceof libc.SysError && e.errno === libc.EINVAL)) throw e;
    }
  }
}

function validateLayout(specs: ReadonlyArray<{ gpa: number; size: number }>, pageAligned: boolean): void {
  if (specs.length === 0) throw new GuestMemoryError('guest memory needs at least one region', 0, 0);
  let prevEnd = -1;
  for (const s of specs) {
    if (!Number.isInteger(s.size) || s.size <= 0) {
      throw new GuestMemoryError(`region at ${HEX(s.gpa)} has invalid size ${s.size}`, s.gpa, s.size);
    }
    if (s.gpa + s.size > GPA_LIMIT) {
      throw new GuestMemoryError(`region ${HEX(s.gpa)}+${HEX(s.size)} ends beyond the 52-bit physical address space`, s.gpa, s.size);
    }
    if (pageAligned && (s.gpa % PAGE_SIZE !== 0 || s.size % PAGE_SIZE !== 0)) {
      throw new GuestMemoryError(`region ${HEX(s.gpa)}+${HEX(s.size)} is not page aligned`, s.gpa, s.size);
    }
    if (s.gpa < prevEnd) {
      throw new GuestMemoryError(`region at ${HEX(s.gpa)} overlaps or is not sorted after the previous region`, s.gpa, s.size);
    }
    prevEnd = s.gpa + s.size;
  }
}

const NO_REGION: Region = { start: 1, end: 0, hostAddress: 0n, windows: [], buffers: [], fd: -1 };

export class GuestMemory {
  private regs: Region[];
  private owned: boolean;
  private freed = false;
  private last: Region = NO_REGION;
  // Result of locate(); fields instead of a returned object so hot paths do not allocate.
  private curU8: Uint8Array = new Uint8Array(0);
  private curDv: DataView = new DataView(new ArrayBuffer(0));
  private curOff = 0;
  /** Shared with every attached copy: [0] non-zero once revoke()d. */
  private readonly revokedFlag: Int32Array;

  private constructor(regs: Region[], owned: boolean, revoked?: SharedArrayBuffer) {
    this.regs = regs;
    this.owned = owned;
    this.revokedFlag = new Int32Array(revoked ?? new SharedArrayBuffer(4));
    if (regs.length > 0) this.last = regs[0]!;
  }

  /**
   * Tell every thread attached to this memory to stop touching it (the VM is stopping): device
   * code checks `revoked` between the chunks of a long request and after each blocking call,
   * and abandons the request (GuestMemoryRevokedError) instead of completing it.
   */
  revoke(): void {
    Atomics.store(this.revokedFlag, 0, 1);
  }

  /** True once revoke() was called on this memory or on any GuestMemory over the same mapping. */
  get revoked(): boolean {
    return Atomics.load(this.revokedFlag, 0) !== 0;
  }

  /**
   * Instead of free(), for owned memory that a thread which would not exit may still be using
   * (a kernel copy in a blocking read/preadv into guest RAM): replace every region by an
   * inaccessible mapping at the same address (mmap PROT_NONE, MAP_FIXED), so its pages are
   * released, a late kernel copy fails with EFAULT instead of landing in whatever the host would
   * map there next, and nothing else can be mapped there. The range is unmapped once `until`
   * settles (every such thread has exited). Returns the ranges retired [host address, bytes].
   */
  retire(until: Promise<unknown>): Array<[bigint, number]> {
    if (this.freed) return [];
    const ranges: Array<[bigint, number]> = this.owned ? this.regs.map((r) => [r.hostAddress, r.end - r.start]) : [];
    this.revoke();
    for (const [addr, len] of ranges) {
      libc.mmapFixed(addr, len, libc.PROT_NONE, libc.MAP_PRIVATE | libc.MAP_ANONYMOUS | libc.MAP_NORESERVE | libc.MAP_FIXED, -1, 0);
    }
    // Drop the views without unmapping (free() of memory that is not owned).
    const sources = this.owned ? this.regs.flatMap((r) => (r.source ? [r.source.fd] : [])) : [];
    this.owned = false;
    this.free();
    void until.finally(() => {
      for (const [addr, len] of ranges) libc.munmap(addr, len);
      for (const fd of sources) libc.close(fd);
    });
    return ranges;
  }

  /**
   * mmap one anonymous, MAP_NORESERVE mapping per region (private unless `shared`; THP asked
   * for unless `thp` is false). `layout` must be sorted,
   * non-overlapping and page aligned (e.g. `ramRegions(memSize)` from arch/x86_64/layout).
   */
  static allocate(layout: ReadonlyArray<RegionSpec>, opts: { shared?: boolean; thp?: boolean } = {}): GuestMemory {
    // Shared memory is a memfd per region (memfd_create + ftruncate + mmap MAP_SHARED), so that a
    // vhost-user backend can map the same pages from the fd (vhost-user.rst, SET_MEM_TABLE).
    const flags = opts.shared ? libc.MAP_SHARED | libc.MAP_NORESERVE : libc.MAP_PRIVATE | libc.MAP_ANONYMOUS | libc.MAP_NORESERVE;
    const specs = layout.map((r) => ({ gpa: toGpaNumber(r.gpa, r.size), size: r.size }));
    validateLayout(specs, true);
    const regs: Region[] = [];
    try {
      for (const s of specs) {
        let fd = -1;
        if (opts.shared) {
          fd = libc.memfdCreate(`stratovisor-ram-${HEX(s.gpa)}`, libc.MFD_CLOEXEC);
          try {
            libc.ftruncate(fd, s.size);
          } catch (e) {
            libc.close(fd);
            throw e;
          }
        }
        let host: bigint;
        try {
          host = mmapAligned(s.size, flags, fd);
        } catch (e) {
          if (fd >= 0) libc.close(fd);
          throw e;
        }
        // Push first so that a failing view still gets unmapped below.
        const reg: Region = { start: s.gpa, end: s.gpa + s.size, hostAddress: host, windows: [], buffers: [], fd };
        regs.push(reg);
        adviseGuestRam(host, s.size, opts.thp ?? true);
        const w = makeWindows(s.size, (off, len) => libc.view(host + BigInt(off), len));
        reg.windows = w.windows;
        reg.buffers = w.buffers;
      }
    } catch (e) {
      for (const r of regs) {
        libc.munmap(r.hostAddress, r.end - r.start);
        if (r.fd >= 0) libc.close(r.fd);
      }
      throw e;
    }
    return new GuestMemory(regs, true);
  }

  /** Memory over existing buffers (tests). Buffers are used in place, not copied. */
  static fromBuffers(regions: ReadonlyArray<{ gpa: Gpa; buffer: ArrayBufferLike }>): GuestMemory {
    const specs = regions.map((r) => ({ gpa: toGpaNumber(r.gpa, r.buffer.byteLength), size: r.buffer.byteLength, buffer: r.buffer }));
    validateLayout(specs, false);
    for (const s of specs) {
      if (s.size > WINDOW_SIZE) throw new GuestMemoryError(`buffer for region ${HEX(s.gpa)} is larger than 4 GiB`, s.gpa, s.size);
    }
    return new GuestMemory(specs.map((s) => {
      const w = makeWindows(s.size, () => s.buffer);
      return { start: s.gpa, end: s.gpa + s.size, hostAddress: 0n, windows: w.windows, buffers: w.buffers, fd: -1 };
    }), false);
  }

  /**
   * Re-create a GuestMemory from `describe()` output, typically in a worker thread. The result
   * aliases the original mapping; it does not own it (its free() only drops the views).
   */
  static attach(desc: GuestMemoryDescriptor): GuestMemory {
    validateLayout(desc.regions, false);
    return new GuestMemory(desc.regions.map((d) => {
      let w;
      if (d.shared !== undefined) {
        if (d.shared.byteLength !== d.size) throw new GuestMemoryError(`shared buffer for region ${HEX(d.gpa)} has the wrong size`, d.gpa, d.size);
        const sab = d.shared;
        w = makeWindows(d.size, () => sab);
      } else {
        if (d.hostAddress === 0n) throw new GuestMemoryError(`region ${HEX(d.gpa)} has no host address to attach to`, d.gpa, d.size);
        w = makeWindows(d.size, (off, len) => libc.view(d.hostAddress + BigInt(off), len));
      }
      return { start: d.gpa, end: d.gpa + d.size, hostAddress: d.hostAddress, windows: w.windows, buffers: w.buffers, fd: d.fd ?? -1 };
    }), false, desc.revoked);
  }

  /** Transferable description (plain object; bigint host addresses are structured-cloneable). */
  describe(): GuestMemoryDescriptor {
    this.assertLive();
    return {
      regions: this.regs.map((r) => {
        const d: GuestMemoryDescriptor['regions'][number] = { gpa: r.start, size: r.end - r.start, hostAddress: r.hostAddress };
        if (r.fd >= 0) d.fd = r.fd;
        if (r.hostAddress === 0n) {
          const b = r.buffers[0];
          if (!(b instanceof SharedArrayBuffer) || r.buffers.length !== 1) {
            throw new GuestMemoryError(`region ${HEX(r.start)} is backed by a private ArrayBuffer and cannot be shared with a worker`, r.start, r.end - r.start);
          }
          d.shared = b;
        }
        return d;
      }),
      revoked: this.revokedFlag.buffer as SharedArrayBuffer,
    };
  }

  /** The RAM regions, sorted by address. */
  get regions(): GuestRegion[] {
    return this.regs.map((r) => ({
      gpa: r.start, size: r.end - r.start, hostAddress: r.hostAddress, buffer: r.buffers[0]!, windows: r.buffers.slice(), fd: r.fd,
      ...(r.source ? { source: { ...r.source } } : {}),
    }));
  }

  /** Total bytes of RAM. */
  get totalSize(): number {
    let t = 0;
    for (const r of this.regs) t += r.end - r.start;
    return t;
  }

  /** One past the highest RAM address. */
  get lastAddress(): number {
    return this.regs.length === 0 ? 0 : this.regs[this.regs.length - 1]!.end;
  }

  /**
   * True when [gpa, gpa+len) lies inside one RAM region (and one view window). Never throws,
   * never allocates: meant for device hot paths before using slice()/read*()/write*().
   */
  checkedRange(gpa: number, len: number): boolean {
    if (!(gpa >= 0 && len >= 0 && gpa + len <= GPA_LIMIT && Number.isInteger(gpa) && Number.isInteger(len))) return false;
    return this.find(gpa, len);
  }

  /**
   * Host virtual address of guest bytes [gpa, gpa+len) for system calls that take addresses
   * (preadv/pwritev/writev), or -1 when the range is not in one mmapped RAM region (buffers in
   * tests have no host address). Never throws, never allocates.
   */
  hostAddress(gpa: number, len: number): number {
    if (!this.checkedRange(gpa, len)) return -1;
    const r = this.last;
    return r.hostAddress === 0n ? -1 : Number(r.hostAddress) + (gpa - r.start);
  }

  /**
   * Give the host pages under guest bytes [gpa, gpa+len) back (virtio-balloon): MADV_DONTNEED on
   * private memory (the guest reads zeros afterwards, or the snapshot file's page for memory
   * mapped copy-on-write), a hole punched in the memfd of shared memory (fallocate
   * PUNCH_HOLE, zeros; other mappings of the memfd, a vhost-user back-end's, see the same), zeros
   * written into the buffers of test memory. `gpa` and `len` must be page aligned and the range
   * inside one region. False when not, or when the system call failed; never throws.
   */
  discard(gpa: number, len: number): boolean {
    if (len === 0) return true;
    if (gpa % PAGE_SIZE !== 0 || len % PAGE_SIZE !== 0 || !this.checkedRange(gpa, len)) return false;
    const r = this.last;
    const off = gpa - r.start;
    try {
      if (r.fd >= 0) libc.fallocate(r.fd, libc.FALLOC_FL_PUNCH_HOLE | libc.FALLOC_FL_KEEP_SIZE, off, len);
      else if (r.hostAddress !== 0n) libc.madvise(r.hostAddress + BigInt(off), len, libc.MADV_DONTNEED);
      else this.fill(gpa, len, 0);
    } catch {
      return false;
    }
    return true;
  }

  /** A view (no copy) of guest bytes [gpa, gpa+len). Throws GuestMemoryError when not all RAM in one region. */
  slice(gpa: Gpa, len: number): Uint8Array {
    const a = this.locate(gpa, len);
    return this.curU8.subarray(a, a + len);
  }

  readU8(gpa: Gpa): number { const o = this.locate(gpa, 1); return this.curU8[o]!; }
  readU16(gpa: Gpa): number { const o = this.locate(gpa, 2); return this.curDv.getUint16(o, true); }
  readU32(gpa: Gpa): number { const o = this.locate(gpa, 4); return this.curDv.getUint32(o, true); }
  readU64(gpa: Gpa): bigint { const o = this.locate(gpa, 8); return this.curDv.getBigUint64(o, true); }

  writeU8(gpa: Gpa, v: number): void { const o = this.locate(gpa, 1); this.curU8[o] = v; }
  writeU16(gpa: Gpa, v: number): void { const o = this.locate(gpa, 2); this.curDv.setUint16(o, v, true); }
  writeU32(gpa: Gpa, v: number): void { const o = this.locate(gpa, 4); this.curDv.setUint32(o, v >>> 0, true); }
  writeU64(gpa: Gpa, v: bigint | number): void {
    const o = this.locate(gpa, 8);
    this.curDv.setBigUint64(o, BigInt.asUintN(64, typeof v === 'bigint' ? v : BigInt(v)), true);
  }

  /** Copy guest bytes [gpa, gpa+dst.length) into dst. */
  readBytes(gpa: Gpa, dst: Uint8Array): void {
    const o = this.locate(gpa, dst.length);
    dst.set(this.curU8.subarray(o, o + dst.length));
  }

  /** Copy src into guest memory at gpa. */
  writeBytes(gpa: Gpa, src: Uint8Array): void {
    const o = this.locate(gpa, src.length);
    this.curU8.set(src, o);
  }

  /** Fill [gpa, gpa+len) with `value` (default 0). */
  fill(gpa: Gpa, len: number, value = 0): void {
    const o = this.locate(gpa, len);
    this.curU8.fill(value, o, o + len);
  }

  /**
   * Unmap owned memory (or drop the views of attached/buffer memory). Every later access throws.
   * Views previously returned by slice() over mmapped memory must not be used afterwards, and
   * workers attached to this memory must have stopped using it first.
   */
  free(): void {
    if (this.freed) return;
    const regs = this.regs;
    this.regs = [];
    this.last = NO_REGION;
    this.curU8 = new Uint8Array(0);
    this.curDv = new DataView(new ArrayBuffer(0));
    this.freed = true;
    if (this.owned) {
      for (const r of regs) {
        libc.munmap(r.hostAddress, r.end - r.start);
        if (r.fd >= 0) libc.close(r.fd);
        if (r.source) libc.close(r.source.fd);
      }
    }
  }

  /**
   * Map region `index` from `fd` at `offset` copy-on-write (MAP_PRIVATE | MAP_FIXED over the
   * region's own address, so every view and every thread's attached copy stays valid): the
   * guest reads pages from the file as it touches them, and its writes stay in this process
   * (a restore that does not read all of RAM first, as Firecracker's file-backed restore).
   * Only owned, private memory whose region is not mapped from a file yet; `offset` page
   * aligned. The region takes `fd` over (closed by free()), also when this throws.
   */
  mapCopyOnWrite(index: number, fd: number, offset: number, opts: { thp?: boolean } = {}): void {
    const r = this.regs[index];
    try {
      this.assertLive();
      if (r === undefined) throw new GuestMemoryError(`no region ${index}`, 0, 0);
      if (!this.owned || r.hostAddress === 0n) throw new GuestMemoryError(`region ${HEX(r.start)} is not owned host memory`, r.start, r.end - r.start);
      if (r.fd >= 0) throw new GuestMemoryError(`region ${HEX(r.start)} is shared memory (a memfd): it cannot be mapped from a file`, r.start, r.end - r.start);
      if (r.source) throw new GuestMemoryError(`region ${HEX(r.start)} is mapped from a file already`, r.start, r.end - r.start);
      if (!Number.isSafeInteger(offset) || offset < 0 || offset % PAGE_SIZE !== 0) throw new GuestMemoryError(`file offset ${offset} for region ${HEX(r.start)} is not page aligned`, r.start, r.end - r.start);
      try {
        libc.mmapFixed(r.hostAddress, r.end - r.start, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_PRIVATE | libc.MAP_NORESERVE, fd, offset);
      } catch (e) {
        // A failed MAP_FIXED may have unmapped the range already: put fresh anonymous RAM back,
        // so the views over it stay valid.
        libc.mmapFixed(r.hostAddress, r.end - r.start, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_PRIVATE | libc.MAP_ANONYMOUS | libc.MAP_NORESERVE, -1, 0);
        throw e;
      }
    } catch (e) {
      libc.close(fd);
      throw e;
    }
    r.source = { fd, offset };
    adviseGuestRam(r.hostAddress, r.end - r.start, opts.thp ?? true);
  }

  get isFreed(): boolean { return this.freed; }

  private assertLive(): void {
    if (this.freed) throw new GuestMemoryError('guest memory has been freed', 0, 0);
  }

  /** Sets cur* for [gpa, gpa+len) and returns the offset, or returns false. Inputs pre-validated. */
  private find(gpa: number, len: number): boolean {
    let r = this.last;
    if (!(gpa >= r.start && gpa + len <= r.end)) {
      const regs = this.regs;
      let found = false;
      for (let i = 0; i < regs.length; i++) {
        r = regs[i]!;
        if (gpa >= r.start && gpa + len <= r.end) { found = true; break; }
      }
      if (!found) return false;
      this.last = r;
    }
    const off = gpa - r.start;
    const ws = r.windows;
    if (ws.length === 1) {
      const w = ws[0]!;
      this.curU8 = w.u8;
      this.curDv = w.dv;
      this.curOff = off;
      return true;
    }
    const idx = Math.min(Math.floor(off / WINDOW_STRIDE), ws.length - 1);
    const w = ws[idx]!;
    const wo = off - idx * WINDOW_STRIDE;
    if (wo + len > w.u8.length) return false;
    this.curU8 = w.u8;
    this.curDv = w.dv;
    this.curOff = wo;
    return true;
  }

  private locate(gpa: Gpa, len: number): number {
    if (!(Number.isInteger(len) && len >= 0)) {
      throw new GuestMemoryError(`invalid guest memory access length ${len} at ${typeof gpa === 'number' || typeof gpa === 'bigint' ? HEX(gpa) : String(gpa)}`, gpa, len);
    }
    const g = typeof gpa === 'number' && gpa >= 0 && gpa <= GPA_LIMIT && Number.isInteger(gpa) ? gpa : toGpaNumber(gpa, len);
    if (g + len > GPA_LIMIT) {
      throw new GuestMemoryError(`guest memory access ${HEX(g)}+${HEX(len)} runs past the 52-bit physical address space`, gpa, len);
    }
    if (this.find(g, len)) return this.curOff;
    throw this.explain(g, len);
  }

  private explain(g: number, len: number): GuestMemoryError {
    if (this.freed) return new GuestMemoryError(`guest memory access ${HEX(g)}+${HEX(len)} after free()`, g, len);
    const inRam = (a: number): Region | undefined => this.regs.find((r) => a >= r.start && a < r.end);
    const first = inRam(g);
    const lastByte = len === 0 ? g : g + len - 1;
    const last = inRam(lastByte);
    if (first !== undefined && last !== undefined && first !== last) {
      return new GuestMemoryError(`guest memory access ${HEX(g)}+${HEX(len)} spans two RAM regions`, g, len);
    }
    if (first !== undefined && last === first) {
      return new GuestMemoryError(`guest memory access ${HEX(g)}+${HEX(len)} is larger than 2 GiB and crosses a host view window`, g, len);
    }
    return new GuestMemoryError(`guest memory access ${HEX(g)}+${HEX(len)} is outside guest RAM`, g, len);
  }
}
