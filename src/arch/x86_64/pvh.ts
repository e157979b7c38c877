// PVH direct boot of an uncompressed ELF64 vmlinux.
//
// The kernel advertises a 32-bit entry point in an ELF note (name "Xen", type
// XEN_ELFNOTE_PHYS32_ENTRY = 18, xen/include/public/elfnote.h; Linux arch/x86/platform/pvh/head.S).
// We load its PT_LOAD segments at their physical addresses (p_paddr), zero the bss part, write
// hvm_start_info (xen/include/public/arch-x86/hvm/start_info.h) and enter in 32-bit protected
// mode, paging off, with EBX = start_info address (xen docs/misc/pvh.pandoc; see regs.ts).
// Only the ELF header, program headers and notes are read into JS; segments and the initramfs go
// from the file straight into guest RAM (image_source.ts).

import type { GuestMemory } from '../../memory/guest_memory.js';
import { writeCmdline } from './cmdline.js';
import { copyImageToGuest, imageSource, readImage, type Image } from './image_source.js';
import {
  type E820Entry, e820Map, HIGH_RAM_START, initramfsAddress, lowRamEnd, PVH_INFO_START, PVH_MEMMAP_MAX_ENTRIES,
  PVH_MEMMAP_START, PVH_MODLIST_MAX, PVH_MODLIST_START,
} from './layout.js';

export class ElfImageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ElfImageError';
  }
}

export const ELF_MAGIC = 0x464c457f; // "\x7fELF" little endian
export const ELFCLASS64 = 2;
export const ELFDATA2LSB = 1;
export const EM_X86_64 = 62;
export const ET_EXEC = 2;
export const ET_DYN = 3;
export const PT_LOAD = 1;
export const PT_NOTE = 4;
export const ELF64_EHDR_SIZE = 64;
export const ELF64_PHDR_SIZE = 56;
export const XEN_ELFNOTE_PHYS32_ENTRY = 18;

export const HVM_START_MAGIC = 0x336ec578;
export const HVM_START_INFO_SIZE = 56;
export const HVM_MODLIST_ENTRY_SIZE = 32;
export const HVM_MEMMAP_ENTRY_SIZE = 24;
/** hvm_memmap_table_entry types (start_info.h); numerically equal to e820 types. */
export const XEN_HVM_MEMMAP_TYPE_RAM = 1;
export const XEN_HVM_MEMMAP_TYPE_RESERVED = 2;
export const XEN_HVM_MEMMAP_TYPE_ACPI = 3;
export const XEN_HVM_MEMMAP_TYPE_NVS = 4;
export const XEN_HVM_MEMMAP_TYPE_UNUSABLE = 5;
export const XEN_HVM_MEMMAP_TYPE_DISABLED = 6;
export const XEN_HVM_MEMMAP_TYPE_PMEM = 7;

export interface ElfSegment {
  offset: number;
  paddr: number;
  filesz: number;
  memsz: number;
}

export interface ElfKernel {
  /** e_entry (a virtual address for vmlinux; not used for PVH). */
  entry: bigint;
  /** XEN_ELFNOTE_PHYS32_ENTRY, or undefined if the kernel has no PVH note. */
  pvhEntry: number | undefined;
  segments: ElfSegment[];
  /** One past the highest byte any PT_LOAD segment occupies in guest memory. */
  kernelEnd: number;
}

const hex = (n: number | bigint): string => `0x${n.toString(16)}`;
const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

function u64(dv: DataView, off: number, what: string): number {
  const v = dv.getBigUint64(off, true);
  if (v > MAX_SAFE) throw new ElfImageError(`ELF ${what} ${hex(v)} is out of range`);
  return Number(v);
}

/** Parse and validate an ELF64 x86-64 kernel. Segment placement in RAM is checked at load. */
export function parseElfKernel(file: Image): ElfKernel {
  const src = imageSource(file);
  const size = src.size;
  // The ELF header; program headers and notes are read one by one below.
  const image = readImage(src, 0, Math.min(size, ELF64_EHDR_SIZE));
  const dv = new DataView(image.buffer, image.byteOffset, image.byteLength);
  if (size < 4 || dv.getUint32(0, true) !== ELF_MAGIC) throw new ElfImageError('not an ELF file (no \\x7fELF magic)');
  if (size < ELF64_EHDR_SIZE) throw new ElfImageError(`truncated ELF file: ${size} bytes, the ELF64 header needs 64`);
  if (image[4] !== ELFCLASS64) throw new ElfImageError(`not a 64-bit ELF file (EI_CLASS ${image[4]})`);
  if (image[5] !== ELFDATA2LSB) throw new ElfImageError(`not a little-endian ELF file (EI_DATA ${image[5]})`);
  const type = dv.getUint16(16, true);
  if (type !== ET_EXEC && type !== ET_DYN) throw new ElfImageError(`ELF file is not an executable (e_type ${type})`);
  const machine = dv.getUint16(18, true);
  if (machine !== EM_X86_64) throw new ElfImageError(`ELF file is not for x86-64 (e_machine ${machine})`);
  const entry = dv.getBigUint64(24, true);
  const phoff = u64(dv, 32, 'e_phoff');
  const phentsize = dv.getUint16(54, true);
  const phnum = dv.getUint16(56, true);
  if (phnum === 0) throw new ElfImageError('ELF file has no program headers');
  if (phentsize < ELF64_PHDR_SIZE) throw new ElfImageError(`ELF e_phentsize ${phentsize} is smaller than 56`);
  if (phoff + phnum * phentsize > size) {
    throw new ElfImageError(`ELF program headers ${hex(phoff)}+${phnum}x${phentsize} run past the end of the ${size}-byte file`);
  }
  const segments: ElfSegment[] = [];
  const notes: Array<{ offset: number; size: number }> = [];
  let kernelEnd = 0;
  // One Elf64_Phdr at a time (its first 56 bytes: what ELF64 defines), into one small buffer.
  const ph = new Uint8Array(ELF64_PHDR_SIZE);
  const phv = new DataView(ph.buffer);
  for (let i = 0; i < phnum; i++) {
    src.read(phoff + i * phentsize, ph);
    const ptype = phv.getUint32(0, true);
    if (ptype !== PT_LOAD && ptype !== PT_NOTE) continue;
    const offset = u64(phv, 8, `segment ${i} p_offset`);
    const filesz = u64(phv, 32, `segment ${i} p_filesz`);
    if (offset + filesz > size) {
      throw new ElfImageError(`ELF segment ${i} (file ${hex(offset)}+${hex(filesz)}) runs past the end of the ${size}-byte file`);
    }
    if (ptype === PT_NOTE) {
      notes.push({ offset, size: filesz });
      continue;
    }
    const paddr = u64(phv, 24, `segment ${i} p_paddr`);
    const memsz = u64(phv, 40, `segment ${i} p_memsz`);
    if (filesz > memsz) throw new ElfImageError(`ELF segment ${i} has p_filesz ${hex(filesz)} > p_memsz ${hex(memsz)}`);
    if (paddr + memsz > 2 ** 52) throw new ElfImageError(`ELF segment ${i} ${hex(paddr)}+${hex(memsz)} is beyond the physical address space`);
    segments.push({ offset, paddr, filesz, memsz });
    kernelEnd = Math.max(kernelEnd, paddr + memsz);
  }
  if (segments.length === 0) throw new ElfImageError('ELF file has no PT_LOAD segments');
  let pvhEntry: number | undefined;
  for (const n of notes) {
    // A note segment is small (hundreds of bytes in a vmlinux); it is read only to be walked.
    const bytes = readImage(src, n.offset, n.size);
    const e = findPvhNote(new DataView(bytes.buffer), n.offset, n.size);
    if (e !== undefined) { pvhEntry = e; break; }
  }
  return { entry, pvhEntry, segments, kernelEnd };
}

/**
 * Walk Elf64_Nhdr records (namesz, descsz, type; name and desc 4-byte padded) of one PT_NOTE
 * segment: `dv` holds its bytes, `fileOffset` is where they are in the file (for messages).
 */
function findPvhNote(dv: DataView, fileOffset: number, size: number): number | undefined {
  const end = size;
  let off = 0;
  const align4 = (n: number): number => Math.ceil(n / 4) * 4; // no 32-bit bitwise overflow
  while (off + 12 <= end) {
    const namesz = dv.getUint32(off, true);
    const descsz = dv.getUint32(off + 4, true);
    const type = dv.getUint32(off + 8, true);
    const nameOff = off + 12;
    const descOff = nameOff + align4(namesz);
    const next = descOff + align4(descsz);
    if (namesz > size || descsz > size || next > end) {
      throw new ElfImageError(`malformed ELF note at file offset ${hex(fileOffset + off)} (runs past its PT_NOTE segment)`);
    }
    const isXen = namesz === 4 && dv.getUint8(nameOff) === 0x58 && dv.getUint8(nameOff + 1) === 0x65
      && dv.getUint8(nameOff + 2) === 0x6e && dv.getUint8(nameOff + 3) === 0;
    if (isXen && type === XEN_ELFNOTE_PHYS32_ENTRY) {
      if (descsz === 4) return dv.getUint32(descOff, true);
      if (descsz === 8) {
        const v = dv.getBigUint64(descOff, true);
        if (v >= 1n << 32n) throw new ElfImageError(`PVH entry point ${hex(v)} is not a 32-bit address`);
        return Number(v);
      }
      throw new ElfImageError(`XEN_ELFNOTE_PHYS32_ENTRY note has a ${descsz}-byte descriptor (expected 4 or 8)`);
    }
    off = next;
  }
  return undefined;
}

export interface StartInfoOptions {
  cmdlineAddr: number;
  rsdpAddr?: number;
  modules?: Array<{ addr: number; size: number; cmdlineAddr?: number }>;
  memmap: E820Entry[];
}

/**
 * Write hvm_start_info at PVH_INFO_START, its module list at PVH_MODLIST_START and memory map at
 * PVH_MEMMAP_START. Returns the start_info address (the value for EBX).
 */
export function writeStartInfo(mem: GuestMemory, o: StartInfoOptions): number {
  const mods = o.modules ?? [];
  if (mods.length > PVH_MODLIST_MAX) throw new ElfImageError(`too many PVH modules (${mods.length} > ${PVH_MODLIST_MAX})`);
  if (o.memmap.length > PVH_MEMMAP_MAX_ENTRIES) throw new ElfImageError(`too many memory map entries (${o.memmap.length})`);
  const mod = new Uint8Array(HVM_MODLIST_ENTRY_SIZE * Math.max(mods.length, 1));
  const mdv = new DataView(mod.buffer);
  mods.forEach((m, i) => {
    mdv.setBigUint64(i * 32, BigInt(m.addr), true);
    mdv.setBigUint64(i * 32 + 8, BigInt(m.size), true);
    mdv.setBigUint64(i * 32 + 16, BigInt(m.cmdlineAddr ?? 0), true);
  });
  if (mods.length > 0) mem.writeBytes(PVH_MODLIST_START, mod);

  const mm = new Uint8Array(HVM_MEMMAP_ENTRY_SIZE * o.memmap.length);
  const mmdv = new DataView(mm.buffer);
  o.memmap.forEach((e, i) => {
    mmdv.setBigUint64(i * 24, BigInt(e.addr), true);
    mmdv.setBigUint64(i * 24 + 8, BigInt(e.size), true);
    mmdv.setUint32(i * 24 + 16, e.type, true);
  });
  mem.writeBytes(PVH_MEMMAP_START, mm);

  const si = new Uint8Array(HVM_START_INFO_SIZE);
  const dv = new DataView(si.buffer);
  dv.setUint32(0, HVM_START_MAGIC, true);
  dv.setUint32(4, 1, true); // version 1: memmap fields valid
  dv.setUint32(8, 0, true); // flags
  dv.setUint32(12, mods.length, true);
  dv.setBigUint64(16, BigInt(mods.length > 0 ? PVH_MODLIST_START : 0), true);
  dv.setBigUint64(24, BigInt(o.cmdlineAddr), true);
  dv.setBigUint64(32, BigInt(o.rsdpAddr ?? 0), true);
  dv.setBigUint64(40, BigInt(PVH_MEMMAP_START), true);
  dv.setUint32(48, o.memmap.length, true);
  mem.writeBytes(PVH_INFO_START, si);
  return PVH_INFO_START;
}

export interface PvhLoadOptions {
  cmdline: string;
  initramfs?: Image;
  /** Guest RAM size as passed to ramRegions(); defaults to mem.totalSize. */
  memSize?: number;
  /** Defaults to e820Map(memSize). */
  e820?: E820Entry[];
  rsdpAddr?: number;
}

export interface PvhLoadResult {
  /** 32-bit PVH entry point (EIP). */
  entry: number;
  /** hvm_start_info address (EBX). */
  startInfoAddr: number;
  cmdlineAddr: number;
  kernelEnd: number;
  initramfs?: { addr: number; size: number };
}

/** Load a vmlinux with a PVH note, its initramfs and hvm_start_info into guest memory. */
export function loadPvhKernel(mem: GuestMemory, image: Image, opts: PvhLoadOptions): PvhLoadResult {
  const src = imageSource(image);
  const elf = parseElfKernel(src);
  if (elf.pvhEntry === undefined) {
    throw new ElfImageError('ELF kernel has no XEN_ELFNOTE_PHYS32_ENTRY note (built without CONFIG_PVH?)');
  }
  const memSize = opts.memSize ?? mem.totalSize;
  for (const [i, s] of elf.segments.entries()) {
    if (s.paddr < HIGH_RAM_START) {
      throw new ElfImageError(`ELF segment ${i} at ${hex(s.paddr)} is below 1 MiB, where the boot structures live`);
    }
    if (!mem.checkedRange(s.paddr, s.memsz)) {
      throw new ElfImageError(`ELF segment ${i} ${hex(s.paddr)}+${hex(s.memsz)} does not fit in guest RAM`);
    }
  }
  for (const s of elf.segments) {
    copyImageToGuest(mem, s.paddr, src, s.offset, s.filesz);
    if (s.memsz > s.filesz) mem.fill(s.paddr + s.filesz, s.memsz - s.filesz, 0); // bss
  }
  if (!mem.checkedRange(elf.pvhEntry, 1)) throw new ElfImageError(`PVH entry point ${hex(elf.pvhEntry)} is outside guest RAM`);
  if (elf.kernelEnd > lowRamEnd(memSize)) throw new ElfImageError(`kernel ends at ${hex(elf.kernelEnd)}, above RAM below 3 GiB`);

  const cmdlineAddr = writeCmdline(mem, opts.cmdline);
  let initramfs: { addr: number; size: number } | undefined;
  const initrd = opts.initramfs === undefined ? undefined : imageSource(opts.initramfs);
  if (initrd !== undefined && initrd.size > 0) {
    let addr: number;
    try {
      addr = initramfsAddress(initrd.size, memSize, Math.ceil(elf.kernelEnd / 4096) * 4096);
    } catch (e) {
      throw new ElfImageError(`initramfs placement: ${(e as Error).message}`);
    }
    copyImageToGuest(mem, addr, initrd, 0, initrd.size);
    initramfs = { addr, size: initrd.size };
  }
  const siOpts: StartInfoOptions = { cmdlineAddr, memmap: opts.e820 ?? e820Map(memSize) };
  if (opts.rsdpAddr !== undefined) siOpts.rsdpAddr = opts.rsdpAddr;
  if (initramfs !== undefined) siOpts.modules = [initramfs];
  const startInfoAddr = writeStartInfo(mem, siOpts);
  const res: PvhLoadResult = { entry: elf.pvhEntry, startInfoAddr, cmdlineAddr, kernelEnd: elf.kernelEnd };
  if (initramfs !== undefined) res.initramfs = initramfs;
  return res;
}
