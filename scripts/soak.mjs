#!/usr/bin/env node
// npm run soak: the long robustness runs that npm test does not do (issue 14, "soak and load").
//  cycles  inside one scripts/kvm-sandbox boot: STV_SOAK_CYCLES (200) boot/poweroff cycles of one
//          long-lived `stratovisor --api-socket` VMM (vm.create → vm.boot → guest poweroff →
//          vm.delete), sampling its /proc/PID fd, task and maps counts and VmSize every
//          STV_SOAK_EVERY (10) cycles, and taps on the host; then STV_SOAK_PROCESS_CYCLES (20)
//          boot/poweroff cycles of a fresh `stratovisor` process each, sampling the sandbox's taps,
//          stray VMM processes and the runner's own fds (bench/soak_load.ts);
//  multi   in the same boot: STV_SOAK_VMS (8) VMs at once, each booting to init and running the
//          virtio-blk read/write and virtio-rng checks over its serial console, all powered off;
//  api     in the same boot: STV_SOAK_API_REQUESTS (1e5) fuzzed API requests (the generators of
//          src/api/fuzz.test.ts) against a VMM with a running guest; afterwards vmm.ping and
//          vm.info answer correctly and the guest still answers on its serial console;
//  fuzz    on this host, in-process: STV_SOAK_FUZZ_OPS (1e6) fuzzed virtqueue operations per
//          device (blk, net, console, rng, vsock; the fuzzers of src/virtio with STV_FUZZ_OPS).
// STV_SOAK_ONLY=cycles,multi,api,fuzz picks parts; STV_FUZZ_SEED / STV_SOAK_SEED replay a run (the
// seeds are printed). Exits non-zero on any leak or failure; ends with a summary.
import { spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { tmpdir } from 'node:os';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { ensureGuestImages, REPO } from './lib/images.mjs';
import { ensureNodeModules, build, log } from './lib/setup.mjs';
import { runInSandbox } from './lib/sandbox.mjs';

const PARTS = ['cycles', 'multi', 'api', 'fuzz'];
const only = process.env.STV_SOAK_ONLY ? process.env.STV_SOAK_ONLY.split(',').map((s) => s.trim()) : PARTS;
for (const p of only) {
  if (!PARTS.includes(p)) {
    log(`STV_SOAK_ONLY: unknown part '${p}' (known: ${PARTS.join(', ')})`);
    process.exit(2);
  }
}
ensureNodeModules();
if (!build()) process.exit(1);

/** { part, ok, figures: [[name, value]...], why? } of each part, for the summary. */
const results = [];

// (d) The in-process virtqueue fuzzers, one device at a time, each to STV_SOAK_FUZZ_OPS operations.
const FUZZERS = [
  { device: 'blk', file: 'src/virtio/fuzz.test.js' },
  { device: 'console', file: 'src/virtio/fuzz.test.js' },
  { device: 'rng', file: 'src/virtio/fuzz.test.js' },
  { device: 'net', file: 'src/virtio/net/fuzz.test.js' },
  { device: 'vsock', file: 'src/virtio/vsock/fuzz.test.js' },
];

function runFuzzer({ device, file }, ops) {
  return new Promise((resolve) => {
    const seedNote = process.env.STV_FUZZ_SEED !== undefined ? ` STV_FUZZ_SEED=${process.env.STV_FUZZ_SEED}` : '';
    log(`fuzz ${device}: ${ops} virtqueue operations${seedNote}`);
    // Images of the block fuzzer on a tmpfs: its FLUSH requests fdatasync, which a disk makes slow.
    const tmp = existsSync('/dev/shm') ? '/dev/shm' : tmpdir();
    const env = { ...process.env, STV_FUZZ_OPS: String(ops), STV_FUZZ_DEVICES: device, TMPDIR: tmp };
    const child = spawn(process.execPath, ['--test', '--test-reporter=tap', join(REPO, 'dist', file)], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (b) => { out += b.toString(); });
    child.stderr.on('data', (b) => { out += b.toString(); });
    child.on('close', (code) => {
      const m = [...out.matchAll(/@@fuzz:(\{[^@]*\})@@/g)].map((x) => JSON.parse(x[1])).find((f) => f.device === device);
      const failed = code !== 0 || m === undefined;
      if (failed) process.stderr.write(out.split('\n').filter((l) => !/^\s*# Subtest|^\s*ok /.test(l)).slice(-60).join('\n') + '\n');
      resolve({ device, ok: !failed, code, ...(m ?? {}) });
    });
  });
}

if (only.includes('fuzz')) {
  const ops = Number(process.env.STV_SOAK_FUZZ_OPS ?? 1e6);
  const devices = process.env.STV_SOAK_FUZZ_DEVICES ? process.env.STV_SOAK_FUZZ_DEVICES.split(',') : FUZZERS.map((f) => f.device);
  const rows = [];
  for (const f of FUZZERS.filter((x) => devices.includes(x.device))) {
    const r = await runFuzzer(f, ops);
    rows.push(r);
    const line = r.ops !== undefined
      ? `fuzz ${r.device}: ${r.ops} ops (${r.cases} cases) in ${(r.ms / 1000).toFixed(1)} s = ${Math.round(r.ops / (r.ms / 1000))} ops/s, seed ${r.seed}: ${r.ok ? 'ok' : 'FAILED'}`
      : `fuzz ${r.device}: FAILED (exit ${r.code}, no figures)`;
    console.log(line);
  }
  results.push({
    part: 'fuzz', ok: rows.length > 0 && rows.every((r) => r.ok),
    figures: rows.map((r) => [`${r.device}`, r.ops !== undefined ? `${r.ops} ops, ${(r.ms / 1000).toFixed(0)} s, ${Math.round(r.ops / (r.ms / 1000))} ops/s, seed ${r.seed}${r.ok ? '' : ' FAILED'}` : 'FAILED']),
  });
}

// (a)-(c) in one sandbox boot: bench/soak_load.ts prints @@soak:{...}@@ per part.
const inSandbox = only.filter((p) => p !== 'fuzz');
if (inSandbox.length > 0) {
  const images = ensureGuestImages({ log });
  process.env.STV_GUEST_BZIMAGE = images.bzImage;
  process.env.STV_GUEST_VMLINUX = images.vmlinux;
  process.env.STV_GUEST_INITRAMFS = images.initramfs;
  // The inner load appends one JSON line per part to this file (the sandbox shares the host's /).
  const resultFile = join(REPO, '.cache', 'soak', `result-${process.pid}.jsonl`);
  mkdirSync(dirname(resultFile), { recursive: true });
  rmSync(resultFile, { force: true });
  process.env.STV_SOAK_PARTS = inSandbox.join(',');
  process.env.STV_SOAK_RESULT = resultFile;
  const rc = await runInSandbox([process.execPath, join(REPO, 'dist', 'bench', 'soak_load.js')]);
  const seen = new Set();
  const lines = existsSync(resultFile) ? readFileSync(resultFile, 'utf8').split('\n').filter((l) => l.trim() !== '') : [];
  for (const l of lines) {
    const r = JSON.parse(l);
    seen.add(r.part);
    results.push(r);
  }
  for (const p of inSandbox) if (!seen.has(p)) results.push({ part: p, ok: false, figures: [], why: `no result from the sandbox (exit ${rc})` });
}

console.log('\n== soak summary ==');
for (const r of results) {
  console.log(`${r.ok ? 'ok  ' : 'FAIL'} ${r.part}${r.why ? `: ${r.why}` : ''}`);
  for (const [k, v] of r.figures) console.log(`       ${k}: ${v}`);
}
process.exit(results.every((r) => r.ok) ? 0 : 1);
