// The userspace IOAPIC an MSHV partition needs (MSHV has a LAPIC in the hypervisor but no
// IOAPIC or PIC), in the way Cloud Hypervisor does it on MSHV: the guest programs the
// redirection table through MMIO at 0xFEC0_0000 (82093AA datasheet 3.0: IOREGSEL at +0x00,
// IOWIN at +0x10; IOAPICID 0x00, IOAPICVER 0x01, IOAPICARB 0x02, IOREDTBL[n] 0x10+2n), and
// every unmasked pin n becomes an MSI route for GSI n in the partition's MSI routing table
// (MSHV_SET_MSI_ROUTING), next to the VMM's own MSI routes. A device's irqfd on GSI n then
// raises the interrupt the guest programmed. setIrqLine(n) asserts it directly
// (HvCallAssertVirtualInterrupt); for a level-triggered pin Remote IRR is set until the guest's
// EOI (HVMSG_X64_APIC_EOI) for that vector.
//
// The state lives in a SharedArrayBuffer: the vCPU threads (MMIO, EOI) and the device thread
// (setIrqLine, routing) share it; a lock word serialises updates and table pushes.
// Not done: the i8259 PIC (ExtINT), resampling of level-triggered irqfds (needs the kernel's
// resamplefd on an MSI route, untested), IOAPIC polarity (active-low pins are treated as
// active-high, as every device here raises active-high lines).

import * as abi from './abi.js';
import { assertMsi, type HvCaller } from './hvcall.js';
import type { MshvSys } from './sys.js';

export const IOAPIC_ADDR = 0xfec00000;
export const IOAPIC_LEN = 0x1000;
export const IOAPIC_PINS = 24;
/** Most VMM MSI routes kept beside the IOAPIC's (MSI-X vectors of all devices). */
export const MAX_VMM_ROUTES = 2048;

const W = {
  Lock: 0,
  RegSel: 1,
  Id: 2,
  /** 24 x (low, high) */
  Rte: 3,
  /** Bitmap of pins whose line is high. */
  Level: 3 + IOAPIC_PINS * 2,
  RemoteIrr: 4 + IOAPIC_PINS * 2,
  RouteCount: 5 + IOAPIC_PINS * 2,
  /** MAX_VMM_ROUTES x (gsi, address_lo, address_hi, data) */
  Routes: 6 + IOAPIC_PINS * 2,
} as const;
const WORDS = W.Routes + MAX_VMM_ROUTES * 4;

const RTE_MASKED = 1 << 16;
const RTE_LEVEL = 1 << 15;
const RTE_REMOTE_IRR = 1 << 14;
const RTE_DELIVERY_STATUS = 1 << 12;

export function newIoapicState(): SharedArrayBuffer {
  const sab = new SharedArrayBuffer(WORDS * 4);
  const w = new Int32Array(sab);
  for (let p = 0; p < IOAPIC_PINS; p++) w[W.Rte + p * 2] = RTE_MASKED; // masked at reset (3.2.4)
  return sab;
}

export class UserspaceIoapic {
  private readonly w: Int32Array;
  private readonly tableBuf = new Uint8Array(abi.layout.mshv_user_irq_table.SIZE + (MAX_VMM_ROUTES + IOAPIC_PINS) * abi.layout.mshv_user_irq_entry.SIZE);
  private readonly tableDv = new DataView(this.tableBuf.buffer);

  constructor(readonly state: SharedArrayBuffer, private readonly sys: MshvSys, private readonly partitionFd: number, private readonly hv: HvCaller) {
    this.w = new Int32Array(state);
  }

  private lock(): void {
    while (Atomics.compareExchange(this.w, W.Lock, 0, 1) !== 0) Atomics.wait(this.w, W.Lock, 1, 1);
  }

  private unlock(): void {
    Atomics.store(this.w, W.Lock, 0);
    Atomics.notify(this.w, W.Lock, 1);
  }

  /** The VMM's MSI routes (Vm.setGsiRouting); pushes the combined table. */
  setVmmRoutes(routes: ReadonlyArray<{ gsi: number; addressLo: number; addressHi: number; data: number }>): void {
    if (routes.length > MAX_VMM_ROUTES) throw new RangeError(`MSHV: ${routes.length} MSI routes, at most ${MAX_VMM_ROUTES}`);
    this.lock();
    try {
      const w = this.w;
      routes.forEach((r, i) => {
        const o = W.Routes + i * 4;
        w[o] = r.gsi; w[o + 1] = r.addressLo | 0; w[o + 2] = r.addressHi | 0; w[o + 3] = r.data | 0;
      });
      w[W.RouteCount] = routes.length;
      this.push();
    } finally {
      this.unlock();
    }
  }

  /** MSI address/data of pin `p`'s redirection entry (SDM Vol. 3 11.11.1-2). */
  private msiOf(p: number): { addressLo: number; data: number } {
    const lo = this.w[W.Rte + p * 2]!;
    const hi = this.w[W.Rte + p * 2 + 1]!;
    const dest = (hi >>> 24) & 0xff;
    const logical = (lo >> 11) & 1;
    const addressLo = (0xfee00000 | (dest << 12) | (logical << 2)) >>> 0;
    const level = (lo & RTE_LEVEL) !== 0;
    const data = (lo & 0xff) | (((lo >> 8) & 7) << 8) | (level ? (1 << 15) | (1 << 14) : 0);
    return { addressLo, data };
  }

  /** MSHV_SET_MSI_ROUTING with the VMM's routes plus one per unmasked pin; under the lock. */
  private push(): void {
    const w = this.w;
    const E = abi.layout.mshv_user_irq_entry;
    const T = abi.layout.mshv_user_irq_table;
    const dv = this.tableDv;
    let n = 0;
    const put = (gsi: number, lo: number, hi: number, data: number): void => {
      const o = T.entries + n * E.SIZE;
      dv.setUint32(o + E.gsi, gsi, true);
      dv.setUint32(o + E.address_lo, lo >>> 0, true);
      dv.setUint32(o + E.address_hi, hi >>> 0, true);
      dv.setUint32(o + E.data, data >>> 0, true);
      n++;
    };
    const count = w[W.RouteCount]!;
    const taken = new Set<number>();
    for (let i = 0; i < count; i++) {
      const o = W.Routes + i * 4;
      put(w[o]!, w[o + 1]!, w[o + 2]!, w[o + 3]!);
      taken.add(w[o]!);
    }
    for (let p = 0; p < IOAPIC_PINS; p++) {
      if ((w[W.Rte + p * 2]! & RTE_MASKED) !== 0 || taken.has(p)) continue;
      const m = this.msiOf(p);
      put(p, m.addressLo, 0, m.data);
    }
    dv.setUint32(T.nr, n, true);
    dv.setUint32(T.rsvd, 0, true);
    this.sys.ioctl(this.partitionFd, abi.MSHV_SET_MSI_ROUTING, this.tableBuf.subarray(0, T.SIZE + n * E.SIZE), `MSHV_SET_MSI_ROUTING(${n} routes, IOAPIC)`);
  }

  mmioRead(offset: number, data: Uint8Array): void {
    let v = 0;
    if (offset === 0x00) v = Atomics.load(this.w, W.RegSel);
    else if (offset === 0x10) {
      const sel = Atomics.load(this.w, W.RegSel) & 0xff;
      if (sel === 0x00) v = Atomics.load(this.w, W.Id);
      else if (sel === 0x01) v = ((IOAPIC_PINS - 1) << 16) | 0x11; // IOAPICVER: max redirection entry, version 0x11
      else if (sel === 0x02) v = Atomics.load(this.w, W.Id);
      else if (sel >= 0x10 && sel < 0x10 + IOAPIC_PINS * 2) {
        v = Atomics.load(this.w, W.Rte + (sel - 0x10));
        const pin = (sel - 0x10) >> 1;
        if ((sel & 1) === 0 && ((Atomics.load(this.w, W.RemoteIrr) >>> pin) & 1) !== 0) v |= RTE_REMOTE_IRR;
      }
    }
    for (let i = 0; i < data.length; i++) data[i] = i < 4 ? (v >>> (i * 8)) & 0xff : 0;
  }

  mmioWrite(offset: number, data: Uint8Array): void {
    let v = 0;
    for (let i = Math.min(data.length, 4) - 1; i >= 0; i--) v = (v << 8) | data[i]!;
    if (offset === 0x00) { Atomics.store(this.w, W.RegSel, v & 0xff); return; }
    if (offset !== 0x10) return;
    const sel = Atomics.load(this.w, W.RegSel) & 0xff;
    if (sel === 0x00) { Atomics.store(this.w, W.Id, v & 0x0f000000); return; }
    if (sel < 0x10 || sel >= 0x10 + IOAPIC_PINS * 2) return;
    this.lock();
    try {
      const idx = W.Rte + (sel - 0x10);
      const keep = (sel & 1) === 0 ? this.w[idx]! & (RTE_REMOTE_IRR | RTE_DELIVERY_STATUS) : 0;
      const writable = (sel & 1) === 0 ? ~(RTE_REMOTE_IRR | RTE_DELIVERY_STATUS) : 0xff000000;
      this.w[idx] = (v & writable) | keep;
      this.push();
    } finally {
      this.unlock();
    }
    // A level-triggered line that is still high fires once unmasked.
    const pin = (sel - 0x10) >> 1;
    if (((Atomics.load(this.w, W.Level) >>> pin) & 1) !== 0) this.deliver(pin);
  }

  /** Drive pin `pin` (setIrqLine). Rising edges, and a high level without Remote IRR, deliver. */
  setIrq(pin: number, level: boolean): void {
    if (pin < 0 || pin >= IOAPIC_PINS) throw new RangeError(`IOAPIC pin ${pin} is not 0..${IOAPIC_PINS - 1}`);
    const bit = 1 << pin;
    const old = level ? Atomics.or(this.w, W.Level, bit) : Atomics.and(this.w, W.Level, ~bit);
    const lo = Atomics.load(this.w, W.Rte + pin * 2);
    if (!level) return;
    if ((lo & RTE_LEVEL) === 0 && (old & bit) !== 0) return; // edge: no new edge
    this.deliver(pin);
  }

  private deliver(pin: number): void {
    const lo = Atomics.load(this.w, W.Rte + pin * 2);
    if ((lo & RTE_MASKED) !== 0) return;
    if ((lo & RTE_LEVEL) !== 0) {
      if ((Atomics.or(this.w, W.RemoteIrr, 1 << pin) & (1 << pin)) !== 0) return; // not yet EOI'd
    }
    const m = this.msiOf(pin);
    assertMsi(this.hv, { addressLo: m.addressLo, addressHi: 0, data: m.data });
  }

  /** The guest's EOI for `vector` (HVMSG_X64_APIC_EOI): clear Remote IRR, refire if still high. */
  eoi(vector: number): void {
    for (let p = 0; p < IOAPIC_PINS; p++) {
      const lo = Atomics.load(this.w, W.Rte + p * 2);
      if ((lo & RTE_LEVEL) === 0 || (lo & 0xff) !== vector) continue;
      if ((Atomics.and(this.w, W.RemoteIrr, ~(1 << p)) & (1 << p)) === 0) continue;
      if (((Atomics.load(this.w, W.Level) >>> p) & 1) !== 0) this.deliver(p);
    }
  }

  /** Redirection entry of `pin` (low, high) for tests and logging. */
  rte(pin: number): [number, number] {
    return [this.w[W.Rte + pin * 2]! >>> 0, this.w[W.Rte + pin * 2 + 1]! >>> 0];
  }
}
