// The device thread's PCI segments: per segment a host bridge and an ECAM window (segment 0 also
// through the 0xCF8 ports, latched on the vCPU threads), and one virtio-pci transport per device, with their notify ioeventfds and MSI-X routes kept in step
// with what the guest programs (BAR moves, vector table writes).
import * as libc from '../sys/libc.js';
import type { Bus } from '../devices/bus.js';
import type { Vm } from '../hypervisor/hypervisor.js';
import type { PciRoot } from '../pci/bus.js';
import { attachPciSegments } from '../pci/segment.js';
import { pciSegmentLayouts, type PciSegmentLayout } from '../arch/x86_64/layout.js';
import { VirtioPciTransport, BAR_SIZE, NOTIFY_OFFSET, NOTIFY_OFF_MULTIPLIER } from '../virtio/pci/transport.js';
import { GsiRouter } from './interrupts.js';

/** One virtio-pci device as the device thread builds it (structured-cloneable). */
export interface VirtioPciInit {
  id: string;
  deviceType: number;
  numQueues: number;
  /** PCI segment (default 0). */
  segment?: number;
  slot: number;
  barAddr: number;
  shared: SharedArrayBuffer;
  queueFds: number[];
  irqFds: number[];
  /** GSI of each MSI-X vector (irqFds[v] is registered on gsis[v]). */
  gsis: number[];
  controlFd: number;
  /**
   * Whether the guest may eject it (ACPI _EJ0): disks, NICs, virtio-fs and vsock. Others stay
   * (a virtio-pmem file is mapped into guest memory; console, rng and balloon are part of the VM).
   */
  removable: boolean;
}

const ONE = new Uint8Array(new BigUint64Array([1n]).buffer);
/**
 * Drivers notify with a 16-bit write of the queue index (virtio 1.2, 4.1.5.2, without
 * VIRTIO_F_NOTIFICATION_DATA); other widths still work, through the transport's MMIO path.
 */
const NOTIFY_WIDTH = { len: 2 } as const;

export interface PciSetup {
  /** Segment 0's root. */
  root: PciRoot;
  /** Every segment's root, by segment number. */
  roots: PciRoot[];
  transports: VirtioPciTransport[];
  /** Put a device on its segment's bus at its slot and BAR (hotplug); throws RangeError when it does not fit. */
  add(d: VirtioPciInit): VirtioPciTransport;
  /** Take the device `id` off its bus (its notify ioeventfds and MSI routes go too); null if absent. */
  remove(id: string): VirtioPciInit | null;
  /** The device `id`, if it is on a bus. */
  get(id: string): VirtioPciInit | null;
  /** The device at (segment, slot), if any. */
  at(segment: number, slot: number): VirtioPciInit | null;
  /** Unregister the notify ioeventfds (before the VM goes away). */
  teardown(): void;
}

export function setupPci(
  mmio: Bus, vm: Vm, devices: readonly VirtioPciInit[], log: (m: string) => void,
  layouts: readonly PciSegmentLayout[] = pciSegmentLayouts(1),
): PciSetup {
  const segments = attachPciSegments(mmio, layouts);
  const roots = segments.map((s) => s.root);
  const router = new GsiRouter(vm);
  const transports: VirtioPciTransport[] = [];
  const registered: Array<{ fd: number; addr: number }> = [];

  const registerNotify = (d: VirtioPciInit, bar: number) => {
    for (let q = 0; q < d.numQueues; q++) {
      const addr = bar + NOTIFY_OFFSET + q * NOTIFY_OFF_MULTIPLIER;
      vm.registerIoevent(d.queueFds[q]!, { space: 'mmio', addr }, NOTIFY_WIDTH);
      registered.push({ fd: d.queueFds[q]!, addr });
    }
  };
  const unregisterNotify = (d: VirtioPciInit, bar: number) => {
    for (let q = 0; q < d.numQueues; q++) {
      const addr = bar + NOTIFY_OFFSET + q * NOTIFY_OFF_MULTIPLIER;
      const i = registered.findIndex((r) => r.fd === d.queueFds[q] && r.addr === addr);
      if (i < 0) continue;
      registered.splice(i, 1);
      try { vm.unregisterIoevent(d.queueFds[q]!, { space: 'mmio', addr }, NOTIFY_WIDTH); } catch { /* already gone */ }
    }
  };

  /** Devices on the buses, by id: where their BAR is now (the guest may have moved it). */
  const present = new Map<string, { init: VirtioPciInit; transport: VirtioPciTransport; bar: number }>();

  const add = (d: VirtioPciInit): VirtioPciTransport => {
    const seg = segments[d.segment ?? 0];
    if (seg === undefined) throw new RangeError(`${d.id}: PCI segment ${d.segment} does not exist`);
    if (present.has(d.id)) throw new RangeError(`${d.id}: already on the bus`);
    if (seg.root.device(0, d.slot, 0) !== null) throw new RangeError(`${d.id}: PCI slot ${d.slot} of segment ${d.segment ?? 0} is in use`);
    if (!mmio.isFree(d.barAddr, BAR_SIZE)) throw new RangeError(`${d.id}: its BAR at 0x${d.barAddr.toString(16)} overlaps a BAR the guest moved there`);
    const window = seg.windows.mmio32;
    let entry: { init: VirtioPciInit; transport: VirtioPciTransport; bar: number } | null = null;
    const t: VirtioPciTransport = new VirtioPciTransport({
      deviceType: d.deviceType, numQueues: d.numQueues, shared: d.shared, barAddr: d.barAddr,
      hooks: {
        signalWorker: () => { libc.write(d.controlFd, ONE); },
        fireVector: (v) => { libc.write(d.irqFds[v]!, ONE); },
        routeVector: (v, msg) => { router.set(d.gsis[v]!, msg); },
        barMoved: (from, to) => {
          // The guest may point a BAR anywhere: it only moves into its segment's 32-bit window and onto
          // free space; otherwise the BAR stays where it was (the guest's register says
          // otherwise, its accesses there hit nothing, as with a conflicting BAR on real hardware).
          const inWindow = to >= window.start && to + BAR_SIZE <= window.start + window.size;
          mmio.remove(from);
          if (!inWindow || !mmio.isFree(to, BAR_SIZE)) {
            mmio.insert(t, from, BAR_SIZE);
            log(`${d.id}: BAR 0 move to 0x${to.toString(16)} refused (outside the PCI window or overlapping)`);
            return false;
          }
          mmio.insert(t, to, BAR_SIZE);
          if (entry !== null) entry.bar = to;
          log(`${d.id}: BAR 0 moved from 0x${from.toString(16)} to 0x${to.toString(16)}`);
          unregisterNotify(d, from);
          try {
            registerNotify(d, to);
          } catch (e) {
            log(`${d.id}: notify ioeventfds at the new BAR failed (${(e as Error).message}); kicks take the MMIO path`);
          }
          return true;
        },
        notifyQueue: (q) => { libc.write(d.queueFds[q]!, ONE); },
      },
    });
    seg.root.add(t, d.slot);
    mmio.insert(t, d.barAddr, BAR_SIZE);
    try {
      registerNotify(d, d.barAddr);
    } catch (e) {
      unregisterNotify(d, d.barAddr);
      mmio.remove(d.barAddr);
      seg.root.remove(d.slot);
      throw e;
    }
    entry = { init: d, transport: t, bar: d.barAddr };
    present.set(d.id, entry);
    transports.push(t);
    return t;
  };

  for (const d of devices) add(d);
  return {
    root: roots[0]!, roots, transports,
    add,
    remove(id: string): VirtioPciInit | null {
      const e = present.get(id);
      if (e === undefined) return null;
      present.delete(id);
      const d = e.init;
      unregisterNotify(d, e.bar);
      mmio.remove(e.bar);
      segments[d.segment ?? 0]!.root.remove(d.slot);
      for (const gsi of d.gsis) router.set(gsi, null);
      const i = transports.indexOf(e.transport);
      if (i >= 0) transports.splice(i, 1);
      return d;
    },
    get(id: string): VirtioPciInit | null {
      return present.get(id)?.init ?? null;
    },
    at(segment: number, slot: number): VirtioPciInit | null {
      for (const e of present.values()) if ((e.init.segment ?? 0) === segment && e.init.slot === slot) return e.init;
      return null;
    },
    teardown(): void {
      for (const r of registered.splice(0)) {
        try { vm.unregisterIoevent(r.fd, { space: 'mmio', addr: r.addr }, NOTIFY_WIDTH); } catch { /* VM closing */ }
      }
    },
  };
}
