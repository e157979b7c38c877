#!/usr/bin/env node
// Runs a list of node --test jobs one after another in one process tree: what scripts/test.mjs
// starts inside one sandbox boot, instead of one boot per e2e file. Usage:
//   node scripts/lib/run-files.mjs MANIFEST.json
// The manifest ({ results, fileTimeoutS, jobs: [{ label, files, env, args, idleS }] }) names a
// results folder where each job leaves `<label>.tap` (its TAP), `<label>.started` (one line per
// attempt) and, once it has ended, `<label>.done` ({ status, ms, timedOut }). Jobs already done are
// skipped, so the same manifest run again in a fresh sandbox (after the last one died) goes on
// where it stopped. Each job gets its own TMPDIR, removed afterwards with whatever its tests left
// there (the sandbox's TMPDIR is a tmpfs in its RAM), and its process group is killed when it ends,
// so nothing one file started outlives it into the next.
import { spawn } from 'node:child_process';
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { tapFailures } from './tap.mjs';

/**
 * What the e2e helpers (test/e2e/lib/guest.ts) put at the top of a failure's explanation when the
 * VMM under test reported a guest triple fault. The sandbox's nested SVM triple-faults guests now
 * and then, QEMU's as well as ours (README "Known problems"), so a job whose every failing test
 * carries it runs once more in the same sandbox; a second failure stands.
 */
export const TRIPLE_FAULT_TAG = '[the VMM reported a guest triple fault]';
/**
 * The same for a guest that printed nothing at all on its console while the test waited (the
 * sandbox loses a guest now and then, QEMU's as well as ours: runGuest retries such a boot once
 * itself; a test driving one VMM through its steps cannot, so its job runs once more).
 */
export const SILENT_GUEST_TAG = '[the guest printed nothing on its console]';
const RERUN_TAGS = [TRIPLE_FAULT_TAG, SILENT_GUEST_TAG];

/**
 * The sandbox's clocks jump now and then. QEMU's TCG gives the sandbox the host's own TSC
 * (rdtsc), and this host is itself a VM that is paused and resumed (snapshots: its kernel logs
 * "crng reseeded due to virtual machine fork"): its TSC then moves on by the hours it stood still
 * while its own clock (kvm-clock) does not, and the sandbox's kernel (tsc=reliable) follows the
 * TSC. Seen in CI: a job "ran past 1200 s" a few minutes after it started, its time 23676 s in a
 * 2945 s run. A gap longer than this between two ticks of a 1 s interval is such a jump.
 */
export const CLOCK_JUMP_S = 60;

/**
 * Time that does not jump: the ticks of a 1 s interval, each counted for what it measured unless
 * that was more than CLOCK_JUMP_S (a jump: counted as 1 s and recorded). `now` is in ms.
 */
export function steadyClock(now = () => performance.now()) {
  let last = now();
  let elapsedMs = 0;
  const jumps = [];
  return {
    tick() {
      const t = now();
      const d = t - last;
      last = t;
      if (d > CLOCK_JUMP_S * 1000 || d < 0) {
        jumps.push({ atMs: Math.round(elapsedMs), s: Math.round(d / 1000) });
        elapsedMs += 1000;
      } else elapsedMs += d;
      return elapsedMs;
    },
    get elapsedMs() { return elapsedMs; },
    jumps,
  };
}

/**
 * Why a failed job runs once more in the same sandbox, or null: every failure is tagged as a
 * sandbox fault (above), or the sandbox's clock jumped while it ran (its tests' own timers fired
 * early). A job killed for its time limit is not rerun unless its clock jumped.
 */
export function rerunReason(done, tapPath) {
  if (!done || done.status === 0) return null;
  if ((done.clockJumps ?? []).length > 0) return `the sandbox's clock jumped ${done.clockJumps.map((j) => `${j.s} s`).join(', ')} while it ran`;
  if (!done.timedOut && failedOnlyBySandboxFaults(tapPath)) return `every failing test saw a guest triple fault or a silent guest (${RERUN_TAGS.join(' or ')})`;
  return null;
}

/** True when the TAP has failures and each one's error carries one of the tags above. */
export function failedOnlyBySandboxFaults(tap) {
  const f = tapFailures(tap, 1e6);
  return f.length > 0 && f.every((x) => x.error.some((l) => RERUN_TAGS.some((t) => l.includes(t))));
}

/** Tells scripts/lib/sandbox.mjs (reading our stdout) how long this job may stay silent. */
export const IDLE_MARKER = (s) => `@@kvm-sandbox:idle=${s}@@`;

export function jobPaths(results, label) {
  return {
    tap: join(results, `${label}.tap`),
    started: join(results, `${label}.started`),
    done: join(results, `${label}.done`),
  };
}

/** node --test's arguments for one job: spec on stdout, TAP into the job's file. */
export function nodeTestArgs(job, tap) {
  return [
    '--test', '--test-reporter=spec', '--test-reporter-destination=stdout', '--test-reporter=tap', `--test-reporter-destination=${tap}`,
    ...(job.args ?? []), ...job.files,
  ];
}

/**
 * Write (or append) and fsync: the results folder is the host's, over the sandbox's 9p mount
 * with cache=loose, where a sandbox that dies later would otherwise lose what its page cache
 * had not written back (seen: an empty .done after a lockup).
 */
function writeDurable(path, text, flags = 'w') {
  const fd = openSync(path, flags);
  try {
    writeSync(fd, text);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** fsync a file another process wrote (the job's TAP), if it exists. */
function syncFile(path) {
  let fd;
  try { fd = openSync(path, 'r+'); } catch { return; }
  try { fsyncSync(fd); } catch { /* nothing to flush */ } finally { closeSync(fd); }
}

function runJob(job, { results, fileTimeoutS, tmpRoot }, faultReruns = 0) {
  const p = jobPaths(results, job.label);
  rmSync(p.tap, { force: true });
  writeDurable(p.started, `${new Date().toISOString()}\n`, 'a');
  const tmp = join(tmpRoot, `job-${job.label.replace(/[^A-Za-z0-9_.@-]/g, '_')}`);
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  if (job.idleS) process.stdout.write(`${IDLE_MARKER(job.idleS)}\n`);
  const clock = steadyClock();
  return new Promise((resolve) => {
    // NODE_TEST_CONTEXT: set when this driver itself runs under node --test (its own unit
    // test); a nested node --test that inherits it would skip its files.
    const env = { ...process.env, ...job.env, TMPDIR: tmp };
    delete env.NODE_TEST_CONTEXT;
    const child = spawn(process.execPath, nodeTestArgs(job, p.tap), { stdio: ['ignore', 'inherit', 'inherit'], detached: true, env });
    let timedOut = false;
    const killGroup = () => { try { process.kill(-child.pid, 'SIGKILL'); } catch { /* already gone */ } };
    // The time limit counts steady time (a clock jump does not use it up).
    const timer = setInterval(() => {
      const jumps = clock.jumps.length;
      const ms = clock.tick();
      if (clock.jumps.length > jumps) {
        const j = clock.jumps[jumps];
        process.stderr.write(`run-files: ${job.label}: the sandbox's clock jumped ${j.s} s after ${Math.round(j.atMs / 1000)} s of the job (the host was paused?)\n`);
      }
      if (fileTimeoutS > 0 && ms > fileTimeoutS * 1000 && !timedOut) {
        timedOut = true;
        process.stderr.write(`run-files: ${job.label} ran past ${fileTimeoutS} s (STV_SANDBOX_TIMEOUT per file); killed\n`);
        killGroup();
      }
    }, 1000);
    const finish = (status) => {
      clearInterval(timer);
      clock.tick();
      killGroup();
      rmSync(tmp, { recursive: true, force: true });
      syncFile(p.tap);
      writeDurable(p.done, JSON.stringify({ status, ms: Math.round(clock.elapsedMs), timedOut, faultReruns, clockJumps: clock.jumps }) + '\n');
      resolve();
    };
    child.on('error', (e) => { process.stderr.write(`run-files: cannot start ${job.label}: ${e.message}\n`); finish(126); });
    child.on('exit', (code, sig) => finish(code ?? (sig ? 128 + 9 : 1)));
  });
}

/** A job's .done record, or null when there is none or it is not whole. */
function readDone(path) {
  try { return existsSync(path) ? JSON.parse(readFileSync(path, 'utf8')) : null; } catch { return null; }
}

function linesOf(path) {
  return existsSync(path) ? readFileSync(path, 'utf8').split('\n').filter(Boolean).length : 0;
}

/**
 * What became of each job after a sandbox boot: done (with its .done record) or pending, and for
 * the first pending one whether it had started (the job the sandbox died in).
 */
export function jobStates(results, jobs) {
  return jobs.map((j) => {
    const p = jobPaths(results, j.label);
    // A record the sandbox did not get written back before it died reads as not done: the job
    // runs again (its TAP may be cut short as well).
    const done = readDone(p.done);
    const attempts = Math.max(linesOf(p.started), existsSync(p.started) ? 1 : 0);
    return { job: j, paths: p, done, attempts };
  });
}

/**
 * On the host: run `jobs` inside scripts/kvm-sandbox, all in one boot, booting a fresh sandbox
 * to go on whenever one fails (status 124 killed for time or silence, 125 died) in the middle.
 * The job a sandbox died in runs again unless one of its tests had already failed, or it has
 * had retries + 1 attempts; a sandbox that dies before any job starts counts against the same
 * limit. Resolves to one result per job: TAP counts and failures, status, ms, attempts.
 * `run(argv, env)` starts the sandbox (injected by the tests); `tapCounts`/`tapFailures` read TAP.
 */
export async function runSandboxJobs(jobs, { results, fileTimeoutS, idleTimeoutS, retries, run, tap, log }) {
  mkdirSync(results, { recursive: true });
  for (const j of jobs) for (const f of Object.values(jobPaths(results, j.label))) rmSync(f, { force: true });
  const manifest = join(results, `manifest-${process.pid}.json`);
  writeFileSync(manifest, JSON.stringify({ results, fileTimeoutS, jobs }, null, 1));
  let emptyBoots = 0;
  for (;;) {
    const before = jobStates(results, jobs).filter((s) => !s.done);
    if (before.length === 0) break;
    const idleS = Math.max(...before.map((s) => s.job.idleS ?? idleTimeoutS), idleTimeoutS);
    const names = before.map((s) => s.job.label);
    log(`${names.length} sandbox job${names.length > 1 ? 's' : ''} in one sandbox boot: ${names.join(', ')}`);
    const status = await run([process.execPath, RUN_FILES, manifest], {
      // The whole boot: every pending job's own limit, plus the boot itself.
      STV_SANDBOX_TIMEOUT: String(fileTimeoutS > 0 ? fileTimeoutS * before.length + 600 : 0),
      STV_SANDBOX_IDLE_TIMEOUT: String(idleS),
    });
    const pending = jobStates(results, jobs).filter((s) => !s.done);
    if (pending.length === 0) break;
    const cur = pending[0];
    const sandboxFailed = status === 124 || status === 125;
    const giveUp = (why, st) => {
      log(`${cur.job.label}: ${why}`);
      writeFileSync(cur.paths.done, JSON.stringify({ status: st, ms: 0, timedOut: false, sandbox: true }) + '\n');
    };
    if (!sandboxFailed) {
      // The driver itself stopped (it cannot start, the sandbox could not boot the command…):
      // every job left counts as failed by the runner.
      for (const s of pending) {
        writeFileSync(s.paths.done, JSON.stringify({ status: status || 1, ms: 0, timedOut: false, sandbox: true }) + '\n');
      }
      log(`the sandbox's job runner ended with status ${status} before ${pending.map((s) => s.job.label).join(', ')} ran`);
      break;
    }
    if (pending.length < before.length) emptyBoots = 0;
    if (cur.attempts === 0) {
      emptyBoots++;
      if (emptyBoots > retries) {
        log(`the sandbox failed ${emptyBoots} times in a row before a job could start (status ${status}); giving up on ${pending.map((s) => s.job.label).join(', ')}`);
        for (const s of pending) writeFileSync(s.paths.done, JSON.stringify({ status, ms: 0, timedOut: false, sandbox: true }) + '\n');
        break;
      }
      log(`the sandbox failed (status ${status}) before ${cur.job.label} started; booting a fresh one (retry ${emptyBoots} of ${retries})`);
      continue;
    }
    const c = tap.counts(cur.paths.tap);
    if (c.fail > 0) { giveUp(`the sandbox failed (status ${status}) after a test of this job had failed; not run again`, status); continue; }
    // A job may allow more tries than the rest (unit-kvm: seconds each, and the sandbox's kernel
    // locks up in its KVM state tests now and then).
    const mayRetry = cur.job.retries ?? retries;
    if (cur.attempts > mayRetry) { giveUp(`the sandbox failed (status ${status}) in each of ${cur.attempts} attempts`, status); continue; }
    log(`${cur.job.label}: the sandbox failed (status ${status}) with no failing test reported; running it again in a fresh sandbox (retry ${cur.attempts} of ${mayRetry})`);
  }
  rmSync(manifest, { force: true });
  return jobStates(results, jobs).map((s) => {
    const c = tap.counts(s.paths.tap);
    c.failures = tap.failures(s.paths.tap);
    c.label = s.job.label;
    c.status = s.done?.status ?? 1;
    c.ms = s.done?.ms ?? 0;
    c.attempts = Math.max(1, s.attempts);
    c.faultReruns = s.done?.faultReruns ?? 0;
    return c;
  });
}

const RUN_FILES = new URL(import.meta.url).pathname;

async function main() {
  const manifestPath = process.argv[2];
  if (!manifestPath) throw new Error('usage: run-files.mjs MANIFEST.json');
  const m = JSON.parse(readFileSync(manifestPath, 'utf8'));
  const tmpRoot = process.env.TMPDIR || '/tmp';
  for (const job of m.jobs) {
    const p = jobPaths(m.results, job.label);
    if (readDone(p.done)) continue;
    const opts = { results: m.results, fileTimeoutS: m.fileTimeoutS ?? 0, tmpRoot };
    for (let reruns = 0; ; reruns++) {
      await runJob(job, opts, reruns);
      const why = rerunReason(readDone(p.done), p.tap);
      if (!why || reruns >= (job.faultReruns ?? 1)) break;
      const kept = join(m.results, `${job.label}.sandbox-fault-${reruns + 1}.tap`);
      if (existsSync(p.tap)) renameSync(p.tap, kept);
      rmSync(p.done, { force: true });
      process.stdout.write(`run-files: ${job.label}: ${why}; running the job once more (its TAP kept as ${kept})\n`);
    }
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main().catch((e) => { process.stderr.write(`run-files: ${e instanceof Error ? e.message : String(e)}\n`); process.exit(2); });
}
