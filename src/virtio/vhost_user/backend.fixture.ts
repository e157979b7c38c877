// A small vhost-user back-end for frontend.test.ts, run in a worker thread on one end of a real
// socketpair: it answers the front-end as vhost-user.rst says (or, per `mode`, wrongly: the error
// paths), and checks the fds it receives really are the front-end's: it maps the SET_MEM_TABLE
// memfds and reads guest bytes through them, and writes to the call eventfds it is given. At the
// end (the front-end closes its end) it posts what it saw.
import { parentPort, workerData } from 'node:worker_threads';
import * as libc from '../../sys/libc.js';
import { Request, HEADER_SIZE, VHOST_USER_VERSION, VHOST_USER_REPLY_MASK, VHOST_USER_NEED_REPLY_MASK, decodeHeader, encodeMessage, u64Payload, decodeU64, decodeMemTable, decodeVringState, vringStatePayload } from './message.js';

export type BackendMode = 'good' | 'bad-echo' | 'no-reply-flag' | 'bad-version' | 'bad-size' | 'huge-size' | 'hangup' | 'silent' | 'nack' | 'raw';

export interface BackendJob {
  fd: number;
  mode: BackendMode;
  /** mode 'raw': these bytes are the reply to the first request that wants one. */
  raw?: Uint8Array;
  /** Guest offset whose u32 the back-end reads through each received memory fd. */
  peekAt: number;
  /** Hang up after this many SET_VRING_ENABLE messages (a back-end that dies while running). */
  hangupAfterEnables?: number;
}

export interface SeenMessage {
  request: number;
  flags: number;
  payload: number[];
  nfds: number;
}

export interface BackendReport {
  messages: SeenMessage[];
  /** u32 read at peekAt through each SET_MEM_TABLE fd (mapped by the back-end). */
  peeked: number[];
  /** Call fds the back-end signalled (by ring index). */
  called: number[];
  error?: string;
}

const job = workerData as BackendJob;
const fd = job.fd;
const report: BackendReport = { messages: [], peeked: [], called: [] };
const FEATURES = (1n << 32n) | (1n << 30n) | (1n << 28n) | (1n << 29n);
const PROTOCOL = (1n << 0n) | (1n << 3n) | (1n << 9n);

const pfd = libc.pollFds(1);
function readExact(buf: Uint8Array, fds: number[]): boolean {
  let off = 0;
  while (off < buf.length) {
    libc.pollFdSet(pfd, 0, fd, libc.POLLIN);
    libc.poll(pfd, 1000);
    const r = libc.recvmsgFds(fd, off === 0 ? buf : buf.subarray(off), 16, libc.MSG_DONTWAIT);
    fds.push(...r.fds);
    if (r.n === 0) return false;
    if (r.n < 0) { if (-r.n === libc.EAGAIN) continue; return false; }
    off += r.n;
  }
  return true;
}
function send(b: Uint8Array): void {
  let off = 0;
  while (off < b.length) {
    const r = libc.sendmsgFds(fd, b.subarray(off), [], libc.MSG_DONTWAIT);
    if (r < 0) { if (-r === libc.EAGAIN) continue; return; }
    off += r;
  }
}

let protocol = 0n;
const reply = (request: number, payload: Uint8Array): void => {
  const m = job.mode;
  const req = m === 'bad-echo' ? request + 1 : request;
  const flags = m === 'no-reply-flag' ? VHOST_USER_VERSION : m === 'bad-version' ? 0x2 | VHOST_USER_REPLY_MASK : VHOST_USER_VERSION | VHOST_USER_REPLY_MASK;
  const msg = encodeMessage(req, flags, m === 'bad-size' ? payload.subarray(0, 4) : payload);
  if (m === 'huge-size') new DataView(msg.buffer).setUint32(8, 1 << 30, true);
  send(msg);
};

// The test waits for this before it blocks its own thread in front-end calls.
parentPort!.postMessage('ready');
try {
  const hdr = new Uint8Array(HEADER_SIZE);
  for (;;) {
    const fds: number[] = [];
    if (!readExact(hdr, fds)) break;
    const h = decodeHeader(hdr);
    const body = new Uint8Array(h.size);
    if (h.size > 0 && !readExact(body, fds)) break;
    report.messages.push({ request: h.request, flags: h.flags, payload: [...body], nfds: fds.length });
    const wantsReply = [Request.GET_FEATURES, Request.GET_PROTOCOL_FEATURES, Request.GET_QUEUE_NUM, Request.GET_VRING_BASE].includes(h.request as 1)
      || ((h.flags & VHOST_USER_NEED_REPLY_MASK) !== 0 && (protocol & (1n << 3n)) !== 0n);
    if (wantsReply && job.mode === 'hangup') break;
    if (wantsReply && job.mode === 'silent') { for (const f of fds) libc.close(f); continue; }
    if (wantsReply && job.mode === 'raw') { send(job.raw!); for (const f of fds) libc.close(f); continue; }
    switch (h.request) {
      case Request.GET_FEATURES: reply(h.request, u64Payload(FEATURES)); break;
      case Request.GET_PROTOCOL_FEATURES: reply(h.request, u64Payload(PROTOCOL)); break;
      case Request.SET_PROTOCOL_FEATURES: protocol = decodeU64(body); break;
      case Request.GET_QUEUE_NUM: reply(h.request, u64Payload(2n)); break;
      case Request.GET_VRING_BASE: reply(h.request, vringStatePayload(decodeVringState(body).index, 7)); break;
      case Request.SET_MEM_TABLE: {
        const regions = decodeMemTable(body);
        regions.forEach((r, i) => {
          const size = Number(r.memorySize);
          const at = libc.mmap(size, libc.PROT_READ, libc.MAP_SHARED, fds[i]!, Number(r.mmapOffset));
          report.peeked.push(new DataView(libc.view(at, size)).getUint32(job.peekAt, true));
          libc.munmap(at, size);
        });
        break;
      }
      case Request.SET_VRING_CALL:
        if (fds.length === 1) { libc.write(fds[0]!, u64Payload(1n)); report.called.push(Number(decodeU64(body) & 0xffn)); }
        break;
      default: break;
    }
    for (const f of fds) libc.close(f);
    if (wantsReply && (h.flags & VHOST_USER_NEED_REPLY_MASK) !== 0) reply(h.request, u64Payload(job.mode === 'nack' ? 1n : 0n));
    if (job.hangupAfterEnables !== undefined && report.messages.filter((m) => m.request === Request.SET_VRING_ENABLE).length >= job.hangupAfterEnables) break;
  }
} catch (e) {
  report.error = (e as Error).stack ?? String(e);
}
libc.close(fd);
parentPort!.postMessage(report);
