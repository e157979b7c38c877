// The VMM's virtio devices, main-thread side: opens what each device needs on the host (disk
// images, locked; taps; the entropy source; the console sink) once per VM, and for every guest
// run creates the eventfds (queue notify -> ioeventfd, MSI-X vector -> irqfd on its own GSI),
// the shared transport state, and the I/O threads: one for all of the VM's devices, plus one per
// `iothread=` name that devices ask for (a busy device can have a thread of its own). The device
// thread gets the matching VirtioPciInit list and builds the PCI side.
import { Worker } from 'node:worker_threads';
import { THREAD_OPTIONS } from './thread_options.js';
import { openSync, closeSync, fstatSync, unlinkSync } from 'node:fs';
import * as libc from '../sys/libc.js';
import type { Vm } from '../hypervisor/hypervisor.js';
import type { GuestMemory } from '../memory/guest_memory.js';
import { Tap, parseMac } from '../net/tap.js';
import { VirtioDeviceType } from '../virtio/device.js';
import { createShared, sharedViews, Word, Command, postCommand } from '../virtio/pci/shared.js';
import { BALLOON_PAGE_SIZE } from '../virtio/balloon/device.js';
import { BAR_SIZE } from '../virtio/pci/transport.js';
import { PCI_SLOTS } from '../pci/bus.js';
import { placePciDevices, type PciPlacement } from '../pci/segment.js';
import { deviceMemoryRanges, pciSegmentLayouts, hotplugRegion, type PciSegmentLayout } from '../arch/x86_64/layout.js';
import { MSI_GSI_BASE } from './interrupts.js';
import { FS_NEEDS_SHARED, hotplugRegionSize, PMEM_ALIGNMENT, VIRTIO_MEM_BLOCK_SIZE, virtioMemRegionSize, type VmConfig } from './config.js';
import { MemConfig } from '../virtio/mem/device.js';
import { FS_CONNECTION_STATE_BYTES } from '../virtio/fs/device.js';
import type { VirtioPciInit } from './pci_setup.js';
import type { RateLimiterConfig } from '../virtio/rate_limiter.js';
import { MAX_COUNTERS, type BlockRateLimit, type VirtioDeviceSpec, type VirtioWorkerData, type VirtioWorkerDevice, type VirtioWorkerEvent } from './virtio_protocol.js';
import type { VirtioDeviceState } from '../virtio/state.js';

/** A device vm.add-* hot-plugs (its configuration as the VmConfig lists it). */
export type HotplugDevice =
  | { kind: 'disk'; config: NonNullable<VmConfig['disks']>[number] }
  | { kind: 'net'; config: NonNullable<VmConfig['net']>[number] }
  | { kind: 'fs'; config: NonNullable<VmConfig['fs']>[number] }
  | { kind: 'vsock'; config: NonNullable<VmConfig['vsock']> }
  | { kind: 'pmem'; config: NonNullable<VmConfig['pmem']>[number] };

export class VirtioConfigError extends Error {
  override name = 'VirtioConfigError';
}

/** Devices that did not acknowledge a pause / resume / state request in time (their I/O thread is busy or stuck). */
export class VirtioQuiesceError extends Error {
  override name = 'VirtioQuiesceError';
  constructor(message: string, readonly ids: string[]) {
    super(message);
  }
}

// Atomics.waitAsync (ES2024; Node 16+) is not in this project's ES2022 lib.
type WaitAsyncResult = { async: false; value: 'not-equal' | 'timed-out' } | { async: true; value: Promise<'ok' | 'timed-out'> };
const waitAsync = (Atomics as unknown as { waitAsync(a: Int32Array, i: number, v: number, t: number): WaitAsyncResult }).waitAsync;

/**
 * Wait without blocking this thread until words[index] === want, `gone()` (the thread that
 * would store it is not running), or `deadline` (Date.now()). True unless the deadline passed.
 */
async function waitWord(words: Int32Array, index: number, want: number, deadline: number, gone: () => boolean): Promise<boolean> {
  for (;;) {
    const v = Atomics.load(words, index);
    if (v === want || gone()) return true;
    const left = deadline - Date.now();
    if (left <= 0) return false;
    // Bounded waits: the thread exiting does not store anything.
    const r = waitAsync(words, index, v, Math.min(left, 100));
    if (r.async) await r.value;
  }
}

interface HostDevice {
  id: string;
  deviceType: number;
  numQueues: number;
  /** PCI segment (config pci_segment; default 0). */
  segment?: number;
  /** Device number on the segment's bus 0, fixed once placed (a later boot keeps it). */
  slot?: number;
  /** Opened for a hot-add that has not completed: a guest run started meanwhile leaves it out. */
  pending?: boolean;
  /** remove() is under way. */
  removing?: boolean;
  spec: VirtioDeviceSpec;
  /** The I/O thread's name (config iothread=): "" is the VM's shared I/O thread. */
  iothread: string;
  /** fds this manager opened for the device (closed by close()). */
  fds: number[];
  tap?: Tap;
  /** A socket path this manager bound (unlinked by close()). */
  unlink?: string;
  /** I/O threads of earlier runs that would not stop: this device's fds stay open until they exit. */
  stuck?: Array<Promise<void>>;
  /** How many of this device's I/O threads would not stop in time (vm.counters io_threads_stuck). */
  stuckCount?: number;
  /** virtio-pmem: the backing file's mapping (munmapped by close()) and where the guest sees it. */
  memory?: DeviceMemory;
}

/** Host memory a device puts into guest physical memory (a KVM memory slot), virtio-pmem's file. */
export interface DeviceMemory {
  id: string;
  gpa: number;
  size: number;
  hostAddress: bigint;
}

interface RunDevice {
  host: HostDevice;
  thread: RunThread;
  shared: SharedArrayBuffer;
  words: Int32Array;
  queueFds: number[];
  irqFds: number[];
  gsis: number[];
  counters: Float64Array;
  counterNames: string[];
  /** Its eventfds are closed and its GSIs given back (release() ran). */
  released?: boolean;
}

/** One I/O thread of a guest run and the devices it serves. */
interface RunThread {
  name: string;
  worker: Worker | null;
  controlFd: number;
  devices: RunDevice[];
  exited: Promise<void>;
  /** Set when the worker has exited. */
  done?: boolean;
  /** State requests waiting for their answer, by `${id}:${seq}`. */
  stateWaiters: Map<string, (m: Extract<VirtioWorkerEvent, { type: 'state' }>) => void>;
  /** Devices told to stop alone (a removal), waiting for 'stopped', by id. */
  stopWaiters: Map<string, () => void>;
}

const ONE = new Uint8Array(new BigUint64Array([1n]).buffer);

function randomMac(): number[] {
  const b = new Uint8Array(3);
  crypto.getRandomValues(b);
  return [0x52, 0x54, 0x00, b[0]!, b[1]!, b[2]!]; // locally administered (QEMU's OUI)
}

/** What stop() could not stop: I/O threads still inside a device call, and when they are all gone. */
export interface VirtioStopResult {
  /** Ids of the devices whose I/O thread would not exit in time. */
  stuck: string[];
  /** Resolves when every such thread has exited (at once when there is none). */
  allExited: Promise<void>;
}

/** Devices the guest may eject and vm.remove-device may take out (see VirtioPciInit.removable). */
function removable(h: HostDevice): boolean {
  return h.spec.kind === 'block' || h.spec.kind === 'net' || h.spec.kind === 'fs' || h.spec.kind === 'vsock';
}

function threadLabel(t: RunThread): string {
  return t.name === '' ? 'the I/O thread' : `I/O thread '${t.name}'`;
}

/** A disk's rate limiting for its I/O thread: its own rate_limiter_config or its group's. */
function diskRateLimit(cfg: VmConfig, d: NonNullable<VmConfig['disks']>[number]): { rateLimit?: BlockRateLimit } {
  if (d.rate_limit_group !== undefined) {
    const g = cfg.rate_limit_groups?.find((x) => x.id === d.rate_limit_group);
    if (g === undefined) throw new VirtioConfigError(`${d.id ?? 'disk'}: rate_limit_group "${d.rate_limit_group}" is not defined (--rate-limit-group id=${d.rate_limit_group},...)`);
    return { rateLimit: { config: g.rate_limiter_config, group: g.id } };
  }
  return d.rate_limiter_config !== undefined ? { rateLimit: { config: d.rate_limiter_config } } : {};
}

function netRateLimit(n: NonNullable<VmConfig['net']>[number]): { rateLimiter?: RateLimiterConfig } {
  return n.rate_limiter_config !== undefined ? { rateLimiter: n.rate_limiter_config } : {};
}

/** Until Word.Ready is not 0 (1 built, -1 failed), the thread is gone, or the deadline. */
async function waitReady(words: Int32Array, deadline: number, gone: () => boolean): Promise<void> {
  while (Atomics.load(words, Word.Ready) === 0 && !gone() && Date.now() < deadline) {
    const r = waitAsync(words, Word.Ready, 0, Math.min(100, Math.max(1, deadline - Date.now())));
    if (r.async) await r.value;
  }
}

const sleep = (ms: number) => new Promise<void>((res) => setTimeout(res, ms).unref());

export class VirtioManager {
  private readonly devices: HostDevice[] = [];
  private threads: RunThread[] = [];
  /** Guest memory of the current run (revoked by stop()). */
  private runMem: GuestMemory | null = null;
  /** How long stop() waits for I/O threads: to stop by themselves, then after terminate(). */
  stopTimeouts = { graceMs: 5000, terminateMs: 2000 };
  /** Sequence of pause/resume requests (shared.ts Word.PauseReq) and of state requests. */
  private pauseSeq = 0;
  private stateSeq = 0;
  private segments: PciSegmentLayout[] = pciSegmentLayouts(1);
  /** Bytes of the virtio-mem region of the configuration opened last (0: none). */
  private virtioMemSize = 0;
  /** Bytes of its hotplug region (virtio-mem's or the ACPI hotplug area; 0: none): device memory starts after it. */
  private hotplugSize = 0;
  /** The next never-used GSI for MSI-X vectors in this run, and those a removed device gave back. */
  private nextGsi = MSI_GSI_BASE;
  private freeGsis: number[] = [];
  private onError: (m: string) => void = () => {};

  constructor(
    private readonly log: (m: string) => void,
    private readonly onNeedsReset: (id: string, why: string) => void = () => {},
    /** Device problems the user should see even without -v (a vhost-user back-end that died). */
    private readonly warn: (m: string) => void = log,
  ) {}

  get count(): number {
    return this.devices.length;
  }

  /** Device numbers the configuration opened last fixes (pci_device_id), by device id. */
  private configuredSlots = new Map<string, number>();

  /** Open every host resource the configuration names; on error nothing stays open. */
  open(cfg: VmConfig, ttyFd: number): void {
    try {
      this.segments = pciSegmentLayouts(cfg.platform?.num_pci_segments ?? 1);
      (cfg.disks ?? []).forEach((d, i) => this.openDisk(cfg, d, i));
      (cfg.net ?? []).forEach((n, i) => this.openNet(n, i));
      this.openConsole(cfg, ttyFd);
      this.openRng(cfg);
      (cfg.fs ?? []).forEach((f, i) => this.openFs(cfg, f, i));
      (cfg.pmem ?? []).forEach((p, i) => this.openPmem(p, i));
      this.virtioMemSize = virtioMemRegionSize(cfg.memory);
      this.hotplugSize = hotplugRegionSize(cfg.memory);
      this.placeDeviceMemory(cfg.memory.size);
      if (cfg.vsock !== undefined) this.openVsock(cfg.vsock);
      if (cfg.balloon !== undefined) this.openBalloon(cfg.balloon);
      if (this.virtioMemSize > 0) this.openMem(cfg);
      if (this.devices.length > PCI_SLOTS - 1 && this.segments.length === 1) {
        throw new VirtioConfigError(`${this.devices.length} virtio devices do not fit on PCI bus 0 (at most ${PCI_SLOTS - 1})`);
      }
      this.configuredSlots = new Map(this.devices.flatMap((h) => (h.slot !== undefined ? [[h.id, h.slot] as const] : [])));
      this.place();
    } catch (e) {
      this.close();
      throw e;
    }
  }

  /**
   * Memory ranges the devices put into guest physical memory (virtio-pmem files), for the VM's
   * memory slots; the same at every guest run (and in a VM restored from a snapshot).
   */
  get deviceMemory(): DeviceMemory[] {
    return this.devices.flatMap((h) => (h.memory !== undefined ? [h.memory] : []));
  }

  /** The PCI segments of the configuration opened last. */
  get pciSegments(): PciSegmentLayout[] {
    return this.segments;
  }

  /** Device numbers and BARs on each device's segment (VirtioConfigError when a segment is unknown or full). */
  private place(): PciPlacement[] {
    let placements: PciPlacement[];
    try {
      placements = placePciDevices(this.devices.map((h) => ({ id: h.id, segment: h.segment ?? 0, ...(h.slot !== undefined ? { slot: h.slot } : {}) })), this.segments, BAR_SIZE);
    } catch (e) {
      throw new VirtioConfigError((e as Error).message);
    }
    this.devices.forEach((h, i) => { h.slot = placements[i]!.slot; });
    return placements;
  }

  private openDisk(cfg: VmConfig, d: NonNullable<VmConfig['disks']>[number], i: number): void {
    const id = d.id ?? `_disk${i}`;
    if (d.vhost_user) throw new VirtioConfigError(`${id}: vhost-user disks are not supported`);
    if (!d.path) throw new VirtioConfigError(`${id}: --disk needs path=`);
    let fd: number;
    try {
      fd = openSync(d.path, d.readonly ? 'r' : 'r+');
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      const why = code === 'ENOENT' ? 'does not exist' : code === 'EACCES' ? 'is not accessible (permission denied)' : code === 'EISDIR' ? 'is a directory' : (e as Error).message;
      throw new VirtioConfigError(`disk image '${d.path}' ${why}`);
    }
    const host: HostDevice = {
      id, deviceType: VirtioDeviceType.Block, numQueues: d.num_queues, segment: d.pci_segment ?? 0, ...(d.pci_device_id !== undefined ? { slot: d.pci_device_id } : {}), fds: [fd], iothread: d.iothread ?? '',
      spec: { kind: 'block', fd, size: 0, readonly: d.readonly, numQueues: d.num_queues, queueSize: d.queue_size, serial: d.serial ?? id, ...diskRateLimit(cfg, d) },
    };
    this.devices.push(host);
    const st = fstatSync(fd);
    if (!st.isFile() && !st.isBlockDevice()) throw new VirtioConfigError(`disk image '${d.path}' is not a regular file or block device`);
    // One writer per image: an exclusive lock for read-write, shared for read-only (as QEMU's
    // image locking does), so a second VMM cannot open the image for writing too.
    try {
      libc.flock(fd, (d.readonly ? libc.LOCK_SH : libc.LOCK_EX) | libc.LOCK_NB);
    } catch (e) {
      if (e instanceof libc.SysError && e.errno === libc.EWOULDBLOCK) {
        throw new VirtioConfigError(`disk image '${d.path}' is locked by another process (in use by another VMM?)`);
      }
      throw e;
    }
    const size = st.isFile() ? st.size : 0;
    if (size < 512) throw new VirtioConfigError(`disk image '${d.path}' is smaller than one 512-byte sector`);
    (host.spec as { size: number }).size = size;
  }

  private openNet(n: NonNullable<VmConfig['net']>[number], i: number): void {
    const id = n.id ?? `_net${i}`;
    if (n.vhost_user) throw new VirtioConfigError(`${id}: vhost-user net is not supported`);
    const pairs = Math.max(1, Math.floor(n.num_queues / 2));
    let mac: number[];
    try {
      mac = n.mac ? Array.from(parseMac(n.mac)) : randomMac();
    } catch (e) {
      throw new VirtioConfigError(`${id}: ${(e as Error).message}`);
    }
    let tap: Tap;
    if (n.fds !== undefined) {
      // Taps opened by the caller and sent over the API socket: the configuration keeps its
      // fds (a later boot uses them again), the device gets duplicates it may close.
      if (n.fds.length !== pairs) throw new VirtioConfigError(`${id}: ${n.fds.length} tap fds for ${pairs} queue pairs (num_queues ${n.num_queues})`);
      try {
        const dups: number[] = [];
        try {
          for (const fd of n.fds) dups.push(libc.dupCloexec(fd));
        } catch (e) {
          for (const d of dups) libc.close(d);
          throw e;
        }
        tap = Tap.fromFds(dups);
      } catch (e) {
        throw new VirtioConfigError(`${id}: cannot use the tap fds sent with the request: ${(e as Error).message}`);
      }
      const host: HostDevice = {
        id, deviceType: VirtioDeviceType.Net, numQueues: pairs * 2 + (pairs > 1 ? 1 : 0), segment: n.pci_segment ?? 0, ...(n.pci_device_id !== undefined ? { slot: n.pci_device_id } : {}), fds: [], tap, iothread: n.iothread ?? '',
        spec: { kind: 'net', tapFds: [...tap.fds], mac, queuePairs: pairs, queueSize: n.queue_size, ...(n.mtu !== undefined ? { mtu: n.mtu } : {}), ...netRateLimit(n) },
      };
      this.devices.push(host);
      this.log(`${id}: tap ${tap.name} from ${n.fds.length} fd(s) sent with the API request, guest MAC ${mac.map((b) => b.toString(16).padStart(2, '0')).join(':')}`);
      return;
    }
    try {
      tap = Tap.open({ ...(n.tap ? { name: n.tap } : {}), queues: pairs, vnetHdr: true });
    } catch (e) {
      throw new VirtioConfigError(`${id}: cannot open tap${n.tap ? ` '${n.tap}'` : ''}: ${(e as Error).message}`);
    }
    const host: HostDevice = {
      id, deviceType: VirtioDeviceType.Net, numQueues: pairs * 2 + (pairs > 1 ? 1 : 0), segment: n.pci_segment ?? 0, ...(n.pci_device_id !== undefined ? { slot: n.pci_device_id } : {}), fds: [], tap, iothread: n.iothread ?? '',
      spec: { kind: 'net', tapFds: [...tap.fds], mac, queuePairs: pairs, queueSize: n.queue_size, ...(n.mtu !== undefined ? { mtu: n.mtu } : {}), ...netRateLimit(n) },
    };
    this.devices.push(host);
    try {
      tap.configure({ ip: n.ip, mask: n.mask, ...(n.host_mac ? { mac: n.host_mac } : {}) });
    } catch (e) {
      throw new VirtioConfigError(`${id}: cannot configure tap '${tap.name}': ${(e as Error).message}`);
    }
    this.log(`${id}: tap ${tap.name} ${n.ip}/${n.mask}, guest MAC ${mac.map((b) => b.toString(16).padStart(2, '0')).join(':')}`);
  }

  /**
   * virtio-fs: connect to the vhost-user back-end's socket now (non-blocking; a Unix connect
   * succeeds or fails at once), so a back-end that is not there is a clear error at start. The
   * conversation itself runs in the device's worker.
   */
  private openFs(cfg: VmConfig, f: NonNullable<VmConfig['fs']>[number], i: number): void {
    const id = f.id ?? `_fs${i}`;
    if (!cfg.memory.shared) throw new VirtioConfigError(`${id}: ${FS_NEEDS_SHARED}`);
    const fd = libc.socket(libc.AF_UNIX, libc.SOCK_STREAM | libc.SOCK_CLOEXEC | libc.SOCK_NONBLOCK);
    try {
      libc.connectUnix(fd, f.socket);
    } catch (e) {
      libc.close(fd);
      const errno = e instanceof libc.SysError ? e.errno : 0;
      const why = errno === libc.ENOENT ? 'does not exist'
        : errno === libc.ECONNREFUSED ? 'has nobody listening'
          : errno === libc.EACCES ? 'is not accessible (permission denied)'
            : errno === libc.EAGAIN ? 'is not accepting connections (backlog full)' : (e as Error).message;
      throw new VirtioConfigError(`${id}: vhost-user socket '${f.socket}' ${why} (is virtiofsd running?)`);
    }
    this.devices.push({
      id, deviceType: VirtioDeviceType.Fs, numQueues: 1 + f.num_queues, segment: f.pci_segment ?? 0, fds: [fd], iothread: f.iothread ?? '',
      spec: { kind: 'fs', socketFd: fd, socketPath: f.socket, tag: f.tag, numRequestQueues: f.num_queues, queueSize: f.queue_size, connection: new SharedArrayBuffer(FS_CONNECTION_STATE_BYTES) },
    });
    this.log(`${id}: virtio-fs tag '${f.tag}' over vhost-user socket ${f.socket}`);
  }

  /**
   * virtio-pmem (virtio 1.2, 5.19): open the file (read-only with discard_writes), check its size
   * (Cloud Hypervisor's rules: `size` or the file's size, a multiple of 2 MiB) and map it, shared
   * (guest writes reach the file; a flush fsyncs it) or private (discard_writes: they never do).
   * Where the guest sees it is decided once every device is open (placeDeviceMemory).
   */
  private openPmem(p: NonNullable<VmConfig['pmem']>[number], i: number): void {
    const id = p.id ?? `_pmem${i}`;
    if (!p.file) throw new VirtioConfigError(`${id}: --pmem needs file=`);
    const what = `pmem file '${p.file}'`;
    let fd: number;
    try {
      fd = openSync(p.file, p.discard_writes ? 'r' : 'r+');
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      const why = code === 'ENOENT' ? 'does not exist' : code === 'EACCES' ? 'is not accessible (permission denied)'
        : code === 'EISDIR' ? 'is a directory (give a file)' : code === 'EROFS' ? 'is on a read-only file system (use discard_writes=on)' : (e as Error).message;
      throw new VirtioConfigError(`${id}: ${what} ${why}`);
    }
    const host: HostDevice = {
      id, deviceType: VirtioDeviceType.Pmem, numQueues: 1, segment: p.pci_segment ?? 0, fds: [fd], iothread: '',
      spec: { kind: 'pmem', fd, start: 0, size: 0, discardWrites: p.discard_writes },
    };
    this.devices.push(host);
    const st = fstatSync(fd);
    if (!st.isFile()) throw new VirtioConfigError(`${id}: ${what} is not a regular file`);
    // One writer per file, as for disk images; a private mapping only reads it.
    try {
      libc.flock(fd, (p.discard_writes ? libc.LOCK_SH : libc.LOCK_EX) | libc.LOCK_NB);
    } catch (e) {
      if (e instanceof libc.SysError && e.errno === libc.EWOULDBLOCK) throw new VirtioConfigError(`${id}: ${what} is locked by another process (in use by another VMM?)`);
      throw e;
    }
    const MiB = 1024 * 1024;
    let size: number;
    if (p.size !== undefined) {
      if (p.size % PMEM_ALIGNMENT !== 0) throw new VirtioConfigError(`${id}: size ${p.size} is not a multiple of 2 MiB`);
      if (st.size < p.size) throw new VirtioConfigError(`${id}: ${what} is ${st.size} bytes, smaller than size=${p.size} (${p.size / MiB} MiB)`);
      size = p.size;
    } else {
      if (st.size === 0) throw new VirtioConfigError(`${id}: ${what} is empty`);
      if (st.size % PMEM_ALIGNMENT !== 0) {
        throw new VirtioConfigError(`${id}: ${what} is ${st.size} bytes, not a multiple of 2 MiB (virtio-pmem maps 2 MiB units): resize it or give size= (a multiple of 2 MiB, at most the file's size)`);
      }
      size = st.size;
    }
    let addr: bigint;
    try {
      addr = libc.mmap(size, libc.PROT_READ | libc.PROT_WRITE, p.discard_writes ? libc.MAP_PRIVATE | libc.MAP_NORESERVE : libc.MAP_SHARED, fd, 0);
    } catch (e) {
      throw new VirtioConfigError(`${id}: cannot map ${what}: ${(e as Error).message}`);
    }
    host.memory = { id, gpa: 0, size, hostAddress: addr };
    this.log(`${id}: virtio-pmem ${what}, ${size / MiB} MiB${p.discard_writes ? ', writes discarded' : ''}`);
  }

  /** Guest physical addresses of the devices' memory, above RAM (layout.ts deviceMemoryRanges). */
  private placeDeviceMemory(memSize: number): void {
    const withMemory = this.devices.filter((h) => h.memory !== undefined);
    if (withMemory.length === 0) return;
    let ranges: Array<{ gpa: number; size: number }>;
    try {
      ranges = deviceMemoryRanges(memSize, withMemory.map((h) => h.memory!.size), 52, this.hotplugSize);
    } catch (e) {
      throw new VirtioConfigError(`virtio-pmem: ${(e as Error).message}`);
    }
    withMemory.forEach((h, k) => {
      const r = ranges[k]!;
      h.memory!.gpa = r.gpa;
      if (h.spec.kind === 'pmem') { h.spec.start = r.gpa; h.spec.size = r.size; }
      this.log(`${h.id}: guest physical [0x${r.gpa.toString(16)}, 0x${(r.gpa + r.size).toString(16)})`);
    });
  }

  private openConsole(cfg: VmConfig, ttyFd: number): void {
    const c = cfg.console;
    let outFd = -1;
    const fds: number[] = [];
    switch (c.mode) {
      case 'Off': return;
      case 'Null': break;
      case 'Tty': outFd = ttyFd; break;
      case 'File':
        if (!c.file) throw new VirtioConfigError('--console file= needs a path');
        try {
          outFd = openSync(c.file, 'w');
        } catch (e) {
          throw new VirtioConfigError(`cannot open console output file '${c.file}': ${(e as Error).message}`);
        }
        fds.push(outFd);
        break;
      default: throw new VirtioConfigError(`console mode ${c.mode} is not supported (use off, null, tty or file=)`);
    }
    this.devices.push({
      id: c.id ?? '_console', deviceType: VirtioDeviceType.Console, numQueues: 2, fds, iothread: '',
      // Keyboard input goes to the serial port when that is tty, else to this console.
      spec: { kind: 'console', outFd, inFd: c.mode === 'Tty' && cfg.serial.mode !== 'Tty' ? 0 : -1, cols: 80, rows: 24 },
    });
  }

  private openRng(cfg: VmConfig): void {
    const src = cfg.rng.src;
    let fd: number;
    try {
      fd = openSync(src, 'r');
    } catch (e) {
      throw new VirtioConfigError(`cannot open entropy source '${src}': ${(e as Error).message}`);
    }
    this.devices.push({ id: cfg.rng.id ?? '_rng0', deviceType: VirtioDeviceType.Rng, numQueues: 1, segment: cfg.rng.pci_segment ?? 0, fds: [fd], iothread: '', spec: { kind: 'rng', fd } });
  }

  /**
   * virtio-vsock: listen on the hybrid backend's Unix socket (virtio/vsock/device.ts). A path
   * that exists is refused rather than replaced: it may be another VMM's.
   */
  private openVsock(v: NonNullable<VmConfig['vsock']>): void {
    const id = v.id ?? '_vsock0';
    let addr: Uint8Array;
    try {
      addr = libc.sockaddrUn(v.socket);
    } catch (e) {
      throw new VirtioConfigError(`${id}: vsock socket path '${v.socket}' cannot be used: ${(e as Error).message}`);
    }
    const fd = libc.socket(libc.AF_UNIX, libc.SOCK_STREAM | libc.SOCK_NONBLOCK | libc.SOCK_CLOEXEC);
    try {
      libc.bind(fd, addr);
    } catch (e) {
      libc.close(fd);
      const errno = e instanceof libc.SysError ? e.errno : 0;
      const why = errno === libc.EADDRINUSE ? 'already exists (remove it or choose another path)'
        : errno === libc.ENOENT ? 'is in a directory that does not exist'
          : errno === libc.EACCES ? 'is not writable (permission denied)' : `cannot be bound: ${(e as Error).message}`;
      throw new VirtioConfigError(`${id}: vsock socket '${v.socket}' ${why}`);
    }
    const host: HostDevice = {
      id, deviceType: VirtioDeviceType.Vsock, numQueues: 3, segment: v.pci_segment ?? 0, fds: [fd], unlink: v.socket, iothread: v.iothread ?? '',
      spec: { kind: 'vsock', cid: v.cid, listenFd: fd, socketPath: v.socket },
    };
    this.devices.push(host);
    libc.listen(fd, 128);
    this.log(`${id}: vsock cid ${v.cid}, listening on ${v.socket}`);
  }

  /** virtio-balloon (virtio 1.2, 5.5): nothing to open on the host; the target in 4 KiB pages. */
  private openBalloon(b: NonNullable<VmConfig['balloon']>): void {
    const id = b.id ?? '_balloon0';
    const numPages = Math.floor(b.size / BALLOON_PAGE_SIZE);
    this.devices.push({
      id, deviceType: VirtioDeviceType.Balloon, numQueues: b.free_page_reporting ? 3 : 2, segment: b.pci_segment ?? 0, fds: [], iothread: '',
      spec: { kind: 'balloon', numPages, deflateOnOom: b.deflate_on_oom, freePageReporting: b.free_page_reporting },
    });
    this.log(`${id}: virtio-balloon, target ${numPages} pages${b.deflate_on_oom ? ', deflate on OOM' : ''}${b.free_page_reporting ? ', free page reporting' : ''}`);
  }

  /**
   * vm.resize desired_balloon: the balloon's new target (bytes, whole 4 KiB pages). Kept for
   * later guest runs; the running device gets it through Word.HostValue and tells the guest
   * (a configuration change). False when the VM has no balloon.
   */
  setBalloonTarget(bytes: number): boolean {
    const h = this.devices.find((d) => d.spec.kind === 'balloon');
    if (h === undefined || h.spec.kind !== 'balloon') return false;
    const pages = Math.floor(bytes / BALLOON_PAGE_SIZE);
    h.spec.numPages = pages;
    for (const t of this.threads) {
      const r = t.devices.find((d) => d.host === h);
      if (r === undefined) continue;
      Atomics.store(r.words, Word.HostValue, pages | 0);
      postCommand(r.words, Command.HostValue);
      try { libc.write(t.controlFd, ONE); } catch { /* the thread is gone */ }
    }
    return true;
  }

  /**
   * virtio-mem (virtio 1.2, 5.15): its region is part of guest memory (layout.ts
   * guestMemoryRegions: allocated with RAM at every guest run, so a new run starts with every
   * block unplugged and nothing populated, 5.15.6 "SHOULD unplug all memory blocks during system
   * resets"); requested_size starts at memory.hotplugged_size.
   */
  private openMem(cfg: VmConfig): void {
    const id = '_mem0';
    let region: { gpa: number; size: number };
    try {
      region = hotplugRegion(cfg.memory.size, this.virtioMemSize);
    } catch (e) {
      throw new VirtioConfigError(`${id}: ${(e as Error).message}`);
    }
    const requestedSize = cfg.memory.hotplugged_size ?? 0;
    this.devices.push({
      id, deviceType: VirtioDeviceType.Mem, numQueues: 1, segment: 0, fds: [], iothread: '',
      spec: { kind: 'mem', addr: region.gpa, regionSize: region.size, blockSize: VIRTIO_MEM_BLOCK_SIZE, requestedSize },
    });
    const MiB = 1024 * 1024;
    this.log(`${id}: virtio-mem region of ${region.size / MiB} MiB at guest physical 0x${region.gpa.toString(16)}, ${requestedSize / MiB} MiB requested`);
  }

  /**
   * vm.resize desired_ram with virtio-mem: the device's new requested_size (bytes, whole blocks,
   * at most the region; the caller checked). Kept for later guest runs; the running device gets
   * it through Word.HostValue in MiB and tells the guest (a configuration change, 5.15.4). False
   * when the VM has no virtio-mem device.
   */
  setMemRequestedSize(bytes: number): boolean {
    const h = this.devices.find((d) => d.spec.kind === 'mem');
    if (h === undefined || h.spec.kind !== 'mem') return false;
    if (!Number.isSafeInteger(bytes) || bytes < 0 || bytes % h.spec.blockSize !== 0 || bytes > h.spec.regionSize) {
      throw new VirtioConfigError(`${h.id}: requested size ${bytes} is not a multiple of ${h.spec.blockSize} in 0..${h.spec.regionSize}`);
    }
    h.spec.requestedSize = bytes;
    const mib = bytes / (1024 * 1024);
    for (const t of this.threads) {
      const r = t.devices.find((d) => d.host === h);
      if (r === undefined) continue;
      Atomics.store(r.words, Word.HostValue, mib | 0);
      postCommand(r.words, Command.HostValue);
      try { libc.write(t.controlFd, ONE); } catch { /* the thread is gone */ }
    }
    return true;
  }

  /**
   * virtio-mem's plugged_size (5.15.4) as the device last published it, in bytes; 0 without the
   * device or a running guest. Read from the configuration bytes the transport answers from.
   */
  memPluggedBytes(): number {
    for (const t of this.threads) {
      for (const r of t.devices) {
        if (r.host.spec.kind !== 'mem') continue;
        const { config } = sharedViews(r.shared, { numQueues: r.host.numQueues, vectors: r.irqFds.length });
        const v = new DataView(config.buffer, config.byteOffset + MemConfig.pluggedSize, 8);
        return v.getUint32(0, true) + v.getUint32(4, true) * 2 ** 32;
      }
    }
    return 0;
  }

  /**
   * The balloon's size as the guest's driver last wrote it (`actual`, 5.5.4), in bytes; 0 without
   * a balloon or a running guest. Read from the configuration bytes the transport keeps.
   */
  balloonActualBytes(): number {
    for (const t of this.threads) {
      for (const r of t.devices) {
        if (r.host.spec.kind !== 'balloon') continue;
        const { config } = sharedViews(r.shared, { numQueues: r.host.numQueues, vectors: r.irqFds.length });
        return new DataView(config.buffer, config.byteOffset + 4, 4).getUint32(0, true) * BALLOON_PAGE_SIZE;
      }
    }
    return 0;
  }

  /**
   * Start the devices for one guest run: eventfds, irqfds, I/O threads (one for every device
   * without an `iothread=` of its own, one per name otherwise). Returns the device thread's part.
   * Nothing reaches a thread (guest memory included) until every device is set up; on failure
   * everything is undone before this returns.
   */
  start(vm: Vm, mem: GuestMemory, onError: (m: string) => void, restore?: ReadonlyMap<string, VirtioDeviceState>): VirtioPciInit[] {
    const placements = this.place();
    // A hot-add still under way belongs to the run it started in, not to this one.
    const live = this.devices.map((h, i) => ({ h, p: placements[i]! })).filter(({ h }) => h.pending !== true);
    if (restore !== undefined) {
      const ids = new Set(this.devices.map((h) => h.id));
      for (const id of restore.keys()) if (!ids.has(id)) throw new VirtioConfigError(`the saved state has virtio device '${id}', which this VM does not have`);
      for (const h of this.devices) if (!restore.has(h.id)) throw new VirtioConfigError(`the saved state has nothing for virtio device '${h.id}'`);
    }
    this.nextGsi = MSI_GSI_BASE;
    this.freeGsis = [];
    const inits: VirtioPciInit[] = [];
    this.runMem = mem;
    this.onError = onError;
    const byName = new Map<string, RunThread>();
    try {
      for (const { h, p } of live) {
        let t = byName.get(h.iothread);
        if (t === undefined) {
          t = this.newThread(h.iothread);
          byName.set(h.iothread, t);
        }
        inits.push(this.prepare(vm, h, t, p));
      }
      for (const t of this.threads) this.spawn(t, restore);
    } catch (e) {
      this.abort(vm);
      throw e;
    }
    return inits;
  }

  private newThread(name: string): RunThread {
    const t: RunThread = { name, worker: null, controlFd: -1, devices: [], exited: Promise.resolve(), stateWaiters: new Map(), stopWaiters: new Map() };
    this.threads.push(t);
    t.controlFd = libc.eventfd(0, libc.EFD_CLOEXEC | libc.EFD_NONBLOCK);
    return t;
  }

  /** One device of this run: its eventfds, irqfds on fresh GSIs and shared transport state, served by `t`. */
  private prepare(vm: Vm, h: HostDevice, t: RunThread, p: PciPlacement): VirtioPciInit {
    const eventfd = () => libc.eventfd(0, libc.EFD_CLOEXEC | libc.EFD_NONBLOCK);
    const vectors = h.numQueues + 1;
    const shared = createShared({ numQueues: h.numQueues, vectors });
    const r: RunDevice = {
      host: h, thread: t, shared, words: new Int32Array(shared, 0, Word.QueueBase),
      queueFds: [], irqFds: [], gsis: [],
      counters: new Float64Array(new SharedArrayBuffer(MAX_COUNTERS * 8)), counterNames: [],
    };
    t.devices.push(r);
    for (let q = 0; q < h.numQueues; q++) r.queueFds.push(eventfd());
    for (let v = 0; v < vectors; v++) {
      const fd = eventfd();
      r.irqFds.push(fd);
      // Hot add and remove cycles reuse GSIs (KVM's routing table is bounded).
      const gsi = this.freeGsis.pop() ?? this.nextGsi++;
      r.gsis.push(gsi);
      vm.registerIrqfd(fd, gsi);
    }
    return {
      id: h.id, deviceType: h.deviceType, numQueues: h.numQueues,
      segment: p.segment, slot: p.slot, barAddr: p.barAddr,
      shared, queueFds: r.queueFds, irqFds: r.irqFds, gsis: r.gsis, controlFd: t.controlFd,
      removable: removable(h),
    };
  }

  /** Start `t`'s worker and hand it its devices. */
  private spawn(t: RunThread, restore?: ReadonlyMap<string, VirtioDeviceState>): void {
    const onError = this.onError;
    const w = new Worker(new URL('./virtio_worker.js', import.meta.url), THREAD_OPTIONS);
    t.worker = w;
    t.exited = new Promise<void>((res) => w.once('exit', () => { t.done = true; res(); }));
    const byId = new Map(t.devices.map((r) => [r.host.id, r]));
    w.on('message', (m: VirtioWorkerEvent) => {
      if (m.type === 'needs-reset') { this.log(`${m.id}: device needs reset: ${m.message}`); this.onNeedsReset(m.id, m.message); }
      else if (m.type === 'error') onError(`${m.id}: ${m.message}`);
      else if (m.type === 'counter-names') { const r = byId.get(m.id); if (r) r.counterNames = m.names; }
      else if (m.type === 'log') (m.warn ? this.warn : this.log)(`${m.id}: ${m.message}`);
      else if (m.type === 'state') { const k = `${m.id}:${m.seq}`; const f = t.stateWaiters.get(k); t.stateWaiters.delete(k); f?.(m); }
      else if (m.type === 'stopped') { const f = t.stopWaiters.get(m.id); t.stopWaiters.delete(m.id); f?.(); }
    });
    w.on('error', (e) => onError(`${threadLabel(t)} failed: ${e.stack ?? e.message}`));
    const devices: VirtioWorkerDevice[] = t.devices.map((r) => ({
      id: r.host.id, spec: r.host.spec, numQueues: r.host.numQueues, shared: r.shared,
      queueFds: r.queueFds, irqFds: r.irqFds, counters: r.counters.buffer as SharedArrayBuffer,
      ...(restore?.has(r.host.id) ? { restore: restore.get(r.host.id)! } : {}),
    }));
    const data: VirtioWorkerData = { name: t.name, mem: this.runMem!.describe(), controlFd: t.controlFd, devices };
    w.postMessage(data);
  }

  /**
   * Hotplug, host side: open what the device needs (as at boot: the image, locked; the tap)
   * and give it the lowest free device number on its segment. Throws VirtioConfigError with
   * nothing left open. `kind` and `index` name the device in the configuration (its default id).
   */
  openHotplug(cfg: VmConfig, device: HotplugDevice): string {
    const before = this.devices.length;
    const taken = new Set(this.devices.map((h) => h.id));
    const asked = device.config.id;
    if (asked !== undefined && taken.has(asked)) throw new VirtioConfigError(`identifier '${asked}' is already in use`);
    // A hot-added device gets an I/O thread of its own (the running threads' device sets are fixed).
    if (device.kind === 'disk' && device.config.rate_limit_group !== undefined) throw new VirtioConfigError('rate_limit_group: a hot-added disk cannot join a rate limit group yet (its limiter lives in the running I/O thread)');
    if ('iothread' in device.config && device.config.iothread !== undefined) throw new VirtioConfigError('iothread: a hot-added device gets an I/O thread of its own');
    let index = 0;
    while (taken.has(`_${device.kind}${index}`)) index++;
    try {
      if (device.kind === 'disk') this.openDisk(cfg, device.config, index);
      else if (device.kind === 'net') this.openNet(device.config, index);
      else if (device.kind === 'fs') this.openFs(cfg, device.config, index);
      else if (device.kind === 'pmem') {
        this.openPmem(device.config, index);
        // After every range placed so far (virtio-pmem devices are never removed from a running
        // VM, so the ranges stay in configuration order, as a restore places them).
        const h = this.devices[this.devices.length - 1]!;
        const others = this.devices.filter((d) => d.memory !== undefined && d !== h).map((d) => d.memory!);
        const end = others.reduce((e, m) => Math.max(e, m.gpa + m.size), 0);
        const first = deviceMemoryRanges(cfg.memory.size, [h.memory!.size], 52, this.hotplugSize)[0]!;
        const gpa = Math.max(first.gpa, end);
        if (gpa + h.memory!.size > 2 ** 52) throw new VirtioConfigError(`${h.id}: no guest physical space left for ${h.memory!.size} bytes`);
        h.memory!.gpa = gpa;
        if (h.spec.kind === 'pmem') { h.spec.start = gpa; h.spec.size = h.memory!.size; }
      } else {
        if (this.devices.some((h) => h.deviceType === VirtioDeviceType.Vsock)) throw new VirtioConfigError('the VM already has a vsock device (at most one per VM)');
        this.openVsock(device.config);
      }
      this.place();
    } catch (e) {
      this.closeDevices(this.devices.splice(before));
      throw e;
    }
    this.devices[before]!.pending = true;
    return this.devices[before]!.id;
  }

  /** The hot-add of `id` completed: later guest runs start it with the others. */
  commitHotplug(id: string): void {
    const h = this.devices.find((d) => d.id === id);
    if (h !== undefined) delete h.pending;
  }

  /** Every placed device's PCI address, in configuration order (a snapshot's pciPlacement). */
  placements(): Array<{ id: string; segment: number; slot: number }> {
    return this.devices.flatMap((h) => (h.slot === undefined || h.pending === true ? [] : [{ id: h.id, segment: h.segment ?? 0, slot: h.slot }]));
  }

  /**
   * A restore: each device goes back to the PCI address it had when the snapshot was taken (so a
   * device removed before the others leaves its slot empty, as the guest saw it). Checked whole
   * before anything changes: the same devices, each on its configured segment, at its configured
   * device number if it has one. VirtioConfigError naming the device otherwise.
   */
  pinPlacements(saved: ReadonlyArray<{ id: string; segment: number; slot: number }>): void {
    const byId = new Map(this.devices.map((h) => [h.id, h]));
    const seen = new Set<string>();
    for (const p of saved) {
      const h = byId.get(p.id);
      if (h === undefined) throw new VirtioConfigError(`the saved state places virtio device '${p.id}', which this VM does not have`);
      if (seen.has(p.id)) throw new VirtioConfigError(`the saved state places virtio device '${p.id}' twice`);
      seen.add(p.id);
      if ((h.segment ?? 0) !== p.segment) throw new VirtioConfigError(`${p.id}: the saved state has it on PCI segment ${p.segment}, the configuration on ${h.segment ?? 0}`);
      const fixed = this.configuredSlots.get(p.id);
      if (fixed !== undefined && fixed !== p.slot) throw new VirtioConfigError(`${p.id}: the saved state has it at device number ${p.slot}, the configuration (pci_device_id) at ${fixed}`);
    }
    for (const h of this.devices) if (!seen.has(h.id)) throw new VirtioConfigError(`the saved state has no PCI address for virtio device '${h.id}'`);
    try {
      placePciDevices(saved, this.segments, BAR_SIZE);
    } catch (e) {
      throw new VirtioConfigError(`the saved PCI addresses: ${(e as Error).message}`);
    }
    for (const p of saved) byId.get(p.id)!.slot = p.slot;
  }

  /** The device `id`'s PCI address, once placed (segment, slot), whether it maps memory into the guest (virtio-pmem) and whether it may be removed. */
  placement(id: string): { segment: number; slot: number; mapsMemory: boolean; removable: boolean } | undefined {
    const h = this.devices.find((d) => d.id === id);
    return h?.slot === undefined ? undefined : { segment: h.segment ?? 0, slot: h.slot, mapsMemory: h.memory !== undefined, removable: removable(h) };
  }

  /**
   * Hotplug, run side: the device opened by openHotplug gets its eventfds and an I/O thread of
   * its own in the running guest; resolves with what the device thread needs once the device is
   * built (a VirtioConfigError, with everything of this run released, if it is not).
   */
  async startHotplug(vm: Vm, id: string, timeoutMs = 10_000): Promise<VirtioPciInit> {
    const h = this.devices.find((d) => d.id === id);
    if (h === undefined || this.runMem === null) throw new VirtioConfigError(`${id}: no such device, or the guest is not running`);
    const [p] = placePciDevices([{ id: h.id, segment: h.segment ?? 0, slot: h.slot! }], this.segments, BAR_SIZE);
    const t = this.newThread(`_hotplug_${id}`);
    let init: VirtioPciInit;
    try {
      init = this.prepare(vm, h, t, p!);
      this.spawn(t);
    } catch (e) {
      this.dropThread(vm, t);
      throw e;
    }
    const r = t.devices[0]!;
    await waitReady(r.words, Date.now() + timeoutMs, () => t.done === true);
    if (Atomics.load(r.words, Word.Ready) !== 1) {
      if (t.worker) await t.worker.terminate();
      this.dropThread(vm, t);
      throw new VirtioConfigError(`${id}: the device could not be started (see the log)`);
    }
    return init;
  }

  private dropThread(vm: Vm, t: RunThread): void {
    if (t.worker && !t.done) void t.worker.terminate();
    // A stop() since has taken the thread (and released what it had): nothing more to close.
    if (!this.threads.includes(t)) return;
    for (const r of t.devices) this.release(vm, r);
    if (t.controlFd >= 0) { try { libc.close(t.controlFd); } catch { /* closed */ } }
    this.threads = this.threads.filter((x) => x !== t);
  }

  /**
   * Take device `id` out of the VM for good (the guest ejected it, or a hotplug failed): its
   * I/O thread stops serving it (a thread left with no device exits), its eventfds and host
   * resources are closed (the image unlocked). False if there is no such device.
   */
  async remove(vm: Vm | null, id: string, timeoutMs = 5000): Promise<boolean> {
    const h = this.devices.find((d) => d.id === id);
    if (h === undefined || h.removing === true) return false;
    h.removing = true;
    const t = this.threads.find((x) => x.devices.some((r) => r.host === h));
    let stuck = false;
    if (t !== undefined) {
      const r = t.devices.find((x) => x.host === h)!;
      if (!t.done) {
        const st = { stopped: false };
        const stop = new Promise<void>((res) => { t.stopWaiters.set(id, () => { st.stopped = true; res(); }); });
        postCommand(r.words, Command.Stop);
        try { libc.write(t.controlFd, ONE); } catch { /* the thread is gone */ }
        await Promise.race([stop, t.exited, sleep(timeoutMs)]);
        t.stopWaiters.delete(id);
        // (t.done is set by the exit handler meanwhile.)
        stuck = !st.stopped && !(t as { done?: boolean }).done;
      }
      if (stuck) {
        // Still inside a call on this device's fds (a read from a hung image): they are closed
        // when the thread exits, never reused under it (as stop() does).
        h.stuckCount = (h.stuckCount ?? 0) + 1;
        (h.stuck ??= []).push(t.exited);
        this.log(`${id}: its I/O thread did not stop serving it within ${timeoutMs} ms; its fds stay open until that thread exits`);
        if (vm !== null) {
          const gone = t.exited;
          void gone.then(() => { if (this.threads.includes(t)) this.release(vm, r); });
        }
      } else {
        t.devices = t.devices.filter((x) => x !== r);
        if (vm !== null && this.threads.includes(t)) this.release(vm, r);
        if (t.devices.length === 0) {
          await Promise.race([t.exited, sleep(timeoutMs)]);
          if (vm !== null && this.threads.includes(t)) this.dropThread(vm, t);
        }
      }
    }
    // The index after the awaits: another removal may have changed the list meanwhile.
    const j = this.devices.indexOf(h);
    if (j >= 0) this.devices.splice(j, 1);
    this.closeDevices([h]);
    return true;
  }

  /**
   * Resolves once every device of this run has been built (Word.Ready; a restored one with its
   * state applied). Rejects naming the devices that failed, or that were not built in time.
   */
  async whenReady(timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    const all = this.threads.flatMap((t) => t.devices.map((r) => ({ t, r })));
    await Promise.all(all.map(({ t, r }) => waitReady(r.words, deadline, () => t.done === true)));
    const failed = all.filter(({ r }) => Atomics.load(r.words, Word.Ready) !== 1).map(({ r }) => r.host.id);
    if (failed.length > 0) throw new VirtioQuiesceError(`virtio device(s) ${failed.join(', ')} could not be started (see the log)`, failed);
  }

  /**
   * Quiesce every device (vm.pause, after the vCPUs stopped): each I/O thread finishes the round
   * it is in (every request taken completes and is published, interrupts delivered), devices
   * hand back buffers they held without data, and from then on nothing is taken from a ring and
   * nothing written to guest RAM or an image until resume(). Resolves once every device has
   * acknowledged, without blocking this thread. A device whose thread is busy past `timeoutMs`
   * (a request blocked in a system call) is a VirtioQuiesceError; the others stay paused (call
   * resume()). Devices whose thread is gone or that were never built have nothing to quiesce.
   */
  pause(timeoutMs = 10_000): Promise<void> {
    return this.setPaused(true, timeoutMs);
  }

  /** Undo pause(): every device looks at each of its queues once and carries on. */
  resume(timeoutMs = 10_000): Promise<void> {
    return this.setPaused(false, timeoutMs);
  }

  private async setPaused(want: boolean, timeoutMs: number): Promise<void> {
    this.pauseSeq = (this.pauseSeq + 1) & 0x3fffffff;
    const req = (this.pauseSeq << 1) | (want ? 1 : 0);
    const threads = this.threads;
    for (const t of threads) {
      for (const r of t.devices) Atomics.store(r.words, Word.PauseReq, req);
      try { libc.write(t.controlFd, ONE); } catch { /* the thread is gone */ }
    }
    const deadline = Date.now() + timeoutMs;
    const late: string[] = [];
    await Promise.all(threads.flatMap((t) => t.devices.map(async (r) => {
      const gone = () => t.done === true || Atomics.load(r.words, Word.Ready) === -1;
      if (!(await waitWord(r.words, Word.PauseAck, req, deadline, gone))) late.push(r.host.id);
    })));
    if (late.length > 0) {
      throw new VirtioQuiesceError(`virtio device(s) ${late.join(', ')} did not ${want ? 'pause' : 'resume'} within ${timeoutMs} ms (their I/O thread is busy with a request)`, late);
    }
  }

  /**
   * The saved state of every device (in configuration order), taken by each device's I/O thread
   * while paused (after pause() resolved). Rejects naming a device that is not paused, cannot
   * save its state, or does not answer within `timeoutMs`.
   */
  async getState(timeoutMs = 10_000): Promise<VirtioDeviceState[]> {
    const threads = this.threads;
    const answers: Array<Promise<VirtioDeviceState>> = [];
    for (const t of threads) {
      for (const r of t.devices) {
        this.stateSeq = (this.stateSeq + 1) | 0;
        const seq = this.stateSeq;
        const id = r.host.id;
        answers.push(new Promise<VirtioDeviceState>((resolve, reject) => {
          if (t.done === true || Atomics.load(r.words, Word.Ready) !== 1) { reject(new VirtioQuiesceError(`${id}: the device is not running, it has no state to save`, [id])); return; }
          const timer = setTimeout(() => { t.stateWaiters.delete(`${id}:${seq}`); reject(new VirtioQuiesceError(`${id}: no state within ${timeoutMs} ms (its I/O thread is busy)`, [id])); }, timeoutMs);
          t.stateWaiters.set(`${id}:${seq}`, (m) => {
            clearTimeout(timer);
            if (m.state !== undefined) resolve(m.state);
            else reject(new VirtioQuiesceError(`${id}: cannot save its state: ${m.error ?? 'no answer'}`, [id]));
          });
          Atomics.store(r.words, Word.StateReq, seq);
        }));
      }
      try { libc.write(t.controlFd, ONE); } catch { /* answered by the timeout */ }
    }
    const got = await Promise.all(answers);
    const order = new Map(this.devices.map((h, i) => [h.id, i]));
    return got.sort((a, b) => (order.get(a.id) ?? 0) - (order.get(b.id) ?? 0));
  }

  /** I/O threads of the current guest run (1 unless devices asked for their own). */
  get threadCount(): number {
    return this.threads.length;
  }

  /** Undo start() at once (its threads never got guest memory, or the VM is going away now). */
  abort(vm: Vm): void {
    const threads = this.threads;
    this.threads = [];
    this.runMem = null;
    for (const t of threads) {
      if (t.worker) void t.worker.terminate();
      for (const r of t.devices) this.release(vm, r);
      if (t.controlFd >= 0) libc.close(t.controlFd);
    }
  }

  private release(vm: Vm, r: RunDevice): void {
    if (r.released === true) return;
    r.released = true;
    r.irqFds.forEach((fd, v) => {
      try { vm.unregisterIrqfd(fd, r.gsis[v]!); } catch { /* the VM goes away next */ }
      libc.close(fd);
    });
    this.freeGsis.push(...r.gsis.slice(0, r.irqFds.length));
    for (const fd of r.queueFds) libc.close(fd);
  }

  /** Malformed-request counts per device (vm.counters). */
  counters(): Record<string, Record<string, number>> {
    const out: Record<string, Record<string, number>> = {};
    for (const t of this.threads) {
      for (const r of t.devices) {
        const c: Record<string, number> = {};
        r.counterNames.forEach((n, i) => { c[n] = r.counters[i]!; });
        c.malformed_requests = Atomics.load(r.words, Word.Errors);
        if (r.host.stuckCount) c.io_threads_stuck = r.host.stuckCount;
        out[r.host.id] = c;
      }
    }
    return out;
  }

  /**
   * Stop the I/O threads of the current guest run and release its eventfds (after the vCPUs
   * stopped). Bounded in time: guest memory is revoked first (devices abandon long requests
   * between chunks), then each thread gets stopTimeouts.graceMs to stop, then terminate() and
   * terminateMs more. terminate() cannot interrupt a blocking system call (a read from an
   * entropy source nobody writes, a preadv from an image on a hung NFS server): such a thread's
   * devices are reported (log line, io_threads_stuck counter) and returned in `stuck`, and its
   * eventfds and its devices' host fds stay open until it exits, so that no fd number it holds
   * is reused under it. The caller must then retire guest memory instead of freeing it
   * (GuestMemory.retire).
   */
  async stop(vm: Vm): Promise<VirtioStopResult> {
    const threads = this.threads;
    this.threads = [];
    this.runMem?.revoke();
    this.runMem = null;
    for (const t of threads) {
      for (const r of t.devices) postCommand(r.words, Command.Stop);
      try { libc.write(t.controlFd, ONE); } catch { /* closed below */ }
    }
    const { graceMs, terminateMs } = this.stopTimeouts;
    await Promise.all(threads.map((t) => Promise.race([t.exited, sleep(graceMs)])));
    // A thread that did not stop by itself is terminated: its poll has a timeout, so one
    // waiting there stops; one inside a device call stops when the call returns to JavaScript.
    await Promise.all(threads.map((t) => (t.done || !t.worker ? undefined : Promise.race([t.worker.terminate().then(() => undefined), t.exited, sleep(terminateMs)]))));
    const stuck: RunThread[] = [];
    for (const t of threads) {
      if (t.done || !t.worker) {
        for (const r of t.devices) this.release(vm, r);
        libc.close(t.controlFd);
        continue;
      }
      stuck.push(t);
      const ids = t.devices.map((r) => r.host.id).join(', ');
      this.log(`${ids}: the I/O thread did not stop within ${graceMs + terminateMs} ms (blocked in a system call); its guest memory is made inaccessible and its fds stay open until it exits`);
      // The VM side (irqfd routes) goes now; the fds are closed when the thread is gone.
      for (const r of t.devices) {
        r.host.stuckCount = (r.host.stuckCount ?? 0) + 1;
        r.irqFds.forEach((fd, v) => { try { vm.unregisterIrqfd(fd, r.gsis[v]!); } catch { /* the VM goes away next */ } });
      }
      const closeFds = () => {
        for (const r of t.devices) for (const fd of [...r.irqFds, ...r.queueFds]) { try { libc.close(fd); } catch { /* already closed */ } }
        try { libc.close(t.controlFd); } catch { /* already closed */ }
        this.log(`${ids}: the stuck I/O thread has exited; its fds are closed`);
      };
      const gone = t.exited.then(closeFds);
      for (const r of t.devices) {
        const h = r.host;
        (h.stuck ??= []).push(gone);
        void gone.then(() => { h.stuck = h.stuck?.filter((p) => p !== gone); });
      }
    }
    return {
      stuck: stuck.flatMap((t) => t.devices.map((r) => r.host.id)),
      allExited: Promise.all(stuck.map((t) => t.exited)).then(() => undefined),
    };
  }

  /** Release host resources (images, taps, files). */
  close(): void {
    this.closeDevices(this.devices);
    this.devices.length = 0;
  }

  private closeDevices(devices: readonly HostDevice[]): void {
    for (const h of devices) {
      const release = () => {
        if (h.memory !== undefined) { try { libc.munmap(h.memory.hostAddress, h.memory.size); } catch { /* not mapped */ } }
        for (const fd of h.fds) { try { closeSync(fd); } catch { /* already closed */ } }
        h.tap?.close();
        if (h.unlink !== undefined) { try { unlinkSync(h.unlink); } catch { /* already gone */ } }
      };
      // An I/O thread that would not stop may still be inside a call on these fds (preadv on
      // the image): they are closed when it exits, never reused under it.
      if (h.stuck && h.stuck.length > 0) {
        this.log(`${h.id}: host fds stay open until the stuck I/O thread exits`);
        void Promise.all(h.stuck).then(release);
      } else {
        release();
      }
    }
  }
}
