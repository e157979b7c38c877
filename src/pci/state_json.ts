// The PCI part of a VM's saved state (segment.ts PciState: each segment's functions with their
// configuration space, BARs and MSI-X; the 0xCF8 CONFIG_ADDRESS latches) and its file form:
// versioned JSON through the strict codecs of src/snapshot/codec.ts. A malformed document is a
// StateFormatError naming the field (`PCI state: segments[0].functions[1].msix.pba: …`), as is
// one that does not fit the VM (restorePciState). docs/device-state.md says what is saved.

import {
  array, bool, bytes, decodeVersioned, fail, literal, nullable, parseJsonText, struct, u32, u64, u8,
  type Codec, type Json,
} from '../snapshot/codec.js';
import { PCI_SLOTS, type PciFunctionState, type PciRootState } from './bus.js';
import { PCIE_CONFIG_SPACE_SIZE, PCI_CONFIG_SPACE_SIZE, type PciBarState, type PciConfigurationState } from './config.js';
import { MSIX_ENTRY_SIZE, MSIX_MAX_VECTORS, type MsixState } from './msix.js';
import type { PciState } from './segment.js';

export const PCI_STATE_FORMAT = 'stratovisor-pci-state';
/** Bump when the meaning or shape of a field changes; readers refuse other versions by name. */
export const PCI_STATE_VERSION = 1;

/** A guest-physical address below 2^52 (syncBars' limit) as "0x…", a number in memory. */
const address: Codec<number> = {
  enc: (v) => u64.enc(BigInt(v)),
  dec(j, path) {
    const v = u64.dec(j, path);
    if (v >= 2n ** 52n) fail(path, 'an address below 0x10000000000000', j);
    return Number(v);
  },
};

/** A BAR size: a power of two 16..2^32 (config.ts addMemoryBar). */
const barSize: Codec<number> = {
  enc: (v) => v,
  dec(j, path) {
    if (typeof j !== 'number' || !Number.isInteger(j) || j < 16 || j > 2 ** 32 || 2 ** Math.round(Math.log2(j)) !== j) fail(path, 'a power of two 16..4294967296', j);
    return j;
  },
};

const bar = struct<PciBarState>({ index: u8, size: barSize, is64: bool, prefetch: bool, addr: address });

export const pciConfigurationStateCodec: Codec<PciConfigurationState> = struct<PciConfigurationState>({
  bytes: bytes(PCI_CONFIG_SPACE_SIZE, PCIE_CONFIG_SPACE_SIZE),
  bars: array(bar, 0, 6),
});

export const msixStateCodec: Codec<MsixState> = struct<MsixState>({
  vectors: u32,
  table: bytes(MSIX_ENTRY_SIZE, MSIX_MAX_VECTORS * MSIX_ENTRY_SIZE),
  pba: bytes(8, MSIX_MAX_VECTORS / 8),
  enabled: bool,
  functionMasked: bool,
});

const pciFunction = struct<PciFunctionState>({
  slot: u8,
  config: nullable(pciConfigurationStateCodec),
  msix: nullable(msixStateCodec),
});

export const pciRootStateCodec: Codec<PciRootState> = struct<PciRootState>({ functions: array(pciFunction, 1, PCI_SLOTS) });

interface Document extends PciState {
  format: typeof PCI_STATE_FORMAT;
  version: typeof PCI_STATE_VERSION;
}

const documentCodec = struct<Document>({
  format: literal(PCI_STATE_FORMAT),
  version: literal(PCI_STATE_VERSION),
  segments: array(pciRootStateCodec, 1, 16),
  configAddress: array(u32, 0, 4096),
});

const DOCUMENT = 'PCI state';

export function pciStateToJson(s: PciState): Json {
  return documentCodec.enc({ format: PCI_STATE_FORMAT, version: PCI_STATE_VERSION, ...s });
}

/** Parse a JSON value (from JSON.parse). Throws StateFormatError naming the bad field. */
export function pciStateFromJson(j: unknown): PciState {
  const d = decodeVersioned(j, DOCUMENT, PCI_STATE_FORMAT, PCI_STATE_VERSION, documentCodec);
  return { segments: d.segments, configAddress: d.configAddress };
}

export function parsePciState(text: string): PciState {
  return pciStateFromJson(parseJsonText(text, DOCUMENT));
}

export function stringifyPciState(s: PciState): string {
  return JSON.stringify(pciStateToJson(s));
}
