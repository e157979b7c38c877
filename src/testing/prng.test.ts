import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Prng, countFromEnv, fuzzBudget, fuzzDeviceWanted, mulberry32, seedFromEnv } from './prng.js';

test('one seed gives one stream, whichever form the fuzzer uses', () => {
  const a = new Prng(0x5eed);
  const b = mulberry32(0x5eed);
  const xs = Array.from({ length: 1000 }, () => a.u32());
  assert.deepEqual(Array.from({ length: 1000 }, () => b()), xs.map((x) => x / 2 ** 32));
  assert.deepEqual(Array.from({ length: 5 }, () => new Prng(1).u32()), Array(5).fill(new Prng(1).u32()));
  assert.ok(new Set(xs).size > 990, 'no short cycle');
  const p = new Prng(7);
  for (let i = 0; i < 1000; i++) {
    const n = p.int(10);
    assert.ok(Number.isInteger(n) && n >= 0 && n < 10);
  }
});

test('seeds and counts from the environment: decimal, hex, 1e6; bad values are named', () => {
  assert.equal(seedFromEnv('S', 3, {}), 3);
  assert.equal(seedFromEnv('S', 3, { S: '0x10' }), 16);
  assert.throws(() => seedFromEnv('S', 3, { S: 'abc' }), /S must be a non-negative integer seed, not 'abc'/);
  assert.equal(countFromEnv('N', 5, { N: '1e6' }), 1_000_000);
  assert.throws(() => countFromEnv('N', 5, { N: '-1' }), /N must be a non-negative integer, not '-1'/);
});

test('a fuzz budget is cases by default and operations with STV_FUZZ_OPS', () => {
  const d = fuzzBudget(3000, {});
  assert.equal(d.label, '3000 cases');
  assert.equal(d.more(2999, 1e9), true);
  assert.equal(d.more(3000, 0), false);
  const o = fuzzBudget(3000, { STV_FUZZ_OPS: '1e6', STV_FUZZ_CASES: '10' });
  assert.equal(o.label, '1000000 virtqueue operations');
  assert.equal(o.more(1e9, 999_999), true);
  assert.equal(o.more(0, 1_000_000), false);
  assert.equal(fuzzDeviceWanted('net', { STV_FUZZ_DEVICES: 'blk, net' }), true);
  assert.equal(fuzzDeviceWanted('rng', { STV_FUZZ_DEVICES: 'blk,net' }), false);
  assert.equal(fuzzDeviceWanted('rng', {}), true);
});
