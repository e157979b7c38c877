// PCI segments (PCI Firmware 3.0, 4.1.2: segment groups): each one its own root (bus 0 with a
// host bridge at 00.0) reached through its own ECAM window on the MMIO bus, and its own BAR
// window. Segment 0 is also reached through ports 0xCF8/0xCFC (PciType1, on the vCPU threads);
// the others only through ECAM, as on Cloud Hypervisor.

import type { Bus } from '../devices/bus.js';
import { BarAllocator, PciConfigMmio, PciRoot, PCI_SLOTS } from './bus.js';

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
 * Place devices (in order) on their segments: device numbers 1, 2, ... on each segment's bus 0
 * (00.0 is its host bridge) and BARs of `barSize` from that segment's own window. Throws
 * RangeError naming the segment when one is unknown or full.
 */
export function placePciDevices(devices: ReadonlyArray<{ id: string; segment: number }>, segments: readonly PciSegmentWindows[], barSize: number): PciPlacement[] {
  const bars = new Map(segments.map((s) => [s.segment, new BarAllocator(s.mmio32.start, s.mmio32.size)]));
  const nextSlot = new Map(segments.map((s) => [s.segment, 1]));
  return devices.map((d) => {
    const alloc = bars.get(d.segment);
    const slot = nextSlot.get(d.segment);
    if (alloc === undefined || slot === undefined) throw new RangeError(`${d.id}: PCI segment ${d.segment} does not exist (segments 0..${segments.length - 1})`);
    if (slot >= PCI_SLOTS) throw new RangeError(`${d.id}: PCI segment ${d.segment} is full (at most ${PCI_SLOTS - 1} devices on its bus 0)`);
    nextSlot.set(d.segment, slot + 1);
    return { segment: d.segment, slot, barAddr: alloc.allocate(barSize) };
  });
}

/** Devices on each segment's bus 0, host bridge included (for PciType1 on segment 0). */
export function slotsInUse(placements: readonly PciPlacement[], segment: number): number {
  let max = 0;
  for (const p of placements) if (p.segment === segment && p.slot > max) max = p.slot;
  return max + 1;
}
