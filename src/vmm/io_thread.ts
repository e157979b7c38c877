// The loop of a virtio I/O thread, without the thread: one poll(2) set over the thread's control
// eventfd, every queue's notify eventfd (registered as an ioeventfd, so a guest kick wakes the
// thread with no vCPU exit to user space) and every device's host fds (tap, console input and
// output, vsock listener and connections, the vhost-user socket), for all the devices the thread
// serves. Interrupts raised while a poll round is handled are delivered once at its end (one
// irqfd write per MSI-X vector and round; whether to interrupt at all is the queue's decision,
// virtio 1.2, 2.7.10, with VIRTIO_F_EVENT_IDX honoured). A malformed request puts only its device
// into DEVICE_NEEDS_RESET. virtio_worker.ts runs this in a worker; nothing here needs one.
//
// Pause (vm.pause, shared.ts "Pause"): applied between poll rounds, so every request a round
// took has completed and its used entry is published by then; the device hands back the buffers
// it held without data (VirtioDevice.pause), its interrupts are delivered, then PauseAck is set.
// While paused the device has no slot in the poll set: kicks stay counted in the queue eventfds,
// tap frames, console input and vsock data and connections wait in their host fds, nothing is
// read from a ring or written to guest RAM or an image. Resume looks at every queue once.
import * as libc from '../sys/libc.js';
import { GuestMemory, GuestMemoryRevokedError } from '../memory/guest_memory.js';
import { SplitQueue, VirtqueueError, type QueueLayout } from '../virtio/queue.js';
import { VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1, DeviceStatus, bit, type ExternalQueue, type VirtioDevice } from '../virtio/device.js';
import { VirtioStateMismatchError, type VirtioDeviceState, type VirtqueueState } from '../virtio/state.js';
import {
  Word, QueueWord, Command, VECTOR_MASKED, VECTOR_PENDING, VIRTIO_MSI_NO_VECTOR, CONFIG_BYTES,
  sharedViews, queueWord, vectorWord, join64, lo32, hi32, clearTransportWords,
} from '../virtio/pci/shared.js';
import { MAX_COUNTERS, type VirtioWorkerDevice, type VirtioWorkerEvent } from './virtio_protocol.js';

const ONE = new Uint8Array(new BigUint64Array([1n]).buffer);

/** Poll slot kinds beside a queue index (>= 0): the device's extra fd k is EXTRA - k. */
const OUT_SLOT = -1;
const EXTRA = -2;

/** Whatever failed, the transport must not wait for a device that will never be ready. */
export function failReady(shared: SharedArrayBuffer): void {
  const w = new Int32Array(shared, 0, Word.QueueBase);
  Atomics.compareExchange(w, Word.Ready, 0, -1);
  Atomics.notify(w, Word.Ready);
}

/** One device of an I/O thread: the transport's shared words on one side, the model on the other. */
export class DeviceRunner {
  readonly id: string;
  /** Told to stop (Command.Stop): out of the poll set, the model reset. */
  stopped = false;
  /** Paused (vm.pause): out of the poll set, nothing taken from a ring until resumed. */
  paused = false;
  private active = false;
  /** The queues of the current activation (null: not enabled, or served by a back-end). */
  private queues: Array<SplitQueue | null> = [];
  /** The last PauseReq / StateReq applied. */
  private pauseReq = 0;
  private stateReq = 0;
  private readonly nq: number;
  private readonly words: Int32Array;
  private readonly config: Uint8Array;
  private readonly configTmp = new Uint8Array(CONFIG_BYTES);
  private readonly external: boolean;
  private readonly enabled: Uint8Array;
  private readonly queueVector: Int32Array;
  private readonly irq: readonly number[];
  /** MSI-X vectors raised this round, delivered by flushInterrupts(). */
  private readonly raised: Uint8Array;
  private anyRaised = false;
  private readonly scratch = new Uint8Array(8);
  private readonly counterKeys: string[];
  private readonly counterOut: Float64Array;
  /** The device's extra fds as of the last pollSlots(). */
  private extra: readonly number[] = [];
  /** The part of the configuration the driver writes (VirtioDevice.writableConfig), or null. */
  private readonly writable: { offset: number; length: number } | null;
  /** The configuration changed (onHostValue) while paused: signalled at resume. */
  private configChangePending = false;

  constructor(
    private readonly d: VirtioWorkerDevice,
    private readonly dev: VirtioDevice,
    private readonly mem: GuestMemory,
    private readonly post: (e: VirtioWorkerEvent) => void,
    /** Called the first time in a round that this device raises an interrupt. */
    private readonly onRaise: (r: DeviceRunner) => void,
  ) {
    this.id = d.id;
    const nq = (this.nq = d.numQueues);
    if (dev.numQueues !== nq) throw new Error(`${d.id}: device has ${dev.numQueues} queues, transport ${nq}`);
    const { words, config } = sharedViews(d.shared, { numQueues: nq, vectors: d.irqFds.length });
    this.words = words;
    this.config = config;
    this.external = dev.activateExternal !== undefined;
    this.enabled = new Uint8Array(nq);
    this.queueVector = new Int32Array(nq);
    this.irq = d.irqFds;
    this.raised = new Uint8Array(d.irqFds.length);
    // Publish what the transport answers from: features, queue size limit, configuration bytes.
    const feats = dev.features;
    Atomics.store(words, Word.DeviceFeaturesLo, lo32(feats));
    Atomics.store(words, Word.DeviceFeaturesHi, hi32(feats));
    Atomics.store(words, Word.QueueMax, dev.queueMaxSize);
    for (let q = 0; q < nq; q++) Atomics.store(words, queueWord(q, QueueWord.Size), dev.queueMaxSize);
    const cw = dev.writableConfig;
    this.writable = cw !== undefined && cw.length > 0 && cw.offset >= 0 && cw.offset + cw.length <= CONFIG_BYTES ? cw : null;
    Atomics.store(words, Word.ConfigWritable, this.writable === null ? 0 : this.writable.offset | (this.writable.length << 16));
    this.publishConfig(true);
    // Counters: names once (snake_case, as Cloud Hypervisor's vm.counters), values mirrored into
    // shared Float64 slots after every round of work.
    this.counterKeys = dev.counters ? Object.keys(dev.counters).slice(0, MAX_COUNTERS) : [];
    this.counterOut = new Float64Array(d.counters);
    if (this.counterKeys.length > 0) post({ type: 'counter-names', id: d.id, names: this.counterKeys.map((k) => k.replace(/[A-Z]/g, (c) => '_' + c.toLowerCase())) });
    // pauseReq / stateReq start at 0: a pause asked for before this device existed is applied
    // (and acknowledged) by the first control().
    if (d.restore !== undefined) this.restore(d.restore);
    Atomics.store(words, Word.Ready, 1);
    Atomics.notify(words, Word.Ready);
  }

  /**
   * The model's configuration into the shared bytes the transport answers from. Not `full`: the
   * bytes the driver writes (writableConfig) stay as the transport stored them, so that a write
   * of the driver's that the worker has not applied yet is not lost.
   */
  private publishConfig(full = false): void {
    const tmp = this.configTmp;
    tmp.fill(0);
    try { this.dev.readConfig(0, tmp); } catch { /* shorter config space: the rest reads 0 */ }
    const w = this.writable;
    if (full || w === null) { this.config.set(tmp); return; }
    this.config.set(tmp.subarray(0, w.offset));
    this.config.set(tmp.subarray(w.offset + w.length), w.offset + w.length);
  }

  /** Command.ConfigWrite: hand the driver's bytes of the writable configuration to the model. */
  private configWritten(): void {
    const w = this.writable;
    if (w === null) return;
    const bytes = this.configTmp.subarray(w.offset, w.offset + w.length);
    bytes.set(this.config.subarray(w.offset, w.offset + w.length));
    try { this.dev.writeConfig(w.offset, bytes); } catch (e) { this.guard(e); }
  }

  /**
   * Command.HostValue: the VMM set a value for the device (virtio-balloon: a new target). The
   * configuration is republished; an active device signals the change (4.1.4.3: config
   * generation, then the configuration vector), a paused one at resume.
   */
  private hostValue(): void {
    const v = Atomics.load(this.words, Word.HostValue) >>> 0;
    try {
      this.dev.onHostValue?.(v);
    } catch (e) {
      this.post({ type: 'error', id: this.id, message: `host value ${v}: ${(e as Error).message}` });
      return;
    }
    if (this.active && !this.paused) { this.notifyConfig(); return; }
    this.publishConfig();
    Atomics.add(this.words, Word.ConfigGeneration, 1);
    if (this.active) this.configChangePending = true;
  }

  mirrorCounters(): void {
    const src = this.dev.counters;
    const keys = this.counterKeys;
    for (let i = 0; i < keys.length; i++) this.counterOut[i] = src![keys[i]!]!;
  }

  /** Raise MSI-X vector `v` (delivered at the end of the round). */
  private raise(v: number): void {
    if (v === VIRTIO_MSI_NO_VECTOR || v >= this.irq.length) return; // no INTx: nothing to raise
    this.raised[v] = 1;
    if (!this.anyRaised) { this.anyRaised = true; this.onRaise(this); }
  }

  /** Send the vectors raised this round, or leave them pending while the guest masks them (PCI 6.8.2.9). */
  flushInterrupts(): void {
    this.anyRaised = false;
    const words = this.words;
    const r = this.raised;
    for (let v = 0; v < r.length; v++) {
      if (r[v] === 0) continue;
      r[v] = 0;
      const w = vectorWord(this.nq, v);
      if ((Atomics.load(words, w) & VECTOR_MASKED) === 0) { libc.write(this.irq[v]!, ONE); continue; }
      Atomics.or(words, w, VECTOR_PENDING);
      // The transport may have unmasked in between: whoever clears the pending bit delivers it.
      if ((Atomics.load(words, w) & VECTOR_MASKED) === 0 && (Atomics.and(words, w, ~VECTOR_PENDING) & VECTOR_PENDING) !== 0) {
        libc.write(this.irq[v]!, ONE);
      }
    }
  }

  private readonly notifyQueue = (i: number): void => this.raise(this.queueVector[i]!);
  /** VirtioActivation.publishConfig: the configuration changed in-band (4.1.4.3: a new config_generation, no interrupt). */
  private readonly publishConfigInBand = (): void => {
    this.publishConfig();
    Atomics.add(this.words, Word.ConfigGeneration, 1);
  };
  private readonly notifyConfig = (): void => {
    this.publishConfigInBand();
    this.raise(Atomics.load(this.words, Word.ConfigVector));
  };

  private needsReset(why: string): void {
    Atomics.add(this.words, Word.Errors, 1);
    if (!this.active) return;
    this.active = false;
    Atomics.store(this.words, Word.NeedsReset, 1);
    this.post({ type: 'needs-reset', id: this.id, message: why });
    this.notifyConfig();
  }

  /** A device call; what it throws becomes DEVICE_NEEDS_RESET (nothing, while guest RAM is revoked). */
  private guard(e: unknown): void {
    if (e instanceof GuestMemoryRevokedError) return; // the VM is stopping: the Stop command follows
    this.needsReset(e instanceof VirtqueueError ? e.message : `device error: ${(e as Error).message}`);
  }

  private process(i: number): void {
    try { this.dev.processQueue(i); } catch (e) { this.guard(e); }
  }

  /** Queue q as the driver set it up (vector and enable latched), or null when not enabled. */
  private queueLayout(q: number): QueueLayout | null {
    const words = this.words;
    this.queueVector[q] = Atomics.load(words, queueWord(q, QueueWord.Vector));
    this.enabled[q] = Atomics.load(words, queueWord(q, QueueWord.Enable)) === 1 ? 1 : 0;
    if (!this.enabled[q]) return null;
    const addr = (w: number) => Number(join64(Atomics.load(words, queueWord(q, w)), Atomics.load(words, queueWord(q, w + 1))));
    return {
      size: Atomics.load(words, queueWord(q, QueueWord.Size)),
      descTable: addr(QueueWord.DescLo), availRing: addr(QueueWord.AvailLo), usedRing: addr(QueueWord.UsedLo),
    };
  }

  private activate(at?: ReadonlyArray<VirtqueueState>): void {
    const words = this.words;
    const features = join64(Atomics.load(words, Word.DriverFeaturesLo), Atomics.load(words, Word.DriverFeaturesHi));
    const nq = this.nq;
    this.active = true;
    if (this.external) {
      // A vhost-user device: its back-end gets the rings, the kick (ioeventfd) and call (irqfd) fds.
      const queues: Array<ExternalQueue | null> = [];
      for (let q = 0; q < nq; q++) {
        const l = this.queueLayout(q);
        const v = this.queueVector[q]!;
        queues.push(l === null ? null : {
          ...l, kickFd: this.d.queueFds[q]!, callFd: v !== VIRTIO_MSI_NO_VECTOR && v < this.irq.length ? this.irq[v]! : -1,
          lastAvailIdx: at?.[q]?.lastAvailIdx ?? 0, usedIdx: at?.[q]?.usedIdx ?? 0,
        });
      }
      this.queues = [];
      try {
        this.dev.activateExternal!({ mem: this.mem, features, queues, notifyQueue: this.notifyQueue });
        // Activated while paused (a restore): the back-end must not run the rings until resume.
        if (this.paused) this.dev.pause?.();
      } catch (e) {
        this.needsReset(`activation failed: ${(e as Error).message}`);
      }
      return;
    }
    const opts = { eventIdx: (features & bit(VIRTIO_F_EVENT_IDX)) !== 0n, indirect: (features & bit(VIRTIO_F_INDIRECT_DESC)) !== 0n };
    const queues: Array<SplitQueue | null> = [];
    for (let q = 0; q < nq; q++) {
      const l = this.queueLayout(q);
      if (l === null) { queues.push(null); continue; }
      try {
        const sq = new SplitQueue(this.mem, l, opts);
        const p = at?.[q];
        if (p !== undefined) sq.resumeAt(p.lastAvailIdx, p.usedIdx);
        queues.push(sq);
      } catch (e) {
        queues.push(null);
        this.enabled[q] = 0;
        this.needsReset(`queue ${q}: ${(e as Error).message}`);
      }
    }
    if (!this.active) return;
    this.queues = queues;
    try {
      this.dev.activate({ mem: this.mem, queues, features, notifyQueue: this.notifyQueue, notifyConfig: this.notifyConfig, publishConfig: this.publishConfigInBand });
    } catch (e) {
      this.needsReset(`activation failed: ${(e as Error).message}`);
      return;
    }
    // Kicks that came before DRIVER_OK are still counted in the eventfds; look at every queue
    // once (while paused: at resume).
    if (this.paused) return;
    for (let q = 0; q < nq && this.active; q++) if (this.enabled[q]) this.process(q);
  }

  /** Pause or resume (want 1 / 0); see "Pause" at the top. */
  private applyPause(want: boolean): void {
    if (want === this.paused) return;
    if (want) {
      if (this.active) { try { this.dev.pause?.(); } catch (e) { this.guard(e); } }
      this.paused = true;
      return;
    }
    this.paused = false;
    if (!this.active) return;
    try { this.dev.resume?.(); } catch (e) { this.guard(e); }
    if (this.configChangePending) { this.configChangePending = false; this.notifyConfig(); }
    // A back-end's queues: their notify eventfds are its kicks (never read here, or the
    // back-end's read finds nothing: virtiofsd then drops the queue); its resume kicked them.
    if (this.external && this.dev.takenOver !== true) return;
    // Kicks that came while paused are still counted in the eventfds, and the device gave back
    // what it held: look at every queue once, so that no notification is lost.
    for (let q = 0; q < this.nq && this.active; q++) {
      if (!this.enabled[q]) continue;
      drain(this.d.queueFds[q]!, this.scratch);
      this.process(q);
    }
  }

  /** The transport registers and queue positions as they are now, and the model's own state. */
  private captureState(): VirtioDeviceState {
    const w = this.words;
    const dev = this.dev;
    if (dev.saveState === undefined) throw new Error('this device model cannot save its state');
    const ext = this.external && this.active ? dev.externalQueueIndexes?.() : undefined;
    const addr = (q: number, k: number) => join64(Atomics.load(w, queueWord(q, k)), Atomics.load(w, queueWord(q, k + 1)));
    const queues: VirtqueueState[] = [];
    for (let q = 0; q < this.nq; q++) {
      const sq = this.active ? this.queues[q] : null;
      const e = ext?.[q];
      queues.push({
        size: Atomics.load(w, queueWord(q, QueueWord.Size)),
        ready: Atomics.load(w, queueWord(q, QueueWord.Enable)) === 1,
        msixVector: Atomics.load(w, queueWord(q, QueueWord.Vector)) & 0xffff,
        descTable: addr(q, QueueWord.DescLo), availRing: addr(q, QueueWord.AvailLo), usedRing: addr(q, QueueWord.UsedLo),
        lastAvailIdx: sq ? sq.lastAvailIdx : e ? e.lastAvailIdx : 0,
        usedIdx: sq ? sq.usedIndex : e ? e.usedIdx : 0,
      });
    }
    const vectorMasked: boolean[] = [];
    const vectorPending: boolean[] = [];
    for (let v = 0; v < this.irq.length; v++) {
      const x = Atomics.load(w, vectorWord(this.nq, v));
      vectorMasked.push((x & VECTOR_MASKED) !== 0);
      vectorPending.push((x & VECTOR_PENDING) !== 0);
    }
    return {
      id: this.id,
      transport: {
        deviceType: dev.deviceType,
        deviceStatus: Atomics.load(w, Word.Status) & 0xff,
        deviceFeatures: join64(Atomics.load(w, Word.DeviceFeaturesLo), Atomics.load(w, Word.DeviceFeaturesHi)) | bit(VIRTIO_F_VERSION_1),
        driverFeatures: join64(Atomics.load(w, Word.DriverFeaturesLo), Atomics.load(w, Word.DriverFeaturesHi)),
        deviceFeatureSelect: Atomics.load(w, Word.DeviceFeatureSelect) >>> 0,
        driverFeatureSelect: Atomics.load(w, Word.DriverFeatureSelect) >>> 0,
        queueSelect: Atomics.load(w, Word.QueueSelect) & 0xffff,
        configGeneration: Atomics.load(w, Word.ConfigGeneration) >>> 0,
        msixConfigVector: Atomics.load(w, Word.ConfigVector) & 0xffff,
        needsReset: Atomics.load(w, Word.NeedsReset) !== 0,
        queues, vectorMasked, vectorPending,
      },
      device: dev.saveState(),
    };
  }

  /**
   * Saved state into this freshly built device (before Ready: the transport and the vCPUs have
   * not looked at it yet). The device comes up paused; a driven device (DRIVER_OK) is activated
   * with its queues where the saved indexes say. Throws VirtioStateMismatchError for a state of
   * another device.
   */
  private restore(s: VirtioDeviceState): void {
    const t = s.transport;
    const dev = this.dev;
    const no = (m: string): never => { throw new VirtioStateMismatchError(`${this.id}: saved state of ${s.id} does not fit: ${m}`); };
    if (t.deviceType !== dev.deviceType) no(`device type ${t.deviceType}, this device is type ${dev.deviceType}`);
    if (t.queues.length !== this.nq) no(`${t.queues.length} queues, this device has ${this.nq}`);
    if (t.vectorMasked.length !== this.irq.length || t.vectorPending.length !== this.irq.length) no(`${t.vectorMasked.length} MSI-X vectors, this device has ${this.irq.length}`);
    const offered = dev.features | bit(VIRTIO_F_VERSION_1);
    if (t.deviceFeatures !== offered) no(`it was offered features 0x${t.deviceFeatures.toString(16)}, this device offers 0x${offered.toString(16)}`);
    if ((t.driverFeatures & ~offered) !== 0n) no(`the driver accepted features 0x${t.driverFeatures.toString(16)} beyond those offered`);
    t.queues.forEach((q, i) => { if (q.size > dev.queueMaxSize) no(`queue ${i} has size ${q.size}, more than this device's ${dev.queueMaxSize}`); });
    if (dev.restoreState === undefined) no('this device model cannot restore state');
    dev.restoreState!(s.device);
    this.publishConfig(true);
    const w = this.words;
    Atomics.store(w, Word.Status, t.deviceStatus);
    Atomics.store(w, Word.DriverFeaturesLo, lo32(t.driverFeatures));
    Atomics.store(w, Word.DriverFeaturesHi, hi32(t.driverFeatures));
    Atomics.store(w, Word.DeviceFeatureSelect, t.deviceFeatureSelect | 0);
    Atomics.store(w, Word.DriverFeatureSelect, t.driverFeatureSelect | 0);
    Atomics.store(w, Word.QueueSelect, t.queueSelect);
    Atomics.store(w, Word.ConfigGeneration, t.configGeneration | 0);
    Atomics.store(w, Word.ConfigVector, t.msixConfigVector);
    Atomics.store(w, Word.NeedsReset, t.needsReset ? 1 : 0);
    t.queues.forEach((q, i) => {
      Atomics.store(w, queueWord(i, QueueWord.Size), q.size);
      Atomics.store(w, queueWord(i, QueueWord.Enable), q.ready ? 1 : 0);
      Atomics.store(w, queueWord(i, QueueWord.Vector), q.msixVector);
      const set = (k: number, v: bigint) => { Atomics.store(w, queueWord(i, k), lo32(v)); Atomics.store(w, queueWord(i, k + 1), hi32(v)); };
      set(QueueWord.DescLo, q.descTable);
      set(QueueWord.AvailLo, q.availRing);
      set(QueueWord.UsedLo, q.usedRing);
    });
    for (let v = 0; v < this.irq.length; v++) {
      Atomics.store(w, vectorWord(this.nq, v), (t.vectorMasked[v] ? VECTOR_MASKED : 0) | (t.vectorPending[v] ? VECTOR_PENDING : 0));
    }
    this.paused = true;
    const driven = DeviceStatus.FEATURES_OK | DeviceStatus.DRIVER_OK;
    if ((t.deviceStatus & driven) === driven && !t.needsReset && (t.deviceStatus & DeviceStatus.FAILED) === 0) this.activate(t.queues);
  }

  /** Apply pending commands. A reset wins over an activation posted with it; Stop sets `stopped`. */
  control(): void {
    const words = this.words;
    if (this.stopped) return;
    if (Atomics.load(words, Word.Command) !== 0) this.commands();
    if (this.stopped) return;
    const pr = Atomics.load(words, Word.PauseReq);
    if (pr !== this.pauseReq) {
      this.pauseReq = pr;
      this.applyPause((pr & 1) === 1);
      // What the round completed is interrupted before the VMM hears "paused".
      this.flushInterrupts();
      Atomics.store(words, Word.PauseAck, pr);
      Atomics.notify(words, Word.PauseAck);
    }
    const sr = Atomics.load(words, Word.StateReq);
    if (sr !== this.stateReq) {
      this.stateReq = sr;
      if (!this.paused) {
        this.post({ type: 'state', id: this.id, seq: sr, error: 'the device is not paused (state is taken while the VM is paused)' });
      } else {
        try {
          this.post({ type: 'state', id: this.id, seq: sr, state: this.captureState() });
        } catch (e) {
          this.post({ type: 'state', id: this.id, seq: sr, error: (e as Error).message });
        }
      }
    }
  }

  private commands(): void {
    const words = this.words;
    const bits = Atomics.exchange(words, Word.Command, 0);
    if ((bits & Command.Reset) !== 0) {
      const seq = Atomics.load(words, Word.ResetSeq);
      this.active = false;
      this.enabled.fill(0);
      this.queues = [];
      try { this.dev.reset(); } catch (e) { this.post({ type: 'error', id: this.id, message: `reset: ${(e as Error).message}` }); }
      this.configChangePending = false;
      this.publishConfig(true);
      // The registers read as after a reset from now on (captured state agrees with the model).
      clearTransportWords(words, this.nq, this.irq.length);
      Atomics.store(words, Word.ResetAck, seq);
      Atomics.notify(words, Word.ResetAck);
    } else if ((bits & Command.Activate) !== 0 && !this.active) {
      this.activate();
    }
    if ((bits & Command.ConfigWrite) !== 0) this.configWritten();
    if ((bits & Command.HostValue) !== 0) this.hostValue();
    if ((bits & Command.Stop) !== 0) this.stop();
  }

  /**
   * Leave the poll set. The host resources (image, tap, files) belong to the VMM and outlive
   * this guest run (a guest reboot starts new threads over the same fds): only the guest's
   * state is forgotten here.
   */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.active = false;
    this.queues = [];
    try { this.dev.reset(); } catch { /* on the way out */ }
    this.post({ type: 'stopped', id: this.id });
  }

  /** How many poll slots this device needs this round (also latches its extra fds). */
  pollCount(): number {
    if (!this.active || this.paused) return 0;
    this.extra = this.dev.pollFds?.() ?? [];
    return this.nq + this.extra.length + 1;
  }

  /** Put this device's fds into `set` (after pollCount()). */
  addPollSlots(set: PollSet, self: number): void {
    if (!this.active || this.paused) return;
    const nq = this.nq;
    if (!this.external || this.dev.takenOver === true) {
      for (let q = 0; q < nq; q++) if (this.enabled[q]) set.add(this.d.queueFds[q]!, libc.POLLIN, self, q);
    }
    const extra = this.extra;
    const events = extra.length > 0 ? this.dev.pollEvents?.() : undefined;
    for (let k = 0; k < extra.length; k++) set.add(extra[k]!, events === undefined ? libc.POLLIN : events[k]!, self, EXTRA - k);
    const outFd = this.dev.pollOutFd?.() ?? -1;
    if (outFd >= 0) set.add(outFd, libc.POLLOUT, self, OUT_SLOT);
  }

  /** Poll reported `revents` on the slot `what` (a queue, an extra fd, the POLLOUT fd). */
  dispatch(what: number, revents: number): void {
    if (!this.active || this.paused) return;
    if (what >= 0) {
      drain(this.d.queueFds[what]!, this.scratch);
      this.process(what);
    } else if (what === OUT_SLOT) {
      try { this.dev.onFdWritable?.(); } catch (e) { this.guard(e); }
    } else {
      try { this.dev.onFdReady?.(this.extra[EXTRA - what]!, revents); } catch (e) { this.guard(e); }
    }
  }
}

/** A pollfd array with, for each slot, the device and what of it the slot stands for. */
export class PollSet {
  n = 0;
  private cap = 0;
  fds: Int32Array = new Int32Array(0);
  dev: Int32Array = new Int32Array(0);
  what: Int32Array = new Int32Array(0);

  /** Empty, with room for `need` slots. */
  begin(need: number): void {
    if (need > this.cap) {
      this.cap = Math.max(need, this.cap * 2, 16);
      this.fds = libc.pollFds(this.cap);
      this.dev = new Int32Array(this.cap);
      this.what = new Int32Array(this.cap);
    }
    this.n = 0;
  }

  add(fd: number, events: number, dev: number, what: number): void {
    const i = this.n++;
    libc.pollFdSet(this.fds, i, fd, events);
    this.dev[i] = dev;
    this.what[i] = what;
  }

  /** Unused slots are ignored by poll (fd -1). */
  end(): void {
    for (let i = this.n; i < this.cap; i++) libc.pollFdSet(this.fds, i, -1, 0);
  }
}

/**
 * Serve `runners` until every one was told to stop. `controlFd` is the thread's wake-up eventfd
 * (commands are in each device's shared words). Returns when all devices stopped.
 */
export function runIoLoop(controlFd: number, runners: DeviceRunner[], raisedList: DeviceRunner[]): void {
  const set = new PollSet();
  const scratch = new Uint8Array(8);
  const CONTROL = -1;
  for (;;) {
    let live = 0;
    for (const r of runners) { r.control(); if (!r.stopped) live++; }
    flush(raisedList);
    if (live === 0) break;
    let need = 1;
    for (const r of runners) need += r.pollCount();
    set.begin(need);
    set.add(controlFd, libc.POLLIN, CONTROL, 0);
    for (let i = 0; i < runners.length; i++) runners[i]!.addPollSlots(set, i);
    set.end();
    try {
      // A finite timeout brings the thread back to JavaScript now and then, so that
      // Worker.terminate() can always stop it (it cannot interrupt a blocking poll).
      libc.poll(set.fds, 1000);
    } catch (e) {
      if (e instanceof libc.SysError && e.errno === libc.EINTR) continue;
      throw e;
    }
    if (libc.pollRevents(set.fds, 0) !== 0) drain(controlFd, scratch);
    // Commands first (a reset or stop posted now must not see this round's events).
    for (const r of runners) r.control();
    for (let i = 1; i < set.n; i++) {
      const rev = libc.pollRevents(set.fds, i);
      if (rev === 0) continue;
      runners[set.dev[i]!]!.dispatch(set.what[i]!, rev);
    }
    flush(raisedList);
    for (const r of runners) r.mirrorCounters();
  }
}

function flush(list: DeviceRunner[]): void {
  for (let i = 0; i < list.length; i++) list[i]!.flushInterrupts();
  list.length = 0;
}

export function drain(fd: number, buf: Uint8Array): void {
  try {
    libc.read(fd, buf);
  } catch (e) {
    if (!(e instanceof libc.SysError && e.errno === libc.EAGAIN)) throw e;
  }
}
