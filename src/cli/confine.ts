// Confining the VMM process before it runs a guest: Landlock, then seccomp (see README, "Confinement").
//
// Order, and why:
// 1. Landlock (--landlock). landlock_restrict_self covers only the calling thread and what it
//    starts later, and Node already runs threads (V8 platform workers, the libuv pool, which the
//    ESM loader has used to read our modules) that would stay outside the domain and serve fs
//    calls from JS. So the main thread restricts itself and then re-executes the VMM (execve of
//    the same node and script, same pid, same fds): every thread of the new image descends from
//    the restricted one. STV_LANDLOCK_ABI in the environment marks the second start.
// 2. seccomp (--seccomp, default true), installed with TSYNC on every thread before the API
//    server listens and before any VM is created; worker threads started later inherit it.
//    The default deny-list leaves open(2), socket(2) and friends alone, so opening disk images on
//    vm.create / add-disk and new sockets (vsock, vhost-user) keep working after it is in place.

import { readFileSync, realpathSync, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { networkInterfaces } from 'node:os';
import { Worker } from 'node:worker_threads';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { landlockAbi, resolveRules, restrictSelf, type LandlockRule } from '../sys/landlock.js';
import { installSeccomp } from '../sys/seccomp.js';
import { clearCloexec, close, execve, getpid, O_CREAT, O_DIRECTORY, O_RDONLY, O_WRONLY, open, SysError, syscallInts } from '../sys/libc.js';
import type { VmConfig } from '../vmm/config.js';
import type { RunArgs } from './args.js';

const LANDLOCK_ENV = 'STV_LANDLOCK_ABI';

/** Rules for what Node itself needs after the re-exec, whatever the VM. */
function baselineRules(): LandlockRule[] {
  const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
  const rules: LandlockRule[] = [
    // node, its shared libraries (already mapped, but the re-exec maps them again), ld.so.cache,
    // time zones, and the project: dist/, package.json, node_modules (often a symlink: its target too).
    { path: realpathSync(process.execPath), access: 'r' },
    { path: '/lib', access: 'r' },
    { path: '/lib64', access: 'r' },
    { path: '/usr/lib', access: 'r' },
    { path: '/etc/ld.so.cache', access: 'r' },
    { path: '/etc/localtime', access: 'r' },
    { path: '/usr/share/zoneinfo', access: 'r' },
    { path: '/etc/ssl', access: 'r' },
    { path: root, access: 'r' },
    { path: realpathSync(resolve(root, 'node_modules')), access: 'r' },
    // /proc/self (libuv's exepath, cpu and memory facts) and /sys (cgroup limits, cpu topology).
    { path: '/proc', access: 'r' },
    { path: '/sys', access: 'r' },
    { path: '/dev/null', access: 'rw' },
    { path: '/dev/urandom', access: 'r' },
    { path: '/dev/random', access: 'r' },
  ];
  // Devices the VMM opens: KVM (or MSHV), taps, ptys for --serial/--console pty.
  for (const dev of ['/dev/kvm', '/dev/mshv', '/dev/net/tun', '/dev/ptmx', '/dev/pts', '/dev/tty']) rules.push({ path: dev, access: 'rw' });
  return rules.filter((r) => exists(r.path));
}

function clearCloexecIfOpen(fd: number): void {
  try {
    clearCloexec(fd);
  } catch (e) {
    if (!(e instanceof SysError && e.code === 'EBADF')) throw e;
  }
}

function exists(p: string): boolean {
  try {
    statSync(p);
    return true;
  } catch {
    return false;
  }
}

/** Keys of a VmConfig object whose string values name host paths, and the access they need. */
const PATH_KEYS: Record<string, 'r' | 'rw'> = {
  kernel: 'r',
  initramfs: 'r',
  firmware: 'r',
  src: 'r',
  path: 'rw',
  file: 'rw',
  socket: 'rw',
  vhost_socket: 'rw',
};

/**
 * Every path a VM config names (payload, disks — read-only ones as r —, rng, serial/console
 * files and sockets, vhost-user sockets, and whatever devices later configs add under these
 * keys), as Landlock rules.
 */
export function configRules(config: VmConfig): LandlockRule[] {
  const out: LandlockRule[] = [];
  const walk = (v: unknown): void => {
    if (Array.isArray(v)) {
      for (const x of v) walk(x);
      return;
    }
    if (v === null || typeof v !== 'object') return;
    const o = v as Record<string, unknown>;
    for (const [k, x] of Object.entries(o)) {
      const acc = PATH_KEYS[k];
      if (acc !== undefined && typeof x === 'string' && x !== '') {
        // /dev/urandom is already in the baseline; rng src may be any other file.
        out.push({ path: x, access: o.readonly === true ? 'r' : acc });
      } else if (typeof x === 'object') walk(x);
    }
  };
  walk(config);
  return out;
}

/** All rules for this run: Node's baseline, the VM config's paths, API/event/log paths, --landlock-rules. */
export function vmmRules(args: RunArgs): LandlockRule[] {
  const rules = baselineRules();
  if (args.config) rules.push(...configRules(args.config));
  for (const s of [args.apiSocket, args.eventMonitor]) if (s && 'path' in s) rules.push({ path: s.path, access: 'rw' });
  if (args.logFile !== undefined) rules.push({ path: args.logFile, access: 'rw' });
  rules.push(...args.confine.landlockRules);
  return rules;
}

/**
 * Apply Landlock (re-executing the VMM so every thread is inside the domain; see top) and then
 * seccomp. Returns lines describing what is in force, for -v. On the first start with
 * --landlock this does not return: the process image is replaced.
 */
export function confineVmm(args: RunArgs): string[] {
  const notes: string[] = [];
  if (args.confine.landlock) {
    const applied = process.env[LANDLOCK_ENV];
    if (applied === undefined) {
      const abi = landlockAbi();
      if ('reason' in abi) throw new Error(`--landlock: ${abi.reason}`);
      const rules = resolveRules(vmmRules(args), abi.abi);
      restrictSelf(rules, abi.abi);
      // Node marks its stdio close-on-exec; the restarted VMM must keep them (and an fd= socket).
      for (const fd of [0, 1, 2]) clearCloexecIfOpen(fd);
      for (const s of [args.apiSocket, args.eventMonitor]) if (s && 'fd' in s) clearCloexecIfOpen(s.fd);
      const env = Object.entries({ ...process.env, [LANDLOCK_ENV]: String(abi.abi) }).map(([k, v]) => `${k}=${v ?? ''}`);
      const r = execve(process.execPath, [process.execPath, ...process.execArgv, ...process.argv.slice(1)], env);
      throw new SysError(`--landlock: execve(${process.execPath}) to restart inside the ruleset`, -r);
    }
    delete process.env[LANDLOCK_ENV];
    // The marker comes from the environment: check that the domain is really there, by reading a
    // directory no rule grants (the root, unless a rule names it).
    const rules = vmmRules(args);
    if (!rules.some((r) => resolve(r.path) === '/')) {
      let opened = false;
      try {
        close(open('/', O_RDONLY | O_DIRECTORY));
        opened = true;
      } catch (e) {
        if (!(e instanceof SysError && e.code === 'EACCES')) throw e;
      }
      if (opened) throw new Error(`--landlock: ${LANDLOCK_ENV} is set but this process is not inside a Landlock domain (/ is readable)`);
    }
    notes.push(`Landlock ABI ${applied} in force (${rules.length} rules)`);
  }
  const n = installSeccomp(args.confine.seccomp);
  notes.push(args.confine.seccomp === 'false' ? 'seccomp off' : `seccomp ${args.confine.seccomp}: ${n}-instruction filter on all threads`);
  return notes;
}

/**
 * --self-test-forbidden: try each call and print one line per item,
 * `self-test: <item>: allowed|refused <ERRNO>|<facts>` (aread: read through fs.promises). A call the filter kills ends the process
 * with SIGSYS before its line is printed (the caller sees the signal).
 */
export async function selfTestForbidden(items: readonly string[]): Promise<void> {
  const say = (s: string): void => {
    process.stdout.write(`self-test: ${s}\n`);
  };
  const outcome = (fn: () => number): string => {
    try {
      fn();
      return 'allowed';
    } catch (e) {
      if (e instanceof SysError) return `refused ${e.code}`;
      throw e;
    }
  };
  for (const item of items) {
    const colon = item.indexOf(':');
    const op = colon < 0 ? item : item.slice(0, colon);
    const path = colon < 0 ? '' : item.slice(colon + 1);
    switch (op) {
      case 'execve': {
        // A path that does not exist: where the call is allowed it fails with ENOENT rather than
        // replacing the process, so log mode can report it.
        const r = execve('/nonexistent/stratovisor-self-test', ['self-test'], []);
        say(`execve: ${r === -2 ? 'allowed (ENOENT from the kernel)' : `refused errno ${-r}`}`);
        break;
      }
      case 'ptrace': {
        // ptrace(PTRACE_PEEKUSER, self) is harmless where allowed (ESRCH: not our tracee).
        const r = syscallInts(101, 3, getpid(), 0);
        say(`ptrace: ${r === -3 || r >= 0 ? 'allowed' : `refused errno ${-r}`}`);
        break;
      }
      case 'unshare': {
        // unshare(0) changes nothing where allowed.
        const r = syscallInts(272, 0, 0, 0);
        say(`unshare: ${r >= 0 ? 'allowed' : `refused errno ${-r}`}`);
        break;
      }
      case 'open':
        say(`open ${path}: ${outcome(() => { close(open(path, O_RDONLY)); return 0; })}`);
        break;
      case 'write':
        say(`write ${path}: ${outcome(() => { close(open(path, O_WRONLY | O_CREAT, 0o600)); return 0; })}`);
        break;
      case 'worker-execve': {
        // A worker thread started after the filter: it inherits it (seccomp(2): filters pass to
        // threads a thread creates). Where allowed the worker's execve fails with ENOENT.
        const libcUrl = new URL('../sys/libc.js', import.meta.url).href;
        const code = `import('${libcUrl}').then((l) => { const r = l.execve('/nonexistent/stratovisor-self-test', ['x'], []); require('node:worker_threads').parentPort.postMessage(r); });`;
        const r = await new Promise<number>((res, rej) => {
          const w = new Worker(code, { eval: true });
          w.once('message', (m: number) => { res(m); void w.terminate(); });
          w.once('error', rej);
        });
        say(`worker-execve: ${r === -2 ? 'allowed (ENOENT from the kernel)' : `refused errno ${-r}`}`);
        break;
      }
      case 'aread':
        // fs.promises runs on libuv's thread pool: shows those threads are confined too.
        say(`aread ${path}: ${await readFile(path).then(() => 'allowed', (e: NodeJS.ErrnoException) => `refused ${e.code ?? e.message}`)}`);
        break;
      case 'stat':
        say(`stat ${path}: ${exists(path) ? 'exists' : 'absent'}`);
        break;
      case 'id': {
        const ifs = Object.keys(networkInterfaces()).join(' ') || '(none)';
        let cg = '?';
        try { cg = readFileSync('/proc/self/cgroup', 'utf8').split('\n').find((l) => l.startsWith('0::'))?.slice(3) ?? '?'; } catch { /* no /proc */ }
        say(`id: pid=${process.pid} ppid=${process.ppid} uid=${process.getuid?.() ?? -1} gid=${process.getgid?.() ?? -1} netifs=${ifs} cgroup=${cg}`);
        break;
      }
    }
  }
}
