import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GuestMemory } from '../../memory/guest_memory.js';
import {
  ACPI_S5_WRITE_VALUE, ACPI_SHUTDOWN_PORT, AcpiError, buildAcpiTables, buildDsdt, buildMadt, buildMcfg, checksum,
  buildMcfgForSegments, pciHostBridgeAml, pciSegmentsAml, readAcpiTables,
} from './acpi.js';
import * as aml from './aml.js';
import { ACPI_TABLES_END, MiB, PCI_ECAM_START, pciSegmentLayouts, RSDP_POINTER } from './layout.js';

// --- A small AML decoder for the subset we emit (ACPI 6.x 20.2) -------------------------------------

type Node =
  | { op: 'int'; value: bigint }
  | { op: 'string'; value: string }
  | { op: 'name'; name: string; value: Node }
  | { op: 'package'; elements: Node[] }
  | { op: 'buffer'; bytes: Uint8Array }
  | { op: 'scope' | 'device'; name: string; body: Node[] }
  | { op: 'method'; name: string; flags: number; body: Node[] };

class Reader {
  constructor(readonly b: Uint8Array, public pos = 0) {}
  byte(): number { const v = this.b[this.pos++]; assert.ok(v !== undefined, 'AML truncated'); return v; }
  pkgLength(): number {
    const start = this.pos;
    const lead = this.byte();
    const n = lead >> 6;
    if (n === 0) return start + (lead & 0x3f);
    assert.equal(lead & 0x30, 0, 'PkgLength lead byte bits 5:4 must be 0');
    let len = lead & 0xf;
    for (let i = 0; i < n; i++) len |= this.byte() << (4 + 8 * i);
    return start + len;
  }
  seg(): string { let s = ''; for (let i = 0; i < 4; i++) s += String.fromCharCode(this.byte()); return s; }
  nameString(): string {
    let prefix = '';
    while (this.b[this.pos] === 0x5c || this.b[this.pos] === 0x5e) prefix += String.fromCharCode(this.byte());
    const c = this.b[this.pos];
    if (c === 0x00) { this.pos++; return prefix; }
    if (c === 0x2e) { this.pos++; return prefix + this.seg() + '.' + this.seg(); }
    if (c === 0x2f) { this.pos++; const n = this.byte(); return prefix + Array.from({ length: n }, () => this.seg()).join('.'); }
    return prefix + this.seg();
  }
  le(n: number): bigint { let v = 0n; for (let i = 0; i < n; i++) v |= BigInt(this.byte()) << BigInt(8 * i); return v; }
  term(): Node {
    const op = this.byte();
    switch (op) {
      case 0x00: return { op: 'int', value: 0n };
      case 0x01: return { op: 'int', value: 1n };
      case 0xff: return { op: 'int', value: 0xffffffffffffffffn };
      case 0x0a: return { op: 'int', value: this.le(1) };
      case 0x0b: return { op: 'int', value: this.le(2) };
      case 0x0c: return { op: 'int', value: this.le(4) };
      case 0x0e: return { op: 'int', value: this.le(8) };
      case 0x0d: { let s = ''; for (let c = this.byte(); c !== 0; c = this.byte()) s += String.fromCharCode(c); return { op: 'string', value: s }; }
      case 0x08: { const name = this.nameString(); return { op: 'name', name, value: this.term() }; }
      case 0x12: {
        const end = this.pkgLength();
        const n = this.byte();
        const elements: Node[] = [];
        while (this.pos < end) elements.push(this.term());
        assert.equal(this.pos, end);
        assert.equal(elements.length, n);
        return { op: 'package', elements };
      }
      case 0x11: {
        const end = this.pkgLength();
        const size = this.term();
        assert.equal(size.op, 'int');
        const bytes = this.b.slice(this.pos, end);
        assert.equal(BigInt(bytes.length), (size as { value: bigint }).value);
        this.pos = end;
        return { op: 'buffer', bytes };
      }
      case 0x10: { const end = this.pkgLength(); const name = this.nameString(); return { op: 'scope', name, body: this.list(end) }; }
      case 0x14: { const end = this.pkgLength(); const name = this.nameString(); const flags = this.byte(); return { op: 'method', name, flags, body: this.list(end) }; }
      case 0x5b: {
        assert.equal(this.byte(), 0x82, 'only DeviceOp is expected after ExtOpPrefix');
        const end = this.pkgLength(); const name = this.nameString();
        return { op: 'device', name, body: this.list(end) };
      }
      default: throw new Error(`unexpected AML opcode 0x${op.toString(16)} at ${this.pos - 1}`);
    }
  }
  list(end: number): Node[] {
    const out: Node[] = [];
    while (this.pos < end) out.push(this.term());
    assert.equal(this.pos, end, 'term list ends exactly at its PkgLength');
    return out;
  }
}

function parseAml(bytes: Uint8Array): Node[] {
  return new Reader(bytes).list(bytes.length);
}

// --- Tests -----------------------------------------------------------------------------------------

test('AML encodings: PkgLength, integers, names, EISAID', () => {
  assert.deepEqual([...aml.pkgLength(0)], [1]);
  assert.deepEqual([...aml.pkgLength(62)], [63]);
  assert.deepEqual([...aml.pkgLength(63)], [0x41, 0x04]); // total 65
  assert.deepEqual([...aml.pkgLength(4093)], [0x4f, 0xff]); // total 4095
  assert.deepEqual([...aml.pkgLength(4094)], [0x81, 0x00, 0x01]); // total 4097 = 0x1001
  for (const n of [0, 62, 63, 100, 4093, 4094, 70000, 1 << 20]) {
    const enc = aml.pkgLength(n);
    const r = new Reader(Uint8Array.from([...enc, ...new Uint8Array(n)]));
    assert.equal(r.pkgLength(), n + enc.length, `PkgLength ${n}`);
  }
  assert.deepEqual([...aml.integer(0)], [0]);
  assert.deepEqual([...aml.integer(1)], [1]);
  assert.deepEqual([...aml.integer(5)], [0x0a, 5]);
  assert.deepEqual([...aml.integer(0x3f8)], [0x0b, 0xf8, 0x03]);
  assert.deepEqual([...aml.integer(0xfec00000)], [0x0c, 0, 0, 0xc0, 0xfe]);
  assert.deepEqual([...aml.integer(0x100000000n)], [0x0e, 0, 0, 0, 0, 1, 0, 0, 0]);
  assert.deepEqual([...aml.nameString('\\_SB_.PCI0')], [0x5c, 0x2e, 0x5f, 0x53, 0x42, 0x5f, 0x50, 0x43, 0x49, 0x30]);
  assert.deepEqual([...aml.nameString('_S5')], [0x5f, 0x53, 0x35, 0x5f]);
  assert.equal(aml.eisaIdValue('PNP0501'), 0x0105d041);
  assert.equal(aml.eisaIdValue('PNP0A08'), 0x080ad041);
  assert.equal(aml.eisaIdValue('PNP0A03'), 0x030ad041);
  assert.throws(() => aml.eisaIdValue('pnp0501'), aml.AmlError);
  assert.throws(() => aml.nameString('TOOLONG'), /invalid AML name segment/);
  const big = aml.device('BIG_', Array.from({ length: 40 }, (_, i) => aml.name(`N${i}`, aml.string('x'.repeat(10)))));
  const [d] = parseAml(big);
  assert.equal(d!.op, 'device');
  assert.equal((d as { body: Node[] }).body.length, 40);
});

test('DSDT: \\_S5_ package and COM1 device parse back', () => {
  const pciStub = aml.device('PCI0', [aml.name('_HID', aml.eisaId('PNP0A08')), aml.name('_CID', aml.eisaId('PNP0A03'))]);
  const dsdt = buildDsdt({ sbDevices: [pciStub] });
  assert.equal(checksum(dsdt), 0);
  assert.equal(String.fromCharCode(...dsdt.subarray(0, 4)), 'DSDT');
  const terms = parseAml(dsdt.subarray(36));
  const s5 = terms.find((t) => t.op === 'name' && t.name === '\\_S5_') as { value: Node } | undefined;
  assert.ok(s5, '\\_S5_ present');
  assert.equal(s5.value.op, 'package');
  const els = (s5.value as { elements: Node[] }).elements.map((e) => (e as { value: bigint }).value);
  assert.equal(els[0], 5n);
  assert.equal(ACPI_S5_WRITE_VALUE, 0x34);
  const sb = terms.find((t) => t.op === 'scope') as { name: string; body: Node[] };
  assert.equal(sb.name, '\\_SB_');
  const com1 = sb.body.find((t) => t.op === 'device' && t.name === 'COM1') as { body: Node[] };
  assert.ok(com1);
  const hid = com1.body.find((t) => t.op === 'name' && t.name === '_HID') as { value: { value: bigint } };
  assert.equal(hid.value.value, 0x0105d041n);
  const crs = com1.body.find((t) => t.op === 'name' && t.name === '_CRS') as { value: { op: string; bytes: Uint8Array } };
  assert.equal(crs.value.op, 'buffer');
  assert.deepEqual([...crs.value.bytes], [0x47, 1, 0xf8, 3, 0xf8, 3, 0, 8, 0x22, 0x10, 0, 0x79, 0]);
  assert.ok(sb.body.some((t) => t.op === 'device' && t.name === 'PCI0'), 'hook: extra \\_SB_ device');
  const noCom = parseAml(buildDsdt({ com1: false }).subarray(36));
  assert.equal((noCom.find((t) => t.op === 'scope') as { body: Node[] }).body.length, 0);
});

function mem(): GuestMemory {
  return GuestMemory.fromBuffers([{ gpa: 0, buffer: new ArrayBuffer(2 * MiB) }]);
}

test('buildAcpiTables: RSDP v2, XSDT, FADT, MADT, DSDT all checksum and parse back', () => {
  const m = mem();
  const r = buildAcpiTables({ cpus: 4 }, m);
  assert.equal(r.rsdpAddr, RSDP_POINTER);
  for (const t of r.tables) {
    assert.ok(t.addr >= RSDP_POINTER && t.addr + t.length <= ACPI_TABLES_END, t.signature);
    if (t.signature !== 'RSD PTR ') assert.equal(checksum(m.slice(t.addr, t.length)), 0, `${t.signature} checksum`);
  }
  const tables = readAcpiTables(m, r.rsdpAddr);
  assert.deepEqual([...tables.keys()].sort(), ['APIC', 'DSDT', 'FACP', 'RSD PTR ', 'XSDT']);
  const rsdp = tables.get('RSD PTR ')!;
  const rdv = new DataView(rsdp.buffer);
  assert.equal(rsdp.length, 36);
  assert.equal(rsdp[15], 2);
  assert.equal(rdv.getUint32(20, true), 36);
  assert.equal(checksum(rsdp.subarray(0, 20)), 0);
  assert.equal(checksum(rsdp), 0);

  const fadt = tables.get('FACP')!;
  const fdv = new DataView(fadt.buffer);
  assert.equal(fadt.length, 276);
  assert.equal(fadt[8], 6, 'FADT revision 6');
  assert.notEqual(fdv.getUint32(112, true) & (1 << 20), 0, 'HW_REDUCED_ACPI');
  assert.notEqual(fdv.getUint32(112, true) & (1 << 10), 0, 'RESET_REG_SUP');
  const dsdtAddr = Number(fdv.getBigUint64(140, true));
  assert.equal(dsdtAddr, r.tables.find((t) => t.signature === 'DSDT')!.addr);
  for (const off of [116, 244, 256]) { // RESET_REG, SLEEP_CONTROL_REG, SLEEP_STATUS_REG
    assert.equal(fadt[off], 1, 'SystemIO');
    assert.equal(fadt[off + 1], 8);
    assert.equal(Number(fdv.getBigUint64(off + 4, true)), ACPI_SHUTDOWN_PORT);
  }
  assert.equal(fadt[128], 1, 'RESET_VALUE');

  const madt = tables.get('APIC')!;
  const mdv = new DataView(madt.buffer);
  assert.equal(mdv.getUint32(36, true), 0xfee00000);
  const entries: Array<{ type: number; off: number }> = [];
  for (let off = 44; off < madt.length; off += madt[off + 1]!) {
    assert.ok(madt[off + 1]! >= 2, 'entry length');
    entries.push({ type: madt[off]!, off });
  }
  const lapics = entries.filter((e) => e.type === 0);
  assert.equal(lapics.length, 4);
  lapics.forEach((e, i) => {
    assert.equal(madt[e.off + 2], i, 'processor UID');
    assert.equal(madt[e.off + 3], i, 'APIC ID');
    assert.equal(mdv.getUint32(e.off + 4, true) & 1, 1, 'enabled');
  });
  const io = entries.find((e) => e.type === 1)!;
  assert.equal(mdv.getUint32(io.off + 4, true), 0xfec00000);
  assert.equal(mdv.getUint32(io.off + 8, true), 0);
  const iso = entries.find((e) => e.type === 2)!;
  assert.equal(madt[iso.off + 3], 0);
  assert.equal(mdv.getUint32(iso.off + 4, true), 2);
  const nmi = entries.find((e) => e.type === 4)!;
  assert.equal(madt[nmi.off + 2], 0xff);
  assert.equal(madt[nmi.off + 5], 1, 'LINT1');
  assert.ok(parseAml(tables.get('DSDT')!.subarray(36)).length > 0);
});

test('x2APIC MADT entries for many vCPUs; extra tables (MCFG) through the hook; overflow error', () => {
  const madt = buildMadt({ cpus: 300 });
  assert.equal(checksum(madt), 0);
  let x2 = 0;
  for (let off = 44; off < madt.length; off += madt[off + 1]!) {
    if (madt[off] === 9) {
      assert.equal(new DataView(madt.buffer).getUint32(off + 4, true), x2);
      x2++;
    }
    assert.notEqual(madt[off], 0, 'no xAPIC entries in x2APIC mode');
  }
  assert.equal(x2, 300);

  const m = mem();
  const r = buildAcpiTables({ cpus: 2, extraTables: [buildMcfg()] }, m);
  const tables = readAcpiTables(m, r.rsdpAddr);
  const mcfg = tables.get('MCFG');
  assert.ok(mcfg);
  assert.equal(new DataView(mcfg.buffer).getBigUint64(44, true), BigInt(PCI_ECAM_START));
  assert.equal(mcfg[55], 255);
  const bad = buildMcfg(); bad[20] ^= 1;
  assert.throws(() => buildAcpiTables({ cpus: 1, extraTables: [bad] }, mem()), /bad header length or checksum/);
  assert.throws(() => buildAcpiTables({ cpus: 4096 }, mem()), (e: unknown) => e instanceof AcpiError && /do not fit/.test(e.message));
  assert.throws(() => buildAcpiTables({ cpus: 0 }, mem()), /invalid vCPU count 0/);
});

/** Split a resource template into descriptors (ACPI 6.x 6.4.1): [tag, body] pairs; checks the End Tag. */
function descriptors(buf: Uint8Array): Array<{ tag: number; body: Uint8Array }> {
  const out: Array<{ tag: number; body: Uint8Array }> = [];
  let off = 0;
  for (;;) {
    const b = buf[off]!;
    if (b & 0x80) {
      const len = buf[off + 1]! | (buf[off + 2]! << 8);
      out.push({ tag: b, body: buf.subarray(off + 3, off + 3 + len) });
      off += 3 + len;
    } else {
      const len = b & 7;
      const tag = (b >> 3) & 0xf;
      if (tag === 0xf) { assert.equal(off + 2, buf.length, 'End Tag is last'); return out; }
      out.push({ tag, body: buf.subarray(off + 1, off + 1 + len) });
      off += 1 + len;
    }
    assert.ok(off < buf.length, 'resource template ends with an End Tag');
  }
}

test('PCI host bridge AML (hook for the PCI work) parses back with its windows', () => {
  const dev = pciHostBridgeAml({ mmio64: { start: 2 ** 34, size: 2 ** 36 } });
  const [d] = parseAml(dev) as Array<{ op: string; name: string; body: Node[] }>;
  assert.equal(d!.op, 'device');
  assert.equal(d!.name, 'PCI0');
  const get = (n: string): Node => (d!.body.find((t) => t.op === 'name' && t.name === n) as { value: Node }).value;
  assert.equal((get('_HID') as { value: bigint }).value, 0x080ad041n);
  assert.equal((get('_CID') as { value: bigint }).value, 0x030ad041n);
  const ds = descriptors((get('_CRS') as { bytes: Uint8Array }).bytes);
  const dv = (x: Uint8Array): DataView => new DataView(x.buffer, x.byteOffset, x.byteLength);
  const bus = ds[0]!;
  assert.equal(bus.tag, 0x88);
  assert.equal(bus.body[0], 2);
  assert.deepEqual([dv(bus.body).getUint16(5, true), dv(bus.body).getUint16(7, true)], [0, 255]);
  assert.equal(ds[1]!.tag, 0x8, 'IO descriptor for 0xcf8');
  const m32 = ds.find((x) => x.tag === 0x87)!;
  assert.equal(dv(m32.body).getUint32(7, true), 0xc0000000);
  assert.equal(dv(m32.body).getUint32(11, true), 0xe7ffffff);
  assert.equal(dv(m32.body).getUint32(19, true), 0x28000000);
  const m64 = ds.find((x) => x.tag === 0x8a)!;
  assert.equal(dv(m64.body).getBigUint64(11, true), 2n ** 34n);
  assert.equal(dv(m64.body).getBigUint64(19, true), 2n ** 34n + 2n ** 36n - 1n);
  const m = mem();
  const r = buildAcpiTables({ cpus: 1, sbDevices: [dev], extraTables: [buildMcfg()] }, m);
  assert.ok(readAcpiTables(m, r.rsdpAddr).has('MCFG'));
});

test('power register placement override reaches the FADT and \\_S5_', () => {
  const m = mem();
  const power = { sleepControl: { address: 0x600 }, sleepStatus: { address: 0x601 }, reset: { address: 0x602 }, resetValue: 0x0e, s5SleepType: 7 };
  const r = buildAcpiTables({ cpus: 1, power }, m);
  const t = readAcpiTables(m, r.rsdpAddr);
  const fadt = t.get('FACP')!;
  const fdv = new DataView(fadt.buffer);
  assert.equal(Number(fdv.getBigUint64(244 + 4, true)), 0x600);
  assert.equal(Number(fdv.getBigUint64(256 + 4, true)), 0x601);
  assert.equal(Number(fdv.getBigUint64(116 + 4, true)), 0x602);
  assert.equal(fadt[128], 0x0e);
  const s5 = parseAml(t.get('DSDT')!.subarray(36)).find((x) => x.op === 'name') as { value: { elements: Array<{ value: bigint }> } };
  assert.equal(s5.value.elements[0]!.value, 7n);
  assert.throws(() => buildDsdt({ s5SleepType: 8 }), /invalid S5 sleep type 8/);
});

// --- PCI segments (--platform num_pci_segments) ----------------------------------------------------

/** The tables buildAcpiTables writes for `n` segments, as the VMM builds them (src/vmm/vm.ts). */
function segmentTables(n: number): { mcfg: Uint8Array; sb: Node[] } {
  const segs = pciSegmentLayouts(n);
  const m = mem();
  const r = buildAcpiTables({ cpus: 1, sbDevices: pciSegmentsAml(segs), extraTables: [buildMcfgForSegments(segs)] }, m);
  const tables = readAcpiTables(m, r.rsdpAddr); // verifies every checksum and length
  const dsdt = tables.get('DSDT')!;
  const sb = parseAml(dsdt.subarray(36)).find((t) => t.op === 'scope') as { body: Node[] };
  return { mcfg: tables.get('MCFG')!, sb: sb.body };
}

function mcfgEntries(mcfg: Uint8Array): Array<{ base: number; segment: number; startBus: number; endBus: number }> {
  const dv = new DataView(mcfg.buffer, mcfg.byteOffset, mcfg.byteLength);
  assert.equal(dv.getUint32(4, true), mcfg.length);
  assert.equal((mcfg.length - 44) % 16, 0, 'MCFG: header, 8 reserved bytes, 16-byte entries');
  const out = [];
  for (let off = 44; off < mcfg.length; off += 16) {
    out.push({ base: Number(dv.getBigUint64(off, true)), segment: dv.getUint16(off + 8, true), startBus: mcfg[off + 10]!, endBus: mcfg[off + 11]! });
  }
  return out;
}

interface Bridge { name: string; hid: bigint; seg: bigint; uid: bigint; bbn: bigint; crs: Array<{ tag: number; body: Uint8Array }> }

function bridges(sb: Node[]): Bridge[] {
  return sb.filter((t) => t.op === 'device').map((t) => {
    const d = t as { name: string; body: Node[] };
    const get = (n: string): Node | undefined => (d.body.find((x) => x.op === 'name' && x.name === n) as { value: Node } | undefined)?.value;
    const int = (n: string): bigint => ((get(n) as { value: bigint } | undefined)?.value ?? -1n);
    const crs = get('_CRS') as { bytes: Uint8Array } | undefined;
    return { name: d.name, hid: int('_HID'), seg: int('_SEG'), uid: int('_UID'), bbn: int('_BBN'), crs: crs ? descriptors(crs.bytes) : [] };
  }).filter((b) => b.hid === 0x080ad041n || b.hid === 0x020cd041n); // PNP0A08 host bridges, PNP0C02 motherboard resources
}

const dv = (x: Uint8Array): DataView => new DataView(x.buffer, x.byteOffset, x.byteLength);
const PNP0A08 = 0x080ad041n;
const PNP0C02 = 0x020cd041n;

test('one PCI segment (the default): one MCFG entry for buses 0-255, PCI0 with the whole window and the I/O ports, ECAM reserved by PNP0C02', () => {
  const { mcfg, sb } = segmentTables(1);
  assert.deepEqual(mcfgEntries(mcfg), [{ base: 0xe8000000, segment: 0, startBus: 0, endBus: 255 }]);
  const bs = bridges(sb);
  const hb = bs.filter((b) => b.hid === PNP0A08);
  assert.deepEqual(hb.map((b) => [b.name, b.seg, b.uid, b.bbn]), [['PCI0', 0n, 0n, 0n]]);
  const crs = hb[0]!.crs;
  assert.deepEqual([dv(crs[0]!.body).getUint16(5, true), dv(crs[0]!.body).getUint16(7, true)], [0, 255], 'bus range');
  assert.ok(crs.some((x) => x.tag === 0x8), 'IO(0xcf8, 8) on segment 0');
  assert.equal(crs.filter((x) => x.tag === 0x88 && x.body[0] === 1).length, 2, 'two WordIO windows around 0xcf8');
  const m32 = crs.find((x) => x.tag === 0x87)!;
  assert.deepEqual([dv(m32.body).getUint32(7, true), dv(m32.body).getUint32(11, true)], [0xc0000000, 0xe7ffffff]);
  const mb = bs.filter((b) => b.hid === PNP0C02);
  assert.equal(mb.length, 1);
  assert.deepEqual(mb[0]!.crs.map((x) => [x.tag, dv(x.body).getUint32(1, true), dv(x.body).getUint32(5, true)]), [[0x86, 0xe8000000, 0x10000000]],
    'Memory32Fixed over the 256 MiB ECAM window');
});

test('three PCI segments: an MCFG entry and a host bridge (_SEG, _UID, _BBN, own window, I/O only on 0) per segment, every ECAM window reserved', () => {
  const { mcfg, sb } = segmentTables(3);
  assert.deepEqual(mcfgEntries(mcfg), [
    { base: 0xe8000000, segment: 0, startBus: 0, endBus: 0 },
    { base: 0xe8100000, segment: 1, startBus: 0, endBus: 0 },
    { base: 0xe8200000, segment: 2, startBus: 0, endBus: 0 },
  ]);
  const bs = bridges(sb);
  const hb = bs.filter((b) => b.hid === PNP0A08);
  assert.deepEqual(hb.map((b) => [b.name, b.seg, b.uid, b.bbn]), [['PCI0', 0n, 0n, 0n], ['PC01', 1n, 1n, 0n], ['PC02', 2n, 2n, 0n]]);
  const windows = hb.map((b) => {
    const bus = b.crs[0]!;
    assert.equal(bus.tag, 0x88);
    assert.equal(bus.body[0], 2, 'first descriptor: bus number range');
    assert.deepEqual([dv(bus.body).getUint16(5, true), dv(bus.body).getUint16(7, true)], [0, 0], `${b.name} has bus 0 only`);
    const io = b.crs.filter((x) => x.tag === 0x8 || (x.tag === 0x88 && x.body[0] === 1));
    assert.equal(io.length, b.seg === 0n ? 3 : 0, `${b.name}: I/O ports only on segment 0`);
    const m32 = b.crs.filter((x) => x.tag === 0x87);
    assert.equal(m32.length, 1);
    return [dv(m32[0]!.body).getUint32(7, true), dv(m32[0]!.body).getUint32(11, true)];
  });
  // 640 MiB / 3, 4 KiB aligned: 0xd555000 each, the last one up to the ECAM region.
  assert.deepEqual(windows, [[0xc0000000, 0xcd554fff], [0xcd555000, 0xdaaa9fff], [0xdaaaa000, 0xe7ffffff]]);
  const mb = bs.filter((b) => b.hid === PNP0C02);
  assert.equal(mb.length, 1);
  assert.deepEqual(mb[0]!.crs.map((x) => [x.tag, dv(x.body).getUint32(1, true), dv(x.body).getUint32(5, true)]),
    [[0x86, 0xe8000000, 0x100000], [0x86, 0xe8100000, 0x100000], [0x86, 0xe8200000, 0x100000]]);
  assert.throws(() => buildMcfgForSegments([]), /at least one PCI segment/);
});

test('sixteen PCI segments (the most) fit in the ACPI area: 16 MCFG entries, PCI0 and PC01..PC0F', () => {
  const { mcfg, sb } = segmentTables(16);
  const e = mcfgEntries(mcfg);
  assert.equal(e.length, 16);
  assert.deepEqual(e.map((x) => x.segment), Array.from({ length: 16 }, (_, k) => k));
  assert.equal(e[15]!.base, 0xe8000000 + 15 * MiB);
  const names = bridges(sb).filter((b) => b.hid === PNP0A08).map((b) => b.name);
  assert.deepEqual(names, ['PCI0', ...Array.from({ length: 15 }, (_, k) => `PC${(k + 1).toString(16).toUpperCase().padStart(2, '0')}`)]);
});
