// The runner's TAP reading (scripts/lib/tap.mjs) on what node --test itself writes: counts, and the
// failing tests with their errors (reprinted at the end of npm test).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { tapCounts, tapFailures } from '../lib/tap.mjs';

test('tapCounts and tapFailures read a real node --test TAP file: innermost failures with their error lines', () => {
  const dir = mkdtempSync(join(tmpdir(), 'stv-tap-'));
  const file = join(dir, 'sample.test.mjs');
  writeFileSync(file, [
    "import { test } from 'node:test';",
    "import assert from 'node:assert/strict';",
    "test('passes', () => {});",
    "test('fails plainly', () => { assert.equal(1, 2, 'one is not two'); });",
    "test('parent', async (t) => { await t.test('child fails', () => { throw new Error('inner boom\\nsecond line'); }); });",
    "test('skipped', (t) => t.skip('why'));",
  ].join('\n'));
  const tap = join(dir, 'out.tap');
  // A child of a test run would report to its parent (NODE_TEST_CONTEXT): run it as npm test does.
  const env = { ...process.env };
  delete env.NODE_TEST_CONTEXT;
  const r = spawnSync(process.execPath, ['--test', '--test-reporter=tap', `--test-reporter-destination=${tap}`, file], { encoding: 'utf8', env });
  assert.equal(r.status, 1, 'the sample run fails');
  const c = tapCounts(tap);
  assert.deepEqual({ pass: c.pass, fail: c.fail, skipped: c.skipped }, { pass: 1, fail: 3, skipped: 1 });
  const f = tapFailures(tap);
  assert.deepEqual(f.map((x) => x.name), ['fails plainly', 'child fails'], 'the parent that only says "1 subtest failed" is left out');
  assert.equal(f[0].error[0], 'one is not two');
  assert.ok(f[0].error.includes('1 !== 2'), f[0].error.join('|'));
  assert.deepEqual(f[1].error, ['inner boom', 'second line']);
  assert.deepEqual(tapFailures(join(dir, 'missing.tap')), []);
  assert.equal(tapFailures(tap, 1)[0].error.length, 1, 'at most maxLines lines');
});
