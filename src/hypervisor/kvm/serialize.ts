// Conversions between regs.ts types and KVM structs, through DataView on caller-provided buffers.
// Offsets come from abi.ts `layout` (checked against <linux/kvm.h>).

import type {
  CpuIdEntry, DescriptorTable, FpuState, MsrEntry, SegmentRegister, SpecialRegisters, StandardRegisters,
} from '../regs.js';
import { layout } from './abi.js';

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
