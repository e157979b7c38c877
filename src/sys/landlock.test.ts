// Landlock: the stratovisor binary confines its file access to what the VM config names, and an
// open outside the rules (from the main thread or libuv's pool) is refused with EACCES.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ACCESS_FS, handledAccessFs, landlockAbi, parseAccess, resolveRules } from './landlock.js';

const MAIN = fileURLToPath(new URL('../cli/main.js', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'stv-landlock-'));

function run(args: string[]): { status: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [MAIN, ...args], { encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

test('access strings and rights per ABI', () => {
  assert.deepEqual(parseAccess('rw'), { read: true, write: true });
  assert.deepEqual(parseAccess('r'), { read: true, write: false });
  assert.equal(parseAccess('x'), undefined);
  assert.equal(parseAccess(''), undefined);
  assert.equal(handledAccessFs(1), (1n << 13n) - 1n);
  assert.equal(handledAccessFs(3) & ACCESS_FS.TRUNCATE, ACCESS_FS.TRUNCATE);
  assert.equal(handledAccessFs(4) & ACCESS_FS.IOCTL_DEV, 0n);
  assert.equal(handledAccessFs(5) & ACCESS_FS.IOCTL_DEV, ACCESS_FS.IOCTL_DEV);
  const f = join(dir, 'disk.img');
  writeFileSync(f, 'x');
  const [file, missing] = resolveRules([{ path: f, access: 'rw' }, { path: join(dir, 'later.sock'), access: 'rw' }], 5);
  // A file carries file rights only; a path that does not exist yet is granted through its directory.
  assert.equal(file!.rights & ACCESS_FS.MAKE_REG, 0n);
  assert.equal(file!.rights & ACCESS_FS.WRITE_FILE, ACCESS_FS.WRITE_FILE);
  assert.equal(missing!.path, dir);
  assert.equal(missing!.rights & ACCESS_FS.MAKE_SOCK, ACCESS_FS.MAKE_SOCK);
  assert.throws(() => resolveRules([{ path: '/nonexistent/a/b', access: 'r' }], 1), /does not exist, nor does its directory/);
});

test('--landlock-rules needs --landlock and a valid access', () => {
  let r = run(['--landlock-rules', `path=${dir},access=rw`, '--self-test-forbidden', 'id']);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /--landlock-rules needs --landlock/);
  r = run(['--landlock', '--landlock-rules', `path=${dir},access=x`, '--self-test-forbidden', 'id']);
  assert.match(r.stderr, /--landlock-rules: bad access "x"/);
});

test('under --landlock, files outside the rules are refused (EACCES), from the main thread and the thread pool', (t) => {
  const abi = landlockAbi();
  if ('reason' in abi) {
    const r = run(['--landlock', '--self-test-forbidden', 'id']);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /--landlock: .*Landlock/);
    return t.skip(abi.reason);
  }
  const kernel = join(dir, 'vmlinux');
  writeFileSync(kernel, 'not a kernel');
  const extra = join(dir, 'extra');
  writeFileSync(extra, 'extra');
  const outside = join(dir, 'outside');
  writeFileSync(outside, 'secret');
  const r = run([
    '--landlock', '--landlock-rules', `path=${extra},access=r`, '--kernel', kernel, '-v',
    '--self-test-forbidden',
    `open:${kernel},aread:${kernel},open:${extra},write:${extra},open:${outside},aread:${outside},open:/etc/passwd,write:${join(dir, 'new')}`,
  ]);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stderr, new RegExp(`Landlock ABI ${abi.abi} in force`));
  const lines = r.stdout;
  assert.match(lines, new RegExp(`open ${kernel}: allowed`));
  assert.match(lines, new RegExp(`aread ${kernel}: allowed`));
  assert.match(lines, new RegExp(`open ${extra}: allowed`));
  assert.match(lines, new RegExp(`write ${extra}: refused EACCES`), 'access=r is read-only');
  assert.match(lines, new RegExp(`open ${outside}: refused EACCES`));
  assert.match(lines, new RegExp(`aread ${outside}: refused EACCES`), 'libuv pool threads are inside the domain');
  assert.match(lines, /open \/etc\/passwd: refused EACCES/);
  assert.match(lines, new RegExp(`write ${join(dir, 'new')}: refused EACCES`));
  // Without --landlock the same file opens.
  const free = run(['--self-test-forbidden', `open:${outside}`]);
  assert.match(free.stdout, new RegExp(`open ${outside}: allowed`));
});
