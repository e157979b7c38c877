// The boundary between the HTTP API (src/api) and the VMM core (src/vmm).
//
// The API server only ever talks to a `VmmController`. Wrong-state requests are
// reported by throwing an `ApiError` subclass carrying the HTTP status that Cloud
// Hypervisor's OpenAPI document (src/api/openapi/cloud-hypervisor.yaml) prescribes:
// 404 "not created", 405 "not booted / not paused" (see e.g. /vm.pause responses).
// Anything else thrown by a controller becomes a 500 with the error's message.
//
// `nextVmState` encodes the VM lifecycle (after Cloud Hypervisor's vmm/src/lib.rs
// vm_create/vm_boot/... and vm.rs Vm::pause/resume) so that every controller
// implementation answers wrong-state requests the same way.

import { readFileSync } from 'node:fs';
import type { DiskConfig, FsConfig, PmemConfig, NetConfig, VmConfig, VsockConfig } from '../vmm/config.js';

/** VmState enum of the OpenAPI document. */
export type VmState = 'Created' | 'Running' | 'Shutdown' | 'Paused' | 'BreakPoint';

/** VmmPingResponse schema. */
export interface VmmPingResponse {
  version: string;
  build_version?: string;
  pid?: number;
  features?: string[];
}

/** RestoreConfig schema. */
export interface RestoreConfig {
  source_url: string;
  prefault?: boolean;
  memory_restore_mode?: 'Copy' | 'OnDemand';
  resume?: boolean;
  zone_updates?: unknown[];
}

/** SendMigrationData schema (the fields Stratovisor acts on). */
export interface SendMigrationData {
  destination_url: string;
  local?: boolean;
  downtime_ms?: number;
  timeout_s?: number;
}

/** ReceiveMigrationData schema. */
export interface ReceiveMigrationData {
  receiver_url: string;
  tls_dir?: string;
}

/** DeviceNode schema. */
export interface DeviceNode {
  id?: string;
  resources?: Record<string, unknown>[];
  children?: string[];
  pci_bdf?: string;
}

/** VmInfo schema. */
export interface VmInfo {
  config: VmConfig;
  state: VmState;
  memory_actual_size?: number;
  device_tree?: Record<string, DeviceNode>;
}

/** VmResize schema (bytes for desired_ram and desired_balloon). */
export interface VmResize {
  desired_vcpus?: number;
  desired_ram?: number;
  desired_balloon?: number;
}

/** PciDeviceInfo schema: what a hotplug answers (device id and its PCI address). */
export interface PciDeviceInfo {
  id: string;
  bdf: string;
}

/** VmCounters schema: device id -> counter name -> value. */
export type VmCounters = Record<string, Record<string, number>>;

/**
 * What the API needs from the VMM. Methods returning a Promise resolve once the
 * action is complete (e.g. bootVm after the vCPUs run); they reject with an
 * `ApiError` for wrong-state requests.
 */
export interface VmmController {
  /** vmm.ping: version, build_version, pid, features. Never throws. */
  ping(): VmmPingResponse;
  /** vm.create: store the configuration; the VM is not booted. 409 if one already exists. */
  createVm(config: VmConfig): Promise<void>;
  /** vm.boot: 404 if not created, 405 if already running or paused. */
  bootVm(): Promise<void>;
  /** vm.pause: 404 if not created, 405 if not running. */
  pauseVm(): Promise<void>;
  /** vm.resume: 404 if not created, 405 if not paused. */
  resumeVm(): Promise<void>;
  /** vm.shutdown: 404 if not created, 405 if not booted (running or paused). */
  shutdownVm(): Promise<void>;
  /** vm.reboot: 404 if not created, 405 if not booted. */
  rebootVm(): Promise<void>;
  /** vm.power-button: ACPI power button press; 404 if not created, 405 if not booted. */
  powerButton(): Promise<void>;
  /** vm.delete: shut down if booted and forget the configuration. Succeeds when there is no VM. */
  deleteVm(): Promise<void>;
  /**
   * vmm.shutdown: stop the VM (if any) and release resources. The API server answers
   * 204 after this resolves and then emits 'vmm-shutdown'; the process owner exits.
   */
  shutdownVmm(): Promise<void>;
  /**
   * vm.snapshot {destination_url}: write config.json, state.json and memory-ranges into the
   * existing directory of a file:// URL. 404 if not created, 405 if not paused, 400 for a bad
   * URL, a missing directory or a file that exists already. Optional: 500 "not implemented".
   */
  snapshotVm?(destinationUrl: string): Promise<void>;
  /**
   * vm.restore {source_url, resume?, prefault?, memory_restore_mode?}: build the VM a snapshot
   * directory describes and end Paused (Running with `resume`). 409 if a VM exists, 400 for a
   * bad URL or a snapshot that cannot be read or does not fit. Optional: 500 "not implemented".
   */
  restoreVm?(config: RestoreConfig): Promise<void>;
  /**
   * vm.send-migration {destination_url: "unix:/path" | "tcp:host:port"}: move the booted VM to a
   * receiving VMM; once it has it, the VM is gone from here (the CLI's VMM then exits). 405 if
   * not booted, 400 for a bad URL, 500 when the migration fails (the VM goes on here).
   */
  sendMigration?(data: SendMigrationData): Promise<void>;
  /**
   * vm.receive-migration {receiver_url}: with no VM here, listen, take one migration and run (or
   * keep paused) the VM it brings. 409 if a VM exists, 400 for a bad URL, 500 when it fails.
   */
  receiveMigration?(data: ReceiveMigrationData): Promise<void>;
  /**
   * vm.resize: desired_balloon sets the balloon's target (a booted VM: at once; otherwise the
   * configuration, for the next boot). 404 if not created, 400 without a balloon or for a size
   * not below guest RAM; desired_vcpus plugs vCPUs in or asks the guest to eject them (1..max_vcpus,
   * else 400; 429 while a removal is pending; 405 paused); desired_ram with memory hotplug_method
   * "VirtioMem" sets the virtio-mem device's requested size (desired_ram - memory.size; 400 outside
   * size..size+hotplug_size or not whole 2 MiB blocks; before boot memory.hotplugged_size), 500 "not
   * implemented" with the Acpi method. Optional.
   */
  resizeVm?(resize: VmResize): Promise<void>;
  /** vm.info: 404 if not created. */
  info(): VmInfo;
  /** vm.counters: 404 if not created, 405 if not booted. */
  counters(): VmCounters;
  /**
   * vm.add-fs: add a virtio-fs device to the configuration of a VM not booted yet (404 if not
   * created, 405 once booted: hotplug is not supported; 400 if the result is not valid).
   */
  addFs?(fs: FsConfig): Promise<PciDeviceInfo | undefined | void>;

  /**
   * vm.add-vsock before vm.boot: adds the device to the configuration (204). 404 if not created,
   * 400 for an invalid device or a second vsock, 409 for an id in use, 500 once booted (no
   * hotplug yet). Optional: a controller without it answers 500 "not implemented".
   */
  addVsock?(config: VsockConfig): Promise<PciDeviceInfo | undefined | void>;

  /**
   * vm.add-net: add a NIC (its `fds`, if any, are owned by the controller once this
   * resolves). Before boot it joins the configuration and resolves undefined (CH answers 204,
   * vmm/src/lib.rs vm_add_net); on a booted VM, hotplug (PciDeviceInfo). 404 if not created.
   */
  addNet(net: NetConfig): Promise<PciDeviceInfo | undefined>;

  /**
   * vm.add-disk: as addNet (before boot: into the configuration, 204; running: hot-plugged,
   * 200 with PciDeviceInfo). 409 for an id or image in use. Optional: 500 "not implemented".
   */
  addDisk?(disk: DiskConfig): Promise<PciDeviceInfo | undefined>;

  /** vm.add-pmem: as addDisk, for a virtio-pmem device. */
  addPmem?(pmem: PmemConfig): Promise<PciDeviceInfo | undefined>;

  /**
   * vm.remove-device {id}: running, the guest is asked to eject the device (204; a 'device-removed'
   * event follows once it did); before boot it leaves the configuration. 404 for no such device.
   */
  removeDevice?(id: string): Promise<void>;
}

/** Machine-readable kind of an API error. */
export type ApiErrorKind =
  | 'VmNotCreated'
  | 'VmAlreadyCreated'
  | 'InvalidState'
  | 'BadRequest'
  | 'NotImplemented'
  | 'Internal';

/** An error with the HTTP status the API answers with. */
export class ApiError extends Error {
  override name = 'ApiError';
  constructor(
    readonly status: number,
    readonly kind: ApiErrorKind,
    message: string,
  ) {
    super(message);
  }
}

/** 404: the request needs a VM and none is created. */
export class VmNotCreatedError extends ApiError {
  override name = 'VmNotCreatedError';
  constructor(action: string) {
    super(404, 'VmNotCreated', `cannot ${action}: the VM is not created`);
  }
}

/**
 * 409: vm.create (or restore) while a VM exists. The document lists no error for
 * vm.create (Cloud Hypervisor answers 500 VmAlreadyCreated); 409 Conflict says what it is.
 */
export class VmAlreadyCreatedError extends ApiError {
  override name = 'VmAlreadyCreatedError';
  constructor(action = 'create the VM') {
    super(409, 'VmAlreadyCreated', `cannot ${action}: a VM is already created (delete it first)`);
  }
}

/** 405: the VM exists but is in the wrong state for the request (document: "not booted", "not paused"). */
export class VmStateError extends ApiError {
  override name = 'VmStateError';
  constructor(
    readonly action: string,
    readonly state: VmState,
    reason: string,
  ) {
    super(405, 'InvalidState', `cannot ${action}: the VM is ${state.toLowerCase()} (${reason})`);
  }
}

/** 400: a request the VMM rejects as invalid (e.g. a VmConfig failing semantic checks). */
export class BadRequestError extends ApiError {
  override name = 'BadRequestError';
  constructor(message: string) {
    super(400, 'BadRequest', message);
  }
}

/**
 * 500: an endpoint of the document Stratovisor does not implement yet. Cloud Hypervisor
 * answers 500 for every failed action it has no better code for (vmm/src/api/http/mod.rs
 * api_error_status_code), and its document lists 500 as "could not be ..." for such endpoints.
 */
export class NotImplementedError extends ApiError {
  override name = 'NotImplementedError';
  constructor(what: string) {
    super(500, 'NotImplemented', `${what}: not implemented yet in Stratovisor`);
  }
}

/** A request that moves (or inspects) the VM lifecycle. */
export type VmAction =
  | 'create'
  | 'boot'
  | 'pause'
  | 'resume'
  | 'shutdown'
  | 'reboot'
  | 'power-button'
  | 'delete'
  | 'info'
  | 'counters'
  | 'snapshot'
  | 'restore'
  | 'send-migration'
  | 'receive-migration';

/**
 * The VM state after `action` from `state` (undefined = no VM), or throws the
 * `ApiError` the API must answer with. Inspecting actions return the state unchanged;
 * delete returns undefined.
 *
 * Lifecycle (Cloud Hypervisor): create -> Created; boot from Created or Shutdown ->
 * Running; pause Running -> Paused; resume Paused -> Running; shutdown Running|Paused
 * -> Shutdown (config kept, boot again allowed); reboot Running|Paused -> Running;
 * delete from anything -> no VM.
 */
export function nextVmState(state: VmState | undefined, action: VmAction): VmState | undefined {
  if (action === 'create') {
    if (state !== undefined) throw new VmAlreadyCreatedError();
    return 'Created';
  }
  // Cloud Hypervisor restores into a VMM without a VM (vmm/src/lib.rs vm_restore); it ends Paused.
  if (action === 'restore') {
    if (state !== undefined) throw new VmAlreadyCreatedError('restore a VM');
    return 'Paused';
  }
  // The destination of a migration has no VM of its own yet (CH vm_receive_migration).
  if (action === 'receive-migration') {
    if (state !== undefined) throw new VmAlreadyCreatedError('receive a migration');
    return 'Running';
  }
  if (action === 'delete') return undefined;
  const verb = action === 'power-button' ? 'press the power button' : action === 'info' || action === 'counters' ? `get ${action}` : action;
  if (state === undefined) throw new VmNotCreatedError(verb);
  const booted = state === 'Running' || state === 'Paused' || state === 'BreakPoint';
  switch (action) {
    case 'info':
      return state;
    case 'counters':
      if (!booted) throw new VmStateError(verb, state, 'not booted');
      return state;
    case 'boot':
      if (booted) throw new VmStateError(verb, state, 'already booted');
      return 'Running';
    case 'pause':
      if (state !== 'Running') throw new VmStateError(verb, state, 'not running');
      return 'Paused';
    case 'resume':
      if (state !== 'Paused') throw new VmStateError(verb, state, 'not paused');
      return 'Running';
    case 'shutdown':
      if (!booted) throw new VmStateError(verb, state, 'not booted');
      return 'Shutdown';
    case 'reboot':
      if (!booted) throw new VmStateError(verb, state, 'not booted');
      return 'Running';
    case 'power-button':
      if (!booted) throw new VmStateError(verb, state, 'not booted');
      return state;
    case 'send-migration':
      if (!booted) throw new VmStateError(verb, state, 'not booted');
      return state;
    case 'snapshot':
      // Cloud Hypervisor snapshots a paused VM only (vmm/src/vm.rs Vm::snapshot).
      if (state !== 'Paused') throw new VmStateError(verb, state, booted ? 'not paused' : 'not booted');
      return state;
  }
}

let cachedVersion: string | undefined;

/** Stratovisor's version, from package.json (found from dist/src/api or src/api). */
export function stratovisorVersion(): string {
  if (cachedVersion === undefined) {
    cachedVersion = '0.0.0';
    for (const rel of ['../../../package.json', '../../package.json']) {
      try {
        const pkg = JSON.parse(readFileSync(new URL(rel, import.meta.url), 'utf8')) as { name?: unknown; version?: unknown };
        if (pkg.name === 'stratovisor' && typeof pkg.version === 'string') {
          cachedVersion = pkg.version;
          break;
        }
      } catch {
        // try the next location
      }
    }
  }
  return cachedVersion;
}

/** A vmm.ping answer for this process (CH: version = crate version, build_version = git describe). */
export function pingResponse(features: string[] = [], buildVersion?: string): VmmPingResponse {
  const version = stratovisorVersion();
  return { version, build_version: buildVersion ?? `v${version}`, pid: process.pid, features: [...features] };
}
