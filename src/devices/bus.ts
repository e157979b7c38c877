// I/O bus: maps address ranges to devices and dispatches guest accesses.
//
// One instance serves port I/O (addresses 0..0xffff), another MMIO (guest
// physical addresses). The vCPU exit handler calls `read`/`write` with the
// address from the exit and a view of the exit's data buffer.
//
// Threading: a Bus and every device on it live in the thread (worker) that owns
// the bus. Devices are not re-entrant and are never called concurrently: the
// owner serialises accesses (one vCPU worker at a time per device). A device
// that must be reached from several vCPU workers is placed on the bus of one
// worker and the others forward their exits to it.
//
// Hot path: `read`/`write`/`indexOf` perform a binary search over preallocated
// sorted arrays and allocate nothing.

/** A device on a bus. `offset` is relative to the base of the range the device was inserted at. */
export interface BusDevice {
  /** Fill `data` (length 1, 2, 4 or 8) with the value read at `offset`. */
  read(offset: number, data: Uint8Array): void;
  /** Handle a write of `data` (length 1, 2, 4 or 8) at `offset`. */
  write(offset: number, data: Uint8Array): void;
}

/** Thrown for invalid bus layout changes (overlap, bad range, unknown device). */
export class BusError extends Error {
  override name = 'BusError';
}

/** A registered range, as returned by `ranges()` (a snapshot, not used on the hot path). */
export interface BusRange {
  base: number;
  length: number;
  device: BusDevice;
}

function hex(n: number): string {
  return '0x' + n.toString(16);
}

export class Bus {
  /** Sorted range bases; `ends[i]` is the exclusive end of range i. */
  private bases: number[] = [];
  private ends: number[] = [];
  private devices: BusDevice[] = [];

  /** Accesses that hit no device, or crossed the end of a device's range. */
  unhandledReads = 0;
  unhandledWrites = 0;

  /**
   * @param name used in error messages ("pio", "mmio").
   * @param limit exclusive upper bound of the address space (0x10000 for port I/O).
   */
  constructor(readonly name: string = 'bus', readonly limit: number = Number.MAX_SAFE_INTEGER) {}

  /** Total unhandled accesses (reads + writes). */
  get unhandledAccesses(): number {
    return this.unhandledReads + this.unhandledWrites;
  }

  /** Number of registered ranges. */
  get size(): number {
    return this.bases.length;
  }

  /**
   * Register `device` for [base, base + length). Throws BusError if the range is
   * empty, outside the address space, or overlaps an existing range.
   */
  insert(device: BusDevice, base: number, length: number): void {
    if (!Number.isSafeInteger(base) || base < 0) {
      throw new BusError(`${this.name}: invalid base address ${String(base)}`);
    }
    if (!Number.isSafeInteger(length) || length <= 0) {
      throw new BusError(`${this.name}: invalid length ${String(length)} for range at ${hex(base)}`);
    }
    const end = base + length;
    if (!Number.isSafeInteger(end) || end > this.limit) {
      throw new BusError(
        `${this.name}: range ${hex(base)}+${hex(length)} exceeds the address space (limit ${hex(this.limit)})`,
      );
    }
    // First range whose base is >= base.
    const i = this.lowerBound(base);
    if (i < this.bases.length && this.bases[i]! < end) {
      throw new BusError(
        `${this.name}: range [${hex(base)}, ${hex(end)}) overlaps existing range [${hex(this.bases[i]!)}, ${hex(this.ends[i]!)})`,
      );
    }
    if (i > 0 && this.ends[i - 1]! > base) {
      throw new BusError(
        `${this.name}: range [${hex(base)}, ${hex(end)}) overlaps existing range [${hex(this.bases[i - 1]!)}, ${hex(this.ends[i - 1]!)})`,
      );
    }
    this.bases.splice(i, 0, base);
    this.ends.splice(i, 0, end);
    this.devices.splice(i, 0, device);
  }

  /** True when [base, base + length) is a valid range that overlaps no registered one. */
  isFree(base: number, length: number): boolean {
    const end = base + length;
    if (!Number.isSafeInteger(base) || base < 0 || !Number.isSafeInteger(length) || length <= 0 || end > this.limit) return false;
    const i = this.lowerBound(base);
    if (i < this.bases.length && this.bases[i]! < end) return false;
    return !(i > 0 && this.ends[i - 1]! > base);
  }

  /** Remove the range starting exactly at `base`; returns its device. Throws if none. */
  remove(base: number): BusDevice {
    const i = this.lowerBound(base);
    if (i >= this.bases.length || this.bases[i] !== base) {
      throw new BusError(`${this.name}: no range starts at ${hex(base)}`);
    }
    const device = this.devices[i]!;
    this.bases.splice(i, 1);
    this.ends.splice(i, 1);
    this.devices.splice(i, 1);
    return device;
  }

  /** Index of the range containing `addr`, or -1. Binary search, no allocation. */
  indexOf(addr: number): number {
    const bases = this.bases;
    let lo = 0;
    let hi = bases.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      if (bases[mid]! <= addr) lo = mid + 1;
      else hi = mid - 1;
    }
    // hi is the last range with base <= addr.
    if (hi >= 0 && addr < this.ends[hi]!) return hi;
    return -1;
  }

  /** Device whose range contains `addr`, or undefined. */
  lookup(addr: number): BusDevice | undefined {
    const i = this.indexOf(addr);
    return i < 0 ? undefined : this.devices[i];
  }

  /** Base of the range containing `addr`, or -1. */
  baseOf(addr: number): number {
    const i = this.indexOf(addr);
    return i < 0 ? -1 : this.bases[i]!;
  }

  /** Snapshot of all ranges in address order (allocates; not for the hot path). */
  ranges(): BusRange[] {
    return this.bases.map((base, i) => ({ base, length: this.ends[i]! - base, device: this.devices[i]! }));
  }

  /**
   * Dispatch a read. Returns true if a device handled it; otherwise `data` is
   * filled with 0xff (floating bus) and `unhandledReads` is incremented.
   * An access that starts in a range but crosses its end is unhandled.
   */
  read(addr: number, data: Uint8Array): boolean {
    const i = this.indexOf(addr);
    if (i >= 0 && addr + data.length <= this.ends[i]! && data.length > 0) {
      this.devices[i]!.read(addr - this.bases[i]!, data);
      return true;
    }
    data.fill(0xff);
    this.unhandledReads++;
    return false;
  }

  /** Dispatch a write. Returns true if a device handled it; otherwise ignored and counted. */
  write(addr: number, data: Uint8Array): boolean {
    const i = this.indexOf(addr);
    if (i >= 0 && addr + data.length <= this.ends[i]! && data.length > 0) {
      this.devices[i]!.write(addr - this.bases[i]!, data);
      return true;
    }
    this.unhandledWrites++;
    return false;
  }

  /** First index with bases[index] >= addr. */
  private lowerBound(addr: number): number {
    const bases = this.bases;
    let lo = 0;
    let hi = bases.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (bases[mid]! < addr) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}

/** Port I/O address space limit (exclusive). */
export const PIO_LIMIT = 0x10000;

/** A bus for x86 port I/O (addresses 0..0xffff). */
export function createPioBus(): Bus {
  return new Bus('pio', PIO_LIMIT);
}

/** A bus for MMIO (guest physical addresses up to 2^53). */
export function createMmioBus(): Bus {
  return new Bus('mmio');
}

/** Little-endian helpers for devices with multi-byte registers (no allocation). */
export function readLe(data: Uint8Array): number {
  let v = 0;
  for (let i = data.length - 1; i >= 0; i--) v = v * 256 + data[i]!;
  return v;
}

/** Store `value` little-endian into `data` (length 1..8; values above 2^53 lose precision). */
export function writeLe(data: Uint8Array, value: number): void {
  let v = value;
  for (let i = 0; i < data.length; i++) {
    data[i] = v % 256;
    v = Math.floor(v / 256);
  }
}
