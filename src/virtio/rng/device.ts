// virtio-rng (entropy device) model (virtio 1.2, 5.4): one request queue of device-writable
// buffers, filled from a host entropy source.

import { closeSync, readSync } from 'node:fs';
import { VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VirtioDeviceType, bit, serveQueue, type VirtioActivation, type VirtioDevice } from '../device.js';
import { DescriptorChain, MAX_QUEUE_SIZE } from '../queue.js';
import { GuestMemoryRevokedError } from '../../memory/guest_memory.js';
import { VirtioStateMismatchError, type VirtioDeviceSpecificState } from '../state.js';

export interface RngDeviceOptions {
  /** Open entropy source (the VMM opens `src`, default /dev/urandom); closed by close(). */
  fd: number;
  /** Largest queue size (power of two); default 256. */
  queueSize?: number;
  /** At most this many bytes per request (default 64 KiB). */
  maxBytesPerRequest?: number;
}

export const RNG_DEFAULT_MAX_BYTES = 64 * 1024;

export class RngDevice implements VirtioDevice {
  readonly deviceType = VirtioDeviceType.Rng;
  readonly numQueues = 1;
  readonly queueMaxSize: number;
  /** No device-specific features (5.4.3). */
  readonly features = bit(VIRTIO_F_INDIRECT_DESC) | bit(VIRTIO_F_EVENT_IDX);

  private fd: number;
  private readonly maxBytes: number;
  private chain: DescriptorChain;
  private act: VirtioActivation | null = null;

  constructor(opts: RngDeviceOptions) {
    const qs = opts.queueSize ?? 256;
    if (!Number.isInteger(opts.fd) || opts.fd < 0) throw new RangeError(`virtio-rng: invalid fd ${opts.fd}`);
    if (!Number.isInteger(qs) || qs < 1 || qs > MAX_QUEUE_SIZE || (qs & (qs - 1)) !== 0) {
      throw new RangeError(`virtio-rng: queue size ${qs} is not a power of two in 1..${MAX_QUEUE_SIZE}`);
    }
    const max = opts.maxBytesPerRequest ?? RNG_DEFAULT_MAX_BYTES;
    if (!Number.isInteger(max) || max < 1 || max > 1 << 30) throw new RangeError(`virtio-rng: invalid maxBytesPerRequest ${max}`);
    this.fd = opts.fd;
    this.queueMaxSize = qs;
    this.maxBytes = max;
    this.chain = new DescriptorChain(qs);
  }

  /** No configuration space (5.4.4). */
  readConfig(_offset: number, data: Uint8Array): void {
    data.fill(0);
  }

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
  private readonly serve = (c: DescriptorChain): number => this.fill(this.act!, c);

  /**
   * 5.4.6.2: place one or more random bytes in the device-writable part of
   * the buffer; fewer than its length is allowed. Device-readable descriptors are ignored.
   * Returns the bytes written.
   */
  private fill(a: VirtioActivation, c: DescriptorChain): number {
    let done = 0;
    for (let k = c.readableCount; k < c.length && done < this.maxBytes; k++) {
      const n = Math.min(c.len[k]!, this.maxBytes - done);
      if (n === 0) continue;
      const view = a.mem.slice(c.addr[k]!, n);
      let off = 0;
      try {
        while (off < n) {
          const r = readSync(this.fd, view, off, n - off, null);
          if (r === 0) break; // source exhausted (a file)
          off += r;
        }
      } catch {
        // EAGAIN or an error from the source: hand back what was read (possibly nothing).
      }
      // A read from a blocking source may return only once the VM is stopping: abandon it.
      if (a.mem.revoked) throw new GuestMemoryRevokedError();
      done += off;
      if (off < n) break;
    }
    return done;
  }

  reset(): void {
    this.act = null;
  }

  /** Requests complete within processQueue: nothing is held. */
  pause(): void {}

  saveState(): VirtioDeviceSpecificState {
    return { kind: 'rng' };
  }

  restoreState(s: VirtioDeviceSpecificState): void {
    if (s.kind !== 'rng') throw new VirtioStateMismatchError(`saved ${s.kind} state for a virtio-rng device`);
  }

  /** Closes the source fd. */
  close(): void {
    this.act = null;
    if (this.fd >= 0) {
      const fd = this.fd;
      this.fd = -1;
      try { closeSync(fd); } catch { /* already closed */ }
    }
  }
}
