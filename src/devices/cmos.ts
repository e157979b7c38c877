// CMOS RAM and RTC (Motorola MC146818A compatible) at ports 0x70 (index) / 0x71 (data).
//
// Register the device at base 0x70 with length 2: offset 0 is the index
// register (bit 7 = NMI disable, bits 0-6 = CMOS address), offset 1 the data.
//
// - Time registers 0x00/0x02/0x04/0x06/0x07/0x08/0x09 and century 0x32 come from
//   the host clock (UTC) plus an offset the guest can change by writing them.
//   Status B selects BCD/binary (DM, bit 2) and 12/24 hour (bit 1) encoding.
// - Status A reads with UIP (bit 7) clear: the time is read atomically from the
//   host clock, so there is never an update in progress.
// - Status C reads 0 (no periodic/alarm/update interrupts are generated);
//   Status D reads VRT (bit 7) set: the battery is good.
// - Memory size bytes follow the PC BIOS convention (as read by SeaBIOS and
//   firmware): 0x15/0x16 base memory (640 KiB), 0x17/0x18 and 0x30/0x31
//   extended memory above 1 MiB in KiB (max 0xffff), 0x34/0x35 memory between
//   16 MiB and 4 GiB in 64 KiB units, 0x5b-0x5d memory above 4 GiB in 64 KiB units.
// - Everything else is 128 bytes of plain read/write storage.
//
// Threading: see bus.ts; one caller at a time.

import type { BusDevice } from './bus.js';
import { StateCheck, hex8 } from './state.js';

export const CMOS_BASE = 0x70;
export const CMOS_LENGTH = 2;
export const CMOS_SIZE = 128;

export const RTC_SECONDS = 0x00;
export const RTC_SECONDS_ALARM = 0x01;
export const RTC_MINUTES = 0x02;
export const RTC_MINUTES_ALARM = 0x03;
export const RTC_HOURS = 0x04;
export const RTC_HOURS_ALARM = 0x05;
export const RTC_DAY_OF_WEEK = 0x06;
export const RTC_DAY_OF_MONTH = 0x07;
export const RTC_MONTH = 0x08;
export const RTC_YEAR = 0x09;
export const RTC_REG_A = 0x0a;
export const RTC_REG_B = 0x0b;
export const RTC_REG_C = 0x0c;
export const RTC_REG_D = 0x0d;
export const RTC_CENTURY = 0x32;

export const REG_A_UIP = 0x80;
export const REG_B_SET = 0x80;
export const REG_B_24H = 0x02;
export const REG_B_DM_BINARY = 0x04;
export const REG_D_VRT = 0x80;

export const CMOS_BASE_MEM_LO = 0x15;
export const CMOS_BASE_MEM_HI = 0x16;
export const CMOS_EXT_MEM_LO = 0x17;
export const CMOS_EXT_MEM_HI = 0x18;
export const CMOS_EXT_MEM2_LO = 0x30;
export const CMOS_EXT_MEM2_HI = 0x31;
export const CMOS_MEM_ABOVE_16M_LO = 0x34;
export const CMOS_MEM_ABOVE_16M_HI = 0x35;
export const CMOS_MEM_ABOVE_4G_LO = 0x5b;
export const CMOS_MEM_ABOVE_4G_MID = 0x5c;
export const CMOS_MEM_ABOVE_4G_HI = 0x5d;

const MIB = 1024 * 1024;
const GIB = 1024 * MIB;

/** Registers that are not storage: the clock (read from the host clock plus the guest's offset) and Status C/D. */
const CLOCK_REGISTERS: readonly number[] = [
  RTC_SECONDS, RTC_MINUTES, RTC_HOURS, RTC_DAY_OF_WEEK, RTC_DAY_OF_MONTH, RTC_MONTH, RTC_YEAR, RTC_CENTURY, RTC_REG_C, RTC_REG_D,
];
/** The years the clock registers can hold (century and year 00..99 each): 0000-01-01 .. 9999-12-31. */
export const RTC_TIME_MIN_MS = -62167219200000;
export const RTC_TIME_MAX_MS = 253402300799999;

/**
 * What the guest can observe of the CMOS/RTC, as plain data (file form: state_json.ts). The clock
 * is saved as the time the guest's RTC showed at the save; a restore sets it running from there
 * (as the hypervisor restores kvmclock, src/hypervisor: guest time goes on from the saved value,
 * so the guest's two clocks keep the distance they had), not from the host's time at restore.
 */
export interface CmosState {
  /** Index register: the CMOS address (bits 0-6) the next data access uses. */
  index: number;
  /** NMI disable (bit 7 of the last index write). */
  nmiDisabled: boolean;
  /**
   * The 128 bytes of CMOS RAM as stored. The clock registers (0x00, 0x02, 0x04, 0x06-0x09, 0x32)
   * and Status C/D (0x0c, 0x0d) are not storage and are 0 here; Status A without UIP.
   */
  nvram: Uint8Array;
  /** The guest's RTC (UTC) at the save, in ms since the epoch. */
  rtcTimeMs: number;
}

export interface CmosOptions {
  /** Guest RAM below 4 GiB in bytes (counted from address 0). */
  memBelow4g: number;
  /** Guest RAM above 4 GiB in bytes. */
  memAbove4g?: number;
  /** Host clock in milliseconds since the epoch (default Date.now). */
  now?: () => number;
}

export class Cmos implements BusDevice {
  private readonly data = new Uint8Array(CMOS_SIZE);
  private index = 0;
  private readonly now: () => number;
  /** Guest time minus host time, in ms (changed by guest writes to time registers). */
  private offsetMs = 0;

  /** NMI disable bit (bit 7 of the last index write). */
  nmiDisabled = false;
  badAccesses = 0;

  constructor(options: CmosOptions) {
    const below = options.memBelow4g;
    const above = options.memAbove4g ?? 0;
    if (!Number.isSafeInteger(below) || below < 0 || below > 4 * GIB) {
      throw new RangeError(`cmos: memBelow4g must be 0..4 GiB, got ${String(below)}`);
    }
    if (!Number.isSafeInteger(above) || above < 0) {
      throw new RangeError(`cmos: memAbove4g must be a non-negative integer, got ${String(above)}`);
    }
    this.now = options.now ?? Date.now;
    const d = this.data;
    d[RTC_REG_A] = 0x26; // 32.768 kHz time base, 1024 Hz periodic rate
    d[RTC_REG_B] = REG_B_24H; // BCD, 24 hour
    // Base memory: 640 KiB.
    d[CMOS_BASE_MEM_LO] = 640 & 0xff;
    d[CMOS_BASE_MEM_HI] = 640 >> 8;
    const extKiB = Math.min(Math.max(0, Math.floor((below - MIB) / 1024)), 0xffff);
    d[CMOS_EXT_MEM_LO] = d[CMOS_EXT_MEM2_LO] = extKiB & 0xff;
    d[CMOS_EXT_MEM_HI] = d[CMOS_EXT_MEM2_HI] = extKiB >> 8;
    const above16m = Math.min(Math.max(0, Math.floor((below - 16 * MIB) / 0x10000)), 0xffff);
    d[CMOS_MEM_ABOVE_16M_LO] = above16m & 0xff;
    d[CMOS_MEM_ABOVE_16M_HI] = above16m >> 8;
    const high = Math.min(Math.floor(above / 0x10000), 0xffffff);
    d[CMOS_MEM_ABOVE_4G_LO] = high & 0xff;
    d[CMOS_MEM_ABOVE_4G_MID] = (high >> 8) & 0xff;
    d[CMOS_MEM_ABOVE_4G_HI] = (high >> 16) & 0xff;
  }

  read(offset: number, data: Uint8Array): void {
    if (data.length !== 1 || offset > 1) {
      this.badAccesses++;
      data.fill(0xff);
      return;
    }
    // The index port is write-only.
    data[0] = offset === 0 ? 0xff : this.readRegister(this.index);
  }

  write(offset: number, data: Uint8Array): void {
    if (data.length !== 1 || offset > 1) {
      this.badAccesses++;
      return;
    }
    const v = data[0]!;
    if (offset === 0) {
      this.index = v & 0x7f;
      this.nmiDisabled = (v & 0x80) !== 0;
    } else {
      this.writeRegister(this.index, v);
    }
  }

  /** Read CMOS register `reg` (0..127). */
  readRegister(reg: number): number {
    const b = this.data[RTC_REG_B]!;
    switch (reg) {
      case RTC_SECONDS:
      case RTC_MINUTES:
      case RTC_HOURS:
      case RTC_DAY_OF_WEEK:
      case RTC_DAY_OF_MONTH:
      case RTC_MONTH:
      case RTC_YEAR:
      case RTC_CENTURY: {
        const t = new Date(this.now() + this.offsetMs);
        let v: number;
        switch (reg) {
          case RTC_SECONDS:
            v = t.getUTCSeconds();
            break;
          case RTC_MINUTES:
            v = t.getUTCMinutes();
            break;
          case RTC_HOURS:
            return encodeHour(t.getUTCHours(), b);
          case RTC_DAY_OF_WEEK:
            v = t.getUTCDay() + 1; // 1 = Sunday
            break;
          case RTC_DAY_OF_MONTH:
            v = t.getUTCDate();
            break;
          case RTC_MONTH:
            v = t.getUTCMonth() + 1;
            break;
          case RTC_YEAR:
            v = t.getUTCFullYear() % 100;
            break;
          default:
            v = Math.floor(t.getUTCFullYear() / 100) % 100;
            break;
        }
        return encode(v, b);
      }
      case RTC_REG_A:
        return this.data[RTC_REG_A]! & ~REG_A_UIP;
      case RTC_REG_C:
        return 0; // no interrupt flags; reading clears them
      case RTC_REG_D:
        return REG_D_VRT;
      default:
        return this.data[reg & 0x7f]!;
    }
  }

  /** Write CMOS register `reg` (0..127). */
  writeRegister(reg: number, value: number): void {
    const v = value & 0xff;
    const b = this.data[RTC_REG_B]!;
    switch (reg) {
      case RTC_SECONDS:
      case RTC_MINUTES:
      case RTC_HOURS:
      case RTC_DAY_OF_MONTH:
      case RTC_MONTH:
      case RTC_YEAR:
      case RTC_CENTURY:
        this.setTimeField(reg, v, b);
        return;
      case RTC_DAY_OF_WEEK:
        return; // derived from the date
      case RTC_REG_A:
        this.data[RTC_REG_A] = v & ~REG_A_UIP;
        return;
      case RTC_REG_C:
      case RTC_REG_D:
        return; // read-only
      default:
        this.data[reg & 0x7f] = v;
        return;
    }
  }

  saveState(): CmosState {
    return { index: this.index, nmiDisabled: this.nmiDisabled, nvram: this.data.slice(), rtcTimeMs: Math.floor(this.now() + this.offsetMs) };
  }

  /** Take over a saved state (checked first: a StateFormatError names what does not fit). The RTC runs on from `rtcTimeMs`. */
  restoreState(s: CmosState): void {
    const c = new StateCheck('CMOS state');
    c.object('', s);
    c.uint('index', s.index, 0x7f);
    c.bool('nmiDisabled', s.nmiDisabled);
    const nvram = c.bytes('nvram', s.nvram, CMOS_SIZE, CMOS_SIZE);
    for (const r of CLOCK_REGISTERS) {
      if (nvram[r] !== 0) c.fail(`nvram[${hex8(r)}]`, `register ${hex8(r)} is not storage (it reads from the clock or is read-only) and must be 0, got ${hex8(nvram[r]!)}`);
    }
    if ((nvram[RTC_REG_A]! & REG_A_UIP) !== 0) c.fail(`nvram[${hex8(RTC_REG_A)}]`, 'Status A is kept without UIP (bit 7)');
    const t = s.rtcTimeMs;
    if (typeof t !== 'number' || !Number.isInteger(t) || t < RTC_TIME_MIN_MS || t > RTC_TIME_MAX_MS) {
      c.fail('rtcTimeMs', `expected an integer ${RTC_TIME_MIN_MS}..${RTC_TIME_MAX_MS} (years 0000..9999), got ${String(t)}`);
    }
    this.index = s.index;
    this.nmiDisabled = s.nmiDisabled;
    this.data.set(nvram);
    this.offsetMs = t - this.now();
  }

  private setTimeField(reg: number, v: number, b: number): void {
    const host = this.now();
    const t = new Date(host + this.offsetMs);
    let field: number;
    if (reg === RTC_HOURS) {
      const h = decodeHour(v, b);
      if (h < 0) return;
      field = h;
    } else {
      field = decode(v, b);
      if (field < 0) return;
    }
    let year = t.getUTCFullYear();
    let month = t.getUTCMonth();
    let day = t.getUTCDate();
    let hour = t.getUTCHours();
    let minute = t.getUTCMinutes();
    let second = t.getUTCSeconds();
    switch (reg) {
      case RTC_SECONDS:
        if (field > 59) return;
        second = field;
        break;
      case RTC_MINUTES:
        if (field > 59) return;
        minute = field;
        break;
      case RTC_HOURS:
        hour = field;
        break;
      case RTC_DAY_OF_MONTH:
        if (field < 1 || field > 31) return;
        day = field;
        break;
      case RTC_MONTH:
        if (field < 1 || field > 12) return;
        month = field - 1;
        break;
      case RTC_YEAR:
        if (field > 99) return;
        year = Math.floor(year / 100) * 100 + field;
        break;
      default: // century
        if (field > 99) return;
        year = field * 100 + (year % 100);
        break;
    }
    // Clamp the day to the month's length (guests set fields one at a time).
    const monthDays = new Date(Date.UTC(year, month + 1, 0)).getUTCDate();
    if (day > monthDays) day = monthDays;
    const guest = Date.UTC(year, month, day, hour, minute, second, t.getUTCMilliseconds());
    this.offsetMs = guest - host;
  }
}

function toBcd(v: number): number {
  return ((Math.floor(v / 10) % 10) << 4) | v % 10;
}

/** Encode a value per Status B DM bit. */
function encode(v: number, b: number): number {
  return b & REG_B_DM_BINARY ? v : toBcd(v);
}

/** Decode a value per Status B DM bit; -1 if not valid BCD. */
function decode(v: number, b: number): number {
  if (b & REG_B_DM_BINARY) return v;
  const hi = v >> 4;
  const lo = v & 0x0f;
  if (hi > 9 || lo > 9) return -1;
  return hi * 10 + lo;
}

/** Hours: 24h, or 12h (1-12) with bit 7 = PM. */
function encodeHour(h24: number, b: number): number {
  if (b & REG_B_24H) return encode(h24, b);
  const pm = h24 >= 12;
  const h12 = h24 % 12 === 0 ? 12 : h24 % 12;
  return encode(h12, b) | (pm ? 0x80 : 0);
}

/** Inverse of encodeHour; -1 if invalid. */
function decodeHour(v: number, b: number): number {
  if (b & REG_B_24H) {
    const h = decode(v, b);
    return h >= 0 && h < 24 ? h : -1;
  }
  const pm = (v & 0x80) !== 0;
  const h12 = decode(v & 0x7f, b);
  if (h12 < 1 || h12 > 12) return -1;
  return (h12 % 12) + (pm ? 12 : 0);
}
