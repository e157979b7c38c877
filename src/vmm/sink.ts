// Writing a device's output (serial, virtio-console) to the host sink the user chose, without
// ever stalling the device: output goes into a bounded buffer; the buffer is written to the sink
// with non-blocking writes when the thread has time (and, for virtio-console, when poll(2) says
// the fd is writable). A sink that does not keep up (a paused terminal, a pipe nobody reads)
// loses the output that does not fit: it is dropped and counted (tx_dropped_bytes in
// vm.counters), never waited for, so vCPUs, stop and reboot never depend on a reader.
import { closeSync, fstatSync, openSync, writeSync, constants } from 'node:fs';
import * as libc from '../sys/libc.js';

/** Default buffer of a sink: output beyond this, while the sink is not writable, is dropped. */
export const DEFAULT_SINK_BUFFER_BYTES = 64 * 1024;

/**
 * The buffer size of every sink: STV_SINK_BUFFER_BYTES (512 B .. 16 MiB) overrides the default,
 * e.g. for a test that must overrun it without printing megabytes through an emulated UART.
 */
export function sinkBufferBytes(env: NodeJS.ProcessEnv = process.env): number {
  const v = env.STV_SINK_BUFFER_BYTES;
  if (v === undefined || v === '') return DEFAULT_SINK_BUFFER_BYTES;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 512 || n > 16 << 20) throw new Error(`STV_SINK_BUFFER_BYTES must be a byte count from 512 to 16777216, not '${v}'`);
  return n;
}

/** Computed once per thread (every thread gets the same environment). */
export const SINK_BUFFER_BYTES = sinkBufferBytes();
/** Largest write to a sink we could not make non-blocking (a socket): POLLOUT guarantees this much room. */
const GUARDED_WRITE_BYTES = 512;

/** Counters of one sink (vm.counters names, as Cloud Hypervisor's snake_case). */
export type SinkCounters = {
  tx_bytes: number;
  tx_dropped_bytes: number;
};

/**
 * An fd for writing to `fd` without blocking: a regular file (or block device) as it is (O_NONBLOCK
 * means nothing there); a pipe, FIFO or terminal reopened through /proc/self/fd with O_NONBLOCK,
 * so that the flag is on our own open file description and not on the one the VMM shares with
 * its parent (a shell's terminal left non-blocking breaks the shell). A socket cannot be reopened:
 * it is used as it is, each write preceded by poll(POLLOUT) and kept small (`guarded`).
 */
function nonBlocking(fd: number): { fd: number; owned: boolean; guarded: boolean } {
  try {
    const st = fstatSync(fd);
    if (st.isFile() || st.isBlockDevice()) return { fd, owned: false, guarded: false };
  } catch {
    return { fd, owned: false, guarded: true };
  }
  try {
    const own = openSync(`/proc/self/fd/${fd}`, constants.O_WRONLY | constants.O_NONBLOCK | constants.O_NOCTTY | libc.O_CLOEXEC);
    return { fd: own, owned: true, guarded: false };
  } catch {
    return { fd, owned: false, guarded: true };
  }
}

export class OutputSink {
  readonly counters: SinkCounters = { tx_bytes: 0, tx_dropped_bytes: 0 };
  private fd: number;
  private readonly owned: boolean;
  private readonly guarded: boolean;
  private readonly buf: Uint8Array;
  private head = 0;
  private len = 0;
  private full = false;
  private readonly pfd = libc.pollFds(1);

  /** `fd` < 0: no sink (output is discarded, not counted). */
  constructor(fd: number, capacity = SINK_BUFFER_BYTES) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError(`sink buffer size ${capacity} is invalid`);
    this.buf = new Uint8Array(capacity);
    if (fd < 0) {
      this.fd = -1;
      this.owned = false;
      this.guarded = false;
    } else {
      const nb = nonBlocking(fd);
      this.fd = nb.fd;
      this.owned = nb.owned;
      this.guarded = nb.guarded;
    }
  }

  /** Bytes buffered, not yet written. */
  get pending(): number {
    return this.len;
  }

  /** The last flush() left output behind (the sink took no more): wait for POLLOUT or a timer before the next. */
  get blocked(): boolean {
    return this.full && this.len > 0;
  }

  /** The fd to wait on for POLLOUT while output is pending; -1 when nothing waits. */
  get waitFd(): number {
    return this.len > 0 ? this.fd : -1;
  }

  /** Take the first `len` bytes of `bytes` (never blocks; what does not fit is dropped and counted). */
  write(bytes: Uint8Array, len = bytes.length): void {
    if (this.fd < 0) return;
    const cap = this.buf.length;
    const n = Math.min(len, cap - this.len);
    this.counters.tx_dropped_bytes += len - n;
    let tail = (this.head + this.len) % cap;
    let off = 0;
    while (off < n) {
      const run = Math.min(n - off, cap - tail);
      this.buf.set(run === bytes.length ? bytes : bytes.subarray(off, off + run), tail);
      off += run;
      tail = (tail + run) % cap;
    }
    this.len += n;
  }

  /**
   * Write what is buffered as far as the sink takes it now, without blocking. A sink that is gone
   * (EPIPE, EIO of a hung-up terminal, ...) is dropped: output is discarded from then on.
   */
  flush(): void {
    const cap = this.buf.length;
    this.full = false;
    while (this.len > 0 && this.fd >= 0) {
      let chunk = Math.min(this.len, cap - this.head);
      if (this.guarded) {
        libc.pollFdSet(this.pfd, 0, this.fd, libc.POLLOUT);
        try { if (libc.poll(this.pfd, 0) === 0) { this.full = true; return; } } catch { return; }
        if ((libc.pollRevents(this.pfd, 0) & libc.POLLOUT) === 0) {
          if ((libc.pollRevents(this.pfd, 0) & (libc.POLLERR | libc.POLLHUP)) !== 0) this.gone();
          return;
        }
        chunk = Math.min(chunk, GUARDED_WRITE_BYTES);
      }
      let w: number;
      try {
        w = writeSync(this.fd, this.buf, this.head, chunk);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'EAGAIN' || code === 'EINTR') { this.full = true; return; }
        this.gone();
        return;
      }
      this.counters.tx_bytes += w;
      this.head = (this.head + w) % cap;
      this.len -= w;
      if (w < chunk) { this.full = true; return; } // the sink is full for now
    }
    if (this.len === 0) this.head = 0;
  }

  private gone(): void {
    this.counters.tx_dropped_bytes += this.len;
    this.len = 0;
    this.head = 0;
    this.close();
  }

  /** Stop writing; close the fd this sink opened (never the caller's). Pending output is dropped and counted. */
  close(): void {
    this.counters.tx_dropped_bytes += this.len;
    this.len = 0;
    if (this.owned && this.fd >= 0) {
      try { closeSync(this.fd); } catch { /* already closed */ }
    }
    this.fd = -1;
  }
}
