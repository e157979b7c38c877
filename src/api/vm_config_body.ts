// From a vm.create body (already valid against the document's VmConfig schema) to
// Stratovisor's VmConfig (src/vmm/config.ts).
//
// The document's VmConfig has features Stratovisor does not have yet (numa, memory
// zones, ...). A field Stratovisor does not support is dropped when its value says
// "nothing" (null, [], the schema's own `default`, or an object of such values) —
// generated clients send those — and otherwise rejected with a 400 naming the field,
// rather than silently ignored. What remains goes through `createVmConfig` (Cloud
// Hypervisor's defaults) and `validateVmConfig` (ranges and cross-field rules).

import { isDeepStrictEqual } from 'node:util';
import { createVmConfig, defaultDiskConfig, defaultNetConfig, defaultPmemConfig, validateVmConfig, type DiskConfig, type NetConfig, type PmemConfig, type RateLimiterConfig, type VmConfig, type VmConfigInput } from '../vmm/config.js';
import type { SchemaObject, SchemaValidator, ValidationIssue } from './validate.js';

/** `true` for a supported leaf, a nested shape for an object, [shape] for an array of objects. */
type Shape<T> = {
  // `fds` (NetConfig) never comes from JSON: the fds arrive with the request (SCM_RIGHTS).
  // `iothread` (a device's own I/O thread) is a CLI extension the document does not have.
  [K in Exclude<keyof Required<T>, 'fds' | 'iothread'>]-?: Required<T>[K] extends (infer U)[]
    ? [Shape<U>]
    : Required<T>[K] extends object
      ? Shape<Required<T>[K]>
      : true;
};

const RATE_LIMITER: Shape<RateLimiterConfig> = {
  bandwidth: { size: true, one_time_burst: true, refill_time: true },
  ops: { size: true, one_time_burst: true, refill_time: true },
};

/**
 * The fields of the document's VmConfig that Stratovisor's VmConfig has. Typed by
 * `Shape<VmConfig>`, so a field added to src/vmm/config.ts fails to compile here until
 * it is listed.
 */
export const SUPPORTED_VM_CONFIG_FIELDS: Shape<VmConfig> = {
  payload: { firmware: true, kernel: true, cmdline: true, initramfs: true },
  cpus: {
    boot_vcpus: true,
    max_vcpus: true,
    topology: { threads_per_core: true, cores_per_die: true, dies_per_package: true, packages: true },
    kvm_hyperv: true,
    max_phys_bits: true,
    nested: true,
  },
  memory: {
    size: true,
    hotplug_size: true,
    hotplugged_size: true,
    hotplug_method: true,
    mergeable: true,
    shared: true,
    hugepages: true,
    hugepage_size: true,
    prefault: true,
    thp: true,
  },
  disks: [
    {
      path: true,
      readonly: true,
      direct: true,
      iommu: true,
      num_queues: true,
      queue_size: true,
      vhost_user: true,
      vhost_socket: true,
      id: true,
      serial: true,
      pci_segment: true,
      pci_device_id: true,
      rate_limiter_config: RATE_LIMITER,
      rate_limit_group: true,
    },
  ],
  net: [
    {
      tap: true,
      ip: true,
      mask: true,
      mac: true,
      host_mac: true,
      mtu: true,
      iommu: true,
      num_queues: true,
      queue_size: true,
      vhost_user: true,
      vhost_socket: true,
      id: true,
      pci_segment: true,
      pci_device_id: true,
      offload_tso: true,
      offload_ufo: true,
      offload_csum: true,
      rate_limiter_config: RATE_LIMITER,
    },
  ],
  fs: [{ tag: true, socket: true, num_queues: true, queue_size: true, id: true, pci_segment: true }],
  pmem: [{ file: true, size: true, iommu: true, discard_writes: true, id: true, pci_segment: true }],
  balloon: { size: true, deflate_on_oom: true, free_page_reporting: true, iommu: true, id: true, pci_segment: true },
  rng: { src: true, iommu: true, id: true, pci_segment: true },
  serial: { mode: true, file: true, socket: true },
  console: { mode: true, file: true, socket: true, iommu: true, id: true },
  vsock: { cid: true, socket: true, iommu: true, id: true, pci_segment: true },
  iommu: true,
  watchdog: true,
  pvpanic: true,
  platform: { num_pci_segments: true },
  rate_limit_groups: [{ id: true, rate_limiter_config: RATE_LIMITER }],
};

type AnyShape = true | { [k: string]: AnyShape } | [AnyShape];

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function join(path: string, key: string | number): string {
  return typeof key === 'number' ? `${path}[${key}]` : path === '' ? key : `${path}.${key}`;
}

/** Whether an unsupported field's value asks for nothing (so it can be dropped). */
function saysNothing(v: unknown, schema: SchemaObject | undefined, validator: SchemaValidator): boolean {
  if (v === null || v === undefined) return true;
  const s = schema === undefined ? undefined : validator.resolve(schema);
  if (s !== undefined && s.default !== undefined && isDeepStrictEqual(v, s.default)) return true;
  if (Array.isArray(v)) return v.length === 0;
  if (isObject(v)) {
    return Object.entries(v).every(([k, sub]) => saysNothing(sub, s?.properties?.[k], validator));
  }
  return false;
}

function filter(
  value: unknown,
  shape: AnyShape,
  schema: SchemaObject | undefined,
  path: string,
  validator: SchemaValidator,
  issues: ValidationIssue[],
): unknown {
  if (shape === true) return value;
  const s = schema === undefined ? undefined : validator.resolve(schema);
  if (Array.isArray(shape)) {
    if (!Array.isArray(value)) return value;
    return value.map((el, i) => filter(el, shape[0], s?.items, join(path, i), validator, issues));
  }
  if (!isObject(value)) return value;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) {
    const sub = s?.properties?.[k];
    const subShape = Object.prototype.hasOwnProperty.call(shape, k) ? shape[k] : undefined;
    if (subShape !== undefined) {
      out[k] = filter(v, subShape, sub, join(path, k), validator, issues);
    } else if (!saysNothing(v, sub, validator)) {
      issues.push({ path: join(path, k), message: 'not supported yet in Stratovisor' });
    }
  }
  return out;
}

/**
 * Convert a schema-valid vm.create body into a complete, validated VmConfig, or
 * return the problems (unsupported features, failed range/cross-field checks).
 */
export function vmConfigFromBody(
  body: unknown,
  validator: SchemaValidator,
): { ok: true; config: VmConfig } | { ok: false; issues: ValidationIssue[] } {
  const issues: ValidationIssue[] = [];
  const filtered = filter(
    body,
    SUPPORTED_VM_CONFIG_FIELDS as unknown as AnyShape,
    { $ref: '#/definitions/VmConfig' },
    '',
    validator,
    issues,
  );
  if (issues.length > 0) return { ok: false, issues };
  const config = createVmConfig(filtered as VmConfigInput);
  const semantic = validateVmConfig(config);
  if (semantic.length > 0) return { ok: false, issues: semantic };
  return { ok: true, config };
}

/** An id another device has: the VMM core answers that with 409, as Cloud Hypervisor does. */
const ID_IN_USE = /is already used by/;

/**
 * Convert a schema-valid vm.add-net body (NetConfig) into Stratovisor's NetConfig, checked as
 * the `index`-th NIC of `vm` would be, with `fds` (received with the request) as its taps.
 * Cloud Hypervisor's vm.add-net takes every fd sent with the request (http_endpoint.rs
 * attach_fds_to_cfg); fd numbers in the body itself are ignored.
 */
export function netConfigFromBody(
  body: unknown,
  fds: readonly number[],
  vm: VmConfig,
  validator: SchemaValidator,
): { ok: true; config: NetConfig } | { ok: false; issues: ValidationIssue[] } {
  const issues: ValidationIssue[] = [];
  const shape = (SUPPORTED_VM_CONFIG_FIELDS as unknown as { net: [AnyShape] }).net[0];
  const filtered = filter(body, shape, { $ref: '#/definitions/NetConfig' }, '', validator, issues);
  if (issues.length > 0) return { ok: false, issues };
  const net = defaultNetConfig(filtered as Partial<NetConfig>);
  if (fds.length > 0) net.fds = [...fds];
  const index = vm.net?.length ?? 0;
  const semantic = validateVmConfig({ ...vm, net: [...(vm.net ?? []), net] })
    .filter((i) => i.path.startsWith(`net[${index}]`) && !ID_IN_USE.test(i.message))
    .map((i) => ({ path: i.path.slice(`net[${index}]`.length).replace(/^\./, ''), message: i.message }));
  if (semantic.length > 0) return { ok: false, issues: semantic };
  return { ok: true, config: net };
}

/**
 * Convert a schema-valid vm.add-disk or vm.add-pmem body (DiskConfig, PmemConfig) into
 * Stratovisor's, checked as the next device of its kind in `vm` would be.
 */
export function deviceConfigFromBody<K extends 'disks' | 'pmem'>(
  kind: K,
  body: unknown,
  vm: VmConfig,
  validator: SchemaValidator,
): { ok: true; config: NonNullable<VmConfig[K]>[number] } | { ok: false; issues: ValidationIssue[] } {
  const issues: ValidationIssue[] = [];
  const shape = (SUPPORTED_VM_CONFIG_FIELDS as unknown as Record<K, [AnyShape]>)[kind][0];
  const filtered = filter(body, shape, { $ref: `#/definitions/${kind === 'disks' ? 'DiskConfig' : 'PmemConfig'}` }, '', validator, issues);
  if (issues.length > 0) return { ok: false, issues };
  const config = (kind === 'disks' ? defaultDiskConfig(filtered as Partial<DiskConfig>) : defaultPmemConfig(filtered as Partial<PmemConfig>)) as NonNullable<VmConfig[K]>[number];
  const index = vm[kind]?.length ?? 0;
  const semantic = validateVmConfig({ ...vm, [kind]: [...(vm[kind] ?? []), config] })
    .filter((i) => i.path.startsWith(`${kind}[${index}]`) && !ID_IN_USE.test(i.message))
    .map((i) => ({ path: i.path.slice(`${kind}[${index}]`.length).replace(/^\./, ''), message: i.message }));
  if (semantic.length > 0) return { ok: false, issues: semantic };
  return { ok: true, config };
}
