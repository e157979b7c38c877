// The virtio-pci transport, modern only (virtio 1.2, 4.1): PCI configuration space with the
// vendor capabilities (common, notify, ISR, device configuration) and MSI-X, and BAR 0 holding
// those structures. It lives in the device thread, where the guest's config-space and BAR
// accesses arrive; the device model runs in its own worker and sees the transport's state through
// the shared words of shared.ts. Queue notifications normally never reach this code (an
// ioeventfd on each notify address wakes the worker directly); interrupts go out through irqfds.

import type { BusDevice } from '../../devices/bus.js';
import type { PciDevice } from '../../pci/bus.js';
import { PciConfiguration, PCI_CAP_ID_VNDR } from '../../pci/config.js';
import { Msix, type MsiMessageValue } from '../../pci/msix.js';
import { DeviceStatus, VIRTIO_F_VERSION_1, bit } from '../device.js';
import {
  Word, QueueWord, Command, VECTOR_MASKED, VECTOR_PENDING, VIRTIO_MSI_NO_VECTOR, CONFIG_BYTES,
  sharedViews, queueWord, vectorWord, join64, postCommand, clearTransportWords,
} from './shared.js';

export const VIRTIO_PCI_VENDOR_ID = 0x1af4;
/** Modern device IDs are 0x1040 + virtio device ID (4.1.2.1). */
export const VIRTIO_PCI_DEVICE_ID_BASE = 0x1040;

// Capability cfg_type values (4.1.4).
export const VIRTIO_PCI_CAP_COMMON_CFG = 1;
export const VIRTIO_PCI_CAP_NOTIFY_CFG = 2;
export const VIRTIO_PCI_CAP_ISR_CFG = 3;
export const VIRTIO_PCI_CAP_DEVICE_CFG = 4;

// BAR 0 layout (ours).
export const COMMON_CFG_OFFSET = 0x0000;
export const COMMON_CFG_SIZE = 0x38;
export const ISR_CFG_OFFSET = 0x1000;
export const ISR_CFG_SIZE = 0x1;
export const DEVICE_CFG_OFFSET = 0x2000;
export const DEVICE_CFG_SIZE = CONFIG_BYTES;
export const NOTIFY_OFFSET = 0x3000;
/** queue_notify_off(q) = q; notify address = NOTIFY_OFFSET + q * multiplier (4.1.4.4). */
export const NOTIFY_OFF_MULTIPLIER = 4;
export const MSIX_TABLE_OFFSET = 0x8000;
export const MSIX_PBA_OFFSET = 0xc000;
export const BAR_SIZE = 0x10000;
/** The MSI-X table (16 bytes per vector, queues + 1 vectors) must end before the PBA. */
export const MAX_QUEUES = Math.min((MSIX_TABLE_OFFSET - NOTIFY_OFFSET) / NOTIFY_OFF_MULTIPLIER, (MSIX_PBA_OFFSET - MSIX_TABLE_OFFSET) / 16 - 1);

// Common configuration offsets (4.1.4.3).
const CC = {
  deviceFeatureSelect: 0x00, deviceFeature: 0x04, driverFeatureSelect: 0x08, driverFeature: 0x0c,
  configMsixVector: 0x10, numQueues: 0x12, deviceStatus: 0x14, configGeneration: 0x15,
  queueSelect: 0x16, queueSize: 0x18, queueMsixVector: 0x1a, queueEnable: 0x1c, queueNotifyOff: 0x1e,
  queueDesc: 0x20, queueDriver: 0x28, queueDevice: 0x30,
} as const;

/** PCI class codes per device type (what QEMU and Cloud Hypervisor present). */
export function virtioClassCode(deviceType: number): number {
  switch (deviceType) {
    case 1: return 0x020000; // network controller
    case 2: return 0x018000; // mass storage, other
    case 3: return 0x078000; // communication, other
    default: return 0x00ff00;
  }
}

/** What the transport asks of its owner (the VMM's device thread, or a test). */
export interface VirtioPciHooks {
  /** Wake the worker: a command was posted. */
  signalWorker(): void;
  /** Deliver MSI-X vector `v` now (write its irqfd). */
  fireVector(v: number): void;
  /** Vector `v` has a new message (or is masked: msg null); update the hypervisor's route. */
  routeVector(v: number, msg: MsiMessageValue | null): void;
  /** The guest moved BAR 0 (notify ioeventfds and the MMIO range move with it); false: refused. */
  barMoved(from: number, to: number): boolean;
  /** A notify write reached the transport (no ioeventfd at that address): wake queue `q`. */
  notifyQueue(q: number): void;
}

export interface VirtioPciOptions {
  deviceType: number;
  numQueues: number;
  shared: SharedArrayBuffer;
  barAddr: number;
  hooks: VirtioPciHooks;
}

export class VirtioPciTransport implements PciDevice, BusDevice {
  readonly config: PciConfiguration;
  readonly msix: Msix;
  readonly numQueues: number;
  readonly vectors: number;
  private readonly words: Int32Array;
  private readonly cfgBytes: Uint8Array;
  private readonly hooks: VirtioPciHooks;
  private readonly msixCap: number;
  /** A reset the worker has not acknowledged yet (its ResetSeq), or -1. */
  private resetPending = -1;
  /** 0 not known yet, 1 the worker published the device, -1 it failed or never answered. */
  private ready = 0;
  /** Reads/writes that hit nothing or had a bad width (diagnostics). */
  badAccesses = 0;

  constructor(o: VirtioPciOptions) {
    if (o.numQueues < 1 || o.numQueues > MAX_QUEUES) throw new RangeError(`virtio device with ${o.numQueues} queues (1..${MAX_QUEUES})`);
    this.numQueues = o.numQueues;
    this.vectors = o.numQueues + 1;
    this.hooks = o.hooks;
    const v = sharedViews(o.shared, { numQueues: o.numQueues, vectors: this.vectors });
    this.words = v.words;
    this.cfgBytes = v.config;
    this.config = new PciConfiguration({
      vendorId: VIRTIO_PCI_VENDOR_ID, deviceId: VIRTIO_PCI_DEVICE_ID_BASE + o.deviceType, revisionId: 1,
      classCode: virtioClassCode(o.deviceType), subsystemVendorId: VIRTIO_PCI_VENDOR_ID, subsystemId: 0x40,
    });
    this.config.addMemoryBar(0, o.barAddr, BAR_SIZE, false);
    this.config.onBarMove = (index, from, to) => index !== 0 || this.hooks.barMoved(from, to);
    this.addVirtioCap(VIRTIO_PCI_CAP_COMMON_CFG, COMMON_CFG_OFFSET, COMMON_CFG_SIZE);
    this.addVirtioCap(VIRTIO_PCI_CAP_NOTIFY_CFG, NOTIFY_OFFSET, o.numQueues * NOTIFY_OFF_MULTIPLIER, NOTIFY_OFF_MULTIPLIER);
    this.addVirtioCap(VIRTIO_PCI_CAP_ISR_CFG, ISR_CFG_OFFSET, ISR_CFG_SIZE);
    this.addVirtioCap(VIRTIO_PCI_CAP_DEVICE_CFG, DEVICE_CFG_OFFSET, DEVICE_CFG_SIZE);
    this.msix = new Msix(this.vectors, { vectorChanged: (vec) => this.vectorChanged(vec) });
    const cap = this.msix.capability(0, MSIX_TABLE_OFFSET, 0, MSIX_PBA_OFFSET);
    this.msixCap = this.config.addCapability(cap.body, cap.writable);
  }

  // The selectors live in the shared words (device state captures them); only this thread writes them.
  private get deviceFeatureSelect(): number { return Atomics.load(this.words, Word.DeviceFeatureSelect) >>> 0; }
  private set deviceFeatureSelect(v: number) { Atomics.store(this.words, Word.DeviceFeatureSelect, v | 0); }
  private get driverFeatureSelect(): number { return Atomics.load(this.words, Word.DriverFeatureSelect) >>> 0; }
  private set driverFeatureSelect(v: number) { Atomics.store(this.words, Word.DriverFeatureSelect, v | 0); }
  private get queueSelect(): number { return Atomics.load(this.words, Word.QueueSelect); }
  private set queueSelect(v: number) { Atomics.store(this.words, Word.QueueSelect, v & 0xffff); }

  get barAddr(): number {
    return this.config.barInfo()[0]!.addr;
  }

  /** struct virtio_pci_cap (4.1.4): vndr, next, len, cfg_type, bar, id, pad[2], offset, length [, multiplier]. */
  private addVirtioCap(type: number, offset: number, length: number, multiplier?: number): void {
    const body = new Uint8Array(multiplier === undefined ? 16 : 20);
    const dv = new DataView(body.buffer);
    body[0] = PCI_CAP_ID_VNDR;
    body[2] = body.length;
    body[3] = type;
    body[4] = 0; // BAR 0
    dv.setUint32(8, offset, true);
    dv.setUint32(12, length, true);
    if (multiplier !== undefined) dv.setUint32(16, multiplier, true);
    this.config.addCapability(body);
  }

  // --- PCI configuration space --------------------------------------------------------------

  readConfig(offset: number, data: Uint8Array): void {
    this.config.read(offset, data);
  }

  writeConfig(offset: number, data: Uint8Array): void {
    this.config.write(offset, data);
    const ctl = this.msixCap + 2;
    if (offset <= ctl + 1 && offset + data.length > ctl) {
      const control = this.config.bytes[ctl]! | (this.config.bytes[ctl + 1]! << 8);
      this.msix.setControl(control);
      Atomics.store(this.words, Word.MsixControl, (this.msix.enabled ? 1 : 0) | (this.msix.functionMasked ? 2 : 0));
    }
  }

  // --- MSI-X ---------------------------------------------------------------------------------

  private vectorChanged(v: number): void {
    const w = vectorWord(this.numQueues, v);
    if (this.msix.masked(v)) {
      // A masked vector never fires (its interrupts go pending), so its route can wait until it
      // is unmasked: Linux rewrites a vector's three dwords while it is masked.
      Atomics.or(this.words, w, VECTOR_MASKED);
      return;
    }
    this.hooks.routeVector(v, this.msix.message(v));
    Atomics.and(this.words, w, ~VECTOR_MASKED);
    // Deliver what became pending while the vector was masked (6.8.2.9); the and-clear makes
    // sure only one of the transport and the worker sends it.
    if ((Atomics.and(this.words, w, ~VECTOR_PENDING) & VECTOR_PENDING) !== 0) this.hooks.fireVector(v);
  }

  // --- BAR 0 ---------------------------------------------------------------------------------

  read(offset: number, data: Uint8Array): void {
    if (offset < COMMON_CFG_OFFSET + COMMON_CFG_SIZE) { this.readCommon(offset, data); return; }
    if (offset >= ISR_CFG_OFFSET && offset < ISR_CFG_OFFSET + 4) { data.fill(0); return; } // MSI-X only: ISR stays 0
    if (offset >= DEVICE_CFG_OFFSET && offset < DEVICE_CFG_OFFSET + DEVICE_CFG_SIZE) {
      this.waitReady();
      const o = offset - DEVICE_CFG_OFFSET;
      for (let i = 0; i < data.length; i++) data[i] = o + i < CONFIG_BYTES ? this.cfgBytes[o + i]! : 0;
      return;
    }
    if (offset >= MSIX_TABLE_OFFSET && offset < MSIX_TABLE_OFFSET + this.msix.tableSize) { this.msix.readTable(offset - MSIX_TABLE_OFFSET, data); return; }
    if (offset >= MSIX_PBA_OFFSET && offset < MSIX_PBA_OFFSET + this.msix.pbaSize) {
      for (let v = 0; v < this.vectors; v++) this.msix.pending[v] = (Atomics.load(this.words, vectorWord(this.numQueues, v)) & VECTOR_PENDING) ? 1 : 0;
      this.msix.readPba(offset - MSIX_PBA_OFFSET, data);
      return;
    }
    data.fill(0);
  }

  write(offset: number, data: Uint8Array): void {
    if (offset < COMMON_CFG_OFFSET + COMMON_CFG_SIZE) { this.writeCommon(offset, data); return; }
    if (offset >= NOTIFY_OFFSET && offset < NOTIFY_OFFSET + this.numQueues * NOTIFY_OFF_MULTIPLIER) {
      this.hooks.notifyQueue(Math.floor((offset - NOTIFY_OFFSET) / NOTIFY_OFF_MULTIPLIER));
      return;
    }
    if (offset >= MSIX_TABLE_OFFSET && offset < MSIX_TABLE_OFFSET + this.msix.tableSize) { this.msix.writeTable(offset - MSIX_TABLE_OFFSET, data); return; }
    if (offset >= DEVICE_CFG_OFFSET && offset < DEVICE_CFG_OFFSET + DEVICE_CFG_SIZE && this.writeDeviceConfig(offset - DEVICE_CFG_OFFSET, data)) return;
    // Other device configuration writes (read-only fields) are ignored, as are writes to ISR and the PBA.
    this.badAccesses++;
  }

  /**
   * A driver write into the device configuration (4.1.4.6): kept in the shared bytes when it lies
   * inside the part the device lets the driver write (Word.ConfigWritable), and the worker told.
   */
  private writeDeviceConfig(o: number, data: Uint8Array): boolean {
    if (!this.waitReady()) return false;
    const w = Atomics.load(this.words, Word.ConfigWritable);
    const start = w & 0xffff;
    const len = w >>> 16;
    if (len === 0 || o < start || o + data.length > start + len) return false;
    this.cfgBytes.set(data, o);
    postCommand(this.words, Command.ConfigWrite);
    this.hooks.signalWorker();
    return true;
  }

  /** The worker publishes features and config once its device model exists (it starts with the VM). */
  private waitReady(): boolean {
    if (this.ready === 0) {
      for (let i = 0; i < 50 && Atomics.load(this.words, Word.Ready) === 0; i++) Atomics.wait(this.words, Word.Ready, 0, 100);
      this.ready = Atomics.load(this.words, Word.Ready) === 1 ? 1 : -1;
    }
    return this.ready === 1;
  }

  private deviceFeatures(): bigint {
    this.waitReady();
    const lo = BigInt(Atomics.load(this.words, Word.DeviceFeaturesLo) >>> 0);
    const hi = BigInt(Atomics.load(this.words, Word.DeviceFeaturesHi) >>> 0);
    return (hi << 32n) | lo | bit(VIRTIO_F_VERSION_1);
  }

  private status(): number {
    if (this.resetPending >= 0) {
      if (Atomics.load(this.words, Word.ResetAck) !== this.resetPending) return Atomics.load(this.words, Word.Status) || DeviceStatus.ACKNOWLEDGE;
      this.finishReset();
    }
    const s = Atomics.load(this.words, Word.Status);
    return Atomics.load(this.words, Word.NeedsReset) ? s | DeviceStatus.DEVICE_NEEDS_RESET : s;
  }

  private readCommon(offset: number, data: Uint8Array): void {
    const len = data.length;
    let v = 0;
    const q = this.queueSelect;
    const qok = q < this.numQueues;
    const qw = (w: number) => (qok ? Atomics.load(this.words, queueWord(q, w)) : 0);
    switch (offset) {
      case CC.deviceFeatureSelect: v = this.deviceFeatureSelect; break;
      case CC.deviceFeature: {
        const f = this.deviceFeatures();
        v = this.deviceFeatureSelect === 0 ? Number(f & 0xffffffffn) : this.deviceFeatureSelect === 1 ? Number(f >> 32n) : 0;
        break;
      }
      case CC.driverFeatureSelect: v = this.driverFeatureSelect; break;
      case CC.driverFeature:
        v = this.driverFeatureSelect === 0 ? Atomics.load(this.words, Word.DriverFeaturesLo) : this.driverFeatureSelect === 1 ? Atomics.load(this.words, Word.DriverFeaturesHi) : 0;
        break;
      case CC.configMsixVector: v = Atomics.load(this.words, Word.ConfigVector); break;
      case CC.numQueues: v = this.numQueues; break;
      case CC.deviceStatus: v = this.status(); break;
      case CC.configGeneration: v = Atomics.load(this.words, Word.ConfigGeneration) & 0xff; break;
      case CC.queueSelect: v = q; break;
      case CC.queueSize: v = qw(QueueWord.Size); break;
      case CC.queueMsixVector: v = qok ? qw(QueueWord.Vector) : VIRTIO_MSI_NO_VECTOR; break;
      case CC.queueEnable: v = qw(QueueWord.Enable); break;
      case CC.queueNotifyOff: v = qok ? q : 0; break;
      case CC.queueDesc: case CC.queueDesc + 4: case CC.queueDriver: case CC.queueDriver + 4: case CC.queueDevice: case CC.queueDevice + 4: {
        const base = offset & ~7;
        const w = base === CC.queueDesc ? QueueWord.DescLo : base === CC.queueDriver ? QueueWord.AvailLo : QueueWord.UsedLo;
        if (len === 8 && offset === base) {
          const lo = qw(w) >>> 0;
          const hi = qw(w + 1) >>> 0;
          const dv = new DataView(data.buffer, data.byteOffset, 8);
          dv.setUint32(0, lo, true);
          dv.setUint32(4, hi, true);
          return;
        }
        v = qw(offset === base ? w : w + 1) >>> 0;
        break;
      }
      default:
        this.badAccesses++;
        data.fill(0);
        return;
    }
    for (let i = 0; i < len; i++) data[i] = i < 4 ? (v >>> (8 * i)) & 0xff : 0;
  }

  private writeCommon(offset: number, data: Uint8Array): void {
    // Until the worker has acknowledged a reset, the device is still resetting: the driver must
    // first read device_status back as 0 (2.4), so other writes are ignored.
    if (this.resetPending >= 0) {
      this.status();
      if (this.resetPending >= 0) return;
    }
    let v = 0;
    for (let i = Math.min(data.length, 4) - 1; i >= 0; i--) v = (v * 256 + data[i]!) >>> 0;
    const q = this.queueSelect;
    const qok = q < this.numQueues;
    const status = Atomics.load(this.words, Word.Status);
    // Queue registers may only change before DRIVER_OK (4.1.4.3.2).
    const setQ = (w: number, value: number) => { if (qok && (status & DeviceStatus.DRIVER_OK) === 0) Atomics.store(this.words, queueWord(q, w), value | 0); };
    switch (offset) {
      case CC.deviceFeatureSelect: this.deviceFeatureSelect = v; break;
      case CC.driverFeatureSelect: this.driverFeatureSelect = v; break;
      case CC.driverFeature:
        if ((status & DeviceStatus.FEATURES_OK) !== 0) break;
        if (this.driverFeatureSelect === 0) Atomics.store(this.words, Word.DriverFeaturesLo, v | 0);
        else if (this.driverFeatureSelect === 1) Atomics.store(this.words, Word.DriverFeaturesHi, v | 0);
        break;
      case CC.configMsixVector:
        Atomics.store(this.words, Word.ConfigVector, v < this.vectors ? v : VIRTIO_MSI_NO_VECTOR);
        break;
      case CC.deviceStatus: this.writeStatus(v & 0xff); break;
      case CC.queueSelect: this.queueSelect = v & 0xffff; break;
      case CC.queueSize: {
        const max = Atomics.load(this.words, Word.QueueMax);
        // Sizes are powers of two up to the maximum (split rings, 2.7); anything else is ignored.
        if (v >= 1 && v <= max && (v & (v - 1)) === 0) setQ(QueueWord.Size, v);
        break;
      }
      case CC.queueMsixVector:
        if (qok) Atomics.store(this.words, queueWord(q, QueueWord.Vector), v < this.vectors ? v : VIRTIO_MSI_NO_VECTOR);
        break;
      case CC.queueEnable: if (v === 1) setQ(QueueWord.Enable, 1); break;
      case CC.queueDesc: case CC.queueDesc + 4: case CC.queueDriver: case CC.queueDriver + 4: case CC.queueDevice: case CC.queueDevice + 4: {
        const base = offset & ~7;
        const w = base === CC.queueDesc ? QueueWord.DescLo : base === CC.queueDriver ? QueueWord.AvailLo : QueueWord.UsedLo;
        if (data.length === 8 && offset === base) {
          const dv = new DataView(data.buffer, data.byteOffset, 8);
          setQ(w, dv.getUint32(0, true));
          setQ(w + 1, dv.getUint32(4, true));
        } else {
          setQ(offset === base ? w : w + 1, v);
        }
        break;
      }
      default: this.badAccesses++;
    }
  }

  private writeStatus(v: number): void {
    if (v === 0) { this.reset(); return; }
    const old = Atomics.load(this.words, Word.Status);
    // The driver only ever adds status bits until it resets the device (3.1.1); a write that
    // clears some is taken as adding the new ones, so DRIVER_OK cannot be replayed.
    let next = old | v;
    // FEATURES_OK only sticks when the driver accepted a subset of what we offer, with
    // VERSION_1 (modern only, 6.1) (3.1.1 step 5-6).
    if ((v & DeviceStatus.FEATURES_OK) !== 0 && (old & DeviceStatus.FEATURES_OK) === 0) {
      const drv = join64(Atomics.load(this.words, Word.DriverFeaturesLo), Atomics.load(this.words, Word.DriverFeaturesHi));
      const dev = this.deviceFeatures();
      if ((drv & ~dev) !== 0n || (drv & bit(VIRTIO_F_VERSION_1)) === 0n) next &= ~DeviceStatus.FEATURES_OK;
    }
    Atomics.store(this.words, Word.Status, next);
    if ((next & DeviceStatus.DRIVER_OK) !== 0 && (old & DeviceStatus.DRIVER_OK) === 0 && (next & DeviceStatus.FEATURES_OK) !== 0) {
      postCommand(this.words, Command.Activate);
      this.hooks.signalWorker();
    }
  }

  /**
   * Device reset (2.4). A device that was never set up resets at once; otherwise the worker is
   * asked to stop using the queues and device_status keeps reading non-zero until it has.
   */
  private reset(): void {
    if (this.resetPending >= 0) return;
    const wasUsed = Atomics.load(this.words, Word.Status) !== 0 && this.waitReady();
    if (!wasUsed) { this.finishReset(); return; }
    this.resetPending = postCommand(this.words, Command.Reset);
    this.hooks.signalWorker();
  }

  private finishReset(): void {
    this.resetPending = -1;
    clearTransportWords(this.words, this.numQueues, this.vectors);
  }
}
