// The legacy devices' saved state (COM1 UART, i8042, CMOS/RTC, ACPI power/reset, GED) and its
// file form: versioned JSON through the strict codecs of src/snapshot/codec.ts, so a malformed
// document is a StateFormatError naming the field (`legacy device state: serial.rxFifo: …`), and
// so is a well-formed one that does not fit the VM it is restored into (each device's restoreState).
// docs/device-state.md says what is saved and what is not.

import {
  bool, bytes, decodeVersioned, int, literal, nullable, parseJsonText, struct, u16, u32, u8,
  type Codec, type Json,
} from '../snapshot/codec.js';
import type { AcpiGedDevice, AcpiGedState, AcpiPowerDevice, AcpiPowerLayout, AcpiPowerState } from './acpi_power.js';
import { RTC_TIME_MAX_MS, RTC_TIME_MIN_MS, CMOS_SIZE, type Cmos, type CmosState } from './cmos.js';
import type { I8042, I8042State } from './i8042.js';
import type { Serial, SerialState } from './serial.js';
import { StateCheck, underField } from './state.js';

export const LEGACY_DEVICE_STATE_FORMAT = 'stratovisor-legacy-device-state';
/** Bump when the meaning or shape of a field changes; readers refuse other versions by name. */
export const LEGACY_DEVICE_STATE_VERSION = 1;

/** Each legacy device's state; null for a device the VM does not have. */
export interface LegacyDeviceState {
  /** COM1. */
  serial: SerialState | null;
  i8042: I8042State | null;
  cmos: CmosState | null;
  acpiPower: AcpiPowerState | null;
  ged: AcpiGedState | null;
}

/** The devices of a VM (absent or null: the VM has none). */
export interface LegacyDevices {
  serial?: Serial | null;
  i8042?: I8042 | null;
  cmos?: Cmos | null;
  acpiPower?: AcpiPowerDevice | null;
  ged?: AcpiGedDevice | null;
}

// ---------------------------------------------------------------------------------------------
// The schema (field names are those of the devices' state types)

/** Receive FIFO sizes a state may carry (the VMM uses 64; the restore wants the device's own). */
const MAX_RX_CAPACITY = 1 << 20;

export const serialStateCodec: Codec<SerialState> = struct<SerialState>({
  ier: u8, lcr: u8, mcr: u8, fcr: u8, scr: u8, dll: u8, dlm: u8,
  lsrErrors: u8, msrDelta: u8, msrStatus: u8, thrPending: bool,
  rxCapacity: int(1, MAX_RX_CAPACITY), rxFifo: bytes(0, MAX_RX_CAPACITY),
});

export const i8042StateCodec: Codec<I8042State> = struct<I8042State>({
  status: u8, ctr: u8, outp: u8, pendingCommand: u8, pendingKbdCommand: u8, outputBuffer: bytes(0, 16),
});

export const cmosStateCodec: Codec<CmosState> = struct<CmosState>({
  index: int(0, 0x7f), nmiDisabled: bool, nvram: bytes(CMOS_SIZE, CMOS_SIZE), rtcTimeMs: int(RTC_TIME_MIN_MS, RTC_TIME_MAX_MS),
});

export const acpiPowerStateCodec: Codec<AcpiPowerState> = struct<AcpiPowerState>({
  layout: struct<AcpiPowerLayout>({
    base: u32, length: u16, sleepControlOffset: u16, sleepStatusOffset: u16, resetOffset: u16, resetValue: u8, s5SleepType: u8,
  }),
});

export const acpiGedStateCodec: Codec<AcpiGedState> = struct<AcpiGedState>({ pending: u8 });

interface Document extends LegacyDeviceState {
  format: typeof LEGACY_DEVICE_STATE_FORMAT;
  version: typeof LEGACY_DEVICE_STATE_VERSION;
}

const documentCodec = struct<Document>({
  format: literal(LEGACY_DEVICE_STATE_FORMAT),
  version: literal(LEGACY_DEVICE_STATE_VERSION),
  serial: nullable(serialStateCodec),
  i8042: nullable(i8042StateCodec),
  cmos: nullable(cmosStateCodec),
  acpiPower: nullable(acpiPowerStateCodec),
  ged: nullable(acpiGedStateCodec),
});

// ---------------------------------------------------------------------------------------------
// Entry points

const DOCUMENT = 'legacy device state';

export function legacyDeviceStateToJson(s: LegacyDeviceState): Json {
  return documentCodec.enc({ format: LEGACY_DEVICE_STATE_FORMAT, version: LEGACY_DEVICE_STATE_VERSION, ...s });
}

/** Parse a JSON value (from JSON.parse). Throws StateFormatError naming the bad field. */
export function legacyDeviceStateFromJson(j: unknown): LegacyDeviceState {
  const d = decodeVersioned(j, DOCUMENT, LEGACY_DEVICE_STATE_FORMAT, LEGACY_DEVICE_STATE_VERSION, documentCodec);
  return { serial: d.serial, i8042: d.i8042, cmos: d.cmos, acpiPower: d.acpiPower, ged: d.ged };
}

export function parseLegacyDeviceState(text: string): LegacyDeviceState {
  return legacyDeviceStateFromJson(parseJsonText(text, DOCUMENT));
}

export function stringifyLegacyDeviceState(s: LegacyDeviceState): string {
  return JSON.stringify(legacyDeviceStateToJson(s));
}

const KEYS = ['serial', 'i8042', 'cmos', 'acpiPower', 'ged'] as const;

/** Save every device the VM has (the VM paused: no device is being accessed). */
export function saveLegacyDevices(d: LegacyDevices): LegacyDeviceState {
  return {
    serial: d.serial ? d.serial.saveState() : null,
    i8042: d.i8042 ? d.i8042.saveState() : null,
    cmos: d.cmos ? d.cmos.saveState() : null,
    acpiPower: d.acpiPower ? d.acpiPower.saveState() : null,
    ged: d.ged ? d.ged.saveState() : null,
  };
}

/**
 * Restore into freshly built devices. The VM must have exactly the devices the state has; a
 * StateFormatError of the legacy device state names the field that does not fit. Devices are
 * restored in document order; one that refuses leaves those before it restored (the VM is not
 * started then).
 */
export function restoreLegacyDevices(d: LegacyDevices, s: LegacyDeviceState): void {
  const c = new StateCheck(DOCUMENT);
  c.object('', s);
  for (const k of KEYS) {
    const has = d[k] !== undefined && d[k] !== null;
    const saved = s[k] !== null && s[k] !== undefined;
    if (has !== saved) c.fail(k, has ? 'missing: this VM has the device, the state has none (expected its state, got null)' : 'the state has this device, this VM does not');
  }
  if (d.serial && s.serial) { const [dev, st] = [d.serial, s.serial]; underField('serial', DOCUMENT, () => dev.restoreState(st)); }
  if (d.i8042 && s.i8042) { const [dev, st] = [d.i8042, s.i8042]; underField('i8042', DOCUMENT, () => dev.restoreState(st)); }
  if (d.cmos && s.cmos) { const [dev, st] = [d.cmos, s.cmos]; underField('cmos', DOCUMENT, () => dev.restoreState(st)); }
  if (d.acpiPower && s.acpiPower) { const [dev, st] = [d.acpiPower, s.acpiPower]; underField('acpiPower', DOCUMENT, () => dev.restoreState(st)); }
  if (d.ged && s.ged) { const [dev, st] = [d.ged, s.ged]; underField('ged', DOCUMENT, () => dev.restoreState(st)); }
}
