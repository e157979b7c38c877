// Debian packages that are used from an unpacked folder instead of being installed: newer
// kernels and QEMU from bookworm-backports. `apt-get download` fetches the .deb into .cache/debs
// and `dpkg-deb -x` unpacks it beside it, so nothing on the system is upgraded (the system's
// QEMU 7.2 and kernel 6.1 stay what the rest of the machine uses).
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { execFileSync, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

// Not imported from images.mjs, which imports this module (an import cycle would leave it unset).
export const DEBS = join(fileURLToPath(new URL('../../.cache/debs', import.meta.url)));
/** An apt source for bookworm-backports, added when the machine has none. */
export const BACKPORTS_SOURCE = '/etc/apt/sources.list.d/stratovisor-bookworm-backports.sources';
const BACKPORTS_ENTRY = `Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
`;

export class DebError extends Error {}

function aptEnv() {
  return { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
}

function hasBackportsSource() {
  const files = ['/etc/apt/sources.list', ...(existsSync('/etc/apt/sources.list.d') ? readdirSync('/etc/apt/sources.list.d').map((f) => join('/etc/apt/sources.list.d', f)) : [])];
  return files.some((f) => { try { return /bookworm-backports/.test(readFileSync(f, 'utf8')); } catch { return false; } });
}

let updated = false;
/** Make bookworm-backports known to apt (adds a sources entry as root) and refresh the lists once. */
export function ensureBackports({ log = () => {} } = {}) {
  if (!hasBackportsSource()) {
    if (process.getuid?.() !== 0) throw new DebError(`bookworm-backports is not an apt source here; as root, add ${BACKPORTS_SOURCE} with:\n${BACKPORTS_ENTRY}`);
    log(`adding bookworm-backports to apt's sources (${BACKPORTS_SOURCE})`);
    writeFileSync(BACKPORTS_SOURCE, BACKPORTS_ENTRY);
    updated = false;
  }
  if (!updated) {
    const probe = spawnSync('apt-cache', ['madison', 'linux-image-amd64'], { encoding: 'utf8' });
    if (!/bookworm-backports/.test(probe.stdout ?? '')) {
      log('apt-get update (bookworm-backports)');
      try {
        execFileSync('apt-get', ['update', '-qq'], { stdio: ['ignore', 'ignore', 'inherit'], env: aptEnv() });
      } catch (e) {
        throw new DebError(`apt-get update failed: ${e.message}`);
      }
    }
    updated = true;
  }
}

/** The version apt would fetch for `name` from `suite` (e.g. bookworm-backports), or null. */
export function candidateVersion(name, suite) {
  const r = spawnSync('apt-cache', ['madison', name], { encoding: 'utf8' });
  for (const line of (r.stdout ?? '').split('\n')) {
    const [pkg, ver, src] = line.split('|').map((s) => s.trim());
    if (pkg === name && src && src.includes(`${suite}/`)) return ver;
  }
  return null;
}

/** The Depends of a package version (the meta-package linux-image-amd64 names the real image). */
export function dependsOf(name, version) {
  const r = spawnSync('apt-cache', ['show', `${name}=${version}`], { encoding: 'utf8' });
  const m = /^Depends:\s*(.*)$/m.exec(r.stdout ?? '');
  return m ? m[1].split(',').map((d) => d.trim().split(/\s+/)[0]) : [];
}

/**
 * Download name=version and unpack it under .cache/debs/<name>_<version>/; returns that folder.
 * Idempotent: a folder with its `.unpacked` stamp is reused.
 */
export function unpackDeb(name, version, { log = () => {} } = {}) {
  return fetchUnpacked(name, version, { log });
}

/**
 * apt-get download name=version (with `aptOpts`: a private suite's lists) and unpack it under
 * .cache/debs/<name>_<version>/ through a temporary folder renamed into place; returns that
 * folder. A folder with its `.unpacked` stamp is reused.
 */
function fetchUnpacked(name, version, { aptOpts = [], suite = '', log = () => {} } = {}) {
  const safe = `${name}_${version}`.replace(/[^A-Za-z0-9_.+-]/g, '_');
  const dir = join(DEBS, safe);
  if (existsSync(join(dir, '.unpacked'))) return dir;
  mkdirSync(DEBS, { recursive: true });
  const dl = join(DEBS, `.download-${process.pid}`);
  rmSync(dl, { recursive: true, force: true });
  mkdirSync(dl, { recursive: true });
  const from = suite ? ` from ${suite}` : '';
  log(`fetching ${name} ${version}${from} (apt-get download, unpacked into ${dir})`);
  try {
    execFileSync('apt-get', [...aptOpts, 'download', '-qq', `${name}=${version}`], { cwd: dl, stdio: ['ignore', 'ignore', 'pipe'], env: aptEnv() });
  } catch (e) {
    rmSync(dl, { recursive: true, force: true });
    throw new DebError(`apt-get download ${name}=${version}${suite ? ` (${suite})` : ''} failed: ${String(e.stderr || e.message).trim()}`);
  }
  const deb = readdirSync(dl).find((f) => f.endsWith('.deb'));
  if (!deb) throw new DebError(`apt-get download ${name}=${version} left no .deb`);
  const tmp = `${dir}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  execFileSync('dpkg-deb', ['-x', join(dl, deb), tmp]);
  writeFileSync(join(tmp, '.unpacked'), `${name} ${version}\n`);
  rmSync(dir, { recursive: true, force: true });
  renameSync(tmp, dir);
  rmSync(dl, { recursive: true, force: true });
  return dir;
}

/** Unpack several packages of one suite into one merged root (e.g. QEMU's binary + data). */
export function unpackSuite(names, suite, { log = () => {} } = {}) {
  ensureBackports({ log });
  return names.map((n) => {
    const v = candidateVersion(n, suite);
    if (!v) throw new DebError(`${n} has no version in ${suite} (apt-cache madison ${n})`);
    return { name: n, version: v, dir: unpackDeb(n, v, { log }) };
  });
}

/**
 * apt options for a private view of another Debian suite (e.g. sid): its own sources file,
 * package lists and download cache under .cache/debs/apt-<suite>/, so the system's apt sources
 * and lists are never touched and nothing is installed (used for headers newer than the
 * system's, e.g. <linux/mshv.h>, which linux-libc-dev has shipped since 6.15).
 */
function privateApt(suite) {
  const root = join(DEBS, `apt-${suite}`);
  const opts = [
    '-o', 'Dir::Etc::SourceList=/dev/null', '-o', `Dir::Etc::SourceParts=${join(root, 'sources')}`,
    '-o', `Dir::State::Lists=${join(root, 'lists')}`, '-o', `Dir::Cache=${join(root, 'cache')}`,
    '-o', 'Debug::NoLocking=1', '-o', 'APT::Sandbox::User=root',
  ];
  return { root, opts };
}

/** Refresh the private package lists of `suite` (once per day at most). */
export function ensurePrivateSuite(suite, { log = () => {} } = {}) {
  const { root, opts } = privateApt(suite);
  for (const d of ['sources', 'lists/partial', 'cache/archives/partial']) mkdirSync(join(root, d), { recursive: true });
  writeFileSync(join(root, 'sources', `${suite}.sources`), `Types: deb
URIs: http://deb.debian.org/debian
Suites: ${suite}
Components: main
Architectures: amd64
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
`);
  const stamp = join(root, '.updated');
  let fresh = false;
  try { fresh = Date.now() - Number(readFileSync(stamp, 'utf8')) < 86_400_000; } catch { /* never updated */ }
  if (!fresh) {
    log(`apt-get update (private lists of ${suite} in ${root})`);
    try {
      execFileSync('apt-get', [...opts, 'update', '-qq'], { stdio: ['ignore', 'ignore', 'pipe'], env: aptEnv() });
      writeFileSync(stamp, String(Date.now()));
    } catch (e) {
      // Offline (e.g. inside the sandbox): lists from an earlier update still name what is unpacked.
      const have = readdirSync(join(root, 'lists')).some((f) => f.includes('_Packages'));
      if (!have) throw new DebError(`apt-get update of ${suite} failed: ${String(e.stderr || e.message).trim()}`);
      log(`apt-get update of ${suite} failed; using the lists from ${root} as they are`);
    }
  }
  return opts;
}

/** Like unpackDeb, for a package of a suite the system does not use (private apt lists). */
export function unpackPrivate(name, suite, { log = () => {} } = {}) {
  const opts = ensurePrivateSuite(suite, { log });
  const r = spawnSync('apt-cache', [...opts, 'madison', name], { encoding: 'utf8' });
  const line = (r.stdout ?? '').split('\n').map((l) => l.split('|').map((s) => s.trim())).find(([p]) => p === name);
  if (!line) throw new DebError(`${name} has no version in ${suite}`);
  const version = line[1];
  return { name, version, dir: fetchUnpacked(name, version, { aptOpts: opts, suite, log }) };
}

/** A package name matching `re` in a private suite (e.g. linux-headers-<ver>-common). */
export function findPrivate(re, suite, { log = () => {} } = {}) {
  const opts = ensurePrivateSuite(suite, { log });
  const r = spawnSync('apt-cache', [...opts, 'search', '--names-only', re.source], { encoding: 'utf8' });
  const names = (r.stdout ?? '').split('\n').map((l) => l.split(' ')[0]).filter((n) => n && re.test(n)).sort();
  return names.at(-1) ?? null;
}
