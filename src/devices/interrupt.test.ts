import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CountingInterrupt, NO_INTERRUPT, RecordingLevelInterrupt, pulseOf } from './interrupt.js';

test('counting and level helpers', () => {
  const c = new CountingInterrupt();
  c.trigger();
  c.trigger();
  assert.equal(c.take(), 2);
  assert.equal(c.count, 0);
  const l = new RecordingLevelInterrupt();
  const edge = pulseOf(l);
  edge.trigger();
  edge.trigger();
  assert.equal(l.risingEdges, 2);
  assert.equal(l.level, false);
  l.setLevel(true);
  l.setLevel(true);
  assert.equal(l.risingEdges, 3);
  assert.doesNotThrow(() => NO_INTERRUPT.trigger());
});
