// PCI segments (PCI Firmware 3.0, 4.1.2: segment groups): each one its own root (bus 0 with a
// host bridge at 00.0) reached through its own ECAM window on the MMIO bus, and its own BAR
// window. Segment 0 is also reached through ports 0xCF8/0xCFC (PciType1, on the vCPU threads);
// the others only through ECAM, as on Cloud Hypervisor.

import type { Bus } from '../devices/bus.js';
import { PciConfigMmio, PciRoot, PCI_SLOTS, type PciRootState, type PciType1 } from './bus.js';
import { StateCheck, underField } from '../devices/state.js';

/** What a segment needs from the platform layout (src/arch/x86_64/layout.ts PciSegmentLayout). */
export interface PciSegmentWindows {
  segment: number;
  ecamBase: number;
  ecamSize: number;
  mmio32: { start: number; size: number };
}

export interface PciSegment {
  readonly windows: PciSegmentWindows;
  readonly root: PciRoot;
}

/** One root per segment, its ECAM window on `mmio` (which routes an access to the segment it falls in). */
export function attachPciSegments(mmio: Bus, segments: readonly PciSegmentWindows[]): PciSegment[] {
  return segments.map((w) => {
    const root = new PciRoot();
    mmio.insert(new PciConfigMmio(root), w.ecamBase, w.ecamSize);
    return { windows: w, root };
  });
}

/** Where a device sits: segment, device number on bus 0, BAR 0 address. */
export interface PciPlacement {
  segment: number;
  slot: number;
  barAddr: number;
}

/**
 * Place devices on their segments' bus 0 (00.0 is the host bridge): a device that names its
 * `slot` keeps it (a hot-plugged one, or one placed at an earlier boot), the others take the
 * lowest free device numbers in order. BAR 0 of device number N is at its segment's window
 * start + (N - 1) * barSize, so a slot's BAR never depends on the other devices. Throws
 * RangeError naming the segment when one is unknown or full, or a slot is taken twice.
 */
export function placePciDevices(devices: ReadonlyArray<{ id: string; segment: number; slot?: number }>, segments: readonly PciSegmentWindows[], barSize: number): PciPlacement[] {
  const windows = new Map(segments.map((s) => [s.segment, s.mmio32]));
  const used = new Map(segments.map((s) => [s.segment, new Set<number>([0])]));
  const known = (d: { id: string; segment: number }) => {
    const u = used.get(d.segment);
    if (u === undefined) throw new RangeError(`${d.id}: PCI segment ${d.segment} does not exist (segments 0..${segments.length - 1})`);
    return u;
  };
  for (const d of devices) {
    if (d.slot === undefined) continue;
    const u = known(d);
    if (!Number.isInteger(d.slot) || d.slot < 1 || d.slot >= PCI_SLOTS) throw new RangeError(`${d.id}: PCI slot ${d.slot} outside 1..${PCI_SLOTS - 1}`);
    if (u.has(d.slot)) throw new RangeError(`${d.id}: PCI slot ${d.slot} of segment ${d.segment} is taken twice`);
    u.add(d.slot);
  }
  return devices.map((d) => {
    const u = known(d);
    let slot = d.slot;
    if (slot === undefined) {
      slot = 1;
      while (slot < PCI_SLOTS && u.has(slot)) slot++;
      if (slot >= PCI_SLOTS) throw new RangeError(`${d.id}: PCI segment ${d.segment} is full (at most ${PCI_SLOTS - 1} devices on its bus 0)`);
      u.add(slot);
    }
    const w = windows.get(d.segment)!;
    const barAddr = Math.ceil(w.start / barSize) * barSize + (slot - 1) * barSize;
    if (barAddr + barSize > w.start + w.size) throw new RangeError(`${d.id}: PCI BAR window 0x${w.start.toString(16)}+0x${w.size.toString(16)} is full`);
    return { segment: d.segment, slot, barAddr };
  });
}

/**
 * The PCI part of a VM's saved state: each segment's bus (by segment number) and the
 * CONFIG_ADDRESS latch of each 0xCF8 front end (one per vCPU, by vCPU id: a vCPU may be paused
 * between its address and data accesses). ECAM keeps no state. File form: state_json.ts.
 */
export interface PciState {
  segments: PciRootState[];
  configAddress: number[];
}

const PCI_DOC = 'PCI state';

export function savePciState(segments: readonly PciSegment[], type1: readonly PciType1[]): PciState {
  return { segments: segments.map((s) => s.root.saveState()), configAddress: type1.map((t) => t.saveState().configAddress) };
}

/** Restore into a VM built with the same segments, devices and vCPU count; a StateFormatError names what does not fit. */
export function restorePciState(segments: readonly PciSegment[], type1: readonly PciType1[], s: PciState): void {
  const c: StateCheck = new StateCheck(PCI_DOC);
  c.object('', s);
  if (!Array.isArray(s.segments) || s.segments.length !== segments.length) {
    c.fail('segments', `the state has ${Array.isArray(s.segments) ? s.segments.length : 'no'} PCI segments, this VM ${segments.length}`);
  }
  if (!Array.isArray(s.configAddress) || s.configAddress.length !== type1.length) {
    c.fail('configAddress', `the state has ${Array.isArray(s.configAddress) ? s.configAddress.length : 'no'} CONFIG_ADDRESS latches (one per vCPU), this VM ${type1.length}`);
  }
  s.configAddress.forEach((a, i) => {
    c.uint(`configAddress[${i}]`, a, 0xffffffff);
    if ((a & 0x3) !== 0) c.fail(`configAddress[${i}]`, `bits 0-1 of CONFIG_ADDRESS read 0 (PCI 3.0, 3.2.2.3.2), got 0x${a.toString(16)}`);
  });
  // Everything is checked before anything changes.
  s.segments.forEach((r, i) => underField(`segments[${i}]`, PCI_DOC, () => segments[i]!.root.checkState(r)));
  s.configAddress.forEach((a, i) => type1[i]!.restoreState({ configAddress: a }));
  s.segments.forEach((r, i) => underField(`segments[${i}]`, PCI_DOC, () => segments[i]!.root.restoreState(r)));
}
