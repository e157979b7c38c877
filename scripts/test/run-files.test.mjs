// Unit tests of the sandbox job runner (scripts/lib/run-files.mjs): several node --test jobs in
// one boot, going on in a fresh boot after one died, retries and giving up. The "sandbox" here
// runs the real driver on this host; its death is a SIGKILL of the driver's process tree at a
// chosen point (a job's test file signals it), answered with kvm-sandbox's status 125.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, writeFileSync, existsSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runSandboxJobs, rerunReason, steadyClock, CLOCK_JUMP_S, IDLE_MARKER, SILENT_GUEST_TAG, TRIPLE_FAULT_TAG } from '../lib/run-files.mjs';
import { tapCounts, tapFailures } from '../lib/tap.mjs';

const tap = { counts: tapCounts, failures: tapFailures };

function fixture() {
  const dir = mkdtempSync(join(tmpdir(), 'stv-runfiles-'));
  const file = (name, body) => {
    const p = join(dir, name);
    writeFileSync(p, `import { test } from 'node:test';\nimport { writeFileSync, existsSync } from 'node:fs';\n${body}\n`);
    return p;
  };
  return { dir, file, results: join(dir, 'results') };
}

/**
 * A stand-in for scripts/kvm-sandbox that runs the driver here. A test file asks for the
 * sandbox to die by creating `die` in the fixture folder: the driver's whole process group is
 * killed and 125 returned, as kvm-sandbox does when the sandbox's kernel panicked.
 */
function fakeSandbox(dir, boots) {
  return (argv, env) => new Promise((resolve) => {
    boots.push(env);
    // kvm-sandbox's TMPDIR is a tmpfs of the sandbox's own.
    mkdirSync(join(dir, 'tmp'), { recursive: true });
    const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'inherit'], detached: true, env: { ...process.env, ...env, TMPDIR: join(dir, 'tmp') } });
    let out = '';
    child.stdout.on('data', (b) => { out += b; });
    const die = join(dir, 'die');
    const poll = setInterval(() => {
      if (!existsSync(die)) return;
      try { process.kill(-child.pid, 'SIGKILL'); } catch { /* gone */ }
    }, 20);
    child.on('exit', (code) => {
      clearInterval(poll);
      boots[boots.length - 1].stdout = out;
      if (existsSync(die)) {
        rmSync(die, { force: true });
        resolve(125);
      } else resolve(code ?? 1);
    });
  });
}

const noLog = () => {};

/** Jobs a, b and c (one file each) through the fake sandbox, retries 2. */
function threeJobs(f, files, boots) {
  const jobs = files.map((file, i) => ({ label: 'abc'[i], files: [file], env: {}, args: [] }));
  return runSandboxJobs(jobs, { results: f.results, fileTimeoutS: 60, idleTimeoutS: 300, retries: 2, run: fakeSandbox(f.dir, boots), tap, log: noLog });
}

test('jobs run one after another in one boot, each with its own TMPDIR, results per job', async () => {
  const f = fixture();
  const a = f.file('a.test.mjs', `test('a1', () => { writeFileSync(process.env.TMPDIR + '/left', 'x'); });\ntest('a2', () => {});`);
  const b = f.file('b.test.mjs', `test('b1', () => { if (existsSync(process.env.TMPDIR + '/left')) throw new Error('TMPDIR shared'); throw new Error('b fails'); });`);
  const boots = [];
  const r = await runSandboxJobs([
    { label: 'a', files: [a], env: { X: '1' }, args: [], idleS: 100 },
    { label: 'b', files: [b], env: {}, args: [] },
  ], { results: f.results, fileTimeoutS: 60, idleTimeoutS: 300, retries: 2, run: fakeSandbox(f.dir, boots), tap, log: noLog });
  assert.equal(boots.length, 1, 'one boot for both jobs');
  assert.equal(boots[0].STV_SANDBOX_IDLE_TIMEOUT, '300');
  assert.match(boots[0].stdout, new RegExp(IDLE_MARKER(100).replace(/[=]/g, '.')));
  assert.deepEqual(r.map((c) => [c.label, c.pass, c.fail, c.attempts]), [['a', 2, 0, 1], ['b', 0, 1, 1]]);
  assert.equal(r[0].status, 0);
  assert.notEqual(r[1].status, 0);
  assert.match(r[1].failures[0].error.join('\n'), /b fails/);
  // The TMPDIRs the jobs got are gone.
  assert.deepEqual(readdirSync(join(f.dir, 'tmp')), []);
});

test('a sandbox that dies in a job: a fresh boot reruns that job and goes on with the rest', async () => {
  const f = fixture();
  const a = f.file('a.test.mjs', `test('a', () => {});`);
  // b dies the sandbox on its first attempt only (its marker survives in the fixture folder).
  const once = join(f.dir, 'b-tried');
  const b = f.file('b.test.mjs', `test('b', async () => { if (!existsSync(${JSON.stringify(once)})) { writeFileSync(${JSON.stringify(once)}, ''); writeFileSync(${JSON.stringify(join(f.dir, 'die'))}, ''); await new Promise((r) => setTimeout(r, 5000)); } });`);
  const c = f.file('c.test.mjs', `test('c', () => {});`);
  const boots = [];
  const r = await threeJobs(f, [a, b, c], boots);
  assert.equal(boots.length, 2);
  assert.deepEqual(r.map((x) => [x.label, x.pass, x.fail, x.attempts, x.status]), [['a', 1, 0, 1, 0], ['b', 1, 0, 2, 0], ['c', 1, 0, 1, 0]]);
  // a ran once: the second boot did not repeat it.
  assert.doesNotMatch(boots[1].stdout, /✔ a /);
});

test('a job the sandbox dies in every time fails after retries + 1 attempts; later jobs still run', async () => {
  const f = fixture();
  const a = f.file('a.test.mjs', `test('a', async () => { writeFileSync(${JSON.stringify(join(f.dir, 'die'))}, ''); await new Promise((r) => setTimeout(r, 5000)); });`);
  const b = f.file('b.test.mjs', `test('b', () => {});`);
  const boots = [];
  const r = await runSandboxJobs([
    { label: 'a', files: [a], env: {}, args: [] },
    { label: 'b', files: [b], env: {}, args: [] },
  ], { results: f.results, fileTimeoutS: 60, idleTimeoutS: 300, retries: 1, run: fakeSandbox(f.dir, boots), tap, log: noLog });
  assert.equal(boots.length, 3, 'two attempts at a, then one boot for b');
  assert.equal(r[0].attempts, 2);
  assert.equal(r[0].status, 125);
  assert.equal(r[0].pass, 0);
  assert.deepEqual([r[1].pass, r[1].fail, r[1].status], [1, 0, 0]);
});

test('a job with its own retries gets that many more attempts than the rest', async () => {
  const f = fixture();
  // a dies the sandbox on its first three attempts, then passes: retries 1 would give up, its own 3 do not.
  const tries = join(f.dir, 'a-tries');
  const a = f.file('a.test.mjs', `import { readFileSync } from 'node:fs';\ntest('a', async () => { const n = existsSync(${JSON.stringify(tries)}) ? Number(readFileSync(${JSON.stringify(tries)}, 'utf8')) : 0; writeFileSync(${JSON.stringify(tries)}, String(n + 1)); if (n < 3) { writeFileSync(${JSON.stringify(join(f.dir, 'die'))}, ''); await new Promise((r) => setTimeout(r, 5000)); } });`);
  const boots = [];
  const r = await runSandboxJobs([
    { label: 'a', files: [a], env: {}, args: [], retries: 3 },
  ], { results: f.results, fileTimeoutS: 60, idleTimeoutS: 300, retries: 1, run: fakeSandbox(f.dir, boots), tap, log: noLog });
  assert.equal(boots.length, 4);
  assert.deepEqual([r[0].pass, r[0].fail, r[0].attempts, r[0].status], [1, 0, 4, 0]);
});

test('a job that ran past its time limit is killed with everything it started, and counts as failed', async () => {
  const f = fixture();
  const pidFile = join(f.dir, 'grandchild.pid');
  const a = f.file('a.test.mjs', `import { spawn } from 'node:child_process';\ntest('hangs', async () => { const c = spawn('sleep', ['300'], { stdio: 'ignore' }); writeFileSync(${JSON.stringify(pidFile)}, String(c.pid)); await new Promise(() => {}); });`);
  const b = f.file('b.test.mjs', `test('b', () => {});`);
  const boots = [];
  const r = await runSandboxJobs([
    { label: 'a', files: [a], env: {}, args: [] },
    { label: 'b', files: [b], env: {}, args: [] },
  ], { results: f.results, fileTimeoutS: 3, idleTimeoutS: 300, retries: 2, run: fakeSandbox(f.dir, boots), tap, log: noLog });
  assert.equal(boots.length, 1);
  assert.notEqual(r[0].status, 0);
  assert.equal(JSON.parse(readFileSync(join(f.results, 'a.done'), 'utf8')).timedOut, true);
  const pid = Number(readFileSync(pidFile, 'utf8'));
  await new Promise((res) => setTimeout(res, 200));
  // Gone, or a zombie whose new parent (this container's init) has not reaped it yet.
  const state = existsSync(`/proc/${pid}/stat`) ? readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /, '')[0] : 'gone';
  assert.match(state, /^(gone|Z|X)$/, 'the sleep the job started is no longer running');
  assert.equal(r[1].pass, 1);
});

test('a job whose record the dead sandbox did not write back (an empty .done) runs again', async () => {
  const f = fixture();
  const a = f.file('a.test.mjs', `test('a', () => {});`);
  const once = join(f.dir, 'b-tried');
  // b empties a's record (what a sandbox that dies before writing back leaves) and dies once.
  const b = f.file('b.test.mjs', `test('b', async () => { if (!existsSync(${JSON.stringify(once)})) { writeFileSync(${JSON.stringify(once)}, ''); writeFileSync(${JSON.stringify(join(f.results, 'a.done'))}, ''); writeFileSync(${JSON.stringify(join(f.dir, 'die'))}, ''); await new Promise((r) => setTimeout(r, 5000)); } });`);
  const boots = [];
  const r = await runSandboxJobs([
    { label: 'a', files: [a], env: {}, args: [] },
    { label: 'b', files: [b], env: {}, args: [] },
  ], { results: f.results, fileTimeoutS: 60, idleTimeoutS: 300, retries: 2, run: fakeSandbox(f.dir, boots), tap, log: noLog });
  assert.equal(boots.length, 2);
  assert.deepEqual(r.map((x) => [x.label, x.pass, x.fail, x.attempts, x.status]), [['a', 1, 0, 2, 0], ['b', 1, 0, 2, 0]]);
});

test('a job whose every failing test saw a guest triple fault or a silent guest runs once more in the same boot; a second failure stands', async () => {
  const f = fixture();
  const tag = JSON.stringify(TRIPLE_FAULT_TAG);
  // a: fails tagged on its first run only; b: fails tagged every time; c: one tagged and one plain failure.
  const once = join(f.dir, 'a-tried');
  const a = f.file('a.test.mjs', `test('a', () => { if (!existsSync(${JSON.stringify(once)})) { writeFileSync(${JSON.stringify(once)}, ''); throw new Error('no shell prompt\\n' + ${tag}); } });`);
  const b = f.file('b.test.mjs', `test('b', () => { throw new Error('no shell prompt\\n' + ${JSON.stringify(SILENT_GUEST_TAG)}); });`);
  const c = f.file('c.test.mjs', `test('c1', () => { throw new Error(${tag}); });\ntest('c2', () => { throw new Error('plain'); });`);
  const boots = [];
  const r = await threeJobs(f, [a, b, c], boots);
  assert.equal(boots.length, 1);
  assert.deepEqual(r.map((x) => [x.label, x.pass, x.fail, x.attempts, x.faultReruns, x.status === 0]),
    [['a', 1, 0, 2, 1, true], ['b', 0, 1, 2, 1, false], ['c', 0, 2, 1, 0, false]]);
  // The first run's TAP is kept beside the job's.
  assert.ok(existsSync(join(f.results, 'a.sandbox-fault-1.tap')));
  assert.match(boots[0].stdout, /a: every failing test saw a guest triple fault or a silent guest/);
});

test('steady time: a clock jump between two ticks counts as 1 s and is recorded; ordinary gaps count in full', () => {
  let t = 5000;
  const c = steadyClock(() => t);
  t += 1000; c.tick();
  t += 30_000; c.tick(); // a slow tick (the sandbox was busy): counted
  t += 23_400_000; c.tick(); // the host was paused for 6.5 h: its TSC moved on
  t += 1000; c.tick();
  t -= 2000; c.tick(); // backwards: a jump too
  assert.equal(c.elapsedMs, 1000 + 30_000 + 1000 + 1000 + 1000);
  assert.deepEqual(c.jumps, [{ atMs: 31_000, s: 23_400 }, { atMs: 33_000, s: -2 }]);
  assert.ok(CLOCK_JUMP_S > 30 && CLOCK_JUMP_S < 600);
});

test('a failed job reruns after a clock jump (timed out or not) or when every failure is a tagged sandbox fault; not otherwise', () => {
  const f = fixture();
  const plain = join(f.dir, 'plain.tap');
  writeFileSync(plain, 'TAP version 13\nnot ok 1 - t\n  ---\n  error: |-\n    plain\n  ...\n');
  const tagged = join(f.dir, 'tagged.tap');
  writeFileSync(tagged, `TAP version 13\nnot ok 1 - t\n  ---\n  error: |-\n    x\n    ${TRIPLE_FAULT_TAG}\n  ...\n`);
  const jump = [{ atMs: 100_000, s: 23_400 }];
  assert.equal(rerunReason({ status: 0, clockJumps: jump }, plain), null, 'a job that passed is not rerun');
  assert.match(rerunReason({ status: 137, timedOut: true, clockJumps: jump }, plain), /clock jumped 23400 s/);
  assert.match(rerunReason({ status: 1, clockJumps: jump }, plain), /clock jumped/);
  assert.match(rerunReason({ status: 1, clockJumps: [] }, tagged), /triple fault/);
  assert.equal(rerunReason({ status: 1, clockJumps: [] }, plain), null);
  assert.equal(rerunReason({ status: 137, timedOut: true }, tagged), null, 'killed for its time without a jump: not rerun');
  assert.equal(rerunReason(null, tagged), null);
});

test('the e2e helpers tag failures with the same text, on the reset lines the VMM writes', () => {
  const repo = new URL('../../', import.meta.url).pathname;
  const guest = readFileSync(join(repo, 'test/e2e/lib/guest.ts'), 'utf8');
  assert.ok(guest.includes(`export const TRIPLE_FAULT_TAG = '${TRIPLE_FAULT_TAG}';`), 'guest.ts and run-files.mjs name the same tag');
  assert.ok(guest.includes(`export const SILENT_GUEST_TAG = '${SILENT_GUEST_TAG}';`), 'and the same silent-guest tag');
  // The lines src/vmm/vm.ts writes on a triple fault (its warning, and its -v log line).
  const vm = readFileSync(join(repo, 'src/vmm/vm.ts'), 'utf8');
  assert.ok(vm.includes('warning: guest reset by a ${reason}') && vm.includes('guest reset (${reason}): rebooting'), 'vm.ts still writes the lines the helpers look for');
  assert.ok(guest.includes('/guest reset (by a |\\()triple fault/'));
});
