import assert from 'node:assert/strict';
import { openSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { EventMonitor, parseEventMonitorArg, withLifecycleEvents, type LifecycleEvent } from './events.js';
import { MINIMAL_VM, request, startTestServer, tempDir } from './test_server.fixture.js';

function readEvents(path: string): LifecycleEvent[] {
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as LifecycleEvent);
}

test('lifecycle over the API writes JSON lines and notifies subscribers', async () => {
  const dir = tempDir();
  const file = join(dir, 'events.jsonl');
  const monitor = new EventMonitor({ path: file });
  await monitor.ready();
  const seen: string[] = [];
  const unsubscribe = monitor.subscribe((e) => seen.push(`${e.source}:${e.event}`));
  monitor.emitEvent('vmm', 'starting');
  const t = await startTestServer({ wrap: (c) => withLifecycleEvents(c, monitor) });
  try {
    const s = t.socketPath;
    // A refused request emits nothing.
    assert.equal((await request(s, 'PUT', 'vm.boot')).status, 404);
    assert.equal((await request(s, 'PUT', 'vm.create', JSON.stringify(MINIMAL_VM))).status, 204);
    assert.equal((await request(s, 'PUT', 'vm.pause')).status, 405);
    for (const ep of ['vm.boot', 'vm.pause', 'vm.resume', 'vm.reboot', 'vm.power-button', 'vm.shutdown', 'vm.delete', 'vm.delete', 'vmm.shutdown']) {
      const r = await request(s, 'PUT', ep);
      assert.equal(r.status, 204, `${ep}: ${r.text}`);
    }
  } finally {
    await t.close();
  }
  const expected = [
    'vmm:starting',
    'vm:created',
    'vm:booting',
    'vm:booted',
    'vm:pausing',
    'vm:paused',
    'vm:resuming',
    'vm:resumed',
    'vm:rebooting',
    'vm:rebooted',
    'vm:power-button',
    'vm:shutdown',
    'vm:deleted',
    'vmm:shutdown',
  ];
  assert.deepEqual(seen, expected);
  unsubscribe();
  monitor.emitEvent('vm', 'after-unsubscribe');
  assert.equal(seen.length, expected.length);
  await monitor.close();
  const events = readEvents(file);
  assert.deepEqual(
    events.map((e) => `${e.source}:${e.event}`),
    [...expected, 'vm:after-unsubscribe'],
  );
  let prev = -1;
  for (const e of events) {
    assert.deepEqual(Object.keys(e), ['timestamp', 'source', 'event', 'properties']);
    assert.equal(e.properties, null);
    assert.ok(Number.isInteger(e.timestamp.secs) && Number.isInteger(e.timestamp.nanos) && e.timestamp.nanos < 1e9);
    const ns = e.timestamp.secs * 1e9 + e.timestamp.nanos;
    assert.ok(ns >= prev, 'timestamps are monotonic');
    prev = ns;
  }
  rmSync(dir, { recursive: true, force: true });
});

test('properties, fd target, throwing subscribers', async () => {
  const dir = tempDir();
  const file = join(dir, 'fd.jsonl');
  const fd = openSync(file, 'w');
  const monitor = new EventMonitor({ fd });
  monitor.on('event', () => {
    throw new Error('subscriber bug');
  });
  const got: LifecycleEvent[] = [];
  monitor.subscribe((e) => got.push(e));
  monitor.emitEvent('vm', 'migration-memory-iteration', { id: '3' });
  assert.equal(got.length, 1);
  await monitor.close();
  const [e] = readEvents(file);
  assert.deepEqual(e!.properties, { id: '3' });
  assert.equal(e!.event, 'migration-memory-iteration');
  rmSync(dir, { recursive: true, force: true });
});

test('an unwritable target is reported, never thrown', async () => {
  const monitor = new EventMonitor({ path: '/nonexistent-dir/events.jsonl' });
  const errors: Error[] = [];
  monitor.on('write-error', (e) => errors.push(e));
  await assert.rejects(monitor.ready(), /ENOENT/);
  const got: string[] = [];
  monitor.subscribe((e) => got.push(e.event));
  monitor.emitEvent('vm', 'booted');
  assert.deepEqual(got, ['booted']);
  assert.equal(errors.length, 1);
  await monitor.close();
});

test('subscribers only (no file)', async () => {
  const monitor = new EventMonitor();
  await monitor.ready();
  const got: string[] = [];
  monitor.subscribe((e) => got.push(e.event));
  monitor.emitEvent('vmm', 'starting');
  assert.deepEqual(got, ['starting']);
  await monitor.close();
});

test('parseEventMonitorArg', () => {
  assert.deepEqual(parseEventMonitorArg('path=/tmp/e'), { path: '/tmp/e' });
  assert.deepEqual(parseEventMonitorArg('/tmp/e'), { path: '/tmp/e' });
  assert.deepEqual(parseEventMonitorArg('fd=4'), { fd: 4 });
  assert.throws(() => parseEventMonitorArg('fd=-1'), /non-negative integer/);
  assert.throws(() => parseEventMonitorArg('path='), /path or fd required/);
});
