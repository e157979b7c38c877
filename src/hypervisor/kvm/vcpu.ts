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
import type { CpuIdEntry, FpuState, MsrEntry, SpecialRegisters, StandardRegisters } from '../regs.js';
import {
  APIC_LVT_LINT0, APIC_LVT_LINT1, APIC_MODE_EXTINT, APIC_MODE_NMI, setLvtDeliveryMode,
  VcpuControl, VmExitKind,
} from '../hypervisor.js';
import type { SystemEventType, Vcpu, VcpuExit, VcpuHandle, VmExit } from '../hypervisor.js';
import * as abi from './abi.js';
import {
  decodeCpuid, decodeFpu, decodeMsrEntry, decodeRegs, decodeSregs, encodeCpuid, encodeFpu,
  encodeMsrEntry, encodeRegs, encodeSregs, msrsBuffer, cpuidBuffer,
} from './serialize.js';

/** Signal used to kick vCPU threads (glibc SIGRTMIN + 6; unused by Node/libuv/V8). */
export const KICK_SIGNAL = libc.SIGRTMIN + 6;

const RUN = abi.layout.kvm_run;
const EV_OFF = RUN.exit_reason;
/** kvm_run.system_event.data / internal.data: u64[16] right after type/suberror + ndata. */
const EVENT_DATA = RUN.system_event.data.OFFSET;

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

  // Preallocated ioctl buffers.
  private readonly regsBuf = new Uint8Array(abi.layout.kvm_regs.SIZE);
  private readonly regsDv = new DataView(this.regsBuf.buffer);
  private readonly sregsBuf = new Uint8Array(abi.layout.kvm_sregs.SIZE);
  private readonly sregsDv = new DataView(this.sregsBuf.buffer);
  private readonly fpuBuf = new Uint8Array(abi.layout.kvm_fpu.SIZE);
  private readonly lapicBuf = new Uint8Array(abi.layout.kvm_lapic_state.SIZE);

  /** Use `KvmVm.createVcpu` or `KvmVcpu.fromHandle`. */
  constructor(id: number, fd: number, mmapSize: number, ownsFd: boolean, control?: SharedArrayBuffer) {
    this.id = id;
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
    const buf = msrsBuffer(indices.length);
    const dv = new DataView(buf.buffer);
    indices.forEach((index, i) => encodeMsrEntry(dv, i, { index, data: 0n }));
    const n = libc.ioctl(this.fd, abi.KVM_GET_MSRS, buf, 'KVM_GET_MSRS');
    if (n < indices.length) throw new Error(`KVM_GET_MSRS: MSR 0x${indices[n]!.toString(16)} is not supported (read ${n} of ${indices.length})`);
    const out: MsrEntry[] = [];
    for (let i = 0; i < n; i++) out.push(decodeMsrEntry(dv, i));
    return out;
  }

  setMsrs(entries: readonly MsrEntry[]): void {
    const buf = msrsBuffer(entries.length);
    const dv = new DataView(buf.buffer);
    entries.forEach((e, i) => encodeMsrEntry(dv, i, e));
    const n = libc.ioctl(this.fd, abi.KVM_SET_MSRS, buf, 'KVM_SET_MSRS');
    if (n < entries.length) {
      const bad = entries[n]!;
      throw new Error(`KVM_SET_MSRS: MSR 0x${bad.index.toString(16)} = 0x${bad.data.toString(16)} was rejected (set ${n} of ${entries.length})`);
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

  getMpState(): number {
    const b = new Uint8Array(4);
    libc.ioctl(this.fd, abi.KVM_GET_MP_STATE, b, 'KVM_GET_MP_STATE');
    return new DataView(b.buffer).getUint32(0, true);
  }

  setMpState(state: number): void {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, state, true);
    libc.ioctl(this.fd, abi.KVM_SET_MP_STATE, b, 'KVM_SET_MP_STATE');
  }

  nmi(): void {
    libc.ioctl(this.fd, abi.KVM_NMI, 0, 'KVM_NMI');
  }

  /** Inject an external interrupt vector (only without an in-kernel LAPIC). */
  interrupt(vector: number): void {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, vector, true);
    libc.ioctl(this.fd, abi.KVM_INTERRUPT, b, 'KVM_INTERRUPT');
  }

  getTscKhz(): number {
    return libc.ioctl(this.fd, abi.KVM_GET_TSC_KHZ, 0, 'KVM_GET_TSC_KHZ');
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
