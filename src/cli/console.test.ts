import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseConsoleArgs } from './console.js';

test('console flags: --listen, repeated --api-socket, --dir', () => {
  assert.deepEqual(parseConsoleArgs(['--listen', '127.0.0.1:9000', '--api-socket', '/a.sock', '--api-socket=path=/b.sock', '--dir', '/run/stv']), {
    host: '127.0.0.1', port: 9000, apiSockets: ['/a.sock', '/b.sock'], dir: '/run/stv',
  });
  assert.deepEqual(parseConsoleArgs(['--api-socket', '/a.sock']), { host: '127.0.0.1', port: 7480, apiSockets: ['/a.sock'] }, 'loopback by default');
  assert.equal(parseConsoleArgs(['--listen=[::1]:80', '--dir', 'd']) !== 'help' && (parseConsoleArgs(['--listen=[::1]:80', '--dir', 'd']) as { host: string }).host, '::1');
  assert.equal(parseConsoleArgs(['--help']), 'help');
});

test('bad console flags name the problem', () => {
  assert.throws(() => parseConsoleArgs([]), /at least one --api-socket PATH or --dir DIR/);
  assert.throws(() => parseConsoleArgs(['--listen', '7480', '--dir', 'd']), /--listen must be HOST:PORT/);
  assert.throws(() => parseConsoleArgs(['--listen', '127.0.0.1:70000', '--dir', 'd']), /--listen must be HOST:PORT/);
  assert.throws(() => parseConsoleArgs(['--api-socket']), /--api-socket requires a value/);
  assert.throws(() => parseConsoleArgs(['--dir', 'd', '--frobnicate']), /unknown argument "--frobnicate"/);
});
