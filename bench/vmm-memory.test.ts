import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseSmaps, parseSmapsRss, parseTaskStat } from './vmm-memory.js';

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

test('PSS and private memory are summed beside RSS, guest RAM excluded', () => {
  const m = (start: number, size: number, name: string, rss: number, pss: number, pc: number, pd: number) =>
    `${start.toString(16)}-${(start + size).toString(16)} rw-p 00000000 00:01 1234  ${name}\nSize: ${size / 1024} kB\nRss: ${rss} kB\nPss: ${pss} kB\nShared_Clean: 0 kB\nPrivate_Clean: ${pc} kB\nPrivate_Dirty: ${pd} kB\n`;
  const text = m(0x10000000, 512 * MiB, '', 300_000, 300_000, 0, 300_000) + m(0x50000000, 16 * MiB, '/usr/bin/node', 20_000, 5_000, 1_000, 0)
    + m(0x60000000, 8 * MiB, '', 5_000, 5_000, 0, 5_000);
  const r = parseSmaps(text, 512 * MiB);
  assert.deepEqual(r.total, { rssKb: 325_000, pssKb: 310_000, privateKb: 306_000 });
  assert.deepEqual(r.guest, { rssKb: 300_000, pssKb: 300_000, privateKb: 300_000 });
});

test('a thread stat line with spaces and parentheses in comm is parsed', () => {
  assert.equal(parseTaskStat('123 (a b) c) S 1 1 1 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 1 0 0'), 100);
});
