// The contract between a virtio device model and whatever drives it (the virtio-pci transport in
// the VMM, or a test driver). A device model owns no thread and no I/O policy it cannot be tested
// without: the VMM's virtio worker polls the fds and calls in; tests call in directly.
import type { GuestMemory } from '../memory/guest_memory.js';
import type { DescriptorChain, SplitQueue } from './queue.js';
import type { VirtioDeviceSpecificState } from './state.js';

/** Device IDs (virtio 1.2, 5 "Device Types"). */
export const VirtioDeviceType = {
  Net: 1,
  Block: 2,
  Console: 3,
  Rng: 4,
  Balloon: 5,
  Fs: 26,
  Vsock: 19,
  Pmem: 27,
  Mem: 24,
} as const;

/** Device status bits (virtio 1.2, 2.1). */
export const DeviceStatus = {
  ACKNOWLEDGE: 1,
  DRIVER: 2,
  DRIVER_OK: 4,
  FEATURES_OK: 8,
  DEVICE_NEEDS_RESET: 0x40,
  FAILED: 0x80,
} as const;

/** Reserved feature bits (virtio 1.2, 6). */
export const VIRTIO_F_INDIRECT_DESC = 28n;
export const VIRTIO_F_EVENT_IDX = 29n;
export const VIRTIO_F_VERSION_1 = 32n;
export const VIRTIO_F_ACCESS_PLATFORM = 33n;
export const VIRTIO_F_RING_PACKED = 34n;
export const VIRTIO_F_IN_ORDER = 35n;

export const bit = (n: bigint): bigint => 1n << n;

/** What a device needs while it is active (after DRIVER_OK, until reset). */
export interface VirtioActivation {
  mem: GuestMemory;
  /** One per queue the driver enabled (index = queue index); null where not enabled. */
  queues: ReadonlyArray<SplitQueue | null>;
  /** Features the driver accepted (a subset of the device's features). */
  features: bigint;
  /** Signal "used buffers" for queue `index` (the transport maps it to the queue's MSI-X vector). */
  notifyQueue(index: number): void;
  /** Signal a configuration change. */
  notifyConfig(): void;
  /**
   * Republish the configuration without an interrupt: a field the device changes in-band, that
   * the driver reads when it wants to and must then see current (virtio-mem plugged_size, 5.15.4:
   * "SHOULD NOT send a configuration update notification"). The transport bumps config_generation
   * (4.1.4.3). Absent: the driver of the device reads the configuration live.
   */
  publishConfig?(): void;
}

/** A queue as the driver set it up, for a device whose rings another process serves (vhost-user). */
export interface ExternalQueue {
  size: number;
  /** Guest physical addresses of the three ring parts (virtio 1.2, 2.7). */
  descTable: number;
  availRing: number;
  usedRing: number;
  /** The queue's notify eventfd (registered as its ioeventfd): the back-end's kick. */
  kickFd: number;
  /** Where the back-end starts: the next avail index and used.idx (0 for a queue just set up; restore: saved). */
  lastAvailIdx?: number;
  usedIdx?: number;
  /** The eventfd of the queue's MSI-X vector (an irqfd), or -1 without a vector: the back-end's call. */
  callFd: number;
}

/** What `activateExternal` gets at DRIVER_OK. */
export interface ExternalActivation {
  mem: GuestMemory;
  features: bigint;
  /** One per queue (index = queue index); null where the driver did not enable it. */
  queues: ReadonlyArray<ExternalQueue | null>;
  /** Signal "used buffers" for queue `index` (for a device that takes its queues over, see `takenOver`). */
  notifyQueue(index: number): void;
}

/**
 * A virtio device model. Static facts (type, features, config bytes) are readable before
 * activation; queue processing happens after `activate`.
 *
 * Errors: a malformed request from the guest that the device cannot answer in-band throws a
 * `VirtqueueError` (from queue.ts) out of `processQueue`; the driver of the device then puts the
 * device into DEVICE_NEEDS_RESET and stops processing it until the guest resets it.
 */
export interface VirtioDevice {
  readonly deviceType: number;
  readonly numQueues: number;
  /** Largest queue size the device supports (power of two, <= 32768). */
  readonly queueMaxSize: number;
  /** Device feature bits offered (VIRTIO_F_VERSION_1 is added by the transport). */
  readonly features: bigint;
  /** Device-specific configuration space (virtio 1.2, 4.1.4.6): read at [offset, offset+data.length). */
  readConfig(offset: number, data: Uint8Array): void;
  writeConfig(offset: number, data: Uint8Array): void;
  /**
   * The bytes of the configuration space the driver may write (virtio-balloon's `actual`, 5.5.4):
   * the transport keeps the driver's writes there and hands them to `writeConfig`; writes
   * elsewhere are ignored. Absent: the configuration is read-only.
   */
  readonly writableConfig?: { offset: number; length: number };
  /**
   * A value the VMM sets at run time (shared.ts Word.HostValue), e.g. virtio-balloon's target
   * num_pages (vm.resize desired_balloon). The driver of the device then republishes the
   * configuration and, while the device is active, signals a configuration change.
   */
  onHostValue?(value: number): void;
  activate(a: VirtioActivation): void;
  /**
   * Present on devices whose queues another process processes (vhost-user): the driver of the
   * device then calls this instead of `activate`, does not read the queues' notify eventfds
   * (they are the back-end's kicks) and never calls `processQueue`.
   */
  activateExternal?(a: ExternalActivation): void;
  /**
   * For `activateExternal` devices: true once the device processes its queues itself (its
   * back-end went away); the driver of the device then polls the notify eventfds and calls
   * `processQueue` as for any device.
   */
  readonly takenOver?: boolean;
  /** The driver notified queue `index` (or the worker wants it looked at again). */
  processQueue(index: number): void;
  /** Extra host fds the driver must poll for POLLIN (tap, console input); may change after activate. */
  pollFds?(): readonly number[];
  /**
   * poll(2) events for each fd of the last pollFds() result, in the same order (POLLIN, POLLOUT
   * or both); absent: POLLIN for all. For devices whose fd set changes (vsock connections).
   */
  pollEvents?(): ArrayLike<number>;
  /** A host fd from pollFds() is ready; `revents` as poll(2) reported it (POLLIN when absent). */
  onFdReady?(fd: number, revents?: number): void;
  /** A host fd the device waits on for POLLOUT (buffered output for a full sink), or -1. */
  pollOutFd?(): number;
  /** The fd from pollOutFd() is writable. */
  onFdWritable?(): void;
  /** Monotonic counters the VMM reports in vm.counters (names as Cloud Hypervisor's). */
  readonly counters?: Readonly<Record<string, number>>;
  /** Back to the initial state: queues forgotten, nothing in flight. */
  reset(): void;
  /**
   * The VM pauses (its driver calls no processQueue/onFdReady/onFdWritable until `resume`): hand
   * back every chain taken from an available ring and not used yet (SplitQueue.rewind), so that
   * nothing is held in flight, and stop whatever touches guest RAM outside those calls (a
   * vhost-user back-end's rings). Data read from the host and not delivered stays in the model.
   */
  pause?(): void;
  /** After `pause`: carry on (the driver then looks at every queue once). */
  resume?(): void;
  /**
   * The device-specific state, while paused. For an external (vhost-user) device also the ring
   * indexes the back-end stopped at, per queue (null where not running).
   */
  saveState?(): VirtioDeviceSpecificState;
  /** Ring positions of an `activateExternal` device as its back-end left them at `pause`. */
  externalQueueIndexes?(): ReadonlyArray<{ lastAvailIdx: number; usedIdx: number } | null>;
  /**
   * Take saved state, on a freshly created device before activation; throws
   * VirtioStateMismatchError when it does not fit this device (another disk size, CID…).
   */
  restoreState?(s: VirtioDeviceSpecificState): void;
  /** Release host resources (files, taps). */
  close(): void;
}

/**
 * Serve queue `index` of a device that completes each request at once: take every available
 * chain, complete it with the used length `handle` returns, and look again after re-enabling
 * notifications (virtio 1.2, 2.7.10: a chain made available meanwhile is not missed); interrupt
 * once at the end if the driver wants one. A `handle` that throws (a VirtqueueError) ends the
 * round; what was completed before it is still signalled. No allocation.
 */
export function serveQueue(a: VirtioActivation, index: number, chain: DescriptorChain, handle: (c: DescriptorChain) => number): void {
  const q = a.queues[index];
  if (q === undefined || q === null) return;
  try {
    do {
      q.disableNotification();
      while (q.pop(chain)) q.addUsed(chain.head, handle(chain));
    } while (q.enableNotification());
  } finally {
    if (q.needsInterrupt()) a.notifyQueue(index);
  }
}
