// `stratovisor jail [OPTIONS] -- <VMM flags>`: run the VMM in a jail, in the spirit of
// Firecracker's jailer (docs/jailer.md), small and explicit:
//   - new mount and PID namespaces, and a new (empty) network namespace unless --netns host or
//     --netns <path> (join an existing one, e.g. /var/run/netns/NAME, where its taps live);
//   - a chroot at <chroot-base>/<id>/root holding only node, its libraries, the project's dist/
//     and node_modules, the VM's kernel/initramfs/firmware/disks (bind mounts, read-only except
//     writable disks), device nodes (kvm, net/tun, null, zero, random, urandom) and a /proc;
//   - cgroup v2 limits (--cgroup memory.max=512M, cpu.max=..., pids.max=...) in
//     <cgroup2 mount>/stratovisor/<id>, when that hierarchy is mounted and writable;
//   - the VMM runs as --uid/--gid (default 65534, nobody), with no supplementary groups, and then
//     confines itself as usual (seccomp on by default, --landlock if given).
// Not isolated: the user namespace (the VMM's uid is a host uid), IPC and UTS namespaces, the
// host kernel's interfaces reachable through allowed syscalls, and the files bind-mounted in.

import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildPlan } from '../jail/plan.js';
import { CliError, parseArgs, parseSize } from './args.js';

export const JAIL_USAGE = [
  'Usage: stratovisor jail [--id <name>] [--uid <n>] [--gid <n>] [--chroot-base <dir>] [--netns new|host|<path>]',
  '                        [--cgroup <file>=<value>]... [--keep] -- <VMM flags>',
  '',
  'Run the VMM in new mount/PID/network namespaces, chrooted to <chroot-base>/<id>/root (default',
  '/srv/stratovisor/<id>/root), as --uid/--gid (default 65534). Paths the VMM creates (API socket,',
  'serial/console files) are made inside the jail: the host sees them under that root.',
  '',
].join('\n');

export interface JailArgs {
  id: string;
  uid: number;
  gid: number;
  chrootBase: string;
  netns: 'new' | 'host' | string;
  cgroup: Array<[string, string]>;
  keep: boolean;
  vmm: string[];
}

const CGROUP_FILES: Record<string, string> = { 'memory.max': 'memory', 'memory.high': 'memory', 'memory.swap.max': 'memory', 'cpu.max': 'cpu', 'cpu.weight': 'cpu', 'pids.max': 'pids' };

export function parseJailArgs(argv: readonly string[]): JailArgs | { help: string } {
  const out: JailArgs = { id: `stv-${process.pid}`, uid: 65534, gid: 65534, chrootBase: '/srv/stratovisor', netns: 'new', cgroup: [], keep: false, vmm: [] };
  let i = 0;
  const value = (flag: string): string => {
    const v = argv[++i];
    if (v === undefined || v.startsWith('--')) throw new CliError(`jail: ${flag} requires a value`, flag);
    return v;
  };
  const int = (flag: string, v: string): number => {
    if (!/^\d+$/.test(v) || Number(v) > 0xfffffffe) throw new CliError(`jail: ${flag}: bad id "${v}" (expected a number)`, flag);
    return Number(v);
  };
  for (; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') {
      out.vmm = argv.slice(i + 1);
      break;
    }
    switch (a) {
      case '-h':
      case '--help':
        return { help: JAIL_USAGE };
      case '--id': {
        const v = value(a);
        if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(v)) throw new CliError(`jail: --id: "${v}" is not a name (letters, digits, _ . -; at most 64)`, a);
        out.id = v;
        break;
      }
      case '--uid':
        out.uid = int(a, value(a));
        break;
      case '--gid':
        out.gid = int(a, value(a));
        break;
      case '--chroot-base':
        out.chrootBase = resolve(value(a));
        break;
      case '--netns':
        out.netns = value(a);
        if (out.netns !== 'new' && out.netns !== 'host' && !existsSync(out.netns)) throw new CliError(`jail: --netns: ${out.netns} does not exist`, a);
        break;
      case '--cgroup': {
        const v = value(a);
        const eq = v.indexOf('=');
        const file = eq < 0 ? v : v.slice(0, eq);
        if (eq < 0 || CGROUP_FILES[file] === undefined) {
          throw new CliError(`jail: --cgroup: "${v}" is not <file>=<value> with file one of ${Object.keys(CGROUP_FILES).join(', ')}`, a);
        }
        let val = v.slice(eq + 1);
        if (file.startsWith('memory.') && val !== 'max') {
          const n = parseSize(val);
          if (n === undefined) throw new CliError(`jail: --cgroup: bad size "${val}" for ${file}`, a);
          val = String(n);
        }
        out.cgroup.push([file, val]);
        break;
      }
      case '--keep':
        out.keep = true;
        break;
      default:
        throw new CliError(`jail: unknown flag ${a} (VMM flags go after --; see jail --help)`, a);
    }
  }
  if (out.vmm.length === 0) throw new CliError('jail: no VMM flags: give them after --, e.g. jail --uid 1000 -- --kernel /vm/bzImage ...');
  return out;
}

/** The cgroup v2 mount point (from /proc/self/mounts), or null. */
function cgroup2Mount(): string | null {
  for (const line of readFileSync('/proc/self/mounts', 'utf8').split('\n')) {
    const f = line.split(' ');
    if (f[2] === 'cgroup2') return f[1]!;
  }
  return null;
}

/** Make <cgroup2>/stratovisor/<id> with the limits; throws naming what is missing. */
function setupCgroup(id: string, limits: Array<[string, string]>): string {
  const mnt = cgroup2Mount();
  if (mnt === null) throw new Error('jail: --cgroup needs the cgroup v2 hierarchy, and no cgroup2 file system is mounted');
  const parent = join(mnt, 'stratovisor');
  const have = readFileSync(join(mnt, 'cgroup.controllers'), 'utf8').trim().split(/\s+/).filter(Boolean);
  const need = [...new Set(limits.map(([f]) => CGROUP_FILES[f]!))];
  const missing = need.filter((c) => !have.includes(c));
  if (missing.length > 0) {
    throw new Error(`jail: --cgroup: the cgroup v2 hierarchy at ${mnt} lacks the ${missing.join(', ')} controller(s) (available: ${have.join(' ') || 'none'}; on a hybrid cgroup v1 host they are bound to v1)`);
  }
  try {
    mkdirSync(parent, { recursive: true });
    const enable = need.map((c) => `+${c}`).join(' ');
    writeFileSync(join(mnt, 'cgroup.subtree_control'), enable);
    writeFileSync(join(parent, 'cgroup.subtree_control'), enable);
    const dir = join(parent, id);
    mkdirSync(dir);
    for (const [file, val] of limits) {
      writeFileSync(join(dir, file), val);
      const got = readFileSync(join(dir, file), 'utf8').trim();
      // The kernel rounds memory sizes to pages; anything else differing means it did not take.
      if (got !== val && !(file.startsWith('memory.') && Math.abs(Number(got) - Number(val)) < 4096)) throw new Error(`${file} reads back "${got}", not "${val}"`);
    }
    return dir;
  } catch (e) {
    throw new Error(`jail: --cgroup: ${(e as Error).message}`);
  }
}

/** No mount of this namespace lies under `dir` (so removing it cannot reach into a bind mount). */
function noMountsUnder(dir: string): boolean {
  const mi = readFileSync('/proc/self/mountinfo', 'utf8');
  return !mi.split('\n').some((l) => {
    const mp = l.split(' ')[4];
    return mp !== undefined && (mp === dir || mp.startsWith(dir + '/'));
  });
}

export async function runJail(argv: readonly string[]): Promise<number> {
  const parsed = parseJailArgs(argv);
  if ('help' in parsed) {
    process.stdout.write(parsed.help);
    return 0;
  }
  const j = parsed;
  if (process.getuid?.() !== 0) throw new Error('jail: must run as root (it makes namespaces, mounts and device nodes, then drops to --uid)');
  const vmm = parseArgs(j.vmm);
  if (vmm.kind !== 'run') throw new CliError('jail: the flags after -- must run a VM (not remote, help or version)');
  const jailDir = join(j.chrootBase, j.id);
  const root = join(jailDir, 'root');
  if (existsSync(jailDir)) throw new Error(`jail: ${jailDir} already exists (another jail with --id ${j.id}?)`);
  mkdirSync(root, { recursive: true, mode: 0o755 });
  let cgroup: string | null = null;
  const cleanup = (): void => {
    if (cgroup !== null) try { rmdirSync(cgroup); } catch { /* still has processes: leave it */ }
    if (!j.keep && noMountsUnder(jailDir)) rmSync(jailDir, { recursive: true, force: true });
  };
  try {
    if (j.cgroup.length > 0) cgroup = setupCgroup(j.id, j.cgroup);
    const plan = buildPlan({ root, uid: j.uid, gid: j.gid, cgroup, vmmArgv: j.vmm, args: vmm });
    const planFile = join(jailDir, 'plan.json');
    writeFileSync(planFile, JSON.stringify(plan, null, 1), { mode: 0o600 });
    const inner = resolve(dirname(fileURLToPath(import.meta.url)), '../jail/inner.js');
    // unshare(1): --mount makes mounts private (--propagation private is its default), --fork
    // so the child is pid 1 of the new PID namespace, --kill-child so it dies with us.
    const unshare = ['unshare', '--mount', '--pid', '--fork', '--kill-child', ...(j.netns === 'new' ? ['--net'] : []), '--', process.execPath, inner, planFile];
    const cmd = j.netns !== 'new' && j.netns !== 'host' ? ['nsenter', `--net=${j.netns}`, '--', ...unshare] : unshare;
    if (spawnSync(cmd[0]!, ['--version'], { stdio: 'ignore' }).error) throw new Error(`jail: ${cmd[0]} (util-linux) is not installed`);
    const child = spawn(cmd[0]!, cmd.slice(1), { stdio: 'inherit' });
    const forward = (sig: NodeJS.Signals): void => { child.kill(sig); };
    for (const s of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.on(s, forward);
    const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((res) => child.once('exit', (c, s) => res([c, s])));
    for (const s of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.off(s, forward);
    if (signal !== null) {
      process.stderr.write(`stratovisor jail: the jailed VMM was killed by ${signal}\n`);
      return 128 + (signal === 'SIGSYS' ? 31 : signal === 'SIGKILL' ? 9 : signal === 'SIGTERM' ? 15 : 1);
    }
    return code ?? 1;
  } finally {
    cleanup();
  }
}
