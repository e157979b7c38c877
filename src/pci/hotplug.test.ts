// The ACPI PCI hotplug controller's registers (hotplug.ts): what the DSDT's PCNT and _EJ0 read
// and write, per segment, and a guest that writes garbage.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PciHotplugController, PCI_HOTPLUG_BLOCK_SIZE, PCIU_OFFSET, PCID_OFFSET, B0EJ_OFFSET } from './hotplug.js';
import { PciRoot, PciHostBridge } from './bus.js';

const u32 = (v: number) => { const b = new Uint8Array(4); new DataView(b.buffer).setUint32(0, v >>> 0, true); return b; };
const read32 = (c: PciHotplugController, off: number) => { const b = new Uint8Array(4); c.read(off, b); return new DataView(b.buffer).getUint32(0, true); };

test('PCIU and PCID: bits per segment, cleared by reading; an insert cancels a pending eject request and back', () => {
  const ejected: Array<[number, number]> = [];
  const c = new PciHotplugController(2, (seg, slot) => ejected.push([seg, slot]));
  assert.equal(c.size, 2 * PCI_HOTPLUG_BLOCK_SIZE);
  c.inserted(0, 6);
  c.inserted(1, 1);
  c.inserted(1, 31);
  assert.equal(read32(c, PCIU_OFFSET), 1 << 6);
  assert.equal(read32(c, PCIU_OFFSET), 0, 'read clears');
  assert.equal(read32(c, PCI_HOTPLUG_BLOCK_SIZE + PCIU_OFFSET), ((1 << 1) | (1 << 31)) >>> 0);
  c.inserted(0, 3);
  c.ejectRequested(0, 3);
  assert.equal(read32(c, PCIU_OFFSET), 0, 'the eject request replaced the insert');
  assert.equal(read32(c, PCID_OFFSET), 1 << 3);
  assert.equal(read32(c, PCID_OFFSET), 0);
  assert.equal(read32(c, B0EJ_OFFSET), 0, 'B0EJ reads 0');
  assert.deepEqual(ejected, []);
});

test('saveState/restoreState: bits the guest has not read survive a snapshot; bad saved bits are refused naming the field, nothing changed', () => {
  const a = new PciHotplugController(2, () => {});
  a.inserted(0, 4);
  a.ejectRequested(1, 9);
  const s = a.saveState();
  assert.deepEqual(s, { up: [1 << 4, 0], down: [0, 1 << 9] });
  const b = new PciHotplugController(2, () => {});
  b.restoreState(JSON.parse(JSON.stringify(s)) as typeof s);
  assert.equal(read32(b, PCIU_OFFSET), 1 << 4);
  assert.equal(read32(b, PCI_HOTPLUG_BLOCK_SIZE + PCID_OFFSET), 1 << 9);
  assert.equal(read32(b, PCI_HOTPLUG_BLOCK_SIZE + PCID_OFFSET), 0, 'read clears, as before the snapshot');
  const c = new PciHotplugController(2, () => {});
  c.inserted(0, 2);
  for (const [bad, why] of [
    [{ up: [0], down: [0, 0] }, /up has 1 entries, this VM 2/],
    [{ up: [0, 0], down: [0, -1] }, /down\[1\] is -1/],
    [{ up: [0, 2 ** 32], down: [0, 0] }, /up\[1\] is 4294967296/],
    [{ up: [1, 0], down: [0, 0] }, /slot 0 \(the host bridge\)/],
    [{ up: [8, 0], down: [8, 0] }, /segment 0 has slot\(s\) both inserted and to be ejected \(mask 0x8\)/],
    [{ up: null, down: [0, 0] }, /up has no entries/],
  ] as const) {
    assert.throws(() => c.restoreState(bad as never), why);
    assert.deepEqual(c.pending(0), { up: 1 << 2, down: 0 }, 'a refused state changes nothing');
  }
});

test('B0EJ: each bit set is one eject of that slot; slot 0 (the host bridge) never', () => {
  const ejected: Array<[number, number]> = [];
  const c = new PciHotplugController(2, (seg, slot) => ejected.push([seg, slot]));
  c.write(B0EJ_OFFSET, u32((1 << 4) | (1 << 7) | 1));
  c.write(PCI_HOTPLUG_BLOCK_SIZE + B0EJ_OFFSET, u32(1 << 2));
  assert.deepEqual(ejected, [[0, 4], [0, 7], [1, 2]]);
});

test('hostile accesses: other widths, other registers, past the last segment are ignored and counted', () => {
  const ejected: Array<[number, number]> = [];
  const c = new PciHotplugController(1, (seg, slot) => ejected.push([seg, slot]));
  c.inserted(0, 5);
  const b1 = new Uint8Array(1);
  c.read(PCIU_OFFSET, b1);
  assert.equal(b1[0], 0);
  c.write(B0EJ_OFFSET, Uint8Array.of(0xff));
  c.write(PCIU_OFFSET, u32(0xffffffff));
  c.write(PCI_HOTPLUG_BLOCK_SIZE + B0EJ_OFFSET, u32(0xffffffff));
  assert.equal(read32(c, PCI_HOTPLUG_BLOCK_SIZE + PCIU_OFFSET), 0);
  assert.deepEqual(ejected, []);
  assert.equal(c.badAccesses, 5);
  assert.equal(read32(c, PCIU_OFFSET), 1 << 5, 'the pending bit survived the bad accesses');
  assert.throws(() => c.inserted(1, 5), /segment 1 outside 0..0/);
  assert.throws(() => c.ejectRequested(0, 0), /slot 0 outside 1..31/);
  assert.throws(() => c.inserted(0, 32), /slot 32/);
});

test('PciRoot.remove: the slot reads all-ones again and can take a new device; the host bridge stays', () => {
  const root = new PciRoot();
  const dev = new PciHostBridge();
  root.add(dev, 5);
  assert.equal(root.remove(5), dev);
  const b = new Uint8Array(4);
  root.read(0, 5, 0, 0, b);
  assert.deepEqual([...b], [0xff, 0xff, 0xff, 0xff]);
  assert.equal(root.remove(5), null);
  assert.equal(root.add(new PciHostBridge(), 5), 5);
  assert.throws(() => root.remove(0), /outside 1..31/);
  assert.deepEqual(root.presentSlots(), [0, 5]);
});

test('fuzz: random guest accesses never throw, never eject slot 0 or a slot outside 1..31, and B0EJ is the only way to eject', () => {
  let seed = Number(process.env.STV_FUZZ_SEED ?? 12345) >>> 0;
  const rnd = () => { seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0; return seed; };
  const ejected: Array<[number, number]> = [];
  const c = new PciHotplugController(3, (seg, slot) => ejected.push([seg, slot]));
  let expected = 0;
  for (let i = 0; i < 200_000; i++) {
    const width = [1, 2, 4, 8][rnd() % 4]!;
    const offset = rnd() % (c.size + 24);
    const data = new Uint8Array(width);
    for (let k = 0; k < width; k++) data[k] = rnd() & 0xff;
    if (rnd() % 2 === 0) {
      c.read(offset, data);
    } else {
      const seg = Math.floor(offset / PCI_HOTPLUG_BLOCK_SIZE);
      if (width === 4 && seg < 3 && offset % PCI_HOTPLUG_BLOCK_SIZE === B0EJ_OFFSET) {
        const v = new DataView(data.buffer).getUint32(0, true) & ~1;
        for (let s = 1; s < 32; s++) if ((v & (1 << s)) !== 0) expected++;
      }
      c.write(offset, data);
    }
    if (rnd() % 64 === 0) c.inserted(rnd() % 3, 1 + (rnd() % 31));
    if (rnd() % 64 === 0) c.ejectRequested(rnd() % 3, 1 + (rnd() % 31));
  }
  assert.equal(ejected.length, expected);
  for (const [seg, slot] of ejected) assert.ok(seg >= 0 && seg < 3 && slot >= 1 && slot <= 31);
});
