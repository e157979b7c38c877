// The hypervisor state file form: exact round trip, named errors, and a fuzzer that throws
// mutated and truncated documents at the parser (only StateFormatError may come out).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { editJson, stateErrorOf } from '../testing/json_fuzz.js';
import { rng, sampleHypervisorState as sample } from './testing/sample_state.js';
import {
  HYPERVISOR_STATE_VERSION, hypervisorStateFromJson, parseHypervisorState,
  StateFormatError, stringifyHypervisorState,
} from './state_json.js';
import type { Json } from './state_json.js';

test('state JSON: exact round trip through text, 64-bit values as hex, blobs as base64', () => {
  for (const seed of [1, 2, 3, 0xdeadbeef]) {
    const s = sample(seed);
    const text = stringifyHypervisorState(s);
    assert.deepEqual(parseHypervisorState(text), s);
    const j = JSON.parse(text) as { version: number; vcpus: Array<{ regs: { rip: string }; lapic: string }> };
    assert.equal(j.version, HYPERVISOR_STATE_VERSION);
    assert.match(j.vcpus[0]!.regs.rip, /^0x[0-9a-f]+$/);
    assert.equal(Buffer.from(j.vcpus[0]!.lapic, 'base64').length, 1024);
  }
});

const errorOf = stateErrorOf;
const edit = editJson;

test('state JSON: malformed documents name the bad field', () => {
  const V = HYPERVISOR_STATE_VERSION;
  const cases: Array<[ReadonlyArray<string | number>, { del: true } | { set: Json }, string, RegExp]> = [
    [['vcpus', 1, 'sregs', 'cs', 'limit'], { del: true }, 'vcpus[1].sregs.cs.limit', /missing/],
    [['vcpus', 0, 'regs', 'rip'], { set: '0x1234567890abcdef0' }, 'vcpus[0].regs.rip', /64-bit hex string/],
    [['vcpus', 0, 'regs', 'rax'], { set: 12 }, 'vcpus[0].regs.rax', /got 12/],
    [['vcpus', 0, 'sregs', 'cs', 'type'], { set: 256 }, 'vcpus[0].sregs.cs.type', /0\.\.255, got 256/],
    [['vcpus', 0, 'lapic'], { set: Buffer.alloc(1000).toString('base64') }, 'vcpus[0].lapic', /1024 bytes, got 1000 bytes/],
    [['vcpus', 0, 'lapic'], { set: 'not base64!' }, 'vcpus[0].lapic', /base64/],
    [['vcpus', 0, 'msrs', 2, 'index'], { set: 16 }, 'vcpus[0].msrs[2].index', /32-bit hex/],
    [['vcpus', 0, 'mpState'], { set: 'sleeping' }, 'vcpus[0].mpState', /one of "runnable"/],
    [['vcpus', 0, 'extra'], { set: 1 }, 'vcpus[0].extra', /unknown field/],
    [['vm', 'irqchip', 'ioapic', 'redirtbl', 23], { del: true }, 'vm.irqchip.ioapic.redirtbl', /array of 24, got an array of 23/],
    [['vm', 'pit', 'channels', 2, 'countLoadTime'], { set: '-0x8000000000000001' }, 'vm.pit.channels[2].countLoadTime', /signed 64-bit/],
    [['vm', 'clock'], { set: null }, 'vm.clock', /an object, got null/],
    [['vcpus'], { set: [] }, 'vcpus', /array of 1\.\.4096/],
    [['version'], { set: V + 1 }, 'version', /newer Stratovisor/],
    [['version'], { set: 0 }, 'version', /older than any/],
    [['format'], { set: 'cloud-hypervisor' }, 'format', /stratovisor-hypervisor-state/],
  ];
  for (const [path, change, field, message] of cases) {
    const d = JSON.parse(stringifyHypervisorState(sample(7))) as Json;
    edit(d, path, change);
    const e = errorOf(() => hypervisorStateFromJson(d));
    assert.equal(e.field, field, e.message);
    assert.match(e.message, message);
    assert.ok(e.message.startsWith(`hypervisor state: ${field}: `), e.message);
  }
  assert.match(errorOf(() => parseHypervisorState('{"format": ')).message, /^hypervisor state: not JSON/);
  assert.match(errorOf(() => parseHypervisorState('[]')).message, /a JSON object, got an array of 0/);
  assert.match(errorOf(() => parseHypervisorState('')).message, /not JSON/);
});

// Values a hostile file might put anywhere.
const NASTY: Json[] = [
  null, true, false, 0, -1, 1.5, 2 ** 32, 2 ** 53, -(2 ** 63), 1e308, '', '0x', '0xZZ', '-0x', '--0x1',
  '0x' + 'f'.repeat(17), 'A'.repeat(5000), '====', 'AAA=', [], [1, 2, 3], {}, { a: { b: { c: [] } } },
  Array.from({ length: 30 }, () => ({})), 'runnable', '__proto__', { __proto__: 1 } as unknown as Json,
];

type Node = { [k: string]: Json } | Json[];

/** Every container in the document with its keys, for picking a random place to mutate. */
function containers(j: Json, out: Node[] = []): Node[] {
  if (j !== null && typeof j === 'object') {
    out.push(j);
    for (const v of Array.isArray(j) ? j : Object.values(j)) containers(v, out);
  }
  return out;
}

test('state JSON fuzz: mutated, truncated and corrupted documents only ever throw StateFormatError', () => {
  const base = stringifyHypervisorState(sample(99));
  const r = rng(12345);
  const int = (n: number): number => Math.floor(r() * n);
  let rejected = 0;
  let accepted = 0;
  const attempt = (input: () => unknown): void => {
    try {
      const s = hypervisorStateFromJson(input());
      // Whatever is accepted is a valid state: it writes and reads back the same.
      assert.deepEqual(parseHypervisorState(stringifyHypervisorState(s)), s);
      accepted++;
    } catch (e) {
      if (!(e instanceof StateFormatError)) throw new Error(`parser threw ${String(e)} instead of a StateFormatError`, { cause: e });
      assert.ok(e.message.length < 400, `error message too long: ${e.message.slice(0, 100)}…`);
      rejected++;
    }
  };
  for (let i = 0; i < 3000; i++) {
    const doc = JSON.parse(base) as Json;
    const nodes = containers(doc);
    for (let m = 1 + int(3); m > 0; m--) {
      const node = nodes[int(nodes.length)]!;
      if (Array.isArray(node)) {
        const op = int(3);
        if (op === 0 && node.length > 0) node.splice(int(node.length), 1);
        else if (op === 1) node.push(NASTY[int(NASTY.length)]!);
        else if (node.length > 0) node[int(node.length)] = NASTY[int(NASTY.length)]!;
      } else {
        const keys = Object.keys(node);
        const op = int(3);
        if (op === 0 && keys.length > 0) delete node[keys[int(keys.length)]!];
        else if (op === 1) node[`k${int(4)}`] = NASTY[int(NASTY.length)]!;
        else if (keys.length > 0) node[keys[int(keys.length)]!] = NASTY[int(NASTY.length)]!;
      }
    }
    attempt(() => doc);
  }
  // Raw text: truncations and flipped characters, through JSON.parse.
  for (let i = 0; i < 1000; i++) {
    let text = base;
    if (i % 2 === 0) text = text.slice(0, int(text.length));
    else {
      const at = int(text.length);
      text = text.slice(0, at) + String.fromCharCode(32 + int(95)) + text.slice(at + 1);
    }
    try {
      attempt(() => {
        try {
          return JSON.parse(text) as unknown;
        } catch {
          throw new StateFormatError('', 'not JSON');
        }
      });
    } catch (e) {
      throw new Error(`text case ${i}: ${(e as Error).message}`);
    }
  }
  // Non-JSON values an API caller might pass.
  for (const v of [undefined, 1n, Symbol('x'), () => 1, new Map(), new Uint8Array(4)]) attempt(() => v);
  console.log(`# fuzz: ${rejected} rejected with a named field, ${accepted} accepted (and round-tripped)`);
  assert.ok(rejected > 3500);
});
