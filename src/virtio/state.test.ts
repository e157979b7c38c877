// The virtio device state document (state.ts): every device kind round-trips through JSON;
// malformed documents name the bad field; mutated, truncated and corrupted documents only ever
// throw StateFormatError (seeded: STV_FUZZ_SEED replays a run).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { editJson, stateErrorOf } from '../testing/json_fuzz.js';
import {
  parseVirtioState, stringifyVirtioState, virtioStateFromJson, VIRTIO_STATE_VERSION,
  type VirtioDeviceSpecificState, type VirtioDeviceState,
} from './state.js';
import { StateFormatError, type Json } from '../snapshot/codec.js';
import { Prng, seedFromEnv } from '../testing/prng.js';

function device(id: string, type: number, nq: number, dev: VirtioDeviceSpecificState, seed: number): VirtioDeviceState {
  const r = new Prng(seed);
  return {
    id,
    transport: {
      deviceType: type, deviceStatus: 0x0f, deviceFeatures: (1n << 32n) | (1n << 29n) | (1n << 28n) | 0x3fn, driverFeatures: (1n << 32n) | (1n << 29n) | 0x21n,
      deviceFeatureSelect: 1, driverFeatureSelect: 1, queueSelect: nq - 1, configGeneration: r.int(1000), msixConfigVector: 0, needsReset: false,
      queues: Array.from({ length: nq }, (_, q) => ({
        size: 256, ready: true, msixVector: q + 1,
        descTable: BigInt(0x10000 * (q + 1)), availRing: BigInt(0x10000 * (q + 1) + 4096), usedRing: 0x1_0000_2000n + BigInt(q * 8192),
        lastAvailIdx: r.int(65536), usedIdx: r.int(65536),
      })),
      vectorMasked: Array.from({ length: nq + 1 }, (_, v) => v === nq),
      vectorPending: Array.from({ length: nq + 1 }, (_, v) => v === 1),
    },
    device: dev,
  };
}

function sample(seed: number): VirtioDeviceState[] {
  const bytes = (n: number, k: number) => Uint8Array.from({ length: n }, (_, i) => (i * 7 + k) & 0xff);
  return [
    device('_disk0', 2, 2, { kind: 'block', capacity: 2048n, readonly: false, numQueues: 2, config: bytes(60, seed) }, seed),
    device('_net0', 1, 3, { kind: 'net', mac: Uint8Array.of(0x52, 0x54, 0, 1, 2, 3), config: bytes(12, seed), activePairs: 1 }, seed + 1),
    device('_console', 3, 2, { kind: 'console', cols: 80, rows: 24 }, seed + 2),
    device('_rng0', 4, 1, { kind: 'rng' }, seed + 3),
    device('_vsock0', 19, 3, { kind: 'vsock', cid: 3n }, seed + 4),
    device('_fs0', 26, 2, { kind: 'fs', tag: 'myfs', numRequestQueues: 1 }, seed + 5),
    device('_pmem0', 27, 1, { kind: 'pmem', start: 0x1_0000_0000n, size: 0x20_0000n }, seed + 6),
    device('_balloon0', 5, 3, { kind: 'balloon', numPages: 65536, actual: 0xffffffff }, seed + 7),
    device('_mem0', 24, 1, { kind: 'mem', addr: 0x1_4000_0000n, regionSize: 0x4000_0000n, blockSize: 0x20_0000n, requestedSize: 0x1000_0000n, plugged: bytes(64, seed) }, seed + 8),
  ];
}

test('virtio state JSON: every device kind writes and reads back the same', () => {
  const s = sample(5);
  const text = stringifyVirtioState(s);
  assert.deepEqual(parseVirtioState(text), s);
  const j = JSON.parse(text) as { format: string; version: number; devices: Array<{ transport: { deviceFeatures: string; queues: Array<{ usedRing: string }> }; device: { config?: string } }> };
  assert.equal(j.format, 'stratovisor-virtio-state');
  assert.equal(j.version, VIRTIO_STATE_VERSION);
  assert.equal(j.devices[0]!.transport.queues[0]!.usedRing, '0x100002000', '64-bit addresses are hex strings');
  assert.equal(Buffer.from(j.devices[0]!.device.config!, 'base64').length, 60, 'byte blobs are base64');
});

const errorOf = stateErrorOf;
const edit = editJson;

test('virtio state JSON: malformed documents name the bad field', () => {
  const cases: Array<[ReadonlyArray<string | number>, { del: true } | { set: Json }, string, RegExp]> = [
    [['devices', 0, 'transport', 'queues', 1, 'size'], { del: true }, 'devices[0].transport.queues[1].size', /missing/],
    [['devices', 0, 'transport', 'queues', 1, 'size'], { set: 100 }, 'devices[0].transport.queues[1].size', /power of two/],
    [['devices', 0, 'transport', 'queues', 0, 'lastAvailIdx'], { set: 65536 }, 'devices[0].transport.queues[0].lastAvailIdx', /0\.\.65535, got 65536/],
    [['devices', 1, 'transport', 'queues', 2, 'msixVector'], { set: 9 }, 'devices[1].transport.queues[2].msixVector', /below 4 or 65535/],
    [['devices', 1, 'transport', 'deviceFeatures'], { set: 12 }, 'devices[1].transport.deviceFeatures', /64-bit hex string/],
    [['devices', 1, 'transport', 'driverFeatures'], { set: '0x8000000000000000' }, 'devices[1].transport.driverFeatures', /subset of deviceFeatures/],
    [['devices', 1, 'transport', 'vectorMasked'], { set: [true] }, 'devices[1].transport.vectorMasked', /array of 4/],
    [['devices', 1, 'device', 'mac'], { set: Buffer.alloc(5).toString('base64') }, 'devices[1].device.mac', /6 bytes, got 5 bytes/],
    [['devices', 2, 'device', 'kind'], { set: 'gpu' }, 'devices[2].device.kind', /one of "block", "net"/],
    [['devices', 2, 'device', 'extra'], { set: 1 }, 'devices[2].device.extra', /unknown field/],
    [['devices', 3, 'transport', 'needsReset'], { set: 0 }, 'devices[3].transport.needsReset', /true or false, got 0/],
    [['devices', 4, 'device', 'cid'], { set: '3' }, 'devices[4].device.cid', /64-bit hex/],
    [['devices', 5, 'device', 'tag'], { set: 'x'.repeat(37) }, 'devices[5].device.tag', /at most 36/],
    [['devices', 5, 'id'], { set: '_disk0' }, 'devices[5].id', /names more than one device/],
    [['devices', 8, 'device', 'plugged'], { set: Buffer.alloc(0).toString('base64') }, 'devices[8].device.plugged', /base64 of 1\.\.8388608 bytes, got 0 bytes/],
    [['devices', 8, 'device', 'requestedSize'], { del: true }, 'devices[8].device.requestedSize', /missing/],
    [['devices', 0, 'transport', 'queues'], { set: [] }, 'devices[0].transport.queues', /array of 1\.\.4096/],
    [['version'], { set: VIRTIO_STATE_VERSION + 1 }, 'version', /newer Stratovisor/],
    [['version'], { set: 0 }, 'version', /older than any/],
    [['format'], { set: 'cloud-hypervisor' }, 'format', /stratovisor-virtio-state/],
  ];
  for (const [path, change, field, message] of cases) {
    const d = JSON.parse(stringifyVirtioState(sample(7))) as Json;
    edit(d, path, change);
    const e = errorOf(() => virtioStateFromJson(d));
    assert.equal(e.field, field, e.message);
    assert.match(e.message, message);
    assert.ok(e.message.startsWith(`virtio state: ${field}: `), e.message);
  }
  assert.match(errorOf(() => parseVirtioState('{"format": ')).message, /^virtio state: not JSON/);
  assert.match(errorOf(() => parseVirtioState('[]')).message, /a JSON object, got an array of 0/);
  assert.match(errorOf(() => parseVirtioState('')).message, /not JSON/);
});

const NASTY: Json[] = [
  null, true, false, 0, -1, 1.5, 2 ** 16, 2 ** 32, 2 ** 53, 1e308, '', '0x', '0xZZ', '0x' + 'f'.repeat(17), 'A'.repeat(5000),
  '====', 'AAA=', [], [1, 2, 3], [true, false], {}, { kind: 'block' }, { kind: 'rng' }, 'rng', '__proto__',
  { __proto__: 1 } as unknown as Json,
];

type Node = { [k: string]: Json } | Json[];
function containers(j: Json, out: Node[] = []): Node[] {
  if (j !== null && typeof j === 'object') {
    out.push(j);
    for (const v of Array.isArray(j) ? j : Object.values(j)) containers(v, out);
  }
  return out;
}

test('virtio state JSON fuzz: mutated, truncated and corrupted documents only ever throw StateFormatError', (t) => {
  const seed = seedFromEnv('STV_FUZZ_SEED', 4242);
  t.diagnostic(`seed ${seed} (STV_FUZZ_SEED replays it)`);
  const base = stringifyVirtioState(sample(99));
  const r = new Prng(seed);
  let rejected = 0;
  let accepted = 0;
  const attempt = (input: () => unknown): void => {
    try {
      const s = virtioStateFromJson(input());
      assert.deepEqual(parseVirtioState(stringifyVirtioState(s)), s, 'whatever is accepted writes and reads back the same');
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
    for (let m = 1 + r.int(3); m > 0; m--) {
      const node = r.pick(nodes);
      if (Array.isArray(node)) {
        const op = r.int(3);
        if (op === 0 && node.length > 0) node.splice(r.int(node.length), 1);
        else if (op === 1) node.push(r.pick(NASTY));
        else if (node.length > 0) node[r.int(node.length)] = r.pick(NASTY);
      } else {
        const keys = Object.keys(node);
        const op = r.int(3);
        if (op === 0 && keys.length > 0) delete node[r.pick(keys)];
        else if (op === 1) node[r.chance(0.5) ? 'zz' : r.pick(['kind', 'id', 'size'])] = r.pick(NASTY);
        else if (keys.length > 0) node[r.pick(keys)] = r.pick(NASTY);
      }
    }
    attempt(() => doc);
  }
  for (let i = 0; i < 500; i++) {
    const cut = base.slice(0, r.int(base.length));
    attempt(() => { try { return JSON.parse(cut) as unknown; } catch { return parseVirtioState(cut); } });
    const b = Buffer.from(base);
    for (let k = 0; k < 4; k++) b[r.int(b.length)] = r.u32() & 0xff;
    attempt(() => parseVirtioState(b.toString('latin1')));
  }
  t.diagnostic(`${rejected} rejected, ${accepted} accepted`);
  assert.ok(rejected > 3000, 'most mutations are rejected');
});
