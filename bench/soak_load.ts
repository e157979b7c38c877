// The inner load of `npm run soak` (scripts/soak.mjs), run inside one scripts/kvm-sandbox boot.
// Parts (STV_SOAK_PARTS, comma list):
//  cycles  STV_SOAK_CYCLES (200) boot/poweroff cycles of ONE `stratovisor --api-socket` process
//          (vm.create → vm.boot → the guest powers off → Shutdown → vm.delete; disk, tap and rng
//          devices), its /proc/PID fd, task, maps and VmSize sampled every STV_SOAK_EVERY (10)
//          cycles, the tap checked gone after each; then STV_SOAK_PROCESS_CYCLES (20) cycles of a
//          fresh `stratovisor` process each (the same devices), checking for taps and VMM processes
//          left behind and for fds the runner itself leaks. The fresh processes run first; with
//          STV_SOAK_TIME_S the long-lived VMM's cycles stop when that much time (from the load's
//          start) is nearly used up, and say so.
//  multi   STV_SOAK_VMS (8) VMs at once, each booting to its shell, running the virtio-blk
//          read/write check (guest/scenarios/blk.sh: host files read, guest files written and read
//          back with debugfs) and the virtio-rng check (rng.sh), then powering off.
//  api     STV_SOAK_API_REQUESTS (1e5) fuzzed API requests (src/api/testing/fuzz_cases.ts, seed
//          STV_SOAK_SEED) to a VMM whose guest sits at its shell; afterwards vmm.ping and vm.info
//          answer correctly, the guest answers a command on its serial console, the VMM's fd
//          count did not grow, and the VM shuts down cleanly. STV_SOAK_API_S bounds the sending time.
// Each part appends one JSON line {part, ok, figures: [[name, value]], why?} to STV_SOAK_RESULT
// and prints it as @@soak:{...}@@.
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import { guestImages, LOG_DIR, parseMarkers, type Marker } from '../test/e2e/lib/guest.js';
import { STRATOVISOR } from '../test/e2e/lib/stratovisor.js';
import { debugfsCat, deleteTap, makeHostDisk, sha256, tapExists } from '../test/e2e/lib/virtio.js';
import { waitForPing } from '../src/api/testing/spawn_vmm.js';
import { request } from '../src/api/test_server.fixture.js';
import { listOperations } from '../src/api/validate.js';
import { ApiFuzzer } from '../src/api/testing/fuzz_cases.js';
import { countFromEnv, mulberry32, seedFromEnv } from '../src/testing/prng.js';

const img = guestImages();
const TMP = process.env.TMPDIR ?? tmpdir();
const parts = (process.env.STV_SOAK_PARTS ?? 'cycles,multi,api').split(',').map((s) => s.trim());
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const LOAD_T0 = performance.now();
const log = (s: string) => process.stdout.write(`# soak ${new Date().toISOString().slice(11, 19)} ${s}\n`);

interface PartResult { part: string; ok: boolean; figures: Array<[string, string]>; why?: string }

function report(r: PartResult): void {
  const line = JSON.stringify(r);
  process.stdout.write(`@@soak:${line}@@\n`);
  if (process.env.STV_SOAK_RESULT) appendFileSync(process.env.STV_SOAK_RESULT, line + '\n');
}

const median = (xs: number[]): number => {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) >> 1]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};
const secs = (ms: number) => `${(ms / 1000).toFixed(1)} s`;

// ---------------------------------------------------------------------------------------------
// A VMM process: its serial console on stdout (markers), stderr kept, a log file at the end.

class Vmm {
  out = '';
  err = '';
  readonly markers: Marker[] = [];
  readonly child: ChildProcessWithoutNullStreams;
  readonly exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private scanFrom = 0;
  private waiters: Array<() => void> = [];
  exited = false;

  constructor(readonly name: string, args: string[]) {
    this.child = spawn(process.execPath, [STRATOVISOR, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.child.stdin.on('error', () => {});
    this.child.stdout.on('data', (b: Buffer) => {
      this.out += b.toString('latin1');
      const nl = this.out.lastIndexOf('\n');
      if (nl >= this.scanFrom) {
        for (const m of parseMarkers(this.out.slice(this.scanFrom, nl + 1))) this.markers.push({ ...m, atMs: 0 });
        this.scanFrom = nl + 1;
      }
      this.wake();
    });
    this.child.stderr.on('data', (b: Buffer) => { this.err += b.toString('latin1'); });
    this.exit = new Promise((resolve) => {
      this.child.on('close', (code, signal) => {
        this.exited = true;
        this.save(`[exit ${code ?? signal}]`);
        this.wake();
        resolve({ code, signal });
      });
    });
  }

  get pid(): number { return this.child.pid!; }

  save(trailer = ''): string {
    mkdirSync(LOG_DIR, { recursive: true });
    const f = join(LOG_DIR, `soak-${this.name}.log`);
    // A long-lived VMM's console grows with every cycle: keep its last 200 kB.
    writeFileSync(f, `${this.out.slice(-200_000)}\n--- stderr ---\n${this.err.slice(-50_000)}\n${trailer}\n`);
    return f;
  }

  private wake(): void { const w = this.waiters; this.waiters = []; for (const f of w) f(); }

  count(event: string, data?: string): number {
    let n = 0;
    for (const m of this.markers) if (m.event === event && (data === undefined || m.data === data)) n++;
    return n;
  }

  /** Wait until `pred()` holds; throws when the process exits first or after timeoutMs. */
  async until(what: string, pred: () => boolean, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!pred()) {
      if (this.exited) throw new Error(`${this.name}: the VMM exited before ${what}\n${this.explain()}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${this.name}: no ${what} within ${timeoutMs / 1000} s\n${this.explain()}`);
      await Promise.race([new Promise<void>((r) => this.waiters.push(r)), sleep(Math.min(left, 1000))]);
    }
  }

  send(s: string): void { this.child.stdin.write(s); }

  explain(lines = 20): string {
    return `log: ${this.save()}\n--- last console lines ---\n${this.out.split('\n').slice(-lines).join('\n')}\n--- stderr ---\n${this.err.slice(-2000)}`;
  }

  kill(): void { if (!this.exited) this.child.kill('SIGKILL'); }
}

// ---------------------------------------------------------------------------------------------
// What a process holds: /proc/PID.

interface Sample { cycle: number; fds: number; threads: number; maps: number; vmSizeKiB: number; rssKiB: number }

function sampleOnce(pid: number, cycle: number): Sample {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(status)?.[1] ?? NaN);
  return {
    cycle,
    fds: readdirSync(`/proc/${pid}/fd`).length,
    threads: readdirSync(`/proc/${pid}/task`).length,
    maps: readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').filter((l) => l !== '').length,
    vmSizeKiB: kib('VmSize'),
    rssKiB: kib('VmRSS'),
  };
}

/**
 * A settled sample: the smallest of three taken 300 ms apart (an API connection being closed or a
 * worker thread being reaped is not a leak; a leak stays).
 */
async function sample(pid: number, cycle: number): Promise<Sample> {
  const s: Sample[] = [];
  for (let i = 0; i < 3; i++) {
    if (i > 0) await sleep(300);
    s.push(sampleOnce(pid, cycle));
  }
  const min = (k: keyof Sample) => Math.min(...s.map((x) => x[k]));
  return { cycle, fds: min('fds'), threads: min('threads'), maps: min('maps'), vmSizeKiB: min('vmSizeKiB'), rssKiB: min('rssKiB') };
}

const fmtSample = (s: Sample) => `fds ${s.fds}, threads ${s.threads}, maps ${s.maps}, VmSize ${Math.round(s.vmSizeKiB / 1024)} MiB, RSS ${Math.round(s.rssKiB / 1024)} MiB`;

/** Growth from `base` to `s` beyond what a non-leak explains; [] when none. */
function leaks(base: Sample, s: Sample, guestMiB: number): string[] {
  const out: string[] = [];
  if (s.fds > base.fds + 2) out.push(`fds ${base.fds} → ${s.fds}`);
  if (s.threads > base.threads) out.push(`threads ${base.threads} → ${s.threads}`);
  if (s.maps > base.maps + 64) out.push(`maps ${base.maps} → ${s.maps}`);
  // A leaked guest RAM mapping is guestMiB; V8's heap reservations move by less.
  if (s.vmSizeKiB > base.vmSizeKiB + (guestMiB * 1024) / 2) out.push(`VmSize ${base.vmSizeKiB} → ${s.vmSizeKiB} KiB`);
  return out;
}

const SOAK_TAP = 'stvsoak0';
const netArg = { tap: SOAK_TAP, ip: '192.168.250.1', mask: '255.255.255.0', mac: '52:54:00:5e:fa:02' };

/** Wait up to 5 s for the tap to be gone (its last fd closes as the VM stops). */
async function tapGone(name: string): Promise<boolean> {
  for (let i = 0; i < 25 && tapExists(name); i++) await sleep(200);
  return !tapExists(name);
}

/** Stratovisor processes (dist/src/cli/main.js) still running, other than `except`. */
function vmmProcesses(except: number[] = []): number[] {
  const out: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d) || except.includes(Number(d))) continue;
    try {
      if (readFileSync(`/proc/${d}/cmdline`, 'latin1').includes(STRATOVISOR)) out.push(Number(d));
    } catch { /* gone */ }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// (a) Boot/poweroff cycles: fresh processes first, then one long-lived VMM.

async function cyclesPart(): Promise<PartResult> {
  const cycles = countFromEnv('STV_SOAK_CYCLES', 200);
  const every = Math.max(1, countFromEnv('STV_SOAK_EVERY', 10));
  const procCycles = countFromEnv('STV_SOAK_PROCESS_CYCLES', 20);
  const guestMiB = 256;
  const dir = mkdtempSync(join(TMP, 'stv-soak-cycles-'));
  const disk = join(dir, 'disk.raw');
  writeFileSync(disk, Buffer.alloc(8 << 20));
  const figures: Array<[string, string]> = [];
  const problems: string[] = [];
  deleteTap(SOAK_TAP);

  // Fresh processes: the CLI's own flags, same devices.
  const procMs: number[] = [];
  let procDone = 0;
  const self0 = sampleOnce(process.pid, 0);
  const mem0 = memAvailableMiB();
  const tp = performance.now();
  for (let c = 1; c <= procCycles; c++) {
    const c0 = performance.now();
    const p = new Vmm('cycles-process', [
      '--kernel', img.bzImage, '--initramfs', img.initramfs, '--cmdline', 'console=ttyS0 quiet stv.scenario=poweroff',
      '--cpus', 'boot=1', '--memory', `size=${guestMiB}M`, '--serial', 'tty', '--console', 'off',
      '--disk', `path=${disk}`, '--net', `tap=${netArg.tap},ip=${netArg.ip},mask=${netArg.mask},mac=${netArg.mac}`, '--rng', 'src=/dev/urandom',
    ]);
    const t = setTimeout(() => p.kill(), 300_000);
    const ex = await p.exit;
    clearTimeout(t);
    procMs.push(performance.now() - c0);
    if (ex.code !== 0 || p.count('poweroff') !== 1) {
      problems.push(`process cycle ${c}: exit ${ex.code ?? ex.signal}, ${p.count('poweroff')} poweroff markers\n${p.explain()}`);
      break;
    }
    if (!(await tapGone(SOAK_TAP))) problems.push(`process cycle ${c}: tap ${SOAK_TAP} still exists after the VMM exited`);
    const stray = vmmProcesses();
    if (stray.length) problems.push(`process cycle ${c}: VMM processes still running: ${stray.join(', ')}`);
    procDone = c;
    if (c % every === 0 || c === procCycles) log(`cycles: process ${c}/${procCycles}, median ${secs(median(procMs))}`);
  }
  const self1 = sampleOnce(process.pid, procDone);
  if (self1.fds > self0.fds + 2) problems.push(`the runner's fds grew ${self0.fds} → ${self1.fds} over ${procDone} VMM processes (pipes not closed?)`);
  figures.push(['fresh VMM process per cycle: cycles done', `${procDone} of ${procCycles} in ${secs(performance.now() - tp)}`]);
  if (procMs.length) figures.push(['fresh process: spawn → guest poweroff → exit, median / min / max', `${secs(median(procMs))} / ${secs(Math.min(...procMs))} / ${secs(Math.max(...procMs))}`]);
  figures.push(['fresh processes: taps / VMM processes left, runner fds first → last', `${tapExists(SOAK_TAP) ? 1 : 0} / ${vmmProcesses().length}, ${self0.fds} → ${self1.fds}`]);
  figures.push(['sandbox MemAvailable before → after the fresh processes', `${mem0} → ${memAvailableMiB()} MiB`]);
  // One long-lived VMM.
  const sock = join(dir, 'api.sock');
  const vmm = new Vmm('cycles-api', ['--api-socket', `path=${sock}`]);
  const body = JSON.stringify({
    payload: { kernel: img.bzImage, initramfs: img.initramfs, cmdline: 'console=ttyS0 quiet stv.scenario=poweroff' },
    cpus: { boot_vcpus: 1, max_vcpus: 1 },
    memory: { size: guestMiB << 20 },
    disks: [{ path: disk }],
    net: [netArg],
    rng: { src: '/dev/urandom' },
    serial: { mode: 'Tty' },
    console: { mode: 'Off' },
  });
  const cycleMs: number[] = [];
  const samples: Sample[] = [];
  const timeS = countFromEnv('STV_SOAK_TIME_S', 0);
  let stoppedForTime = false;
  let done = 0;
  const t0 = performance.now();
  try {
    await waitForPing(sock, vmm.child, { timeoutMs: 120_000, explain: () => vmm.explain() });
    samples.push({ ...(await sample(vmm.pid, 0)) });
    log(`cycles: VMM pid ${vmm.pid} up: ${fmtSample(samples[0]!)}`);
    const api = async (method: string, what: string, b?: string): Promise<string> => {
      const r = await request(sock, method, what, b);
      if (r.status !== 200 && r.status !== 204) throw new Error(`cycle ${done + 1}: ${method} ${what} -> ${r.status} ${r.text}\n${vmm.explain()}`);
      return r.text;
    };
    for (let c = 1; c <= cycles; c++) {
      // STV_SOAK_TIME_S: stop starting cycles when the next one would end past the budget.
      if (timeS > 0 && c > 2 && (performance.now() - LOAD_T0) / 1000 + (1.5 * median(cycleMs)) / 1000 > timeS) {
        stoppedForTime = true;
        log(`cycles: stopping after ${c - 1} cycles: STV_SOAK_TIME_S=${timeS} is nearly used up`);
        break;
      }
      const c0 = performance.now();
      await api('PUT', 'vm.create', body);
      await api('PUT', 'vm.boot');
      await vmm.until(`poweroff marker #${c}`, () => vmm.count('poweroff') >= c, 300_000);
      for (let i = 0; ; i++) {
        const st = (JSON.parse(await api('GET', 'vm.info')) as { state: string }).state;
        if (st === 'Shutdown') break;
        if (i > 600) throw new Error(`cycle ${c}: the VM is ${st}, not Shutdown, 60 s after the guest's poweroff\n${vmm.explain()}`);
        await sleep(100);
      }
      cycleMs.push(performance.now() - c0);
      await api('PUT', 'vm.delete');
      if (!(await tapGone(SOAK_TAP))) problems.push(`cycle ${c}: tap ${SOAK_TAP} still exists after the VM stopped`);
      done = c;
      if (c === 1 || c % every === 0 || c === cycles) {
        const s = await sample(vmm.pid, c);
        samples.push(s);
        const base = samples[1]!; // after the first cycle: lazily made threads and caches exist
        const l = leaks(base, s, guestMiB);
        log(`cycles: ${c}/${cycles} done, median ${secs(median(cycleMs))}/cycle: ${fmtSample(s)}${l.length ? `  LEAK? ${l.join(', ')}` : ''}`);
      }
    }
    await request(sock, 'PUT', 'vmm.shutdown');
    const ex = await vmm.exit;
    if (ex.code !== 0) problems.push(`the long-lived VMM exited ${ex.code ?? ex.signal} after vmm.shutdown`);
  } catch (e) {
    problems.push((e as Error).message);
  } finally {
    vmm.kill();
  }
  const first = samples[1];
  const last = samples[samples.length - 1];
  if (first && last && last !== first) {
    const l = leaks(first, last, guestMiB);
    if (l.length) problems.push(`the long-lived VMM grew over ${last.cycle - first.cycle} cycles: ${l.join(', ')}`);
  }
  figures.push(['long-lived VMM (API): cycles done', `${done} of ${cycles} in ${secs(performance.now() - t0)}${stoppedForTime ? ` (stopped: STV_SOAK_TIME_S=${timeS} used up)` : ''}`]);
  figures.push(['long-lived VMM: time per cycle (create→boot→guest poweroff→Shutdown), median / min / max', `${secs(median(cycleMs))} / ${secs(Math.min(...cycleMs))} / ${secs(Math.max(...cycleMs))}`]);
  if (samples[0]) figures.push(['long-lived VMM before the first boot', fmtSample(samples[0])]);
  if (first) figures.push([`after cycle ${first.cycle}`, fmtSample(first)]);
  if (last && last !== first) figures.push([`after cycle ${last.cycle}`, fmtSample(last)]);
  figures.push(['samples (cycle: fds/threads/maps/VmSize MiB)', samples.map((s) => `${s.cycle}:${s.fds}/${s.threads}/${s.maps}/${Math.round(s.vmSizeKiB / 1024)}`).join(' ')]);

  rmSync(dir, { recursive: true, force: true });
  deleteTap(SOAK_TAP);
  return { part: 'cycles', ok: problems.length === 0 && (done === cycles || stoppedForTime) && procDone === procCycles, figures, ...(problems.length ? { why: problems.join('\n') } : {}) };
}

function memAvailableMiB(): number {
  return Math.round(Number(/^MemAvailable:\s+(\d+)/m.exec(readFileSync('/proc/meminfo', 'utf8'))?.[1] ?? NaN) / 1024);
}

// ---------------------------------------------------------------------------------------------
// (b) Several VMs at once.

/** Typed at the guest's shell: the blk and rng scenarios, then power off. */
const CHECKS_LINE = [
  'stv_wait_for() { i=0; while [ ! -e "$1" ]; do [ "$i" -ge "$2" ] && return 1; sleep 1; i=$((i + 1)); done; return 0; }',
  'dmesg -n 1; . /scenarios/blk.sh; . /scenarios/rng.sh; poweroff',
].join('; ') + '\n';

/** The guest's shell is up (its prompt after the shell scenario's marker). */
const atPrompt = (v: Vmm) => v.count('scenario', 'shell') > 0 && v.out.includes('stv# ');

async function multiPart(): Promise<PartResult> {
  const n = countFromEnv('STV_SOAK_VMS', 8);
  const dir = mkdtempSync(join(TMP, 'stv-soak-multi-'));
  const problems: string[] = [];
  const t0 = performance.now();
  const disks = await Promise.all(Array.from({ length: n }, async (_, i) => { const d = join(dir, `vm${i}`); mkdirSync(d); return makeHostDisk(d); }));
  const vms = disks.map((d, i) => new Vmm(`multi-${i}`, [
    '--kernel', img.bzImage, '--initramfs', img.initramfs, '--cmdline', 'console=ttyS0 quiet stv.scenario=shell',
    '--cpus', 'boot=1', '--memory', 'size=256M', '--serial', 'tty', '--console', 'off',
    '--disk', `path=${d.path}`, '--rng', 'src=/dev/urandom',
  ]));
  const tBoot = performance.now();
  log(`multi: ${n} VMMs started (pids ${vms.map((v) => v.pid).join(' ')})`);
  const bootMs: number[] = [];
  const totalMs: number[] = [];
  let peakRunning = 0;
  const peak = setInterval(() => { peakRunning = Math.max(peakRunning, vms.filter((v) => !v.exited && atPrompt(v)).length); }, 500);
  await Promise.all(vms.map(async (v, i) => {
    try {
      await v.until('the shell prompt', () => atPrompt(v), 900_000);
      bootMs.push(performance.now() - tBoot);
      v.send(CHECKS_LINE);
      await v.until('the poweroff marker', () => v.count('poweroff') > 0, 600_000);
      const ex = await Promise.race([v.exit, sleep(60_000).then(() => null)]);
      totalMs.push(performance.now() - tBoot);
      if (ex === null) throw new Error(`vm ${i}: the VMM did not exit within 60 s of the guest's poweroff\n${v.explain()}`);
      if (ex.code !== 0) throw new Error(`vm ${i}: the VMM exited ${ex.code ?? ex.signal}\n${v.explain()}`);
      const errs = v.markers.filter((m) => m.event === 'blk-error' || m.event === 'rng-error' || m.event === 'modules-failed');
      if (errs.length) throw new Error(`vm ${i}: the guest reported ${errs.map((m) => `${m.event}:${m.data}`).join('; ')}\n${v.explain()}`);
      const d = disks[i]!;
      for (const [f, sum] of Object.entries(d.files)) {
        if (!v.markers.some((m) => m.event === 'blk-read' && m.data === `${f}:${sum}`)) throw new Error(`vm ${i}: the guest read ${f} wrong or not at all\n${v.explain()}`);
      }
      if (v.count('blk-done') !== 1) throw new Error(`vm ${i}: no blk-done (sync + umount)\n${v.explain()}`);
      const wrote = v.markers.find((m) => m.event === 'blk-wrote' && m.data.startsWith('guest.bin:'))?.data.slice('guest.bin:'.length);
      const bin = debugfsCat(d.path, 'guest.bin');
      if (bin === null || sha256(bin) !== wrote) throw new Error(`vm ${i}: guest.bin on the image (debugfs) differs from what the guest wrote`);
      const rng = v.markers.find((m) => m.event === 'rng-read')?.data.split(':').map(Number);
      if (!rng || rng[0] !== 4096 || rng[2]! < 200) throw new Error(`vm ${i}: virtio-rng read ${rng?.join(':') ?? 'nothing'} (want 4096 bytes, ~256 distinct values)\n${v.explain()}`);
    } catch (e) {
      problems.push((e as Error).message);
      v.kill();
    }
  }));
  clearInterval(peak);
  const ok = problems.length === 0;
  const figures: Array<[string, string]> = [
    ['VMs at once (1 vCPU, 256 MiB, virtio-blk 64 MiB ext4 + virtio-rng each)', `${n}, ${n - problems.length} passed the blk + rng checks and powered off (exit 0)`],
    ['all at their shell prompt at once (sampled)', `${peakRunning} of ${n}`],
    ['start → shell prompt, median / max', `${secs(median(bootMs))} / ${secs(Math.max(...bootMs))}`],
    ['start → last VMM exited', secs(Math.max(...totalMs, 0))],
    ['disks made (ext4, debugfs) before the start', secs(tBoot - t0)],
  ];
  rmSync(dir, { recursive: true, force: true });
  return { part: 'multi', ok, figures, ...(ok ? {} : { why: problems.join('\n') }) };
}

// ---------------------------------------------------------------------------------------------
// (c) Fuzzed API requests against a running VM.

async function apiPart(): Promise<PartResult> {
  const total = countFromEnv('STV_SOAK_API_REQUESTS', 100_000);
  const seed = seedFromEnv('STV_SOAK_SEED');
  log(`api: ${total} requests, STV_SOAK_SEED=${seed}`);
  const fuzz = new ApiFuzzer(mulberry32(seed));
  const dir = mkdtempSync(join(TMP, 'stv-soak-api-'));
  const sock = join(dir, 'api.sock');
  const problems: string[] = [];
  const figures: Array<[string, string]> = [['seed (STV_SOAK_SEED)', String(seed)]];
  const vmm = new Vmm('api', ['--api-socket', `path=${sock}`]);
  const config = {
    payload: { kernel: img.bzImage, initramfs: img.initramfs, cmdline: 'console=ttyS0 quiet stv.scenario=shell' },
    cpus: { boot_vcpus: 1, max_vcpus: 1 },
    memory: { size: 256 << 20 },
    rng: { src: '/dev/urandom' },
    serial: { mode: 'Tty' },
    console: { mode: 'Off' },
  };
  try {
    await waitForPing(sock, vmm.child, { timeoutMs: 120_000, explain: () => vmm.explain() });
    for (const [m, p, b] of [['PUT', 'vm.create', JSON.stringify(config)], ['PUT', 'vm.boot', undefined]] as const) {
      const r = await request(sock, m, p, b);
      if (r.status !== 204) throw new Error(`${p} -> ${r.status} ${r.text}`);
    }
    await vmm.until('the shell prompt', () => atPrompt(vmm), 600_000);
    const before = await sample(vmm.pid, 0);
    const ops = listOperations();
    const counts = new Map<number, number>();
    const kinds = new Map<string, number>();
    let sent = 0;
    let garbage = 0;
    const CONCURRENCY = 16;
    const t0 = performance.now();
    const sendRaw = (data: Buffer, close: boolean) => new Promise<void>((resolve) => {
      const c = net.connect(sock);
      c.on('error', () => resolve());
      c.on('close', () => resolve());
      c.on('data', () => {});
      c.setTimeout(5000, () => c.destroy());
      c.on('connect', () => { c.write(data); if (close) c.destroy(); else c.end(); });
    });
    // STV_SOAK_API_S: stop sending after that many seconds (the figures say how many went out).
    const apiS = countFromEnv('STV_SOAK_API_S', 0);
    let stoppedForTime = false;
    const worker = async () => {
      while (sent < total && problems.length < 10) {
        if (apiS > 0 && performance.now() - t0 > apiS * 1000) { stoppedForTime = true; break; }
        sent++;
        if (fuzz.chance(0.02)) { garbage++; await sendRaw(fuzz.garbage(), fuzz.chance(0.5)); continue; }
        const c = fuzz.makeCase(ops, true);
        const what = c.what.startsWith('valid') ? 'valid' : c.what.split(' ')[0]!;
        kinds.set(what, (kinds.get(what) ?? 0) + 1);
        const r = await request(sock, c.method, c.path, c.body);
        counts.set(r.status, (counts.get(r.status) ?? 0) + 1);
        const desc = `${c.what}: ${c.method} ${c.path} ${(c.body ?? '').slice(0, 200)} -> ${r.status} ${r.text.slice(0, 300)}`;
        if (c.expect === 'bad' && !(r.status >= 400 && r.status < 500)) problems.push(`a bad request was not answered 4xx: ${desc}`);
        else if (c.expect === 'any' && ![200, 204, 400, 404, 405, 409, 500].includes(r.status)) problems.push(`unexpected status: ${desc}`);
        else if (r.status >= 400 && !Array.isArray(r.json)) problems.push(`error body is not a JSON array: ${desc}`);
        if (sent % 10_000 === 0) log(`api: ${sent}/${total} (${Math.round(sent / ((performance.now() - t0) / 1000))} req/s)`);
      }
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));
    const ms = performance.now() - t0;
    figures.push(['requests sent (2% raw garbage connections), 16 clients', `${sent} of ${total} in ${secs(ms)} = ${Math.round(sent / (ms / 1000))} req/s${stoppedForTime ? ` (stopped: STV_SOAK_API_S=${apiS} used up)` : ''}`]);
    figures.push(['status counts', [...counts].sort((a, b) => a[0] - b[0]).map(([k, v]) => `${k}:${v}`).join(' ')]);
    figures.push(['cases', [...kinds].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k}:${v}`).join(' ') + ` garbage:${garbage}`]);
    // Still the same VM, answering.
    const ping = await request(sock, 'GET', 'vmm.ping');
    if (ping.status !== 200 || typeof (ping.json as { version?: unknown } | undefined)?.version !== 'string') problems.push(`vmm.ping after the fuzz: ${ping.status} ${ping.text}`);
    const info = await request(sock, 'GET', 'vm.info');
    const ij = info.json as { state?: string; config?: { payload?: { kernel?: string }; cpus?: { boot_vcpus?: number }; memory?: { size?: number } } } | undefined;
    if (info.status !== 200 || ij?.state !== 'Running' || ij.config?.payload?.kernel !== img.bzImage || ij.config?.cpus?.boot_vcpus !== 1 || ij.config?.memory?.size !== 256 << 20) {
      problems.push(`vm.info after the fuzz is not the running VM that was created: ${info.status} ${info.text.slice(0, 500)}`);
    }
    const tAlive = performance.now();
    vmm.send('echo @@stv:alive:$((6 * 7))@@\n');
    await vmm.until('the guest answering on its serial console (alive:42)', () => vmm.count('alive', '42') > 0, 120_000);
    figures.push(['after the fuzz: vmm.ping, vm.info (Running, same config), guest shell answers', `ok (${secs(performance.now() - tAlive)} to the guest's answer)`]);
    const after = await sample(vmm.pid, 1);
    figures.push(['VMM before → after the fuzz', `${fmtSample(before)} → ${fmtSample(after)}`]);
    if (after.fds > before.fds + 2) problems.push(`the VMM's fds grew ${before.fds} → ${after.fds} over the fuzz`);
    if (after.threads > before.threads) problems.push(`the VMM's threads grew ${before.threads} → ${after.threads} over the fuzz`);
    const sd = await request(sock, 'PUT', 'vm.shutdown');
    if (sd.status !== 204) problems.push(`vm.shutdown after the fuzz: ${sd.status} ${sd.text}`);
    await request(sock, 'PUT', 'vmm.shutdown');
    const ex = await Promise.race([vmm.exit, sleep(60_000).then(() => null)]);
    if (ex?.code !== 0) problems.push(`the VMM exited ${ex === null ? 'not at all within 60 s' : ex.code ?? ex.signal} after vmm.shutdown\n${vmm.explain()}`);
  } catch (e) {
    problems.push((e as Error).message);
  } finally {
    vmm.kill();
    rmSync(dir, { recursive: true, force: true });
  }
  return { part: 'api', ok: problems.length === 0, figures, ...(problems.length ? { why: problems.slice(0, 10).join('\n') } : {}) };
}

// ---------------------------------------------------------------------------------------------

const table: Record<string, () => Promise<PartResult>> = { cycles: cyclesPart, multi: multiPart, api: apiPart };
let failed = false;
if (!existsSync('/dev/kvm')) {
  for (const p of parts) report({ part: p, ok: false, figures: [], why: '/dev/kvm is missing: run through scripts/kvm-sandbox (npm run soak does)' });
  process.exit(1);
}
for (const p of parts) {
  const fn = table[p];
  if (!fn) { report({ part: p, ok: false, figures: [], why: `unknown part '${p}'` }); failed = true; continue; }
  log(`${p}: start`);
  const t0 = performance.now();
  const r = await fn();
  r.figures.push(['part wall time', secs(performance.now() - t0)]);
  report(r);
  log(`${p}: ${r.ok ? 'ok' : `FAILED: ${r.why}`}`);
  failed ||= !r.ok;
}
process.exitCode = failed ? 1 : 0;
