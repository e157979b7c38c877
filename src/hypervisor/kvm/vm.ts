// KVM VM fd: memory slots, vCPUs, irqchip, irqfd, ioeventfd, GSI routing (KVM API doc 4.x).

import * as libc from '../../sys/libc.js';
import type {
  IoEventAddress, IoEventOptions, IrqRoute, MsiMessage, UserMemoryRegion, Vm, VmHandle, VmState,
} from '../hypervisor.js';
import type { ClockState, CpuIdEntry, PitState } from '../regs.js';
import * as abi from './abi.js';
import {
  decodeClock, decodeIoapic, decodePic, decodePit, encodeClock, encodeIoapic, encodePic, encodePit,
} from './serialize.js';

type IrqchipState = NonNullable<VmState['irqchip']>;

/** KVM_GET_IRQCHIP/KVM_GET_PIT2 without that device in the kernel: ENXIO. */
function absent<T>(f: () => T): T | null {
  try {
    return f();
  } catch (e) {
    if (e instanceof libc.SysError && e.errno === libc.ENXIO) return null;
    throw e;
  }
}
import { KvmVcpu } from './vcpu.js';
import { encodeIoeventfd } from '../ioeventfd.js';

const IOEVENTFD_FLAGS = { deassign: abi.KVM_IOEVENTFD_FLAG_DEASSIGN, pio: abi.KVM_IOEVENTFD_FLAG_PIO, datamatch: abi.KVM_IOEVENTFD_FLAG_DATAMATCH };

const L = abi.layout;

export class KvmVm implements Vm {
  readonly fd: number;
  private readonly mmapSize: number;
  private readonly checkExt: (cap: number) => number;
  private readonly sysHvCpuid: () => CpuIdEntry[] | null;
  private readonly memBuf = new Uint8Array(L.kvm_userspace_memory_region.SIZE);
  private readonly memDv = new DataView(this.memBuf.buffer);
  private readonly irqfdBuf = new Uint8Array(L.kvm_irqfd.SIZE);
  private readonly irqfdDv = new DataView(this.irqfdBuf.buffer);
  private readonly ioevBuf = new Uint8Array(L.kvm_ioeventfd.SIZE);
  private readonly ioevDv = new DataView(this.ioevBuf.buffer);
  private readonly irqLevelBuf = new Uint8Array(L.kvm_irq_level.SIZE);
  private readonly irqLevelDv = new DataView(this.irqLevelBuf.buffer);
  private readonly msiBuf = new Uint8Array(L.kvm_msi.SIZE);
  private readonly msiDv = new DataView(this.msiBuf.buffer);
  private closed = false;
  private readonly owned: boolean;

  /** Use `KvmHypervisor.createVm` or `KvmVm.fromHandle`. */
  constructor(fd: number, vcpuMmapSize: number, checkExtension: (cap: number) => number, owned = true,
    sysHvCpuid: () => CpuIdEntry[] | null = () => null) {
    this.fd = fd;
    this.sysHvCpuid = sysHvCpuid;
    this.mmapSize = vcpuMmapSize;
    this.checkExt = checkExtension;
    this.owned = owned;
  }

  /** Rebuild in another thread for irqfd/ioeventfd/routing work; does not own (close) the fd. */
  static fromHandle(h: VmHandle): KvmVm {
    if (h.backend !== 'kvm') throw new Error(`not a KVM VM handle: ${h.backend}`);
    return new KvmVm(h.fd, 0, () => 0, false);
  }

  handle(): VmHandle {
    return { backend: 'kvm', fd: this.fd };
  }

  /** KVM_CHECK_EXTENSION on the VM fd (KVM_CAP_CHECK_EXTENSION_VM), else on /dev/kvm. */
  checkExtension(cap: number): number {
    try {
      return libc.ioctl(this.fd, abi.KVM_CHECK_EXTENSION, cap, 'KVM_CHECK_EXTENSION');
    } catch {
      return this.checkExt(cap);
    }
  }

  setUserMemoryRegion(r: UserMemoryRegion): void {
    const o = L.kvm_userspace_memory_region;
    const dv = this.memDv;
    let flags = 0;
    if (r.logDirtyPages) flags |= abi.KVM_MEM_LOG_DIRTY_PAGES;
    if (r.readonly) flags |= abi.KVM_MEM_READONLY;
    dv.setUint32(o.slot, r.slot, true);
    dv.setUint32(o.flags, flags, true);
    dv.setBigUint64(o.guest_phys_addr, BigInt(r.guestPhysAddr), true);
    dv.setBigUint64(o.memory_size, BigInt(r.memorySize), true);
    dv.setBigUint64(o.userspace_addr, BigInt(r.userspaceAddr), true);
    libc.ioctl(this.fd, abi.KVM_SET_USER_MEMORY_REGION, this.memBuf,
      `KVM_SET_USER_MEMORY_REGION slot ${r.slot} gpa 0x${r.guestPhysAddr.toString(16)} size 0x${r.memorySize.toString(16)}`);
  }

  removeUserMemoryRegion(slot: number): void {
    this.setUserMemoryRegion({ slot, guestPhysAddr: 0n, memorySize: 0, userspaceAddr: 0n });
  }

  createVcpu(id: number): KvmVcpu {
    const fd = libc.ioctl(this.fd, abi.KVM_CREATE_VCPU, id, `KVM_CREATE_VCPU ${id}`);
    try {
      return new KvmVcpu(id, fd, this.mmapSize, true, undefined, { checkExtension: (cap) => this.checkExtension(cap), sysHvCpuid: this.sysHvCpuid });
    } catch (e) {
      libc.close(fd);
      throw e;
    }
  }

  createIrqChip(): void {
    libc.ioctl(this.fd, abi.KVM_CREATE_IRQCHIP, 0, 'KVM_CREATE_IRQCHIP');
  }

  createSplitIrqChip(ioapicPins: number): void {
    this.enableCap(abi.KVM_CAP_SPLIT_IRQCHIP, [BigInt(ioapicPins)]);
  }

  /** KVM_ENABLE_CAP on the VM (KVM API doc 4.37 / 7.x). */
  enableCap(cap: number, args: readonly bigint[] = [], flags = 0): void {
    const o = L.kvm_enable_cap;
    const buf = new Uint8Array(o.SIZE);
    const dv = new DataView(buf.buffer);
    dv.setUint32(o.cap, cap, true);
    dv.setUint32(o.flags, flags, true);
    args.slice(0, 4).forEach((a, i) => dv.setBigUint64(o.args + i * 8, a, true));
    libc.ioctl(this.fd, abi.KVM_ENABLE_CAP, buf, `KVM_ENABLE_CAP(${cap})`);
  }

  createPit(): void {
    const buf = new Uint8Array(L.kvm_pit_config.SIZE);
    new DataView(buf.buffer).setUint32(L.kvm_pit_config.flags, abi.KVM_PIT_SPEAKER_DUMMY, true);
    libc.ioctl(this.fd, abi.KVM_CREATE_PIT2, buf, 'KVM_CREATE_PIT2');
  }

  setTssAddress(addr: number): void {
    libc.ioctl(this.fd, abi.KVM_SET_TSS_ADDR, addr, 'KVM_SET_TSS_ADDR');
  }

  setIdentityMapAddress(addr: bigint | number): void {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, BigInt(addr), true);
    libc.ioctl(this.fd, abi.KVM_SET_IDENTITY_MAP_ADDR, b, 'KVM_SET_IDENTITY_MAP_ADDR');
  }

  setIrqLine(gsi: number, active: boolean): void {
    this.irqLevelDv.setUint32(L.kvm_irq_level.irq, gsi, true);
    this.irqLevelDv.setUint32(L.kvm_irq_level.level, active ? 1 : 0, true);
    libc.ioctl(this.fd, abi.KVM_IRQ_LINE, this.irqLevelBuf, 'KVM_IRQ_LINE');
  }

  private irqfd(fd: number, gsi: number, flags: number, resampleFd: number): void {
    const o = L.kvm_irqfd;
    this.irqfdBuf.fill(0);
    this.irqfdDv.setUint32(o.fd, fd, true);
    this.irqfdDv.setUint32(o.gsi, gsi, true);
    this.irqfdDv.setUint32(o.flags, flags, true);
    this.irqfdDv.setUint32(o.resamplefd, resampleFd, true);
    libc.ioctl(this.fd, abi.KVM_IRQFD, this.irqfdBuf,
      `KVM_IRQFD(${flags & abi.KVM_IRQFD_FLAG_DEASSIGN ? 'deassign' : 'assign'} fd ${fd} gsi ${gsi})`);
  }

  registerIrqfd(fd: number, gsi: number, resampleFd?: number): void {
    if (resampleFd === undefined) this.irqfd(fd, gsi, 0, 0);
    else this.irqfd(fd, gsi, abi.KVM_IRQFD_FLAG_RESAMPLE, resampleFd);
  }

  unregisterIrqfd(fd: number, gsi: number): void {
    this.irqfd(fd, gsi, abi.KVM_IRQFD_FLAG_DEASSIGN, 0);
  }

  private ioeventfd(fd: number, addr: IoEventAddress, opts: IoEventOptions | undefined, deassign: boolean): void {
    const len = encodeIoeventfd(this.ioevBuf, this.ioevDv, L.kvm_ioeventfd, IOEVENTFD_FLAGS, fd, addr, opts, deassign);
    libc.ioctl(this.fd, abi.KVM_IOEVENTFD, this.ioevBuf,
      `KVM_IOEVENTFD(${deassign ? 'deassign' : 'assign'} ${addr.space} 0x${addr.addr.toString(16)} len ${len})`);
  }

  registerIoevent(fd: number, addr: IoEventAddress, opts?: IoEventOptions): void {
    this.ioeventfd(fd, addr, opts, false);
  }

  unregisterIoevent(fd: number, addr: IoEventAddress, opts?: IoEventOptions): void {
    this.ioeventfd(fd, addr, opts, true);
  }

  setGsiRouting(routes: readonly IrqRoute[]): void {
    const E = L.kvm_irq_routing_entry;
    const buf = new Uint8Array(L.kvm_irq_routing.SIZE + routes.length * E.SIZE);
    const dv = new DataView(buf.buffer);
    dv.setUint32(L.kvm_irq_routing.nr, routes.length, true);
    routes.forEach((r, i) => {
      const o = L.kvm_irq_routing.entries + i * E.SIZE;
      dv.setUint32(o + E.gsi, r.gsi, true);
      if (r.kind === 'msi') {
        dv.setUint32(o + E.type, abi.KVM_IRQ_ROUTING_MSI, true);
        dv.setUint32(o + E.u.msi.address_lo, r.addressLo >>> 0, true);
        dv.setUint32(o + E.u.msi.address_hi, r.addressHi >>> 0, true);
        dv.setUint32(o + E.u.msi.data, r.data >>> 0, true);
        if (r.devid !== undefined) {
          dv.setUint32(o + E.flags, abi.KVM_MSI_VALID_DEVID, true);
          dv.setUint32(o + E.u.msi.devid, r.devid >>> 0, true);
        }
      } else {
        dv.setUint32(o + E.type, abi.KVM_IRQ_ROUTING_IRQCHIP, true);
        dv.setUint32(o + E.u.irqchip.irqchip, r.irqchip, true);
        dv.setUint32(o + E.u.irqchip.pin, r.pin, true);
      }
    });
    libc.ioctl(this.fd, abi.KVM_SET_GSI_ROUTING, buf, `KVM_SET_GSI_ROUTING(${routes.length} routes)`);
  }

  signalMsi(msi: MsiMessage): number {
    const o = L.kvm_msi;
    const dv = this.msiDv;
    this.msiBuf.fill(0);
    dv.setUint32(o.address_lo, msi.addressLo >>> 0, true);
    dv.setUint32(o.address_hi, msi.addressHi >>> 0, true);
    dv.setUint32(o.data, msi.data >>> 0, true);
    if (msi.devid !== undefined) {
      dv.setUint32(o.flags, abi.KVM_MSI_VALID_DEVID, true);
      dv.setUint32(o.devid, msi.devid >>> 0, true);
    }
    return libc.ioctl(this.fd, abi.KVM_SIGNAL_MSI, this.msiBuf, 'KVM_SIGNAL_MSI');
  }

  // -------------------------------------------------------------------------------------------
  // Saved state (KVM API doc 4.26/4.27 irqchip, 4.54/4.55 PIT2, 4.56/4.57 clock)

  private irqchipIoctl(req: number, chipId: number, name: string, fill?: (dv: DataView, o: number) => void): DataView {
    const I = L.kvm_irqchip;
    const buf = new Uint8Array(I.SIZE);
    const dv = new DataView(buf.buffer);
    dv.setUint32(I.chip_id, chipId, true);
    if (fill) fill(dv, I.chip);
    libc.ioctl(this.fd, req, buf, name);
    return dv;
  }

  getIrqchip(): IrqchipState {
    const I = L.kvm_irqchip;
    const get = (id: number, n: string): DataView => this.irqchipIoctl(abi.KVM_GET_IRQCHIP, id, `KVM_GET_IRQCHIP(${n})`);
    return {
      picMaster: decodePic(get(abi.KVM_IRQCHIP_PIC_MASTER, 'PIC master'), I.chip),
      picSlave: decodePic(get(abi.KVM_IRQCHIP_PIC_SLAVE, 'PIC slave'), I.chip),
      ioapic: decodeIoapic(get(abi.KVM_IRQCHIP_IOAPIC, 'IOAPIC'), I.chip),
    };
  }

  setIrqchip(chip: IrqchipState): void {
    this.irqchipIoctl(abi.KVM_SET_IRQCHIP, abi.KVM_IRQCHIP_PIC_MASTER, 'KVM_SET_IRQCHIP(PIC master)', (dv, o) => encodePic(dv, o, chip.picMaster));
    this.irqchipIoctl(abi.KVM_SET_IRQCHIP, abi.KVM_IRQCHIP_PIC_SLAVE, 'KVM_SET_IRQCHIP(PIC slave)', (dv, o) => encodePic(dv, o, chip.picSlave));
    this.irqchipIoctl(abi.KVM_SET_IRQCHIP, abi.KVM_IRQCHIP_IOAPIC, 'KVM_SET_IRQCHIP(IOAPIC)', (dv, o) => encodeIoapic(dv, o, chip.ioapic));
  }

  getPit(): PitState {
    const buf = new Uint8Array(L.kvm_pit_state2.SIZE);
    libc.ioctl(this.fd, abi.KVM_GET_PIT2, buf, 'KVM_GET_PIT2');
    return decodePit(new DataView(buf.buffer));
  }

  /** KVM_SET_PIT2 reloads each channel's count now (count_load_time is not restored). */
  setPit(pit: PitState): void {
    const buf = new Uint8Array(L.kvm_pit_state2.SIZE);
    encodePit(buf, pit);
    libc.ioctl(this.fd, abi.KVM_SET_PIT2, buf, 'KVM_SET_PIT2');
  }

  getClock(): ClockState {
    const buf = new Uint8Array(L.kvm_clock_data.SIZE);
    libc.ioctl(this.fd, abi.KVM_GET_CLOCK, buf, 'KVM_GET_CLOCK');
    return decodeClock(new DataView(buf.buffer));
  }

  setClock(clock: ClockState): void {
    const buf = new Uint8Array(L.kvm_clock_data.SIZE);
    encodeClock(buf, clock);
    libc.ioctl(this.fd, abi.KVM_SET_CLOCK, buf, 'KVM_SET_CLOCK');
  }

  /** VM-wide TSC frequency (KVM_CAP_VM_TSC_CONTROL: KVM_GET_TSC_KHZ on the VM fd), else null. */
  getTscKhz(): number | null {
    if (this.checkExtension(abi.KVM_CAP_VM_TSC_CONTROL) <= 0) return null;
    return libc.ioctl(this.fd, abi.KVM_GET_TSC_KHZ, 0, 'KVM_GET_TSC_KHZ(VM)');
  }

  /** Default TSC frequency of vCPUs created after this call. */
  setTscKhz(khz: number): void {
    libc.ioctl(this.fd, abi.KVM_SET_TSC_KHZ, khz, `KVM_SET_TSC_KHZ(VM, ${khz})`);
  }

  getState(): VmState {
    return {
      irqchip: absent(() => this.getIrqchip()),
      pit: absent(() => this.getPit()),
      clock: this.getClock(),
      tscKhz: this.getTscKhz(),
    };
  }

  setState(s: VmState): void {
    const step = (what: string, f: () => void): void => {
      try {
        f();
      } catch (e) {
        if (e instanceof libc.SysError && e.errno === libc.ENXIO) throw new Error(`restoring the VM's ${what}: the saved VM had one, this VM has none in the kernel`);
        throw new Error(`restoring the VM's ${what}: ${(e as Error).message}`);
      }
    };
    if (s.pit !== null) step('PIT', () => this.setPit(s.pit!));
    if (s.irqchip !== null) step('irqchip', () => this.setIrqchip(s.irqchip!));
    if (s.tscKhz !== null) {
      const khz = s.tscKhz;
      step('TSC frequency', () => { if (this.getTscKhz() !== null && this.getTscKhz() !== khz) this.setTscKhz(khz); });
    }
    step('clock', () => this.setClock(s.clock));
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.owned) libc.close(this.fd);
  }
}
