// Shared first steps of npm start / test / bench: install npm dependencies when missing and
// build the TypeScript. Plain JavaScript with no dependencies, so it runs on a fresh clone.
import { existsSync, statSync, lstatSync, readdirSync, readFileSync, writeFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { REPO } from './images.mjs';

export function log(msg) {
  process.stderr.write(`\x1b[36m[stratovisor]\x1b[0m ${msg}\n`);
}

/** What the build compiles (dist/ is made from these folders only). */
const SOURCE_DIRS = ['src', 'test', 'bench', 'web'];

/** Every file under `dir`, relative to the repository, sorted. */
function filesUnder(dir, out = []) {
  if (!existsSync(dir)) return out;
  for (const e of readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
    const p = join(dir, e.name);
    if (e.isDirectory()) filesUnder(p, out);
    else out.push(p.slice(REPO.length + 1));
  }
  return out;
}

function newestMtime(dir) {
  let t = 0;
  if (!existsSync(dir)) return t;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    t = Math.max(t, e.isDirectory() ? newestMtime(p) : statSync(p).mtimeMs);
  }
  return t;
}

export function ensureNodeModules() {
  const lock = join(REPO, 'package-lock.json');
  const marker = join(REPO, 'node_modules', '.package-lock.json');
  if (existsSync(marker) && statSync(marker).mtimeMs >= statSync(lock).mtimeMs) return;
  // A node_modules that is a symlink (a git worktree sharing another checkout's) is left alone:
  // npm ci would empty the folder it points to.
  const nm = join(REPO, 'node_modules');
  if (existsSync(nm) && lstatSync(nm).isSymbolicLink()) {
    log('node_modules is a symlink: not running npm ci (update it in the checkout it points to)');
    return;
  }
  log('installing npm dependencies (npm ci)');
  execFileSync('npm', ['ci', '--no-audit', '--no-fund'], { cwd: REPO, stdio: ['ignore', 'inherit', 'inherit'] });
}

/**
 * Compile with tsc (type check + dist/), then generate the API validators and bundle each thread's
 * entry with esbuild (scripts/lib/bundle.mjs, what the VMM runs); false (after printing the
 * errors) when either fails.
 */
export function build({ force = false } = {}) {
  const out = join(REPO, 'dist', '.build-stamp');
  const srcT = Math.max(newestMtime(join(REPO, 'src')), newestMtime(join(REPO, 'test')), newestMtime(join(REPO, 'bench')), newestMtime(join(REPO, 'web')), statSync(join(REPO, 'tsconfig.json')).mtimeMs,
    statSync(join(REPO, 'scripts', 'lib', 'bundle.mjs')).mtimeMs);
  const bundled = existsSync(join(REPO, 'dist', 'bundle', 'main.cjs'));
  // The stamp lists the sources it was built from: a source deleted or renamed since then (no
  // newer mtime) rebuilds too, into an emptied dist/ (tsc never removes the output of a deleted
  // source, and npm test would go on running a deleted test's .js).
  const sources = SOURCE_DIRS.flatMap((d) => filesUnder(join(REPO, d))).join('\n') + '\n';
  if (!force && bundled && existsSync(out) && statSync(out).mtimeMs >= srcT && readFileSync(out, 'utf8') === sources) return true;
  log('building (tsc, the web console page, then esbuild bundles)');
  rmSync(join(REPO, 'dist'), { recursive: true, force: true });
  try {
    execFileSync(join(REPO, 'node_modules', '.bin', 'tsc'), ['-p', 'tsconfig.json'], { cwd: REPO, stdio: 'inherit' });
    // The web console's page: type-checked with the DOM library, bundled with esbuild.
    execFileSync(join(REPO, 'node_modules', '.bin', 'tsc'), ['-p', join('web', 'console', 'tsconfig.json')], { cwd: REPO, stdio: 'inherit' });
    execFileSync(process.execPath, [join(REPO, 'scripts', 'build-console.mjs')], { cwd: REPO, stdio: 'inherit' });
    execFileSync(process.execPath, [join(REPO, 'scripts', 'lib', 'bundle.mjs')], { cwd: REPO, stdio: 'inherit' });
  } catch {
    return false;
  }
  writeFileSync(out, sources);
  return true;
}
