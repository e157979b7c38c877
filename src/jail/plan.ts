// What `stratovisor jail` puts in the jail (in the spirit of Firecracker's jailer, docs/jailer.md):
// a plan the outer process builds on the host and the inner process (jail/inner.ts, pid 1 of new
// mount and PID namespaces) carries out before it chroots, drops to --uid/--gid and execs the VMM.
//
// Inside the chroot, every file sits at its host path, so the VMM's own flags need no rewriting:
//   node and the shared objects ldd names for it and for koffi's native module (read-only),
//   the project's dist/, package.json and node_modules (read-only),
//   the kernel, initramfs, firmware and disks the VMM flags name (disks writable unless readonly=on),
//   device nodes made with mknod for /dev/kvm, /dev/net/tun, /dev/null, /dev/zero, /dev/urandom,
//   /dev/random (owned by the jail's uid), a fresh /proc of the new PID namespace.
// Files the VMM creates (API socket, serial/console/log files, event monitor) land inside the
// jail root: the host reaches the API socket at <root>/<path>.

import { spawnSync } from 'node:child_process';
import { existsSync, realpathSync, statSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { RunArgs } from '../cli/args.js';

export interface BindMount {
  /** Host path (resolved). */
  source: string;
  /** Path inside the jail (absolute, as the VMM will name it). */
  target: string;
  readonly: boolean;
}

export interface DeviceNode {
  path: string;
  major: number;
  minor: number;
}

export interface JailPlan {
  /** The chroot directory on the host. */
  root: string;
  binds: BindMount[];
  devices: DeviceNode[];
  /** Directories (inside the jail) the VMM writes into: made and given to uid/gid. */
  writableDirs: string[];
  uid: number;
  gid: number;
  /** cgroup v2 directory to join before chroot, or null. */
  cgroup: string | null;
  /** The command the inner process execs inside the chroot: node, its script, the VMM flags. */
  exec: { path: string; argv: string[]; env: string[] };
}

/** Character devices the VMM may open (Documentation/admin-guide/devices.txt). */
export const JAIL_DEVICES: readonly DeviceNode[] = [
  { path: '/dev/kvm', major: 10, minor: 232 },
  { path: '/dev/net/tun', major: 10, minor: 200 },
  { path: '/dev/null', major: 1, minor: 3 },
  { path: '/dev/zero', major: 1, minor: 5 },
  { path: '/dev/random', major: 1, minor: 8 },
  { path: '/dev/urandom', major: 1, minor: 9 },
];

/** Shared objects `ldd file` lists, as [path the loader looks up, host file]. */
export function lddObjects(file: string): Array<[string, string]> {
  const r = spawnSync('ldd', [file], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`jail: ldd ${file} failed: ${(r.stderr || r.stdout).trim()}`);
  const out: Array<[string, string]> = [];
  for (const line of r.stdout.split('\n')) {
    // "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "\t/lib64/ld-linux-x86-64.so.2 (0x...)"
    const m = /=>\s+(\/\S+)/.exec(line) ?? /^\s+(\/\S+)\s+\(/.exec(line);
    if (m) out.push([m[1]!, realpathSync(m[1]!)]);
  }
  return out;
}

function projectRoot(): string {
  return resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
}

/** koffi's native module, as this process mapped it (/proc/self/maps), for ldd. */
function koffiNative(): string[] {
  try {
    const maps = spawnSync(process.execPath, ['-e', "require('koffi'); process.stdout.write(require('fs').readFileSync('/proc/self/maps', 'utf8'))"], {
      encoding: 'utf8',
      cwd: projectRoot(),
    }).stdout;
    return [...new Set(maps.split('\n').map((l) => l.split(/\s+/)[5] ?? '').filter((p) => p.endsWith('.node')))];
  } catch {
    return [];
  }
}

/** The host paths the VMM flags name, with whether the VM may write them. */
export function vmFiles(args: RunArgs): Array<{ path: string; readonly: boolean }> {
  const out: Array<{ path: string; readonly: boolean }> = [];
  const c = args.config;
  if (c === null) return out;
  for (const p of [c.payload.kernel, c.payload.initramfs, c.payload.firmware]) if (p) out.push({ path: p, readonly: true });
  for (const d of c.disks ?? []) if (d.path) out.push({ path: d.path, readonly: d.readonly });
  for (const p of c.pmem ?? []) if (p.file) out.push({ path: p.file, readonly: p.discard_writes });
  if (c.rng.src && !c.rng.src.startsWith('/dev/')) out.push({ path: c.rng.src, readonly: true });
  return out;
}

/** Files the VMM creates (inside the jail): their directories must exist and be writable. */
function createdFiles(args: RunArgs): string[] {
  const out: string[] = [];
  for (const s of [args.apiSocket, args.eventMonitor]) if (s && 'path' in s) out.push(s.path);
  if (args.logFile) out.push(args.logFile);
  const c = args.config;
  if (c) for (const x of [c.serial, c.console]) for (const p of [x.file, x.socket]) if (p) out.push(p);
  return out;
}

export interface PlanOptions {
  root: string;
  uid: number;
  gid: number;
  cgroup: string | null;
  vmmArgv: readonly string[];
  args: RunArgs;
}

export function buildPlan(o: PlanOptions): JailPlan {
  const binds: BindMount[] = [];
  const seen = new Set<string>();
  const bind = (source: string, target: string, readonly: boolean): void => {
    if (seen.has(target)) return;
    seen.add(target);
    binds.push({ source, target, readonly });
  };
  const node = realpathSync(process.execPath);
  bind(node, node, true);
  for (const file of [node, ...koffiNative()]) for (const [target, source] of lddObjects(file)) bind(source, target, true);
  const root = projectRoot();
  // The bundled CLI (npm run build) where there is one, else tsc's output.
  const bundled = resolve(root, 'dist/bundle/main.cjs');
  const main = existsSync(bundled) ? bundled : resolve(root, 'dist/src/cli/main.js');
  bind(resolve(root, 'dist'), resolve(root, 'dist'), true);
  bind(resolve(root, 'package.json'), resolve(root, 'package.json'), true);
  bind(realpathSync(resolve(root, 'node_modules')), resolve(root, 'node_modules'), true);
  for (const f of vmFiles(o.args)) {
    const abs = resolve(f.path);
    if (!isAbsolute(f.path)) throw new Error(`jail: ${f.path}: give VM files as absolute paths (the VMM runs in the jail's /)`);
    try {
      statSync(abs);
    } catch {
      throw new Error(`jail: ${f.path} does not exist on the host`);
    }
    bind(realpathSync(abs), abs, f.readonly);
  }
  const writableDirs = [...new Set(createdFiles(o.args).map((p) => {
    if (!isAbsolute(p)) throw new Error(`jail: ${p}: give paths the VMM creates as absolute paths (they are made inside the jail root)`);
    return dirname(p);
  }))];
  const env = ['PATH=/usr/bin:/bin', 'HOME=/', ...(process.env.TERM ? [`TERM=${process.env.TERM}`] : [])];
  return {
    root: o.root,
    binds,
    devices: [...JAIL_DEVICES],
    writableDirs,
    uid: o.uid,
    gid: o.gid,
    cgroup: o.cgroup,
    exec: { path: node, argv: [node, main, ...o.vmmArgv], env },
  };
}
