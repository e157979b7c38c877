import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PciConfiguration, PCI_COMMAND, PCI_COMMAND_MEMORY } from './config.js';
import { PciRoot, PciConfigIo, PciConfigMmio, type PciDevice } from './bus.js';
import { Msix } from './msix.js';

const le32 = (v: number) => { const b = new Uint8Array(4); new DataView(b.buffer).setUint32(0, v >>> 0, true); return b; };
const u32 = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, 4).getUint32(0, true);

function dev(): { cfg: PciConfiguration; d: PciDevice; moves: Array<[number, number, number]> } {
  const cfg = new PciConfiguration({ vendorId: 0x1af4, deviceId: 0x1042, revisionId: 1, classCode: 0x018000, subsystemVendorId: 0x1af4, subsystemId: 0x40 });
  const moves: Array<[number, number, number]> = [];
  cfg.onBarMove = (i, f, t) => { moves.push([i, f, t]); return true; };
  cfg.addMemoryBar(0, 0xc0000000, 0x10000);
  return { cfg, moves, d: { readConfig: (o, data) => cfg.read(o, data), writeConfig: (o, data) => cfg.write(o, data) } };
}

test('config space: read-only fields ignore writes; command bits are writable', () => {
  const { cfg } = dev();
  cfg.write(0, le32(0xdeadbeef));
  const b = new Uint8Array(4);
  cfg.read(0, b);
  assert.equal(u32(b), 0x10421af4);
  cfg.write(PCI_COMMAND, Uint8Array.of(0xff, 0xff));
  assert.equal(cfg.command, 0x0407, 'I/O, memory, master and INTx-disable only');
  const far = new Uint8Array(4);
  cfg.read(300, far);
  assert.equal(u32(far), 0xffffffff);
});

test('BARs: sizing protocol, and moves applied only with memory decoding on and not while sizing', () => {
  const { cfg, moves } = dev();
  const b = new Uint8Array(4);
  cfg.write(0x10, le32(0xffffffff));
  cfg.read(0x10, b);
  assert.equal(u32(b), 0xffff0000);
  cfg.write(0x10, le32(0xd0000000));
  assert.deepEqual(moves, [], 'decoding off: no move yet');
  cfg.write(PCI_COMMAND, Uint8Array.of(PCI_COMMAND_MEMORY, 0));
  assert.deepEqual(moves, [[0, 0xc0000000, 0xd0000000]]);
  cfg.write(0x10, le32(0xffffffff)); // sizing with decoding on: not a placement
  assert.equal(moves.length, 1);
  cfg.write(0x14, le32(0x12345678)); // unimplemented BAR 1 stays zero
  cfg.read(0x14, b);
  assert.equal(u32(b), 0);
  assert.throws(() => cfg.addMemoryBar(2, 0x1000, 0x3000), /power of two/);
});

test('config mechanism #1 and ECAM reach the same function; absent functions read all-ones', () => {
  const root = new PciRoot();
  const { d } = dev();
  assert.equal(root.add(d), 1);
  const io = new PciConfigIo(root);
  const b = new Uint8Array(4);
  io.write(0, le32(0x80000000 | (1 << 11)));
  io.read(0, b);
  assert.equal(u32(b), 0x80000800, 'CONFIG_ADDRESS reads back');
  io.read(4, b);
  assert.equal(u32(b), 0x10421af4);
  const w = new Uint8Array(2);
  io.read(6, w);
  assert.equal(w[0]! | (w[1]! << 8), 0x1042, 'sub-dword access at 0xCFE');
  io.write(0, le32(0x00000800)); // enable bit clear
  io.read(4, b);
  assert.equal(u32(b), 0xffffffff);
  const ecam = new PciConfigMmio(root);
  ecam.read((1 << 15) | 0, b);
  assert.equal(u32(b), 0x10421af4);
  ecam.read((1 << 20) | (1 << 15), b);
  assert.equal(u32(b), 0xffffffff, 'bus 1 is empty');
  ecam.read((2 << 15) | 0xffe, b);
  assert.equal(u32(b), 0xffffffff, 'access crossing the 4 KiB function space');
  assert.throws(() => root.add(d, 1), /already used/);
  assert.throws(() => root.add(d, 32), /outside/);
});

test('MSI-X: entries start masked; function mask and enable; only the mask bit of Vector Control is writable', () => {
  const changed: number[] = [];
  const m = new Msix(3, { vectorChanged: (v) => changed.push(v) });
  assert.ok(m.masked(0));
  m.writeTable(0, le32(0xfee00000));
  m.writeTable(8, le32(0x41));
  m.writeTable(12, le32(0xfffffffe));
  assert.deepEqual(m.message(0), { addressLo: 0xfee00000, addressHi: 0, data: 0x41 });
  const ctl = new Uint8Array(4);
  m.readTable(12, ctl);
  assert.equal(u32(ctl), 0, 'reserved bits dropped, unmasked');
  assert.ok(m.masked(0), 'MSI-X still disabled');
  m.setControl(0x8000);
  assert.ok(!m.masked(0));
  m.setControl(0xc000);
  assert.ok(m.masked(0), 'function mask');
  assert.ok(changed.length >= 3);
  const bad = new Uint8Array(4);
  m.readTable(2, bad); // misaligned
  assert.equal(u32(bad), 0);
  m.writeTable(1000, le32(1)); // outside: ignored
  assert.throws(() => new Msix(0, { vectorChanged: () => {} }), /vector count/);
});

