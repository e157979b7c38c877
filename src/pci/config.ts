// PCI configuration space of one function: the type 0 header (PCI Local Bus 3.0, 6.1), BARs with
// the sizing protocol (6.2.5.1), a capability list (6.7) and per-byte write masks so that
// read-only fields stay read-only whatever the guest writes.

import { StateCheck, hex8 } from '../devices/state.js';

export const PCI_CONFIG_SPACE_SIZE = 256;
export const PCIE_CONFIG_SPACE_SIZE = 4096;

// Header offsets (type 0).
export const PCI_VENDOR_ID = 0x00;
export const PCI_DEVICE_ID = 0x02;
export const PCI_COMMAND = 0x04;
export const PCI_STATUS = 0x06;
export const PCI_REVISION_ID = 0x08;
export const PCI_CLASS_PROG = 0x09;
export const PCI_HEADER_TYPE = 0x0e;
export const PCI_BASE_ADDRESS_0 = 0x10;
export const PCI_SUBSYSTEM_VENDOR_ID = 0x2c;
export const PCI_SUBSYSTEM_ID = 0x2e;
export const PCI_CAPABILITY_LIST = 0x34;
export const PCI_INTERRUPT_LINE = 0x3c;
export const PCI_INTERRUPT_PIN = 0x3d;

export const PCI_COMMAND_IO = 0x1;
export const PCI_COMMAND_MEMORY = 0x2;
export const PCI_COMMAND_MASTER = 0x4;
export const PCI_COMMAND_INTX_DISABLE = 0x400;
export const PCI_STATUS_CAP_LIST = 0x10;

export const PCI_BAR_MEM_TYPE_64 = 0x4;
export const PCI_BAR_MEM_PREFETCH = 0x8;

export const PCI_CAP_ID_MSIX = 0x11;
export const PCI_CAP_ID_VNDR = 0x09;

const NUM_BARS = 6;
const FIRST_CAP = 0x40;

export interface PciHeader {
  vendorId: number;
  deviceId: number;
  revisionId: number;
  /** 24-bit class code: class << 16 | subclass << 8 | prog-if. */
  classCode: number;
  subsystemVendorId: number;
  subsystemId: number;
  /** 0 = no INTx pin (MSI-X only). */
  interruptPin?: number;
}

export interface BarInfo {
  index: number;
  /** Guest-physical address currently programmed (0 while sizing or unassigned). */
  addr: number;
  size: number;
  is64: boolean;
}

/**
 * Called when the guest moves a memory BAR (old and new addresses; the size is the same). Returns
 * false when the owner refused the placement: the BAR then stays where it was.
 */
export type BarMoveHandler = (index: number, from: number, to: number) => boolean;

interface Bar {
  size: number;
  is64: boolean;
  prefetch: boolean;
  addr: number;
}

/** A memory BAR as saved: its shape (must match the device it is restored into) and where it is mapped. */
export interface PciBarState {
  index: number;
  size: number;
  is64: boolean;
  prefetch: boolean;
  /** The address the BAR is mapped at (what the owner accepted; the register may say otherwise while sizing or refused). */
  addr: number;
}

/** A function's configuration space as plain data (file form: src/pci/state_json.ts). */
export interface PciConfigurationState {
  /** The register file as the guest reads it (256 or 4096 bytes): command, BAR registers as programmed, capabilities. */
  bytes: Uint8Array;
  /** Its memory BARs by index. */
  bars: PciBarState[];
}

/** Highest address a BAR is placed at (syncBars: a 52-bit physical address space). */
const BAR_ADDR_LIMIT = 2 ** 52;

export class PciConfiguration {
  /** The register file, little endian. */
  readonly bytes: Uint8Array;
  private readonly dv: DataView;
  /** Bits the guest may change (1 = writable), excluding BARs which are handled separately. */
  private readonly wmask: Uint8Array;
  private readonly bars: Array<Bar | null> = new Array<Bar | null>(NUM_BARS).fill(null);
  private nextCap = FIRST_CAP;
  private lastCapPtr = PCI_CAPABILITY_LIST;
  onBarMove: BarMoveHandler | null = null;

  constructor(h: PciHeader, size = PCI_CONFIG_SPACE_SIZE) {
    this.bytes = new Uint8Array(size);
    this.dv = new DataView(this.bytes.buffer);
    this.wmask = new Uint8Array(size);
    const dv = this.dv;
    dv.setUint16(PCI_VENDOR_ID, h.vendorId, true);
    dv.setUint16(PCI_DEVICE_ID, h.deviceId, true);
    this.bytes[PCI_REVISION_ID] = h.revisionId;
    this.bytes[PCI_CLASS_PROG] = h.classCode & 0xff;
    this.bytes[PCI_CLASS_PROG + 1] = (h.classCode >> 8) & 0xff;
    this.bytes[PCI_CLASS_PROG + 2] = (h.classCode >> 16) & 0xff;
    dv.setUint16(PCI_SUBSYSTEM_VENDOR_ID, h.subsystemVendorId, true);
    dv.setUint16(PCI_SUBSYSTEM_ID, h.subsystemId, true);
    this.bytes[PCI_INTERRUPT_PIN] = h.interruptPin ?? 0;
    // Command: I/O, memory, bus master, INTx disable are writable; the interrupt line is scratch.
    dv.setUint16(PCI_COMMAND, 0, true);
    this.wmask[PCI_COMMAND] = PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
    this.wmask[PCI_COMMAND + 1] = PCI_COMMAND_INTX_DISABLE >> 8;
    this.wmask[PCI_INTERRUPT_LINE] = 0xff;
    this.wmask[0x0c] = 0xff; // cache line size
    this.wmask[0x0d] = 0xff; // latency timer
  }

  get command(): number {
    return this.dv.getUint16(PCI_COMMAND, true);
  }

  /**
   * Declare a memory BAR of `size` bytes (a power of two >= 16) at `addr` (aligned to size).
   * A 64-bit BAR also takes the next BAR slot for its upper half.
   */
  addMemoryBar(index: number, addr: number, size: number, is64 = false, prefetch = false): void {
    if (!Number.isInteger(index) || index < 0 || index >= NUM_BARS || (is64 && index === NUM_BARS - 1)) {
      throw new RangeError(`BAR index ${index} invalid`);
    }
    if (size < 16 || (size & (size - 1)) !== 0) throw new RangeError(`BAR size ${size} is not a power of two >= 16`);
    if (addr % size !== 0) throw new RangeError(`BAR address 0x${addr.toString(16)} is not aligned to its size`);
    if (!is64 && addr + size > 2 ** 32) throw new RangeError('32-bit BAR above 4 GiB');
    if (this.bars[index] || (is64 && this.bars[index + 1])) throw new RangeError(`BAR ${index} already used`);
    const bar: Bar = { size, is64, prefetch, addr };
    this.bars[index] = bar;
    this.storeBar(index, bar);
  }

  barInfo(): BarInfo[] {
    const out: BarInfo[] = [];
    this.bars.forEach((b, index) => { if (b) out.push({ index, addr: b.addr, size: b.size, is64: b.is64 }); });
    return out;
  }

  /** The first capability with ID `id` in the capability list, or -1. */
  findCapability(id: number): number {
    let at = this.bytes[PCI_CAPABILITY_LIST]! & 0xfc;
    for (let n = 0; at >= FIRST_CAP && n < 48; n++) {
      if (this.bytes[at] === id) return at;
      at = this.bytes[at + 1]! & 0xfc;
    }
    return -1;
  }

  saveState(): PciConfigurationState {
    const bars: PciBarState[] = [];
    this.bars.forEach((b, index) => { if (b) bars.push({ index, size: b.size, is64: b.is64, prefetch: b.prefetch, addr: b.addr }); });
    return { bytes: this.bytes.slice(), bars };
  }

  /** The checks of restoreState, changing nothing. */
  checkState(s: PciConfigurationState): void {
    const c = new StateCheck('PCI configuration state');
    c.object('', s);
    const bytes = c.bytes('bytes', s.bytes, 0, PCIE_CONFIG_SPACE_SIZE);
    if (bytes.length !== this.bytes.length) c.fail('bytes', `the state has a ${bytes.length}-byte configuration space, this function ${this.bytes.length}`);
    if (!Array.isArray(s.bars)) c.fail('bars', 'expected an array');
    const mine = this.saveState().bars;
    if (s.bars.length !== mine.length) c.fail('bars', `the state has ${s.bars.length} BARs, this function ${mine.length} (BARs ${mine.map((b) => b.index).join(', ') || 'none'})`);
    s.bars.forEach((b, i) => {
      const m = mine[i]!;
      const f = `bars[${i}]`;
      c.object(f, b);
      for (const k of ['index', 'size', 'is64', 'prefetch'] as const) {
        if (b[k] !== m[k]) c.fail(`${f}.${k}`, `the state has ${String(b[k])}, this function's BAR ${m.index} has ${String(m[k])}`);
      }
      const a = b.addr;
      const limit = b.is64 ? BAR_ADDR_LIMIT : 2 ** 32;
      if (typeof a !== 'number' || !Number.isInteger(a) || a < 0 || a + b.size > limit) c.fail(`${f}.addr`, `expected an address below 0x${limit.toString(16)}, got ${String(a)}`);
      if (a % b.size !== 0) c.fail(`${f}.addr`, `0x${a.toString(16)} is not aligned to the BAR's size 0x${b.size.toString(16)}`);
    });
    const wmask = this.guestWritableMask();
    for (let o = 0; o < bytes.length; o++) {
      const diff = (bytes[o]! ^ this.bytes[o]!) & ~wmask[o]!;
      if (diff !== 0) c.fail(`bytes[${hex8(o)}]`, `read-only bits ${hex8(diff)} differ: the state has ${hex8(bytes[o]!)}, this function ${hex8(this.bytes[o]!)} (another device?)`);
    }
  }

  /**
   * Take over a saved configuration space. Checked first (checkState), a StateFormatError naming the field:
   * the size, the BARs (count, index, size, type), and every read-only bit (IDs, class, header,
   * capability list: the saved function must be this one). Then each BAR mapped elsewhere than
   * now is moved there through onBarMove, so the owner maps it as the guest had it; a move the
   * owner refuses is an error naming the BAR (the configuration is then only partly restored).
   */
  restoreState(s: PciConfigurationState): void {
    this.checkState(s);
    const c = new StateCheck('PCI configuration state');
    this.bytes.set(s.bytes);
    s.bars.forEach((sb, i) => {
      const b = this.bars[sb.index]!;
      if (sb.addr === b.addr) return;
      if (this.onBarMove && !this.onBarMove(sb.index, b.addr, sb.addr)) c.fail(`bars[${i}].addr`, `the owner refused to map BAR ${sb.index} at 0x${sb.addr.toString(16)}`);
      b.addr = sb.addr;
    });
  }

  /** Per byte, the bits a guest write can change: the write masks plus the BARs' address bits. */
  private guestWritableMask(): Uint8Array {
    const m = this.wmask.slice();
    const dv = new DataView(m.buffer);
    this.bars.forEach((b, index) => {
      if (!b) return;
      dv.setUint32(PCI_BASE_ADDRESS_0 + index * 4, ~(b.size - 1) >>> 0, true);
      if (b.is64) dv.setUint32(PCI_BASE_ADDRESS_0 + (index + 1) * 4, 0xffffffff, true);
    });
    return m;
  }

  private barFlags(b: Bar): number {
    return (b.is64 ? PCI_BAR_MEM_TYPE_64 : 0) | (b.prefetch ? PCI_BAR_MEM_PREFETCH : 0);
  }

  private storeBar(index: number, b: Bar): void {
    const lo = (b.addr % 2 ** 32) >>> 0;
    this.dv.setUint32(PCI_BASE_ADDRESS_0 + index * 4, ((lo & ~(b.size - 1)) | this.barFlags(b)) >>> 0, true);
    if (b.is64) this.dv.setUint32(PCI_BASE_ADDRESS_0 + (index + 1) * 4, Math.floor(b.addr / 2 ** 32) >>> 0, true);
  }

  /**
   * Append a capability: `body` starts with the cap ID byte; byte 1 (next pointer) is filled in.
   * `writable` marks bytes of the body the guest may write (same length as body, or omitted).
   * Returns the capability's offset.
   */
  addCapability(body: Uint8Array, writable?: Uint8Array): number {
    const at = this.nextCap;
    const len = (body.length + 3) & ~3;
    if (at + len > PCI_CONFIG_SPACE_SIZE) throw new RangeError('PCI capability list does not fit in 256 bytes');
    this.bytes.set(body, at);
    this.bytes[at + 1] = 0;
    if (writable) this.wmask.set(writable.subarray(0, body.length), at);
    this.bytes[this.lastCapPtr] = at;
    this.lastCapPtr = at + 1;
    this.nextCap = at + len;
    this.dv.setUint16(PCI_STATUS, this.dv.getUint16(PCI_STATUS, true) | PCI_STATUS_CAP_LIST, true);
    return at;
  }

  /** A read of data.length bytes (1, 2 or 4) at `offset`; outside the space reads all-ones. */
  read(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) {
      const o = offset + i;
      data[i] = o < this.bytes.length ? this.bytes[o]! : 0xff;
    }
  }

  /** A write of data.length bytes at `offset`, honouring write masks and the BAR protocol. */
  write(offset: number, data: Uint8Array): void {
    if (offset >= PCI_BASE_ADDRESS_0 && offset < PCI_BASE_ADDRESS_0 + NUM_BARS * 4) {
      this.writeBarBytes(offset, data);
      return;
    }
    for (let i = 0; i < data.length; i++) {
      const o = offset + i;
      if (o >= this.bytes.length) break;
      const m = this.wmask[o]!;
      if (m !== 0) this.bytes[o] = (this.bytes[o]! & ~m) | (data[i]! & m);
    }
    if (offset <= PCI_COMMAND && offset + data.length > PCI_COMMAND) this.syncBars();
  }

  private writeBarBytes(offset: number, data: Uint8Array): void {
    // Merge the (possibly partial) write into the 32-bit register it hits, then apply it.
    const reg = (offset - PCI_BASE_ADDRESS_0) >> 2;
    const base = PCI_BASE_ADDRESS_0 + reg * 4;
    const cur = new Uint8Array(4);
    cur.set(this.bytes.subarray(base, base + 4));
    for (let i = 0; i < data.length && (offset - base) + i < 4; i++) cur[(offset - base) + i] = data[i]!;
    const value = new DataView(cur.buffer).getUint32(0, true);
    this.writeBar(reg, value);
  }

  private writeBar(reg: number, value: number): void {
    const own = this.bars[reg];
    const lowerOf64 = reg > 0 ? this.bars[reg - 1] : null;
    if (own) {
      const lo = ((value & ~(own.size - 1)) | this.barFlags(own)) >>> 0;
      this.dv.setUint32(PCI_BASE_ADDRESS_0 + reg * 4, lo, true);
      this.barChanged(reg, own);
    } else if (lowerOf64 && lowerOf64.is64) {
      // Upper half of a 64-bit BAR: every bit is writable (sizes here are < 4 GiB).
      this.dv.setUint32(PCI_BASE_ADDRESS_0 + reg * 4, value >>> 0, true);
      this.barChanged(reg - 1, lowerOf64);
    }
    // Unimplemented BARs read as zero and ignore writes (6.2.5.1).
  }

  private barChanged(_index: number, _b: Bar): void {
    this.syncBars();
  }

  /**
   * Apply programmed BAR addresses while memory decoding is on. Linux turns decoding off while it
   * sizes BARs (writes all-ones, reads the mask back, restores), so placements are only taken from
   * a register that is not the sizing pattern and lies inside the physical address space.
   */
  private syncBars(): void {
    if ((this.command & PCI_COMMAND_MEMORY) === 0) return;
    for (let index = 0; index < NUM_BARS; index++) {
      const b = this.bars[index];
      if (!b) continue;
      const lo = (this.dv.getUint32(PCI_BASE_ADDRESS_0 + index * 4, true) & ~0xf) >>> 0;
      const hi = b.is64 ? this.dv.getUint32(PCI_BASE_ADDRESS_0 + (index + 1) * 4, true) : 0;
      const addr = hi * 2 ** 32 + lo;
      const sizing = lo === ((~(b.size - 1) & ~0xf) >>> 0) || hi === 0xffffffff;
      if (sizing || addr === b.addr || addr === 0 || addr + b.size > 2 ** 52) continue;
      const from = b.addr;
      if (this.onBarMove && !this.onBarMove(index, from, addr)) continue;
      b.addr = addr;
    }
  }
}
