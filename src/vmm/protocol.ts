// Messages and shared data between the VMM's main thread and its vCPU and device threads.
import type { MessagePort } from 'node:worker_threads';
import type { VcpuHandle, VmHandle } from '../hypervisor/hypervisor.js';
import type { VirtioPciInit } from './pci_setup.js';
import type { MailboxShared } from './mailbox.js';
import type { PciSegmentLayout } from '../arch/x86_64/layout.js';
import type { LegacyDeviceState } from '../devices/state_json.js';
import type { PciRootState } from '../pci/bus.js';
import type { CpuHotplugState } from '../devices/cpu_hotplug.js';
import type { MemoryHotplugState } from '../devices/memory_hotplug.js';
import type { PciHotplugState } from '../pci/hotplug.js';

export interface VcpuWorkerData {
  handle: VcpuHandle;
  shared: MailboxShared;
  /** Int32[0]: 0 run, 1 pause, 2 stop (see RunState). */
  runState: SharedArrayBuffer;
  /** PCI bus 0 has devices 0..pciSlots-1 (the host bridge and the virtio devices). */
  pciSlots: number;
  /**
   * A restored vCPU: its 0xCF8 CONFIG_ADDRESS latch as saved. A vCPU whose RunState is Pause
   * when it starts (a restore) parks before its first KVM_RUN and says 'paused'.
   */
  configAddress?: number;
  /**
   * CPU hotplug: Int32 word per possible vCPU (PlugState), this vCPU's at its id. Unplugged, the
   * thread stops calling KVM_RUN (after a kick) and waits for Plugged again or Stop.
   */
  plug?: SharedArrayBuffer;
}

/** A vCPU thread's PlugState word: Plugged runs the guest, Unplugged parks (the guest ejected it), Stop ends. */
export const PlugState = { Plugged: 0, Unplugged: 1, Stop: 2 } as const;

export const RunState = { Run: 0, Pause: 1, Stop: 2 } as const;

export type VcpuEvent =
  | { type: 'started'; id: number }
  /** `configAddress`: the vCPU's 0xCF8 CONFIG_ADDRESS latch as it parked (saved state). */
  | { type: 'paused'; id: number; configAddress: number }
  /** PlugState Unplugged: the thread has left KVM_RUN and waits (its vCPU fd stays open). */
  | { type: 'unplugged'; id: number }
  | { type: 'shutdown'; id: number }
  | { type: 'reset'; id: number; reason: string }
  | { type: 'error'; id: number; message: string }
  | { type: 'stopped'; id: number; exits: number; deviceExits: number; kinds: Record<string, number> };

export interface DeviceWorkerData {
  shared: MailboxShared;
  input: SharedArrayBuffer;
  /** The vCPUs' RunState word: while Pause, host input is not fed to the serial port. */
  runState?: SharedArrayBuffer;
  /** fd that serial output is written to, or -1 to discard it. */
  serialFd: number;
  serialIrqfd: number;
  /** irqfd of the ACPI GED's interrupt (IRQ_GED), or -1 for none. */
  gedIrqfd?: number;
  memBelow4g: number;
  memAbove4g: number;
  /** The VM, for ioeventfd registration and MSI routing from the device thread. */
  vm: VmHandle;
  virtio: VirtioPciInit[];
  /** PCI segments (src/arch/x86_64/layout.ts pciSegmentLayouts); omitted: one. */
  pciSegments?: PciSegmentLayout[];
  /** Log PCI events (BAR moves) to stderr. */
  verbose: boolean;
  /** Float64 [tx_bytes, tx_dropped_bytes] of the serial sink, mirrored by the device thread. */
  serialCounters?: SharedArrayBuffer;
  /** Int32 words (DeviceControl): requests from the main thread, answered by a DeviceEvent. */
  control?: SharedArrayBuffer;
  /**
   * A restore: the legacy devices' and PCI buses' saved state, applied before any vCPU runs;
   * answered by 'restored' or 'restore-error'.
   */
  restore?: DeviceThreadState;
  /**
   * With `restore`: the VMM wrote a new VM Generation ID into guest RAM; the GED latches the
   * event and raises its interrupt once its state is restored (the guest sees it when it runs).
   */
  vmGenIdChanged?: boolean;
  /** CPU hotplug controller (src/devices/cpu_hotplug.ts): cpus.max_vcpus and the vCPUs present now. */
  cpus?: { max: number; present: number };
  /**
   * ACPI memory hotplug (src/devices/memory_hotplug.ts): the hotplug area and the ranges plugged
   * at boot; absent: no controller (the DSDT has no memory devices).
   */
  memoryHotplug?: { area: { gpa: number; size: number }; boot: Array<{ gpa: number; size: number }> };
  /**
   * PCI hotplug requests (HotplugRequest), read with receiveMessageOnPort when a HotplugAdd or
   * HotplugRemove request rings (the message is posted before the doorbell).
   */
  hotplugPort?: MessagePort;
}

/** The payload of DeviceControlOp.HotplugAdd / HotplugRemove. */
export type HotplugRequest =
  | { type: 'add'; seq: number; device: VirtioPciInit }
  | { type: 'remove'; seq: number; id: string }
  /** CPU hotplug: vCPU `id` is plugged in (it runs) / the guest is asked to eject it. */
  | { type: 'cpu-add'; seq: number; id: number }
  | { type: 'cpu-remove'; seq: number; id: number }
  /** ACPI memory hotplug: [gpa, gpa + size) has a memory slot; a memory device is to say so. */
  | { type: 'mem-add'; seq: number; gpa: number; size: number };

/**
 * Requests to the device thread, which never waits for messages (it sleeps on the doorbell):
 * the main thread writes Op, bumps Seq and rings the doorbell; the answer carries Seq.
 */
export const DeviceControl = { Seq: 0, Op: 1, Words: 2 } as const;
export const DeviceControlOp = { None: 0, SaveState: 1, PowerButton: 2, HotplugAdd: 3, HotplugRemove: 4 } as const;

/** What the device thread saves for a snapshot (the VM paused). */
export interface DeviceThreadState {
  legacy: LegacyDeviceState;
  /** Each PCI segment's bus, by segment number. */
  pciRoots: PciRootState[];
  /**
   * The CPU hotplug controller (saved answers only; not in a snapshot file: a restore rebuilds it
   * as "vCPUs 0..boot_vcpus-1 present", so a snapshot waits until the guest has seen every change).
   */
  cpuHotplug?: CpuHotplugState;
  /** The ACPI memory hotplug controller; absent: the VM has none. */
  memoryHotplug?: MemoryHotplugState;
  /** The ACPI PCI hotplug controller's unread bits; absent in a restore: nothing pending (an older snapshot). */
  pciHotplug?: PciHotplugState;
}

export type DeviceEvent =
  | { type: 'shutdown' }
  | { type: 'reset'; reason: string }
  | { type: 'stats'; pioUnhandled: number; mmioUnhandled: number }
  | { type: 'state'; seq: number; state: DeviceThreadState }
  | { type: 'state-error'; seq: number; message: string }
  /** A control request without a result (PowerButton) was carried out. */
  | { type: 'done'; seq: number }
  | { type: 'restored' }
  /** The guest ejected the device (its _EJ0 ran): it is off the bus. */
  | { type: 'ejected'; id: string }
  /** The guest ejected vCPU `id` (its _EJ0 ran): the VMM parks its thread. */
  | { type: 'cpu-ejected'; id: number }
  | { type: 'restore-error'; message: string };

