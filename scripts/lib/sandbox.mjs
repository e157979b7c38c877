// The KVM sandbox: run a command where /dev/kvm can run stock Linux kernels.
// - "direct": the host CPU exposes vmx or svm (real hardware virtualization) and /dev/kvm opens.
// - "nested": otherwise (e.g. a PVM-based /dev/kvm), boot a QEMU/TCG guest with an emulated AMD
//   SVM CPU that loads kvm-amd, shares the host's / over virtio-9p and chroots into it, so node,
//   the repo and node_modules are the very same files; the command's I/O rides on ttyS1.
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync, rmSync, openSync, closeSync, realpathSync, statSync, constants as fsc } from 'node:fs';
import { dirname, join } from 'node:path';
import { constants as osConstants, tmpdir } from 'node:os';
import { connect as netConnect } from 'node:net';
import { ensureSandboxImages, REPO, CACHE } from './images.mjs';
import { ensurePackages } from './deps.mjs';
import { unpackSuite } from './debs.mjs';
import { KERNELS } from './kernels.mjs';

export const SANDBOX_PACKAGES = ['qemu-system-x86', 'linux-image-amd64', 'busybox-static', 'xz-utils'];

/**
 * The sandbox's QEMU: bookworm's 7.2 (the system's qemu-system-x86) or bookworm-backports' 10.0,
 * unpacked into .cache/debs and run against bookworm's own libraries (the system QEMU's
 * dependencies), with its own firmware folder (-L).
 */
export const SANDBOX_QEMUS = ['7.2', '10.0'];
/** Chosen from the health table in the README (npm run sandbox-health). */
export const DEFAULT_SANDBOX = { qemu: '7.2', kernel: '6.1' };

/** { qemu, kernel } from STV_SANDBOX_QEMU / STV_SANDBOX_KERNEL, checked. */
export function sandboxConfig(env = process.env) {
  const qemu = env.STV_SANDBOX_QEMU || DEFAULT_SANDBOX.qemu;
  const kernel = env.STV_SANDBOX_KERNEL || DEFAULT_SANDBOX.kernel;
  if (!SANDBOX_QEMUS.includes(qemu)) throw new Error(`STV_SANDBOX_QEMU must be one of ${SANDBOX_QEMUS.join(', ')}, not '${qemu}'`);
  if (!(kernel in KERNELS)) throw new Error(`STV_SANDBOX_KERNEL must be one of ${Object.keys(KERNELS).join(', ')}, not '${kernel}'`);
  return { qemu, kernel };
}

/** The QEMU binary and the arguments it needs for a sandbox QEMU version. */
export function sandboxQemu(version, { log = () => {} } = {}) {
  if (version === '7.2') return { bin: 'qemu-system-x86_64', args: [], version };
  const [bin, data] = unpackSuite(['qemu-system-x86', 'qemu-system-data'], 'bookworm-backports', { log });
  if (!bin.version.includes(`:${version}.`) && !bin.version.startsWith(`${version}.`)) {
    throw new Error(`bookworm-backports' qemu-system-x86 is ${bin.version}, not ${version}: update SANDBOX_QEMUS in scripts/lib/sandbox.mjs`);
  }
  return { bin: join(bin.dir, 'usr', 'bin', 'qemu-system-x86_64'), args: ['-L', join(data.dir, 'usr', 'share', 'qemu')], version: bin.version };
}

/**
 * Decide how to reach a KVM that runs stock kernels.
 * @param {{cpuinfo: string, kvmUsable: boolean, force?: string}} facts
 * @returns {{mode: 'direct'|'nested', reason: string}}
 */
export function chooseSandboxMode({ cpuinfo, kvmUsable, force }) {
  if (force === 'direct' || force === 'nested') return { mode: force, reason: `forced by STV_SANDBOX=${force}` };
  if (force) throw new Error(`STV_SANDBOX must be 'direct' or 'nested', not '${force}'`);
  const flags = new Set();
  for (const line of cpuinfo.split('\n')) {
    if (/^flags\s*:/.test(line)) for (const f of line.split(':')[1].trim().split(/\s+/)) flags.add(f);
  }
  const hw = flags.has('vmx') ? 'vmx' : flags.has('svm') ? 'svm' : null;
  if (hw && kvmUsable) return { mode: 'direct', reason: `host CPU has ${hw} and /dev/kvm is usable` };
  if (hw) return { mode: 'nested', reason: `host CPU has ${hw} but /dev/kvm is not usable` };
  return { mode: 'nested', reason: 'host CPU exposes neither vmx nor svm (this /dev/kvm cannot run stock kernels)' };
}

export function hostFacts() {
  let kvmUsable = false;
  try {
    closeSync(openSync('/dev/kvm', fsc.O_RDWR));
    kvmUsable = true;
  } catch {
    kvmUsable = false;
  }
  return { cpuinfo: readFileSync('/proc/cpuinfo', 'utf8'), kvmUsable, force: process.env.STV_SANDBOX };
}

/** POSIX shell single-quoting. */
export function shq(s) {
  return `'${String(s).replace(/'/g, `'\\''`)}'`;
}

/** The script the sandbox runs in the chroot: same cwd, same environment, same argv. */
export function commandScript({ cwd, env, argv }) {
  const lines = ['# written by scripts/kvm-sandbox', `cd ${shq(cwd)} || { echo "kvm-sandbox: no directory ${cwd} inside the sandbox" >&2; exit 125; }`];
  for (const [k, v] of Object.entries(env)) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k) || v === undefined) continue;
    if (['PWD', 'OLDPWD', 'SHLVL', '_', 'TERM_PROGRAM', 'TMPDIR'].includes(k)) continue;
    lines.push(`export ${k}=${shq(v)}`);
  }
  lines.push('export TMPDIR=/run/kvm-sandbox', 'export STV_IN_SANDBOX=1');
  lines.push(`exec ${argv.map(shq).join(' ')}`);
  return lines.join('\n') + '\n';
}

function tail(path, n) {
  if (!existsSync(path)) return '(no console log)';
  const lines = readFileSync(path, 'utf8').split('\n');
  return lines.slice(-n).join('\n');
}

/**
 * Run argv in the sandbox. Resolves to the command's exit status (or a sandbox error status:
 * 124 timeout, 125 sandbox failure, 127 command not found inside).
 */
export async function runInSandbox(argv, opts = {}) {
  const log = opts.log ?? ((m) => process.stderr.write(`kvm-sandbox: ${m}\n`));
  const facts = opts.facts ?? hostFacts();
  const { mode, reason } = chooseSandboxMode(facts);
  if (mode === 'direct') {
    if (process.env.STV_SANDBOX_VERBOSE) log(`running directly: ${reason}`);
    return spawnWait(argv[0], argv.slice(1), { stdio: 'inherit', env: { ...process.env, STV_IN_SANDBOX: '1' } });
  }
  ensurePackages(SANDBOX_PACKAGES, { log });
  const config = opts.config ?? sandboxConfig();
  const qemu = sandboxQemu(config.qemu, { log });
  const initScript = readFileSync(join(REPO, 'guest', 'sandbox-init'));
  const img = ensureSandboxImages({ log, initScript, kernel: config.kernel });
  // The real path: the sandbox's init looks for run.sh under /host before it chroots, where an
  // absolute symlink (a worktree's .cache pointing at another checkout's) would not resolve.
  mkdirSync(join(CACHE, 'sandbox'), { recursive: true });
  const state = join(realpathSync(join(CACHE, 'sandbox')), `run-${process.pid}-${Date.now()}`);
  mkdirSync(state, { recursive: true });
  // Inside, the command's stdout is a serial tty; when ours is a pipe, ask tools not to colour.
  const env = process.stdout.isTTY ? process.env : { ...process.env, NO_COLOR: '1' };
  writeFileSync(join(state, 'run.sh'), commandScript({ cwd: process.cwd(), env, argv }));
  const consoleLog = join(state, 'console.log');
  const interactive = process.stdin.isTTY && process.stdout.isTTY;
  const mem = process.env.STV_SANDBOX_MEM ?? '8G';
  const cpus = process.env.STV_SANDBOX_CPUS ?? '2';
  // A wedged inner guest can spin the sandbox's CPU forever: batch runs get a deadline well inside
  // CI's 90 minutes; an interactive session (npm start) none unless asked. 0 turns it off.
  const timeoutS = secondsFromEnv('STV_SANDBOX_TIMEOUT', interactive ? 0 : 2400);
  // A sandbox whose CPUs are stuck in an inner guest prints nothing at all: batch callers that
  // know their command talks regularly (npm test) set a limit on silence. 0 (default): none.
  const idleS = interactive ? 0 : secondsFromEnv('STV_SANDBOX_IDLE_TIMEOUT', 0);
  // QEMU's monitor, to record where the sandbox's CPUs are when it is killed for time. Unix
  // socket paths are short (108 bytes): keep it in /tmp, not in the (maybe deep) state folder.
  const monitorPath = join(tmpdir(), `stv-sandbox-${process.pid}-${Date.now()}.mon`);
  const append = [
    // nokaslr: the kernel sits where its System.map says, so a dump of a stuck sandbox's CPUs
    // (summarizeRegisters) names the functions they were in.
    // loglevel=5: warnings too, so a soft lockup or RCU stall comes with its backtrace.
    'console=ttyS0', 'loglevel=5', 'panic=-1', 'mitigations=off', 'tsc=reliable', 'no_timer_check', 'nokaslr',
    `stv.state=${state}`, `stv.kallsyms=${kallsymsOf(img)}`, `stv.interactive=${interactive ? 1 : 0}`,
  ];
  if (interactive) append.push(`stv.rows=${process.stdout.rows}`, `stv.cols=${process.stdout.columns}`);
  const qemuArgs = [
    ...qemu.args,
    '-accel', 'tcg,thread=multi,tb-size=1024', '-cpu', 'max', '-M', 'q35', '-smp', cpus, '-m', mem,
    '-nodefaults', '-display', 'none', '-no-reboot', '-no-user-config',
    '-kernel', img.bzImage, '-initrd', img.initramfs, '-append', append.join(' '),
    '-serial', `file:${consoleLog}`,
    '-chardev', 'stdio,id=cmd,signal=off', '-serial', 'chardev:cmd',
    '-fsdev', 'local,id=hostroot,path=/,security_model=passthrough,multidevs=remap',
    '-device', 'virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot',
    '-device', 'virtio-rng-pci',
    '-monitor', `unix:${monitorPath},server=on,wait=off`,
  ];
  if (process.env.STV_SANDBOX_VERBOSE) log(`booting nested sandbox (${reason}; QEMU ${qemu.version}, kernel ${img.kernelVersion}): ${qemu.bin} ${qemuArgs.join(' ')}`);
  const registersFile = join(state, 'registers.txt');
  const { status, stopped, idleLimitS } = await runSandboxQemu(qemu.bin, qemuArgs, { interactive, timeoutS, idleS, monitorPath, consoleLog, registersFile });
  rmSync(monitorPath, { force: true });
  const rcFile = join(state, 'rc');
  const consoleText = existsSync(consoleLog) ? readFileSync(consoleLog, 'utf8') : '';
  // For callers that classify sandbox runs (npm run sandbox-health): what happened, where the console is.
  if (process.env.STV_SANDBOX_RESULT) {
    writeFileSync(process.env.STV_SANDBOX_RESULT, JSON.stringify({
      qemu: qemu.version, kernel: img.kernelVersion, status, stopped,
      rc: existsSync(rcFile) ? Number(readFileSync(rcFile, 'utf8').trim()) : null, consoleLog, registersFile: existsSync(registersFile) ? registersFile : null,
    }) + '\n');
  }
  const keep = () => log(`sandbox console log kept at ${consoleLog}`);
  if (stopped) {
    const why = stopped === 'timeout' ? `timed out after ${timeoutS} s (STV_SANDBOX_TIMEOUT)`
      : stopped === 'idle' ? `the command printed nothing for ${idleLimitS} s (${idleLimitS === idleS ? 'STV_SANDBOX_IDLE_TIMEOUT' : 'the job\'s own limit, @@kvm-sandbox:idle@@'})`
        : `the sandbox kernel reported a CPU stuck for ${STUCK_CPU_S} s or more (soft lockup)`;
    log(`${why}; killed. Last console lines:\n${tail(consoleLog, 30)}`);
    if (existsSync(registersFile)) log(`where the sandbox's CPUs were (QEMU 'info registers -a', whole dump in ${registersFile}):\n${summarizeRegisters(readFileSync(registersFile, 'utf8'), systemMapOf(img))}`);
    keep();
    return stopped === 'stuck' ? 125 : 124;
  }
  if (!existsSync(rcFile)) {
    const err = /@@sandbox:error:([^@]*)@@/.exec(consoleText);
    const what = err ? err[1] : status === 127 ? 'qemu-system-x86_64 not found' : `the sandbox guest stopped before the command finished (QEMU exit status ${status})`;
    log(`failed: ${what}. Last console lines:\n${tail(consoleLog, 40)}`);
    keep();
    return 125;
  }
  const rc = Number(readFileSync(rcFile, 'utf8').trim());
  if (rc !== 0 || process.env.STV_SANDBOX_KEEP) keep();
  else rmSync(state, { recursive: true, force: true });
  return Number.isInteger(rc) ? rc : 125;
}

function secondsFromEnv(name, dflt) {
  const v = process.env[name];
  const n = v === undefined || v === '' ? dflt : Number(v);
  if (!Number.isFinite(n) || n < 0) throw new Error(`${name} must be a number of seconds, not '${v}'`);
  return n;
}

/**
 * Run the sandbox's QEMU; its stdout (the command's output over ttyS1) is passed through. Kill it
 * after timeoutS in all, after idleS without output, or when its kernel reports a CPU stuck for
 * good, first saving the CPU state from its monitor. Resolves to the exit status and why it was
 * stopped ('timeout', 'idle', 'stuck' or null), and the idle limit in force at the end.
 */
async function runSandboxQemu(bin, args, { interactive, timeoutS, idleS, monitorPath, consoleLog, registersFile }) {
  let stopped = null;
  let overall;
  let idle;
  let watch;
  let idleLimitS = idleS;
  const status = await spawnWait(bin, args, {
    stdio: [interactive ? 'inherit' : 'ignore', idleS > 0 ? 'pipe' : 'inherit', 'inherit'],
    onChild: (child) => {
      const stop = (why) => {
        if (stopped) return;
        stopped = why;
        void dumpRegisters(monitorPath, registersFile).finally(() => child.kill('SIGKILL'));
      };
      if (timeoutS > 0) overall = setTimeout(() => stop('timeout'), timeoutS * 1000);
      // The sandbox's kernel says when one of its CPUs is stuck (seen: kvm-amd under TCG's SVM
      // emulation spinning in KVM_RUN for 800 s, QEMU and Stratovisor alike): stop it then,
      // rather than when a time limit runs out.
      if (!interactive) {
        const started = performance.now();
        watch = setInterval(() => {
          let text = '';
          try { text = readFileSync(consoleLog, 'latin1'); } catch { return; }
          if (stuckCpu(text, (performance.now() - started) / 1000)) stop('stuck');
        }, 5000);
      }
      if (idleS > 0) {
        // A command that runs several jobs (scripts/lib/run-files.mjs) announces each one's own
        // limit on silence with a line "@@kvm-sandbox:idle=N@@"; the last one counts from then on.
        let recent = '';
        const armIdle = () => {
          clearTimeout(idle);
          if (!stopped) idle = setTimeout(() => stop('idle'), idleLimitS * 1000);
        };
        armIdle();
        child.stdout.on('data', (b) => {
          process.stdout.write(b);
          recent = (recent + b.toString('latin1')).slice(-256);
          const marks = [...recent.matchAll(IDLE_MARK)];
          if (marks.length) {
            idleLimitS = Number(marks[marks.length - 1][1]) || idleS;
            recent = recent.slice(recent.lastIndexOf('@@kvm-sandbox:idle=') + 1);
          }
          armIdle();
        });
      }
    },
  });
  clearTimeout(overall);
  clearTimeout(idle);
  clearInterval(watch);
  return { status, stopped, idleLimitS };
}

const IDLE_MARK = /@@kvm-sandbox:idle=(\d+)@@/g;

/**
 * Whether the sandbox kernel's console shows a CPU stuck for good: a soft lockup reported again
 * and again until it has lasted 100 s (seen: kvm-amd spinning in KVM_RUN for 800 s, QEMU and
 * Stratovisor alike). Shorter ones pass (seen: khugepaged stuck for 26 s, then going on).
 */
export function stuckCpu(consoleText, runningS = Infinity) {
  for (const m of consoleText.matchAll(/watchdog: BUG: soft lockup - CPU#\d+ stuck for (\d+)s!/g)) {
    const s = Number(m[1]);
    // Stuck for longer than the sandbox has run (by this host's clock): its clock jumped (the
    // host was paused: scripts/lib/run-files.mjs CLOCK_JUMP_S), no CPU was stuck.
    if (s >= STUCK_CPU_S && s <= runningS + 10) return true;
  }
  return false;
}
const STUCK_CPU_S = 100;

/** Ask QEMU's human monitor for every CPU's registers; give up after 5 s. */
function dumpRegisters(monitorPath, file) {
  return new Promise((resolve) => {
    let text = '';
    const sock = netConnect(monitorPath);
    const done = () => {
      clearTimeout(timer);
      sock.destroy();
      if (text) writeFileSync(file, text);
      resolve();
    };
    const timer = setTimeout(done, 5000);
    sock.on('error', done);
    sock.on('connect', () => sock.write('info registers -a\n'));
    sock.on('data', (b) => {
      text += b.toString('latin1');
      // The monitor prompts again once the command's output is complete.
      if (/info registers -a[\s\S]*\(qemu\) $/.test(text)) done();
    });
  });
}

/**
 * One line per CPU from 'info registers -a': RIP, CPL, HLT, and whether it is in a nested guest
 * (TCG shows the inner guest's state while an SVM guest runs; EFER.SVME alone says little).
 */
export function summarizeRegisters(dump, symbols = null) {
  const out = [];
  for (const part of dump.split(/^CPU#/m).slice(1)) {
    const cpu = /^(\d+)/.exec(part)?.[1] ?? '?';
    const rip = /RIP=([0-9a-f]+)/.exec(part)?.[1] ?? '?';
    const cpl = /CPL=(\d)/.exec(part)?.[1] ?? '?';
    const hlt = /HLT=(\d)/.exec(part)?.[1] ?? '?';
    const cr3 = /CR3=([0-9a-f]+)/.exec(part)?.[1] ?? '?';
    const efer = /EFER=([0-9a-f]+)/.exec(part)?.[1] ?? '?';
    const where = symbols && cpl === '0' && rip !== '?' ? symbolize(symbols, BigInt(`0x${rip}`)) : null;
    out.push(`CPU#${cpu}: RIP=${rip}${where ? ` (${where})` : ''} CPL=${cpl} HLT=${hlt} CR3=${cr3} EFER=${efer}`);
  }
  return out.length > 0 ? out.join('\n') : '(no CPU state in the monitor output)';
}

/** Where the sandbox's init keeps its kernel's /proc/kallsyms text symbols (beside its initramfs,
 * rebuilt with it; Debian's /boot/System.map is a stub). */
function kallsymsOf(img) {
  // The real path (a worktree's .cache may be an absolute symlink the init cannot follow), named
  // after the initramfs's mtime so a rebuilt image (other modules, other addresses) gets a fresh one.
  const initramfs = realpathSync(img.initramfs);
  return join(dirname(initramfs), `kallsyms-${Math.floor(statSync(initramfs).mtimeMs)}`);
}

/** The sandbox kernel's text symbols, [{addr: bigint, name}] sorted, or null before a boot saved them. */
export function systemMapOf(img) {
  const p = kallsymsOf(img);
  if (!existsSync(p)) return null;
  return parseSystemMap(readFileSync(p, 'utf8'));
}

export function parseSystemMap(text) {
  const syms = [];
  for (const line of text.split('\n')) {
    const m = /^([0-9a-f]{16}) [tTwW] (\S+)/.exec(line);
    if (m) syms.push({ addr: BigInt(`0x${m[1]}`), name: m[2] });
  }
  syms.sort((a, b) => (a.addr < b.addr ? -1 : a.addr > b.addr ? 1 : 0));
  return syms;
}

/** "function+0xoff" for a kernel address (the sandbox boots with nokaslr), or null outside the text. */
export function symbolize(syms, addr) {
  let lo = 0;
  let hi = syms.length - 1;
  if (hi < 0 || addr < syms[0].addr) return null;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (syms[mid].addr <= addr) lo = mid; else hi = mid - 1;
  }
  const off = addr - syms[lo].addr;
  // Past the last function by more than any function is long: not kernel text.
  return off > 0x100000n ? null : `${syms[lo].name}+0x${off.toString(16)}`;
}

/**
 * spawn and resolve with the exit status (signal → 128+n; 127 when the command is not found).
 * `onChild` sees the child process first (to watch or kill it).
 */
export function spawnWait(cmd, args, { stdio = 'inherit', env = process.env, onChild } = {}) {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio, env });
    onChild?.(child);
    child.on('error', (e) => {
      process.stderr.write(`kvm-sandbox: cannot run ${cmd}: ${e.message}\n`);
      resolve(e.code === 'ENOENT' ? 127 : 126);
    });
    child.on('exit', (code, sig) => resolve(code ?? 128 + (sig ? (osConstants.signals[sig] ?? 0) : 0)));
  });
}
