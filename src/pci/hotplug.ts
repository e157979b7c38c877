// ACPI-based PCI hotplug controller (the scheme of QEMU's PIIX4 "acpi-pci-hotplug" and Cloud
// Hypervisor's x86 PCI hotplug): the DSDT describes every slot of each segment's bus 0 as a
// device with _ADR, _SUN and _EJ0 (src/arch/x86_64/acpi.ts pciHotplugAml), and this register
// block tells the guest's ACPI PCI hotplug driver (Linux acpiphp) what changed:
//
//   per segment K, 16 bytes at base + 16 * K (32-bit registers):
//     0x0 PCIU  read: slots where a device was inserted since the last read (cleared by reading)
//     0x4 PCID  read: slots whose device the VMM asks the guest to eject (cleared by reading)
//     0x8 B0EJ  write: bit S set = the guest has ejected the device in slot S (its _EJ0 ran)
//     0xc       reads 0, writes ignored
//
// The VMM sets a bit and raises the GED's "PCI devices changed" event; the GED's _EVT calls each
// segment's PCNT, which reads PCIU/PCID and sends Notify(Sxx, 1) (device check: the guest scans
// the slot) or Notify(Sxx, 3) (eject request: the guest stops using the device, then calls
// _EJ0). ACPI 6.x 5.6.6 (device object notifications), 6.3.3 (_EJx).
//
// Threading: see src/devices/bus.ts; one caller at a time (the device thread).

import type { BusDevice } from '../devices/bus.js';
import { PCI_SLOTS } from './bus.js';

/** Bytes of one segment's register block. */
export const PCI_HOTPLUG_BLOCK_SIZE = 16;
export const PCIU_OFFSET = 0x0;
export const PCID_OFFSET = 0x4;
export const B0EJ_OFFSET = 0x8;

/** The controller's saved bits (saveState), one entry per PCI segment. */
export interface PciHotplugState {
  /** PCIU: slots whose insertion the guest has not read yet. */
  up: number[];
  /** PCID: slots whose eject request the guest has not read yet. */
  down: number[];
}

export class PciHotplugController implements BusDevice {
  private readonly up: Uint32Array;
  private readonly down: Uint32Array;
  /** Accesses that were not a 32-bit access at a register (read as 0 / ignored). */
  badAccesses = 0;

  /**
   * @param segments how many segments' blocks the device decodes (block K at 16 * K)
   * @param onEject the guest ejected the device at (segment, slot)
   */
  constructor(readonly segments: number, private readonly onEject: (segment: number, slot: number) => void) {
    if (!Number.isInteger(segments) || segments < 1) throw new RangeError(`PCI hotplug: ${segments} segments`);
    this.up = new Uint32Array(segments);
    this.down = new Uint32Array(segments);
  }

  /** Bytes the device decodes. */
  get size(): number {
    return this.segments * PCI_HOTPLUG_BLOCK_SIZE;
  }

  private check(segment: number, slot: number): void {
    if (!Number.isInteger(segment) || segment < 0 || segment >= this.segments) throw new RangeError(`PCI hotplug: segment ${segment} outside 0..${this.segments - 1}`);
    if (!Number.isInteger(slot) || slot < 1 || slot >= PCI_SLOTS) throw new RangeError(`PCI hotplug: slot ${slot} outside 1..${PCI_SLOTS - 1}`);
  }

  /** A device was put in (segment, slot): the guest is told at its next PCNT. */
  inserted(segment: number, slot: number): void {
    this.check(segment, slot);
    this.up[segment] = (this.up[segment]! | (1 << slot)) >>> 0;
    this.down[segment] = (this.down[segment]! & ~(1 << slot)) >>> 0;
  }

  /** Ask the guest to eject the device at (segment, slot); it answers through _EJ0 (B0EJ). */
  ejectRequested(segment: number, slot: number): void {
    this.check(segment, slot);
    this.down[segment] = (this.down[segment]! | (1 << slot)) >>> 0;
    this.up[segment] = (this.up[segment]! & ~(1 << slot)) >>> 0;
  }

  /**
   * What the guest has not read yet (a snapshot between vm.add-disk / vm.remove-device and the
   * guest's PCNT): PCIU and PCID of each segment. B0EJ holds nothing (a write acts at once).
   */
  saveState(): PciHotplugState {
    return { up: [...this.up], down: [...this.down] };
  }

  /** Take over saved bits (checked whole first: one entry per segment, no bit for slot 0). */
  restoreState(s: PciHotplugState): void {
    const bits = (name: 'up' | 'down'): number[] => {
      const a = s[name];
      if (!Array.isArray(a) || a.length !== this.segments) throw new RangeError(`PCI hotplug state: ${name} has ${Array.isArray(a) ? a.length : 'no'} entries, this VM ${this.segments} PCI segment(s)`);
      a.forEach((v, i) => {
        if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new RangeError(`PCI hotplug state: ${name}[${i}] is ${JSON.stringify(v)}, not a 32-bit slot mask`);
        if ((v & 1) !== 0) throw new RangeError(`PCI hotplug state: ${name}[${i}] has slot 0 (the host bridge) set`);
      });
      return a;
    };
    const up = bits('up');
    const down = bits('down');
    up.forEach((v, i) => {
      if ((v & down[i]!) !== 0) throw new RangeError(`PCI hotplug state: segment ${i} has slot(s) both inserted and to be ejected (mask 0x${((v & down[i]!) >>> 0).toString(16)})`);
    });
    this.up.set(up);
    this.down.set(down);
  }

  /** Pending bits, for tests and logs. */
  pending(segment: number): { up: number; down: number } {
    return { up: this.up[segment] ?? 0, down: this.down[segment] ?? 0 };
  }

  read(offset: number, data: Uint8Array): void {
    data.fill(0);
    const segment = Math.floor(offset / PCI_HOTPLUG_BLOCK_SIZE);
    const reg = offset % PCI_HOTPLUG_BLOCK_SIZE;
    if (data.length !== 4 || segment >= this.segments) { this.badAccesses++; return; }
    let v = 0;
    if (reg === PCIU_OFFSET) { v = this.up[segment]!; this.up[segment] = 0; }
    else if (reg === PCID_OFFSET) { v = this.down[segment]!; this.down[segment] = 0; }
    else if (reg !== B0EJ_OFFSET) this.badAccesses++;
    new DataView(data.buffer, data.byteOffset, 4).setUint32(0, v, true);
  }

  write(offset: number, data: Uint8Array): void {
    const segment = Math.floor(offset / PCI_HOTPLUG_BLOCK_SIZE);
    const reg = offset % PCI_HOTPLUG_BLOCK_SIZE;
    if (data.length !== 4 || segment >= this.segments || reg !== B0EJ_OFFSET) { this.badAccesses++; return; }
    // Slot 0 is the host bridge: never ejected.
    const bits = new DataView(data.buffer, data.byteOffset, 4).getUint32(0, true) & ~1;
    for (let slot = 1; slot < PCI_SLOTS; slot++) if ((bits & (1 << slot)) !== 0) this.onEject(segment, slot);
  }
}
