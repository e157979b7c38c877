// ACPI tables for a hardware-reduced x86-64 guest (ACPI 6.x chapter 5).
//
// Layout in the reserved BIOS area (layout.ts): RSDP at RSDP_POINTER (0xE0000, where Linux also
// scans for it), then DSDT, FADT, MADT, caller-supplied tables (e.g. MCFG) and finally the XSDT,
// each 8-byte aligned, all below ACPI_TABLES_END. Hardware-reduced ACPI (FADT flag
// HW_REDUCED_ACPI): no PM1/GPE blocks, no SCI, no FACS; power off through the sleep control
// register (written with SLP_TYP from \_S5_ and SLP_EN) and reboot through the reset register,
// both in one I/O port, ACPI_SHUTDOWN_PORT (0x3c0, like Cloud Hypervisor).

import type { GuestMemory } from '../../memory/guest_memory.js';
import * as aml from './aml.js';
import { PCI_SLOTS } from '../../pci/bus.js';
import { PCI_HOTPLUG_BLOCK_SIZE } from '../../pci/hotplug.js';
import { CPU_HOTPLUG_BLOCK_SIZE, CPU_SELECT_OFFSET, CPU_STATUS_OFFSET } from '../../devices/cpu_hotplug.js';
import {
  MEMORY_HOTPLUG_BLOCK_SIZE, MEMORY_HOTPLUG_SLOTS, MEM_BASE_OFFSET, MEM_ENABLED_BITMAP_OFFSET, MEM_END_OFFSET, MEM_INSERTING_BITMAP_OFFSET,
  MEM_LENGTH_OFFSET, MEM_SELECT_OFFSET, MEM_STATUS_OFFSET,
} from '../../devices/memory_hotplug.js';
import {
  ACPI_TABLES_END, ACPI_TABLES_START, APIC_START, IOAPIC_START, PCI_CONFIG_ADDRESS_PORT, PCI_ECAM_BUS_END,
  PCI_ECAM_BUS_START, PCI_ECAM_START, PCI_MMIO32_SIZE, PCI_MMIO32_START, RSDP_POINTER, VMGENID_ADDR, VMGENID_SIZE,
  type PciSegmentLayout,
} from './layout.js';

export class AcpiError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'AcpiError';
  }
}

// --- Power management I/O port (the device side lives in src/devices) -----------------------------

/** I/O port of the FADT sleep control, sleep status and reset registers (one byte each). */
export const ACPI_SHUTDOWN_PORT = 0x3c0;
export const ACPI_SLEEP_CONTROL_PORT = ACPI_SHUTDOWN_PORT;
export const ACPI_SLEEP_STATUS_PORT = ACPI_SHUTDOWN_PORT;
export const ACPI_RESET_PORT = ACPI_SHUTDOWN_PORT;
/** Value the guest writes to the reset register to reboot (FADT RESET_VALUE). */
export const ACPI_RESET_VALUE = 0x01;
/** Sleep control register (ACPI 6.x 4.8.3.7): SLP_TYP bits 4:2, SLP_EN bit 5. */
export const SLEEP_CONTROL_SLP_EN = 0x20;
export const SLEEP_CONTROL_SLP_TYP_SHIFT = 2;
export const SLEEP_CONTROL_SLP_TYP_MASK = 0x1c;
/** SLP_TYP value we advertise in \_S5_. */
export const S5_SLEEP_TYPE = 5;
/** Byte Linux writes to ACPI_SLEEP_CONTROL_PORT to power off: SLP_EN | (5 << 2) = 0x34. */
export const ACPI_S5_WRITE_VALUE = SLEEP_CONTROL_SLP_EN | (S5_SLEEP_TYPE << SLEEP_CONTROL_SLP_TYP_SHIFT);
/** Sleep status register WAK_STS (bit 7). */
export const SLEEP_STATUS_WAK_STS = 0x80;

/** COM1 as described in the DSDT. */
export const COM1_PORT = 0x3f8;
export const COM1_IRQ = 4;

// --- Table identity ---------------------------------------------------------------------------------

export const OEM_ID = 'STRATO';
export const OEM_TABLE_ID = 'STRATOVM';
export const OEM_REVISION = 1;
export const CREATOR_ID = 'STRV';
export const CREATOR_REVISION = 1;
export const SDT_HEADER_SIZE = 36;
export const RSDP_SIZE = 36;
export const FADT_SIZE = 276;

// FADT Flags (5.2.9 Table 5.10) and IA-PC boot architecture flags (5.2.9.3).
export const FADT_F_RESET_REG_SUP = 1 << 10;
export const FADT_F_HW_REDUCED_ACPI = 1 << 20;
export const IAPC_BOOT_ARCH_VGA_NOT_PRESENT = 1 << 2;

// MADT structure types (5.2.12).
export const MADT_LOCAL_APIC = 0;
export const MADT_IO_APIC = 1;
export const MADT_INTERRUPT_SOURCE_OVERRIDE = 2;
export const MADT_LOCAL_APIC_NMI = 4;
export const MADT_LOCAL_X2APIC = 9;
export const MADT_LOCAL_X2APIC_NMI = 0xa;
export const MADT_PCAT_COMPAT = 1;

// Generic Address Structure (5.2.3.2).
export const GAS_SPACE_SYSTEM_IO = 1;
export const GAS_ACCESS_BYTE = 1;

function putAscii(dst: Uint8Array, off: number, s: string, len: number): void {
  for (let i = 0; i < len; i++) dst[off + i] = i < s.length ? s.charCodeAt(i) : 0x20;
}

/** Sum of bytes mod 256 (a valid table sums to 0). */
export function checksum(bytes: Uint8Array): number {
  let s = 0;
  for (let i = 0; i < bytes.length; i++) s = (s + bytes[i]!) & 0xff;
  return s;
}

/** Fill the 36-byte System Description Table header (5.2.6) and fix the checksum (byte 9). */
export function finishSdt(table: Uint8Array, signature: string, revision: number): Uint8Array {
  if (signature.length !== 4) throw new AcpiError(`bad table signature "${signature}"`);
  const dv = new DataView(table.buffer, table.byteOffset, table.byteLength);
  putAscii(table, 0, signature, 4);
  dv.setUint32(4, table.length, true);
  table[8] = revision;
  table[9] = 0;
  putAscii(table, 10, OEM_ID, 6);
  putAscii(table, 16, OEM_TABLE_ID, 8);
  dv.setUint32(24, OEM_REVISION, true);
  putAscii(table, 28, CREATOR_ID, 4);
  dv.setUint32(32, CREATOR_REVISION, true);
  table[9] = (256 - checksum(table)) & 0xff;
  return table;
}

function gas(dv: DataView, off: number, port: number): void {
  dv.setUint8(off, GAS_SPACE_SYSTEM_IO);
  dv.setUint8(off + 1, 8); // bit width
  dv.setUint8(off + 2, 0); // bit offset
  dv.setUint8(off + 3, GAS_ACCESS_BYTE);
  dv.setBigUint64(off + 4, BigInt(port), true);
}

/** RSDP v2 (5.2.5.3): checksum over the first 20 bytes, extended checksum over all 36. */
export function buildRsdp(xsdtAddr: number): Uint8Array {
  const t = new Uint8Array(RSDP_SIZE);
  const dv = new DataView(t.buffer);
  putAscii(t, 0, 'RSD PTR ', 8);
  putAscii(t, 9, OEM_ID, 6);
  t[15] = 2; // revision: ACPI 2.0+
  dv.setUint32(16, 0, true); // RsdtAddress: none, XSDT only
  dv.setUint32(20, RSDP_SIZE, true);
  dv.setBigUint64(24, BigInt(xsdtAddr), true);
  t[8] = (256 - checksum(t.subarray(0, 20))) & 0xff;
  t[32] = (256 - checksum(t)) & 0xff;
  return t;
}

/** XSDT (5.2.8): 64-bit pointers to every table except the DSDT. */
export function buildXsdt(tableAddrs: readonly number[]): Uint8Array {
  const t = new Uint8Array(SDT_HEADER_SIZE + 8 * tableAddrs.length);
  const dv = new DataView(t.buffer);
  tableAddrs.forEach((a, i) => dv.setBigUint64(SDT_HEADER_SIZE + 8 * i, BigInt(a), true));
  return finishSdt(t, 'XSDT', 1);
}

/**
 * Where the power-management registers live. Structurally compatible with the device side's
 * `acpiPowerRegisters()` (src/devices/acpi_power.ts) so both describe the same decoder.
 */
export interface AcpiPowerRegisterSpec {
  sleepControl: { address: number };
  sleepStatus: { address: number };
  reset: { address: number };
  resetValue: number;
  s5SleepType: number;
}

export const DEFAULT_POWER_REGISTERS: Readonly<AcpiPowerRegisterSpec> = Object.freeze({
  sleepControl: { address: ACPI_SLEEP_CONTROL_PORT },
  sleepStatus: { address: ACPI_SLEEP_STATUS_PORT },
  reset: { address: ACPI_RESET_PORT },
  resetValue: ACPI_RESET_VALUE,
  s5SleepType: S5_SLEEP_TYPE,
});

/** FADT revision 6.5 (5.2.9), hardware-reduced. */
export function buildFadt(dsdtAddr: number, power: AcpiPowerRegisterSpec = DEFAULT_POWER_REGISTERS): Uint8Array {
  const t = new Uint8Array(FADT_SIZE);
  const dv = new DataView(t.buffer);
  t[45] = 0; // Preferred_PM_Profile: unspecified
  dv.setUint16(109, IAPC_BOOT_ARCH_VGA_NOT_PRESENT, true);
  dv.setUint32(112, FADT_F_HW_REDUCED_ACPI | FADT_F_RESET_REG_SUP, true);
  gas(dv, 116, power.reset.address); // RESET_REG
  t[128] = power.resetValue;
  t[131] = 5; // FADT minor version (ACPI 6.5)
  dv.setBigUint64(140, BigInt(dsdtAddr), true); // X_DSDT
  gas(dv, 244, power.sleepControl.address); // SLEEP_CONTROL_REG
  gas(dv, 256, power.sleepStatus.address); // SLEEP_STATUS_REG
  putAscii(t, 268, 'STRATOVI', 8); // Hypervisor Vendor Identity
  return finishSdt(t, 'FACP', 6);
}

export interface MadtOptions {
  /** vCPUs enabled at boot (cpus.boot_vcpus). */
  cpus: number;
  /**
   * vCPUs that can be hot-plugged up to (cpus.max_vcpus, default `cpus`): entries cpus..max-1
   * are not enabled and online capable.
   */
  maxCpus?: number;
  /** Use Processor Local x2APIC entries (automatic when an APIC ID would be >= 255). */
  x2apic?: boolean;
  /** Set MADT PCAT_COMPAT (dual 8259 present). Default false: hardware-reduced guests skip the PIC. */
  pcatCompat?: boolean;
}

/** Local APIC flags (5.2.12.2 Table 5.47): Enabled, Online Capable (ACPI 6.3, MADT revision >= 5). */
export const MADT_LAPIC_ENABLED = 0x1;
export const MADT_LAPIC_ONLINE_CAPABLE = 0x2;

/**
 * MADT (5.2.12) revision 5: one local APIC per possible vCPU (APIC ID = ACPI processor UID =
 * index), the IOAPIC, IRQ0->GSI2, NMI on LINT1. The boot vCPUs' entries are Enabled; the others
 * (up to maxCpus, hot-pluggable) only Online Capable: Linux (6.1 acpi_is_processor_usable) counts
 * an entry that is neither as unusable when the MADT revision is >= 5, and the usable disabled
 * ones as possible CPUs (the hot-plug headroom).
 */
export function buildMadt(o: MadtOptions): Uint8Array {
  if (!Number.isInteger(o.cpus) || o.cpus < 1 || o.cpus > 4096) throw new AcpiError(`invalid vCPU count ${o.cpus}`);
  const max = o.maxCpus ?? o.cpus;
  if (!Number.isInteger(max) || max < o.cpus || max > 4096) throw new AcpiError(`invalid maximum vCPU count ${max} (boot vCPUs ${o.cpus})`);
  const x2 = o.x2apic === true || max > 255;
  const parts: Uint8Array[] = [];
  const head = new Uint8Array(SDT_HEADER_SIZE + 8);
  const hdv = new DataView(head.buffer);
  hdv.setUint32(36, APIC_START, true);
  hdv.setUint32(40, o.pcatCompat === true ? MADT_PCAT_COMPAT : 0, true);
  parts.push(head);
  for (let i = 0; i < max; i++) parts.push(madtLocalApic(i, i < o.cpus ? MADT_LAPIC_ENABLED : MADT_LAPIC_ONLINE_CAPABLE, x2));
  const ioapic = new Uint8Array(12);
  const idv = new DataView(ioapic.buffer);
  ioapic[0] = MADT_IO_APIC; ioapic[1] = 12; ioapic[2] = 0; // IOAPIC ID 0
  idv.setUint32(4, IOAPIC_START, true);
  idv.setUint32(8, 0, true); // GSI base
  parts.push(ioapic);
  // ISA IRQ 0 (PIT) is wired to IOAPIC pin 2 (KVM's default GSI routing does the same).
  const iso = new Uint8Array(10);
  const sdv = new DataView(iso.buffer);
  iso[0] = MADT_INTERRUPT_SOURCE_OVERRIDE; iso[1] = 10; iso[2] = 0; iso[3] = 0;
  sdv.setUint32(4, 2, true);
  sdv.setUint16(8, 0, true); // flags: conforms to bus
  parts.push(iso);
  if (x2) {
    const nmi = new Uint8Array(12);
    const ndv = new DataView(nmi.buffer);
    nmi[0] = MADT_LOCAL_X2APIC_NMI; nmi[1] = 12;
    ndv.setUint16(2, 0, true);
    ndv.setUint32(4, 0xffffffff, true); // all processors
    nmi[8] = 1; // LINT1
    parts.push(nmi);
  } else {
    parts.push(Uint8Array.of(MADT_LOCAL_APIC_NMI, 6, 0xff, 0, 0, 1)); // all processors, flags 0, LINT1
  }
  return finishSdt(aml.concat(parts), 'APIC', 5);
}

/**
 * The MADT entry of vCPU `id` (APIC ID = ACPI processor UID = id): Processor Local APIC
 * (5.2.12.2, 8 bytes) or Processor Local x2APIC (5.2.12.12, 16 bytes).
 */
export function madtLocalApic(id: number, flags: number, x2apic: boolean): Uint8Array {
  if (x2apic) {
    const e = new Uint8Array(16);
    const dv = new DataView(e.buffer);
    e[0] = MADT_LOCAL_X2APIC; e[1] = 16;
    dv.setUint32(4, id, true); // x2APIC ID
    dv.setUint32(8, flags, true);
    dv.setUint32(12, id, true); // ACPI processor UID
    return e;
  }
  if (id > 254) throw new AcpiError(`vCPU ${id} needs an x2APIC entry`);
  return Uint8Array.of(MADT_LOCAL_APIC, 8, id, id, flags, 0, 0, 0);
}

/** MCFG (PCI Firmware spec 3.0, 4.1.2): one ECAM allocation. For the later PCI work. */
export function buildMcfg(ecamBase = PCI_ECAM_START, segment = 0, startBus = PCI_ECAM_BUS_START, endBus = PCI_ECAM_BUS_END): Uint8Array {
  const t = new Uint8Array(SDT_HEADER_SIZE + 8 + 16);
  const dv = new DataView(t.buffer);
  dv.setBigUint64(44, BigInt(ecamBase), true);
  dv.setUint16(52, segment, true);
  t[54] = startBus;
  t[55] = endBus;
  return finishSdt(t, 'MCFG', 1);
}

/** MCFG entry size (PCI Firmware 3.0, Table 4-3: base, segment, start bus, end bus, 4 reserved). */
export const MCFG_ENTRY_SIZE = 16;

/** MCFG with one configuration space base address allocation per PCI segment. */
export function buildMcfgForSegments(segments: readonly PciSegmentLayout[]): Uint8Array {
  if (segments.length === 0) throw new AcpiError('MCFG needs at least one PCI segment');
  const t = new Uint8Array(SDT_HEADER_SIZE + 8 + MCFG_ENTRY_SIZE * segments.length);
  const dv = new DataView(t.buffer);
  segments.forEach((s, i) => {
    const off = SDT_HEADER_SIZE + 8 + MCFG_ENTRY_SIZE * i;
    dv.setBigUint64(off, BigInt(s.ecamBase), true);
    dv.setUint16(off + 8, s.segment, true);
    t[off + 10] = s.busStart;
    t[off + 11] = s.busEnd;
  });
  return finishSdt(t, 'MCFG', 1);
}

/** AML name of segment K's host bridge: PCI0 for segment 0, PC01..PC0F after it (as Cloud Hypervisor names them). */
export function pciHostBridgeName(segment: number): string {
  return segment === 0 ? 'PCI0' : `PC${segment.toString(16).toUpperCase().padStart(2, '0')}`;
}

/**
 * One host bridge per segment (pciHostBridgeAml: _SEG, _UID and _BBN from the layout, its own
 * 32-bit window; the I/O ports, config mechanism #1 included, only on segment 0 as Cloud
 * Hypervisor does) and \_SB_.MBRD, a PNP0C02 motherboard resource that reserves every ECAM
 * window: PCI Firmware 3.0, 4.1.2 asks for the MCFG ranges to be reserved that way, and Linux
 * (arch/x86/pci/mmconfig-shared.c, is_acpi_reserved) looks for them there.
 */
export function pciSegmentsAml(
  segments: readonly PciSegmentLayout[], mmio64?: { start: number; size: number }, hotplug?: { mmioBase: number },
): Uint8Array[] {
  const out = segments.map((s) => pciHostBridgeAml({
    segment: s.segment, busStart: s.busStart, busEnd: s.busEnd, mmio32: s.mmio32,
    name: pciHostBridgeName(s.segment), uid: s.segment, io: s.segment === 0,
    ...(mmio64 !== undefined && s.segment === 0 ? { mmio64 } : {}),
    ...(hotplug !== undefined ? { terms: pciHotplugAml(hotplug.mmioBase + s.segment * PCI_HOTPLUG_BLOCK_SIZE) } : {}),
  }));
  out.push(aml.device('MBRD', [
    aml.name('_HID', aml.eisaId('PNP0C02')),
    aml.name('_UID', aml.integer(0)),
    aml.name('_CRS', aml.resourceTemplate(segments.map((s) => aml.memory32Fixed(s.ecamBase, s.ecamSize)))),
  ]));
  return out;
}

/** Notify values of ACPI 6.x 5.6.6: the OS checks the device (a new one is there), or is asked to eject it. */
export const NOTIFY_DEVICE_CHECK = 0x01;
export const NOTIFY_EJECT_REQUEST = 0x03;

/** AML name of the hotplug slot device for device number `slot` (S01_ .. S31_). */
export function pciSlotName(slot: number): string {
  return `S${slot.toString().padStart(2, '0')}`;
}

/**
 * Inside a host bridge: its segment's register block of the PCI hotplug controller
 * (src/pci/hotplug.ts; PCIU, PCID, B0EJ), a device per slot 1..31 of bus 0 (_ADR device << 16,
 * function 0; _SUN; _EJ0 writes the slot's bit to B0EJ: the OS has ejected it) and PCNT, which
 * the GED's _EVT calls on "PCI devices changed": Notify(Sxx, 1) for each slot in PCIU (device
 * check: the OS scans the slot), Notify(Sxx, 3) for each in PCID (eject request). Slots with a
 * device at boot have the same objects, so the OS can eject those too.
 */
export function pciHotplugAml(blockBase: number): Uint8Array[] {
  const slots: number[] = [];
  for (let s = 1; s < PCI_SLOTS; s++) slots.push(s);
  const bit = (local: number, slot: number, value: number): Uint8Array =>
    aml.ifThen(aml.bitsSet(aml.local(local), 2 ** slot), [aml.notify(pciSlotName(slot), value)]);
  return [
    aml.operationRegion('PCST', aml.REGION_SYSTEM_MEMORY, blockBase, PCI_HOTPLUG_BLOCK_SIZE),
    aml.field('PCST', [{ name: 'PCIU', bits: 32 }, { name: 'PCID', bits: 32 }, { name: 'B0EJ', bits: 32 }], { access: aml.FIELD_ACCESS_DWORD, update: aml.FIELD_UPDATE_WRITE_AS_ZEROS }),
    ...slots.map((s) => aml.device(pciSlotName(s), [
      aml.name('_ADR', aml.integer(s * 0x10000)),
      aml.name('_SUN', aml.integer(s)),
      aml.method('_EJ0', 1, false, [aml.store(aml.integer(2 ** s), aml.ref('B0EJ'))]),
    ])),
    aml.method('PCNT', 0, true, [
      aml.store(aml.ref('PCIU'), aml.local(0)),
      aml.store(aml.ref('PCID'), aml.local(1)),
      ...slots.map((s) => bit(0, s, NOTIFY_DEVICE_CHECK)),
      ...slots.map((s) => bit(1, s, NOTIFY_EJECT_REQUEST)),
    ]),
  ];
}

/** AML name of the processor device of vCPU `id` (C000 .. CFFF, hexadecimal as Cloud Hypervisor). */
export function cpuDeviceName(id: number): string {
  if (!Number.isInteger(id) || id < 0 || id > 0xfff) throw new AcpiError(`vCPU ${id} has no processor device name`);
  return `C${id.toString(16).toUpperCase().padStart(3, '0')}`;
}

export interface CpuHotplugAmlOptions {
  /** Guest-physical address of the CPU hotplug controller's registers (src/devices/cpu_hotplug.ts). */
  mmioBase: number;
  /** Processor devices to describe (cpus.max_vcpus). */
  maxCpus: number;
  /** Whether the MADT uses x2APIC entries (then so does _MAT). */
  x2apic?: boolean;
}

/**
 * \_SB_.CPUS, a processor container (ACPI0010, 8.4.2.1) with a processor device (ACPI0007,
 * 8.4) per possible vCPU whose _UID is its MADT processor UID, and the methods that drive the CPU
 * hotplug controller (src/devices/cpu_hotplug.ts) under the mutex CPLK (CSEL selects a vCPU):
 *  - CSTA(uid): 0x0F (present, enabled, shown, functioning) if the vCPU is present, else 0 (_STA);
 *  - CMAT(uid): its MADT entry with Enabled set while present (_MAT, 6.2.10: Linux maps a
 *    hot-added CPU's APIC ID from _MAT and wants the Enabled flag there);
 *  - CEJ0(uid): sets the status register's eject bit (field CEJF): the guest is done with it (_EJ0, 6.3.3);
 *  - CSCN, called by the GED's _EVT on the CPU hotplug event: for each vCPU with CINS set,
 *    Notify(Cxxx, 1) (device check: the OS adds the CPU) and clear CINS; with CRMV set,
 *    Notify(Cxxx, 3) (eject request: the OS offlines the CPU, then runs _EJ0) and clear CRMV;
 *  - CTFY(uid, value): Notify of the processor device `uid`.
 */
export function cpuHotplugAml(o: CpuHotplugAmlOptions): Uint8Array {
  const n = o.maxCpus;
  if (!Number.isInteger(n) || n < 1 || n > 0xfff) throw new AcpiError(`invalid maximum vCPU count ${n}`);
  const x2 = o.x2apic === true || n > 255;
  const one = aml.integer(1);
  const eq = (a: Uint8Array, b: Uint8Array): Uint8Array => aml.lEqual(a, b);
  const locked = (terms: Uint8Array[]): Uint8Array[] => [aml.acquire('CPLK'), ...terms, aml.release('CPLK')];
  // The MADT entry with flags 0, then UID/APIC ID (and Enabled) filled in by CMAT.
  const mat = madtLocalApic(0, 0, x2);
  const idAt = x2 ? [4, 12] : [2, 3];
  const flagsAt = x2 ? 8 : 4;
  const cpus: Uint8Array[] = [];
  for (let id = 0; id < n; id++) {
    cpus.push(aml.device(cpuDeviceName(id), [
      aml.name('_HID', aml.string('ACPI0007')),
      aml.name('_UID', aml.integer(id)),
      aml.method('_STA', 0, false, [aml.ret(aml.call('CSTA', [aml.integer(id)]))]),
      aml.method('_MAT', 0, false, [aml.ret(aml.call('CMAT', [aml.integer(id)]))]),
      aml.method('_EJ0', 1, false, [aml.call('CEJ0', [aml.integer(id)])]),
    ]));
  }
  const tfy: Uint8Array[] = [];
  for (let id = 0; id < n; id++) tfy.push(aml.ifThen(eq(aml.arg(0), aml.integer(id)), [aml.notify(cpuDeviceName(id), aml.arg(1))]));
  return aml.device('CPUS', [
    aml.name('_HID', aml.string('ACPI0010')),
    aml.name('_CID', aml.eisaId('PNP0A05')),
    aml.mutex('CPLK'),
    aml.operationRegion('PRST', aml.REGION_SYSTEM_MEMORY, o.mmioBase, CPU_HOTPLUG_BLOCK_SIZE),
    aml.field('PRST', [
      { name: '', bits: 8 * CPU_STATUS_OFFSET },
      { name: 'CPEN', bits: 1 }, { name: 'CINS', bits: 1 }, { name: 'CRMV', bits: 1 }, { name: 'CEJF', bits: 1 },
    ], { access: aml.FIELD_ACCESS_BYTE, update: aml.FIELD_UPDATE_WRITE_AS_ZEROS }),
    aml.field('PRST', [
      ...(CPU_SELECT_OFFSET > 0 ? [{ name: '', bits: 8 * CPU_SELECT_OFFSET }] : []),
      { name: 'CSEL', bits: 32 },
    ], { access: aml.FIELD_ACCESS_DWORD, update: aml.FIELD_UPDATE_PRESERVE }),
    aml.method('CSTA', 1, true, [
      ...locked([
        aml.store(aml.arg(0), aml.ref('CSEL')),
        aml.store(aml.integer(0), aml.local(0)),
        aml.ifThen(eq(aml.ref('CPEN'), one), [aml.store(aml.integer(0x0f), aml.local(0))]),
      ]),
      aml.ret(aml.local(0)),
    ]),
    aml.method('CMAT', 1, true, [
      aml.store(aml.buffer(mat), aml.local(0)),
      ...idAt.map((at) => aml.store(aml.arg(0), aml.index(aml.local(0), aml.integer(at)))),
      aml.ifThen(eq(aml.call('CSTA', [aml.arg(0)]), aml.integer(0x0f)), [aml.store(one, aml.index(aml.local(0), aml.integer(flagsAt)))]),
      aml.ret(aml.local(0)),
    ]),
    aml.method('CEJ0', 1, true, locked([aml.store(aml.arg(0), aml.ref('CSEL')), aml.store(one, aml.ref('CEJF'))])),
    aml.method('CTFY', 2, false, tfy),
    aml.method('CSCN', 0, true, locked([
      aml.store(aml.integer(0), aml.local(0)),
      aml.whileLoop(aml.lLess(aml.local(0), aml.integer(n)), [
        aml.store(aml.local(0), aml.ref('CSEL')),
        aml.ifElse(eq(aml.ref('CINS'), one), [aml.call('CTFY', [aml.local(0), aml.integer(NOTIFY_DEVICE_CHECK)]), aml.store(one, aml.ref('CINS'))], [
          aml.ifThen(eq(aml.ref('CRMV'), one), [aml.call('CTFY', [aml.local(0), aml.integer(NOTIFY_EJECT_REQUEST)]), aml.store(one, aml.ref('CRMV'))]),
        ]),
        aml.increment(aml.local(0)),
      ]),
    ])),
    ...cpus,
  ]);
}

/** AML name of memory device `slot` (M000 .., hexadecimal as Cloud Hypervisor). */
export function memoryDeviceName(slot: number): string {
  if (!Number.isInteger(slot) || slot < 0 || slot > 0xfff) throw new AcpiError(`memory slot ${slot} has no device name`);
  return `M${slot.toString(16).toUpperCase().padStart(3, '0')}`;
}

export interface MemoryHotplugAmlOptions {
  /** Guest-physical address of the memory hotplug controller's registers (src/devices/memory_hotplug.ts). */
  mmioBase: number;
  /** Memory devices to describe (default MEMORY_HOTPLUG_SLOTS). */
  slots?: number;
}

/**
 * \_SB_.MHPC, the memory hotplug controller (PNP0A06, a generic container, as QEMU and Cloud
 * Hypervisor name theirs), with the methods that drive its registers under the mutex MLCK (MSEL
 * selects a slot), and a memory device (PNP0C80, ACPI 6.x 9.13) per slot, \_SB_.M000 ..:
 *  - each device's _STA: 0x0F (present, enabled, shown, functioning) if its bit in MENB is set
 *    (memory is plugged there), else 0: one MMIO read;
 *  - MCRS(slot): its range as a QWordMemory descriptor (_CRS; _MIN, _MAX, _LEN from MBAS, MEND, MLEN);
 *  - MSCN, called by the GED's _EVT on the memory hotplug event: one read of MINB, then for each
 *    slot whose bit is set Notify(Mxxx, 1) (device check: the OS adds the memory; Linux's
 *    acpi_memhotplug) and clear its MINS. The OS serialises _EVT; MLCK keeps MSCN and MCRS apart.
 */
export function memoryHotplugAml(o: MemoryHotplugAmlOptions): Uint8Array[] {
  const n = o.slots ?? MEMORY_HOTPLUG_SLOTS;
  if (!Number.isInteger(n) || n < 1 || n > MEMORY_HOTPLUG_SLOTS) throw new AcpiError(`invalid memory slot count ${n}`);
  const one = aml.integer(1);
  const c = (name: string): string => `\\_SB_.MHPC.${name}`;
  const locked = (terms: Uint8Array[]): Uint8Array[] => [aml.acquire('MLCK'), ...terms, aml.release('MLCK')];
  // QWord Address Space Descriptor (6.4.3.5.1): _MIN at byte 14, _MAX at 22, _LEN at 38.
  const template = aml.resourceTemplate([aml.qwordMemory(0, 0, true)]);
  const devices: Uint8Array[] = [];
  for (let slot = 0; slot < n; slot++) {
    devices.push(aml.device(memoryDeviceName(slot), [
      aml.name('_HID', aml.eisaId('PNP0C80')),
      aml.name('_UID', aml.integer(slot)),
      aml.method('_STA', 0, false, [aml.ifThen(aml.bitsSet(aml.ref(c('MENB')), 2 ** slot), [aml.ret(aml.integer(0x0f))]), aml.ret(aml.integer(0))]),
      aml.method('_CRS', 0, false, [aml.ret(aml.call(c('MCRS'), [aml.integer(slot)]))]),
    ]));
  }
  const scan: Uint8Array[] = [];
  for (let slot = 0; slot < n; slot++) {
    scan.push(aml.ifThen(aml.bitsSet(aml.local(1), 2 ** slot), [
      aml.store(aml.integer(slot), aml.ref('MSEL')),
      aml.notify(`\\_SB_.${memoryDeviceName(slot)}`, aml.integer(NOTIFY_DEVICE_CHECK)),
      aml.store(one, aml.ref('MINS')),
    ]));
  }
  const mhpc = aml.device('MHPC', [
    aml.name('_HID', aml.eisaId('PNP0A06')),
    aml.name('_UID', aml.string('Memory Hotplug Controller')),
    aml.mutex('MLCK'),
    aml.operationRegion('MHPR', aml.REGION_SYSTEM_MEMORY, o.mmioBase, MEMORY_HOTPLUG_BLOCK_SIZE),
    aml.field('MHPR', [
      ...(MEM_SELECT_OFFSET > 0 ? [{ name: '', bits: 8 * MEM_SELECT_OFFSET }] : []),
      { name: 'MSEL', bits: 32 },
      { name: '', bits: 8 * (MEM_BASE_OFFSET - MEM_SELECT_OFFSET - 4) },
      { name: 'MBAS', bits: 64 },
      { name: '', bits: 8 * (MEM_END_OFFSET - MEM_BASE_OFFSET - 8) },
      { name: 'MEND', bits: 64 },
      { name: '', bits: 8 * (MEM_LENGTH_OFFSET - MEM_END_OFFSET - 8) },
      { name: 'MLEN', bits: 64 },
      { name: '', bits: 8 * (MEM_INSERTING_BITMAP_OFFSET - MEM_LENGTH_OFFSET - 8) },
      { name: 'MINB', bits: 32 },
      { name: '', bits: 8 * (MEM_ENABLED_BITMAP_OFFSET - MEM_INSERTING_BITMAP_OFFSET - 4) },
      { name: 'MENB', bits: 32 },
    ].filter((u) => u.bits > 0), { access: aml.FIELD_ACCESS_DWORD, update: aml.FIELD_UPDATE_PRESERVE }),
    aml.field('MHPR', [
      { name: '', bits: 8 * MEM_STATUS_OFFSET },
      { name: 'MEN_', bits: 1 }, { name: 'MINS', bits: 1 }, { name: '', bits: 1 }, { name: 'MEJ0', bits: 1 },
    ], { access: aml.FIELD_ACCESS_BYTE, update: aml.FIELD_UPDATE_WRITE_AS_ZEROS }),
    aml.method('MCRS', 1, true, [
      aml.name('MR64', template),
      aml.createQWordField(aml.ref('MR64'), 14, 'MINL'),
      aml.createQWordField(aml.ref('MR64'), 22, 'MAXL'),
      aml.createQWordField(aml.ref('MR64'), 38, 'LENL'),
      ...locked([
        aml.store(aml.arg(0), aml.ref('MSEL')),
        aml.store(aml.ref('MBAS'), aml.ref('MINL')),
        aml.store(aml.ref('MEND'), aml.ref('MAXL')),
        aml.store(aml.ref('MLEN'), aml.ref('LENL')),
      ]),
      aml.ret(aml.ref('MR64')),
    ]),
    aml.method('MSCN', 0, true, locked([aml.store(aml.ref('MINB'), aml.local(1)), ...scan])),
  ]);
  return [mhpc, ...devices];
}

/** \_SB_.COM1: 16550 at 0x3f8, IRQ 4. */
export function com1Aml(): Uint8Array {
  return aml.device('COM1', [
    aml.name('_HID', aml.eisaId('PNP0501')),
    aml.name('_UID', aml.integer(0)),
    aml.name('_CRS', aml.resourceTemplate([aml.ioPort(COM1_PORT, COM1_PORT, 0, 8), aml.irqNoFlags(COM1_IRQ)])),
  ]);
}

// --- Generic Event Device, power button, VM Generation ID ----------------------------------------

/**
 * GED event bits the DSDT's _EVT dispatches on; the same bits as the device side
 * (src/devices/acpi_power.ts GED_POWER_BUTTON, GED_VMGENID).
 */
export const GED_EVENT_CPU_HOTPLUG = 0x01;
export const GED_EVENT_MEMORY_HOTPLUG = 0x02;
export const GED_EVENT_PCI_HOTPLUG = 0x04;
export const GED_EVENT_POWER_BUTTON = 0x08;
export const GED_EVENT_VMGENID = 0x10;
/** Notify value of a power button press (ACPI 6.x 4.8.2.2.1.1) and of a new VM Generation ID. */
export const NOTIFY_DEVICE_SPECIFIC = 0x80;

/** VGEN's _HID: an ACPI ID (4 characters, 4 hex digits; iasl refuses "VMGENCTR" as one). */
export const VMGENID_HID = 'STRV0001';

export interface GedAmlOptions {
  /** Guest-physical address of the one-byte GED event register (SystemMemory). */
  mmioBase: number;
  /** The GSI the GED interrupt arrives on (edge, active high). */
  gsi: number;
  /** Address of the 16-byte VM Generation ID; omitted: no VGEN device. */
  vmGenIdAddr?: number;
  /** Host bridges (AML names) whose PCNT to call on "PCI devices changed"; omitted: no PCI hotplug. */
  pciHotplugBridges?: readonly string[];
  /** Call \_SB_.CPUS.CSCN on "CPUs changed" (cpuHotplugAml); default false. */
  cpuHotplug?: boolean;
  /** Call \_SB_.MHPC.MSCN on "memory devices changed" (memoryHotplugAml); default false. */
  memoryHotplug?: boolean;
}

/**
 * \_SB_.GED_ (ACPI 6.x 5.6.9 Generic Event Device, _HID ACPI0013), \_SB_.PWRB (a control-method
 * power button, PNP0C0C, 4.8.2.2.1.2) and \_SB_.VGEN (Microsoft's "Virtual Machine Generation
 * ID": _CID VM_GEN_COUNTER, which Linux's drivers/virt/vmgenid.c matches, under our own _HID
 * in the ACPI ID form, 6.1.5; ADDR returns the ID's address as Package {low 32 bits, high 32}). The GED's _CRS is its
 * interrupt; on it the OS runs _EVT, which reads the event register (reading clears it) and
 * notifies the devices whose bits are set: Notify(PWRB, 0x80) is a press, Notify(VGEN, 0x80)
 * says the generation ID changed.
 */
export function gedAml(o: GedAmlOptions): Uint8Array[] {
  const bit = (mask: number, target: string): Uint8Array =>
    aml.ifThen(aml.bitsSet(aml.local(0), mask), [aml.notify(target, NOTIFY_DEVICE_SPECIFIC)]);
  const evt = [aml.store(aml.ref('GDAT'), aml.local(0)), bit(GED_EVENT_POWER_BUTTON, '\\_SB_.PWRB')];
  if (o.vmGenIdAddr !== undefined) evt.push(bit(GED_EVENT_VMGENID, '\\_SB_.VGEN'));
  if (o.cpuHotplug === true) {
    evt.push(aml.ifThen(aml.bitsSet(aml.local(0), GED_EVENT_CPU_HOTPLUG), [aml.call('\\_SB_.CPUS.CSCN')]));
  }
  if (o.memoryHotplug === true) {
    evt.push(aml.ifThen(aml.bitsSet(aml.local(0), GED_EVENT_MEMORY_HOTPLUG), [aml.call('\\_SB_.MHPC.MSCN')]));
  }
  if (o.pciHotplugBridges !== undefined && o.pciHotplugBridges.length > 0) {
    evt.push(aml.ifThen(aml.bitsSet(aml.local(0), GED_EVENT_PCI_HOTPLUG),
      o.pciHotplugBridges.map((b) => aml.call(`\\_SB_.${b}.PCNT`))));
  }
  const out = [
    aml.device('GED_', [
      aml.name('_HID', aml.string('ACPI0013')),
      aml.name('_UID', aml.integer(0)),
      aml.name('_CRS', aml.resourceTemplate([aml.extendedInterrupt([o.gsi], { edge: true })])),
      aml.operationRegion('GDST', aml.REGION_SYSTEM_MEMORY, o.mmioBase, 1),
      aml.field('GDST', [{ name: 'GDAT', bits: 8 }], { access: aml.FIELD_ACCESS_BYTE, update: aml.FIELD_UPDATE_WRITE_AS_ZEROS }),
      aml.method('_EVT', 1, true, evt),
    ]),
    aml.device('PWRB', [
      aml.name('_HID', aml.eisaId('PNP0C0C')),
      aml.name('_UID', aml.integer(0)),
    ]),
  ];
  if (o.vmGenIdAddr !== undefined) {
    const a = o.vmGenIdAddr;
    if (!Number.isInteger(a) || a < 0 || a >= 2 ** 52) throw new AcpiError(`VM Generation ID address ${a} is not a guest-physical address`);
    out.push(aml.device('VGEN', [
      aml.name('_HID', aml.string(VMGENID_HID)),
      aml.name('_CID', aml.string('VM_GEN_COUNTER')),
      aml.name('_DDN', aml.string('VM_Gen_Counter')),
      aml.method('ADDR', 0, false, [aml.ret(aml.pkg([aml.integer(a % 2 ** 32), aml.integer(Math.floor(a / 2 ** 32))]))]),
    ]));
  }
  return out;
}

/**
 * Write the 16-byte VM Generation ID where VGEN's ADDR points (VMGENID_ADDR, reserved in e820):
 * a fresh random one at each boot and at each restore, so that two VMs restored from one
 * snapshot (clones) tell their guests apart.
 */
export function writeVmGenerationId(mem: GuestMemory, id: Uint8Array, addr = VMGENID_ADDR): void {
  if (id.length !== VMGENID_SIZE) throw new AcpiError(`a VM Generation ID is ${VMGENID_SIZE} bytes, got ${id.length}`);
  mem.writeBytes(addr, id);
}

export interface PciHostBridgeOptions {
  segment?: number;
  busStart?: number;
  busEnd?: number;
  /** 32-bit BAR window (default PCI_MMIO32_START, PCI_MMIO32_SIZE). */
  mmio32?: { start: number; size: number };
  /** 64-bit BAR window, e.g. pciMmio64Window(memSize). Omitted: none. */
  mmio64?: { start: number; size: number };
  /** AML device name (default PCI0). */
  name?: string;
  /** _UID (default 0). */
  uid?: number;
  /** Describe the legacy config ports and the I/O window (default true; segment 0 only). */
  io?: boolean;
  /** More terms inside the bridge's Device (the hotplug slots, pciHotplugAml). */
  terms?: readonly Uint8Array[];
}

/**
 * \_SB_.PCI0: a PCI Express host bridge (PNP0A08, compatible PNP0A03) whose _CRS lists the bus
 * range, the legacy config ports 0xcf8-0xcff, the I/O window (all ports except 0xcf8-0xcff) and
 * the memory windows. For the PCI work: pass as `sbDevices` and add `buildMcfg()` to `extraTables`.
 */
export function pciHostBridgeAml(o: PciHostBridgeOptions = {}): Uint8Array {
  const busStart = o.busStart ?? PCI_ECAM_BUS_START;
  const busEnd = o.busEnd ?? PCI_ECAM_BUS_END;
  const m32 = o.mmio32 ?? { start: PCI_MMIO32_START, size: PCI_MMIO32_SIZE };
  const crs: Uint8Array[] = [aml.wordBusNumber(busStart, busEnd)];
  if (o.io !== false) {
    crs.push(
      aml.ioPort(PCI_CONFIG_ADDRESS_PORT, PCI_CONFIG_ADDRESS_PORT, 1, 8),
      aml.wordIo(0x0000, PCI_CONFIG_ADDRESS_PORT - 1),
      aml.wordIo(PCI_CONFIG_ADDRESS_PORT + 8, 0xffff),
    );
  }
  crs.push(aml.dwordMemory(m32.start, m32.start + m32.size - 1));
  if (o.mmio64 !== undefined) {
    crs.push(aml.qwordMemory(BigInt(o.mmio64.start), BigInt(o.mmio64.start) + BigInt(o.mmio64.size) - 1n));
  }
  return aml.device(o.name ?? 'PCI0', [
    aml.name('_HID', aml.eisaId('PNP0A08')),
    aml.name('_CID', aml.eisaId('PNP0A03')),
    aml.name('_ADR', aml.integer(0)),
    aml.name('_SEG', aml.integer(o.segment ?? 0)),
    aml.name('_UID', aml.integer(o.uid ?? 0)),
    aml.name('_BBN', aml.integer(busStart)),
    aml.name('_CRS', aml.resourceTemplate(crs)),
    ...(o.terms ?? []),
  ]);
}

export interface DsdtOptions {
  /** Describe COM1 (default true). */
  com1?: boolean;
  /** Extra AML objects inside \_SB_ (e.g. a PNP0A08 PCI host bridge with _CRS). */
  sbDevices?: readonly Uint8Array[];
  /** SLP_TYP advertised in \\_S5_ (default S5_SLEEP_TYPE). */
  s5SleepType?: number;
}

/** DSDT (5.2.11.1) with \_S5_ (Package {SLP_TYPa, SLP_TYPb, 0, 0}) and \_SB_ devices. */
export function buildDsdt(o: DsdtOptions = {}): Uint8Array {
  const sb: Uint8Array[] = [];
  if (o.com1 !== false) sb.push(com1Aml());
  for (const d of o.sbDevices ?? []) sb.push(d);
  const slpTyp = o.s5SleepType ?? S5_SLEEP_TYPE;
  if (!Number.isInteger(slpTyp) || slpTyp < 0 || slpTyp > 7) throw new AcpiError(`invalid S5 sleep type ${slpTyp}`);
  const body = aml.concat([
    aml.name('\\_S5_', aml.pkg([aml.integer(slpTyp), aml.integer(slpTyp), aml.integer(0), aml.integer(0)])),
    aml.scope('\\_SB_', sb),
  ]);
  const t = new Uint8Array(SDT_HEADER_SIZE + body.length);
  t.set(body, SDT_HEADER_SIZE);
  return finishSdt(t, 'DSDT', 2);
}

export interface AcpiConfig extends DsdtOptions {
  cpus: number;
  /** cpus.max_vcpus (default `cpus`): MADT entries for the hot-pluggable ones. */
  maxCpus?: number;
  x2apic?: boolean;
  pcatCompat?: boolean;
  /** Complete extra tables (e.g. buildMcfg()) to list in the XSDT. */
  extraTables?: readonly Uint8Array[];
  /** Power-management register placement (default: everything at ACPI_SHUTDOWN_PORT). */
  power?: AcpiPowerRegisterSpec;
}

export interface AcpiResult {
  rsdpAddr: number;
  tables: Array<{ signature: string; addr: number; length: number }>;
}

/**
 * Build all tables, write them into guest memory between ACPI_TABLES_START and ACPI_TABLES_END,
 * and return the RSDP address (for boot_params.acpi_rsdp_addr / hvm_start_info.rsdp_paddr).
 */
export function buildAcpiTables(cfg: AcpiConfig, mem: GuestMemory): AcpiResult {
  const tables: AcpiResult['tables'] = [];
  let next = RSDP_POINTER + RSDP_SIZE;
  const place = (t: Uint8Array): number => {
    const addr = Math.ceil(next / 8) * 8;
    if (addr + t.length > ACPI_TABLES_END) {
      throw new AcpiError(`ACPI tables do not fit in 0x${ACPI_TABLES_START.toString(16)}-0x${ACPI_TABLES_END.toString(16)}`);
    }
    mem.writeBytes(addr, t);
    tables.push({ signature: String.fromCharCode(t[0]!, t[1]!, t[2]!, t[3]!), addr, length: t.length });
    next = addr + t.length;
    return addr;
  };
  const dsdtOpts: DsdtOptions = {};
  if (cfg.com1 !== undefined) dsdtOpts.com1 = cfg.com1;
  if (cfg.sbDevices !== undefined) dsdtOpts.sbDevices = cfg.sbDevices;
  const power = cfg.power ?? DEFAULT_POWER_REGISTERS;
  dsdtOpts.s5SleepType = power.s5SleepType;
  const madtOpts: MadtOptions = { cpus: cfg.cpus };
  if (cfg.maxCpus !== undefined) madtOpts.maxCpus = cfg.maxCpus;
  if (cfg.x2apic !== undefined) madtOpts.x2apic = cfg.x2apic;
  if (cfg.pcatCompat !== undefined) madtOpts.pcatCompat = cfg.pcatCompat;
  const madt = buildMadt(madtOpts); // validates cpus before anything is written
  const dsdtAddr = place(buildDsdt(dsdtOpts));
  const listed = [place(buildFadt(dsdtAddr, power)), place(madt)];
  for (const t of cfg.extraTables ?? []) {
    if (t.length < SDT_HEADER_SIZE || new DataView(t.buffer, t.byteOffset).getUint32(4, true) !== t.length || checksum(t) !== 0) {
      throw new AcpiError('extra ACPI table has a bad header length or checksum');
    }
    listed.push(place(t));
  }
  const xsdtAddr = place(buildXsdt(listed));
  mem.writeBytes(RSDP_POINTER, buildRsdp(xsdtAddr));
  tables.unshift({ signature: 'RSD PTR ', addr: RSDP_POINTER, length: RSDP_SIZE });
  return { rsdpAddr: RSDP_POINTER, tables };
}

/**
 * Read the tables back from guest memory starting at the RSDP, verifying signatures, lengths and
 * checksums (for tests and diagnostics). Returns signature -> table bytes (copies).
 */
export function readAcpiTables(mem: GuestMemory, rsdpAddr: number): Map<string, Uint8Array> {
  const out = new Map<string, Uint8Array>();
  const rsdp = mem.slice(rsdpAddr, RSDP_SIZE).slice();
  if (String.fromCharCode(...rsdp.subarray(0, 8)) !== 'RSD PTR ') throw new AcpiError('no RSDP signature');
  if (checksum(rsdp.subarray(0, 20)) !== 0) throw new AcpiError('RSDP checksum (first 20 bytes) is wrong');
  if (checksum(rsdp) !== 0) throw new AcpiError('RSDP extended checksum is wrong');
  out.set('RSD PTR ', rsdp);
  const readSdt = (addr: number): Uint8Array => {
    const len = mem.readU32(addr + 4);
    if (len < SDT_HEADER_SIZE) throw new AcpiError(`table at 0x${addr.toString(16)} has length ${len}`);
    const t = mem.slice(addr, len).slice();
    const sig = String.fromCharCode(t[0]!, t[1]!, t[2]!, t[3]!);
    if (checksum(t) !== 0) throw new AcpiError(`${sig} checksum is wrong`);
    out.set(sig, t);
    return t;
  };
  const xsdt = readSdt(Number(new DataView(rsdp.buffer).getBigUint64(24, true)));
  const xdv = new DataView(xsdt.buffer);
  for (let off = SDT_HEADER_SIZE; off + 8 <= xsdt.length; off += 8) {
    const t = readSdt(Number(xdv.getBigUint64(off, true)));
    if (String.fromCharCode(t[0]!, t[1]!, t[2]!, t[3]!) === 'FACP' && t.length >= 148) {
      readSdt(Number(new DataView(t.buffer).getBigUint64(140, true)));
    }
  }
  return out;
}
