// virtio-mem (virtio 1.2, 5.15) driven by the test driver: configuration, PLUG / UNPLUG /
// UNPLUG_ALL / STATE requests through a real virtqueue in guest memory, the ERROR, NACK and BUSY
// answers, the host callbacks, requested_size changes, hostile chains, reset and saved state.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GuestMemory } from '../../memory/guest_memory.js';
import { VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VirtioDeviceType, bit } from '../device.js';
import { VirtqueueError } from '../queue.js';
import { TestDriver } from '../testing/driver.js';
import { VirtioStateMismatchError, parseVirtioState, stringifyVirtioState, type VirtioDeviceSpecificState } from '../state.js';
import {
  MEM_CONFIG_BYTES, MemConfig, MemDevice, VIRTIO_MEM_F_ACPI_PXM, VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE,
  VIRTIO_MEM_REQ_PLUG, VIRTIO_MEM_REQ_STATE, VIRTIO_MEM_REQ_UNPLUG, VIRTIO_MEM_REQ_UNPLUG_ALL,
  VIRTIO_MEM_RESP_ACK, VIRTIO_MEM_RESP_BUSY, VIRTIO_MEM_RESP_ERROR, VIRTIO_MEM_RESP_NACK,
  VIRTIO_MEM_STATE_MIXED, VIRTIO_MEM_STATE_PLUGGED, VIRTIO_MEM_STATE_UNPLUGGED,
  type MemDeviceOptions,
} from './device.js';

const MiB = 1 << 20;
const BS = 2 * MiB;
// Region A [0, 1 MiB): rings and requests. The virtio-mem region: 16 blocks of 2 MiB at 128 MiB,
// also guest RAM here so that what is given back can be seen (GuestMemory.discard zeroes it).
const ADDR = 128 * MiB;
const BLOCKS = 16;
const SIZE = BLOCKS * BS;

function req(type: number, addr: number | bigint = 0, nb = 0, len = 24): Uint8Array {
  const b = new Uint8Array(len);
  const dv = new DataView(b.buffer);
  if (len >= 2) dv.setUint16(0, type, true);
  if (len >= 16) dv.setBigUint64(8, BigInt.asUintN(64, BigInt(addr)), true);
  if (len >= 18) dv.setUint16(16, nb, true);
  return b;
}

interface Resp { type: number; state: number }

function config(dev: MemDevice) {
  const b = new Uint8Array(MEM_CONFIG_BYTES + 8).fill(0xee);
  dev.readConfig(0, b);
  const dv = new DataView(b.buffer);
  const u64 = (o: number) => Number(dv.getBigUint64(o, true));
  return {
    blockSize: u64(MemConfig.blockSize), nodeId: dv.getUint16(MemConfig.nodeId, true), padding: [...b.subarray(10, 16)],
    addr: u64(MemConfig.addr), regionSize: u64(MemConfig.regionSize), usableRegionSize: u64(MemConfig.usableRegionSize),
    pluggedSize: u64(MemConfig.pluggedSize), requestedSize: u64(MemConfig.requestedSize), beyond: [...b.subarray(MEM_CONFIG_BYTES)],
  };
}

function rig(opts: Partial<MemDeviceOptions> = {}) {
  const bufA = new ArrayBuffer(1 * MiB);
  const bufR = new ArrayBuffer(SIZE);
  const mem = GuestMemory.fromBuffers([{ gpa: 0, buffer: bufA }, { gpa: ADDR, buffer: bufR }]);
  const region = new Uint8Array(bufR);
  region.fill(0xaa);
  const discards: Array<[number, number]> = [];
  const populates: Array<[number, number]> = [];
  const dev = new MemDevice({
    addr: ADDR, regionSize: SIZE, requestedSize: 8 * BS,
    discard: (gpa, len) => { discards.push([gpa, len]); return mem.discard(gpa, len); },
    populate: (gpa, len) => { populates.push([gpa, len]); return true; },
    ...opts,
  });
  const drv = new TestDriver(mem, { size: 64 });
  const notified: number[] = [];
  let configChanges = 0;
  let published = 0;
  dev.activate({
    mem, queues: [drv.queue({ eventIdx: true, indirect: true })], features: dev.features,
    notifyQueue: (i) => notified.push(i), notifyConfig: () => { configChanges++; }, publishConfig: () => { published++; },
  });
  /** Send requests (each its own chain) and return the responses in order. */
  const send = (...reqs: Uint8Array[]): Resp[] => {
    const chains = reqs.map((r) => drv.addChain([r], [10]));
    dev.processQueue(0);
    const used = drv.used();
    assert.deepEqual(used, chains.map((c) => ({ id: c.head, len: 10 })));
    drv.resetData();
    return chains.map((c) => ({ type: mem.readU16(c.writable[0]!), state: mem.readU16(c.writable[0]! + 8) }));
  };
  const one = (r: Uint8Array): Resp => send(r)[0]!;
  return { dev, mem, drv, region, discards, populates, notified, send, one, changes: () => configChanges, published: () => published };
}

const ack = (state = 0): Resp => ({ type: VIRTIO_MEM_RESP_ACK, state });
const error: Resp = { type: VIRTIO_MEM_RESP_ERROR, state: 0 };
const nack: Resp = { type: VIRTIO_MEM_RESP_NACK, state: 0 };
const busy: Resp = { type: VIRTIO_MEM_RESP_BUSY, state: 0 };
const blk = (i: number): number => ADDR + i * BS;

test('device type 24, one queue; features: UNPLUGGED_INACCESSIBLE (unless turned off), never ACPI_PXM', () => {
  const { dev } = rig();
  assert.equal(dev.deviceType, VirtioDeviceType.Mem);
  assert.equal(dev.deviceType, 24);
  assert.equal(dev.numQueues, 1);
  assert.equal(dev.queueMaxSize, 128);
  assert.equal(dev.features, bit(VIRTIO_F_INDIRECT_DESC) | bit(VIRTIO_F_EVENT_IDX) | bit(VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE));
  assert.equal(dev.features & bit(VIRTIO_MEM_F_ACPI_PXM), 0n);
  assert.equal(dev.unpluggedInaccessibleNegotiated, true);
  const off = new MemDevice({ addr: ADDR, regionSize: SIZE, unpluggedInaccessible: false, discard: () => true });
  assert.equal(off.features & bit(VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE), 0n);
  const mem = GuestMemory.fromBuffers([{ gpa: 0, buffer: new ArrayBuffer(1 * MiB) }]);
  const legacy = new MemDevice({ addr: ADDR, regionSize: SIZE, discard: () => true });
  legacy.activate({ mem, queues: [null], features: bit(VIRTIO_F_EVENT_IDX), notifyQueue: () => {}, notifyConfig: () => {} });
  assert.equal(legacy.unpluggedInaccessibleNegotiated, false, 'a driver that did not accept it');
});

test('bad options are named', () => {
  const d = () => true;
  assert.throws(() => new MemDevice({ addr: ADDR, regionSize: SIZE, blockSize: 1 * MiB, discard: d }), /block size 1048576 is not a power of two of at least 2 MiB/);
  assert.throws(() => new MemDevice({ addr: ADDR, regionSize: SIZE, blockSize: 6 * MiB, discard: d }), /block size/);
  assert.throws(() => new MemDevice({ addr: ADDR, regionSize: SIZE + MiB, discard: d }), /region size 34603008 is not a non-zero multiple/);
  assert.throws(() => new MemDevice({ addr: ADDR, regionSize: 0, discard: d }), /region size 0/);
  assert.throws(() => new MemDevice({ addr: ADDR + MiB, regionSize: SIZE, discard: d }), /region address/);
  assert.throws(() => new MemDevice({ addr: 2 ** 52 - BS, regionSize: SIZE, discard: d }), /below 2\^52/);
  assert.throws(() => new MemDevice({ addr: ADDR, regionSize: 2 ** 48, discard: d }), /134217728 blocks of 2097152 bytes, more than 67108864/);
  assert.throws(() => new MemDevice({ addr: ADDR, regionSize: SIZE, requestedSize: SIZE + BS, discard: d }), /requested size 35651584 is not a multiple .* in 0\.\.33554432/);
  assert.throws(() => new MemDevice({ addr: ADDR, regionSize: SIZE, requestedSize: MiB, discard: d }), /requested size 1048576/);
  assert.throws(() => new MemDevice({ addr: ADDR, regionSize: SIZE, queueSize: 3, discard: d }), /queue size 3/);
  const big = new MemDevice({ addr: 4 * 2 ** 30, regionSize: 2 ** 40, blockSize: 128 * MiB, discard: d });
  assert.equal(big.blockCount, 8192);
});

test('configuration (5.15.4): block_size, node_id 0, addr, region_size, usable = region, plugged_size, requested_size; read-only', () => {
  const { dev } = rig();
  assert.deepEqual(config(dev), {
    blockSize: BS, nodeId: 0, padding: [0, 0, 0, 0, 0, 0], addr: ADDR, regionSize: SIZE, usableRegionSize: SIZE,
    pluggedSize: 0, requestedSize: 8 * BS, beyond: [0, 0, 0, 0, 0, 0, 0, 0],
  });
  dev.writeConfig(MemConfig.requestedSize, new Uint8Array(8).fill(0xff)); // ignored
  dev.writeConfig(0, new Uint8Array(56));
  assert.equal(config(dev).requestedSize, 8 * BS);
  const part = new Uint8Array(4);
  dev.readConfig(MemConfig.addr + 2, part);
  assert.deepEqual([...part], [0x00, 0x08, 0x00, 0x00], '0x08000000, bytes 2..5');
  // A region above 4 GiB: the high halves are right.
  const hi = new MemDevice({ addr: 0x3_4000_0000, regionSize: 0x2_0000_0000, requestedSize: 0x1_0020_0000, discard: () => true });
  assert.equal(config(hi).addr, 0x3_4000_0000);
  assert.equal(config(hi).regionSize, 0x2_0000_0000);
  assert.equal(config(hi).requestedSize, 0x1_0020_0000);
});

test('PLUG, STATE, UNPLUG: ACK, plugged_size follows, the host callbacks see the byte ranges; the config is republished without a notification', () => {
  const r = rig();
  assert.deepEqual(r.one(req(VIRTIO_MEM_REQ_STATE, blk(0), BLOCKS)), ack(VIRTIO_MEM_STATE_UNPLUGGED));
  assert.equal(r.published(), 0, 'a STATE request changes nothing');
  assert.deepEqual(r.send(req(VIRTIO_MEM_REQ_PLUG, blk(2), 3), req(VIRTIO_MEM_REQ_PLUG, blk(8), 1)), [ack(), ack()]);
  assert.deepEqual(r.populates, [[blk(2), 3 * BS], [blk(8), BS]]);
  assert.equal(r.published(), 1, 'republished once for the round');
  assert.equal(r.changes(), 0, 'plugged_size changes are not notified (5.15.4)');
  assert.equal(config(r.dev).pluggedSize, 4 * BS);
  assert.equal(r.dev.pluggedSize, 4 * BS);
  assert.deepEqual([0, 1, 2, 3, 4, 5, 8, 9].map((i) => r.dev.isPlugged(i)), [false, false, true, true, true, false, true, false]);
  assert.deepEqual(r.send(
    req(VIRTIO_MEM_REQ_STATE, blk(2), 3), req(VIRTIO_MEM_REQ_STATE, blk(1), 2), req(VIRTIO_MEM_REQ_STATE, blk(5), 3),
    req(VIRTIO_MEM_REQ_STATE, blk(0), BLOCKS), req(VIRTIO_MEM_REQ_STATE, blk(8), 1),
  ), [ack(VIRTIO_MEM_STATE_PLUGGED), ack(VIRTIO_MEM_STATE_MIXED), ack(VIRTIO_MEM_STATE_UNPLUGGED), ack(VIRTIO_MEM_STATE_MIXED), ack(VIRTIO_MEM_STATE_PLUGGED)]);
  // Unplug the middle block of the three: only its host memory is given back.
  assert.deepEqual(r.one(req(VIRTIO_MEM_REQ_UNPLUG, blk(3), 1)), ack());
  assert.deepEqual(r.discards, [[blk(3), BS]]);
  assert.ok(r.region.subarray(3 * BS, 4 * BS).every((x) => x === 0), 'block 3 was given back');
  assert.ok(r.region.subarray(2 * BS, 3 * BS).every((x) => x === 0xaa) && r.region.subarray(4 * BS, 5 * BS).every((x) => x === 0xaa), 'its neighbours are untouched');
  assert.equal(config(r.dev).pluggedSize, 3 * BS);
  assert.equal(r.published(), 2);
  assert.deepEqual(r.notified.length > 0, true);
  assert.deepEqual(r.dev.counters, {
    plug_requests: 2, unplug_requests: 1, unplug_all_requests: 0, state_requests: 6, acks: 9, nacks: 0, busy: 0, errors: 0,
    invalid_requests: 0, bad_chains: 0, discard_errors: 0, populate_errors: 0,
  });
});

test('ERROR (5.15.6.1, .2, .4): misaligned, outside the usable region, empty, overflowing; plug of a plugged block, unplug of an unplugged one', () => {
  const r = rig({ requestedSize: SIZE });
  assert.deepEqual(r.one(req(VIRTIO_MEM_REQ_PLUG, blk(4), 2)), ack());
  const ranges: Array<[number | bigint, number, string]> = [
    [blk(1) + 4096, 1, 'not block aligned'],
    [blk(1) + MiB, 1, 'half a block off'],
    [ADDR - BS, 1, 'the block before the region'],
    [ADDR - BS, 2, 'starts before the region, ends inside'],
    [blk(BLOCKS), 1, 'just past the region'],
    [blk(BLOCKS - 1), 2, 'runs past the end'],
    [blk(0), BLOCKS + 1, 'one block too many'],
    [blk(0), 0, 'nb_blocks 0'],
    [0, 1, 'address 0'],
    [2n ** 64n - BigInt(BS), 1, 'near 2^64'],
    [2n ** 64n - BigInt(BS), 0xffff, 'wraps around 2^64'],
    [2n ** 53n, 1, '2^53'],
    [2n ** 53n + BigInt(ADDR), 1, 'the region address plus 2^53'],
    [blk(0), 0xffff, '65535 blocks'],
  ];
  for (const type of [VIRTIO_MEM_REQ_PLUG, VIRTIO_MEM_REQ_UNPLUG, VIRTIO_MEM_REQ_STATE]) {
    const got = r.send(...ranges.map(([a, n]) => req(type, a, n)));
    got.forEach((g, i) => assert.deepEqual(g, error, `type ${type}: ${ranges[i]![2]}`));
  }
  assert.deepEqual(r.send(
    req(VIRTIO_MEM_REQ_PLUG, blk(4), 1), // already plugged
    req(VIRTIO_MEM_REQ_PLUG, blk(3), 2), // block 4 of the two is plugged
    req(VIRTIO_MEM_REQ_PLUG, blk(5), 1), // the last of the plugged pair
    req(VIRTIO_MEM_REQ_UNPLUG, blk(6), 1), // not plugged
    req(VIRTIO_MEM_REQ_UNPLUG, blk(4), 3), // blocks 4, 5 plugged, 6 not
  ), [error, error, error, error, error]);
  assert.deepEqual(r.discards, [], 'nothing given back');
  assert.deepEqual(r.populates, [[blk(4), 2 * BS]], 'nothing more populated');
  assert.equal(config(r.dev).pluggedSize, 2 * BS);
  // The whole usable region is fine.
  assert.deepEqual(r.one(req(VIRTIO_MEM_REQ_STATE, blk(0), BLOCKS)), ack(VIRTIO_MEM_STATE_MIXED));
  assert.equal(r.dev.counters['errors'], 3 * ranges.length + 5);
});

test('NACK: plugging beyond requested_size (5.15, "requests to plug memory blocks will be rejected"); a larger request then plugs', () => {
  const r = rig({ requestedSize: 4 * BS });
  assert.deepEqual(r.send(req(VIRTIO_MEM_REQ_PLUG, blk(0), 3), req(VIRTIO_MEM_REQ_PLUG, blk(3), 2), req(VIRTIO_MEM_REQ_PLUG, blk(3), 1), req(VIRTIO_MEM_REQ_PLUG, blk(4), 1)), [ack(), nack, ack(), nack]);
  assert.equal(config(r.dev).pluggedSize, 4 * BS);
  // Invalid ranges are ERROR even when they would also be beyond the request.
  assert.deepEqual(r.one(req(VIRTIO_MEM_REQ_PLUG, blk(BLOCKS), 1)), error);
  r.dev.setRequestedSize(6 * BS);
  assert.deepEqual(r.one(req(VIRTIO_MEM_REQ_PLUG, blk(4), 2)), ack());
  assert.equal(r.dev.counters['nacks'], 2);
  assert.equal(r.dev.counters['plug_requests'], 6);
});

test('setRequestedSize: validated, published, a configuration change notification while active; onHostValue in MiB leaves the notification to the transport', () => {
  const r = rig();
  r.dev.setRequestedSize(12 * BS);
  assert.equal(config(r.dev).requestedSize, 12 * BS);
  assert.equal(r.dev.requestedSize, 12 * BS);
  assert.equal(r.changes(), 1);
  r.dev.setRequestedSize(0);
  assert.equal(config(r.dev).requestedSize, 0);
  assert.equal(r.changes(), 2);
  assert.throws(() => r.dev.setRequestedSize(SIZE + BS), /requested size 35651584 is not a multiple of the 2097152-byte block size in 0\.\.33554432/);
  assert.throws(() => r.dev.setRequestedSize(BS + 4096), RangeError);
  assert.throws(() => r.dev.setRequestedSize(-BS), RangeError);
  assert.throws(() => r.dev.setRequestedSize(Number.NaN), RangeError);
  assert.equal(config(r.dev).requestedSize, 0, 'a refused size changes nothing');
  assert.equal(r.changes(), 2);
  r.dev.onHostValue(20);
  assert.equal(config(r.dev).requestedSize, 20 * MiB);
  assert.equal(r.changes(), 2, 'the transport signals Word.HostValue changes itself');
  assert.throws(() => r.dev.onHostValue(3), /requested size \(3 MiB\)/);
  assert.throws(() => r.dev.onHostValue(0xffffffff), RangeError);
  // Blocks plugged above a new, smaller requested size stay plugged (the driver unplugs them).
  r.dev.setRequestedSize(4 * BS);
  assert.deepEqual(r.one(req(VIRTIO_MEM_REQ_PLUG, blk(0), 4)), ack());
  r.dev.setRequestedSize(2 * BS);
  assert.equal(config(r.dev).pluggedSize, 4 * BS);
  assert.deepEqual(r.one(req(VIRTIO_MEM_REQ_PLUG, blk(8), 1)), nack);
  assert.deepEqual(r.one(req(VIRTIO_MEM_REQ_UNPLUG, blk(2), 2)), ack());
  // Not active: nothing to notify.
  r.dev.reset();
  r.dev.setRequestedSize(BS * 10);
  assert.equal(r.changes(), 4);
  assert.equal(config(r.dev).requestedSize, BS * 10);
});

test('UNPLUG_ALL (5.15.6.3): every plugged run given back, plugged_size 0, ACK; nothing plugged: ACK, nothing given back', () => {
  const r = rig({ requestedSize: SIZE });
  assert.deepEqual(r.one(req(VIRTIO_MEM_REQ_UNPLUG_ALL)), ack());
  assert.deepEqual(r.discards, []);
  assert.deepEqual(r.send(req(VIRTIO_MEM_REQ_PLUG, blk(0), 2), req(VIRTIO_MEM_REQ_PLUG, blk(5), 1), req(VIRTIO_MEM_REQ_PLUG, blk(7), 9)), [ack(), ack(), ack()]);
  assert.equal(config(r.dev).pluggedSize, 12 * BS);
  // Only its type matters: a 2-byte request is enough, whatever follows is ignored.
  assert.deepEqual(r.send(req(VIRTIO_MEM_REQ_UNPLUG_ALL, 0x1234, 77, 2)), [ack()]);
  assert.deepEqual(r.discards, [[blk(0), 2 * BS], [blk(5), BS], [blk(7), 9 * BS]]);
  assert.equal(config(r.dev).pluggedSize, 0);
  assert.equal(config(r.dev).usableRegionSize, SIZE, 'the usable region stays');
  assert.ok(r.region.subarray(0, 2 * BS).every((x) => x === 0));
  assert.ok(r.region.subarray(2 * BS, 5 * BS).every((x) => x === 0xaa), 'unplugged blocks are not discarded again');
  assert.deepEqual(r.one(req(VIRTIO_MEM_REQ_STATE, blk(0), BLOCKS)), ack(VIRTIO_MEM_STATE_UNPLUGGED));
  assert.equal(r.dev.counters['unplug_all_requests'], 2);
});

test('a block count that is not a multiple of 32: the last word of the bitmap, UNPLUG_ALL of the last block', () => {
  const mem = GuestMemory.fromBuffers([{ gpa: 0, buffer: new ArrayBuffer(1 * MiB) }]);
  const discards: Array<[number, number]> = [];
  const dev = new MemDevice({ addr: 2 ** 32, regionSize: 37 * BS, requestedSize: 37 * BS, discard: (g, l) => { discards.push([g, l]); return true; } });
  const drv = new TestDriver(mem, { size: 8 });
  dev.activate({ mem, queues: [drv.queue()], features: dev.features, notifyQueue: () => {}, notifyConfig: () => {} });
  const send = (r: Uint8Array): number => { const c = drv.addChain([r], [10]); dev.processQueue(0); drv.used(); return mem.readU16(c.writable[0]!) | (mem.readU16(c.writable[0]! + 8) << 16); };
  assert.equal(send(req(VIRTIO_MEM_REQ_PLUG, 2 ** 32 + 30 * BS, 7)), VIRTIO_MEM_RESP_ACK);
  assert.equal(send(req(VIRTIO_MEM_REQ_PLUG, 2 ** 32 + 36 * BS, 1)), VIRTIO_MEM_RESP_ERROR);
  assert.equal(send(req(VIRTIO_MEM_REQ_PLUG, 2 ** 32 + 30 * BS, 8)), VIRTIO_MEM_RESP_ERROR, 'one block past the end');
  assert.equal(send(req(VIRTIO_MEM_REQ_STATE, 2 ** 32 + 31 * BS, 6)), VIRTIO_MEM_RESP_ACK | (VIRTIO_MEM_STATE_PLUGGED << 16));
  assert.equal(send(req(VIRTIO_MEM_REQ_STATE, 2 ** 32, 37)), VIRTIO_MEM_RESP_ACK | (VIRTIO_MEM_STATE_MIXED << 16));
  assert.equal(send(req(VIRTIO_MEM_REQ_PLUG, 2 ** 32, 30)), VIRTIO_MEM_RESP_ACK);
  assert.equal(send(req(VIRTIO_MEM_REQ_STATE, 2 ** 32, 37)), VIRTIO_MEM_RESP_ACK | (VIRTIO_MEM_STATE_PLUGGED << 16));
  assert.equal(dev.pluggedSize, 37 * BS);
  assert.equal(send(req(VIRTIO_MEM_REQ_UNPLUG, 2 ** 32 + 31 * BS, 1)), VIRTIO_MEM_RESP_ACK);
  assert.equal(send(req(VIRTIO_MEM_REQ_UNPLUG_ALL)), VIRTIO_MEM_RESP_ACK);
  assert.deepEqual(discards, [[2 ** 32 + 31 * BS, BS], [2 ** 32, 31 * BS], [2 ** 32 + 32 * BS, 5 * BS]]);
  assert.equal(dev.pluggedSize, 0);
});

test('BUSY: a host callback that fails (or throws) leaves the blocks as they were; UNPLUG_ALL keeps what it could not give back', () => {
  let discardOk = true;
  let populateOk = true;
  const r = rig({
    requestedSize: SIZE,
    discard: (gpa, len) => { if (!discardOk && gpa === blk(6)) return false; if (gpa === blk(9)) throw new Error('EIO'); return len > 0; },
    populate: () => populateOk,
  });
  populateOk = false;
  assert.deepEqual(r.one(req(VIRTIO_MEM_REQ_PLUG, blk(0), 2)), busy);
  assert.equal(r.dev.pluggedSize, 0);
  populateOk = true;
  assert.deepEqual(r.send(req(VIRTIO_MEM_REQ_PLUG, blk(0), 2), req(VIRTIO_MEM_REQ_PLUG, blk(6), 2), req(VIRTIO_MEM_REQ_PLUG, blk(9), 1)), [ack(), ack(), ack()]);
  discardOk = false;
  assert.deepEqual(r.send(req(VIRTIO_MEM_REQ_UNPLUG, blk(6), 1), req(VIRTIO_MEM_REQ_UNPLUG, blk(9), 1), req(VIRTIO_MEM_REQ_UNPLUG, blk(7), 1)), [busy, busy, ack()]);
  assert.equal(r.dev.pluggedSize, 4 * BS);
  assert.deepEqual(r.one(req(VIRTIO_MEM_REQ_UNPLUG_ALL)), busy);
  assert.deepEqual([0, 1, 6, 7, 9].map((i) => r.dev.isPlugged(i)), [false, false, true, false, true], 'blocks 0-1 went, 6 and 9 stay');
  assert.equal(config(r.dev).pluggedSize, 2 * BS);
  discardOk = true;
  assert.deepEqual(r.one(req(VIRTIO_MEM_REQ_UNPLUG_ALL)), busy, 'block 9 still fails');
  assert.equal(r.dev.pluggedSize, BS);
  const c = r.dev.counters;
  assert.equal(c['busy'], 5);
  assert.equal(c['populate_errors'], 1);
  assert.equal(c['discard_errors'], 5);
});

test('hostile chains: short and unknown requests are answered ERROR, split buffers work, a chain without room for the response is used with length 0', () => {
  const r = rig();
  const { drv, mem, dev } = r;
  // A request split over three descriptors, the response over two.
  const full = req(VIRTIO_MEM_REQ_PLUG, blk(1), 2);
  const split = drv.addChain([full.subarray(0, 5), full.subarray(5, 17), full.subarray(17)], [3, 7]);
  // 17 bytes: nb_blocks cut in half.
  const short = drv.addChain([full.subarray(0, 17)], [10]);
  const onlyType = drv.addChain([full.subarray(0, 2)], [10]);
  const none = drv.addChain([], [10]);
  const oneByte = drv.addChain([Uint8Array.of(VIRTIO_MEM_REQ_UNPLUG_ALL)], [10]);
  const unknown = drv.addChain([req(4, blk(0), 1)], [10]);
  const huge = drv.addChain([req(0xffff, blk(0), 1)], [10]);
  const tooSmall = drv.addChain([req(VIRTIO_MEM_REQ_STATE, blk(0), 1)], [9]);
  const noWritable = drv.addChain([req(VIRTIO_MEM_REQ_PLUG, blk(5), 1)], []);
  const extra = drv.addChain([req(VIRTIO_MEM_REQ_STATE, blk(1), 2), new Uint8Array(100).fill(0x77)], [64]);
  mem.fill(extra.writable[0]!, 64, 0x55);
  dev.processQueue(0);
  assert.deepEqual(drv.used(), [
    { id: split.head, len: 10 }, { id: short.head, len: 10 }, { id: onlyType.head, len: 10 }, { id: none.head, len: 10 },
    { id: oneByte.head, len: 10 }, { id: unknown.head, len: 10 }, { id: huge.head, len: 10 },
    { id: tooSmall.head, len: 0 }, { id: noWritable.head, len: 0 }, { id: extra.head, len: 10 },
  ]);
  const resp = (c: { writable: number[] }, k = 0) => mem.readU16(c.writable[k]!);
  assert.equal(resp(split), VIRTIO_MEM_RESP_ACK);
  assert.deepEqual([...mem.slice(split.writable[0]!, 3), ...mem.slice(split.writable[1]!, 7)], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
  for (const c of [short, onlyType, none, oneByte, unknown, huge]) assert.equal(resp(c), VIRTIO_MEM_RESP_ERROR, `head ${c.head}`);
  assert.ok(mem.slice(tooSmall.writable[0]!, 9).every((x) => x === 0), 'nothing written into a buffer too small for the response');
  assert.equal(resp(extra), VIRTIO_MEM_RESP_ACK);
  assert.equal(mem.readU16(extra.writable[0]! + 8), VIRTIO_MEM_STATE_PLUGGED);
  assert.ok(mem.slice(extra.writable[0]! + 10, 54).every((x) => x === 0x55), 'only the 10 response bytes are written');
  assert.equal(dev.pluggedSize, 2 * BS);
  assert.equal(dev.counters['bad_chains'], 2);
  assert.equal(dev.counters['invalid_requests'], 6);
  assert.equal(dev.counters['errors'], 6);
  // A buffer outside guest RAM is the queue's to refuse (VirtqueueError: the device needs a reset).
  drv.writeDesc(0, 0x10_0000 - 8, 24, 0, 0);
  drv.publish(0);
  assert.throws(() => dev.processQueue(0), (e: Error) => e instanceof VirtqueueError && e.reason === 'desc-out-of-range');
  // Other queue indexes are ignored.
  dev.processQueue(1);
});

test('reset keeps the plugged blocks (5.15.5); the host unplugs all at a system reset', () => {
  const r = rig();
  assert.deepEqual(r.one(req(VIRTIO_MEM_REQ_PLUG, blk(3), 2)), ack());
  r.dev.reset();
  assert.equal(config(r.dev).pluggedSize, 2 * BS);
  assert.equal(r.dev.unpluggedInaccessibleNegotiated, false);
  const c = r.drv.addChain([req(VIRTIO_MEM_REQ_UNPLUG_ALL)], [10]);
  r.dev.processQueue(0); // not active: nothing happens
  assert.deepEqual(r.drv.used(), []);
  assert.equal(r.mem.readU16(c.writable[0]!), 0);
  assert.equal(r.dev.unplugAll(), true);
  assert.deepEqual(r.discards, [[blk(3), 2 * BS]]);
  assert.equal(config(r.dev).pluggedSize, 0);
  assert.equal(r.dev.unplugAll(), true);
  assert.deepEqual(r.discards.length, 1);
});

test('saved state: bitmap and requested_size round-trip (through the JSON document too); a state that does not fit is refused by field, the device unchanged', () => {
  const r = rig({ requestedSize: SIZE });
  assert.deepEqual(r.send(req(VIRTIO_MEM_REQ_PLUG, blk(0), 1), req(VIRTIO_MEM_REQ_PLUG, blk(9), 7)), [ack(), ack()]);
  r.dev.setRequestedSize(10 * BS);
  const s = r.dev.saveState();
  if (s.kind !== 'mem') assert.fail(`saved ${s.kind} state`);
  assert.deepEqual(s, { kind: 'mem', addr: BigInt(ADDR), regionSize: BigInt(SIZE), blockSize: BigInt(BS), requestedSize: BigInt(10 * BS), plugged: Uint8Array.of(0x01, 0xfe) });
  const transport = {
    deviceType: 24, deviceStatus: 0x0f, deviceFeatures: (1n << 32n) | 2n, driverFeatures: (1n << 32n) | 2n, deviceFeatureSelect: 0, driverFeatureSelect: 0,
    queueSelect: 0, configGeneration: 3, msixConfigVector: 0, needsReset: false,
    queues: [{ size: 16, ready: true, msixVector: 1, descTable: 0n, availRing: 256n, usedRing: 512n, lastAvailIdx: 2, usedIdx: 2 }],
    vectorMasked: [false, false], vectorPending: [false, false],
  };
  const back = parseVirtioState(stringifyVirtioState([{ id: '_mem0', transport, device: s }]))[0]!.device;
  assert.deepEqual(back, s);
  const fresh = new MemDevice({ addr: ADDR, regionSize: SIZE, discard: () => true });
  fresh.restoreState(back);
  assert.deepEqual(config(fresh), config(r.dev));
  assert.equal(fresh.pluggedSize, 8 * BS);
  assert.deepEqual(Array.from({ length: BLOCKS }, (_, i) => fresh.isPlugged(i)), Array.from({ length: BLOCKS }, (_, i) => i === 0 || i >= 9));
  assert.deepEqual(fresh.saveState(), s);

  const target = new MemDevice({ addr: ADDR, regionSize: SIZE, requestedSize: 2 * BS, discard: () => true });
  const before = target.saveState();
  const bad: Array<[VirtioDeviceSpecificState, RegExp]> = [
    [{ kind: 'balloon', numPages: 1, actual: 0 }, /saved balloon state for a virtio-mem device/],
    [{ ...s, addr: BigInt(ADDR + BS) }, /virtio-mem state: addr: 0x8200000, this device's region is at 0x8000000/],
    [{ ...s, regionSize: BigInt(2 * SIZE) }, /virtio-mem state: regionSize: 67108864 bytes/],
    [{ ...s, blockSize: BigInt(2 * BS) }, /virtio-mem state: blockSize: 4194304 bytes/],
    [{ ...s, requestedSize: BigInt(SIZE + BS) }, /virtio-mem state: requestedSize: 35651584 is not a multiple/],
    [{ ...s, requestedSize: BigInt(BS + 1) }, /virtio-mem state: requestedSize/],
    [{ ...s, plugged: Uint8Array.of(1) }, /virtio-mem state: plugged: a bitmap of 1 bytes, this device's 16 blocks take 2/],
    [{ ...s, plugged: Uint8Array.of(1, 2, 3) }, /virtio-mem state: plugged: a bitmap of 3 bytes/],
  ];
  for (const [st, re] of bad) assert.throws(() => target.restoreState(st), (e: Error) => e instanceof VirtioStateMismatchError && re.test(e.message), re.source);
  assert.deepEqual(target.saveState(), before, 'a refused state changed nothing');
  // Bits beyond the last block (37 blocks: 5 bytes, 3 bits of the last used).
  const odd = new MemDevice({ addr: ADDR, regionSize: 37 * BS, discard: () => true });
  assert.throws(() => odd.restoreState({ ...s, regionSize: BigInt(37 * BS), plugged: Uint8Array.of(0, 0, 0, 0, 0x20) }), /plugged: bits set beyond block 36/);
  odd.restoreState({ ...s, regionSize: BigInt(37 * BS), plugged: Uint8Array.of(0xff, 0, 0, 0x80, 0x1f >> 2) });
  assert.equal(odd.pluggedSize, (8 + 1 + 3) * BS);
  assert.equal(odd.isPlugged(31) && odd.isPlugged(34) && !odd.isPlugged(35), true);
});

test('the JSON document refuses a malformed virtio-mem state by field', () => {
  const transport = {
    deviceType: 24, deviceStatus: 0, deviceFeatures: 1n << 32n, driverFeatures: 0n, deviceFeatureSelect: 0, driverFeatureSelect: 0,
    queueSelect: 0, configGeneration: 0, msixConfigVector: 0xffff, needsReset: false,
    queues: [{ size: 16, ready: false, msixVector: 0xffff, descTable: 0n, availRing: 0n, usedRing: 0n, lastAvailIdx: 0, usedIdx: 0 }],
    vectorMasked: [false, false], vectorPending: [false, false],
  };
  const text = stringifyVirtioState([{ id: '_mem0', transport, device: { kind: 'mem', addr: 1n, regionSize: 2n, blockSize: 3n, requestedSize: 4n, plugged: Uint8Array.of(5) } }]);
  const j = JSON.parse(text) as { devices: Array<{ device: Record<string, unknown> }> };
  const tryWith = (k: string, v: unknown): string => {
    const c = structuredClone(j);
    c.devices[0]!.device[k] = v;
    try { parseVirtioState(JSON.stringify(c)); return 'accepted'; } catch (e) { return (e as Error).message; }
  };
  assert.match(tryWith('plugged', ''), /devices\[0\]\.device\.plugged: expected base64 of 1\.\.8388608 bytes, got 0 bytes/);
  assert.match(tryWith('plugged', 12), /devices\[0\]\.device\.plugged: expected base64/);
  assert.match(tryWith('requestedSize', 4), /devices\[0\]\.device\.requestedSize: expected a 64-bit hex string/);
  assert.match(tryWith('blockSize', undefined), /devices\[0\]\.device\.blockSize: missing/);
});
