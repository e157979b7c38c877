// The file form of the hypervisor-level saved state (VmState + every VcpuState): versioned JSON
// through the strict codecs of src/snapshot/codec.ts (errors are a StateFormatError naming the
// field, `hypervisor state: vcpus[1].sregs.cs.limit: …`).

import type { VcpuState, VmState } from './hypervisor.js';
import {
  array, bytes, decodeVersioned, hex32, i64, literal, nullable, oneOf, parseJsonText, struct, tuple, u16, u32, u64, u8,
  type Codec, type Json,
} from '../snapshot/codec.js';
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

export { StateFormatError, type Json } from '../snapshot/codec.js';

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

const DOCUMENT = 'hypervisor state';

/** The JSON value (JSON.stringify it) of a hypervisor state. */
export function hypervisorStateToJson(s: HypervisorState): Json {
  return documentCodec.enc({ format: HYPERVISOR_STATE_FORMAT, version: HYPERVISOR_STATE_VERSION, ...s });
}

/** Parse a JSON value (from JSON.parse). Throws StateFormatError naming the bad field. */
export function hypervisorStateFromJson(j: unknown): HypervisorState {
  const d = decodeVersioned(j, DOCUMENT, HYPERVISOR_STATE_FORMAT, HYPERVISOR_STATE_VERSION, documentCodec);
  return { arch: d.arch, vm: d.vm, vcpus: d.vcpus };
}

/** JSON text to state; text that is not JSON is a StateFormatError too. */
export function parseHypervisorState(text: string): HypervisorState {
  return hypervisorStateFromJson(parseJsonText(text, DOCUMENT));
}

export function stringifyHypervisorState(s: HypervisorState): string {
  return JSON.stringify(hypervisorStateToJson(s));
}
