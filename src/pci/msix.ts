// MSI-X (PCI Local Bus 3.0, 6.8.2): the capability's Message Control, the vector table and the
// pending bit array. The owner decides what a vector change means (hypervisor routes) through
// callbacks; this model only keeps the registers and the masking rules.

import { PCI_CAP_ID_MSIX } from './config.js';
import { StateCheck } from '../devices/state.js';

export const MSIX_ENTRY_SIZE = 16;
export const MSIX_CTRL_ENABLE = 0x8000;
export const MSIX_CTRL_FUNCTION_MASK = 0x4000;
export const MSIX_ENTRY_CTRL_MASKED = 0x1;
/** Largest table (Table Size is 11 bits, N-1 encoded). */
export const MSIX_MAX_VECTORS = 2048;

export interface MsiMessageValue {
  addressLo: number;
  addressHi: number;
  data: number;
}

export interface MsixEvents {
  /** Vector `v`'s message or mask changed (including through the function mask or enable). */
  vectorChanged(v: number): void;
}

/** MSI-X state as plain data (file form: src/pci/state_json.ts). */
export interface MsixState {
  /** Table Size + 1 of the function that saved it (a restore needs the same). */
  vectors: number;
  /** The vector table, 16 bytes per vector (message address, data, vector control), as the guest wrote it. */
  table: Uint8Array;
  /** The pending bit array as the guest reads it (a bit per vector, in qwords; bits past the last vector 0). */
  pba: Uint8Array;
  /** Message Control: MSI-X Enable and Function Mask, as last written. */
  enabled: boolean;
  functionMasked: boolean;
}

export class Msix {
  readonly table: Uint8Array;
  private readonly tdv: DataView;
  /** Pending bits, one per vector (the owner sets them while a vector is masked). */
  readonly pending: Uint8Array;
  enabled = false;
  functionMasked = false;

  constructor(readonly vectors: number, private readonly events: MsixEvents) {
    if (!Number.isInteger(vectors) || vectors < 1 || vectors > MSIX_MAX_VECTORS) throw new RangeError(`MSI-X vector count ${vectors} outside 1..${MSIX_MAX_VECTORS}`);
    this.table = new Uint8Array(vectors * MSIX_ENTRY_SIZE);
    this.tdv = new DataView(this.table.buffer);
    // Every vector starts masked (6.8.2.9).
    for (let v = 0; v < vectors; v++) this.tdv.setUint32(v * MSIX_ENTRY_SIZE + 12, MSIX_ENTRY_CTRL_MASKED, true);
    this.pending = new Uint8Array(vectors);
  }

  get tableSize(): number {
    return this.vectors * MSIX_ENTRY_SIZE;
  }

  get pbaSize(): number {
    return Math.ceil(this.vectors / 64) * 8;
  }

  /** The 12-byte capability body (ID, next, control, table and PBA offset/BIR) and its write mask. */
  capability(tableBar: number, tableOffset: number, pbaBar: number, pbaOffset: number): { body: Uint8Array; writable: Uint8Array } {
    const body = new Uint8Array(12);
    const dv = new DataView(body.buffer);
    body[0] = PCI_CAP_ID_MSIX;
    dv.setUint16(2, this.vectors - 1, true);
    dv.setUint32(4, (tableOffset | tableBar) >>> 0, true);
    dv.setUint32(8, (pbaOffset | pbaBar) >>> 0, true);
    const writable = new Uint8Array(12);
    writable[3] = (MSIX_CTRL_ENABLE | MSIX_CTRL_FUNCTION_MASK) >> 8;
    return { body, writable };
  }

  /** The guest wrote Message Control (already masked to its writable bits). */
  setControl(control: number): void {
    const enabled = (control & MSIX_CTRL_ENABLE) !== 0;
    const fmask = (control & MSIX_CTRL_FUNCTION_MASK) !== 0;
    if (enabled === this.enabled && fmask === this.functionMasked) return;
    this.enabled = enabled;
    this.functionMasked = fmask;
    for (let v = 0; v < this.vectors; v++) this.events.vectorChanged(v);
  }

  saveState(): MsixState {
    const pba = new Uint8Array(this.pbaSize);
    for (let v = 0; v < this.vectors; v++) if (this.pending[v]) pba[v >> 3]! |= 1 << (v & 7);
    return { vectors: this.vectors, table: this.table.slice(), pba, enabled: this.enabled, functionMasked: this.functionMasked };
  }

  /**
   * Take over a saved table, PBA and Message Control (checked first: a StateFormatError names
   * what does not fit: the vector count, the table or PBA size, reserved bits). Then every
   * vector is reported through vectorChanged, so the owner re-derives its routes and masks.
   */
  restoreState(s: MsixState): void {
    this.checkState(s);
    this.table.set(s.table);
    for (let v = 0; v < this.vectors; v++) this.pending[v] = (s.pba[v >> 3]! >> (v & 7)) & 1;
    this.enabled = s.enabled;
    this.functionMasked = s.functionMasked;
    for (let v = 0; v < this.vectors; v++) this.events.vectorChanged(v);
  }

  /** The checks of restoreState, changing nothing. */
  checkState(s: MsixState): void {
    const c = new StateCheck('MSI-X state');
    c.object('', s);
    if (c.uint('vectors', s.vectors, MSIX_MAX_VECTORS) !== this.vectors) c.fail('vectors', `the state has ${s.vectors} MSI-X vectors, this function ${this.vectors}`);
    const table = c.bytes('table', s.table, this.tableSize, this.tableSize);
    const tdv = new DataView(table.buffer, table.byteOffset, table.byteLength);
    for (let v = 0; v < this.vectors; v++) {
      const ctl = tdv.getUint32(v * MSIX_ENTRY_SIZE + 12, true);
      if ((ctl & ~MSIX_ENTRY_CTRL_MASKED) !== 0) c.fail('table', `vector ${v}: Vector Control has reserved bits set (0x${ctl.toString(16)})`);
    }
    const pba = c.bytes('pba', s.pba, this.pbaSize, this.pbaSize);
    for (let i = this.vectors; i < this.pbaSize * 8; i++) {
      if ((pba[i >> 3]! >> (i & 7)) & 1) c.fail('pba', `pending bit ${i} is set, this function has vectors 0..${this.vectors - 1}`);
    }
    c.bool('enabled', s.enabled);
    c.bool('functionMasked', s.functionMasked);
  }

  /** True when vector `v` must not be delivered now (it becomes pending instead). */
  masked(v: number): boolean {
    return !this.enabled || this.functionMasked || (this.tdv.getUint32(v * MSIX_ENTRY_SIZE + 12, true) & MSIX_ENTRY_CTRL_MASKED) !== 0;
  }

  message(v: number): MsiMessageValue {
    const o = v * MSIX_ENTRY_SIZE;
    return { addressLo: this.tdv.getUint32(o, true), addressHi: this.tdv.getUint32(o + 4, true), data: this.tdv.getUint32(o + 8, true) };
  }

  /** Table read; accesses outside the table or not naturally aligned dwords/qwords read zero. */
  readTable(offset: number, data: Uint8Array): void {
    if (!this.validAccess(offset, data.length, this.tableSize)) { data.fill(0); return; }
    data.set(this.table.subarray(offset, offset + data.length));
  }

  writeTable(offset: number, data: Uint8Array): void {
    if (!this.validAccess(offset, data.length, this.tableSize)) return;
    const v = Math.floor(offset / MSIX_ENTRY_SIZE);
    const before = this.table.slice(v * MSIX_ENTRY_SIZE, (v + 1) * MSIX_ENTRY_SIZE);
    this.table.set(data, offset);
    // Only the mask bit of Vector Control is writable (6.8.2.9).
    const ctl = v * MSIX_ENTRY_SIZE + 12;
    this.tdv.setUint32(ctl, this.tdv.getUint32(ctl, true) & MSIX_ENTRY_CTRL_MASKED, true);
    const after = this.table.subarray(v * MSIX_ENTRY_SIZE, (v + 1) * MSIX_ENTRY_SIZE);
    for (let i = 0; i < MSIX_ENTRY_SIZE; i++) {
      if (before[i] !== after[i]) { this.events.vectorChanged(v); break; }
    }
  }

  readPba(offset: number, data: Uint8Array): void {
    data.fill(0);
    if (!this.validAccess(offset, data.length, this.pbaSize)) return;
    for (let i = 0; i < data.length; i++) {
      let byte = 0;
      for (let b = 0; b < 8; b++) {
        const v = (offset + i) * 8 + b;
        if (v < this.vectors && this.pending[v]) byte |= 1 << b;
      }
      data[i] = byte;
    }
  }

  private validAccess(offset: number, len: number, size: number): boolean {
    return (len === 4 || len === 8) && offset % len === 0 && offset >= 0 && offset + len <= size;
  }
}
