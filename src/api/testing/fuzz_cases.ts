// Request generators for fuzzing the API server (src/api/fuzz.test.ts, and the soak's 10^5
// requests against a running VM, bench/soak_load.ts): bodies generated from the OpenAPI
// document's schemas (valid, or with one mutation that makes them invalid), malformed JSON, wrong
// methods, unknown paths, and raw garbage for the socket. Seeded (src/testing/prng.ts), so a
// printed seed replays a run.
import assert from 'node:assert/strict';
import { MINIMAL_VM } from '../test_server.fixture.js';
import { getValidator, INTEGER_FORMATS, type ApiOperation, type SchemaObject, type SchemaValidator } from '../validate.js';

export type JsonValue = null | boolean | number | string | JsonValue[] | { [k: string]: JsonValue };

export interface Case {
  method: string;
  path: string;
  body?: string;
  /** 'bad': must get a 4xx; 'any': any answer (valid request, state-dependent). */
  expect: 'bad' | 'any';
  what: string;
}

interface Path {
  keys: (string | number)[];
  schema: SchemaObject;
}

/** Routes a valid request to cannot stop or change a running VM (they read, or must refuse it). */
const KEEP_VM_VALID: ReadonlySet<string> = new Set(['vmm.ping', 'vm.info', 'vm.counters', 'vm.create', 'vm.boot', 'vm.resume']);

const GARBAGE_TEMPLATES = [
  'PUT /api/v1/vm.create HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n{"payload":{"kernel"',
  'GET /api/v1/vmm.ping HTTP/1.1\r\nHost: x\r\n\r\n',
  'PUT /api/v1/vm.boot HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n',
  'PUT /api/v1/vm.create HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello',
  'GET /api/v1/../../etc/passwd HTTP/1.1\r\n\r\n',
  'GET * HTTP/1.1\r\n\r\n',
  'GET http://evil/api/v1/vmm.ping HTTP/1.1\r\n\r\n',
];

function getAt(root: JsonValue, keys: (string | number)[]): JsonValue {
  let v: JsonValue = root;
  for (const k of keys) v = (v as Record<string | number, JsonValue>)[k]!;
  return v;
}

function setAt(root: JsonValue, keys: (string | number)[], value: JsonValue): JsonValue {
  if (keys.length === 0) return value;
  const parent = getAt(root, keys.slice(0, -1)) as Record<string | number, JsonValue>;
  parent[keys[keys.length - 1]!] = value;
  return root;
}

export class ApiFuzzer {
  private readonly validator: SchemaValidator = getValidator();
  /** `r`: a stream of floats in [0, 1) (mulberry32 of src/testing/prng.ts). */
  constructor(private readonly r: () => number) {}

  int(lo: number, hi: number): number { return lo + Math.floor(this.r() * (hi - lo + 1)); }
  pick<T>(xs: readonly T[]): T { return xs[Math.floor(this.r() * xs.length)]!; }
  chance(p: number): boolean { return this.r() < p; }

  randomString(): string {
    const alphabets = ['abcdefghijklmnopqrstuvwxyz/._-0123456789', '\u00e9\u4e2d\u{1f600}"\\\n\t\u0000', 'Off'];
    const a = [...this.pick(alphabets)];
    let s = '';
    for (let i = this.int(0, 12); i > 0; i--) s += this.pick(a);
    return s;
  }

  /** A random instance valid against a (converted) schema. */
  generate(schema: SchemaObject, depth = 0): JsonValue {
    const s = this.validator.resolve(schema);
    if (Array.isArray(s.enum)) return this.pick(s.enum as JsonValue[]);
    const type = Array.isArray(s.type) ? s.type[0] : s.type;
    switch (type) {
      case 'object': {
        const out: Record<string, JsonValue> = {};
        const required = new Set(s.required ?? []);
        for (const [k, sub] of Object.entries(s.properties ?? {})) {
          if (required.has(k) || (depth < 3 && this.chance(0.3))) out[k] = this.generate(sub, depth + 1);
        }
        if (s.properties === undefined && typeof s.additionalProperties === 'object' && depth < 3) {
          for (let i = this.int(0, 2); i > 0; i--) out[`k${i}`] = this.generate(s.additionalProperties, depth + 1);
        }
        return out;
      }
      case 'array': {
        const out: JsonValue[] = [];
        if (s.items !== undefined && depth < 3) for (let i = this.int(0, 2); i > 0; i--) out.push(this.generate(s.items, depth + 1));
        return out;
      }
      case 'integer': {
        const range = s.format !== undefined ? INTEGER_FORMATS[s.format] : undefined;
        let lo = Math.max(range?.[0] ?? -1e6, s.minimum ?? -1e6);
        let hi = Math.min(range?.[1] ?? 1e9, s.maximum ?? 1e9);
        if (this.chance(0.5)) hi = Math.min(hi, lo + 300);
        if (lo > hi) lo = hi;
        return this.int(lo, hi);
      }
      case 'number':
        return this.r() * 1000;
      case 'boolean':
        return this.chance(0.5);
      case 'string': {
        let str = this.randomString();
        while (s.minLength !== undefined && str.length < s.minLength) str += 'x';
        return str;
      }
      default:
        return {};
    }
  }


  /** Every location in `value` with the schema that governs it. */
  locations(value: JsonValue, schema: SchemaObject, keys: (string | number)[] = [], out: Path[] = []): Path[] {
    const s = this.validator.resolve(schema);
    out.push({ keys, schema: s });
    if (Array.isArray(value) && s.items !== undefined) value.forEach((v, i) => this.locations(v, s.items!, [...keys, i], out));
    else if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
      for (const [k, v] of Object.entries(value)) {
        const sub = s.properties?.[k] ?? (typeof s.additionalProperties === 'object' ? s.additionalProperties : undefined);
        if (sub !== undefined) this.locations(v, sub, [...keys, k], out);
      }
    }
    return out;
  }

  wrongTypeValue(s: SchemaObject): JsonValue {
    const type = Array.isArray(s.type) ? s.type[0] : s.type;
    const candidates: JsonValue[] = type === 'string' ? [1, true, [], {}] : type === 'integer' ? ['1', 1.5, false, []] : type === 'boolean' ? ['true', 0] : type === 'array' ? [{}, 'x', 0] : type === 'object' ? [[], 'x', 0] : ['x'];
    // (null is no wrong type for an optional field: Option<T> in CH, i.e. absent.)
    return this.pick(candidates);
  }

  /** Mutate a valid instance so that it violates the schema; undefined if no mutation applies. */
  mutate(value: JsonValue, schema: SchemaObject): { body: JsonValue; what: string } | undefined {
    const locs = this.locations(value, schema);
    for (let attempt = 0; attempt < 8; attempt++) {
      const loc = this.pick(locs);
      const copy = structuredClone(value);
      const cur = getAt(copy, loc.keys);
      const s = loc.schema;
      const kind = this.int(0, 4);
      // (Unknown fields are no mutation: Cloud Hypervisor ignores them, and so does the server.)
      if (kind === 0 && s.type === 'object' && cur !== null && typeof cur === 'object' && !Array.isArray(cur)) {
        (cur as Record<string, JsonValue>)[`unknown_${this.int(0, 99)}`] = 1;
        const keys = Object.keys(s.properties ?? {});
        if (keys.length > 0) {
          // ...but a wrong type next to it still fails.
          const k = this.pick(keys);
          const sub = s.properties![k]!;
          if (sub.type !== undefined && !Array.isArray(sub.type)) {
            (cur as Record<string, JsonValue>)[k] = this.wrongTypeValue(sub);
            return { body: copy, what: `unknown field and wrong type at ${[...loc.keys, k].join('.')}` };
          }
        }
      }
      if (kind === 1 && (s.required?.length ?? 0) > 0 && cur !== null && typeof cur === 'object' && !Array.isArray(cur)) {
        delete (cur as Record<string, JsonValue>)[this.pick(s.required!)];
        return { body: copy, what: `missing required at ${loc.keys.join('.')}` };
      }
      if (kind === 2 && s.type !== undefined && !Array.isArray(s.type)) {
        return { body: setAt(copy, loc.keys, this.wrongTypeValue(s)), what: `wrong type at ${loc.keys.join('.')}` };
      }
      if (kind === 3 && s.format !== undefined && INTEGER_FORMATS[s.format] !== undefined && s.format !== 'int64' && s.format !== 'uint64') {
        const [lo, hi] = INTEGER_FORMATS[s.format]!;
        return { body: setAt(copy, loc.keys, this.chance(0.5) ? hi + 1 : lo - 1), what: `out of ${s.format} range at ${loc.keys.join('.')}` };
      }
      if (kind === 4 && Array.isArray(s.enum)) {
        return { body: setAt(copy, loc.keys, 'NotAnEnumValue'), what: `bad enum at ${loc.keys.join('.')}` };
      }
    }
    return undefined;
  }

  malformedJson(text: string): string {
    const bad = this.corrupt(text);
    try {
      JSON.parse(bad);
    } catch {
      return bad;
    }
    return `${text},`;
  }

  corrupt(text: string): string {
    switch (this.int(0, 3)) {
      case 0:
        return text.slice(0, Math.max(1, this.int(0, text.length - 1)));
      case 1:
        return `${text}}`;
      case 2:
        return text.replace(/"/, "'");
      default: {
        const i = this.int(0, text.length);
        return `${text.slice(0, i)}\u0000${text.slice(i)}`.replace(/^\{/, '{,');
      }
    }
  }

  /**
   * One request for one of `ops`. With `keepVm` (a VM that must keep running: the soak), only
   * requests that cannot stop, pause, reset or change it are made: valid requests only to the
   * read-only routes and to those that must refuse a running VM (vm.create, vm.boot, vm.resume),
   * every other route gets malformed, mutated, wrong-method or empty requests.
   */
  makeCase(ops: readonly ApiOperation[], keepVm = false): Case {
    const r = this.r();
    const op = this.pick(ops);
    const name = op.path.slice(1);
    const validOk = !keepVm || KEEP_VM_VALID.has(name);
    const wrongMethod = (): Case => {
      const other = ['GET', 'PUT', 'POST', 'DELETE', 'PATCH'].filter((m) => m !== op.method);
      return { method: this.pick(other), path: name, expect: 'bad', what: 'wrong method' };
    };
    if (r < 0.05) return { method: this.pick(['GET', 'PUT', 'POST', 'DELETE', 'PATCH', 'OPTIONS']), path: `${this.pick(['vm', 'vmm', 'x', ''])}.${this.randomString().replace(/[^a-z.-]/g, '')}zz`, expect: 'bad', what: 'unknown path' };
    if (r < 0.08) return { method: 'PUT', path: 'vm.create', body: JSON.stringify({ ...MINIMAL_VM, cpus: { boot_vcpus: 1, max_vcpus: this.int(1, 4) } }), expect: 'any', what: 'valid VM' };
    if (r < 0.1) return wrongMethod();
    if (op.bodySchema === undefined) return validOk ? { method: op.method, path: name, expect: 'any', what: 'no-body operation' } : wrongMethod();
    const schema: SchemaObject = { $ref: `#/definitions/${op.bodySchema}` };
    const valid = this.generate(schema);
    assert.deepEqual(this.validator.validate(op.bodySchema, valid), [], `generator produced an invalid ${op.bodySchema}: ${JSON.stringify(valid)}`);
    const malformed = (): Case => ({ method: op.method, path: name, body: this.malformedJson(JSON.stringify(valid)), expect: 'bad', what: 'malformed JSON' });
    if (r < 0.35) return validOk ? { method: op.method, path: name, body: JSON.stringify(valid), expect: 'any', what: `valid ${op.bodySchema}` } : malformed();
    if (r < 0.5) return malformed();
    if (r < 0.55 && op.bodyRequired) return { method: op.method, path: name, body: '', expect: 'bad', what: 'missing body' };
    const m = this.mutate(valid, schema);
    if (m === undefined) return validOk ? { method: op.method, path: name, body: JSON.stringify(valid), expect: 'any', what: `valid ${op.bodySchema} (no mutation applies)` } : malformed();
    assert.notDeepEqual(this.validator.validate(op.bodySchema, m.body), [], `mutation "${m.what}" left ${op.bodySchema} valid: ${JSON.stringify(m.body)}`);
    return { method: op.method, path: name, body: JSON.stringify(m.body), expect: 'bad', what: m.what };
  }

  /** Raw bytes for the socket: random garbage, or a truncated (sometimes extended) HTTP message. */
  garbage(): Buffer {
    if (this.chance(0.3)) {
      const data = Buffer.alloc(this.int(1, 2048));
      for (let j = 0; j < data.length; j++) data[j] = this.int(0, 255);
      return data;
    }
    const b = Buffer.from(this.pick(GARBAGE_TEMPLATES));
    let data = b.subarray(0, this.int(1, b.length));
    if (this.chance(0.3)) data = Buffer.concat([data, Buffer.from([this.int(0, 255)])]);
    return data;
  }
}
