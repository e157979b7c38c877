// ACPI hardware-reduced power management (ACPI 6.x section 4.8.3.7 "Sleep
// Control and Status Registers", 4.8.3.6 "Reset Register") and a Generic Event
// Device (GED, ACPI 6.x section 5.6.9) style event register for the power button.
//
// In a hardware-reduced platform (FADT flag HW_REDUCED_ACPI) there is no PM1
// block: the FADT's SLEEP_CONTROL_REG / SLEEP_STATUS_REG / RESET_REG (Generic
// Address Structures) point at byte registers. Like Cloud Hypervisor, the
// default layout puts all three at one I/O port, 0x3c0:
//  - sleep control: a write with SLP_EN (bit 5) set and SLP_TYP (bits 2-4) equal
//    to the _S5 sleep type (5) powers off -> onShutdown();
//  - reset: a write of RESET_VALUE (1) -> onReset(). 1 has SLP_EN clear, so the
//    two never collide;
//  - sleep status: reads 0 (WAK_STS, bit 7, is never set: sleep states other
//    than S5 are not supported). Writes are write-1-to-clear, so ignored.
// The layout is a parameter so the ACPI table builder (src/arch/x86_64/acpi.ts)
// describes exactly what the device decodes: use `acpiPowerRegisters(layout)`.
//
// Threading: see bus.ts; one caller at a time.

import type { BusDevice } from './bus.js';
import type { InterruptLine } from './interrupt.js';
import { NO_INTERRUPT } from './interrupt.js';
import { StateCheck } from './state.js';

/** SLP_EN: bit 5 of the sleep control register. */
export const SLP_EN = 0x20;
/** SLP_TYP field: bits 2-4 of the sleep control register. */
export const SLP_TYP_SHIFT = 2;
export const SLP_TYP_MASK = 0x07;
/** The sleep type the DSDT's \_S5 package must advertise. */
export const S5_SLEEP_TYPE = 5;
/** WAK_STS: bit 7 of the sleep status register. */
export const WAK_STS = 0x80;
/** Cloud Hypervisor's port for the sleep control/status and reset registers. */
export const ACPI_POWER_PORT = 0x3c0;
/** Value the guest writes to RESET_REG to reboot (FADT RESET_VALUE). */
export const ACPI_RESET_VALUE = 1;

/** Where the registers live; offsets are relative to `base`. */
export interface AcpiPowerLayout {
  /** Bus address of the register block (a port on the PIO bus). */
  base: number;
  /** Bus range length (> every offset). */
  length: number;
  sleepControlOffset: number;
  sleepStatusOffset: number;
  resetOffset: number;
  /** FADT RESET_VALUE. */
  resetValue: number;
  /** SLP_TYP value meaning S5 (advertised in \_S5). */
  s5SleepType: number;
}

/** Cloud Hypervisor compatible layout: everything at port 0x3c0, one byte. */
export const DEFAULT_ACPI_POWER_LAYOUT: Readonly<AcpiPowerLayout> = Object.freeze({
  base: ACPI_POWER_PORT,
  length: 1,
  sleepControlOffset: 0,
  sleepStatusOffset: 0,
  resetOffset: 0,
  resetValue: ACPI_RESET_VALUE,
  s5SleepType: S5_SLEEP_TYPE,
});

/** A byte-wide register in the system I/O space, for a FADT Generic Address Structure. */
export interface AcpiIoRegister {
  /** Address space id 1 (System I/O). */
  addressSpace: 'io';
  address: number;
  bitWidth: 8;
  bitOffset: 0;
  /** GAS access size 1 = byte. */
  accessSize: 1;
}

/** What the FADT (and DSDT \_S5) must say for `layout`. */
export interface AcpiPowerRegisters {
  sleepControl: AcpiIoRegister;
  sleepStatus: AcpiIoRegister;
  reset: AcpiIoRegister;
  resetValue: number;
  s5SleepType: number;
}

export function acpiPowerRegisters(layout: AcpiPowerLayout = DEFAULT_ACPI_POWER_LAYOUT): AcpiPowerRegisters {
  const reg = (offset: number): AcpiIoRegister => ({
    addressSpace: 'io',
    address: layout.base + offset,
    bitWidth: 8,
    bitOffset: 0,
    accessSize: 1,
  });
  return {
    sleepControl: reg(layout.sleepControlOffset),
    sleepStatus: reg(layout.sleepStatusOffset),
    reset: reg(layout.resetOffset),
    resetValue: layout.resetValue,
    s5SleepType: layout.s5SleepType,
  };
}

export interface AcpiPowerOptions {
  onShutdown: () => void;
  onReset: () => void;
  /** Called for SLP_EN with a sleep type other than S5 (unsupported; default: ignored). */
  onSleep?: (sleepType: number) => void;
  layout?: AcpiPowerLayout;
}

/**
 * The power/reset registers keep no state (sleep control and reset act at once, sleep status
 * reads 0). What is saved is the layout: the guest found it in the FADT of the saved VM, so the
 * device it is restored into must decode the same registers.
 */
export interface AcpiPowerState {
  layout: AcpiPowerLayout;
}

const LAYOUT_FIELDS = ['base', 'length', 'sleepControlOffset', 'sleepStatusOffset', 'resetOffset', 'resetValue', 's5SleepType'] as const;

export class AcpiPowerDevice implements BusDevice {
  readonly layout: Readonly<AcpiPowerLayout>;
  private readonly onShutdown: () => void;
  private readonly onReset: () => void;
  private readonly onSleep: ((sleepType: number) => void) | undefined;

  badAccesses = 0;

  constructor(options: AcpiPowerOptions) {
    const layout = options.layout ?? DEFAULT_ACPI_POWER_LAYOUT;
    for (const [name, off] of [
      ['sleepControlOffset', layout.sleepControlOffset],
      ['sleepStatusOffset', layout.sleepStatusOffset],
      ['resetOffset', layout.resetOffset],
    ] as const) {
      if (!Number.isInteger(off) || off < 0 || off >= layout.length) {
        throw new RangeError(`acpi power: ${name} ${off} is outside the ${layout.length}-byte block`);
      }
    }
    if (layout.s5SleepType < 0 || layout.s5SleepType > SLP_TYP_MASK) {
      throw new RangeError(`acpi power: s5SleepType must be 0..7, got ${layout.s5SleepType}`);
    }
    this.layout = Object.freeze({ ...layout });
    this.onShutdown = options.onShutdown;
    this.onReset = options.onReset;
    this.onSleep = options.onSleep;
  }

  saveState(): AcpiPowerState {
    return { layout: { ...this.layout } };
  }

  /** Check that the state was saved by a device with this layout (a StateFormatError names the field that differs). */
  restoreState(s: AcpiPowerState): void {
    const c = new StateCheck('ACPI power state');
    c.object('', s);
    c.object('layout', s.layout);
    for (const k of LAYOUT_FIELDS) {
      const v: unknown = s.layout[k];
      if (v !== this.layout[k]) c.fail(`layout.${k}`, `the saved VM's FADT says ${String(v)}, this device decodes ${this.layout[k]}`);
    }
  }

  read(_offset: number, data: Uint8Array): void {
    // Sleep status: WAK_STS never set. Sleep control reads 0 (SLP_EN is write-only).
    data.fill(0);
    if (data.length !== 1) this.badAccesses++;
  }

  write(offset: number, data: Uint8Array): void {
    if (data.length !== 1) {
      this.badAccesses++;
      return;
    }
    const v = data[0]!;
    const l = this.layout;
    if (offset === l.resetOffset && v === l.resetValue) {
      this.onReset();
      return;
    }
    if (offset === l.sleepControlOffset && (v & SLP_EN) !== 0) {
      const type = (v >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
      if (type === l.s5SleepType) this.onShutdown();
      else this.onSleep?.(type);
      return;
    }
    // Sleep status writes are write-1-to-clear of bits that are never set.
  }
}

// ---- Generic Event Device (MMIO) ----

/** GED event bits, as decoded by the DSDT's GED _EVT method (same bits as Cloud Hypervisor). */
export const GED_CPU_HOTPLUG = 0x01;
export const GED_MEMORY_HOTPLUG = 0x02;
export const GED_PCI_HOTPLUG = 0x04;
export const GED_POWER_BUTTON = 0x08;
/** The VM Generation ID changed (a restored snapshot): _EVT does Notify(\_SB_.VGEN, 0x80). */
export const GED_VMGENID = 0x10;
/** Size of the GED event register block (one byte). */
export const GED_DEVICE_SIZE = 1;

/**
 * The DSDT declares a GED (ACPI0013) whose _EVT method reads this byte register
 * (an OperationRegion in SystemMemory at the device's MMIO base) and dispatches
 * on its bits, e.g. Notify(\_SB.PWRB, 0x80) for the power button. Reading the
 * register returns the pending events and clears them.
 */
/** The GED's saved state: events latched and not yet read by the guest's _EVT. */
export interface AcpiGedState {
  pending: number;
}

export class AcpiGedDevice implements BusDevice {
  private readonly interrupt: InterruptLine;
  private pending = 0;

  constructor(interrupt: InterruptLine = NO_INTERRUPT) {
    this.interrupt = interrupt;
  }

  /** Events latched and not yet read by the guest. */
  get pendingEvents(): number {
    return this.pending;
  }

  saveState(): AcpiGedState {
    return { pending: this.pending };
  }

  /** Take over the latched events; no interrupt is raised (the saved device raised it already). */
  restoreState(s: AcpiGedState): void {
    const c = new StateCheck('ACPI GED state');
    c.object('', s);
    this.pending = c.uint('pending', s.pending, 0xff);
  }

  /** Latch `events` (GED_* bits) and raise the GED interrupt. */
  notify(events: number): void {
    this.pending |= events & 0xff;
    this.interrupt.trigger();
  }

  /** Tell the guest its VM Generation ID changed (written into guest RAM by the VMM first). */
  vmGenIdChanged(): void {
    this.notify(GED_VMGENID);
  }

  /** Press the ACPI power button (the guest then shuts down via S5). */
  powerButton(): void {
    this.notify(GED_POWER_BUTTON);
  }

  read(offset: number, data: Uint8Array): void {
    data.fill(0);
    if (offset === 0) {
      data[0] = this.pending;
      this.pending = 0;
    }
  }

  write(_offset: number, _data: Uint8Array): void {
    // Read-only event register.
  }
}
