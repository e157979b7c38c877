// PCI segment 0, bus 0: a host bridge at 00:00.0 and up to 31 more devices, reached through the
// legacy configuration mechanism #1 (ports 0xCF8/0xCFC, PCI Local Bus 3.0, 3.2.2.3.2) and through
// ECAM (PCI Express Base, 7.2.2; described to the guest by the ACPI MCFG table). Both are bus
// devices; nothing here knows about the hypervisor.

import type { BusDevice } from '../devices/bus.js';
import { PciConfiguration, PCIE_CONFIG_SPACE_SIZE, PCI_CAP_ID_MSIX, type PciConfigurationState } from './config.js';
import { Msix, MSIX_CTRL_ENABLE, MSIX_CTRL_FUNCTION_MASK, type MsixState } from './msix.js';
import { StateCheck, underField } from '../devices/state.js';

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

/**
 * A function whose registers are a PciConfiguration (and MSI-X) the root can save and restore:
 * the host bridge, the virtio-pci transport. Others are saved by their owners.
 */
export interface PciFunctionRegisters {
  readonly config: PciConfiguration;
  readonly msix?: Msix;
}

function registersOf(d: PciDevice): PciFunctionRegisters | null {
  const r = d as Partial<PciFunctionRegisters>;
  if (!(r.config instanceof PciConfiguration)) return null;
  return r.msix instanceof Msix ? { config: r.config, msix: r.msix } : { config: r.config };
}

/** One present function of a bus as saved (device `slot`, function 0). */
export interface PciFunctionState {
  slot: number;
  /** Its configuration space; null for a function whose owner saves its registers. */
  config: PciConfigurationState | null;
  /** Its MSI-X table and PBA; null when it has no MSI-X (or config is null). */
  msix: MsixState | null;
}

/** A root's saved state: every present function, host bridge (00.0) first, by device number. */
export interface PciRootState {
  functions: PciFunctionState[];
}

const ROOT_DOC = 'PCI bus state';

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

  /** Take the device out of `slot` (hot unplug); the host bridge at 0 stays. */
  remove(slot: number): PciDevice | null {
    if (!Number.isInteger(slot) || slot < 1 || slot >= PCI_SLOTS) throw new RangeError(`PCI slot ${slot} outside 1..31`);
    const d = this.slots[slot] ?? null;
    this.slots[slot] = null;
    return d;
  }

  /** Device numbers with a function 0, in order (0 is the host bridge). */
  presentSlots(): number[] {
    const out: number[] = [];
    this.slots.forEach((d, i) => { if (d) out.push(i); });
    return out;
  }

  saveState(): PciRootState {
    return {
      functions: this.presentSlots().map((slot) => {
        const r = registersOf(this.slots[slot]!);
        return { slot, config: r ? r.config.saveState() : null, msix: r?.msix ? r.msix.saveState() : null };
      }),
    };
  }

  /**
   * Take over a saved bus: the same functions must be present (same device numbers, each the same
   * device: IDs, BARs, MSI-X size), all checked before any is changed; a StateFormatError names
   * the field (`functions[1].config.bars[0].size`). Each function's configuration space comes
   * back (BARs re-mapped through its owner), then MSI-X (routes re-derived through its owner),
   * then Message Control is written again through the function, as the guest wrote it, so an
   * owner that acts on that write (the virtio transport tells its worker) sees it.
   */
  restoreState(s: PciRootState): void {
    this.checkState(s);
    s.functions.forEach((f, i) => underField(`functions[${i}]`, ROOT_DOC, () => {
      const dev = this.slots[f.slot]!;
      const r = registersOf(dev);
      if (!r || !f.config) return;
      underField('config', ROOT_DOC, () => r.config.restoreState(f.config!));
      if (r.msix && f.msix) r.msix.restoreState(f.msix);
      const cap = r.msix ? r.config.findCapability(PCI_CAP_ID_MSIX) : -1;
      if (cap >= 0) dev.writeConfig(cap + 2, r.config.bytes.slice(cap + 2, cap + 4));
    }));
  }

  /** The checks of restoreState, changing nothing. */
  checkState(s: PciRootState): void {
    const c: StateCheck = new StateCheck(ROOT_DOC);
    c.object('', s);
    if (!Array.isArray(s.functions)) c.fail('functions', 'expected an array');
    const slots = this.presentSlots();
    const name = (l: readonly number[]) => l.map((n) => `${n.toString(16).padStart(2, '0')}.0`).join(', ');
    const saved = s.functions.map((f, i) => { c.object(`functions[${i}]`, f); return f.slot; });
    if (saved.length !== slots.length || saved.some((n, i) => n !== slots[i])) {
      c.fail('functions', `the state has functions ${name(saved.map((n) => (typeof n === 'number' ? n : -1)))}, this bus ${name(slots)}`);
    }
    s.functions.forEach((f, i) => underField(`functions[${i}]`, ROOT_DOC, () => this.checkFunction(f)));
  }

  /** Check one function's state against the function present. */
  private checkFunction(f: PciFunctionState): void {
    const c: StateCheck = new StateCheck(ROOT_DOC);
    const r = registersOf(this.slots[f.slot]!);
    if (r === null) {
      if (f.config !== null) c.fail('config', "this function's registers are saved by its owner, not with the bus: expected null");
      if (f.msix !== null) c.fail('msix', 'expected null (no configuration space saved with the bus)');
      return;
    }
    if (f.config === null) c.fail('config', "missing: this function's configuration space is saved with the bus");
    underField('config', ROOT_DOC, () => r.config.checkState(f.config!));
    if (!r.msix) {
      if (f.msix !== null) c.fail('msix', 'the state has MSI-X, this function has none');
      return;
    }
    if (f.msix === null) c.fail('msix', `missing: this function has MSI-X with ${r.msix.vectors} vectors`);
    underField('msix', ROOT_DOC, () => r.msix!.checkState(f.msix!));
    const cap = r.config.findCapability(PCI_CAP_ID_MSIX);
    if (cap < 0) return;
    const control = f.config.bytes[cap + 2]! | (f.config.bytes[cap + 3]! << 8);
    if (f.msix.enabled !== ((control & MSIX_CTRL_ENABLE) !== 0)) c.fail('msix.enabled', `${String(f.msix.enabled)}, but Message Control (config bytes[0x${(cap + 2).toString(16)}]) is 0x${control.toString(16)}`);
    if (f.msix.functionMasked !== ((control & MSIX_CTRL_FUNCTION_MASK) !== 0)) c.fail('msix.functionMasked', `${String(f.msix.functionMasked)}, but Message Control (config bytes[0x${(cap + 2).toString(16)}]) is 0x${control.toString(16)}`);
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
/** The CONFIG_ADDRESS latch of one PciType1 (one per vCPU thread). */
export interface PciType1State {
  configAddress: number;
}

export class PciType1 {
  private address = 0;
  /** @param slots device numbers 0..slots-1 on bus 0 are present (function 0 only). */
  constructor(private readonly slots: number) {}

  saveState(): PciType1State {
    return { configAddress: this.address };
  }

  restoreState(s: PciType1State): void {
    const c = new StateCheck('PCI CONFIG_ADDRESS state');
    c.object('', s);
    const a = c.uint('configAddress', s.configAddress, 0xffffffff);
    if ((a & 0x3) !== 0) c.fail('configAddress', `bits 0-1 of CONFIG_ADDRESS read 0 (PCI 3.0, 3.2.2.3.2), got 0x${a.toString(16)}`);
    this.address = a;
  }

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
  /** The CONFIG_ADDRESS latch (saveState/restoreState there). */
  readonly type1 = new PciType1(PCI_SLOTS);
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

