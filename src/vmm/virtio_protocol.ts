// Messages between the VMM's main thread and a virtio device's I/O worker (virtio_worker.ts).
import type { GuestMemoryDescriptor } from '../memory/guest_memory.js';

/** Everything a worker needs to build its device model; structured-cloneable (fds are numbers). */
export type VirtioDeviceSpec =
  | { kind: 'block'; fd: number; size: number; readonly: boolean; numQueues: number; queueSize: number; serial: string }
  | { kind: 'rng'; fd: number }
  | { kind: 'console'; outFd: number; inFd: number; cols: number; rows: number }
  | { kind: 'net'; tapFds: number[]; mac: number[]; queuePairs: number; queueSize: number; mtu?: number }
  /** virtio-fs over vhost-user: `connection` is the state kept across guest runs (virtio/fs/device.ts). */
  | { kind: 'fs'; socketFd: number; socketPath: string; tag: string; numRequestQueues: number; queueSize: number; connection: SharedArrayBuffer }
  | { kind: 'vsock'; cid: number; listenFd: number; socketPath: string };

export interface VirtioWorkerData {
  /** Device id for messages and logs (e.g. "_disk0"). */
  id: string;
  spec: VirtioDeviceSpec;
  numQueues: number;
  shared: SharedArrayBuffer;
  mem: GuestMemoryDescriptor;
  /** One eventfd per queue, registered as the queue's notify ioeventfd. */
  queueFds: number[];
  /** One eventfd per MSI-X vector, registered as an irqfd on the vector's GSI. */
  irqFds: number[];
  /** The transport's wake-up eventfd (commands in the shared words). */
  controlFd: number;
  /** Float64 slots the worker mirrors the device's counters into (names sent once, see below). */
  counters: SharedArrayBuffer;
}

export const MAX_COUNTERS = 16;

export type VirtioWorkerEvent =
  | { type: 'needs-reset'; id: string; message: string }
  | { type: 'error'; id: string; message: string }
  | { type: 'stopped'; id: string }
  /** Something for the VMM's log that does not stop the device. */
  | { type: 'log'; id: string; message: string; warn?: boolean }
  | { type: 'counter-names'; id: string; names: string[] };
