// ACPI CPU hotplug controller (the scheme of Cloud Hypervisor's x86 CPU manager and QEMU's
// "cpu hotplug" block, our own layout): the DSDT describes every possible vCPU (max_vcpus) as a
// processor device (ACPI0007) under \_SB_.CPUS whose _STA, _MAT and _EJ0 and the scan method
// CSCN (src/arch/x86_64/acpi.ts cpuHotplugAml) use this register block:
//
//   0x0 CSEL  32-bit, read/write: the vCPU the status register below is about
//   0x4 status byte of the selected vCPU
//         read:  bit 0 CPEN  present (the VMM plugged it; _STA says present + enabled)
//                bit 1 CINS  an insert the guest has not been told about yet
//                bit 2 CRMV  a removal the VMM asks for and the guest has not been told about
//         write: bit 1 = 1   clears CINS (CSCN sent Notify(Cxxx, 1))
//                bit 2 = 1   clears CRMV (CSCN sent Notify(Cxxx, 3))
//                bit 3 = 1   CEJF: the guest ejected the selected vCPU (its _EJ0 ran)
//   0x5..0xb  read 0, writes ignored
//
// The VMM plugs a vCPU (inserted) or asks for one to go (removeRequested) and raises the GED's
// CPU hotplug event (GED_CPU_HOTPLUG); _EVT calls CSCN, which walks every vCPU. ACPI 6.x 5.6.6
// (device object notifications), 6.3.3 (_EJx), 8.4 (processor objects).
//
// Threading: see bus.ts; one caller at a time (the device thread).

import type { BusDevice } from './bus.js';
import { StateCheck } from './state.js';

/** Bytes of the register block. */
export const CPU_HOTPLUG_BLOCK_SIZE = 12;
export const CPU_SELECT_OFFSET = 0x0;
export const CPU_STATUS_OFFSET = 0x4;
/** Status register bits. */
export const CPU_STATUS_PRESENT = 0x01;
export const CPU_STATUS_INSERTING = 0x02;
export const CPU_STATUS_REMOVING = 0x04;
export const CPU_STATUS_EJECT = 0x08;

/** Saved state: per vCPU its status bits (present, inserting, removing) and the selector. */
export interface CpuHotplugState {
  selected: number;
  status: number[];
}

export class CpuHotplugController implements BusDevice {
  private readonly status: Uint8Array;
  private selected = 0;
  /** Accesses that were not a register access of its width (read as 0 / ignored). */
  badAccesses = 0;

  /**
   * @param maxVcpus vCPUs the DSDT describes (cpus.max_vcpus)
   * @param present vCPUs present at boot (0..present-1, cpus.boot_vcpus)
   * @param onEject the guest ejected vCPU `id` (it was present and offline in the guest)
   */
  constructor(readonly maxVcpus: number, present: number, private readonly onEject: (id: number) => void) {
    if (!Number.isInteger(maxVcpus) || maxVcpus < 1 || maxVcpus > 4096) throw new RangeError(`CPU hotplug: ${maxVcpus} vCPUs`);
    if (!Number.isInteger(present) || present < 1 || present > maxVcpus) throw new RangeError(`CPU hotplug: ${present} present vCPUs of ${maxVcpus}`);
    this.status = new Uint8Array(maxVcpus);
    this.status.fill(CPU_STATUS_PRESENT, 0, present);
  }

  private check(id: number): void {
    if (!Number.isInteger(id) || id < 0 || id >= this.maxVcpus) throw new RangeError(`CPU hotplug: vCPU ${id} outside 0..${this.maxVcpus - 1}`);
  }

  /** vCPU `id` is plugged in: present, and the guest is told at its next CSCN. */
  inserted(id: number): void {
    this.check(id);
    this.status[id] = CPU_STATUS_PRESENT | CPU_STATUS_INSERTING;
  }

  /** Ask the guest to eject vCPU `id` (it answers through _EJ0); it stays present until then. */
  removeRequested(id: number): void {
    this.check(id);
    if ((this.status[id]! & CPU_STATUS_PRESENT) === 0) throw new RangeError(`CPU hotplug: vCPU ${id} is not present`);
    this.status[id] = CPU_STATUS_PRESENT | CPU_STATUS_REMOVING;
  }

  /** Whether vCPU `id` is present. */
  isPresent(id: number): boolean {
    this.check(id);
    return (this.status[id]! & CPU_STATUS_PRESENT) !== 0;
  }

  /** The status bits of vCPU `id`, for tests and logs. */
  statusOf(id: number): number {
    this.check(id);
    return this.status[id]!;
  }

  saveState(): CpuHotplugState {
    return { selected: this.selected, status: Array.from(this.status) };
  }

  restoreState(s: CpuHotplugState): void {
    const c = new StateCheck('CPU hotplug state');
    c.object('', s);
    const selected = c.uint('selected', s.selected, 0xffffffff);
    if (!Array.isArray(s.status)) c.fail('status', 'must be an array');
    if (s.status.length !== this.maxVcpus) c.fail('status', `has ${s.status.length} vCPUs, this VM ${this.maxVcpus} (max_vcpus)`);
    const status = s.status.map((v, i) => c.uint(`status[${i}]`, v, CPU_STATUS_PRESENT | CPU_STATUS_INSERTING | CPU_STATUS_REMOVING));
    this.selected = selected;
    this.status.set(status);
  }

  read(offset: number, data: Uint8Array): void {
    data.fill(0);
    if (offset === CPU_SELECT_OFFSET && data.length === 4) {
      new DataView(data.buffer, data.byteOffset, 4).setUint32(0, this.selected, true);
    } else if (offset === CPU_STATUS_OFFSET && data.length === 1) {
      // A selector past the last vCPU selects nothing: it reads 0 (not present).
      data[0] = this.selected < this.maxVcpus ? this.status[this.selected]! : 0;
    } else {
      this.badAccesses++;
    }
  }

  write(offset: number, data: Uint8Array): void {
    if (offset === CPU_SELECT_OFFSET && data.length === 4) {
      this.selected = new DataView(data.buffer, data.byteOffset, 4).getUint32(0, true);
      return;
    }
    if (offset !== CPU_STATUS_OFFSET || data.length !== 1) { this.badAccesses++; return; }
    const id = this.selected;
    if (id >= this.maxVcpus) { this.badAccesses++; return; }
    const v = data[0]!;
    let s = this.status[id]!;
    if ((v & CPU_STATUS_INSERTING) !== 0) s &= ~CPU_STATUS_INSERTING;
    if ((v & CPU_STATUS_REMOVING) !== 0) s &= ~CPU_STATUS_REMOVING;
    // _EJ0 of a vCPU that is not there (or the boot vCPU, which Linux never offlines) is ignored.
    if ((v & CPU_STATUS_EJECT) !== 0 && (s & CPU_STATUS_PRESENT) !== 0 && id !== 0) {
      s = 0;
      this.status[id] = s;
      this.onEject(id);
      return;
    }
    this.status[id] = s;
  }
}
