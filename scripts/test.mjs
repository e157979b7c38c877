#!/usr/bin/env node
// npm test: unit tests on the host; the tiny-guest KVM unit tests on this host's /dev/kvm, or
// inside scripts/kvm-sandbox when the host has none; then the e2e suite, one sandbox boot per file,
// with Debian 6.1 guests, and the boot and virtio e2e files once more with each further guest
// kernel (6.12). Prints the time per file and one closing line:
//   "tests: N passed, N failed, N skipped".
// Env: STV_TEST_ONLY=unit|e2e, STV_E2E_FILTER=regex on e2e file names, STV_TEST_NAME=regex on test
// names, STV_GUEST_KERNELS (comma list, default "6.1,6.12"; the first is the main guest kernel),
// STV_E2E_KERNEL_FILTER (regex on the base names of the e2e files that run again on the further
// kernels; "^(boot|virtio)\.test\.js$").
import { readdirSync, existsSync, readFileSync, mkdirSync, rmSync } from 'node:fs';
import { basename, join, relative } from 'node:path';
import { ensureGuestImages, REPO, CACHE } from './lib/images.mjs';
import { ensureNodeModules, build, log } from './lib/setup.mjs';
import { ensurePackages } from './lib/deps.mjs';
import { spawnWait, hostFacts, chooseSandboxMode } from './lib/sandbox.mjs';
import { tapCounts, tapFailures } from './lib/tap.mjs';
import { runSandboxJobs } from './lib/run-files.mjs';

/** Debian packages the browser tests need on the host (the sandbox runs this machine's /): the
 * console page's unit test (src/console/page.test.ts) and the console e2e file. */
const E2E_PACKAGES = ['chromium'];

function findTests(dir, re) {
  const out = [];
  if (!existsSync(dir)) return out;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...findTests(p, re));
    else if (re.test(e.name)) out.push(p);
  }
  return out.sort();
}

async function runNodeTests(label, files, { sandbox = false, env = {}, concurrency } = {}) {
  // Per checkout: worktrees that share one .cache (a symlink) do not overwrite each other's results.
  const results = join(CACHE, 'test-results', basename(REPO));
  const tap = join(results, `${label}.tap`);
  mkdirSync(results, { recursive: true });
  rmSync(tap, { force: true });
  const args = ['--test', '--test-reporter=spec', '--test-reporter-destination=stdout', '--test-reporter=tap', `--test-reporter-destination=${tap}`];
  if (concurrency) args.push(`--test-concurrency=${concurrency}`);
  if (process.env.STV_TEST_NAME) args.push(`--test-name-pattern=${process.env.STV_TEST_NAME}`);
  args.push(...files.map((f) => relative(REPO, f)));
  log(`${label}: ${files.length} test files${sandbox ? ' inside scripts/kvm-sandbox' : ''}`);
  const cmd = sandbox ? [join(REPO, 'scripts', 'kvm-sandbox'), process.execPath, ...args] : [process.execPath, ...args];
  const status = await spawnWait(cmd[0], cmd.slice(1), { stdio: ['ignore', 'inherit', 'inherit'], env: { ...process.env, ...env } });
  const counts = tapCounts(tap);
  counts.failures = tapFailures(tap);
  counts.label = label;
  counts.status = status;
  // scripts/kvm-sandbox: 124 timed out, 125 the sandbox failed (see its console tail above).
  counts.sandboxFailed = sandbox && (status === 124 || status === 125);
  return counts;
}

/** The runner itself failed (sandbox error, crash) with no test failing: count it, so the run cannot pass. */
function countRunnerFailure(c) {
  if (c.status !== 0 && c.fail === 0) {
    log(`${c.label}: exited with status ${c.status} without a failing test reported`);
    c.fail += 1;
  }
  return c;
}

async function main() {
  const only = process.env.STV_TEST_ONLY;
  ensureNodeModules();
  if (!build()) {
    log('build failed');
    process.stdout.write('tests: 0 passed, 1 failed\n');
    process.exit(1);
  }
  const kernels = (process.env.STV_GUEST_KERNELS ?? '6.1,6.12').split(',').map((k) => k.trim()).filter(Boolean);
  const imagesOf = (kernel) => {
    const i = ensureGuestImages({ log, kernel });
    return { STV_GUEST_KERNEL: kernel, STV_GUEST_BZIMAGE: i.bzImage, STV_GUEST_VMLINUX: i.vmlinux, STV_GUEST_INITRAMFS: i.initramfs };
  };
  const env = imagesOf(kernels[0]);
  const total = { pass: 0, fail: 0, skipped: 0 };
  const times = [];
  const add = (c) => {
    total.pass += c.pass; total.fail += c.fail; total.skipped += c.skipped + c.todo;
    times.push([c.label, c.ms, c.pass, c.fail, c.skipped + c.todo, c.attempts ?? 1, c.faultReruns ?? 0]);
    for (const f of c.failures ?? []) failures.push({ label: c.label, ...f });
  };
  const failures = [];

  // Sandbox jobs (the KVM unit tests when the host has no hardware KVM, then each e2e file), one
  // guest at a time (the sandbox has 2 vCPUs), all in ONE sandbox boot by default
  // (scripts/lib/run-files.mjs runs them one after another; STV_E2E_BATCH=0: one boot per job, as
  // before). When the sandbox dies (its L1 kernel panicked or locked up under TCG's SVM emulation)
  // a fresh one goes on where it stopped, so a death costs the job it was in. Limits per job: 20
  // minutes in all (STV_SANDBOX_TIMEOUT), and 6 minutes without any output (the reporter prints
  // each test as it ends; the longest takes ~100 s): a sandbox whose CPUs are stuck in an inner
  // guest prints nothing, and is then killed with its CPU state saved.
  const fileTimeoutS = Number(process.env.STV_SANDBOX_TIMEOUT ?? 1200);
  const idleTimeoutS = Number(process.env.STV_SANDBOX_IDLE_TIMEOUT ?? 360);
  const sandboxRetries = Number(process.env.STV_E2E_SANDBOX_RETRIES ?? 2);
  const batch = process.env.STV_E2E_BATCH !== '0';
  const jobs = [];
  const job = (label, files, jobEnv, idleS = idleTimeoutS, extraArgs = [], retries = undefined) => {
    const args = ['--test-concurrency=1', ...extraArgs];
    if (process.env.STV_TEST_NAME) args.push(`--test-name-pattern=${process.env.STV_TEST_NAME}`);
    jobs.push({ label, files: files.map((f) => relative(REPO, f)), env: jobEnv, args, idleS, retries });
  };
  if (only !== 'e2e') {
    const unit = [
      ...findTests(join(REPO, 'dist', 'src'), /\.test\.js$/),
      ...findTests(join(REPO, 'scripts', 'test'), /\.test\.mjs$/),
    ];
    // Tests that run tiny guests on /dev/kvm (they import the KVM test guest): on the host when
    // its /dev/kvm is hardware KVM (the sandbox would run "direct"), else inside the sandbox, whose
    // nested KVM runs them. A PVM /dev/kvm (kvm_pvm: opens, runs most tiny guests, but fails to
    // emulate SSE in them and cannot run stock kernels) counts as none.
    const needsKvm = (f) => f.endsWith('.js') && readFileSync(f, 'utf8').includes('testguest.js');
    const kvmMode = chooseSandboxMode(hostFacts());
    const hostKvm = kvmMode.mode === 'direct';
    const kvmUnit = hostKvm ? [] : unit.filter(needsKvm);
    // The console page's test drives Debian's headless Chromium; without it (not root, no apt) it skips, saying so.
    if (unit.some((f) => basename(f) === 'page.test.js')) {
      try { ensurePackages(E2E_PACKAGES, { log }); } catch (e) { log(`${e.message}: the console page test will skip`); }
    }
    // The ACPI tables' tests disassemble the DSDT with ACPICA's iasl; without it they skip, saying so.
    try { ensurePackages(['acpica-tools'], { log }); } catch (e) { log(`${e.message}: the iasl checks of the ACPI tables will skip`); }
    const t0 = Date.now();
    const c = await runNodeTests('unit', unit.filter((f) => !kvmUnit.includes(f)), { env });
    c.ms = Date.now() - t0;
    add(countRunnerFailure(c));
    if (kvmUnit.length) {
      log(`unit-kvm: ${kvmMode.reason}; ${kvmUnit.length} KVM unit test files run inside scripts/kvm-sandbox (its nested KVM)`);
      // Its tests take seconds each (the longest ~6 s in the sandbox): a sandbox silent for 3
      // minutes has locked up (seen in about every other first run, after the irqchip tests), so
      // it is retried sooner than an e2e file would be.
      // The sandbox's own kernel locks up in these (KVM state save/restore under nested SVM on
      // TCG: an RCU stall, then soft lockups with a CPU in node) in about one boot of three; a try
      // costs ~20 s, so it gets two more than the e2e files' STV_E2E_SANDBOX_RETRIES.
      job('unit-kvm', kvmUnit, env, Number(process.env.STV_SANDBOX_IDLE_TIMEOUT ?? 180), [], sandboxRetries + 2);
    }
  }
  if (only !== 'unit') {
    const filter = process.env.STV_E2E_FILTER ? new RegExp(process.env.STV_E2E_FILTER) : null;
    const e2e = findTests(join(REPO, 'dist', 'test', 'e2e'), /\.test\.js$/).filter((f) => !filter || filter.test(f));
    // The web console's e2e file drives the page in Debian's headless Chromium (never a downloaded browser).
    if (e2e.some((f) => basename(f) === 'console.test.js')) ensurePackages(E2E_PACKAGES, { log });
    for (const file of e2e) job(`e2e-${basename(file, '.test.js')}`, [file], env);
    // The same boot and virtio files with each further guest kernel, their consoles under
    // .cache/e2e-logs/linux-<kernel>/.
    const again = new RegExp(process.env.STV_E2E_KERNEL_FILTER ?? '^(boot|virtio)\\.test\\.js$');
    for (const kernel of kernels.slice(1)) {
      const kenv = { ...imagesOf(kernel), STV_E2E_LOG_SUBDIR: `linux-${kernel}` };
      for (const file of e2e.filter((f) => again.test(basename(f)) && !/qemu/.test(basename(f)))) {
        // Of boot.test.js's matrix (bzImage and vmlinux x 1/2/4 vCPUs x memory sizes: what the
        // VMM sets up) the further kernels boot the 2-vCPU case of each format and the reboot,
        // which is what differs between guest kernels (STV_E2E_KERNEL_TESTS, a test name regex).
        const names = basename(file) === 'boot.test.js' && !process.env.STV_TEST_NAME
          ? [`--test-name-pattern=${process.env.STV_E2E_KERNEL_TESTS ?? 'with 2 vCPU|reboot'}`] : [];
        job(`e2e-${basename(file, '.test.js')}@linux-${kernel}`, [file], kenv, idleTimeoutS, names);
      }
    }
  }
  if (jobs.length) {
    const groups = batch ? [jobs] : jobs.map((j) => [j]);
    const results = join(CACHE, 'test-results', basename(REPO));
    for (const g of groups) {
      const run = (argv, runEnv) => spawnWait(join(REPO, 'scripts', 'kvm-sandbox'), argv, { stdio: ['ignore', 'inherit', 'inherit'], env: { ...process.env, ...runEnv } });
      const done = await runSandboxJobs(g, { results, fileTimeoutS, idleTimeoutS, retries: sandboxRetries, run, tap: { counts: tapCounts, failures: tapFailures }, log });
      for (const c of done) add(countRunnerFailure(c));
    }
  }
  const fmtS = (ms) => `${(ms / 1000).toFixed(0)} s`;
  // Again at the end (CI shows the tail of a long log): what failed, and why.
  if (failures.length) {
    process.stdout.write(`\nfailed (${failures.length}):\n${failures.map((f) => `  [${f.label}] ${f.name}\n${f.error.map((l) => `      ${l}`).join('\n')}`).join('\n')}\n`);
  }
  process.stdout.write(`\ntime per file:\n${times.map(([l, ms, p, f, sk, a, tf]) => `  ${l.padEnd(40)} ${fmtS(ms).padStart(7)}  ${p} passed, ${f} failed, ${sk} skipped${a > 1 ? `, ${a} attempts` : ''}${tf > 0 ? ` (${tf} rerun after a guest triple fault, a silent guest or a sandbox clock jump)` : ''}`).join('\n')}\n`);
  process.stdout.write(`\ntests: ${total.pass} passed, ${total.fail} failed, ${total.skipped} skipped\n`);
  process.exit(total.fail ? 1 : 0);
}

main().catch((e) => {
  log(e instanceof Error ? e.message : String(e));
  process.stdout.write('tests: 0 passed, 1 failed\n');
  process.exit(1);
});
