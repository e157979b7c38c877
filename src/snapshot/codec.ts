// Codecs for versioned state documents (hypervisor state, device state, snapshot files): one
// schema per document gives both directions, so what is written is exactly what is read back.
// Parsing is strict: a missing or unknown field, a wrong type, a number out of its field's range,
// a blob of the wrong size all throw a StateFormatError naming the field
// (`vcpus[1].sregs.cs.limit: …`); nothing else is thrown for any input, so a hostile snapshot
// file gives a clear error. 64-bit values are "0x…" hex strings, byte blobs base64.

export class StateFormatError extends Error {
  /** Path of the offending field, e.g. `vcpus[0].msrs[3].data` (empty: the whole document). */
  readonly field: string;
  /** What is wrong with it, without the field. */
  readonly problem: string;
  /** The document, e.g. "hypervisor state" (the message starts with it). */
  readonly document: string;
  constructor(field: string, problem: string, document = 'state') {
    super(field === '' ? `${document}: ${problem}` : `${document}: ${field}: ${problem}`);
    this.name = 'StateFormatError';
    this.field = field;
    this.problem = problem;
    this.document = document;
  }
}

export type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

export interface Codec<T> {
  enc(v: T): Json;
  dec(j: unknown, path: string): T;
}

export function describe(j: unknown): string {
  if (j === undefined) return 'nothing';
  if (j === null) return 'null';
  if (Array.isArray(j)) return `an array of ${j.length}`;
  if (typeof j === 'object') return 'an object';
  if (typeof j === 'string') return j.length > 40 ? `"${j.slice(0, 40)}…" (${j.length} characters)` : JSON.stringify(j);
  return String(j);
}

export function fail(path: string, expected: string, got: unknown): never {
  throw new StateFormatError(path, `expected ${expected}, got ${describe(got)}`);
}

export function uint(bits: 8 | 16 | 32): Codec<number> {
  const max = 2 ** bits - 1;
  return {
    enc: (v) => v,
    dec(j, path) {
      if (typeof j !== 'number' || !Number.isInteger(j) || j < 0 || j > max) fail(path, `an integer 0..${max}`, j);
      return j;
    },
  };
}
export const u8 = uint(8);
export const u16 = uint(16);
export const u32 = uint(32);

/** An integer min..max (both safe integers; may be negative), as a JSON number. */
export function int(min: number, max: number): Codec<number> {
  return {
    enc: (v) => v,
    dec(j, path) {
      if (typeof j !== 'number' || !Number.isSafeInteger(j) || j < min || j > max) fail(path, `an integer ${min}..${max}`, j);
      return j;
    },
  };
}

/** A JSON string of min..max characters. */
export function string(min: number, max: number): Codec<string> {
  const expected = min === 0 ? `a string of at most ${max} characters` : `a string of ${min}..${max} characters`;
  return {
    enc: (v) => v,
    dec(j, path) {
      if (typeof j !== 'string' || j.length < min || j.length > max) fail(path, expected, j);
      return j;
    },
  };
}

export const bool: Codec<boolean> = {
  enc: (v) => v,
  dec(j, path) {
    if (typeof j !== 'boolean') fail(path, 'true or false', j);
    return j;
  },
};

const HEX = /^0x[0-9a-f]{1,16}$/;

/** 64-bit unsigned as "0x…" (lower case, no leading zeros). */
export const u64: Codec<bigint> = {
  enc: (v) => `0x${BigInt.asUintN(64, v).toString(16)}`,
  dec(j, path) {
    if (typeof j !== 'string' || !HEX.test(j)) fail(path, 'a 64-bit hex string "0x…"', j);
    return BigInt(j);
  },
};

/** 64-bit signed as "0x…" or "-0x…". */
export const i64: Codec<bigint> = {
  enc: (v) => (v < 0n ? `-0x${(-BigInt.asIntN(64, v)).toString(16)}` : `0x${BigInt.asIntN(64, v).toString(16)}`),
  dec(j, path) {
    const neg = typeof j === 'string' && j.startsWith('-');
    const body = neg ? (j as string).slice(1) : j;
    if (typeof body !== 'string' || !HEX.test(body)) fail(path, 'a signed 64-bit hex string "0x…" or "-0x…"', j);
    const v = neg ? -BigInt(body) : BigInt(body);
    if (v < -(2n ** 63n) || v >= 2n ** 63n) fail(path, 'a signed 64-bit hex string in -0x8000000000000000..0x7fffffffffffffff', j);
    return v;
  },
};

/** 32-bit unsigned as "0x…" (MSR indices read better in hex). */
export const hex32: Codec<number> = {
  enc: (v) => `0x${(v >>> 0).toString(16)}`,
  dec(j, path) {
    if (typeof j !== 'string' || !/^0x[0-9a-f]{1,8}$/.test(j)) fail(path, 'a 32-bit hex string "0x…"', j);
    return Number.parseInt(j.slice(2), 16);
  },
};

const B64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

export function bytes(min: number, max: number): Codec<Uint8Array> {
  const size = min === max ? `${min} bytes` : `${min}..${max} bytes`;
  return {
    enc: (v) => Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('base64'),
    dec(j, path) {
      if (typeof j !== 'string' || !B64.test(j)) fail(path, `base64 of ${size}`, j);
      const n = (j.length / 4) * 3 - (j.endsWith('==') ? 2 : j.endsWith('=') ? 1 : 0);
      if (n < min || n > max) throw new StateFormatError(path, `expected base64 of ${size}, got ${n} bytes`);
      return new Uint8Array(Buffer.from(j, 'base64'));
    },
  };
}

export function oneOf<T extends string>(values: readonly T[]): Codec<T> {
  return {
    enc: (v) => v,
    dec(j, path) {
      if (typeof j !== 'string' || !(values as readonly string[]).includes(j)) fail(path, `one of ${values.map((v) => `"${v}"`).join(', ')}`, j);
      return j as T;
    },
  };
}

export function literal<T extends string | number>(value: T): Codec<T> {
  return {
    enc: (v) => v,
    dec(j, path) {
      if (j !== value) fail(path, JSON.stringify(value), j);
      return value;
    },
  };
}

export function nullable<T>(c: Codec<T>): Codec<T | null> {
  return {
    enc: (v) => (v === null ? null : c.enc(v)),
    dec: (j, path) => (j === null ? null : c.dec(j, path)),
  };
}

export function array<T>(c: Codec<T>, min: number, max: number): Codec<T[]> {
  const count = min === max ? `${min}` : `${min}..${max}`;
  return {
    enc: (v) => v.map((e) => c.enc(e)),
    dec(j, path) {
      if (!Array.isArray(j) || j.length < min || j.length > max) fail(path, `an array of ${count}`, j);
      return j.map((e, i) => c.dec(e, `${path}[${i}]`));
    },
  };
}

export function tuple<T>(c: Codec<T>, n: 3): Codec<[T, T, T]>;
export function tuple<T>(c: Codec<T>, n: 4): Codec<[T, T, T, T]>;
export function tuple<T>(c: Codec<T>, n: number): Codec<T[]> {
  return array(c, n, n);
}

export type Fields<T> = { [K in keyof T]-?: Codec<T[K]> };

export function struct<T extends object>(fields: Fields<T>): Codec<T> {
  const keys = Object.keys(fields) as Array<keyof T & string>;
  const known = new Set<string>(keys);
  return {
    enc(v) {
      const o: { [k: string]: Json } = {};
      for (const k of keys) o[k] = fields[k].enc(v[k]);
      return o;
    },
    dec(j, path) {
      if (typeof j !== 'object' || j === null || Array.isArray(j)) fail(path, 'an object', j);
      const o = j as Record<string, unknown>;
      for (const k of Object.keys(o)) {
        if (!known.has(k)) throw new StateFormatError(path === '' ? k : `${path}.${k}`, 'unknown field');
      }
      const out = {} as T;
      for (const k of keys) {
        const p = path === '' ? k : `${path}.${k}`;
        if (!Object.prototype.hasOwnProperty.call(o, k)) throw new StateFormatError(p, 'missing');
        out[k] = fields[k].dec(o[k], p);
      }
      return out;
    },
  };
}

/**
 * Check a document's `format` and `version` before reading the rest (the version decides how),
 * then decode it with `codec`; every error names `document`. `version` is the one this build reads.
 */
export function decodeVersioned<T>(j: unknown, document: string, format: string, version: number, codec: Codec<T>): T {
  try {
    if (typeof j !== 'object' || j === null || Array.isArray(j)) fail('', 'a JSON object', j);
    const o = j as Record<string, unknown>;
    if (o['format'] !== format) fail('format', `"${format}"`, o['format']);
    const v = o['version'];
    if (typeof v !== 'number' || !Number.isInteger(v)) fail('version', 'an integer', v);
    if (v !== version) {
      throw new StateFormatError('version', v > version
        ? `version ${v} was written by a newer Stratovisor; this one reads version ${version}`
        : `version ${v} is older than any this Stratovisor can convert (it reads version ${version})`);
    }
    return codec.dec(j, '');
  } catch (e) {
    throw e instanceof StateFormatError && e.document !== document ? new StateFormatError(e.field, e.problem, document) : e;
  }
}

/** JSON text to a value; text that is not JSON is a StateFormatError of `document`. */
export function parseJsonText(text: string, document: string): unknown {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new StateFormatError('', `not JSON (${(e as Error).message})`, document);
  }
}
