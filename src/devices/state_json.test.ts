// Saved state of the legacy devices: each one is driven through its ports as a guest does into a
// state worth saving, saved, written to JSON text and read back, restored into a freshly built
// device, and then both are probed with the same sequence of guest accesses (reads have side
// effects, so equal answers all the way down mean equal state) and host events. Then: documents
// that are malformed or do not fit the VM give a StateFormatError naming the field, and a fuzzer
// throws mutated documents at parse + restore (nothing else may come out).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createPioBus, type Bus } from './bus.js';
import { CountingInterrupt } from './interrupt.js';
import {
  COM1, FCR_CLEAR_RCVR, FCR_ENABLE_FIFO, IER_MSI, IER_RDI, IER_RLSI, IER_THRI, LCR_DLAB, LSR_DR, MCR_DTR, MCR_LOOP,
  MCR_OUT2, MCR_RTS, Serial, UART_DLL, UART_DLM, UART_FCR, UART_IER, UART_IIR, UART_LCR, UART_LSR, UART_MCR, UART_MSR,
  UART_RX, UART_SCR, UART_TX,
} from './serial.js';
import { I8042, I8042_BASE, I8042_LENGTH } from './i8042.js';
import { Cmos, CMOS_BASE, CMOS_LENGTH } from './cmos.js';
import { AcpiGedDevice, AcpiPowerDevice, DEFAULT_ACPI_POWER_LAYOUT } from './acpi_power.js';
import {
  legacyDeviceStateFromJson, legacyDeviceStateToJson, parseLegacyDeviceState, restoreLegacyDevices, saveLegacyDevices,
  stringifyLegacyDeviceState, type LegacyDeviceState,
} from './state_json.js';
import { StateFormatError, type Json } from '../snapshot/codec.js';
import { Prng, seedFromEnv, countFromEnv } from '../testing/prng.js';
import { mutateJson, stateErrorOf } from '../testing/json_fuzz.js';

const MiB = 1024 * 1024;
const ACPI_PORT = DEFAULT_ACPI_POWER_LAYOUT.base;

/** One VM's legacy devices on a port bus, with what they tell the host. */
class Rig {
  readonly pio: Bus = createPioBus();
  readonly serialIrq = new CountingInterrupt();
  readonly kbdIrq = new CountingInterrupt();
  readonly gedIrq = new CountingInterrupt();
  readonly tx: number[] = [];
  resets = 0;
  shutdowns = 0;
  hostMs: number;
  readonly serial: Serial;
  readonly i8042: I8042;
  readonly cmos: Cmos;
  readonly acpi: AcpiPowerDevice;
  readonly ged: AcpiGedDevice;
  constructor(o: { hostMs?: number; memBelow4g?: number; rxCapacity?: number } = {}) {
    this.hostMs = o.hostMs ?? Date.UTC(2026, 11, 2, 3, 4, 5, 600);
    this.serial = new Serial({ interrupt: this.serialIrq, sink: (b) => this.tx.push(...b), inputCapacity: o.rxCapacity ?? 8 });
    this.i8042 = new I8042({ reset: () => this.resets++, kbdInterrupt: this.kbdIrq });
    this.cmos = new Cmos({ memBelow4g: o.memBelow4g ?? 512 * MiB, now: () => this.hostMs });
    this.acpi = new AcpiPowerDevice({ onShutdown: () => this.shutdowns++, onReset: () => this.resets++ });
    this.ged = new AcpiGedDevice(this.gedIrq);
    this.pio.insert(this.serial, COM1.base, 8);
    this.pio.insert(this.i8042, I8042_BASE, I8042_LENGTH);
    this.pio.insert(this.cmos, CMOS_BASE, CMOS_LENGTH);
    this.pio.insert(this.acpi, ACPI_PORT, 1);
  }
  out(port: number, v: number): void { this.pio.write(port, Uint8Array.of(v)); }
  in(port: number): number { const d = new Uint8Array(1); this.pio.read(port, d); return d[0]!; }
  devices() { return { serial: this.serial, i8042: this.i8042, cmos: this.cmos, acpiPower: this.acpi, ged: this.ged }; }
}

const com = (reg: number) => COM1.base + reg;

/** Drive every device into a state with something in each part. */
function busyRig(): Rig {
  const r = new Rig();
  // UART: 115200 8N1 through the divisor latch, FIFOs on (trigger 14), loopback to fill the
  // receive FIFO past its end (an overrun error) and to change the modem lines (MSR deltas),
  // a partial drain so the FIFO wraps, host input on top, every interrupt enabled.
  r.out(com(UART_LCR), LCR_DLAB | 0x03);
  r.out(com(UART_DLL), 0x01);
  r.out(com(UART_DLM), 0x00);
  r.out(com(UART_LCR), 0x03);
  r.out(com(UART_FCR), 0xc0 | FCR_CLEAR_RCVR | FCR_ENABLE_FIFO);
  r.out(com(UART_MCR), MCR_LOOP | MCR_RTS);
  for (let i = 0; i < 9; i++) r.out(com(UART_TX), 0x41 + i);
  r.out(com(UART_MCR), MCR_DTR | MCR_RTS | MCR_OUT2);
  for (let i = 0; i < 3; i++) r.in(com(UART_RX));
  assert.equal(r.serial.enqueueInput(new TextEncoder().encode('xyz!')), 3, 'the FIFO takes 3 more');
  r.out(com(UART_IER), IER_RDI | IER_THRI | IER_RLSI | IER_MSI);
  r.out(com(UART_SCR), 0x5a);
  assert.ok(r.serial.interruptPending);
  assert.equal(r.serial.pendingInput, 8);
  // i8042: GETID's answer queued (FA AB 83), set-LEDs waiting for its parameter, then a
  // controller command (write CTR) waiting for its data byte.
  r.out(0x60, 0xf2);
  r.out(0x60, 0xed);
  r.out(0x64, 0x60);
  // CMOS: binary 24 h mode, the guest sets its clock (17 h, year 2030), an alarm, NVRAM bytes,
  // Status A, and leaves the index at 0x0e with NMIs disabled.
  const cmos = (reg: number, v: number) => { r.out(0x70, reg); r.out(0x71, v); };
  cmos(0x0b, 0x06);
  cmos(0x04, 17);
  cmos(0x09, 30);
  cmos(0x01, 0x33);
  cmos(0x40, 0xab);
  cmos(0x7f, 0xcd);
  cmos(0x0a, 0x2f);
  r.out(0x70, 0x80 | 0x0e);
  r.out(0x71, 0x77);
  // GED: a power button press the guest has not read yet.
  r.ged.powerButton();
  return r;
}

/** What a guest sees (and what the host gets) over a fixed sequence of accesses; reads consume state. */
function probe(r: Rig): Json {
  const seen: Json[] = [];
  const lvl = () => (r.serial.interruptPending ? 1 : 0);
  r.serialIrq.take(); r.kbdIrq.take(); r.gedIrq.take();
  // UART: every register (IIR, LSR and MSR clear what they report), the divisor, then the FIFO.
  const uart: number[] = [lvl()];
  for (const reg of [UART_IIR, UART_LCR, UART_MCR, UART_SCR, UART_IER, UART_IIR, UART_MSR, UART_MSR, UART_IIR, UART_LSR, UART_IIR]) uart.push(r.in(com(reg)), lvl());
  const lcr = r.in(com(UART_LCR));
  r.out(com(UART_LCR), lcr | LCR_DLAB);
  uart.push(r.in(com(UART_DLL)), r.in(com(UART_DLM)), r.in(com(UART_IER)));
  r.out(com(UART_LCR), lcr);
  for (let n = 0; n < 20 && (r.in(com(UART_LSR)) & LSR_DR) !== 0; n++) uart.push(r.in(com(UART_IIR)), r.in(com(UART_RX)), lvl());
  uart.push(r.in(com(UART_IIR)), lvl(), r.in(com(UART_IIR)), lvl());
  uart.push(r.serial.enqueueInput(Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8, 9)), lvl());
  r.out(com(UART_TX), 0x42);
  uart.push(r.in(com(UART_IIR)), lvl(), r.serialIrq.take());
  seen.push(uart, r.tx.splice(0));
  // i8042: status, the queued bytes, the pending CTR write and LED parameter, the CTR read back.
  const kbd: number[] = [r.in(0x64)];
  for (let n = 0; n < 20 && (r.in(0x64) & 1) !== 0; n++) kbd.push(r.in(0x60), r.in(0x64));
  r.out(0x60, 0x65); // the CTR byte for the pending 0x60 command
  r.out(0x60, 0x02); // the LED parameter: ACK
  kbd.push(r.in(0x64), r.in(0x60), r.in(0x64));
  r.out(0x64, 0x20);
  kbd.push(r.in(0x60), r.kbdIrq.take(), r.resets);
  seen.push(kbd);
  // CMOS: the data port at the index left by the guest, then all 128 registers.
  const cmos: number[] = [r.in(0x71), r.cmos.nmiDisabled ? 1 : 0];
  for (let reg = 0; reg < 128; reg++) { r.out(0x70, reg); cmos.push(r.in(0x71)); }
  seen.push(cmos);
  // ACPI: sleep status reads 0; GED: the latched events, then none.
  const d = new Uint8Array(1);
  r.ged.read(0, d);
  const ged = d[0]!;
  r.ged.read(0, d);
  seen.push([r.in(ACPI_PORT), ged, d[0]!, r.gedIrq.take()]);
  return seen;
}

test('legacy devices: save, JSON text, restore into fresh devices: the guest sees the same and they go on alike', () => {
  const a = busyRig();
  const saved = saveLegacyDevices(a.devices());
  const text = stringifyLegacyDeviceState(saved);
  // The host clock has moved on by an hour and the new VMM's memory size bytes differ: the guest
  // still reads the RTC it had (running on from the save) and the CMOS bytes it had.
  const b = new Rig({ hostMs: a.hostMs + 3_600_000, memBelow4g: 2048 * MiB });
  restoreLegacyDevices(b.devices(), parseLegacyDeviceState(text));
  assert.deepEqual(saveLegacyDevices(b.devices()), saved, 'the restored devices save what was restored');
  assert.equal(b.serial.interruptPending, a.serial.interruptPending, 'INTR level re-derived');
  assert.equal(b.serialIrq.count + b.kbdIrq.count + b.gedIrq.count, 0, 'a restore raises no interrupt edge');

  const fresh = probe(new Rig());
  const pa = probe(a);
  assert.notDeepEqual(fresh, pa, 'the probe tells a busy VM from a fresh one');
  assert.deepEqual(probe(b), pa);
  // Both clocks move on alike (61 s later, in binary mode: seconds and minutes change).
  a.hostMs += 61_000;
  b.hostMs += 61_000;
  const later = probe(a);
  assert.deepEqual(probe(b), later);
  assert.notDeepEqual((later as Json[])[2], (pa as Json[])[2], 'the RTC has moved');
  // And a device-changing event after the restore: the power/reset registers act on the new VMM.
  b.out(ACPI_PORT, 1);
  b.out(ACPI_PORT, 0x20 | (5 << 2));
  assert.deepEqual([b.resets, b.shutdowns], [1, 1]);
});

test('UART: the state keeps the FIFO bytes in order across a wrapped ring, the divisor and a pending THRE interrupt', () => {
  const a = busyRig();
  const s = saveLegacyDevices(a.devices()).serial!;
  assert.deepEqual([...s.rxFifo], [0x44, 0x45, 0x46, 0x47, 0x48, 0x78, 0x79, 0x7a], 'loopback bytes D..H, then host input xyz');
  assert.deepEqual([s.dll, s.dlm, s.lcr, s.fcr, s.scr], [0x01, 0x00, 0x03, 0xc1, 0x5a]);
  assert.equal(s.thrPending, true);
  assert.notEqual(s.lsrErrors, 0, 'overrun pending');
  assert.notEqual(s.msrDelta, 0, 'modem deltas pending');
  // Values a guest wrote but a 16550A does not keep are not in the state (FCR clear bits, IER 4-7).
  const b = new Rig();
  b.out(com(UART_IER), 0xff);
  b.out(com(UART_FCR), 0xff);
  const sb = b.serial.saveState();
  assert.deepEqual([sb.ier, sb.fcr], [0x0f, 0xc1]);
});

const errorOf = stateErrorOf;

type Edit = (d: { [k: string]: Json }) => void;
const b64 = (bytes: number[]) => Buffer.from(bytes).toString('base64');
const obj = (j: Json) => j as { [k: string]: Json };

test('legacy device state: malformed documents and states that do not fit the VM are refused, naming the field', () => {
  const base = stringifyLegacyDeviceState(saveLegacyDevices(busyRig().devices()));
  const cases: Array<[string, Edit, string, RegExp]> = [
    ['newer version', (d) => { d.version = 2; }, 'version', /written by a newer Stratovisor; this one reads version 1/],
    ['other format', (d) => { d.format = 'stratovisor-hypervisor-state'; }, 'format', /expected "stratovisor-legacy-device-state"/],
    ['missing device', (d) => { delete d.ged; }, 'ged', /missing/],
    ['unknown field', (d) => { d.com2 = null; }, 'com2', /unknown field/],
    ['IER bit 4', (d) => { obj(d.serial!).ier = 0x10; }, 'serial.ier', /bits 0x10 of 0x10 are never set in IER/],
    ['byte out of range', (d) => { obj(d.serial!).lcr = 256; }, 'serial.lcr', /an integer 0\.\.255, got 256/],
    ['FIFO past capacity', (d) => { obj(d.serial!).rxFifo = b64([1, 2, 3, 4, 5, 6, 7, 8, 9]); }, 'serial.rxFifo', /expected 0\.\.8 bytes, got 9/],
    ['other FIFO size', (d) => { obj(d.serial!).rxCapacity = 16; }, 'serial.rxCapacity', /receive FIFO holds 16 bytes, this UART's 8/],
    ['modem lines', (d) => { obj(d.serial!).msrStatus = 0x10; }, 'serial.msrStatus', /the state has 0x10, this UART's modem lines give 0xb0/],
    ['trigger, FIFO off', (d) => { obj(d.serial!).fcr = 0xc0; }, 'serial.fcr', /trigger level \(0xc0\) with the FIFOs disabled/],
    ['THRE not a boolean', (d) => { obj(d.serial!).thrPending = 1; }, 'serial.thrPending', /expected true or false, got 1/],
    ['OBF without bytes', (d) => { obj(d.i8042!).outputBuffer = ''; }, 'i8042.status', /OBF is set with 0 bytes in the output buffer/],
    ['17 bytes queued', (d) => { obj(d.i8042!).outputBuffer = b64(new Array<number>(17).fill(0xfa)); }, 'i8042.outputBuffer', /expected base64 of 0\.\.16 bytes, got 17 bytes/],
    ['bad pending command', (d) => { obj(d.i8042!).pendingCommand = 0x20; }, 'i8042.pendingCommand', /0x20 is not a controller command that takes a data byte/],
    ['bad keyboard command', (d) => { obj(d.i8042!).pendingKbdCommand = 0xf2; }, 'i8042.pendingKbdCommand', /0xf2 is not a keyboard command/],
    ['index with NMI bit', (d) => { obj(d.cmos!).index = 0x80; }, 'cmos.index', /an integer 0\.\.127, got 128/],
    ['clock byte stored', (d) => { const n = Buffer.from(obj(d.cmos!).nvram as string, 'base64'); n[0] = 0x59; obj(d.cmos!).nvram = n.toString('base64'); }, 'cmos.nvram[0x00]', /not storage/],
    ['127 NVRAM bytes', (d) => { obj(d.cmos!).nvram = b64(new Array<number>(127).fill(0)); }, 'cmos.nvram', /expected base64 of 128 bytes, got 127 bytes/],
    ['RTC past 9999', (d) => { obj(d.cmos!).rtcTimeMs = 253402300800000; }, 'cmos.rtcTimeMs', /an integer -62167219200000\.\.253402300799999/],
    ['other ACPI port', (d) => { obj(obj(d.acpiPower!).layout!).base = 0x600; }, 'acpiPower.layout.base', /the saved VM's FADT says 1536, this device decodes 960/],
    ['GED events', (d) => { obj(d.ged!).pending = -1; }, 'ged.pending', /an integer 0\.\.255, got -1/],
    ['device absent in the state', (d) => { d.i8042 = null; }, 'i8042', /missing: this VM has the device/],
  ];
  for (const [name, change, field, message] of cases) {
    const d = JSON.parse(base) as { [k: string]: Json };
    change(d);
    const e = errorOf(() => restoreLegacyDevices(new Rig().devices(), legacyDeviceStateFromJson(d)));
    assert.equal(e.field, field, `${name}: ${e.message}`);
    assert.match(e.message, message, name);
    assert.ok(e.message.startsWith(`legacy device state: ${field}: `), e.message);
  }
  // A device the VM lacks; text that is not JSON.
  const noGed = { ...new Rig().devices(), ged: null };
  assert.equal(errorOf(() => restoreLegacyDevices(noGed, parseLegacyDeviceState(base))).field, 'ged');
  assert.match(errorOf(() => parseLegacyDeviceState(base.slice(0, 40))).message, /^legacy device state: not JSON/);
  // Each device's own restore names its document when used alone.
  const s = parseLegacyDeviceState(base);
  const small = new Serial({ inputCapacity: 4 });
  assert.match(errorOf(() => small.restoreState(s.serial!)).message, /^serial state: rxCapacity: /);
  assert.match(errorOf(() => new Cmos({ memBelow4g: 0 }).restoreState({ ...s.cmos!, nvram: new Uint8Array(3) })).message, /^CMOS state: nvram: expected 128 bytes, got 3$/);
});

test('legacy device state fuzz: mutated documents only ever give a StateFormatError; what is accepted restores and runs', () => {
  const seed = seedFromEnv('STV_FUZZ_SEED', 0x5eed1e9);
  const cases = countFromEnv('STV_FUZZ_CASES', 3000);
  const p = new Prng(seed);
  const base = legacyDeviceStateToJson(saveLegacyDevices(busyRig().devices()));
  const text = JSON.stringify(base);
  let rejected = 0;
  let accepted = 0;
  const fields = new Set<string>();
  for (let i = 0; i < cases; i++) {
    const doc = structuredClone(base);
    mutateJson(doc, p);
    let s: LegacyDeviceState;
    const r = new Rig();
    try {
      s = legacyDeviceStateFromJson(doc);
      restoreLegacyDevices(r.devices(), s);
    } catch (e) {
      if (!(e instanceof StateFormatError)) throw new Error(`seed ${seed} case ${i}: ${String(e)} instead of a StateFormatError`, { cause: e });
      assert.ok(e.message.length < 400, e.message.slice(0, 100));
      fields.add(e.field.replace(/\[\w+\]/g, '[]'));
      rejected++;
      continue;
    }
    // Accepted: it saves back to what it restored, and the guest can use the devices.
    assert.deepEqual(saveLegacyDevices(r.devices()), s);
    probe(r);
    accepted++;
  }
  // Truncated text.
  for (let i = 0; i < 300; i++) {
    try {
      restoreLegacyDevices(new Rig().devices(), parseLegacyDeviceState(text.slice(0, p.int(text.length))));
    } catch (e) {
      if (!(e instanceof StateFormatError)) throw new Error(`seed ${seed} truncation ${i}: ${String(e)}`, { cause: e });
    }
  }
  console.log(`# fuzz seed ${seed}: ${rejected} rejected (${fields.size} distinct fields), ${accepted} accepted and run`);
  assert.ok(rejected > cases / 2, 'most mutations are refused');
  // With the default budget (any seed) the devices' own checks are reached, not only the codecs'.
  if (cases >= 1000) assert.ok(fields.has('serial.rxFifo') && fields.has('i8042.status'), `restore checks reached: ${[...fields].join(', ')}`);
});
