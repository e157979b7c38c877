// A VM snapshot on disk, in Cloud Hypervisor's layout: a directory holding
//   config.json    the VmConfig the VM was built from,
//   memory-ranges  guest RAM, sparse (src/memory/snapshot.ts),
//   state.json     everything else the guest can observe, one versioned document that embeds
//                  the versioned documents of each part (hypervisor, legacy devices, PCI,
//                  virtio devices).
// Every file is created exclusively (an existing file is an error, never overwritten) and
// state.json is written last, so a directory with a state.json holds a complete snapshot; a
// failed snapshot removes what it wrote. Reading is strict: a StateFormatError names the field,
// e.g. `snapshot state: hypervisor.vcpus[1].sregs.cs.limit: …`.
import { closeSync, readFileSync, statSync, unlinkSync, writeSync, fsyncSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  array, bool, decodeVersioned, int, literal, nullable, parseJsonText, string, struct, StateFormatError, u16, u32, type Codec, type Json,
} from '../snapshot/codec.js';
import type { MemoryHotplugState } from '../devices/memory_hotplug.js';
import type { PciHotplugState } from '../pci/hotplug.js';
import { hypervisorStateFromJson, hypervisorStateToJson, type HypervisorState } from '../hypervisor/state_json.js';
import { legacyDeviceStateFromJson, legacyDeviceStateToJson, type LegacyDeviceState } from '../devices/state_json.js';
import { pciStateFromJson, pciStateToJson } from '../pci/state_json.js';
import { virtioStateFromJson, virtioStateToJson, type VirtioDeviceState } from '../virtio/state.js';
import type { PciState } from '../pci/segment.js';
import { createExclusive, saveGuestMemory, type MemoryRange } from '../memory/snapshot.js';
import type { GuestMemory } from '../memory/guest_memory.js';

export const SNAPSHOT_STATE_FORMAT = 'stratovisor-snapshot-state';
/**
 * Bump when the meaning or shape of a field changes; readers refuse other versions by name, or
 * convert them. 2: memoryHotplug (the ACPI memory hotplug controller); a version 1 document is
 * read as one without ACPI-hotplugged memory (version 1 snapshots could not hold any).
 * 3: pciPlacement (each virtio device's PCI address) and pciHotplug (the PCI hotplug
 * controller's unread bits); an older document is read with both null: devices placed by the
 * configuration, nothing pending (what those versions restored).
 */
export const SNAPSHOT_STATE_VERSION = 3;
export const CONFIG_FILE = 'config.json';
export const STATE_FILE = 'state.json';
export const MEMORY_FILE = 'memory-ranges';

const DOCUMENT = 'snapshot state';

/** state.json without its format/version. */
export interface SnapshotState {
  arch: 'x86_64';
  hypervisor: HypervisorState;
  devices: LegacyDeviceState;
  pci: PciState;
  /** Each virtio-pci device: transport registers, queues, device-specific part. */
  virtio: VirtioDeviceState[];
  memory: { file: typeof MEMORY_FILE; ranges: MemoryRange[] };
  /** The ACPI memory hotplug controller (src/devices/memory_hotplug.ts); null: the VM has none. */
  memoryHotplug: MemoryHotplugState | null;
  /**
   * Where each virtio device sat (segment, device number on its bus 0), as Cloud Hypervisor's
   * device tree keeps each node's pci_bdf: a restore puts every device back there, whatever was
   * hot-added or removed before it. null (version < 3): placed by the configuration.
   */
  pciPlacement: PciPlacementState[] | null;
  /** The ACPI PCI hotplug controller's bits the guest had not read (src/pci/hotplug.ts); null: none. */
  pciHotplug: PciHotplugState | null;
}

/** One virtio device's PCI address in a snapshot. */
export interface PciPlacementState {
  id: string;
  segment: number;
  slot: number;
}

export class SnapshotError extends Error {
  override name = 'SnapshotError';
}

/** A versioned document of its own, inside state.json: its errors gain the field's path. */
function embedded<T>(toJson: (v: T) => Json, fromJson: (j: unknown) => T): Codec<T> {
  return {
    enc: toJson,
    dec(j, path) {
      try {
        return fromJson(j);
      } catch (e) {
        if (e instanceof StateFormatError) throw new StateFormatError(e.field === '' ? path : `${path}.${e.field}`, e.problem);
        throw e;
      }
    },
  };
}

const safeUint: Codec<number> = {
  enc: (v) => v,
  dec(j, path) {
    if (typeof j !== 'number' || !Number.isSafeInteger(j) || j < 0) throw new StateFormatError(path, `expected a non-negative integer, got ${JSON.stringify(j)}`);
    return j;
  },
};

const rangeCodec = struct<MemoryRange>({ gpa: safeUint, length: safeUint, fileOffset: safeUint });

type MemorySlotState = MemoryHotplugState['slots'][number];
/** The controller's own restoreState checks the slots against the VM (count, area, overlaps). */
const memoryHotplugCodec = struct<MemoryHotplugState>({
  selected: u32,
  slots: array(nullable(struct<NonNullable<MemorySlotState>>({ gpa: safeUint, size: safeUint, inserting: bool })), 0, 1024),
});

/** VirtioManager.pinPlacements matches the ids and slots to the VM's devices at restore. */
const pciPlacementCodec = struct<PciPlacementState>({ id: string(1, 256), segment: u16, slot: int(1, 31) });
/** One 32-bit slot mask per segment; the controller's restoreState checks the count and bits. */
const pciHotplugCodec = struct<PciHotplugState>({ up: array(u32, 1, 16), down: array(u32, 1, 16) });

interface Document extends SnapshotState {
  format: typeof SNAPSHOT_STATE_FORMAT;
  version: typeof SNAPSHOT_STATE_VERSION;
}

const documentCodec = struct<Document>({
  format: literal(SNAPSHOT_STATE_FORMAT),
  version: literal(SNAPSHOT_STATE_VERSION),
  arch: literal('x86_64'),
  hypervisor: embedded(hypervisorStateToJson, hypervisorStateFromJson),
  devices: embedded(legacyDeviceStateToJson, legacyDeviceStateFromJson),
  pci: embedded(pciStateToJson, pciStateFromJson),
  virtio: embedded(virtioStateToJson, virtioStateFromJson),
  memory: struct<SnapshotState['memory']>({ file: literal(MEMORY_FILE), ranges: array(rangeCodec, 1, 64) }),
  memoryHotplug: nullable(memoryHotplugCodec),
  pciPlacement: nullable(array(pciPlacementCodec, 0, 1024)),
  pciHotplug: nullable(pciHotplugCodec),
});

export function snapshotStateToJson(s: SnapshotState): Json {
  return documentCodec.enc({ format: SNAPSHOT_STATE_FORMAT, version: SNAPSHOT_STATE_VERSION, ...s });
}

export function parseSnapshotState(text: string): SnapshotState {
  const j = parseJsonText(text, DOCUMENT);
  // Older versions convert: version 1 is version 2 without ACPI-hotplugged memory, version 2 is
  // version 3 without placements (placed by the configuration) or pending PCI hotplug bits.
  const o = j as Record<string, unknown> | null;
  let doc: unknown = j;
  if (typeof o === 'object' && o !== null && !Array.isArray(o) && o['format'] === SNAPSHOT_STATE_FORMAT && (o['version'] === 1 || o['version'] === 2)) {
    const added = ['pciPlacement', 'pciHotplug', ...(o['version'] === 1 ? ['memoryHotplug'] : [])];
    // A field an older version never had is not converted over: it is refused as unknown.
    if (!added.some((k) => k in o)) doc = { ...o, version: SNAPSHOT_STATE_VERSION, ...Object.fromEntries(added.map((k) => [k, null])) };
  }
  const d = decodeVersioned(doc, DOCUMENT, SNAPSHOT_STATE_FORMAT, SNAPSHOT_STATE_VERSION, documentCodec);
  const { format: _f, version: _v, ...state } = d;
  return state;
}

/** The directory of a `destination_url` / `source_url` (Cloud Hypervisor: file:// only). */
export function snapshotDirectory(url: string, what = 'destination_url'): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new SnapshotError(`${what} '${url}' is not a URL (expected file:///path/to/dir)`);
  }
  if (u.protocol !== 'file:') throw new SnapshotError(`${what} '${url}': only file:// URLs are supported`);
  const dir = fileURLToPath(u);
  let isDir = false;
  try { isDir = statSync(dir).isDirectory(); } catch { /* reported below */ }
  if (!isDir) throw new SnapshotError(`${what} '${url}': ${dir} is not an existing directory`);
  return dir;
}

function writeNewFile(path: string, text: string): void {
  const fd = createExclusive(path, (m) => new SnapshotError(m));
  try {
    writeSync(fd, text);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** What a snapshot or migration takes of a paused VM: the state but for guest RAM's ranges, and RAM. */
export interface SnapshotParts extends Omit<SnapshotState, 'arch' | 'memory'> {
  config: unknown;
  mem: GuestMemory;
}

/** state.json's document for `p` with guest RAM at `ranges` of the memory file. */
export function snapshotStateOf(p: SnapshotParts, ranges: MemoryRange[]): SnapshotState {
  return {
    arch: 'x86_64', hypervisor: p.hypervisor, devices: p.devices, pci: p.pci, virtio: p.virtio,
    memory: { file: MEMORY_FILE, ranges }, memoryHotplug: p.memoryHotplug, pciPlacement: p.pciPlacement, pciHotplug: p.pciHotplug,
  };
}

export interface SnapshotWritten {
  dir: string;
  memoryDataBytes: number;
  memoryFileSize: number;
}

/** Write a snapshot into the existing directory `dir` (see the header). */
export function writeSnapshot(dir: string, p: SnapshotParts): SnapshotWritten {
  const created: string[] = [];
  const make = (name: string, write: (path: string) => void) => {
    const path = join(dir, name);
    write(path);
    created.push(path);
  };
  try {
    // Nothing is written when any of the three names is taken.
    for (const name of [CONFIG_FILE, MEMORY_FILE, STATE_FILE]) {
      let exists = true;
      try { statSync(join(dir, name)); } catch { exists = false; }
      if (exists) throw new SnapshotError(`'${join(dir, name)}' exists already (a snapshot never overwrites a file)`);
    }
    make(CONFIG_FILE, (path) => writeNewFile(path, `${JSON.stringify(p.config, null, 2)}\n`));
    let mem = { ranges: [] as MemoryRange[], dataBytes: 0, fileSize: 0 };
    make(MEMORY_FILE, (path) => { mem = saveGuestMemory(p.mem, path); });
    make(STATE_FILE, (path) => writeNewFile(path, JSON.stringify(snapshotStateToJson(snapshotStateOf(p, mem.ranges)))));
    return { dir, memoryDataBytes: mem.dataBytes, memoryFileSize: mem.fileSize };
  } catch (e) {
    for (const f of created) { try { unlinkSync(f); } catch { /* gone */ } }
    throw e instanceof SnapshotError ? e : new SnapshotError(`snapshot to ${dir} failed: ${(e as Error).message}`);
  }
}

/** Read and check a snapshot directory's state and config (guest RAM stays in its file). */
export function readSnapshot(dir: string): { config: unknown; configFile: string; state: SnapshotState; memoryFile: string } {
  const read = (name: string) => {
    try {
      return readFileSync(join(dir, name), 'utf8');
    } catch (e) {
      throw new SnapshotError(`cannot read ${join(dir, name)}: ${(e as Error).message}`);
    }
  };
  const state = parseSnapshotState(read(STATE_FILE));
  let config: unknown;
  try {
    config = JSON.parse(read(CONFIG_FILE));
  } catch (e) {
    throw e instanceof SnapshotError ? e : new SnapshotError(`${join(dir, CONFIG_FILE)} is not JSON: ${(e as Error).message}`);
  }
  return { config, configFile: join(dir, CONFIG_FILE), state, memoryFile: join(dir, MEMORY_FILE) };
}
