// PCI segment 0, bus 0: a host bridge at 00:00.0 and up to 31 more devices, reached through the
// legacy configuration mechanism #1 (ports 0xCF8/0xCFC, PCI Local Bus 3.0, 3.2.2.3.2) and through
// ECAM (PCI Express Base, 7.2.2; described to the guest by the ACPI MCFG table). Both are bus
// devices; nothing here knows about the hypervisor.

import type { BusDevice } from '../devices/bus.js';
import { PciConfiguration, PCIE_CONFIG_SPACE_SIZE } from './config.js';

/** A PCI function's configuration space as seen by the root (offsets 0..4095). */
export interface PciDevice {
  readConfig(offset: number, data: Uint8Array): void;
  writeConfig(offset: number, data: Uint8Array): void;
}

export const PCI_SLOTS = 32;
/** Intel's vendor ID and a host bridge device ID, as Cloud Hypervisor presents its root. */
export const HOST_BRIDGE_VENDOR = 0x8086;
export const HOST_BRIDGE_DEVICE = 0x0d57;

export class PciHostBridge implements PciDevice {
  readonly config = new PciConfiguration({
    vendorId: HOST_BRIDGE_VENDOR, deviceId: HOST_BRIDGE_DEVICE, revisionId: 0,
    classCode: 0x060000, subsystemVendorId: 0, subsystemId: 0,
  });
  readConfig(offset: number, data: Uint8Array): void { this.config.read(offset, data); }
  writeConfig(offset: number, data: Uint8Array): void { this.config.write(offset, data); }
}

export class PciRoot {
  private readonly slots: Array<PciDevice | null> = new Array<PciDevice | null>(PCI_SLOTS).fill(null);

  constructor() {
    this.slots[0] = new PciHostBridge();
  }

  /** Put `dev` at device number `slot` (function 0); returns the slot. Omitted: the first free one. */
  add(dev: PciDevice, slot?: number): number {
    const s = slot ?? this.slots.findIndex((d) => d === null);
    if (s < 0) throw new RangeError('no free PCI slot on bus 0');
    if (!Number.isInteger(s) || s < 1 || s >= PCI_SLOTS) throw new RangeError(`PCI slot ${s} outside 1..31`);
    if (this.slots[s]) throw new RangeError(`PCI slot ${s} is already used`);
    this.slots[s] = dev;
    return s;
  }

  device(bus: number, slot: number, fn: number): PciDevice | null {
    if (bus !== 0 || fn !== 0 || slot >= PCI_SLOTS) return null;
    return this.slots[slot] ?? null;
  }

  /** Config read; an absent function reads all-ones (the "master abort" value). */
  read(bus: number, slot: number, fn: number, offset: number, data: Uint8Array): void {
    const d = this.device(bus, slot, fn);
    if (!d) { data.fill(0xff); return; }
    d.readConfig(offset, data);
  }

  write(bus: number, slot: number, fn: number, offset: number, data: Uint8Array): void {
    this.device(bus, slot, fn)?.writeConfig(offset, data);
  }
}

/**
 * Configuration mechanism #1 (ports 0xCF8-0xCFF) as a front end to ECAM: CONFIG_ADDRESS is
 * latched here and a CONFIG_DATA access becomes an ECAM offset. The VMM runs one per vCPU thread
 * (Linux takes pci_config_lock around each address/data pair), so scans of absent functions are
 * answered without leaving the vCPU thread and present ones go to the device thread as ECAM.
 */
export class PciType1 {
  private address = 0;
  /** @param slots device numbers 0..slots-1 on bus 0 are present (function 0 only). */
  constructor(private readonly slots: number) {}

  /** CONFIG_ADDRESS: only a 32-bit access at 0xCF8 reaches the register. */
  writeAddress(portOffset: number, data: Uint8Array): void {
    if (portOffset === 0 && data.length === 4) this.address = (new DataView(data.buffer, data.byteOffset, 4).getUint32(0, true) & ~0x3) >>> 0;
  }

  readAddress(portOffset: number, data: Uint8Array): void {
    if (portOffset === 0 && data.length === 4) new DataView(data.buffer, data.byteOffset, 4).setUint32(0, this.address, true);
    else data.fill(0xff);
  }

  /**
   * ECAM offset for a CONFIG_DATA access of `len` bytes at 0xCFC + `dataOffset`, or -1 when it
   * targets no present function (reads all-ones, writes are dropped).
   */
  ecamOffset(dataOffset: number, len: number): number {
    const a = this.address;
    const reg = (a & 0xfc) + dataOffset;
    const bus = (a >>> 16) & 0xff;
    const dev = (a >>> 11) & 0x1f;
    const fn = (a >>> 8) & 0x7;
    if ((a & 0x80000000) === 0 || bus !== 0 || fn !== 0 || dev >= this.slots || reg + len > 256) return -1;
    return (dev << 15) | reg;
  }
}

/** Ports 0xCF8-0xCFF served directly against a root (tests, or a VMM without the vCPU front end). */
export class PciConfigIo implements BusDevice {
  private readonly type1 = new PciType1(PCI_SLOTS);
  constructor(private readonly root: PciRoot) {}

  read(offset: number, data: Uint8Array): void {
    if (offset < 4) { this.type1.readAddress(offset, data); return; }
    const e = this.type1.ecamOffset(offset - 4, data.length);
    if (e < 0) { data.fill(0xff); return; }
    this.root.read(0, e >> 15, 0, e & 0xfff, data);
  }

  write(offset: number, data: Uint8Array): void {
    if (offset < 4) { this.type1.writeAddress(offset, data); return; }
    const e = this.type1.ecamOffset(offset - 4, data.length);
    if (e >= 0) this.root.write(0, e >> 15, 0, e & 0xfff, data);
  }
}

/** ECAM window: 1 MiB per bus, 4 KiB per function (bus << 20 | device << 15 | function << 12). */
export class PciConfigMmio implements BusDevice {
  constructor(private readonly root: PciRoot) {}

  read(offset: number, data: Uint8Array): void {
    const reg = offset & (PCIE_CONFIG_SPACE_SIZE - 1);
    if (reg + data.length > PCIE_CONFIG_SPACE_SIZE) { data.fill(0xff); return; }
    this.root.read(Math.floor(offset / 2 ** 20) & 0xff, (offset >> 15) & 0x1f, (offset >> 12) & 0x7, reg, data);
  }

  write(offset: number, data: Uint8Array): void {
    const reg = offset & (PCIE_CONFIG_SPACE_SIZE - 1);
    if (reg + data.length > PCIE_CONFIG_SPACE_SIZE) return;
    this.root.write(Math.floor(offset / 2 ** 20) & 0xff, (offset >> 15) & 0x1f, (offset >> 12) & 0x7, reg, data);
  }
}

/** A bump allocator for BARs inside a window (natural alignment). */
export class BarAllocator {
  private next: number;
  constructor(readonly start: number, readonly size: number) {
    this.next = start;
  }

  allocate(size: number): number {
    const addr = Math.ceil(this.next / size) * size;
    if (addr + size > this.start + this.size) throw new RangeError(`PCI BAR window 0x${this.start.toString(16)}+0x${this.size.toString(16)} is full`);
    this.next = addr + size;
    return addr;
  }
}
