// Minimal i8042 PS/2 controller (IBM PC/AT keyboard controller).
//
// Registered at port 0x60 with length 5: offset 0 is the data port (0x60),
// offset 4 the status (read) / command (write) port (0x64). Offsets 1-3 (0x61-0x63)
// are not decoded: reads return 0xff. Port 0x61 (system control port B) belongs
// to the PIT/speaker, not to this device.
//
// What it emulates, enough for Linux's i8042 probe and atkbd to finish quickly
// (every command gets an answer, so no 500 ms i8042 timeouts):
//  - controller commands 0x20/0x60 (CTR), 0xA7/0xA8 (aux disable/enable),
//    0xA9 (aux test: answers "clock line stuck", i.e. no aux port), 0xAA
//    (self test -> 0x55), 0xAB (kbd test -> 0x00), 0xAD/0xAE (kbd disable/enable),
//    0xC0 (input port), 0xD0/0xD1 (output port; clearing bit 0 resets the CPU),
//    0xD2 (write kbd output buffer), 0xD3 (aux loopback, answered without the
//    AUX flag so Linux concludes there is no aux port), 0xD4 (to aux: dropped),
//    0xF0-0xFF (pulse output lines: bit 0 low -> CPU reset; 0xFE is the usual one);
//  - a keyboard that ACKs (0xFA) commands, answers GETID 0xF2 with AB 83, RESET
//    0xFF with AA, ECHO 0xEE with EE, and takes one parameter for 0xED/0xF0/0xF3.
// IRQ 1 is raised (edge) whenever a byte becomes readable and CTR.KBDINT is set.
//
// Threading: see bus.ts; one caller at a time.

import type { BusDevice } from './bus.js';
import type { InterruptLine } from './interrupt.js';
import { NO_INTERRUPT } from './interrupt.js';
import { StateCheck, hex8 } from './state.js';

export const I8042_DATA_PORT = 0x60;
export const I8042_COMMAND_PORT = 0x64;
/** Bus range: base 0x60, length 5 (covers 0x60..0x64). */
export const I8042_BASE = 0x60;
export const I8042_LENGTH = 5;
export const I8042_KBD_IRQ = 1;

const OFS_DATA = 0;
const OFS_STATUS = 4;

// Status register bits.
export const STATUS_OBF = 0x01; // output buffer full (data at 0x60)
export const STATUS_IBF = 0x02; // input buffer full (never: we consume at once)
export const STATUS_SYS = 0x04; // system flag (POST passed)
export const STATUS_CMD = 0x08; // last write was a command (0x64)
export const STATUS_UNLOCKED = 0x10; // keyboard not inhibited
export const STATUS_AUXDATA = 0x20; // output byte comes from the aux port

// Controller configuration byte (CTR) bits.
export const CTR_KBDINT = 0x01;
export const CTR_AUXINT = 0x02;
export const CTR_SYS = 0x04;
export const CTR_KBDDIS = 0x10;
export const CTR_AUXDIS = 0x20;
export const CTR_XLATE = 0x40;

// Controller commands.
export const CMD_READ_CTR = 0x20;
export const CMD_WRITE_CTR = 0x60;
export const CMD_AUX_DISABLE = 0xa7;
export const CMD_AUX_ENABLE = 0xa8;
export const CMD_AUX_TEST = 0xa9;
export const CMD_SELF_TEST = 0xaa;
export const CMD_KBD_TEST = 0xab;
export const CMD_KBD_DISABLE = 0xad;
export const CMD_KBD_ENABLE = 0xae;
export const CMD_READ_INPUT = 0xc0;
export const CMD_READ_OUTP = 0xd0;
export const CMD_WRITE_OUTP = 0xd1;
export const CMD_KBD_LOOP = 0xd2;
export const CMD_AUX_LOOP = 0xd3;
export const CMD_AUX_SEND = 0xd4;
export const CMD_RESET_CPU = 0xfe;

/** Self-test pass value. */
export const SELF_TEST_OK = 0x55;
/** Answer to 0xA9: "clock line stuck high" - there is no aux (mouse) port. */
export const AUX_TEST_NO_PORT = 0x02;

const KBD_ACK = 0xfa;
const BUF_SIZE = 16;

/** Controller commands that wait for a data byte at port 0x60. */
const DATA_COMMANDS: readonly number[] = [CMD_WRITE_CTR, CMD_WRITE_OUTP, CMD_KBD_LOOP, CMD_AUX_LOOP, CMD_AUX_SEND];
/** Keyboard commands that take a parameter byte (set LEDs, scancode set, typematic rate). */
const KBD_PARAM_COMMANDS: readonly number[] = [0xed, 0xf0, 0xf3];
/** Status bits this model ever sets. */
const STATUS_BITS = STATUS_OBF | STATUS_SYS | STATUS_CMD | STATUS_UNLOCKED;

/** What the guest can observe of the controller, as plain data (file form: state_json.ts). */
export interface I8042State {
  /** Status register (OBF, SYS, CMD/DATA, UNLOCKED). */
  status: number;
  /** Controller configuration byte (command 0x20/0x60). */
  ctr: number;
  /** Output port (command 0xD0/0xD1). */
  outp: number;
  /** Controller command waiting for its data byte at 0x60, or 0. */
  pendingCommand: number;
  /** Keyboard command waiting for its parameter byte, or 0. */
  pendingKbdCommand: number;
  /** Bytes queued for the guest at port 0x60, oldest first (at most 16). */
  outputBuffer: Uint8Array;
}

export interface I8042Options {
  /** Called when the guest pulses the CPU reset line (command 0xFE, or output port bit 0 cleared). */
  reset: () => void;
  /** Keyboard interrupt (IRQ 1). */
  kbdInterrupt?: InterruptLine;
}

export class I8042 implements BusDevice {
  private readonly onReset: () => void;
  private readonly kbdInterrupt: InterruptLine;

  private status = STATUS_SYS | STATUS_UNLOCKED;
  private ctr = CTR_KBDINT | CTR_SYS | CTR_XLATE;
  /** Output port: bit 0 = CPU reset line (active low), bit 1 = A20. */
  private outp = 0x03;
  /** Controller command awaiting a data byte at port 0x60, or 0. */
  private pendingCommand = 0;
  /** Keyboard command awaiting a parameter byte, or 0. */
  private pendingKbdCommand = 0;

  private readonly buf = new Uint8Array(BUF_SIZE);
  private bufHead = 0;
  private bufCount = 0;

  /** Times the reset line was pulsed. */
  resets = 0;
  /** Accesses to undecoded offsets or with a width other than 1. */
  badAccesses = 0;
  /** Bytes dropped because the output buffer was full. */
  droppedBytes = 0;

  constructor(options: I8042Options) {
    this.onReset = options.reset;
    this.kbdInterrupt = options.kbdInterrupt ?? NO_INTERRUPT;
  }

  read(offset: number, data: Uint8Array): void {
    if (data.length !== 1 || (offset !== OFS_DATA && offset !== OFS_STATUS)) {
      this.badAccesses++;
      data.fill(0xff);
      return;
    }
    if (offset === OFS_STATUS) {
      data[0] = this.status;
      return;
    }
    data[0] = this.pop();
  }

  write(offset: number, data: Uint8Array): void {
    if (data.length !== 1 || (offset !== OFS_DATA && offset !== OFS_STATUS)) {
      this.badAccesses++;
      return;
    }
    const v = data[0]!;
    if (offset === OFS_STATUS) {
      this.status |= STATUS_CMD;
      this.command(v);
    } else {
      this.status &= ~STATUS_CMD;
      this.dataWrite(v);
    }
  }

  /** Queue the make/break scancodes (set 1, translated) of Ctrl+Alt+Del; false if no room. */
  sendCtrlAltDel(): boolean {
    // Set-1 scancodes: Ctrl 1D, Alt 38, Del E0 53; then the releases.
    const seq = [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];
    if (BUF_SIZE - this.bufCount < seq.length) return false;
    for (const b of seq) this.push(b);
    return true;
  }

  /** Queue raw keyboard bytes (scancodes) for the guest; returns how many were accepted. */
  injectKeyboardBytes(bytes: Uint8Array): number {
    let n = 0;
    while (n < bytes.length && this.bufCount < BUF_SIZE) this.push(bytes[n++]!);
    return n;
  }

  saveState(): I8042State {
    const outputBuffer = new Uint8Array(this.bufCount);
    for (let i = 0; i < this.bufCount; i++) outputBuffer[i] = this.buf[(this.bufHead + i) % BUF_SIZE]!;
    return {
      status: this.status, ctr: this.ctr, outp: this.outp,
      pendingCommand: this.pendingCommand, pendingKbdCommand: this.pendingKbdCommand, outputBuffer,
    };
  }

  /**
   * Take over a saved state (checked first: a StateFormatError names the field this controller
   * could never hold). No interrupt is raised: IRQ 1 is an edge the saved controller already gave
   * (it is in the interrupt controller's saved state).
   */
  restoreState(s: I8042State): void {
    const c = new StateCheck('i8042 state');
    c.object('', s);
    const status = c.bits('status', s.status, STATUS_BITS, 'the status register');
    c.uint('ctr', s.ctr, 0xff);
    c.uint('outp', s.outp, 0xff);
    const cmd = c.uint('pendingCommand', s.pendingCommand, 0xff);
    if (cmd !== 0 && !DATA_COMMANDS.includes(cmd)) c.fail('pendingCommand', `${hex8(cmd)} is not a controller command that takes a data byte`);
    const kbd = c.uint('pendingKbdCommand', s.pendingKbdCommand, 0xff);
    if (kbd !== 0 && !KBD_PARAM_COMMANDS.includes(kbd)) c.fail('pendingKbdCommand', `${hex8(kbd)} is not a keyboard command that takes a parameter`);
    const out = c.bytes('outputBuffer', s.outputBuffer, 0, BUF_SIZE);
    if (((status & STATUS_OBF) !== 0) !== (out.length > 0)) {
      c.fail('status', `OBF is ${(status & STATUS_OBF) !== 0 ? 'set' : 'clear'} with ${out.length} bytes in the output buffer`);
    }
    this.status = status;
    this.ctr = s.ctr;
    this.outp = s.outp;
    this.pendingCommand = cmd;
    this.pendingKbdCommand = kbd;
    this.buf.fill(0);
    this.buf.set(out, 0);
    this.bufHead = 0;
    this.bufCount = out.length;
  }

  private command(cmd: number): void {
    this.pendingCommand = 0;
    switch (cmd) {
      case CMD_READ_CTR:
        this.respond(this.ctr);
        return;
      case CMD_WRITE_CTR:
      case CMD_WRITE_OUTP:
      case CMD_KBD_LOOP:
      case CMD_AUX_LOOP:
      case CMD_AUX_SEND:
        this.pendingCommand = cmd;
        return;
      case CMD_AUX_DISABLE:
        this.ctr |= CTR_AUXDIS;
        return;
      case CMD_AUX_ENABLE:
        this.ctr &= ~CTR_AUXDIS;
        return;
      case CMD_AUX_TEST:
        this.respond(AUX_TEST_NO_PORT);
        return;
      case CMD_SELF_TEST:
        this.status |= STATUS_SYS;
        this.respond(SELF_TEST_OK);
        return;
      case CMD_KBD_TEST:
        this.respond(0x00);
        return;
      case CMD_KBD_DISABLE:
        this.ctr |= CTR_KBDDIS;
        return;
      case CMD_KBD_ENABLE:
        this.ctr &= ~CTR_KBDDIS;
        return;
      case CMD_READ_INPUT:
        // Bit 7: keyboard not inhibited (keylock open).
        this.respond(0x80);
        return;
      case CMD_READ_OUTP:
        this.respond(this.outp);
        return;
      default:
        // 0xF0-0xFF: pulse output port lines whose mask bit is 0 for ~6 us.
        // Bit 0 is the CPU reset line.
        if ((cmd & 0xf0) === 0xf0 && (cmd & 0x01) === 0) this.pulseReset();
        return;
    }
  }

  private dataWrite(v: number): void {
    const cmd = this.pendingCommand;
    if (cmd !== 0) {
      this.pendingCommand = 0;
      switch (cmd) {
        case CMD_WRITE_CTR:
          this.ctr = v;
          this.status = (this.status & ~STATUS_SYS) | (v & CTR_SYS);
          return;
        case CMD_WRITE_OUTP:
          this.outp = v;
          if ((v & 0x01) === 0) this.pulseReset();
          return;
        case CMD_KBD_LOOP:
        case CMD_AUX_LOOP:
          // Aux loopback is echoed as keyboard data (no AUXDATA flag): Linux's
          // i8042_check_aux then treats the aux port as absent.
          this.push(v);
          return;
        case CMD_AUX_SEND:
          return; // no aux device
        default:
          return;
      }
    }
    this.keyboardCommand(v);
  }

  /** A byte written to 0x60 with no controller command pending goes to the keyboard. */
  private keyboardCommand(v: number): void {
    const param = this.pendingKbdCommand;
    if (param !== 0) {
      this.pendingKbdCommand = 0;
      this.push(KBD_ACK);
      // 0xF0 with parameter 0 reports the current scancode set (2).
      if (param === 0xf0 && v === 0) this.push(0x02);
      return;
    }
    switch (v) {
      case 0xed: // set LEDs
      case 0xf0: // get/set scancode set
      case 0xf3: // set typematic rate
        this.pendingKbdCommand = v;
        this.push(KBD_ACK);
        return;
      case 0xee: // echo
        this.push(0xee);
        return;
      case 0xf2: // get ID: MF2 keyboard
        this.push(KBD_ACK);
        this.push(0xab);
        this.push(0x83);
        return;
      case 0xff: // reset: ACK then BAT passed
        this.flush();
        this.push(KBD_ACK);
        this.push(0xaa);
        return;
      default:
        this.push(KBD_ACK);
        return;
    }
  }

  private pulseReset(): void {
    this.resets++;
    this.onReset();
  }

  /** Controller response: becomes the next byte read. */
  private respond(v: number): void {
    this.flush();
    this.push(v);
  }

  private flush(): void {
    this.bufHead = 0;
    this.bufCount = 0;
    this.status &= ~(STATUS_OBF | STATUS_AUXDATA);
  }

  private push(v: number): void {
    if (this.bufCount === BUF_SIZE) {
      this.droppedBytes++;
      return;
    }
    this.buf[(this.bufHead + this.bufCount) % BUF_SIZE] = v;
    this.bufCount++;
    if (this.bufCount === 1) this.headBecameReadable();
  }

  private pop(): number {
    if (this.bufCount === 0) return 0;
    const v = this.buf[this.bufHead]!;
    this.bufHead = (this.bufHead + 1) % BUF_SIZE;
    this.bufCount--;
    this.status &= ~(STATUS_OBF | STATUS_AUXDATA);
    if (this.bufCount > 0) this.headBecameReadable();
    return v;
  }

  private headBecameReadable(): void {
    this.status |= STATUS_OBF;
    if ((this.ctr & CTR_KBDINT) !== 0) this.kbdInterrupt.trigger();
  }
}
