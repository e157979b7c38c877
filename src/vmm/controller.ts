// The VMM core: at most one VM (its configuration and, once booted, a VirtualMachine), driven by
// the HTTP API (src/api), the command line and the Node library through one `VmmController`.
//
// After Cloud Hypervisor's vmm/src/lib.rs (Vmm::vm_create / vm_boot / vm_pause / vm_resume /
// vm_shutdown / vm_reboot / vm_delete / vmm_shutdown):
// - vm.create stores the configuration; nothing is built until vm.boot.
// - vm.boot builds a VirtualMachine from the stored configuration. A VirtualMachine boots once,
//   so boot after Shutdown (allowed by CH) builds a fresh one from the same configuration.
// - vm.reboot from the host stops the running VM and boots a fresh one (CH vm_reboot does the
//   same: shutdown, then a new Vm from the config). A reboot the guest asks for is handled
//   inside VirtualMachine; it is reported here as 'rebooting'/'rebooted' events.
// - vm.shutdown stops the guest and keeps the configuration; vm.delete forgets it.
// - A guest power-off moves the VM to Shutdown and emits a 'vm' 'shutdown' event.
// Wrong-state requests are answered by `nextVmState` (404 not created, 405 wrong state).

import { EventEmitter } from 'node:events';
import {
  ApiError,
  BadRequestError,
  VmAlreadyCreatedError,
  VmNotCreatedError,
  VmStateError,
  nextVmState,
  type PciDeviceInfo,
  pingResponse,
  type RestoreConfig,
  type SendMigrationData,
  type ReceiveMigrationData,
  type VmCounters,
  type VmInfo,
  type VmmController,
  type VmmPingResponse,
  type VmResize,
  type VmState,
} from '../api/controller.js';
import type { EventMonitor } from '../api/events.js';
import { acpiHotplugAreaSize, assertValidVmConfig, balloonSizeIssue, desiredRamIssue, hotplugRegionSize, validateVmConfig, virtioMemRegionSize, type DiskConfig, type FsConfig, type NetConfig, type PmemConfig, type VmConfig, type VsockConfig } from './config.js';
import { VirtioConfigError, type HotplugDevice } from './virtio_manager.js';
import * as libc from '../sys/libc.js';
import { VcpuRemovalPendingError, VirtualMachine, VmError, type VirtualMachineOptions, type VmExitInfo } from './vm.js';
import { readSnapshot, SnapshotError, snapshotDirectory } from './snapshot.js';
import { StateFormatError } from '../snapshot/codec.js';
import { MigrationError, parseMigrationUrl, type MigrationAddress } from '../migration/protocol.js';
import { receiveMigration, sendMigration } from './migration.js';

export interface VmmCoreOptions {
  /** Passed to every VirtualMachine built (serial tty fd, log, hypervisor). */
  vm?: VirtualMachineOptions;
  /** Where guest-initiated lifecycle changes (power-off, reboot) are reported. */
  monitor?: EventMonitor;
  /** Diagnostics. */
  log?: (msg: string) => void;
  /** vmm.ping "features". */
  features?: string[];
  /**
   * How long vm.pause waits for every vCPU to acknowledge that it stopped (CH waits for its
   * vCPU threads to park). Default 10 s; after that the devices are quiesced anyway and the
   * delay is logged.
   */
  pauseAckTimeoutMs?: number;
}

export interface VmmCoreEvents {
  /** A VirtualMachine was built and booted (API boot, host reboot). */
  'vm-booted': [VirtualMachine];
  /** The guest stopped on its own: it powered off, or the VM failed (reason 'error'). */
  'guest-exit': [VmExitInfo];
  /** The guest reset itself and was booted again. */
  'guest-rebooted': [];
  /** vm.send-migration succeeded: the VM runs elsewhere now (the CLI's VMM exits). */
  migrated: [];
}

/** Holds at most one VM and implements the API's lifecycle on real VirtualMachines. */
export class VmmCore extends EventEmitter<VmmCoreEvents> implements VmmController {
  private config: VmConfig | undefined;
  private vm: VirtualMachine | undefined;
  private state: VmState | undefined;
  private readonly opts: VmmCoreOptions;
  /** vmm.shutdown was requested: no new VM may be created. */
  private shutDown = false;
  /** VMs being stopped by the host: their own 'shutdown' event is not a guest power-off. */
  private readonly hostStopping = new Set<VirtualMachine>();
  private readonly vmListeners = new Map<VirtualMachine, { shutdown: (i: VmExitInfo) => void; rebooting: () => void; rebooted: () => void; deviceRemoved: (id: string) => void; vcpuRemoved: () => void }>();

  constructor(opts: VmmCoreOptions = {}) {
    super();
    this.opts = opts;
  }

  private log(msg: string): void {
    this.opts.log?.(msg);
  }

  /** The lifecycle state (undefined: no VM created). */
  get vmState(): VmState | undefined {
    return this.state;
  }

  /** The VirtualMachine currently built, if any (Running or Paused; or the last one, Shutdown). */
  get machine(): VirtualMachine | undefined {
    return this.vm;
  }

  ping(): VmmPingResponse {
    return pingResponse(this.opts.features ?? ['kvm']);
  }

  async createVm(config: VmConfig): Promise<void> {
    if (this.shutDown) throw new Error('the VMM is shutting down');
    const next = nextVmState(this.state, 'create');
    // The API validated the body already; the library and CLI paths come through here too.
    assertValidVmConfig(config);
    this.config = config;
    this.state = next;
  }

  /** vm.add-vsock: before vm.boot into the configuration; on a running VM hot-plugged. At most one per VM (as Cloud Hypervisor). */
  async addVsock(vsock: VsockConfig): Promise<PciDeviceInfo | undefined> {
    const config = this.config;
    if (config === undefined) throw new VmNotCreatedError('add a vsock device');
    if (this.state === 'Running' || this.state === 'Paused') return this.addDevice({ kind: 'vsock', config: vsock });
    if (this.state !== 'Created') {
      throw new ApiError(500, 'InvalidState', `cannot add a vsock device: the VM is ${(this.state ?? 'not created').toLowerCase()}; add it before vm.boot or while it runs or is paused`);
    }
    if (config.vsock !== undefined) throw new BadRequestError('cannot add a vsock device: the VM already has one (at most one per VM)');
    const next: VmConfig = { ...config, vsock };
    const issues = validateVmConfig(next);
    if (issues.length > 0) {
      const dup = issues.find((i) => i.path === 'vsock.id' && /already used/.test(i.message));
      if (dup !== undefined) throw new ApiError(409, 'BadRequest', `cannot add a vsock device: id ${dup.message}`);
      throw new BadRequestError(`invalid vsock device: ${issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`);
    }
    this.config = next;
    return undefined;
  }

  async bootVm(): Promise<void> {
    const next = nextVmState(this.state, 'boot');
    await this.startFresh();
    this.state = next;
  }

  async pauseVm(): Promise<void> {
    const next = nextVmState(this.state, 'pause');
    const vm = this.vm!;
    // The vCPUs park, then every device quiesces (VirtualMachine.pause); answered after both.
    await vm.pause({ vcpuAckTimeoutMs: this.opts.pauseAckTimeoutMs ?? 10_000 });
    // The guest may have powered off while we waited.
    if (this.vm === vm && this.state === 'Running') this.state = next;
  }

  async snapshotVm(destinationUrl: string): Promise<void> {
    nextVmState(this.state, 'snapshot');
    let dir: string;
    try {
      dir = snapshotDirectory(destinationUrl);
    } catch (e) {
      throw new BadRequestError(`vm.snapshot: ${(e as Error).message}`);
    }
    try {
      const w = await this.vm!.snapshot(dir);
      this.log(`snapshot written to ${dir}: ${w.memoryDataBytes} bytes of guest RAM in a ${w.memoryFileSize}-byte sparse memory-ranges`);
    } catch (e) {
      if (e instanceof SnapshotError) throw new BadRequestError(`vm.snapshot: ${e.message}`);
      throw new ApiError(500, 'Internal', `vm.snapshot: ${(e as Error).message}`);
    }
  }

  /**
   * vm.restore (Cloud Hypervisor vmm/src/lib.rs vm_restore): with no VM created, read the
   * snapshot directory (config.json, state.json, memory-ranges), build the VM its config
   * describes and give every part its saved state; it ends Paused (Running with `resume`).
   * Guest RAM is mapped copy-on-write from memory-ranges, or read in first (see below).
   */
  async restoreVm(rc: RestoreConfig): Promise<void> {
    if (this.shutDown) throw new Error('the VMM is shutting down');
    nextVmState(this.state, 'restore');
    const bad = (m: string) => new BadRequestError(`vm.restore: ${m}`);
    if (rc.zone_updates !== undefined && rc.zone_updates.length > 0) throw bad('zone_updates are not supported (this VMM has no memory zones)');
    let snap: ReturnType<typeof readSnapshot>;
    try {
      snap = readSnapshot(snapshotDirectory(rc.source_url, 'source_url'));
    } catch (e) {
      if (e instanceof SnapshotError || e instanceof StateFormatError) throw bad(e.message);
      throw e;
    }
    const cfg = snap.config;
    if (typeof cfg !== 'object' || cfg === null || Array.isArray(cfg)) throw bad(`${snap.configFile}: expected a VmConfig object`);
    const issues = validateVmConfig(cfg as VmConfig);
    if (issues.length > 0) throw bad(`${snap.configFile}: ${issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`);
    const config = cfg as VmConfig;
    // Tap fds named in the saved config belonged to the VMM that took the snapshot.
    if ((config.net ?? []).some((n) => (n.fds ?? []).length > 0)) throw bad('the snapshot has a NIC on tap fds passed to the old VMM; restoring it needs net_fds, which are not supported yet');
    // Guest RAM: mapped copy-on-write (nothing read before the guest runs) unless the memory is
    // shared (a memfd for vhost-user back-ends: copied in), `prefault` asks for it all now, or
    // Copy is asked for. OnDemand is CH's userfaultfd mode; the mapping gives the same laziness.
    const shared = config.memory.shared === true;
    if (rc.memory_restore_mode === 'OnDemand' && shared) throw bad('memory_restore_mode OnDemand needs private guest memory; this VM has memory.shared=on (vhost-user devices): use Copy');
    const memory = shared || rc.prefault === true || rc.memory_restore_mode === 'Copy' ? 'copy' : 'map';
    if (this.state !== undefined) throw new VmAlreadyCreatedError('restore a VM');
    const vm = new VirtualMachine(config, this.opts.vm ?? {});
    this.attach(vm);
    try {
      await vm.restore({ state: snap.state, memoryFile: snap.memoryFile, memory });
    } catch (e) {
      this.detach(vm);
      vm.close();
      throw bad((e as Error).message);
    }
    this.config = config;
    this.vm = vm;
    this.state = 'Paused';
    this.log(`VM restored from ${rc.source_url} (paused)`);
    try {
      this.emit('vm-booted', vm);
    } catch (e) {
      this.log(`error: after the restore: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
    }
    if (rc.resume === true) await this.resumeVm();
  }

  /**
   * vm.send-migration (Cloud Hypervisor vm_send_migration): the VM to the VMM receiving at
   * destination_url (src/vmm/migration.ts). On success the VM is stopped here and forgotten;
   * on failure it goes on as it was.
   */
  async sendMigration(d: SendMigrationData): Promise<void> {
    nextVmState(this.state, 'send-migration');
    if (d.local === true) throw new BadRequestError('vm.send-migration: local=true (guest RAM handed over as memfds) is not supported yet');
    const to = this.migrationAddress(d.destination_url, 'destination_url');
    const vm = this.vm!;
    try {
      const r = await sendMigration(vm, to, (m) => this.log(m));
      this.log(`migrated to ${d.destination_url}: ${(r.memoryBytes / 2 ** 20).toFixed(1)} MiB of RAM, downtime ${r.downtimeMs.toFixed(0)} ms, ${r.totalMs.toFixed(0)} ms in all`);
    } catch (e) {
      throw new ApiError(500, 'Internal', `vm.send-migration: ${(e as Error).message}`);
    }
    await this.stopCurrent();
    this.config = undefined;
    this.state = undefined;
    this.emit('migrated');
  }

  /** vm.receive-migration (CH vm_receive_migration): wait for one migration and run its VM here. */
  async receiveMigration(d: ReceiveMigrationData): Promise<void> {
    if (this.shutDown) throw new Error('the VMM is shutting down');
    nextVmState(this.state, 'receive-migration');
    if (d.tls_dir !== undefined) throw new BadRequestError('vm.receive-migration: tls_dir is not supported yet');
    const at = this.migrationAddress(d.receiver_url, 'receiver_url');
    let built: VirtualMachine | undefined;
    try {
      const r = await receiveMigration(at, {
        build: (config) => { built = new VirtualMachine(config, this.opts.vm ?? {}); this.attach(built); return built; },
        log: (m) => this.log(m),
      });
      if (this.state !== undefined) throw new MigrationError('a VM was created here while the migration was received');
      this.config = r.config;
      this.vm = r.vm;
      this.state = r.running ? 'Running' : 'Paused';
    } catch (e) {
      if (built && this.vm !== built) { this.detach(built); built.close(); }
      throw new ApiError(500, 'Internal', `vm.receive-migration: ${(e as Error).message}`);
    }
    this.log(`VM received from a migration on ${d.receiver_url} (${this.state})`);
    try {
      this.emit('vm-booted', this.vm);
    } catch (e) {
      this.log(`error: after the migration: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
    }
  }

  private migrationAddress(url: string, what: string): MigrationAddress {
    try {
      return parseMigrationUrl(url, what);
    } catch (e) {
      throw new BadRequestError(`vm.${what === 'receiver_url' ? 'receive' : 'send'}-migration: ${(e as Error).message}`);
    }
  }

  async resumeVm(): Promise<void> {
    const next = nextVmState(this.state, 'resume');
    const vm = this.vm!;
    await vm.resume();
    if (this.vm === vm && this.state === 'Paused') this.state = next;
  }

  async shutdownVm(): Promise<void> {
    const next = nextVmState(this.state, 'shutdown');
    await this.stopCurrent();
    this.state = next;
  }

  async rebootVm(): Promise<void> {
    const next = nextVmState(this.state, 'reboot');
    await this.stopCurrent();
    // Until the fresh VM runs, the VM is off: a failed boot leaves it Shutdown (bootable again).
    this.state = 'Shutdown';
    await this.startFresh();
    this.state = next;
  }

  async powerButton(): Promise<void> {
    nextVmState(this.state, 'power-button');
    // The ACPI GED (devices/acpi_power.ts) latches the press and interrupts the guest, whose
    // DSDT's _EVT notifies \_SB_.PWRB (Cloud Hypervisor's vm.power-button does the same).
    try {
      await this.vm!.powerButton();
    } catch (e) {
      throw new ApiError(500, 'Internal', `vm.power-button: ${(e as Error).message}`);
    }
  }

  /**
   * vm.add-net: before boot the NIC joins the configuration (Cloud Hypervisor vm_add_net with
   * no VM built: add_to_config, answer 204); on a running VM it is hot-plugged (PciDeviceInfo).
   */
  async addNet(net: NetConfig): Promise<PciDeviceInfo | undefined> {
    return this.addDevice({ kind: 'net', config: net });
  }

  /** vm.add-disk: as addNet, for a disk. 409 for an id or image already in the VM. */
  async addDisk(disk: DiskConfig): Promise<PciDeviceInfo | undefined> {
    return this.addDevice({ kind: 'disk', config: disk });
  }

  /** vm.add-pmem: as addDisk, for a virtio-pmem device (not removable from a running VM). */
  async addPmem(pmem: PmemConfig): Promise<PciDeviceInfo | undefined> {
    return this.addDevice({ kind: 'pmem', config: pmem });
  }

  private async addDevice(device: HotplugDevice): Promise<PciDeviceInfo | undefined> {
    const what = { disk: 'a disk', net: 'a network device', fs: 'a virtio-fs device', vsock: 'a vsock device', pmem: 'a pmem device' }[device.kind];
    if (this.state === undefined || this.config === undefined) throw new VmNotCreatedError(`add ${what}`);
    const cfg = this.vm?.config ?? this.config;
    const all = [...(cfg.disks ?? []).map((d, i) => d.id ?? `_disk${i}`), ...(cfg.net ?? []).map((n, i) => n.id ?? `_net${i}`),
      ...(cfg.fs ?? []).map((f) => f.id), ...(cfg.pmem ?? []).map((p) => p.id), cfg.vsock?.id, cfg.rng?.id].filter((i) => i !== undefined);
    const id = device.config.id;
    // Cloud Hypervisor: DeviceManagerError::IdentifierNotUnique / a path already used -> 409 (vm_add_* answers Conflict).
    if (id !== undefined && all.includes(id)) throw new ApiError(409, 'BadRequest', `cannot add ${what}: identifier '${id}' is already in use`);
    if (device.kind === 'disk' && device.config.path !== undefined && (cfg.disks ?? []).some((d) => d.path === device.config.path)) {
      throw new ApiError(409, 'BadRequest', `cannot add a disk: image '${device.config.path}' is already a disk of this VM`);
    }
    const next: VmConfig = device.kind === 'disk' ? { ...cfg, disks: [...(cfg.disks ?? []), device.config] }
      : device.kind === 'net' ? { ...cfg, net: [...(cfg.net ?? []), device.config] }
        : device.kind === 'fs' ? { ...cfg, fs: [...(cfg.fs ?? []), device.config] }
          : device.kind === 'pmem' ? { ...cfg, pmem: [...(cfg.pmem ?? []), device.config] } : { ...cfg, vsock: device.config };
    if (device.kind === 'vsock' && cfg.vsock !== undefined) throw new BadRequestError('cannot add a vsock device: the VM already has one (at most one per VM)');
    assertValidVmConfig(next);
    if (this.state === 'Created' || this.state === 'Shutdown') {
      this.config = next;
      return undefined;
    }
    if ((this.state !== 'Running' && this.state !== 'Paused') || this.vm === undefined) throw new VmStateError(`add ${what}`, this.state, 'devices are hot-plugged into a running or paused VM');
    let at;
    try {
      at = await this.vm.addDevice(device);
    } catch (e) {
      if (e instanceof ApiError) throw e;
      const status = !(e instanceof VirtioConfigError) ? 500 : /already in use/.test(e.message) ? 409 : 400;
      throw new ApiError(status, status === 500 ? 'Internal' : 'BadRequest', `cannot add ${what}: ${(e as Error).message}`);
    }
    this.config = this.vm.config;
    // Kata parses "bdf" as segment:bus:device.function (bus 00, function 0).
    return { id: at.id, bdf: `${at.segment.toString(16).padStart(4, '0')}:00:${at.slot.toString(16).padStart(2, '0')}.0` };
  }

  /**
   * vm.remove-device {id}: ask the guest to eject the device; 204 once asked. The device goes
   * when the guest's _EJ0 runs (a 'device-removed' event). 404 for no such device.
   */
  async removeDevice(id: string): Promise<void> {
    if (this.state === undefined || this.config === undefined) throw new VmNotCreatedError('remove a device');
    if (this.state !== 'Running' && this.state !== 'Paused') {
      const cfg = this.config;
      const disks = (cfg.disks ?? []).filter((d, i) => (d.id ?? `_disk${i}`) !== id);
      const net = (cfg.net ?? []).filter((n, i) => (n.id ?? `_net${i}`) !== id);
      if (disks.length === (cfg.disks ?? []).length && net.length === (cfg.net ?? []).length) throw new ApiError(404, 'BadRequest', `cannot remove device: no disk or network device '${id}'`);
      // Tap fds sent with its vm.add-net / vm.create belong to the entry that goes.
      for (const n of (cfg.net ?? []).filter((x) => !net.includes(x))) for (const fd of n.fds ?? []) { try { libc.close(fd); } catch { /* already closed */ } }
      this.config = { ...cfg, ...(cfg.disks ? { disks } : {}), ...(cfg.net ? { net } : {}) };
      return;
    }
    const vm = this.vm!;
    // A removal under way is asked for again (the guest is notified again), as CH answers 204.
    if (vm.ejectPending(id)) this.log(`${id}: removal requested again (the guest has not ejected it yet)`);
    try {
      await vm.requestEject(id);
    } catch (e) {
      const m = (e as Error).message;
      const status = /^no device/.test(m) ? 404 : /virtio-pmem device|cannot be removed/.test(m) ? 400 : 500;
      throw new ApiError(status, status === 500 ? 'Internal' : 'BadRequest', `cannot remove device: ${m}`);
    }
  }

  async deleteVm(): Promise<void> {
    nextVmState(this.state, 'delete');
    if (this.state === 'Running' || this.state === 'Paused') await this.stopCurrent();
    this.releaseVm();
    // Tap fds received over the API socket belong to the configuration.
    for (const n of this.config?.net ?? []) {
      for (const fd of n.fds ?? []) {
        try { libc.close(fd); } catch { /* already closed */ }
      }
    }
    this.config = undefined;
    this.state = undefined;
  }

  async shutdownVmm(): Promise<void> {
    this.shutDown = true;
    const existed = this.state !== undefined;
    await this.deleteVm();
    // CH vmm_shutdown deletes the VM (reporting "vm deleted") before "vmm shutdown", which the
    // API layer reports.
    if (existed) this.opts.monitor?.emitEvent('vm', 'deleted');
  }

  async addFs(fs: FsConfig): Promise<PciDeviceInfo | undefined> {
    const state = nextVmState(this.state, 'info');
    if (state === 'Running' || state === 'Paused') return this.addDevice({ kind: 'fs', config: fs });
    if (state !== 'Created') throw new VmStateError('add a virtio-fs device', state!, 'devices are added before vm.boot or hot-plugged while it runs or is paused');
    const config: VmConfig = { ...this.config!, fs: [...(this.config!.fs ?? []), fs] };
    const issues = validateVmConfig(config);
    if (issues.length > 0) throw new BadRequestError(`vm.add-fs: ${issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`);
    this.config = config;
    return undefined;
  }

  /**
   * vm.resize (Cloud Hypervisor vm_resize): desired_balloon is the balloon's new target. A booted
   * VM's guest is told at once; either way the configuration keeps it (a reboot uses it, as CH
   * does). desired_vcpus: CPU hotplug up to cpus.max_vcpus (VirtualMachine.resizeVcpus; 429
   * while a vCPU removal is pending, as CH); before boot, the boot_vcpus of the configuration.
   * desired_ram: with memory.hotplug_method "VirtioMem", the virtio-mem device's requested_size
   * becomes desired_ram - memory.size (CH's rules: whole 2 MiB blocks, in size..size+hotplug_size);
   * the configuration keeps it as hotplugged_size (a reboot requests it again, as CH does). With
   * "Acpi" (CH's default) and a hotplug area, memory is only added, in whole 128 MiB blocks: a new
   * ACPI memory device in the running guest (VirtualMachine.resizeAcpiMemory; 405 when paused),
   * the configuration's hotplugged_size (a reboot boots with it), and vm.info's memory.size says
   * the new total, as CH's does.
   */
  async resizeVm(r: VmResize): Promise<void> {
    const state = nextVmState(this.state, 'info')!;
    if (r.desired_ram !== undefined && r.desired_ram !== null) {
      const memory = this.config!.memory;
      if (hotplugRegionSize(memory) === 0) {
        throw new BadRequestError(`vm.resize: desired_ram: the VM has no memory to add: create it with memory.hotplug_size (at least 128 MiB with hotplug_method "Acpi", or with hotplug_method "VirtioMem"; --memory hotplug_size=...)`);
      }
      const issue = desiredRamIssue(r.desired_ram, memory);
      if (issue !== undefined) throw new BadRequestError(`vm.resize: desired_ram: ${issue}`);
    }
    if (r.desired_vcpus !== undefined && r.desired_vcpus !== null) await this.resizeVcpus(state, r.desired_vcpus);
    if (r.desired_ram !== undefined && r.desired_ram !== null) await this.resizeRam(state, r.desired_ram);
    const config = this.config!;
    const want = r.desired_balloon;
    if (want === undefined || want === null) return;
    if (config.balloon === undefined) throw new BadRequestError('vm.resize: the VM has no balloon device (create it with balloon: {size: 0} or --balloon size=0)');
    const issue = balloonSizeIssue(want, config.memory.size);
    if (issue !== undefined) throw new BadRequestError(`vm.resize: desired_balloon: ${issue}`);
    const booted = state === 'Running' || state === 'Paused';
    if (booted) {
      try {
        this.vm!.resizeBalloon(want);
      } catch (e) {
        throw new ApiError(500, 'Internal', `vm.resize: ${(e as Error).message}`);
      }
    }
    config.balloon = { ...config.balloon, size: want };
    this.log(`balloon target ${want} bytes${booted ? '' : ' (for the next boot)'}`);
  }

  /** desired_ram (checked by resizeVm): virtio-mem's requested_size or ACPI memory devices, now or for the boot. */
  private async resizeRam(state: string, desired: number): Promise<void> {
    const config = this.config!;
    const plug = desired - config.memory.size;
    const booted = state === 'Running' || state === 'Paused';
    if (acpiHotplugAreaSize(config.memory) > 0) {
      if (booted) {
        if (state === 'Paused') throw new ApiError(405, 'InvalidState', 'vm.resize: desired_ram: ACPI memory hotplug needs the guest running (it adds the memory); resume the VM first');
        try {
          await this.vm!.resizeAcpiMemory(plug);
        } catch (e) {
          throw new ApiError(500, 'Internal', `vm.resize: ${(e as Error).message}`);
        }
      }
      config.memory = { ...config.memory, hotplugged_size: plug };
      this.log(`ACPI memory hotplug: ${plug} bytes beyond memory.size (guest memory ${desired} bytes)${booted ? '' : ' (for the boot)'}`);
      return;
    }
    if (booted) {
      try {
        this.vm!.resizeVirtioMem(plug);
      } catch (e) {
        throw new ApiError(500, 'Internal', `vm.resize: ${(e as Error).message}`);
      }
    }
    config.memory = { ...config.memory, hotplugged_size: plug };
    this.log(`virtio-mem requested size ${plug} bytes (guest memory ${desired} bytes)${booted ? '' : ' (for the boot)'}`);
  }

  private async resizeVcpus(state: string, want: number): Promise<void> {
    const cpus = this.config!.cpus;
    if (!Number.isInteger(want) || want < 1 || want > cpus.max_vcpus) {
      throw new BadRequestError(`vm.resize: desired_vcpus must be an integer in 1..${cpus.max_vcpus} (cpus.max_vcpus), got ${String(want)}`);
    }
    if (state === 'Running' || state === 'Paused') {
      try {
        await this.vm!.resizeVcpus(want);
      } catch (e) {
        if (e instanceof VcpuRemovalPendingError) throw new ApiError(429, 'BadRequest', `vm.resize: a vCPU removal is still pending: ${e.message}`);
        if (!(e instanceof VmError)) throw new ApiError(500, 'Internal', `vm.resize: ${(e as Error).message}`);
        // Paused: CPU hotplug needs the guest running (it onlines or offlines the vCPUs).
        throw state === 'Paused' ? new ApiError(405, 'InvalidState', `vm.resize: ${e.message}`) : new BadRequestError(`vm.resize: ${e.message}`);
      }
      this.config = this.vm!.config;
    } else {
      this.config = { ...this.config!, cpus: { ...cpus, boot_vcpus: want } };
    }
    this.log(`vCPUs resized to ${want}${state === 'Running' || state === 'Paused' ? '' : ' (for the boot)'}`);
  }

  info(): VmInfo {
    const state = nextVmState(this.state, 'info')!;
    const config = this.config!;
    // CH: RAM less what the guest has put in the balloon (its driver's `actual`).
    const booted = state === 'Running' || state === 'Paused';
    const ballooned = booted && config.balloon !== undefined ? (this.vm?.balloonActualBytes() ?? 0) : 0;
    // CH: plus what the guest plugged of the virtio-mem region (its plugged_size).
    const plugged = booted && virtioMemRegionSize(config.memory) > 0 ? (this.vm?.virtioMemPluggedBytes() ?? 0) : 0;
    // ACPI memory hotplug: CH counts added memory in memory.size (it sets size = desired_ram); the
    // configuration here keeps the boot layout (size) and what was added (hotplugged_size).
    const acpiAdded = acpiHotplugAreaSize(config.memory) > 0 ? (config.memory.hotplugged_size ?? 0) : 0;
    if (acpiAdded > 0) {
      const { hotplugged_size: _added, ...memory } = config.memory;
      return { config: { ...config, memory: { ...memory, size: config.memory.size + acpiAdded } }, state, memory_actual_size: config.memory.size + acpiAdded - ballooned };
    }
    return { config, state, memory_actual_size: config.memory.size + plugged - ballooned };
  }

  counters(): VmCounters {
    nextVmState(this.state, 'counters');
    // Per virtio device, as Cloud Hypervisor reports them (device id -> counter -> value).
    return this.vm?.counters() ?? {};
  }

  /** Feed host input to the guest's serial port; returns bytes accepted (0 without a running VM). */
  sendInput(bytes: Uint8Array): number {
    const vm = this.vm;
    if (vm === undefined || (this.state !== 'Running' && this.state !== 'Paused')) return 0;
    return vm.sendInput(bytes);
  }

  /** Build a VirtualMachine from the stored config and boot it. */
  private async startFresh(): Promise<void> {
    this.releaseVm();
    const vm = new VirtualMachine(this.config!, this.opts.vm ?? {});
    this.attach(vm);
    try {
      await vm.boot();
    } catch (e) {
      this.detach(vm);
      vm.close();
      throw e;
    }
    this.vm = vm;
    // The VM runs now: a listener that throws (e.g. the CLI failing to put the terminal in raw
    // mode) must not turn the boot into an error that leaves the state Created while the guest runs.
    try {
      this.emit('vm-booted', vm);
    } catch (e) {
      this.log(`error: after the boot: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
    }
  }

  /** Stop the guest from the host side (its threads end, memory is freed) and close it. */
  private async stopCurrent(): Promise<void> {
    const vm = this.vm;
    if (vm === undefined) return;
    // Mark first, so that the VirtualMachine's own 'shutdown' event is not taken for the guest's.
    this.hostStopping.add(vm);
    try {
      await vm.shutdown();
    } finally {
      this.hostStopping.delete(vm);
    }
    this.releaseVm();
  }

  private attach(vm: VirtualMachine): void {
    const l = {
      shutdown: (info: VmExitInfo) => this.onVmShutdown(vm, info),
      rebooting: () => {
        if (this.vm === vm) this.opts.monitor?.emitEvent('vm', 'rebooting');
      },
      rebooted: () => {
        if (this.vm !== vm) return;
        this.opts.monitor?.emitEvent('vm', 'rebooted');
        this.emit('guest-rebooted');
      },
      // The guest ejected a vCPU (vm.resize down, or its own eject): boot_vcpus follows.
      vcpuRemoved: () => {
        if (this.vm === vm) this.config = vm.config;
      },
      deviceRemoved: (id: string) => {
        if (this.vm !== vm) return;
        // Tap fds sent with a vm.add-net belong to the configuration entry that just went.
        const gone = (this.config?.net ?? []).filter((n) => !(vm.config.net ?? []).some((m) => m.fds === n.fds));
        for (const n of gone) for (const fd of n.fds ?? []) { try { libc.close(fd); } catch { /* already closed */ } }
        this.config = vm.config;
        this.opts.monitor?.emitEvent('vm', 'device-removed', { id });
      },
    };
    vm.on('device-removed', l.deviceRemoved);
    vm.on('vcpu-removed', l.vcpuRemoved);
    vm.on('shutdown', l.shutdown);
    vm.on('rebooting', l.rebooting);
    vm.on('rebooted', l.rebooted);
    this.vmListeners.set(vm, l);
  }

  private detach(vm: VirtualMachine): void {
    const l = this.vmListeners.get(vm);
    if (l === undefined) return;
    vm.off('shutdown', l.shutdown);
    vm.off('rebooting', l.rebooting);
    vm.off('rebooted', l.rebooted);
    vm.off('device-removed', l.deviceRemoved);
    vm.off('vcpu-removed', l.vcpuRemoved);
    this.vmListeners.delete(vm);
  }

  /** Stop listening to the current VM and release its hypervisor handle. */
  private releaseVm(): void {
    const vm = this.vm;
    if (vm === undefined) return;
    this.detach(vm);
    vm.close();
    this.vm = undefined;
  }

  private onVmShutdown(vm: VirtualMachine, info: VmExitInfo): void {
    // Host-requested stops (vm.shutdown, reboot, delete) report themselves through the API layer.
    if (info.reason === 'shutdown' || this.hostStopping.has(vm) || this.vm !== vm) return;
    if (this.state !== 'Running' && this.state !== 'Paused') return;
    this.state = 'Shutdown';
    if (info.reason === 'error') this.log(`the VM failed: ${info.message ?? 'unknown error'}`);
    else this.log('the guest powered off');
    this.releaseVm();
    this.opts.monitor?.emitEvent('vm', 'shutdown', info.reason === 'error' ? { reason: 'error', message: info.message ?? '' } : { reason: 'poweroff' });
    this.emit('guest-exit', info);
  }
}
