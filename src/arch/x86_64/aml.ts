// A tiny AML encoder (ACPI 6.x chapter 20 "ACPI Machine Language Specification").
// Each helper returns the encoded bytes; compose with arrays. Enough for the DSDT objects we emit
// (_S5_, COM1, a PCI host bridge later): Name, Package, integers, strings, Buffer, Device,
// Scope, Method, EISAID and small resource descriptors.

export class AmlError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'AmlError';
  }
}

export const ZERO_OP = 0x00;
export const ONE_OP = 0x01;
export const ONES_OP = 0xff;
export const NAME_OP = 0x08;
export const BYTE_PREFIX = 0x0a;
export const WORD_PREFIX = 0x0b;
export const DWORD_PREFIX = 0x0c;
export const STRING_PREFIX = 0x0d;
export const QWORD_PREFIX = 0x0e;
export const SCOPE_OP = 0x10;
export const BUFFER_OP = 0x11;
export const PACKAGE_OP = 0x12;
export const METHOD_OP = 0x14;
export const RETURN_OP = 0xa4;
export const EXT_OP_PREFIX = 0x5b;
export const DEVICE_OP = 0x82; // after EXT_OP_PREFIX
export const ROOT_CHAR = 0x5c; // '\'
export const DUAL_NAME_PREFIX = 0x2e;
export const MULTI_NAME_PREFIX = 0x2f;

export type Aml = Uint8Array;

export function concat(parts: ReadonlyArray<Uint8Array | number[]>): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
}

/**
 * PkgLength (20.2.4): the length *including* the PkgLength bytes themselves. One byte for
 * totals < 64; otherwise 2-4 bytes, lead byte bits 7-6 = extra byte count, bits 3-0 = low nibble.
 */
export function pkgLength(bodyLength: number): Uint8Array {
  if (bodyLength + 1 < 0x40) return Uint8Array.of(bodyLength + 1);
  for (let n = 2; n <= 4; n++) {
    const total = bodyLength + n;
    if (total < 2 ** (4 + 8 * (n - 1))) {
      const out = new Uint8Array(n);
      out[0] = ((n - 1) << 6) | (total & 0xf);
      for (let i = 1; i < n; i++) out[i] = (total >>> (4 + 8 * (i - 1))) & 0xff;
      return out;
    }
  }
  throw new AmlError(`AML package too long (${bodyLength} bytes)`);
}

function nameSeg(seg: string): number[] {
  if (seg.length < 1 || seg.length > 4 || !/^[A-Z_][A-Z0-9_]*$/.test(seg)) throw new AmlError(`invalid AML name segment "${seg}"`);
  const s = seg.padEnd(4, '_');
  return [s.charCodeAt(0), s.charCodeAt(1), s.charCodeAt(2), s.charCodeAt(3)];
}

/** NameString (20.2.2): "\\_SB_.PCI0", "_S5_", "^FOO" (parent prefix) etc. */
export function nameString(name: string): Uint8Array {
  const out: number[] = [];
  let rest = name;
  if (rest.startsWith('\\')) { out.push(ROOT_CHAR); rest = rest.slice(1); }
  while (rest.startsWith('^')) { out.push(0x5e); rest = rest.slice(1); }
  if (rest.length === 0) { out.push(0x00); return Uint8Array.from(out); } // NullName
  const segs = rest.split('.');
  if (segs.length === 2) out.push(DUAL_NAME_PREFIX);
  else if (segs.length > 2) { if (segs.length > 255) throw new AmlError('AML name too deep'); out.push(MULTI_NAME_PREFIX, segs.length); }
  for (const s of segs) out.push(...nameSeg(s));
  return Uint8Array.from(out);
}

/** Integer constant (20.2.3) with the shortest encoding. */
export function integer(v: number | bigint): Uint8Array {
  const b = BigInt(v);
  if (b < 0n || b >= 1n << 64n) throw new AmlError(`AML integer ${v} out of range`);
  if (b === 0n) return Uint8Array.of(ZERO_OP);
  if (b === 1n) return Uint8Array.of(ONE_OP);
  const bytes = (prefix: number, n: number): Uint8Array => {
    const out = new Uint8Array(1 + n);
    out[0] = prefix;
    for (let i = 0; i < n; i++) out[1 + i] = Number((b >> BigInt(8 * i)) & 0xffn);
    return out;
  };
  if (b <= 0xffn) return bytes(BYTE_PREFIX, 1);
  if (b <= 0xffffn) return bytes(WORD_PREFIX, 2);
  if (b <= 0xffffffffn) return bytes(DWORD_PREFIX, 4);
  return bytes(QWORD_PREFIX, 8);
}

/** String constant: ASCII, NUL terminated. */
export function string(s: string): Uint8Array {
  const out = [STRING_PREFIX];
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 1 || c > 0x7f) throw new AmlError('AML strings must be ASCII without NUL');
    out.push(c);
  }
  out.push(0);
  return Uint8Array.from(out);
}

/** Name(name, object). */
export function name(n: string, value: Uint8Array): Uint8Array {
  return concat([[NAME_OP], nameString(n), value]);
}

/** Package(){ elements } (20.2.5.4 DefPackage). */
export function pkg(elements: ReadonlyArray<Uint8Array>): Uint8Array {
  if (elements.length > 255) throw new AmlError('AML package has too many elements');
  const body = concat([[elements.length], ...elements]);
  return concat([[PACKAGE_OP], pkgLength(body.length), body]);
}

/** Buffer(){ bytes }. */
export function buffer(bytes: Uint8Array): Uint8Array {
  const body = concat([integer(bytes.length), bytes]);
  return concat([[BUFFER_OP], pkgLength(body.length), body]);
}

/** Scope(name){ terms }. */
export function scope(n: string, terms: ReadonlyArray<Uint8Array>): Uint8Array {
  const body = concat([nameString(n), ...terms]);
  return concat([[SCOPE_OP], pkgLength(body.length), body]);
}

/** Device(name){ terms }. */
export function device(n: string, terms: ReadonlyArray<Uint8Array>): Uint8Array {
  const body = concat([nameString(n), ...terms]);
  return concat([[EXT_OP_PREFIX, DEVICE_OP], pkgLength(body.length), body]);
}

/** Method(name, argCount, serialized){ terms }. */
export function method(n: string, argCount: number, serialized: boolean, terms: ReadonlyArray<Uint8Array>): Uint8Array {
  if (argCount < 0 || argCount > 7) throw new AmlError('AML methods take 0-7 arguments');
  const body = concat([nameString(n), [argCount | (serialized ? 0x08 : 0)], ...terms]);
  return concat([[METHOD_OP], pkgLength(body.length), body]);
}

/** Return(value). */
export function ret(value: Uint8Array): Uint8Array {
  return concat([[RETURN_OP], value]);
}

/** EISAID("PNP0501") as the 32-bit compressed ID (e.g. 0x0105D041), encoded as an integer. */
export function eisaId(id: string): Uint8Array {
  return integer(eisaIdValue(id));
}

export function eisaIdValue(id: string): number {
  if (!/^[A-Z]{3}[0-9A-F]{4}$/.test(id)) throw new AmlError(`invalid EISA ID "${id}"`);
  const c = (i: number): number => id.charCodeAt(i) - 0x40;
  const vendor = (c(0) << 10) | (c(1) << 5) | c(2);
  const product = parseInt(id.slice(3), 16);
  // Stored big-endian: bytes vendor_hi, vendor_lo, product_hi, product_lo.
  return ((vendor >> 8) | ((vendor & 0xff) << 8) | ((product >> 8) << 16) | ((product & 0xff) << 24)) >>> 0;
}

// --- Resource descriptors (ACPI 6.x 6.4) --------------------------------------------------------

/** IO(Decode16, min, max, align, length) small descriptor (6.4.2.5). */
export function ioPort(min: number, max: number, align: number, length: number): Uint8Array {
  return Uint8Array.of(0x47, 0x01, min & 0xff, min >> 8, max & 0xff, max >> 8, align, length);
}

/** IRQNoFlags(){irq} small descriptor (6.4.2.1): edge, active high. */
export function irqNoFlags(irq: number): Uint8Array {
  if (irq < 0 || irq > 15) throw new AmlError(`legacy IRQ ${irq} out of range`);
  const mask = 1 << irq;
  return Uint8Array.of(0x22, mask & 0xff, mask >> 8);
}

/** Memory32Fixed(ReadWrite, base, length) large descriptor (6.4.3.4). */
export function memory32Fixed(base: number, length: number, writable = true): Uint8Array {
  const out = new Uint8Array(12);
  const dv = new DataView(out.buffer);
  out[0] = 0x86; dv.setUint16(1, 9, true); out[3] = writable ? 1 : 0;
  dv.setUint32(4, base >>> 0, true); dv.setUint32(8, length >>> 0, true);
  return out;
}

/** ResourceTemplate(){ descriptors }: a Buffer ending with an End Tag (6.4.2.9, checksum 0). */
export function resourceTemplate(descriptors: ReadonlyArray<Uint8Array>): Uint8Array {
  return buffer(concat([...descriptors, [0x79, 0x00]]));
}

// Address space descriptors (6.4.3.5): producers (bridge windows) with fixed min/max.
const ADDR_GENERAL_FLAGS_WINDOW = 0x0c; // _MIF | _MAF, producer, positive decode
const ADDR_TYPE_MEMORY = 0;
const ADDR_TYPE_IO = 1;
const ADDR_TYPE_BUS = 2;

function addressDescriptor(tag: number, width: 2 | 4 | 8, type: number, typeFlags: number, min: bigint, max: bigint): Uint8Array {
  if (max < min || max >= 1n << BigInt(8 * width)) throw new AmlError(`address range 0x${min.toString(16)}-0x${max.toString(16)} invalid for a ${8 * width}-bit descriptor`);
  const body = 3 + 5 * width; // type, general flags, type flags + granularity/min/max/translation/length
  const out = new Uint8Array(3 + body);
  const dv = new DataView(out.buffer);
  out[0] = tag;
  dv.setUint16(1, body, true);
  out[3] = type;
  out[4] = ADDR_GENERAL_FLAGS_WINDOW;
  out[5] = typeFlags;
  const put = (i: number, v: bigint): void => {
    const off = 6 + i * width;
    if (width === 2) dv.setUint16(off, Number(v), true);
    else if (width === 4) dv.setUint32(off, Number(v), true);
    else dv.setBigUint64(off, v, true);
  };
  put(0, 0n); // granularity
  put(1, min);
  put(2, max);
  put(3, 0n); // translation offset
  put(4, max - min + 1n); // length
  return out;
}

/** WordBusNumber(ResourceProducer, MinFixed, MaxFixed, PosDecode, 0, min, max, 0, len). */
export function wordBusNumber(min: number, max: number): Uint8Array {
  return addressDescriptor(0x88, 2, ADDR_TYPE_BUS, 0, BigInt(min), BigInt(max));
}

/** WordIO(ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, ...). */
export function wordIo(min: number, max: number): Uint8Array {
  return addressDescriptor(0x88, 2, ADDR_TYPE_IO, 0x03, BigInt(min), BigInt(max));
}

/** DWordMemory(ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite, ...). */
export function dwordMemory(min: number, max: number, cacheable = false): Uint8Array {
  return addressDescriptor(0x87, 4, ADDR_TYPE_MEMORY, 0x01 | (cacheable ? 0x02 : 0), BigInt(min), BigInt(max));
}

/** QWordMemory(ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite, ...). */
export function qwordMemory(min: number | bigint, max: number | bigint, cacheable = false): Uint8Array {
  return addressDescriptor(0x8a, 8, ADDR_TYPE_MEMORY, 0x01 | (cacheable ? 0x02 : 0), BigInt(min), BigInt(max));
}

/**
 * Interrupt(ResourceConsumer, Edge|Level, ActiveHigh|ActiveLow, Exclusive|Shared){ gsis }: the
 * Extended Interrupt descriptor (6.4.3.6), for interrupts that are GSIs (e.g. a GED's _CRS).
 */
export function extendedInterrupt(gsis: readonly number[], o: { edge?: boolean; activeLow?: boolean; shared?: boolean } = {}): Uint8Array {
  if (gsis.length < 1 || gsis.length > 255) throw new AmlError(`an Interrupt descriptor lists 1-255 interrupts, got ${gsis.length}`);
  const out = new Uint8Array(5 + 4 * gsis.length);
  const dv = new DataView(out.buffer);
  out[0] = 0x89;
  dv.setUint16(1, 2 + 4 * gsis.length, true);
  // Flags: bit 0 consumer, bit 1 edge, bit 2 active low, bit 3 shared.
  out[3] = 0x01 | (o.edge !== false ? 0x02 : 0) | (o.activeLow === true ? 0x04 : 0) | (o.shared === true ? 0x08 : 0);
  out[4] = gsis.length;
  gsis.forEach((g, i) => {
    if (!Number.isInteger(g) || g < 0 || g > 0xffffffff) throw new AmlError(`interrupt number ${g} out of range`);
    dv.setUint32(5 + 4 * i, g, true);
  });
  return out;
}

// --- Named objects, operators and control flow (20.2.5, 20.2.6) ----------------------------------

export const OP_REGION_OP = 0x80; // after EXT_OP_PREFIX
export const FIELD_OP = 0x81; // after EXT_OP_PREFIX
export const LOCAL0_OP = 0x60;
export const ARG0_OP = 0x68;
export const STORE_OP = 0x70;
export const AND_OP = 0x7b;
export const NOTIFY_OP = 0x86;
export const LEQUAL_OP = 0x93;
export const IF_OP = 0xa0;

/** Operation region spaces (19.6.100 OperationRegion, RegionSpace). */
export const REGION_SYSTEM_MEMORY = 0x00;
export const REGION_SYSTEM_IO = 0x01;

/** Field access types and update rules (19.6.48 Field, FieldFlags). */
export const FIELD_ACCESS_ANY = 0;
export const FIELD_ACCESS_BYTE = 1;
export const FIELD_ACCESS_WORD = 2;
export const FIELD_ACCESS_DWORD = 3;
export const FIELD_UPDATE_PRESERVE = 0;
export const FIELD_UPDATE_WRITE_AS_ONES = 1;
export const FIELD_UPDATE_WRITE_AS_ZEROS = 2;

/** Local0..Local7 (20.2.6.2 LocalObj). */
export function local(n: number): Uint8Array {
  if (!Number.isInteger(n) || n < 0 || n > 7) throw new AmlError(`Local${n} does not exist (Local0-Local7)`);
  return Uint8Array.of(LOCAL0_OP + n);
}

/** Arg0..Arg6 (20.2.6.1 ArgObj). */
export function arg(n: number): Uint8Array {
  if (!Number.isInteger(n) || n < 0 || n > 6) throw new AmlError(`Arg${n} does not exist (Arg0-Arg6)`);
  return Uint8Array.of(ARG0_OP + n);
}

/** A reference to a named object, as an operand or target (NameString). */
export function ref(n: string): Uint8Array {
  return nameString(n);
}

/** OperationRegion(name, space, offset, length) (20.2.5.2 DefOpRegion). */
export function operationRegion(n: string, space: number, offset: number | bigint, length: number | bigint): Uint8Array {
  if (!Number.isInteger(space) || space < 0 || space > 0xff) throw new AmlError(`invalid region space ${space}`);
  return concat([[EXT_OP_PREFIX, OP_REGION_OP], nameString(n), [space], integer(offset), integer(length)]);
}

/**
 * One field unit of a Field: its 4-character name and width in bits. An empty name is a
 * ReservedField (20.2.5.2: 0x00 then the width), what ASL's Offset() and unnamed gaps become.
 */
export interface FieldUnit {
  name: string;
  bits: number;
}

/**
 * Field(region, access, NoLock, update){ units } (20.2.5.2 DefField). Each NamedField is a NameSeg
 * then its width in bits in PkgLength encoding (the value itself, not counting its own bytes).
 */
export function field(region: string, units: readonly FieldUnit[], o: { access?: number; update?: number } = {}): Uint8Array {
  const access = o.access ?? FIELD_ACCESS_ANY;
  const update = o.update ?? FIELD_UPDATE_PRESERVE;
  if (access < 0 || access > 5) throw new AmlError(`invalid field access type ${access}`);
  if (update < 0 || update > 2) throw new AmlError(`invalid field update rule ${update}`);
  const list: Array<Uint8Array | number[]> = [];
  for (const u of units) {
    if (!Number.isInteger(u.bits) || u.bits < 1 || u.bits >= 1 << 28) throw new AmlError(`field ${u.name} width ${u.bits} bits out of range`);
    list.push(u.name === '' ? [0x00] : nameSeg(u.name), rawPkgLength(u.bits));
  }
  const body = concat([nameString(region), [access | (update << 5)], ...list]);
  return concat([[EXT_OP_PREFIX, FIELD_OP], pkgLength(body.length), body]);
}

/** A PkgLength encoding of `value` itself (field widths). */
function rawPkgLength(value: number): Uint8Array {
  if (value < 0x40) return Uint8Array.of(value);
  const n = value < 1 << 12 ? 2 : value < 1 << 20 ? 3 : 4;
  const out = new Uint8Array(n);
  out[0] = ((n - 1) << 6) | (value & 0xf);
  for (let i = 1; i < n; i++) out[i] = (value >>> (4 + 8 * (i - 1))) & 0xff;
  return out;
}

/** LEqual(And(value, mask), mask): every bit of `mask` is set in `value` (an event or slot bit test). */
export function bitsSet(value: Uint8Array, mask: number): Uint8Array {
  return lEqual(and(value, integer(mask)), integer(mask));
}

/** Store(source, target) (20.2.5.4 DefStore). */
export function store(source: Uint8Array, target: Uint8Array): Uint8Array {
  return concat([[STORE_OP], source, target]);
}

/** And(a, b) with no target (20.2.5.4 DefAnd; Target NullName). */
export function and(a: Uint8Array, b: Uint8Array): Uint8Array {
  return concat([[AND_OP], a, b, [0x00]]);
}

/** LEqual(a, b) (20.2.5.4 DefLEqual). */
export function lEqual(a: Uint8Array, b: Uint8Array): Uint8Array {
  return concat([[LEQUAL_OP], a, b]);
}

/** If(predicate){ terms } (20.2.5.3 DefIfElse, no Else). */
export function ifThen(predicate: Uint8Array, terms: ReadonlyArray<Uint8Array>): Uint8Array {
  const body = concat([predicate, ...terms]);
  return concat([[IF_OP], pkgLength(body.length), body]);
}

/** Notify(object, value) (20.2.5.3 DefNotify); `value` a constant or a TermArg (e.g. arg(1)). */
export function notify(object: string, value: number | Uint8Array): Uint8Array {
  return concat([[NOTIFY_OP], nameString(object), typeof value === 'number' ? integer(value) : value]);
}

export const ELSE_OP = 0xa1;
export const WHILE_OP = 0xa2;
export const LLESS_OP = 0x95;
export const INCREMENT_OP = 0x75;
export const INDEX_OP = 0x88;
export const MUTEX_OP = 0x01; // after EXT_OP_PREFIX
export const ACQUIRE_OP = 0x23; // after EXT_OP_PREFIX
export const RELEASE_OP = 0x27; // after EXT_OP_PREFIX

/** If(predicate){ then } Else { otherwise } (20.2.5.3 DefIfElse: DefElse right after the If). */
export function ifElse(predicate: Uint8Array, then: ReadonlyArray<Uint8Array>, otherwise: ReadonlyArray<Uint8Array>): Uint8Array {
  const body = concat(otherwise);
  return concat([ifThen(predicate, then), [ELSE_OP], pkgLength(body.length), body]);
}

/** While(predicate){ terms } (20.2.5.3 DefWhile). */
export function whileLoop(predicate: Uint8Array, terms: ReadonlyArray<Uint8Array>): Uint8Array {
  const body = concat([predicate, ...terms]);
  return concat([[WHILE_OP], pkgLength(body.length), body]);
}

/** LLess(a, b) (20.2.5.4 DefLLess). */
export function lLess(a: Uint8Array, b: Uint8Array): Uint8Array {
  return concat([[LLESS_OP], a, b]);
}

/** Increment(target) (20.2.5.4 DefIncrement). */
export function increment(target: Uint8Array): Uint8Array {
  return concat([[INCREMENT_OP], target]);
}

/** Index(source, index) with no target (20.2.5.4 DefIndex): a reference to one element, e.g. a Store target. */
export function index(source: Uint8Array, i: Uint8Array): Uint8Array {
  return concat([[INDEX_OP], source, i, [0x00]]);
}

/** Mutex(name, syncLevel) (20.2.5.2 DefMutex). */
export function mutex(n: string, syncLevel = 0): Uint8Array {
  if (!Number.isInteger(syncLevel) || syncLevel < 0 || syncLevel > 15) throw new AmlError(`mutex sync level ${syncLevel} outside 0-15`);
  return concat([[EXT_OP_PREFIX, MUTEX_OP], nameString(n), [syncLevel]]);
}

/** Acquire(mutex, timeoutMs) (20.2.5.4 DefAcquire; the timeout a raw WordData, 0xFFFF = forever). */
export function acquire(n: string, timeout = 0xffff): Uint8Array {
  if (!Number.isInteger(timeout) || timeout < 0 || timeout > 0xffff) throw new AmlError(`acquire timeout ${timeout} outside 0-0xffff`);
  return concat([[EXT_OP_PREFIX, ACQUIRE_OP], nameString(n), [timeout & 0xff, timeout >> 8]]);
}

/** Release(mutex) (20.2.5.3 DefRelease). */
export function release(n: string): Uint8Array {
  return concat([[EXT_OP_PREFIX, RELEASE_OP], nameString(n)]);
}

/** A call of the method `name` with `args` (20.2.5 MethodInvocation: NameString TermArg...). */
export function call(name: string, args: ReadonlyArray<Uint8Array> = []): Uint8Array {
  return concat([nameString(name), ...args]);
}

export const CREATE_QWORD_FIELD_OP = 0x8f;

/**
 * CreateQWordField(source, byteIndex, name) (20.2.5.2 DefCreateQWordField): `name` is the 8 bytes
 * of the buffer `source` at `byteIndex` (e.g. a resource template's _MIN, filled in at run time).
 */
export function createQWordField(source: Uint8Array, byteIndex: number, n: string): Uint8Array {
  if (!Number.isInteger(byteIndex) || byteIndex < 0) throw new AmlError(`CreateQWordField index ${byteIndex} is not a byte offset`);
  return concat([[CREATE_QWORD_FIELD_OP], source, integer(byteIndex), nameString(n)]);
}
