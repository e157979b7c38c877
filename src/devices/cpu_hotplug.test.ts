// The ACPI CPU hotplug controller's registers (cpu_hotplug.ts): what the DSDT's CSTA, CSCN and
// CEJ0 read and write, its saved state, and a guest that writes garbage.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  CpuHotplugController, CPU_HOTPLUG_BLOCK_SIZE, CPU_SELECT_OFFSET, CPU_STATUS_OFFSET,
  CPU_STATUS_EJECT, CPU_STATUS_INSERTING, CPU_STATUS_PRESENT, CPU_STATUS_REMOVING,
} from './cpu_hotplug.js';

const u32 = (v: number) => { const b = new Uint8Array(4); new DataView(b.buffer).setUint32(0, v >>> 0, true); return b; };
const select = (c: CpuHotplugController, id: number) => c.write(CPU_SELECT_OFFSET, u32(id));
const status = (c: CpuHotplugController, id: number) => { select(c, id); const b = new Uint8Array(1); c.read(CPU_STATUS_OFFSET, b); return b[0]!; };
const writeStatus = (c: CpuHotplugController, id: number, v: number) => { select(c, id); c.write(CPU_STATUS_OFFSET, Uint8Array.of(v)); };

test('boot vCPUs present, the rest not; an insert is CPEN+CINS until CSCN clears CINS', () => {
  const c = new CpuHotplugController(4, 2, () => assert.fail('no eject'));
  assert.equal(CPU_HOTPLUG_BLOCK_SIZE, 12);
  assert.deepEqual([0, 1, 2, 3].map((i) => status(c, i)), [CPU_STATUS_PRESENT, CPU_STATUS_PRESENT, 0, 0]);
  c.inserted(2);
  assert.equal(status(c, 2), CPU_STATUS_PRESENT | CPU_STATUS_INSERTING);
  writeStatus(c, 2, CPU_STATUS_INSERTING);
  assert.equal(status(c, 2), CPU_STATUS_PRESENT, 'writing CINS=1 clears it');
  const sel = new Uint8Array(4);
  c.read(CPU_SELECT_OFFSET, sel);
  assert.equal(new DataView(sel.buffer).getUint32(0, true), 2, 'CSEL reads back');
});

test('removal: CRMV until CSCN clears it; CEJ0 of the selected vCPU ejects it once; not of vCPU 0 or an absent one', () => {
  const ejected: number[] = [];
  const c = new CpuHotplugController(4, 3, (id) => ejected.push(id));
  c.removeRequested(2);
  assert.equal(status(c, 2), CPU_STATUS_PRESENT | CPU_STATUS_REMOVING);
  writeStatus(c, 2, CPU_STATUS_REMOVING);
  assert.equal(status(c, 2), CPU_STATUS_PRESENT);
  writeStatus(c, 2, CPU_STATUS_EJECT);
  assert.deepEqual(ejected, [2]);
  assert.equal(status(c, 2), 0, 'gone: _STA says absent');
  writeStatus(c, 2, CPU_STATUS_EJECT);
  writeStatus(c, 3, CPU_STATUS_EJECT);
  writeStatus(c, 0, CPU_STATUS_EJECT);
  assert.deepEqual(ejected, [2], 'absent vCPUs and the boot processor are never ejected');
  assert.ok(c.isPresent(0));
  assert.throws(() => c.removeRequested(3), /vCPU 3 is not present/);
  assert.throws(() => c.inserted(4), /vCPU 4 outside 0..3/);
  // Plugged again later: an insert after an eject.
  c.inserted(2);
  assert.equal(status(c, 2), CPU_STATUS_PRESENT | CPU_STATUS_INSERTING);
});

test('saved state round-trips; a state for another max_vcpus or with unknown bits is refused by name', () => {
  const c = new CpuHotplugController(3, 1, () => {});
  c.inserted(1);
  select(c, 2);
  const s = c.saveState();
  assert.deepEqual(s, { selected: 2, status: [1, 3, 0] });
  const d = new CpuHotplugController(3, 1, () => {});
  d.restoreState(JSON.parse(JSON.stringify(s)) as typeof s);
  assert.deepEqual(d.saveState(), s);
  assert.throws(() => new CpuHotplugController(4, 1, () => {}).restoreState(s), /status.*has 3 vCPUs, this VM 4/);
  assert.throws(() => d.restoreState({ selected: 0, status: [1, 8, 0] }), /status\[1\]/);
  assert.throws(() => new CpuHotplugController(2, 3, () => {}), /3 present vCPUs of 2/);
});

test('fuzz: random guest accesses never throw, eject only present vCPUs other than 0, each once per presence', () => {
  let seed = Number(process.env.STV_FUZZ_SEED ?? 4242) >>> 0;
  const rnd = () => { seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0; return seed; };
  const max = 6;
  const present = new Set([0, 1]);
  const c = new CpuHotplugController(max, 2, (id) => {
    assert.ok(id !== 0 && present.has(id), `eject of vCPU ${id}`);
    present.delete(id);
  });
  for (let i = 0; i < 200_000; i++) {
    const width = [1, 2, 4, 8][rnd() % 4]!;
    const offset = rnd() % (CPU_HOTPLUG_BLOCK_SIZE + 8);
    const data = new Uint8Array(width);
    for (let k = 0; k < width; k++) data[k] = rnd() & 0xff;
    // Mostly small selectors, so the status register is hit.
    if (offset === CPU_SELECT_OFFSET && width === 4 && rnd() % 4 !== 0) new DataView(data.buffer).setUint32(0, rnd() % (max + 2), true);
    if (rnd() % 2 === 0) c.read(offset, data);
    else c.write(offset, data);
    const id = rnd() % max;
    if (rnd() % 32 === 0 && !present.has(id)) { c.inserted(id); present.add(id); }
    if (rnd() % 32 === 0 && present.has(id) && id !== 0) c.removeRequested(id);
  }
  for (let id = 0; id < max; id++) assert.equal(c.isPresent(id), present.has(id), `vCPU ${id}`);
  assert.ok(c.badAccesses > 0);
});
