// Start a `stratovisor --api-socket` process and wait until its API answers vmm.ping: the one
// helper for tests, fuzzing and benchmarks (src/api/fuzz.test.ts, src/cli/api_mode.test.ts,
// test/e2e/api.test.ts, bench/api.ts).

import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import http from 'node:http';
import { fileURLToPath } from 'node:url';

/** The CLI entry point (dist/src/cli/main.js next to this module's dist/src/api/testing/). */
export const STRATOVISOR_MAIN = fileURLToPath(new URL('../../cli/main.js', import.meta.url));

/** GET /api/v1/vmm.ping once: the status, or undefined if nothing answers (yet). */
export function pingOnce(socketPath: string): Promise<number | undefined> {
  return new Promise((resolve) => {
    const req = http.request({ socketPath, method: 'GET', path: '/api/v1/vmm.ping', agent: false }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
      res.on('error', () => resolve(undefined));
    });
    req.on('error', () => resolve(undefined));
    req.end();
  });
}

export interface WaitForPingOptions {
  /** Poll interval. Default 10 ms. */
  pollMs?: number;
  /** Give up after this long (an error). Default 60 s. */
  timeoutMs?: number;
  /** Appended to errors: what the process printed, where its log is. */
  explain?: () => string;
}

/**
 * Poll vmm.ping on `socketPath` until it answers 200; throws if `child` exits first or the
 * time runs out. Resolves with the milliseconds waited.
 */
export async function waitForPing(socketPath: string, child: ChildProcess, opts: WaitForPingOptions = {}): Promise<number> {
  const t0 = performance.now();
  const pollMs = opts.pollMs ?? 10;
  const timeoutMs = opts.timeoutMs ?? 60_000;
  const exited = () => child.exitCode !== null || child.signalCode !== null;
  for (;;) {
    if ((await pingOnce(socketPath)) === 200) return performance.now() - t0;
    if (exited()) throw new Error(`the VMM exited (${child.exitCode ?? child.signalCode}) before answering vmm.ping on ${socketPath}${opts.explain ? `\n${opts.explain()}` : ''}`);
    if (performance.now() - t0 > timeoutMs) throw new Error(`the VMM did not answer vmm.ping on ${socketPath} within ${timeoutMs} ms${opts.explain ? `\n${opts.explain()}` : ''}`);
    await new Promise((r) => setTimeout(r, pollMs));
  }
}

export interface SpawnVmmOptions extends WaitForPingOptions {
  /** More arguments after `--api-socket path=<socket>`. */
  args?: string[];
  /** Default: stdin ignored, stdout ignored, stderr piped (kept for errors). */
  stdio?: StdioOptions;
  /** The CLI to run (default STRATOVISOR_MAIN, tsc's output; benchmarks pass the bundle). */
  main?: string;
}

export interface SpawnedVmm {
  child: ChildProcess;
  socketPath: string;
  /** From spawn to the first 200 of vmm.ping. */
  readyMs: number;
  /** Everything the process wrote to stderr so far (when stderr is piped). */
  stderr(): string;
  /** Resolves when the process has exited (and its stdio closed). */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Spawn `stratovisor --api-socket path=<socketPath> ...args` and wait for vmm.ping. */
export async function spawnVmm(socketPath: string, opts: SpawnVmmOptions = {}): Promise<SpawnedVmm> {
  const t0 = performance.now();
  const child = spawn(process.execPath, [opts.main ?? STRATOVISOR_MAIN, '--api-socket', `path=${socketPath}`, ...(opts.args ?? [])], { stdio: opts.stdio ?? ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr?.on('data', (b: Buffer) => { err += b.toString(); });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => child.on('close', (code, signal) => r({ code, signal })));
  try {
    await waitForPing(socketPath, child, { ...opts, explain: () => `${opts.explain?.() ?? ''}--- stderr ---\n${err.slice(-3000)}` });
  } catch (e) {
    child.kill('SIGKILL');
    throw e;
  }
  return { child, socketPath, readyMs: performance.now() - t0, stderr: () => err, exited };
}
