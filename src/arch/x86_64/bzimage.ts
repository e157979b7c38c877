// Linux bzImage loader for the 64-bit boot protocol (Documentation/arch/x86/boot.rst).
//
// The image starts with the real-mode setup (boot sector + setup_sects sectors) whose
// "setup header" at 0x1f1 describes the kernel; the protected-mode kernel follows at
// (setup_sects + 1) * 512. We copy the protected-mode part into guest RAM, build boot_params
// (the zero page, Documentation/arch/x86/zero-page.rst) and enter at load address + 0x200
// (startup_64) in long mode with RSI = boot_params (boot.rst "64-bit BOOT PROTOCOL").
// Only the first BZ_HEAD_BYTES of the image are read into JS to validate; the kernel (and the
// initramfs) go from the file straight into guest RAM (image_source.ts).

import type { GuestMemory } from '../../memory/guest_memory.js';
import { writeCmdline } from './cmdline.js';
import { copyImageToGuest, imageSource, readImage, type Image } from './image_source.js';
import {
  type E820Entry, e820Map, HIGH_RAM_START, initramfsAddress, KERNEL_LOAD_ADDR, lowRamEnd, ZERO_PAGE_SIZE, ZERO_PAGE_START,
} from './layout.js';

export class KernelImageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'KernelImageError';
  }
}

// Setup header offsets within the image and within boot_params (they coincide), boot.rst.
export const HDR = {
  setup_sects: 0x1f1, root_flags: 0x1f2, syssize: 0x1f4, ram_size: 0x1f8, vid_mode: 0x1fa, root_dev: 0x1fc,
  boot_flag: 0x1fe, jump: 0x200, header: 0x202, version: 0x206, realmode_swtch: 0x208, start_sys_seg: 0x20c,
  kernel_version: 0x20e, type_of_loader: 0x210, loadflags: 0x211, setup_move_size: 0x212, code32_start: 0x214,
  ramdisk_image: 0x218, ramdisk_size: 0x21c, bootsect_kludge: 0x220, heap_end_ptr: 0x224, ext_loader_ver: 0x226,
  ext_loader_type: 0x227, cmd_line_ptr: 0x228, initrd_addr_max: 0x22c, kernel_alignment: 0x230,
  relocatable_kernel: 0x234, min_alignment: 0x235, xloadflags: 0x236, cmdline_size: 0x238,
  hardware_subarch: 0x23c, hardware_subarch_data: 0x240, payload_offset: 0x248, payload_length: 0x24c,
  setup_data: 0x250, pref_address: 0x258, init_size: 0x260, handover_offset: 0x264, kernel_info_offset: 0x268,
} as const;

// boot_params fields outside the setup header (zero-page.rst).
export const BP = {
  acpi_rsdp_addr: 0x070, ext_ramdisk_image: 0x0c0, ext_ramdisk_size: 0x0c4, ext_cmd_line_ptr: 0x0c8,
  e820_entries: 0x1e8, sentinel: 0x1ef, e820_table: 0x2d0,
} as const;
export const E820_MAX_ENTRIES_ZEROPAGE = 128;

export const BOOT_FLAG_MAGIC = 0xaa55;
export const HDRS_MAGIC = 0x53726448; // "HdrS"
/** Minimum protocol for the 64-bit entry point (xloadflags exists since 2.12). */
export const MIN_BOOT_PROTOCOL = 0x020c;
export const LOADED_HIGH = 0x01;
export const KEEP_SEGMENTS = 0x40;
export const CAN_USE_HEAP = 0x80;
export const XLF_KERNEL_64 = 0x01;
export const XLF_CAN_BE_LOADED_ABOVE_4G = 0x02;
/** type_of_loader 0xFF: "undefined" boot loader (boot.rst). */
export const LOADER_TYPE_UNDEFINED = 0xff;
/** Offset of startup_64 from the start of the protected-mode kernel. */
export const STARTUP_64_OFFSET = 0x200;

export interface SetupHeader {
  setupSects: number;
  syssize: number;
  version: number;
  loadflags: number;
  code32Start: number;
  initrdAddrMax: number;
  kernelAlignment: number;
  relocatable: boolean;
  minAlignment: number;
  xloadflags: number;
  cmdlineSize: number;
  payloadOffset: number;
  payloadLength: number;
  prefAddress: bigint;
  initSize: number;
  handoverOffset: number;
  /** 0 when the protocol is older than 2.15. */
  kernelInfoOffset: number;
  /** One past the last setup header byte: 0x202 + image[0x201]. */
  headerEnd: number;
}

export interface BzImage {
  header: SetupHeader;
  /** Raw setup header bytes [0x1f1, headerEnd) to copy into boot_params. */
  headerBytes: Uint8Array;
  /** Offset of the protected-mode kernel in the file: (setup_sects + 1) * 512. */
  kernelOffset: number;
  /** Bytes of the protected-mode kernel: the file from kernelOffset to its end. */
  kernelSize: number;
}

/** What parseBzImage reads of the file: the boot sector and the whole setup header (ends by 0x301). */
export const BZ_HEAD_BYTES = 0x400;

const hex = (n: number | bigint): string => `0x${n.toString(16)}`;

/** Parse and validate a bzImage from its header bytes. Throws KernelImageError naming the problem. */
export function parseBzImage(file: Image): BzImage {
  const src = imageSource(file);
  // Every length check is against the file's size; reads are within `image`, its first bytes.
  const size = src.size;
  const image = readImage(src, 0, Math.min(size, BZ_HEAD_BYTES));
  const dv = new DataView(image.buffer, image.byteOffset, image.byteLength);
  if (size < 0x200) {
    throw new KernelImageError(`not a Linux kernel image: file is only ${size} bytes (a bzImage starts with a 512-byte boot sector)`);
  }
  const bootFlag = dv.getUint16(HDR.boot_flag, true);
  if (bootFlag !== BOOT_FLAG_MAGIC) {
    throw new KernelImageError(`not a Linux kernel image: boot_flag at 0x1fe is ${hex(bootFlag)}, expected 0xaa55`);
  }
  // Every fixed-offset read below is preceded by a length check (a truncated file must get its
  // own error, never a RangeError from the DataView).
  if (size < HDR.header + 4) throw new KernelImageError(`truncated bzImage: ${size} bytes, the setup header is cut off before its "HdrS" magic at 0x202`);
  const magic = dv.getUint32(HDR.header, true);
  if (magic !== HDRS_MAGIC) {
    throw new KernelImageError(`not a bzImage: no "HdrS" setup header magic at 0x202 (found ${hex(magic)}); boot sector only, or a pre-2.00 kernel`);
  }
  if (size < HDR.version + 2) throw new KernelImageError(`truncated bzImage: ${size} bytes, the setup header is cut off before its boot protocol version at 0x206`);
  const version = dv.getUint16(HDR.version, true);
  if (version < MIN_BOOT_PROTOCOL) {
    throw new KernelImageError(`kernel boot protocol ${version >> 8}.${(version & 0xff).toString().padStart(2, '0')} is too old: 2.12 or later is needed for the 64-bit entry point`);
  }
  const headerEnd = 0x202 + image[0x201]!;
  // Protocol 2.12 defines fields through handover_offset (0x268).
  if (headerEnd < 0x268) throw new KernelImageError(`malformed setup header: it ends at ${hex(headerEnd)} but protocol ${hex(version)} needs up to 0x268`);
  if (size < headerEnd) throw new KernelImageError(`truncated bzImage: ${size} bytes, the setup header needs ${headerEnd}`);

  let setupSects = image[HDR.setup_sects]!;
  if (setupSects === 0) setupSects = 4; // boot.rst: "If this field is 0, the real value is 4."
  const kernelOffset = (setupSects + 1) * 512;
  if (size <= kernelOffset) {
    throw new KernelImageError(`truncated bzImage: ${size} bytes, but the setup code alone is ${kernelOffset} bytes`);
  }
  const header: SetupHeader = {
    setupSects,
    syssize: dv.getUint32(HDR.syssize, true),
    version,
    loadflags: image[HDR.loadflags]!,
    code32Start: dv.getUint32(HDR.code32_start, true),
    initrdAddrMax: dv.getUint32(HDR.initrd_addr_max, true),
    kernelAlignment: dv.getUint32(HDR.kernel_alignment, true),
    relocatable: image[HDR.relocatable_kernel]! !== 0,
    minAlignment: image[HDR.min_alignment]!,
    xloadflags: dv.getUint16(HDR.xloadflags, true),
    cmdlineSize: dv.getUint32(HDR.cmdline_size, true),
    payloadOffset: dv.getUint32(HDR.payload_offset, true),
    payloadLength: dv.getUint32(HDR.payload_length, true),
    prefAddress: dv.getBigUint64(HDR.pref_address, true),
    initSize: dv.getUint32(HDR.init_size, true),
    handoverOffset: dv.getUint32(HDR.handover_offset, true),
    kernelInfoOffset: version >= 0x020f && headerEnd >= 0x26c ? dv.getUint32(HDR.kernel_info_offset, true) : 0,
    headerEnd,
  };
  if ((header.xloadflags & XLF_KERNEL_64) === 0) {
    throw new KernelImageError('kernel has no 64-bit entry point (xloadflags XLF_KERNEL_64 clear): a 32-bit kernel cannot be booted');
  }
  if ((header.loadflags & LOADED_HIGH) === 0) {
    throw new KernelImageError('zImage kernels (loadflags LOADED_HIGH clear) are not supported');
  }
  const kernelSize = size - kernelOffset;
  const sysBytes = header.syssize * 16;
  if (sysBytes > kernelSize) {
    throw new KernelImageError(`truncated bzImage: syssize says the protected-mode kernel is ${sysBytes} bytes, the file has ${kernelSize}`);
  }
  if (kernelSize <= STARTUP_64_OFFSET) throw new KernelImageError(`truncated bzImage: protected-mode kernel is only ${kernelSize} bytes`);
  if (header.payloadOffset + header.payloadLength > kernelSize) {
    throw new KernelImageError(`truncated bzImage: payload ${hex(header.payloadOffset)}+${hex(header.payloadLength)} runs past the ${kernelSize}-byte kernel`);
  }
  if (header.relocatable) {
    const a = header.kernelAlignment;
    if (a === 0 || (a & (a - 1)) !== 0) throw new KernelImageError(`malformed setup header: kernel_alignment ${hex(a)} is not a power of two`);
  }
  if (header.initSize === 0) throw new KernelImageError('malformed setup header: init_size is 0');
  if (header.prefAddress >= 1n << 52n) throw new KernelImageError(`malformed setup header: pref_address ${hex(header.prefAddress)} is out of range`);
  return {
    header,
    headerBytes: image.slice(HDR.setup_sects, headerEnd),
    kernelOffset,
    kernelSize: size - kernelOffset,
  };
}

/**
 * Where the kernel will run after decompression and how far its early memory use reaches
 * (boot.rst init_size: "linear contiguous memory starting at the kernel runtime start address").
 * Used to keep the initramfs out of the way.
 */
export function kernelFootprintEnd(h: SetupHeader, loadAddr: number, kernelSize: number): number {
  const pref = Number(h.prefAddress);
  let runtime = pref !== 0 ? pref : loadAddr;
  if (h.relocatable) {
    const aligned = Math.ceil(loadAddr / h.kernelAlignment) * h.kernelAlignment;
    runtime = Math.max(aligned, pref);
  }
  return Math.max(loadAddr + kernelSize, runtime + h.initSize);
}

export interface BootParamsOptions {
  cmdlineAddr: number;
  initramfs?: { addr: number; size: number };
  e820: E820Entry[];
  rsdpAddr?: number;
  /** Address of the protected-mode kernel (code32_start). */
  loadAddr: number;
}

/** Build the 4 KiB boot_params from the image's setup header (zero-page.rst, boot.rst). */
export function buildBootParams(headerBytes: Uint8Array, o: BootParamsOptions): Uint8Array {
  const zp = new Uint8Array(ZERO_PAGE_SIZE);
  const dv = new DataView(zp.buffer);
  if (HDR.setup_sects + headerBytes.length > BP.e820_table - 0x40) throw new KernelImageError('setup header too long');
  zp.set(headerBytes, HDR.setup_sects);
  zp[HDR.type_of_loader] = LOADER_TYPE_UNDEFINED;
  zp[HDR.loadflags] = (zp[HDR.loadflags]! | LOADED_HIGH | CAN_USE_HEAP) & ~KEEP_SEGMENTS;
  dv.setUint16(HDR.heap_end_ptr, 0xfe00, true);
  dv.setUint32(HDR.code32_start, o.loadAddr >>> 0, true);
  dv.setUint32(HDR.cmd_line_ptr, o.cmdlineAddr >>> 0, true);
  dv.setUint32(BP.ext_cmd_line_ptr, Math.floor(o.cmdlineAddr / 2 ** 32), true);
  // cmdline_size stays as copied: it is the kernel's maximum, read-only for the loader (boot.rst).
  if (o.initramfs !== undefined) {
    dv.setUint32(HDR.ramdisk_image, o.initramfs.addr >>> 0, true);
    dv.setUint32(BP.ext_ramdisk_image, Math.floor(o.initramfs.addr / 2 ** 32), true);
    dv.setUint32(HDR.ramdisk_size, o.initramfs.size >>> 0, true);
    dv.setUint32(BP.ext_ramdisk_size, Math.floor(o.initramfs.size / 2 ** 32), true);
  } else {
    dv.setUint32(HDR.ramdisk_image, 0, true);
    dv.setUint32(HDR.ramdisk_size, 0, true);
  }
  if (o.rsdpAddr !== undefined) dv.setBigUint64(BP.acpi_rsdp_addr, BigInt(o.rsdpAddr), true);
  if (o.e820.length > E820_MAX_ENTRIES_ZEROPAGE) throw new KernelImageError(`too many e820 entries (${o.e820.length} > 128)`);
  zp[BP.e820_entries] = o.e820.length;
  for (let i = 0; i < o.e820.length; i++) {
    const e = o.e820[i]!;
    const off = BP.e820_table + i * 20;
    dv.setBigUint64(off, BigInt(e.addr), true);
    dv.setBigUint64(off + 8, BigInt(e.size), true);
    dv.setUint32(off + 16, e.type, true);
  }
  zp[BP.sentinel] = 0;
  return zp;
}

export interface BzImageLoadOptions {
  cmdline: string;
  initramfs?: Image;
  /** Guest RAM size as passed to ramRegions(); defaults to mem.totalSize. */
  memSize?: number;
  /** Defaults to e820Map(memSize). */
  e820?: E820Entry[];
  /** ACPI RSDP address for boot_params.acpi_rsdp_addr (from buildAcpiTables). */
  rsdpAddr?: number;
  /** Where to put the protected-mode kernel; default 1 MiB. */
  loadAddr?: number;
}

export interface BzImageLoadResult {
  /** 64-bit entry point: load address + 0x200 (startup_64). */
  entry: number;
  bootParamsAddr: number;
  loadAddr: number;
  cmdlineAddr: number;
  initramfs?: { addr: number; size: number };
  header: SetupHeader;
}

/**
 * Load a bzImage (and optional initramfs) into guest memory and write boot_params at
 * ZERO_PAGE_START. The protected-mode kernel goes to 1 MiB: the decompressor moves itself
 * (and, when relocatable, aligns to kernel_alignment / pref_address) before extracting.
 */
export function loadBzImage(mem: GuestMemory, image: Image, opts: BzImageLoadOptions): BzImageLoadResult {
  const src = imageSource(image);
  const img = parseBzImage(src);
  const h = img.header;
  const memSize = opts.memSize ?? mem.totalSize;
  const loadAddr = opts.loadAddr ?? KERNEL_LOAD_ADDR;
  if (!Number.isInteger(loadAddr) || loadAddr < HIGH_RAM_START || loadAddr % 4096 !== 0) {
    throw new KernelImageError(`invalid kernel load address ${hex(loadAddr)}`);
  }
  const low = lowRamEnd(memSize);
  const footprint = kernelFootprintEnd(h, loadAddr, img.kernelSize);
  if (footprint > low) {
    throw new KernelImageError(`guest RAM below 3 GiB (${low >> 20} MiB) is too small: the kernel needs memory up to ${hex(footprint)} (init_size ${hex(h.initSize)})`);
  }
  if (!mem.checkedRange(loadAddr, img.kernelSize)) {
    throw new KernelImageError(`kernel ${hex(loadAddr)}+${hex(img.kernelSize)} does not fit in guest RAM`);
  }
  copyImageToGuest(mem, loadAddr, src, img.kernelOffset, img.kernelSize);

  const cmdlineAddr = writeCmdline(mem, opts.cmdline, h.cmdlineSize);

  let initramfs: { addr: number; size: number } | undefined;
  const initrd = opts.initramfs === undefined ? undefined : imageSource(opts.initramfs);
  if (initrd !== undefined && initrd.size > 0) {
    let addr: number;
    try {
      addr = initramfsAddress(initrd.size, memSize, footprint, h.initrdAddrMax);
    } catch (e) {
      throw new KernelImageError(`initramfs placement: ${(e as Error).message}`);
    }
    copyImageToGuest(mem, addr, initrd, 0, initrd.size);
    initramfs = { addr, size: initrd.size };
  }

  const bpOpts: BootParamsOptions = {
    cmdlineAddr, e820: opts.e820 ?? e820Map(memSize), loadAddr,
  };
  if (initramfs !== undefined) bpOpts.initramfs = initramfs;
  if (opts.rsdpAddr !== undefined) bpOpts.rsdpAddr = opts.rsdpAddr;
  const zp = buildBootParams(img.headerBytes, bpOpts);
  mem.writeBytes(ZERO_PAGE_START, zp);

  const res: BzImageLoadResult = {
    entry: loadAddr + STARTUP_64_OFFSET, bootParamsAddr: ZERO_PAGE_START, loadAddr, cmdlineAddr, header: h,
  };
  if (initramfs !== undefined) res.initramfs = initramfs;
  return res;
}
