// State shared between a virtio-pci transport (in the device thread, where the guest's register
// accesses arrive) and the device's I/O worker (which owns the device model and processes its
// queues). One SharedArrayBuffer per device: Int32 words, then the device configuration bytes.
//
// Protocol: the transport writes queue/feature registers, then sets a Command bit (Atomics.or, so
// no request can overwrite another) and signals the worker's control eventfd; the worker takes
// all pending bits at once (Atomics.exchange). A reset also bumps ResetSeq; the worker stores it
// in ResetAck once the device model has stopped using the queues, and only then does the
// transport let device_status read 0, which the driver polls for (virtio 1.2, 2.4 / 4.1.4.3.2).
// The device thread never waits for the worker.
//
// Pause (vm.pause): the VMM's main thread writes PauseReq = (seq << 1) | want (1 paused, 0
// running) and signals the control eventfd; the worker applies it between poll rounds (whatever
// a round started has completed by then), then stores the same value in PauseAck. State capture
// (while paused): the main thread bumps StateReq; the worker answers with a 'state' message
// carrying that sequence number.
//
// Run-time configuration: the main thread stores Word.HostValue and posts Command.HostValue
// (virtio-balloon's new target); the worker gives it to the model, republishes the configuration
// and signals a configuration change. The driver's writes into the part of the device
// configuration the worker publishes as writable (Word.ConfigWritable; the balloon's `actual`) are
// stored by the transport in the shared bytes, followed by Command.ConfigWrite; the worker hands
// them to the model and, when it republishes the configuration, leaves those bytes alone.

export const Word = {
  /** Published by the worker once the device model exists: 1 ready, -1 failed. */
  Ready: 0,
  DeviceFeaturesLo: 1,
  DeviceFeaturesHi: 2,
  QueueMax: 4,
  DriverFeaturesLo: 5,
  DriverFeaturesHi: 6,
  Status: 7,
  ConfigGeneration: 8,
  ConfigVector: 9,
  /** Bit 0: MSI-X enabled, bit 1: function masked. */
  MsixControl: 10,
  /** Pending Command bits. */
  Command: 11,
  ResetSeq: 12,
  ResetAck: 13,
  /** Set by the worker when the device is in the spec's error state (DEVICE_NEEDS_RESET). */
  NeedsReset: 14,
  /** Malformed requests seen since creation (never reset). */
  Errors: 15,
  /** The common configuration's selectors (4.1.4.3), kept here so that device state has them. */
  DeviceFeatureSelect: 16,
  DriverFeatureSelect: 17,
  QueueSelect: 18,
  /** (seq << 1) | want: see "Pause" above. */
  PauseReq: 19,
  PauseAck: 20,
  /** Sequence number of the last state request. */
  StateReq: 21,
  /** A value the VMM sets for the device at run time (Command.HostValue; VirtioDevice.onHostValue). */
  HostValue: 22,
  /**
   * The device configuration bytes the driver may write, published by the worker:
   * offset | (length << 16); 0 when the configuration is read-only (VirtioDevice.writableConfig).
   */
  ConfigWritable: 23,
  QueueBase: 24,
  QueueStride: 12,
} as const;

/** Words of one queue, relative to QueueBase + index * QueueStride. */
export const QueueWord = {
  Size: 0, Enable: 1, Vector: 2, DescLo: 3, DescHi: 4, AvailLo: 5, AvailHi: 6, UsedLo: 7, UsedHi: 8,
} as const;

/**
 * HostValue: the VMM's main thread stored Word.HostValue. ConfigWrite: the driver wrote the
 * writable part of the device configuration (the transport stored the bytes in the shared config).
 */
export const Command = { Activate: 1, Reset: 2, Stop: 4, HostValue: 8, ConfigWrite: 16 } as const;

/** Post command bits to the worker (the caller then signals its control eventfd). Returns the reset sequence. */
export function postCommand(words: Int32Array, bits: number): number {
  const seq = (bits & Command.Reset) !== 0 ? (Atomics.add(words, Word.ResetSeq, 1) + 1) | 0 : Atomics.load(words, Word.ResetSeq);
  Atomics.or(words, Word.Command, bits);
  return seq;
}

/** Per-vector words after the queues: bit 0 masked, bit 1 pending. */
export const VECTOR_MASKED = 1;
export const VECTOR_PENDING = 2;
export const VIRTIO_MSI_NO_VECTOR = 0xffff;

export const CONFIG_BYTES = 256;

export interface VirtioSharedLayout {
  numQueues: number;
  vectors: number;
}

export function vectorWord(numQueues: number, v: number): number {
  return Word.QueueBase + numQueues * Word.QueueStride + v;
}

export function queueWord(q: number, w: number): number {
  return Word.QueueBase + q * Word.QueueStride + w;
}

export function sharedWords(l: VirtioSharedLayout): number {
  return vectorWord(l.numQueues, l.vectors);
}

export function createShared(l: VirtioSharedLayout): SharedArrayBuffer {
  const sab = new SharedArrayBuffer(sharedWords(l) * 4 + CONFIG_BYTES);
  const w = new Int32Array(sab, 0, sharedWords(l));
  for (let v = 0; v < l.vectors; v++) w[vectorWord(l.numQueues, v)] = VECTOR_MASKED;
  w[Word.ConfigVector] = VIRTIO_MSI_NO_VECTOR;
  for (let q = 0; q < l.numQueues; q++) w[queueWord(q, QueueWord.Vector)] = VIRTIO_MSI_NO_VECTOR;
  return sab;
}

export function sharedViews(sab: SharedArrayBuffer, l: VirtioSharedLayout): { words: Int32Array; config: Uint8Array } {
  const n = sharedWords(l);
  return { words: new Int32Array(sab, 0, n), config: new Uint8Array(sab, n * 4, CONFIG_BYTES) };
}

/**
 * Back to the reset state (2.4): what device_status 0 means for the registers. The worker does
 * this before it acknowledges a reset (so that state captured afterwards agrees with the
 * model), and the transport again when it sees the acknowledgement.
 */
export function clearTransportWords(w: Int32Array, numQueues: number, vectors: number): void {
  Atomics.store(w, Word.Status, 0);
  Atomics.store(w, Word.DriverFeaturesLo, 0);
  Atomics.store(w, Word.DriverFeaturesHi, 0);
  Atomics.store(w, Word.ConfigVector, VIRTIO_MSI_NO_VECTOR);
  Atomics.store(w, Word.NeedsReset, 0);
  Atomics.store(w, Word.DeviceFeatureSelect, 0);
  Atomics.store(w, Word.DriverFeatureSelect, 0);
  Atomics.store(w, Word.QueueSelect, 0);
  const max = Atomics.load(w, Word.QueueMax);
  for (let q = 0; q < numQueues; q++) {
    Atomics.store(w, queueWord(q, QueueWord.Size), max);
    Atomics.store(w, queueWord(q, QueueWord.Enable), 0);
    Atomics.store(w, queueWord(q, QueueWord.Vector), VIRTIO_MSI_NO_VECTOR);
    for (let k = QueueWord.DescLo; k <= QueueWord.UsedHi; k++) Atomics.store(w, queueWord(q, k), 0);
  }
  // Interrupts left pending from before the reset are stale (they would be spurious).
  for (let v = 0; v < vectors; v++) Atomics.and(w, vectorWord(numQueues, v), ~VECTOR_PENDING);
}

export function hi32(v: bigint): number { return Number((v >> 32n) & 0xffffffffn) | 0; }
export function lo32(v: bigint): number { return Number(v & 0xffffffffn) | 0; }
export function join64(lo: number, hi: number): bigint { return (BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0); }
