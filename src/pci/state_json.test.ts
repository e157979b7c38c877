// Saved state of PCI: functions with BARs sized and moved by the guest, the command register,
// MSI-X programmed with masked vectors holding pending bits, and the 0xCF8 latches, on two
// segments. Saved, written to JSON text and read back, restored into a freshly built VM; then
// both are probed with the same guest accesses (config space through ECAM and 0xCFC, the MSI-X
// table and PBA through the BAR where the guest put it) and the same device events. Errors name
// the field; a fuzzer throws mutated documents at parse + restore.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createMmioBus, createPioBus, type Bus, type BusDevice } from '../devices/bus.js';
import { pciSegmentLayouts, type PciSegmentLayout } from '../arch/x86_64/layout.js';
import { PciConfiguration, PCI_COMMAND, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY } from './config.js';
import { Msix, type MsiMessageValue } from './msix.js';
import { PciConfigIo, PciType1, type PciDevice } from './bus.js';
import { attachPciSegments, restorePciState, savePciState, type PciSegment } from './segment.js';
import { parsePciState, pciStateFromJson, pciStateToJson, stringifyPciState } from './state_json.js';
import { StateFormatError, type Json } from '../snapshot/codec.js';
import { Prng, countFromEnv, seedFromEnv } from '../testing/prng.js';
import { mutateJson, stateErrorOf } from '../testing/json_fuzz.js';

const BAR0_SIZE = 0x10000;
const TABLE = 0x8000;
const PBA = 0xc000;

/**
 * A PCI function the way the virtio transport is built: BAR 0 (32-bit, on the MMIO bus, moved
 * when the guest moves it), a 64-bit prefetchable BAR 2, MSI-X in BAR 0. Interrupts it raises
 * while a vector is masked go pending and are delivered on unmask (PCI 3.0, 6.8.2.9).
 */
class Fn implements PciDevice, BusDevice {
  readonly config: PciConfiguration;
  readonly msix: Msix;
  readonly msixCap: number;
  /**
   * The owner's view: each vector's route (null while masked), what it delivered, and MSI-X
   * enable (1) / function mask (2) as it last saw Message Control written (the transport's shared word).
   */
  readonly routes = new Map<number, MsiMessageValue | null>();
  readonly fired: number[] = [];
  seenControl = 0;
  constructor(mmio: Bus, bar0: number, o: { vectors?: number; deviceId?: number; bar0Size?: number; bar2?: boolean } = {}) {
    const size = o.bar0Size ?? BAR0_SIZE;
    this.config = new PciConfiguration({
      vendorId: 0x1af4, deviceId: o.deviceId ?? 0x1041, revisionId: 1, classCode: 0x020000, subsystemVendorId: 0x1af4, subsystemId: 0x40,
    });
    this.config.addMemoryBar(0, bar0, size);
    if (o.bar2 ?? true) this.config.addMemoryBar(2, 0x1_0000_0000, 0x4000, true, true);
    this.msix = new Msix(o.vectors ?? 5, {
      vectorChanged: (v) => {
        const masked = this.msix.masked(v);
        this.routes.set(v, masked ? null : this.msix.message(v));
        if (!masked && this.msix.pending[v]) { this.msix.pending[v] = 0; this.fired.push(v); }
      },
    });
    for (let v = 0; v < this.msix.vectors; v++) this.routes.set(v, null); // every vector starts masked
    const cap = this.msix.capability(0, TABLE, 0, PBA);
    this.msixCap = this.config.addCapability(cap.body, cap.writable);
    this.config.onBarMove = (index, from, to) => {
      if (index !== 0) return true;
      mmio.remove(from);
      if (!mmio.isFree(to, size)) { mmio.insert(this, from, size); return false; }
      mmio.insert(this, to, size);
      return true;
    };
    mmio.insert(this, bar0, size);
  }
  readConfig(offset: number, data: Uint8Array): void { this.config.read(offset, data); }
  writeConfig(offset: number, data: Uint8Array): void {
    this.config.write(offset, data);
    const ctl = this.msixCap + 2;
    if (offset <= ctl + 1 && offset + data.length > ctl) {
      const control = this.config.bytes[ctl]! | (this.config.bytes[ctl + 1]! << 8);
      this.msix.setControl(control);
      this.seenControl = (this.msix.enabled ? 1 : 0) | (this.msix.functionMasked ? 2 : 0);
    }
  }
  read(offset: number, data: Uint8Array): void {
    if (offset >= TABLE && offset < TABLE + this.msix.tableSize) this.msix.readTable(offset - TABLE, data);
    else if (offset >= PBA && offset < PBA + this.msix.pbaSize) this.msix.readPba(offset - PBA, data);
    else data.fill(0);
  }
  write(offset: number, data: Uint8Array): void {
    if (offset >= TABLE && offset < TABLE + this.msix.tableSize) this.msix.writeTable(offset - TABLE, data);
  }
  /** The device raises vector `v`. */
  interrupt(v: number): void {
    if (this.msix.masked(v)) this.msix.pending[v] = 1;
    else this.fired.push(v);
  }
}

const le32 = (v: number) => { const b = new Uint8Array(4); new DataView(b.buffer).setUint32(0, v >>> 0, true); return b; };
const u32 = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, 4).getUint32(0, true);

interface VmOptions { vectors?: number; deviceId?: number; bar0Size?: number; bar2?: boolean; extra?: boolean; segments?: number; vcpus?: number }

/** A VM's PCI side: segments on the MMIO bus, 0xCF8 on the port bus (vCPU 0) and a second vCPU's latch. */
class Vm {
  readonly mmio = createMmioBus();
  readonly pio = createPioBus();
  readonly layouts: PciSegmentLayout[];
  readonly segments: PciSegment[];
  readonly io: PciConfigIo;
  readonly type1: PciType1[];
  readonly a: Fn;
  readonly b: Fn;
  constructor(o: VmOptions = {}) {
    this.layouts = pciSegmentLayouts(o.segments ?? 2);
    this.segments = attachPciSegments(this.mmio, this.layouts);
    this.io = new PciConfigIo(this.segments[0]!.root);
    this.pio.insert(this.io, 0xcf8, 8);
    this.type1 = [this.io.type1, new PciType1(32)];
    for (let i = 2; i < (o.vcpus ?? 2); i++) this.type1.push(new PciType1(32));
    this.a = new Fn(this.mmio, this.layouts[0]!.mmio32.start, o);
    this.segments[0]!.root.add(this.a, 1);
    if (o.extra) this.segments[0]!.root.add(new Fn(this.mmio, this.layouts[0]!.mmio32.start + 0x100000), 5);
    const last = this.segments[this.segments.length - 1]!;
    this.b = new Fn(this.mmio, last.windows.mmio32.start + 0x400000, { vectors: 3, bar2: false });
    last.root.add(this.b, 2);
  }
  ecam(seg: number, slot: number, reg: number): number { return this.layouts[seg]!.ecamBase + (slot << 15) + reg; }
  cfgWrite(seg: number, slot: number, reg: number, v: number, len = 4): void { this.mmio.write(this.ecam(seg, slot, reg), le32(v).subarray(0, len)); }
  cfgRead(seg: number, slot: number, reg: number): number { const d = new Uint8Array(4); this.mmio.read(this.ecam(seg, slot, reg), d); return u32(d); }
  mmioRead(addr: number): number { const d = new Uint8Array(4); this.mmio.read(addr, d); return u32(d); }
  mmioWrite(addr: number, v: number): void { this.mmio.write(addr, le32(v)); }
  save() { return savePciState(this.segments, this.type1); }
}

const BAR0_A = () => pciSegmentLayouts(2)[0]!.mmio32.start + 0x200000;

/** The guest's PCI setup, as Linux does it: size and place the BARs, decode on, MSI-X programmed. */
function busyVm(): Vm {
  const vm = new Vm();
  // 00:01.0 on segment 0: size BAR 0 with decoding off, place it, size and place the 64-bit BAR 2.
  vm.cfgWrite(0, 1, 0x10, 0xffffffff);
  assert.equal(vm.cfgRead(0, 1, 0x10), 0xffff0000, 'BAR 0 size');
  vm.cfgWrite(0, 1, 0x10, BAR0_A());
  vm.cfgWrite(0, 1, 0x18, 0xffffffff);
  vm.cfgWrite(0, 1, 0x1c, 0xffffffff);
  assert.equal(vm.cfgRead(0, 1, 0x18), 0xffffc00c, 'BAR 2: 16 KiB, 64-bit, prefetchable');
  vm.cfgWrite(0, 1, 0x18, 0x4000);
  vm.cfgWrite(0, 1, 0x1c, 0x3);
  vm.cfgWrite(0, 1, 0x3c, 0x0b, 1); // interrupt line
  vm.cfgWrite(0, 1, 0x0d, 0x40, 1); // latency timer
  vm.cfgWrite(0, 1, PCI_COMMAND, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER, 2);
  assert.equal(vm.a.config.barInfo()[0]!.addr, BAR0_A(), 'BAR 0 moved');
  assert.equal(vm.a.config.barInfo()[1]!.addr, 0x3_0000_4000, 'BAR 2 moved');
  // MSI-X enabled with the function masked while the table is written (Linux's msix_capability_init).
  const ctl = vm.a.msixCap + 2;
  vm.cfgWrite(0, 1, ctl, 0xc000, 2);
  for (let v = 0; v < 5; v++) {
    const e = BAR0_A() + TABLE + v * 16;
    vm.mmioWrite(e, 0xfee00000 | (v << 12));
    vm.mmioWrite(e + 4, 0);
    vm.mmioWrite(e + 8, 0x40 + v);
    vm.mmioWrite(e + 12, v === 1 || v === 3 ? 1 : 0);
  }
  vm.cfgWrite(0, 1, ctl, 0x8000, 2);
  vm.a.interrupt(0);
  vm.a.interrupt(1);
  vm.a.interrupt(3);
  assert.deepEqual(vm.a.fired, [0]);
  assert.deepEqual([...vm.a.msix.pending], [0, 1, 0, 1, 0]);
  // The last segment's 00:02.0: BAR 0 placed, I/O + memory decoding, MSI-X left disabled.
  const segB = vm.layouts[1]!.mmio32.start;
  vm.cfgWrite(1, 2, 0x10, segB + 0x10000);
  vm.cfgWrite(1, 2, PCI_COMMAND, PCI_COMMAND_MEMORY | 1, 2);
  // The host bridge's latency timer; vCPU 0 left CONFIG_ADDRESS at 00:01.0 BAR 0 (paused between
  // the address and the data access), vCPU 1 at 00:00.0 offset 4.
  vm.cfgWrite(0, 0, 0x0d, 0x20, 1);
  vm.pio.write(0xcf8, le32(0x80000000 | (1 << 11) | 0x10));
  vm.type1[1]!.writeAddress(0, le32(0x80000004));
  return vm;
}

/** What the guest and the owners see over a fixed sequence of accesses and events. */
function probe(vm: Vm): Json {
  const seen: Json[] = [];
  const d = new Uint8Array(4);
  vm.pio.read(0xcf8, d);
  seen.push(u32(d));
  vm.pio.read(0xcfc, d); // the data access vCPU 0 was about to make
  seen.push(u32(d));
  const t1 = vm.type1[1]!;
  t1.readAddress(0, d);
  seen.push(u32(d), t1.ecamOffset(0, 4));
  for (let seg = 0; seg < vm.layouts.length; seg++) {
    for (let slot = 0; slot < 4; slot++) {
      const cfg: number[] = [];
      for (let reg = 0; reg < 256; reg += 4) cfg.push(vm.cfgRead(seg, slot, reg));
      seen.push(cfg);
    }
  }
  for (const fn of [vm.a, vm.b]) {
    const bar = fn.config.barInfo()[0]!.addr;
    const msix: number[] = [bar, fn.seenControl];
    for (let o = 0; o < fn.msix.tableSize; o += 4) msix.push(vm.mmioRead(bar + TABLE + o));
    msix.push(vm.mmioRead(bar + PBA), vm.mmioRead(bar + PBA + 4));
    for (let v = 0; v < fn.msix.vectors; v++) msix.push(fn.msix.masked(v) ? 1 : 0);
    seen.push(msix, [...fn.routes.entries()].sort((x, y) => x[0] - y[0]).map(([v, m]) => [v, m ? [m.addressLo, m.addressHi, m.data] : null]));
  }
  // Where the BARs were before the guest moved them: nothing answers there any more.
  seen.push(vm.mmioRead(vm.layouts[0]!.mmio32.start + TABLE));
  // Events: unmask vector 1 (its pending interrupt goes out), raise 3 (still masked) and 4.
  const a = vm.a;
  a.fired.length = 0;
  vm.mmioWrite(a.config.barInfo()[0]!.addr + TABLE + 16 + 12, 0);
  a.interrupt(3);
  a.interrupt(4);
  seen.push([...a.fired], vm.mmioRead(a.config.barInfo()[0]!.addr + PBA));
  // The guest moves BAR 0 again: the owner moves its mapping from where the restore put it.
  vm.cfgWrite(0, 1, 0x10, BAR0_A() + 0x10000);
  seen.push(vm.mmioRead(BAR0_A() + 0x10000 + TABLE), vm.mmioRead(BAR0_A() + TABLE));
  return seen;
}

test('PCI: save, JSON text, restore into a fresh VM: config space, BAR mappings, MSI-X and the latches come back', () => {
  const a = busyVm();
  const saved = a.save();
  const text = stringifyPciState(saved);
  const b = new Vm();
  restorePciState(b.segments, b.type1, parsePciState(text));
  assert.deepEqual(b.save(), saved, 'the restored VM saves what was restored');
  assert.deepEqual(b.a.fired, [], 'a restore delivers nothing (pending stays pending)');
  assert.equal(b.a.seenControl, 1, 'the owner saw Message Control written again (enabled, not masked)');
  const fresh = probe(new Vm());
  const pa = probe(a);
  assert.notDeepEqual(fresh, pa, 'the probe tells a programmed VM from a fresh one');
  assert.deepEqual(probe(b), pa);
  assert.deepEqual((pa as Json[]).slice(-4, -2), [[1, 4], 0b1000], 'vector 1 delivered on unmask, 3 pending, 4 delivered');
});

const errorOf = stateErrorOf;

type Obj = { [k: string]: Json };
const obj = (j: Json | undefined) => j as Obj;
const fnA = (d: Obj) => obj((obj((d.segments as Json[])[0]).functions as Json[])[1]);
const editBytes = (o: Obj, key: string, f: (b: Buffer) => Buffer | void) => {
  const b = Buffer.from(o[key] as string, 'base64');
  o[key] = (f(b) ?? b).toString('base64');
};

test('PCI state: malformed documents and states that do not fit the VM are refused, naming the field', () => {
  const base = stringifyPciState(busyVm().save());
  const F = 'segments[0].functions[1]';
  const cases: Array<[string, (d: Obj) => void, VmOptions, string, RegExp]> = [
    ['newer version', (d) => { d.version = 9; }, {}, 'version', /written by a newer Stratovisor/],
    ['unknown field', (d) => { d.ecam = 1; }, {}, 'ecam', /unknown field/],
    ['missing latches', (d) => { delete d.configAddress; }, {}, 'configAddress', /missing/],
    ['fewer segments', () => {}, { segments: 1 }, 'segments', /the state has 2 PCI segments, this VM 1/],
    ['more vCPUs', () => {}, { vcpus: 3 }, 'configAddress', /2 CONFIG_ADDRESS latches \(one per vCPU\), this VM 3/],
    ['latch low bits', (d) => { (d.configAddress as Json[])[1] = 0x80000005; }, {}, 'configAddress[1]', /bits 0-1 of CONFIG_ADDRESS read 0/],
    ['another function present', () => {}, { extra: true }, 'segments[0].functions', /the state has functions 00\.0, 01\.0, this bus 00\.0, 01\.0, 05\.0/],
    ['another device', () => {}, { deviceId: 0x1042 }, `${F}.config.bytes[0x02]`, /read-only bits 0x03 differ: the state has 0x41, this function 0x42/],
    ['BAR size', () => {}, { bar0Size: 0x20000 }, `${F}.config.bars[0].size`, /the state has 65536, this function's BAR 0 has 131072/],
    ['BAR count', () => {}, { bar2: false }, `${F}.config.bars`, /the state has 2 BARs, this function 1 \(BARs 0\)/],
    ['table size', () => {}, { vectors: 3 }, `${F}.config.bytes[0x42]`, /read-only bits 0x06 differ/],
    ['vector count', (d) => { obj(fnA(d).msix).vectors = 4; }, {}, `${F}.msix.vectors`, /the state has 4 MSI-X vectors, this function 5/],
    ['table bytes', (d) => { editBytes(obj(fnA(d).msix), 'table', (b) => b.subarray(0, 64)); }, {}, `${F}.msix.table`, /expected 80 bytes, got 64/],
    ['reserved control bits', (d) => { editBytes(obj(fnA(d).msix), 'table', (b) => { b[2 * 16 + 12] = 0x3; }); }, {}, `${F}.msix.table`, /vector 2: Vector Control has reserved bits set \(0x3\)/],
    ['PBA past the vectors', (d) => { editBytes(obj(fnA(d).msix), 'pba', (b) => { b[0] = 0x80; }); }, {}, `${F}.msix.pba`, /pending bit 7 is set, this function has vectors 0\.\.4/],
    ['enable vs control', (d) => { obj(fnA(d).msix).enabled = false; }, {}, `${F}.msix.enabled`, /false, but Message Control .* is 0x8004/],
    ['no MSI-X state', (d) => { fnA(d).msix = null; }, {}, `${F}.msix`, /missing: this function has MSI-X with 5 vectors/],
    ['vendor ID', (d) => { editBytes(obj(fnA(d).config), 'bytes', (b) => { b[0] = 0x86; }); }, {}, `${F}.config.bytes[0x00]`, /read-only bits 0x72 differ/],
    ['BAR flag bits', (d) => { editBytes(obj(fnA(d).config), 'bytes', (b) => { b[0x10] |= 0x8; }); }, {}, `${F}.config.bytes[0x10]`, /read-only bits 0x08 differ/],
    ['PCIe-sized space', (d) => { editBytes(obj(fnA(d).config), 'bytes', (b) => Buffer.concat([b, Buffer.alloc(3840)])); }, {}, `${F}.config.bytes`, /the state has a 4096-byte configuration space, this function 256/],
    ['unaligned BAR', (d) => { obj((obj(fnA(d).config).bars as Json[])[0]).addr = '0xc0201000'; }, {}, `${F}.config.bars[0].addr`, /0xc0201000 is not aligned to the BAR's size 0x10000/],
    ['32-bit BAR above 4 GiB', (d) => { obj((obj(fnA(d).config).bars as Json[])[0]).addr = '0x100000000'; }, {}, `${F}.config.bars[0].addr`, /expected an address below 0x100000000/],
    ['BAR size not a power of two', (d) => { obj((obj(fnA(d).config).bars as Json[])[0]).size = 0x18000; }, {}, `${F}.config.bars[0].size`, /a power of two/],
    ['host bridge registers', (d) => { obj((obj((d.segments as Json[])[0]).functions as Json[])[0]).config = null; }, {}, 'segments[0].functions[0].config', /missing: this function's configuration space/],
  ];
  for (const [name, change, opts, field, message] of cases) {
    const d = JSON.parse(base) as Obj;
    change(d);
    const vm = new Vm(opts);
    const e = errorOf(() => restorePciState(vm.segments, vm.type1, pciStateFromJson(d)));
    assert.equal(e.field, field, `${name}: ${e.message}`);
    assert.match(e.message, message, `${name}: ${e.message}`);
    assert.ok(e.message.startsWith(`PCI state: ${field}: `), e.message);
  }
  // Nothing changes when a check fails (here the last segment's function, after segment 0's passed).
  const d = JSON.parse(base) as Obj;
  obj(obj((obj((d.segments as Json[])[1]).functions as Json[])[1]).msix).vectors = 9;
  const vm = new Vm();
  const before = vm.save();
  assert.equal(errorOf(() => restorePciState(vm.segments, vm.type1, pciStateFromJson(d))).field, 'segments[1].functions[1].msix.vectors');
  assert.deepEqual(vm.save(), before);
  // The owner refuses the saved BAR place (something else is mapped there in this VM).
  const blocked = new Vm();
  blocked.mmio.insert({ read: (_o, x) => x.fill(0), write: () => {} }, BAR0_A(), 0x1000);
  const refused = errorOf(() => restorePciState(blocked.segments, blocked.type1, parsePciState(base)));
  assert.equal(refused.field, `${F}.config.bars[0].addr`);
  assert.match(refused.message, /the owner refused to map BAR 0 at 0xc0200000/);
});

test('PCI state fuzz: mutated documents only ever give a StateFormatError; what is accepted restores and runs', () => {
  const seed = seedFromEnv('STV_FUZZ_SEED', 0x9c1);
  const cases = countFromEnv('STV_FUZZ_CASES', 1500);
  const p = new Prng(seed);
  const base = pciStateToJson(busyVm().save());
  const text = JSON.stringify(base);
  let rejected = 0;
  let accepted = 0;
  const fields = new Set<string>();
  for (let i = 0; i < cases; i++) {
    const doc = structuredClone(base);
    mutateJson(doc, p);
    const vm = new Vm();
    try {
      const s = pciStateFromJson(doc);
      restorePciState(vm.segments, vm.type1, s);
      assert.deepEqual(vm.save(), s, `seed ${seed} case ${i}: an accepted state saves back the same`);
    } catch (e) {
      if (e instanceof assert.AssertionError) throw e;
      if (!(e instanceof StateFormatError)) throw new Error(`seed ${seed} case ${i}: ${String(e)} instead of a StateFormatError`, { cause: e });
      assert.ok(e.message.length < 400, e.message.slice(0, 100));
      fields.add(e.field.replace(/\[\w+\]/g, '[]'));
      rejected++;
      continue;
    }
    probe(vm);
    accepted++;
  }
  for (let i = 0; i < 200; i++) {
    const vm = new Vm();
    try {
      restorePciState(vm.segments, vm.type1, parsePciState(text.slice(0, p.int(text.length))));
    } catch (e) {
      if (!(e instanceof StateFormatError)) throw new Error(`seed ${seed} truncation ${i}: ${String(e)}`, { cause: e });
    }
  }
  console.log(`# fuzz seed ${seed}: ${rejected} rejected (${fields.size} distinct fields), ${accepted} accepted and run`);
  assert.ok(rejected > cases / 2, 'most mutations are refused');
  // With the default budget (any seed) the devices' own checks are reached, not only the codecs'.
  if (cases >= 1000) assert.ok([...fields].some((f) => f.endsWith('.config.bytes[]')) && [...fields].some((f) => f.endsWith('.msix.pba')), `restore checks reached: ${[...fields].join(', ')}`);
});
