// A virtio-pci transport with real eventfds, driven from a test as a guest driver would drive it
// (register reads and writes, MSI-X programming), for tests that run a device in the real I/O
// worker (src/vmm/virtio_worker.ts) without a VM.
import { Worker } from 'node:worker_threads';
import * as libc from '../../sys/libc.js';
import type { GuestMemory } from '../../memory/guest_memory.js';
import { Command, createShared, postCommand, Word } from '../../virtio/pci/shared.js';
import type { VirtioWorkerData, VirtioWorkerEvent } from '../virtio_protocol.js';
import { MSIX_TABLE_OFFSET, VirtioPciTransport } from '../../virtio/pci/transport.js';
import { DeviceStatus } from '../../virtio/device.js';

/** An eventfd's counter increment of 1. */
export const ONE = new Uint8Array(new BigUint64Array([1n]).buffer);

/** `n` as `len` little-endian bytes. */
export function le(n: number, len: number): Uint8Array {
  const b = new Uint8Array(len);
  for (let i = 0; i < len; i++) b[i] = Math.floor(n / 2 ** (8 * i)) & 0xff;
  return b;
}

/** A little-endian read of `len` bytes at BAR offset `off`. */
export function rd(t: VirtioPciTransport, off: number, len: number): number {
  const b = new Uint8Array(len);
  t.read(off, b);
  let v = 0;
  for (let i = len - 1; i >= 0; i--) v = v * 256 + b[i]!;
  return v;
}

/** A little-endian write of `v` (`len` bytes) at BAR offset `off`. */
export const wr = (t: VirtioPciTransport, off: number, v: number, len: number): void => t.write(off, le(v, len));

/** Wait until `fd` (an eventfd) is readable, then consume it. False on timeout. */
export function waitEventfd(fd: number, ms: number): boolean {
  const p = libc.pollFds(1);
  libc.pollFdSet(p, 0, fd, libc.POLLIN);
  if (libc.poll(p, ms) === 0) return false;
  libc.read(fd, new Uint8Array(8));
  return true;
}

export interface TransportRig {
  t: VirtioPciTransport;
  shared: SharedArrayBuffer;
  controlFd: number;
  queueFds: number[];
  irqFds: number[];
  /** Close every eventfd. */
  close(): void;
}

/** The transport of one device with `numQueues` queues and `vectors` MSI-X vectors, its eventfds wired as the device thread wires them. */
export function transportRig(deviceType: number, numQueues: number, vectors: number): TransportRig {
  const shared = createShared({ numQueues, vectors });
  const ev = () => libc.eventfd(0, libc.EFD_CLOEXEC | libc.EFD_NONBLOCK);
  const controlFd = ev();
  const queueFds = Array.from({ length: numQueues }, ev);
  const irqFds = Array.from({ length: vectors }, ev);
  const t = new VirtioPciTransport({
    deviceType, numQueues, shared, barAddr: 0xc0000000,
    hooks: {
      signalWorker: () => { libc.write(controlFd, ONE); },
      fireVector: (v) => { libc.write(irqFds[v]!, ONE); },
      routeVector: () => {},
      barMoved: () => true,
      notifyQueue: (q) => { libc.write(queueFds[q]!, ONE); },
    },
  });
  return {
    t, shared, controlFd, queueFds, irqFds,
    close: () => { for (const fd of [controlFd, ...queueFds, ...irqFds]) { try { libc.close(fd); } catch { /* closed */ } } },
  };
}

/**
 * Linux's probe of a virtio-pci function (virtio 1.2, 3.1.1) with MSI-X: ACKNOWLEDGE | DRIVER,
 * the driver features `features` (both 32-bit words), FEATURES_OK; MSI-X enabled with `vectors`
 * vectors (0xfee00000, data 0x30 + vector), vector 0 for configuration changes.
 */
export function probeLikeLinux(t: VirtioPciTransport, features: bigint, vectors: number): void {
  wr(t, 0x14, DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER, 1);
  wr(t, 0x08, 0, 4); wr(t, 0x0c, Number(features & 0xffffffffn), 4);
  wr(t, 0x08, 1, 4); wr(t, 0x0c, Number(features >> 32n), 4);
  wr(t, 0x14, DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK, 1);
  const b = new Uint8Array(1);
  t.readConfig(0x34, b);
  let cap = b[0]!;
  for (;;) { t.readConfig(cap, b); if (b[0] === 0x11) break; t.readConfig(cap + 1, b); cap = b[0]!; }
  t.writeConfig(cap + 2, le(0x8000, 2));
  for (let v = 0; v < vectors; v++) {
    wr(t, MSIX_TABLE_OFFSET + v * 16, 0xfee00000, 4);
    wr(t, MSIX_TABLE_OFFSET + v * 16 + 8, 0x30 + v, 4);
    wr(t, MSIX_TABLE_OFFSET + v * 16 + 12, 0, 4);
  }
  wr(t, 0x10, 0, 2);
}

/** The real I/O worker (src/vmm/virtio_worker.ts) running one device over a rig's eventfds. */
export interface IoWorker {
  /** What the worker posted, in order. */
  events: VirtioWorkerEvent[];
  /** The shared words (Word.*) of the device. */
  words: Int32Array;
  /** Command.Stop, then wait for the thread to exit. */
  stop(): Promise<void>;
}

type WorkerDevice = VirtioWorkerData['devices'][number];

/** Start the I/O worker with the device `id` (`spec`) on `fds`' eventfds and shared words, over `mem`. */
export function startIoWorker(fds: Pick<TransportRig, 'shared' | 'controlFd' | 'queueFds' | 'irqFds'>, mem: GuestMemory, id: string, spec: WorkerDevice['spec'], numQueues: number): IoWorker {
  const events: VirtioWorkerEvent[] = [];
  const worker = new Worker(new URL('../virtio_worker.js', import.meta.url));
  const exited = new Promise<number>((r) => worker.once('exit', r));
  worker.on('message', (m: VirtioWorkerEvent) => events.push(m));
  const data: VirtioWorkerData = {
    name: '', mem: mem.describe(), controlFd: fds.controlFd,
    devices: [{ id, spec, numQueues, shared: fds.shared, queueFds: fds.queueFds, irqFds: fds.irqFds, counters: new SharedArrayBuffer(128) }],
  };
  worker.postMessage(data);
  const words = new Int32Array(fds.shared, 0, Word.QueueBase);
  return {
    events, words,
    stop: async () => {
      postCommand(words, Command.Stop);
      libc.write(fds.controlFd, ONE);
      await exited;
    },
  };
}
