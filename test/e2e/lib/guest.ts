// Boot a guest with a VMM command line and collect what the guest reports on its console:
// markers of the form @@stv:EVENT[:DATA]@@ printed by the test initramfs (guest/init).
// Every run's console is saved under .cache/e2e-logs so a failure explains itself.
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, renameSync, writeFileSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', '..');
/** Where consoles and service logs go; STV_E2E_LOG_SUBDIR (npm test: linux-<kernel> for the further guest kernels) keeps runs apart. */
export const LOG_DIR = join(REPO, '.cache', 'e2e-logs', process.env.STV_E2E_LOG_SUBDIR ?? '');

export interface GuestImages {
  bzImage: string;
  vmlinux: string;
  initramfs: string;
}

/** The images built by scripts/lib/images.mjs (npm test passes them in STV_GUEST_*). */
export function guestImages(): GuestImages {
  const fromEnv = process.env.STV_GUEST_BZIMAGE && process.env.STV_GUEST_VMLINUX && process.env.STV_GUEST_INITRAMFS;
  if (fromEnv) {
    return { bzImage: process.env.STV_GUEST_BZIMAGE!, vmlinux: process.env.STV_GUEST_VMLINUX!, initramfs: process.env.STV_GUEST_INITRAMFS! };
  }
  const root = join(REPO, '.cache', 'images');
  const versions = existsSync(root) ? readdirSync(root).filter((v) => existsSync(join(root, v, 'stamp'))).sort() : [];
  const v = versions.pop();
  if (!v) throw new Error('guest images missing: run `npm run images` (or `npm test`, which builds them)');
  return { bzImage: join(root, v, 'bzImage'), vmlinux: join(root, v, 'vmlinux'), initramfs: join(root, v, 'initramfs.cpio') };
}

export interface Marker {
  event: string;
  data: string;
  /** Milliseconds since the VMM process was spawned. */
  atMs: number;
}

export interface GuestRun {
  output: string;
  markers: Marker[];
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  timedOut: boolean;
  /** Milliseconds from spawn to process exit. */
  exitMs: number;
  logFile: string;
  pid: number | undefined;
  /** The first attempt printed no init marker in time and was killed; this is the second. */
  retried?: boolean;
}

export interface RunGuestOptions {
  /** Name for the saved console log. */
  name: string;
  timeoutMs?: number;
  /** Called for each marker; may write to the guest's console through `send`. */
  onMarker?: (m: Marker, ctl: { send: (s: string) => void; pid: number | undefined; kill: () => void }) => void;
  env?: NodeJS.ProcessEnv;
  /**
   * A guest that has printed no @@stv:init@@ by then is killed and started once more (default
   * 150 s; a boot takes 10-40 s here). The nested sandbox occasionally loses a guest, QEMU's as
   * well as ours, without a message (see README "Known problems"); the silent attempt's console is
   * kept beside the log as .attempt1.log and the retry is announced on stderr. 0: no retry.
   */
  initDeadlineMs?: number;
}

const MARKER = /@@stv:([a-z0-9-]+)(?::([^@\r\n]*))?@@/g;

export function parseMarkers(text: string): Array<{ event: string; data: string }> {
  const out: Array<{ event: string; data: string }> = [];
  for (const m of text.matchAll(MARKER)) out.push({ event: m[1]!, data: m[2] ?? '' });
  return out;
}

export async function runGuest(cmd: string, args: string[], opts: RunGuestOptions): Promise<GuestRun> {
  const deadline = Math.min(opts.initDeadlineMs ?? 150_000, opts.timeoutMs ?? 120_000);
  const first = await runGuestOnce(cmd, args, opts, deadline > 0 ? deadline : 0);
  if (!first.silent) return first;
  const kept = first.logFile.replace(/\.log$/, '.attempt1.log');
  try { renameSync(first.logFile, kept); } catch { /* best effort */ }
  process.stderr.write(`# e2e ${opts.name}: no @@stv:init@@ within ${deadline / 1000} s, killed (console kept: ${kept}); retrying once\n`);
  const second = await runGuestOnce(cmd, args, opts, 0);
  second.retried = true;
  return second;
}

function runGuestOnce(cmd: string, args: string[], opts: RunGuestOptions, initDeadlineMs: number): Promise<GuestRun & { silent: boolean }> {
  const t0 = performance.now();
  const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], env: opts.env ?? process.env });
  let output = '';
  let scanFrom = 0;
  const markers: Marker[] = [];
  let timedOut = false;
  const ctl = {
    send: (s: string) => { child.stdin.write(s); },
    pid: child.pid,
    kill: () => { child.kill('SIGKILL'); },
  };
  const onData = (buf: Buffer) => {
    output += buf.toString('latin1');
    // Scan only complete lines, so a marker split across chunks is seen once, whole.
    const lastNl = output.lastIndexOf('\n');
    if (lastNl < scanFrom) return;
    const chunk = output.slice(scanFrom, lastNl + 1);
    scanFrom = lastNl + 1;
    const now = performance.now() - t0;
    for (const m of parseMarkers(chunk)) {
      const marker = { ...m, atMs: now };
      markers.push(marker);
      opts.onMarker?.(marker, ctl);
    }
  };
  child.stdout.on('data', onData);
  child.stderr.on('data', onData);
  child.stdin.on('error', () => {});
  const timer = setTimeout(() => { timedOut = true; child.kill('SIGKILL'); }, opts.timeoutMs ?? 120_000);
  let silent = false;
  const initTimer = initDeadlineMs > 0 ? setTimeout(() => {
    if (!markers.some((m) => m.event === 'init')) { silent = true; timedOut = true; child.kill('SIGKILL'); }
  }, initDeadlineMs) : null;
  return new Promise((resolve) => {
    const finish = (exitCode: number | null, signal: NodeJS.Signals | null) => {
      clearTimeout(timer);
      if (initTimer) clearTimeout(initTimer);
      const exitMs = performance.now() - t0;
      mkdirSync(LOG_DIR, { recursive: true });
      const logFile = join(LOG_DIR, `${opts.name.replace(/[^A-Za-z0-9_.-]+/g, '_')}.log`);
      writeFileSync(logFile, `$ ${cmd} ${args.join(' ')}\n${output}\n[exit ${exitCode ?? signal}${silent ? ', no init marker in time' : timedOut ? ', timed out' : ''}]\n`);
      resolve({ output, markers, exitCode, signal, timedOut, exitMs, logFile, pid: child.pid, silent });
    };
    child.on('error', (e) => { output += `\n[spawn error: ${e.message}]\n`; finish(127, null); });
    child.on('close', (code, sig) => finish(code, sig));
  });
}

/**
 * Where the VMM's output says the guest triple-faulted (Stratovisor's warning, or its -v log's
 * reset line), the first line of a failure's explanation says so: scripts/lib/run-files.mjs
 * (TRIPLE_FAULT_TAG, the same text) runs a job again once when each of its failures carries it
 * or SILENT_GUEST_TAG.
 */
export const TRIPLE_FAULT_TAG = '[the VMM reported a guest triple fault]';
/** A VmmProcess step that timed out while the guest had printed nothing at all (run-files.mjs SILENT_GUEST_TAG). */
export const SILENT_GUEST_TAG = '[the guest printed nothing on its console]';
/** The lines a failure's explanation starts with: the triple-fault tag, and every reset the VMM reported. */
export function guestResetLines(output: string): string {
  const tag = /guest reset (by a |\()triple fault/.test(output) ? `${TRIPLE_FAULT_TAG}\n` : '';
  // Every reset the VMM reported (a guest that rebooted under a test explains many failures).
  const resets = output.match(/guest reset [^\n]*/g) ?? [];
  return `${tag}${resets.length > 0 ? `[the guest was reset ${resets.length} time(s): ${resets.slice(0, 3).join('; ').slice(0, 400)}]\n` : ''}`;
}

/** A compact explanation of a run for assertion messages: the log path and the console's tail. */
export function explain(run: GuestRun, lines = 25): string {
  const tail = run.output.split('\n').slice(-lines).join('\n');
  return `${guestResetLines(run.output)}exit=${run.exitCode ?? run.signal}${run.timedOut ? ' (timed out)' : ''}; console log: ${run.logFile}\n--- last ${lines} lines ---\n${tail}`;
}

export function marker(run: GuestRun, event: string): Marker | undefined {
  return run.markers.find((m) => m.event === event);
}
