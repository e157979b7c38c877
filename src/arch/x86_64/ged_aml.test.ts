// The AML of the Generic Event Device, power button and VM Generation ID (acpi.ts gedAml) and
// the AML helpers it needs (aml.ts): byte-exact encodings from ACPI 6.x chapter 20 and 6.4.3.6,
// then the whole DSDT disassembled by ACPICA's iasl (Debian's acpica-tools) where installed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as aml from './aml.js';
import { iaslOrWhy, iaslRoundTrip } from './iasl.fixture.js';
import { buildAcpiTables, buildDsdt, gedAml, GED_EVENT_PCI_HOTPLUG, GED_EVENT_POWER_BUTTON, GED_EVENT_VMGENID, pciSegmentsAml, readAcpiTables, writeVmGenerationId } from './acpi.js';
import { ACPI_TABLES_END, E820_RESERVED, e820Map, GED_MMIO_START, PCI_HOTPLUG_MMIO_START, PLATFORM_MMIO_START, pciSegmentLayouts, VMGENID_ADDR, VMGENID_SIZE } from './layout.js';
import { GED_PCI_HOTPLUG, GED_POWER_BUTTON, GED_VMGENID } from '../../devices/acpi_power.js';
import { GuestMemory } from '../../memory/guest_memory.js';

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

test('AML: Extended Interrupt descriptor (6.4.3.6)', () => {
  // Interrupt(ResourceConsumer, Edge, ActiveHigh, Exclusive) {5}
  assert.equal(hex(aml.extendedInterrupt([5])), '890600' + '03' + '01' + '05000000');
  // Level, active low, shared, two interrupts.
  assert.equal(hex(aml.extendedInterrupt([0x20, 0x12345678], { edge: false, activeLow: true, shared: true })), '890a00' + '0d' + '02' + '20000000' + '78563412');
  assert.throws(() => aml.extendedInterrupt([]), /1-255 interrupts/);
  assert.throws(() => aml.extendedInterrupt([-1]), /out of range/);
});

test('AML: OperationRegion, Field (widths in PkgLength form), Local/Arg, Store, And, LEqual, If, Notify', () => {
  // OperationRegion(GDST, SystemMemory, 0xF8000000, One)
  assert.equal(hex(aml.operationRegion('GDST', aml.REGION_SYSTEM_MEMORY, 0xf8000000, 1)), '5b80' + '47445354' + '00' + '0c000000f8' + '01');
  // Field(GDST, ByteAcc, NoLock, WriteAsZeros) { GDAT, 8 }: flags 0x41.
  assert.equal(hex(aml.field('GDST', [{ name: 'GDAT', bits: 8 }], { access: aml.FIELD_ACCESS_BYTE, update: aml.FIELD_UPDATE_WRITE_AS_ZEROS })),
    '5b81' + '0b' + '47445354' + '41' + '47444154' + '08');
  // A 100-bit field's width takes two PkgLength bytes: 0x40 | (100 & 0xf), 100 >> 4.
  assert.equal(hex(aml.field('R', [{ name: 'F', bits: 100 }])).slice(-12), '465f5f5f' + '4406');
  assert.throws(() => aml.field('R', [{ name: 'F', bits: 0 }]), /width 0 bits/);
  assert.equal(hex(aml.local(0)), '60');
  assert.equal(hex(aml.local(7)), '67');
  assert.equal(hex(aml.arg(0)), '68');
  assert.throws(() => aml.local(8), /Local8/);
  assert.throws(() => aml.arg(7), /Arg7/);
  // Store(GDAT, Local0)
  assert.equal(hex(aml.store(aml.ref('GDAT'), aml.local(0))), '70' + '47444154' + '60');
  // LEqual(And(Local0, 0x08), 0x08): And with a NullName target.
  assert.equal(hex(aml.lEqual(aml.and(aml.local(0), aml.integer(8)), aml.integer(8))), '93' + '7b' + '60' + '0a08' + '00' + '0a08');
  // Notify(\_SB_.PWRB, 0x80)
  assert.equal(hex(aml.notify('\\_SB_.PWRB', 0x80)), '86' + '5c2e' + '5f53425f' + '50575242' + '0a80');
  // If(One) { Store(Zero, Local1) }: PkgLength counts itself, the predicate and the body.
  assert.equal(hex(aml.ifThen(aml.integer(1), [aml.store(aml.integer(0), aml.local(1))])), 'a0' + '05' + '01' + '700061');
});

test('GED, PWRB and VGEN: _HID/_CRS/_EVT/ADDR as encoded; the event bits match the device', () => {
  assert.equal(GED_EVENT_POWER_BUTTON, GED_POWER_BUTTON);
  assert.equal(GED_EVENT_VMGENID, GED_VMGENID);
  const [ged, pwrb, vgen] = gedAml({ mmioBase: GED_MMIO_START, gsi: 5, vmGenIdAddr: 0x1_2345_6000 });
  assert.ok(ged && pwrb && vgen);
  const g = hex(ged);
  assert.ok(g.startsWith('5b82'), 'a Device');
  assert.ok(g.includes(hex(aml.name('_HID', aml.string('ACPI0013')))));
  assert.ok(g.includes(hex(aml.extendedInterrupt([5]))), 'the interrupt in _CRS');
  assert.ok(g.includes(hex(aml.operationRegion('GDST', 0, GED_MMIO_START, 1))));
  // _EVT(1, Serialized): reads GDAT once into Local0, then one If per event bit.
  const evt = hex(aml.method('_EVT', 1, true, [
    aml.store(aml.ref('GDAT'), aml.local(0)),
    aml.ifThen(aml.lEqual(aml.and(aml.local(0), aml.integer(8)), aml.integer(8)), [aml.notify('\\_SB_.PWRB', 0x80)]),
    aml.ifThen(aml.lEqual(aml.and(aml.local(0), aml.integer(0x10)), aml.integer(0x10)), [aml.notify('\\_SB_.VGEN', 0x80)]),
  ]));
  assert.ok(g.endsWith(evt), '_EVT');
  assert.ok(hex(pwrb).includes(hex(aml.name('_HID', aml.eisaId('PNP0C0C')))));
  const v = hex(vgen);
  assert.ok(v.includes(hex(aml.name('_HID', aml.string('STRV0001')))));
  assert.ok(v.includes(hex(aml.name('_CID', aml.string('VM_GEN_COUNTER')))));
  // ADDR returns Package {low, high} of the address.
  assert.ok(v.endsWith(hex(aml.method('ADDR', 0, false, [aml.ret(aml.pkg([aml.integer(0x2345_6000), aml.integer(1)]))]))));
  // Without an ID address: no VGEN and no Notify of it.
  const only = gedAml({ mmioBase: GED_MMIO_START, gsi: 5 });
  assert.equal(only.length, 2);
  assert.ok(!hex(only[0]!).includes(hex(aml.nameString('\\_SB_.VGEN'))));
  assert.throws(() => gedAml({ mmioBase: 0, gsi: 5, vmGenIdAddr: -4 }), /not a guest-physical address/);
});

test('VM Generation ID page: reserved in e820, after the ACPI tables, below the GED register', () => {
  assert.ok(VMGENID_ADDR >= ACPI_TABLES_END, 'the tables never overwrite it');
  assert.ok(e820Map(256 << 20).some((e) => e.type === E820_RESERVED && e.addr <= VMGENID_ADDR && VMGENID_ADDR + VMGENID_SIZE <= e.addr + e.size));
  assert.equal(GED_MMIO_START, PLATFORM_MMIO_START);
  const mem = GuestMemory.allocate([{ gpa: 0, size: 16 << 20 }]);
  try {
    const id = Uint8Array.from({ length: 16 }, (_, i) => i + 1);
    writeVmGenerationId(mem, id);
    assert.deepEqual(mem.slice(VMGENID_ADDR, 16), id);
    assert.throws(() => writeVmGenerationId(mem, new Uint8Array(8)), /16 bytes, got 8/);
  } finally {
    mem.free();
  }
});

test('the DSDT with GED, PWRB and VGEN disassembles with ACPICA iasl to the ASL we mean', (t) => {
  const why = iaslOrWhy();
  if (why !== null) { t.skip(why); return; }
  const mem = GuestMemory.allocate([{ gpa: 0, size: 16 << 20 }]);
  let dsdt: Uint8Array;
  try {
    const sbDevices = [...pciSegmentsAml(pciSegmentLayouts(1)), ...gedAml({ mmioBase: GED_MMIO_START, gsi: 5, vmGenIdAddr: VMGENID_ADDR })];
    const r = buildAcpiTables({ cpus: 1, sbDevices }, mem);
    dsdt = readAcpiTables(mem, r.rsdpAddr).get('DSDT')!;
    assert.deepEqual(dsdt, buildDsdt({ sbDevices }), 'the DSDT in guest memory');
  } finally {
    mem.free();
  }
  const { asl, squeezed: squeeze, warnings } = iaslRoundTrip(dsdt);
  t.diagnostic(warnings.join('\n') || 'iasl -d: no errors or warnings');
  {
    const want = [
      /Device \(GED\) \{ Name \(_HID, "ACPI0013" ?\)/,
      /Interrupt \(ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, \) \{ 0x00000005, \}/,
      /OperationRegion \(GDST, SystemMemory, 0xF8000000, One\)/,
      /Field \(GDST, ByteAcc, NoLock, WriteAsZeros\) \{ GDAT, 8 \}/,
      /Method \(_EVT, 1, Serialized\) \{ Local0 = GDAT If \(\(\(Local0 & 0x08\) == 0x08\)\) \{ Notify \(\\_SB\.PWRB, 0x80\) \}/,
      /If \(\(\(Local0 & 0x10\) == 0x10\)\) \{ Notify \(\\_SB\.VGEN, 0x80\) \}/,
      /Device \(PWRB\) \{ Name \(_HID, EisaId \("PNP0C0C"\) ?\)/,
      /Device \(VGEN\) \{ Name \(_HID, "STRV0001"\) Name \(_CID, "VM_GEN_COUNTER"\)/,
      /Method \(ADDR, 0, NotSerialized\) \{ Return \(Package \(0x02\) \{ 0x000EF000, Zero \}\)/,
    ];
    for (const re of want) assert.match(squeeze, re, `iasl -d output:\n${asl}`);
  }
});

test('PCI hotplug AML: slots S01..S31 with _ADR/_SUN/_EJ0 and PCNT in each host bridge, called by the GED on event 0x04; iasl agrees', (t) => {
  const segs = pciSegmentLayouts(2);
  const sbDevices = [
    ...pciSegmentsAml(segs, undefined, { mmioBase: PCI_HOTPLUG_MMIO_START }),
    ...gedAml({ mmioBase: GED_MMIO_START, gsi: 5, vmGenIdAddr: VMGENID_ADDR, pciHotplugBridges: ['PCI0', 'PC01'] }),
  ];
  const dsdt = buildDsdt({ sbDevices });
  // All 16 segments' slots and 254 vCPUs still fit the ACPI area.
  const mem = GuestMemory.allocate([{ gpa: 0, size: 16 << 20 }]);
  try {
    const all = pciSegmentsAml(pciSegmentLayouts(16), undefined, { mmioBase: PCI_HOTPLUG_MMIO_START });
    const r = buildAcpiTables({ cpus: 254, sbDevices: all }, mem);
    assert.ok(readAcpiTables(mem, r.rsdpAddr).get('DSDT')!.length < ACPI_TABLES_END - 0xe0000);
  } finally {
    mem.free();
  }
  const ascii = Buffer.from(dsdt).toString('latin1');
  for (const n of ['PCST', 'PCIU', 'PCID', 'B0EJ', 'PCNT', 'S01_', 'S31_', '_EJ0', '_SUN']) assert.ok(ascii.includes(n), n);
  assert.equal(GED_EVENT_PCI_HOTPLUG, GED_PCI_HOTPLUG, 'the DSDT and the GED device agree on the bit');
  const why = iaslOrWhy();
  if (why !== null) { t.skip(why); return; }
  const { asl, squeezed: squeeze } = iaslRoundTrip(dsdt);
  {
    const base = PCI_HOTPLUG_MMIO_START.toString(16).toUpperCase().padStart(8, '0');
    const base1 = (PCI_HOTPLUG_MMIO_START + 16).toString(16).toUpperCase().padStart(8, '0');
    const want = [
      new RegExp(`Device \\(PCI0\\) \\{.*OperationRegion \\(PCST, SystemMemory, 0x${base}, 0x10\\)`),
      new RegExp(`Device \\(PC01\\) \\{.*OperationRegion \\(PCST, SystemMemory, 0x${base1}, 0x10\\)`),
      /Field \(PCST, DWordAcc, NoLock, WriteAsZeros\) \{ PCIU, 32, PCID, 32, B0EJ, 32 \}/,
      /Device \(S05\) \{ Name \(_ADR, 0x00050000\) Name \(_SUN, 0x05\) Method \(_EJ0, 1, NotSerialized\) \{ B0EJ = 0x20 \}/,
      /Device \(S31\) \{ Name \(_ADR, 0x001F0000\) Name \(_SUN, 0x1F\) Method \(_EJ0, 1, NotSerialized\) \{ B0EJ = 0x80000000 \}/,
      /Method \(PCNT, 0, Serialized\) \{ Local0 = PCIU Local1 = PCID If \(\(\(Local0 & 0x02\) == 0x02\)\) \{ Notify \(S01, One\) \}/,
      /If \(\(\(Local1 & 0x80000000\) == 0x80000000\)\) \{ Notify \(S31, 0x03\) \}/,
      /If \(\(\(Local0 & 0x04\) == 0x04\)\) \{ \\_SB\.PCI0\.PCNT \(\) \\_SB\.PC01\.PCNT \(\) \}/,
    ];
    for (const re of want) assert.match(squeeze, re, `iasl -d output:\n${asl}`);
  }
});
