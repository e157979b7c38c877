// virtio-console model (virtio 1.2, 5.3), single port: receiveq (0) and transmitq (1), no
// VIRTIO_CONSOLE_F_MULTIPORT. Output goes to a callback; input comes from a host fd the driver of
// the device polls (only while the guest has receive buffers posted, so an idle console costs
// nothing), or from pushInput().

import { readSync } from 'node:fs';
import type { GuestMemory } from '../../memory/guest_memory.js';
import { VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VirtioDeviceType, bit, type VirtioActivation, type VirtioDevice } from '../device.js';
import { DescriptorChain, MAX_QUEUE_SIZE, type SplitQueue } from '../queue.js';
import { HeldChain } from '../held_chain.js';
import { VirtioStateMismatchError, type VirtioDeviceSpecificState } from '../state.js';

/** Feature bits (5.3.3). */
export const VIRTIO_CONSOLE_F_SIZE = 0n;
export const VIRTIO_CONSOLE_F_MULTIPORT = 1n;
export const VIRTIO_CONSOLE_F_EMERG_WRITE = 2n;

/** Configuration layout (5.3.4, struct virtio_console_config), byte offsets. */
export const ConsoleConfig = {
  cols: 0, // le16
  rows: 2, // le16
  maxNrPorts: 4, // le32 (MULTIPORT only)
  emergWr: 8, // le32, write-only
  size: 12,
} as const;

export const CONSOLE_RECEIVEQ = 0;
export const CONSOLE_TRANSMITQ = 1;

export interface ConsoleDeviceOptions {
  /**
   * Receives guest output. Each call gets a fresh copy it may keep (the guest cannot change it
   * afterwards). One call per transmit chain, split in pieces of at most 64 KiB.
   */
  sink: (bytes: Uint8Array) => void;
  /**
   * Host input (a tty, a pipe, a file); the caller keeps ownership (close() leaves it open).
   * Preferably O_NONBLOCK; with a blocking fd, onFdReady() still makes only one read(2) per call,
   * which poll(2) said would not block.
   */
  input: { fd: number } | null;
  /** Console size reported with VIRTIO_CONSOLE_F_SIZE; default 80x24. */
  cols?: number;
  rows?: number;
  /** Largest queue size (power of two); default 256. */
  queueSize?: number;
  /**
   * The sink's buffer, when `sink` only buffers (vmm/sink.ts OutputSink): the fd to wait on for
   * POLLOUT while output is pending, what to do then, and its counters (vm.counters).
   */
  output?: { waitFd(): number; flush(): void; counters: Readonly<Record<string, number>> };
}

const STAGE_BYTES = 64 * 1024;
/** pushInput() keeps at most this much input while the guest has no receive buffers. */
const MAX_PENDING_INPUT = 1 << 20;
const NO_FDS: readonly number[] = Object.freeze([]);

export class ConsoleDevice implements VirtioDevice {
  readonly deviceType = VirtioDeviceType.Console;
  readonly numQueues = 2;
  readonly queueMaxSize: number;
  // EMERG_WRITE is not offered: the virtio-pci transport does not forward device-configuration
  // writes to the device's thread (writeConfig below still implements emerg_wr for other drivers).
  readonly features = bit(VIRTIO_CONSOLE_F_SIZE) | bit(VIRTIO_F_INDIRECT_DESC) | bit(VIRTIO_F_EVENT_IDX);

  private readonly sink: (bytes: Uint8Array) => void;
  private readonly inputFd: number;
  private readonly inputFds: readonly number[];
  private inputEof = false;
  private readonly config = new Uint8Array(ConsoleConfig.size);
  private readonly configView = new DataView(this.config.buffer);
  private readonly stage = new Uint8Array(STAGE_BYTES);
  private txChain: DescriptorChain;
  /** The receiveq chain popped for input (or pending output) that has not come yet. */
  private readonly rx: HeldChain;
  private pending: Uint8Array[] = [];
  private pendingOff = 0;
  private pendingBytes = 0;
  private act: VirtioActivation | null = null;
  private readonly outBuffer: ConsoleDeviceOptions['output'];
  readonly counters?: Readonly<Record<string, number>>;

  constructor(opts: ConsoleDeviceOptions) {
    const qs = opts.queueSize ?? 256;
    if (!Number.isInteger(qs) || qs < 1 || qs > MAX_QUEUE_SIZE || (qs & (qs - 1)) !== 0) {
      throw new RangeError(`virtio-console: queue size ${qs} is not a power of two in 1..${MAX_QUEUE_SIZE}`);
    }
    if (opts.input !== null && (!Number.isInteger(opts.input.fd) || opts.input.fd < 0)) {
      throw new RangeError(`virtio-console: invalid input fd ${opts.input.fd}`);
    }
    this.queueMaxSize = qs;
    this.sink = opts.sink;
    this.outBuffer = opts.output;
    if (opts.output) this.counters = opts.output.counters;
    this.inputFd = opts.input?.fd ?? -1;
    this.inputFds = Object.freeze(this.inputFd >= 0 ? [this.inputFd] : []);
    this.txChain = new DescriptorChain(qs);
    this.rx = new HeldChain(qs);
    this.setSizeFields(opts.cols ?? 80, opts.rows ?? 24);
  }

  private setSizeFields(cols: number, rows: number): void {
    if (!Number.isInteger(cols) || !Number.isInteger(rows) || cols < 0 || rows < 0 || cols > 0xffff || rows > 0xffff) {
      throw new RangeError(`virtio-console: invalid size ${cols}x${rows}`);
    }
    this.configView.setUint16(ConsoleConfig.cols, cols, true);
    this.configView.setUint16(ConsoleConfig.rows, rows, true);
  }

  /** Change the reported console size (5.3.4); a configuration change notification follows when active. */
  setSize(cols: number, rows: number): void {
    this.setSizeFields(cols, rows);
    const a = this.act;
    if (a !== null && (a.features & bit(VIRTIO_CONSOLE_F_SIZE)) !== 0n) a.notifyConfig();
  }

  get cols(): number { return this.configView.getUint16(ConsoleConfig.cols, true); }
  get rows(): number { return this.configView.getUint16(ConsoleConfig.rows, true); }

  readConfig(offset: number, data: Uint8Array): void {
    data.fill(0);
    // emerg_wr reads as 0 (it is write-only).
    const end = Math.min(ConsoleConfig.emergWr, offset + data.length);
    for (let o = Math.max(0, offset); o < end; o++) data[o - offset] = this.config[o]!;
  }

  /** 5.3.4 emerg_wr (VIRTIO_CONSOLE_F_EMERG_WRITE): a write outputs its low byte, even before DRIVER_OK. */
  writeConfig(offset: number, data: Uint8Array): void {
    if (offset === ConsoleConfig.emergWr && data.length >= 1) this.sink(Uint8Array.of(data[0]!));
  }

  activate(a: VirtioActivation): void {
    let max = this.txChain.capacity;
    for (const q of a.queues) if (q !== null && q.size > max) max = q.size;
    if (max > this.txChain.capacity) {
      this.txChain = new DescriptorChain(max);
    }
    this.rx.grow(max);
    this.act = a;
  }

  processQueue(index: number): void {
    const a = this.act;
    if (a === null) return;
    const q = a.queues[index];
    if (q === undefined || q === null) return;
    if (index === CONSOLE_TRANSMITQ) this.transmit(a, q);
    else if (index === CONSOLE_RECEIVEQ) this.deliverPending(a, q);
  }

  /** Guest input from a test or an API: delivered as soon as receive buffers are available. */
  pushInput(bytes: Uint8Array): void {
    if (bytes.length === 0) return;
    const room = MAX_PENDING_INPUT - this.pendingBytes;
    if (room <= 0) return;
    const copy = bytes.slice(0, room);
    this.pending.push(copy);
    this.pendingBytes += copy.length;
    const a = this.act;
    const q = a?.queues[CONSOLE_RECEIVEQ];
    if (a !== null && q !== undefined && q !== null) this.deliverPending(a, q);
  }

  /** The sink's fd while buffered output waits for it to become writable. */
  pollOutFd(): number {
    return this.outBuffer?.waitFd() ?? -1;
  }

  onFdWritable(): void {
    this.outBuffer?.flush();
  }

  /** The input fd while the guest has receive buffers posted (and input has not ended). */
  pollFds(): readonly number[] {
    if (this.inputFd < 0 || this.inputEof) return NO_FDS;
    const q = this.act?.queues[CONSOLE_RECEIVEQ];
    if (q === undefined || q === null) return NO_FDS;
    return this.rx.held || q.hasAvailable() ? this.inputFds : NO_FDS;
  }

  /** The input fd is readable: one read(2) into the next receive buffer. */
  onFdReady(fd: number): void {
    if (fd !== this.inputFd || this.inputEof) return;
    const a = this.act;
    if (a === null) return;
    const q = a.queues[CONSOLE_RECEIVEQ];
    if (q === undefined || q === null) return;
    try {
      for (;;) {
        const c = this.rx.next(q);
        if (c === null) return;
        // The first non-empty device-writable segment takes the read.
        let k = c.readableCount;
        while (k < c.length && c.len[k] === 0) k++;
        if (k === c.length) { // nowhere to put input: hand it back empty, try the next one
          this.rx.complete(q, 0);
          continue;
        }
        const len = Math.min(c.len[k]!, STAGE_BYTES);
        const view = a.mem.slice(c.addr[k]!, len);
        let n: number;
        try {
          n = readSync(fd, view, 0, len, null);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code === 'EAGAIN') return; // nothing after all
          n = 0; // EIO (hung-up tty) and the like: treat as the end of input
        }
        if (n === 0) { this.inputEof = true; return; }
        this.rx.complete(q, n);
        return;
      }
    } finally {
      if (q.needsInterrupt()) a.notifyQueue(CONSOLE_RECEIVEQ);
    }
  }

  reset(): void {
    this.act = null;
    this.rx.release();
    this.pending = [];
    this.pendingOff = 0;
    this.pendingBytes = 0;
  }

  /** Hand back the receive buffer held for input that has not come (input stays in the host fd). */
  pause(): void {
    const q = this.act?.queues[CONSOLE_RECEIVEQ];
    if (q !== undefined && q !== null) this.rx.giveBack(q);
  }

  saveState(): VirtioDeviceSpecificState {
    return { kind: 'console', cols: this.cols, rows: this.rows };
  }

  restoreState(s: VirtioDeviceSpecificState): void {
    if (s.kind !== 'console') throw new VirtioStateMismatchError(`saved ${s.kind} state for a virtio-console device`);
    this.setSizeFields(s.cols, s.rows);
  }

  /** Nothing to release: the input fd belongs to the caller. */
  close(): void {
    this.reset();
  }

  // -------------------------------------------------------------------------------------------

  /** transmitq (5.3.6): every readable byte of each chain goes to the sink; used length 0. */
  private transmit(a: VirtioActivation, q: SplitQueue): void {
    const c = this.txChain;
    const mem = a.mem;
    try {
      do {
        q.disableNotification();
        while (q.pop(c)) {
          this.output(mem, c);
          q.addUsed(c.head, 0);
        }
      } while (q.enableNotification());
    } finally {
      if (q.needsInterrupt()) a.notifyQueue(CONSOLE_TRANSMITQ);
    }
  }

  private output(mem: GuestMemory, c: DescriptorChain): void {
    const st = this.stage;
    let fill = 0;
    for (let k = 0; k < c.readableCount; k++) {
      const addr = c.addr[k]!;
      const len = c.len[k]!;
      let off = 0;
      while (off < len) {
        const n = Math.min(len - off, STAGE_BYTES - fill);
        st.set(mem.slice(addr + off, n), fill);
        fill += n;
        off += n;
        if (fill === STAGE_BYTES) {
          this.sink(st.slice(0, fill));
          fill = 0;
        }
      }
    }
    if (fill > 0) this.sink(st.slice(0, fill));
  }

  /** receiveq: pushInput() bytes into posted receive buffers. */
  private deliverPending(a: VirtioActivation, q: SplitQueue): void {
    if (this.pendingBytes === 0) return;
    try {
      while (this.pendingBytes > 0) {
        const c = this.rx.next(q);
        if (c === null) return;
        let done = 0;
        for (let k = c.readableCount; k < c.length && this.pendingBytes > 0; k++) {
          const addr = c.addr[k]!;
          const len = c.len[k]!;
          let off = 0;
          while (off < len && this.pendingBytes > 0) {
            const src = this.pending[0]!;
            const n = Math.min(len - off, src.length - this.pendingOff);
            a.mem.slice(addr + off, n).set(src.subarray(this.pendingOff, this.pendingOff + n));
            off += n;
            done += n;
            this.pendingOff += n;
            this.pendingBytes -= n;
            if (this.pendingOff === src.length) {
              this.pending.shift();
              this.pendingOff = 0;
            }
          }
        }
        this.rx.complete(q, done);
      }
    } finally {
      if (q.needsInterrupt()) a.notifyQueue(CONSOLE_RECEIVEQ);
    }
  }
}
