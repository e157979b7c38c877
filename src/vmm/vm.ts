// VM lifecycle: build a VM from a VmConfig (memory, in-kernel irqchip, ACPI, kernel, vCPUs),
// run every vCPU in its own worker thread and the legacy devices in a device thread, and react
// to what the guest asks: ACPI S5 powers off, a reset (i8042, ACPI reset register, triple fault)
// rebuilds the VM from scratch and boots it again, as Cloud Hypervisor and Firecracker do.
import { EventEmitter } from 'node:events';
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads';
import { openSync, closeSync } from 'node:fs';
import { totalmem } from 'node:os';
import { randomBytes } from 'node:crypto';
import * as libc from '../sys/libc.js';
import { openHypervisor, type HypervisorKind } from '../hypervisor/select.js';
import type { Hypervisor, Vm, Vcpu } from '../hypervisor/hypervisor.js';
import type { CpuIdEntry } from '../hypervisor/regs.js';
import { GuestMemory } from '../memory/guest_memory.js';
import { guestMemoryRegions, hotplugRegion, lowRamEnd, CPU_HOTPLUG_MMIO_START, GED_MMIO_START, MEMORY_HOTPLUG_MMIO_START, PCI_HOTPLUG_MMIO_START, RSDP_POINTER, VMGENID_ADDR, VMGENID_SIZE } from '../arch/x86_64/layout.js';
import { loadBzImage, parseBzImage } from '../arch/x86_64/bzimage.js';
import { loadPvhKernel, parseElfKernel } from '../arch/x86_64/pvh.js';
import { FileImage, readImage, type ImageSource } from '../arch/x86_64/image_source.js';
import { buildAcpiTables, buildMcfgForSegments, cpuHotplugAml, gedAml, memoryHotplugAml, pciHostBridgeName, pciSegmentsAml, readAcpiTables, writeVmGenerationId } from '../arch/x86_64/acpi.js';
import { vcpuCpuid } from '../arch/x86_64/cpuid.js';
import { HyperVCpuidError, hypervLeaves } from '../arch/x86_64/hyperv.js';
import { writeResetVectorStub } from '../arch/x86_64/reset_vector.js';
import { linux64BootState, pvhBootState, writeBootTables, defaultFpu, bootMsrEntries } from '../arch/x86_64/regs.js';
import { acpiHotplugAreaSize, hotplugRegionSize, type VmConfig } from './config.js';
import { createMailboxes, ringDoorbell, type MailboxShared } from './mailbox.js';
import { ByteRing } from './ring.js';
import { IRQ_COM1, IRQ_GED } from './layout_ports.js';
import { VirtioManager, type HotplugDevice } from './virtio_manager.js';
import { SerialSocketSink } from './serial_socket.js';
import { THREAD_OPTIONS } from './thread_options.js';
import type { VirtioPciInit } from './pci_setup.js';
import type { VirtioDeviceState } from '../virtio/state.js';
import {
  DeviceControl, DeviceControlOp, PlugState, RunState, type DeviceThreadState, type DeviceWorkerData, type DeviceEvent, type VcpuWorkerData, type VcpuEvent, type HotplugRequest,
} from './protocol.js';
import { saveHypervisorState, restoreHypervisorState } from '../hypervisor/state.js';
import { writeSnapshot, type SnapshotParts, type SnapshotState, type SnapshotWritten } from './snapshot.js';
import { mapGuestMemory, restoreGuestMemory } from '../memory/snapshot.js';
import { PciType1, PCI_SLOTS } from '../pci/bus.js';
import { CPU_STATUS_INSERTING, CPU_STATUS_REMOVING } from '../devices/cpu_hotplug.js';
import { MemoryHotplugController } from '../devices/memory_hotplug.js';

/** Addresses KVM needs for its real-mode TSS and identity map on Intel (below the 4 GiB top). */
const KVM_IDENTITY_MAP_ADDR = 0xfffbc000;
const KVM_TSS_ADDR = 0xfffbd000;

export type VmState = 'Created' | 'Running' | 'Paused' | 'Shutdown';

export class VmError extends Error {
  override name = 'VmError';
}

export interface VmExitInfo {
  reason: 'poweroff' | 'shutdown' | 'error';
  message?: string;
}

export interface VirtualMachineOptions {
  /** Where serial output goes when serial mode is Tty (default fd 1). */
  ttyFd?: number;
  log?: (msg: string) => void;
  hypervisor?: Hypervisor;
  /** Backend to open when `hypervisor` is not given (--hypervisor; default kvm). */
  hypervisorKind?: HypervisorKind;
}

interface Running {
  vm: Vm;
  mem: GuestMemory;
  vcpus: Vcpu[];
  vcpuWorkers: Worker[];
  deviceWorker: Worker;
  shared: MailboxShared;
  runState: Int32Array;
  serialIrqfd: number;
  /** irqfd of the ACPI GED (IRQ_GED). */
  gedIrqfd: number;
  serialFd: number;
  ownsSerialFd: boolean;
  stopping: boolean;
  /** Resolve when each thread has exited (made at spawn, so an early exit is not missed). */
  vcpuExited: Promise<void>[];
  deviceExited: Promise<void>;
  /** Resolves when every thread has stopped and everything is released (see stopGuest). */
  stopped: Promise<void> | null;
  /** DeviceControl words shared with the device thread. */
  control: Int32Array;
  /** Answers of the device thread to control requests, by sequence number. */
  controlWaiters: Map<number, (e: DeviceEvent) => void>;
  /** vCPUs parked by the current pause: id -> their 0xCF8 latch. */
  parked: Map<number, number>;
  /** A restore's answer from the device thread ('restored' or 'restore-error'), and its resolver. */
  restored: Promise<DeviceEvent>;
  answerRestore: (e: DeviceEvent) => void;
  /** Hotplug requests to the device thread (protocol.ts HotplugRequest). */
  hotplugPort: MessagePort;
  /** The DeviceControl request in flight: the next one waits for it. */
  controlChain: Promise<void>;
  /** Devices whose eject the guest was asked for (vm.remove-device), not ejected yet. */
  ejectsPending: Set<string>;
  /**
   * CPU hotplug (vm.resize desired_vcpus): whether this guest's DSDT has the processor devices
   * (cpuHotplugAml); `vcpus` and `vcpuWorkers` are indexed by vCPU id, every vCPU ever created
   * (KVM cannot destroy one: an ejected vCPU keeps its fd and its parked thread for a re-plug).
   */
  cpuHotplug: boolean;
  /** cpus.max_vcpus: mailboxes, PlugState words and the CPUID topology are sized for it. */
  maxVcpus: number;
  /** PlugState word per possible vCPU (protocol.ts), shared with the vCPU threads. */
  plug: Int32Array;
  plugSab: SharedArrayBuffer;
  /** vCPUs the guest ejected (their threads parked, fds open). */
  unplugged: Set<number>;
  /** vCPUs the guest was asked to eject (vm.resize down) and has not yet. */
  cpuRemovals: Set<number>;
  /**
   * ACPI memory hotplug (memory.hotplug_method Acpi with a hotplug area): the area, the bytes
   * plugged from its start (the memory devices' ranges lie one after the other), its host
   * address, and the next KVM memory slot for a range. null: no area.
   */
  acpiMemory: { gpa: number; size: number; hostAddress: bigint; plugged: number; nextSlot: number } | null;
}

/**
 * KVM memory slots of the ACPI hotplug area's ranges: one for what is plugged at boot, then one
 * per vm.resize, far above RAM's and the device memory's slots (regions, then virtio-pmem files).
 */
const ACPI_MEMORY_SLOT_BASE = 1024;

/** vm.resize desired_vcpus while a vCPU removal is pending: Cloud Hypervisor answers 429. */
export class VcpuRemovalPendingError extends Error {
  override name = 'VcpuRemovalPendingError';
}

/** What a restore builds the guest from (src/vmm/snapshot.ts readSnapshot). */
export interface GuestRestore {
  state: SnapshotState;
  /** The snapshot's memory-ranges file. */
  memoryFile: string;
  /**
   * 'map': the file mapped copy-on-write over guest RAM (pages read as the guest touches them;
   * private memory only); 'copy': its data read into guest RAM before the guest runs.
   */
  memory: 'map' | 'copy';
}

type KernelKind = 'bzImage' | 'elf';

/** A hotplug request without its sequence number (deviceControl adds it). */
type HotplugPayload = { type: 'add'; device: VirtioPciInit } | { type: 'remove'; id: string } | { type: 'cpu-add'; id: number } | { type: 'cpu-remove'; id: number } | { type: 'mem-add'; gpa: number; size: number };

/**
 * Open a file the user named (kept open, read with pread into guest RAM at each boot), turning
 * fs errors into one clear sentence.
 */
function openUserFile(what: string, path: string): FileImage {
  try {
    return new FileImage(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'does not exist' : code === 'EACCES' ? 'is not readable (permission denied)'
      : code === 'ENOTREG' || code === 'EISDIR' ? 'is not a regular file' : (e as Error).message;
    throw new VmError(`${what} '${path}' ${why}`);
  }
}

/** ELF ("\x7fELF") or, otherwise, a bzImage: from the image's first bytes. */
export function kernelKind(image: Uint8Array | ImageSource): KernelKind {
  const head = image instanceof Uint8Array ? image : readImage(image, 0, Math.min(image.size, 4));
  if (head.length >= 4 && head[0] === 0x7f && head[1] === 0x45 && head[2] === 0x4c && head[3] === 0x46) return 'elf';
  return 'bzImage';
}

export class VirtualMachine extends EventEmitter {
  state: VmState = 'Created';
  /** The configuration; a hot-plugged device joins it, an ejected one leaves it. */
  config: VmConfig;
  /** Times the guest has been (re)booted. */
  boots = 0;
  /** VMM threads that did not stop in time on a stop or reboot (each also logged). */
  stuckThreads = 0;
  /** The serial sink's [tx_bytes, tx_dropped_bytes] in the current guest run (device thread). */
  private readonly serialCounters = new Float64Array(new SharedArrayBuffer(16));
  private hv: Hypervisor | null;
  private readonly opts: VirtualMachineOptions;
  private run: Running | null = null;
  private readonly input = new ByteRing(4096);
  /** `--serial socket=`: made at the first boot, kept across guest resets, closed at the end. */
  private serialSocket: SerialSocketSink | null = null;
  /** The kernel and initramfs files, open from preflight to the end (headers validated once). */
  private kernel: FileImage | null = null;
  private kernelType: KernelKind = 'bzImage';
  private initramfs: FileImage | undefined;
  private supportedCpuid: CpuIdEntry[] | null = null;
  /**
   * The guests of this VM get the CPU hotplug AML: once cpus.max_vcpus was above boot_vcpus,
   * for every later boot too (a reboot after a resize to max_vcpus can still resize down).
   */
  private cpuHotplugAml = false;
  /** Virtio devices' host side (images, taps, files): opened at boot, kept across guest resets. */
  private readonly virtio = new VirtioManager((m) => this.log(m), (id, why) => {
    // A device error is worth a line even without -v (where this.log already has it).
    if (!this.opts.log) process.stderr.write(`stratovisor: warning: ${id}: device needs reset: ${why}\n`);
  }, (m) => {
    this.log(m);
    if (!this.opts.log) process.stderr.write(`stratovisor: warning: ${m}\n`);
  });
  private exitResolve: ((i: VmExitInfo) => void) | null = null;
  /** A pause or resume is under way. */
  private transition = false;
  private finished = false;
  /** Set by shutdown(): a guest reset under way must not start the guest again. */
  private shutdownRequested = false;
  readonly exited: Promise<VmExitInfo>;

  constructor(config: VmConfig, opts: VirtualMachineOptions = {}) {
    super();
    this.config = config;
    this.opts = opts;
    this.hv = opts.hypervisor ?? null;
    this.exited = new Promise((r) => { this.exitResolve = r; });
  }

  private log(msg: string): void {
    this.opts.log?.(msg);
  }

  /** Check everything the user gave before creating anything (clear errors, nothing leaked). */
  private preflight(): void {
    const p = this.config.payload;
    if (!p.kernel) throw new VmError(p.firmware ? 'firmware boot is not supported yet: use --kernel' : 'no kernel given (--kernel PATH)');
    try {
      this.kernel = openUserFile('kernel', p.kernel);
      // Reject a file that is not a kernel before touching the hypervisor (clear error first):
      // only its headers are read here; the loader copies the rest straight into guest RAM.
      try {
        this.kernelType = kernelKind(this.kernel);
        if (this.kernelType === 'elf') parseElfKernel(this.kernel);
        else parseBzImage(this.kernel);
      } catch (e) {
        throw new VmError(`kernel '${p.kernel}': ${(e as Error).message}`);
      }
      this.initramfs = p.initramfs ? openUserFile('initramfs', p.initramfs) : undefined;
      const size = this.config.memory.size;
      const host = totalmem();
      if (size > host) {
        throw new VmError(`memory size ${fmtBytes(size)} is more than this host has (${fmtBytes(host)})`);
      }
      try {
        this.virtio.open(this.config, this.opts.ttyFd ?? 1);
      } catch (e) {
        throw new VmError((e as Error).message);
      }
    } catch (e) {
      this.closeImages();
      throw e;
    }
  }

  private closeImages(): void {
    this.kernel?.close();
    this.initramfs?.close();
    this.kernel = null;
    this.initramfs = undefined;
  }

  /** Build the VM and start its threads. */
  async boot(): Promise<void> {
    if (this.state !== 'Created') throw new VmError(`cannot boot a VM in state ${this.state}`);
    this.preflight();
    try {
      if (!this.hv) {
        this.hv = openHypervisor(this.opts.hypervisorKind ?? 'kvm');
        this.hv.checkRequiredExtensions();
      }
      this.startGuest();
    } catch (e) {
      this.virtio.close();
      this.closeImages();
      throw e;
    }
    this.state = 'Running';
    this.emit('booted');
  }

  /**
   * Build the VM from a snapshot (its config is this VM's config) and end Paused, as Cloud
   * Hypervisor's vm.restore: guest RAM read from memory-ranges, every vCPU and the VM's
   * in-kernel state set, the legacy devices, PCI buses and virtio devices given their saved
   * state, every thread started and parked before its first instruction. Nothing of the guest
   * runs until resume(). A snapshot that does not fit this VM is a VmError naming what.
   */
  async restore(from: GuestRestore, opts: { timeoutMs?: number } = {}): Promise<void> {
    if (this.state !== 'Created') throw new VmError(`cannot restore into a VM in state ${this.state}`);
    const ncpu = this.config.cpus.boot_vcpus;
    const saved = from.state;
    if (this.config.cpus.max_vcpus < ncpu) throw new VmError(`the snapshot's config has ${ncpu} boot vCPU(s) but max_vcpus ${this.config.cpus.max_vcpus}`);
    if (saved.hypervisor.vcpus.length !== ncpu) throw new VmError(`the snapshot has ${saved.hypervisor.vcpus.length} vCPU state(s), its config ${ncpu} boot vCPU(s)`);
    if (saved.pci.configAddress.length !== ncpu) throw new VmError(`the snapshot has ${saved.pci.configAddress.length} PCI CONFIG_ADDRESS latch(es), its config ${ncpu} vCPU(s)`);
    saved.pci.configAddress.forEach((a) => new PciType1(1).restoreState({ configAddress: a }));
    this.preflight();
    try {
      if (!this.hv) {
        this.hv = openHypervisor(this.opts.hypervisorKind ?? 'kvm');
        this.hv.checkRequiredExtensions();
      }
      this.startGuest(from);
    } catch (e) {
      this.virtio.close();
      this.closeImages();
      throw e instanceof VmError ? e : new VmError(`restore failed: ${(e as Error).message}`);
    }
    const run = this.run!;
    const timeoutMs = opts.timeoutMs ?? 10_000;
    try {
      const answer = await withTimeout(run.restored, timeoutMs, 'the device thread did not take its saved state');
      if (answer.type === 'restore-error') throw new VmError(`restore failed: ${answer.message}`);
      await this.virtio.whenReady(timeoutMs);
      await withTimeout(new Promise<void>((resolve) => {
        const check = () => { if (run.parked.size >= ncpu || run.stopping) { this.off('vcpu-paused', check); resolve(); } };
        this.on('vcpu-paused', check);
        check();
      }), timeoutMs, 'the vCPU threads did not start');
      if (run.stopping || this.run !== run) throw new VmError('restore failed: the VM stopped while it was being restored (see the log)');
    } catch (e) {
      await this.stopGuest(run);
      this.finish({ reason: 'error', message: (e as Error).message });
      throw e instanceof VmError ? e : new VmError(`restore failed: ${(e as Error).message}`);
    }
    this.state = 'Paused';
    this.emit('restored');
  }

  private startGuest(restore?: GuestRestore): void {
    const hv = this.hv!;
    const cfg = this.config;
    const ncpu = cfg.cpus.boot_vcpus;
    const maxVcpus = Math.max(cfg.cpus.max_vcpus, ncpu);
    if (!restore && maxVcpus > ncpu) this.cpuHotplugAml = true;
    const cpuHotplug = !restore && this.cpuHotplugAml && maxVcpus > 1;
    // The CPUID topology says max_vcpus where vCPUs can be hot-plugged (as Cloud Hypervisor).
    const topologyCpus = cpuHotplug ? maxVcpus : ncpu;
    const memSize = cfg.memory.size;
    // ACPI memory hotplug: the area, and what is plugged from its start (a reboot's guest finds
    // the memory vm.resize added in its boot-time ACPI scan; hotplugged_size).
    const acpiAreaSize = acpiHotplugAreaSize(cfg.memory);
    const acpiArea = acpiAreaSize > 0 ? hotplugRegion(memSize, acpiAreaSize) : null;
    // A restore: the ranges the saved controller has (each a memory device the guest knows),
    // checked by the controller's own restoreState (slots, whole pages, inside the area, no
    // overlap) before any of them gets a memory slot.
    const saved = restore?.state.memoryHotplug ?? null;
    if (saved !== null && acpiArea === null) throw new VmError('restore: the snapshot has ACPI-hotplugged memory, the configuration no hotplug area (memory.hotplug_size)');
    let acpiBoot: Array<{ gpa: number; size: number }> = [];
    if (acpiArea !== null && saved !== null) {
      const check = new MemoryHotplugController(acpiArea);
      try {
        check.restoreState(saved);
      } catch (e) {
        throw new VmError(`restore: ${(e as Error).message}`);
      }
      acpiBoot = check.plugged();
    } else if (acpiArea !== null && !restore && (cfg.memory.hotplugged_size ?? 0) > 0) {
      acpiBoot = [{ gpa: acpiArea.gpa, size: Math.min(cfg.memory.hotplugged_size!, acpiArea.size) }];
    }
    const acpiPlugged = acpiBoot.reduce((n, r) => n + r.size, 0);
    let acpiHost = 0n;
    // Spawn the threads first: their start-up (a V8 isolate each) overlaps the VM's set-up below.
    const deviceWorker = new Worker(new URL('./device_worker.js', import.meta.url), THREAD_OPTIONS);
    const vcpuWorkers = Array.from({ length: ncpu }, () => new Worker(new URL('./vcpu_worker.js', import.meta.url), THREAD_OPTIONS));
    const exitOf = (w: Worker) => new Promise<void>((r) => w.once('exit', () => r()));
    const deviceExited = exitOf(deviceWorker);
    const vcpuExited = vcpuWorkers.map(exitOf);
    // A thread that fails while the VM is being built must not leave the guest waiting for it
    // forever: remember the failure and fail the VM as soon as it exists.
    let earlyFailure: string | null = null;
    const early = (e: Error) => {
      earlyFailure ??= `a VMM thread failed to start: ${e.stack ?? e.message}`;
      this.log(earlyFailure);
    };
    for (const w of [deviceWorker, ...vcpuWorkers]) w.once('error', early);
    let vm: Vm;
    try {
      vm = hv.createVm();
    } catch (e) {
      for (const w of [deviceWorker, ...vcpuWorkers]) void w.terminate();
      throw e;
    }
    let mem: GuestMemory | null = null;
    const vcpus: Vcpu[] = [];
    let serialIrqfd = -1;
    let gedIrqfd = -1;
    let serialFd = -1;
    let ownsSerialFd = false;
    let virtioInits: VirtioPciInit[] = [];
    let runRef: Running | null = null;
    try {
      vm.setIdentityMapAddress(KVM_IDENTITY_MAP_ADDR);
      vm.setTssAddress(KVM_TSS_ADDR);
      vm.createIrqChip();
      vm.createPit();
      try {
        // RAM, then the hotplug region (virtio-mem's or the ACPI hotplug area).
        mem = GuestMemory.allocate(guestMemoryRegions(memSize, hotplugRegionSize(cfg.memory)), { shared: cfg.memory.shared, thp: cfg.memory.thp });
      } catch (e) {
        throw new VmError(`cannot allocate ${fmtBytes(memSize)} of guest memory: ${(e as Error).message}`);
      }
      // Each region its own memory slot; of the ACPI hotplug area only what is plugged (the rest
      // has no slot: a vCPU touching it exits to the VMM as MMIO, and gets nothing).
      mem.regions.forEach((r, slot) => {
        if (acpiArea !== null && r.gpa === acpiArea.gpa) {
          acpiHost = r.hostAddress;
          acpiBoot.forEach((d, k) => vm.setUserMemoryRegion({ slot: ACPI_MEMORY_SLOT_BASE + k, guestPhysAddr: BigInt(d.gpa), memorySize: d.size, userspaceAddr: r.hostAddress + BigInt(d.gpa - r.gpa) }));
          return;
        }
        vm.setUserMemoryRegion({ slot, guestPhysAddr: BigInt(r.gpa), memorySize: r.size, userspaceAddr: r.hostAddress });
      });
      // Device memory (virtio-pmem files, mapped by the virtio manager) in the slots after RAM's.
      this.virtio.deviceMemory.forEach((d, k) => {
        vm.setUserMemoryRegion({ slot: mem!.regions.length + k, guestPhysAddr: BigInt(d.gpa), memorySize: d.size, userspaceAddr: d.hostAddress });
      });
      if (restore) {
        // Guest RAM as saved: the firmware tables, the kernel and everything since are in it.
        const t0 = performance.now();
        try {
          if (restore.memory === 'map') mapGuestMemory(mem, restore.memoryFile, restore.state.memory.ranges, { thp: cfg.memory.thp });
          else restoreGuestMemory(mem, restore.memoryFile, restore.state.memory.ranges);
        } catch (e) {
          throw new VmError(`restore: ${(e as Error).message}`);
        }
        this.log(`guest RAM ${restore.memory === 'map' ? 'mapped copy-on-write from' : 'read from'} ${restore.memoryFile} in ${(performance.now() - t0).toFixed(1)} ms`);
        for (let id = 0; id < ncpu; id++) {
          const vcpu = vm.createVcpu(id);
          vcpus.push(vcpu);
          // The Hyper-V capability before the saved CPUID is set (its leaves need it).
          if (cfg.cpus.kvm_hyperv === true) vcpu.enableHyperV();
        }
        try {
          restoreHypervisorState(vm, vcpus, restore.state.hypervisor);
        } catch (e) {
          throw new VmError(`restore: ${(e as Error).message}`);
        }
      } else {
        const pciSegments = this.virtio.pciSegments;
        // ACPI PCI hotplug on every segment (src/pci/hotplug.ts): vm.add-* and vm.remove-device.
        // CPU hotplug (vm.resize desired_vcpus): a processor device per possible vCPU.
        const sbDevices = [
          ...pciSegmentsAml(pciSegments, undefined, { mmioBase: PCI_HOTPLUG_MMIO_START }),
          ...(cpuHotplug ? [cpuHotplugAml({ mmioBase: CPU_HOTPLUG_MMIO_START, maxCpus: maxVcpus })] : []),
          // ACPI memory hotplug (vm.resize desired_ram, hotplug_method Acpi): the memory devices.
          ...(acpiArea !== null ? memoryHotplugAml({ mmioBase: MEMORY_HOTPLUG_MMIO_START }) : []),
          ...gedAml({ mmioBase: GED_MMIO_START, gsi: IRQ_GED, vmGenIdAddr: VMGENID_ADDR, pciHotplugBridges: pciSegments.map((p) => pciHostBridgeName(p.segment)), cpuHotplug, memoryHotplug: acpiArea !== null }),
        ];
        let acpi;
        try {
          acpi = buildAcpiTables({ cpus: ncpu, ...(cpuHotplug ? { maxCpus: maxVcpus } : {}), sbDevices, extraTables: [buildMcfgForSegments(pciSegments)] }, mem);
        } catch (e) {
          throw new VmError(`${(e as Error).message}${cpuHotplug ? ` (max_vcpus ${maxVcpus} and ${pciSegments.length} PCI segment(s): fewer of either fit)` : ''}`);
        }
        writeResetVectorStub(mem);
        const cmdline = cfg.payload.cmdline ?? '';
        const kernel = this.kernel!;
        const load = { cmdline, memSize, rsdpAddr: acpi.rsdpAddr, ...(this.initramfs ? { initramfs: this.initramfs } : {}) };
        let boot;
        if (this.kernelType === 'elf') {
          const r = loadPvhKernel(mem, kernel, load);
          boot = pvhBootState(r.entry, r.startInfoAddr);
        } else {
          const r = loadBzImage(mem, kernel, load);
          boot = linux64BootState(r.entry, r.bootParamsAddr);
        }
        writeBootTables(mem, boot.writes);

        for (let id = 0; id < ncpu; id++) {
          const vcpu = this.createVcpu(vm, id, topologyCpus);
          vcpus.push(vcpu);
          if (id === 0) {
            vcpu.setSregs(boot.sregs);
            vcpu.setRegs(boot.regs);
          }
        }
      }

      // A new VM Generation ID at every boot and restore (the restored guest is told through the
      // GED, DeviceWorkerData.vmGenIdChanged); the address is the one its DSDT gave.
      writeVmGenerationId(mem, randomBytes(VMGENID_SIZE));
      serialIrqfd = libc.eventfd(0, libc.EFD_CLOEXEC | libc.EFD_NONBLOCK);
      vm.registerIrqfd(serialIrqfd, IRQ_COM1);
      gedIrqfd = libc.eventfd(0, libc.EFD_CLOEXEC | libc.EFD_NONBLOCK);
      vm.registerIrqfd(gedIrqfd, IRQ_GED);
      ({ fd: serialFd, owned: ownsSerialFd } = this.openSerialSink());
      const virtioRestore = restore ? new Map(restore.state.virtio.map((d) => [d.id, d])) : undefined;
      if (restore?.state.pciPlacement) this.virtio.pinPlacements(restore.state.pciPlacement);
      virtioInits = this.virtio.start(vm, mem, (m) => { if (runRef) this.fail(runRef, m); else this.log(`error: ${m}`); }, virtioRestore);
    } catch (e) {
      for (const w of [deviceWorker, ...vcpuWorkers]) void w.terminate();
      this.virtio.abort(vm);
      for (const v of vcpus) v.close();
      if (serialIrqfd >= 0) libc.close(serialIrqfd);
      if (gedIrqfd >= 0) libc.close(gedIrqfd);
      vm.close();
      mem?.free();
      throw e;
    }

    const shared = createMailboxes(maxVcpus);
    const plugSab = new SharedArrayBuffer(4 * maxVcpus);
    const runStateSab = new SharedArrayBuffer(4);
    // A restored guest starts paused: every thread parks before the guest runs (protocol.ts).
    if (restore) Atomics.store(new Int32Array(runStateSab), 0, RunState.Pause);
    const controlSab = new SharedArrayBuffer(4 * DeviceControl.Words);
    const hotplug = new MessageChannel();
    const deviceData: DeviceWorkerData = {
      shared, input: this.input.sab, serialFd, serialIrqfd, gedIrqfd, runState: runStateSab,
      memBelow4g: lowRamEnd(memSize), memAbove4g: memSize - lowRamEnd(memSize),
      vm: vm.handle(), virtio: virtioInits, verbose: this.opts.log !== undefined,
      pciSegments: this.virtio.pciSegments, serialCounters: this.serialCounters.buffer as SharedArrayBuffer,
      control: controlSab, hotplugPort: hotplug.port2, cpus: { max: maxVcpus, present: ncpu },
      // A restore's controller takes the saved state (its ranges, MINS bits) instead.
      ...(acpiArea !== null ? { memoryHotplug: { area: acpiArea, boot: restore ? [] : acpiBoot } } : {}),
      ...(restore ? { restore: { legacy: restore.state.devices, pciRoots: restore.state.pci.segments, ...(restore.state.memoryHotplug ? { memoryHotplug: restore.state.memoryHotplug } : {}), ...(restore.state.pciHotplug ? { pciHotplug: restore.state.pciHotplug } : {}) }, vmGenIdChanged: true } : {}),
    };
    deviceWorker.off('error', early);
    deviceWorker.postMessage(deviceData, [hotplug.port2]);
    let onRestored: (e: DeviceEvent) => void = () => {};
    const restored = new Promise<DeviceEvent>((r) => { onRestored = r; });
    const run: Running = {
      vm, mem: mem!, vcpus, vcpuWorkers: [], deviceWorker, shared, runState: new Int32Array(runStateSab),
      serialIrqfd, gedIrqfd, serialFd, ownsSerialFd, stopping: false, vcpuExited, deviceExited, stopped: null,
      control: new Int32Array(controlSab), controlWaiters: new Map(), parked: new Map(), restored, answerRestore: onRestored,
      hotplugPort: hotplug.port1, ejectsPending: new Set(), controlChain: Promise.resolve(),
      cpuHotplug: restore ? dsdtHasCpuHotplug(mem!) : cpuHotplug, maxVcpus, plug: new Int32Array(plugSab), plugSab,
      unplugged: new Set(), cpuRemovals: new Set(),
      acpiMemory: acpiArea !== null ? { ...acpiArea, hostAddress: acpiHost, plugged: acpiPlugged, nextSlot: ACPI_MEMORY_SLOT_BASE + Math.max(acpiBoot.length, 1) } : null,
    };
    // A restored guest's DSDT decides; its later reboots keep CPU hotplug.
    if (run.cpuHotplug) this.cpuHotplugAml = true;
    runRef = run;
    this.run = run;
    this.boots++;
    deviceWorker.on('message', (m: DeviceEvent) => this.onDeviceEvent(run, m));
    deviceWorker.on('error', (e) => this.fail(run, `device thread failed: ${e.stack ?? e.message}`));
    deviceWorker.once('exit', (code) => { if (!run.stopping) this.fail(run, `the device thread exited unexpectedly (code ${code})`); });
    for (const [i, v] of vcpus.entries()) {
      const w = vcpuWorkers[i]!;
      w.off('error', early);
      this.startVcpuThread(run, w, v, restore ? restore.state.pci.configAddress[i]! : undefined);
    }
    if (earlyFailure !== null) this.fail(run, earlyFailure);
    this.log(restore ? `guest restored (paused): ${ncpu} vCPU(s), ${fmtBytes(memSize)}` : `guest started: ${ncpu} vCPU(s), ${fmtBytes(memSize)}, ${this.kernelType} kernel`);
  }

  /**
   * A vCPU as the boot vCPUs and hot-plugged ones get it: CPUID (its APIC ID, a topology of
   * `topologyCpus`), the boot MSRs, LAPIC LINT0/LINT1, FPU. An AP waits for INIT/SIPI.
   */
  private createVcpu(vm: Vm, id: number, topologyCpus: number): Vcpu {
    this.supportedCpuid ??= this.hv!.getSupportedCpuid();
    const vcpu = vm.createVcpu(id);
    try {
      vcpu.setCpuid2(vcpuCpuid(this.supportedCpuid, id, topologyCpus, { hyperv: this.config.cpus.kvm_hyperv === true ? this.hypervCpuid(vcpu, id) : null }));
      vcpu.setMsrs(bootMsrEntries());
      vcpu.setupLapicLints();
      vcpu.setFpu(defaultFpu());
    } catch (e) {
      vcpu.close();
      throw e;
    }
    return vcpu;
  }

  /** Give vCPU `v` its thread `w` (spawned already) and watch it; `vcpuWorkers[v.id] = w`. */
  private startVcpuThread(run: Running, w: Worker, v: Vcpu, configAddress?: number): void {
    const id = v.id;
    const wd: VcpuWorkerData = {
      // Every device number of bus 0 goes to the device thread: a hot-plugged device may appear in any.
      handle: v.handle(), shared: run.shared, runState: run.runState.buffer as SharedArrayBuffer, pciSlots: PCI_SLOTS, plug: run.plugSab,
      ...(configAddress !== undefined ? { configAddress } : {}),
    };
    w.postMessage(wd);
    w.on('message', (m: VcpuEvent) => this.onVcpuEvent(run, m));
    w.on('error', (e) => this.fail(run, `vCPU thread failed: ${e.message}`));
    w.once('exit', (code) => { if (!run.stopping) this.fail(run, `vCPU ${id} thread exited unexpectedly (code ${code})`); });
    run.vcpuWorkers[id] = w;
  }

  /** vCPUs of the running guest that are plugged in (not ejected). */
  private activeVcpus(run: Running): Vcpu[] {
    return run.vcpus.filter((v) => !run.unplugged.has(v.id));
  }

  /**
   * vm.resize desired_vcpus (as Cloud Hypervisor on x86): up, the next vCPUs (a new vCPU and
   * thread, or one ejected before, its thread woken) are plugged in and the guest told through
   * the GED (CSCN: Notify(Cxxx, 1)); the guest onlines them itself (sysfs cpuN/online, or
   * udev). Down, the guest is asked to eject the highest ones (Notify(Cxxx, 3)): it offlines each
   * and runs _EJ0, then its thread parks ('vcpu-removed'). The configuration's boot_vcpus is the
   * new count at once (a reboot boots that many). VcpuRemovalPendingError while an eject asked
   * for has not come; VmError for a count outside 1..max_vcpus or a guest without CPU hotplug.
   */
  async resizeVcpus(desired: number): Promise<void> {
    const run = this.run;
    if (this.state !== 'Running' || !run || run.stopping) throw new VmError(`cannot resize the vCPUs of a VM in state ${this.state}`);
    const max = run.maxVcpus;
    if (!Number.isInteger(desired) || desired < 1 || desired > max) throw new VmError(`desired_vcpus must be an integer in 1..${max} (cpus.max_vcpus), got ${desired}`);
    if (run.cpuRemovals.size > 0) throw new VcpuRemovalPendingError(`the guest has not yet ejected vCPU(s) ${[...run.cpuRemovals].join(', ')}`);
    const active = this.activeVcpus(run).map((v) => v.id);
    if (desired === active.length) return;
    if (!run.cpuHotplug) throw new VmError('this guest has no CPU hotplug: boot it with cpus.max_vcpus above boot_vcpus');
    if (desired > active.length) {
      // The lowest ids not plugged in (the ones removed last come back first only by chance).
      const add: number[] = [];
      for (let id = 0; id < max && add.length < desired - active.length; id++) if (!active.includes(id)) add.push(id);
      for (const id of add) {
        await this.plugVcpu(run, id);
        this.config = { ...this.config, cpus: { ...this.config.cpus, boot_vcpus: this.activeVcpus(run).length } };
      }
    } else {
      const remove = active.filter((id) => id !== 0).slice(-(active.length - desired));
      for (const id of remove.reverse()) {
        const e = await this.deviceControl(run, DeviceControlOp.HotplugRemove, { type: 'cpu-remove', id });
        if (e.type !== 'done') throw new VmError(`cannot remove vCPU ${id}: ${e.type === 'state-error' ? e.message : 'unexpected answer'}`);
        run.cpuRemovals.add(id);
      }
      this.config = { ...this.config, cpus: { ...this.config.cpus, boot_vcpus: desired } };
    }
    this.log(`vCPUs resized to ${desired}${run.cpuRemovals.size > 0 ? ` (the guest is asked to eject ${[...run.cpuRemovals].join(', ')})` : ''}`);
  }

  /** Whether a vCPU removal asked of the guest is pending. */
  vcpuRemovalPending(): boolean {
    return (this.run?.cpuRemovals.size ?? 0) > 0;
  }

  /** Plug vCPU `id` into the running guest: its thread runs, the controller says present, the GED tells the guest. */
  private async plugVcpu(run: Running, id: number): Promise<void> {
    // A stop (or reboot) under way waits for the threads it knows of: none may start now.
    if (run.stopping || this.run !== run) throw new VmError(`cannot plug in vCPU ${id}: the VM is stopping`);
    if (run.unplugged.has(id)) {
      run.unplugged.delete(id);
      Atomics.store(run.plug, id, PlugState.Plugged);
      Atomics.notify(run.plug, id);
    } else {
      if (run.vcpus[id] !== undefined) throw new VmError(`vCPU ${id} is already plugged in`);
      const vcpu = this.createVcpu(run.vm, id, run.maxVcpus);
      const w = new Worker(new URL('./vcpu_worker.js', import.meta.url), THREAD_OPTIONS);
      run.vcpuExited[id] = new Promise<void>((r) => w.once('exit', () => r()));
      run.vcpus[id] = vcpu;
      this.startVcpuThread(run, w, vcpu);
    }
    const e = await this.deviceControl(run, DeviceControlOp.HotplugAdd, { type: 'cpu-add', id });
    if (e.type !== 'done') throw new VmError(`cannot plug in vCPU ${id}: ${e.type === 'state-error' ? e.message : 'unexpected answer'}`);
    this.log(`vCPU ${id}: plugged in`);
  }

  /** The guest ejected vCPU `id` (its _EJ0 ran; it had offlined it): park its thread, keep its fd. */
  private vcpuEjected(run: Running, id: number): void {
    run.cpuRemovals.delete(id);
    if (run.stopping || run.vcpus[id] === undefined || run.unplugged.has(id)) return;
    run.unplugged.add(id);
    Atomics.store(run.plug, id, PlugState.Unplugged);
    run.vcpus[id]!.kick();
    const active = this.activeVcpus(run).length;
    // A guest may eject a vCPU nobody asked it to (sysfs eject): the count follows.
    if (this.config.cpus.boot_vcpus > active) this.config = { ...this.config, cpus: { ...this.config.cpus, boot_vcpus: active } };
    this.log(`vCPU ${id}: removed (ejected by the guest)`);
    this.emit('vcpu-removed', id);
  }

  /**
   * cpus.kvm_hyperv: the hypervisor's Hyper-V emulation on for this vCPU, and the Hyper-V CPUID
   * leaves it gets (src/arch/x86_64/hyperv.ts). Before KVM_SET_CPUID2 (see Vcpu.enableHyperV).
   */
  private hypervCpuid(vcpu: Vcpu, id: number): CpuIdEntry[] {
    const support = vcpu.enableHyperV();
    try {
      const { entries, missing } = hypervLeaves({ supported: support.cpuid, synic: support.synic });
      if (id === 0) {
        this.log(`Hyper-V enlightenments on${support.synic ? '' : ' without SynIC (no KVM_CAP_HYPERV_SYNIC2)'}${missing.length ? `; the hypervisor lacks: ${missing.join(', ')}` : ''}`);
      }
      return entries;
    } catch (e) {
      if (e instanceof HyperVCpuidError) throw new VmError(`kvm_hyperv=on: ${e.message}`);
      throw e;
    }
  }

  private openSerialSink(): { fd: number; owned: boolean } {
    const s = this.config.serial;
    switch (s.mode) {
      case 'Tty': return { fd: this.opts.ttyFd ?? 1, owned: false };
      case 'File': {
        if (!s.file) throw new VmError('--serial file= needs a path');
        try {
          return { fd: openSync(s.file, 'w'), owned: true };
        } catch (e) {
          throw new VmError(`cannot open serial output file '${s.file}': ${(e as Error).message}`);
        }
      }
      case 'Null': case 'Off': return { fd: -1, owned: false };
      case 'Socket': {
        if (!s.socket) throw new VmError('--serial socket= needs a path');
        this.serialSocket ??= new SerialSocketSink({ path: s.socket, input: (b) => this.sendInput(b), log: (m) => this.log(m) });
        return { fd: this.serialSocket.fd, owned: false };
      }
      default: throw new VmError(`serial mode ${s.mode} is not supported yet (use tty, file=, null, off or socket=)`);
    }
  }

  /** Per-device counters of the virtio devices of the running guest, and the serial port's sink. */
  counters(): Record<string, Record<string, number>> {
    const c = this.virtio.counters();
    // Reported once the serial sink has dropped output (a sink that did not keep up).
    if (this.serialCounters[1]! > 0) c._serial = { tx_bytes: this.serialCounters[0]!, tx_dropped_bytes: this.serialCounters[1]! };
    return c;
  }

  /**
   * vm.resize desired_balloon: the balloon's new target in bytes (whole 4 KiB pages); the guest's
   * driver inflates or deflates towards it. Also the target of later guest runs.
   */
  resizeBalloon(bytes: number): void {
    if (!this.virtio.setBalloonTarget(bytes)) throw new VmError('the VM has no balloon device (--balloon)');
  }

  /**
   * vm.resize desired_ram with hotplug_method VirtioMem: the virtio-mem device's new
   * requested_size (bytes beyond memory.size, whole 2 MiB blocks; checked by the caller). The
   * guest's driver plugs or unplugs blocks towards it. Also what later guest runs request.
   */
  resizeVirtioMem(bytes: number): void {
    if (!this.virtio.setMemRequestedSize(bytes)) throw new VmError('the VM has no virtio-mem device (--memory hotplug_method=virtio-mem,hotplug_size=...)');
  }

  /**
   * vm.resize desired_ram with hotplug_method Acpi: `bytes` beyond memory.size in all (more than
   * now, whole 128 MiB blocks; checked by the caller). The next range of the hotplug area gets a
   * KVM memory slot and a memory device, and the GED tells the guest (its MSCN notifies the
   * device; Linux's acpi_memhotplug adds the memory, onlined as memhp_default_state says). Also
   * what later guest runs boot with (hotplugged_size).
   */
  resizeAcpiMemory(bytes: number): Promise<void> {
    // One at a time: each range starts where the last one ended.
    const next = this.acpiMemoryChain.then(() => this.addAcpiMemory(bytes));
    this.acpiMemoryChain = next.catch(() => undefined);
    return next;
  }

  private acpiMemoryChain: Promise<void> = Promise.resolve();

  private async addAcpiMemory(bytes: number): Promise<void> {
    const run = this.run;
    if (this.state !== 'Running' || !run || run.stopping) throw new VmError(`cannot add memory to a VM in state ${this.state}`);
    const a = run.acpiMemory;
    if (a === null) throw new VmError('this guest has no ACPI memory hotplug area (--memory hotplug_size=...)');
    const add = bytes - a.plugged;
    if (add === 0) return;
    if (add < 0) throw new VmError(`ACPI memory hotplug only adds memory: ${bytes} bytes is less than the ${a.plugged} plugged`);
    if (bytes > a.size) throw new VmError(`${bytes} bytes is more than the hotplug area (${a.size})`);
    const gpa = a.gpa + a.plugged;
    const slot = a.nextSlot;
    run.vm.setUserMemoryRegion({ slot, guestPhysAddr: BigInt(gpa), memorySize: add, userspaceAddr: a.hostAddress + BigInt(a.plugged) });
    a.nextSlot++;
    const e = await this.deviceControl(run, DeviceControlOp.HotplugAdd, { type: 'mem-add', gpa, size: add }).catch((err: Error) => ({ type: 'state-error' as const, seq: 0, message: err.message }));
    if (e.type !== 'done') {
      if (this.run === run && !run.stopping) { try { run.vm.setUserMemoryRegion({ slot, guestPhysAddr: BigInt(gpa), memorySize: 0, userspaceAddr: a.hostAddress + BigInt(a.plugged) }); } catch { /* gone with the VM */ } }
      throw new VmError(`cannot add ${fmtBytes(add)} of memory: ${e.type === 'state-error' ? e.message : 'unexpected answer'}`);
    }
    a.plugged = bytes;
    this.config = { ...this.config, memory: { ...this.config.memory, hotplugged_size: bytes } };
    this.log(`memory: ${fmtBytes(add)} added at 0x${gpa.toString(16)} (ACPI memory device; ${fmtBytes(this.config.memory.size + bytes)} in all)`);
  }

  /** virtio-mem's plugged_size (bytes the guest plugged); 0 without the device or a running guest. */
  virtioMemPluggedBytes(): number {
    return this.virtio.memPluggedBytes();
  }

  /** Bytes in the balloon as the guest's driver reports them (`actual`); 0 without one or a running guest. */
  balloonActualBytes(): number {
    return this.virtio.balloonActualBytes();
  }

  /** Feed host input (e.g. stdin) to the guest's serial port. Returns bytes accepted. */
  sendInput(bytes: Uint8Array): number {
    const n = this.input.push(bytes);
    if (this.run) ringDoorbell(this.run.shared.doorbell);
    return n;
  }

  private onDeviceEvent(run: Running, m: DeviceEvent): void {
    if (m.type === 'shutdown') void this.guestPowerOff(run);
    else if (m.type === 'reset') void this.guestReset(run, m.reason);
    else if (m.type === 'restored' || m.type === 'restore-error') run.answerRestore(m);
    else if (m.type === 'ejected') void this.deviceEjected(run, m.id);
    else if (m.type === 'cpu-ejected') this.vcpuEjected(run, m.id);
    else if (m.type === 'state' || m.type === 'state-error' || m.type === 'done') {
      const w = run.controlWaiters.get(m.seq);
      run.controlWaiters.delete(m.seq);
      w?.(m);
    }
  }

  /** Ask the device thread for its devices' state (the VM paused); its answer or a VmError. */
  private async deviceThreadState(run: Running): Promise<DeviceThreadState> {
    const e = await this.deviceControl(run, DeviceControlOp.SaveState);
    if (e.type === 'state') return e.state;
    throw new VmError(e.type === 'state-error' ? e.message : 'unexpected answer');
  }

  /**
   * vm.power-button: the GED latches a power button event and raises its interrupt; the guest's
   * ACPI button driver gets Notify(PWRB, 0x80) from _EVT (what it does then is up to the guest).
   * Paused, the press waits in the irqchip until resume.
   */
  async powerButton(): Promise<void> {
    const run = this.run;
    if ((this.state !== 'Running' && this.state !== 'Paused') || !run || run.stopping) throw new VmError(`cannot press the power button of a VM in state ${this.state}`);
    const e = await this.deviceControl(run, DeviceControlOp.PowerButton);
    if (e.type !== 'done') throw new VmError(e.type === 'state-error' ? e.message : 'unexpected answer');
  }

  /**
   * vm.add-disk / vm.add-net on a running VM: open the device's host side (the image, locked;
   * the tap), start it, put it on the lowest free slot of its segment and tell the guest. The
   * configuration gets the device (with its id) once the guest can see it. VmError / a
   * VirtioConfigError naming the problem otherwise, with nothing left open.
   */
  async addDevice(device: HotplugDevice): Promise<{ id: string; segment: number; slot: number }> {
    if ((this.state !== 'Running' && this.state !== 'Paused') || !this.run || this.run.stopping) throw new VmError(`cannot hot-plug a device into a VM in state ${this.state}`);
    // Paused (as CH, which adds to a paused VM too): the device is put on the bus and the GED's
    // interrupt waits in the irqchip; its I/O thread is paused with the others before the answer,
    // and no resume, pause or snapshot runs meanwhile.
    const paused = this.state === 'Paused';
    if (paused && this.transition) throw new VmError('cannot hot-plug a device: a pause or resume is in progress');
    if (paused) this.transition = true;
    let at: { segment: number; slot: number };
    let id: string;
    try {
      id = this.virtio.openHotplug(this.config, device);
      at = await this.hotplug(id);
      if (paused && this.state === 'Paused') await this.virtio.pause();
    } finally {
      if (paused) this.transition = false;
    }
    const c = this.configWithIds();
    // Disks and NICs keep their device number in the configuration (pci_device_id); virtio-fs
    // and vsock have no such field here.
    const placed = { id, pci_device_id: at.slot };
    if (device.kind === 'disk') this.config = { ...c, disks: [...(c.disks ?? []), { ...device.config, ...placed }] };
    else if (device.kind === 'net') this.config = { ...c, net: [...(c.net ?? []), { ...device.config, ...placed }] };
    else if (device.kind === 'fs') this.config = { ...c, fs: [...(c.fs ?? []), { ...device.config, id }] };
    else if (device.kind === 'pmem') this.config = { ...c, pmem: [...(c.pmem ?? []), { ...device.config, id }] };
    else this.config = { ...c, vsock: { ...device.config, id } };
    return { id, ...at };
  }

  /**
   * The configuration with every disk's and NIC's id written out (the ids the virtio manager
   * gave them at open: `_disk<i>`, `_net<i>` by position), so that removing one does not rename
   * the ones after it.
   */
  private configWithIds(): VmConfig {
    const c = this.config;
    // And their device numbers (pci_device_id), so that a restored snapshot or another boot
    // puts each where the guest saw it, whatever was added or removed before it.
    const at = (id: string) => { const p = this.virtio.placement(id); return p === undefined ? {} : { pci_device_id: p.slot }; };
    return {
      ...c,
      ...(c.disks ? { disks: c.disks.map((d, i) => { const id = d.id ?? `_disk${i}`; return { ...d, id, ...at(id) }; }) } : {}),
      ...(c.net ? { net: c.net.map((n, i) => { const id = n.id ?? `_net${i}`; return { ...n, id, ...at(id) }; }) } : {}),
      ...(c.fs ? { fs: c.fs.map((f, i) => ({ ...f, id: f.id ?? `_fs${i}` })) } : {}),
      ...(c.vsock ? { vsock: { ...c.vsock, id: c.vsock.id ?? '_vsock0' } } : {}),
    };
  }

  private dropFromConfig(id: string): void {
    const c = this.configWithIds();
    this.config = {
      ...c,
      ...(c.disks ? { disks: c.disks.filter((d) => d.id !== id) } : {}),
      ...(c.net ? { net: c.net.filter((d) => d.id !== id) } : {}),
      ...(c.fs ? { fs: c.fs.filter((f) => f.id !== id) } : {}),
    };
    if (c.vsock?.id === id) delete this.config.vsock;
  }

  /**
   * Hotplug (vm.add-disk, vm.add-net): the device `id`, opened by the virtio manager
   * (openHotplug), is started in the running guest and put on its bus; the guest is told
   * through the GED and scans the slot. On failure the device is removed again.
   */
  private async hotplug(id: string): Promise<{ segment: number; slot: number }> {
    const run = this.run;
    if ((this.state !== 'Running' && this.state !== 'Paused') || !run || run.stopping) {
      await this.virtio.remove(null, id);
      throw new VmError(`cannot hot-plug a device into a VM in state ${this.state}`);
    }
    // virtio-pmem: its file goes into guest physical memory first (the next memory slot).
    const memory = this.virtio.deviceMemory.find((d) => d.id === id);
    const memSlot = memory === undefined ? -1 : run.mem.regions.length + this.virtio.deviceMemory.indexOf(memory);
    const unmapMemory = () => {
      if (memory !== undefined) { try { run.vm.setUserMemoryRegion({ slot: memSlot, guestPhysAddr: BigInt(memory.gpa), memorySize: 0, userspaceAddr: memory.hostAddress }); } catch { /* not mapped */ } }
    };
    let init: VirtioPciInit;
    try {
      if (memory !== undefined) run.vm.setUserMemoryRegion({ slot: memSlot, guestPhysAddr: BigInt(memory.gpa), memorySize: memory.size, userspaceAddr: memory.hostAddress });
      init = await this.virtio.startHotplug(run.vm, id);
    } catch (e) {
      unmapMemory();
      await this.virtio.remove(run.vm, id);
      throw e;
    }
    if (this.run !== run || run.stopping) {
      // The guest stopped or rebooted meanwhile (its run released the device's thread).
      unmapMemory();
      await this.virtio.remove(null, id);
      throw new VmError(`cannot hot-plug ${id}: the guest stopped or rebooted meanwhile`);
    }
    const e = await this.deviceControl(run, DeviceControlOp.HotplugAdd, { type: 'add', device: init }).catch((err: Error) => ({ type: 'state-error' as const, seq: 0, message: err.message }));
    if (e.type !== 'done') {
      // A device thread that did not answer in time may still put the device on the bus: the
      // VM cannot go on with a device half there.
      if (e.type === 'state-error' && /did not answer/.test(e.message)) this.fail(run, `hot-plugging ${id}: ${e.message}`);
      unmapMemory();
      await this.virtio.remove(this.run === run ? run.vm : null, id);
      throw new VmError(`cannot put ${id} on its PCI bus: ${e.type === 'state-error' ? e.message : 'unexpected answer'}`);
    }
    this.virtio.commitHotplug(id);
    return { segment: init.segment ?? 0, slot: init.slot };
  }

  /**
   * vm.remove-device: ask the guest to eject `id` (GED, Notify(Sxx, 3)). Resolves when asked;
   * the device goes (and 'device-removed' is emitted) when the guest's _EJ0 runs.
   */
  async requestEject(id: string): Promise<void> {
    const run = this.run;
    if ((this.state !== 'Running' && this.state !== 'Paused') || !run || run.stopping) throw new VmError(`cannot remove a device from a VM in state ${this.state}`);
    const p = this.virtio.placement(id);
    if (p === undefined) throw new VmError(`no device '${id}'`);
    // Its file stays mapped into guest physical memory (a memory slot) for the VM's life.
    if (p.mapsMemory) throw new VmError(`'${id}' is a virtio-pmem device: removing one from a running VM is not supported`);
    if (!p.removable) throw new VmError(`'${id}' cannot be removed from a running VM (only disks, network, virtio-fs and vsock devices can)`);
    const e = await this.deviceControl(run, DeviceControlOp.HotplugRemove, { type: 'remove', id });
    if (e.type !== 'done') throw new VmError(`cannot remove ${id}: ${e.type === 'state-error' ? e.message : 'unexpected answer'}`);
    run.ejectsPending.add(id);
  }

  /** Whether the guest was asked to eject `id` and has not yet. */
  ejectPending(id: string): boolean {
    return this.run?.ejectsPending.has(id) ?? false;
  }

  /** The guest ejected `id` (it is off its bus): its I/O, eventfds and host files go, then 'device-removed'. */
  private async deviceEjected(run: Running, id: string): Promise<void> {
    // Stopping: the stop removes it with the other pending ejects (doStopGuest).
    if (run.stopping) { run.ejectsPending.add(id); return; }
    run.ejectsPending.delete(id);
    try {
      await this.virtio.remove(run.vm, id);
    } catch (e) {
      this.log(`${id}: releasing the ejected device failed: ${(e as Error).message}`);
    }
    this.dropFromConfig(id);
    this.log(`${id}: removed (ejected by the guest)`);
    this.emit('device-removed', id);
  }

  /**
   * One DeviceControl request to the device thread; its answer, or a VmError after DEVICE_STOP_MS.
   * Requests go one at a time (one Op/Seq slot); `hotplug` is the request's message on the
   * hotplug port, posted with its sequence number before the doorbell rings.
   */
  private deviceControl(run: Running, op: number, hotplug?: HotplugPayload): Promise<DeviceEvent> {
    const next = run.controlChain.then(() => this.deviceControlNow(run, op, hotplug));
    run.controlChain = next.then(() => undefined, () => undefined);
    return next;
  }

  private deviceControlNow(run: Running, op: number, hotplug?: HotplugPayload): Promise<DeviceEvent> {
    return new Promise((resolve, reject) => {
      const seq = (Atomics.load(run.control, DeviceControl.Seq) + 1) | 0;
      if (hotplug !== undefined) run.hotplugPort.postMessage({ ...hotplug, seq } as HotplugRequest);
      const timer = setTimeout(() => {
        run.controlWaiters.delete(seq);
        reject(new VmError(`the device thread did not answer within ${DEVICE_STOP_MS} ms`));
      }, DEVICE_STOP_MS);
      run.controlWaiters.set(seq, (e) => {
        clearTimeout(timer);
        resolve(e);
      });
      Atomics.store(run.control, DeviceControl.Op, op);
      Atomics.store(run.control, DeviceControl.Seq, seq);
      ringDoorbell(run.shared.doorbell);
    });
  }

  /**
   * Everything a snapshot or a migration takes of the paused VM: the state of every part (the
   * device thread's and the I/O threads' answers, then the hypervisor's) and its guest RAM.
   */
  async collectState(what: string): Promise<SnapshotParts> {
    const run = this.run;
    if (this.state !== 'Paused' || !run) throw new VmError(`cannot ${what} a VM in state ${this.state}: pause it first`);
    if (run.stopping) throw new VmError(`cannot ${what}: the VM is stopping`);
    if (this.transition) throw new VmError(`cannot ${what}: a device is being hot-plugged into the paused VM, or a resume is in progress`);
    const active = this.activeVcpus(run);
    const ncpu = active.length;
    if (run.parked.size < ncpu) throw new VmError(`cannot ${what}: ${ncpu - run.parked.size} of ${ncpu} vCPU(s) have not stopped yet`);
    // A restore builds vCPUs 0..boot_vcpus-1 from the saved ones.
    if (run.cpuRemovals.size > 0) throw new VmError(`cannot ${what}: the guest has not yet ejected vCPU(s) ${[...run.cpuRemovals].join(', ')} (vm.resize)`);
    if (active.some((v, i) => v.id !== i) || ncpu !== this.config.cpus.boot_vcpus) throw new VmError(`cannot ${what}: the plugged-in vCPUs (${active.map((v) => v.id).join(', ')}) are not vCPUs 0..${this.config.cpus.boot_vcpus - 1}`);
    const devices = await this.deviceThreadState(run);
    // The controller is rebuilt at restore from boot_vcpus: every change must have reached the guest.
    const unseen = (devices.cpuHotplug?.status ?? []).flatMap((s, id) => ((s & (CPU_STATUS_INSERTING | CPU_STATUS_REMOVING)) !== 0 ? [id] : []));
    if (unseen.length > 0) throw new VmError(`cannot ${what}: the guest has not yet taken the CPU hotplug event of vCPU(s) ${unseen.join(', ')} (resume it a moment first)`);
    const virtio = await this.virtio.getState();
    if (this.state !== 'Paused' || this.run !== run || run.stopping) throw new VmError(`cannot ${what}: the VM stopped meanwhile`);
    const hypervisor = saveHypervisorState(run.vm, active);
    const configAddress = active.map((v) => run.parked.get(v.id) ?? 0);
    return {
      config: this.config, hypervisor, devices: devices.legacy, pci: { segments: devices.pciRoots, configAddress }, virtio,
      memoryHotplug: devices.memoryHotplug ?? null, pciPlacement: this.virtio.placements(), pciHotplug: devices.pciHotplug ?? null, mem: run.mem,
    };
  }

  /**
   * Write a snapshot of the paused VM into the existing directory `dir` (config.json, state.json,
   * memory-ranges; src/vmm/snapshot.ts). The VM stays paused.
   */
  async snapshot(dir: string): Promise<SnapshotWritten> {
    return writeSnapshot(dir, await this.collectState('snapshot'));
  }

  private onVcpuEvent(run: Running, m: VcpuEvent): void {
    switch (m.type) {
      case 'shutdown': void this.guestPowerOff(run); break;
      case 'reset': void this.guestReset(run, m.reason); break;
      case 'error': this.fail(run, m.message); break;
      case 'paused':
        if (Atomics.load(run.runState, 0) === RunState.Pause) run.parked.set(m.id, m.configAddress);
        this.emit('vcpu-paused', m.id);
        break;
      case 'stopped': this.log(`vCPU ${m.id} stopped after ${m.exits} exits (${m.deviceExits} to devices): ${JSON.stringify(m.kinds)}`); break;
      case 'started': this.log(`vCPU ${m.id} thread running`); break;
      case 'unplugged': this.log(`vCPU ${m.id} thread parked (ejected)`); break;
      default: break;
    }
  }

  private async guestPowerOff(run: Running): Promise<void> {
    if (run.stopping || this.run !== run) return;
    this.log('guest powered off');
    await this.stopGuest(run);
    this.finish({ reason: 'poweroff' });
  }

  private async guestReset(run: Running, reason: string): Promise<void> {
    if (run.stopping || this.run !== run) return;
    this.log(`guest reset (${reason}): rebooting`);
    // A triple fault is a crash of the guest (or of a hypervisor under it): a warning. Any other
    // reset (i8042, ACPI reset register) is the guest's own reboot: a line too, so that a reboot
    // nobody asked for shows in the VMM's output (with -v the log has both).
    if (!this.opts.log) {
      process.stderr.write(reason.startsWith('triple fault') ? `stratovisor: warning: guest reset by a ${reason}\n` : `stratovisor: guest reset (${reason}): rebooting\n`);
    }
    this.emit('rebooting');
    await this.stopGuest(run);
    if (this.shutdownRequested) {
      this.finish({ reason: 'shutdown' });
      return;
    }
    try {
      this.startGuest();
      this.emit('rebooted');
    } catch (e) {
      this.finish({ reason: 'error', message: `reboot failed: ${(e as Error).message}` });
    }
  }

  private fail(run: Running, message: string): void {
    this.log(`error: ${message}`);
    if (run.stopping || this.run !== run) return;
    void this.stopGuest(run).then(() => this.finish({ reason: 'error', message }));
  }

  private finish(info: VmExitInfo): void {
    if (this.finished) return;
    this.finished = true;
    this.virtio.close();
    this.serialSocket?.close();
    this.serialSocket = null;
    this.closeImages();
    this.state = 'Shutdown';
    this.emit('shutdown', info);
    this.exitResolve?.(info);
    this.exitResolve = null;
  }

  /** Stop every thread of the running guest and release what it holds; idempotent. */
  private stopGuest(run: Running): Promise<void> {
    run.stopped ??= this.doStopGuest(run);
    return run.stopped;
  }

  private async doStopGuest(run: Running): Promise<void> {
    run.stopping = true;
    Atomics.store(run.runState, 0, RunState.Stop);
    Atomics.notify(run.runState, 0);
    // Ejected vCPUs' threads wait on their PlugState word.
    for (let id = 0; id < run.plug.length; id++) { Atomics.store(run.plug, id, PlugState.Stop); Atomics.notify(run.plug, id); }
    for (const v of run.vcpus) v?.kick();
    await Promise.all(run.vcpuExited);
    ringDoorbell(run.shared.doorbell, true);
    // Bounded: the device thread never blocks on a sink (sink.ts), but a stop must end whatever
    // a thread does. One that will not exit keeps what it holds (VM fd, serial fds) open.
    const deviceGone = await exitsWithin(run.deviceExited, run.deviceWorker, DEVICE_STOP_MS);
    const vs = await this.virtio.stop(run.vm);
    run.hotplugPort.close();
    // Ejects the guest never answered: the device goes now, as asked (a later boot lacks it).
    for (const id of run.ejectsPending) {
      await this.virtio.remove(null, id);
      this.dropFromConfig(id);
      this.log(`${id}: removed (the guest stopped before it ejected the device)`);
      this.emit('device-removed', id);
    }
    run.ejectsPending.clear();
    for (const v of run.vcpus) v?.close();
    try { run.vm.unregisterIrqfd(run.serialIrqfd, IRQ_COM1); } catch { /* the VM goes away next */ }
    try { run.vm.unregisterIrqfd(run.gedIrqfd, IRQ_GED); } catch { /* the VM goes away next */ }
    const releaseDeviceFds = () => {
      libc.close(run.serialIrqfd);
      libc.close(run.gedIrqfd);
      if (run.ownsSerialFd) closeSync(run.serialFd);
      run.vm.close();
    };
    if (deviceGone) {
      releaseDeviceFds();
    } else {
      this.stuckThreads++;
      this.log(`the device thread did not stop within ${DEVICE_STOP_MS} ms: the VM and serial fds stay open until it exits`);
      void run.deviceExited.then(releaseDeviceFds);
    }
    if (vs.stuck.length === 0) {
      run.mem.free();
    } else {
      // A thread may still be inside a kernel copy into or out of guest RAM: make the range
      // inaccessible (a late copy fails with EFAULT) and unmap it only when the thread is gone.
      this.stuckThreads += vs.stuck.length;
      const ranges = run.mem.retire(vs.allExited);
      this.log(`guest RAM (${ranges.map(([a, n]) => `0x${a.toString(16)}+${fmtBytes(n)}`).join(', ')}) made inaccessible (PROT_NONE) until the stuck I/O thread(s) of ${vs.stuck.join(', ')} exit`);
    }
    if (this.run === run) this.run = null;
  }

  /**
   * vm.pause: stop the vCPUs, then quiesce every device, and only then report Paused. The vCPUs
   * are asked to stop (RunState.Pause and a kick) and each acknowledges once parked; legacy
   * serial input from the host stays in its ring (the device thread does not feed the UART while
   * paused); then every virtio device finishes the requests it had taken, publishes them and
   * stops taking any (VirtioManager.pause). Asynchronous: this thread never blocks. A device that
   * does not quiesce within `deviceTimeoutMs` fails the pause: everything is resumed and a
   * VmError names it. Only one pause or resume runs at a time.
   */
  async pause(opts: { vcpuAckTimeoutMs?: number; deviceTimeoutMs?: number } = {}): Promise<void> {
    const run = this.run;
    if (this.state !== 'Running' || !run) throw new VmError(`cannot pause a VM in state ${this.state}`);
    if (run.stopping) throw new VmError('cannot pause: the VM is stopping');
    if (this.transition) throw new VmError('cannot pause: a pause or resume is already in progress');
    this.transition = true;
    try {
      const active = this.activeVcpus(run);
      const ncpu = active.length;
      const acked = new Set<number>();
      let onPaused: ((id: number) => void) | undefined;
      let timer: NodeJS.Timeout | undefined;
      const parked = new Promise<boolean>((resolve) => {
        onPaused = (id: number) => { acked.add(id); if (acked.size >= ncpu) resolve(true); };
        this.on('vcpu-paused', onPaused);
        timer = setTimeout(() => resolve(false), opts.vcpuAckTimeoutMs ?? 10_000);
      });
      try {
        Atomics.store(run.runState, 0, RunState.Pause);
        for (const v of active) v.kick();
        // CH waits for its vCPU threads to park too; one that does not answer is logged (its
        // KVM_RUN returns on the kick; only a thread busy in the device thread could be late).
        if (!(await parked)) this.log(`pause: only ${acked.size} of ${ncpu} vCPU(s) acknowledged in time`);
      } finally {
        clearTimeout(timer);
        if (onPaused) this.off('vcpu-paused', onPaused);
      }
      if (run.stopping || this.run !== run) throw new VmError('the VM stopped while it was being paused');
      try {
        await this.virtio.pause(opts.deviceTimeoutMs ?? 10_000);
      } catch (e) {
        // Not quiesced: the VM goes on running, as it was.
        await this.virtio.resume(opts.deviceTimeoutMs ?? 10_000).catch(() => {});
        if (!run.stopping) {
          Atomics.store(run.runState, 0, RunState.Run);
          Atomics.notify(run.runState, 0);
        }
        throw new VmError(`cannot pause: ${(e as Error).message}`);
      }
      if (run.stopping || this.run !== run) throw new VmError('the VM stopped while it was being paused');
      this.state = 'Paused';
    } finally {
      this.transition = false;
    }
  }

  /**
   * vm.resume: devices first (each looks at every queue once: what the guest posted before the
   * pause is served), then the vCPUs. A device that does not acknowledge in time is logged; it
   * resumes when its thread gets to the request.
   */
  async resume(opts: { deviceTimeoutMs?: number } = {}): Promise<void> {
    const run = this.run;
    if (this.state !== 'Paused' || !run) throw new VmError(`cannot resume a VM in state ${this.state}`);
    if (run.stopping) return; // the stop in progress wins; its Stop state must stay
    if (this.transition) throw new VmError('cannot resume: a pause or resume is already in progress');
    this.transition = true;
    try {
      try {
        await this.virtio.resume(opts.deviceTimeoutMs ?? 10_000);
      } catch (e) {
        this.log(`resume: ${(e as Error).message}`);
      }
      if (run.stopping || this.run !== run) return;
      run.parked.clear();
      Atomics.store(run.runState, 0, RunState.Run);
      Atomics.notify(run.runState, 0);
      this.state = 'Running';
    } finally {
      this.transition = false;
    }
  }

  /**
   * The saved state of every virtio-pci device (transport registers, queues, device-specific
   * part), taken by the I/O threads; only while Paused.
   */
  async virtioState(): Promise<VirtioDeviceState[]> {
    if (this.state !== 'Paused' || !this.run) throw new VmError(`cannot save device state of a VM in state ${this.state} (pause it first)`);
    return this.virtio.getState();
  }

  /** Stop the guest from the host side (API vm.shutdown, SIGTERM). */
  async shutdown(): Promise<void> {
    this.shutdownRequested = true;
    const run = this.run;
    // stopGuest() wakes paused vCPUs too (Stop + notify), and waits for a stop already under way.
    if (run) await this.stopGuest(run);
    this.finish({ reason: 'shutdown' });
  }

  /** Release the hypervisor handle (after the guest has stopped). */
  close(): void {
    this.hv?.close();
    this.hv = null;
  }
}

/** Whether the guest's DSDT (in its RAM, e.g. a restored one) has the CPU hotplug methods (cpuHotplugAml). */
function dsdtHasCpuHotplug(mem: GuestMemory): boolean {
  try {
    const dsdt = readAcpiTables(mem, RSDP_POINTER).get('DSDT');
    return dsdt !== undefined && Buffer.from(dsdt).includes('CSCN', 0, 'latin1');
  } catch {
    return false;
  }
}

/** `p`, or a VmError saying `what` after `ms`. */
function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new VmError(`restore failed: ${what} within ${ms} ms`)), ms); });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

/** How long a stop waits for the device thread to exit, then again after terminate(). */
const DEVICE_STOP_MS = 5000;

/** Whether `w` exits within `ms` by itself or, failing that, within `ms` after terminate(). */
async function exitsWithin(exited: Promise<void>, w: Worker, ms: number): Promise<boolean> {
  let done = false;
  const mark = exited.then(() => { done = true; });
  const sleep = () => new Promise<void>((r) => setTimeout(r, ms).unref());
  await Promise.race([mark, sleep()]);
  if (done) return true;
  await Promise.race([w.terminate().then(() => undefined), mark, sleep()]);
  return done;
}

export function fmtBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let u = 0;
  let v = n;
  while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
  return `${Number.isInteger(v) ? v : v.toFixed(1)} ${units[u]}`;
}
