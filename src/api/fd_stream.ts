// API connections that receive file descriptors (SCM_RIGHTS, unix(7)) with their bytes.
//
// Node's `net` sockets read with read(2), which drops ancillary data (the kernel closes fds
// sent with bytes read that way). Cloud Hypervisor's clients send tap fds with the request
// bytes in one sendmsg (Kata's Go runtime: vm.add-net), so an accepted connection is left
// paused (`pauseOnConnect`) and its bytes are read here with recvmsg(2) instead: a
// `FdSocketStream` is a Duplex that pushes what recvmsg returns (writes go out through the
// paused net.Socket, which still writes normally) and keeps the fds that came with the bytes
// until a request takes them. One `FdPoller` per server waits for readability of all its
// connections with a single poll(2) on a koffi worker thread (plus an eventfd to wake it when
// the set changes), then reads each ready connection non-blocking on the main thread.
//
// Which request do fds belong to? The stream pushes each recvmsg chunk synchronously into
// Node's HTTP parser, so the fds received with a request's first bytes are pending when its
// 'request' event fires; the request takes every pending fd (`takeFds`). Fds nobody takes
// are closed: by the server after its handler ran, and by the stream when it is destroyed.

import { Duplex } from 'node:stream';
import type net from 'node:net';
import * as libc from '../sys/libc.js';

/** Bytes read per recvmsg. */
const CHUNK = 64 * 1024;
/** Most connections one poller watches (the API server's maxConnections is below this). */
const MAX_STREAMS = 1024;
/** Re-arm the poll at least this often (a lost wake-up only delays, never hangs). */
const POLL_TIMEOUT_MS = 2000;

/** The fd of a connected net.Socket (a Pipe handle's `fd`), or undefined. */
export function socketFd(sock: net.Socket): number | undefined {
  const h = (sock as unknown as { _handle?: { fd?: unknown } })._handle;
  return typeof h?.fd === 'number' && h.fd >= 0 ? h.fd : undefined;
}

/** Close fds, ignoring errors (EBADF of an fd already gone). */
export function closeFds(fds: readonly number[]): void {
  for (const fd of fds) {
    try {
      libc.close(fd);
    } catch {
      // already closed
    }
  }
}

/** A connection whose bytes are read with recvmsg, collecting SCM_RIGHTS fds. */
export class FdSocketStream extends Duplex {
  readonly fd: number;
  private readonly sock: net.Socket;
  private readonly poller: FdPoller;
  private pending: number[] = [];
  private readonly buf = new Uint8Array(CHUNK);
  private ended = false;

  constructor(sock: net.Socket, fd: number, poller: FdPoller) {
    super({ allowHalfOpen: true });
    this.sock = sock;
    this.fd = fd;
    this.poller = poller;
    sock.on('error', (e) => this.destroy(e));
    sock.on('close', () => this.destroy());
    sock.on('timeout', () => this.emit('timeout'));
  }

  /** Take (and own) every fd received so far and not yet taken. */
  takeFds(): number[] {
    const f = this.pending;
    this.pending = [];
    return f;
  }

  // net.Socket methods Node's HTTP server calls on its connections.
  setTimeout(ms: number, cb?: () => void): this {
    this.sock.setTimeout(ms);
    if (cb !== undefined) this.once('timeout', cb);
    return this;
  }
  setNoDelay(): this {
    return this;
  }
  setKeepAlive(): this {
    return this;
  }
  get remoteAddress(): string | undefined {
    return undefined;
  }
  get bytesWritten(): number {
    return this.sock.bytesWritten;
  }

  override _read(): void {
    if (!this.ended) this.poller.watch(this);
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    if (this.sock.destroyed) {
      cb(new Error('connection closed'));
      return;
    }
    this.sock.write(chunk, (err) => cb(err ?? null));
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.sock.end(() => cb());
  }

  override _destroy(err: Error | null, cb: (err: Error | null) => void): void {
    this.poller.unwatch(this);
    closeFds(this.takeFds());
    if (!this.sock.destroyed) this.sock.destroy();
    cb(err);
  }

  /** The poller saw the fd readable: read what is there (non-blocking). */
  onReadable(): void {
    for (;;) {
      if (this.destroyed || this.ended) return;
      const r = libc.recvmsgFds(this.fd, this.buf.subarray(0, CHUNK), libc.SCM_MAX_FD, libc.MSG_DONTWAIT);
      if (r.n < 0) {
        if (r.n === -libc.EAGAIN || r.n === -libc.EINTR) return;
        this.destroy(new libc.SysError('recvmsg(API connection)', -r.n));
        return;
      }
      if (r.fds.length > 0) this.pending.push(...r.fds);
      if (r.n === 0) {
        this.ended = true;
        this.poller.unwatch(this);
        this.push(null);
        return;
      }
      const more = this.push(Buffer.from(this.buf.subarray(0, r.n)));
      if (!more) {
        // Backpressure: stop watching until the consumer asks again (_read).
        this.poller.unwatch(this);
        return;
      }
      if (r.n < CHUNK) return;
    }
  }
}

/** Waits for readability of many FdSocketStreams with one off-thread poll(2). */
export class FdPoller {
  private readonly streams = new Map<number, FdSocketStream>();
  private readonly set = new libc.AsyncPollSet(MAX_STREAMS + 1);
  private wakeFd: number;
  private inFlight = false;
  private closed = false;
  private readonly wakeBuf = new BigUint64Array([1n]);

  constructor() {
    this.wakeFd = libc.eventfd(0, libc.EFD_NONBLOCK | libc.EFD_CLOEXEC);
  }

  /** Streams watched now. */
  get size(): number {
    return this.streams.size;
  }

  watch(s: FdSocketStream): void {
    if (this.closed || this.streams.get(s.fd) === s) return;
    if (this.streams.size >= MAX_STREAMS) {
      s.destroy(new Error('too many API connections'));
      return;
    }
    this.streams.set(s.fd, s);
    this.rearm();
  }

  unwatch(s: FdSocketStream): void {
    if (this.streams.get(s.fd) !== s) return;
    this.streams.delete(s.fd);
    this.wake();
  }

  /** Stop polling; the eventfd closes once no poll is in flight. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.streams.clear();
    this.wake();
    if (!this.inFlight) this.closeWake();
  }

  private closeWake(): void {
    if (this.wakeFd < 0) return;
    closeFds([this.wakeFd]);
    this.wakeFd = -1;
    this.set.dispose();
  }

  private wake(): void {
    if (this.inFlight && this.wakeFd >= 0) libc.writeRaw(this.wakeFd, new Uint8Array(this.wakeBuf.buffer), 8);
  }

  private rearm(): void {
    if (this.inFlight) {
      this.wake();
      return;
    }
    if (this.closed || this.streams.size === 0) return;
    const fds = this.set.fds;
    libc.pollFdSet(fds, 0, this.wakeFd, libc.POLLIN);
    let n = 1;
    for (const fd of this.streams.keys()) libc.pollFdSet(fds, n++, fd, libc.POLLIN);
    this.inFlight = true;
    void this.set.wait(n, POLL_TIMEOUT_MS).then(() => {
      this.inFlight = false;
      if (this.closed) {
        this.closeWake();
        return;
      }
      libc.readRaw(this.wakeFd, new Uint8Array(this.wakeBuf.buffer), 8);
      const ready: FdSocketStream[] = [];
      for (let i = 1; i < n; i++) {
        if (libc.pollRevents(fds, i) === 0) continue;
        const s = this.streams.get(fds[i * 2]!);
        if (s !== undefined) ready.push(s);
      }
      for (const s of ready) s.onReadable();
      this.rearm();
    });
  }
}
