// Processes the sandbox benchmarks drive (bench/snapshot.ts, bench/cpuhp.ts, bench/memhp.ts): a
// VMM with its serial console on stdin/stdout, and a QMP client for QEMU.
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import net from 'node:net';

/** A VMM process with its serial console on stdin/stdout. */
export class Proc {
  out = '';
  readonly child: ChildProcessWithoutNullStreams;
  readonly t0 = performance.now();
  private readonly waiters: Array<() => void> = [];
  constructor(cmd: string, args: string[]) {
    this.child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    const add = (b: Buffer) => { this.out += b.toString('latin1'); for (const w of this.waiters.splice(0)) w(); };
    this.child.stdout.on('data', add);
    this.child.stderr.on('data', add);
  }
  async waitFor(re: RegExp, from: number, ms = 240_000): Promise<void> {
    const end = performance.now() + ms;
    while (!re.test(this.out.slice(from))) {
      if (this.child.exitCode !== null || this.child.signalCode !== null) throw new Error(`exited before ${re}: ${this.out.slice(-1500)}`);
      if (performance.now() > end) throw new Error(`no ${re} within ${ms} ms: ${this.out.slice(-1500)}`);
      await new Promise<void>((r) => { this.waiters.push(r); setTimeout(r, 200); });
    }
  }
  /** Type `echo` into the guest shell; resolves when it answered. */
  async answers(): Promise<void> {
    const mark = this.out.length;
    this.child.stdin.write('echo restored-$((6*7))\n');
    await this.waitFor(/restored-42/, mark);
  }
  /**
   * Type a shell loop that prints WAITING and then polls `cond` every 50 ms; run `request` once
   * it waits; ms from the request to the loop's DONE (the guest saw the change).
   */
  async timed(cond: string, request: () => Promise<void>): Promise<number> {
    const mark = this.out.length;
    this.child.stdin.write(`echo WAIT""ING; until ${cond}; do sleep 0.05; done; echo DO""NE\n`);
    await this.waitFor(/WAITING/, mark);
    const t = performance.now();
    await request();
    await this.waitFor(/DONE/, mark);
    return performance.now() - t;
  }
  async kill(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const gone = new Promise((r) => this.child.once('close', r));
    this.child.kill('SIGKILL');
    await gone;
  }
}

/** A QMP client (QEMU's JSON monitor) on a Unix socket. */
export class Qmp {
  private buf = '';
  private readonly pending: Array<(v: Record<string, unknown>) => void> = [];
  private constructor(private readonly sock: net.Socket) {
    sock.on('data', (b) => {
      this.buf += b.toString('utf8');
      for (let i; (i = this.buf.indexOf('\n')) >= 0;) {
        const line = this.buf.slice(0, i);
        this.buf = this.buf.slice(i + 1);
        const msg = JSON.parse(line) as Record<string, unknown>;
        if ('return' in msg || 'error' in msg) this.pending.shift()?.(msg);
      }
    });
  }
  static async connect(path: string, ms = 120_000): Promise<Qmp> {
    const end = performance.now() + ms;
    for (;;) {
      try {
        const s = await new Promise<net.Socket>((res, rej) => { const c = net.connect(path, () => res(c)); c.once('error', rej); });
        const q = new Qmp(s);
        await q.cmd('qmp_capabilities');
        return q;
      } catch (e) {
        if (performance.now() > end) throw e;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }
  cmd(execute: string, args?: Record<string, unknown>): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      this.pending.push((m) => ('error' in m ? reject(new Error(`${execute}: ${JSON.stringify(m.error)}`)) : resolve(m)));
      this.sock.write(`${JSON.stringify(args ? { execute, arguments: args } : { execute })}\n`);
    });
  }
  close(): void { this.sock.destroy(); }
}
