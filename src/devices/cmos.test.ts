import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createPioBus } from './bus.js';
import {
  CMOS_BASE,
  CMOS_LENGTH,
  Cmos,
  REG_A_UIP,
  REG_B_24H,
  REG_B_DM_BINARY,
  REG_D_VRT,
  RTC_CENTURY,
  RTC_DAY_OF_MONTH,
  RTC_DAY_OF_WEEK,
  RTC_HOURS,
  RTC_MINUTES,
  RTC_MONTH,
  RTC_REG_A,
  RTC_REG_B,
  RTC_REG_C,
  RTC_REG_D,
  RTC_SECONDS,
  RTC_YEAR,
} from './cmos.js';

const MIB = 1024 * 1024;
const GIB = 1024 * MIB;
// Tuesday 2026-03-17 21:45:09 UTC
const T0 = Date.UTC(2026, 2, 17, 21, 45, 9);

function setup(memBelow4g = 512 * MIB, memAbove4g = 0, clock = { t: T0 }) {
  const cmos = new Cmos({ memBelow4g, memAbove4g, now: () => clock.t });
  const bus = createPioBus();
  bus.insert(cmos, CMOS_BASE, CMOS_LENGTH);
  const b = new Uint8Array(1);
  const rd = (reg: number, nmiOff = false): number => {
    b[0] = reg | (nmiOff ? 0x80 : 0);
    bus.write(0x70, b);
    bus.read(0x71, b);
    return b[0]!;
  };
  const wr = (reg: number, v: number): void => {
    b[0] = reg;
    bus.write(0x70, b);
    b[0] = v;
    bus.write(0x71, b);
  };
  return { cmos, rd, wr, clock };
}

test('RTC reads the host clock in BCD 24h by default', () => {
  const { rd } = setup();
  assert.equal(rd(RTC_REG_A) & REG_A_UIP, 0);
  assert.equal(rd(RTC_REG_B), REG_B_24H);
  assert.equal(rd(RTC_REG_D), REG_D_VRT);
  assert.equal(rd(RTC_REG_C), 0);
  assert.equal(rd(RTC_SECONDS), 0x09);
  assert.equal(rd(RTC_MINUTES), 0x45);
  assert.equal(rd(RTC_HOURS), 0x21);
  assert.equal(rd(RTC_DAY_OF_WEEK), 3); // Tuesday, Sunday = 1
  assert.equal(rd(RTC_DAY_OF_MONTH), 0x17);
  assert.equal(rd(RTC_MONTH), 0x03);
  assert.equal(rd(RTC_YEAR), 0x26);
  assert.equal(rd(RTC_CENTURY), 0x20);
});

test('binary and 12-hour modes per Status B', () => {
  const { rd, wr } = setup();
  wr(RTC_REG_B, REG_B_24H | REG_B_DM_BINARY);
  assert.equal(rd(RTC_HOURS), 21);
  assert.equal(rd(RTC_YEAR), 26);
  assert.equal(rd(RTC_CENTURY), 20);
  wr(RTC_REG_B, REG_B_DM_BINARY); // 12h binary
  assert.equal(rd(RTC_HOURS), 0x80 | 9);
  wr(RTC_REG_B, 0); // 12h BCD
  assert.equal(rd(RTC_HOURS), 0x80 | 0x09);
  const midnight = setup(512 * MIB, 0, { t: Date.UTC(2026, 0, 1, 0, 5, 0) });
  midnight.wr(RTC_REG_B, 0);
  assert.equal(midnight.rd(RTC_HOURS), 0x12, '00:xx is 12 AM');
  const noon = setup(512 * MIB, 0, { t: Date.UTC(2026, 0, 1, 12, 5, 0) });
  noon.wr(RTC_REG_B, 0);
  assert.equal(noon.rd(RTC_HOURS), 0x80 | 0x12, '12:xx is 12 PM');
});

test('guest time writes move the clock by an offset and keep ticking', () => {
  const clock = { t: T0 };
  const { rd, wr } = setup(512 * MIB, 0, clock);
  wr(RTC_REG_B, REG_B_24H | 0x80); // SET while updating, like hwclock
  wr(RTC_YEAR, 0x30);
  wr(RTC_MONTH, 0x12);
  wr(RTC_DAY_OF_MONTH, 0x31);
  wr(RTC_HOURS, 0x23);
  wr(RTC_MINUTES, 0x59);
  wr(RTC_SECONDS, 0x58);
  wr(RTC_REG_B, REG_B_24H);
  assert.equal(rd(RTC_YEAR), 0x30);
  assert.equal(rd(RTC_SECONDS), 0x58);
  clock.t += 3000;
  assert.equal(rd(RTC_SECONDS), 0x01);
  assert.equal(rd(RTC_YEAR), 0x31);
  assert.equal(rd(RTC_MONTH), 0x01);
  assert.equal(rd(RTC_DAY_OF_MONTH), 0x01);
  // Invalid BCD is ignored.
  wr(RTC_MINUTES, 0x7a);
  assert.equal(rd(RTC_MINUTES), 0x00);
  // UIP cannot be set; Status C/D are read-only.
  wr(RTC_REG_A, 0xa6);
  assert.equal(rd(RTC_REG_A), 0x26);
  wr(RTC_REG_D, 0);
  assert.equal(rd(RTC_REG_D), REG_D_VRT);
});

test('memory size bytes', () => {
  const { rd } = setup(3 * GIB, 5 * GIB);
  assert.equal(rd(0x15) | (rd(0x16) << 8), 640);
  assert.equal(rd(0x17) | (rd(0x18) << 8), 0xffff);
  assert.equal(rd(0x30) | (rd(0x31) << 8), 0xffff);
  assert.equal((rd(0x34) | (rd(0x35) << 8)) * 0x10000, 3 * GIB - 16 * MIB);
  assert.equal((rd(0x5b) | (rd(0x5c) << 8) | (rd(0x5d) << 16)) * 0x10000, 5 * GIB);
  const small = setup(32 * MIB);
  assert.equal(small.rd(0x17) | (small.rd(0x18) << 8), 31 * 1024);
  assert.equal((small.rd(0x34) | (small.rd(0x35) << 8)) * 0x10000, 16 * MIB);
  assert.equal(small.rd(0x5b) | small.rd(0x5c) | small.rd(0x5d), 0);
  assert.throws(() => new Cmos({ memBelow4g: 5 * GIB }), /memBelow4g/);
  assert.throws(() => new Cmos({ memBelow4g: MIB, memAbove4g: -1 }), /memAbove4g/);
});

test('general registers are writable; NMI bit is tracked; index port is write-only', () => {
  const { cmos, rd, wr } = setup();
  wr(0x40, 0xab);
  wr(0x7f, 0xcd);
  assert.equal(rd(0x40), 0xab);
  assert.equal(rd(0x7f, true), 0xcd);
  assert.equal(cmos.nmiDisabled, true);
  rd(0x40);
  assert.equal(cmos.nmiDisabled, false);
  const b = new Uint8Array(1);
  cmos.read(0, b);
  assert.equal(b[0], 0xff);
  cmos.read(1, new Uint8Array(2));
  assert.equal(cmos.badAccesses, 1);
});
