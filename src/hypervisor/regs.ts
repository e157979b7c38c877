// Architectural x86-64 vCPU state, independent of any hypervisor backend.
// Field names follow the Intel SDM / the KVM API structs they map onto
// (kvm_regs, kvm_sregs, kvm_segment, kvm_dtable, kvm_fpu, kvm_msr_entry, kvm_cpuid_entry2),
// so a backend (KVM now, MSHV later) converts them without guessing.
// 64-bit registers are bigint; 16/32-bit fields are number.

export interface StandardRegisters {
  rax: bigint; rbx: bigint; rcx: bigint; rdx: bigint;
  rsi: bigint; rdi: bigint; rsp: bigint; rbp: bigint;
  r8: bigint; r9: bigint; r10: bigint; r11: bigint;
  r12: bigint; r13: bigint; r14: bigint; r15: bigint;
  rip: bigint; rflags: bigint;
}

/** A segment register with its hidden descriptor cache (SDM Vol. 3, 3.4.3). */
export interface SegmentRegister {
  base: bigint;
  limit: number;
  selector: number;
  type: number;
  present: number;
  dpl: number;
  db: number;
  s: number;
  l: number;
  g: number;
  avl: number;
  unusable: number;
}

/** GDTR / IDTR. */
export interface DescriptorTable {
  base: bigint;
  limit: number;
}

export interface SpecialRegisters {
  cs: SegmentRegister; ds: SegmentRegister; es: SegmentRegister;
  fs: SegmentRegister; gs: SegmentRegister; ss: SegmentRegister;
  tr: SegmentRegister; ldt: SegmentRegister;
  gdt: DescriptorTable; idt: DescriptorTable;
  cr0: bigint; cr2: bigint; cr3: bigint; cr4: bigint; cr8: bigint;
  efer: bigint;
  apicBase: bigint;
  /** Pending external interrupt bitmap (256 bits as 4 x u64). */
  interruptBitmap: [bigint, bigint, bigint, bigint];
}

/** Legacy FXSAVE-area state the boot path needs (SDM Vol. 1, 10.5.1). */
export interface FpuState {
  /** x87 control word; 0x37f after FNINIT. */
  fcw: number;
  fsw: number;
  ftwx: number;
  lastOpcode: number;
  lastIp: bigint;
  lastDp: bigint;
  /** MXCSR; 0x1f80 at reset. */
  mxcsr: number;
  /** 8 x87 registers, 16 bytes each (128 bytes). */
  fpr: Uint8Array;
  /** 16 XMM registers, 16 bytes each (256 bytes). */
  xmm: Uint8Array;
}

export interface MsrEntry {
  index: number;
  data: bigint;
}

/** One CPUID leaf/subleaf result (mirrors kvm_cpuid_entry2). */
export interface CpuIdEntry {
  function: number;
  index: number;
  /** KVM_CPUID_FLAG_SIGNIFCANT_INDEX (1) when `index` selects a subleaf. */
  flags: number;
  eax: number;
  ebx: number;
  ecx: number;
  edx: number;
}

export function emptySegment(): SegmentRegister {
  return { base: 0n, limit: 0, selector: 0, type: 0, present: 0, dpl: 0, db: 0, s: 0, l: 0, g: 0, avl: 0, unusable: 0 };
}

// ---------------------------------------------------------------------------------------------
// Saved-state parts (snapshot/restore/migration). Architectural where x86 defines the state
// (SDM references), otherwise named after what the state means rather than a backend's struct.

/** XCR0.. (SDM Vol. 1, 13.3): the extended control registers XSETBV writes. */
export interface XcrEntry {
  xcr: number;
  value: bigint;
}

/** DR0-DR3, DR6, DR7 (SDM Vol. 3, 17.2). */
export interface DebugRegisters {
  db: [bigint, bigint, bigint, bigint];
  dr6: bigint;
  dr7: bigint;
}

/**
 * Events the vCPU has pending or is delivering: exceptions, interrupts, NMIs, SMIs, the
 * interrupt shadow (SDM Vol. 3, 6.x, 24.4.2). `exceptionPayload` (CR2/DR6 of a pending #PF/#DB)
 * and `tripleFaultPending` are null where the backend does not report them.
 */
export interface VcpuEvents {
  exception: { injected: number; nr: number; hasErrorCode: number; pending: number; errorCode: number };
  interrupt: { injected: number; nr: number; soft: number; shadow: number };
  nmi: { injected: number; pending: number; masked: number };
  sipiVector: number;
  smi: { smm: number; pending: number; smmInsideNmi: number; latchedInit: number };
  exceptionPayload: { hasPayload: number; payload: bigint } | null;
  tripleFaultPending: number | null;
}

/** Multiprocessor power state of a vCPU (wait-for-SIPI, halted, ...). */
export type MpState = 'runnable' | 'uninitialized' | 'init_received' | 'halted' | 'sipi_received';
export const MP_STATES: readonly MpState[] = ['runnable', 'uninitialized', 'init_received', 'halted', 'sipi_received'];

/** One 8259A PIC (8259A datasheet; field names as the in-kernel model's). */
export interface PicState {
  lastIrr: number; irr: number; imr: number; isr: number; priorityAdd: number; irqBase: number;
  readRegSelect: number; poll: number; specialMask: number; initState: number; autoEoi: number;
  rotateOnAutoEoi: number; specialFullyNestedMode: number; init4: number; elcr: number; elcrMask: number;
}

/** 82093AA I/O APIC: registers and the 24 redirection entries (raw 64-bit form). */
export interface IoapicState {
  baseAddress: bigint;
  ioregsel: number;
  id: number;
  irr: number;
  redirtbl: bigint[];
}

/** One 8254 PIT channel (8254 datasheet; the in-kernel model's latch/read state). */
export interface PitChannelState {
  count: number; latchedCount: number; countLatched: number; statusLatched: number; status: number;
  readState: number; writeState: number; writeLatch: number; rwMode: number; mode: number; bcd: number;
  gate: number;
  /** Host time the count was loaded (ns); informative only: a restore reloads the count now. */
  countLoadTime: bigint;
}

export interface PitState {
  channels: [PitChannelState, PitChannelState, PitChannelState];
  /** HPET legacy (bit 0), speaker data on (bit 1). */
  flags: number;
}

/** The guest's paravirtual clock (kvmclock): nanoseconds, and the host wall clock when read. */
export interface ClockState {
  clock: bigint;
  /** Backend flags as read (KVM: KVM_CLOCK_*); informative. */
  flags: number;
  /** Host CLOCK_REALTIME (ns) at the moment `clock` was read, 0n when not reported. */
  realtime: bigint;
}
