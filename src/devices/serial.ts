// 16550A UART (National Semiconductor / TI PC16550D datasheet).
//
// Eight byte-wide registers at base+0..7 (COM1: 0x3f8, IRQ 4):
//   0 RBR (read) / THR (write); DLL when LCR.DLAB
//   1 IER;                       DLM when LCR.DLAB
//   2 IIR (read) / FCR (write)
//   3 LCR   4 MCR   5 LSR   6 MSR   7 SCR
//
// Transmission is instantaneous: THR bytes go straight to the sink, so LSR.THRE
// and LSR.TEMT always read 1 and a THRE interrupt is re-armed by every THR write.
// Received bytes come from `enqueueInput` into a bounded FIFO. The "received
// data available" interrupt is raised whenever the FIFO is non-empty (the
// receiver trigger level and the character-timeout interrupt, datasheet 8.6,
// are not modelled: reporting data at once is what the Linux 8250 driver
// handles best and what QEMU/Firecracker do).
//
// The INTR output (datasheet 8.6, "IIR") is modelled as a level; the InterruptLine
// gets one edge per 0->1 transition of INTR, as the ISA bus feeds the 8259/IOAPIC.
// The Linux 8250 handler loops until IIR reads "no interrupt pending", so no edge
// is ever lost. OUT2 gating of INTR (a PC board detail) is not modelled.
//
// Threading: see bus.ts; one caller at a time.

import type { BusDevice } from './bus.js';
import type { InterruptLine } from './interrupt.js';
import { NO_INTERRUPT } from './interrupt.js';
import { StateCheck, hex8 } from './state.js';

// Register offsets.
export const UART_RX = 0; // RBR (DLAB=0, read)
export const UART_TX = 0; // THR (DLAB=0, write)
export const UART_DLL = 0; // divisor latch LSB (DLAB=1)
export const UART_IER = 1;
export const UART_DLM = 1; // divisor latch MSB (DLAB=1)
export const UART_IIR = 2; // read
export const UART_FCR = 2; // write
export const UART_LCR = 3;
export const UART_MCR = 4;
export const UART_LSR = 5;
export const UART_MSR = 6;
export const UART_SCR = 7;
/** Number of byte registers (length of the bus range). */
export const SERIAL_REGISTER_COUNT = 8;

// IER bits (datasheet Table 2, "Interrupt Enable Register").
export const IER_RDI = 0x01; // received data available
export const IER_THRI = 0x02; // transmitter holding register empty
export const IER_RLSI = 0x04; // receiver line status
export const IER_MSI = 0x08; // modem status
const IER_MASK = 0x0f; // bits 4-7 are always 0 on a 16550A

// IIR values (datasheet Table 4, "Interrupt Control Functions").
export const IIR_NO_INT = 0x01;
export const IIR_MSI = 0x00;
export const IIR_THRI = 0x02;
export const IIR_RDI = 0x04;
export const IIR_RLSI = 0x06;
export const IIR_FIFO_ENABLED = 0xc0;

// FCR bits.
export const FCR_ENABLE_FIFO = 0x01;
export const FCR_CLEAR_RCVR = 0x02;
export const FCR_CLEAR_XMIT = 0x04;
const FCR_TRIGGER_MASK = 0xc0;

// LCR bits.
export const LCR_DLAB = 0x80;

// MCR bits.
export const MCR_DTR = 0x01;
export const MCR_RTS = 0x02;
export const MCR_OUT1 = 0x04;
export const MCR_OUT2 = 0x08;
export const MCR_LOOP = 0x10;
const MCR_MASK = 0x1f;

// LSR bits.
export const LSR_DR = 0x01;
export const LSR_OE = 0x02;
export const LSR_PE = 0x04;
export const LSR_FE = 0x08;
export const LSR_BI = 0x10;
export const LSR_THRE = 0x20;
export const LSR_TEMT = 0x40;
export const LSR_FIFO_ERR = 0x80;
const LSR_ERRORS = LSR_OE | LSR_PE | LSR_FE | LSR_BI;

// MSR bits.
export const MSR_DCTS = 0x01;
export const MSR_DDSR = 0x02;
export const MSR_TERI = 0x04;
export const MSR_DDCD = 0x08;
export const MSR_CTS = 0x10;
export const MSR_DSR = 0x20;
export const MSR_RI = 0x40;
export const MSR_DCD = 0x80;
const MSR_DELTA_MASK = 0x0f;

/** Default divisor: 115200 / 12 = 9600 baud. */
const DEFAULT_DIVISOR = 12;
/** Default receive FIFO capacity (a real 16550A has 16; bigger helps pasting). */
export const DEFAULT_SERIAL_INPUT_CAPACITY = 64;

/**
 * What the guest can observe of a UART, as plain data (file form: state_json.ts). IIR and the LSR
 * DR/THRE/TEMT/FIFO-error bits are not stored: they follow from these (interruptId, readRegister).
 */
export interface SerialState {
  /** IER (bits 0-3). */
  ier: number;
  lcr: number;
  /** MCR (bits 0-4). */
  mcr: number;
  /** FCR as kept: FIFO enable (bit 0) and receiver trigger (bits 6-7); 0 with the FIFOs off. */
  fcr: number;
  scr: number;
  /** Divisor latch, low and high byte (read and written with LCR.DLAB set). */
  dll: number;
  dlm: number;
  /** LSR error bits (OE, PE, FE, BI) the guest has not read yet. */
  lsrErrors: number;
  /** MSR delta bits (DCTS, DDSR, TERI, DDCD) the guest has not read yet. */
  msrDelta: number;
  /** MSR line bits (CTS, DSR, RI, DCD): the modem lines, or MCR's outputs in loopback. */
  msrStatus: number;
  /** A THRE interrupt is pending (cleared by an IIR read that reports it, re-armed by THR writes). */
  thrPending: boolean;
  /** Receive FIFO capacity of the UART that saved it (a restore needs the same). */
  rxCapacity: number;
  /** Received bytes the guest has not read, oldest first. */
  rxFifo: Uint8Array;
}

/** Receives transmitted bytes. The view is only valid during the call: copy to keep. */
export type SerialSink = (bytes: Uint8Array) => void;

export interface SerialOptions {
  /** IRQ line (IRQ 4 for COM1). */
  interrupt?: InterruptLine;
  /** Where transmitted bytes go (not called in loopback mode). */
  sink?: SerialSink;
  /** Receive FIFO capacity in bytes (>= 1). */
  inputCapacity?: number;
  /**
   * Called once after `enqueueInput` refused bytes (FIFO full or loopback mode)
   * and space became available again, so the host can resume feeding input.
   */
  onInputSpace?: () => void;
  /** Modem status lines seen when not in loopback (default DCD|DSR|CTS: a connected terminal). */
  modemStatus?: number;
}

export class Serial implements BusDevice {
  private readonly interrupt: InterruptLine;
  private readonly sink: SerialSink | undefined;
  private readonly onInputSpace: (() => void) | undefined;
  private readonly externalModemStatus: number;

  private ier = 0;
  private lcr = 0;
  private mcr = 0;
  private fcr = 0;
  private scr = 0;
  private dll = DEFAULT_DIVISOR;
  private dlm = 0;
  private lsrErrors = 0;
  private msrDelta = 0;
  private msrStatus: number;
  /** THRE interrupt pending (cleared by IIR read reporting it or by a THR write). */
  private thrPending = false;
  /** Current INTR output level. */
  private intr = false;

  private readonly rx: Uint8Array;
  private rxHead = 0;
  private rxCount = 0;
  private inputRefused = false;

  private readonly txByte = new Uint8Array(1);

  /** Accesses the device ignored: non-byte widths or offsets past the registers. */
  badAccesses = 0;
  /** Bytes lost to receive overrun in loopback mode. */
  overruns = 0;

  constructor(options: SerialOptions = {}) {
    this.interrupt = options.interrupt ?? NO_INTERRUPT;
    this.sink = options.sink;
    this.onInputSpace = options.onInputSpace;
    const cap = options.inputCapacity ?? DEFAULT_SERIAL_INPUT_CAPACITY;
    if (!Number.isInteger(cap) || cap < 1) {
      throw new RangeError(`serial: inputCapacity must be a positive integer, got ${String(cap)}`);
    }
    this.rx = new Uint8Array(cap);
    this.externalModemStatus = (options.modemStatus ?? MSR_DCD | MSR_DSR | MSR_CTS) & 0xf0;
    this.msrStatus = this.externalModemStatus;
  }

  /** Receive FIFO capacity. */
  get inputCapacity(): number {
    return this.rx.length;
  }

  /** Free receive FIFO slots (0 in loopback mode, where the serial input is disconnected). */
  get inputSpace(): number {
    return this.loopback ? 0 : this.rx.length - this.rxCount;
  }

  /** Bytes waiting in the receive FIFO. */
  get pendingInput(): number {
    return this.rxCount;
  }

  /** Current INTR level (true while an enabled interrupt condition is pending). */
  get interruptPending(): boolean {
    return this.intr;
  }

  private get loopback(): boolean {
    return (this.mcr & MCR_LOOP) !== 0;
  }

  /**
   * Queue host input for the guest. Returns how many leading bytes of `bytes`
   * were accepted (bounded FIFO; none in loopback mode). If fewer than all were
   * accepted, `onInputSpace` is called once room frees up.
   */
  enqueueInput(bytes: Uint8Array): number {
    let accepted = 0;
    if (!this.loopback) {
      const cap = this.rx.length;
      while (accepted < bytes.length && this.rxCount < cap) {
        this.rx[(this.rxHead + this.rxCount) % cap] = bytes[accepted]!;
        this.rxCount++;
        accepted++;
      }
    }
    if (accepted < bytes.length) this.inputRefused = true;
    if (accepted > 0) this.updateInterrupt();
    return accepted;
  }

  read(offset: number, data: Uint8Array): void {
    if (data.length !== 1 || offset >= SERIAL_REGISTER_COUNT) {
      this.badAccesses++;
      data.fill(0xff);
      return;
    }
    data[0] = this.readRegister(offset);
  }

  write(offset: number, data: Uint8Array): void {
    if (data.length !== 1 || offset >= SERIAL_REGISTER_COUNT) {
      this.badAccesses++;
      return;
    }
    this.writeRegister(offset, data[0]!);
  }

  /** Read one register (side effects as on hardware). */
  readRegister(offset: number): number {
    const dlab = (this.lcr & LCR_DLAB) !== 0;
    switch (offset) {
      case UART_RX:
        return dlab ? this.dll : this.popRx();
      case UART_IER:
        return dlab ? this.dlm : this.ier;
      case UART_IIR: {
        const id = this.interruptId();
        // Datasheet 8.6: reading IIR clears a THRE interrupt if it is the one reported.
        if (id === IIR_THRI) {
          this.thrPending = false;
          this.updateInterrupt();
        }
        return id | ((this.fcr & FCR_ENABLE_FIFO) !== 0 ? IIR_FIFO_ENABLED : 0);
      }
      case UART_LCR:
        return this.lcr;
      case UART_MCR:
        return this.mcr;
      case UART_LSR: {
        let lsr = LSR_THRE | LSR_TEMT | this.lsrErrors;
        if (this.rxCount > 0) lsr |= LSR_DR;
        if ((this.fcr & FCR_ENABLE_FIFO) !== 0 && (this.lsrErrors & LSR_ERRORS) !== 0) lsr |= LSR_FIFO_ERR;
        // Error bits clear on read (datasheet 8.6, "Line Status Register").
        if (this.lsrErrors !== 0) {
          this.lsrErrors = 0;
          this.updateInterrupt();
        }
        return lsr;
      }
      case UART_MSR: {
        const msr = this.msrStatus | this.msrDelta;
        if (this.msrDelta !== 0) {
          this.msrDelta = 0;
          this.updateInterrupt();
        }
        return msr;
      }
      case UART_SCR:
        return this.scr;
      default:
        return 0xff;
    }
  }

  /** Write one register. */
  writeRegister(offset: number, value: number): void {
    const v = value & 0xff;
    const dlab = (this.lcr & LCR_DLAB) !== 0;
    switch (offset) {
      case UART_TX:
        if (dlab) {
          this.dll = v;
          return;
        }
        this.transmit(v);
        return;
      case UART_IER: {
        if (dlab) {
          this.dlm = v;
          return;
        }
        const old = this.ier;
        this.ier = v & IER_MASK;
        // Enabling THRI while THR is empty raises a THRE interrupt at once (the
        // Linux 8250 driver relies on this in start_tx and its UART_BUG_THRE probe).
        if ((this.ier & IER_THRI) !== 0 && (old & IER_THRI) === 0) this.thrPending = true;
        this.updateInterrupt();
        return;
      }
      case UART_FCR: {
        const wasEnabled = (this.fcr & FCR_ENABLE_FIFO) !== 0;
        const enable = (v & FCR_ENABLE_FIFO) !== 0;
        // Changing the enable bit resets both FIFOs; other bits need FIFO enabled.
        if (enable !== wasEnabled || (enable && (v & FCR_CLEAR_RCVR) !== 0)) this.clearRx();
        this.fcr = enable ? v & (FCR_ENABLE_FIFO | FCR_TRIGGER_MASK) : 0;
        this.updateInterrupt();
        return;
      }
      case UART_LCR:
        this.lcr = v;
        return;
      case UART_MCR: {
        const wasLoop = this.loopback;
        this.mcr = v & MCR_MASK;
        this.setModemStatus(this.loopback ? loopbackModemStatus(this.mcr) : this.externalModemStatus);
        if (wasLoop && !this.loopback) this.notifyInputSpace();
        this.updateInterrupt();
        return;
      }
      case UART_LSR:
      case UART_MSR:
        // Read-only (LSR writes are a factory-test feature); ignored.
        return;
      case UART_SCR:
        this.scr = v;
        return;
      default:
        return;
    }
  }

  /** The guest-visible state (a copy; the UART goes on unchanged). */
  saveState(): SerialState {
    const rxFifo = new Uint8Array(this.rxCount);
    for (let i = 0; i < this.rxCount; i++) rxFifo[i] = this.rx[(this.rxHead + i) % this.rx.length]!;
    return {
      ier: this.ier, lcr: this.lcr, mcr: this.mcr, fcr: this.fcr, scr: this.scr, dll: this.dll, dlm: this.dlm,
      lsrErrors: this.lsrErrors, msrDelta: this.msrDelta, msrStatus: this.msrStatus, thrPending: this.thrPending,
      rxCapacity: this.rx.length, rxFifo,
    };
  }

  /**
   * Take over a saved state. It is checked first (a StateFormatError names the field that does
   * not fit this UART: another FIFO capacity, bits a 16550A never holds, modem lines other than
   * this UART's); then INTR is re-derived from the registers without an edge: the edge the saved
   * UART raised is part of the interrupt controller's saved state.
   */
  restoreState(s: SerialState): void {
    const c = new StateCheck('serial state');
    c.object('', s);
    c.bits('ier', s.ier, IER_MASK, 'IER (bits 4-7 are 0 on a 16550A)');
    c.uint('lcr', s.lcr, 0xff);
    const mcr = c.bits('mcr', s.mcr, MCR_MASK, 'MCR');
    const fcr = c.bits('fcr', s.fcr, FCR_ENABLE_FIFO | FCR_TRIGGER_MASK, 'the FCR bits a 16550A keeps');
    if (fcr !== 0 && (fcr & FCR_ENABLE_FIFO) === 0) c.fail('fcr', `a receiver trigger level (${hex8(fcr)}) with the FIFOs disabled`);
    c.uint('scr', s.scr, 0xff);
    c.uint('dll', s.dll, 0xff);
    c.uint('dlm', s.dlm, 0xff);
    c.bits('lsrErrors', s.lsrErrors, LSR_ERRORS, 'the LSR error bits (OE, PE, FE, BI)');
    c.bits('msrDelta', s.msrDelta, MSR_DELTA_MASK, 'the MSR delta bits');
    const lines = (mcr & MCR_LOOP) !== 0 ? loopbackModemStatus(mcr) : this.externalModemStatus;
    if (c.uint('msrStatus', s.msrStatus, 0xff) !== lines) {
      const how = (mcr & MCR_LOOP) !== 0 ? "this UART's MCR outputs (loopback) give" : "this UART's modem lines give";
      c.fail('msrStatus', `the state has ${hex8(s.msrStatus)}, ${how} ${hex8(lines)}`);
    }
    c.bool('thrPending', s.thrPending);
    if (c.uint('rxCapacity', s.rxCapacity, 2 ** 31) !== this.rx.length) {
      c.fail('rxCapacity', `the state's receive FIFO holds ${s.rxCapacity} bytes, this UART's ${this.rx.length}`);
    }
    c.bytes('rxFifo', s.rxFifo, 0, this.rx.length);

    this.ier = s.ier;
    this.lcr = s.lcr;
    this.mcr = s.mcr;
    this.fcr = s.fcr;
    this.scr = s.scr;
    this.dll = s.dll;
    this.dlm = s.dlm;
    this.lsrErrors = s.lsrErrors;
    this.msrDelta = s.msrDelta;
    this.msrStatus = s.msrStatus;
    this.thrPending = s.thrPending;
    this.rx.fill(0);
    this.rx.set(s.rxFifo, 0);
    this.rxHead = 0;
    this.rxCount = s.rxFifo.length;
    this.inputRefused = false;
    this.intr = this.interruptId() !== IIR_NO_INT;
  }

  /** Reset to power-on state (FIFO content dropped). */
  reset(): void {
    this.ier = 0;
    this.lcr = 0;
    this.mcr = 0;
    this.fcr = 0;
    this.scr = 0;
    this.dll = DEFAULT_DIVISOR;
    this.dlm = 0;
    this.lsrErrors = 0;
    this.msrDelta = 0;
    this.msrStatus = this.externalModemStatus;
    this.thrPending = false;
    this.intr = false;
    this.clearRx();
  }

  private transmit(v: number): void {
    // Writing THR clears the THRE interrupt; since the byte leaves at once, THR is
    // empty again and the THRE interrupt re-arms (datasheet 8.6). INTR is only
    // re-evaluated afterwards, so a THRE interrupt the guest has not yet read
    // does not produce a second edge.
    if (this.loopback) {
      // Loopback: transmitter output is wired to the receiver input (MCR bit 4).
      if (this.rxCount < this.rx.length) {
        this.rx[(this.rxHead + this.rxCount) % this.rx.length] = v;
        this.rxCount++;
      } else {
        this.lsrErrors |= LSR_OE;
        this.overruns++;
      }
    } else if (this.sink !== undefined) {
      this.txByte[0] = v;
      this.sink(this.txByte);
    }
    this.thrPending = true;
    this.updateInterrupt();
  }

  private popRx(): number {
    if (this.rxCount === 0) return 0;
    const v = this.rx[this.rxHead]!;
    this.rxHead = (this.rxHead + 1) % this.rx.length;
    this.rxCount--;
    this.updateInterrupt();
    if (!this.loopback) this.notifyInputSpace();
    return v;
  }

  private clearRx(): void {
    this.rxHead = 0;
    this.rxCount = 0;
    if (!this.loopback) this.notifyInputSpace();
  }

  private notifyInputSpace(): void {
    if (this.inputRefused && this.rxCount < this.rx.length) {
      this.inputRefused = false;
      this.onInputSpace?.();
    }
  }

  private setModemStatus(status: number): void {
    const changed = status ^ this.msrStatus;
    if (changed & MSR_CTS) this.msrDelta |= MSR_DCTS;
    if (changed & MSR_DSR) this.msrDelta |= MSR_DDSR;
    if (changed & MSR_DCD) this.msrDelta |= MSR_DDCD;
    // TERI: trailing edge of RI (1 -> 0).
    if (this.msrStatus & MSR_RI && !(status & MSR_RI)) this.msrDelta |= MSR_TERI;
    this.msrStatus = status;
  }

  /** Highest-priority pending enabled interrupt (datasheet Table 4). */
  private interruptId(): number {
    const ier = this.ier;
    if (ier & IER_RLSI && this.lsrErrors !== 0) return IIR_RLSI;
    if (ier & IER_RDI && this.rxCount > 0) return IIR_RDI;
    if (ier & IER_THRI && this.thrPending) return IIR_THRI;
    if (ier & IER_MSI && (this.msrDelta & MSR_DELTA_MASK) !== 0) return IIR_MSI;
    return IIR_NO_INT;
  }

  private updateInterrupt(): void {
    const level = this.interruptId() !== IIR_NO_INT;
    if (level && !this.intr) {
      this.intr = true;
      this.interrupt.trigger();
    } else if (!level) {
      this.intr = false;
    }
  }
}

/** MSR status bits in loopback mode: RTS->CTS, DTR->DSR, OUT1->RI, OUT2->DCD (datasheet 8.6, MCR bit 4). */
function loopbackModemStatus(mcr: number): number {
  let s = 0;
  if (mcr & MCR_RTS) s |= MSR_CTS;
  if (mcr & MCR_DTR) s |= MSR_DSR;
  if (mcr & MCR_OUT1) s |= MSR_RI;
  if (mcr & MCR_OUT2) s |= MSR_DCD;
  return s;
}

/** Standard PC COM port bases and IRQs. */
export const COM1 = Object.freeze({ base: 0x3f8, irq: 4 });
export const COM2 = Object.freeze({ base: 0x2f8, irq: 3 });
export const COM3 = Object.freeze({ base: 0x3e8, irq: 4 });
export const COM4 = Object.freeze({ base: 0x2e8, irq: 3 });
