// VM configuration, named after the VmConfig schema of Cloud Hypervisor's
// OpenAPI document (/work/shared/reference/cloud-hypervisor-openapi.yaml), so
// that an API body and the CLI produce the same object.
//
// `createVmConfig` fills in Cloud Hypervisor's defaults; `validateVmConfig`
// checks types and ranges only (whether files exist is checked at load time).
import { tokenBucketIssue, type RateLimiterConfig } from '../virtio/rate_limiter.js';
import { hotplugRegion } from '../arch/x86_64/layout.js';

export type { RateLimiterConfig, TokenBucketConfig } from '../virtio/rate_limiter.js';

/** RateLimitGroupConfig of the OpenAPI schema: disks naming `id` share one limiter. */
export interface RateLimitGroupConfig {
  id: string;
  rate_limiter_config: RateLimiterConfig;
}

/** ConsoleMode enum of the OpenAPI schema. */
export type ConsoleMode = 'Off' | 'Pty' | 'Tty' | 'File' | 'Socket' | 'Null';
export const CONSOLE_MODES: readonly ConsoleMode[] = ['Off', 'Pty', 'Tty', 'File', 'Socket', 'Null'];

export interface PayloadConfig {
  firmware?: string;
  kernel?: string;
  cmdline?: string;
  initramfs?: string;
}

export interface CpuTopology {
  threads_per_core: number;
  cores_per_die: number;
  dies_per_package: number;
  packages: number;
}

export interface CpusConfig {
  boot_vcpus: number;
  max_vcpus: number;
  topology?: CpuTopology;
  kvm_hyperv?: boolean;
  max_phys_bits?: number;
  nested?: boolean;
}

/**
 * How memory is added at run time (Cloud Hypervisor's HotplugMethod): "Acpi" (CH's default: ACPI
 * memory devices, src/devices/memory_hotplug.ts, each vm.resize desired_ram adds one range of the
 * hotplug area; memory is only added) or "VirtioMem", a virtio-mem device (virtio 1.2, 5.15)
 * whose region of hotplug_size bytes vm.resize desired_ram plugs blocks of and unplugs.
 */
export type HotplugMethod = 'Acpi' | 'VirtioMem';
export const HOTPLUG_METHODS: readonly HotplugMethod[] = ['Acpi', 'VirtioMem'];

/** virtio-mem block size (its block_size, 5.15.4): 2 MiB, as Cloud Hypervisor's. */
export const VIRTIO_MEM_BLOCK_SIZE = 2 * 1024 * 1024;
/**
 * ACPI memory hotplug adds whole Linux memory blocks (128 MiB on x86 up to 64 GiB of RAM,
 * drivers/base/memory.c): the hotplug area is hotplug_size rounded down to them.
 */
export const ACPI_MEMORY_BLOCK_SIZE = 128 * 1024 * 1024;

export interface MemoryConfig {
  /** Bytes. */
  size: number;
  /** Bytes that may be added at run time (the virtio-mem region, or the ACPI hotplug area). */
  hotplug_size?: number;
  /**
   * Bytes added so far (VirtioMem: the device's requested_size at boot; Acpi: the memory devices
   * plugged, present again at a reboot; vm.resize before boot sets it).
   */
  hotplugged_size?: number;
  /** Default "Acpi". A string as the document has it (a client may send anything; validation names other values). */
  hotplug_method?: string;
  mergeable: boolean;
  shared: boolean;
  hugepages: boolean;
  hugepage_size?: number;
  prefault: boolean;
  thp: boolean;
}

export interface SerialConfig {
  mode: ConsoleMode;
  file?: string;
  socket?: string;
}

export interface ConsoleConfig {
  mode: ConsoleMode;
  file?: string;
  socket?: string;
  iommu: boolean;
  id?: string;
}

export interface DiskConfig {
  path?: string;
  readonly: boolean;
  direct: boolean;
  iommu: boolean;
  num_queues: number;
  queue_size: number;
  vhost_user: boolean;
  vhost_socket?: string;
  id?: string;
  serial?: string;
  pci_segment?: number;
  /** Device number on its segment's bus 0 (1..31; CH's pci_device_id). Omitted: the lowest free one. */
  pci_device_id?: number;
  /** Bandwidth / ops limits of this disk alone (docs/io_throttling.md of Cloud Hypervisor). */
  rate_limiter_config?: RateLimiterConfig;
  /** The id of a VmConfig.rate_limit_groups entry whose limiter this disk shares. */
  rate_limit_group?: string;
  /**
   * Serve this device from an I/O thread of that name instead of the VM's shared one (a
   * Stratovisor extension, CLI only): devices naming the same iothread share it.
   */
  iothread?: string;
}

export interface NetConfig {
  tap?: string;
  ip: string;
  mask: string;
  mac?: string;
  host_mac?: string;
  mtu?: number;
  iommu: boolean;
  num_queues: number;
  queue_size: number;
  vhost_user: boolean;
  vhost_socket?: string;
  id?: string;
  pci_segment?: number;
  /** Device number on its segment's bus 0 (1..31; CH's pci_device_id). Omitted: the lowest free one. */
  pci_device_id?: number;
  /**
   * Serve this device from an I/O thread of that name instead of the VM's shared one (a
   * Stratovisor extension, CLI only): devices naming the same iothread share it.
   */
  iothread?: string;
  offload_tso: boolean;
  offload_ufo: boolean;
  offload_csum: boolean;
  /** Bandwidth / ops limits, applied to RX and TX independently (as Cloud Hypervisor). */
  rate_limiter_config?: RateLimiterConfig;
  /**
   * Tap fds, one per queue pair, received with an API request (SCM_RIGHTS; never from JSON).
   * The VMM uses these instead of opening a tap; the configuration owns them.
   */
  fds?: number[];
}

/** virtio-fs over a vhost-user back-end (FsConfig of the OpenAPI document). */
export interface FsConfig {
  tag: string;
  socket: string;
  num_queues: number;
  queue_size: number;
  id?: string;
  pci_segment?: number;
  /**
   * Serve this device from an I/O thread of that name instead of the VM's shared one (a
   * Stratovisor extension, CLI only): devices naming the same iothread share it.
   */
  iothread?: string;
}

export interface RngConfig {
  src: string;
  iommu: boolean;
  id?: string;
  pci_segment?: number;
}

/**
 * virtio-pmem (virtio 1.2, 5.19): a file mapped into guest physical memory (Cloud Hypervisor's
 * PmemConfig; `pci_device_id` is not supported).
 */
export interface PmemConfig {
  /** The backing file (a disk image, e.g. Kata's rootfs). */
  file: string;
  /** Bytes of the file to map (default: its size); a multiple of 2 MiB, at most the file's size. */
  size?: number;
  iommu: boolean;
  /** Map the file MAP_PRIVATE: guest writes never reach it (Kata's read-only rootfs). */
  discard_writes: boolean;
  id?: string;
  pci_segment?: number;
}

/**
 * virtio-balloon (virtio 1.2, 5.5; Cloud Hypervisor's BalloonConfig, `pci_device_id` not
 * supported): `size` is the balloon's target in bytes (4 KiB pages; vm.resize desired_balloon
 * changes it at run time, and the new value is kept here for later boots).
 */
export interface BalloonConfig {
  size: number;
  /** Offer VIRTIO_BALLOON_F_DEFLATE_ON_OOM: the guest may deflate the balloon under memory pressure. */
  deflate_on_oom: boolean;
  /** Offer VIRTIO_BALLOON_F_PAGE_REPORTING: the guest reports free pages, which go back to the host. */
  free_page_reporting: boolean;
  iommu?: boolean;
  id?: string;
  pci_segment?: number;
}

/** virtio-pmem regions are mapped in 2 MiB units (Cloud Hypervisor's rule; Linux maps them as huge pages). */
export const PMEM_ALIGNMENT = 2 * 1024 * 1024;

/** PlatformConfig of the OpenAPI schema (the part Stratovisor has). */
export interface PlatformConfig {
  /** PCI segments 0..num_pci_segments-1 (default 1; CH's --platform num_pci_segments=). */
  num_pci_segments: number;
}

/** virtio-vsock with the hybrid Unix-socket backend (Cloud Hypervisor's VsockConfig). */
export interface VsockConfig {
  /** The guest's context ID (>= 3; 0..2 are reserved, virtio 1.2 5.10.4). */
  cid: number;
  /** The VMM listens here; guest connections to host port P go to `<socket>_<P>`. */
  socket: string;
  iommu?: boolean;
  id?: string;
  pci_segment?: number;
  /**
   * Serve this device from an I/O thread of that name instead of the VM's shared one (a
   * Stratovisor extension, CLI only): devices naming the same iothread share it.
   */
  iothread?: string;
}

export interface VmConfig {
  payload: PayloadConfig;
  cpus: CpusConfig;
  memory: MemoryConfig;
  disks?: DiskConfig[];
  net?: NetConfig[];
  fs?: FsConfig[];
  pmem?: PmemConfig[];
  /** At most one balloon per VM (as Cloud Hypervisor). */
  balloon?: BalloonConfig;
  rng: RngConfig;
  serial: SerialConfig;
  console: ConsoleConfig;
  /** At most one vsock device per VM (as Cloud Hypervisor). */
  vsock?: VsockConfig;
  iommu: boolean;
  watchdog: boolean;
  pvpanic: boolean;
  platform?: PlatformConfig;
  /** Rate limiters that disks share (DiskConfig.rate_limit_group). */
  rate_limit_groups?: RateLimitGroupConfig[];
}

// ---- Defaults (Cloud Hypervisor's, see its vm_config.rs and main.rs) ----

export const DEFAULT_VCPUS = 1;
export const DEFAULT_MEMORY_SIZE = 512 * 1024 * 1024;
export const DEFAULT_MAX_PHYS_BITS = 46;
export const DEFAULT_RNG_SOURCE = '/dev/urandom';
/** CH: `--serial` defaults to null, `--console` (virtio-console) to tty. */
export const DEFAULT_SERIAL_MODE: ConsoleMode = 'Null';
export const DEFAULT_CONSOLE_MODE: ConsoleMode = 'Tty';
export const DEFAULT_DISK_NUM_QUEUES = 1;
export const DEFAULT_DISK_QUEUE_SIZE = 128;
export const DEFAULT_NET_NUM_QUEUES = 2;
export const DEFAULT_NET_QUEUE_SIZE = 256;
export const DEFAULT_FS_NUM_QUEUES = 1;
export const DEFAULT_FS_QUEUE_SIZE = 1024;
/** virtio_fs_config.tag is 36 bytes (virtio 1.2, 5.11.4). */
export const FS_TAG_MAX_BYTES = 36;
/** The error for a vhost-user device on private guest RAM (Cloud Hypervisor says the same). */
export const FS_NEEDS_SHARED = 'virtio-fs needs --memory shared=on (guest RAM must be shareable with the vhost-user backend)';
export const DEFAULT_NET_IP = '192.168.249.1';
export const DEFAULT_NET_MASK = '255.255.255.0';
export const DEFAULT_NUM_PCI_SEGMENTS = 1;

// ---- Limits ----

/** x86_64 xAPIC: APIC IDs 0..254 (255 is broadcast), so at most 254 vCPUs with the MP table/MADT we build. */
export const MAX_VCPUS = 254;
export const PAGE_SIZE = 4096;
/**
 * Minimum guest RAM: the bzImage protected-mode kernel loads at 16 MiB by
 * default (CONFIG_PHYSICAL_START) and needs room above it.
 */
export const MIN_MEMORY_SIZE = 32 * 1024 * 1024;
/** Largest virtqueue size (virtio 1.2 section 2.7: Queue Size max 32768). */
export const MAX_QUEUE_SIZE = 32768;
/** PCI segments (src/arch/x86_64/layout.ts MAX_PCI_SEGMENTS; Cloud Hypervisor's limit was 16). */
export const MAX_NUM_PCI_SEGMENTS = 16;
/** Block queue size must be greater than this (Cloud Hypervisor MINIMUM_BLOCK_QUEUE_SIZE). */
export const MIN_BLOCK_QUEUE_SIZE_EXCLUSIVE = 2;

/** Every property optional, recursively (arrays of partial elements). */
export type DeepPartial<T> = T extends (infer U)[]
  ? DeepPartial<U>[]
  : T extends object
    ? { [K in keyof T]?: DeepPartial<T[K]> }
    : T;

/** An input as an API body may give it: everything optional except what the caller fills. */
export type VmConfigInput = DeepPartial<VmConfig>;

export function defaultDiskConfig(input: DeepPartial<DiskConfig> = {}): DiskConfig {
  return {
    readonly: false,
    direct: false,
    iommu: false,
    num_queues: DEFAULT_DISK_NUM_QUEUES,
    queue_size: DEFAULT_DISK_QUEUE_SIZE,
    vhost_user: false,
    ...stripUndefined(input),
  } as DiskConfig; // a partial rate_limiter_config is reported by validateVmConfig
}

export function defaultNetConfig(input: DeepPartial<NetConfig> = {}): NetConfig {
  return {
    ip: DEFAULT_NET_IP,
    mask: DEFAULT_NET_MASK,
    iommu: false,
    num_queues: DEFAULT_NET_NUM_QUEUES,
    queue_size: DEFAULT_NET_QUEUE_SIZE,
    vhost_user: false,
    offload_tso: true,
    offload_ufo: true,
    offload_csum: true,
    ...stripUndefined(input),
  } as NetConfig; // a partial rate_limiter_config is reported by validateVmConfig
}

export function defaultPmemConfig(input: DeepPartial<PmemConfig> = {}): PmemConfig {
  return { file: '', iommu: false, discard_writes: false, ...stripUndefined(input) } as PmemConfig;
}

export function defaultBalloonConfig(input: DeepPartial<BalloonConfig> = {}): BalloonConfig {
  return { deflate_on_oom: false, free_page_reporting: false, ...stripUndefined(input) } as BalloonConfig; // a missing size is reported by validateVmConfig
}

export function defaultFsConfig(input: DeepPartial<FsConfig> = {}): FsConfig {
  return { tag: '', socket: '', num_queues: DEFAULT_FS_NUM_QUEUES, queue_size: DEFAULT_FS_QUEUE_SIZE, ...stripUndefined(input) } as FsConfig;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Shape problems that would make merging defaults impossible (untrusted JSON input). */
function shapeIssues(input: unknown): VmConfigIssue[] {
  const issues: VmConfigIssue[] = [];
  if (!isPlainObject(input)) return [{ path: '(config)', message: 'must be an object' }];
  for (const k of ['payload', 'cpus', 'memory', 'rng', 'serial', 'console', 'platform', 'vsock', 'balloon'] as const) {
    const v = input[k];
    if (v !== undefined && !isPlainObject(v)) issues.push({ path: k, message: 'must be an object' });
  }
  const cpus = input['cpus'];
  if (isPlainObject(cpus) && cpus['topology'] !== undefined && !isPlainObject(cpus['topology'])) {
    issues.push({ path: 'cpus.topology', message: 'must be an object' });
  }
  for (const k of ['disks', 'net', 'fs', 'pmem', 'rate_limit_groups'] as const) {
    const v = input[k];
    if (v === undefined) continue;
    if (!Array.isArray(v)) {
      issues.push({ path: k, message: 'must be an array' });
      continue;
    }
    v.forEach((e: unknown, i) => {
      if (!isPlainObject(e)) issues.push({ path: `${k}[${i}]`, message: 'must be an object' });
    });
  }
  return issues;
}

/**
 * Build a complete VmConfig from a partial one (an API body, or the CLI's
 * result), applying Cloud Hypervisor's defaults. Throws VmConfigError if a
 * section has the wrong shape (not an object / array); does not otherwise
 * validate: call validateVmConfig on the result.
 */
export function createVmConfig(input: VmConfigInput = {}): VmConfig {
  const shape = shapeIssues(input);
  if (shape.length > 0) throw new VmConfigError(shape);
  const cpus = stripUndefined(input.cpus ?? {});
  const boot = cpus.boot_vcpus ?? DEFAULT_VCPUS;
  const memory = stripUndefined(input.memory ?? {});
  const config: VmConfig = {
    payload: { ...stripUndefined(input.payload ?? {}) },
    cpus: {
      ...(cpus as Partial<CpusConfig>),
      boot_vcpus: boot,
      max_vcpus: cpus.max_vcpus ?? boot,
      max_phys_bits: cpus.max_phys_bits ?? DEFAULT_MAX_PHYS_BITS,
      kvm_hyperv: cpus.kvm_hyperv ?? false,
    },
    memory: {
      mergeable: false,
      shared: false,
      hugepages: false,
      prefault: false,
      thp: true,
      ...memory,
      size: memory.size ?? DEFAULT_MEMORY_SIZE,
    },
    rng: { src: DEFAULT_RNG_SOURCE, iommu: false, ...stripUndefined(input.rng ?? {}) },
    serial: { mode: DEFAULT_SERIAL_MODE, ...stripUndefined(input.serial ?? {}) },
    console: { mode: DEFAULT_CONSOLE_MODE, iommu: false, ...stripUndefined(input.console ?? {}) },
    iommu: input.iommu ?? false,
    watchdog: input.watchdog ?? false,
    pvpanic: input.pvpanic ?? false,
  };
  if (input.disks !== undefined) config.disks = input.disks.map((d) => defaultDiskConfig(d));
  if (input.net !== undefined) config.net = input.net.map((n) => defaultNetConfig(n));
  if (input.platform !== undefined) {
    config.platform = { ...stripUndefined(input.platform), num_pci_segments: input.platform.num_pci_segments ?? DEFAULT_NUM_PCI_SEGMENTS };
  }
  if (input.fs !== undefined) config.fs = input.fs.map((f) => defaultFsConfig(f));
  if (input.pmem !== undefined) config.pmem = input.pmem.map((p) => defaultPmemConfig(p));
  if (input.rate_limit_groups !== undefined) config.rate_limit_groups = input.rate_limit_groups.map((g) => stripUndefined(g) as RateLimitGroupConfig);
  if (input.vsock !== undefined && input.vsock !== null) config.vsock = stripUndefined(input.vsock) as VsockConfig;
  if (input.balloon !== undefined && input.balloon !== null) config.balloon = defaultBalloonConfig(input.balloon);
  return config;
}

function stripUndefined<T extends object>(o: T): T {
  const out = {} as T;
  for (const k of Object.keys(o) as (keyof T)[]) {
    if (o[k] !== undefined) out[k] = o[k];
  }
  return out;
}

// ---- Validation ----

/** One problem found in a VmConfig; `path` is like "cpus.boot_vcpus" or "disks[1].queue_size". */
export interface VmConfigIssue {
  path: string;
  message: string;
}

/** Thrown by `assertValidVmConfig`. */
export class VmConfigError extends Error {
  override name = 'VmConfigError';
  constructor(readonly issues: VmConfigIssue[]) {
    super(issues.map((i) => `${i.path}: ${i.message}`).join('; '));
  }
}

function isInt(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v);
}

function isPowerOfTwo(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0;
}

const MAC_RE = /^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/;

/** Parse a dotted-quad IPv4 address; undefined if malformed. */
export function parseIpv4(s: string): number[] | undefined {
  const parts = s.split('.');
  if (parts.length !== 4) return undefined;
  const out: number[] = [];
  for (const p of parts) {
    if (!/^\d{1,3}$/.test(p)) return undefined;
    const n = Number(p);
    if (n > 255) return undefined;
    out.push(n);
  }
  return out;
}

function isNetmask(s: string): boolean {
  const b = parseIpv4(s);
  if (b === undefined) return false;
  const v = ((b[0]! << 24) | (b[1]! << 16) | (b[2]! << 8) | b[3]!) >>> 0;
  // Contiguous ones followed by zeros.
  const inv = ~v >>> 0;
  return (inv & (inv + 1)) === 0;
}

/** A MAC address "xx:xx:xx:xx:xx:xx"; rejects multicast (I/G bit) addresses. */
export function isValidMac(s: string): boolean {
  if (!MAC_RE.test(s)) return false;
  return (parseInt(s.slice(0, 2), 16) & 0x01) === 0;
}

/** The number of PCI segments a configuration has (platform.num_pci_segments, default 1). */
export function numPciSegments(config: Pick<VmConfig, 'platform'>): number {
  return (isPlainObject(config.platform) ? config.platform.num_pci_segments : undefined) ?? DEFAULT_NUM_PCI_SEGMENTS;
}

/**
 * The rule for a device's `pci_segment` (Cloud Hypervisor's InvalidPciSegment): undefined (segment
 * 0) or an integer below platform.num_pci_segments. `path` names the field, e.g.
 * "disks[1].pci_segment". Returns the problem, or undefined when it is fine; every device config
 * with a pci_segment (disk, net, rng, fs, vsock, pmem, ...) calls this from validateVmConfig.
 */
export function pciSegmentIssue(config: Pick<VmConfig, 'platform'>, path: string, segment: unknown): VmConfigIssue | undefined {
  if (segment === undefined) return undefined;
  const n = numPciSegments(config);
  if (!isInt(segment) || segment < 0) return { path, message: `must be an integer >= 0, got ${String(segment)}` };
  if (isInt(n) && n >= 1 && n <= MAX_NUM_PCI_SEGMENTS && segment >= n) {
    return { path, message: `${segment} names a PCI segment that does not exist: platform.num_pci_segments is ${n} (segments 0..${n - 1})` };
  }
  return undefined;
}

/**
 * Check types and ranges of a complete VmConfig. Returns every problem found
 * (empty when valid). Does not touch the file system.
 */
export function validateVmConfig(config: VmConfig): VmConfigIssue[] {
  const issues: VmConfigIssue[] = [];
  const bad = (path: string, message: string) => issues.push({ path, message });
  const str = (path: string, v: unknown, required = false) => {
    if (v === undefined) {
      if (required) bad(path, 'is required');
      return;
    }
    if (typeof v !== 'string' || v.length === 0) bad(path, 'must be a non-empty string');
  };
  const bool = (path: string, v: unknown) => {
    if (v !== undefined && typeof v !== 'boolean') bad(path, 'must be a boolean');
  };
  const segment = (path: string, v: unknown) => {
    const issue = pciSegmentIssue(config, path, v);
    if (issue) issues.push(issue);
  };
  /** A RateLimiterConfig: {bandwidth?, ops?}, each a TokenBucket whose numbers make sense. */
  const limiter = (path: string, v: unknown) => {
    if (v === undefined) return;
    if (!isPlainObject(v)) {
      bad(path, 'must be an object {bandwidth, ops}');
      return;
    }
    for (const [k, b] of Object.entries(v)) {
      if (k !== 'bandwidth' && k !== 'ops') {
        bad(`${path}.${k}`, 'is not a RateLimiterConfig field (bandwidth, ops)');
        continue;
      }
      if (b === undefined || b === null) continue;
      const issue = tokenBucketIssue(b);
      if (issue) bad(issue.field === '' ? `${path}.${k}` : `${path}.${k}.${issue.field}`, issue.message);
    }
  };
  // Device number 0 is each segment's host bridge; two devices on one number: the placement says which (VirtioConfigError).
  const deviceId = (path: string, v: unknown) => {
    if (v !== undefined && (!isInt(v) || v < 1 || v > 31)) bad(path, `must be a device number in 1..31 (0 is the host bridge), got ${String(v)}`);
  };
  const iothread = (path: string, v: unknown) => {
    if (v !== undefined && (typeof v !== 'string' || !IOTHREAD_NAME.test(v))) bad(path, `must be a name of 1..32 letters, digits, '_' or '-', got ${JSON.stringify(v)}`);
  };

  // platform
  if (config.platform !== undefined) {
    const ps: unknown = isPlainObject(config.platform) ? config.platform.num_pci_segments : undefined;
    if (!isPlainObject(config.platform)) bad('platform', 'must be an object');
    else if (!isInt(ps) || ps < 1 || ps > MAX_NUM_PCI_SEGMENTS) {
      bad('platform.num_pci_segments', `must be an integer in 1..${MAX_NUM_PCI_SEGMENTS}, got ${String(ps)}`);
    }
  }

  // payload
  const p = config.payload as PayloadConfig | undefined;
  if (!isPlainObject(p)) {
    bad('payload', 'is required');
  } else {
    str('payload.kernel', p.kernel);
    str('payload.firmware', p.firmware);
    str('payload.initramfs', p.initramfs);
    if (p.cmdline !== undefined && typeof p.cmdline !== 'string') bad('payload.cmdline', 'must be a string');
    if (p.kernel === undefined && p.firmware === undefined) {
      bad('payload', 'a kernel or a firmware is required to boot');
    }
    if (p.kernel === undefined && p.firmware !== undefined) {
      if (p.initramfs !== undefined) bad('payload.initramfs', 'requires a kernel');
      if (p.cmdline !== undefined) bad('payload.cmdline', 'requires a kernel');
    }
  }

  // cpus
  const c = config.cpus;
  if (!isPlainObject(c)) {
    bad('cpus', 'is required');
  } else {
    const bootOk = isInt(c.boot_vcpus) && c.boot_vcpus >= 1;
    if (!bootOk) bad('cpus.boot_vcpus', `must be an integer >= 1, got ${String(c.boot_vcpus)}`);
    else if (c.boot_vcpus > MAX_VCPUS) bad('cpus.boot_vcpus', `${c.boot_vcpus} exceeds the limit of ${MAX_VCPUS}`);
    if (!isInt(c.max_vcpus) || c.max_vcpus < 1) {
      bad('cpus.max_vcpus', `must be an integer >= 1, got ${String(c.max_vcpus)}`);
    } else {
      if (c.max_vcpus > MAX_VCPUS) bad('cpus.max_vcpus', `${c.max_vcpus} exceeds the limit of ${MAX_VCPUS}`);
      if (bootOk && c.max_vcpus < c.boot_vcpus) {
        bad('cpus.max_vcpus', `(${c.max_vcpus}) is lower than boot_vcpus (${c.boot_vcpus})`);
      }
    }
    if (c.max_phys_bits !== undefined && (!isInt(c.max_phys_bits) || c.max_phys_bits < 32 || c.max_phys_bits > 52)) {
      bad('cpus.max_phys_bits', `must be an integer in 32..52, got ${String(c.max_phys_bits)}`);
    }
    if (c.topology !== undefined && !isPlainObject(c.topology)) {
      bad('cpus.topology', 'must be an object');
    } else if (c.topology !== undefined) {
      const t = c.topology;
      const fields = ['threads_per_core', 'cores_per_die', 'dies_per_package', 'packages'] as const;
      let ok = true;
      for (const f of fields) {
        if (!isInt(t[f]) || t[f] < 1) {
          bad(`cpus.topology.${f}`, `must be an integer >= 1, got ${String(t[f])}`);
          ok = false;
        }
      }
      if (ok && isInt(c.max_vcpus)) {
        const total = t.threads_per_core * t.cores_per_die * t.dies_per_package * t.packages;
        if (total !== c.max_vcpus) {
          bad('cpus.topology', `describes ${total} vCPUs but max_vcpus is ${c.max_vcpus}`);
        }
      }
    }
    bool('cpus.kvm_hyperv', c.kvm_hyperv);
    bool('cpus.nested', c.nested);
  }

  // memory
  const m = config.memory;
  if (!isPlainObject(m)) {
    bad('memory', 'is required');
  } else {
    if (!isInt(m.size) || m.size <= 0) {
      bad('memory.size', `must be a positive integer number of bytes, got ${String(m.size)}`);
    } else if (m.size % PAGE_SIZE !== 0) {
      bad('memory.size', `${m.size} is not a multiple of 4 KiB`);
    } else if (m.size < MIN_MEMORY_SIZE) {
      bad('memory.size', `${m.size} bytes is below the minimum of ${MIN_MEMORY_SIZE} (32 MiB)`);
    }
    if (m.hotplug_size !== undefined && (!isInt(m.hotplug_size) || m.hotplug_size < 0 || m.hotplug_size % PAGE_SIZE)) {
      bad('memory.hotplug_size', 'must be a non-negative multiple of 4 KiB');
    }
    if (m.hotplug_method !== undefined && !(HOTPLUG_METHODS as readonly string[]).includes(m.hotplug_method)) {
      bad('memory.hotplug_method', `must be one of ${HOTPLUG_METHODS.map((x) => `"${x}"`).join(', ')}, got ${JSON.stringify(m.hotplug_method)}`);
    } else if (m.hotplug_method === 'VirtioMem' || (m.hotplug_size !== undefined && m.hotplug_size !== 0) || m.hotplugged_size !== undefined) {
      // VirtioMem, Cloud Hypervisor's rules (vmm/src/config.rs, memory_manager.rs): the region is
      // hotplug_size bytes of whole virtio-mem blocks; hotplugged_size is what is plugged at boot.
      // Acpi: the hotplug area is hotplug_size in whole 128 MiB memory blocks; hotplugged_size is
      // what is plugged (in the same blocks).
      const virtioMem = m.hotplug_method === 'VirtioMem';
      const unit = virtioMem ? VIRTIO_MEM_BLOCK_SIZE : ACPI_MEMORY_BLOCK_SIZE;
      const unitName = virtioMem ? '2 MiB (the virtio-mem block size)' : '128 MiB (the memory block ACPI hotplug adds)';
      const hs = m.hotplug_size;
      const what = virtioMem ? 'virtio-mem region' : 'ACPI memory hotplug area';
      if (virtioMem && (hs === undefined || hs === 0)) bad('memory.hotplug_size', 'is required with hotplug_method "VirtioMem" (the size of the virtio-mem region, e.g. hotplug_size=1G)');
      else if (virtioMem && isInt(hs) && hs % VIRTIO_MEM_BLOCK_SIZE !== 0) bad('memory.hotplug_size', `${hs} is not a multiple of 2 MiB (the virtio-mem block size)`);
      else if (isInt(hs) && isInt(m.size) && m.size + hs > MAX_VIRTIO_MEM_TOTAL) bad('memory.hotplug_size', `${hs} bytes beside ${m.size} of RAM do not fit in the guest physical address space`);
      else if (isInt(hs) && isInt(m.size) && m.size % PAGE_SIZE === 0 && m.size >= MIN_MEMORY_SIZE && hotplugRegionSize(m as MemoryConfig) > 0) {
        // The region must be addressable by the guest's CPUs (CPUID 0x80000008 physical address bits).
        const bits = isPlainObject(config.cpus) && isInt(config.cpus.max_phys_bits) ? config.cpus.max_phys_bits : DEFAULT_MAX_PHYS_BITS;
        const r = hotplugRegion(m.size, hotplugRegionSize(m as MemoryConfig));
        if (bits >= 32 && bits <= 52 && r.gpa + r.size > 2 ** bits) {
          bad('memory.hotplug_size', `the ${what} [0x${r.gpa.toString(16)}, 0x${(r.gpa + r.size).toString(16)}) lies above the guest's ${bits} physical address bits (cpus.max_phys_bits)`);
        }
      }
      const hp = m.hotplugged_size;
      if (hp !== undefined) {
        const room = isInt(hs) ? hotplugRegionSize(m as MemoryConfig) : 0;
        if (!isInt(hp) || hp < 0 || hp % unit !== 0) bad('memory.hotplugged_size', `must be a non-negative multiple of ${unitName}, got ${String(hp)}`);
        else if (hp > room) bad('memory.hotplugged_size', virtioMem ? `${hp} bytes is more than hotplug_size (${String(hs)})` : `${hp} bytes is more than the ACPI memory hotplug area (${room} bytes: hotplug_size ${String(hs ?? 0)} in whole 128 MiB blocks)`);
      }
    }
    if (m.hugepage_size !== undefined) {
      if (!m.hugepages) bad('memory.hugepage_size', 'requires hugepages');
      if (!isInt(m.hugepage_size) || !isPowerOfTwo(m.hugepage_size) || m.hugepage_size < PAGE_SIZE) {
        bad('memory.hugepage_size', `must be a power of two >= 4 KiB, got ${String(m.hugepage_size)}`);
      } else if (isInt(m.size) && m.size % m.hugepage_size !== 0) {
        bad('memory.size', `must be a multiple of hugepage_size (${m.hugepage_size})`);
      }
    }
    for (const f of ['mergeable', 'shared', 'hugepages', 'prefault', 'thp'] as const) bool(`memory.${f}`, m[f]);
  }

  // serial / console
  const consoleLike = (name: 'serial' | 'console', v: SerialConfig | ConsoleConfig | undefined) => {
    if (!isPlainObject(v)) {
      bad(name, 'is required');
      return;
    }
    if (!CONSOLE_MODES.includes(v.mode)) {
      bad(`${name}.mode`, `must be one of ${CONSOLE_MODES.join(', ')}, got ${String(v.mode)}`);
      return;
    }
    if (v.mode === 'File') str(`${name}.file`, v.file, true);
    if (v.mode === 'Socket') str(`${name}.socket`, v.socket, true);
  };
  consoleLike('serial', config.serial);
  consoleLike('console', config.console);

  // disks
  const ids = new Map<string, string>();
  const id = (path: string, v: string | undefined) => {
    if (v === undefined) return;
    if (typeof v !== 'string' || v.length === 0) {
      bad(path, 'must be a non-empty string');
      return;
    }
    const prev = ids.get(v);
    if (prev !== undefined) bad(path, `"${v}" is already used by ${prev}`);
    else ids.set(v, path.replace(/\.id$/, ''));
  };
  const boot = isInt(config.cpus?.boot_vcpus) ? config.cpus.boot_vcpus : undefined;
  const list = <T>(name: string, v: T[] | undefined): T[] => {
    if (v === undefined) return [];
    if (!Array.isArray(v)) {
      bad(name, 'must be an array');
      return [];
    }
    return v;
  };
  // rate_limit_groups (before the disks that name them)
  const groupIds = new Set<string>();
  const groupThread = new Map<string, { thread: string; at: string }>();
  list('rate_limit_groups', config.rate_limit_groups).forEach((g, i) => {
    const at = `rate_limit_groups[${i}]`;
    if (!isPlainObject(g)) {
      bad(at, 'must be an object {id, rate_limiter_config}');
      return;
    }
    if (typeof g.id !== 'string' || g.id.length === 0) bad(`${at}.id`, 'is required (a non-empty string)');
    else if (groupIds.has(g.id)) bad(`${at}.id`, `"${g.id}" is already used by another rate limit group`);
    else groupIds.add(g.id);
    if (g.rate_limiter_config === undefined) bad(`${at}.rate_limiter_config`, 'is required');
    else limiter(`${at}.rate_limiter_config`, g.rate_limiter_config);
  });
  list('disks', config.disks).forEach((d, i) => {
    const at = `disks[${i}]`;
    if (!isPlainObject(d)) {
      bad(at, 'must be an object');
      return;
    }
    if (d.vhost_user) {
      str(`${at}.vhost_socket`, d.vhost_socket, true);
      if (d.path !== undefined) bad(at, 'path and vhost_socket are mutually exclusive');
      if (!config.memory?.shared) bad(at, 'vhost_user requires shared memory (memory.shared)');
    } else {
      str(`${at}.path`, d.path, true);
    }
    if (!isInt(d.num_queues) || d.num_queues < 1) {
      bad(`${at}.num_queues`, `must be an integer >= 1, got ${String(d.num_queues)}`);
    } else if (boot !== undefined && d.num_queues > boot) {
      bad(`${at}.num_queues`, `(${d.num_queues}) exceeds the number of boot vCPUs (${boot})`);
    }
    if (
      !isInt(d.queue_size) ||
      !isPowerOfTwo(d.queue_size) ||
      d.queue_size <= MIN_BLOCK_QUEUE_SIZE_EXCLUSIVE ||
      d.queue_size > MAX_QUEUE_SIZE
    ) {
      bad(`${at}.queue_size`, `must be a power of two in 4..${MAX_QUEUE_SIZE}, got ${String(d.queue_size)}`);
    }
    if (d.serial !== undefined && (typeof d.serial !== 'string' || d.serial.length > 20)) {
      bad(`${at}.serial`, 'must be a string of at most 20 bytes (VIRTIO_BLK_ID_BYTES)');
    }
    for (const f of ['readonly', 'direct', 'iommu', 'vhost_user'] as const) bool(`${at}.${f}`, d[f]);
    segment(`${at}.pci_segment`, d.pci_segment);
    deviceId(`${at}.pci_device_id`, d.pci_device_id);
    iothread(`${at}.iothread`, d.iothread);
    limiter(`${at}.rate_limiter_config`, d.rate_limiter_config);
    if (d.rate_limit_group !== undefined) {
      const g = d.rate_limit_group;
      if (typeof g !== 'string' || g.length === 0) bad(`${at}.rate_limit_group`, 'must be a non-empty string');
      else if (!groupIds.has(g)) bad(`${at}.rate_limit_group`, `"${g}" is not a rate_limit_groups id (--rate-limit-group id=${g},...)`);
      else {
        // A group's limiter lives in one I/O thread: its disks must be served by the same one.
        const th = d.iothread ?? '';
        const prev = groupThread.get(g);
        if (prev === undefined) groupThread.set(g, { thread: th, at });
        else if (prev.thread !== th) bad(`${at}.rate_limit_group`, `"${g}" is shared with ${prev.at}, which is served by ${prev.thread === '' ? "the VM's shared I/O thread" : `iothread ${prev.thread}`}; disks of one rate limit group must name the same iothread`);
      }
      if (d.rate_limiter_config !== undefined) bad(`${at}.rate_limit_group`, 'and rate_limiter_config are mutually exclusive');
    }
    if (d.vhost_user && (d.rate_limiter_config !== undefined || d.rate_limit_group !== undefined)) bad(at, 'rate limiting is not available for vhost-user disks');
    id(`${at}.id`, d.id);
  });

  // net
  list('net', config.net).forEach((n, i) => {
    const at = `net[${i}]`;
    if (!isPlainObject(n)) {
      bad(at, 'must be an object');
      return;
    }
    if (n.vhost_user) {
      str(`${at}.vhost_socket`, n.vhost_socket, true);
      if (!config.memory?.shared) bad(at, 'vhost_user requires shared memory (memory.shared)');
    }
    str(`${at}.tap`, n.tap);
    if (typeof n.tap === 'string' && n.tap.length > 15) bad(`${at}.tap`, 'interface names are at most 15 characters');
    if (typeof n.ip !== 'string' || parseIpv4(n.ip) === undefined) {
      bad(`${at}.ip`, `must be an IPv4 address, got ${String(n.ip)}`);
    }
    if (typeof n.mask !== 'string' || !isNetmask(n.mask)) {
      bad(`${at}.mask`, `must be an IPv4 netmask, got ${String(n.mask)}`);
    }
    if (n.mac !== undefined && (typeof n.mac !== 'string' || !isValidMac(n.mac))) {
      bad(`${at}.mac`, `must be a unicast MAC address xx:xx:xx:xx:xx:xx, got ${String(n.mac)}`);
    }
    if (n.host_mac !== undefined && (typeof n.host_mac !== 'string' || !isValidMac(n.host_mac))) {
      bad(`${at}.host_mac`, `must be a unicast MAC address xx:xx:xx:xx:xx:xx, got ${String(n.host_mac)}`);
    }
    if (n.mtu !== undefined && (!isInt(n.mtu) || n.mtu < 68 || n.mtu > 65535)) {
      bad(`${at}.mtu`, `must be an integer in 68..65535, got ${String(n.mtu)}`);
    }
    // A virtio-net queue pair is one RX and one TX queue.
    if (!isInt(n.num_queues) || n.num_queues < 2 || n.num_queues % 2 !== 0) {
      bad(`${at}.num_queues`, `must be an even integer >= 2 (RX/TX pairs), got ${String(n.num_queues)}`);
    } else if (boot !== undefined && n.num_queues / 2 > boot) {
      bad(`${at}.num_queues`, `(${n.num_queues}) has more queue pairs than boot vCPUs (${boot})`);
    }
    if (!isInt(n.queue_size) || !isPowerOfTwo(n.queue_size) || n.queue_size < 2 || n.queue_size > MAX_QUEUE_SIZE) {
      bad(`${at}.queue_size`, `must be a power of two in 2..${MAX_QUEUE_SIZE}, got ${String(n.queue_size)}`);
    }
    for (const f of ['iommu', 'vhost_user', 'offload_tso', 'offload_ufo', 'offload_csum'] as const) {
      bool(`${at}.${f}`, n[f]);
    }
    segment(`${at}.pci_segment`, n.pci_segment);
    deviceId(`${at}.pci_device_id`, n.pci_device_id);
    iothread(`${at}.iothread`, n.iothread);
    limiter(`${at}.rate_limiter_config`, n.rate_limiter_config);
    if (n.vhost_user && n.rate_limiter_config !== undefined) bad(`${at}.rate_limiter_config`, 'is not available for vhost-user net');
    if (n.fds !== undefined) {
      // Cloud Hypervisor: one tap fd per queue pair (VnetQueueFdMismatch); fds 0..2 are reserved.
      if (!Array.isArray(n.fds) || n.fds.length === 0 || !n.fds.every((fd) => isInt(fd) && fd > 2)) {
        bad(`${at}.fds`, 'must be a non-empty list of file descriptors > 2');
      } else if (n.num_queues !== n.fds.length * 2) {
        bad(`${at}.num_queues`, `(${String(n.num_queues)}) does not match the ${n.fds.length} tap fd(s) sent with the request (one fd per queue pair: num_queues = ${n.fds.length * 2})`);
      }
      if (n.tap !== undefined) bad(`${at}.tap`, 'cannot be combined with tap fds');
      if (n.vhost_user) bad(`${at}.vhost_user`, 'cannot be combined with tap fds');
    }
    id(`${at}.id`, n.id);
  });

  // fs (virtio-fs over vhost-user)
  list('fs', config.fs).forEach((f, i) => {
    const at = `fs[${i}]`;
    if (!isPlainObject(f)) {
      bad(at, 'must be an object');
      return;
    }
    if (typeof f.tag !== 'string' || f.tag.length === 0) bad(`${at}.tag`, 'is required (tag=<name>, what the guest mounts)');
    else if (Buffer.byteLength(f.tag) > FS_TAG_MAX_BYTES) bad(`${at}.tag`, `"${f.tag}" is longer than ${FS_TAG_MAX_BYTES} bytes`);
    if (typeof f.socket !== 'string' || f.socket.length === 0) bad(`${at}.socket`, 'is required (socket=<path> of the vhost-user backend, e.g. virtiofsd)');
    else if (Buffer.byteLength(f.socket) > 107) bad(`${at}.socket`, 'is longer than a Unix socket path may be (107 bytes)');
    if (!isInt(f.num_queues) || f.num_queues < 1 || f.num_queues > 64) bad(`${at}.num_queues`, `must be an integer in 1..64, got ${String(f.num_queues)}`);
    if (!isInt(f.queue_size) || !isPowerOfTwo(f.queue_size) || f.queue_size > MAX_QUEUE_SIZE) {
      bad(`${at}.queue_size`, `must be a power of two in 1..${MAX_QUEUE_SIZE}, got ${String(f.queue_size)}`);
    }
    segment(`${at}.pci_segment`, f.pci_segment);
    iothread(`${at}.iothread`, f.iothread);
    if (isPlainObject(config.memory) && config.memory.shared !== true) bad(at, FS_NEEDS_SHARED);
    id(`${at}.id`, f.id);
  });

  // pmem (virtio-pmem)
  list('pmem', config.pmem).forEach((pm, i) => {
    const at = `pmem[${i}]`;
    if (!isPlainObject(pm)) {
      bad(at, 'must be an object');
      return;
    }
    if (typeof pm.file !== 'string' || pm.file.length === 0) bad(`${at}.file`, 'is required (file=<path> of the backing file)');
    if (pm.size !== undefined) {
      if (!isInt(pm.size) || pm.size <= 0) bad(`${at}.size`, `must be a positive integer number of bytes, got ${String(pm.size)}`);
      else if (pm.size % PMEM_ALIGNMENT !== 0) bad(`${at}.size`, `${pm.size} is not a multiple of 2 MiB (virtio-pmem regions are mapped in 2 MiB units)`);
    }
    for (const f of ['iommu', 'discard_writes'] as const) bool(`${at}.${f}`, pm[f]);
    if (pm.iommu === true) bad(`${at}.iommu`, 'is not supported (no virtual IOMMU)');
    segment(`${at}.pci_segment`, pm.pci_segment);
    id(`${at}.id`, pm.id);
  });

  // balloon (virtio-balloon)
  if (config.balloon !== undefined) {
    const b = config.balloon;
    if (!isPlainObject(b)) bad('balloon', 'must be an object');
    else {
      const ram = isPlainObject(config.memory) ? config.memory.size : undefined;
      const issue = balloonSizeIssue(b.size, ram);
      if (issue !== undefined) bad('balloon.size', issue);
      for (const f of ['deflate_on_oom', 'free_page_reporting', 'iommu'] as const) bool(`balloon.${f}`, b[f]);
      if (b.iommu === true) bad('balloon.iommu', 'is not supported (no virtual IOMMU)');
      segment('balloon.pci_segment', b.pci_segment);
      id('balloon.id', b.id);
    }
  }

  // rng
  if (!isPlainObject(config.rng)) bad('rng', 'is required');
  else {
    str('rng.src', config.rng.src, true);
    segment('rng.pci_segment', config.rng.pci_segment);
    id('rng.id', config.rng.id);
  }
  if (isPlainObject(config.console)) id('console.id', config.console.id);

  // vsock
  if (config.vsock !== undefined) {
    const v = config.vsock;
    if (!isPlainObject(v)) bad('vsock', 'must be an object');
    else {
      if (v.cid === undefined) bad('vsock.cid', 'is required');
      else if (!isInt(v.cid) || v.cid < 3 || v.cid >= 0xffffffff) bad('vsock.cid', `must be an integer in 3..${0xffffffff - 1} (0..2 are reserved), got ${String(v.cid)}`);
      str('vsock.socket', v.socket, true);
      bool('vsock.iommu', v.iommu);
      if (v.iommu === true) bad('vsock.iommu', 'is not supported (no virtual IOMMU)');
      segment('vsock.pci_segment', v.pci_segment);
      iothread('vsock.iothread', v.iothread);
      id('vsock.id', v.id);
    }
  }

  bool('iommu', config.iommu);
  bool('watchdog', config.watchdog);
  bool('pvpanic', config.pvpanic);
  return issues;
}

/**
 * The rule for a balloon size (config balloon.size, vm.resize desired_balloon): an integer number
 * of bytes, smaller than guest RAM (Cloud Hypervisor's BalloonLargerThanRam); whole 4 KiB pages
 * count (the rest is ignored, as in CH). Returns the problem, or undefined.
 */
export function balloonSizeIssue(size: unknown, ramSize: unknown): string | undefined {
  if (size === undefined) return 'is required (size=<bytes>)';
  if (!isInt(size) || size < 0) return `must be an integer number of bytes >= 0, got ${String(size)}`;
  if (isInt(ramSize) && size >= ramSize) return `${size} bytes is not smaller than guest RAM (${ramSize} bytes)`;
  return undefined;
}

/** RAM and a virtio-mem region together stay far below the 52-bit guest physical space (1 PiB). */
const MAX_VIRTIO_MEM_TOTAL = 2 ** 50;

/** The virtio-mem region's size: hotplug_size with hotplug_method "VirtioMem", else 0 (no device). */
export function virtioMemRegionSize(m: Pick<MemoryConfig, 'hotplug_method' | 'hotplug_size'>): number {
  return m.hotplug_method === 'VirtioMem' && m.hotplug_size !== undefined && m.hotplug_size > 0 ? m.hotplug_size : 0;
}

/**
 * The ACPI memory hotplug area's size: with hotplug_method "Acpi" (the default), hotplug_size in
 * whole 128 MiB blocks; 0: no area, no memory devices in the DSDT.
 */
export function acpiHotplugAreaSize(m: Pick<MemoryConfig, 'hotplug_method' | 'hotplug_size'>): number {
  if ((m.hotplug_method ?? 'Acpi') !== 'Acpi' || m.hotplug_size === undefined || !(m.hotplug_size > 0)) return 0;
  return Math.floor(m.hotplug_size / ACPI_MEMORY_BLOCK_SIZE) * ACPI_MEMORY_BLOCK_SIZE;
}

/** The first device memory range (layout.ts hotplugRegion): the virtio-mem region or the ACPI hotplug area. */
export function hotplugRegionSize(m: Pick<MemoryConfig, 'hotplug_method' | 'hotplug_size'>): number {
  return virtioMemRegionSize(m) || acpiHotplugAreaSize(m);
}

/**
 * The rule for vm.resize desired_ram (Cloud Hypervisor's). virtio-mem: the guest's new memory,
 * boot RAM (memory.size) plus whole 2 MiB blocks of the region, at most size + hotplug_size.
 * Acpi: memory is only added, in whole 128 MiB blocks, up to size + the hotplug area. Returns
 * the problem, or undefined.
 */
export function desiredRamIssue(desired: unknown, m: Pick<MemoryConfig, 'size' | 'hotplug_method' | 'hotplug_size' | 'hotplugged_size'>): string | undefined {
  if (!isInt(desired) || desired < 0) return `must be an integer number of bytes, got ${String(desired)}`;
  const area = acpiHotplugAreaSize(m);
  if (area > 0) {
    const now = m.size + (m.hotplugged_size ?? 0);
    if (desired < now) return `${desired} bytes is less than the guest's memory now (${now}: memory.size + hotplugged_size): ACPI memory hotplug only adds memory`;
    if (desired > m.size + area) return `${desired} bytes is more than memory.size + memory.hotplug_size (${m.size + area}, the hotplug area in whole 128 MiB blocks)`;
    if ((desired - now) % ACPI_MEMORY_BLOCK_SIZE !== 0) return `${desired} bytes is not the guest's memory now (${now}) plus a multiple of 128 MiB (the memory block ACPI hotplug adds)`;
    return undefined;
  }
  const region = virtioMemRegionSize(m);
  if (desired < m.size) return `${desired} bytes is less than the boot memory (memory.size ${m.size}): virtio-mem only unplugs what it plugged`;
  if (desired > m.size + region) return `${desired} bytes is more than memory.size + memory.hotplug_size (${m.size + region})`;
  if ((desired - m.size) % VIRTIO_MEM_BLOCK_SIZE !== 0) return `${desired} bytes is not memory.size (${m.size}) plus a multiple of 2 MiB (the virtio-mem block size)`;
  return undefined;
}

/** A device's `iothread=` name. */
const IOTHREAD_NAME = /^[A-Za-z0-9_-]{1,32}$/;

/** Throw a VmConfigError listing every problem, if any. */
export function assertValidVmConfig(config: VmConfig): void {
  const issues = validateVmConfig(config);
  if (issues.length > 0) throw new VmConfigError(issues);
}
