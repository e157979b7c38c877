// MSHV virtual processor: MSHV_RUN_VP and its intercept messages, registers through
// HvCallGet/SetVpRegisters (MSHV_ROOT_HVCALL on the VP fd), CPUID through
// HvCallRegisterInterceptResult.
//
// Exits keep the Vcpu contract of hypervisor.ts (KVM's semantics): an IoIn/MmioRead's data is
// what the guest reads when run() is called again. MSHV does not complete the instruction
// itself, so the next run() does it first: it writes the read value into the destination
// register (RAX for IN; the decoded register for an MMIO load, zero/sign-extended as the
// instruction says) and advances RIP by the instruction length, in one HvCallSetVpRegisters.

import { decodeMmio, emptyInsn, InsnOp } from '../../arch/x86_64/decoder.js';
import * as libc from '../../sys/libc.js';
import type { CpuIdEntry, DebugRegisters, FpuState, MpState, MsrEntry, SegmentRegister, SpecialRegisters, StandardRegisters, VcpuEvents, XcrEntry } from '../regs.js';
import { VcpuControl, VmExitKind } from '../hypervisor.js';
import type { HyperVSupport, Vcpu, VcpuExit, VcpuHandle, VcpuState, VmExit } from '../hypervisor.js';
import * as abi from './abi.js';
import { HvCaller } from './hvcall.js';
import { IOAPIC_ADDR, IOAPIC_LEN, UserspaceIoapic } from './ioapic.js';
import { decodeMessage, InterceptInfo } from './message.js';
import type { MshvSys } from './sys.js';
import { realSys } from './sys.js';

const L = abi.layout;
const GIN = L.hv_input_get_vp_registers;
const SIN = L.hv_input_set_vp_registers;
const RA = L.hv_register_assoc;

const GPR_NAMES = [
  abi.HV_X64_REGISTER_RAX, abi.HV_X64_REGISTER_RBX, abi.HV_X64_REGISTER_RCX, abi.HV_X64_REGISTER_RDX,
  abi.HV_X64_REGISTER_RSI, abi.HV_X64_REGISTER_RDI, abi.HV_X64_REGISTER_RSP, abi.HV_X64_REGISTER_RBP,
  abi.HV_X64_REGISTER_R8, abi.HV_X64_REGISTER_R9, abi.HV_X64_REGISTER_R10, abi.HV_X64_REGISTER_R11,
  abi.HV_X64_REGISTER_R12, abi.HV_X64_REGISTER_R13, abi.HV_X64_REGISTER_R14, abi.HV_X64_REGISTER_R15,
  abi.HV_X64_REGISTER_RIP, abi.HV_X64_REGISTER_RFLAGS,
] as const;
const GPR_KEYS = ['rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rsp', 'rbp', 'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15', 'rip', 'rflags'] as const;
const SEG_NAMES = [abi.HV_X64_REGISTER_CS, abi.HV_X64_REGISTER_DS, abi.HV_X64_REGISTER_ES, abi.HV_X64_REGISTER_FS,
  abi.HV_X64_REGISTER_GS, abi.HV_X64_REGISTER_SS, abi.HV_X64_REGISTER_TR, abi.HV_X64_REGISTER_LDTR] as const;
const SEG_KEYS = ['cs', 'ds', 'es', 'fs', 'gs', 'ss', 'tr', 'ldt'] as const;
const CTRL_NAMES = [abi.HV_X64_REGISTER_CR0, abi.HV_X64_REGISTER_CR2, abi.HV_X64_REGISTER_CR3, abi.HV_X64_REGISTER_CR4,
  abi.HV_X64_REGISTER_CR8, abi.HV_X64_REGISTER_EFER, abi.HV_X64_REGISTER_APIC_BASE] as const;
const CTRL_KEYS = ['cr0', 'cr2', 'cr3', 'cr4', 'cr8', 'efer', 'apicBase'] as const;

/** MSRs that are TLFS VP registers (HV_X64_REGISTER_* "Virtualized MSRs"). */
const MSR_REGISTERS = new Map<number, number>([
  [0x10, abi.HV_X64_REGISTER_TSC], [0xc0000080, abi.HV_X64_REGISTER_EFER], [0xc0000102, abi.HV_X64_REGISTER_KERNEL_GS_BASE],
  [0x1b, abi.HV_X64_REGISTER_APIC_BASE], [0x277, abi.HV_X64_REGISTER_PAT], [0x174, abi.HV_X64_REGISTER_SYSENTER_CS],
  [0x176, abi.HV_X64_REGISTER_SYSENTER_EIP], [0x175, abi.HV_X64_REGISTER_SYSENTER_ESP], [0xc0000081, abi.HV_X64_REGISTER_STAR],
  [0xc0000082, abi.HV_X64_REGISTER_LSTAR], [0xc0000083, abi.HV_X64_REGISTER_CSTAR], [0xc0000084, abi.HV_X64_REGISTER_SFMASK],
  [0x2ff, abi.HV_X64_REGISTER_MSR_MTRR_DEF_TYPE],
]);
/**
 * MSRs the hypervisor keeps for itself (no TLFS VP register): setMsrs leaves them as the
 * hypervisor sets them, getMsrs refuses them. IA32_MISC_ENABLE (0x1a0): fast strings are on.
 */
const MSRS_OWNED_BY_HYPERVISOR = new Set([0x1a0]);

/** x87/MMX and XMM registers in the order getFpu/setFpu pass them (TLFS "X64 Floating Point"). */
const FPU_NAMES: readonly number[] = [
  ...Array.from({ length: 8 }, (_, i) => abi.HV_X64_REGISTER_FP_MMX0 + i),
  ...Array.from({ length: 16 }, (_, i) => abi.HV_X64_REGISTER_XMM0 + i),
  abi.HV_X64_REGISTER_FP_CONTROL_STATUS, abi.HV_X64_REGISTER_XMM_CONTROL_STATUS,
];

/** What a VP needs to reach its partition's userspace IOAPIC from any thread. */
export interface IoapicLink {
  partitionFd: number;
  state: SharedArrayBuffer;
}

export interface MshvVcpuHandle extends VcpuHandle {
  ioapic?: IoapicLink;
}

const Pending = { None: 0, Rip: 1, IoIn: 2, MmioLoad: 3 } as const;

class MshvVcpuExit implements VcpuExit {
  kind: VmExitKind = VmExitKind.Unknown;
  reason = 0;
  port = 0;
  size = 0;
  count = 0;
  addr = 0;
  len = 0;
  data: Uint8Array = new Uint8Array(0);
  eventType = 0;
  msr = 0;
  hypercallCode = 0;
}

export class MshvVcpu implements Vcpu {
  readonly exit = new MshvVcpuExit();
  readonly info = new InterceptInfo();
  private readonly hv: HvCaller;
  private readonly runBuf = new Uint8Array(L.mshv_run_vp.SIZE);
  private readonly runDv = new DataView(this.runBuf.buffer);
  private readonly dataBuf = new Uint8Array(8);
  private readonly dataViews: Uint8Array[] = [];
  private readonly insn = emptyInsn();
  /** One register name for the single-register reads of the run loop (no allocation). */
  private readonly oneName: number[] = [0];
  private readonly controlSab: SharedArrayBuffer;
  private readonly control: Int32Array;
  private pending: number = Pending.None;
  private pendingRip = 0n;
  private pendingRax = 0n;
  /** A second register the completion writes (STOS: RDI), or 0. */
  private pendingExtraName = 0;
  private pendingExtraValue = 0n;
  private cpuid: CpuIdEntry[] = [];
  private readonly ioapic: UserspaceIoapic | null;
  private readonly ioapicLink: IoapicLink | undefined;
  private closed = false;

  constructor(readonly sys: MshvSys, readonly id: number, readonly fd: number, private readonly ownsFd: boolean, control?: SharedArrayBuffer, ioapic?: IoapicLink) {
    this.hv = new HvCaller(sys, fd);
    this.ioapicLink = ioapic;
    // The IOAPIC's MSI pushes use the partition fd; its interrupts go through this VP's fd.
    this.ioapic = ioapic ? new UserspaceIoapic(ioapic.state, sys, ioapic.partitionFd, this.hv) : null;
    for (let l = 0; l <= 8; l++) this.dataViews.push(this.dataBuf.subarray(0, l));
    this.controlSab = control ?? new SharedArrayBuffer(VcpuControl.Words * 4);
    this.control = new Int32Array(this.controlSab);
  }

  static fromHandle(h: VcpuHandle): MshvVcpu {
    if (h.backend !== 'mshv') throw new Error(`vCPU handle is for backend '${h.backend}', not 'mshv'`);
    const link = (h as MshvVcpuHandle).ioapic;
    return new MshvVcpu(realSys, h.id, h.fd, false, h.control, link);
  }

  handle(): MshvVcpuHandle {
    const h: MshvVcpuHandle = { backend: 'mshv', id: this.id, fd: this.fd, mmapSize: 0, runAddr: 0n, control: this.controlSab };
    if (this.ioapicLink) h.ioapic = this.ioapicLink;
    return h;
  }

  // -------------------------------------------------------------------------------------------
  // Registers (HvCallGetVpRegisters / HvCallSetVpRegisters, TLFS 7.x)

  /** Read `names` (rep hypercall); values are 16-byte hv_register_value each in the output page. */
  private getRegisters(names: readonly number[]): DataView {
    const h = this.hv;
    h.clearInput(GIN.SIZE + names.length * 4);
    h.in.setUint32(GIN.vp_index, this.id, true);
    for (let i = 0; i < names.length; i++) h.in.setUint32(GIN.names + i * 4, names[i]!, true);
    h.call(abi.HVCALL_GET_VP_REGISTERS, 'HvCallGetVpRegisters', GIN.SIZE + names.length * 4, names.length * 16, names.length);
    return h.out;
  }

  /** Start a set: returns the input page; fill `count` hv_register_assoc then call commitSet. */
  private beginSet(count: number): DataView {
    this.hv.clearInput(SIN.SIZE + count * RA.SIZE);
    this.hv.in.setUint32(SIN.vp_index, this.id, true);
    return this.hv.in;
  }

  private setAssoc64(i: number, name: number, value: bigint): void {
    const o = SIN.elements + i * RA.SIZE;
    this.hv.in.setUint32(o + RA.name, name, true);
    this.hv.in.setBigUint64(o + RA.value, BigInt.asUintN(64, value), true);
  }

  private commitSet(count: number): void {
    this.hv.call(abi.HVCALL_SET_VP_REGISTERS, 'HvCallSetVpRegisters', SIN.SIZE + count * RA.SIZE, 0, count);
  }

  getRegs(): StandardRegisters {
    const out = this.getRegisters(GPR_NAMES);
    const r = {} as Record<(typeof GPR_KEYS)[number], bigint>;
    GPR_KEYS.forEach((k, i) => { r[k] = out.getBigUint64(i * 16, true); });
    return r;
  }

  setRegs(regs: StandardRegisters): void {
    this.beginSet(GPR_NAMES.length);
    GPR_KEYS.forEach((k, i) => this.setAssoc64(i, GPR_NAMES[i]!, regs[k]));
    this.commitSet(GPR_NAMES.length);
  }

  getSregs(): SpecialRegisters {
    const names = [...SEG_NAMES, abi.HV_X64_REGISTER_GDTR, abi.HV_X64_REGISTER_IDTR, ...CTRL_NAMES];
    const out = this.getRegisters(names);
    const seg = (i: number): SegmentRegister => decodeSegment(out, i * 16);
    const S = L.hv_x64_table_register;
    const s: SpecialRegisters = {
      cs: seg(0), ds: seg(1), es: seg(2), fs: seg(3), gs: seg(4), ss: seg(5), tr: seg(6), ldt: seg(7),
      gdt: { base: out.getBigUint64(8 * 16 + S.base, true), limit: out.getUint16(8 * 16 + S.limit, true) },
      idt: { base: out.getBigUint64(9 * 16 + S.base, true), limit: out.getUint16(9 * 16 + S.limit, true) },
      cr0: 0n, cr2: 0n, cr3: 0n, cr4: 0n, cr8: 0n, efer: 0n, apicBase: 0n,
      interruptBitmap: [0n, 0n, 0n, 0n],
    };
    CTRL_KEYS.forEach((k, i) => { s[k] = out.getBigUint64((10 + i) * 16, true); });
    return s;
  }

  setSregs(s: SpecialRegisters): void {
    const n = SEG_NAMES.length + 2 + CTRL_NAMES.length;
    const dv = this.beginSet(n);
    SEG_KEYS.forEach((k, i) => {
      const o = SIN.elements + i * RA.SIZE;
      dv.setUint32(o + RA.name, SEG_NAMES[i]!, true);
      encodeSegment(dv, o + RA.value, s[k]);
    });
    [[abi.HV_X64_REGISTER_GDTR, s.gdt], [abi.HV_X64_REGISTER_IDTR, s.idt]].forEach(([name, t], j) => {
      const o = SIN.elements + (SEG_NAMES.length + j) * RA.SIZE;
      const tab = t as { base: bigint; limit: number };
      dv.setUint32(o + RA.name, name as number, true);
      dv.setUint16(o + RA.value + L.hv_x64_table_register.limit, tab.limit, true);
      dv.setBigUint64(o + RA.value + L.hv_x64_table_register.base, tab.base, true);
    });
    CTRL_KEYS.forEach((k, i) => this.setAssoc64(SEG_NAMES.length + 2 + i, CTRL_NAMES[i]!, s[k]));
    this.commitSet(n);
  }

  getFpu(): FpuState {
    const out = this.getRegisters(FPU_NAMES);
    const bytes = new Uint8Array(out.buffer, out.byteOffset, FPU_NAMES.length * 16);
    const fpr = bytes.slice(0, 128);
    const xmm = bytes.slice(128, 384);
    const F = L.hv_x64_fp_control_status_register;
    const X = L.hv_x64_xmm_control_status_register;
    const f = 24 * 16;
    const x = 25 * 16;
    return {
      fcw: out.getUint16(f + F.fp_control, true), fsw: out.getUint16(f + F.fp_status, true), ftwx: out.getUint8(f + F.fp_tag),
      lastOpcode: out.getUint16(f + F.last_fp_op, true), lastIp: out.getBigUint64(f + F.last_fp_rip, true),
      lastDp: out.getBigUint64(x + X.last_fp_rdp, true), mxcsr: out.getUint32(x + X.xmm_status_control, true), fpr, xmm,
    };
  }

  setFpu(fpu: FpuState): void {
    if (fpu.fpr.length !== 128 || fpu.xmm.length !== 256) throw new RangeError('FPU state: fpr must be 128 bytes and xmm 256');
    const dv = this.beginSet(FPU_NAMES.length);
    const u8 = new Uint8Array(dv.buffer, dv.byteOffset, dv.byteLength);
    FPU_NAMES.forEach((name, i) => dv.setUint32(SIN.elements + i * RA.SIZE + RA.name, name, true));
    const val = (i: number): number => SIN.elements + i * RA.SIZE + RA.value;
    for (let i = 0; i < 8; i++) u8.set(fpu.fpr.subarray(i * 16, i * 16 + 16), val(i));
    for (let i = 0; i < 16; i++) u8.set(fpu.xmm.subarray(i * 16, i * 16 + 16), val(8 + i));
    const F = L.hv_x64_fp_control_status_register;
    const X = L.hv_x64_xmm_control_status_register;
    dv.setUint16(val(24) + F.fp_control, fpu.fcw, true);
    dv.setUint16(val(24) + F.fp_status, fpu.fsw, true);
    dv.setUint8(val(24) + F.fp_tag, fpu.ftwx);
    dv.setUint16(val(24) + F.last_fp_op, fpu.lastOpcode, true);
    dv.setBigUint64(val(24) + F.last_fp_rip, fpu.lastIp, true);
    dv.setBigUint64(val(25) + X.last_fp_rdp, fpu.lastDp, true);
    dv.setUint32(val(25) + X.xmm_status_control, fpu.mxcsr >>> 0, true);
    dv.setUint32(val(25) + X.xmm_status_control_mask, 0, true); // as rust-vmm mshv-ioctls sets it
    this.commitSet(FPU_NAMES.length);
  }

  getMsrs(indices: readonly number[]): MsrEntry[] {
    const names = indices.map((i) => msrName(i));
    const out = this.getRegisters(names);
    return indices.map((index, i) => ({ index, data: out.getBigUint64(i * 16, true) }));
  }

  setMsrs(all: readonly MsrEntry[]): void {
    const entries = all.filter((e) => !MSRS_OWNED_BY_HYPERVISOR.has(e.index));
    if (entries.length === 0) return;
    const names = entries.map((e) => msrName(e.index));
    this.beginSet(entries.length);
    entries.forEach((e, i) => this.setAssoc64(i, names[i]!, e.data));
    this.commitSet(entries.length);
  }

  /**
   * CPUID through intercept results (HvCallRegisterInterceptResult, HV_INTERCEPT_TYPE_X64_CPUID):
   * the hypervisor answers the guest's CPUID itself with these values; each mask is the value
   * itself (the bits to override), and always_override makes a zero result stick too.
   */
  setCpuid2(entries: readonly CpuIdEntry[]): void {
    const I = L.hv_input_register_intercept_result;
    const C = L.hv_register_x64_cpuid_result_parameters;
    const h = this.hv;
    for (const e of entries) {
      h.clearInput(I.SIZE);
      h.in.setUint32(I.vp_index, this.id, true);
      h.in.setUint32(I.intercept_type, abi.HV_INTERCEPT_TYPE_X64_CPUID, true);
      const p = I.parameters;
      h.in.setUint32(p + C.input.eax, e.function >>> 0, true);
      h.in.setUint32(p + C.input.ecx, e.index >>> 0, true);
      h.in.setUint8(p + C.input.subleaf_specific, e.flags & 1);
      h.in.setUint8(p + C.input.always_override, 1);
      for (const [reg, v] of [['eax', e.eax], ['ebx', e.ebx], ['ecx', e.ecx], ['edx', e.edx]] as const) {
        h.in.setUint32(p + C.result[reg], v >>> 0, true);
        h.in.setUint32(p + C.result[`${reg}_mask`], v >>> 0, true);
      }
      h.call(abi.HVCALL_REGISTER_INTERCEPT_RESULT, `HvCallRegisterInterceptResult(cpuid 0x${e.function.toString(16)}.${e.index})`, I.SIZE);
    }
    this.cpuid = entries.map((e) => ({ ...e }));
  }

  /** What setCpuid2 registered (the hypervisor has no call to read results back). */
  getCpuid2(): CpuIdEntry[] {
    return this.cpuid.map((e) => ({ ...e }));
  }

  getLapic(): Uint8Array {
    throw new Error('MSHV backend: LAPIC state (MSHV_GET_VP_STATE LAPIC) is not implemented');
  }

  setLapic(_lapic: Uint8Array): void {
    throw new Error('MSHV backend: LAPIC state (MSHV_SET_VP_STATE LAPIC) is not implemented');
  }

  /**
   * kvm_hyperv is KVM's emulation of Hyper-V's guest interface. Under the Microsoft Hypervisor a
   * child partition gets the real one, through partition properties and synthetic processor
   * features: not implemented in this backend yet.
   */
  enableHyperV(): HyperVSupport {
    throw new Error('kvm_hyperv=on is not supported on the mshv backend (Hyper-V enlightenments for MSHV child partitions are not implemented); use --hypervisor kvm or leave kvm_hyperv off');
  }

  completeHypercall(_status: number): void {
    throw new Error('MSHV backend: no hypercall exits to complete (Hyper-V enlightenments are not supported on mshv)');
  }

  /** The hypervisor's LAPIC resets with LINT0 ExtINT / LINT1 NMI already (virtual wire). */
  setupLapicLints(): void {}

  nmi(): void {
    const I = L.hv_input_assert_virtual_interrupt;
    const h = this.hv;
    h.clearInput(I.SIZE);
    h.in.setUint32(I.control, abi.HV_X64_INTERRUPT_TYPE_NMI, true);
    h.in.setBigUint64(I.dest_addr, BigInt(this.id), true);
    h.call(abi.HVCALL_ASSERT_VIRTUAL_INTERRUPT, 'HvCallAssertVirtualInterrupt(NMI)', I.SIZE);
  }

  // -------------------------------------------------------------------------------------------
  // Run

  /** Finish the previous exit's instruction (see top) before entering the guest again. */
  private complete(): void {
    const p = this.pending;
    if (p === Pending.None) return;
    this.pending = Pending.None;
    if (p === Pending.Rip) {
      const n = this.pendingExtraName !== 0 ? 2 : 1;
      this.beginSet(n);
      this.setAssoc64(0, abi.HV_X64_REGISTER_RIP, this.pendingRip);
      if (n === 2) this.setAssoc64(1, this.pendingExtraName, this.pendingExtraValue);
      this.pendingExtraName = 0;
      this.commitSet(n);
      return;
    }
    const d = this.insn;
    let value = 0n;
    for (let i = this.exit.len - 1; i >= 0; i--) value = (value << 8n) | BigInt(this.dataBuf[i]!);
    let name: number;
    let newValue: bigint;
    if (p === Pending.IoIn) {
      // IN: AL/AX/EAX get the data; IN to EAX zeroes bits 63:32 (SDM Vol. 1 3.4.1.1).
      const size = this.exit.size;
      name = abi.HV_X64_REGISTER_RAX;
      newValue = size === 4 ? value : (this.pendingRax & ~((1n << BigInt(size * 8)) - 1n)) | value;
    } else {
      name = abi.HV_X64_GPR_BY_ENCODING[d.reg]!;
      if (d.op === InsnOp.LoadSignExtend) value = BigInt.asUintN(d.regSize * 8, BigInt.asIntN(d.size * 8, value));
      if (d.regSize >= 4) {
        newValue = value; // 32-bit destinations zero-extend into 64 (SDM Vol. 1 3.4.1.1)
      } else {
        this.oneName[0] = name;
        const old = this.getRegisters(this.oneName).getBigUint64(0, true);
        const shift = d.highByte ? 8n : 0n;
        const mask = ((1n << BigInt(d.regSize * 8)) - 1n) << shift;
        newValue = (old & ~mask) | ((value << shift) & mask);
      }
    }
    this.beginSet(2);
    this.setAssoc64(0, name, newValue);
    this.setAssoc64(1, abi.HV_X64_REGISTER_RIP, this.pendingRip);
    this.commitSet(2);
  }

  /**
   * Finish the exit run() last returned (RIP advance, the IN/MMIO-load register) without
   * entering the guest: the registers are then consistent for a snapshot.
   */
  completePendingExit(): void {
    this.complete();
  }

  run(): VmExitKind {
    const e = this.exit;
    for (;;) {
      this.complete();
      if (Atomics.load(this.control, VcpuControl.KickPending) !== 0) return (e.kind = VmExitKind.Intr);
      const r = this.sys.ioctlRaw(this.fd, abi.MSHV_RUN_VP, this.runBuf);
      if (r < 0) {
        if (r === -libc.EINTR || r === -libc.EAGAIN) return (e.kind = VmExitKind.Intr);
        throw new libc.SysError('ioctl(MSHV_RUN_VP)', -r);
      }
      const info = this.info;
      const type = decodeMessage(this.runDv, info);
      e.reason = type;
      switch (type) {
        case abi.HVMSG_X64_IO_PORT_INTERCEPT: {
          if (info.stringOp) throw new Error(`MSHV: string I/O (INS/OUTS) on port 0x${info.port.toString(16)} is not implemented`);
          const size = info.accessSize;
          if (size !== 1 && size !== 2 && size !== 4) throw new Error(`MSHV: I/O access size ${size} on port 0x${info.port.toString(16)}`);
          e.port = info.port;
          e.size = size;
          e.count = 1;
          e.len = size;
          e.data = this.dataViews[size]!;
          this.pendingRip = info.rip + BigInt(info.instructionLength);
          if (info.accessType === abi.HV_INTERCEPT_ACCESS_WRITE) {
            let v = info.rax;
            for (let i = 0; i < size; i++) { this.dataBuf[i] = Number(v & 0xffn); v >>= 8n; }
            this.pending = Pending.Rip;
            return (e.kind = VmExitKind.IoOut);
          }
          this.dataBuf.fill(0);
          this.pendingRax = info.rax;
          this.pending = Pending.IoIn;
          return (e.kind = VmExitKind.IoIn);
        }
        case abi.HVMSG_UNMAPPED_GPA:
        case abi.HVMSG_GPA_INTERCEPT: {
          const k = this.mmio(info);
          if (this.ioapic !== null && e.addr >= IOAPIC_ADDR && e.addr < IOAPIC_ADDR + IOAPIC_LEN) {
            // The IOAPIC is emulated here, not by the VMM's bus; complete() finishes it.
            if (k === VmExitKind.MmioRead) this.ioapic.mmioRead(e.addr - IOAPIC_ADDR, e.data);
            else this.ioapic.mmioWrite(e.addr - IOAPIC_ADDR, e.data);
            continue;
          }
          return k;
        }
        case abi.HVMSG_X64_HALT:
          return (e.kind = VmExitKind.Hlt);
        case abi.HVMSG_UNRECOVERABLE_EXCEPTION:
          // A triple fault (as KVM_EXIT_SHUTDOWN).
          return (e.kind = VmExitKind.Shutdown);
        case abi.HVMSG_X64_CPUID_INTERCEPT: {
          // Only with a CPUID intercept installed: answer with the hypervisor's defaults.
          this.beginSet(5);
          this.setAssoc64(0, abi.HV_X64_REGISTER_RAX, info.defaultRax);
          this.setAssoc64(1, abi.HV_X64_REGISTER_RBX, info.defaultRbx);
          this.setAssoc64(2, abi.HV_X64_REGISTER_RCX, info.defaultRcx);
          this.setAssoc64(3, abi.HV_X64_REGISTER_RDX, info.defaultRdx);
          this.setAssoc64(4, abi.HV_X64_REGISTER_RIP, info.rip + BigInt(info.instructionLength));
          this.commitSet(5);
          continue;
        }
        case abi.HVMSG_X64_APIC_EOI:
          // Level-triggered IOAPIC pins wait for this (Remote IRR).
          this.ioapic?.eoi(info.eoiVector);
          continue;
        default:
          return (e.kind = VmExitKind.Unknown);
      }
    }
  }

  private mmio(info: InterceptInfo): VmExitKind {
    const e = this.exit;
    const d = this.insn;
    const bytes = this.runBuf.subarray(info.insnOffset, info.insnOffset + info.insnCount);
    const err = decodeMmio(bytes, info.insnCount, d);
    if (err !== null) throw new Error(`MSHV: MMIO at GPA 0x${info.gpa.toString(16)} (rip 0x${info.rip.toString(16)}): ${err}`);
    if (d.op === InsnOp.Movs) throw new Error(`MSHV: MOVS on MMIO at GPA 0x${info.gpa.toString(16)} is not implemented`);
    if (d.rep) throw new Error(`MSHV: REP ${d.op === InsnOp.Stos ? 'STOS' : ''} on MMIO at GPA 0x${info.gpa.toString(16)} is not implemented`);
    e.addr = info.gpa;
    e.len = d.size;
    e.data = this.dataViews[d.size]!;
    this.pendingRip = info.rip + BigInt(d.length);
    if (!d.isWrite) {
      this.dataBuf.fill(0);
      this.pending = Pending.MmioLoad;
      return (e.kind = VmExitKind.MmioRead);
    }
    let v: bigint;
    if (d.op === InsnOp.Stos) {
      // STOS also moves RDI (EDI with 67) by the size, down when RFLAGS.DF (SDM Vol. 2B "STOS").
      this.oneName[0] = abi.HV_X64_REGISTER_RDI;
      const rdi = this.getRegisters(this.oneName).getBigUint64(0, true);
      const step = (info.rflags & 0x400n) !== 0n ? -BigInt(d.size) : BigInt(d.size);
      this.pendingExtraName = abi.HV_X64_REGISTER_RDI;
      this.pendingExtraValue = BigInt.asUintN(d.addrSize * 8, rdi + step);
    }
    if (d.op === InsnOp.StoreImm) v = d.imm;
    else {
      this.oneName[0] = abi.HV_X64_GPR_BY_ENCODING[d.reg]!;
      v = this.getRegisters(this.oneName).getBigUint64(0, true);
      if (d.highByte) v >>= 8n;
    }
    for (let i = 0; i < d.size; i++) { this.dataBuf[i] = Number(v & 0xffn); v >>= 8n; }
    this.pending = Pending.Rip;
    return (e.kind = VmExitKind.MmioWrite);
  }

  decodeExit(): VmExit {
    const e = this.exit;
    switch (e.kind) {
      case VmExitKind.IoIn: return { kind: 'IoIn', port: e.port, size: e.size, count: e.count, data: e.data };
      case VmExitKind.IoOut: return { kind: 'IoOut', port: e.port, size: e.size, count: e.count, data: e.data };
      case VmExitKind.MmioRead: return { kind: 'MmioRead', addr: e.addr, len: e.len, data: e.data };
      case VmExitKind.MmioWrite: return { kind: 'MmioWrite', addr: e.addr, len: e.len, data: e.data };
      case VmExitKind.Hlt: return { kind: 'Hlt' };
      case VmExitKind.Shutdown: return { kind: 'Shutdown' };
      case VmExitKind.Intr: return { kind: 'Intr' };
      default: return { kind: 'Unknown', reason: e.reason, hardwareExitReason: 0n };
    }
  }

  /**
   * Flags a kick: the next run() returns Intr before entering the guest. A VP already inside
   * MSHV_RUN_VP is not interrupted (MSHV has no KVM_SET_SIGNAL_MASK/immediate_exit; a signal
   * handler is not available to Node), so it returns at its next intercept.
   */
  kick(): void {
    Atomics.store(this.control, VcpuControl.KickPending, 1);
  }

  takeKick(): boolean {
    return Atomics.exchange(this.control, VcpuControl.KickPending, 0) !== 0;
  }

  // -------------------------------------------------------------------------------------------
  // Saved state (snapshots): not implemented on MSHV yet (MSHV_GET/SET_VP_STATE and the
  // register-name lists of TLFS "Virtual Processor Register Names"). Each says so by name.
  getXsave(): Uint8Array | null { return unsupportedState('XSAVE'); }
  setXsave(_xsave: Uint8Array): void { unsupportedState('XSAVE'); }
  getXcrs(): XcrEntry[] { return unsupportedState('XCRs'); }
  setXcrs(_xcrs: readonly XcrEntry[]): void { unsupportedState('XCRs'); }
  getVcpuEvents(): VcpuEvents { return unsupportedState('pending events'); }
  setVcpuEvents(_events: VcpuEvents): void { unsupportedState('pending events'); }
  getMpState(): MpState { return unsupportedState('MP state'); }
  setMpState(_state: MpState): void { unsupportedState('MP state'); }
  getDebugRegs(): DebugRegisters { return unsupportedState('debug registers'); }
  setDebugRegs(_regs: DebugRegisters): void { unsupportedState('debug registers'); }
  getTscKhz(): number { return unsupportedState('TSC frequency'); }
  setTscKhz(_khz: number): void { unsupportedState('TSC frequency'); }
  stateMsrIndices(): number[] { return unsupportedState('MSR list'); }
  getState(): VcpuState { return unsupportedState('vCPU state'); }
  setState(_state: VcpuState): void { unsupportedState('vCPU state'); }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.hv.close();
    if (this.ownsFd) this.sys.close(this.fd);
  }
}

function msrName(index: number): number {
  const n = MSR_REGISTERS.get(index);
  if (n === undefined) throw new Error(`MSHV backend: MSR 0x${index.toString(16)} has no TLFS register name here`);
  return n;
}

/** hv_x64_segment_register.attributes: type:4 s:1 dpl:2 p:1 rsvd:4 avl:1 l:1 db:1 g:1 (SDM 3.4.5). */
function decodeSegment(dv: DataView, o: number): SegmentRegister {
  const S = L.hv_x64_segment_register;
  const a = dv.getUint16(o + S.attributes, true);
  return {
    base: dv.getBigUint64(o + S.base, true), limit: dv.getUint32(o + S.limit, true), selector: dv.getUint16(o + S.selector, true),
    type: a & 0xf, s: (a >> 4) & 1, dpl: (a >> 5) & 3, present: (a >> 7) & 1, avl: (a >> 12) & 1, l: (a >> 13) & 1,
    db: (a >> 14) & 1, g: (a >> 15) & 1, unusable: (a >> 7) & 1 ? 0 : 1,
  };
}

function encodeSegment(dv: DataView, o: number, s: SegmentRegister): void {
  const S = L.hv_x64_segment_register;
  dv.setBigUint64(o + S.base, s.base, true);
  dv.setUint32(o + S.limit, s.limit >>> 0, true);
  dv.setUint16(o + S.selector, s.selector, true);
  const present = s.unusable ? 0 : s.present;
  dv.setUint16(o + S.attributes, (s.type & 0xf) | ((s.s & 1) << 4) | ((s.dpl & 3) << 5) | ((present & 1) << 7) |
    ((s.avl & 1) << 12) | ((s.l & 1) << 13) | ((s.db & 1) << 14) | ((s.g & 1) << 15), true);
}

/** Snapshot state parts the MSHV backend cannot save or restore yet. */
export function unsupportedState(what: string): never {
  throw new Error(`MSHV backend: saving and restoring ${what} (for snapshots) is not implemented`);
}
