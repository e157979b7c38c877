// CPU hotplug in the ACPI tables (acpi.ts buildMadt maxCpus, cpuHotplugAml, gedAml cpuHotplug)
// and the AML helpers it needs (aml.ts): byte-exact encodings from ACPI 6.x chapter 20, the MADT
// flags of 5.2.12.2, then the DSDT disassembled and recompiled by ACPICA's iasl where installed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as aml from './aml.js';
import { iaslOrWhy, iaslRoundTrip } from './iasl.fixture.js';
import {
  buildAcpiTables, buildDsdt, buildMadt, checksum, cpuDeviceName, cpuHotplugAml, gedAml, GED_EVENT_CPU_HOTPLUG,
  MADT_LAPIC_ENABLED, MADT_LAPIC_ONLINE_CAPABLE, pciSegmentsAml, readAcpiTables,
} from './acpi.js';
import { ACPI_TABLES_END, CPU_HOTPLUG_MMIO_START, GED_MMIO_START, PCI_HOTPLUG_MMIO_START, PLATFORM_MMIO_START, pciSegmentLayouts, VMGENID_ADDR } from './layout.js';
import { GED_CPU_HOTPLUG } from '../../devices/acpi_power.js';
import { CPU_HOTPLUG_BLOCK_SIZE } from '../../devices/cpu_hotplug.js';
import { GuestMemory } from '../../memory/guest_memory.js';

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

/** The MADT's interrupt controller structures: [type, offset]. */
function madtEntries(madt: Uint8Array): Array<{ type: number; off: number }> {
  const out: Array<{ type: number; off: number }> = [];
  for (let off = 44; off < madt.length; off += madt[off + 1]!) out.push({ type: madt[off]!, off });
  return out;
}

test('AML: Else, While, LLess, Increment, Index, Mutex/Acquire/Release, reserved field units, Notify with a TermArg', () => {
  // If(One){} Else { Store(Zero, Local0) }
  assert.equal(hex(aml.ifElse(aml.integer(1), [], [aml.store(aml.integer(0), aml.local(0))])), 'a0' + '02' + '01' + 'a1' + '04' + '700060');
  // While(LLess(Local0, 0x10)) { Increment(Local0) }
  assert.equal(hex(aml.whileLoop(aml.lLess(aml.local(0), aml.integer(16)), [aml.increment(aml.local(0))])), 'a2' + '07' + '95600a10' + '7560');
  // Index(Local0, 0x02) with a NullName target.
  assert.equal(hex(aml.index(aml.local(0), aml.integer(2))), '88' + '60' + '0a02' + '00');
  // Mutex(CPLK, 0); Acquire(CPLK, 0xFFFF): the timeout a raw word; Release(CPLK).
  assert.equal(hex(aml.mutex('CPLK')), '5b01' + '43504c4b' + '00');
  assert.equal(hex(aml.acquire('CPLK')), '5b23' + '43504c4b' + 'ffff');
  assert.equal(hex(aml.acquire('CPLK', 0x1234)), '5b23' + '43504c4b' + '3412');
  assert.equal(hex(aml.release('CPLK')), '5b27' + '43504c4b');
  assert.throws(() => aml.mutex('M', 16), /sync level 16/);
  assert.throws(() => aml.acquire('M', 0x10000), /timeout/);
  // Field(R, ByteAcc, NoLock, WriteAsZeros) { Offset(4), A, 1 }: a ReservedField of 32 bits.
  assert.equal(hex(aml.field('R', [{ name: '', bits: 32 }, { name: 'A', bits: 1 }], { access: 1, update: 2 })), '5b81' + '0d' + '525f5f5f' + '41' + '0020' + '415f5f5f' + '01');
  // Notify(C001, Arg1)
  assert.equal(hex(aml.notify('C001', aml.arg(1))), '86' + '43303031' + '69');
});

test('MADT: boot vCPUs Enabled, the hot-pluggable rest Online Capable only, revision 5; x2APIC form too', () => {
  const madt = buildMadt({ cpus: 2, maxCpus: 5 });
  assert.equal(checksum(madt), 0);
  assert.equal(madt[8], 5, 'revision 5: Linux honours Online Capable from there on');
  const lapics = madtEntries(madt).filter((e) => e.type === 0);
  assert.deepEqual(lapics.map((e) => [madt[e.off + 2], madt[e.off + 3], madt[e.off + 4]]), [
    [0, 0, MADT_LAPIC_ENABLED], [1, 1, MADT_LAPIC_ENABLED],
    [2, 2, MADT_LAPIC_ONLINE_CAPABLE], [3, 3, MADT_LAPIC_ONLINE_CAPABLE], [4, 4, MADT_LAPIC_ONLINE_CAPABLE],
  ]);
  assert.equal(MADT_LAPIC_ONLINE_CAPABLE, 2, 'ACPI 6.3 Table 5.47 bit 1');
  assert.deepEqual(buildMadt({ cpus: 3 }), buildMadt({ cpus: 3, maxCpus: 3 }), 'no hotplug: the MADT of before');
  const x2 = buildMadt({ cpus: 1, maxCpus: 3, x2apic: true });
  const dv = new DataView(x2.buffer);
  const x2s = madtEntries(x2).filter((e) => e.type === 9);
  assert.deepEqual(x2s.map((e) => [dv.getUint32(e.off + 4, true), dv.getUint32(e.off + 8, true), dv.getUint32(e.off + 12, true)]), [
    [0, 1, 0], [1, 2, 1], [2, 2, 2],
  ]);
  assert.throws(() => buildMadt({ cpus: 4, maxCpus: 3 }), /maximum vCPU count 3/);
});

test('CPU hotplug AML: CPUS with one ACPI0007 device per possible vCPU, CSCN called by the GED on event 0x01; the ACPI area holds it', () => {
  assert.equal(GED_EVENT_CPU_HOTPLUG, GED_CPU_HOTPLUG, 'the DSDT and the GED device agree on the bit');
  assert.equal(CPU_HOTPLUG_MMIO_START, PLATFORM_MMIO_START + 0x2000);
  assert.equal(cpuDeviceName(0), 'C000');
  assert.equal(cpuDeviceName(0xfe), 'C0FE');
  assert.throws(() => cpuDeviceName(0x1000), /no processor device name/);
  const cpus = cpuHotplugAml({ mmioBase: CPU_HOTPLUG_MMIO_START, maxCpus: 4 });
  const ascii = Buffer.from(cpus).toString('latin1');
  for (const n of ['CPUS', 'ACPI0010', 'ACPI0007', 'CPLK', 'PRST', 'CPEN', 'CINS', 'CRMV', 'CEJF', 'CEJ0', 'CSEL', 'CSTA', 'CMAT', 'CTFY', 'CSCN', 'C000', 'C003', '_MAT', '_EJ0']) assert.ok(ascii.includes(n), n);
  assert.ok(!ascii.includes('C004'));
  const [ged] = gedAml({ mmioBase: GED_MMIO_START, gsi: 5, cpuHotplug: true });
  assert.ok(hex(ged!).includes(hex(aml.ifThen(aml.lEqual(aml.and(aml.local(0), aml.integer(1)), aml.integer(1)), [aml.call('\\_SB_.CPUS.CSCN')]))));
  const [noCpu] = gedAml({ mmioBase: GED_MMIO_START, gsi: 5 });
  assert.ok(!Buffer.from(noCpu!).toString('latin1').includes('CSCN'), 'without cpuHotplug no CSCN call');
  // 254 possible vCPUs with 8 PCI segments' hotplug slots fit the ACPI area; with all 16 they do
  // not (about 83 bytes a vCPU, 2.7 KiB a segment): buildAcpiTables says so.
  const mem = GuestMemory.allocate([{ gpa: 0, size: 16 << 20 }]);
  try {
    const sb = (segs: number) => [...pciSegmentsAml(pciSegmentLayouts(segs), undefined, { mmioBase: PCI_HOTPLUG_MMIO_START }), cpuHotplugAml({ mmioBase: CPU_HOTPLUG_MMIO_START, maxCpus: 254 })];
    const r = buildAcpiTables({ cpus: 1, maxCpus: 254, sbDevices: sb(8) }, mem);
    assert.ok(readAcpiTables(mem, r.rsdpAddr).get('DSDT')!.length < ACPI_TABLES_END - 0xe0000);
    assert.throws(() => buildAcpiTables({ cpus: 1, maxCpus: 254, sbDevices: sb(16) }, mem), /do not fit/);
  } finally {
    mem.free();
  }
});

test('the CPU hotplug DSDT disassembles with ACPICA iasl to the ASL we mean and compiles back without errors', (t) => {
  const why = iaslOrWhy();
  if (why !== null) { t.skip(why); return; }
  const sbDevices = [
    ...pciSegmentsAml(pciSegmentLayouts(1), undefined, { mmioBase: PCI_HOTPLUG_MMIO_START }),
    cpuHotplugAml({ mmioBase: CPU_HOTPLUG_MMIO_START, maxCpus: 3 }),
    ...gedAml({ mmioBase: GED_MMIO_START, gsi: 5, vmGenIdAddr: VMGENID_ADDR, pciHotplugBridges: ['PCI0'], cpuHotplug: true }),
  ];
  const dsdt = buildDsdt({ sbDevices });
  const { asl, squeezed: squeeze, warnings } = iaslRoundTrip(dsdt);
  t.diagnostic(warnings.join('\n') || 'iasl -d: no errors or warnings');
  {
    const base = CPU_HOTPLUG_MMIO_START.toString(16).toUpperCase().padStart(8, '0');
    const want = [
      /Device \(CPUS\) \{ Name \(_HID, "ACPI0010" ?\) Name \(_CID, EisaId \("PNP0A05"\) ?\) Mutex \(CPLK, 0x00\)/,
      new RegExp(`OperationRegion \\(PRST, SystemMemory, 0x${base}, 0x${CPU_HOTPLUG_BLOCK_SIZE.toString(16).toUpperCase().padStart(2, '0')}\\)`),
      /Field \(PRST, ByteAcc, NoLock, WriteAsZeros\) \{ Offset \(0x04\), CPEN, 1, CINS, 1, CRMV, 1, CEJF, 1 \}/,
      /Field \(PRST, DWordAcc, NoLock, Preserve\) \{ CSEL, 32 \}/,
      /Method \(CSTA, 1, Serialized\) \{ Acquire \(CPLK, 0xFFFF\) CSEL = Arg0 Local0 = Zero If \(\(CPEN == One\)\) \{ Local0 = 0x0F \} Release \(CPLK\) Return \(Local0\) \}/,
      /Method \(CMAT, 1, Serialized\) \{ Local0 = Buffer \(0x08\) \{ 0x00, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00 \} Local0 \[0x02\] = Arg0 Local0 \[0x03\] = Arg0 If \(\(CSTA \(Arg0\) == 0x0F\)\) \{ Local0 \[0x04\] = One \} Return \(Local0\) \}/,
      /Method \(CEJ0, 1, Serialized\) \{ Acquire \(CPLK, 0xFFFF\) CSEL = Arg0 CEJF = One Release \(CPLK\) \}/,
      /Method \(CTFY, 2, NotSerialized\) \{ If \(\(Arg0 == Zero\)\) \{ Notify \(C000, Arg1\) \} If \(\(Arg0 == One\)\) \{ Notify \(C001, Arg1\) \} If \(\(Arg0 == 0x02\)\) \{ Notify \(C002, Arg1\) \} \}/,
      /Method \(CSCN, 0, Serialized\) \{ Acquire \(CPLK, 0xFFFF\) Local0 = Zero While \(\(Local0 < 0x03\)\) \{ CSEL = Local0 If \(\(CINS == One\)\) \{ CTFY \(Local0, One\) CINS = One \} ElseIf \(\(CRMV == One\)\) \{ CTFY \(Local0, 0x03\) CRMV = One \} Local0\+\+ \} Release \(CPLK\) \}/,
      /Device \(C001\) \{ Name \(_HID, "ACPI0007" ?\) Name \(_UID, One\) Method \(_STA, 0, NotSerialized\) \{ Return \(CSTA \(One\)\) \} Method \(_MAT, 0, NotSerialized\) \{ Return \(CMAT \(One\)\) \} Method \(_EJ0, 1, NotSerialized\) \{ CEJ0 \(One\) \} \}/,
      /If \(\(\(Local0 & One\) == One\)\) \{ \\_SB\.CPUS\.CSCN \(\) \}/,
    ];
    for (const re of want) assert.match(squeeze, re, `iasl -d output:\n${asl}`);
  }
});
