// ACPI memory hotplug controller (the scheme of Cloud Hypervisor's x86 memory manager and QEMU's
// "memory hotplug" block, our own layout): the DSDT describes MEMORY_HOTPLUG_SLOTS memory devices
// (PNP0C80, \_SB_.M000 ..) whose _STA and _CRS, and the scan method MSCN of \_SB_.MHPC
// (src/arch/x86_64/acpi.ts memoryHotplugAml), use this register block:
//
//   0x00 MSEL  32-bit, read/write: the slot the registers below are about
//   0x04 status byte of the selected slot
//          read:  bit 0 MEN_  enabled (the VMM plugged memory into it; _STA says present + enabled)
//                 bit 1 MINS  an insert the guest has not been told about yet
//          write: bit 1 = 1   clears MINS (MSCN sent Notify(Mxxx, 1))
//                 bit 3 = 1   MEJ0, an eject: refused (counted), memory is not removed this way
//   0x08 MBAS  64-bit (two dwords), read-only: guest-physical base of the selected slot's memory
//   0x10 MEND  64-bit, read-only: its last byte (base + length - 1), for _CRS's _MAX
//   0x18 MLEN  64-bit, read-only: its length
//   0x20 MINB  32-bit, read-only: bit k set while slot k has MINS (one read tells MSCN which
//              slots to notify, instead of two MMIO exits per slot)
//   0x24 MENB  32-bit, read-only: bit k set while slot k is enabled (each device's _STA reads it)
//   A slot that is not enabled, or a selector past the last slot, reads 0 in 0x04..0x1f.
//
// The VMM plugs a range (plug) and raises the GED's memory hotplug event (GED_MEMORY_HOTPLUG);
// _EVT calls MSCN, which walks the slots. ACPI 6.x 9.13 (memory devices), 5.6.6 (device object
// notifications). Memory is only added (as Cloud Hypervisor's ACPI method): vm.resize below the
// current size answers an error before anything reaches here.
//
// Threading: see bus.ts; one caller at a time (the device thread).

import type { BusDevice } from './bus.js';
import { StateCheck } from './state.js';

/** Memory devices the DSDT describes: the most ranges a VM can be given through ACPI (at most 32: one bitmap dword). */
export const MEMORY_HOTPLUG_SLOTS = 32;
/** Bytes of the register block. */
export const MEMORY_HOTPLUG_BLOCK_SIZE = 0x28;
export const MEM_SELECT_OFFSET = 0x00;
export const MEM_STATUS_OFFSET = 0x04;
export const MEM_BASE_OFFSET = 0x08;
export const MEM_END_OFFSET = 0x10;
export const MEM_LENGTH_OFFSET = 0x18;
export const MEM_INSERTING_BITMAP_OFFSET = 0x20;
export const MEM_ENABLED_BITMAP_OFFSET = 0x24;
/** Status register bits. */
export const MEM_STATUS_ENABLED = 0x01;
export const MEM_STATUS_INSERTING = 0x02;
export const MEM_STATUS_EJECT = 0x08;

/** A plugged range. */
export interface MemorySlot {
  gpa: number;
  size: number;
}

/** Saved state: the selector, and per slot its range (null: empty) and whether the guest was told. */
export interface MemoryHotplugState {
  selected: number;
  slots: Array<{ gpa: number; size: number; inserting: boolean } | null>;
}

export class MemoryHotplugController implements BusDevice {
  private readonly slots: Array<(MemorySlot & { inserting: boolean }) | null> = new Array<null>(MEMORY_HOTPLUG_SLOTS).fill(null);
  private selected = 0;
  /** Accesses that were not a register access of its width (read as 0 / ignored). */
  badAccesses = 0;
  /** Ejects the guest asked for (MEJ0): refused, the memory stays. */
  refusedEjects = 0;

  /**
   * @param area the hotplug area [gpa, gpa + size): every plugged range lies inside it
   * @param boot ranges plugged at boot (a reboot's or a cold-plugged hotplugged_size): enabled,
   *   and not announced (the guest finds them in its boot-time ACPI scan)
   */
  constructor(readonly area: MemorySlot, boot: readonly MemorySlot[] = []) {
    for (const r of boot) this.plug(r.gpa, r.size, false);
  }

  /** Ranges plugged so far, in slot order. */
  plugged(): MemorySlot[] {
    return this.slots.filter((s): s is MemorySlot & { inserting: boolean } => s !== null).map((s) => ({ gpa: s.gpa, size: s.size }));
  }

  /** Bytes plugged so far. */
  pluggedBytes(): number {
    return this.slots.reduce((n, s) => n + (s?.size ?? 0), 0);
  }

  /**
   * Plug [gpa, gpa + size) into the first free slot (a 4 KiB multiple inside the area, overlapping
   * no plugged range); the guest is told at its next MSCN when `announce`. Returns the slot.
   */
  plug(gpa: number, size: number, announce = true): number {
    const a = this.area;
    if (!Number.isSafeInteger(gpa) || !Number.isSafeInteger(size) || size <= 0 || gpa % 4096 !== 0 || size % 4096 !== 0) {
      throw new RangeError(`memory hotplug: range 0x${gpa.toString(16)}+0x${size.toString(16)} is not whole 4 KiB pages`);
    }
    if (gpa < a.gpa || gpa + size > a.gpa + a.size) {
      throw new RangeError(`memory hotplug: range [0x${gpa.toString(16)}, 0x${(gpa + size).toString(16)}) is outside the hotplug area [0x${a.gpa.toString(16)}, 0x${(a.gpa + a.size).toString(16)})`);
    }
    if (this.slots.some((s) => s !== null && gpa < s.gpa + s.size && s.gpa < gpa + size)) {
      throw new RangeError(`memory hotplug: range at 0x${gpa.toString(16)} overlaps a plugged one`);
    }
    const slot = this.slots.indexOf(null);
    if (slot < 0) throw new RangeError(`memory hotplug: all ${MEMORY_HOTPLUG_SLOTS} memory slots are in use`);
    this.slots[slot] = { gpa, size, inserting: announce };
    return slot;
  }

  /** The status bits of `slot`, for tests and logs. */
  statusOf(slot: number): number {
    const s = this.slots[slot];
    return s ? MEM_STATUS_ENABLED | (s.inserting ? MEM_STATUS_INSERTING : 0) : 0;
  }

  saveState(): MemoryHotplugState {
    return { selected: this.selected, slots: this.slots.map((s) => (s ? { ...s } : null)) };
  }

  restoreState(st: MemoryHotplugState): void {
    const c = new StateCheck('memory hotplug state');
    c.object('', st);
    const selected = c.uint('selected', st.selected, 0xffffffff);
    if (!Array.isArray(st.slots)) c.fail('slots', 'must be an array');
    if (st.slots.length !== MEMORY_HOTPLUG_SLOTS) c.fail('slots', `has ${st.slots.length} slots, this VMM ${MEMORY_HOTPLUG_SLOTS}`);
    const check = new MemoryHotplugController(this.area);
    const slots = st.slots.map((s, i) => {
      if (s === null) return null;
      c.object(`slots[${i}]`, s);
      const inserting = c.bool(`slots[${i}].inserting`, s.inserting);
      try {
        check.plug(s.gpa, s.size);
      } catch (e) {
        c.fail(`slots[${i}]`, (e as Error).message);
      }
      return { gpa: s.gpa, size: s.size, inserting };
    });
    this.selected = selected;
    for (let i = 0; i < MEMORY_HOTPLUG_SLOTS; i++) this.slots[i] = slots[i] ?? null;
  }

  read(offset: number, data: Uint8Array): void {
    data.fill(0);
    const dv = new DataView(data.buffer, data.byteOffset, data.length);
    if (offset === MEM_SELECT_OFFSET && data.length === 4) {
      dv.setUint32(0, this.selected, true);
      return;
    }
    if (offset === MEM_STATUS_OFFSET && data.length === 1) {
      data[0] = this.selected < MEMORY_HOTPLUG_SLOTS ? this.statusOf(this.selected) : 0;
      return;
    }
    if ((offset === MEM_INSERTING_BITMAP_OFFSET || offset === MEM_ENABLED_BITMAP_OFFSET) && data.length === 4) {
      let bits = 0;
      this.slots.forEach((s, k) => { if (s !== null && (offset === MEM_ENABLED_BITMAP_OFFSET || s.inserting)) bits |= 1 << k; });
      dv.setUint32(0, bits >>> 0, true);
      return;
    }
    // The 64-bit registers, a dword at a time (the DSDT's fields are DWordAcc) or whole.
    if (offset >= MEM_BASE_OFFSET && offset < MEM_INSERTING_BITMAP_OFFSET && offset % 4 === 0 && (data.length === 4 || (data.length === 8 && offset % 8 === 0))) {
      const s = this.selected < MEMORY_HOTPLUG_SLOTS ? this.slots[this.selected] : null;
      if (!s) return;
      const reg = offset & ~7;
      const v = reg === MEM_BASE_OFFSET ? s.gpa : reg === MEM_END_OFFSET ? s.gpa + s.size - 1 : s.size;
      const lo = v % 2 ** 32;
      const hi = Math.floor(v / 2 ** 32);
      if (data.length === 8) {
        dv.setUint32(0, lo, true);
        dv.setUint32(4, hi, true);
      } else {
        dv.setUint32(0, offset % 8 === 0 ? lo : hi, true);
      }
      return;
    }
    this.badAccesses++;
  }

  write(offset: number, data: Uint8Array): void {
    if (offset === MEM_SELECT_OFFSET && data.length === 4) {
      this.selected = new DataView(data.buffer, data.byteOffset, 4).getUint32(0, true);
      return;
    }
    if (offset !== MEM_STATUS_OFFSET || data.length !== 1) { this.badAccesses++; return; }
    const s = this.selected < MEMORY_HOTPLUG_SLOTS ? this.slots[this.selected] : null;
    if (!s) { this.badAccesses++; return; }
    const v = data[0]!;
    if ((v & MEM_STATUS_INSERTING) !== 0) s.inserting = false;
    if ((v & MEM_STATUS_EJECT) !== 0) this.refusedEjects++;
  }
}
