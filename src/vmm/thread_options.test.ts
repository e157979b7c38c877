import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import { DEFAULT_YOUNG_GENERATION_MB, threadOptions } from './thread_options.js';

test('worker threads get a capped young generation unless STV_WORKER_YOUNG_MB says otherwise', () => {
  assert.deepEqual(threadOptions({}), { resourceLimits: { maxYoungGenerationSizeMb: DEFAULT_YOUNG_GENERATION_MB } });
  assert.deepEqual(threadOptions({ STV_WORKER_YOUNG_MB: '4' }), { resourceLimits: { maxYoungGenerationSizeMb: 4 } });
  assert.deepEqual(threadOptions({ STV_WORKER_YOUNG_MB: '0' }), {});
  assert.throws(() => threadOptions({ STV_WORKER_YOUNG_MB: 'lots' }), /STV_WORKER_YOUNG_MB must be a number of MiB/);
});

test('a worker started with the options runs and reports the limit it got', async () => {
  const w = new Worker("require('node:worker_threads').parentPort.postMessage(require('node:worker_threads').resourceLimits)", { eval: true, ...threadOptions({}) });
  const limits = await new Promise<Record<string, number>>((res, rej) => { w.once('message', res); w.once('error', rej); });
  await w.terminate();
  assert.equal(limits.maxYoungGenerationSizeMb, DEFAULT_YOUNG_GENERATION_MB);
});
