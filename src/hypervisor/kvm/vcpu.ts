// KVM vCPU: KVM_RUN and the register ioctls (KVM API doc 4.10 ff.).
//
// Kicking a vCPU out of KVM_RUN from another thread (how QEMU's SIG_IPI works, without a
// userspace signal handler, which Node cannot provide safely):
//   * The running thread blocks KICK_SIGNAL with pthread_sigmask and gives KVM, through
//     KVM_SET_SIGNAL_MASK (KVM API doc 4.43), a mask where it is unblocked. KVM swaps that mask in
//     only for the duration of KVM_RUN, and saves the thread's own mask in real_blocked, so a
//     kick signal is queued (never ignored, never fatal) and KVM_RUN returns EINTR.
//   * Back in userspace the signal is blocked again, so no handler ever runs; run() consumes it
//     with sigtimedwait(0). If the kick lands while the thread is outside KVM_RUN it stays
//     pending and the next KVM_RUN returns EINTR at once: no lost wake-ups.
//   * The process-wide disposition is SIG_IGN, so a stray kick to a thread that does not block
//     it is dropped rather than killing the process.
//   * The kicker also sets kvm_run.immediate_exit (KVM_CAP_IMMEDIATE_EXIT) through its own
//     mapping of the run area, which covers a kick that races with signal setup.

import * as libc from '../../sys/libc.js';
import type {
  CpuIdEntry, DebugRegisters, FpuState, MpState, MsrEntry, SpecialRegisters, StandardRegisters, VcpuEvents, XcrEntry,
} from '../regs.js';
import { MP_STATES } from '../regs.js';
import {
  APIC_LVT_LINT0, APIC_LVT_LINT1, APIC_MODE_EXTINT, APIC_MODE_NMI, setLvtDeliveryMode,
  VcpuControl, VmExitKind,
} from '../hypervisor.js';
import type { HyperVSupport, SystemEventType, Vcpu, VcpuExit, VcpuHandle, VcpuState, VmExit } from '../hypervisor.js';
import * as abi from './abi.js';
import {
  decodeCpuid, decodeDebugRegs, decodeFpu, decodeMsrEntry, decodeRegs, decodeSregs, decodeVcpuEvents,
  decodeXcrs, encodeCpuid, encodeDebugRegs, encodeFpu, encodeMsrEntry, encodeRegs, encodeSregs,
  encodeVcpuEvents, encodeXcrs, msrsBuffer, cpuidBuffer,
} from './serialize.js';
import { readCpuidIoctl } from './cpuid_ioctl.js';
import {
  EXTRA_STATE_MSRS, MSRS_PER_IOCTL, orderStateMsrs, systemMsrIndexList, systemXsaveSize,
} from './msrs.js';

/** KVM_MP_STATE_* values in MpState order (KVM API doc 4.38). */
const MP_STATE_VALUES = [
  abi.KVM_MP_STATE_RUNNABLE, abi.KVM_MP_STATE_UNINITIALIZED, abi.KVM_MP_STATE_INIT_RECEIVED,
  abi.KVM_MP_STATE_HALTED, abi.KVM_MP_STATE_SIPI_RECEIVED,
];

/** Signal used to kick vCPU threads (glibc SIGRTMIN + 6; unused by Node/libuv/V8). */
export const KICK_SIGNAL = libc.SIGRTMIN + 6;

const RUN = abi.layout.kvm_run;
const EV_OFF = RUN.exit_reason;
/** kvm_run.system_event.data / internal.data: u64[16] right after type/suberror + ndata. */
const EVENT_DATA = RUN.system_event.data.OFFSET;
const HV = RUN.hyperv;

/** What a vCPU made by its VM can ask of the VM and /dev/kvm (absent in a vCPU rebuilt from a handle). */
export interface KvmVcpuOwner {
  checkExtension(cap: number): number;
  /** KVM_GET_SUPPORTED_HV_CPUID on /dev/kvm, null without KVM_CAP_SYS_HYPERV_CPUID. */
  sysHvCpuid(): CpuIdEntry[] | null;
}

class KvmVcpuExit implements VcpuExit {
  kind: VmExitKind = VmExitKind.Unknown;
  reason = 0;
  port = 0;
  size = 0;
  count = 0;
  addr = 0;
  len = 0;
  data: Uint8Array;
  eventType = 0;
  msr = 0;
  hypercallCode = 0;
  constructor(data: Uint8Array) {
    this.data = data;
  }
}

let processSignalSetUp = false;

export class KvmVcpu implements Vcpu {
  readonly id: number;
  readonly fd: number;
  readonly exit: KvmVcpuExit;
  private readonly mmapSize: number;
  private readonly runAddr: bigint;
  private readonly ownsFd: boolean;
  private readonly control: Int32Array;
  private readonly controlSab: SharedArrayBuffer;
  private readonly runU8: Uint8Array;
  private readonly runU16: Uint16Array;
  private readonly runU32: Uint32Array;
  private readonly runDv: DataView;
  /** Cached exact-size views of the PIO data area (index = size) at ioViewOffset. */
  private ioViews: Uint8Array[] = [];
  private ioViewOffset = -1;
  /** Exact-size views of kvm_run.mmio.data (index = len). */
  private readonly mmioViews: Uint8Array[] = [];
  private readonly emptyData = new Uint8Array(0);
  private boundTid = 0;
  private kickSet: Uint8Array | null = null;
  private closed = false;
  private readonly owner: KvmVcpuOwner | null;

  // Preallocated ioctl buffers.
  private readonly regsBuf = new Uint8Array(abi.layout.kvm_regs.SIZE);
  private readonly regsDv = new DataView(this.regsBuf.buffer);
  private readonly sregsBuf = new Uint8Array(abi.layout.kvm_sregs.SIZE);
  private readonly sregsDv = new DataView(this.sregsBuf.buffer);
  private readonly fpuBuf = new Uint8Array(abi.layout.kvm_fpu.SIZE);
  private readonly lapicBuf = new Uint8Array(abi.layout.kvm_lapic_state.SIZE);

  /** Use `KvmVm.createVcpu` or `KvmVcpu.fromHandle`. */
  constructor(id: number, fd: number, mmapSize: number, ownsFd: boolean, control?: SharedArrayBuffer, owner?: KvmVcpuOwner) {
    this.id = id;
    this.owner = owner ?? null;
    this.fd = fd;
    this.mmapSize = mmapSize;
    this.ownsFd = ownsFd;
    this.runAddr = libc.mmap(mmapSize, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED, fd, 0);
    const ab = libc.view(this.runAddr, mmapSize);
    this.runU8 = new Uint8Array(ab);
    this.runU16 = new Uint16Array(ab, 0, RUN.SIZE >> 1);
    this.runU32 = new Uint32Array(ab, 0, RUN.SIZE >> 2);
    this.runDv = new DataView(ab);
    for (let l = 0; l <= 8; l++) this.mmioViews.push(new Uint8Array(ab, RUN.mmio.data.OFFSET, l));
    this.exit = new KvmVcpuExit(this.emptyData);
    this.controlSab = control ?? new SharedArrayBuffer(VcpuControl.Words * 4);
    this.control = new Int32Array(this.controlSab);
  }

  /** Rebuild a vCPU from `handle()` in another thread. It does not own (close) the fd. */
  static fromHandle(h: VcpuHandle): KvmVcpu {
    if (h.backend !== 'kvm') throw new Error(`vCPU handle is for backend '${h.backend}', not 'kvm'`);
    return new KvmVcpu(h.id, h.fd, h.mmapSize, false, h.control);
  }

  handle(): VcpuHandle {
    return { backend: 'kvm', id: this.id, fd: this.fd, mmapSize: this.mmapSize, runAddr: this.runAddr, control: this.controlSab };
  }

  // -------------------------------------------------------------------------------------------
  // Run

  /** Make the calling thread the one that runs this vCPU: set up the kick signal (see top). */
  private bindThread(): void {
    const tid = libc.gettid();
    this.boundTid = tid;
    const set = libc.sigsetEmpty();
    libc.sigsetAdd(set, KICK_SIGNAL);
    try {
      if (!processSignalSetUp) {
        // Per-thread module state: harmless if several threads each do it once.
        libc.signalDisposition(KICK_SIGNAL, 'ignore');
        processSignalSetUp = true;
      }
      const old = libc.sigsetEmpty();
      libc.pthreadSigmask(libc.SIG_BLOCK, set, old);
      const mask = new Uint8Array(abi.layout.kvm_signal_mask.SIZE + libc.KERNEL_SIGSET_SIZE);
      new DataView(mask.buffer).setUint32(abi.layout.kvm_signal_mask.len, libc.KERNEL_SIGSET_SIZE, true);
      mask.set(old.subarray(0, libc.KERNEL_SIGSET_SIZE), abi.layout.kvm_signal_mask.sigset);
      libc.sigsetDel(mask.subarray(abi.layout.kvm_signal_mask.sigset), KICK_SIGNAL);
      libc.ioctl(this.fd, abi.KVM_SET_SIGNAL_MASK, mask, 'KVM_SET_SIGNAL_MASK');
      this.kickSet = set;
      Atomics.store(this.control, VcpuControl.KickSignal, KICK_SIGNAL);
    } catch {
      // Fall back to immediate_exit only (a kick then waits for the guest's next exit).
      this.kickSet = null;
      Atomics.store(this.control, VcpuControl.KickSignal, 0);
    }
    Atomics.store(this.control, VcpuControl.Tid, tid);
  }

  run(): VmExitKind {
    if (this.boundTid === 0) this.bindThread();
    const e = this.exit;
    const r = libc.ioctlRaw(this.fd, abi.KVM_RUN, 0);
    if (r < 0) {
      if (r === -libc.EINTR || r === -libc.EAGAIN) return this.interrupted();
      throw new libc.SysError('ioctl(KVM_RUN)', -r);
    }
    const u32 = this.runU32;
    const reason = u32[EV_OFF >> 2]!;
    e.reason = reason;
    switch (reason) {
      case abi.KVM_EXIT_IO: {
        const u8 = this.runU8;
        const size = u8[RUN.io.size]!;
        const count = u32[RUN.io.count >> 2]!;
        const off = u32[RUN.io.data_offset >> 2]!;
        e.port = this.runU16[RUN.io.port >> 1]!;
        e.size = size;
        e.count = count;
        if (count === 1 && off === this.ioViewOffset) e.data = this.ioViews[size]!;
        else e.data = this.ioData(off, size, count);
        return (e.kind = u8[RUN.io.direction] === abi.KVM_EXIT_IO_OUT ? VmExitKind.IoOut : VmExitKind.IoIn);
      }
      case abi.KVM_EXIT_MMIO: {
        const len = u32[RUN.mmio.len >> 2]!;
        e.addr = u32[RUN.mmio.phys_addr >> 2]! + u32[(RUN.mmio.phys_addr >> 2) + 1]! * 0x100000000;
        e.len = len;
        e.data = len <= 8 ? this.mmioViews[len]! : this.emptyData;
        return (e.kind = this.runU8[RUN.mmio.is_write] !== 0 ? VmExitKind.MmioWrite : VmExitKind.MmioRead);
      }
      case abi.KVM_EXIT_HLT:
        return (e.kind = VmExitKind.Hlt);
      case abi.KVM_EXIT_SHUTDOWN:
        return (e.kind = VmExitKind.Shutdown);
      case abi.KVM_EXIT_SYSTEM_EVENT:
        e.eventType = u32[RUN.system_event.type >> 2]!;
        return (e.kind = VmExitKind.SystemEvent);
      case abi.KVM_EXIT_INTR:
        return this.interrupted();
      case abi.KVM_EXIT_FAIL_ENTRY:
        return (e.kind = VmExitKind.FailEntry);
      case abi.KVM_EXIT_INTERNAL_ERROR:
        return (e.kind = VmExitKind.InternalError);
      case abi.KVM_EXIT_IRQ_WINDOW_OPEN:
        return (e.kind = VmExitKind.IrqWindowOpen);
      case abi.KVM_EXIT_DEBUG:
        return (e.kind = VmExitKind.Debug);
      case abi.KVM_EXIT_EXCEPTION:
        return (e.kind = VmExitKind.Exception);
      case abi.KVM_EXIT_HYPERV: {
        // KVM API doc 5, KVM_EXIT_HYPERV. SYNIC: the guest wrote SCONTROL, SIEFP or SIMP (KVM has
        // applied it; this only tells). SYNDBG, the synthetic debugger's MSRs, tells likewise
        // (msr at the same offset). HCALL: a hypercall KVM leaves to userspace; the result the
        // VMM stores goes to the guest's RAX on the next KVM_RUN.
        const type = u32[HV.type >> 2]!;
        if (type === abi.KVM_EXIT_HYPERV_HCALL) {
          e.hypercallCode = u32[HV.u.hcall.input >> 2]! & 0xffff;
          return (e.kind = VmExitKind.HypervHcall);
        }
        if (type === abi.KVM_EXIT_HYPERV_SYNIC || type === abi.KVM_EXIT_HYPERV_SYNDBG) {
          e.msr = u32[HV.u.synic.msr >> 2]!;
          return (e.kind = VmExitKind.HypervSynic);
        }
        return (e.kind = VmExitKind.Unknown);
      }
      default:
        return (e.kind = VmExitKind.Unknown);
    }
  }

  private ioData(off: number, size: number, count: number): Uint8Array {
    const bytes = size * count;
    if (off + bytes > this.mmapSize || size > 8) {
      throw new Error(`KVM_EXIT_IO data (offset ${off}, ${bytes} bytes) outside the ${this.mmapSize}-byte run area`);
    }
    if (off !== this.ioViewOffset) {
      const ab = this.runU8.buffer;
      this.ioViews = [];
      for (let s = 0; s <= 8; s++) this.ioViews.push(new Uint8Array(ab, off, s));
      this.ioViewOffset = off;
    }
    return count === 1 ? this.ioViews[size]! : new Uint8Array(this.runU8.buffer, off, bytes);
  }

  private interrupted(): VmExitKind {
    this.runU8[RUN.immediate_exit] = 0;
    if (this.kickSet !== null) libc.sigtimedwaitNow(this.kickSet);
    this.exit.reason = abi.KVM_EXIT_INTR;
    return (this.exit.kind = VmExitKind.Intr);
  }

  kick(): void {
    kickVcpuRaw(this.control, this.runU8);
  }

  takeKick(): boolean {
    return Atomics.exchange(this.control, VcpuControl.KickPending, 0) !== 0;
  }

  /** Request or clear the kvm_run.immediate_exit flag (KVM_CAP_IMMEDIATE_EXIT). */
  setImmediateExit(on: boolean): void {
    this.runU8[RUN.immediate_exit] = on ? 1 : 0;
  }

  /** Ask for a KVM_EXIT_IRQ_WINDOW_OPEN exit when the guest can take an interrupt. */
  setRequestInterruptWindow(on: boolean): void {
    this.runU8[RUN.request_interrupt_window] = on ? 1 : 0;
  }

  readyForInterruptInjection(): boolean {
    return this.runU8[RUN.ready_for_interrupt_injection] !== 0;
  }

  decodeExit(): VmExit {
    const e = this.exit;
    const dv = this.runDv;
    switch (e.kind) {
      case VmExitKind.IoIn:
      case VmExitKind.IoOut:
        return { kind: e.kind === VmExitKind.IoIn ? 'IoIn' : 'IoOut', port: e.port, size: e.size, count: e.count, data: e.data };
      case VmExitKind.MmioRead:
      case VmExitKind.MmioWrite:
        return { kind: e.kind === VmExitKind.MmioRead ? 'MmioRead' : 'MmioWrite', addr: e.addr, len: e.len, data: e.data };
      case VmExitKind.Hlt: return { kind: 'Hlt' };
      case VmExitKind.Shutdown: return { kind: 'Shutdown' };
      case VmExitKind.Intr: return { kind: 'Intr' };
      case VmExitKind.IrqWindowOpen: return { kind: 'IrqWindowOpen' };
      case VmExitKind.Debug: return { kind: 'Debug' };
      case VmExitKind.Exception:
        return { kind: 'Exception', exception: dv.getUint32(RUN.ex.exception, true), errorCode: dv.getUint32(RUN.ex.error_code, true) };
      case VmExitKind.SystemEvent: {
        const n = Math.min(dv.getUint32(RUN.system_event.ndata, true), 16);
        const data: bigint[] = [];
        for (let i = 0; i < n; i++) data.push(dv.getBigUint64(EVENT_DATA + i * 8, true));
        return { kind: 'SystemEvent', type: systemEventType(e.eventType), rawType: e.eventType, data };
      }
      case VmExitKind.HypervSynic:
        return {
          kind: 'HypervSynic', msr: dv.getUint32(HV.u.synic.msr, true), control: dv.getBigUint64(HV.u.synic.control, true),
          evtPage: dv.getBigUint64(HV.u.synic.evt_page, true), msgPage: dv.getBigUint64(HV.u.synic.msg_page, true),
        };
      case VmExitKind.HypervHcall:
        return {
          kind: 'HypervHcall', input: dv.getBigUint64(HV.u.hcall.input, true),
          params: [dv.getBigUint64(HV.u.hcall.params.OFFSET, true), dv.getBigUint64(HV.u.hcall.params.OFFSET + 8, true)],
        };
      case VmExitKind.FailEntry:
        return {
          kind: 'FailEntry',
          hardwareEntryFailureReason: dv.getBigUint64(RUN.fail_entry.hardware_entry_failure_reason, true),
          cpu: dv.getUint32(RUN.fail_entry.cpu, true),
        };
      case VmExitKind.InternalError: {
        const n = Math.min(dv.getUint32(RUN.internal.ndata, true), 16);
        const data: bigint[] = [];
        for (let i = 0; i < n; i++) data.push(dv.getBigUint64(EVENT_DATA + i * 8, true));
        return { kind: 'InternalError', suberror: dv.getUint32(RUN.internal.suberror, true), data };
      }
      default:
        return { kind: 'Unknown', reason: e.reason, hardwareExitReason: dv.getBigUint64(RUN.hw.hardware_exit_reason, true) };
    }
  }

  // -------------------------------------------------------------------------------------------
  // Registers and state

  getRegs(): StandardRegisters {
    libc.ioctl(this.fd, abi.KVM_GET_REGS, this.regsBuf, 'KVM_GET_REGS');
    return decodeRegs(this.regsDv);
  }

  setRegs(regs: StandardRegisters): void {
    encodeRegs(this.regsDv, regs);
    libc.ioctl(this.fd, abi.KVM_SET_REGS, this.regsBuf, 'KVM_SET_REGS');
  }

  getSregs(): SpecialRegisters {
    libc.ioctl(this.fd, abi.KVM_GET_SREGS, this.sregsBuf, 'KVM_GET_SREGS');
    return decodeSregs(this.sregsDv);
  }

  setSregs(sregs: SpecialRegisters): void {
    encodeSregs(this.sregsDv, sregs);
    libc.ioctl(this.fd, abi.KVM_SET_SREGS, this.sregsBuf, 'KVM_SET_SREGS');
  }

  getFpu(): FpuState {
    libc.ioctl(this.fd, abi.KVM_GET_FPU, this.fpuBuf, 'KVM_GET_FPU');
    return decodeFpu(this.fpuBuf);
  }

  setFpu(fpu: FpuState): void {
    encodeFpu(this.fpuBuf, fpu);
    libc.ioctl(this.fd, abi.KVM_SET_FPU, this.fpuBuf, 'KVM_SET_FPU');
  }

  getMsrs(indices: readonly number[]): MsrEntry[] {
    const out: MsrEntry[] = [];
    for (let at = 0; at < indices.length; at += MSRS_PER_IOCTL) {
      const chunk = indices.slice(at, at + MSRS_PER_IOCTL);
      const n = this.readMsrs(chunk, out);
      if (n < chunk.length) throw new Error(`KVM_GET_MSRS: MSR 0x${chunk[n]!.toString(16)} is not supported (read ${at + n} of ${indices.length})`);
    }
    return out;
  }

  /** One KVM_GET_MSRS (at most MSRS_PER_IOCTL entries); appends what was read, returns the count. */
  private readMsrs(indices: readonly number[], out: MsrEntry[]): number {
    const buf = msrsBuffer(indices.length);
    const dv = new DataView(buf.buffer);
    indices.forEach((index, i) => encodeMsrEntry(dv, i, { index, data: 0n }));
    const n = libc.ioctl(this.fd, abi.KVM_GET_MSRS, buf, 'KVM_GET_MSRS');
    for (let i = 0; i < n; i++) out.push(decodeMsrEntry(dv, i));
    return n;
  }

  /** KVM_SET_MSRS returns how many entries it took: every one must be (API doc 4.19). */
  setMsrs(entries: readonly MsrEntry[]): void {
    for (let at = 0; at < entries.length; at += MSRS_PER_IOCTL) {
      const chunk = entries.slice(at, at + MSRS_PER_IOCTL);
      const buf = msrsBuffer(chunk.length);
      const dv = new DataView(buf.buffer);
      chunk.forEach((e, i) => encodeMsrEntry(dv, i, e));
      const n = libc.ioctl(this.fd, abi.KVM_SET_MSRS, buf, 'KVM_SET_MSRS');
      if (n < chunk.length) {
        const bad = chunk[n]!;
        throw new Error(`KVM_SET_MSRS: MSR 0x${bad.index.toString(16)} = 0x${bad.data.toString(16)} was rejected (set ${at + n} of ${entries.length})`);
      }
    }
  }

  setCpuid2(entries: readonly CpuIdEntry[]): void {
    libc.ioctl(this.fd, abi.KVM_SET_CPUID2, encodeCpuid(entries), 'KVM_SET_CPUID2');
  }

  getCpuid2(): CpuIdEntry[] {
    const buf = cpuidBuffer(256);
    libc.ioctl(this.fd, abi.KVM_GET_CPUID2, buf, 'KVM_GET_CPUID2');
    return decodeCpuid(buf);
  }

  getLapic(): Uint8Array {
    libc.ioctl(this.fd, abi.KVM_GET_LAPIC, this.lapicBuf, 'KVM_GET_LAPIC');
    return this.lapicBuf.slice();
  }

  setLapic(lapic: Uint8Array): void {
    if (lapic.length !== abi.KVM_APIC_REG_SIZE) throw new RangeError(`LAPIC state must be ${abi.KVM_APIC_REG_SIZE} bytes, got ${lapic.length}`);
    this.lapicBuf.set(lapic);
    libc.ioctl(this.fd, abi.KVM_SET_LAPIC, this.lapicBuf, 'KVM_SET_LAPIC');
  }

  setupLapicLints(): void {
    const lapic = this.getLapic();
    setLvtDeliveryMode(lapic, APIC_LVT_LINT0, APIC_MODE_EXTINT);
    setLvtDeliveryMode(lapic, APIC_LVT_LINT1, APIC_MODE_NMI);
    this.setLapic(lapic);
  }

  getMpState(): MpState {
    const b = new Uint8Array(abi.layout.kvm_mp_state.SIZE);
    libc.ioctl(this.fd, abi.KVM_GET_MP_STATE, b, 'KVM_GET_MP_STATE');
    const v = new DataView(b.buffer).getUint32(abi.layout.kvm_mp_state.mp_state, true);
    const i = MP_STATE_VALUES.indexOf(v);
    if (i < 0) throw new Error(`KVM_GET_MP_STATE: unknown x86 mp_state ${v}`);
    return MP_STATES[i]!;
  }

  setMpState(state: MpState): void {
    const i = MP_STATES.indexOf(state);
    if (i < 0) throw new RangeError(`unknown mp state '${String(state)}'`);
    const b = new Uint8Array(abi.layout.kvm_mp_state.SIZE);
    new DataView(b.buffer).setUint32(abi.layout.kvm_mp_state.mp_state, MP_STATE_VALUES[i]!, true);
    libc.ioctl(this.fd, abi.KVM_SET_MP_STATE, b, `KVM_SET_MP_STATE(${state})`);
  }

  nmi(): void {
    libc.ioctl(this.fd, abi.KVM_NMI, 0, 'KVM_NMI');
  }

  /**
   * KVM's Hyper-V emulation for this vCPU (KVM API doc 4.118, 8.x): its Hyper-V CPUID leaves
   * from /dev/kvm (KVM_CAP_SYS_HYPERV_CPUID) or this vCPU (KVM_CAP_HYPERV_CPUID), and SynIC
   * through KVM_ENABLE_CAP(KVM_CAP_HYPERV_SYNIC2) on the vCPU, which needs the in-kernel LAPIC
   * (as QEMU's hyperv_init_vcpu does it; SYNIC2 leaves the message and event pages' contents
   * alone when they are enabled). KVM turns its Hyper-V MSRs on when the CPUID set afterwards
   * says "Hv#1" in 0x40000001.
   */
  enableHyperV(): HyperVSupport {
    const owner = this.owner;
    if (owner === null) throw new Error(`vCPU ${this.id}: enable Hyper-V on the vCPU its VM created, not on one rebuilt from a handle`);
    if (owner.checkExtension(abi.KVM_CAP_HYPERV) <= 0) {
      throw new Error('kvm_hyperv=on: this KVM has no Hyper-V emulation (KVM_CAP_HYPERV; a kernel built without CONFIG_KVM_HYPERV?)');
    }
    let cpuid = owner.sysHvCpuid();
    if (cpuid === null) {
      if (owner.checkExtension(abi.KVM_CAP_HYPERV_CPUID) <= 0) {
        throw new Error('kvm_hyperv=on: this KVM cannot report its Hyper-V CPUID leaves (KVM_CAP_HYPERV_CPUID, Linux 5.0+)');
      }
      cpuid = readCpuidIoctl(this.fd, abi.KVM_GET_SUPPORTED_HV_CPUID, 'KVM_GET_SUPPORTED_HV_CPUID', 64);
    }
    let synic = false;
    if (owner.checkExtension(abi.KVM_CAP_HYPERV_SYNIC2) > 0) {
      this.enableCap(abi.KVM_CAP_HYPERV_SYNIC2);
      synic = true;
    }
    return { cpuid, synic };
  }

  /** KVM_ENABLE_CAP on this vCPU (KVM API doc 4.37). */
  enableCap(cap: number, args: readonly bigint[] = [], flags = 0): void {
    const o = abi.layout.kvm_enable_cap;
    const buf = new Uint8Array(o.SIZE);
    const dv = new DataView(buf.buffer);
    dv.setUint32(o.cap, cap, true);
    dv.setUint32(o.flags, flags, true);
    args.slice(0, 4).forEach((a, i) => dv.setBigUint64(o.args + i * 8, a, true));
    libc.ioctl(this.fd, abi.KVM_ENABLE_CAP, buf, `KVM_ENABLE_CAP(${cap}) on vCPU ${this.id}`);
  }

  /** kvm_run.hyperv.u.hcall.result: KVM puts it in RAX when the next KVM_RUN completes the call. */
  completeHypercall(status: number): void {
    if (this.exit.kind !== VmExitKind.HypervHcall) throw new Error(`vCPU ${this.id}: completeHypercall after a ${this.exit.kind} exit, not a hypercall`);
    const at = HV.u.hcall.result >> 2;
    this.runU32[at] = status >>> 0;
    this.runU32[at + 1] = 0;
  }

  /** Inject an external interrupt vector (only without an in-kernel LAPIC). */
  interrupt(vector: number): void {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, vector, true);
    libc.ioctl(this.fd, abi.KVM_INTERRUPT, b, 'KVM_INTERRUPT');
  }

  /** KVM_GET_TSC_KHZ (KVM_CAP_GET_TSC_KHZ); 0 where the kernel cannot tell. */
  getTscKhz(): number {
    try {
      return libc.ioctl(this.fd, abi.KVM_GET_TSC_KHZ, 0, 'KVM_GET_TSC_KHZ');
    } catch (e) {
      if (e instanceof libc.SysError && (e.errno === libc.ENOTTY || e.errno === libc.EIO || e.errno === libc.EINVAL)) return 0;
      throw e;
    }
  }

  /** KVM_SET_TSC_KHZ (KVM_CAP_TSC_CONTROL): needs TSC scaling in hardware unless `khz` is the host's. */
  setTscKhz(khz: number): void {
    if (!Number.isInteger(khz) || khz <= 0 || khz > 0xffffffff) throw new RangeError(`TSC frequency ${khz} kHz is not a positive 32-bit integer`);
    try {
      libc.ioctl(this.fd, abi.KVM_SET_TSC_KHZ, khz, `KVM_SET_TSC_KHZ(${khz})`);
    } catch (e) {
      throw new Error(`cannot give vCPU ${this.id} a ${khz} kHz TSC (this host's is ${this.getTscKhz()} kHz; scaling needs KVM_CAP_TSC_CONTROL and hardware TSC scaling): ${(e as Error).message}`);
    }
  }

  // -------------------------------------------------------------------------------------------
  // Saved state (snapshot/restore)

  /** Null without KVM_CAP_XSAVE; KVM_GET_XSAVE2 when KVM_CAP_XSAVE2 reports more than 4 KiB. */
  getXsave(): Uint8Array | null {
    const size = systemXsaveSize();
    if (size === 0) return null;
    const buf = new Uint8Array(size);
    if (size > abi.layout.kvm_xsave.SIZE) libc.ioctl(this.fd, abi.KVM_GET_XSAVE2, buf, 'KVM_GET_XSAVE2');
    else libc.ioctl(this.fd, abi.KVM_GET_XSAVE, buf, 'KVM_GET_XSAVE');
    return buf;
  }

  /**
   * KVM_SET_XSAVE reads KVM_CAP_XSAVE2 bytes (API doc 4.43): a shorter saved area (from a host
   * with fewer state components) is zero-extended, a longer one is refused.
   */
  setXsave(xsave: Uint8Array): void {
    const size = systemXsaveSize();
    if (size === 0) throw new Error('this host has no KVM_CAP_XSAVE, the saved vCPU has an XSAVE area');
    if (xsave.length > size) throw new Error(`saved XSAVE area is ${xsave.length} bytes, this host's KVM takes at most ${size}`);
    const buf = new Uint8Array(size);
    buf.set(xsave);
    libc.ioctl(this.fd, abi.KVM_SET_XSAVE, buf, 'KVM_SET_XSAVE');
  }

  getXcrs(): XcrEntry[] {
    const buf = new Uint8Array(abi.layout.kvm_xcrs.SIZE);
    libc.ioctl(this.fd, abi.KVM_GET_XCRS, buf, 'KVM_GET_XCRS');
    return decodeXcrs(new DataView(buf.buffer));
  }

  setXcrs(xcrs: readonly XcrEntry[]): void {
    const buf = new Uint8Array(abi.layout.kvm_xcrs.SIZE);
    encodeXcrs(buf, xcrs);
    libc.ioctl(this.fd, abi.KVM_SET_XCRS, buf, 'KVM_SET_XCRS');
  }

  getVcpuEvents(): VcpuEvents {
    const buf = new Uint8Array(abi.layout.kvm_vcpu_events.SIZE);
    libc.ioctl(this.fd, abi.KVM_GET_VCPU_EVENTS, buf, 'KVM_GET_VCPU_EVENTS');
    return decodeVcpuEvents(new DataView(buf.buffer));
  }

  setVcpuEvents(events: VcpuEvents): void {
    const buf = new Uint8Array(abi.layout.kvm_vcpu_events.SIZE);
    encodeVcpuEvents(buf, events);
    libc.ioctl(this.fd, abi.KVM_SET_VCPU_EVENTS, buf, 'KVM_SET_VCPU_EVENTS');
  }

  getDebugRegs(): DebugRegisters {
    const buf = new Uint8Array(abi.layout.kvm_debugregs.SIZE);
    libc.ioctl(this.fd, abi.KVM_GET_DEBUGREGS, buf, 'KVM_GET_DEBUGREGS');
    return decodeDebugRegs(new DataView(buf.buffer));
  }

  setDebugRegs(regs: DebugRegisters): void {
    const buf = new Uint8Array(abi.layout.kvm_debugregs.SIZE);
    encodeDebugRegs(buf, regs);
    libc.ioctl(this.fd, abi.KVM_SET_DEBUGREGS, buf, 'KVM_SET_DEBUGREGS');
  }

  private stateMsrs: number[] | null = null;

  /**
   * KVM's MSR list plus MTRRs/PAT (msrs.ts), less the MSRs this vCPU cannot read: KVM_GET_MSRS
   * stops at the first MSR it refuses and returns how many it read, so that one is dropped and
   * the rest retried. Cached after the first call: set CPUID before it (it decides what exists).
   */
  stateMsrIndices(): number[] {
    if (this.stateMsrs !== null) return this.stateMsrs;
    const readable: number[] = [];
    const sink: MsrEntry[] = [];
    let todo = orderStateMsrs([...systemMsrIndexList(), ...EXTRA_STATE_MSRS]);
    while (todo.length > 0) {
      const chunk = todo.slice(0, MSRS_PER_IOCTL);
      sink.length = 0;
      const n = this.readMsrs(chunk, sink);
      for (let i = 0; i < n; i++) readable.push(chunk[i]!);
      // chunk[n] (if any) is refused: skip it.
      todo = todo.slice(n < chunk.length ? n + 1 : n);
    }
    this.stateMsrs = readable;
    return readable;
  }

  completePendingExit(): void {
    // immediate_exit: KVM_RUN finishes the pending I/O/MMIO completion and returns EINTR before
    // entering the guest (KVM API doc 5, kvm_run.immediate_exit).
    const run = this.runU8;
    run[RUN.immediate_exit] = 1;
    const r = libc.ioctlRaw(this.fd, abi.KVM_RUN, 0);
    run[RUN.immediate_exit] = 0;
    if (r < 0 && r !== -libc.EINTR && r !== -libc.EAGAIN) throw new libc.SysError('ioctl(KVM_RUN) to complete the last exit', -r);
    if (r >= 0) throw new Error(`KVM_RUN with immediate_exit entered the guest (exit reason ${this.runU32[EV_OFF >> 2]})`);
    this.exit.kind = VmExitKind.Intr;
    this.exit.reason = abi.KVM_EXIT_INTR;
  }

  /**
   * Save order (as Cloud Hypervisor documents it): MP state first (KVM_GET_MP_STATE runs
   * kvm_apic_accept_events, which can change the other state), vCPU events last.
   */
  getState(): VcpuState {
    const mpState = this.getMpState();
    const regs = this.getRegs();
    const sregs = this.getSregs();
    const fpu = this.getFpu();
    const xsave = this.getXsave();
    const xcrs = systemXsaveSize() > 0 ? this.getXcrs() : [];
    const lapic = this.getLapicOrZeros();
    const debugRegs = this.getDebugRegs();
    const cpuid = this.getCpuid2();
    const msrs = this.getMsrs(this.stateMsrIndices());
    const tscKhz = this.getTscKhz();
    const events = this.getVcpuEvents();
    return { regs, sregs, fpu, xsave, xcrs, msrs, lapic, events, mpState, debugRegs, cpuid, tscKhz };
  }

  /**
   * KVM_SET_CPUID2 after the vCPU has run is refused (EINVAL) unless KVM finds the table
   * unchanged (Linux 5.16+, KVM API doc 4.73). Setting a state back into a vCPU that ran is
   * fine when its CPUID already reads as saved; a different table is an error saying so.
   */
  private restoreCpuid(cpuid: readonly CpuIdEntry[]): void {
    try {
      this.setCpuid2(cpuid);
    } catch (e) {
      if (!(e instanceof libc.SysError && e.errno === libc.EINVAL)) throw e;
      const now = this.getCpuid2();
      const same = now.length === cpuid.length && now.every((a, i) => {
        const b = cpuid[i]!;
        return a.function === b.function && a.index === b.index && a.flags === b.flags
          && a.eax === b.eax && a.ebx === b.ebx && a.ecx === b.ecx && a.edx === b.edx;
      });
      if (!same) throw new Error(`vCPU ${this.id} has already run with a different CPUID, which KVM cannot change (${e.message})`);
    }
  }

  /** The LAPIC page, or 1 KiB of zeros without an in-kernel LAPIC (KVM_GET_LAPIC: ENXIO). */
  private getLapicOrZeros(): Uint8Array {
    try {
      return this.getLapic();
    } catch (e) {
      if (e instanceof libc.SysError && e.errno === libc.ENXIO) return new Uint8Array(abi.KVM_APIC_REG_SIZE);
      throw e;
    }
  }

  /**
   * Restore order (KVM API doc; Firecracker's and Cloud Hypervisor's restore): the TSC
   * frequency before anything reads the TSC; CPUID before everything it gates (XCR0, MSRs,
   * LAPIC features); MP state; registers; special registers before the LAPIC (APIC base);
   * FPU, then XSAVE which supersedes it; XCRs; LAPIC before the MSRs (TSC_DEADLINE only arms
   * in TSC-deadline mode); debug registers; MSRs (TSC first, deadline last); events last
   * (they hold the pending exception/interrupt/NMI the other ioctls may have disturbed).
   */
  setState(s: VcpuState): void {
    const step = (what: string, f: () => void): void => {
      try {
        f();
      } catch (e) {
        throw new Error(`restoring vCPU ${this.id} ${what}: ${(e as Error).message}`);
      }
    };
    if (s.tscKhz > 0) step('TSC frequency', () => { if (this.getTscKhz() !== s.tscKhz) this.setTscKhz(s.tscKhz); });
    step('CPUID', () => this.restoreCpuid(s.cpuid));
    step('MP state', () => this.setMpState(s.mpState));
    step('registers', () => this.setRegs(s.regs));
    step('special registers', () => this.setSregs(s.sregs));
    step('FPU', () => this.setFpu(s.fpu));
    if (s.xsave !== null) step('XSAVE area', () => this.setXsave(s.xsave!));
    if (s.xcrs.length > 0) step('XCRs', () => this.setXcrs(s.xcrs));
    if (s.lapic.some((b) => b !== 0)) step('LAPIC', () => this.setLapic(s.lapic));
    step('debug registers', () => this.setDebugRegs(s.debugRegs));
    step('MSRs', () => this.setMsrs(s.msrs));
    step('events', () => this.setVcpuEvents(s.events));
    // Tell a kvmclock guest it was stopped (PVCLOCK_GUEST_STOPPED), so its soft-lockup watchdog
    // does not fire for the pause (KVM API doc 4.81, as Firecracker does on restore). EINVAL:
    // the guest has not enabled kvmclock; nothing to tell.
    try {
      libc.ioctl(this.fd, abi.KVM_KVMCLOCK_CTRL, 0, 'KVM_KVMCLOCK_CTRL');
    } catch (e) {
      if (!(e instanceof libc.SysError && (e.errno === libc.EINVAL || e.errno === libc.ENOTTY))) throw e;
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.boundTid === libc.gettid()) Atomics.store(this.control, VcpuControl.Tid, 0);
    libc.munmap(this.runAddr, this.mmapSize);
    if (this.ownsFd) libc.close(this.fd);
  }
}

function systemEventType(t: number): SystemEventType {
  switch (t) {
    case abi.KVM_SYSTEM_EVENT_SHUTDOWN: return 'shutdown';
    case abi.KVM_SYSTEM_EVENT_RESET: return 'reset';
    case abi.KVM_SYSTEM_EVENT_CRASH: return 'crash';
    case abi.KVM_SYSTEM_EVENT_WAKEUP: return 'wakeup';
    case abi.KVM_SYSTEM_EVENT_SUSPEND: return 'suspend';
    default: return 'unknown';
  }
}

function kickVcpuRaw(control: Int32Array, run: Uint8Array | null): void {
  Atomics.store(control, VcpuControl.KickPending, 1);
  if (run !== null) run[RUN.immediate_exit] = 1;
  const tid = Atomics.load(control, VcpuControl.Tid);
  const sig = Atomics.load(control, VcpuControl.KickSignal);
  if (tid !== 0 && sig !== 0) {
    try {
      libc.tgkill(libc.getpid(), tid, sig);
    } catch (err) {
      // ESRCH: the thread is gone; nothing to interrupt.
      if (!(err instanceof libc.SysError && err.errno === libc.ESRCH)) throw err;
    }
  }
}

const kickViews = new Map<bigint, Uint8Array>();
/**
 * Kick a vCPU from any thread given its handle: sets the shared KickPending flag and
 * immediate_exit, and signals the thread running it. The vCPU's run() returns Intr promptly.
 * The handle's creator must keep the vCPU open while kicks may happen.
 */
export function kickVcpu(h: VcpuHandle): void {
  let run = kickViews.get(h.runAddr);
  if (run === undefined) {
    run = new Uint8Array(libc.view(h.runAddr, 8));
    kickViews.set(h.runAddr, run);
  }
  kickVcpuRaw(new Int32Array(h.control), run);
}
