// The inside of `stratovisor jail`: run by unshare(1) as pid 1 of new mount and PID namespaces
// (and a new network namespace unless --netns host), as root. Carries out the plan (jail/plan.ts):
// join the cgroup, bind-mount the files, make device nodes, mount /proc, chroot, drop to
// uid/gid with no supplementary groups, exec the VMM. Any failure ends it with status 1 and one
// line naming the step.
//
// usage (internal): node dist/src/jail/inner.js <plan.json>

import { chmodSync, chownSync, closeSync, mkdirSync, openSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { chdir, chroot, clearCloexec, execve, mknodChar, mount, MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY, MS_REC, MS_REMOUNT } from '../sys/libc.js';
import type { JailPlan } from './plan.js';

function fail(step: string, e: unknown): never {
  process.stderr.write(`stratovisor jail: error: ${step}: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
}

function inside(plan: JailPlan, p: string): string {
  return join(plan.root, p);
}

function run(plan: JailPlan): void {
  if (plan.cgroup !== null) {
    // cgroup v2: writing 0 to cgroup.procs moves the writing process (Documentation/admin-guide/cgroup-v2.rst).
    try { writeFileSync(join(plan.cgroup, 'cgroup.procs'), '0'); } catch (e) { fail(`joining cgroup ${plan.cgroup}`, e); }
  }
  for (const b of plan.binds) {
    const target = inside(plan, b.target);
    try {
      const isDir = statSync(b.source).isDirectory();
      mkdirSync(isDir ? target : dirname(target), { recursive: true });
      if (!isDir) closeSync(openSync(target, 'a'));
      mount(b.source, target, null, MS_BIND | MS_REC);
      // A bind mount takes MS_RDONLY only on a remount (mount(2), "Creating a bind mount").
      if (b.readonly) mount(null, target, null, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV);
    } catch (e) {
      fail(`bind-mounting ${b.source} at ${b.target}`, e);
    }
  }
  for (const d of plan.devices) {
    const p = inside(plan, d.path);
    try {
      mkdirSync(dirname(p), { recursive: true });
      try { statSync(p); } catch { mknodChar(p, 0o600, d.major, d.minor); }
      chownSync(p, plan.uid, plan.gid);
      chmodSync(p, 0o600);
    } catch (e) {
      fail(`making device node ${d.path}`, e);
    }
  }
  for (const dir of plan.writableDirs) {
    const p = inside(plan, dir);
    try {
      mkdirSync(p, { recursive: true });
      chownSync(p, plan.uid, plan.gid);
    } catch (e) {
      fail(`making ${dir} for the VMM's files`, e);
    }
  }
  try {
    mkdirSync(inside(plan, '/proc'), { recursive: true });
    // A proc of the new PID namespace: it lists the jail's processes only.
    mount('proc', inside(plan, '/proc'), 'proc', MS_NOSUID | MS_NODEV | MS_NOEXEC);
  } catch (e) {
    fail('mounting /proc', e);
  }
  try {
    chroot(plan.root);
    chdir('/');
  } catch (e) {
    fail(`chroot to ${plan.root}`, e);
  }
  try {
    process.setgroups!([]);
    process.setgid!(plan.gid);
    process.setuid!(plan.uid);
  } catch (e) {
    fail(`dropping to uid ${plan.uid} gid ${plan.gid}`, e);
  }
  // Node marks its stdio close-on-exec: the VMM keeps the jail's stdin/stdout/stderr.
  for (const fd of [0, 1, 2]) try { clearCloexec(fd); } catch { /* not open */ }
  const r = execve(plan.exec.path, plan.exec.argv, plan.exec.env);
  fail(`exec ${plan.exec.path}`, new Error(`errno ${-r}`));
}

const planFile = process.argv[2];
if (planFile === undefined) fail('usage', 'inner.js <plan.json>');
let plan: JailPlan;
try {
  plan = JSON.parse(readFileSync(planFile, 'utf8')) as JailPlan;
} catch (e) {
  fail(`reading ${planFile}`, e);
}
run(plan);
