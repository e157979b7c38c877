// Tests drive the UART the way the Linux 8250 driver does (drivers/tty/serial/8250/8250_port.c):
// autoconfig probe, THRE-interrupt transmit, interrupt-driven receive.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createPioBus } from './bus.js';
import { CountingInterrupt } from './interrupt.js';
import {
  COM1,
  FCR_CLEAR_RCVR,
  FCR_CLEAR_XMIT,
  FCR_ENABLE_FIFO,
  IER_MSI,
  IER_RDI,
  IER_RLSI,
  IER_THRI,
  IIR_FIFO_ENABLED,
  IIR_MSI,
  IIR_NO_INT,
  IIR_RDI,
  IIR_RLSI,
  IIR_THRI,
  LCR_DLAB,
  LSR_DR,
  LSR_OE,
  LSR_TEMT,
  LSR_THRE,
  MCR_DTR,
  MCR_LOOP,
  MCR_OUT1,
  MCR_OUT2,
  MCR_RTS,
  MSR_CTS,
  MSR_DCD,
  MSR_DCTS,
  MSR_DSR,
  MSR_RI,
  SERIAL_REGISTER_COUNT,
  Serial,
  UART_DLL,
  UART_DLM,
  UART_FCR,
  UART_IER,
  UART_IIR,
  UART_LCR,
  UART_LSR,
  UART_MCR,
  UART_MSR,
  UART_RX,
  UART_SCR,
  UART_TX,
  type SerialOptions,
} from './serial.js';

const UART_EFR = 2; // only on chips with an EFR (LCR = 0xBF)
const UART_LCR_CONF_MODE_A = 0x80;
const UART_LCR_CONF_MODE_B = 0xbf;
const UART_IER_UUE = 0x40;
const UART_FCR7_64BYTE = 0x20;
const UART_IIR_64BYTE_FIFO = 0x20;

/** A UART on a port I/O bus at COM1, accessed with inb/outb like the guest. */
function setup(opts: SerialOptions = {}) {
  const irq = new CountingInterrupt();
  const out: number[] = [];
  const serial = new Serial({ interrupt: irq, sink: (b) => out.push(...b), ...opts });
  const bus = createPioBus();
  bus.insert(serial, COM1.base, SERIAL_REGISTER_COUNT);
  const buf = new Uint8Array(1);
  const inb = (off: number): number => {
    bus.read(COM1.base + off, buf);
    return buf[0]!;
  };
  const outb = (off: number, v: number): void => {
    buf[0] = v;
    bus.write(COM1.base + off, buf);
  };
  return { serial, irq, out, inb, outb, bus };
}

test('Linux 8250 autoconfig identifies a 16550A', () => {
  const { inb, outb, serial } = setup();
  // IER scratch test (autoconfig: "Do a simple existence test first").
  const scratch = inb(UART_IER);
  outb(UART_IER, 0);
  const scratch2 = inb(UART_IER) & 0x0f;
  outb(UART_IER, 0x0f);
  const scratch3 = inb(UART_IER) & 0x0f;
  outb(UART_IER, scratch);
  assert.equal(scratch2, 0);
  assert.equal(scratch3, 0x0f);

  const saveMcr = inb(UART_MCR);
  const saveLcr = inb(UART_LCR);
  // Loopback test: RTS|OUT2 in loopback must read back as CTS|DCD.
  outb(UART_MCR, MCR_LOOP | 0x0a);
  const status1 = inb(UART_MSR) & 0xf0;
  outb(UART_MCR, saveMcr);
  assert.equal(status1, MSR_DCD | MSR_CTS);

  // FIFO probe.
  outb(UART_LCR, UART_LCR_CONF_MODE_B);
  outb(UART_EFR, 0);
  outb(UART_LCR, 0);
  outb(UART_FCR, FCR_ENABLE_FIFO);
  assert.equal(inb(UART_IIR) >> 6, 3, 'IIR bits 6-7 = 3 means 16550A');

  // autoconfig_16550a: no EFR in either config mode (reads IIR, which is never 0).
  outb(UART_LCR, UART_LCR_CONF_MODE_A);
  assert.notEqual(inb(UART_EFR), 0);
  outb(UART_LCR, UART_LCR_CONF_MODE_B);
  assert.notEqual(inb(UART_EFR), 0);
  // National SuperIO check: EXCR1 (offset 2 with LCR=0xE0) must not mirror MCR.LOOP.
  outb(UART_LCR, 0);
  const mcr1 = inb(UART_MCR);
  outb(UART_LCR, 0xe0);
  const excr = inb(0x02);
  assert.equal((excr ^ mcr1) & MCR_LOOP, 0);
  outb(UART_LCR, 0);
  outb(UART_MCR, mcr1 ^ MCR_LOOP);
  outb(UART_LCR, 0xe0);
  const excr2 = inb(0x02);
  outb(UART_LCR, 0);
  outb(UART_MCR, mcr1);
  // Linux flags a SuperIO if `(status2 ^ status1) & UART_MCR_LOOP`: EXCR1 must not have followed MCR.
  assert.equal((excr2 ^ mcr1) & MCR_LOOP, 0, 'not a NS SuperIO');
  // TI16750 check: 64-byte FIFO bit must not stick.
  outb(UART_LCR, 0);
  outb(UART_FCR, FCR_ENABLE_FIFO | UART_FCR7_64BYTE);
  const s1 = inb(UART_IIR) & (UART_IIR_64BYTE_FIFO | IIR_FIFO_ENABLED);
  outb(UART_FCR, FCR_ENABLE_FIFO);
  outb(UART_LCR, UART_LCR_CONF_MODE_A);
  outb(UART_FCR, FCR_ENABLE_FIFO | UART_FCR7_64BYTE);
  const s2 = inb(UART_IIR) & (UART_IIR_64BYTE_FIFO | IIR_FIFO_ENABLED);
  outb(UART_FCR, FCR_ENABLE_FIFO);
  outb(UART_LCR, 0);
  assert.equal(s1, IIR_FIFO_ENABLED);
  assert.equal(s2, IIR_FIFO_ENABLED, 'not a 16750');
  // XScale UUE bit must not stick.
  const iersave = inb(UART_IER);
  outb(UART_IER, iersave & ~UART_IER_UUE);
  assert.equal(inb(UART_IER) & UART_IER_UUE, 0);
  outb(UART_IER, iersave | UART_IER_UUE);
  assert.equal(inb(UART_IER) & UART_IER_UUE, 0);
  outb(UART_IER, iersave);

  outb(UART_LCR, saveLcr);
  // Port present: LSR is not 0xff, and THR is empty.
  const lsr = inb(UART_LSR);
  assert.notEqual(lsr, 0xff);
  assert.equal(lsr & (LSR_THRE | LSR_TEMT), LSR_THRE | LSR_TEMT);
  assert.equal(serial.badAccesses, 0);
});

test('scratch register and divisor latch', () => {
  const { inb, outb } = setup();
  for (const v of [0x00, 0x55, 0xaa, 0xff]) {
    outb(UART_SCR, v);
    assert.equal(inb(UART_SCR), v);
  }
  // Set 115200 baud 8N1 like serial8250_do_set_termios.
  outb(UART_IER, 0x05);
  outb(UART_LCR, LCR_DLAB | 0x03);
  outb(UART_DLL, 1);
  outb(UART_DLM, 0);
  assert.equal(inb(UART_DLL), 1);
  assert.equal(inb(UART_DLM), 0);
  outb(UART_LCR, 0x03);
  assert.equal(inb(UART_LCR), 0x03);
  // With DLAB clear, offset 1 is IER again and the divisor is untouched.
  assert.equal(inb(UART_IER), 0x05);
  outb(UART_LCR, LCR_DLAB | 0x03);
  assert.equal(inb(UART_DLL), 1);
});

test('loopback: THR feeds RBR, nothing reaches the sink, MSR follows MCR', () => {
  const { inb, outb, out } = setup();
  outb(UART_MCR, MCR_LOOP);
  outb(UART_TX, 0x5a);
  assert.equal(inb(UART_LSR) & LSR_DR, LSR_DR);
  assert.equal(inb(UART_RX), 0x5a);
  assert.equal(inb(UART_LSR) & LSR_DR, 0);
  assert.deepEqual(out, []);
  outb(UART_MCR, MCR_LOOP | MCR_DTR | MCR_RTS | MCR_OUT1 | MCR_OUT2);
  assert.equal(inb(UART_MSR) & 0xf0, MSR_CTS | MSR_DSR | MSR_RI | MSR_DCD);
  outb(UART_MCR, MCR_LOOP);
  const msr = inb(UART_MSR);
  assert.equal(msr & 0xf0, 0);
  assert.equal(msr & 0x0f, 0x0f, 'DCTS, DDSR, TERI, DDCD after all lines dropped');
  assert.equal(inb(UART_MSR) & 0x0f, 0, 'deltas clear on read');
  // Leaving loopback restores the external lines (a connected terminal).
  outb(UART_MCR, MCR_DTR | MCR_RTS | MCR_OUT2);
  assert.equal(inb(UART_MSR) & 0xf0, MSR_DCD | MSR_DSR | MSR_CTS);
});

test('transmit with THRE interrupts like serial8250_start_tx / serial8250_tx_chars', () => {
  const { inb, outb, out, irq } = setup();
  outb(UART_FCR, FCR_ENABLE_FIFO | FCR_CLEAR_RCVR | FCR_CLEAR_XMIT);
  outb(UART_LCR, 0x03);
  outb(UART_MCR, MCR_DTR | MCR_RTS | MCR_OUT2);
  assert.equal(inb(UART_IIR), IIR_FIFO_ENABLED | IIR_NO_INT);
  assert.equal(irq.take(), 0);

  // UART_BUG_THRE probe in serial8250_do_startup: THRE must re-assert when THRI is re-enabled.
  outb(UART_IER, IER_THRI);
  const iir1 = inb(UART_IIR);
  outb(UART_IER, 0);
  outb(UART_IER, IER_THRI);
  const iir = inb(UART_IIR);
  outb(UART_IER, 0);
  assert.equal(iir1 & IIR_NO_INT, 0);
  assert.equal(iir & IIR_NO_INT, 0);
  irq.take();

  // start_tx: enable THRI -> interrupt.
  const message = Array.from(Buffer.from('Linux version 6.x\n'));
  outb(UART_IER, IER_RDI | IER_THRI);
  assert.equal(irq.take(), 1);
  let sent = 0;
  let rounds = 0;
  // The interrupt handler: loop until IIR says no interrupt pending.
  for (;;) {
    const id = inb(UART_IIR);
    if (id & IIR_NO_INT) break;
    assert.equal(id & 0x0f, IIR_THRI);
    assert.equal(inb(UART_LSR) & LSR_THRE, LSR_THRE);
    rounds++;
    if (sent === message.length) {
      outb(UART_IER, IER_RDI); // __stop_tx
      continue;
    }
    for (let i = 0; i < 16 && sent < message.length; i++) outb(UART_TX, message[sent++]!);
  }
  assert.deepEqual(out, message);
  assert.equal(rounds, 3); // 16 bytes, 2 bytes, then stop
  // One edge per 0->1 transition of INTR: the first THR write after each IIR read.
  assert.equal(irq.take(), 2);
  assert.equal(inb(UART_IIR), IIR_FIFO_ENABLED | IIR_NO_INT);
});

test('polled console write (IER=0) raises no interrupt', () => {
  const { inb, outb, out, irq } = setup();
  outb(UART_IER, 0);
  for (const c of Buffer.from('early')) {
    while ((inb(UART_LSR) & LSR_THRE) === 0) {
      /* wait_for_xmitr */
    }
    outb(UART_TX, c);
  }
  assert.equal(Buffer.from(out).toString(), 'early');
  assert.equal(irq.count, 0);
});

test('receive: data-available interrupt, FIFO drained through RBR', () => {
  const { serial, inb, outb, irq } = setup();
  outb(UART_FCR, FCR_ENABLE_FIFO);
  outb(UART_IER, IER_RDI | IER_RLSI);
  assert.equal(serial.enqueueInput(Buffer.from('ls\n')), 3);
  assert.equal(irq.take(), 1);
  assert.equal(serial.interruptPending, true);
  assert.equal(inb(UART_IIR), IIR_FIFO_ENABLED | IIR_RDI);
  const got: number[] = [];
  while (inb(UART_LSR) & LSR_DR) got.push(inb(UART_RX));
  assert.equal(Buffer.from(got).toString(), 'ls\n');
  assert.equal(inb(UART_IIR), IIR_FIFO_ENABLED | IIR_NO_INT);
  // More input after the FIFO drained is a new edge.
  serial.enqueueInput(Uint8Array.of(0x41));
  assert.equal(irq.take(), 1);
  // Input while data is still pending does not re-trigger (INTR already high).
  serial.enqueueInput(Uint8Array.of(0x42));
  assert.equal(irq.take(), 0);
  assert.equal(inb(UART_RX), 0x41);
  assert.equal(inb(UART_RX), 0x42);
  assert.equal(inb(UART_RX), 0, 'empty RBR reads 0');
  // No interrupt when RDI is disabled.
  outb(UART_IER, 0);
  serial.enqueueInput(Uint8Array.of(1));
  assert.equal(irq.take(), 0);
  assert.equal(inb(UART_LSR) & LSR_DR, LSR_DR);
  // Enabling RDI with data pending raises it.
  outb(UART_IER, IER_RDI);
  assert.equal(irq.take(), 1);
  // FCR clear-receiver drops pending data.
  outb(UART_FCR, FCR_ENABLE_FIFO | FCR_CLEAR_RCVR);
  assert.equal(inb(UART_LSR) & LSR_DR, 0);
  assert.equal(inb(UART_IIR), IIR_FIFO_ENABLED | IIR_NO_INT);
});

test('bounded input FIFO reports acceptance and signals space', () => {
  let spaceCalls = 0;
  const { serial, inb } = setup({ inputCapacity: 4, onInputSpace: () => spaceCalls++ });
  assert.equal(serial.inputCapacity, 4);
  assert.equal(serial.enqueueInput(Buffer.from('abcdef')), 4);
  assert.equal(serial.inputSpace, 0);
  assert.equal(serial.enqueueInput(Buffer.from('x')), 0);
  assert.equal(spaceCalls, 0);
  assert.equal(inb(UART_RX), 0x61);
  assert.equal(spaceCalls, 1);
  assert.equal(inb(UART_RX), 0x62);
  assert.equal(spaceCalls, 1, 'only once per refusal');
  assert.equal(serial.enqueueInput(Buffer.from('ef')), 2);
  assert.equal(serial.pendingInput, 4);
  // Loopback disconnects the serial input.
  const t = setup();
  t.outb(UART_MCR, MCR_LOOP);
  assert.equal(t.serial.enqueueInput(Uint8Array.of(1)), 0);
  assert.throws(() => new Serial({ inputCapacity: 0 }), /inputCapacity/);
});

test('loopback overrun sets OE and raises a line-status interrupt', () => {
  const { inb, outb, irq, serial } = setup({ inputCapacity: 2 });
  outb(UART_FCR, FCR_ENABLE_FIFO);
  outb(UART_MCR, MCR_LOOP);
  outb(UART_IER, IER_RLSI);
  outb(UART_TX, 1);
  outb(UART_TX, 2);
  assert.equal(irq.take(), 0);
  outb(UART_TX, 3);
  assert.equal(irq.take(), 1);
  assert.equal(serial.overruns, 1);
  assert.equal(inb(UART_IIR), IIR_FIFO_ENABLED | IIR_RLSI);
  const lsr = inb(UART_LSR);
  assert.equal(lsr & LSR_OE, LSR_OE);
  assert.equal(lsr & 0x80, 0x80, 'error in receiver FIFO');
  assert.equal(inb(UART_LSR) & LSR_OE, 0, 'OE clears on read');
  assert.equal(inb(UART_IIR), IIR_FIFO_ENABLED | IIR_NO_INT);
});

test('modem status interrupt in loopback', () => {
  const { inb, outb, irq } = setup();
  outb(UART_MCR, MCR_LOOP);
  outb(UART_IER, IER_MSI);
  // Entering loopback dropped DCD/DSR/CTS: deltas pending.
  assert.equal(irq.take(), 1);
  assert.equal(inb(UART_IIR), IIR_MSI);
  assert.equal(inb(UART_MSR) & MSR_DCTS, MSR_DCTS);
  assert.equal(inb(UART_IIR), IIR_NO_INT);
  outb(UART_MCR, MCR_LOOP | MCR_RTS);
  assert.equal(irq.take(), 1);
  assert.equal(inb(UART_MSR), MSR_CTS | MSR_DCTS);
});

test('interrupt priority: line status > data > THRE', () => {
  const { serial, inb, outb } = setup({ inputCapacity: 1 });
  outb(UART_IER, IER_RDI | IER_THRI | IER_RLSI);
  assert.equal(inb(UART_IIR), IIR_THRI);
  outb(UART_IER, 0);
  outb(UART_IER, IER_RDI | IER_THRI | IER_RLSI);
  serial.enqueueInput(Uint8Array.of(7));
  assert.equal(inb(UART_IIR), IIR_RDI);
  assert.equal(inb(UART_RX), 7);
  assert.equal(inb(UART_IIR), IIR_THRI);
  assert.equal(inb(UART_IIR), IIR_NO_INT);
});

test('non-byte accesses are ignored and counted; reset restores power-on state', () => {
  const { serial, bus, inb, outb } = setup();
  const w = new Uint8Array(2);
  bus.read(COM1.base, w);
  assert.deepEqual(Array.from(w), [0xff, 0xff]);
  bus.write(COM1.base, w);
  assert.equal(serial.badAccesses, 2);
  outb(UART_IER, 0x0f);
  outb(UART_SCR, 0x12);
  serial.reset();
  assert.equal(inb(UART_IER), 0);
  assert.equal(inb(UART_SCR), 0);
  assert.equal(inb(UART_IIR), IIR_NO_INT);
});
