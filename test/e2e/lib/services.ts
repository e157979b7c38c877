// Host-side services for e2e tests and benchmarks (virtiofsd, socat, HTTP helpers, …): each runs
// as a child process whose stdout and stderr go to its own log under .cache/e2e-logs, is waited
// for until it is ready (a socket path exists, or its output matches), and is always stopped by
// stop() (SIGTERM, then SIGKILL). A test that fails prints the service's log path and tail.
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, readFileSync, type WriteStream } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { LOG_DIR } from './guest.js';

export { LOG_DIR };

export interface ServiceOptions {
  /** Names the log file: .cache/e2e-logs/<name>.service.log */
  name: string;
  cmd: string;
  args: string[];
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Ready when this path exists (a Unix socket the service creates). */
  readyPath?: string;
  /** Ready when the service's combined output matches. */
  readyOutput?: RegExp;
  /** How long to wait for readiness (default 20 s). */
  readyTimeoutMs?: number;
}

export class HostService {
  readonly logFile: string;
  private readonly child: ChildProcess;
  private readonly log: WriteStream;
  private output = '';
  private exitInfo: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  private constructor(private readonly o: ServiceOptions) {
    mkdirSync(LOG_DIR, { recursive: true });
    this.logFile = join(LOG_DIR, `${o.name.replace(/[^A-Za-z0-9_.-]+/g, '_')}.service.log`);
    this.log = createWriteStream(this.logFile);
    this.log.write(`$ ${o.cmd} ${o.args.join(' ')}\n`);
    this.child = spawn(o.cmd, o.args, { stdio: ['ignore', 'pipe', 'pipe'], env: o.env ?? process.env, cwd: o.cwd });
    const onData = (b: Buffer): void => {
      const s = b.toString('latin1');
      if (this.output.length < 1 << 20) this.output += s;
      this.log.write(b);
    };
    this.child.stdout!.on('data', onData);
    this.child.stderr!.on('data', onData);
    this.exited = new Promise((resolve) => {
      this.child.on('error', (e) => {
        this.log.write(`\n[spawn error: ${e.message}]\n`);
        this.exitInfo = { code: 127, signal: null };
        resolve(this.exitInfo);
      });
      this.child.on('close', (code, signal) => {
        this.exitInfo ??= { code, signal };
        this.log.write(`\n[exit ${code ?? signal}]\n`);
        resolve(this.exitInfo);
      });
    });
  }

  /** Start a service and wait until it is ready; throws (with its log tail) when it exits or times out first. */
  static async start(o: ServiceOptions): Promise<HostService> {
    const s = new HostService(o);
    try {
      await s.waitReady();
    } catch (e) {
      await s.stop();
      throw e;
    }
    return s;
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get running(): boolean {
    return this.exitInfo === null;
  }

  /** What the service printed so far (the first MiB). */
  get text(): string {
    return this.output;
  }

  private async waitReady(): Promise<void> {
    const deadline = Date.now() + (this.o.readyTimeoutMs ?? 20_000);
    for (;;) {
      if (this.exitInfo) throw new Error(`${this.o.name} exited (${this.exitInfo.code ?? this.exitInfo.signal}) before it was ready\n${this.explain()}`);
      const pathOk = !this.o.readyPath || existsSync(this.o.readyPath);
      const outOk = !this.o.readyOutput || this.o.readyOutput.test(this.output);
      if (pathOk && outOk) return;
      if (Date.now() > deadline) throw new Error(`${this.o.name} not ready within ${(this.o.readyTimeoutMs ?? 20_000) / 1000} s\n${this.explain()}`);
      await sleep(50);
    }
  }

  /** Send a signal (e.g. SIGKILL to test a backend that dies mid-run). */
  kill(signal: NodeJS.Signals = 'SIGTERM'): void {
    if (this.running) this.child.kill(signal);
  }

  /** Stop the service: SIGTERM, SIGKILL after graceMs; resolves when it has exited. */
  async stop(graceMs = 3000): Promise<void> {
    if (this.running) {
      this.child.kill('SIGTERM');
      const t = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
      await this.exited;
      clearTimeout(t);
    }
    await new Promise<void>((r) => this.log.end(r));
  }

  /** The log path and the last lines, for assertion messages. */
  explain(lines = 20): string {
    let text = this.output;
    try { text = readFileSync(this.logFile, 'latin1'); } catch { /* not flushed yet */ }
    return `${this.o.name} log: ${this.logFile}\n--- last ${lines} lines ---\n${text.split('\n').slice(-lines).join('\n')}`;
  }
}

/** Stops every service given, whatever happens; for `finally` blocks. */
export async function stopAll(...services: Array<HostService | null | undefined>): Promise<void> {
  await Promise.all(services.map((s) => s?.stop().catch(() => {})));
}
