// Drives the controller like Linux's drivers/input/serio/i8042.c probe and atkbd.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createPioBus } from './bus.js';
import { CountingInterrupt } from './interrupt.js';
import {
  AUX_TEST_NO_PORT,
  CMD_AUX_LOOP,
  CMD_AUX_TEST,
  CMD_READ_CTR,
  CMD_READ_OUTP,
  CMD_RESET_CPU,
  CMD_SELF_TEST,
  CMD_WRITE_CTR,
  CMD_WRITE_OUTP,
  CTR_KBDINT,
  CTR_AUXDIS,
  I8042,
  I8042_BASE,
  I8042_COMMAND_PORT,
  I8042_DATA_PORT,
  I8042_LENGTH,
  SELF_TEST_OK,
  STATUS_AUXDATA,
  STATUS_IBF,
  STATUS_OBF,
  STATUS_SYS,
} from './i8042.js';

function setup() {
  let resets = 0;
  const irq = new CountingInterrupt();
  const dev = new I8042({ reset: () => resets++, kbdInterrupt: irq });
  const bus = createPioBus();
  bus.insert(dev, I8042_BASE, I8042_LENGTH);
  const b = new Uint8Array(1);
  const inb = (port: number): number => {
    bus.read(port, b);
    return b[0]!;
  };
  const outb = (port: number, v: number): void => {
    b[0] = v;
    bus.write(port, b);
  };
  const status = () => inb(I8042_COMMAND_PORT);
  /** i8042_wait_read + read: fails instead of timing out. */
  const readData = (): number => {
    assert.equal(status() & STATUS_OBF, STATUS_OBF, 'controller answered (no timeout)');
    return inb(I8042_DATA_PORT);
  };
  const command = (cmd: number): void => {
    assert.equal(status() & STATUS_IBF, 0);
    outb(I8042_COMMAND_PORT, cmd);
  };
  return { dev, irq, inb, outb, status, readData, command, resets: () => resets };
}

test('Linux i8042 probe: flush, self test, CTR read/write, no aux port', () => {
  const { status, readData, command, outb, inb, irq } = setup();
  // i8042_controller_check: the status register is not 0xff.
  assert.notEqual(status(), 0xff);
  assert.equal(status() & STATUS_SYS, STATUS_SYS);
  // i8042_flush: nothing pending.
  assert.equal(status() & STATUS_OBF, 0);
  // i8042_controller_selftest.
  command(CMD_SELF_TEST);
  assert.equal(readData(), SELF_TEST_OK);
  assert.equal(status() & STATUS_OBF, 0);
  // i8042_controller_init: read CTR, write it back with interrupts off.
  command(CMD_READ_CTR);
  const ctr = readData();
  assert.equal(ctr & CTR_KBDINT, CTR_KBDINT);
  irq.take();
  command(CMD_WRITE_CTR);
  outb(I8042_DATA_PORT, ctr & ~CTR_KBDINT);
  command(CMD_READ_CTR);
  assert.equal(readData(), ctr & ~CTR_KBDINT);
  // i8042_check_aux: AUX_LOOP answer lacks AUXDATA -> then AUX_TEST says no port.
  command(CMD_AUX_LOOP);
  outb(I8042_DATA_PORT, 0x5a);
  // __i8042_command sees OBF without AUXDATA and fails at once, leaving the byte unread.
  assert.equal(status() & STATUS_OBF, STATUS_OBF);
  assert.equal(status() & STATUS_AUXDATA, 0);
  command(CMD_AUX_TEST);
  const param = readData();
  assert.ok(param !== 0 && param !== 0xfa && param !== 0xff, 'aux test fails -> no aux port');
  assert.equal(param, AUX_TEST_NO_PORT);
  // Output port round trip (A20 gate style write keeps the reset line high).
  command(CMD_WRITE_OUTP);
  outb(I8042_DATA_PORT, 0xdf);
  command(CMD_READ_OUTP);
  assert.equal(readData(), 0xdf);
  // Aux disable/enable toggle CTR bit 5.
  command(0xa7);
  command(CMD_READ_CTR);
  assert.equal(readData() & CTR_AUXDIS, CTR_AUXDIS);
  // Undecoded ports of the range (0x61-0x63) read all-ones.
  assert.equal(inb(0x61), 0xff);
});

test('keyboard answers atkbd commands', () => {
  const { outb, readData, status, irq, command } = setup();
  const kbd = (v: number) => outb(I8042_DATA_PORT, v);
  const drain = (): number[] => {
    const r: number[] = [];
    while (status() & STATUS_OBF) r.push(readData());
    return r;
  };
  kbd(0xf2); // GETID
  assert.deepEqual(drain(), [0xfa, 0xab, 0x83]);
  kbd(0xff); // RESET_BAT
  assert.deepEqual(drain(), [0xfa, 0xaa]);
  kbd(0xed); // SETLEDS + param
  assert.deepEqual(drain(), [0xfa]);
  kbd(0x00);
  assert.deepEqual(drain(), [0xfa]);
  kbd(0xf0); // get scancode set
  kbd(0x00);
  assert.deepEqual(drain(), [0xfa, 0xfa, 0x02]);
  kbd(0xee);
  assert.deepEqual(drain(), [0xee]);
  kbd(0xf4); // enable scanning
  assert.deepEqual(drain(), [0xfa]);
  // IRQ 1: one edge per byte that becomes readable, while CTR.KBDINT is set.
  irq.take();
  kbd(0xf2);
  assert.equal(irq.take(), 1);
  drain();
  assert.equal(irq.take(), 2);
  command(CMD_WRITE_CTR);
  outb(I8042_DATA_PORT, 0x00);
  kbd(0xf2);
  drain();
  assert.equal(irq.take(), 0);
});

test('reset line: command 0xFE and output port bit 0', () => {
  const t = setup();
  t.command(CMD_RESET_CPU);
  assert.equal(t.resets(), 1);
  t.command(0xff); // pulse nothing
  assert.equal(t.resets(), 1);
  t.command(CMD_WRITE_OUTP);
  t.outb(I8042_DATA_PORT, 0x02);
  assert.equal(t.resets(), 2);
  assert.equal(t.dev.resets, 2);
  // A data write after a reset command is a keyboard command, not a stale parameter.
  t.outb(I8042_DATA_PORT, 0xf4);
  assert.equal(t.readData(), 0xfa);
});

test('host-injected keys and bad accesses', () => {
  const t = setup();
  assert.equal(t.dev.sendCtrlAltDel(), true);
  const got: number[] = [];
  while (t.status() & STATUS_OBF) got.push(t.readData());
  assert.deepEqual(got, [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d]);
  assert.equal(t.dev.injectKeyboardBytes(new Uint8Array(20)), 16);
  assert.equal(t.dev.sendCtrlAltDel(), false);
  const w = new Uint8Array(2);
  t.dev.read(0, w);
  assert.deepEqual(Array.from(w), [0xff, 0xff]);
  t.dev.write(4, Uint8Array.of(CMD_RESET_CPU, 0));
  assert.equal(t.resets(), 0);
  assert.equal(t.dev.badAccesses, 2);
  assert.equal(I8042_DATA_PORT, 0x60);
});
