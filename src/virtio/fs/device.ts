// virtio-fs (virtio 1.2, 5.11) over a vhost-user back-end (virtiofsd): Stratovisor keeps the
// transport (PCI, features, configuration space: tag and num_request_queues), the back-end
// processes the queues. At DRIVER_OK the device hands the back-end the guest memory table (one
// memfd per region), and per enabled queue its size, ring addresses (in our address space, as
// vhost-user.rst asks), its start index, the queue's notify eventfd as kick and the MSI-X
// vector's irqfd as call; on reset it stops the rings (GET_VRING_BASE) so that the driver can set
// the device up again.
//
// Pause (vm.pause) stops the rings as QEMU does when the VM stops (vhost_dev_stop): per ring
// SET_VRING_ENABLE 0, then GET_VRING_BASE, which the back-end answers once it has stopped the ring
// (virtiofsd takes the ring's lock, so its request loop over that ring has ended) with the next
// avail index; resume sets each ring up again from that index (NUM, BASE, ADDR, CALL, KICK,
// ENABLE 1) and kicks it. Cloud Hypervisor only sends SET_VRING_ENABLE 0 / 1, which a back-end
// may take effect on only after requests it is processing; GET_VRING_BASE is the stronger stop.
// Not quiesced: a request virtiofsd handed to its own thread pool (--thread-pool-size > 0) may
// still complete after GET_VRING_BASE answered; and the FUSE session (open files, inodes) lives
// in virtiofsd and is not part of the saved state.
import * as libc from '../../sys/libc.js';
import {
  VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1, VIRTIO_F_IN_ORDER, VirtioDeviceType, bit,
  type ExternalActivation, type VirtioActivation, type VirtioDevice,
} from '../device.js';
import { VirtioStateMismatchError, type VirtioDeviceSpecificState } from '../state.js';
import { availRingBytes, descTableBytes, usedRingBytes, MAX_QUEUE_SIZE, DescriptorChain, SplitQueue } from '../queue.js';
import { VhostUserFrontend, VhostUserError, VHOST_USER_F_PROTOCOL_FEATURES, ProtocolFeature, type MemRegionFd } from '../vhost_user/frontend.js';
import { MAX_MEM_REGIONS } from '../vhost_user/message.js';

/**
 * State of one back-end connection, shared by the devices that use it one after the other (a
 * guest reboot starts a new worker over the same socket): Int32 word 0 is 1 once SET_OWNER was
 * sent; from byte 8, Float64 slots: the number of regions of the last memory table sent, then
 * (user address, size) per region.
 */
export const FS_CONNECTION_STATE_BYTES = 8 + 8 * (1 + 2 * MAX_MEM_REGIONS);
/** Guest-physical base of the alias regions (above any guest RAM, see activateExternal). */
const ALIAS_GPA_BASE = 2 ** 52;

/** virtio_fs_config.tag is 36 bytes, NUL-padded, not NUL-terminated when full (5.11.4). */
export const FS_TAG_BYTES = 36;
/** Queue 0 is hiprio; request queues follow (no notification queue: VIRTIO_FS_F_NOTIFICATION is not offered). */
export const FS_HIPRIO_QUEUE = 0;

/** Transport features we can pass through to a back-end (split rings only). */
const PASSTHROUGH = bit(VIRTIO_F_INDIRECT_DESC) | bit(VIRTIO_F_EVENT_IDX) | bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_IN_ORDER);
/** Protocol features we use. */
const WANTED_PROTOCOL = (1n << ProtocolFeature.MQ) | (1n << ProtocolFeature.REPLY_ACK) | (1n << ProtocolFeature.RESET_DEVICE);

export interface FsDeviceOptions {
  /** Connected vhost-user socket (non-blocking); owned by the VMM, not closed here. */
  socketFd: number;
  socketPath: string;
  tag: string;
  numRequestQueues: number;
  queueSize: number;
  /** FS_CONNECTION_STATE_BYTES shared across guest runs over the same connection. */
  connection: SharedArrayBuffer;
  /** Problems that do not stop the device (e.g. stopping rings of a back-end that is gone); `warn` for the user's eyes. */
  log?: (msg: string, warn?: boolean) => void;
  timeoutMs?: number;
}

export class FsDevice implements VirtioDevice {
  readonly deviceType = VirtioDeviceType.Fs;
  readonly numQueues: number;
  readonly queueMaxSize: number;
  /** Offered to the driver: the back-end's features we can carry, without VERSION_1 (the transport adds it). */
  readonly features: bigint;
  readonly counters = { activations: 0, ringsStarted: 0, failedRequests: 0 };
  /** The back-end went away: we answer the guest's requests ourselves, each with EIO. */
  takenOver = false;

  private readonly fe: VhostUserFrontend;
  private readonly config = new Uint8Array(FS_TAG_BYTES + 4);
  private readonly backendFeatures: bigint;
  private readonly log: (msg: string, warn?: boolean) => void;
  private act: ExternalActivation | null = null;
  private own: Array<SplitQueue | null> = [];
  private chain: DescriptorChain;
  /** Rings the back-end is running (to stop on reset). */
  private started: number[] = [];
  /** How each started ring was set up (to set it up again at resume). */
  private rings: Array<{ index: number; size: number; desc: bigint; avail: bigint; used: bigint; usedGpa: number; kickFd: number; callFd: number }> = [];
  /** Paused: the rings are stopped; the next avail index GET_VRING_BASE answered, per ring index. */
  private stoppedAt: Map<number, number> | null = null;
  private errFds: number[] = [];
  private readonly owner: Int32Array;
  private readonly lastTable: Float64Array;

  constructor(private readonly o: FsDeviceOptions) {
    const tag = new TextEncoder().encode(o.tag);
    if (tag.length < 1 || tag.length > FS_TAG_BYTES) throw new RangeError(`virtio-fs: tag '${o.tag}' must be 1..${FS_TAG_BYTES} bytes`);
    if (!Number.isInteger(o.numRequestQueues) || o.numRequestQueues < 1) throw new RangeError(`virtio-fs: ${o.numRequestQueues} request queues`);
    const qs = o.queueSize;
    if (!Number.isInteger(qs) || qs < 1 || qs > MAX_QUEUE_SIZE || (qs & (qs - 1)) !== 0) throw new RangeError(`virtio-fs: queue size ${qs} is not a power of two in 1..${MAX_QUEUE_SIZE}`);
    this.numQueues = 1 + o.numRequestQueues;
    this.queueMaxSize = qs;
    this.log = o.log ?? (() => {});
    if (o.connection.byteLength < FS_CONNECTION_STATE_BYTES) throw new RangeError('virtio-fs: connection state buffer too small');
    this.owner = new Int32Array(o.connection, 0, 1);
    this.lastTable = new Float64Array(o.connection, 8, 1 + 2 * MAX_MEM_REGIONS);
    this.chain = new DescriptorChain(qs);
    this.config.set(tag, 0);
    new DataView(this.config.buffer).setUint32(FS_TAG_BYTES, o.numRequestQueues, true);

    // Set-up conversation (vhost-user.rst, "Starting and stopping rings" and the feature rules).
    this.fe = new VhostUserFrontend(o.socketFd, { name: o.socketPath, ...(o.timeoutMs !== undefined ? { timeoutMs: o.timeoutMs } : {}) });
    const f = this.fe.getFeatures();
    if ((f & bit(VIRTIO_F_VERSION_1)) === 0n) throw new VhostUserError(`vhost-user back-end ${o.socketPath} does not offer VIRTIO_F_VERSION_1 (features 0x${f.toString(16)})`);
    this.backendFeatures = f;
    if ((f & bit(VHOST_USER_F_PROTOCOL_FEATURES)) !== 0n) {
      const pf = this.fe.getProtocolFeatures();
      this.fe.setProtocolFeatures(pf & WANTED_PROTOCOL);
      if ((pf & (1n << ProtocolFeature.MQ)) !== 0n) {
        const n = this.fe.getQueueNum();
        if (n < this.numQueues) throw new VhostUserError(`vhost-user back-end ${o.socketPath} supports ${n} queues; ${this.numQueues} needed (num_queues=${o.numRequestQueues} plus the hiprio queue)`);
      }
    }
    // A back-end refuses a second SET_OWNER on one connection.
    if (Atomics.compareExchange(this.owner, 0, 0, 1) === 0) this.fe.setOwner();
    this.features = f & PASSTHROUGH & ~bit(VIRTIO_F_VERSION_1);
  }

  readConfig(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) data[i] = offset + i < this.config.length ? this.config[offset + i]! : 0;
  }

  /** The configuration space is read-only (5.11.4). */
  writeConfig(): void {}

  activate(_a: VirtioActivation): void {
    throw new Error('virtio-fs queues are processed by the vhost-user back-end (activateExternal)');
  }

  activateExternal(a: ExternalActivation): void {
    this.stopRings();
    this.counters.activations++;
    this.act = a;
    const fe = this.fe;
    const pfNegotiated = (this.backendFeatures & bit(VHOST_USER_F_PROTOCOL_FEATURES)) !== 0n;
    fe.setFeatures((a.features & this.backendFeatures) | (pfNegotiated ? bit(VHOST_USER_F_PROTOCOL_FEATURES) : 0n));
    const regions: MemRegionFd[] = a.mem.regions.map((r) => {
      if (r.fd < 0 || r.hostAddress === 0n) throw new Error(`guest RAM at 0x${r.gpa.toString(16)} is not shareable (virtio-fs needs --memory shared=on)`);
      return { guestPhysAddr: BigInt(r.gpa), memorySize: BigInt(r.size), userAddr: r.hostAddress, mmapOffset: 0n, fd: r.fd };
    });
    // A back-end keeps the addresses of stopped rings and maps them again on SET_MEM_TABLE
    // (libvhost-user panics "remapping queue N during setmemtable" when they are not in the new
    // table). After a guest reboot our RAM is new, at other addresses: alias each region of the
    // previous table (same user address and size) onto the new memfd, at guest-physical addresses
    // above any RAM, so the stale addresses resolve; the rings are set anew right after. An alias
    // only ever reaches the guest's own RAM.
    const prev = this.lastTable;
    const aliases: MemRegionFd[] = [];
    for (let k = 0; k < prev[0]! && regions.length + aliases.length < MAX_MEM_REGIONS; k++) {
      const ua = BigInt(prev[1 + 2 * k]!);
      const size = prev[2 + 2 * k]!;
      if (regions.some((r) => r.userAddr === ua && r.memorySize === BigInt(size))) continue;
      const backing = regions.find((r) => r.memorySize >= BigInt(size)) ?? regions[0]!;
      aliases.push({ guestPhysAddr: BigInt(ALIAS_GPA_BASE) + BigInt(k) * (1n << 40n), memorySize: BigInt(Math.min(size, Number(backing.memorySize))), userAddr: ua, mmapOffset: 0n, fd: backing.fd });
    }
    fe.setMemTable([...regions, ...aliases]);
    prev[0] = regions.length;
    regions.forEach((r, k) => { prev[1 + 2 * k] = Number(r.userAddr); prev[2 + 2 * k] = Number(r.memorySize); });
    const eventIdx = (a.features & bit(VIRTIO_F_EVENT_IDX)) !== 0n ? 2 : 0;
    a.queues.forEach((q, i) => {
      if (q === null) return;
      // Ring addresses go to the back-end in our (the front-end's) address space; bounds-check
      // each part against guest RAM first (the guest chose them).
      const hva = (gpa: number, len: number, what: string): bigint => {
        const h = a.mem.hostAddress(gpa, len);
        if (h < 0) throw new Error(`queue ${i}: ${what} at 0x${gpa.toString(16)}+0x${len.toString(16)} is not in guest RAM`);
        return BigInt(h);
      };
      const desc = hva(q.descTable, descTableBytes(q.size), 'descriptor table');
      const avail = hva(q.availRing, availRingBytes(q.size) + eventIdx, 'available ring');
      const used = hva(q.usedRing, usedRingBytes(q.size) + eventIdx, 'used ring');
      fe.setVringNum(i, q.size);
      // A freshly set up queue starts at index 0 (2.7.13.1); a restored one where it was saved.
      fe.setVringBase(i, q.lastAvailIdx ?? 0);
      fe.setVringAddr({ index: i, flags: 0, desc, used, avail, log: 0n });
      this.rings.push({ index: i, size: q.size, desc, avail, used, usedGpa: q.usedRing, kickFd: q.kickFd, callFd: q.callFd });
      const err = libc.eventfd(0, libc.EFD_CLOEXEC | libc.EFD_NONBLOCK);
      this.errFds.push(err);
      fe.setVringErr(i, err);
      fe.setVringCall(i, q.callFd);
      fe.setVringKick(i, q.kickFd);
      this.started.push(i);
      this.counters.ringsStarted++;
    });
    // With protocol features the rings start disabled (vhost-user.rst, "Ring states").
    if (pfNegotiated) for (const i of this.started) fe.setVringEnable(i, true);
  }

  /**
   * Only after the back-end went away (`takenOver`): complete every request with a FUSE error
   * reply (struct fuse_out_header: len u32, error i32 = -EIO, unique u64; the request's unique
   * is at offset 8 of its fuse_in_header), so the guest's I/O fails instead of waiting forever.
   * Requests without a reply buffer (FORGET) are just returned.
   */
  processQueue(index: number): void {
    const q = this.own[index];
    const a = this.act;
    if (!this.takenOver || q === null || q === undefined || a === null) return;
    const c = this.chain;
    let done = 0;
    for (;;) {
      while (q.pop(c)) {
        let written = 0;
        if (c.readableCount > 0 && c.len[0]! >= 16 && c.writableBytes > 0) {
          const out = c.readableCount; // first device-writable segment
          if (c.len[out]! >= 16) {
            const unique = a.mem.readU64(c.addr[0]! + 8);
            const at = c.addr[out]!;
            a.mem.writeU32(at, 16);
            a.mem.writeU32(at + 4, -5 >>> 0); // -EIO
            a.mem.writeU64(at + 8, unique);
            written = 16;
          }
        }
        q.addUsed(c.head, written);
        this.counters.failedRequests++;
        if (++done >= q.size) break;
      }
      if (q.needsInterrupt()) a.notifyQueue(index);
      if (done >= q.size || !q.enableNotification()) break;
    }
  }

  /** Continue the rings here from where the back-end left them (its used.idx in guest memory). */
  private takeOver(why: string): void {
    this.log(`${why}; requests now fail with EIO`, true);
    this.takenOver = true;
    const a = this.act;
    if (a === null) return;
    const eventIdx = (a.features & bit(VIRTIO_F_EVENT_IDX)) !== 0n;
    const indirect = (a.features & bit(VIRTIO_F_INDIRECT_DESC)) !== 0n;
    this.own = a.queues.map((q) => {
      if (q === null) return null;
      const sq = new SplitQueue(a.mem, { size: q.size, descTable: q.descTable, availRing: q.availRing, usedRing: q.usedRing }, { eventIdx, indirect });
      const used = a.mem.readU16(q.usedRing + 2);
      sq.resumeAt(used, used);
      return sq;
    });
    if (this.chain.capacity < this.queueMaxSize) this.chain = new DescriptorChain(this.queueMaxSize);
    for (let i = 0; i < this.own.length; i++) this.processQueue(i);
  }

  /** The socket (a back-end that hangs up) and the rings' error eventfds. */
  pollFds(): readonly number[] {
    return this.takenOver ? [] : [this.o.socketFd, ...this.errFds];
  }

  onFdReady(fd: number): void {
    if (fd === this.o.socketFd) {
      // Nothing is ever due from the back-end between our requests: readable means gone (or out
      // of step, which is as bad): the connection is unusable from now on.
      this.fe.markBroken('the back-end closed the connection or sent something unasked');
      this.takeOver(`vhost-user back-end ${this.o.socketPath} hung up (virtiofsd exited?); the file system is unavailable`);
      return;
    }
    const q = this.errFds.indexOf(fd);
    const buf = new Uint8Array(8);
    try { libc.read(fd, buf); } catch { /* drained already */ }
    throw new VhostUserError(`vhost-user back-end ${this.o.socketPath} reported an error on queue ${q}`);
  }

  /** Stop the rings (see "Pause" at the top); the back-end keeps its memory table and features. */
  pause(): void {
    if (this.act === null || this.takenOver || this.stoppedAt !== null) return;
    const pfNegotiated = (this.backendFeatures & bit(VHOST_USER_F_PROTOCOL_FEATURES)) !== 0n;
    const at = new Map<number, number>();
    for (const r of this.rings) {
      let base = this.act.mem.readU16(r.usedGpa + 2);
      if (!this.fe.isBroken) {
        try {
          if (pfNegotiated) this.fe.setVringEnable(r.index, false);
          base = this.fe.getVringBase(r.index);
        } catch (e) {
          this.log(`pausing ring ${r.index}: ${(e as Error).message}`, true);
        }
      }
      at.set(r.index, base & 0xffff);
    }
    this.stoppedAt = at;
  }

  /** Set the stopped rings up again where they stopped, and kick each (a kick while stopped may be lost). */
  resume(): void {
    const at = this.stoppedAt;
    this.stoppedAt = null;
    if (at === null || this.act === null || this.takenOver || this.fe.isBroken) return;
    const fe = this.fe;
    const pfNegotiated = (this.backendFeatures & bit(VHOST_USER_F_PROTOCOL_FEATURES)) !== 0n;
    try {
      for (const r of this.rings) {
        fe.setVringNum(r.index, r.size);
        fe.setVringBase(r.index, at.get(r.index) ?? 0);
        fe.setVringAddr({ index: r.index, flags: 0, desc: r.desc, used: r.used, avail: r.avail, log: 0n });
        fe.setVringCall(r.index, r.callFd);
        fe.setVringKick(r.index, r.kickFd);
        if (pfNegotiated) fe.setVringEnable(r.index, true);
      }
    } catch (e) {
      // The back-end went away while the VM was paused: as when it hangs up while running.
      this.fe.markBroken((e as Error).message);
      this.takeOver(`vhost-user back-end ${this.o.socketPath} could not restart its rings after the pause (${(e as Error).message}); the file system is unavailable`);
      return;
    }
    const one = new Uint8Array(new BigUint64Array([1n]).buffer);
    for (const r of this.rings) libc.write(r.kickFd, one);
  }

  /** Where each queue stands while paused (the back-end's stop index; used.idx from guest RAM). */
  externalQueueIndexes(): ReadonlyArray<{ lastAvailIdx: number; usedIdx: number } | null> {
    const out: Array<{ lastAvailIdx: number; usedIdx: number } | null> = [];
    for (let i = 0; i < this.numQueues; i++) {
      const own = this.own[i];
      if (this.takenOver) { out.push(own ? { lastAvailIdx: own.lastAvailIdx, usedIdx: own.usedIndex } : null); continue; }
      const r = this.rings.find((x) => x.index === i);
      const base = this.stoppedAt?.get(i);
      out.push(r === undefined || base === undefined || this.act === null ? null : { lastAvailIdx: base, usedIdx: this.act.mem.readU16(r.usedGpa + 2) });
    }
    return out;
  }

  saveState(): VirtioDeviceSpecificState {
    return { kind: 'fs', tag: this.o.tag, numRequestQueues: this.o.numRequestQueues };
  }

  restoreState(st: VirtioDeviceSpecificState): void {
    if (st.kind !== 'fs') throw new VirtioStateMismatchError(`saved ${st.kind} state for a virtio-fs device`);
    if (st.tag !== this.o.tag) throw new VirtioStateMismatchError(`saved virtio-fs tag '${st.tag}', this device has '${this.o.tag}'`);
    if (st.numRequestQueues !== this.o.numRequestQueues) throw new VirtioStateMismatchError(`saved ${st.numRequestQueues} request queues, this device has ${this.o.numRequestQueues}`);
  }

  /** Stop the rings the back-end runs; never throws (a back-end that is gone is only logged). */
  private stopRings(): void {
    const pfNegotiated = (this.backendFeatures & bit(VHOST_USER_F_PROTOCOL_FEATURES)) !== 0n;
    // Paused: the rings are stopped already.
    const stopped = this.stoppedAt !== null;
    this.stoppedAt = null;
    for (const i of this.started) {
      if (this.fe.isBroken || stopped) break;
      try {
        if (pfNegotiated) this.fe.setVringEnable(i, false);
        this.fe.getVringBase(i);
      } catch (e) {
        this.log(`stopping ring ${i}: ${(e as Error).message}`);
      }
    }
    if (this.started.length > 0 && !this.fe.isBroken && (this.fe.protocolFeatures & (1n << ProtocolFeature.RESET_DEVICE)) !== 0n) {
      try { this.fe.resetDevice(); } catch (e) { this.log(`RESET_DEVICE: ${(e as Error).message}`); }
    }
    this.started = [];
    this.rings = [];
    for (const fd of this.errFds) libc.close(fd);
    this.errFds = [];
    this.own = [];
    this.act = null;
  }

  reset(): void {
    this.stopRings();
  }

  /** The socket belongs to the VMM (it outlives guest runs); only our eventfds go. */
  close(): void {
    this.stopRings();
  }
}
