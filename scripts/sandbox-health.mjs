#!/usr/bin/env node
// npm run sandbox-health [-- --runs N] [--configs 7.2/6.1,10.0/6.12,...] [--report]
// Boots the KVM sandbox again and again in each configuration (sandbox QEMU × the sandbox's own
// kernel), each boot running the same inner load (bench/sandbox_load.ts: a QEMU boot, a
// Stratovisor boot and Stratovisor's virtio-blk e2e check), and classifies every boot:
//   ok       the sandbox ran the load and every step passed
//   inner    the sandbox was fine but a step of the load failed (a VMM or test problem)
//   panic    the sandbox's kernel panicked before the command finished (console: "Kernel panic")
//   lockup   the sandbox's kernel reported a CPU stuck for ≥ 100 s and was stopped
//   silent   the sandbox printed nothing for STV_SANDBOX_IDLE_TIMEOUT and was killed
//   timeout  the sandbox ran past STV_SANDBOX_TIMEOUT
//   failed   the sandbox stopped before the command finished for another reason
// Results are appended to docs/sandbox-health.jsonl (one line per boot, kept in the repository so
// runs of several sessions add up); --report prints the table from that file only.
// Configurations are visited round-robin, so a run cut short stays balanced.
// Env: STV_HEALTH_LOCK=PATH takes an flock on PATH around each boot (shared machines).
import { existsSync, readFileSync, appendFileSync, rmSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { ensureGuestImages, REPO, CACHE } from './lib/images.mjs';
import { ensureNodeModules, build, log } from './lib/setup.mjs';
import { spawnWait, SANDBOX_QEMUS } from './lib/sandbox.mjs';
import { KERNELS } from './lib/kernels.mjs';

export const RESULTS = join(REPO, 'docs', 'sandbox-health.jsonl');
const KINDS = ['ok', 'inner', 'panic', 'lockup', 'silent', 'timeout', 'failed'];

/** Classify one sandbox boot from its result record and console text. */
export function classify(result, consoleText) {
  if (result.stopped === 'stuck') return 'lockup';
  if (result.stopped === 'idle') return 'silent';
  if (result.stopped === 'timeout') return 'timeout';
  if (result.rc !== null && result.rc !== undefined) return result.rc === 0 ? 'ok' : 'inner';
  // No exit status came back: the sandbox's kernel died or QEMU stopped.
  return /Kernel panic/.test(consoleText ?? '') ? 'panic' : 'failed';
}

function parseArgs(argv) {
  const o = { runs: 20, configs: null, report: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--runs') o.runs = Number(argv[++i]);
    else if (a === '--configs') o.configs = argv[++i].split(',');
    else if (a === '--report') o.report = true;
    else throw new Error(`unknown argument '${a}' (use --runs N, --configs Q/K,..., --report)`);
  }
  if (!Number.isInteger(o.runs) || o.runs < 1) throw new Error('--runs must be a positive integer');
  const all = SANDBOX_QEMUS.flatMap((q) => Object.keys(KERNELS).map((k) => `${q}/${k}`));
  o.configs ??= all;
  for (const c of o.configs) if (!all.includes(c)) throw new Error(`unknown configuration '${c}' (known: ${all.join(', ')})`);
  return o;
}

/** The table: per configuration, boots by kind, failure rate and median boot time. */
export function report(lines) {
  const by = new Map();
  for (const r of lines) {
    const k = `${r.config}`;
    if (!by.has(k)) by.set(k, { config: k, qemu: r.qemu, kernel: r.kernel, n: 0, kinds: Object.fromEntries(KINDS.map((x) => [x, 0])), ms: [] });
    const e = by.get(k);
    e.n++;
    e.kinds[r.kind] = (e.kinds[r.kind] ?? 0) + 1;
    // The load's own time (the sum of its steps), not counting a wait for STV_HEALTH_LOCK.
    if (r.kind === 'ok') e.ms.push(r.steps ? r.steps.reduce((a, st) => a + Number(st.split(':').pop()), 0) : r.ms);
  }
  const rows = [['sandbox (QEMU / L1 kernel)', 'boots', ...KINDS, 'sandbox failures', 'median load s (ok)']];
  for (const e of [...by.values()].sort((a, b) => a.config.localeCompare(b.config))) {
    const bad = e.kinds.panic + e.kinds.lockup + e.kinds.silent + e.kinds.timeout + e.kinds.failed;
    const ms = e.ms.sort((a, b) => a - b);
    const med = ms.length ? (ms[Math.floor(ms.length / 2)] / 1000).toFixed(0) : '-';
    rows.push([`QEMU ${e.config.split('/')[0]} / Linux ${e.config.split('/')[1]}`, String(e.n), ...KINDS.map((x) => String(e.kinds[x])), `${bad}/${e.n} (${((100 * bad) / e.n).toFixed(0)}%)`, med]);
  }
  const w = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  return rows.map((r, j) => `| ${r.map((c, i) => c.padEnd(w[i])).join(' | ')} |${j === 0 ? `\n|${w.map((x) => '-'.repeat(x + 2)).join('|')}|` : ''}`).join('\n');
}

function readResults() {
  if (!existsSync(RESULTS)) return [];
  return readFileSync(RESULTS, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  if (o.report) {
    process.stdout.write(report(readResults()) + '\n');
    return;
  }
  ensureNodeModules();
  if (!build()) throw new Error('build failed');
  const images = ensureGuestImages({ log });
  const env = { STV_GUEST_BZIMAGE: images.bzImage, STV_GUEST_VMLINUX: images.vmlinux, STV_GUEST_INITRAMFS: images.initramfs };
  const dir = join(CACHE, 'sandbox-health');
  mkdirSync(dir, { recursive: true });
  const load = join(REPO, 'dist', 'bench', 'sandbox_load.js');
  for (let i = 0; i < o.runs; i++) {
    for (const config of o.configs) {
      const [qemu, kernel] = config.split('/');
      const resultFile = join(dir, `result-${process.pid}.json`);
      rmSync(resultFile, { force: true });
      const sandbox = [join(REPO, 'scripts', 'kvm-sandbox'), process.execPath, load];
      const cmd = process.env.STV_HEALTH_LOCK ? ['flock', process.env.STV_HEALTH_LOCK, ...sandbox] : sandbox;
      const t0 = Date.now();
      let out = '';
      const status = await spawnWait(cmd[0], cmd.slice(1), {
        stdio: ['ignore', 'pipe', 'inherit'],
        env: {
          ...process.env, ...env, STV_SANDBOX: 'nested', STV_SANDBOX_QEMU: qemu, STV_SANDBOX_KERNEL: kernel,
          STV_SANDBOX_TIMEOUT: process.env.STV_SANDBOX_TIMEOUT ?? '1200', STV_SANDBOX_IDLE_TIMEOUT: process.env.STV_SANDBOX_IDLE_TIMEOUT ?? '360',
          STV_SANDBOX_RESULT: resultFile, STV_HEALTH_TAG: `health-${qemu}-${kernel}-${i}`,
        },
        onChild: (c) => c.stdout.on('data', (b) => { out += b.toString('latin1'); }),
      });
      const ms = Date.now() - t0;
      const result = existsSync(resultFile) ? JSON.parse(readFileSync(resultFile, 'utf8')) : { status, stopped: null, rc: null, consoleLog: null };
      const consoleText = result.consoleLog && existsSync(result.consoleLog) ? readFileSync(result.consoleLog, 'latin1') : '';
      const kind = classify(result, consoleText);
      const inner = /@@health:(\{.*\})@@/.exec(out);
      const steps = inner ? JSON.parse(inner[1]).steps : null;
      const line = {
        at: new Date(t0).toISOString(), config, qemu: result.qemu ?? qemu, kernel: result.kernel ?? kernel, kind, ms, status,
        ...(steps ? { steps: steps.map((s) => `${s.name}:${s.ok ? 'ok' : 'FAIL'}${s.retried ? '(retried)' : ''}:${s.ms}`) } : {}),
        ...(kind !== 'ok' && result.consoleLog ? { console: result.consoleLog } : {}),
        ...(steps?.some((s) => !s.ok) ? { why: steps.filter((s) => !s.ok).map((s) => s.why).join(' || ').slice(0, 400) } : {}),
      };
      appendFileSync(RESULTS, JSON.stringify(line) + '\n');
      log(`sandbox-health ${config} #${i + 1}: ${kind} in ${(ms / 1000).toFixed(0)} s${line.why ? ` (${line.why.slice(0, 160)})` : ''}`);
    }
  }
  process.stdout.write(report(readResults()) + '\n');
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main().catch((e) => {
    log(e instanceof Error ? e.message : String(e));
    process.exit(1);
  });
}
