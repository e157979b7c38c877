// virtio-pmem (persistent memory device) model (virtio 1.2, 5.19). The device's memory is a host
// file that the VMM maps into guest physical memory at [start, start + size) (a memory slot: the
// guest reads and writes it directly, no request goes through here). The one request queue
// carries flushes: VIRTIO_PMEM_REQ_TYPE_FLUSH asks that the guest's writes so far be persistent,
// which is fsync(2) of the backing file, done here in the device's I/O thread, never on a vCPU
// thread. With discard_writes the file is mapped privately: nothing of the guest's ever reaches
// it, and a flush has nothing to do.

import { closeSync, fsyncSync } from 'node:fs';
import { VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VirtioDeviceType, bit, serveQueue, type VirtioActivation, type VirtioDevice } from '../device.js';
import { DescriptorChain, MAX_QUEUE_SIZE, VirtqueueError } from '../queue.js';
import { VirtioStateMismatchError, type VirtioDeviceSpecificState } from '../state.js';

/** Request types (5.19.6). */
export const VIRTIO_PMEM_REQ_TYPE_FLUSH = 0;
/** Response codes (5.19.6): struct virtio_pmem_resp { le32 ret; }. */
export const VIRTIO_PMEM_RESP_TYPE_OK = 0;
export const VIRTIO_PMEM_RESP_TYPE_EIO = 1;
/** struct virtio_pmem_config { le64 start; le64 size; } (5.19.4). */
export const PMEM_CONFIG_BYTES = 16;
/** struct virtio_pmem_req { le32 type; } and struct virtio_pmem_resp { le32 ret; }. */
const REQ_BYTES = 4;
const RESP_BYTES = 4;

export interface PmemDeviceOptions {
  /** The backing file (opened by the VMM, which also maps it); closed by close(). */
  fd: number;
  /** Guest physical address and size of the mapping (5.19.4: start, size). */
  start: number;
  size: number;
  /** The file is mapped privately: flushes do not touch it. */
  discardWrites?: boolean;
  /** Largest queue size (power of two); default 256. */
  queueSize?: number;
  /** fsync(2) of the file; a test may count calls (default node:fs fsyncSync). */
  fsync?: (fd: number) => void;
}

export class PmemDevice implements VirtioDevice {
  readonly deviceType = VirtioDeviceType.Pmem;
  readonly numQueues = 1;
  readonly queueMaxSize: number;
  /** VIRTIO_PMEM_F_SHMEM_REGION (5.19.3) is not offered: the region is given by start/size. */
  readonly features = bit(VIRTIO_F_INDIRECT_DESC) | bit(VIRTIO_F_EVENT_IDX);

  private fd: number;
  private readonly start: number;
  private readonly size: number;
  private readonly discardWrites: boolean;
  private readonly doFsync: (fd: number) => void;
  private readonly config = new Uint8Array(PMEM_CONFIG_BYTES);
  private readonly resp = new Uint8Array(RESP_BYTES);
  private readonly respView = new DataView(this.resp.buffer);
  private readonly req = new Uint8Array(REQ_BYTES);
  private readonly reqView = new DataView(this.req.buffer);
  private chain: DescriptorChain;
  private act: VirtioActivation | null = null;
  private readonly stats = { flushes: 0, flush_errors: 0, unsupported_requests: 0 };

  constructor(opts: PmemDeviceOptions) {
    const qs = opts.queueSize ?? 256;
    if (!Number.isInteger(opts.fd) || opts.fd < 0) throw new RangeError(`virtio-pmem: invalid fd ${opts.fd}`);
    if (!Number.isSafeInteger(opts.start) || opts.start < 0) throw new RangeError(`virtio-pmem: invalid start ${opts.start}`);
    if (!Number.isSafeInteger(opts.size) || opts.size <= 0) throw new RangeError(`virtio-pmem: invalid size ${opts.size}`);
    if (!Number.isInteger(qs) || qs < 1 || qs > MAX_QUEUE_SIZE || (qs & (qs - 1)) !== 0) {
      throw new RangeError(`virtio-pmem: queue size ${qs} is not a power of two in 1..${MAX_QUEUE_SIZE}`);
    }
    this.fd = opts.fd;
    this.start = opts.start;
    this.size = opts.size;
    this.discardWrites = opts.discardWrites === true;
    this.doFsync = opts.fsync ?? fsyncSync;
    this.queueMaxSize = qs;
    this.chain = new DescriptorChain(qs);
    const cv = new DataView(this.config.buffer);
    cv.setBigUint64(0, BigInt(opts.start), true);
    cv.setBigUint64(8, BigInt(opts.size), true);
  }

  get counters(): Readonly<Record<string, number>> {
    return this.stats;
  }

  /** 5.19.4: start and size, read-only. */
  readConfig(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) {
      const o = offset + i;
      data[i] = o >= 0 && o < PMEM_CONFIG_BYTES ? this.config[o]! : 0;
    }
  }

  /** 5.19.4: the configuration is read-only; writes are ignored. */
  writeConfig(_offset: number, _data: Uint8Array): void {}

  activate(a: VirtioActivation): void {
    const q = a.queues[0];
    if (q !== undefined && q !== null && q.size > this.chain.capacity) this.chain = new DescriptorChain(q.size);
    this.act = a;
  }

  processQueue(index: number): void {
    const a = this.act;
    if (a === null || index !== 0) return;
    serveQueue(a, 0, this.chain, this.serve);
  }

  /** Bound once: processQueue allocates nothing. */
  private readonly serve = (c: DescriptorChain): number => this.handle(this.act!, c);

  /**
   * One request (5.19.6): a device-readable virtio_pmem_req, then a device-writable
   * virtio_pmem_resp. A chain without room for the response cannot be answered in-band: it is a
   * VirtqueueError (the device then needs a reset). Returns the bytes written (the response).
   */
  private handle(a: VirtioActivation, c: DescriptorChain): number {
    if (c.writableBytes < RESP_BYTES) {
      throw new VirtqueueError('request', `virtio-pmem request (head ${c.head}) has ${c.writableBytes} device-writable bytes, not room for the ${RESP_BYTES}-byte response`);
    }
    let ret = VIRTIO_PMEM_RESP_TYPE_EIO;
    if (c.readableBytes < REQ_BYTES) {
      this.stats.unsupported_requests++;
    } else {
      this.gather(a, c);
      const type = this.reqView.getUint32(0, true);
      if (type === VIRTIO_PMEM_REQ_TYPE_FLUSH) ret = this.flush();
      else this.stats.unsupported_requests++;
    }
    this.respView.setUint32(0, ret, true);
    this.scatter(a, c);
    return RESP_BYTES;
  }

  /** 5.19.6.2: the host makes the guest's writes so far persistent (fsync of the backing file). */
  private flush(): number {
    this.stats.flushes++;
    if (this.discardWrites) return VIRTIO_PMEM_RESP_TYPE_OK; // MAP_PRIVATE: nothing goes to the file
    try {
      this.doFsync(this.fd);
      return VIRTIO_PMEM_RESP_TYPE_OK;
    } catch {
      this.stats.flush_errors++;
      return VIRTIO_PMEM_RESP_TYPE_EIO;
    }
  }

  /** The first REQ_BYTES device-readable bytes (they may span descriptors). */
  private gather(a: VirtioActivation, c: DescriptorChain): void {
    let got = 0;
    for (let k = 0; k < c.readableCount && got < REQ_BYTES; k++) {
      const n = Math.min(c.len[k]!, REQ_BYTES - got);
      if (n === 0) continue;
      this.req.set(a.mem.slice(c.addr[k]!, n), got);
      got += n;
    }
  }

  /** The response into the first RESP_BYTES device-writable bytes. */
  private scatter(a: VirtioActivation, c: DescriptorChain): void {
    let put = 0;
    for (let k = c.readableCount; k < c.length && put < RESP_BYTES; k++) {
      const n = Math.min(c.len[k]!, RESP_BYTES - put);
      if (n === 0) continue;
      a.mem.slice(c.addr[k]!, n).set(this.resp.subarray(put, put + n));
      put += n;
    }
  }

  reset(): void {
    this.act = null;
  }

  /** Requests complete within processQueue: nothing is held. */
  pause(): void {}

  saveState(): VirtioDeviceSpecificState {
    return { kind: 'pmem', start: BigInt(this.start), size: BigInt(this.size) };
  }

  restoreState(s: VirtioDeviceSpecificState): void {
    if (s.kind !== 'pmem') throw new VirtioStateMismatchError(`saved ${s.kind} state for a virtio-pmem device`);
    if (s.start !== BigInt(this.start) || s.size !== BigInt(this.size)) {
      throw new VirtioStateMismatchError(`the saved virtio-pmem region is ${s.size} bytes at 0x${s.start.toString(16)}, this device's is ${this.size} bytes at 0x${this.start.toString(16)} (another file or size?)`);
    }
  }

  /** Closes the file (its mapping belongs to the VMM). */
  close(): void {
    this.act = null;
    if (this.fd >= 0) {
      const fd = this.fd;
      this.fd = -1;
      try { closeSync(fd); } catch { /* already closed */ }
    }
  }
}
