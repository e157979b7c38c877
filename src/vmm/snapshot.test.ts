// The snapshot directory: what writeSnapshot writes is what readSnapshot reads (real devices'
// state, real guest memory, a well-formed hypervisor state), files are created exclusively and a
// failure leaves nothing behind, and state.json errors name the field.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { GuestMemory } from '../memory/guest_memory.js';
import { restoreGuestMemory } from '../memory/snapshot.js';
import { StateFormatError, type Json } from '../snapshot/codec.js';
import { editJson } from '../testing/json_fuzz.js';
import { sampleSnapshotParts } from './testing/sample_snapshot.js';
import {
  CONFIG_FILE, MEMORY_FILE, STATE_FILE, SnapshotError, parseSnapshotState, readSnapshot, snapshotDirectory, writeSnapshot,
  type SnapshotParts,
} from './snapshot.js';

const MiB = 1 << 20;
const root = mkdtempSync(join(tmpdir(), 'stv-snapdir-'));
process.on('exit', () => rmSync(root, { recursive: true, force: true }));

const parts = (mem: GuestMemory): SnapshotParts => sampleSnapshotParts(mem);

test('writeSnapshot then readSnapshot: config, every part of the state and guest RAM come back', () => {
  const mem = GuestMemory.allocate([{ gpa: 0, size: 8 * MiB }]);
  const fresh = GuestMemory.allocate([{ gpa: 0, size: 8 * MiB }]);
  try {
    mem.writeBytes(0x10_0000, new TextEncoder().encode('kernel text'));
    const p = parts(mem);
    const dir = join(root, 'ok');
    mkdirSync(dir);
    const w = writeSnapshot(dir, p);
    assert.deepEqual(readdirSync(dir).sort(), [CONFIG_FILE, MEMORY_FILE, STATE_FILE].sort());
    assert.equal(w.memoryFileSize, 8 * MiB);
    const r = readSnapshot(dir);
    assert.deepEqual(r.config, p.config);
    assert.deepEqual(r.state.hypervisor, p.hypervisor);
    assert.deepEqual(r.state.devices, p.devices);
    assert.deepEqual(r.state.pci, p.pci);
    assert.deepEqual(r.state.virtio, p.virtio);
    assert.deepEqual(r.state.pciPlacement, p.pciPlacement);
    assert.deepEqual(r.state.pciHotplug, p.pciHotplug);
    assert.deepEqual(r.state.memory.ranges, [{ gpa: 0, length: 8 * MiB, fileOffset: 0 }]);
    restoreGuestMemory(fresh, r.memoryFile, r.state.memory.ranges);
    assert.equal(new TextDecoder().decode(fresh.slice(0x10_0000, 11)), 'kernel text');
  } finally {
    mem.free();
    fresh.free();
  }
});

test('a snapshot never overwrites: any of the three names taken writes nothing; a failure removes what it wrote', () => {
  const mem = GuestMemory.allocate([{ gpa: 0, size: 8 * MiB }]);
  try {
    for (const taken of [CONFIG_FILE, MEMORY_FILE, STATE_FILE]) {
      const dir = join(root, `taken-${taken}`);
      mkdirSync(dir);
      writeFileSync(join(dir, taken), 'precious');
      assert.throws(() => writeSnapshot(dir, parts(mem)), (e: unknown) => e instanceof SnapshotError && /exists already/.test(e.message));
      assert.deepEqual(readdirSync(dir), [taken]);
      assert.equal(readFileSync(join(dir, taken), 'utf8'), 'precious');
    }
    // Guest memory that cannot be saved (test memory without a host mapping) fails after
    // config.json was written: it and the partial memory-ranges are removed.
    const dir = join(root, 'fails');
    mkdirSync(dir);
    const unsaveable = GuestMemory.fromBuffers([{ gpa: 0, buffer: new ArrayBuffer(8 * MiB) }]);
    assert.throws(() => writeSnapshot(dir, { ...parts(mem), mem: unsaveable }), (e: unknown) => e instanceof SnapshotError && /no host mapping/.test(e.message));
    assert.deepEqual(readdirSync(dir), []);
  } finally {
    mem.free();
  }
});

test('state.json errors name the field, through the embedded documents', () => {
  const mem = GuestMemory.allocate([{ gpa: 0, size: 8 * MiB }]);
  try {
    const dir = join(root, 'fields');
    mkdirSync(dir);
    writeSnapshot(dir, parts(mem));
    const text = readFileSync(join(dir, STATE_FILE), 'utf8');
    /** state.json with the value at `path` replaced (undefined: deleted). */
    const edit = (path: ReadonlyArray<string | number>, value: Json | undefined): string => {
      const j = JSON.parse(text) as Json;
      editJson(j, path, value === undefined ? { del: true } : { set: value });
      return JSON.stringify(j);
    };
    const field = (t: string): string => {
      try {
        parseSnapshotState(t);
      } catch (e) {
        assert.ok(e instanceof StateFormatError, String(e));
        assert.ok(e.message.startsWith('snapshot state: '), e.message);
        return e.field;
      }
      assert.fail('accepted');
    };
    assert.equal(field(edit(['version'], 4)), 'version');
    assert.equal(field(edit(['memoryHotplug'], { selected: 0, slots: [{ gpa: 1, size: -4096, inserting: false }] })), 'memoryHotplug.slots[0].size');
    assert.equal(field(edit(['memoryHotplug'], undefined)), 'memoryHotplug');
    // Version 1 (before memoryHotplug) converts: read as a VM without ACPI-hotplugged memory.
    const v1 = JSON.parse(text) as Record<string, Json>;
    for (const k of ['memoryHotplug', 'pciPlacement', 'pciHotplug']) delete v1[k];
    v1['version'] = 1;
    assert.equal(parseSnapshotState(JSON.stringify(v1)).memoryHotplug, null);
    v1['memoryHotplug'] = null;
    assert.equal(field(JSON.stringify(v1)), 'version', 'a version 1 document with the new field is neither');
    // Version 2 (before pciPlacement and pciHotplug) converts: placed by the configuration, nothing pending.
    const v2 = JSON.parse(text) as Record<string, Json>;
    delete v2['pciPlacement'];
    delete v2['pciHotplug'];
    v2['version'] = 2;
    const r2 = parseSnapshotState(JSON.stringify(v2));
    assert.equal(r2.pciPlacement, null);
    assert.equal(r2.pciHotplug, null);
    assert.deepEqual(r2.memoryHotplug, parseSnapshotState(text).memoryHotplug, 'the rest as saved');
    v2['pciHotplug'] = null;
    assert.equal(field(JSON.stringify(v2)), 'version', 'a version 2 document with a version 3 field is neither');
    // Placements and hotplug bits: shapes checked here, meaning by the VM at restore.
    const placed = [{ id: '_disk1', segment: 0, slot: 3 }, { id: '_rng', segment: 1, slot: 1 }];
    assert.deepEqual(parseSnapshotState(edit(['pciPlacement'], placed)).pciPlacement, placed);
    assert.equal(field(edit(['pciPlacement'], [{ id: '_disk1', segment: 0, slot: 32 }])), 'pciPlacement[0].slot');
    assert.equal(field(edit(['pciPlacement'], [{ id: '_disk1', segment: 0, slot: 0 }])), 'pciPlacement[0].slot', 'slot 0 is the host bridge');
    assert.equal(field(edit(['pciPlacement'], [{ id: '', segment: 0, slot: 2 }])), 'pciPlacement[0].id');
    assert.equal(field(edit(['pciPlacement'], [{ id: 'a', slot: 2 }])), 'pciPlacement[0].segment');
    assert.deepEqual(parseSnapshotState(edit(['pciHotplug'], { up: [8], down: [2 ** 31] })).pciHotplug, { up: [8], down: [2 ** 31] });
    assert.equal(field(edit(['pciHotplug'], { up: [8], down: [-1] })), 'pciHotplug.down[0]');
    assert.equal(field(edit(['pciHotplug'], { up: [], down: [0] })), 'pciHotplug.up');
    assert.equal(field(edit(['pciHotplug'], undefined)), 'pciHotplug');
    // Saved ranges come back as saved.
    const withMem = edit(['memoryHotplug'], { selected: 1, slots: [{ gpa: 2 ** 32, size: 2 ** 29, inserting: false }, null] });
    assert.deepEqual(parseSnapshotState(withMem).memoryHotplug, { selected: 1, slots: [{ gpa: 2 ** 32, size: 2 ** 29, inserting: false }, null] });
    assert.equal(field(edit(['hypervisor', 'vcpus', 1, 'regs', 'rip'], 7)), 'hypervisor.vcpus[1].regs.rip');
    assert.equal(field(edit(['devices', 'serial'], undefined)), 'devices.serial');
    assert.equal(field(edit(['pci', 'configAddress'], 'x')), 'pci.configAddress');
    assert.equal(field(edit(['memory', 'ranges', 0, 'length'], -1)), 'memory.ranges[0].length');
    assert.equal(field(edit(['extra'], 1)), 'extra');
    assert.equal(field('{"format":'), '');
  } finally {
    mem.free();
  }
});

test('destination_url: file:// of an existing directory only, each refusal says why', () => {
  assert.equal(snapshotDirectory(pathToFileURL(root).href), root);
  assert.throws(() => snapshotDirectory('not a url'), /is not a URL/);
  assert.throws(() => snapshotDirectory('http://host/x'), /only file:\/\/ URLs/);
  assert.throws(() => snapshotDirectory(pathToFileURL(join(root, 'missing')).href), /is not an existing directory/);
  writeFileSync(join(root, 'a-file'), '');
  assert.throws(() => snapshotDirectory(pathToFileURL(join(root, 'a-file')).href), /is not an existing directory/);
});
