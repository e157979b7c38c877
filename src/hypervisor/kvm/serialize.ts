// Conversions between regs.ts types and KVM structs, through DataView on caller-provided buffers.
// Offsets come from abi.ts `layout` (checked against <linux/kvm.h>).

import type {
  ClockState, CpuIdEntry, DebugRegisters, DescriptorTable, FpuState, IoapicState, MsrEntry, PicState,
  PitChannelState, PitState, SegmentRegister, SpecialRegisters, StandardRegisters, VcpuEvents, XcrEntry,
} from '../regs.js';
import {
  KVM_CLOCK_REALTIME, KVM_IOAPIC_NUM_PINS, KVM_MAX_XCRS, KVM_VCPUEVENT_VALID_NMI_PENDING,
  KVM_VCPUEVENT_VALID_PAYLOAD, KVM_VCPUEVENT_VALID_SHADOW, KVM_VCPUEVENT_VALID_SIPI_VECTOR,
  KVM_VCPUEVENT_VALID_SMM, KVM_VCPUEVENT_VALID_TRIPLE_FAULT, layout,
} from './abi.js';

const R = layout.kvm_regs;
const SEG = layout.kvm_segment;
const DT = layout.kvm_dtable;
const SR = layout.kvm_sregs;
const FPU = layout.kvm_fpu;
const MSR = layout.kvm_msr_entry;
const CPUID = layout.kvm_cpuid_entry2;

const REG_NAMES = [
  'rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rsp', 'rbp',
  'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15', 'rip', 'rflags',
] as const;

export function decodeRegs(dv: DataView): StandardRegisters {
  const r = {} as StandardRegisters;
  for (const n of REG_NAMES) r[n] = dv.getBigUint64(R[n], true);
  return r;
}

export function encodeRegs(dv: DataView, regs: StandardRegisters): void {
  for (const n of REG_NAMES) dv.setBigUint64(R[n], BigInt.asUintN(64, regs[n]), true);
}

function decodeSegment(dv: DataView, o: number): SegmentRegister {
  return {
    base: dv.getBigUint64(o + SEG.base, true),
    limit: dv.getUint32(o + SEG.limit, true),
    selector: dv.getUint16(o + SEG.selector, true),
    type: dv.getUint8(o + SEG.type),
    present: dv.getUint8(o + SEG.present),
    dpl: dv.getUint8(o + SEG.dpl),
    db: dv.getUint8(o + SEG.db),
    s: dv.getUint8(o + SEG.s),
    l: dv.getUint8(o + SEG.l),
    g: dv.getUint8(o + SEG.g),
    avl: dv.getUint8(o + SEG.avl),
    unusable: dv.getUint8(o + SEG.unusable),
  };
}

function encodeSegment(dv: DataView, o: number, s: SegmentRegister): void {
  dv.setBigUint64(o + SEG.base, BigInt.asUintN(64, s.base), true);
  dv.setUint32(o + SEG.limit, s.limit >>> 0, true);
  dv.setUint16(o + SEG.selector, s.selector, true);
  dv.setUint8(o + SEG.type, s.type);
  dv.setUint8(o + SEG.present, s.present);
  dv.setUint8(o + SEG.dpl, s.dpl);
  dv.setUint8(o + SEG.db, s.db);
  dv.setUint8(o + SEG.s, s.s);
  dv.setUint8(o + SEG.l, s.l);
  dv.setUint8(o + SEG.g, s.g);
  dv.setUint8(o + SEG.avl, s.avl);
  dv.setUint8(o + SEG.unusable, s.unusable);
  dv.setUint8(o + SEG.padding, 0);
}

function decodeDtable(dv: DataView, o: number): DescriptorTable {
  return { base: dv.getBigUint64(o + DT.base, true), limit: dv.getUint16(o + DT.limit, true) };
}

function encodeDtable(dv: DataView, o: number, t: DescriptorTable): void {
  dv.setBigUint64(o + DT.base, BigInt.asUintN(64, t.base), true);
  dv.setUint16(o + DT.limit, t.limit, true);
  for (let i = 0; i < 6; i++) dv.setUint8(o + DT.padding + i, 0);
}

const SEGS = ['cs', 'ds', 'es', 'fs', 'gs', 'ss', 'tr', 'ldt'] as const;
const CRS = ['cr0', 'cr2', 'cr3', 'cr4', 'cr8', 'efer'] as const;

export function decodeSregs(dv: DataView): SpecialRegisters {
  const s = {} as SpecialRegisters;
  for (const n of SEGS) s[n] = decodeSegment(dv, SR[n]);
  s.gdt = decodeDtable(dv, SR.gdt);
  s.idt = decodeDtable(dv, SR.idt);
  for (const n of CRS) s[n] = dv.getBigUint64(SR[n], true);
  s.apicBase = dv.getBigUint64(SR.apic_base, true);
  const ib = SR.interrupt_bitmap;
  s.interruptBitmap = [
    dv.getBigUint64(ib, true), dv.getBigUint64(ib + 8, true),
    dv.getBigUint64(ib + 16, true), dv.getBigUint64(ib + 24, true),
  ];
  return s;
}

export function encodeSregs(dv: DataView, s: SpecialRegisters): void {
  for (const n of SEGS) encodeSegment(dv, SR[n], s[n]);
  encodeDtable(dv, SR.gdt, s.gdt);
  encodeDtable(dv, SR.idt, s.idt);
  for (const n of CRS) dv.setBigUint64(SR[n], BigInt.asUintN(64, s[n]), true);
  dv.setBigUint64(SR.apic_base, BigInt.asUintN(64, s.apicBase), true);
  for (let i = 0; i < 4; i++) dv.setBigUint64(SR.interrupt_bitmap + i * 8, BigInt.asUintN(64, s.interruptBitmap[i]!), true);
}

export function decodeFpu(buf: Uint8Array): FpuState {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  return {
    fpr: buf.slice(FPU.fpr, FPU.fpr + 128),
    fcw: dv.getUint16(FPU.fcw, true),
    fsw: dv.getUint16(FPU.fsw, true),
    ftwx: dv.getUint8(FPU.ftwx),
    lastOpcode: dv.getUint16(FPU.last_opcode, true),
    lastIp: dv.getBigUint64(FPU.last_ip, true),
    lastDp: dv.getBigUint64(FPU.last_dp, true),
    xmm: buf.slice(FPU.xmm, FPU.xmm + 256),
    mxcsr: dv.getUint32(FPU.mxcsr, true),
  };
}

export function encodeFpu(buf: Uint8Array, f: FpuState): void {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  buf.fill(0);
  if (f.fpr.length > 128 || f.xmm.length > 256) throw new RangeError('FpuState: fpr must be <= 128 bytes, xmm <= 256 bytes');
  buf.set(f.fpr, FPU.fpr);
  dv.setUint16(FPU.fcw, f.fcw, true);
  dv.setUint16(FPU.fsw, f.fsw, true);
  dv.setUint8(FPU.ftwx, f.ftwx);
  dv.setUint16(FPU.last_opcode, f.lastOpcode, true);
  dv.setBigUint64(FPU.last_ip, BigInt.asUintN(64, f.lastIp), true);
  dv.setBigUint64(FPU.last_dp, BigInt.asUintN(64, f.lastDp), true);
  buf.set(f.xmm, FPU.xmm);
  dv.setUint32(FPU.mxcsr, f.mxcsr >>> 0, true);
}

/** kvm_msrs with `n` entries (header + n * kvm_msr_entry). */
export function msrsBuffer(n: number): Uint8Array {
  const buf = new Uint8Array(layout.kvm_msrs.SIZE + n * MSR.SIZE);
  new DataView(buf.buffer).setUint32(layout.kvm_msrs.nmsrs, n, true);
  return buf;
}

export function encodeMsrEntry(dv: DataView, i: number, e: MsrEntry): void {
  const o = layout.kvm_msrs.entries + i * MSR.SIZE;
  dv.setUint32(o + MSR.index, e.index >>> 0, true);
  dv.setUint32(o + MSR.reserved, 0, true);
  dv.setBigUint64(o + MSR.data, BigInt.asUintN(64, e.data), true);
}

export function decodeMsrEntry(dv: DataView, i: number): MsrEntry {
  const o = layout.kvm_msrs.entries + i * MSR.SIZE;
  return { index: dv.getUint32(o + MSR.index, true), data: dv.getBigUint64(o + MSR.data, true) };
}

/** kvm_cpuid2 with room for `n` entries. */
export function cpuidBuffer(n: number): Uint8Array {
  const buf = new Uint8Array(layout.kvm_cpuid2.SIZE + n * CPUID.SIZE);
  new DataView(buf.buffer).setUint32(layout.kvm_cpuid2.nent, n, true);
  return buf;
}

export function encodeCpuid(entries: readonly CpuIdEntry[]): Uint8Array {
  const buf = cpuidBuffer(entries.length);
  const dv = new DataView(buf.buffer);
  entries.forEach((e, i) => {
    const o = layout.kvm_cpuid2.entries + i * CPUID.SIZE;
    dv.setUint32(o + CPUID.function, e.function >>> 0, true);
    dv.setUint32(o + CPUID.index, e.index >>> 0, true);
    dv.setUint32(o + CPUID.flags, e.flags >>> 0, true);
    dv.setUint32(o + CPUID.eax, e.eax >>> 0, true);
    dv.setUint32(o + CPUID.ebx, e.ebx >>> 0, true);
    dv.setUint32(o + CPUID.ecx, e.ecx >>> 0, true);
    dv.setUint32(o + CPUID.edx, e.edx >>> 0, true);
  });
  return buf;
}

export function decodeCpuid(buf: Uint8Array): CpuIdEntry[] {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const n = dv.getUint32(layout.kvm_cpuid2.nent, true);
  const out: CpuIdEntry[] = [];
  for (let i = 0; i < n; i++) {
    const o = layout.kvm_cpuid2.entries + i * CPUID.SIZE;
    out.push({
      function: dv.getUint32(o + CPUID.function, true),
      index: dv.getUint32(o + CPUID.index, true),
      flags: dv.getUint32(o + CPUID.flags, true),
      eax: dv.getUint32(o + CPUID.eax, true),
      ebx: dv.getUint32(o + CPUID.ebx, true),
      ecx: dv.getUint32(o + CPUID.ecx, true),
      edx: dv.getUint32(o + CPUID.edx, true),
    });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Saved-state structs (KVM API doc 4.31 vcpu events, 4.32 debugregs, 4.42 xcrs, 4.26 irqchip,
// 4.54 pit2, 4.55 clock).

const XCRS = layout.kvm_xcrs;
const XCR = layout.kvm_xcr;

export function decodeXcrs(dv: DataView): XcrEntry[] {
  const n = Math.min(dv.getUint32(XCRS.nr_xcrs, true), KVM_MAX_XCRS);
  const out: XcrEntry[] = [];
  for (let i = 0; i < n; i++) {
    const o = XCRS.xcrs + i * XCR.SIZE;
    out.push({ xcr: dv.getUint32(o + XCR.xcr, true), value: dv.getBigUint64(o + XCR.value, true) });
  }
  return out;
}

export function encodeXcrs(buf: Uint8Array, xcrs: readonly XcrEntry[]): void {
  if (xcrs.length > KVM_MAX_XCRS) throw new RangeError(`at most ${KVM_MAX_XCRS} XCRs, got ${xcrs.length}`);
  buf.fill(0);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  dv.setUint32(XCRS.nr_xcrs, xcrs.length, true);
  xcrs.forEach((x, i) => {
    const o = XCRS.xcrs + i * XCR.SIZE;
    dv.setUint32(o + XCR.xcr, x.xcr >>> 0, true);
    dv.setBigUint64(o + XCR.value, BigInt.asUintN(64, x.value), true);
  });
}

const DR = layout.kvm_debugregs;

export function decodeDebugRegs(dv: DataView): DebugRegisters {
  return {
    db: [0, 1, 2, 3].map((i) => dv.getBigUint64(DR.db + i * 8, true)) as DebugRegisters['db'],
    dr6: dv.getBigUint64(DR.dr6, true),
    dr7: dv.getBigUint64(DR.dr7, true),
  };
}

export function encodeDebugRegs(buf: Uint8Array, d: DebugRegisters): void {
  buf.fill(0);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  for (let i = 0; i < 4; i++) dv.setBigUint64(DR.db + i * 8, BigInt.asUintN(64, d.db[i]!), true);
  dv.setBigUint64(DR.dr6, BigInt.asUintN(64, d.dr6), true);
  dv.setBigUint64(DR.dr7, BigInt.asUintN(64, d.dr7), true);
}

const EV = layout.kvm_vcpu_events;

export function decodeVcpuEvents(dv: DataView): VcpuEvents {
  const flags = dv.getUint32(EV.flags, true);
  const u8 = (o: number): number => dv.getUint8(o);
  return {
    exception: {
      injected: u8(EV.exception.injected), nr: u8(EV.exception.nr), hasErrorCode: u8(EV.exception.has_error_code),
      pending: u8(EV.exception.pending), errorCode: dv.getUint32(EV.exception.error_code, true),
    },
    interrupt: { injected: u8(EV.interrupt.injected), nr: u8(EV.interrupt.nr), soft: u8(EV.interrupt.soft), shadow: u8(EV.interrupt.shadow) },
    nmi: { injected: u8(EV.nmi.injected), pending: u8(EV.nmi.pending), masked: u8(EV.nmi.masked) },
    sipiVector: dv.getUint32(EV.sipi_vector, true),
    smi: { smm: u8(EV.smi.smm), pending: u8(EV.smi.pending), smmInsideNmi: u8(EV.smi.smm_inside_nmi), latchedInit: u8(EV.smi.latched_init) },
    exceptionPayload: flags & KVM_VCPUEVENT_VALID_PAYLOAD
      ? { hasPayload: u8(EV.exception_has_payload), payload: dv.getBigUint64(EV.exception_payload, true) } : null,
    tripleFaultPending: flags & KVM_VCPUEVENT_VALID_TRIPLE_FAULT ? u8(EV.triple_fault.pending) : null,
  };
}

/**
 * kvm_vcpu_events for KVM_SET_VCPU_EVENTS: NMI pending, SIPI vector, interrupt shadow and SMM
 * are always restored; the exception payload and triple fault only where they were saved (the
 * VM must then have the capability enabled, as the source had).
 */
export function encodeVcpuEvents(buf: Uint8Array, e: VcpuEvents): void {
  buf.fill(0);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  let flags = KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR | KVM_VCPUEVENT_VALID_SHADOW | KVM_VCPUEVENT_VALID_SMM;
  dv.setUint8(EV.exception.injected, e.exception.injected);
  dv.setUint8(EV.exception.nr, e.exception.nr);
  dv.setUint8(EV.exception.has_error_code, e.exception.hasErrorCode);
  dv.setUint8(EV.exception.pending, e.exception.pending);
  dv.setUint32(EV.exception.error_code, e.exception.errorCode >>> 0, true);
  dv.setUint8(EV.interrupt.injected, e.interrupt.injected);
  dv.setUint8(EV.interrupt.nr, e.interrupt.nr);
  dv.setUint8(EV.interrupt.soft, e.interrupt.soft);
  dv.setUint8(EV.interrupt.shadow, e.interrupt.shadow);
  dv.setUint8(EV.nmi.injected, e.nmi.injected);
  dv.setUint8(EV.nmi.pending, e.nmi.pending);
  dv.setUint8(EV.nmi.masked, e.nmi.masked);
  dv.setUint32(EV.sipi_vector, e.sipiVector >>> 0, true);
  dv.setUint8(EV.smi.smm, e.smi.smm);
  dv.setUint8(EV.smi.pending, e.smi.pending);
  dv.setUint8(EV.smi.smm_inside_nmi, e.smi.smmInsideNmi);
  dv.setUint8(EV.smi.latched_init, e.smi.latchedInit);
  if (e.exceptionPayload !== null) {
    flags |= KVM_VCPUEVENT_VALID_PAYLOAD;
    dv.setUint8(EV.exception_has_payload, e.exceptionPayload.hasPayload);
    dv.setBigUint64(EV.exception_payload, BigInt.asUintN(64, e.exceptionPayload.payload), true);
  }
  if (e.tripleFaultPending !== null) {
    flags |= KVM_VCPUEVENT_VALID_TRIPLE_FAULT;
    dv.setUint8(EV.triple_fault.pending, e.tripleFaultPending);
  }
  dv.setUint32(EV.flags, flags, true);
}

const PIC = layout.kvm_pic_state;
const PIC_FIELDS = [
  ['lastIrr', PIC.last_irr], ['irr', PIC.irr], ['imr', PIC.imr], ['isr', PIC.isr], ['priorityAdd', PIC.priority_add],
  ['irqBase', PIC.irq_base], ['readRegSelect', PIC.read_reg_select], ['poll', PIC.poll], ['specialMask', PIC.special_mask],
  ['initState', PIC.init_state], ['autoEoi', PIC.auto_eoi], ['rotateOnAutoEoi', PIC.rotate_on_auto_eoi],
  ['specialFullyNestedMode', PIC.special_fully_nested_mode], ['init4', PIC.init4], ['elcr', PIC.elcr], ['elcrMask', PIC.elcr_mask],
] as const;

/** kvm_irqchip.chip as a PIC (o: offset of the chip union). */
export function decodePic(dv: DataView, o: number): PicState {
  const p = {} as PicState;
  for (const [k, off] of PIC_FIELDS) p[k] = dv.getUint8(o + off);
  return p;
}

export function encodePic(dv: DataView, o: number, p: PicState): void {
  for (const [k, off] of PIC_FIELDS) dv.setUint8(o + off, p[k]);
}

const IOA = layout.kvm_ioapic_state;

export function decodeIoapic(dv: DataView, o: number): IoapicState {
  const redirtbl: bigint[] = [];
  for (let i = 0; i < KVM_IOAPIC_NUM_PINS; i++) redirtbl.push(dv.getBigUint64(o + IOA.redirtbl + i * 8, true));
  return {
    baseAddress: dv.getBigUint64(o + IOA.base_address, true),
    ioregsel: dv.getUint32(o + IOA.ioregsel, true),
    id: dv.getUint32(o + IOA.id, true),
    irr: dv.getUint32(o + IOA.irr, true),
    redirtbl,
  };
}

export function encodeIoapic(dv: DataView, o: number, s: IoapicState): void {
  if (s.redirtbl.length !== KVM_IOAPIC_NUM_PINS) throw new RangeError(`IOAPIC state needs ${KVM_IOAPIC_NUM_PINS} redirection entries, got ${s.redirtbl.length}`);
  dv.setBigUint64(o + IOA.base_address, BigInt.asUintN(64, s.baseAddress), true);
  dv.setUint32(o + IOA.ioregsel, s.ioregsel >>> 0, true);
  dv.setUint32(o + IOA.id, s.id >>> 0, true);
  dv.setUint32(o + IOA.irr, s.irr >>> 0, true);
  dv.setUint32(o + IOA.pad, 0, true);
  for (let i = 0; i < KVM_IOAPIC_NUM_PINS; i++) dv.setBigUint64(o + IOA.redirtbl + i * 8, BigInt.asUintN(64, s.redirtbl[i]!), true);
}

const PITC = layout.kvm_pit_channel_state;
const PIT2 = layout.kvm_pit_state2;
const PITC_U8 = [
  ['countLatched', PITC.count_latched], ['statusLatched', PITC.status_latched], ['status', PITC.status],
  ['readState', PITC.read_state], ['writeState', PITC.write_state], ['writeLatch', PITC.write_latch],
  ['rwMode', PITC.rw_mode], ['mode', PITC.mode], ['bcd', PITC.bcd], ['gate', PITC.gate],
] as const;

export function decodePit(dv: DataView): PitState {
  const ch = (i: number): PitChannelState => {
    const o = PIT2.channels + i * PITC.SIZE;
    const c = {
      count: dv.getUint32(o + PITC.count, true),
      latchedCount: dv.getUint16(o + PITC.latched_count, true),
      countLoadTime: dv.getBigInt64(o + PITC.count_load_time, true),
    } as PitChannelState;
    for (const [k, off] of PITC_U8) c[k] = dv.getUint8(o + off);
    return c;
  };
  return { channels: [ch(0), ch(1), ch(2)], flags: dv.getUint32(PIT2.flags, true) };
}

export function encodePit(buf: Uint8Array, p: PitState): void {
  buf.fill(0);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  p.channels.forEach((c, i) => {
    const o = PIT2.channels + i * PITC.SIZE;
    dv.setUint32(o + PITC.count, c.count >>> 0, true);
    dv.setUint16(o + PITC.latched_count, c.latchedCount, true);
    dv.setBigInt64(o + PITC.count_load_time, BigInt.asIntN(64, c.countLoadTime), true);
    for (const [k, off] of PITC_U8) dv.setUint8(o + off, c[k]);
  });
  dv.setUint32(PIT2.flags, p.flags >>> 0, true);
}

const CLK = layout.kvm_clock_data;

export function decodeClock(dv: DataView): ClockState {
  const flags = dv.getUint32(CLK.flags, true);
  return {
    clock: dv.getBigUint64(CLK.clock, true),
    flags,
    realtime: flags & KVM_CLOCK_REALTIME ? dv.getBigUint64(CLK.realtime, true) : 0n,
  };
}

/**
 * kvm_clock_data for KVM_SET_CLOCK with no flags: KVM then makes kvmclock read `clock` now,
 * instead of advancing it by the host time since `realtime` (KVM_CLOCK_REALTIME would do that).
 */
export function encodeClock(buf: Uint8Array, c: ClockState): void {
  buf.fill(0);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  dv.setBigUint64(CLK.clock, BigInt.asUintN(64, c.clock), true);
}
