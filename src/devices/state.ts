// Checks shared by the devices' restoreState (legacy devices here, PCI in src/pci): a saved state
// that does not fit the device it is restored into (another FIFO size, BAR layout, MSI-X table
// size, a register value the device could never hold) is refused before anything changes, with a
// StateFormatError naming the field (`serial state: rxCapacity: …`), the same error the file form
// (state_json.ts) gives for a malformed document, so a restore has one error to report.

import { StateFormatError } from '../snapshot/codec.js';

export { StateFormatError };

export const hex8 = (v: number): string => `0x${v.toString(16).padStart(2, '0')}`;

/** Validation of one device's state; every failure names `document` and the field. */
export class StateCheck {
  constructor(readonly document: string) {}

  fail(field: string, problem: string): never {
    throw new StateFormatError(field, problem, this.document);
  }

  /** An integer 0..max (states also come from code, not only from the checked file form). */
  uint(field: string, v: unknown, max: number): number {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > max) this.fail(field, `expected an integer 0..${max}, got ${String(v)}`);
    return v;
  }

  /** A byte whose bits outside `allowed` must be clear. */
  bits(field: string, v: unknown, allowed: number, what: string): number {
    const b = this.uint(field, v, 0xff);
    if ((b & ~allowed) !== 0) this.fail(field, `bits ${hex8(b & ~allowed)} of ${hex8(b)} are never set in ${what}`);
    return b;
  }

  bool(field: string, v: unknown): boolean {
    if (typeof v !== 'boolean') this.fail(field, `expected true or false, got ${String(v)}`);
    return v;
  }

  bytes(field: string, v: unknown, min: number, max: number): Uint8Array {
    if (!(v instanceof Uint8Array)) this.fail(field, 'expected bytes');
    if (v.length < min || v.length > max) this.fail(field, min === max ? `expected ${min} bytes, got ${v.length}` : `expected ${min}..${max} bytes, got ${v.length}`);
    return v;
  }

  object(field: string, v: unknown): void {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) this.fail(field, 'expected an object');
  }
}

/**
 * Run a part's check or restore under `prefix` of a larger state: its StateFormatError comes out
 * with the field as a path of the whole (`serial.rxCapacity`) and the whole's document name.
 */
export function underField<T>(prefix: string, document: string, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    if (!(e instanceof StateFormatError)) throw e;
    throw new StateFormatError(e.field === '' ? prefix : `${prefix}.${e.field}`, e.problem, document);
  }
}
