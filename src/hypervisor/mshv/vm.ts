// MSHV partition fd: guest memory, VPs, MSI routing, irqfd, ioeventfd, interrupts
// (include/uapi/linux/mshv.h "Child partition APIs"; TLFS HvCallAssertVirtualInterrupt).
//
// There is no in-kernel IOAPIC or PIC on MSHV: the LAPIC lives in the hypervisor
// (MSHV_PT_BIT_LAPIC), and a device's interrupt reaches it as an MSI (routing table + irqfd,
// or HvCallAssertVirtualInterrupt). GSIs 0..23 are the pins of the userspace IOAPIC
// (ioapic.ts), whose unmasked entries become MSI routes; 'irqchip' routes need nothing else.

import type { IoEventAddress, IoEventOptions, IrqRoute, MsiMessage, UserMemoryRegion, Vm, VmHandle, VmState } from '../hypervisor.js';
import type { ClockState, PitState } from '../regs.js';
import * as abi from './abi.js';
import { assertMsi, HvCaller, setPartitionProperty } from './hvcall.js';
import { newIoapicState, UserspaceIoapic, IOAPIC_PINS } from './ioapic.js';
import type { MshvSys } from './sys.js';
import { realSys } from './sys.js';
import { MshvVcpu, unsupportedState } from './vcpu.js';
import { encodeIoeventfd } from '../ioeventfd.js';

const IOEVENTFD_FLAGS = { deassign: 1 << abi.MSHV_IOEVENTFD_BIT_DEASSIGN, pio: 1 << abi.MSHV_IOEVENTFD_BIT_PIO, datamatch: 1 << abi.MSHV_IOEVENTFD_BIT_DATAMATCH };

const L = abi.layout;

/** The VmHandle of an MSHV partition also carries the shared IOAPIC state. */
export interface MshvVmHandle extends VmHandle {
  ioapic: SharedArrayBuffer;
}

export class MshvVm implements Vm {
  readonly fd: number;
  readonly hv: HvCaller;
  private readonly memBuf = new Uint8Array(L.mshv_user_mem_region.SIZE);
  private readonly memDv = new DataView(this.memBuf.buffer);
  private readonly irqfdBuf = new Uint8Array(L.mshv_user_irqfd.SIZE);
  private readonly irqfdDv = new DataView(this.irqfdBuf.buffer);
  private readonly ioevBuf = new Uint8Array(L.mshv_user_ioeventfd.SIZE);
  private readonly ioevDv = new DataView(this.ioevBuf.buffer);
  /** slot -> the mapping, since an unmap must repeat its fields (mshv.h). */
  private readonly regions = new Map<number, UserMemoryRegion>();
  private msiRoutes = new Map<number, MsiMessage>();
  readonly ioapic: UserspaceIoapic;
  private closed = false;

  constructor(readonly sys: MshvSys, fd: number, private readonly owned = true, ioapicState: SharedArrayBuffer = newIoapicState()) {
    this.fd = fd;
    this.hv = new HvCaller(sys, fd);
    this.ioapic = new UserspaceIoapic(ioapicState, sys, fd, this.hv);
  }

  static fromHandle(h: VmHandle): MshvVm {
    if (h.backend !== 'mshv') throw new Error(`not an MSHV partition handle: ${h.backend}`);
    const state = (h as MshvVmHandle).ioapic;
    if (!(state instanceof SharedArrayBuffer)) throw new Error('MSHV partition handle without its IOAPIC state');
    return new MshvVm(realSys, h.fd, false, state);
  }

  handle(): MshvVmHandle {
    return { backend: 'mshv', fd: this.fd, ioapic: this.ioapic.state };
  }

  private memory(r: UserMemoryRegion, flags: number, what: string): void {
    const o = L.mshv_user_mem_region;
    const gpa = BigInt(r.guestPhysAddr);
    const size = BigInt(r.memorySize);
    const page = BigInt(abi.MSHV_HV_PAGE_SIZE);
    if (gpa % page !== 0n || size % page !== 0n || BigInt(r.userspaceAddr) % page !== 0n) {
      throw new RangeError(`MSHV_SET_GUEST_MEMORY: gpa 0x${gpa.toString(16)}, size 0x${size.toString(16)} and host address must be multiples of 4 KiB`);
    }
    this.memBuf.fill(0);
    this.memDv.setBigUint64(o.size, size, true);
    this.memDv.setBigUint64(o.guest_pfn, gpa / page, true);
    this.memDv.setBigUint64(o.userspace_addr, BigInt(r.userspaceAddr), true);
    this.memDv.setUint8(o.flags, flags);
    this.sys.ioctl(this.fd, abi.MSHV_SET_GUEST_MEMORY, this.memBuf, `MSHV_SET_GUEST_MEMORY(${what} slot ${r.slot} gpa 0x${gpa.toString(16)} size 0x${size.toString(16)})`);
  }

  setUserMemoryRegion(r: UserMemoryRegion): void {
    if (BigInt(r.memorySize) === 0n) { this.removeUserMemoryRegion(r.slot); return; }
    if (r.logDirtyPages) throw new Error('MSHV backend: dirty page logging is not implemented');
    const old = this.regions.get(r.slot);
    if (old) this.removeUserMemoryRegion(r.slot);
    const flags = (1 << abi.MSHV_SET_MEM_BIT_EXECUTABLE) | (r.readonly ? 0 : 1 << abi.MSHV_SET_MEM_BIT_WRITABLE);
    this.memory(r, flags, 'map');
    this.regions.set(r.slot, { ...r });
  }

  removeUserMemoryRegion(slot: number): void {
    const r = this.regions.get(slot);
    if (!r) return;
    this.memory(r, 1 << abi.MSHV_SET_MEM_BIT_UNMAP, 'unmap');
    this.regions.delete(slot);
  }

  createVcpu(id: number): MshvVcpu {
    const b = new Uint8Array(L.mshv_create_vp.SIZE);
    new DataView(b.buffer).setUint32(L.mshv_create_vp.vp_index, id, true);
    const fd = this.sys.ioctl(this.fd, abi.MSHV_CREATE_VP, b, `MSHV_CREATE_VP(${id})`);
    return new MshvVcpu(this.sys, id, fd, true, undefined, { partitionFd: this.fd, state: this.ioapic.state });
  }

  /** The LAPIC is the hypervisor's (MSHV_PT_BIT_LAPIC at partition creation): nothing to create. */
  createIrqChip(): void {}
  createSplitIrqChip(_ioapicPins: number): void {}

  /**
   * MSHV has no in-kernel i8254 PIT and this backend has no userspace one: the guest gets no
   * PIT (as on Cloud Hypervisor); Linux then calibrates with the TSC and the LAPIC timer.
   */
  createPit(): void {}

  /** KVM's VMX real-mode helpers: no equivalent on MSHV. */
  setTssAddress(_addr: number): void {}
  setIdentityMapAddress(_addr: bigint | number): void {}

  setIrqLine(gsi: number, active: boolean): void {
    const msi = this.msiRoutes.get(gsi);
    if (msi) { if (active) this.signalMsi(msi); return; }
    if (gsi < IOAPIC_PINS) { this.ioapic.setIrq(gsi, active); return; }
    throw new Error(`MSHV: GSI ${gsi} has no MSI route and is not an IOAPIC pin`);
  }

  private irqfd(fd: number, gsi: number, flags: number, resampleFd: number): void {
    const o = L.mshv_user_irqfd;
    this.irqfdBuf.fill(0);
    this.irqfdDv.setInt32(o.fd, fd, true);
    this.irqfdDv.setInt32(o.resamplefd, resampleFd, true);
    this.irqfdDv.setUint32(o.gsi, gsi, true);
    this.irqfdDv.setUint32(o.flags, flags, true);
    this.sys.ioctl(this.fd, abi.MSHV_IRQFD, this.irqfdBuf, `MSHV_IRQFD(${flags & (1 << abi.MSHV_IRQFD_BIT_DEASSIGN) ? 'deassign' : 'assign'} fd ${fd} gsi ${gsi})`);
  }

  registerIrqfd(fd: number, gsi: number, resampleFd?: number): void {
    if (resampleFd === undefined) this.irqfd(fd, gsi, 0, 0);
    else this.irqfd(fd, gsi, 1 << abi.MSHV_IRQFD_BIT_RESAMPLE, resampleFd);
  }

  unregisterIrqfd(fd: number, gsi: number): void {
    this.irqfd(fd, gsi, 1 << abi.MSHV_IRQFD_BIT_DEASSIGN, 0);
  }

  private ioeventfd(fd: number, addr: IoEventAddress, opts: IoEventOptions | undefined, deassign: boolean): void {
    const len = encodeIoeventfd(this.ioevBuf, this.ioevDv, L.mshv_user_ioeventfd, IOEVENTFD_FLAGS, fd, addr, opts, deassign);
    this.sys.ioctl(this.fd, abi.MSHV_IOEVENTFD, this.ioevBuf, `MSHV_IOEVENTFD(${deassign ? 'deassign' : 'assign'} ${addr.space} 0x${addr.addr.toString(16)} len ${len})`);
  }

  registerIoevent(fd: number, addr: IoEventAddress, opts?: IoEventOptions): void {
    this.ioeventfd(fd, addr, opts, false);
  }

  unregisterIoevent(fd: number, addr: IoEventAddress, opts?: IoEventOptions): void {
    this.ioeventfd(fd, addr, opts, true);
  }

  /**
   * MSHV_SET_MSI_ROUTING with the MSI routes plus the IOAPIC's unmasked pins (ioapic.ts);
   * 'irqchip' routes (IOAPIC pin n = GSI n) are the IOAPIC's own.
   */
  setGsiRouting(routes: readonly IrqRoute[]): void {
    const msi = routes.filter((r): r is Extract<IrqRoute, { kind: 'msi' }> => r.kind === 'msi');
    for (const r of routes) {
      if (r.kind === 'irqchip' && r.gsi !== r.pin) throw new Error(`MSHV: GSI ${r.gsi} routed to IOAPIC pin ${r.pin}: only GSI n = pin n is supported`);
    }
    this.msiRoutes = new Map(msi.map((r) => [r.gsi, { addressLo: r.addressLo, addressHi: r.addressHi, data: r.data }]));
    this.ioapic.setVmmRoutes(msi);
  }

  signalMsi(msi: MsiMessage): number {
    assertMsi(this.hv, msi);
    return 1;
  }

  /** Stop (true) or restart (false) the partition's reference time (HV_PARTITION_PROPERTY_TIME_FREEZE). */
  freezeTime(frozen: boolean): void {
    setPartitionProperty(this.hv, abi.HV_PARTITION_PROPERTY_TIME_FREEZE, frozen ? 1n : 0n, 'TIME_FREEZE');
  }

  // Saved state (snapshots): not implemented on MSHV yet (the userspace IOAPIC's state is ours;
  // the partition's reference time would come from HV_PARTITION_PROPERTY_REFERENCE_TIME).
  getIrqchip(): NonNullable<VmState['irqchip']> { return unsupportedState('the interrupt controllers'); }
  setIrqchip(_chip: NonNullable<VmState['irqchip']>): void { unsupportedState('the interrupt controllers'); }
  getPit(): PitState { return unsupportedState('the PIT'); }
  setPit(_pit: PitState): void { unsupportedState('the PIT'); }
  getClock(): ClockState { return unsupportedState('the clock'); }
  setClock(_clock: ClockState): void { unsupportedState('the clock'); }
  getState(): VmState { return unsupportedState('VM state'); }
  setState(_state: VmState): void { unsupportedState('VM state'); }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.hv.close();
    if (this.owned) this.sys.close(this.fd);
  }
}

