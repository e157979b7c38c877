// A Stratovisor process for e2e tests that drive a guest shell and the API: its serial console on
// stdout (stdin types into it), its API socket, its log kept under LOG_DIR when it ends.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { LOG_DIR, SILENT_GUEST_TAG, guestResetLines } from './guest.js';
import { STRATOVISOR } from './stratovisor.js';
import { apiRequest } from '../../../src/cli/remote.js';

/** A VMM process: its serial console on stdout (stdin types into it), its API socket, its log file. */
export class VmmProcess {
  out = '';
  err = '';
  done = false;
  readonly child;
  readonly exited: Promise<number | null>;
  private readonly waiters: Array<() => void> = [];
  /** How long one console step may see nothing (the sandbox is ~10x slower than a host). */
  stepTimeoutMs = 150_000;
  constructor(readonly name: string, readonly sock: string, readonly args: string[]) {
    this.child = spawn(process.execPath, [STRATOVISOR, '--api-socket', `path=${sock}`, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    const wake = () => { for (const w of this.waiters.splice(0)) w(); };
    this.child.stdout.on('data', (b: Buffer) => { this.out += b.toString('latin1'); wake(); });
    this.child.stderr.on('data', (b: Buffer) => { this.err += b.toString('latin1'); wake(); });
    this.exited = new Promise((r) => this.child.on('close', (c) => { this.done = true; wake(); r(c); }));
  }
  explain(): string {
    return `${guestResetLines(this.err + this.out)}--- ${this.name} console (last 3000) ---\n${this.out.slice(-3000)}\n--- stderr ---\n${this.err.slice(-3000)}`;
  }
  /** Kill it if still running, and keep its log. */
  end(): void {
    if (!this.done) this.child.kill('SIGKILL');
    mkdirSync(LOG_DIR, { recursive: true });
    writeFileSync(join(LOG_DIR, `stv-${this.name}.log`), `$ stratovisor ${this.args.join(' ')}\n${this.out}\n--- stderr ---\n${this.err}\n`);
  }
  /** Wait until the console output after `from` matches; its match. A step that sees nothing for
   * `stepTimeoutMs` fails naming itself, with the console and the VMM's log (a test's own timeout
   * would say only that it ran out, and lose both). */
  async waitFor(re: RegExp, from: number, what: string, stepTimeoutMs = this.stepTimeoutMs): Promise<RegExpExecArray> {
    const deadline = performance.now() + stepTimeoutMs;
    for (;;) {
      const m = re.exec(this.out.slice(from));
      if (m) return m;
      if (this.done) assert.fail(`the VMM exited before ${what}\n${this.explain()}`);
      // A guest that never printed a byte (the sandbox loses one now and then): say so first.
      if (performance.now() > deadline) assert.fail(`no ${what} within ${stepTimeoutMs / 1000} s${this.out.trim() === '' ? `\n${SILENT_GUEST_TAG}` : ''}\n${this.explain()}`);
      await new Promise<void>((r) => { this.waiters.push(r); setTimeout(r, 1000); });
    }
  }
  /** Type a shell line; the console output after it matches `re`. */
  async shell(line: string, re: RegExp, what: string): Promise<RegExpExecArray> {
    return (await this.shellOutput(line, re, what)).m;
  }
  /** shell(), with the console output from the line up to the match. */
  async shellOutput(line: string, re: RegExp, what: string): Promise<{ m: RegExpExecArray; text: string }> {
    const mark = this.out.length;
    this.child.stdin.write(`${line}\n`);
    const m = await this.waitFor(re, mark, what);
    return { m, text: this.out.slice(mark) };
  }
  /** Its exit code, once it exited; a VMM still running after `stepTimeoutMs` fails naming `what`, with the log. */
  exitCode(what: string): Promise<number | null> {
    return this.bounded(this.exited, `still running ${this.stepTimeoutMs / 1000} s after ${what}`);
  }

  /** One API request; one that gets no answer within `stepTimeoutMs` fails naming itself, with the log. */
  api(method: string, ep: string, body?: unknown): Promise<Awaited<ReturnType<typeof apiRequest>>> {
    return this.bounded(apiRequest(this.sock, method, ep, body === undefined ? undefined : JSON.stringify(body)), `${method} ${ep} got no answer in ${this.stepTimeoutMs / 1000} s`);
  }

  /** `p`, or an error naming this VMM and `late` (with its log) if it has not settled within `stepTimeoutMs`. */
  private async bounded<T>(p: Promise<T>, late: string): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${this.name}: ${late}\n${this.explain()}`)), this.stepTimeoutMs);
    });
    try {
      return await Promise.race([p, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }
}

