// Saved state of a virtio-pci device (taken while the VM is paused, restored into a freshly
// created device before its vCPUs run): the transport registers the driver programmed (virtio
// 1.2, 4.1.4.3 common configuration), each queue's addresses and the indexes the device holds
// (2.7), and the device-specific part. Plain data (structured-cloneable across threads) and a
// versioned strict JSON codec on src/snapshot/codec.ts: a bad document is a StateFormatError
// naming the field (`virtio state: devices[0].transport.queues[1].size: …`).
//
// Not here, on purpose: the PCI configuration space and the MSI-X table (src/pci, saved with the
// PCI devices); the vhost-user back-end's own state (virtiofsd's open files; see fs/device.ts).
import {
  array, bytes, decodeVersioned, fail, literal, parseJsonText, string, struct, u16, u32, u64, u8, StateFormatError,
  type Codec, type Json,
} from '../snapshot/codec.js';

export const VIRTIO_STATE_FORMAT = 'stratovisor-virtio-state';
/** Bump when the meaning or shape of a field changes; readers refuse other versions by name. */
export const VIRTIO_STATE_VERSION = 1;

/** One virtqueue as the driver set it up and as the device left it (2.7). */
export interface VirtqueueState {
  /** queue_size (a power of two). */
  size: number;
  /** queue_enable. */
  ready: boolean;
  /** queue_msix_vector (0xffff: none). */
  msixVector: number;
  /** Guest physical addresses of the descriptor table, driver (avail) and device (used) areas. */
  descTable: bigint;
  availRing: bigint;
  usedRing: bigint;
  /**
   * The next available-ring index the device will read and the used.idx it published (u16,
   * free-running). Equal after a quiescing pause: nothing is held in flight. 0 for a queue the
   * device never activated.
   */
  lastAvailIdx: number;
  usedIdx: number;
}

/** The virtio-pci common configuration and the device's side of its interrupts (4.1.4.3, 4.1.5.1). */
export interface VirtioTransportState {
  /** Virtio device ID (5, "Device Types"). */
  deviceType: number;
  /** device_status (2.1), without DEVICE_NEEDS_RESET (that is `needsReset`). */
  deviceStatus: number;
  /** What the device offers (VIRTIO_F_VERSION_1 included) and what the driver accepted. */
  deviceFeatures: bigint;
  driverFeatures: bigint;
  deviceFeatureSelect: number;
  driverFeatureSelect: number;
  queueSelect: number;
  /** config_generation (8 bits as the driver reads it; kept whole). */
  configGeneration: number;
  /** config_msix_vector (0xffff: none). */
  msixConfigVector: number;
  /** The device is in DEVICE_NEEDS_RESET (2.1.1). */
  needsReset: boolean;
  queues: VirtqueueState[];
  /** Per MSI-X vector: masked as the device last saw it, and pending (PBA bits kept by the device side). */
  vectorMasked: boolean[];
  vectorPending: boolean[];
}

/** The device-specific part (5.x configuration and what the model keeps beyond it). */
export type VirtioDeviceSpecificState =
  /** virtio-blk: its configuration (5.2.4); nothing is ever in flight after a pause. */
  | { kind: 'block'; capacity: bigint; readonly: boolean; numQueues: number; config: Uint8Array }
  /** virtio-net: MAC, configuration (5.1.4), queue pairs enabled by VQ_PAIRS_SET (5.1.6.5.5). */
  | { kind: 'net'; mac: Uint8Array; config: Uint8Array; activePairs: number }
  | { kind: 'console'; cols: number; rows: number }
  | { kind: 'rng' }
  /** virtio-vsock: the guest CID; connections are not saved (reset on restore, 5.10.6.6). */
  | { kind: 'vsock'; cid: bigint }
  /** virtio-fs: the tag and queue count; the back-end's FUSE session is not saved. */
  | { kind: 'fs'; tag: string; numRequestQueues: number }
  /** virtio-pmem: its configuration (5.19.4); the memory itself is the backing file. */
  | { kind: 'pmem'; start: bigint; size: bigint }
  /** virtio-balloon: its configuration (5.5.4), the target and the driver's `actual`, in 4 KiB pages. */
  | { kind: 'balloon'; numPages: number; actual: number }
  /**
   * virtio-mem: the region as configured (5.15.4: addr, region_size, block_size, checked on
   * restore), the host's requested_size, and the plugged blocks: a bitmap, bit i (LSB first) of
   * byte i/8 set when block i is plugged; plugged_size follows from it.
   */
  | { kind: 'mem'; addr: bigint; regionSize: bigint; blockSize: bigint; requestedSize: bigint; plugged: Uint8Array };

export type VirtioDeviceKind = VirtioDeviceSpecificState['kind'];

export interface VirtioDeviceState {
  /** The device's id in the VM configuration (e.g. "_disk0"). */
  id: string;
  transport: VirtioTransportState;
  device: VirtioDeviceSpecificState;
}

/** A saved state that does not fit the device it is restored into (a different disk, MAC, CID…). */
export class VirtioStateMismatchError extends Error {
  override name = 'VirtioStateMismatchError';
}

// ---------------------------------------------------------------------------------------------
// The schema

const bool: Codec<boolean> = {
  enc: (v) => v,
  dec(j, path) {
    if (typeof j !== 'boolean') fail(path, 'true or false', j);
    return j;
  },
};

/** The largest virtio-mem bitmap (mem/device.ts MAX_BLOCKS blocks, one bit each). */
export const MEM_MAX_BITMAP_BYTES = (1 << 26) / 8;

/** The largest queue count of one virtio-pci device here (transport.ts MAX_QUEUES is below it). */
const MAX_QUEUES = 4096;

const queueCodec = struct<VirtqueueState>({
  size: u16, ready: bool, msixVector: u16, descTable: u64, availRing: u64, usedRing: u64, lastAvailIdx: u16, usedIdx: u16,
});

const transportCodec = struct<VirtioTransportState>({
  deviceType: u32, deviceStatus: u8, deviceFeatures: u64, driverFeatures: u64,
  deviceFeatureSelect: u32, driverFeatureSelect: u32, queueSelect: u16,
  configGeneration: u32, msixConfigVector: u16, needsReset: bool,
  queues: array(queueCodec, 1, MAX_QUEUES),
  vectorMasked: array(bool, 1, MAX_QUEUES + 1),
  vectorPending: array(bool, 1, MAX_QUEUES + 1),
});

type Variant<K extends VirtioDeviceKind> = Extract<VirtioDeviceSpecificState, { kind: K }>;

const deviceCodecs: { [K in VirtioDeviceKind]: Codec<Variant<K>> } = {
  block: struct<Variant<'block'>>({ kind: literal('block'), capacity: u64, readonly: bool, numQueues: u16, config: bytes(1, 256) }),
  net: struct<Variant<'net'>>({ kind: literal('net'), mac: bytes(6, 6), config: bytes(1, 256), activePairs: u16 }),
  console: struct<Variant<'console'>>({ kind: literal('console'), cols: u16, rows: u16 }),
  rng: struct<Variant<'rng'>>({ kind: literal('rng') }),
  vsock: struct<Variant<'vsock'>>({ kind: literal('vsock'), cid: u64 }),
  fs: struct<Variant<'fs'>>({ kind: literal('fs'), tag: string(0, 36), numRequestQueues: u16 }),
  pmem: struct<Variant<'pmem'>>({ kind: literal('pmem'), start: u64, size: u64 }),
  balloon: struct<Variant<'balloon'>>({ kind: literal('balloon'), numPages: u32, actual: u32 }),
  mem: struct<Variant<'mem'>>({ kind: literal('mem'), addr: u64, regionSize: u64, blockSize: u64, requestedSize: u64, plugged: bytes(1, MEM_MAX_BITMAP_BYTES) }),
};
const KINDS = Object.keys(deviceCodecs) as VirtioDeviceKind[];

const deviceSpecificCodec: Codec<VirtioDeviceSpecificState> = {
  enc: (v) => (deviceCodecs[v.kind] as Codec<VirtioDeviceSpecificState>).enc(v),
  dec(j, path) {
    const kind = typeof j === 'object' && j !== null && !Array.isArray(j) ? (j as Record<string, unknown>)['kind'] : undefined;
    if (typeof kind !== 'string' || !(KINDS as string[]).includes(kind)) {
      if (typeof j !== 'object' || j === null || Array.isArray(j)) fail(path, 'an object', j);
      fail(path === '' ? 'kind' : `${path}.kind`, `one of ${KINDS.map((k) => `"${k}"`).join(', ')}`, kind);
    }
    return (deviceCodecs[kind as VirtioDeviceKind] as Codec<VirtioDeviceSpecificState>).dec(j, path);
  },
};

/** One device's state (embeddable in a larger document). Decoding also checks it is consistent. */
export const virtioDeviceStateCodec: Codec<VirtioDeviceState> = (() => {
  const base = struct<VirtioDeviceState>({ id: string(0, 256), transport: transportCodec, device: deviceSpecificCodec });
  return {
    enc: (v) => base.enc(v),
    dec(j, path) {
      const s = base.dec(j, path);
      const p = (f: string) => (path === '' ? f : `${path}.${f}`);
      const t = s.transport;
      const vectors = t.queues.length + 1;
      if (t.vectorMasked.length !== vectors) fail(p('transport.vectorMasked'), `an array of ${vectors} (one per queue, plus the configuration vector)`, t.vectorMasked);
      if (t.vectorPending.length !== vectors) fail(p('transport.vectorPending'), `an array of ${vectors} (one per queue, plus the configuration vector)`, t.vectorPending);
      t.queues.forEach((q, i) => {
        if (q.size === 0 || (q.size & (q.size - 1)) !== 0) fail(p(`transport.queues[${i}].size`), 'a power of two in 1..32768', q.size);
        if (q.msixVector !== 0xffff && q.msixVector >= vectors) fail(p(`transport.queues[${i}].msixVector`), `a vector below ${vectors} or 65535 (none)`, q.msixVector);
      });
      if (t.msixConfigVector !== 0xffff && t.msixConfigVector >= vectors) fail(p('transport.msixConfigVector'), `a vector below ${vectors} or 65535 (none)`, t.msixConfigVector);
      if ((t.driverFeatures & ~t.deviceFeatures) !== 0n) fail(p('transport.driverFeatures'), 'a subset of deviceFeatures', `0x${t.driverFeatures.toString(16)}`);
      return s;
    },
  };
})();

interface Document {
  format: typeof VIRTIO_STATE_FORMAT;
  version: typeof VIRTIO_STATE_VERSION;
  devices: VirtioDeviceState[];
}

const documentCodec = struct<Document>({
  format: literal(VIRTIO_STATE_FORMAT),
  version: literal(VIRTIO_STATE_VERSION),
  devices: array(virtioDeviceStateCodec, 0, 1024),
});

const DOCUMENT = 'virtio state';

/** The JSON value (JSON.stringify it) of the virtio devices' state. */
export function virtioStateToJson(devices: VirtioDeviceState[]): Json {
  return documentCodec.enc({ format: VIRTIO_STATE_FORMAT, version: VIRTIO_STATE_VERSION, devices });
}

/** Parse a JSON value (from JSON.parse). Throws StateFormatError naming the bad field. */
export function virtioStateFromJson(j: unknown): VirtioDeviceState[] {
  const d = decodeVersioned(j, DOCUMENT, VIRTIO_STATE_FORMAT, VIRTIO_STATE_VERSION, documentCodec);
  const ids = new Set<string>();
  d.devices.forEach((s, i) => {
    if (ids.has(s.id)) throw new StateFormatError(`devices[${i}].id`, `"${s.id}" names more than one device`, DOCUMENT);
    ids.add(s.id);
  });
  return d.devices;
}

/** JSON text to state; text that is not JSON is a StateFormatError too. */
export function parseVirtioState(text: string): VirtioDeviceState[] {
  return virtioStateFromJson(parseJsonText(text, DOCUMENT));
}

export function stringifyVirtioState(devices: VirtioDeviceState[]): string {
  return JSON.stringify(virtioStateToJson(devices));
}
