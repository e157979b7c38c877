// A virtio device's I/O thread: owns the device model, sleeps in poll(2) on the queues' notify
// eventfds (registered as ioeventfds, so a guest kick wakes this thread without any vCPU exit to
// user space), the transport's control eventfd and the device's own host fds (tap, console
// input), and interrupts the guest by writing the MSI-X vector's irqfd. A slow disk or network
// stalls only this thread. A malformed request puts the device into DEVICE_NEEDS_RESET.
import { parentPort } from 'node:worker_threads';
import * as libc from '../sys/libc.js';
import { GuestMemory, GuestMemoryRevokedError } from '../memory/guest_memory.js';
import { SplitQueue, VirtqueueError } from '../virtio/queue.js';
import { VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, bit, type ExternalQueue, type VirtioDevice } from '../virtio/device.js';
import {
  Word, QueueWord, Command, VECTOR_MASKED, VECTOR_PENDING, VIRTIO_MSI_NO_VECTOR, CONFIG_BYTES,
  sharedViews, queueWord, vectorWord, join64, lo32, hi32,
} from '../virtio/pci/shared.js';
import { createDeviceModel } from './virtio_factory.js';
import { MAX_COUNTERS, type VirtioWorkerData, type VirtioWorkerEvent } from './virtio_protocol.js';

const post = (e: VirtioWorkerEvent) => parentPort!.postMessage(e);

parentPort!.once('message', (data: VirtioWorkerData) => {
  void start(data);
});

async function start(data: VirtioWorkerData): Promise<void> {
  let dev: VirtioDevice | null = null;
  try {
    dev = await createDeviceModel(data.spec, data.id, (message, warn) => post({ type: 'log', id: data.id, message, ...(warn ? { warn } : {}) }));
  } catch (e) {
    failReady(data);
    post({ type: 'error', id: data.id, message: `cannot create ${data.id}: ${(e as Error).message}` });
    return;
  }
  try {
    run(data, dev);
  } catch (e) {
    failReady(data);
    post({ type: 'error', id: data.id, message: (e as Error).stack ?? String(e) });
  }
}

/** Whatever failed, the transport must not wait for a device that will never be ready. */
function failReady(data: VirtioWorkerData): void {
  const w = new Int32Array(data.shared, 0, Word.QueueBase);
  Atomics.compareExchange(w, Word.Ready, 0, -1);
  Atomics.notify(w, Word.Ready);
}

const ONE = new Uint8Array(new BigUint64Array([1n]).buffer);
/** slotOf value of the device's POLLOUT fd (pollOutFd). */
const OUT_SLOT = -0x10000;

function run(data: VirtioWorkerData, dev: VirtioDevice): void {
  const nq = data.numQueues;
  const { words, config } = sharedViews(data.shared, { numQueues: nq, vectors: data.irqFds.length });
  const mem = GuestMemory.attach(data.mem);
  if (dev.numQueues !== nq) throw new Error(`${data.id}: device has ${dev.numQueues} queues, transport ${nq}`);
  // Publish what the transport answers from: features, queue size limit, configuration bytes.
  const feats = dev.features;
  Atomics.store(words, Word.DeviceFeaturesLo, lo32(feats));
  Atomics.store(words, Word.DeviceFeaturesHi, hi32(feats));
  Atomics.store(words, Word.QueueMax, dev.queueMaxSize);
  for (let q = 0; q < nq; q++) Atomics.store(words, queueWord(q, QueueWord.Size), dev.queueMaxSize);
  const publishConfig = () => {
    const tmp = new Uint8Array(CONFIG_BYTES);
    try { dev.readConfig(0, tmp); } catch { /* shorter config space: the rest reads 0 */ }
    config.set(tmp);
  };
  publishConfig();
  // Counters: names once (snake_case, as Cloud Hypervisor's vm.counters), values mirrored into
  // shared Float64 slots after every round of work.
  const counterSrc = dev.counters;
  const counterKeys = counterSrc ? Object.keys(counterSrc).slice(0, MAX_COUNTERS) : [];
  const counterOut = new Float64Array(data.counters);
  if (counterKeys.length > 0) post({ type: 'counter-names', id: data.id, names: counterKeys.map((k) => k.replace(/[A-Z]/g, (c) => '_' + c.toLowerCase())) });
  const mirrorCounters = () => {
    for (let i = 0; i < counterKeys.length; i++) counterOut[i] = counterSrc![counterKeys[i]!]!;
  };
  Atomics.store(words, Word.Ready, 1);
  Atomics.notify(words, Word.Ready);

  const irq = data.irqFds;
  /** Send MSI-X vector `v`, or leave it pending while the guest has it masked (PCI 6.8.2.9). */
  function signal(v: number): void {
    if (v === VIRTIO_MSI_NO_VECTOR || v >= irq.length) return; // no INTx: nothing to raise
    const w = vectorWord(nq, v);
    if ((Atomics.load(words, w) & VECTOR_MASKED) === 0) { libc.write(irq[v]!, ONE); return; }
    Atomics.or(words, w, VECTOR_PENDING);
    // The transport may have unmasked in between: whoever clears the pending bit delivers it.
    if ((Atomics.load(words, w) & VECTOR_MASKED) === 0 && (Atomics.and(words, w, ~VECTOR_PENDING) & VECTOR_PENDING) !== 0) {
      libc.write(irq[v]!, ONE);
    }
  }
  const queueVector = new Int32Array(nq);
  const notifyQueue = (i: number) => signal(queueVector[i]!);
  const notifyConfig = () => {
    publishConfig();
    Atomics.add(words, Word.ConfigGeneration, 1);
    signal(Atomics.load(words, Word.ConfigVector));
  };

  let active = false;
  const external = dev.activateExternal !== undefined;
  const enabled = new Uint8Array(nq);
  const scratch = new Uint8Array(8);

  function needsReset(why: string): void {
    Atomics.add(words, Word.Errors, 1);
    if (!active) return;
    active = false;
    Atomics.store(words, Word.NeedsReset, 1);
    post({ type: 'needs-reset', id: data.id, message: why });
    notifyConfig();
  }

  function process(i: number): void {
    try {
      dev.processQueue(i);
    } catch (e) {
      if (e instanceof GuestMemoryRevokedError) return; // the VM is stopping: the Stop command follows
      needsReset(e instanceof VirtqueueError ? e.message : `device error: ${(e as Error).message}`);
    }
  }

  /** A vhost-user device: its back-end gets the rings, the kick (ioeventfd) and call (irqfd) fds. */
  function activateExternal(features: bigint): void {
    const queues: Array<ExternalQueue | null> = [];
    active = true;
    for (let q = 0; q < nq; q++) {
      queueVector[q] = Atomics.load(words, queueWord(q, QueueWord.Vector));
      enabled[q] = Atomics.load(words, queueWord(q, QueueWord.Enable)) === 1 ? 1 : 0;
      if (!enabled[q]) { queues.push(null); continue; }
      const addr = (w: number) => Number(join64(Atomics.load(words, queueWord(q, w)), Atomics.load(words, queueWord(q, w + 1))));
      const v = queueVector[q]!;
      queues.push({
        size: Atomics.load(words, queueWord(q, QueueWord.Size)),
        descTable: addr(QueueWord.DescLo), availRing: addr(QueueWord.AvailLo), usedRing: addr(QueueWord.UsedLo),
        kickFd: data.queueFds[q]!, callFd: v !== VIRTIO_MSI_NO_VECTOR && v < irq.length ? irq[v]! : -1,
      });
    }
    try {
      dev.activateExternal!({ mem, features, queues, notifyQueue });
    } catch (e) {
      needsReset(`activation failed: ${(e as Error).message}`);
    }
  }

  function activate(): void {
    const features = join64(Atomics.load(words, Word.DriverFeaturesLo), Atomics.load(words, Word.DriverFeaturesHi));
    if (external) { activateExternal(features); return; }
    const opts = { eventIdx: (features & bit(VIRTIO_F_EVENT_IDX)) !== 0n, indirect: (features & bit(VIRTIO_F_INDIRECT_DESC)) !== 0n };
    const queues: Array<SplitQueue | null> = [];
    active = true;
    for (let q = 0; q < nq; q++) {
      queueVector[q] = Atomics.load(words, queueWord(q, QueueWord.Vector));
      enabled[q] = Atomics.load(words, queueWord(q, QueueWord.Enable)) === 1 ? 1 : 0;
      if (!enabled[q]) { queues.push(null); continue; }
      const addr = (w: number) => Number(join64(Atomics.load(words, queueWord(q, w)), Atomics.load(words, queueWord(q, w + 1))));
      try {
        queues.push(new SplitQueue(mem, {
          size: Atomics.load(words, queueWord(q, QueueWord.Size)),
          descTable: addr(QueueWord.DescLo), availRing: addr(QueueWord.AvailLo), usedRing: addr(QueueWord.UsedLo),
        }, opts));
      } catch (e) {
        queues.push(null);
        enabled[q] = 0;
        needsReset(`queue ${q}: ${(e as Error).message}`);
      }
    }
    if (!active) return;
    try {
      dev.activate({ mem, queues, features, notifyQueue, notifyConfig });
    } catch (e) {
      needsReset(`activation failed: ${(e as Error).message}`);
      return;
    }
    // Kicks that came before DRIVER_OK are still counted in the eventfds; look at every queue once.
    for (let q = 0; q < nq && active; q++) if (enabled[q]) process(q);
  }

  /** Apply pending commands; false when told to stop. A reset wins over an activation posted with it. */
  function control(): boolean {
    const bits = Atomics.exchange(words, Word.Command, 0);
    if (bits === 0) return true;
    if ((bits & Command.Reset) !== 0) {
      const seq = Atomics.load(words, Word.ResetSeq);
      active = false;
      enabled.fill(0);
      try { dev.reset(); } catch (e) { post({ type: 'error', id: data.id, message: `reset: ${(e as Error).message}` }); }
      publishConfig();
      Atomics.store(words, Word.ResetAck, seq);
      Atomics.notify(words, Word.ResetAck);
    } else if ((bits & Command.Activate) !== 0 && !active) {
      activate();
    }
    return (bits & Command.Stop) === 0;
  }

  // control, queues, and the device's own fds (a tap fd per queue pair, console input); grown
  // when a device's fd set outgrows it (vsock: the listener and one socket per connection).
  let maxFds = 1 + 2 * nq + 8;
  let pfds = libc.pollFds(maxFds);
  /** Which queue (>= 0) or extra fd (-1 - k) each poll slot stands for. */
  let slotOf = new Int32Array(maxFds);
  let extra: readonly number[] = [];
  for (;;) {
    let n = 0;
    if (active) {
      extra = dev.pollFds?.() ?? [];
      const need = 2 + nq + extra.length; // control, queues, extra fds, the POLLOUT slot
      if (need > maxFds) {
        maxFds = Math.max(need, maxFds * 2);
        pfds = libc.pollFds(maxFds);
        slotOf = new Int32Array(maxFds);
      }
    }
    libc.pollFdSet(pfds, n++, data.controlFd, libc.POLLIN);
    if (active) {
      const ownQueues = !external || dev.takenOver === true;
      for (let q = 0; q < nq && ownQueues; q++) {
        if (!enabled[q]) continue;
        slotOf[n] = q;
        libc.pollFdSet(pfds, n++, data.queueFds[q]!, libc.POLLIN);
      }
      const events = dev.pollEvents?.();
      for (let k = 0; k < extra.length && n < maxFds; k++) {
        slotOf[n] = -1 - k;
        libc.pollFdSet(pfds, n++, extra[k]!, events === undefined ? libc.POLLIN : events[k]!);
      }
      const outFd = dev.pollOutFd?.() ?? -1;
      if (outFd >= 0 && n < maxFds) {
        slotOf[n] = OUT_SLOT;
        libc.pollFdSet(pfds, n++, outFd, libc.POLLOUT);
      }
    }
    for (let i = n; i < maxFds; i++) libc.pollFdSet(pfds, i, -1, 0);
    try {
      // A finite timeout brings the thread back to JavaScript now and then, so that
      // Worker.terminate() can always stop it (it cannot interrupt a blocking poll).
      libc.poll(pfds, 1000);
    } catch (e) {
      if (e instanceof libc.SysError && e.errno === libc.EINTR) continue;
      throw e;
    }
    if (libc.pollRevents(pfds, 0) !== 0) drain(data.controlFd, scratch);
    if (Atomics.load(words, Word.Command) !== 0 && !control()) break;
    for (let i = 1; i < n && active; i++) {
      if (libc.pollRevents(pfds, i) === 0) continue;
      const s = slotOf[i]!;
      if (s === OUT_SLOT) {
        dev.onFdWritable?.();
      } else if (s >= 0) {
        drain(data.queueFds[s]!, scratch);
        process(s);
      } else {
        try {
          dev.onFdReady?.(extra[-1 - s]!, libc.pollRevents(pfds, i));
        } catch (e) {
          if (e instanceof GuestMemoryRevokedError) continue;
          needsReset(e instanceof VirtqueueError ? e.message : `device error: ${(e as Error).message}`);
        }
      }
    }
    mirrorCounters();
  }
  // The host resources (image, tap, files) belong to the VMM and outlive this guest run (a guest
  // reboot starts new workers over the same fds): only forget the guest's state here.
  try { dev.reset(); } catch { /* on the way out */ }
  mem.free();
  post({ type: 'stopped', id: data.id });
}

function drain(fd: number, buf: Uint8Array): void {
  try {
    libc.read(fd, buf);
  } catch (e) {
    if (!(e instanceof libc.SysError && e.errno === libc.EAGAIN)) throw e;
  }
}
