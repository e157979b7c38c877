#!/usr/bin/env node
// Second half of `npm run build` (after tsc has type-checked and emitted dist/): what the VMM runs.
//  1. dist/src/api/openapi_validators.cjs: the API's request validators generated from the
//     OpenAPI document with Ajv's standalone code (src/api/validate_codegen.ts), so the API
//     server neither parses YAML nor compiles schemas at start;
//  2. dist/bundle/<entry>.cjs: each thread's entry (the CLI, and every module the code starts as a
//     worker thread, found from `new Worker(new URL('./x.js', import.meta.url))`) bundled by
//     esbuild into one CommonJS file, so a thread loads one file instead of resolving, reading and
//     linking dozens of ES modules (each worker is a fresh V8 isolate that loads its code again).
// Inside a bundle:
//  - `import.meta.url` of a module is the URL its tsc output has (dist/src/...), so the paths the
//    code finds relative to itself (package.json, the OpenAPI document, the jail's inner.js) are
//    the same bundled or not;
//  - `new URL('./x.js', import.meta.url)` naming a worker entry becomes dist/bundle/x.cjs: a
//    bundled thread starts bundled threads (the tsc output keeps starting the tsc output);
//  - koffi is its native addon, loaded directly (what koffi's index.cjs ends up doing after
//    probing the libc and the candidate paths), falling back to require('koffi');
//  - ajv and yaml are not bundled: only a test or a build without generated validators loads them.
import { readFileSync, readdirSync, writeFileSync, mkdirSync, rmSync, existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { pathToFileURL } from 'node:url';

const REPO = resolve(dirname(new URL(import.meta.url).pathname), '..', '..');
const SRC = join(REPO, 'src');
const DIST = join(REPO, 'dist');
export const BUNDLE_DIR = join(DIST, 'bundle');

const WORKER_RE = /new Worker\(\s*new URL\(\s*'(\.{1,2}\/[^']+)\.js',\s*import\.meta\.url\s*\)/g;

function sourceFiles(dir) {
  const out = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...sourceFiles(p));
    else if (e.name.endsWith('.ts') && !e.name.endsWith('.d.ts') && !/\.(test|fixture)\.ts$/.test(e.name) && !p.includes(`${sep}testing${sep}`)) out.push(p);
  }
  return out;
}

/** Thread entries: the CLI and every module started as a worker (absolute .ts paths). */
export function findEntries() {
  const entries = new Set([join(SRC, 'cli', 'main.ts')]);
  for (const f of sourceFiles(SRC)) {
    for (const m of readFileSync(f, 'utf8').matchAll(WORKER_RE)) {
      const target = resolve(dirname(f), `${m[1]}.ts`);
      if (!existsSync(target)) throw new Error(`${relative(REPO, f)} starts a worker from ${m[1]}.js, but ${relative(REPO, target)} does not exist`);
      entries.add(target);
    }
  }
  const names = new Map();
  for (const e of entries) {
    const n = bundleName(e);
    if (names.has(n)) throw new Error(`two thread entries would both be bundled as ${n}.cjs: ${names.get(n)} and ${e}`);
    names.set(n, e);
  }
  return [...entries];
}

const bundleName = (entryTs) => entryTs.slice(entryTs.lastIndexOf(sep) + 1).replace(/\.ts$/, '');

/** koffi's native addon as a bare specifier Node resolves from dist/bundle/, and koffi's version. */
function koffiNative() {
  const req = createRequire(join(REPO, 'package.json'));
  const version = JSON.parse(readFileSync(join(REPO, 'node_modules', 'koffi', 'package.json'), 'utf8')).version;
  const pkg = `@koromix/koffi-${process.platform}-${process.arch}`;
  const glibc = process.report?.getReport().header.glibcVersionRuntime !== undefined;
  const triplet = `${glibc ? process.platform : 'musl'}_${process.arch}`;
  const spec = `${pkg}/${triplet}/koffi.node`;
  try {
    req.resolve(spec);
    return { spec, version };
  } catch {
    return { spec: null, version }; // not installed that way: the bundle requires koffi itself
  }
}

function stratovisorPlugin(entries, koffi) {
  const entrySet = new Set(entries);
  return {
    name: 'stratovisor',
    setup(b) {
      b.onResolve({ filter: /^koffi$/ }, (a) => (a.namespace === 'stv-koffi' ? { path: 'koffi', external: true } : { path: 'koffi', namespace: 'stv-koffi' }));
      b.onLoad({ filter: /.*/, namespace: 'stv-koffi' }, () => ({
        loader: 'js',
        resolveDir: REPO,
        contents: koffi.spec === null ? 'module.exports = require("koffi");' : [
          'let native = null;',
          `try { native = require(${JSON.stringify(koffi.spec)}); } catch { native = null; }`,
          `module.exports = native !== null && native.version === ${JSON.stringify(koffi.version)} ? native : require("koffi");`,
        ].join('\n'),
      }));
      b.onResolve({ filter: /\.node$/ }, (a) => ({ path: a.path, external: true }));
      b.onLoad({ filter: /\.ts$/ }, (a) => {
        if (!a.path.startsWith(SRC + sep)) return undefined;
        let text = readFileSync(a.path, 'utf8');
        text = text.replace(/new URL\(\s*'(\.{1,2}\/[^']+)\.js',\s*import\.meta\.url\s*\)/g, (all, rel) => {
          const target = resolve(dirname(a.path), `${rel}.ts`);
          return entrySet.has(target) ? `__stvBundleUrl(${JSON.stringify(bundleName(target))})` : all;
        });
        const distRel = relative(REPO, a.path).split(sep).join('/').replace(/\.ts$/, '.js');
        text = text.replace(/import\.meta\.url/g, `__stvMetaUrl(${JSON.stringify(distRel)})`);
        return { contents: text, loader: 'ts' };
      });
    },
  };
}

// Defined once at the top of each bundle (__dirname is dist/bundle).
const BANNER = [
  '"use strict";',
  'const __stvPath = require("node:path"), __stvUrl = require("node:url");',
  'const __stvMetaUrl = (rel) => __stvUrl.pathToFileURL(__stvPath.join(__dirname, "..", rel)).href;',
  'const __stvBundleUrl = (name) => __stvUrl.pathToFileURL(__stvPath.join(__dirname, name + ".cjs"));',
].join('\n');

export async function bundle({ log = () => {} } = {}) {
  const { generateValidatorModule } = await import(pathToFileURL(join(DIST, 'src', 'api', 'validate_codegen.js')).href);
  writeFileSync(join(DIST, 'src', 'api', 'openapi_validators.cjs'), generateValidatorModule());

  const esbuild = await import('esbuild');
  const entries = findEntries();
  rmSync(BUNDLE_DIR, { recursive: true, force: true });
  mkdirSync(BUNDLE_DIR, { recursive: true });
  const r = await esbuild.build({
    entryPoints: Object.fromEntries(entries.map((e) => [bundleName(e), e])),
    outdir: BUNDLE_DIR,
    outExtension: { '.js': '.cjs' },
    bundle: true,
    platform: 'node',
    format: 'cjs',
    target: 'node20',
    external: ['ajv', 'ajv/*', 'yaml'],
    banner: { js: BANNER },
    plugins: [stratovisorPlugin(entries, koffiNative())],
    metafile: true,
    logLevel: 'warning',
  });
  const sizes = Object.entries(r.metafile.outputs).map(([f, o]) => `${relative(BUNDLE_DIR, f)} ${(o.bytes / 1024).toFixed(0)} KiB`);
  log(`bundled ${entries.length} thread entries (esbuild): ${sizes.join(', ')}`);
  return r;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  bundle({ log: (m) => process.stderr.write(`\x1b[36m[stratovisor]\x1b[0m ${m}\n`) }).catch((e) => {
    process.stderr.write(`bundle: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  });
}
