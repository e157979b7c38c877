// virtio-balloon (traditional memory balloon, virtio 1.2, 5.5). The VMM sets a target,
// `num_pages` in the configuration space (4 KiB pages); the driver inflates the balloon towards
// it by taking pages from the guest and sending their page frame numbers on inflateq, deflates it
// by sending PFNs on deflateq, and writes the balloon's size into `actual`. Pages of an inflate
// are given back to the host (GuestMemory.discard: MADV_DONTNEED, or a hole punched in the memfd
// of shared memory); deflated pages need nothing (VIRTIO_BALLOON_F_MUST_TELL_HOST is not offered,
// 5.5.6.1: the guest may use them again at once, they fault back in). With free page reporting
// (VIRTIO_BALLOON_F_PAGE_REPORTING, 5.5.6.4) the driver also sends runs of free pages on
// reporting_vq, given back the same way. No statistics queue (VIRTIO_BALLOON_F_STATS_VQ is not
// offered), no free page hinting.
//
// Everything the guest sends is checked: a PFN or a reported range outside guest RAM (or in
// device memory such as a pmem region, which is not RAM) is ignored and counted.

import { VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VirtioDeviceType, bit, serveQueue, type VirtioActivation, type VirtioDevice } from '../device.js';
import { DescriptorChain, MAX_QUEUE_SIZE } from '../queue.js';
import { PAGE_SIZE, type GuestMemory } from '../../memory/guest_memory.js';
import { VirtioStateMismatchError, type VirtioDeviceSpecificState } from '../state.js';

/** Feature bits (5.5.3). */
export const VIRTIO_BALLOON_F_MUST_TELL_HOST = 0n;
export const VIRTIO_BALLOON_F_STATS_VQ = 1n;
export const VIRTIO_BALLOON_F_DEFLATE_ON_OOM = 2n;
export const VIRTIO_BALLOON_F_FREE_PAGE_HINT = 3n;
export const VIRTIO_BALLOON_F_PAGE_POISON = 4n;
export const VIRTIO_BALLOON_F_PAGE_REPORTING = 5n;

/** PFNs on inflateq/deflateq count 4 KiB pages whatever the guest's page size (5.5.6). */
export const VIRTIO_BALLOON_PFN_SHIFT = 12;
export const BALLOON_PAGE_SIZE = 1 << VIRTIO_BALLOON_PFN_SHIFT;

/** Queue indexes (5.5.2; statsq and free_page_vq are absent, so reporting_vq follows deflateq). */
export const INFLATEQ = 0;
export const DEFLATEQ = 1;
export const REPORTINGQ = 2;

/** struct virtio_balloon_config: le32 num_pages, le32 actual (5.5.4); the later fields need features not offered. */
export const BALLOON_CONFIG_BYTES = 8;
const ACTUAL_OFFSET = 4;

export interface BalloonDeviceOptions {
  /** The initial target, in 4 KiB pages (num_pages). */
  numPages: number;
  /** Offer VIRTIO_BALLOON_F_DEFLATE_ON_OOM: the guest deflates under memory pressure. */
  deflateOnOom?: boolean;
  /** Offer VIRTIO_BALLOON_F_PAGE_REPORTING and its queue: the guest reports free pages. */
  freePageReporting?: boolean;
  /** Largest queue size (power of two); default 128. */
  queueSize?: number;
  /** Give [gpa, gpa+len) back to the host (default GuestMemory.discard); tests may watch it. */
  discard?: (mem: GuestMemory, gpa: number, len: number) => boolean;
}

const defaultDiscard = (mem: GuestMemory, gpa: number, len: number): boolean => mem.discard(gpa, len);

export class BalloonDevice implements VirtioDevice {
  readonly deviceType = VirtioDeviceType.Balloon;
  readonly numQueues: number;
  readonly queueMaxSize: number;
  readonly features: bigint;
  /** 5.5.4: the driver writes `actual`. */
  readonly writableConfig = { offset: ACTUAL_OFFSET, length: 4 };

  private numPages: number;
  private actual = 0;
  private readonly reporting: boolean;
  private readonly doDiscard: (mem: GuestMemory, gpa: number, len: number) => boolean;
  private readonly config = new Uint8Array(BALLOON_CONFIG_BYTES);
  private readonly configView = new DataView(this.config.buffer);
  private chain: DescriptorChain;
  private act: VirtioActivation | null = null;
  /** The run of contiguous pages being collected from an inflate request: first PFN, count. */
  private runPfn = 0;
  private runPages = 0;
  private readonly stats = { inflated_pages: 0, deflated_pages: 0, reported_bytes: 0, invalid_pfns: 0, invalid_reports: 0, discard_errors: 0 };

  constructor(opts: BalloonDeviceOptions) {
    const qs = opts.queueSize ?? 128;
    if (!Number.isInteger(opts.numPages) || opts.numPages < 0 || opts.numPages > 0xffffffff) throw new RangeError(`virtio-balloon: invalid target ${opts.numPages} pages`);
    if (!Number.isInteger(qs) || qs < 1 || qs > MAX_QUEUE_SIZE || (qs & (qs - 1)) !== 0) {
      throw new RangeError(`virtio-balloon: queue size ${qs} is not a power of two in 1..${MAX_QUEUE_SIZE}`);
    }
    this.numPages = opts.numPages;
    this.reporting = opts.freePageReporting === true;
    this.numQueues = this.reporting ? 3 : 2;
    this.queueMaxSize = qs;
    this.features = bit(VIRTIO_F_INDIRECT_DESC) | bit(VIRTIO_F_EVENT_IDX)
      | (opts.deflateOnOom === true ? bit(VIRTIO_BALLOON_F_DEFLATE_ON_OOM) : 0n)
      | (this.reporting ? bit(VIRTIO_BALLOON_F_PAGE_REPORTING) : 0n);
    this.doDiscard = opts.discard ?? defaultDiscard;
    this.chain = new DescriptorChain(qs);
    this.updateConfig();
  }

  get counters(): Readonly<Record<string, number>> {
    return this.stats;
  }

  /** The target, in 4 KiB pages (num_pages). */
  get targetPages(): number {
    return this.numPages;
  }

  /** The balloon's size as the driver last reported it (actual), in 4 KiB pages. */
  get actualPages(): number {
    return this.actual;
  }

  private updateConfig(): void {
    this.configView.setUint32(0, this.numPages, true);
    this.configView.setUint32(ACTUAL_OFFSET, this.actual, true);
  }

  /** 5.5.4: num_pages and actual, little-endian; nothing beyond. */
  readConfig(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) {
      const o = offset + i;
      data[i] = o >= 0 && o < BALLOON_CONFIG_BYTES ? this.config[o]! : 0;
    }
  }

  /** 5.5.4: only `actual` is the driver's to write; other bytes are ignored. */
  writeConfig(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) {
      const o = offset + i;
      if (o >= ACTUAL_OFFSET && o < ACTUAL_OFFSET + 4) this.config[o] = data[i]!;
    }
    this.actual = this.configView.getUint32(ACTUAL_OFFSET, true);
  }

  /** The VMM's new target (vm.resize desired_balloon), in 4 KiB pages. */
  onHostValue(value: number): void {
    this.numPages = value >>> 0;
    this.updateConfig();
  }

  activate(a: VirtioActivation): void {
    let max = 0;
    for (const q of a.queues) if (q !== null && q !== undefined && q.size > max) max = q.size;
    if (max > this.chain.capacity) this.chain = new DescriptorChain(max);
    this.act = a;
  }

  processQueue(index: number): void {
    const a = this.act;
    if (a === null) return;
    if (index === INFLATEQ) serveQueue(a, index, this.chain, this.inflate);
    else if (index === DEFLATEQ) serveQueue(a, index, this.chain, this.deflate);
    else if (index === REPORTINGQ && this.reporting) serveQueue(a, index, this.chain, this.report);
  }

  // Bound once: processQueue allocates nothing.
  private readonly inflate = (c: DescriptorChain): number => this.pages(this.act!, c, true);
  private readonly deflate = (c: DescriptorChain): number => this.pages(this.act!, c, false);
  private readonly report = (c: DescriptorChain): number => this.reported(this.act!, c);

  /**
   * An inflate or deflate request (5.5.6): an array of le32 PFNs in the device-readable part (a
   * trailing partial entry is ignored). Inflated pages are given back to the host, in runs of
   * contiguous pages; a PFN outside guest RAM is skipped. Nothing is written: used length 0.
   */
  private pages(a: VirtioActivation, c: DescriptorChain, inflate: boolean): number {
    const mem = a.mem;
    this.runPages = 0;
    for (let k = 0; k < c.readableCount; k++) {
      const base = c.addr[k]!;
      const n = Math.floor(c.len[k]! / 4);
      for (let i = 0; i < n; i++) {
        const pfn = mem.readU32(base + 4 * i);
        const gpa = pfn * BALLOON_PAGE_SIZE;
        if (!mem.checkedRange(gpa, BALLOON_PAGE_SIZE)) { this.stats.invalid_pfns++; continue; }
        if (inflate) this.stats.inflated_pages++;
        else { this.stats.deflated_pages++; continue; }
        if (this.runPages > 0 && pfn === this.runPfn + this.runPages && mem.checkedRange(this.runPfn * BALLOON_PAGE_SIZE, (this.runPages + 1) * BALLOON_PAGE_SIZE)) {
          this.runPages++;
          continue;
        }
        this.flushRun(mem);
        this.runPfn = pfn;
        this.runPages = 1;
      }
    }
    this.flushRun(mem);
    return 0;
  }

  private flushRun(mem: GuestMemory): void {
    if (this.runPages === 0) return;
    if (!this.doDiscard(mem, this.runPfn * BALLOON_PAGE_SIZE, this.runPages * BALLOON_PAGE_SIZE)) this.stats.discard_errors++;
    this.runPages = 0;
  }

  /**
   * A free page report (5.5.6.4.1): every buffer of the chain (device-writable, as Linux adds
   * them, or readable) is a run of free guest memory, given back to the host (the whole pages
   * inside it). Returns 0: nothing is written into the buffers.
   */
  private reported(a: VirtioActivation, c: DescriptorChain): number {
    const mem = a.mem;
    for (let k = 0; k < c.length; k++) {
      const addr = c.addr[k]!;
      const end = addr + c.len[k]!;
      const from = Math.ceil(addr / PAGE_SIZE) * PAGE_SIZE;
      const to = Math.floor(end / PAGE_SIZE) * PAGE_SIZE;
      if (to <= from) { if (c.len[k]! > 0) this.stats.invalid_reports++; continue; }
      if (!mem.checkedRange(from, to - from)) { this.stats.invalid_reports++; continue; }
      if (this.doDiscard(mem, from, to - from)) this.stats.reported_bytes += to - from;
      else this.stats.discard_errors++;
    }
    return 0;
  }

  /** The target stays (it is the VMM's); the balloon is empty for a new driver (its pages are the guest's again). */
  reset(): void {
    this.act = null;
    this.actual = 0;
    this.updateConfig();
  }

  /** Requests complete within processQueue: nothing is held. */
  pause(): void {}

  saveState(): VirtioDeviceSpecificState {
    return { kind: 'balloon', numPages: this.numPages, actual: this.actual };
  }

  restoreState(s: VirtioDeviceSpecificState): void {
    if (s.kind !== 'balloon') throw new VirtioStateMismatchError(`saved ${s.kind} state for a virtio-balloon device`);
    this.numPages = s.numPages;
    this.actual = s.actual;
    this.updateConfig();
  }

  close(): void {
    this.act = null;
  }
}
