// The stratovisor binary rejects bad input with one clear line and a non-zero status, before it
// touches the hypervisor: no stack traces.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, readFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const MAIN = fileURLToPath(new URL('./main.js', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'stv-cli-'));
const bzImage = process.env.STV_GUEST_BZIMAGE;

function run(args: string[]): { status: number | null; stderr: string; stdout: string } {
  const r = spawnSync(process.execPath, [MAIN, ...args], { encoding: 'utf8', timeout: 30_000 });
  return { status: r.status, stderr: r.stderr, stdout: r.stdout };
}

function assertCleanError(args: string[], pattern: RegExp): void {
  const r = run(args);
  assert.notEqual(r.status, 0, `expected failure for ${args.join(' ')}`);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, `expected one line, got:\n${r.stderr}`);
  assert.match(lines[0]!, /^stratovisor: error: /);
  assert.match(lines[0]!, pattern);
  assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
}

test('--version and --help answer with status 0', () => {
  const v = run(['--version']);
  assert.equal(v.status, 0);
  assert.match(v.stdout, /^stratovisor v\d+\.\d+\.\d+/);
  const h = run(['--help']);
  assert.equal(h.status, 0);
  assert.match(h.stdout, /--kernel/);
});

test('a file that is not a kernel is rejected by name', () => {
  const f = join(dir, 'notes.txt');
  writeFileSync(f, 'hello, this is not a kernel\n'.repeat(100));
  assertCleanError(['--kernel', f], /not a Linux kernel image|ELF|bzImage/i);
});

test('a missing kernel and a missing initramfs are named', (t) => {
  assertCleanError(['--kernel', join(dir, 'nope')], /kernel '.*nope' does not exist/);
  if (!bzImage || !existsSync(bzImage)) return t.skip('guest bzImage not built (npm test builds it)');
  assertCleanError(['--kernel', bzImage, '--initramfs', join(dir, 'nope.cpio')], /initramfs '.*nope.cpio' does not exist/);
});

test('a truncated bzImage is rejected', (t) => {
  if (!bzImage || !existsSync(bzImage)) return t.skip('guest bzImage not built (npm test builds it)');
  const f = join(dir, 'truncated');
  writeFileSync(f, readFileSync(bzImage).subarray(0, 200_000));
  assertCleanError(['--kernel', f], /truncated/i);
});

test('--cpus boot=0, an unknown flag and a bad size are CLI errors naming the flag', () => {
  assertCleanError(['--kernel', '/x', '--cpus', 'boot=0'], /--cpus/);
  assertCleanError(['--frobnicate'], /unknown flag --frobnicate/);
  assertCleanError(['--kernel', '/x', '--memory', 'size=12Q'], /--memory/);
});

test('a memory size the host cannot give is refused before anything is created', (t) => {
  if (!bzImage || !existsSync(bzImage)) return t.skip('guest bzImage not built (npm test builds it)');
  assertCleanError(['--kernel', bzImage, '--memory', 'size=64T'], /memory size .* is more than this host has/);
});
