// vhost-user wire format (QEMU docs/interop/vhost-user.rst, "Message Specification"): every
// message is a 12-byte header (request u32, flags u32, size u32; host byte order, i.e. little
// endian here) followed by `size` payload bytes; fds ride along as SCM_RIGHTS ancillary data.

/** Front-end requests (vhost-user.rst, "Front-end message types"). */
export const Request = {
  GET_FEATURES: 1,
  SET_FEATURES: 2,
  SET_OWNER: 3,
  RESET_OWNER: 4,
  SET_MEM_TABLE: 5,
  SET_LOG_BASE: 6,
  SET_LOG_FD: 7,
  SET_VRING_NUM: 8,
  SET_VRING_ADDR: 9,
  SET_VRING_BASE: 10,
  GET_VRING_BASE: 11,
  SET_VRING_KICK: 12,
  SET_VRING_CALL: 13,
  SET_VRING_ERR: 14,
  GET_PROTOCOL_FEATURES: 15,
  SET_PROTOCOL_FEATURES: 16,
  GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18,
  GET_CONFIG: 24,
  SET_CONFIG: 25,
  RESET_DEVICE: 34,
} as const;

export function requestName(r: number): string {
  for (const [k, v] of Object.entries(Request)) if (v === r) return k;
  return `request ${r}`;
}

/** Header flags: bits 0-1 version (0x1), REPLY (bit 2), NEED_REPLY (bit 3). */
export const VHOST_USER_VERSION = 0x1;
export const VHOST_USER_VERSION_MASK = 0x3;
export const VHOST_USER_REPLY_MASK = 0x4;
export const VHOST_USER_NEED_REPLY_MASK = 0x8;

export const HEADER_SIZE = 12;
/** Largest payload we accept in a reply (the biggest reply we ask for is far smaller). */
export const MAX_PAYLOAD = 4096;

/** Virtio feature bit the backend sets when it speaks the protocol-feature extension. */
export const VHOST_USER_F_PROTOCOL_FEATURES = 30n;

/** Protocol feature bits (vhost-user.rst, "Protocol features"). */
export const ProtocolFeature = {
  MQ: 0n,
  LOG_SHMFD: 1n,
  REPLY_ACK: 3n,
  BACKEND_REQ: 5n,
  CONFIG: 9n,
  RESET_DEVICE: 13n,
  CONFIGURE_MEM_SLOTS: 15n,
} as const;

/** SET_VRING_KICK/CALL/ERR payload: bits 0-7 the ring index, bit 8 "no fd". */
export const VHOST_USER_VRING_IDX_MASK = 0xffn;
export const VHOST_USER_VRING_NOFD_MASK = 0x100n;

/** SET_MEM_TABLE carries at most this many regions (VHOST_MEMORY_BASELINE_NREGIONS). */
export const MAX_MEM_REGIONS = 8;
export const MEM_REGION_SIZE = 32;

export interface MessageHeader {
  request: number;
  flags: number;
  size: number;
}

export function encodeHeader(out: Uint8Array, h: MessageHeader): void {
  const dv = new DataView(out.buffer, out.byteOffset, HEADER_SIZE);
  dv.setUint32(0, h.request, true);
  dv.setUint32(4, h.flags, true);
  dv.setUint32(8, h.size, true);
}

export function decodeHeader(b: Uint8Array): MessageHeader {
  if (b.length < HEADER_SIZE) throw new RangeError(`vhost-user header needs ${HEADER_SIZE} bytes, got ${b.length}`);
  const dv = new DataView(b.buffer, b.byteOffset, HEADER_SIZE);
  return { request: dv.getUint32(0, true), flags: dv.getUint32(4, true), size: dv.getUint32(8, true) };
}

/** A whole message (header + payload). */
export function encodeMessage(request: number, flags: number, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  const m = new Uint8Array(HEADER_SIZE + payload.length);
  encodeHeader(m, { request, flags, size: payload.length });
  m.set(payload, HEADER_SIZE);
  return m;
}

export function u64Payload(v: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt.asUintN(64, v), true);
  return b;
}

export function decodeU64(p: Uint8Array): bigint {
  if (p.length !== 8) throw new RangeError(`u64 payload of ${p.length} bytes`);
  return new DataView(p.buffer, p.byteOffset, 8).getBigUint64(0, true);
}

/** struct vhost_vring_state: index u32, num u32. */
export function vringStatePayload(index: number, num: number): Uint8Array {
  const b = new Uint8Array(8);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, index, true);
  dv.setUint32(4, num, true);
  return b;
}

export function decodeVringState(p: Uint8Array): { index: number; num: number } {
  if (p.length !== 8) throw new RangeError(`vring state payload of ${p.length} bytes`);
  const dv = new DataView(p.buffer, p.byteOffset, 8);
  return { index: dv.getUint32(0, true), num: dv.getUint32(4, true) };
}

/** Ring addresses in the front-end's address space (vhost-user.rst "Vring address description"). */
export interface VringAddr {
  index: number;
  /** Bit 0: VHOST_VRING_F_LOG. */
  flags: number;
  desc: bigint;
  used: bigint;
  avail: bigint;
  log: bigint;
}

/** struct vhost_vring_addr: index u32, flags u32, desc u64, used u64, avail u64, log u64. */
export function vringAddrPayload(a: VringAddr): Uint8Array {
  const b = new Uint8Array(40);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, a.index, true);
  dv.setUint32(4, a.flags, true);
  dv.setBigUint64(8, a.desc, true);
  dv.setBigUint64(16, a.used, true);
  dv.setBigUint64(24, a.avail, true);
  dv.setBigUint64(32, a.log, true);
  return b;
}

export function decodeVringAddr(p: Uint8Array): VringAddr {
  if (p.length !== 40) throw new RangeError(`vring address payload of ${p.length} bytes`);
  const dv = new DataView(p.buffer, p.byteOffset, 40);
  return {
    index: dv.getUint32(0, true), flags: dv.getUint32(4, true),
    desc: dv.getBigUint64(8, true), used: dv.getBigUint64(16, true), avail: dv.getBigUint64(24, true), log: dv.getBigUint64(32, true),
  };
}

/** One memory region: guest physical address, size, front-end user address, offset into its fd. */
export interface MemRegion {
  guestPhysAddr: bigint;
  memorySize: bigint;
  userAddr: bigint;
  mmapOffset: bigint;
}

/** SET_MEM_TABLE payload: nregions u32, padding u32, then nregions regions (one fd each, in order). */
export function memTablePayload(regions: readonly MemRegion[]): Uint8Array {
  if (regions.length < 1 || regions.length > MAX_MEM_REGIONS) throw new RangeError(`SET_MEM_TABLE with ${regions.length} regions (1..${MAX_MEM_REGIONS})`);
  const b = new Uint8Array(8 + MEM_REGION_SIZE * regions.length);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, regions.length, true);
  regions.forEach((r, i) => {
    const o = 8 + i * MEM_REGION_SIZE;
    dv.setBigUint64(o, r.guestPhysAddr, true);
    dv.setBigUint64(o + 8, r.memorySize, true);
    dv.setBigUint64(o + 16, r.userAddr, true);
    dv.setBigUint64(o + 24, r.mmapOffset, true);
  });
  return b;
}

export function decodeMemTable(p: Uint8Array): MemRegion[] {
  if (p.length < 8) throw new RangeError(`memory table payload of ${p.length} bytes`);
  const dv = new DataView(p.buffer, p.byteOffset, p.length);
  const n = dv.getUint32(0, true);
  if (n < 1 || n > MAX_MEM_REGIONS || p.length < 8 + n * MEM_REGION_SIZE) throw new RangeError(`memory table with ${n} regions in ${p.length} bytes`);
  const out: MemRegion[] = [];
  for (let i = 0; i < n; i++) {
    const o = 8 + i * MEM_REGION_SIZE;
    out.push({ guestPhysAddr: dv.getBigUint64(o, true), memorySize: dv.getBigUint64(o + 8, true), userAddr: dv.getBigUint64(o + 16, true), mmapOffset: dv.getBigUint64(o + 24, true) });
  }
  return out;
}
