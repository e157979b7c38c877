// The ACPI memory hotplug controller's registers as the DSDT's methods use them
// (src/arch/x86_64/acpi.ts memoryHotplugAml), its rules for plugged ranges, its saved state, and
// what a guest writing anything anywhere gets (in-process fuzz).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  MemoryHotplugController, MEMORY_HOTPLUG_BLOCK_SIZE, MEMORY_HOTPLUG_SLOTS, MEM_BASE_OFFSET, MEM_END_OFFSET, MEM_LENGTH_OFFSET,
  MEM_SELECT_OFFSET, MEM_STATUS_EJECT, MEM_STATUS_ENABLED, MEM_STATUS_INSERTING, MEM_STATUS_OFFSET, MEM_ENABLED_BITMAP_OFFSET, MEM_INSERTING_BITMAP_OFFSET,
} from './memory_hotplug.js';
import { StateFormatError } from './state.js';

const GiB = 2 ** 30;
const MiB = 2 ** 20;
const area = { gpa: 4 * GiB, size: 2 * GiB };

function rd(c: MemoryHotplugController, off: number, len: number): number {
  const b = new Uint8Array(len);
  c.read(off, b);
  const dv = new DataView(b.buffer);
  return len === 1 ? b[0]! : len === 4 ? dv.getUint32(0, true) : Number(dv.getBigUint64(0, true));
}
function wr(c: MemoryHotplugController, off: number, len: number, v: number): void {
  const b = new Uint8Array(len);
  const dv = new DataView(b.buffer);
  if (len === 1) b[0] = v; else dv.setUint32(0, v, true);
  c.write(off, b);
}
/** What MCRS reads through its DWordAcc fields: the 64-bit registers as two dwords. */
function rd64(c: MemoryHotplugController, off: number): number {
  return rd(c, off, 4) + rd(c, off + 4, 4) * 2 ** 32;
}

test('memory hotplug registers: a plugged range reads back base, end and length; MINS until the guest clears it', () => {
  const c = new MemoryHotplugController(area);
  assert.equal(MEMORY_HOTPLUG_BLOCK_SIZE, 0x28);
  assert.deepEqual([rd(c, MEM_INSERTING_BITMAP_OFFSET, 4), rd(c, MEM_ENABLED_BITMAP_OFFSET, 4)], [0, 0]);
  wr(c, MEM_SELECT_OFFSET, 4, 0);
  assert.equal(rd(c, MEM_STATUS_OFFSET, 1), 0, 'nothing plugged: slot 0 empty');
  assert.equal(rd64(c, MEM_BASE_OFFSET), 0);
  const slot = c.plug(4 * GiB, 512 * MiB);
  assert.equal(slot, 0);
  assert.equal(rd(c, MEM_SELECT_OFFSET, 4), 0);
  assert.equal(rd(c, MEM_STATUS_OFFSET, 1), MEM_STATUS_ENABLED | MEM_STATUS_INSERTING);
  assert.equal(rd64(c, MEM_BASE_OFFSET), 4 * GiB);
  assert.equal(rd64(c, MEM_END_OFFSET), 4 * GiB + 512 * MiB - 1);
  assert.equal(rd64(c, MEM_LENGTH_OFFSET), 512 * MiB);
  assert.equal(rd(c, MEM_LENGTH_OFFSET, 8), 512 * MiB, 'a whole qword read too');
  assert.deepEqual([rd(c, MEM_INSERTING_BITMAP_OFFSET, 4), rd(c, MEM_ENABLED_BITMAP_OFFSET, 4)], [1, 1], 'MINB and MENB: slot 0');
  // MSCN: Notify, then MINS = One (WriteAsZeros: the byte 0x02).
  wr(c, MEM_STATUS_OFFSET, 1, MEM_STATUS_INSERTING);
  assert.equal(rd(c, MEM_STATUS_OFFSET, 1), MEM_STATUS_ENABLED);
  assert.deepEqual([rd(c, MEM_INSERTING_BITMAP_OFFSET, 4), rd(c, MEM_ENABLED_BITMAP_OFFSET, 4)], [0, 1], 'told: MINB clear, MENB set');
  // An eject is refused: the memory stays.
  wr(c, MEM_STATUS_OFFSET, 1, MEM_STATUS_EJECT);
  assert.equal(c.refusedEjects, 1);
  assert.equal(rd(c, MEM_STATUS_OFFSET, 1), MEM_STATUS_ENABLED);
  // The next range goes into slot 1; slot 1 selected reads it.
  assert.equal(c.plug(4 * GiB + 512 * MiB, 256 * MiB), 1);
  wr(c, MEM_SELECT_OFFSET, 4, 1);
  assert.equal(rd64(c, MEM_BASE_OFFSET), 4 * GiB + 512 * MiB);
  assert.equal(c.pluggedBytes(), 768 * MiB);
  assert.deepEqual([rd(c, MEM_INSERTING_BITMAP_OFFSET, 4), rd(c, MEM_ENABLED_BITMAP_OFFSET, 4)], [2, 3]);
  assert.deepEqual(c.plugged(), [{ gpa: 4 * GiB, size: 512 * MiB }, { gpa: 4 * GiB + 512 * MiB, size: 256 * MiB }]);
  // A selector past the last slot selects nothing.
  wr(c, MEM_SELECT_OFFSET, 4, 0xffffffff);
  assert.equal(rd(c, MEM_STATUS_OFFSET, 1), 0);
  assert.equal(rd64(c, MEM_LENGTH_OFFSET), 0);
});

test('memory hotplug ranges: inside the area, whole pages, no overlap, at most MEMORY_HOTPLUG_SLOTS; boot ranges are not announced', () => {
  const c = new MemoryHotplugController(area, [{ gpa: 4 * GiB, size: 128 * MiB }]);
  assert.equal(c.statusOf(0), MEM_STATUS_ENABLED, 'plugged at boot: found by the boot-time scan, no Notify');
  assert.throws(() => c.plug(3 * GiB, 128 * MiB), /outside the hotplug area/);
  assert.throws(() => c.plug(6 * GiB - 64 * MiB, 128 * MiB), /outside the hotplug area/);
  assert.throws(() => c.plug(4 * GiB + 64 * MiB, 128 * MiB), /overlaps/);
  assert.throws(() => c.plug(4 * GiB + 128 * MiB + 1, 4096), /whole 4 KiB pages/);
  assert.throws(() => c.plug(4 * GiB + 128 * MiB, 0), /whole 4 KiB pages/);
  for (let i = 1; i < MEMORY_HOTPLUG_SLOTS; i++) c.plug(4 * GiB + 128 * MiB + (i - 1) * 4096, 4096);
  const b = new Uint8Array(4);
  c.read(0x24, b);
  assert.equal(new DataView(b.buffer).getUint32(0, true), 0xffffffff, 'MENB: all 32 slots, bit 31 too');
  assert.throws(() => c.plug(5 * GiB, 4096), new RegExp(`all ${MEMORY_HOTPLUG_SLOTS} memory slots are in use`));
});

test('memory hotplug state: saved and restored whole; a state that does not fit is refused naming the field, nothing changed', () => {
  const a = new MemoryHotplugController(area);
  a.plug(4 * GiB, 256 * MiB);
  a.plug(4 * GiB + 256 * MiB, 128 * MiB);
  wr(a, MEM_SELECT_OFFSET, 4, 0);
  wr(a, MEM_STATUS_OFFSET, 1, MEM_STATUS_INSERTING);
  const st = JSON.parse(JSON.stringify(a.saveState())) as ReturnType<MemoryHotplugController['saveState']>;
  const b = new MemoryHotplugController(area);
  b.restoreState(st);
  assert.deepEqual(b.saveState(), a.saveState());
  assert.equal(b.statusOf(1), MEM_STATUS_ENABLED | MEM_STATUS_INSERTING, 'the guest is still to be told of slot 1');
  const bad = (mut: (s: typeof st) => void, re: RegExp) => {
    const s = JSON.parse(JSON.stringify(st)) as typeof st;
    mut(s);
    const c = new MemoryHotplugController(area);
    assert.throws(() => c.restoreState(s), (e: unknown) => e instanceof StateFormatError && re.test(e.message));
    assert.equal(c.pluggedBytes(), 0);
  };
  bad((s) => { s.slots = s.slots.slice(1); }, /slots: has 31 slots/);
  bad((s) => { s.slots[2] = { gpa: 4 * GiB, size: 128 * MiB, inserting: false }; }, /slots\[2\]: .*overlaps/);
  bad((s) => { s.slots[0] = { gpa: 9 * GiB, size: 128 * MiB, inserting: false }; }, /slots\[0\]: .*outside the hotplug area/);
  bad((s) => { (s.slots[0] as { inserting: unknown }).inserting = 'yes'; }, /slots\[0\]\.inserting/);
  bad((s) => { s.selected = -1; }, /selected/);
});

test('memory hotplug fuzz: any access of any width at any offset neither throws nor changes a plugged range', () => {
  const c = new MemoryHotplugController(area);
  c.plug(4 * GiB, 512 * MiB);
  let seed = 0x1234567;
  const rnd = () => { seed = (seed * 1103515245 + 12345) >>> 0; return seed; };
  for (let i = 0; i < 20000; i++) {
    const len = [1, 2, 3, 4, 8, 16][rnd() % 6]!;
    const off = rnd() % 0x40;
    const b = new Uint8Array(len);
    for (let k = 0; k < len; k++) b[k] = rnd() & 0xff;
    if (rnd() & 1) c.write(off, b); else c.read(off, b);
  }
  assert.deepEqual(c.plugged(), [{ gpa: 4 * GiB, size: 512 * MiB }]);
  assert.ok(c.badAccesses > 0);
});
