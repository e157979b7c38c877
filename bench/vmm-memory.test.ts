import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseSmapsRss } from './vmm-memory.js';

const MiB = 1024 * 1024;
const map = (start: number, size: number, name: string, rssKb: number) =>
  `${start.toString(16)}-${(start + size).toString(16)} rw-s 00000000 00:01 1234  ${name}\nSize: ${size / 1024} kB\nRss: ${rssKb} kB\n`;

test('guest RAM is excluded whether private anonymous, shared anonymous or memfd', () => {
  for (const name of ['', '/dev/zero (deleted)', '/memfd:guest (deleted)']) {
    const text = map(0x10000000, 512 * MiB, name, 300_000) + map(0x50000000, 16 * MiB, '/usr/bin/node', 20_000) + map(0x60000000, 8 * MiB, '', 5_000);
    const r = parseSmapsRss(text, 512 * MiB);
    assert.equal(r.totalKb, 325_000);
    assert.equal(r.guestKb, 300_000, `mapping named '${name}'`);
  }
});

test('a mapping much larger than guest RAM is not taken for it', () => {
  const r = parseSmapsRss(map(0x10000000, 1024 * MiB, '', 1000), 512 * MiB);
  assert.equal(r.guestKb, 0);
});
