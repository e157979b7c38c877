import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createMmioBus, createPioBus } from './bus.js';
import { CountingInterrupt } from './interrupt.js';
import {
  ACPI_POWER_PORT,
  ACPI_RESET_VALUE,
  AcpiGedDevice,
  AcpiPowerDevice,
  DEFAULT_ACPI_POWER_LAYOUT,
  GED_DEVICE_SIZE,
  GED_POWER_BUTTON,
  GED_VMGENID,
  S5_SLEEP_TYPE,
  SLP_EN,
  SLP_TYP_SHIFT,
  acpiPowerRegisters,
} from './acpi_power.js';

function setup(layout = DEFAULT_ACPI_POWER_LAYOUT) {
  const events: string[] = [];
  const dev = new AcpiPowerDevice({
    onShutdown: () => events.push('shutdown'),
    onReset: () => events.push('reset'),
    onSleep: (t) => events.push(`sleep${t}`),
    layout,
  });
  const bus = createPioBus();
  bus.insert(dev, layout.base, layout.length);
  const outb = (port: number, v: number) => bus.write(port, Uint8Array.of(v));
  return { dev, bus, events, outb };
}

test('S5 via SLP_TYP|SLP_EN powers off (Linux acpi_hw_sleep for hardware-reduced)', () => {
  const { events, outb, bus } = setup();
  outb(ACPI_POWER_PORT, (S5_SLEEP_TYPE << SLP_TYP_SHIFT) | SLP_EN);
  assert.deepEqual(events, ['shutdown']);
  // SLP_TYP without SLP_EN does nothing; other sleep types are reported as unsupported.
  outb(ACPI_POWER_PORT, S5_SLEEP_TYPE << SLP_TYP_SHIFT);
  outb(ACPI_POWER_PORT, (3 << SLP_TYP_SHIFT) | SLP_EN);
  assert.deepEqual(events, ['shutdown', 'sleep3']);
  const d = new Uint8Array(1);
  bus.read(ACPI_POWER_PORT, d);
  assert.equal(d[0], 0, 'sleep status: WAK_STS clear');
});

test('reset register value reboots; other values do not', () => {
  const { events, outb } = setup();
  outb(ACPI_POWER_PORT, ACPI_RESET_VALUE);
  outb(ACPI_POWER_PORT, 0x80); // WAK_STS write-1-to-clear
  outb(ACPI_POWER_PORT, 2);
  assert.deepEqual(events, ['reset']);
});

test('custom layout and the registers the FADT must describe', () => {
  const layout = {
    base: 0x600,
    length: 4,
    sleepControlOffset: 0,
    sleepStatusOffset: 1,
    resetOffset: 2,
    resetValue: 0x0e,
    s5SleepType: 7,
  };
  const { events, outb } = setup(layout);
  outb(0x602, 0x0e);
  outb(0x601, (7 << SLP_TYP_SHIFT) | SLP_EN); // sleep status register: not a sleep command
  outb(0x600, (7 << SLP_TYP_SHIFT) | SLP_EN);
  assert.deepEqual(events, ['reset', 'shutdown']);
  const regs = acpiPowerRegisters(layout);
  assert.equal(regs.sleepControl.address, 0x600);
  assert.equal(regs.sleepStatus.address, 0x601);
  assert.equal(regs.reset.address, 0x602);
  assert.equal(regs.resetValue, 0x0e);
  assert.equal(regs.s5SleepType, 7);
  const def = acpiPowerRegisters();
  assert.equal(def.sleepControl.address, 0x3c0);
  assert.equal(def.reset.address, 0x3c0);
  assert.equal(def.resetValue, 1);
  assert.throws(
    () => new AcpiPowerDevice({ onShutdown() {}, onReset() {}, layout: { ...layout, resetOffset: 4 } }),
    /resetOffset 4 is outside/,
  );
});

test('GED: power button latches an event and raises the interrupt', () => {
  const irq = new CountingInterrupt();
  const ged = new AcpiGedDevice(irq);
  const bus = createMmioBus();
  bus.insert(ged, 0xfed0_0000, GED_DEVICE_SIZE);
  ged.powerButton();
  assert.equal(irq.count, 1);
  assert.equal(ged.pendingEvents, GED_POWER_BUTTON);
  const d = new Uint8Array(1);
  bus.read(0xfed0_0000, d);
  assert.equal(d[0], GED_POWER_BUTTON);
  bus.read(0xfed0_0000, d);
  assert.equal(d[0], 0, 'read clears');
});

test('GED: a new VM Generation ID latches its own bit, with a pending power button press kept', () => {
  const irq = new CountingInterrupt();
  const ged = new AcpiGedDevice(irq);
  ged.powerButton();
  ged.vmGenIdChanged();
  assert.equal(irq.count, 2, 'one edge per event');
  assert.equal(ged.pendingEvents, GED_POWER_BUTTON | GED_VMGENID);
  assert.deepEqual(ged.saveState(), { pending: GED_POWER_BUTTON | GED_VMGENID });
  const d = new Uint8Array(1);
  ged.read(0, d);
  assert.equal(d[0], GED_POWER_BUTTON | GED_VMGENID, '_EVT sees both in one read');
  ged.write(0, Uint8Array.of(0xff));
  assert.equal(ged.pendingEvents, 0, 'writes change nothing');
  const restored = new AcpiGedDevice(irq);
  restored.restoreState({ pending: GED_VMGENID });
  assert.equal(restored.pendingEvents, GED_VMGENID);
  assert.equal(irq.count, 2, 'a restore raises nothing by itself');
  assert.throws(() => restored.restoreState({ pending: 0x100 }), /pending/);
});
