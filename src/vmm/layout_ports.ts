// Port and MMIO assignments of the legacy platform (the PC's ISA map, plus Cloud Hypervisor's
// ACPI power block at 0x3c0).
import { ACPI_POWER_PORT, DEFAULT_ACPI_POWER_LAYOUT } from '../devices/acpi_power.js';

export interface PortRange { base: number; length: number }

export const PIO_I8042: PortRange = { base: 0x60, length: 5 };
export const PIO_CMOS: PortRange = { base: 0x70, length: 2 };
export const PIO_COM1: PortRange = { base: 0x3f8, length: 8 };
/**
 * PCI configuration mechanism #1: CONFIG_ADDRESS 0xCF8, CONFIG_DATA 0xCFC-0xCFF. Served in each
 * vCPU thread (pci/bus.ts PciType1), which forwards accesses to present functions as ECAM.
 */
export const PIO_PCI_CONFIG: PortRange = { base: 0xcf8, length: 8 };
export const PIO_ACPI_POWER: PortRange = { base: ACPI_POWER_PORT, length: DEFAULT_ACPI_POWER_LAYOUT.length };
/** IRQs (ISA numbering = GSI with the in-kernel PIC/IOAPIC's default routing). */
export const IRQ_COM1 = 4;
export const IRQ_KEYBOARD = 1;
/**
 * The ACPI GED's interrupt (DSDT \_SB_.GED_ _CRS): GSI 5, an ISA IRQ nothing else here uses
 * (edge, active high, as the MADT's default ISA polarity), raised through an irqfd.
 */
export const IRQ_GED = 5;

/** Port ranges the device thread serves; vCPU threads answer every other port themselves. */
export const DEVICE_PORTS: readonly PortRange[] = [PIO_I8042, PIO_CMOS, PIO_ACPI_POWER, PIO_COM1];
