// Messages between the VMM's main thread and a VM's virtio I/O thread (virtio_worker.ts). One
// I/O thread serves every virtio device of a VM by default; a device configured with its own
// `iothread=` name gets a thread of its own (or shares it with the devices naming the same one).
import type { GuestMemoryDescriptor } from '../memory/guest_memory.js';
import type { RateLimiterConfig } from '../virtio/rate_limiter.js';

/** A disk's rate limiting: its own limiter, or the one of a group (one per group and I/O thread). */
export interface BlockRateLimit {
  config: RateLimiterConfig;
  /** The rate_limit_group id, when the limiter is shared. */
  group?: string;
}
import type { VirtioDeviceState } from '../virtio/state.js';

/** Everything a thread needs to build a device model; structured-cloneable (fds are numbers). */
export type VirtioDeviceSpec =
  | { kind: 'block'; fd: number; size: number; readonly: boolean; numQueues: number; queueSize: number; serial: string; rateLimit?: BlockRateLimit }
  | { kind: 'rng'; fd: number }
  | { kind: 'console'; outFd: number; inFd: number; cols: number; rows: number }
  | { kind: 'net'; tapFds: number[]; mac: number[]; queuePairs: number; queueSize: number; mtu?: number; rateLimiter?: RateLimiterConfig }
  /** virtio-fs over vhost-user: `connection` is the state kept across guest runs (virtio/fs/device.ts). */
  | { kind: 'fs'; socketFd: number; socketPath: string; tag: string; numRequestQueues: number; queueSize: number; connection: SharedArrayBuffer }
  | { kind: 'vsock'; cid: number; listenFd: number; socketPath: string }
  /** virtio-pmem: the backing file (mapped by the main thread) and where the guest sees it. */
  | { kind: 'pmem'; fd: number; start: number; size: number; discardWrites: boolean }
  /** virtio-balloon: the initial target in 4 KiB pages (later ones come through Word.HostValue). */
  | { kind: 'balloon'; numPages: number; deflateOnOom: boolean; freePageReporting: boolean }
  /**
   * virtio-mem: its region (a region of guest memory, layout.ts guestMemoryRegions) and the
   * initial requested_size in bytes (later ones come through Word.HostValue, in MiB).
   */
  | { kind: 'mem'; addr: number; regionSize: number; blockSize: number; requestedSize: number };

/** One device served by an I/O thread. */
export interface VirtioWorkerDevice {
  /** Device id for messages and logs (e.g. "_disk0"). */
  id: string;
  spec: VirtioDeviceSpec;
  numQueues: number;
  /** The transport state shared with the device thread (virtio/pci/shared.ts). */
  shared: SharedArrayBuffer;
  /** One eventfd per queue, registered as the queue's notify ioeventfd. */
  queueFds: number[];
  /** One eventfd per MSI-X vector, registered as an irqfd on the vector's GSI. */
  irqFds: number[];
  /** Float64 slots the thread mirrors the device's counters into (names sent once, see below). */
  counters: SharedArrayBuffer;
  /** Saved state to restore into the new device (it then starts paused, see io_thread.ts). */
  restore?: VirtioDeviceState;
}

/** What an I/O thread gets once, right after it started. */
export interface VirtioWorkerData {
  /** Thread name for logs: "" for the VM's shared I/O thread, else the devices' `iothread=`. */
  name: string;
  mem: GuestMemoryDescriptor;
  /**
   * The thread's wake-up eventfd: every transport of its devices writes it after posting a
   * command in its shared words (activate, reset, stop).
   */
  controlFd: number;
  devices: VirtioWorkerDevice[];
}

export const MAX_COUNTERS = 16;

export type VirtioWorkerEvent =
  | { type: 'needs-reset'; id: string; message: string }
  | { type: 'error'; id: string; message: string }
  | { type: 'stopped'; id: string }
  /** Something for the VMM's log that does not stop the device. */
  | { type: 'log'; id: string; message: string; warn?: boolean }
  | { type: 'counter-names'; id: string; names: string[] }
  /** The answer to state request `seq` (shared.ts Word.StateReq). */
  | { type: 'state'; id: string; seq: number; state?: VirtioDeviceState; error?: string };
