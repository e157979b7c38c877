// `stratovisor jail`: the VMM inside runs as pid 1 of its own PID namespace, as the dropped uid/gid,
// in an empty network namespace, and sees only the files its flags name; the seccomp filter still
// kills it on execve; cgroup limits apply where the cgroup v2 hierarchy has the controllers.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { networkInterfaces, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseJailArgs } from '../cli/jail.js';

const MAIN = fileURLToPath(new URL('../cli/main.js', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'stv-jail-'));
const base = join(dir, 'jails');
const kernel = join(dir, 'vmlinux');
// World-writable, so a refused write can only be the read-only bind mount (EROFS), not permissions.
writeFileSync(kernel, 'not a kernel', { mode: 0o666 });
chmodSync(kernel, 0o666);
const secret = join(dir, 'secret');
writeFileSync(secret, 'host only');

function jail(args: string[]): { status: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [MAIN, 'jail', '--chroot-base', base, ...args], { encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

function cannotJail(): string | null {
  if (process.getuid?.() !== 0) return 'stratovisor jail needs root (namespaces, mounts, mknod)';
  const u = spawnSync('unshare', ['--mount', '--pid', '--fork', '--net', 'true']);
  if (u.error || u.status !== 0) return `unshare(1) cannot make mount/PID/net namespaces here: ${u.error?.message ?? u.stderr.toString().trim()}`;
  return null;
}

test('jail flags: errors name the problem', () => {
  assert.throws(() => parseJailArgs(['--uid', 'x', '--', '--kernel', kernel]), /--uid: bad id "x"/);
  assert.throws(() => parseJailArgs(['--uid', '1']), /no VMM flags: give them after --/);
  assert.throws(() => parseJailArgs(['--cgroup', 'io.max=1', '--', '--kernel', kernel]), /--cgroup: "io.max=1" is not <file>=<value>/);
  assert.throws(() => parseJailArgs(['--id', '../x', '--', '--kernel', kernel]), /--id: "..\/x" is not a name/);
  const j = parseJailArgs(['--uid', '1000', '--gid', '100', '--cgroup', 'memory.max=256M', '--', '--kernel', kernel]);
  assert.ok(!('help' in j));
  assert.deepEqual([j.uid, j.gid, j.cgroup, j.vmm], [1000, 100, [['memory.max', String(256 << 20)]], ['--kernel', kernel]]);
});

test('inside the jail: pid 1 of a new PID namespace, the dropped uid/gid, no network, only the named files', (t) => {
  const why = cannotJail();
  if (why) return t.skip(why);
  const r = jail(['--id', 'ids', '--uid', '4242', '--gid', '4343', '--', '--kernel', kernel, '--self-test-forbidden',
    `id,stat:${kernel},stat:${secret},stat:/etc/passwd,stat:${dir},open:${kernel},write:${kernel},write:/x`]);
  assert.equal(r.status, 0, r.stderr);
  const id = /self-test: id: pid=(\d+) ppid=(\d+) uid=(\d+) gid=(\d+) netifs=(.*) cgroup=/.exec(r.stdout);
  assert.ok(id, r.stdout + r.stderr);
  assert.equal(id[1], '1', 'the VMM is pid 1 of its PID namespace');
  assert.equal(id[2], '0', 'its parent is outside the namespace');
  assert.equal(id[3], '4242');
  assert.equal(id[4], '4343');
  // A new network namespace has only lo, down and without addresses: Node lists no interface.
  assert.equal(id[5], '(none)', `host interfaces: ${Object.keys(networkInterfaces()).join(' ')}`);
  assert.match(r.stdout, new RegExp(`stat ${kernel}: exists`));
  assert.match(r.stdout, new RegExp(`stat ${secret}: absent`), 'a host file next to the kernel is not in the jail');
  assert.match(r.stdout, /stat \/etc\/passwd: absent/);
  assert.match(r.stdout, new RegExp(`open ${kernel}: allowed`));
  assert.match(r.stdout, new RegExp(`write ${kernel}: refused EROFS`), 'the kernel is bind-mounted read-only');
  assert.match(r.stdout, /write \/x: refused EACCES/, 'uid 4242 cannot write the jail root');
  assert.equal(existsSync(join(base, 'ids')), false, 'the jail directory is removed afterwards');
});

test('the seccomp filter is in force inside the jail: execve kills the VMM with SIGSYS', (t) => {
  const why = cannotJail();
  if (why) return t.skip(why);
  const r = jail(['--id', 'sigsys', '--', '--kernel', kernel, '--self-test-forbidden', 'execve']);
  assert.equal(r.status, 128 + 31, r.stdout + r.stderr);
  assert.match(r.stderr, /the jailed VMM was killed by SIGSYS/);
});

test('--cgroup: the VMM runs in its own cgroup with the limit, or a clear error says why not', (t) => {
  const why = cannotJail();
  if (why) return t.skip(why);
  const r = jail(['--id', 'cg', '--cgroup', 'memory.max=300M', '--cgroup', 'pids.max=64', '--', '--kernel', kernel, '--self-test-forbidden', 'id']);
  if (r.status !== 0) {
    assert.match(r.stderr, /jail: --cgroup: /, r.stderr);
    assert.equal(readdirSync(base).includes('cg'), false);
    return t.skip(`cgroup v2 limits not available here: ${r.stderr.trim()}`);
  }
  // The VMM's own /proc/self/cgroup names the jail's cgroup (the limits were read back when set).
  assert.equal(/cgroup=(\S+)/.exec(r.stdout)?.[1], '/stratovisor/cg', r.stdout);
});
