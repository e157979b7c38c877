// A minimal HTTP/1.1 client that sends a request's bytes together with file descriptors in
// one sendmsg (SCM_RIGHTS), as Kata Containers' Go runtime does for vm.add-net
// (clh.go vmAddNetPutRequest: WriteMsgUnix(payload, UnixRights(fds...))). For tests and
// tools; Node's own http client cannot attach fds.

import net from 'node:net';
import * as libc from '../../sys/libc.js';
import { socketFd } from '../fd_stream.js';

export interface RawReply {
  status: number;
  headers: Record<string, string>;
  text: string;
  json: unknown;
}

/** A connection on which requests (with or without fds) are sent one after another. */
export class FdClient {
  private readonly sock: net.Socket;
  private buf = Buffer.alloc(0);
  private waiter: (() => void) | undefined;
  private closed = false;

  private constructor(sock: net.Socket) {
    this.sock = sock;
    sock.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.waiter?.();
    });
    sock.on('close', () => {
      this.closed = true;
      this.waiter?.();
    });
    sock.on('error', () => {});
  }

  static connect(socketPath: string): Promise<FdClient> {
    return new Promise((resolve, reject) => {
      const s = net.connect(socketPath);
      s.once('connect', () => resolve(new FdClient(s)));
      s.once('error', reject);
    });
  }

  /** Send raw request bytes with `fds` attached to the first byte; resolve with the answer. */
  async send(raw: Buffer, fds: readonly number[] = []): Promise<RawReply> {
    const fd = socketFd(this.sock);
    if (fd === undefined) throw new Error('FdClient: the socket has no fd');
    let off = 0;
    while (off < raw.length) {
      const chunk = raw.subarray(off, off + libc.MSG_CHUNK_MAX);
      const n = libc.sendmsgFds(fd, chunk, off === 0 ? fds : []);
      if (n === -libc.EAGAIN || n === -libc.EINTR) {
        await new Promise((r) => setTimeout(r, 1));
        continue;
      }
      if (n < 0) throw new libc.SysError('sendmsg', -n);
      off += n;
    }
    return this.readReply();
  }

  /** A request with a JSON body (no Content-Type, as Kata's Rust runtime sends) and fds. */
  request(method: string, path: string, body?: unknown, fds: readonly number[] = []): Promise<RawReply> {
    const text = body === undefined ? '' : typeof body === 'string' ? body : JSON.stringify(body);
    const raw = `${method} /api/v1/${path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: ${Buffer.byteLength(text)}\r\n\r\n${text}`;
    return this.send(Buffer.from(raw), fds);
  }

  private async readReply(): Promise<RawReply> {
    for (;;) {
      const end = this.buf.indexOf('\r\n\r\n');
      if (end >= 0) {
        const head = this.buf.subarray(0, end).toString('latin1').split('\r\n');
        const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(head[0] ?? '')?.[1] ?? 0);
        const headers: Record<string, string> = {};
        for (const line of head.slice(1)) {
          const i = line.indexOf(':');
          if (i > 0) headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
        }
        const len = Number(headers['content-length'] ?? 0);
        if (this.buf.length >= end + 4 + len) {
          const text = this.buf.subarray(end + 4, end + 4 + len).toString('utf8');
          this.buf = this.buf.subarray(end + 4 + len);
          let json: unknown;
          try {
            json = text === '' ? undefined : JSON.parse(text);
          } catch {
            json = undefined;
          }
          return { status, headers, text, json };
        }
      }
      if (this.closed) throw new Error(`connection closed before a complete answer (got ${JSON.stringify(this.buf.toString('latin1').slice(0, 200))})`);
      await new Promise<void>((r) => (this.waiter = r));
      this.waiter = undefined;
    }
  }

  close(): void {
    this.sock.destroy();
  }
}
