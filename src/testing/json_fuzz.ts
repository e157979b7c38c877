// Mutations of JSON documents for the state-document fuzzers (src/devices/state_json.test.ts,
// src/pci/state_json.test.ts): random edits anywhere in a document, some wild (wrong types,
// values out of range, junk keys), some near misses that still pass the codecs (a number off by
// one bit, a blob of the right size with other bytes) so that the devices' own restore checks are
// reached too.

import { StateFormatError, type Json } from '../snapshot/codec.js';
import type { Prng } from './prng.js';

/** Values a hostile file might put anywhere. */
export const NASTY: readonly Json[] = [
  null, true, false, 0, -1, 1.5, 255, 256, 2 ** 31, 2 ** 32, 2 ** 53, -(2 ** 63), 1e308, '', '0x', '0xZZ', '-0x',
  '0x' + 'f'.repeat(17), '0x10000000000000', 'A'.repeat(5000), '====', 'AAA=', 'AA==', [], [1, 2, 3], {}, { a: { b: [] } },
  Array.from({ length: 40 }, () => ({})), '__proto__', 'constructor',
];

type Node = { [k: string]: Json } | Json[];

/** Every container in the document, for picking a random place to mutate. */
export function containers(j: Json, out: Node[] = []): Node[] {
  if (j !== null && typeof j === 'object') {
    out.push(j);
    for (const v of Array.isArray(j) ? j : Object.values(j)) containers(v, out);
  }
  return out;
}

const B64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** A value close to `v`: a number with one bit flipped or one off, a blob with bytes changed, a boolean negated. */
function nearMiss(v: Json, p: Prng): Json {
  if (typeof v === 'number') return p.chance(0.5) ? v ^ (1 << p.int(8)) : v + (p.chance(0.5) ? 1 : -1);
  if (typeof v === 'boolean') return !v;
  if (typeof v === 'string' && v.length > 0 && B64.test(v)) {
    const b = Buffer.from(v, 'base64');
    const op = p.int(3);
    if (op === 0 && b.length > 0) b[p.int(b.length)] = p.u32() & 0xff;
    else if (op === 1) return Buffer.concat([b, Buffer.from([p.u32() & 0xff])]).toString('base64');
    else if (b.length > 0) return b.subarray(0, b.length - 1).toString('base64');
    return b.toString('base64');
  }
  if (typeof v === 'string' && /^0x[0-9a-f]+$/.test(v)) return `0x${(BigInt(v) ^ (1n << BigInt(p.int(52)))).toString(16)}`;
  return p.pick(NASTY);
}

/** Apply 1..3 random edits to `doc` in place. */
export function mutateJson(doc: Json, p: Prng): void {
  const nodes = containers(doc);
  for (let m = 1 + p.int(3); m > 0; m--) {
    const node = nodes[p.int(nodes.length)]!;
    const op = p.int(4);
    if (Array.isArray(node)) {
      if (op === 0 && node.length > 0) node.splice(p.int(node.length), 1);
      else if (op === 1) node.push(p.chance(0.5) && node.length > 0 ? structuredClone(node[p.int(node.length)]!) : p.pick(NASTY));
      else if (node.length > 0) { const i = p.int(node.length); node[i] = op === 2 ? nearMiss(node[i]!, p) : p.pick(NASTY); }
    } else {
      const keys = Object.keys(node);
      if (op === 0 && keys.length > 0) delete node[keys[p.int(keys.length)]!];
      // An own property even for __proto__, as JSON.parse makes it.
      else if (op === 1) Object.defineProperty(node, p.chance(0.2) ? '__proto__' : `k${p.int(4)}`, { value: p.pick(NASTY), enumerable: true, writable: true, configurable: true });
      else if (keys.length > 0) { const k = keys[p.int(keys.length)]!; node[k] = op === 2 ? nearMiss(node[k]!, p) : p.pick(NASTY); }
    }
  }
}

/** The StateFormatError `fn` throws; anything else (or nothing) fails the test. */
export function stateErrorOf(fn: () => unknown): StateFormatError {
  try {
    fn();
  } catch (e) {
    if (e instanceof StateFormatError) return e;
    throw new Error(`expected a StateFormatError, got ${String(e)}`, { cause: e });
  }
  throw new Error('expected a StateFormatError, nothing was thrown');
}

/** Delete (`del`) or replace (`set`) the value at `path` in a parsed document (an array element is spliced out). */
export function editJson(doc: Json, path: ReadonlyArray<string | number>, change: { del: true } | { set: Json }): void {
  let node: Json = doc;
  for (const k of path.slice(0, -1)) node = (node as Record<string | number, Json>)[k]!;
  const last = path[path.length - 1]!;
  const obj = node as Record<string | number, Json>;
  if ('del' in change) {
    if (Array.isArray(node)) node.splice(Number(last), 1);
    else delete obj[last];
  } else {
    obj[last] = change.set;
  }
}
