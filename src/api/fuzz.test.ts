// Fuzz the API server with requests generated from the document's schemas: valid
// bodies, bodies with one mutation that makes them invalid, malformed JSON, random
// paths and methods, and raw garbage on the socket. The server must stay up, answer
// every well-formed HTTP request, and answer every bad request with a 4xx. Run against the
// server over an in-memory VMM and against the real `stratovisor --api-socket` process.

import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import { join } from 'node:path';
import { spawnVmm } from './testing/spawn_vmm.js';
import { MINIMAL_VM, request, startTestServer, tempDir } from './test_server.fixture.js';
import { getValidator, INTEGER_FORMATS, listOperations, type ApiOperation, type SchemaObject } from './validate.js';

/** mulberry32: a small seeded PRNG, so that a failure reproduces. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const SEED = Number(process.env.STRATOVISOR_FUZZ_SEED ?? 0x5eed);
const rand = prng(SEED);
const int = (lo: number, hi: number) => lo + Math.floor(rand() * (hi - lo + 1));
const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
const chance = (p: number) => rand() < p;

const validator = getValidator();

type JsonValue = null | boolean | number | string | JsonValue[] | { [k: string]: JsonValue };

function randomString(): string {
  const alphabets = ['abcdefghijklmnopqrstuvwxyz/._-0123456789', '\u00e9\u4e2d\u{1f600}"\\\n\t\u0000', 'Off'];
  const a = [...pick(alphabets)];
  let s = '';
  for (let i = int(0, 12); i > 0; i--) s += pick(a);
  return s;
}

/** A random instance valid against a (converted) schema. */
function generate(schema: SchemaObject, depth = 0): JsonValue {
  const s = validator.resolve(schema);
  if (Array.isArray(s.enum)) return pick(s.enum as JsonValue[]);
  const type = Array.isArray(s.type) ? s.type[0] : s.type;
  switch (type) {
    case 'object': {
      const out: Record<string, JsonValue> = {};
      const required = new Set(s.required ?? []);
      for (const [k, sub] of Object.entries(s.properties ?? {})) {
        if (required.has(k) || (depth < 3 && chance(0.3))) out[k] = generate(sub, depth + 1);
      }
      if (s.properties === undefined && typeof s.additionalProperties === 'object' && depth < 3) {
        for (let i = int(0, 2); i > 0; i--) out[`k${i}`] = generate(s.additionalProperties, depth + 1);
      }
      return out;
    }
    case 'array': {
      const out: JsonValue[] = [];
      if (s.items !== undefined && depth < 3) for (let i = int(0, 2); i > 0; i--) out.push(generate(s.items, depth + 1));
      return out;
    }
    case 'integer': {
      const range = s.format !== undefined ? INTEGER_FORMATS[s.format] : undefined;
      let lo = Math.max(range?.[0] ?? -1e6, s.minimum ?? -1e6);
      let hi = Math.min(range?.[1] ?? 1e9, s.maximum ?? 1e9);
      if (chance(0.5)) hi = Math.min(hi, lo + 300);
      if (lo > hi) lo = hi;
      return int(lo, hi);
    }
    case 'number':
      return rand() * 1000;
    case 'boolean':
      return chance(0.5);
    case 'string': {
      let str = randomString();
      while (s.minLength !== undefined && str.length < s.minLength) str += 'x';
      return str;
    }
    default:
      return {};
  }
}

interface Path {
  keys: (string | number)[];
  schema: SchemaObject;
}

/** Every location in `value` with the schema that governs it. */
function locations(value: JsonValue, schema: SchemaObject, keys: (string | number)[] = [], out: Path[] = []): Path[] {
  const s = validator.resolve(schema);
  out.push({ keys, schema: s });
  if (Array.isArray(value) && s.items !== undefined) value.forEach((v, i) => locations(v, s.items!, [...keys, i], out));
  else if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value)) {
      const sub = s.properties?.[k] ?? (typeof s.additionalProperties === 'object' ? s.additionalProperties : undefined);
      if (sub !== undefined) locations(v, sub, [...keys, k], out);
    }
  }
  return out;
}

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

function wrongTypeValue(s: SchemaObject): JsonValue {
  const type = Array.isArray(s.type) ? s.type[0] : s.type;
  const candidates: JsonValue[] = type === 'string' ? [1, true, [], {}] : type === 'integer' ? ['1', 1.5, false, []] : type === 'boolean' ? ['true', 0] : type === 'array' ? [{}, 'x', 0] : type === 'object' ? [[], 'x', 0] : ['x'];
  // (null is no wrong type for an optional field: Option<T> in CH, i.e. absent.)
  return pick(candidates);
}

/** Mutate a valid instance so that it violates the schema; undefined if no mutation applies. */
function mutate(value: JsonValue, schema: SchemaObject): { body: JsonValue; what: string } | undefined {
  const locs = locations(value, schema);
  for (let attempt = 0; attempt < 8; attempt++) {
    const loc = pick(locs);
    const copy = structuredClone(value);
    const cur = getAt(copy, loc.keys);
    const s = loc.schema;
    const kind = int(0, 4);
    // (Unknown fields are no mutation: Cloud Hypervisor ignores them, and so does the server.)
    if (kind === 0 && s.type === 'object' && cur !== null && typeof cur === 'object' && !Array.isArray(cur)) {
      (cur as Record<string, JsonValue>)[`unknown_${int(0, 99)}`] = 1;
      const keys = Object.keys(s.properties ?? {});
      if (keys.length > 0) {
        // ...but a wrong type next to it still fails.
        const k = pick(keys);
        const sub = s.properties![k]!;
        if (sub.type !== undefined && !Array.isArray(sub.type)) {
          (cur as Record<string, JsonValue>)[k] = wrongTypeValue(sub);
          return { body: copy, what: `unknown field and wrong type at ${[...loc.keys, k].join('.')}` };
        }
      }
    }
    if (kind === 1 && (s.required?.length ?? 0) > 0 && cur !== null && typeof cur === 'object' && !Array.isArray(cur)) {
      delete (cur as Record<string, JsonValue>)[pick(s.required!)];
      return { body: copy, what: `missing required at ${loc.keys.join('.')}` };
    }
    if (kind === 2 && s.type !== undefined && !Array.isArray(s.type)) {
      return { body: setAt(copy, loc.keys, wrongTypeValue(s)), what: `wrong type at ${loc.keys.join('.')}` };
    }
    if (kind === 3 && s.format !== undefined && INTEGER_FORMATS[s.format] !== undefined && s.format !== 'int64' && s.format !== 'uint64') {
      const [lo, hi] = INTEGER_FORMATS[s.format]!;
      return { body: setAt(copy, loc.keys, chance(0.5) ? hi + 1 : lo - 1), what: `out of ${s.format} range at ${loc.keys.join('.')}` };
    }
    if (kind === 4 && Array.isArray(s.enum)) {
      return { body: setAt(copy, loc.keys, 'NotAnEnumValue'), what: `bad enum at ${loc.keys.join('.')}` };
    }
  }
  return undefined;
}

function malformedJson(text: string): string {
  const bad = corrupt(text);
  try {
    JSON.parse(bad);
  } catch {
    return bad;
  }
  return `${text},`;
}

function corrupt(text: string): string {
  switch (int(0, 3)) {
    case 0:
      return text.slice(0, Math.max(1, int(0, text.length - 1)));
    case 1:
      return `${text}}`;
    case 2:
      return text.replace(/"/, "'");
    default: {
      const i = int(0, text.length);
      return `${text.slice(0, i)}\u0000${text.slice(i)}`.replace(/^\{/, '{,');
    }
  }
}

interface Case {
  method: string;
  path: string;
  body?: string;
  /** 'bad': must get a 4xx; 'any': any answer (valid request, state-dependent). */
  expect: 'bad' | 'any';
  what: string;
}

function makeCase(ops: ApiOperation[]): Case {
  const r = rand();
  const op = pick(ops);
  const name = op.path.slice(1);
  if (r < 0.05) return { method: pick(['GET', 'PUT', 'POST', 'DELETE', 'PATCH', 'OPTIONS']), path: `${pick(['vm', 'vmm', 'x', ''])}.${randomString().replace(/[^a-z.-]/g, '')}zz`, expect: 'bad', what: 'unknown path' };
  if (r < 0.08) return { method: 'PUT', path: 'vm.create', body: JSON.stringify({ ...MINIMAL_VM, cpus: { boot_vcpus: 1, max_vcpus: int(1, 4) } }), expect: 'any', what: 'valid VM' };
  if (r < 0.1) {
    const other = ['GET', 'PUT', 'POST', 'DELETE', 'PATCH'].filter((m) => m !== op.method);
    return { method: pick(other), path: name, expect: 'bad', what: 'wrong method' };
  }
  if (op.bodySchema === undefined) return { method: op.method, path: name, expect: 'any', what: 'no-body operation' };
  const schema: SchemaObject = { $ref: `#/definitions/${op.bodySchema}` };
  const valid = generate(schema);
  assert.deepEqual(validator.validate(op.bodySchema, valid), [], `generator produced an invalid ${op.bodySchema}: ${JSON.stringify(valid)}`);
  if (r < 0.35) return { method: op.method, path: name, body: JSON.stringify(valid), expect: 'any', what: `valid ${op.bodySchema}` };
  if (r < 0.5) return { method: op.method, path: name, body: malformedJson(JSON.stringify(valid)), expect: 'bad', what: 'malformed JSON' };
  if (r < 0.55 && op.bodyRequired) return { method: op.method, path: name, body: '', expect: 'bad', what: 'missing body' };
  const m = mutate(valid, schema);
  if (m === undefined) return { method: op.method, path: name, body: JSON.stringify(valid), expect: 'any', what: `valid ${op.bodySchema} (no mutation applies)` };
  assert.notDeepEqual(validator.validate(op.bodySchema, m.body), [], `mutation "${m.what}" left ${op.bodySchema} valid: ${JSON.stringify(m.body)}`);
  return { method: op.method, path: name, body: JSON.stringify(m.body), expect: 'bad', what: m.what };
}

interface Target { socketPath: string; close(): Promise<void> }

/** The real VMM process (stratovisor --api-socket, VmmCore behind the server). */
async function startVmmProcess(): Promise<Target> {
  const socketPath = join(tempDir(), 'api.sock');
  const vmm = await spawnVmm(socketPath);
  return {
    socketPath,
    close: async () => {
      assert.equal(vmm.child.exitCode, null, `the VMM process died during the fuzz run: ${vmm.stderr()}`);
      await request(socketPath, 'PUT', 'vmm.shutdown');
      assert.equal((await vmm.exited).code, 0, vmm.stderr());
    },
  };
}

const targets: Array<{ name: string; start: () => Promise<Target> }> = [
  { name: 'the API server over an in-memory VMM', start: async () => startTestServer() },
  { name: 'the stratovisor process', start: startVmmProcess },
];

for (const target of targets) describe(target.name, () => {
let t: Target;
before(async () => {
  t = await target.start();
});
after(async () => {
  await t.close();
});

test(`fuzz: 3000 generated requests (seed ${SEED}); the server stays up and rejects every bad one with 4xx`, async (ctx) => {
  const ops = listOperations().filter((o) => o.path !== '/vmm.shutdown');
  const N = 3000;
  const CONCURRENCY = 16;
  const counts = new Map<number, number>();
  let next = 0;
  let validCreates = 0;
  const worker = async () => {
    while (next < N) {
      next++;
      const c = makeCase(ops);
      const r = await request(t.socketPath, c.method, c.path, c.body);
      counts.set(r.status, (counts.get(r.status) ?? 0) + 1);
      if (c.expect === 'bad') {
        assert.ok(r.status >= 400 && r.status < 500, `${c.what}: ${c.method} ${c.path} ${c.body ?? ''} -> ${r.status} ${r.text}`);
      } else {
        assert.ok([200, 204, 400, 404, 405, 409, 500].includes(r.status), `${c.what}: ${c.method} ${c.path} -> ${r.status} ${r.text}`);
        if (c.path === 'vm.create' && r.status === 204) validCreates++;
      }
      if (r.status >= 400) assert.ok(Array.isArray(r.json), `error body is a JSON array: ${r.text}`);
      // Keep the lifecycle moving so that state-dependent routes see every state.
      if (chance(0.02)) await request(t.socketPath, 'PUT', 'vm.delete');
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  const ping = await request(t.socketPath, 'GET', 'vmm.ping');
  assert.equal(ping.status, 200);
  assert.ok((counts.get(400) ?? 0) > 500, `many 400s: ${JSON.stringify([...counts])}`);
  ctx.diagnostic(`status counts ${JSON.stringify([...counts].sort((a, b) => a[0] - b[0]))}, successful vm.create ${validCreates}`);
});

test('fuzz: 500 raw garbage / truncated HTTP messages; the server stays up', async () => {
  const send = (data: Buffer, close: boolean) =>
    new Promise<void>((resolve) => {
      const c = net.connect(t.socketPath);
      c.on('error', () => resolve());
      c.on('close', () => resolve());
      c.on('data', () => {});
      c.setTimeout(2000, () => c.destroy());
      c.on('connect', () => {
        c.write(data);
        if (close) c.destroy();
        else c.end();
      });
    });
  const templates = [
    'PUT /api/v1/vm.create HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n{"payload":{"kernel"',
    'GET /api/v1/vmm.ping HTTP/1.1\r\nHost: x\r\n\r\n',
    'PUT /api/v1/vm.boot HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n',
    'PUT /api/v1/vm.create HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello',
    'GET /api/v1/../../etc/passwd HTTP/1.1\r\n\r\n',
    'GET * HTTP/1.1\r\n\r\n',
    'GET http://evil/api/v1/vmm.ping HTTP/1.1\r\n\r\n',
  ];
  const jobs: Promise<void>[] = [];
  for (let i = 0; i < 500; i++) {
    let data: Buffer;
    if (chance(0.3)) {
      data = Buffer.alloc(int(1, 2048));
      for (let j = 0; j < data.length; j++) data[j] = int(0, 255);
    } else {
      const b = Buffer.from(pick(templates));
      data = b.subarray(0, int(1, b.length));
      if (chance(0.3)) data = Buffer.concat([data, Buffer.from([int(0, 255)])]);
    }
    jobs.push(send(data, chance(0.5)));
    if (jobs.length >= 16) await Promise.all(jobs.splice(0));
  }
  await Promise.all(jobs);
  assert.equal((await request(t.socketPath, 'GET', 'vmm.ping')).status, 200);
});
});
