// virtio-blk device model (virtio 1.2, 5.2) over a raw image file.
//
// The VMM opens (and flock()s) the image in the main thread and passes the fd; this model does
// synchronous I/O on it from the device's worker thread, straight between the file and guest RAM
// (readSync/writeSync on mem.slice() views: no bounce buffer). Requests are parsed without
// assuming any framing (2.6.4): the header is the first 16 device-readable bytes, the status
// byte the last device-writable byte, the data whatever lies between.

import { closeSync, fdatasyncSync, readSync, writeSync } from 'node:fs';
import { GuestMemoryRevokedError, type GuestMemory } from '../../memory/guest_memory.js';
import * as libc from '../../sys/libc.js';
import { VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VirtioDeviceType, bit, type VirtioActivation, type VirtioDevice } from '../device.js';
import { DescriptorChain, MAX_QUEUE_SIZE, VirtqueueError } from '../queue.js';
import { LimiterTimer, type RateLimiter } from '../rate_limiter.js';
import { VirtioStateMismatchError, type VirtioDeviceSpecificState } from '../state.js';

/** Feature bits (5.2.3). */
export const VIRTIO_BLK_F_SIZE_MAX = 1n;
export const VIRTIO_BLK_F_SEG_MAX = 2n;
export const VIRTIO_BLK_F_GEOMETRY = 4n;
export const VIRTIO_BLK_F_RO = 5n;
export const VIRTIO_BLK_F_BLK_SIZE = 6n;
export const VIRTIO_BLK_F_FLUSH = 9n;
export const VIRTIO_BLK_F_TOPOLOGY = 10n;
export const VIRTIO_BLK_F_CONFIG_WCE = 11n;
export const VIRTIO_BLK_F_MQ = 12n;
export const VIRTIO_BLK_F_DISCARD = 13n;
export const VIRTIO_BLK_F_WRITE_ZEROES = 14n;

/** Request types (5.2.6). */
export const VIRTIO_BLK_T_IN = 0;
export const VIRTIO_BLK_T_OUT = 1;
export const VIRTIO_BLK_T_FLUSH = 4;
export const VIRTIO_BLK_T_GET_ID = 8;
export const VIRTIO_BLK_T_DISCARD = 11;
export const VIRTIO_BLK_T_WRITE_ZEROES = 13;

/** Status values (5.2.6). */
export const VIRTIO_BLK_S_OK = 0;
export const VIRTIO_BLK_S_IOERR = 1;
export const VIRTIO_BLK_S_UNSUPP = 2;

/** virtio_blk_discard_write_zeroes.flags bit 0 (5.2.6). */
export const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 1;

export const SECTOR_SIZE = 512;
/** GET_ID answers this many bytes (5.2.6: a string of up to 20 bytes, NUL-padded). */
export const VIRTIO_BLK_ID_BYTES = 20;
/** Limits advertised for DISCARD / WRITE_ZEROES (5.2.4). */
export const MAX_DISCARD_SECTORS = 0x400000; // 2 GiB per segment
export const MAX_DISCARD_SEG = 16;
export const DISCARD_SECTOR_ALIGNMENT = 8; // 4 KiB: the granularity of a hole in the image file

/** Configuration layout (5.2.4, struct virtio_blk_config), byte offsets. */
export const BlkConfig = {
  capacity: 0, // le64, in 512-byte sectors
  sizeMax: 8, // le32
  segMax: 12, // le32
  geometry: 16, // le16 cylinders, u8 heads, u8 sectors
  blkSize: 20, // le32
  topology: 24, // u8 physical_block_exp, u8 alignment_offset, le16 min_io_size, le32 opt_io_size
  writeback: 32, // u8
  numQueues: 34, // le16
  maxDiscardSectors: 36, // le32
  maxDiscardSeg: 40, // le32
  discardSectorAlignment: 44, // le32
  maxWriteZeroesSectors: 48, // le32
  maxWriteZeroesSeg: 52, // le32
  writeZeroesMayUnmap: 56, // u8
  size: 60,
} as const;

export interface BlockDeviceOptions {
  /** Open image file (O_RDWR, or O_RDONLY when `readonly`); closed by close(). */
  fd: number;
  /** Image size in bytes; the capacity is size / 512, rounded down. */
  size: number;
  readonly: boolean;
  /** Request queues (VIRTIO_BLK_F_MQ when > 1). */
  numQueues: number;
  /** Largest queue size (a power of two, 2..32768). */
  queueSize: number;
  /** GET_ID answer: up to 20 bytes (UTF-8; longer is cut). */
  serial: string;
  /**
   * Cloud Hypervisor's rate_limiter_config (or the limiter of its rate_limit_group, shared with
   * the group's other disks): each request takes its data bytes and one op (flush, get-id,
   * discard and write-zeroes: the op only). A refused request stays in the available ring.
   */
  rateLimiter?: RateLimiter;
}

const EMPTY: readonly number[] = Object.freeze([]);

const HEADER_BYTES = 16; // struct virtio_blk_req: le32 type, le32 reserved, le64 sector
const DWZ_BYTES = 16; // struct virtio_blk_discard_write_zeroes: le64 sector, le32 num_sectors, le32 flags
/**
 * Largest single read/write/preadv/pwritev. A guest request may be up to 4 GiB; split into
 * chunks, no one system call runs unbounded for it, and guest memory is checked for revocation
 * (the VM stopping) between chunks, so a stop waits for at most one chunk per I/O thread.
 */
export const IO_CHUNK = 4 << 20;
const ZERO_CHUNK = 1 << 16;
const TWO_32 = 2 ** 32;

export class BlockDevice implements VirtioDevice {
  readonly deviceType = VirtioDeviceType.Block;
  readonly numQueues: number;
  readonly queueMaxSize: number;
  readonly features: bigint;
  /** Capacity in 512-byte sectors. */
  readonly capacity: number;
  readonly readonly: boolean;

  private fd: number;
  /**
   * Cloud Hypervisor's block counters (vm.counters); monotonic, reset() keeps them. With a rate
   * limiter also `rate_limited`: how many times a queue stopped to wait for tokens.
   */
  readonly counters: { read_bytes: number; write_bytes: number; read_ops: number; write_ops: number; rate_limited?: number } = { read_bytes: 0, write_bytes: 0, read_ops: 0, write_ops: 0 };
  private readonly config: Uint8Array;
  private readonly id = new Uint8Array(VIRTIO_BLK_ID_BYTES);
  private readonly hdr = new Uint8Array(HEADER_BYTES);
  /** struct iovec[IOV_MAX] for preadv/pwritev over guest RAM. */
  private readonly iov = new Uint8Array(libc.IOV_MAX * libc.IOVEC_SIZE);
  private readonly iovView = new DataView(this.iov.buffer);
  private readonly hdrView = new DataView(this.hdr.buffer);
  private readonly dwz = new Uint8Array(DWZ_BYTES * MAX_DISCARD_SEG);
  private readonly dwzView = new DataView(this.dwz.buffer);
  private zeros: Uint8Array | null = null;
  private chain: DescriptorChain;
  private act: VirtioActivation | null = null;
  private discard = false;
  private writeZeroes = false;
  // Result of parseSector(): set instead of returned, so the request path does not allocate.
  private reqSector = 0;
  private readonly limiter: RateLimiter | null;
  /** Armed while a queue waits for tokens; polled (pollFds) whenever there is a limiter. */
  private readonly timer: LimiterTimer | null;
  private readonly timerFds: readonly number[];
  /** Per queue: its next request was refused tokens; resumed when the timer fires. */
  private readonly throttled: Uint8Array;
  /** Cost of the request limitOk() last looked at. */
  private costBytes = 0;

  constructor(opts: BlockDeviceOptions) {
    const { fd, size, numQueues, queueSize } = opts;
    if (!Number.isInteger(fd) || fd < 0) throw new RangeError(`virtio-blk: invalid fd ${fd}`);
    if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`virtio-blk: invalid image size ${size}`);
    if (!Number.isInteger(numQueues) || numQueues < 1 || numQueues > 0xffff) throw new RangeError(`virtio-blk: invalid number of queues ${numQueues}`);
    if (!Number.isInteger(queueSize) || queueSize < 2 || queueSize > MAX_QUEUE_SIZE || (queueSize & (queueSize - 1)) !== 0) {
      throw new RangeError(`virtio-blk: queue size ${queueSize} is not a power of two in 2..${MAX_QUEUE_SIZE}`);
    }
    this.fd = fd;
    this.readonly = opts.readonly;
    this.numQueues = numQueues;
    this.queueMaxSize = queueSize;
    this.capacity = Math.floor(size / SECTOR_SIZE);
    this.chain = new DescriptorChain(queueSize);
    this.limiter = opts.rateLimiter !== undefined && !opts.rateLimiter.unlimited ? opts.rateLimiter : null;
    this.timer = this.limiter !== null ? new LimiterTimer() : null;
    this.timerFds = this.timer !== null ? Object.freeze([this.timer.fd]) : EMPTY;
    this.throttled = new Uint8Array(numQueues);
    if (this.limiter !== null) this.counters.rate_limited = 0;
    const idBytes = new TextEncoder().encode(opts.serial);
    this.id.set(idBytes.subarray(0, VIRTIO_BLK_ID_BYTES));

    let f = bit(VIRTIO_BLK_F_SEG_MAX) | bit(VIRTIO_BLK_F_BLK_SIZE) | bit(VIRTIO_BLK_F_FLUSH)
      | bit(VIRTIO_F_INDIRECT_DESC) | bit(VIRTIO_F_EVENT_IDX);
    if (opts.readonly) f |= bit(VIRTIO_BLK_F_RO);
    else f |= bit(VIRTIO_BLK_F_DISCARD) | bit(VIRTIO_BLK_F_WRITE_ZEROES);
    if (numQueues > 1) f |= bit(VIRTIO_BLK_F_MQ);
    this.features = f;

    // 5.2.4: configuration layout.
    const c = new Uint8Array(BlkConfig.size);
    const dv = new DataView(c.buffer);
    dv.setUint32(BlkConfig.capacity, this.capacity % TWO_32, true);
    dv.setUint32(BlkConfig.capacity + 4, Math.floor(this.capacity / TWO_32), true);
    // Two descriptors of a chain go to the header and the status byte (5.2.6, Linux sizes its
    // scatter lists as seg_max + 2).
    dv.setUint32(BlkConfig.segMax, Math.max(1, queueSize - 2), true);
    dv.setUint32(BlkConfig.blkSize, SECTOR_SIZE, true);
    dv.setUint16(BlkConfig.numQueues, numQueues, true);
    if (!opts.readonly) {
      dv.setUint32(BlkConfig.maxDiscardSectors, MAX_DISCARD_SECTORS, true);
      dv.setUint32(BlkConfig.maxDiscardSeg, MAX_DISCARD_SEG, true);
      dv.setUint32(BlkConfig.discardSectorAlignment, DISCARD_SECTOR_ALIGNMENT, true);
      dv.setUint32(BlkConfig.maxWriteZeroesSectors, MAX_DISCARD_SECTORS, true);
      dv.setUint32(BlkConfig.maxWriteZeroesSeg, MAX_DISCARD_SEG, true);
      c[BlkConfig.writeZeroesMayUnmap] = 1;
    }
    this.config = c;
  }

  readConfig(offset: number, data: Uint8Array): void {
    data.fill(0);
    if (offset >= this.config.length || offset < 0) return;
    data.set(this.config.subarray(offset, Math.min(this.config.length, offset + data.length)));
  }

  /** Nothing in the configuration is writable without VIRTIO_BLK_F_CONFIG_WCE (not offered). */
  writeConfig(_offset: number, _data: Uint8Array): void {}

  activate(a: VirtioActivation): void {
    let max = this.chain.capacity;
    for (const q of a.queues) if (q !== null && q.size > max) max = q.size;
    if (max > this.chain.capacity) this.chain = new DescriptorChain(max);
    this.discard = (a.features & bit(VIRTIO_BLK_F_DISCARD)) !== 0n;
    this.writeZeroes = (a.features & bit(VIRTIO_BLK_F_WRITE_ZEROES)) !== 0n;
    this.act = a;
  }

  /** Complete every available request on queue `index` (2.7.10 notification suppression). */
  processQueue(index: number): void {
    const a = this.act;
    if (a === null) return;
    const q = a.queues[index];
    if (q === undefined || q === null) return;
    const c = this.chain;
    const mem = a.mem;
    const lim = this.limiter;
    try {
      do {
        q.disableNotification();
        while (q.pop(c)) {
          if (lim !== null && !this.admit(lim, mem, c)) {
            // No tokens: the request stays in the available ring until the timer fires.
            q.undoPop();
            this.throttle(index, lim.waitMs(this.costBytes, 1));
            return;
          }
          q.addUsed(c.head, this.handle(mem, c));
        }
      } while (q.enableNotification());
    } finally {
      // Also when a malformed chain stops us: what was completed must reach the driver.
      if (q.needsInterrupt()) a.notifyQueue(index);
    }
  }

  /** The throttle timer, when the disk has a rate limiter (readable only while armed and expired). */
  pollFds(): readonly number[] {
    return this.timerFds;
  }

  /** The throttle timer fired: take requests from the queues that were waiting again. */
  onFdReady(fd: number): void {
    const t = this.timer;
    if (t === null || fd !== t.fd) return;
    t.ack();
    const th = this.throttled;
    for (let i = 0; i < th.length; i++) {
      if (th[i] === 0) continue;
      th[i] = 0;
      this.processQueue(i);
    }
  }

  reset(): void {
    this.act = null;
    this.discard = false;
    this.writeZeroes = false;
    this.throttled.fill(0);
    if (this.timer?.armed) this.timer.disarm();
  }

  /** Requests complete within processQueue: after a pause nothing is in flight, nothing to hand back. */
  pause(): void {}

  saveState(): VirtioDeviceSpecificState {
    return { kind: 'block', capacity: BigInt(this.capacity), readonly: this.readonly, numQueues: this.numQueues, config: this.config.slice() };
  }

  /** The saved configuration must be this disk's: same capacity, mode and queues. */
  restoreState(s: VirtioDeviceSpecificState): void {
    if (s.kind !== 'block') throw new VirtioStateMismatchError(`saved ${s.kind} state for a virtio-blk device`);
    if (s.capacity !== BigInt(this.capacity)) throw new VirtioStateMismatchError(`the saved disk had ${s.capacity} sectors, this image has ${this.capacity}`);
    if (s.readonly !== this.readonly) throw new VirtioStateMismatchError(`the saved disk was ${s.readonly ? 'read-only' : 'read-write'}, this one is ${this.readonly ? 'read-only' : 'read-write'}`);
    if (s.numQueues !== this.numQueues) throw new VirtioStateMismatchError(`the saved disk had ${s.numQueues} queues, this one has ${this.numQueues}`);
    if (s.config.length !== this.config.length || s.config.some((b, i) => b !== this.config[i])) throw new VirtioStateMismatchError('the saved disk configuration (5.2.4) differs from this one\'s');
  }

  /** Closes the image fd. */
  close(): void {
    this.act = null;
    this.timer?.close();
    if (this.fd >= 0) {
      const fd = this.fd;
      this.fd = -1;
      try { closeSync(fd); } catch { /* already closed */ }
    }
  }

  // --- rate limiting -------------------------------------------------------------------------

  /**
   * Take the tokens request `c` costs: its data bytes (IN: the device-writable bytes before the
   * status byte; OUT: the device-readable bytes after the header) and one op.
   */
  private admit(lim: RateLimiter, mem: GuestMemory, c: DescriptorChain): boolean {
    let bytes = 0;
    if (c.readableBytes >= HEADER_BYTES) {
      this.readHeader(mem, c);
      const type = this.hdrView.getUint32(0, true);
      if (type === VIRTIO_BLK_T_IN) bytes = c.writableBytes > 0 ? c.writableBytes - 1 : 0;
      else if (type === VIRTIO_BLK_T_OUT) bytes = c.readableBytes - HEADER_BYTES;
    }
    this.costBytes = bytes;
    return lim.consume(bytes, 1);
  }

  private throttle(index: number, ms: number): void {
    this.throttled[index] = 1;
    this.counters.rate_limited!++;
    const t = this.timer!;
    if (!t.armed) t.arm(ms);
  }

  // --- requests ------------------------------------------------------------------------------

  /** Execute one request; writes its status byte and returns the used length. */
  private handle(mem: GuestMemory, c: DescriptorChain): number {
    // 5.2.6: the status byte is the last device-writable byte of the chain.
    let si = c.length - 1;
    while (si >= c.readableCount && c.len[si] === 0) si--;
    if (si < c.readableCount) {
      throw new VirtqueueError('request', `virtio-blk request (head ${c.head}) has no device-writable status byte`);
    }
    const statusAddr = c.addr[si]! + c.len[si]! - 1;
    const dataIn = c.writableBytes - 1; // device-writable bytes before the status byte
    let used = 1;
    let status: number;
    if (c.readableBytes < HEADER_BYTES) {
      status = VIRTIO_BLK_S_IOERR; // header too short
    } else {
      this.readHeader(mem, c);
      const type = this.hdrView.getUint32(0, true);
      const dataOut = c.readableBytes - HEADER_BYTES; // device-readable bytes after the header
      switch (type) {
        case VIRTIO_BLK_T_IN:
          status = dataOut !== 0 ? VIRTIO_BLK_S_IOERR : this.doRead(mem, c, dataIn);
          if (status === VIRTIO_BLK_S_OK) {
            used += dataIn;
            this.counters.read_ops++;
            this.counters.read_bytes += dataIn;
          }
          break;
        case VIRTIO_BLK_T_OUT:
          status = dataIn !== 0 || this.readonly ? VIRTIO_BLK_S_IOERR : this.doWrite(mem, c, dataOut);
          if (status === VIRTIO_BLK_S_OK) {
            this.counters.write_ops++;
            this.counters.write_bytes += dataOut;
          }
          break;
        case VIRTIO_BLK_T_FLUSH:
          status = this.doFlush();
          break;
        case VIRTIO_BLK_T_GET_ID:
          if (dataOut !== 0) {
            status = VIRTIO_BLK_S_IOERR;
          } else {
            used += this.writeId(mem, c, dataIn);
            status = VIRTIO_BLK_S_OK;
          }
          break;
        case VIRTIO_BLK_T_DISCARD:
        case VIRTIO_BLK_T_WRITE_ZEROES:
          if (!(type === VIRTIO_BLK_T_DISCARD ? this.discard : this.writeZeroes)) status = VIRTIO_BLK_S_UNSUPP;
          else if (dataIn !== 0 || this.readonly) status = VIRTIO_BLK_S_IOERR;
          else status = this.doDiscardOrZero(mem, c, type, dataOut);
          break;
        default:
          status = VIRTIO_BLK_S_UNSUPP;
      }
    }
    mem.writeU8(statusAddr, status);
    return used;
  }

  /** The first 16 readable bytes into `hdr` (they may span descriptors: 2.6.4). */
  private readHeader(mem: GuestMemory, c: DescriptorChain): void {
    if (c.len[0]! >= HEADER_BYTES) {
      const a = c.addr[0]!;
      const v = this.hdrView;
      v.setUint32(0, mem.readU32(a), true);
      v.setUint32(4, mem.readU32(a + 4), true);
      v.setUint32(8, mem.readU32(a + 8), true);
      v.setUint32(12, mem.readU32(a + 12), true);
      return;
    }
    gather(mem, c, 0, this.hdr, 0, HEADER_BYTES);
  }

  /**
   * Check `nsect` sectors from the 64-bit sector number (lo, hi) against the capacity (5.2.6.1:
   * nothing beyond capacity); on success sets reqSector.
   */
  private inRange(lo: number, hi: number, nsect: number): boolean {
    // hi >= 2^21 means sector >= 2^53: beyond any capacity, and not exact as a number.
    if (hi >= 0x200000) return false;
    const sector = hi * TWO_32 + lo;
    if (sector > this.capacity || nsect > this.capacity - sector) return false;
    this.reqSector = sector;
    return true;
  }

  /**
   * Fill the iovec array with the host addresses of segments [from, to) of `c`, skipping the
   * first `skip` bytes and stopping after `total` bytes. Returns the iovec count, or -1 when a
   * segment has no host address (test memory) or there are more than IOV_MAX segments.
   */
  private buildIov(mem: GuestMemory, c: DescriptorChain, from: number, to: number, skip: number, total: number): number {
    let n = 0;
    let left = total;
    const dv = this.iovView;
    for (let k = from; k < to && left > 0; k++) {
      let off = 0;
      const len = c.len[k]!;
      if (skip > 0) { off = Math.min(skip, len); skip -= off; }
      const take = Math.min(len - off, left);
      if (take === 0) continue;
      if (n === libc.IOV_MAX) return -1;
      const host = mem.hostAddress(c.addr[k]! + off, take);
      if (host < 0) return -1;
      const o = n * libc.IOVEC_SIZE;
      dv.setUint32(o, host % TWO_32, true);
      dv.setUint32(o + 4, Math.floor(host / TWO_32), true);
      dv.setUint32(o + 8, take, true);
      dv.setUint32(o + 12, 0, true);
      n++;
      left -= take;
    }
    return n;
  }

  /** VIRTIO_BLK_T_IN: file -> the writable data bytes, in place. */
  private doRead(mem: GuestMemory, c: DescriptorChain, dataIn: number): number {
    if (dataIn % SECTOR_SIZE !== 0) return VIRTIO_BLK_S_IOERR; // 5.2.6.1: whole sectors
    const v = this.hdrView;
    if (!this.inRange(v.getUint32(8, true), v.getUint32(12, true), dataIn / SECTOR_SIZE)) return VIRTIO_BLK_S_IOERR;
    let pos = this.reqSector * SECTOR_SIZE;
    // preadv straight into guest RAM, IO_CHUNK bytes at a time; a short read (end of a file that
    // shrank) or memory without host addresses takes the per-segment path below.
    let done = 0;
    while (done < dataIn) {
      if (mem.revoked) throw new GuestMemoryRevokedError();
      const len = Math.min(IO_CHUNK, dataIn - done);
      const cnt = this.buildIov(mem, c, c.readableCount, c.length, done, len);
      if (cnt <= 0 || libc.preadvRaw(this.fd, this.iov, cnt, pos + done) !== len) break;
      done += len;
    }
    if (dataIn > 0 && done === dataIn) return VIRTIO_BLK_S_OK;
    let left = dataIn;
    for (let k = c.readableCount; k < c.length && left > 0; k++) {
      const n = Math.min(c.len[k]!, left);
      if (n === 0) continue;
      if (!this.readFully(mem, mem.slice(c.addr[k]!, n), pos)) return VIRTIO_BLK_S_IOERR;
      pos += n;
      left -= n;
    }
    return VIRTIO_BLK_S_OK;
  }

  /** pread the whole view from `pos` (zeros past the end of a file that shrank). False on an I/O error. */
  private readFully(mem: GuestMemory, view: Uint8Array, pos: number): boolean {
    const n = view.length;
    let off = 0;
    try {
      while (off < n) {
        if (mem.revoked) throw new GuestMemoryRevokedError();
        const r = readSync(this.fd, view, off, Math.min(n - off, IO_CHUNK), pos + off);
        if (r === 0) { view.fill(0, off); break; }
        off += r;
      }
    } catch (e) {
      if (e instanceof GuestMemoryRevokedError) throw e;
      return false;
    }
    return true;
  }

  /** pwrite the whole view at `pos`. False on an I/O error. */
  private writeFully(mem: GuestMemory, view: Uint8Array, pos: number): boolean {
    const n = view.length;
    let off = 0;
    try {
      while (off < n) {
        if (mem.revoked) throw new GuestMemoryRevokedError();
        const w = writeSync(this.fd, view, off, Math.min(n - off, IO_CHUNK), pos + off);
        if (w <= 0) return false;
        off += w;
      }
    } catch (e) {
      if (e instanceof GuestMemoryRevokedError) throw e;
      return false;
    }
    return true;
  }

  /** VIRTIO_BLK_T_OUT: the readable data bytes after the header -> file, in place. */
  private doWrite(mem: GuestMemory, c: DescriptorChain, dataOut: number): number {
    if (dataOut % SECTOR_SIZE !== 0) return VIRTIO_BLK_S_IOERR;
    const v = this.hdrView;
    if (!this.inRange(v.getUint32(8, true), v.getUint32(12, true), dataOut / SECTOR_SIZE)) return VIRTIO_BLK_S_IOERR;
    let pos = this.reqSector * SECTOR_SIZE;
    let done = 0;
    while (done < dataOut) {
      if (mem.revoked) throw new GuestMemoryRevokedError();
      const len = Math.min(IO_CHUNK, dataOut - done);
      const cnt = this.buildIov(mem, c, 0, c.readableCount, HEADER_BYTES + done, len);
      if (cnt <= 0 || libc.pwritevRaw(this.fd, this.iov, cnt, pos + done) !== len) break;
      done += len;
    }
    if (dataOut > 0 && done === dataOut) return VIRTIO_BLK_S_OK;
    let skip = HEADER_BYTES;
    for (let k = 0; k < c.readableCount; k++) {
      let segOff = 0;
      const len = c.len[k]!;
      if (skip > 0) {
        segOff = Math.min(skip, len);
        skip -= segOff;
      }
      const n = len - segOff;
      if (n === 0) continue;
      if (!this.writeFully(mem, mem.slice(c.addr[k]! + segOff, n), pos)) return VIRTIO_BLK_S_IOERR;
      pos += n;
    }
    return VIRTIO_BLK_S_OK;
  }

  /**
   * VIRTIO_BLK_T_FLUSH (5.2.6.2: written data must reach non-volatile storage before the device
   * completes it). fdatasync, not fsync: the image's size never changes (writes beyond capacity
   * are refused), and fdatasync still writes the metadata needed to read the data back (block
   * allocation of a sparse image, a size change), skipping only timestamps (fdatasync(2)).
   */
  private doFlush(): number {
    try {
      fdatasyncSync(this.fd);
      return VIRTIO_BLK_S_OK;
    } catch {
      return VIRTIO_BLK_S_IOERR;
    }
  }

  /** VIRTIO_BLK_T_GET_ID: up to 20 bytes of the serial into the writable data bytes. */
  private writeId(mem: GuestMemory, c: DescriptorChain, dataIn: number): number {
    const total = Math.min(dataIn, VIRTIO_BLK_ID_BYTES);
    let done = 0;
    for (let k = c.readableCount; k < c.length && done < total; k++) {
      const a = c.addr[k]!;
      const n = Math.min(c.len[k]!, total - done);
      for (let i = 0; i < n; i++) mem.writeU8(a + i, this.id[done + i]!);
      done += n;
    }
    return total;
  }

  /** VIRTIO_BLK_T_DISCARD / WRITE_ZEROES (5.2.6): all segments validated before any is executed. */
  private doDiscardOrZero(mem: GuestMemory, c: DescriptorChain, type: number, dataOut: number): number {
    if (dataOut === 0 || dataOut % DWZ_BYTES !== 0) return VIRTIO_BLK_S_IOERR;
    const nseg = dataOut / DWZ_BYTES;
    if (nseg > MAX_DISCARD_SEG) return VIRTIO_BLK_S_IOERR; // 5.2.6.2: more than max_*_seg
    gather(mem, c, HEADER_BYTES, this.dwz, 0, dataOut);
    const v = this.dwzView;
    for (let s = 0; s < nseg; s++) {
      const o = s * DWZ_BYTES;
      const num = v.getUint32(o + 8, true);
      const flags = v.getUint32(o + 12, true);
      // 5.2.6.2: unknown flags, or unmap on a discard, are unsupported.
      if (type === VIRTIO_BLK_T_DISCARD ? flags !== 0 : (flags & ~VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) !== 0) return VIRTIO_BLK_S_UNSUPP;
      if (num > MAX_DISCARD_SECTORS) return VIRTIO_BLK_S_IOERR;
      if (!this.inRange(v.getUint32(o, true), v.getUint32(o + 4, true), num)) return VIRTIO_BLK_S_IOERR;
    }
    for (let s = 0; s < nseg; s++) {
      const o = s * DWZ_BYTES;
      this.inRange(v.getUint32(o, true), v.getUint32(o + 4, true), 0);
      const pos = this.reqSector * SECTOR_SIZE;
      const len = v.getUint32(o + 8, true) * SECTOR_SIZE;
      if (len === 0) continue;
      const unmap = (v.getUint32(o + 12, true) & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) !== 0;
      const st = type === VIRTIO_BLK_T_DISCARD ? this.punch(pos, len) : this.zero(mem, pos, len, unmap);
      if (st !== VIRTIO_BLK_S_OK) return st;
    }
    return VIRTIO_BLK_S_OK;
  }

  /** Discard: punch a hole, keeping the size. Discard is a hint: a file system without holes is fine. */
  private punch(pos: number, len: number): number {
    try {
      libc.fallocate(this.fd, libc.FALLOC_FL_PUNCH_HOLE | libc.FALLOC_FL_KEEP_SIZE, pos, len);
      return VIRTIO_BLK_S_OK;
    } catch (e) {
      return e instanceof libc.SysError && e.errno === libc.EOPNOTSUPP ? VIRTIO_BLK_S_OK : VIRTIO_BLK_S_IOERR;
    }
  }

  /** Write zeroes: a hole (unmap allowed) or FALLOC_FL_ZERO_RANGE, else plain writes of zeroes. */
  private zero(mem: GuestMemory, pos: number, len: number, unmap: boolean): number {
    try {
      libc.fallocate(this.fd, (unmap ? libc.FALLOC_FL_PUNCH_HOLE : libc.FALLOC_FL_ZERO_RANGE) | libc.FALLOC_FL_KEEP_SIZE, pos, len);
      return VIRTIO_BLK_S_OK;
    } catch (e) {
      if (!(e instanceof libc.SysError && e.errno === libc.EOPNOTSUPP)) return VIRTIO_BLK_S_IOERR;
    }
    const z = this.zeros ?? (this.zeros = new Uint8Array(ZERO_CHUNK));
    for (let off = 0; off < len; off += ZERO_CHUNK) {
      const n = Math.min(ZERO_CHUNK, len - off);
      if (!this.writeFully(mem, n === ZERO_CHUNK ? z : z.subarray(0, n), pos + off)) return VIRTIO_BLK_S_IOERR;
    }
    return VIRTIO_BLK_S_OK;
  }
}

/** Copy `n` device-readable bytes of the chain, starting `from` bytes in, into dst[at..]. */
function gather(mem: GuestMemory, c: DescriptorChain, from: number, dst: Uint8Array, at: number, n: number): void {
  let skip = from;
  let out = at;
  const end = at + n;
  for (let k = 0; k < c.readableCount && out < end; k++) {
    const len = c.len[k]!;
    if (skip >= len) { skip -= len; continue; }
    const a = c.addr[k]!;
    for (let i = skip; i < len && out < end; i++) dst[out++] = mem.readU8(a + i);
    skip = 0;
  }
}
