// The migration wire protocol, Cloud Hypervisor's framing (vm-migration/src/protocol.rs):
// every message is a 16-byte little-endian header, then `length` bytes of payload.
//   Request:  command u16, command headers [6] (Start: the sender's protocol version u16), length u64
//   Response: status u16, padding [6], length u64
// The sender sends Start, Config (the VM's configuration, JSON), Memory (a table of
// MemoryRange {gpa u64, length u64}, then the bytes of each range in order), State (the VM's
// state, JSON), then Complete (resume on the destination) or CompletePaused; the receiver
// answers each with a Response, Status Ok or Error (whose payload is the reason, UTF-8). Abandon
// ends a migration. What Config and State hold is Stratovisor's own (versioned documents), so
// only Stratovisor peers understand each other; the framing is CH's.
import type { Socket } from 'node:net';

export const Command = {
  Invalid: 0, Start: 1, Config: 2, State: 3, Memory: 4, Complete: 5, Abandon: 6, MemoryFd: 7, CompletePaused: 8, PageFault: 9,
} as const;
export type CommandCode = (typeof Command)[keyof typeof Command];
export const CommandName: Record<number, string> = Object.fromEntries(Object.entries(Command).map(([k, v]) => [v, k]));

export const Status = { Invalid: 0, Ok: 1, Error: 2 } as const;

/** The protocol version this side speaks (CH: CURRENT_PROTOCOL_VERSION). */
export const PROTOCOL_VERSION = 0;
export const HEADER_SIZE = 16;
/** One MemoryRange in a Memory table. */
export const RANGE_SIZE = 16;

export class MigrationError extends Error {
  override name = 'MigrationError';
}

export interface Header {
  /** Command (requests) or Status (responses). */
  code: number;
  /** Requests: the 6 command-header bytes' first u16 (Start: the protocol version). */
  arg: number;
  length: number;
}

export function encodeHeader(code: number, length: number, arg = 0): Uint8Array {
  const b = new Uint8Array(HEADER_SIZE);
  const dv = new DataView(b.buffer);
  dv.setUint16(0, code, true);
  dv.setUint16(2, arg, true);
  dv.setBigUint64(8, BigInt(length), true);
  return b;
}

/** A header; a length that is not a safe integer is a MigrationError. */
export function decodeHeader(b: Uint8Array): Header {
  const dv = new DataView(b.buffer, b.byteOffset, HEADER_SIZE);
  const length = dv.getBigUint64(8, true);
  if (length > BigInt(Number.MAX_SAFE_INTEGER)) throw new MigrationError(`a message header says ${length} bytes follow`);
  return { code: dv.getUint16(0, true), arg: dv.getUint16(2, true), length: Number(length) };
}

export interface MemoryRangeEntry {
  gpa: number;
  length: number;
}

export function encodeRangeTable(ranges: readonly MemoryRangeEntry[]): Uint8Array {
  const b = new Uint8Array(ranges.length * RANGE_SIZE);
  const dv = new DataView(b.buffer);
  ranges.forEach((r, i) => {
    dv.setBigUint64(i * RANGE_SIZE, BigInt(r.gpa), true);
    dv.setBigUint64(i * RANGE_SIZE + 8, BigInt(r.length), true);
  });
  return b;
}

/** A Memory table; every range non-empty, page aligned, sorted and inside `fits`. */
export function decodeRangeTable(b: Uint8Array, fits: (gpa: number, length: number) => boolean, pageSize = 4096): MemoryRangeEntry[] {
  if (b.length % RANGE_SIZE !== 0) throw new MigrationError(`the memory table has ${b.length} bytes, not a multiple of ${RANGE_SIZE}`);
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const out: MemoryRangeEntry[] = [];
  let end = 0;
  for (let i = 0; i < b.length / RANGE_SIZE; i++) {
    const g = dv.getBigUint64(i * RANGE_SIZE, true);
    const l = dv.getBigUint64(i * RANGE_SIZE + 8, true);
    const where = `memory table entry ${i} (0x${g.toString(16)}+0x${l.toString(16)})`;
    if (g + l > BigInt(Number.MAX_SAFE_INTEGER) || l === 0n) throw new MigrationError(`${where}: empty or out of range`);
    const gpa = Number(g);
    const length = Number(l);
    if (gpa % pageSize !== 0 || length % pageSize !== 0) throw new MigrationError(`${where}: not page aligned`);
    if (gpa < end) throw new MigrationError(`${where}: overlaps or is not after the previous range`);
    if (!fits(gpa, length)) throw new MigrationError(`${where}: not inside the VM's RAM`);
    end = gpa + length;
    out.push({ gpa, length });
  }
  return out;
}

/**
 * Reads exact byte counts from a socket (paused between reads, so a fast peer cannot make it
 * buffer without bound) and writes with back-pressure. A peer that closes, errors or is silent
 * for `idleMs` fails the pending read with a MigrationError.
 */
export class MigrationChannel {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private waiter: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | null = null;
  private failure: Error | null = null;
  private timer: NodeJS.Timeout | null = null;

  constructor(readonly socket: Socket, readonly peer: string, private readonly idleMs = 60_000) {
    socket.pause();
    socket.on('data', (b: Buffer) => {
      this.chunks.push(b);
      this.buffered += b.length;
      this.serve();
    });
    const fail = (why: string) => {
      this.failure ??= new MigrationError(`${peer}: ${why}`);
      this.serve();
    };
    socket.on('end', () => fail('the peer closed the connection'));
    socket.on('close', () => fail('the connection closed'));
    socket.on('error', (e) => fail(`connection error: ${e.message}`));
  }

  private serve(): void {
    const w = this.waiter;
    if (!w) { this.socket.pause(); return; }
    if (this.buffered >= w.n) {
      this.waiter = null;
      this.clearTimer();
      const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
      const out = all.subarray(0, w.n);
      const rest = all.subarray(w.n);
      this.chunks = rest.length ? [rest] : [];
      this.buffered = rest.length;
      this.socket.pause();
      w.resolve(out);
    } else if (this.failure) {
      this.waiter = null;
      this.clearTimer();
      w.reject(this.failure);
    } else {
      this.socket.resume();
    }
  }

  private clearTimer(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  /** Exactly `n` bytes (n may be 0). */
  read(n: number): Promise<Buffer> {
    if (this.waiter) return Promise.reject(new MigrationError('a read is already pending'));
    return new Promise((resolve, reject) => {
      this.waiter = { n, resolve, reject };
      this.timer = setTimeout(() => {
        this.failure ??= new MigrationError(`${this.peer}: nothing received for ${this.idleMs / 1000} s`);
        this.serve();
      }, this.idleMs);
      this.serve();
    });
  }

  async readHeader(): Promise<Header> {
    return decodeHeader(await this.read(HEADER_SIZE));
  }

  write(b: Uint8Array): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.socket.write(b, (e) => (e ? reject(new MigrationError(`${this.peer}: write failed: ${e.message}`)) : resolve()));
    });
  }

  close(): void {
    this.clearTimer();
    this.socket.destroy();
  }
}

/** `unix:/path` or `tcp:host:port` (CH's destination_url / receiver_url). */
export type MigrationAddress = { kind: 'unix'; path: string } | { kind: 'tcp'; host: string; port: number };

export function parseMigrationUrl(url: string, what: string): MigrationAddress {
  if (url.startsWith('unix:')) {
    const path = url.slice(5);
    if (path === '') throw new MigrationError(`${what} '${url}': empty socket path`);
    return { kind: 'unix', path };
  }
  const m = /^tcp:(.+):(\d+)$/.exec(url);
  if (m) {
    const port = Number(m[2]);
    if (port < 1 || port > 65535) throw new MigrationError(`${what} '${url}': port must be 1..65535`);
    return { kind: 'tcp', host: m[1]!.replace(/^\[(.*)\]$/, '$1'), port };
  }
  throw new MigrationError(`${what} '${url}': expected unix:<path> or tcp:<host>:<port>`);
}
