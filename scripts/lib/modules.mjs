// Kernel module resolution from modules.dep, so an initramfs can insmod in dependency order.
import { readFileSync, existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

/** Parse modules.dep into Map<name, {path, deps: string[]}> (names normalised: '-' → '_'). */
export function parseModulesDep(text) {
  const map = new Map();
  for (const line of text.split('\n')) {
    const colon = line.indexOf(':');
    if (colon < 0) continue;
    const path = line.slice(0, colon).trim();
    const deps = line.slice(colon + 1).trim().split(/\s+/).filter(Boolean);
    map.set(moduleName(path), { path, deps: deps.map(moduleName) });
  }
  return map;
}

export function moduleName(path) {
  const base = path.split('/').pop();
  return base.replace(/\.ko(\.(xz|gz|zst))?$/, '').replace(/-/g, '_');
}

/** Return the modules to load, dependencies first, each once. Throws naming a missing module. */
export function resolveModules(dep, wanted, builtin = new Set()) {
  const order = [];
  const seen = new Set();
  const visit = (name, chain) => {
    const n = name.replace(/-/g, '_');
    if (seen.has(n) || builtin.has(n)) return;
    const ent = dep.get(n);
    if (!ent) throw new Error(`kernel module '${name}' not found in modules.dep${chain.length ? ` (needed by ${chain.join(' → ')})` : ''}`);
    seen.add(n);
    for (const d of ent.deps) visit(d, [...chain, n]);
    order.push({ name: n, path: ent.path });
  };
  for (const w of wanted) visit(w, []);
  return order;
}

export function parseBuiltin(text) {
  return new Set(text.split('\n').filter(Boolean).map(moduleName));
}

/** The newest Debian kernel installed: { version, bzImage, modulesDir } or null. */
export function findDebianKernel(bootDir = '/boot', modRoot = '/lib/modules') {
  if (!existsSync(bootDir)) return null;
  const versions = readdirSync(bootDir)
    .filter((f) => f.startsWith('vmlinuz-'))
    .map((f) => f.slice('vmlinuz-'.length))
    .filter((v) => existsSync(join(modRoot, v, 'modules.dep')))
    .sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
  const version = versions.pop();
  if (!version) return null;
  return { version, bzImage: join(bootDir, `vmlinuz-${version}`), modulesDir: join(modRoot, version) };
}

export function loadModuleIndex(modulesDir) {
  const dep = parseModulesDep(readFileSync(join(modulesDir, 'modules.dep'), 'utf8'));
  const builtinPath = join(modulesDir, 'modules.builtin');
  const builtin = existsSync(builtinPath) ? parseBuiltin(readFileSync(builtinPath, 'utf8')) : new Set();
  return { dep, builtin };
}
