// Command-line parser compatible with Cloud Hypervisor's syntax
// (cloud-hypervisor/src/main.rs and vmm/src/config.rs `*Config::parse`):
//
//   stratovisor --kernel PATH [--initramfs PATH] [--cmdline STR] [--cpus boot=N,max=M]
//               [--memory size=512M,shared=on] [--serial MODE] [--console MODE]
//               [--disk path=...[,...] ...] [--net tap=...[,...] ...] [--rng src=PATH]
//               [--api-socket path=PATH|fd=N|PATH] [--event-monitor path=PATH|fd=N]
//               [-v...] [--version] [-h|--help]
//   stratovisor remote --api-socket PATH <command> [args...] [--json]
//
// Option values use CH's "key=value,key=value" lists: values may be double-quoted
// to contain commas, and brackets ([...]) are kept together. `--disk` and `--net`
// take one or more values (each a device) and may be repeated, as in CH.
//
// The parser never touches the file system; `validateVmConfig` ranges are
// checked and reported against the flag that set them.

import {
  createVmConfig,
  type BalloonConfig,
  validateVmConfig,
  type ConsoleMode,
  type CpusConfig,
  type DeepPartial,
  type DiskConfig,
  type FsConfig,
  type MemoryConfig,
  type HotplugMethod,
  type NetConfig,
  type PmemConfig,
  type RateLimitGroupConfig,
  type RateLimiterConfig,
  type TokenBucketConfig,
  type VsockConfig,
  type VmConfig,
  type VmConfigInput,
} from '../vmm/config.js';
import type { RestoreConfig } from '../api/controller.js';
import { parseSeccompMode, type SeccompMode } from '../sys/seccomp.js';
import { parseAccess, type LandlockRule } from '../sys/landlock.js';

/** A command-line error; the message names the flag and the problem. */
export class CliError extends Error {
  override name = 'CliError';
  constructor(
    message: string,
    readonly flag?: string,
  ) {
    super(message);
  }
}

export type SocketArg = { path: string } | { fd: number };

export interface RunArgs {
  kind: 'run';
  /** null when no VM option was given: the VMM waits for `vm.create` on the API socket. */
  config: VmConfig | null;
  /** Number of -v flags. */
  verbosity: number;
  apiSocket?: SocketArg;
  eventMonitor?: SocketArg;
  logFile?: string;
  /** Process confinement (--seccomp, --landlock, --landlock-rules; see cli/confine.ts). */
  confine: ConfineArgs;
  /** --hypervisor (absent: auto). */
  hypervisor?: 'kvm' | 'mshv' | 'auto';
  /** --restore: the RestoreConfig of vm.restore (no VM flags with it, as in CH). */
  restore?: RestoreConfig;
}

/** --seccomp (default true, as in CH), --landlock, --landlock-rules, --self-test-forbidden. */
export interface ConfineArgs {
  seccomp: SeccompMode;
  landlock: boolean;
  landlockRules: LandlockRule[];
  /** Forbidden calls to try once confined, instead of running the VM (cli/confine.ts). */
  selfTestForbidden?: string[];
}

export interface RemoteArgs {
  kind: 'remote';
  apiSocket: string;
  command: RemoteCommand;
  /** Everything after the command (its own arguments and flags), minus --json. */
  args: string[];
  json: boolean;
}

export type CliResult = RunArgs | RemoteArgs | { kind: 'version' } | { kind: 'help'; text: string } | { kind: 'jail'; argv: string[] };

/** ch-remote's commands. */
export const REMOTE_COMMANDS = [
  'add-device',
  'add-disk',
  'add-fs',
  'add-net',
  'add-pmem',
  'add-user-device',
  'add-vdpa',
  'add-vsock',
  'boot',
  'counters',
  'coredump',
  'create',
  'delete',
  'info',
  'nmi',
  'pause',
  'ping',
  'power-button',
  'reboot',
  'receive-migration',
  'remove-device',
  'resize',
  'resize-disk',
  'resize-zone',
  'restore',
  'resume',
  'send-migration',
  'shutdown',
  'shutdown-vmm',
  'snapshot',
] as const;
export type RemoteCommand = (typeof REMOTE_COMMANDS)[number];

// ---- Flag table ----

interface FlagSpec {
  name: string;
  /** Takes a value. */
  value: boolean;
  /** One or more values per occurrence, and repeatable (CH num_args(1..) + Append). */
  multi?: boolean;
  syntax: string;
  help: string;
}

const FLAGS: readonly FlagSpec[] = [
  { name: 'api-socket', value: true, syntax: 'path=<path>|fd=<fd>|<path>', help: 'HTTP API socket (UNIX domain socket)' },
  { name: 'cmdline', value: true, syntax: '<string>', help: 'Kernel command line' },
  {
    name: 'console',
    value: true,
    syntax: 'off|null|pty|tty|file=<path>|socket=<path>[,iommu=on|off]',
    help: 'virtio-console output (default: tty)',
  },
  {
    name: 'cpus',
    value: true,
    syntax: 'boot=<n>[,max=<n>][,topology=<t>:<c>:<d>:<p>][,kvm_hyperv=on|off][,max_phys_bits=<n>][,nested=on|off]',
    help: 'vCPUs (default: boot=1)',
  },
  {
    name: 'disk',
    value: true,
    multi: true,
    syntax:
      'path=<path>[,readonly=on|off][,direct=on|off][,iommu=on|off][,num_queues=<n>][,queue_size=<n>][,vhost_user=on|off][,socket=<path>][,id=<id>][,serial=<s>][,pci_segment=<n>][,iothread=<name>]' +
      '[,bw_size=<bytes>,bw_refill_time=<ms>[,bw_one_time_burst=<bytes>]][,ops_size=<n>,ops_refill_time=<ms>[,ops_one_time_burst=<n>]][,rate_limit_group=<id>]',
    help: 'virtio-blk disks (one or more values, repeatable); iothread=<name>: serve it from an I/O thread of its own (devices naming the same one share it) instead of the VM\'s shared one',
  },
  { name: 'event-monitor', value: true, syntax: 'path=<path>|fd=<fd>', help: 'File to report events on' },
  { name: 'firmware', value: true, syntax: '<path>', help: 'Firmware to boot instead of a kernel' },
  {
    name: 'fs',
    value: true,
    multi: true,
    syntax: 'tag=<tag>,socket=<path>[,num_queues=<n>][,queue_size=<n>][,id=<id>][,pci_segment=<n>][,iothread=<name>]',
    help: 'virtio-fs devices over a vhost-user backend such as virtiofsd (needs --memory shared=on)',
  },
  { name: 'initramfs', value: true, syntax: '<path>', help: 'Initramfs to load with the kernel' },
  { name: 'kernel', value: true, syntax: '<path>', help: 'Kernel image (vmlinux ELF or bzImage)' },
  { name: 'landlock', value: false, syntax: '', help: 'Confine file access to the paths the VM uses (Landlock)' },
  {
    name: 'landlock-rules',
    value: true,
    multi: true,
    syntax: 'path=<path>,access=[rw]',
    help: 'More paths Landlock allows (e.g. disks hot-plugged later); with --landlock',
  },
  { name: 'log-file', value: true, syntax: '<path>', help: 'Log file (default: stderr)' },
  {
    name: 'memory',
    value: true,
    syntax:
      'size=<size>[,shared=on|off][,hugepages=on|off][,hugepage_size=<size>][,mergeable=on|off][,prefault=on|off][,thp=on|off][,hotplug_size=<size>][,hotplugged_size=<size>][,hotplug_method=acpi|virtio-mem]',
    help: 'Guest RAM; sizes take K/M/G/T suffixes (default: size=512M)',
  },
  {
    name: 'net',
    value: true,
    multi: true,
    syntax:
      'tap=<if>[,ip=<ip>][,mask=<mask>][,mac=<mac>][,host_mac=<mac>][,mtu=<n>][,num_queues=<n>][,queue_size=<n>][,id=<id>][,iommu=on|off][,vhost_user=on|off][,socket=<path>][,offload_tso|ufo|csum=on|off][,pci_segment=<n>][,iothread=<name>]' +
      '[,bw_size=<bytes>,bw_refill_time=<ms>[,bw_one_time_burst=<bytes>]][,ops_size=<n>,ops_refill_time=<ms>[,ops_one_time_burst=<n>]]',
    help: 'virtio-net devices (one or more values, repeatable); iothread=<name> as for --disk; bw_*/ops_*: rate limits, RX and TX each',
  },
  {
    name: 'rate-limit-group',
    value: true,
    multi: true,
    syntax: 'id=<id>[,bw_size=<bytes>,bw_refill_time=<ms>[,bw_one_time_burst=<bytes>]][,ops_size=<n>,ops_refill_time=<ms>[,ops_one_time_burst=<n>]]',
    help: 'A rate limiter that the disks naming it (--disk rate_limit_group=<id>) share; a bucket of <size> tokens refilled every <refill_time> ms',
  },
  { name: 'platform', value: true, syntax: 'num_pci_segments=<n>', help: 'Platform: PCI segments 0..n-1 (default 1, at most 16); place devices with pci_segment=' },
  {
    name: 'pmem',
    value: true,
    multi: true,
    syntax: 'file=<path>[,size=<size>][,iommu=on|off][,discard_writes=on|off][,id=<id>][,pci_segment=<n>]',
    help: 'virtio-pmem devices: the file mapped into guest memory (size: default the file\'s, a multiple of 2 MiB); discard_writes=on: guest writes never reach the file',
  },
  {
    name: 'balloon',
    value: true,
    syntax: 'size=<size>[,deflate_on_oom=on|off][,free_page_reporting=on|off][,id=<id>][,pci_segment=<n>]',
    help: 'virtio-balloon: the balloon\'s target (K/M/G suffixes; vm.resize desired_balloon changes it); deflate_on_oom=on: the guest may deflate under memory pressure; free_page_reporting=on: the guest\'s free pages go back to the host',
  },
  { name: 'pvpanic', value: false, syntax: '', help: 'Enable the pvpanic device' },
  { name: 'hypervisor', value: true, syntax: 'kvm|mshv|auto', help: 'Hypervisor backend (default auto: mshv when /dev/mshv exists and /dev/kvm does not, else kvm)' },
  {
    name: 'seccomp',
    value: true,
    syntax: 'true|false|log|strict',
    help: 'seccomp filter (default: true = deny dangerous calls; strict = allow-list; log = log calls outside it)',
  },
  {
    name: 'self-test-forbidden',
    value: true,
    syntax: 'execve|worker-execve|ptrace|unshare|open:<path>|aread:<path>|write:<path>|stat:<path>|id[,...]',
    help: 'Confine the process, try these forbidden calls, report and exit (checks the confinement)',
  },
  { name: 'rng', value: true, syntax: 'src=<path>[,iommu=on|off][,pci_segment=<n>]', help: 'virtio-rng entropy source (default: src=/dev/urandom)' },
  {
    name: 'serial',
    value: true,
    syntax: 'off|null|pty|tty|file=<path>|socket=<path>',
    help: '16550 serial port output (default: null)',
  },
  { name: 'version', value: false, syntax: '', help: 'Print version (also -V)' },
  {
    name: 'vsock',
    value: true,
    syntax: 'cid=<cid>,socket=<path>[,iommu=on|off][,id=<id>][,pci_segment=<n>][,iothread=<name>]',
    help: 'virtio-vsock device; host side: the Unix socket <path> (CONNECT <port>) and <path>_<port>',
  },
  { name: 'watchdog', value: false, syntax: '', help: 'Enable virtio-watchdog' },
  {
    name: 'restore',
    value: true,
    syntax: 'source_url=<file:///dir>[,prefault=on|off][,resume=on|off]',
    help: 'Restore the VM of a snapshot directory (vm.snapshot); it starts paused unless resume=on',
  },
  { name: 'help', value: false, syntax: '', help: 'Print help (also -h)' },
];

const FLAG_BY_NAME = new Map(FLAGS.map((f) => [f.name, f]));

/** Cloud Hypervisor flags that exist there but are not implemented here. */
const UNSUPPORTED_CH_FLAGS = new Set([
  'dbus-object-path',
  'dbus-service-name',
  'dbus-system-bus',
  'debug-console',
  'device',
  'fw-cfg-config',
  'gdb',
  'generic-vhost-user',
  'host-data',
  'igvm',
  'ivshmem',
  'log-format',
  'memory-zone',
  'no-shutdown',
  'numa',
  'pci-segment',
  'pvmemcontrol',
  'rtc',
  'tpm',
  'user-device',
  'vdpa',
]);

/** Flags that make up a VM configuration (their presence means "boot a VM"). */
const VM_FLAGS = new Set([
  'kernel',
  'firmware',
  'initramfs',
  'cmdline',
  'cpus',
  'memory',
  'disk',
  'net',
  'fs',
  'pmem',
  'balloon',
  'rng',
  'serial',
  'console',
  'pvpanic',
  'watchdog',
  'platform',
  'vsock',
  'rate-limit-group',
]);

function buildUsage(): string {
  const lines = [
    'Usage: stratovisor [OPTIONS]',
    '       stratovisor remote --api-socket <path> <command> [args...] [--json]',
    '       stratovisor jail [--uid <n>] [--gid <n>] [--cgroup <file>=<value>]... -- <options> (see jail --help)',
    '       stratovisor console [--listen HOST:PORT] [--api-socket <path>]... [--dir DIR]   (web console)',
    '',
    'Launch a virtual machine (Cloud Hypervisor compatible command line).',
    '',
    'Options:',
  ];
  for (const f of FLAGS) {
    const head = f.value ? `  --${f.name} <${f.syntax}>` : `  --${f.name}`;
    lines.push(head, `        ${f.help}`);
  }
  lines.push(
    '  -v',
    '        Increase logging verbosity (repeatable: -v, -vv, -vvv)',
    '',
    'Remote commands:',
    `  ${REMOTE_COMMANDS.join(', ')}`,
    '',
  );
  return lines.join('\n');
}

/** Help text printed for -h/--help. */
export const usage: string = buildUsage();

// ---- Option lists (CH option_parser) ----

/**
 * Split a CH option list on commas outside double quotes and brackets.
 * Throws CliError on unbalanced quotes/brackets.
 */
export function splitOptionList(flag: string, s: string): string[] {
  const out: string[] = [];
  let cur = '';
  let quotes = false;
  let brackets = 0;
  for (const ch of s.trim()) {
    if (ch === '"') quotes = !quotes;
    else if (!quotes) {
      if (ch === '[') brackets++;
      else if (ch === ']') {
        if (brackets === 0) throw new CliError(`${flag}: unbalanced "]" in "${s}"`, flag);
        brackets--;
      } else if (ch === ',' && brackets === 0) {
        out.push(cur);
        cur = '';
        continue;
      }
    }
    cur += ch;
  }
  out.push(cur);
  if (quotes) throw new CliError(`${flag}: unterminated quote in "${s}"`, flag);
  if (brackets !== 0) throw new CliError(`${flag}: unbalanced "[" in "${s}"`, flag);
  return out;
}

function dequote(s: string): string {
  return s.replace(/"/g, '');
}

/**
 * Parse "key=value,flag,..." against the allowed keys. `valueless` keys take no
 * value. Unknown keys, keys given twice, and missing values are errors. Empty
 * values (`key=`) count as not given, as in CH.
 */
export function parseOptionList(
  flag: string,
  s: string,
  keys: readonly string[],
  valueless: readonly string[] = [],
): Map<string, string> {
  const out = new Map<string, string>();
  if (s.trim() === '') return out;
  for (const item of splitOptionList(flag, s)) {
    const eq = item.indexOf('=');
    const key = (eq < 0 ? item : item.slice(0, eq)).trim();
    if (key === '') throw new CliError(`${flag}: empty option in "${s}"`, flag);
    const isValueless = valueless.includes(key);
    if (!isValueless && !keys.includes(key)) {
      const known = [...valueless, ...keys.map((k) => `${k}=`)].join(', ');
      throw new CliError(`${flag}: unknown key "${key}" (expected one of: ${known})`, flag);
    }
    if (out.has(key)) throw new CliError(`${flag}: "${key}" given more than once`, flag);
    if (isValueless) {
      if (eq >= 0) throw new CliError(`${flag}: "${key}" takes no value`, flag);
      out.set(key, '');
      continue;
    }
    if (eq < 0) throw new CliError(`${flag}: "${key}" needs a value (${key}=...)`, flag);
    const value = dequote(item.slice(eq + 1).trim());
    if (value !== '') out.set(key, value);
  }
  return out;
}

// ---- Value parsers ----

const SIZE_SHIFT: Record<string, bigint> = { '': 0n, K: 10n, M: 20n, G: 30n, T: 40n };

/** Parse a size: bytes, or a number with a K/M/G/T suffix (binary units, CH ByteSized). */
export function parseSize(s: string): number | undefined {
  const m = /^(\d+)([KMGT]?)$/i.exec(s.trim());
  if (m === null) return undefined;
  const bytes = BigInt(m[1]!) << SIZE_SHIFT[m[2]!.toUpperCase()]!;
  if (bytes > BigInt(Number.MAX_SAFE_INTEGER)) return undefined;
  return Number(bytes);
}

function sizeOpt(flag: string, key: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = parseSize(v);
  if (n === undefined) {
    throw new CliError(`${flag}: bad size "${v}" for ${key} (use bytes or a K/M/G/T suffix, e.g. 512M)`, flag);
  }
  return n;
}

function intOpt(flag: string, key: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v) || !Number.isSafeInteger(Number(v))) {
    throw new CliError(`${flag}: bad number "${v}" for ${key} (expected a non-negative integer)`, flag);
  }
  return Number(v);
}

function toggleOpt(flag: string, key: string, v: string | undefined): boolean | undefined {
  if (v === undefined) return undefined;
  switch (v.toLowerCase()) {
    case 'on':
    case 'true':
      return true;
    case 'off':
    case 'false':
      return false;
    default:
      throw new CliError(`${flag}: bad value "${v}" for ${key} (expected on or off)`, flag);
  }
}

function setIf<T extends object, K extends keyof T>(o: T, k: K, v: T[K] | undefined): void {
  if (v !== undefined) o[k] = v;
}

function parseCpus(v: string): DeepPartial<CpusConfig> {
  const f = '--cpus';
  const o = parseOptionList(f, v, ['boot', 'max', 'topology', 'kvm_hyperv', 'max_phys_bits', 'nested']);
  const cpus: DeepPartial<CpusConfig> = {};
  const boot = intOpt(f, 'boot', o.get('boot'));
  if (boot === 0) throw new CliError(`${f}: boot=0 is invalid: at least 1 vCPU is required`, f);
  const max = intOpt(f, 'max', o.get('max'));
  if (max === 0) throw new CliError(`${f}: max=0 is invalid: at least 1 vCPU is required`, f);
  setIf(cpus, 'boot_vcpus', boot);
  setIf(cpus, 'max_vcpus', max);
  const topo = o.get('topology');
  if (topo !== undefined) {
    const parts = topo.split(':');
    if (parts.length !== 4) {
      throw new CliError(`${f}: bad topology "${topo}" (expected threads:cores:dies:packages)`, f);
    }
    const [t, c, d, p] = parts.map((x, i) => intOpt(f, `topology field ${i + 1}`, x)!);
    cpus.topology = { threads_per_core: t!, cores_per_die: c!, dies_per_package: d!, packages: p! };
  }
  setIf(cpus, 'kvm_hyperv', toggleOpt(f, 'kvm_hyperv', o.get('kvm_hyperv')));
  setIf(cpus, 'max_phys_bits', intOpt(f, 'max_phys_bits', o.get('max_phys_bits')));
  setIf(cpus, 'nested', toggleOpt(f, 'nested', o.get('nested')));
  return cpus;
}

function parseMemory(v: string): DeepPartial<MemoryConfig> {
  const f = '--memory';
  const o = parseOptionList(f, v, [
    'size',
    'shared',
    'hugepages',
    'hugepage_size',
    'mergeable',
    'prefault',
    'thp',
    'hotplug_size',
    'hotplugged_size',
    'hotplug_method',
  ]);
  const m: DeepPartial<MemoryConfig> = {};
  setIf(m, 'size', sizeOpt(f, 'size', o.get('size')));
  setIf(m, 'hugepage_size', sizeOpt(f, 'hugepage_size', o.get('hugepage_size')));
  setIf(m, 'hotplug_size', sizeOpt(f, 'hotplug_size', o.get('hotplug_size')));
  setIf(m, 'hotplugged_size', sizeOpt(f, 'hotplugged_size', o.get('hotplugged_size')));
  const method = o.get('hotplug_method');
  if (method !== undefined) {
    // Cloud Hypervisor's spellings (hotplug_method=acpi|virtio-mem).
    const methods: Record<string, HotplugMethod> = { acpi: 'Acpi', 'virtio-mem': 'VirtioMem' };
    const hm = methods[method];
    if (hm === undefined) throw new CliError(`${f}: hotplug_method "${method}" is not one of: acpi, virtio-mem`, f);
    m.hotplug_method = hm;
  }
  for (const k of ['shared', 'hugepages', 'mergeable', 'prefault', 'thp'] as const) {
    setIf(m, k, toggleOpt(f, k, o.get(k)));
  }
  return m;
}

const CONSOLE_MODE_KEYS: Record<string, ConsoleMode> = { off: 'Off', null: 'Null', pty: 'Pty', tty: 'Tty' };

function parseConsoleLike(
  flag: '--serial' | '--console',
  v: string,
): { mode: ConsoleMode; file?: string; socket?: string; iommu?: boolean } {
  const extra = flag === '--console' ? ['iommu'] : [];
  const o = parseOptionList(flag, v, ['file', 'socket', ...extra], Object.keys(CONSOLE_MODE_KEYS));
  const modes = [...o.keys()].filter((k) => k !== 'iommu');
  // `file=`/`socket=` with an empty value are dropped by parseOptionList: say so.
  if (modes.length === 0) {
    if (/(^|,)\s*(file|socket)\s*=\s*("")?\s*(,|$)/.test(v)) {
      throw new CliError(`${flag}: a path is required (file=<path> or socket=<path>)`, flag);
    }
    throw new CliError(`${flag}: missing mode (expected off, null, pty, tty, file=<path> or socket=<path>)`, flag);
  }
  if (modes.length > 1) throw new CliError(`${flag}: only one mode may be given, got ${modes.join(' and ')}`, flag);
  const key = modes[0]!;
  const out: { mode: ConsoleMode; file?: string; socket?: string; iommu?: boolean } =
    key === 'file'
      ? { mode: 'File', file: o.get('file')! }
      : key === 'socket'
        ? { mode: 'Socket', socket: o.get('socket')! }
        : { mode: CONSOLE_MODE_KEYS[key]! };
  const iommu = toggleOpt(flag, 'iommu', o.get('iommu'));
  if (iommu !== undefined) out.iommu = iommu;
  return out;
}

/** CH's rate limiter keys (vmm/src/config.rs): a bandwidth and an ops token bucket. */
const RATE_LIMITER_KEYS = ['bw_size', 'bw_one_time_burst', 'bw_refill_time', 'ops_size', 'ops_one_time_burst', 'ops_refill_time'] as const;

/** The rate limiter the bw_* / ops_* keys describe, or undefined when none is given. */
function parseRateLimiter(flag: string, o: Map<string, string>): RateLimiterConfig | undefined {
  const bucket = (p: 'bw' | 'ops'): TokenBucketConfig | undefined => {
    const num = p === 'bw' ? sizeOpt : intOpt;
    const size = num(flag, `${p}_size`, o.get(`${p}_size`));
    const burst = num(flag, `${p}_one_time_burst`, o.get(`${p}_one_time_burst`));
    const refill = intOpt(flag, `${p}_refill_time`, o.get(`${p}_refill_time`));
    if (size === undefined && burst === undefined && refill === undefined) return undefined;
    if (size === undefined) throw new CliError(`${flag}: ${p}_size is required with ${refill !== undefined ? `${p}_refill_time` : `${p}_one_time_burst`} (the bucket's capacity)`, flag);
    if (refill === undefined) throw new CliError(`${flag}: ${p}_refill_time is required with ${p}_size (the ms to refill the bucket)`, flag);
    return { size, refill_time: refill, ...(burst !== undefined ? { one_time_burst: burst } : {}) };
  };
  const bandwidth = bucket('bw');
  const ops = bucket('ops');
  if (bandwidth === undefined && ops === undefined) return undefined;
  return { ...(bandwidth ? { bandwidth } : {}), ...(ops ? { ops } : {}) };
}

function parseRateLimitGroup(v: string): DeepPartial<RateLimitGroupConfig> {
  const f = '--rate-limit-group';
  const o = parseOptionList(f, v, ['id', ...RATE_LIMITER_KEYS]);
  const id = o.get('id');
  if (id === undefined) throw new CliError(`${f}: id=<id> is required (disks name it with rate_limit_group=<id>)`, f);
  const cfg = parseRateLimiter(f, o);
  if (cfg === undefined) throw new CliError(`${f} ${id}: no limit given (bw_size=,bw_refill_time= and/or ops_size=,ops_refill_time=)`, f);
  return { id, rate_limiter_config: cfg };
}

export function parseDisk(v: string): DeepPartial<DiskConfig> {
  const f = '--disk';
  const o = parseOptionList(f, v, [
    'path',
    'readonly',
    'direct',
    'iommu',
    'num_queues',
    'queue_size',
    'vhost_user',
    'socket',
    'id',
    'serial',
    'pci_segment',
    'pci_device_id',
    'iothread',
    'rate_limit_group',
    ...RATE_LIMITER_KEYS,
  ]);
  const d: DeepPartial<DiskConfig> = {};
  setIf(d, 'rate_limiter_config', parseRateLimiter(f, o));
  setIf(d, 'rate_limit_group', o.get('rate_limit_group'));
  setIf(d, 'path', o.get('path'));
  for (const k of ['readonly', 'direct', 'iommu', 'vhost_user'] as const) setIf(d, k, toggleOpt(f, k, o.get(k)));
  setIf(d, 'num_queues', intOpt(f, 'num_queues', o.get('num_queues')));
  setIf(d, 'queue_size', intOpt(f, 'queue_size', o.get('queue_size')));
  setIf(d, 'pci_segment', intOpt(f, 'pci_segment', o.get('pci_segment')));
  setIf(d, 'pci_device_id', intOpt(f, 'pci_device_id', o.get('pci_device_id')));
  setIf(d, 'vhost_socket', o.get('socket'));
  setIf(d, 'id', o.get('id'));
  setIf(d, 'serial', o.get('serial'));
  setIf(d, 'iothread', o.get('iothread'));
  return d;
}

export function parseNet(v: string): DeepPartial<NetConfig> {
  const f = '--net';
  const o = parseOptionList(f, v, [
    'tap',
    'ip',
    'mask',
    'mac',
    'host_mac',
    'mtu',
    'iommu',
    'num_queues',
    'queue_size',
    'vhost_user',
    'socket',
    'id',
    'pci_segment',
    'pci_device_id',
    'offload_tso',
    'offload_ufo',
    'offload_csum',
    'iothread',
    ...RATE_LIMITER_KEYS,
  ]);
  const n: DeepPartial<NetConfig> = {};
  setIf(n, 'rate_limiter_config', parseRateLimiter(f, o));
  for (const k of ['tap', 'ip', 'mask', 'mac', 'host_mac', 'id', 'iothread'] as const) setIf(n, k, o.get(k));
  setIf(n, 'vhost_socket', o.get('socket'));
  for (const k of ['mtu', 'num_queues', 'queue_size', 'pci_segment', 'pci_device_id'] as const) setIf(n, k, intOpt(f, k, o.get(k)));
  for (const k of ['iommu', 'vhost_user', 'offload_tso', 'offload_ufo', 'offload_csum'] as const) {
    setIf(n, k, toggleOpt(f, k, o.get(k)));
  }
  return n;
}

export function parseFs(v: string): DeepPartial<FsConfig> {
  const f = '--fs';
  const o = parseOptionList(f, v, ['tag', 'socket', 'num_queues', 'queue_size', 'id', 'pci_segment', 'iothread']);
  const out: DeepPartial<FsConfig> = {};
  for (const k of ['tag', 'socket', 'id', 'iothread'] as const) setIf(out, k, o.get(k));
  for (const k of ['num_queues', 'queue_size', 'pci_segment'] as const) setIf(out, k, intOpt(f, k, o.get(k)));
  return out;
}

export function parsePmem(v: string): DeepPartial<PmemConfig> {
  const f = '--pmem';
  const o = parseOptionList(f, v, ['file', 'size', 'iommu', 'discard_writes', 'id', 'pci_segment']);
  const out: DeepPartial<PmemConfig> = {};
  setIf(out, 'file', o.get('file'));
  setIf(out, 'id', o.get('id'));
  setIf(out, 'size', sizeOpt(f, 'size', o.get('size')));
  setIf(out, 'pci_segment', intOpt(f, 'pci_segment', o.get('pci_segment')));
  for (const k of ['iommu', 'discard_writes'] as const) setIf(out, k, toggleOpt(f, k, o.get(k)));
  return out;
}

function parseBalloon(v: string): DeepPartial<BalloonConfig> {
  const f = '--balloon';
  const o = parseOptionList(f, v, ['size', 'deflate_on_oom', 'free_page_reporting', 'id', 'pci_segment']);
  const out: DeepPartial<BalloonConfig> = {};
  setIf(out, 'size', sizeOpt(f, 'size', o.get('size')));
  setIf(out, 'id', o.get('id'));
  setIf(out, 'pci_segment', intOpt(f, 'pci_segment', o.get('pci_segment')));
  for (const k of ['deflate_on_oom', 'free_page_reporting'] as const) setIf(out, k, toggleOpt(f, k, o.get(k)));
  return out;
}

export function parseVsock(v: string): DeepPartial<VsockConfig> {
  const f = '--vsock';
  const o = parseOptionList(f, v, ['cid', 'socket', 'iommu', 'id', 'pci_segment', 'iothread']);
  const out: DeepPartial<VsockConfig> = {};
  setIf(out, 'socket', o.get('socket'));
  setIf(out, 'id', o.get('id'));
  setIf(out, 'iothread', o.get('iothread'));
  for (const k of ['cid', 'pci_segment'] as const) setIf(out, k, intOpt(f, k, o.get(k)));
  setIf(out, 'iommu', toggleOpt(f, 'iommu', o.get('iommu')));
  return out;
}

/** `path=<p>` | `fd=<n>` | a bare path (CH accepts both for --api-socket). */
function parseSocketArg(flag: string, v: string): SocketArg {
  const t = v.trim();
  if (t === '') throw new CliError(`${flag}: empty value`, flag);
  if (/^(path|fd)=/.test(t)) {
    const o = parseOptionList(flag, t, ['path', 'fd']);
    if (o.has('path') && o.has('fd')) throw new CliError(`${flag}: give either path= or fd=, not both`, flag);
    const fd = intOpt(flag, 'fd', o.get('fd'));
    if (fd !== undefined) return { fd };
    const path = o.get('path');
    if (path === undefined) throw new CliError(`${flag}: a path is required (path=<path>)`, flag);
    return { path };
  }
  return { path: t };
}

// ---- Main parser ----

/** The flag a validateVmConfig path belongs to. */
function flagForPath(path: string): string {
  if (path.startsWith('payload.initramfs')) return '--initramfs';
  if (path.startsWith('payload.cmdline')) return '--cmdline';
  if (path.startsWith('payload.firmware')) return '--firmware';
  if (path.startsWith('payload')) return '--kernel';
  const m = /^(\w+)(\[(\d+)\])?/.exec(path);
  const head = m?.[1] ?? path;
  const flag = head === 'disks' ? '--disk' : head === 'rate_limit_groups' ? '--rate-limit-group' : `--${head}`;
  return m?.[3] !== undefined ? `${flag} #${Number(m[3]) + 1}` : flag;
}

function isFlagLike(tok: string): boolean {
  return tok.startsWith('-') && tok !== '-';
}

/**
 * Parse process.argv.slice(2). Returns what to do, or throws CliError.
 */
export function parseArgs(argv: readonly string[]): CliResult {
  if (argv[0] === 'remote') return parseRemote(argv.slice(1));
  // stratovisor jail [jail flags] -- <VMM flags>: parsed by cli/jail.ts.
  if (argv[0] === 'jail') return { kind: 'jail', argv: argv.slice(1) };

  const single = new Map<string, string>();
  const multi = new Map<string, string[]>();
  const switches = new Set<string>();
  let verbosity = 0;

  for (let i = 0; i < argv.length; i++) {
    const tok = argv[i]!;
    if (tok.startsWith('--')) {
      const eq = tok.indexOf('=');
      const name = eq < 0 ? tok.slice(2) : tok.slice(2, eq);
      const flag = `--${name}`;
      const spec = FLAG_BY_NAME.get(name);
      if (spec === undefined) {
        if (name === '') throw new CliError('unexpected argument "--"');
        if (UNSUPPORTED_CH_FLAGS.has(name)) {
          throw new CliError(`${flag} is a Cloud Hypervisor option that stratovisor does not support`, flag);
        }
        throw new CliError(`unknown flag ${flag} (see --help)`, flag);
      }
      if (!spec.value) {
        if (eq >= 0) throw new CliError(`${flag} takes no value`, flag);
        if (name === 'help') return { kind: 'help', text: usage };
        if (name === 'version') return { kind: 'version' };
        if (switches.has(name)) throw new CliError(`${flag} given more than once`, flag);
        switches.add(name);
        continue;
      }
      const values: string[] = [];
      if (eq >= 0) {
        values.push(tok.slice(eq + 1));
      } else {
        const next = argv[i + 1];
        if (next === undefined || isFlagLike(next)) {
          throw new CliError(`${flag} requires a value: ${flag} <${spec.syntax}>`, flag);
        }
        values.push(next);
        i++;
      }
      if (spec.multi) {
        // CH (clap num_args(1..)): following non-flag tokens are more values.
        while (i + 1 < argv.length && !isFlagLike(argv[i + 1]!)) values.push(argv[++i]!);
        const list = multi.get(name) ?? [];
        list.push(...values);
        multi.set(name, list);
      } else {
        if (single.has(name)) throw new CliError(`${flag} given more than once`, flag);
        single.set(name, values[0]!);
      }
      continue;
    }
    if (isFlagLike(tok)) {
      // Short flags, possibly combined: -v, -vvv, -h, -V.
      for (const ch of tok.slice(1)) {
        if (ch === 'v') verbosity++;
        else if (ch === 'h') return { kind: 'help', text: usage };
        else if (ch === 'V') return { kind: 'version' };
        else throw new CliError(`unknown flag -${ch}${tok.length > 2 ? ` (in ${tok})` : ''} (see --help)`, `-${ch}`);
      }
      continue;
    }
    if (tok === 'remote') throw new CliError('"remote" must be the first argument');
    throw new CliError(`unexpected argument "${tok}" (options start with --; see --help)`);
  }

  const result: RunArgs = { kind: 'run', config: null, verbosity, confine: parseConfine(single, multi, switches) };
  const hvArg = single.get('hypervisor');
  if (hvArg !== undefined) {
    if (hvArg !== 'kvm' && hvArg !== 'mshv' && hvArg !== 'auto') throw new CliError(`--hypervisor: bad value "${hvArg}" (expected kvm, mshv or auto)`, '--hypervisor');
    result.hypervisor = hvArg;
  }
  const api = single.get('api-socket');
  if (api !== undefined) result.apiSocket = parseSocketArg('--api-socket', api);
  const ev = single.get('event-monitor');
  if (ev !== undefined) result.eventMonitor = parseSocketArg('--event-monitor', ev);
  const log = single.get('log-file');
  if (log !== undefined) {
    if (log === '') throw new CliError('--log-file: empty path', '--log-file');
    result.logFile = log;
  }

  const anyVm = [...single.keys(), ...multi.keys(), ...switches].some((k) => VM_FLAGS.has(k));
  const restore = single.get('restore');
  if (restore !== undefined) {
    // CH: --restore brings its VM from the snapshot's config.json; it conflicts with --kernel etc.
    if (anyVm) {
      const other = [...single.keys(), ...multi.keys(), ...switches].find((k) => VM_FLAGS.has(k))!;
      throw new CliError(`--restore cannot be combined with --${other} (the VM comes from the snapshot's config.json)`, '--restore');
    }
    const o = parseOptionList('--restore', restore, ['source_url', 'prefault', 'resume']);
    const url = o.get('source_url');
    if (url === undefined) throw new CliError('--restore: source_url= is required (file:///path/to/snapshot-dir)', '--restore');
    const rc: RestoreConfig = { source_url: url };
    const prefault = toggleOpt('--restore', 'prefault', o.get('prefault'));
    if (prefault !== undefined) rc.prefault = prefault;
    const resume = toggleOpt('--restore', 'resume', o.get('resume'));
    if (resume !== undefined) rc.resume = resume;
    if (rc.resume !== true && result.apiSocket === undefined) {
      throw new CliError('--restore: the VM starts paused; give --api-socket (to send vm.resume) or resume=on', '--restore');
    }
    result.restore = rc;
    return result;
  }
  if (!anyVm) return result;

  const input: VmConfigInput = { payload: {} };
  const payload = input.payload!;
  for (const k of ['kernel', 'firmware', 'initramfs'] as const) {
    const v = single.get(k);
    if (v === undefined) continue;
    if (v === '') throw new CliError(`--${k}: empty path`, `--${k}`);
    payload[k] = v;
  }
  setIf(payload, 'cmdline', single.get('cmdline'));
  if (payload.kernel === undefined && payload.firmware === undefined) {
    throw new CliError('--kernel (or --firmware) is required to boot a VM', '--kernel');
  }
  const cpus = single.get('cpus');
  if (cpus !== undefined) input.cpus = parseCpus(cpus);
  const memory = single.get('memory');
  if (memory !== undefined) input.memory = parseMemory(memory);
  const serial = single.get('serial');
  if (serial !== undefined) input.serial = parseConsoleLike('--serial', serial);
  const consoleArg = single.get('console');
  if (consoleArg !== undefined) input.console = parseConsoleLike('--console', consoleArg);
  const rng = single.get('rng');
  if (rng !== undefined) {
    const o = parseOptionList('--rng', rng, ['src', 'iommu', 'pci_segment']);
    input.rng = {};
    setIf(input.rng, 'src', o.get('src'));
    setIf(input.rng, 'iommu', toggleOpt('--rng', 'iommu', o.get('iommu')));
    setIf(input.rng, 'pci_segment', intOpt('--rng', 'pci_segment', o.get('pci_segment')));
  }
  const platform = single.get('platform');
  if (platform !== undefined) {
    // CH's --platform also has iommu_segments, serial_number, uuid, oem_strings, ...: not here yet.
    const o = parseOptionList('--platform', platform, ['num_pci_segments']);
    input.platform = {};
    setIf(input.platform, 'num_pci_segments', intOpt('--platform', 'num_pci_segments', o.get('num_pci_segments')));
  }
  const disks = multi.get('disk');
  if (disks !== undefined) input.disks = disks.map(parseDisk);
  const nets = multi.get('net');
  if (nets !== undefined) input.net = nets.map(parseNet);
  const fss = multi.get('fs');
  if (fss !== undefined) input.fs = fss.map(parseFs);
  const pmems = multi.get('pmem');
  if (pmems !== undefined) input.pmem = pmems.map(parsePmem);
  const vsock = single.get('vsock');
  if (vsock !== undefined) input.vsock = parseVsock(vsock);
  const balloon = single.get('balloon');
  if (balloon !== undefined) input.balloon = parseBalloon(balloon);
  const groups = multi.get('rate-limit-group');
  if (groups !== undefined) input.rate_limit_groups = groups.map(parseRateLimitGroup);
  if (switches.has('watchdog')) input.watchdog = true;
  if (switches.has('pvpanic')) input.pvpanic = true;

  const config = createVmConfig(input);
  const issues = validateVmConfig(config);
  if (issues.length > 0) {
    const lines = issues.map((iss) => {
      const field = iss.path.replace(/^[a-z_]+(\[\d+\])?\.?/, '')
        // rate_limiter_config.bandwidth.size is the CLI's bw_size (ops.* its ops_*).
        .replace(/^rate_limiter_config\.(bandwidth|ops)\./, (_m, b: string) => (b === 'bandwidth' ? 'bw_' : 'ops_'));
      return `${flagForPath(iss.path)}: ${field === '' ? '' : `${field} `}${iss.message}`;
    });
    throw new CliError(lines.join('\n'), flagForPath(issues[0]!.path).split(' ')[0]);
  }
  result.config = config;
  return result;
}

function parseConfine(single: Map<string, string>, multi: Map<string, string[]>, switches: Set<string>): ConfineArgs {
  const sc = single.get('seccomp');
  let seccomp: SeccompMode = 'true';
  if (sc !== undefined) {
    const m = parseSeccompMode(sc);
    if (m === undefined) throw new CliError(`--seccomp: bad value "${sc}" (expected true, false, log or strict)`, '--seccomp');
    seccomp = m;
  }
  const landlockRules: LandlockRule[] = [];
  for (const v of multi.get('landlock-rules') ?? []) {
    const f = '--landlock-rules';
    const o = parseOptionList(f, v, ['path', 'access']);
    const path = o.get('path');
    const access = o.get('access');
    if (path === undefined) throw new CliError(`${f}: path= is required in "${v}"`, f);
    if (access === undefined) throw new CliError(`${f}: access= is required in "${v}" (r, w or rw)`, f);
    if (parseAccess(access) === undefined) throw new CliError(`${f}: bad access "${access}" for ${path} (expected r, w or rw)`, f);
    landlockRules.push({ path, access });
  }
  const landlock = switches.has('landlock');
  if (landlockRules.length > 0 && !landlock) {
    throw new CliError('--landlock-rules needs --landlock (rules only add to an enabled Landlock ruleset)', '--landlock-rules');
  }
  const out: ConfineArgs = { seccomp, landlock, landlockRules };
  const st = single.get('self-test-forbidden');
  if (st !== undefined) {
    const items = st.split(',').map((x) => x.trim());
    for (const it of items) {
      if (!/^(execve|worker-execve|ptrace|unshare|id|(open|write|stat|aread):\/.+)$/.test(it)) {
        throw new CliError(`--self-test-forbidden: bad item "${it}" (expected execve, worker-execve, ptrace, unshare, id, open:/path, aread:/path, write:/path or stat:/path)`, '--self-test-forbidden');
      }
    }
    out.selfTestForbidden = items;
  }
  return out;
}

const REMOTE_USAGE = [
  'Usage: stratovisor remote --api-socket <path> <command> [args...] [--json]',
  '',
  'Send a command to a running stratovisor over its API socket (like ch-remote).',
  '',
  'Commands:',
  `  ${REMOTE_COMMANDS.join(', ')}`,
  '',
].join('\n');

function parseRemote(argv: readonly string[]): CliResult {
  let apiSocket: string | undefined;
  let json = false;
  let i = 0;
  for (; i < argv.length; i++) {
    const tok = argv[i]!;
    if (tok === '-h' || tok === '--help') return { kind: 'help', text: REMOTE_USAGE };
    if (tok === '--json') {
      json = true;
      continue;
    }
    if (tok === '--api-socket' || tok.startsWith('--api-socket=')) {
      if (apiSocket !== undefined) throw new CliError('remote: --api-socket given more than once', '--api-socket');
      let v: string | undefined;
      if (tok.includes('=')) v = tok.slice(tok.indexOf('=') + 1);
      else {
        v = argv[i + 1];
        if (v === undefined || isFlagLike(v)) {
          throw new CliError('remote: --api-socket requires a value: --api-socket <path>', '--api-socket');
        }
        i++;
      }
      const parsed = parseSocketArg('--api-socket', v);
      if (!('path' in parsed)) throw new CliError('remote: --api-socket needs a path, not fd=', '--api-socket');
      apiSocket = parsed.path;
      continue;
    }
    if (isFlagLike(tok)) throw new CliError(`remote: unknown flag ${tok} (see remote --help)`, tok);
    break;
  }
  const command = argv[i];
  if (command === undefined) {
    throw new CliError(`remote: missing command (one of: ${REMOTE_COMMANDS.join(', ')})`);
  }
  if (!(REMOTE_COMMANDS as readonly string[]).includes(command)) {
    throw new CliError(`remote: unknown command "${command}" (one of: ${REMOTE_COMMANDS.join(', ')})`);
  }
  if (apiSocket === undefined) throw new CliError('remote: --api-socket <path> is required', '--api-socket');
  const args: string[] = [];
  for (const tok of argv.slice(i + 1)) {
    if (tok === '--json') json = true;
    else args.push(tok);
  }
  return { kind: 'remote', apiSocket, command: command as RemoteCommand, args, json };
}
