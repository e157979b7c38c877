// Stratovisor as a Node library: a typed API over the same VMM core (VmmCore) that the REST
// API and the command line drive.
//
//   import { createVm } from 'stratovisor';
//   const vmm = await createVm({ payload: { kernel: 'bzImage', initramfs: 'initrd', cmdline: 'console=ttyS0' },
//                                serial: { mode: 'Tty' } });
//   vmm.on('event', (e) => console.log(e.source, e.event));
//   await vmm.boot();
//   ...
//   await vmm.close();

import { EventEmitter, on } from 'node:events';
import {
  type VmCounters,
  type VmInfo,
  type VmmController,
  type VmmPingResponse,
  type VmState,
  type RestoreConfig,
  type PciDeviceInfo,
  type VmResize,
} from './api/controller.js';
import { EventMonitor, withLifecycleEvents, type EventMonitorTarget, type LifecycleEvent } from './api/events.js';
import { ApiServer, parseApiSocketArg, type ApiSocketTarget } from './api/server.js';
import { VmmCore } from './vmm/controller.js';
import { createVmConfig, defaultDiskConfig, defaultNetConfig, defaultPmemConfig, type DeepPartial, type DiskConfig, type NetConfig, type PmemConfig, type VmConfig, type VmConfigInput } from './vmm/config.js';
import type { VmExitInfo } from './vmm/vm.js';

export type { VmConfig, VmConfigInput } from './vmm/config.js';
export { createVmConfig, validateVmConfig, VmConfigError } from './vmm/config.js';
export type { VmCounters, VmInfo, VmmController, VmmPingResponse, VmState, ApiErrorKind, RestoreConfig, VmResize } from './api/controller.js';
export { ApiError, VmNotCreatedError, VmStateError, VmAlreadyCreatedError, NotImplementedError } from './api/controller.js';
export type { LifecycleEvent, EventMonitorTarget } from './api/events.js';
export { EventMonitor } from './api/events.js';
export { ApiServer } from './api/server.js';
export type { ApiSocketTarget } from './api/server.js';
export { VmmCore } from './vmm/controller.js';
export type { VmmCoreOptions } from './vmm/controller.js';
export { VmError } from './vmm/vm.js';
export { ConsoleServer, parseBootRequest } from './console/server.js';
export type { ConsoleServerOptions, BootRequest } from './console/server.js';
export type { VmExitInfo } from './vmm/vm.js';

export interface StratovisorOptions {
  /** fd the guest's serial output goes to when serial mode is Tty (default 1, stdout). */
  ttyFd?: number;
  /** Also write lifecycle events as JSON lines (like --event-monitor). */
  eventMonitor?: EventMonitorTarget;
  /** Diagnostic lines. */
  log?: (msg: string) => void;
}

export interface StratovisorEvents {
  /** A lifecycle event (source "vmm" or "vm"), as written by --event-monitor. */
  event: [LifecycleEvent];
  /** The guest powered off (reason 'poweroff') or the VM failed (reason 'error'). */
  exit: [VmExitInfo];
}

/** One VMM holding at most one VM, like one cloud-hypervisor process. */
export class Stratovisor extends EventEmitter<StratovisorEvents> {
  /** The core shared with the REST API (`serve`). */
  readonly core: VmmCore;
  readonly monitor: EventMonitor;
  /** The core with lifecycle events around each action: what the REST API calls. */
  readonly controller: VmmController;
  private server: ApiServer | undefined;
  private closed = false;

  constructor(opts: StratovisorOptions = {}) {
    super();
    this.monitor = new EventMonitor(opts.eventMonitor);
    this.monitor.on('event', (e) => this.emit('event', e));
    const vm = { ...(opts.ttyFd !== undefined ? { ttyFd: opts.ttyFd } : {}), ...(opts.log ? { log: opts.log } : {}) };
    this.core = new VmmCore({ vm, monitor: this.monitor, ...(opts.log ? { log: opts.log } : {}) });
    this.core.on('guest-exit', (info) => this.emit('exit', info));
    this.controller = withLifecycleEvents(this.core, this.monitor);
    this.monitor.emitEvent('vmm', 'starting');
  }

  ping(): VmmPingResponse {
    return this.controller.ping();
  }

  /** vm.create: a full VmConfig, or a partial one completed with Cloud Hypervisor's defaults. */
  async create(config: VmConfigInput | VmConfig): Promise<void> {
    await this.controller.createVm(createVmConfig(config));
  }

  boot(): Promise<void> {
    return this.controller.bootVm();
  }

  pause(): Promise<void> {
    return this.controller.pauseVm();
  }

  resume(): Promise<void> {
    return this.controller.resumeVm();
  }

  /** vm.snapshot: the paused VM into the existing directory of a file:// URL (config.json, state.json, memory-ranges). */
  async snapshot(destinationUrl: string): Promise<void> {
    if (this.controller.snapshotVm === undefined) throw new Error('vm.snapshot is not available on this controller');
    await this.controller.snapshotVm(destinationUrl);
  }

  /**
   * vm.restore: with no VM created, build the VM of a snapshot directory (file:// URL) and
   * give it its saved state; it is Paused afterwards (Running with `resume: true`).
   */
  async restore(config: RestoreConfig): Promise<void> {
    if (this.controller.restoreVm === undefined) throw new Error('vm.restore is not available on this controller');
    await this.controller.restoreVm(config);
  }

  shutdown(): Promise<void> {
    return this.controller.shutdownVm();
  }

  reboot(): Promise<void> {
    return this.controller.rebootVm();
  }

  powerButton(): Promise<void> {
    return this.controller.powerButton();
  }

  /**
   * vm.add-disk: before boot the disk joins the configuration (undefined); on a running VM it is
   * hot-plugged and this resolves with its id and PCI address ("0000:00:06.0").
   */
  addDisk(disk: DeepPartial<DiskConfig> & { path: string }): Promise<PciDeviceInfo | undefined> {
    return this.core.addDisk(defaultDiskConfig(disk));
  }

  /** vm.add-net: as addDisk, for a NIC (a tap the VMM opens by name, or one it creates). */
  addNet(net: DeepPartial<NetConfig> = {}): Promise<PciDeviceInfo | undefined> {
    return this.core.addNet(defaultNetConfig(net));
  }

  /** vm.add-pmem: as addDisk, for a virtio-pmem device (a running VM keeps it: it cannot be removed). */
  addPmem(pmem: DeepPartial<PmemConfig> & { file: string }): Promise<PciDeviceInfo | undefined> {
    return this.core.addPmem(defaultPmemConfig(pmem));
  }

  /**
   * vm.remove-device: ask the guest to eject the device; a 'device-removed' lifecycle event
   * (source 'vm') follows once it has.
   */
  removeDevice(id: string): Promise<void> {
    return this.core.removeDevice(id);
  }

  /**
   * vm.resize: `desired_vcpus` plugs vCPUs in or asks the guest to eject them (up to
   * cpus.max_vcpus; an ApiError 429 while a removal is pending), `desired_balloon` is the
   * balloon's target, `desired_ram` the guest's memory: with a virtio-mem device (memory
   * hotplug_method "VirtioMem") boot memory plus what it plugs, with ACPI memory hotplug (the
   * default method, a hotplug_size) a new memory device (only more, whole 128 MiB blocks);
   * before boot they only change the configuration.
   */
  async resize(r: VmResize): Promise<void> {
    if (this.controller.resizeVm === undefined) throw new Error('vm.resize is not available on this controller');
    await this.controller.resizeVm(r);
  }

  delete(): Promise<void> {
    return this.controller.deleteVm();
  }

  info(): VmInfo {
    return this.controller.info();
  }

  /** The VM's state, or undefined when none is created (info() would throw). */
  get state(): VmState | undefined {
    return this.core.vmState;
  }

  counters(): VmCounters {
    return this.controller.counters();
  }

  /** Type into the guest's serial port (when serial is Tty). Returns bytes accepted. */
  sendInput(data: string | Uint8Array): number {
    return this.core.sendInput(typeof data === 'string' ? Buffer.from(data) : data);
  }

  /** Lifecycle events as an async iterator (ends when `signal` aborts). */
  async *events(signal?: AbortSignal): AsyncGenerator<LifecycleEvent> {
    try {
      for await (const [e] of on(this.monitor, 'event', signal ? { signal } : {})) yield e as LifecycleEvent;
    } catch (e) {
      if ((e as Error).name !== 'AbortError') throw e;
    }
  }

  /** Resolves with the next event named `event` (from `source`, default "vm"). */
  waitFor(event: string, source = 'vm'): Promise<LifecycleEvent> {
    return new Promise((resolve) => {
      const off = this.monitor.subscribe((e) => {
        if (e.event === event && e.source === source) {
          off();
          resolve(e);
        }
      });
    });
  }

  /** Serve the Cloud Hypervisor REST API for this VMM on a Unix socket ("path", "path=…", "fd=N"). */
  async serve(socket: string | ApiSocketTarget): Promise<ApiServer> {
    if (this.server !== undefined) throw new Error('the API is already being served');
    const target = typeof socket === 'string' ? parseApiSocketArg(socket) : socket;
    this.server = await ApiServer.listen({ controller: this.controller, socket: target });
    // vmm.shutdown over the API has already stopped the VM: only release the rest.
    this.server.on('vmm-shutdown', () => { void this.release(true); });
    return this.server;
  }

  /** vmm.shutdown: stop and delete the VM, stop serving the API, close the event file. */
  close(): Promise<void> {
    return this.release(false);
  }

  private async release(viaApi: boolean): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (!viaApi) await this.controller.shutdownVmm();
    await this.server?.close();
    await this.monitor.close();
  }
}

/** A Stratovisor with `config` created (not booted). */
export async function createVm(config: VmConfigInput | VmConfig, opts: StratovisorOptions = {}): Promise<Stratovisor> {
  const s = new Stratovisor(opts);
  await s.create(config);
  return s;
}
