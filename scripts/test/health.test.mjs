// npm run sandbox-health: how sandbox boots are classified and tabulated.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { classify, report } from '../sandbox-health.mjs';
import { sandboxConfig } from '../lib/sandbox.mjs';

test('a sandbox boot is classified from how it ended and what its console says', () => {
  assert.equal(classify({ stopped: null, rc: 0 }, ''), 'ok');
  assert.equal(classify({ stopped: null, rc: 1 }, ''), 'inner');
  assert.equal(classify({ stopped: 'stuck', rc: null }, 'watchdog: BUG: soft lockup - CPU#1 stuck for 104s!'), 'lockup');
  assert.equal(classify({ stopped: 'idle', rc: null }, ''), 'silent');
  assert.equal(classify({ stopped: 'timeout', rc: null }, ''), 'timeout');
  assert.equal(classify({ stopped: null, rc: null }, '[  3.1] Kernel panic - not syncing: stack guard page was hit'), 'panic');
  assert.equal(classify({ stopped: null, rc: null }, 'reboot: Power down'), 'failed');
  // A short soft lockup the sandbox survived does not make a finished run a failure.
  assert.equal(classify({ stopped: null, rc: 0 }, 'watchdog: BUG: soft lockup - CPU#0 stuck for 26s!'), 'ok');
});

test('the health table counts each kind per configuration and the failure rate', () => {
  const lines = [
    { config: '7.2/6.1', kind: 'ok', ms: 1, steps: ['a:ok:1000', 'b:ok:2000'] },
    { config: '7.2/6.1', kind: 'panic', ms: 1 },
    { config: '10.0/6.12', kind: 'ok', ms: 1, steps: ['a:ok:4000'] },
  ];
  const t = report(lines);
  const row = t.split('\n').find((l) => l.includes('QEMU 7.2 / Linux 6.1'));
  assert.ok(row, t);
  const cells = row.split('|').map((c) => c.trim()).filter(Boolean);
  assert.deepEqual(cells.slice(1, 4), ['2', '1', '0']); // boots, ok, inner
  assert.equal(cells[4], '1'); // panic
  assert.equal(cells[9], '1/2 (50%)');
  assert.equal(cells[10], '3');
  assert.match(t, /QEMU 10\.0 \/ Linux 6\.12 *\| 1 /);
});

test('sandbox configurations are checked by name', () => {
  assert.deepEqual(sandboxConfig({ STV_SANDBOX_QEMU: '10.0', STV_SANDBOX_KERNEL: '6.12' }), { qemu: '10.0', kernel: '6.12' });
  assert.throws(() => sandboxConfig({ STV_SANDBOX_QEMU: '9' }), /STV_SANDBOX_QEMU must be one of 7\.2, 10\.0/);
  assert.throws(() => sandboxConfig({ STV_SANDBOX_KERNEL: '5.10' }), /STV_SANDBOX_KERNEL must be one of/);
});
