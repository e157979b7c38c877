// A vhost-user front-end (QEMU docs/interop/vhost-user.rst): the VMM side of the conversation
// with a back-end process over a connected Unix stream socket. Calls block the calling thread
// (a device's I/O worker, never the main thread) for at most `timeoutMs` per message: the socket
// is non-blocking and every wait is a poll(2) with the time left. Every reply is checked (request
// echoed, version and REPLY flag, exact payload size); a malformed reply, a back-end that hangs
// up or one that does not answer in time is a VhostUserError, and the connection is then taken
// as broken (later calls fail at once: the byte stream may be out of step).
import * as libc from '../../sys/libc.js';
import {
  Request, requestName, HEADER_SIZE, MAX_PAYLOAD, VHOST_USER_VERSION, VHOST_USER_VERSION_MASK, VHOST_USER_REPLY_MASK,
  VHOST_USER_NEED_REPLY_MASK, VHOST_USER_F_PROTOCOL_FEATURES, VHOST_USER_VRING_NOFD_MASK, ProtocolFeature,
  encodeMessage, decodeHeader, u64Payload, decodeU64, vringStatePayload, decodeVringState, vringAddrPayload, memTablePayload,
  type VringAddr, type MemRegion,
} from './message.js';

export class VhostUserError extends Error {
  override name = 'VhostUserError';
}

export const DEFAULT_REPLY_TIMEOUT_MS = 10_000;

export interface FrontendOptions {
  /** Names the back-end in errors (its socket path). */
  name: string;
  /** Longest wait for one reply (or for room to send), in ms. */
  timeoutMs?: number;
}

/** A memory region with the fd that backs it (sent in SET_MEM_TABLE). */
export interface MemRegionFd extends MemRegion {
  fd: number;
}

const bit = (n: bigint): bigint => 1n << n;

export class VhostUserFrontend {
  readonly name: string;
  private readonly timeoutMs: number;
  private readonly pfd = libc.pollFds(1);
  private readonly hdr = new Uint8Array(HEADER_SIZE);
  private broken: string | null = null;
  /** Protocol features both sides agreed on (after setProtocolFeatures). */
  protocolFeatures = 0n;

  constructor(readonly fd: number, o: FrontendOptions) {
    this.name = o.name;
    this.timeoutMs = o.timeoutMs ?? DEFAULT_REPLY_TIMEOUT_MS;
  }

  /** Take the connection as unusable (e.g. the back-end hung up while nothing was asked). */
  markBroken(why: string): void {
    this.broken ??= why;
  }

  get isBroken(): boolean {
    return this.broken !== null;
  }

  private fail(msg: string): never {
    this.broken ??= msg;
    throw new VhostUserError(`vhost-user back-end ${this.name}: ${msg}`);
  }

  private waitFor(events: number, deadline: number, what: string): void {
    for (;;) {
      const left = deadline - Date.now();
      if (left <= 0) this.fail(`timed out after ${this.timeoutMs} ms waiting for ${what} (back-end hung?)`);
      libc.pollFdSet(this.pfd, 0, this.fd, events);
      try {
        if (libc.poll(this.pfd, Math.min(left, 1000)) > 0) {
          const r = libc.pollRevents(this.pfd, 0);
          if ((r & libc.POLLNVAL) !== 0) this.fail('socket is closed');
          if ((r & events) !== 0 || (r & (libc.POLLHUP | libc.POLLERR)) !== 0) return;
        }
      } catch (e) {
        if (!(e instanceof libc.SysError && e.errno === libc.EINTR)) throw e;
      }
    }
  }

  private send(msg: Uint8Array, fds: readonly number[], what: string): void {
    const deadline = Date.now() + this.timeoutMs;
    let off = 0;
    while (off < msg.length) {
      const r = libc.sendmsgFds(this.fd, off === 0 ? msg : msg.subarray(off), off === 0 ? fds : [], libc.MSG_DONTWAIT);
      if (r >= 0) { off += r; continue; }
      if (-r === libc.EAGAIN) { this.waitFor(libc.POLLOUT, deadline, `room to send ${what}`); continue; }
      if (-r === libc.EINTR) continue;
      if (-r === libc.EPIPE || -r === libc.ECONNRESET) this.fail(`hung up (sending ${what})`);
      this.fail(`sending ${what} failed: errno ${-r}`);
    }
  }

  private readExact(buf: Uint8Array, deadline: number, what: string): void {
    let off = 0;
    while (off < buf.length) {
      const r = libc.recvmsgFds(this.fd, off === 0 ? buf : buf.subarray(off), 8, libc.MSG_DONTWAIT);
      // A reply carries no fds for anything we ask: close whatever came.
      for (const f of r.fds) libc.close(f);
      if (r.n > 0) { off += r.n; continue; }
      if (r.n === 0) this.fail(`hung up (waiting for ${what})`);
      if (-r.n === libc.EAGAIN) { this.waitFor(libc.POLLIN, deadline, what); continue; }
      if (-r.n === libc.EINTR) continue;
      if (-r.n === libc.ECONNRESET) this.fail(`hung up (waiting for ${what})`);
      this.fail(`receiving ${what} failed: errno ${-r.n}`);
    }
  }

  /** Send `request`, and read and check its reply when `replySize` >= 0 (the payload's exact size). */
  private call(request: number, payload: Uint8Array | undefined, fds: readonly number[], replySize: number, needReply = false): Uint8Array {
    const name = requestName(request);
    if (this.broken !== null) throw new VhostUserError(`vhost-user back-end ${this.name}: cannot send ${name}: the connection is broken (${this.broken})`);
    const flags = VHOST_USER_VERSION | (needReply ? VHOST_USER_NEED_REPLY_MASK : 0);
    this.send(encodeMessage(request, flags, payload), fds, name);
    if (replySize < 0) return new Uint8Array(0);
    const what = `the reply to ${name}`;
    const deadline = Date.now() + this.timeoutMs;
    this.readExact(this.hdr, deadline, what);
    const h = decodeHeader(this.hdr);
    if (h.request !== request) this.fail(`answered ${name} with ${requestName(h.request)} (malformed reply)`);
    if ((h.flags & VHOST_USER_VERSION_MASK) !== VHOST_USER_VERSION) this.fail(`reply to ${name} has version ${h.flags & VHOST_USER_VERSION_MASK}, expected ${VHOST_USER_VERSION}`);
    if ((h.flags & VHOST_USER_REPLY_MASK) === 0) this.fail(`reply to ${name} lacks the REPLY flag (flags 0x${h.flags.toString(16)})`);
    if (h.size > MAX_PAYLOAD) this.fail(`reply to ${name} announces ${h.size} payload bytes (at most ${MAX_PAYLOAD})`);
    const body = new Uint8Array(h.size);
    this.readExact(body, deadline, what);
    if (h.size !== replySize) this.fail(`reply to ${name} has ${h.size} payload bytes, expected ${replySize}`);
    return body;
  }

  private getU64(request: number): bigint {
    return decodeU64(this.call(request, undefined, [], 8));
  }

  /**
   * A request without a reply of its own: with REPLY_ACK negotiated it asks for one (NEED_REPLY)
   * and a non-zero u64 is the back-end refusing it (vhost-user.rst, "REPLY_ACK").
   */
  private setAcked(request: number, payload: Uint8Array | undefined, fds: readonly number[] = []): void {
    const ack = (this.protocolFeatures & bit(ProtocolFeature.REPLY_ACK)) !== 0n;
    if (!ack) { this.call(request, payload, fds, -1); return; }
    const status = decodeU64(this.call(request, payload, fds, 8, true));
    if (status !== 0n) throw new VhostUserError(`vhost-user back-end ${this.name}: refused ${requestName(request)} (status ${status})`);
  }

  getFeatures(): bigint { return this.getU64(Request.GET_FEATURES); }
  setFeatures(f: bigint): void { this.setAcked(Request.SET_FEATURES, u64Payload(f)); }
  getProtocolFeatures(): bigint { return this.getU64(Request.GET_PROTOCOL_FEATURES); }
  /** The REPLY_ACK rule starts with the next message (this one is never acked). */
  setProtocolFeatures(f: bigint): void {
    this.call(Request.SET_PROTOCOL_FEATURES, u64Payload(f), [], -1);
    this.protocolFeatures = f;
  }
  setOwner(): void { this.setAcked(Request.SET_OWNER, undefined); }
  resetOwner(): void { this.call(Request.RESET_OWNER, undefined, [], -1); }
  resetDevice(): void { this.setAcked(Request.RESET_DEVICE, undefined); }
  getQueueNum(): number {
    const n = this.getU64(Request.GET_QUEUE_NUM);
    if (n > 0xffffn) this.fail(`GET_QUEUE_NUM answered ${n}`);
    return Number(n);
  }

  setMemTable(regions: readonly MemRegionFd[]): void {
    this.setAcked(Request.SET_MEM_TABLE, memTablePayload(regions), regions.map((r) => r.fd));
  }

  setVringNum(index: number, num: number): void { this.setAcked(Request.SET_VRING_NUM, vringStatePayload(index, num)); }
  setVringBase(index: number, base: number): void { this.setAcked(Request.SET_VRING_BASE, vringStatePayload(index, base)); }
  setVringAddr(a: VringAddr): void { this.setAcked(Request.SET_VRING_ADDR, vringAddrPayload(a)); }
  /** Stops the ring; returns the back-end's next avail index (vhost-user.rst "GET_VRING_BASE"). */
  getVringBase(index: number): number {
    const s = decodeVringState(this.call(Request.GET_VRING_BASE, vringStatePayload(index, 0), [], 8));
    if (s.index !== index) this.fail(`GET_VRING_BASE for ring ${index} answered for ring ${s.index}`);
    return s.num;
  }
  private vringFd(request: number, index: number, fd: number): void {
    const v = BigInt(index) | (fd < 0 ? VHOST_USER_VRING_NOFD_MASK : 0n);
    this.setAcked(request, u64Payload(v), fd < 0 ? [] : [fd]);
  }
  setVringKick(index: number, fd: number): void { this.vringFd(Request.SET_VRING_KICK, index, fd); }
  setVringCall(index: number, fd: number): void { this.vringFd(Request.SET_VRING_CALL, index, fd); }
  setVringErr(index: number, fd: number): void { this.vringFd(Request.SET_VRING_ERR, index, fd); }
  setVringEnable(index: number, enable: boolean): void { this.setAcked(Request.SET_VRING_ENABLE, vringStatePayload(index, enable ? 1 : 0)); }
}

export { VHOST_USER_F_PROTOCOL_FEATURES, ProtocolFeature };
