// The file form of the hypervisor-level saved state (VmState + every VcpuState): versioned JSON
// with 64-bit values as "0x…" hex strings and byte blobs as base64. One schema below gives both
// directions, so what is written is exactly what is read back. Parsing is strict: a missing or
// unknown field, a wrong type, a number out of its field's range, a blob of the wrong size all
// throw a StateFormatError naming the field (`vcpus[1].sregs.cs.limit: …`); nothing else is
// thrown for any input, so a hostile snapshot file gives a clear error.

import type { VcpuState, VmState } from './hypervisor.js';
import { MP_STATES } from './regs.js';
import type {
  CpuIdEntry, DescriptorTable, FpuState, MsrEntry, PicState, PitChannelState, SegmentRegister,
  StandardRegisters, VcpuEvents,
} from './regs.js';

export const HYPERVISOR_STATE_FORMAT = 'stratovisor-hypervisor-state';
/** Bump when the meaning or shape of a field changes; readers refuse other versions by name. */
export const HYPERVISOR_STATE_VERSION = 1;

/** The hypervisor part of a snapshot: the VM's interrupt controllers and clock, and each vCPU. */
export interface HypervisorState {
  arch: 'x86_64';
  vm: VmState;
  vcpus: VcpuState[];
}

export class StateFormatError extends Error {
  /** Path of the offending field, e.g. `vcpus[0].msrs[3].data` (empty: the whole document). */
  readonly field: string;
  constructor(field: string, problem: string) {
    super(field === '' ? `hypervisor state: ${problem}` : `hypervisor state: ${field}: ${problem}`);
    this.name = 'StateFormatError';
    this.field = field;
  }
}

export type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

interface Codec<T> {
  enc(v: T): Json;
  dec(j: unknown, path: string): T;
}

function describe(j: unknown): string {
  if (j === undefined) return 'nothing';
  if (j === null) return 'null';
  if (Array.isArray(j)) return `an array of ${j.length}`;
  if (typeof j === 'object') return 'an object';
  if (typeof j === 'string') return j.length > 40 ? `"${j.slice(0, 40)}…" (${j.length} characters)` : JSON.stringify(j);
  return String(j);
}

function fail(path: string, expected: string, got: unknown): never {
  throw new StateFormatError(path, `expected ${expected}, got ${describe(got)}`);
}

function uint(bits: 8 | 16 | 32): Codec<number> {
  const max = 2 ** bits - 1;
  return {
    enc: (v) => v,
    dec(j, path) {
      if (typeof j !== 'number' || !Number.isInteger(j) || j < 0 || j > max) fail(path, `an integer 0..${max}`, j);
      return j;
    },
  };
}
const u8 = uint(8);
const u16 = uint(16);
const u32 = uint(32);

const HEX = /^0x[0-9a-f]{1,16}$/;

/** 64-bit unsigned as "0x…" (lower case, no leading zeros). */
const u64: Codec<bigint> = {
  enc: (v) => `0x${BigInt.asUintN(64, v).toString(16)}`,
  dec(j, path) {
    if (typeof j !== 'string' || !HEX.test(j)) fail(path, 'a 64-bit hex string "0x…"', j);
    return BigInt(j);
  },
};

/** 64-bit signed as "0x…" or "-0x…". */
const i64: Codec<bigint> = {
  enc: (v) => (v < 0n ? `-0x${(-BigInt.asIntN(64, v)).toString(16)}` : `0x${BigInt.asIntN(64, v).toString(16)}`),
  dec(j, path) {
    const neg = typeof j === 'string' && j.startsWith('-');
    const body = neg ? (j as string).slice(1) : j;
    if (typeof body !== 'string' || !HEX.test(body)) fail(path, 'a signed 64-bit hex string "0x…" or "-0x…"', j);
    const v = neg ? -BigInt(body) : BigInt(body);
    if (v < -(2n ** 63n) || v >= 2n ** 63n) fail(path, 'a signed 64-bit hex string in -0x8000000000000000..0x7fffffffffffffff', j);
    return v;
  },
};

/** 32-bit unsigned as "0x…" (MSR indices read better in hex). */
const hex32: Codec<number> = {
  enc: (v) => `0x${(v >>> 0).toString(16)}`,
  dec(j, path) {
    if (typeof j !== 'string' || !/^0x[0-9a-f]{1,8}$/.test(j)) fail(path, 'a 32-bit hex string "0x…"', j);
    return Number.parseInt(j.slice(2), 16);
  },
};

const B64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

function bytes(min: number, max: number): Codec<Uint8Array> {
  const size = min === max ? `${min} bytes` : `${min}..${max} bytes`;
  return {
    enc: (v) => Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('base64'),
    dec(j, path) {
      if (typeof j !== 'string' || !B64.test(j)) fail(path, `base64 of ${size}`, j);
      const n = (j.length / 4) * 3 - (j.endsWith('==') ? 2 : j.endsWith('=') ? 1 : 0);
      if (n < min || n > max) throw new StateFormatError(path, `expected base64 of ${size}, got ${n} bytes`);
      return new Uint8Array(Buffer.from(j, 'base64'));
    },
  };
}

function oneOf<T extends string>(values: readonly T[]): Codec<T> {
  return {
    enc: (v) => v,
    dec(j, path) {
      if (typeof j !== 'string' || !(values as readonly string[]).includes(j)) fail(path, `one of ${values.map((v) => `"${v}"`).join(', ')}`, j);
      return j as T;
    },
  };
}

function literal<T extends string | number>(value: T): Codec<T> {
  return {
    enc: (v) => v,
    dec(j, path) {
      if (j !== value) fail(path, JSON.stringify(value), j);
      return value;
    },
  };
}

function nullable<T>(c: Codec<T>): Codec<T | null> {
  return {
    enc: (v) => (v === null ? null : c.enc(v)),
    dec: (j, path) => (j === null ? null : c.dec(j, path)),
  };
}

function array<T>(c: Codec<T>, min: number, max: number): Codec<T[]> {
  const count = min === max ? `${min}` : `${min}..${max}`;
  return {
    enc: (v) => v.map((e) => c.enc(e)),
    dec(j, path) {
      if (!Array.isArray(j) || j.length < min || j.length > max) fail(path, `an array of ${count}`, j);
      return j.map((e, i) => c.dec(e, `${path}[${i}]`));
    },
  };
}

function tuple<T>(c: Codec<T>, n: 3): Codec<[T, T, T]>;
function tuple<T>(c: Codec<T>, n: 4): Codec<[T, T, T, T]>;
function tuple<T>(c: Codec<T>, n: number): Codec<T[]> {
  return array(c, n, n);
}

type Fields<T> = { [K in keyof T]-?: Codec<T[K]> };

function struct<T extends object>(fields: Fields<T>): Codec<T> {
  const keys = Object.keys(fields) as Array<keyof T & string>;
  const known = new Set<string>(keys);
  return {
    enc(v) {
      const o: { [k: string]: Json } = {};
      for (const k of keys) o[k] = fields[k].enc(v[k]);
      return o;
    },
    dec(j, path) {
      if (typeof j !== 'object' || j === null || Array.isArray(j)) fail(path, 'an object', j);
      const o = j as Record<string, unknown>;
      for (const k of Object.keys(o)) {
        if (!known.has(k)) throw new StateFormatError(path === '' ? k : `${path}.${k}`, 'unknown field');
      }
      const out = {} as T;
      for (const k of keys) {
        const p = path === '' ? k : `${path}.${k}`;
        if (!Object.prototype.hasOwnProperty.call(o, k)) throw new StateFormatError(p, 'missing');
        out[k] = fields[k].dec(o[k], p);
      }
      return out;
    },
  };
}

// ---------------------------------------------------------------------------------------------
// The schema (field names are those of regs.ts / hypervisor.ts)

const regs = struct<StandardRegisters>({
  rax: u64, rbx: u64, rcx: u64, rdx: u64, rsi: u64, rdi: u64, rsp: u64, rbp: u64,
  r8: u64, r9: u64, r10: u64, r11: u64, r12: u64, r13: u64, r14: u64, r15: u64, rip: u64, rflags: u64,
});

const segment = struct<SegmentRegister>({
  base: u64, limit: u32, selector: u16, type: u8, present: u8, dpl: u8, db: u8, s: u8, l: u8, g: u8, avl: u8, unusable: u8,
});

const dtable = struct<DescriptorTable>({ base: u64, limit: u16 });

const sregs = struct<VcpuState['sregs']>({
  cs: segment, ds: segment, es: segment, fs: segment, gs: segment, ss: segment, tr: segment, ldt: segment,
  gdt: dtable, idt: dtable,
  cr0: u64, cr2: u64, cr3: u64, cr4: u64, cr8: u64, efer: u64, apicBase: u64,
  interruptBitmap: tuple(u64, 4),
});

const fpu = struct<FpuState>({
  fcw: u16, fsw: u16, ftwx: u8, lastOpcode: u16, lastIp: u64, lastDp: u64, mxcsr: u32,
  fpr: bytes(128, 128), xmm: bytes(256, 256),
});

const msr = struct<MsrEntry>({ index: hex32, data: u64 });
const cpuidEntry = struct<CpuIdEntry>({ function: hex32, index: u32, flags: u32, eax: hex32, ebx: hex32, ecx: hex32, edx: hex32 });

const events = struct<VcpuEvents>({
  exception: struct<VcpuEvents['exception']>({ injected: u8, nr: u8, hasErrorCode: u8, pending: u8, errorCode: u32 }),
  interrupt: struct<VcpuEvents['interrupt']>({ injected: u8, nr: u8, soft: u8, shadow: u8 }),
  nmi: struct<VcpuEvents['nmi']>({ injected: u8, pending: u8, masked: u8 }),
  sipiVector: u32,
  smi: struct<VcpuEvents['smi']>({ smm: u8, pending: u8, smmInsideNmi: u8, latchedInit: u8 }),
  exceptionPayload: nullable(struct<NonNullable<VcpuEvents['exceptionPayload']>>({ hasPayload: u8, payload: u64 })),
  tripleFaultPending: nullable(u8),
});

/** XSAVE areas: at least the legacy area + header (SDM Vol. 1, 13.4), at most 1 MiB. */
const XSAVE_MIN = 512 + 64;
const XSAVE_MAX = 1 << 20;

export const vcpuStateCodec: Codec<VcpuState> = struct<VcpuState>({
  regs,
  sregs,
  fpu,
  xsave: nullable(bytes(XSAVE_MIN, XSAVE_MAX)),
  xcrs: array(struct({ xcr: u32, value: u64 }), 0, 16),
  msrs: array(msr, 0, 4096),
  lapic: bytes(1024, 1024),
  events,
  mpState: oneOf(MP_STATES),
  debugRegs: struct<VcpuState['debugRegs']>({ db: tuple(u64, 4), dr6: u64, dr7: u64 }),
  cpuid: array(cpuidEntry, 0, 4096),
  tscKhz: u32,
});

const pic = struct<PicState>({
  lastIrr: u8, irr: u8, imr: u8, isr: u8, priorityAdd: u8, irqBase: u8, readRegSelect: u8, poll: u8,
  specialMask: u8, initState: u8, autoEoi: u8, rotateOnAutoEoi: u8, specialFullyNestedMode: u8, init4: u8,
  elcr: u8, elcrMask: u8,
});

const pitChannel = struct<PitChannelState>({
  count: u32, latchedCount: u16, countLatched: u8, statusLatched: u8, status: u8, readState: u8,
  writeState: u8, writeLatch: u8, rwMode: u8, mode: u8, bcd: u8, gate: u8, countLoadTime: i64,
});

export const vmStateCodec: Codec<VmState> = struct<VmState>({
  irqchip: nullable(struct<NonNullable<VmState['irqchip']>>({
    picMaster: pic,
    picSlave: pic,
    ioapic: struct({ baseAddress: u64, ioregsel: u32, id: u32, irr: u32, redirtbl: array(u64, 24, 24) }),
  })),
  pit: nullable(struct<NonNullable<VmState['pit']>>({ channels: tuple(pitChannel, 3), flags: u32 })),
  clock: struct({ clock: u64, flags: u32, realtime: u64 }),
  tscKhz: nullable(u32),
});

interface Document {
  format: typeof HYPERVISOR_STATE_FORMAT;
  version: typeof HYPERVISOR_STATE_VERSION;
  arch: 'x86_64';
  vm: VmState;
  vcpus: VcpuState[];
}

const documentCodec = struct<Document>({
  format: literal(HYPERVISOR_STATE_FORMAT),
  version: literal(HYPERVISOR_STATE_VERSION),
  arch: literal('x86_64'),
  vm: vmStateCodec,
  vcpus: array(vcpuStateCodec, 1, 4096),
});

// ---------------------------------------------------------------------------------------------
// Entry points

/** The JSON value (JSON.stringify it) of a hypervisor state. */
export function hypervisorStateToJson(s: HypervisorState): Json {
  return documentCodec.enc({ format: HYPERVISOR_STATE_FORMAT, version: HYPERVISOR_STATE_VERSION, ...s });
}

/** Parse a JSON value (from JSON.parse). Throws StateFormatError naming the bad field. */
export function hypervisorStateFromJson(j: unknown): HypervisorState {
  if (typeof j !== 'object' || j === null || Array.isArray(j)) fail('', 'a JSON object', j);
  const o = j as Record<string, unknown>;
  // The version decides how to read the rest: check it (and the format) before anything else.
  if (o['format'] !== HYPERVISOR_STATE_FORMAT) fail('format', `"${HYPERVISOR_STATE_FORMAT}"`, o['format']);
  const v = o['version'];
  if (typeof v !== 'number' || !Number.isInteger(v)) fail('version', 'an integer', v);
  if (v !== HYPERVISOR_STATE_VERSION) {
    throw new StateFormatError('version', v > HYPERVISOR_STATE_VERSION
      ? `version ${v} was written by a newer Stratovisor; this one reads version ${HYPERVISOR_STATE_VERSION}`
      : `version ${v} is older than any this Stratovisor can convert (it reads version ${HYPERVISOR_STATE_VERSION})`);
  }
  const d = documentCodec.dec(j, '');
  return { arch: d.arch, vm: d.vm, vcpus: d.vcpus };
}

/** JSON text to state; text that is not JSON is a StateFormatError too. */
export function parseHypervisorState(text: string): HypervisorState {
  let j: unknown;
  try {
    j = JSON.parse(text);
  } catch (e) {
    throw new StateFormatError('', `not JSON (${(e as Error).message})`);
  }
  return hypervisorStateFromJson(j);
}

export function stringifyHypervisorState(s: HypervisorState): string {
  return JSON.stringify(hypervisorStateToJson(s));
}
