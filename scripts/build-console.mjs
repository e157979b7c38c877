#!/usr/bin/env node
// Bundles the web console's page (web/console/) with esbuild into dist/console-web/:
// app.js (xterm.js, uPlot and the page), app.css (xterm's, uPlot's and ours), index.html; no
// file the page loads comes from anywhere else (its CSP allows 'self' only).
import { build } from 'esbuild';
import { copyFileSync, mkdirSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const REPO = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = join(REPO, 'dist', 'console-web');
mkdirSync(out, { recursive: true });
await build({
  entryPoints: { app: join(REPO, 'web', 'console', 'app.ts') },
  bundle: true,
  minify: true,
  sourcemap: true,
  format: 'iife',
  target: 'es2022',
  outdir: out,
  logLevel: 'warning',
});
copyFileSync(join(REPO, 'web', 'console', 'index.html'), join(out, 'index.html'));
