import { test } from 'node:test';
import assert from 'node:assert/strict';
import { allowedHosts, cookieValue, newToken, originAllowed, tokenMatches } from './auth.js';

test('tokens: random, compared whole', () => {
  const a = newToken();
  assert.notEqual(a, newToken());
  assert.ok(a.length >= 32);
  assert.equal(tokenMatches(a, a), true);
  assert.equal(tokenMatches(a, a.slice(0, -1)), false);
  assert.equal(tokenMatches(a, `${a}x`), false);
  assert.equal(tokenMatches(a, undefined), false);
  assert.equal(tokenMatches(a, ''), false);
});

test('cookies and origins', () => {
  assert.equal(cookieValue('a=1; stv_console=xyz; b=2', 'stv_console'), 'xyz');
  assert.equal(cookieValue('xstv_console=1', 'stv_console'), undefined);
  const hosts = allowedHosts('127.0.0.1', 7480);
  assert.equal(originAllowed('http://127.0.0.1:7480', hosts), true);
  assert.equal(originAllowed('http://localhost:7480', hosts), true);
  assert.equal(originAllowed('http://127.0.0.1:7481', hosts), false);
  assert.equal(originAllowed('http://evil.example', hosts), false);
  assert.equal(originAllowed('null', hosts), false);
  assert.equal(originAllowed('http://127.0.0.1:7480/x', hosts), false);
  assert.equal(allowedHosts('192.0.2.1', 80).has('localhost:80'), false, 'localhost only for a loopback listener');
});
