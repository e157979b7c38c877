// Backend-neutral hypervisor interface, shaped like Cloud Hypervisor's `hypervisor` crate:
// Hypervisor -> Vm -> Vcpu. Nothing here is KVM-specific; `src/hypervisor/kvm` implements it.
//
// Hot-path contract (vCPU run loop, zero allocation):
//   const kind = vcpu.run();            // a VmExitKind number
//   const e = vcpu.exit;                // the same preallocated object after every run()
//   switch (kind) {
//     case VmExitKind.IoOut:  bus.pioWrite(e.port, e.data); break;     // e.data: e.size*e.count bytes
//     case VmExitKind.IoIn:   bus.pioRead(e.port, e.data); break;      // fill e.data before next run()
//     case VmExitKind.MmioWrite: bus.mmioWrite(e.addr, e.data); break; // e.data: e.len bytes
//     case VmExitKind.MmioRead:  bus.mmioRead(e.addr, e.data); break;  // fill e.data before next run()
//     case VmExitKind.Intr: if (vcpu.takeKick()) pauseOrStop(); break;
//   }
// `e.data` is a Uint8Array over the shared vCPU run area, valid only until the next run();
// for IoIn/MmioRead the bytes written into it are what the guest reads when run() is called
// again (KVM API doc 4.10 / 5: "the data is copied back on the next KVM_RUN").
// `vcpu.decodeExit()` returns the same information as an allocated `VmExit` union for slow paths,
// logging and tests.
//
// Threads: a Vcpu may be run on any thread, one at a time. `vcpu.handle()` gives a plain,
// structured-cloneable object to post to a worker_thread, where the backend's `fromHandle(h)`
// rebuilds a Vcpu over the same kernel vCPU. `kickVcpu(h)`/`vcpu.kick()` from any thread makes
// a run() that is in progress (or the next one) return VmExitKind.Intr, and sets a flag in
// shared memory that the run loop consumes with `vcpu.takeKick()`.

import type {
  ClockState, CpuIdEntry, DebugRegisters, FpuState, IoapicState, MpState, MsrEntry, PicState, PitState,
  SpecialRegisters, StandardRegisters, VcpuEvents, XcrEntry,
} from './regs.js';

/**
 * Everything the guest can observe of one vCPU, for snapshot/restore/migration. Get it while
 * the vCPU is not in run() and its last exit is completed (see `Vcpu.completePendingExit`);
 * `state_json.ts` is its file form.
 */
export interface VcpuState {
  regs: StandardRegisters;
  sregs: SpecialRegisters;
  /** Legacy FXSAVE view; `xsave` supersedes it on restore where present. */
  fpu: FpuState;
  /** XSAVE area in standard format (SDM Vol. 1, 13.4), null when the backend has none. */
  xsave: Uint8Array | null;
  xcrs: XcrEntry[];
  /** Every MSR the guest can see, TSC first and TSC-deadline last (restore order). */
  msrs: MsrEntry[];
  /** Local APIC register page (1 KiB). */
  lapic: Uint8Array;
  events: VcpuEvents;
  mpState: MpState;
  debugRegs: DebugRegisters;
  /** The CPUID table the VMM set. */
  cpuid: CpuIdEntry[];
  /** TSC frequency of this vCPU in kHz (0: unknown). */
  tscKhz: number;
}

/** The VM-wide interrupt controllers and timers of the in-kernel x86 platform. */
export interface VmState {
  /** PIC master/slave and IOAPIC; null without an in-kernel irqchip. */
  irqchip: { picMaster: PicState; picSlave: PicState; ioapic: IoapicState } | null;
  /** In-kernel 8254; null without one. */
  pit: PitState | null;
  clock: ClockState;
  /** VM-wide default TSC frequency (kHz), null where the backend has none. */
  tscKhz: number | null;
}

/** What a run() returned. Numbers so the run loop can switch without allocating. */
export const VmExitKind = {
  Unknown: 0,
  IoIn: 1,
  IoOut: 2,
  MmioRead: 3,
  MmioWrite: 4,
  Hlt: 5,
  Shutdown: 6,
  SystemEvent: 7,
  /** run() was interrupted (kick, signal, immediate_exit) before or during guest execution. */
  Intr: 8,
  FailEntry: 9,
  InternalError: 10,
  IrqWindowOpen: 11,
  Debug: 12,
  Exception: 13,
  /** Hyper-V SynIC MSR write (SCONTROL, SIEFP, SIMP): `e.msr` says which. See enableHyperV. */
  HypervSynic: 14,
  /** A Hyper-V hypercall the hypervisor left to the VMM: `e.hypercallCode`; answer with completeHypercall. */
  HypervHcall: 15,
} as const;
export type VmExitKind = (typeof VmExitKind)[keyof typeof VmExitKind];

export const VmExitKindName: readonly string[] = [
  'Unknown', 'IoIn', 'IoOut', 'MmioRead', 'MmioWrite', 'Hlt', 'Shutdown', 'SystemEvent', 'Intr',
  'FailEntry', 'InternalError', 'IrqWindowOpen', 'Debug', 'Exception', 'HypervSynic', 'HypervHcall',
];

export type SystemEventType = 'shutdown' | 'reset' | 'crash' | 'wakeup' | 'suspend' | 'unknown';

/**
 * Preallocated exit details, rewritten by every run(). Only the fields of the current `kind`
 * are meaningful.
 */
export interface VcpuExit {
  kind: VmExitKind;
  /** Backend's raw exit reason (KVM: kvm_run.exit_reason). */
  reason: number;
  /** IoIn/IoOut: port number, access size (1/2/4) and repeat count (string I/O). */
  port: number;
  size: number;
  count: number;
  /** MmioRead/MmioWrite: guest-physical address (always < 2^52, so a safe integer) and length. */
  addr: number;
  len: number;
  /** IoIn/IoOut: size*count bytes; MmioRead/MmioWrite: len bytes. See the contract above. */
  data: Uint8Array;
  /** SystemEvent: the backend's raw event type (KVM_SYSTEM_EVENT_*). */
  eventType: number;
  /** HypervSynic: the SynIC MSR the guest wrote. */
  msr: number;
  /** HypervHcall: the call code, bits 15:0 of the hypercall input value (TLFS 3.7). */
  hypercallCode: number;
}

/** The allocated, self-describing form of an exit (vcpu.decodeExit()). */
export type VmExit =
  | { kind: 'IoIn'; port: number; size: number; count: number; data: Uint8Array }
  | { kind: 'IoOut'; port: number; size: number; count: number; data: Uint8Array }
  | { kind: 'MmioRead'; addr: number; len: number; data: Uint8Array }
  | { kind: 'MmioWrite'; addr: number; len: number; data: Uint8Array }
  | { kind: 'Hlt' }
  | { kind: 'Shutdown' }
  | { kind: 'SystemEvent'; type: SystemEventType; rawType: number; data: bigint[] }
  | { kind: 'Intr' }
  | { kind: 'FailEntry'; hardwareEntryFailureReason: bigint; cpu: number }
  | { kind: 'InternalError'; suberror: number; data: bigint[] }
  | { kind: 'IrqWindowOpen' }
  | { kind: 'Debug' }
  | { kind: 'Exception'; exception: number; errorCode: number }
  | { kind: 'HypervSynic'; msr: number; control: bigint; evtPage: bigint; msgPage: bigint }
  | { kind: 'HypervHcall'; input: bigint; params: [bigint, bigint] }
  | { kind: 'Unknown'; reason: number; hardwareExitReason: bigint };

export interface UserMemoryRegion {
  slot: number;
  guestPhysAddr: bigint;
  /** Bytes; a multiple of the page size. 0 deletes the slot. */
  memorySize: bigint | number;
  /** Host virtual address of the backing mapping (libc.mmap result). */
  userspaceAddr: bigint;
  readonly?: boolean;
  logDirtyPages?: boolean;
}

export type IoEventAddress = { space: 'pio'; addr: number } | { space: 'mmio'; addr: bigint | number };

export interface IoEventOptions {
  /** Only signal when the guest writes exactly this value with this width. */
  datamatch?: { value: bigint | number; len: 1 | 2 | 4 | 8 } | null;
  /** Access length to match when there is no datamatch; 0 (default) matches any length. */
  len?: 0 | 1 | 2 | 4 | 8;
}

export type IrqRoute =
  | { gsi: number; kind: 'msi'; addressLo: number; addressHi: number; data: number; devid?: number }
  | { gsi: number; kind: 'irqchip'; irqchip: number; pin: number };

export interface MsiMessage {
  addressLo: number;
  addressHi: number;
  data: number;
  devid?: number;
}

/** A structured-cloneable description of a vCPU, to rebuild it in another thread. */
export interface VcpuHandle {
  backend: string;
  id: number;
  fd: number;
  mmapSize: number;
  /** Address of the creator's run-area mapping (used by kickers to set immediate_exit). */
  runAddr: bigint;
  /** Shared control words, see `VcpuControl`. */
  control: SharedArrayBuffer;
}

/** Int32 indices into VcpuHandle.control. */
export const VcpuControl = {
  /** Kernel thread id currently bound to run this vCPU (0: none yet). */
  Tid: 0,
  /** Non-zero when a kick was requested and not yet consumed by takeKick(). */
  KickPending: 1,
  /** Signal number used to kick the thread (0: signals not available, immediate_exit only). */
  KickSignal: 2,
  Words: 4,
} as const;

export interface HypervisorCapabilities {
  irqchip: boolean;
  splitIrqchip: boolean;
  irqfd: boolean;
  irqfdResample: boolean;
  ioeventfd: boolean;
  ioeventfdAnyLength: boolean;
  irqRouting: boolean;
  signalMsi: boolean;
  msiDevid: boolean;
  immediateExit: boolean;
  maxVcpus: number;
  maxMemslots: number;
  x2apicApi: boolean;
  tscDeadlineTimer: boolean;
}

/** What `Vcpu.enableHyperV` turned on. */
export interface HyperVSupport {
  /**
   * The Hyper-V CPUID leaves (0x40000000..) the hypervisor can emulate, as it reports them
   * (KVM_GET_SUPPORTED_HV_CPUID); src/arch/x86_64/hyperv.ts makes the guest's leaves of them.
   */
  cpuid: CpuIdEntry[];
  /** The synthetic interrupt controller is on for this vCPU (SynIC MSRs, timers, messages). */
  synic: boolean;
}

export interface Hypervisor {
  readonly backend: string;
  /** Throws an Error naming every missing capability the VMM needs. */
  checkRequiredExtensions(): void;
  capabilities(): HypervisorCapabilities;
  createVm(): Vm;
  getSupportedCpuid(): CpuIdEntry[];
  getMsrIndexList(): number[];
  close(): void;
}

/**
 * A structured-cloneable description of a VM, to drive its interrupt routing and I/O event
 * registration from another thread (the VMM's device thread). The rebuilt Vm does not own the VM.
 */
export interface VmHandle {
  backend: string;
  fd: number;
}

export interface Vm {
  /** A handle for `vmFromHandle` in another thread. */
  handle(): VmHandle;
  setUserMemoryRegion(region: UserMemoryRegion): void;
  removeUserMemoryRegion(slot: number): void;
  createVcpu(id: number): Vcpu;
  /** Full in-kernel irqchip: PIC + IOAPIC + LAPICs (x86). */
  createIrqChip(): void;
  /** LAPICs in kernel, PIC/IOAPIC in userspace; `ioapicPins` routes reserved for the IOAPIC. */
  createSplitIrqChip(ioapicPins: number): void;
  /** In-kernel i8254 PIT (requires createIrqChip first). */
  createPit(): void;
  setTssAddress(addr: number): void;
  setIdentityMapAddress(addr: bigint | number): void;
  /** Drive an irqchip input line (GSI) high or low. */
  setIrqLine(gsi: number, active: boolean): void;
  registerIrqfd(fd: number, gsi: number, resampleFd?: number): void;
  unregisterIrqfd(fd: number, gsi: number): void;
  registerIoevent(fd: number, addr: IoEventAddress, opts?: IoEventOptions): void;
  unregisterIoevent(fd: number, addr: IoEventAddress, opts?: IoEventOptions): void;
  /** Replace the whole GSI routing table (KVM_SET_GSI_ROUTING semantics). */
  setGsiRouting(routes: readonly IrqRoute[]): void;
  /** Inject one MSI; returns >0 delivered, 0 blocked by the guest. */
  signalMsi(msi: MsiMessage): number;

  // Saved state (snapshot/restore). Restore into a fresh VM after createIrqChip()/createPit(),
  // and after every vCPU's setState: the clock is set last, so guest time goes on from the
  // value saved (it does not jump by the time the VM was stopped).
  getIrqchip(): NonNullable<VmState['irqchip']>;
  setIrqchip(chip: NonNullable<VmState['irqchip']>): void;
  getPit(): PitState;
  setPit(pit: PitState): void;
  getClock(): ClockState;
  /** Make the guest's clock read `clock.clock` now. */
  setClock(clock: ClockState): void;
  /** Everything in VmState; parts the VM lacks (no irqchip, no PIT) are null. */
  getState(): VmState;
  /** PIT, irqchip, TSC frequency, clock, in that order; a part the VM lacks is an error naming it. */
  setState(state: VmState): void;
  close(): void;
}

export interface Vcpu {
  readonly id: number;
  /** Preallocated exit details; see the contract at the top of this file. */
  readonly exit: VcpuExit;
  /** Enter the guest until the next exit. Throws on errors other than interruption. */
  run(): VmExitKind;
  /** The last exit as an allocated VmExit (slow paths, logging, tests). */
  decodeExit(): VmExit;
  getRegs(): StandardRegisters;
  setRegs(regs: StandardRegisters): void;
  getSregs(): SpecialRegisters;
  setSregs(sregs: SpecialRegisters): void;
  getFpu(): FpuState;
  setFpu(fpu: FpuState): void;
  getMsrs(indices: readonly number[]): MsrEntry[];
  /** Throws if the backend accepts fewer entries than given (naming the first rejected MSR). */
  setMsrs(entries: readonly MsrEntry[]): void;
  setCpuid2(entries: readonly CpuIdEntry[]): void;
  getCpuid2(): CpuIdEntry[];
  /** Local APIC register page (1 KiB, APIC register layout, SDM Vol. 3 Table 11-1). */
  getLapic(): Uint8Array;
  setLapic(lapic: Uint8Array): void;
  /** LINT0 = ExtINT (legacy PIC), LINT1 = NMI, as the MP spec virtual-wire mode expects. */
  setupLapicLints(): void;
  /** Inject an NMI. */
  nmi(): void;
  /**
   * Turn on the hypervisor's emulation of Hyper-V's guest interface (TLFS) for this vCPU and
   * say what it supports. Call after the irqchip exists and before setCpuid2, whose table must
   * then carry Hyper-V's leaves (the hypervisor enables its Hyper-V MSRs and hypercalls from
   * CPUID 0x40000001 = "Hv#1"). Throws, naming what is missing, where the backend cannot.
   */
  enableHyperV(): HyperVSupport;
  /** Answer the HypervHcall exit run() last returned: the status (TLFS 3.10) goes to the guest's RAX. */
  completeHypercall(status: number): void;

  // Saved state. getState()/setState() do it all, in the order the KVM API doc and Cloud
  // Hypervisor/Firecracker use; the parts are here for tests and tools.
  getXsave(): Uint8Array | null;
  setXsave(xsave: Uint8Array): void;
  getXcrs(): XcrEntry[];
  setXcrs(xcrs: readonly XcrEntry[]): void;
  getVcpuEvents(): VcpuEvents;
  setVcpuEvents(events: VcpuEvents): void;
  getMpState(): MpState;
  setMpState(state: MpState): void;
  getDebugRegs(): DebugRegisters;
  setDebugRegs(regs: DebugRegisters): void;
  /** kHz; 0 when the backend cannot tell. */
  getTscKhz(): number;
  setTscKhz(khz: number): void;
  /** The MSR indices getState saves: the backend's list, filtered to those this vCPU can read. */
  stateMsrIndices(): number[];
  /**
   * Finish the exit run() last returned (an I/O or MMIO access is only complete, and the
   * registers consistent, after the next run(): KVM API doc 5, kvm_run) without running any
   * guest instruction. Call before getState when the vCPU stopped on an I/O exit.
   */
  completePendingExit(): void;
  getState(): VcpuState;
  /** Restore into a vCPU that has not run yet (KVM_SET_CPUID2 is refused afterwards). */
  setState(state: VcpuState): void;
  /** A structured-cloneable description to rebuild this vCPU in another thread. */
  handle(): VcpuHandle;
  /** Make the current/next run() return Intr (from any thread) and flag a pending kick. */
  kick(): void;
  /** Consume a pending kick: true if one was requested since the last call. */
  takeKick(): boolean;
  close(): void;
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by backends and the VMM

// Local APIC register offsets and LVT delivery modes (SDM Vol. 3, 11.5.1).
export const APIC_LVT_LINT0 = 0x350;
export const APIC_LVT_LINT1 = 0x360;
export const APIC_MODE_NMI = 0x4;
export const APIC_MODE_EXTINT = 0x7;

/** Set the delivery mode (bits 10:8) of an LVT register in a LAPIC register page. */
export function setLvtDeliveryMode(lapic: Uint8Array, reg: number, mode: number): void {
  const dv = new DataView(lapic.buffer, lapic.byteOffset, lapic.byteLength);
  const v = dv.getUint32(reg, true);
  dv.setUint32(reg, ((v & ~0x700) | (mode << 8)) >>> 0, true);
}

/** Little-endian value of `data` (1..6 bytes) as a number: the width of an I/O or MMIO access. */
export function readLe(data: Uint8Array): number {
  let v = 0;
  for (let i = data.length - 1; i >= 0; i--) v = v * 256 + data[i]!;
  return v;
}

/** Store `value` little-endian into all of `data` (1..6 bytes meaningful; higher bytes zeroed). */
export function writeLe(data: Uint8Array, value: number): void {
  for (let i = 0; i < data.length; i++) {
    data[i] = value % 256;
    value = Math.floor(value / 256);
  }
}
