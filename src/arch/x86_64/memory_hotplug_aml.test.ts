// ACPI memory hotplug in the DSDT (acpi.ts memoryHotplugAml, gedAml memoryHotplug) and the AML it
// needs (aml.ts createQWordField): byte-exact where ACPI 6.x chapter 20 fixes the encoding, then
// the DSDT disassembled and recompiled by ACPICA's iasl where installed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as aml from './aml.js';
import { buildAcpiTables, buildDsdt, cpuHotplugAml, gedAml, GED_EVENT_MEMORY_HOTPLUG, memoryDeviceName, memoryHotplugAml, pciSegmentsAml, readAcpiTables } from './acpi.js';
import { ACPI_TABLES_END, CPU_HOTPLUG_MMIO_START, GED_MMIO_START, MEMORY_HOTPLUG_MMIO_START, PCI_HOTPLUG_MMIO_START, PLATFORM_MMIO_START, pciSegmentLayouts, VMGENID_ADDR } from './layout.js';
import { GED_MEMORY_HOTPLUG } from '../../devices/acpi_power.js';
import { MEMORY_HOTPLUG_SLOTS } from '../../devices/memory_hotplug.js';
import { GuestMemory } from '../../memory/guest_memory.js';
import { iaslOrWhy, iaslRoundTrip } from './iasl.fixture.js';

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

test('AML: CreateQWordField (20.2.5.2)', () => {
  // CreateQWordField(MR64, 0x0E, MINL)
  assert.equal(hex(aml.createQWordField(aml.ref('MR64'), 14, 'MINL')), '8f' + '4d523634' + '0a0e' + '4d494e4c');
  assert.throws(() => aml.createQWordField(aml.ref('MR64'), -1, 'X'), /not a byte offset/);
});

test('memory hotplug AML: MHPC and one PNP0C80 device per slot, MSCN called by the GED on event 0x02; the ACPI area holds it with the rest', () => {
  assert.equal(GED_EVENT_MEMORY_HOTPLUG, GED_MEMORY_HOTPLUG, 'the DSDT and the GED device agree on the bit');
  assert.equal(MEMORY_HOTPLUG_MMIO_START, PLATFORM_MMIO_START + 0x3000);
  assert.equal(memoryDeviceName(0x1f), 'M01F');
  const ascii = Buffer.from(aml.concat(memoryHotplugAml({ mmioBase: MEMORY_HOTPLUG_MMIO_START }))).toString('latin1');
  for (const n of ['MHPC', 'MLCK', 'MHPR', 'MSEL', 'MBAS', 'MEND', 'MLEN', 'MINB', 'MENB', 'MEN_', 'MINS', 'MCRS', 'MSCN', 'M000', 'M01F']) assert.ok(ascii.includes(n), n);
  assert.ok(!ascii.includes('M020'), `${MEMORY_HOTPLUG_SLOTS} slots`);
  const [ged] = gedAml({ mmioBase: GED_MMIO_START, gsi: 5, memoryHotplug: true });
  assert.ok(hex(ged!).includes(hex(aml.ifThen(aml.lEqual(aml.and(aml.local(0), aml.integer(2)), aml.integer(2)), [aml.call('\\_SB_.MHPC.MSCN')]))));
  assert.ok(!Buffer.from(gedAml({ mmioBase: GED_MMIO_START, gsi: 5 })[0]!).toString('latin1').includes('MSCN'));
  // With 8 PCI segments' hotplug slots and 128 possible vCPUs, the memory devices still fit.
  const mem = GuestMemory.allocate([{ gpa: 0, size: 16 << 20 }]);
  try {
    const sbDevices = [
      ...pciSegmentsAml(pciSegmentLayouts(8), undefined, { mmioBase: PCI_HOTPLUG_MMIO_START }),
      cpuHotplugAml({ mmioBase: CPU_HOTPLUG_MMIO_START, maxCpus: 128 }),
      ...memoryHotplugAml({ mmioBase: MEMORY_HOTPLUG_MMIO_START }),
    ];
    const r = buildAcpiTables({ cpus: 1, maxCpus: 128, sbDevices }, mem);
    assert.ok(readAcpiTables(mem, r.rsdpAddr).get('DSDT')!.length < ACPI_TABLES_END - 0xe0000);
  } finally {
    mem.free();
  }
});

test('the memory hotplug DSDT disassembles with ACPICA iasl to the ASL we mean and compiles back without errors', (t) => {
  const why = iaslOrWhy();
  if (why !== null) { t.skip(why); return; }
  const dsdt = buildDsdt({
    sbDevices: [
      ...memoryHotplugAml({ mmioBase: MEMORY_HOTPLUG_MMIO_START, slots: 2 }),
      ...gedAml({ mmioBase: GED_MMIO_START, gsi: 5, vmGenIdAddr: VMGENID_ADDR, memoryHotplug: true }),
    ],
  });
  const { asl, squeezed, warnings } = iaslRoundTrip(dsdt);
  t.diagnostic(warnings.join('\n') || 'iasl -d: no errors or warnings');
  const base = MEMORY_HOTPLUG_MMIO_START.toString(16).toUpperCase().padStart(8, '0');
  const want = [
    /Device \(MHPC\) \{ Name \(_HID, EisaId \("PNP0A06"\) ?\) Name \(_UID, "Memory Hotplug Controller"\) Mutex \(MLCK, 0x00\)/,
    new RegExp(`OperationRegion \\(MHPR, SystemMemory, 0x${base}, 0x28\\)`),
    /Field \(MHPR, DWordAcc, NoLock, Preserve\) \{ MSEL, 32, Offset \(0x08\), MBAS, 64, MEND, 64, MLEN, 64, MINB, 32, MENB, 32 \}/,
    /Field \(MHPR, ByteAcc, NoLock, WriteAsZeros\) \{ Offset \(0x04\), MEN_?, 1, MINS, 1, , 1, MEJ0, 1 \}/,
    /Method \(MCRS, 1, Serialized\) \{ Name \(MR64, ResourceTemplate \(\) \{ QWordMemory \(ResourceProducer, PosDecode, MinFixed, MaxFixed, Cacheable, ReadWrite,/,
    // iasl names the descriptor's fields (_MIN at 0x0E, _MAX at 0x16, _LEN at 0x26) by their resource tags.
    /CreateQWordField \(MR64, \\_SB\.MHPC\.MCRS\._Y00\._MIN, MINL\) CreateQWordField \(MR64, \\_SB\.MHPC\.MCRS\._Y00\._MAX, MAXL\) CreateQWordField \(MR64, \\_SB\.MHPC\.MCRS\._Y00\._LEN, LENL\) Acquire \(MLCK, 0xFFFF\) MSEL = Arg0 MINL = MBAS MAXL = MEND LENL = MLEN Release \(MLCK\) Return \(MR64\) \}/,
    /Method \(MSCN, 0, Serialized\) \{ Acquire \(MLCK, 0xFFFF\) Local1 = MINB If \(\(\(Local1 & One\) == One\)\) \{ MSEL = Zero Notify \(\\_SB\.M000, One\) MINS = One \} If \(\(\(Local1 & 0x02\) == 0x02\)\) \{ MSEL = One Notify \(\\_SB\.M001, One\) MINS = One \} Release \(MLCK\) \}/,
    /Device \(M001\) \{ Name \(_HID, EisaId \("PNP0C80"\) ?\) Name \(_UID, One\) Method \(_STA, 0, NotSerialized\) \{ If \(\(\(\\_SB\.MHPC\.MENB & 0x02\) == 0x02\)\) \{ Return \(0x0F\) \} Return \(Zero\) \} Method \(_CRS, 0, NotSerialized\) \{ Return \(\\_SB\.MHPC\.MCRS \(One\)\) \} \}/,
    /If \(\(\(Local0 & 0x02\) == 0x02\)\) \{ \\_SB\.MHPC\.MSCN \(\) \}/,
  ];
  for (const re of want) assert.match(squeezed, re, `iasl -d output:\n${asl}`);
});
