// `--serial socket=PATH` (Cloud Hypervisor's ConsoleMode "Socket"): the VMM listens on a Unix
// socket; a client connected to it reads the guest's serial output and its writes are typed into
// the guest's serial port. A sink beside tty/file/null: the device thread writes output to the
// write end of a pipe as it would to a terminal, this main-thread object reads the other end and
// copies it to every connected client; client bytes go to the VM's input ring (sendInput).
// Like a serial line without flow control, a client that stops reading loses output (bounded
// per client) instead of stalling the guest.
import net from 'node:net';
import { chmodSync, closeSync, lstatSync, unlinkSync } from 'node:fs';
import * as libc from '../sys/libc.js';

/** Most output kept queued for one client before its further output is dropped. */
export const CLIENT_BACKLOG_LIMIT = 1 << 20;
/** How often input the guest's ring could not take is offered again (ms). */
const INPUT_RETRY_MS = 5;
/** sun_path is 108 bytes with its NUL (unix(7)). */
const SUN_PATH_MAX = 107;

export class SerialSocketError extends Error {
  override name = 'SerialSocketError';
}

/** Check a serial socket path before anything is created; throws SerialSocketError naming it. */
export function checkSerialSocketPath(path: string): void {
  if (Buffer.byteLength(path) > SUN_PATH_MAX) {
    throw new SerialSocketError(`--serial socket=${path}: path is too long for a Unix socket (max ${SUN_PATH_MAX} bytes)`);
  }
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return; // nothing there: fine
  }
  if (!st.isSocket()) throw new SerialSocketError(`--serial socket=${path}: a file that is not a socket is in the way`);
}

export interface SerialSocketOptions {
  path: string;
  /** Bytes a client typed, for the guest's serial port; returns how many were accepted. */
  input: (bytes: Uint8Array) => number;
  log?: (msg: string) => void;
}

export class SerialSocketSink {
  /** The fd the device thread writes the guest's serial output to (a pipe's write end). */
  readonly fd: number;
  readonly path: string;
  private readonly readFd: number;
  private readonly reader: net.Socket;
  private readonly server: net.Server;
  private readonly clients = new Set<net.Socket>();
  private readonly opts: SerialSocketOptions;
  private closed = false;
  /** Bytes dropped because a client did not read (all clients together). */
  dropped = 0;
  readonly listening: Promise<void>;

  constructor(opts: SerialSocketOptions) {
    this.opts = opts;
    this.path = opts.path;
    checkSerialSocketPath(opts.path);
    // A socket left by an earlier run is replaced, as Cloud Hypervisor does.
    try { unlinkSync(opts.path); } catch { /* none */ }
    const [r, w] = libc.pipe2(libc.O_CLOEXEC);
    this.readFd = r;
    this.fd = w;
    this.reader = new net.Socket({ fd: r, readable: true, writable: false });
    this.reader.on('data', (b: Buffer) => this.broadcast(b));
    this.reader.on('error', (e) => this.opts.log?.(`serial socket: reading the serial output failed: ${e.message}`));
    this.server = net.createServer((c) => this.accept(c));
    this.listening = new Promise((resolve, reject) => {
      this.server.once('error', (e) => {
        this.opts.log?.(`serial socket: cannot listen on ${opts.path}: ${e.message}`);
        reject(new SerialSocketError(`--serial socket=${opts.path}: cannot listen: ${e.message}`));
      });
      this.server.listen(opts.path, () => {
        try { chmodSync(opts.path, 0o600); } catch { /* gone already */ }
        resolve();
      });
    });
    this.listening.catch(() => {});
  }

  /** Clients connected now. */
  get clientCount(): number {
    return this.clients.size;
  }

  private accept(c: net.Socket): void {
    if (this.closed) { c.destroy(); return; }
    this.clients.add(c);
    // The input ring is bounded and the guest reads at its own pace: what it cannot take now is
    // kept and the client is not read further until that is in (back-pressure to the client,
    // whose own writes then wait in its socket), so a paste arrives whole and memory stays bounded.
    let pending: Buffer | null = null;
    const push = (): void => {
      if (pending === null || this.closed) return;
      const n = this.opts.input(pending);
      pending = n >= pending.length ? null : pending.subarray(n);
      if (pending === null) c.resume();
      else setTimeout(push, INPUT_RETRY_MS).unref();
    };
    c.on('data', (b: Buffer) => {
      pending = b;
      push();
      if (pending !== null) c.pause();
    });
    c.on('error', () => {});
    c.on('close', () => this.clients.delete(c));
  }

  private broadcast(b: Buffer): void {
    for (const c of this.clients) {
      if (c.writableLength > CLIENT_BACKLOG_LIMIT) { this.dropped += b.length; continue; }
      c.write(b);
    }
  }

  /** Stop listening, disconnect every client, close both pipe ends and remove the socket. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const c of this.clients) c.destroy();
    this.clients.clear();
    this.server.close();
    try { closeSync(this.fd); } catch { /* closed */ }
    this.reader.destroy();
    void this.readFd;
    try { if (lstatSync(this.path).isSocket()) unlinkSync(this.path); } catch { /* gone */ }
  }
}
