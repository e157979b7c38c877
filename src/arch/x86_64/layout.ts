// x86-64 guest physical memory layout (all values are guest physical addresses, as numbers:
// every address here is < 2^52, see src/memory/guest_memory.ts).
//
//   0x0000_0000  real-mode IVT / BDA (RAM, left untouched)
//   0x0000_0500  boot GDT (BOOT_GDT_START), IDT right after (BOOT_IDT_START)
//   0x0000_6000  PVH hvm_start_info, module list, memory map
//   0x0000_7000  Linux zero page (boot_params)
//   0x0000_8000  boot stack (grows down from BOOT_STACK_POINTER)
//   0x0000_9000  PML4, 0xA000 PDPT, 0xB000..0xEFFF four page directories (identity map of 4 GiB)
//   0x0002_0000  kernel command line (CMDLINE_MAX_SIZE)
//   0x0009_FC00  EBDA .. 0x10_0000: reserved in the e820 map (legacy video/BIOS area)
//   0x000E_0000  ACPI tables (RSDP first: Linux scans 0xE0000-0xFFFFF for it, ACPI 6.x 5.2.5.1)
//   0x000E_F000  VM Generation ID (16 bytes; the DSDT's VGEN device points at it)
//   0x0010_0000  (1 MiB) protected-mode kernel / high RAM
//   ...          RAM up to MEM_32BIT_GAP_START (3 GiB)
//   0xC000_0000  32-bit PCI device (BAR) window, 640 MiB
//   0xE800_0000  PCI ECAM (MMCONFIG), 256 buses x 1 MiB
//   0xF800_0000  platform MMIO devices (virtio-mmio etc.)
//   0xFEC0_0000  IOAPIC
//   0xFEE0_0000  Local APIC
//   0x1_0000_0000 RAM above 4 GiB (the rest of guest memory), then the 64-bit PCI window.
//
// This follows Cloud Hypervisor's arch/src/x86_64/layout.rs in spirit (hole at 3 GiB..4 GiB).

import type { RegionSpec } from '../../memory/guest_memory.js';

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;

// --- Low memory boot structures -------------------------------------------------------------

/** Boot GDT (null, null, __BOOT_CS 0x10, __BOOT_DS 0x18, TSS 0x20). */
export const BOOT_GDT_START = 0x500;
export const BOOT_GDT_MAX_SIZE = 0x40;
/** Empty boot IDT (limit 0: any exception before the kernel loads its own IDT triple-faults). */
export const BOOT_IDT_START = 0x540;

/** PVH hvm_start_info (xen/include/public/arch-x86/hvm/start_info.h). */
export const PVH_INFO_START = 0x6000;
/** hvm_modlist_entry array (32 bytes each). */
export const PVH_MODLIST_START = 0x6040;
export const PVH_MODLIST_MAX = 6;
/** hvm_memmap_table_entry array (24 bytes each) up to the zero page. */
export const PVH_MEMMAP_START = 0x6100;
export const PVH_MEMMAP_MAX_ENTRIES = Math.floor((0x7000 - PVH_MEMMAP_START) / 24);

/** Linux boot_params ("zero page", Documentation/arch/x86/zero-page.rst). */
export const ZERO_PAGE_START = 0x7000;
export const ZERO_PAGE_SIZE = 0x1000;

/** Initial stack pointer (top of 0x8000..0x8fff, 16-byte aligned minus 16). */
export const BOOT_STACK_POINTER = 0x8ff0;

/** Identity-map page tables: PML4, one PDPT, 4 page directories of 2 MiB pages = 4 GiB. */
export const PML4_START = 0x9000;
export const PDPTE_START = 0xa000;
export const PDE_START = 0xb000;
export const PDE_PAGES = 4;
export const IDENTITY_MAP_SIZE = 4 * GiB;

/** Kernel command line; the kernel's own cmdline_size limit applies as well. */
export const CMDLINE_START = 0x20000;
export const CMDLINE_MAX_SIZE = 0x10000;

/** Extended BIOS data area start; [EBDA_START, HIGH_RAM_START) is reserved in e820. */
export const EBDA_START = 0x9fc00;

/** ACPI tables area inside the reserved BIOS area; the RSDP goes first (0xE0000, 16-aligned). */
export const ACPI_TABLES_START = 0xe0000;
export const RSDP_POINTER = ACPI_TABLES_START;
export const ACPI_TABLES_END = 0xef000;
/**
 * The 16-byte VM Generation ID (Microsoft "Virtual Machine Generation ID", ACPI device VGEN's
 * ADDR): the last page of the ACPI area, reserved in e820 (so the guest kernel never allocates
 * it) and scanned by nothing (Linux looks for the RSDP in 0xE0000-0xFFFFF, for MP and SMBIOS
 * tables from 0xF0000 on). In guest RAM, so a snapshot keeps it at the same address.
 */
export const VMGENID_ADDR = 0xef000;
export const VMGENID_SIZE = 16;
/** SMBIOS tables, if ever added. */
export const SMBIOS_START = 0xf0000;

/** Start of RAM above the legacy area: the protected-mode kernel loads here (boot.rst). */
export const HIGH_RAM_START = 0x100000;
export const KERNEL_LOAD_ADDR = HIGH_RAM_START;

// --- 32-bit MMIO hole (3 GiB .. 4 GiB) ------------------------------------------------------

export const MEM_32BIT_GAP_START = 3 * GiB;
export const MEM_32BIT_GAP_SIZE = 1 * GiB;
export const FIRST_ADDR_PAST_32BITS = 4 * GiB;

/** 32-bit PCI BAR window (PCI host bridge _CRS, 32-bit memory). */
export const PCI_MMIO32_START = MEM_32BIT_GAP_START;
export const PCI_MMIO32_SIZE = 640 * MiB;

/** PCI Express ECAM (MCFG), segment 0, buses 0..255. */
export const PCI_ECAM_START = PCI_MMIO32_START + PCI_MMIO32_SIZE; // 0xE800_0000
export const PCI_ECAM_SIZE = 256 * MiB;
export const PCI_ECAM_BUS_START = 0;
export const PCI_ECAM_BUS_END = 255;

// --- PCI segments (Cloud Hypervisor's --platform num_pci_segments) --------------------------------
//
// One segment (the default) keeps the layout above: ECAM for buses 0..255 over all of
// [PCI_ECAM_START, +256 MiB), and the whole 32-bit BAR window. With N > 1 segments the layout is
// Cloud Hypervisor's (arch/src/x86_64/layout.rs, vmm/src/pci_segment.rs): every segment has one
// bus, so its ECAM window is 256 functions x 4 KiB = 1 MiB, at PCI_ECAM_START + K MiB (all inside
// the 256 MiB ECAM region that e820 reserves), and the 32-bit BAR window is split into N equal
// 4 KiB-aligned parts, the last one taking what rounding leaves (CH's create_mmio_allocators with
// equal weights).

/** The most segments (Cloud Hypervisor allowed 16; its ECAM region would hold 256 of 1 MiB). */
export const MAX_PCI_SEGMENTS = 16;
/** ECAM size of a one-bus segment (PCI Express Base 7.2.2: bus << 20 | device << 15 | function << 12). */
export const PCI_ECAM_SIZE_PER_SEGMENT = 256 * 4096;
const PCI_SEGMENT_MMIO32_ALIGN = 4096;

/** Where one PCI segment's configuration space and BARs are. Structured-cloneable. */
export interface PciSegmentLayout {
  /** Segment group number (ACPI _SEG, MCFG). */
  segment: number;
  ecamBase: number;
  ecamSize: number;
  busStart: number;
  busEnd: number;
  /** This segment's 32-bit BAR window (host bridge _CRS, BAR allocation, BAR moves). */
  mmio32: { start: number; size: number };
}

/** The layout of `n` PCI segments (1..MAX_PCI_SEGMENTS). */
export function pciSegmentLayouts(n = 1): PciSegmentLayout[] {
  if (!Number.isInteger(n) || n < 1 || n > MAX_PCI_SEGMENTS) throw new RangeError(`number of PCI segments ${n} outside 1..${MAX_PCI_SEGMENTS}`);
  if (n === 1) {
    return [{
      segment: 0, ecamBase: PCI_ECAM_START, ecamSize: PCI_ECAM_SIZE, busStart: PCI_ECAM_BUS_START, busEnd: PCI_ECAM_BUS_END,
      mmio32: { start: PCI_MMIO32_START, size: PCI_MMIO32_SIZE },
    }];
  }
  const share = Math.floor(PCI_MMIO32_SIZE / (PCI_SEGMENT_MMIO32_ALIGN * n)) * PCI_SEGMENT_MMIO32_ALIGN;
  const out: PciSegmentLayout[] = [];
  for (let k = 0; k < n; k++) {
    const start = PCI_MMIO32_START + k * share;
    const size = k === n - 1 ? PCI_MMIO32_START + PCI_MMIO32_SIZE - start : share;
    out.push({
      segment: k, ecamBase: PCI_ECAM_START + k * PCI_ECAM_SIZE_PER_SEGMENT, ecamSize: PCI_ECAM_SIZE_PER_SEGMENT,
      busStart: 0, busEnd: 0, mmio32: { start, size },
    });
  }
  return out;
}

/** Platform (non-PCI) MMIO devices, e.g. virtio-mmio transports. */
export const PLATFORM_MMIO_START = PCI_ECAM_START + PCI_ECAM_SIZE; // 0xF800_0000
export const PLATFORM_MMIO_SIZE = 0xfec00000 - PLATFORM_MMIO_START; // 108 MiB
/**
 * The ACPI Generic Event Device's event register (one byte, src/devices/acpi_power.ts
 * AcpiGedDevice): the first page of the platform MMIO area, read by the DSDT's GED _EVT.
 */
export const GED_MMIO_START = PLATFORM_MMIO_START;
export const GED_MMIO_SIZE = 1;
/**
 * The ACPI PCI hotplug controller (src/pci/hotplug.ts): one 16-byte block per PCI segment, in
 * the platform MMIO area's second page.
 */
export const PCI_HOTPLUG_MMIO_START = PLATFORM_MMIO_START + 0x1000;
/**
 * The ACPI CPU hotplug controller (src/devices/cpu_hotplug.ts, a 12-byte register block read by
 * the DSDT's \_SB_.CPUS methods): the platform MMIO area's third page.
 */
export const CPU_HOTPLUG_MMIO_START = PLATFORM_MMIO_START + 0x2000;
/**
 * The ACPI memory hotplug controller (src/devices/memory_hotplug.ts, a 32-byte register block read
 * by the DSDT's \_SB_.MHPC methods): the platform MMIO area's fourth page.
 */
export const MEMORY_HOTPLUG_MMIO_START = PLATFORM_MMIO_START + 0x3000;

/** IOAPIC (MADT), GSI base 0, 24 pins. */
export const IOAPIC_START = 0xfec00000;
export const IOAPIC_SIZE = 0x1000;
export const IOAPIC_PINS = 24;
/** Local APIC default base (IA32_APIC_BASE reset value, SDM Vol. 3, 11.4.4). */
export const APIC_START = 0xfee00000;
export const APIC_SIZE = 0x100000;

/** Legacy PCI config mechanism #1 ports. */
export const PCI_CONFIG_ADDRESS_PORT = 0xcf8;
export const PCI_CONFIG_DATA_PORT = 0xcfc;

/** Start of RAM above the hole. */
export const RAM_64BIT_START = FIRST_ADDR_PAST_32BITS;

// --- RAM regions ----------------------------------------------------------------------------

function assertMemSize(memSize: number): void {
  if (!Number.isInteger(memSize) || memSize <= 0) throw new RangeError(`invalid guest memory size ${memSize}`);
  if (memSize % 4096 !== 0) throw new RangeError(`guest memory size 0x${memSize.toString(16)} is not a multiple of 4 KiB`);
  if (memSize < 16 * MiB) throw new RangeError(`guest memory size ${memSize} is below the 16 MiB minimum`);
  if (RAM_64BIT_START + memSize > 2 ** 52) throw new RangeError(`guest memory size 0x${memSize.toString(16)} exceeds the 52-bit physical address space`);
}

/**
 * RAM regions for `memSize` bytes of guest memory: [0, min(memSize, 3 GiB)) and, if larger,
 * the remainder at 4 GiB. Ready for `GuestMemory.allocate()`.
 */
export function ramRegions(memSize: number): RegionSpec[] {
  assertMemSize(memSize);
  const low = Math.min(memSize, MEM_32BIT_GAP_START);
  const regs: RegionSpec[] = [{ gpa: 0, size: low }];
  if (memSize > low) regs.push({ gpa: RAM_64BIT_START, size: memSize - low });
  return regs;
}

/** One past the last byte of RAM below the 32-bit hole. */
export function lowRamEnd(memSize: number): number {
  return Math.min(memSize, MEM_32BIT_GAP_START);
}

/** One past the highest RAM address. */
export function ramEnd(memSize: number): number {
  return memSize <= MEM_32BIT_GAP_START ? memSize : RAM_64BIT_START + (memSize - MEM_32BIT_GAP_START);
}

/**
 * 64-bit PCI BAR window: from the first 1 GiB boundary above RAM (and above 4 GiB) to the top of
 * the guest physical address space given by `physAddrBits` (CPUID 0x80000008 EAX[7:0]).
 */
export function pciMmio64Window(memSize: number, physAddrBits = 40): { start: number; size: number } {
  if (!Number.isInteger(physAddrBits) || physAddrBits < 36 || physAddrBits > 52) {
    throw new RangeError(`physical address bits ${physAddrBits} outside 36..52`);
  }
  const start = Math.ceil(Math.max(ramEnd(memSize), RAM_64BIT_START) / GiB) * GiB;
  const top = 2 ** physAddrBits;
  if (start >= top) throw new RangeError(`no room for a 64-bit PCI window below 2^${physAddrBits}`);
  return { start, size: top - start };
}

// --- Device memory (virtio-mem, ACPI memory hotplug, virtio-pmem) --------------------------------
//
// Guest-physical ranges that are memory but not RAM in e820: a virtio-mem device's region (virtio
// 1.2, 5.15.4 addr/region_size: the guest plugs blocks of it through the device) or the ACPI
// memory hotplug area (the ranges its memory devices' _CRS give, src/devices/memory_hotplug.ts:
// the hotplug region, one or the other), and virtio-pmem
// devices' files (5.19.4), which the guest finds through the devices' configuration, never through
// e820. Cloud Hypervisor takes them from its device area above RAM; here they start at the first
// 1 GiB boundary above RAM (the start of pciMmio64Window, which nothing else uses: no host bridge
// advertises a 64-bit window). The hotplug region comes first: its place then depends on the
// RAM size alone (a restore or a migration's receiver computes it from the configuration), and it
// is aligned to 1 GiB, so to any Linux memory block size (128 MiB on x86 up to 64 GiB of RAM,
// drivers/base/memory.c), which virtio-mem plugs memory in. The pmem ranges follow, one after the
// other, each 2 MiB aligned (Linux maps a pmem region in 2 MiB subsections, mm/memremap.c). A
// 64-bit PCI window, once there is one, must begin above them.

/** Alignment of every device memory range (start and size). */
export const DEVICE_MEMORY_ALIGN = 2 * MiB;

function deviceMemoryBase(memSize: number): number {
  return Math.ceil(Math.max(ramEnd(memSize), RAM_64BIT_START) / GiB) * GiB;
}

/**
 * The hotplug region of `size` bytes (a positive multiple of 2 MiB; the virtio-mem region or the
 * ACPI hotplug area) beside `memSize` bytes of RAM: the first device memory range.
 */
export function hotplugRegion(memSize: number, size: number, physAddrBits = 52): { gpa: number; size: number } {
  assertMemSize(memSize);
  if (!Number.isSafeInteger(size) || size <= 0 || size % DEVICE_MEMORY_ALIGN !== 0) {
    throw new RangeError(`hotplug region size ${size} is not a positive multiple of 2 MiB`);
  }
  const gpa = deviceMemoryBase(memSize);
  if (gpa + size > 2 ** physAddrBits) throw new RangeError(`a hotplug region of ${size} bytes at 0x${gpa.toString(16)} does not fit below 2^${physAddrBits}`);
  return { gpa, size };
}

/**
 * Where device memory ranges of these sizes go (each a positive multiple of 2 MiB), in order,
 * after a hotplug region of `hotplugSize` bytes (0: none).
 */
export function deviceMemoryRanges(memSize: number, sizes: readonly number[], physAddrBits = 52, hotplugSize = 0): Array<{ gpa: number; size: number }> {
  assertMemSize(memSize);
  let at = deviceMemoryBase(memSize);
  if (hotplugSize > 0) at += hotplugRegion(memSize, hotplugSize, physAddrBits).size;
  const out: Array<{ gpa: number; size: number }> = [];
  for (const size of sizes) {
    if (!Number.isSafeInteger(size) || size <= 0 || size % DEVICE_MEMORY_ALIGN !== 0) {
      throw new RangeError(`device memory size ${size} is not a positive multiple of 2 MiB`);
    }
    if (at + size > 2 ** physAddrBits) {
      throw new RangeError(`device memory of ${size} bytes at 0x${at.toString(16)} does not fit below 2^${physAddrBits}`);
    }
    out.push({ gpa: at, size });
    at += size;
  }
  return out;
}

/**
 * The regions of guest memory (GuestMemory.allocate): RAM (ramRegions), then the hotplug region
 * when `hotplugSize` > 0. The region is guest memory like RAM (virtqueue buffers and DMA may lie
 * in plugged memory, a snapshot saves it) but not in e820; its host pages exist only where the
 * guest touched plugged memory (MAP_NORESERVE; virtio-mem's unplugged blocks are discarded, and
 * the ACPI area's unplugged rest has no KVM memory slot, so no vCPU reaches it).
 */
export function guestMemoryRegions(memSize: number, hotplugSize = 0): RegionSpec[] {
  const regs = ramRegions(memSize);
  if (hotplugSize > 0) regs.push(hotplugRegion(memSize, hotplugSize));
  return regs;
}

// --- e820 ------------------------------------------------------------------------------------

/** e820 types (ACPI 6.x 15.1 "Address Range Types"). */
export const E820_RAM = 1;
export const E820_RESERVED = 2;
export const E820_ACPI = 3;
export const E820_NVS = 4;
export const E820_UNUSABLE = 5;

export interface E820Entry {
  addr: number;
  size: number;
  type: number;
}

/**
 * The guest e820 map. RAM: [0, EBDA_START), [1 MiB, low RAM end), [4 GiB, ...). Reserved: the
 * EBDA/legacy BIOS area (holds our ACPI tables), the PCI ECAM window (Linux wants MMCONFIG
 * reserved, arch/x86/pci/mmconfig-shared.c), and IOAPIC..4 GiB. The 32-bit PCI BAR window is
 * deliberately left as a gap rather than "reserved": Linux may clip host bridge windows that
 * overlap e820 reservations (pci=use_e820).
 */
export function e820Map(memSize: number): E820Entry[] {
  assertMemSize(memSize);
  const low = lowRamEnd(memSize);
  const map: E820Entry[] = [
    { addr: 0, size: EBDA_START, type: E820_RAM },
    { addr: EBDA_START, size: HIGH_RAM_START - EBDA_START, type: E820_RESERVED },
    { addr: HIGH_RAM_START, size: low - HIGH_RAM_START, type: E820_RAM },
    { addr: PCI_ECAM_START, size: PCI_ECAM_SIZE, type: E820_RESERVED },
    { addr: IOAPIC_START, size: FIRST_ADDR_PAST_32BITS - IOAPIC_START, type: E820_RESERVED },
  ];
  if (memSize > low) map.push({ addr: RAM_64BIT_START, size: memSize - low, type: E820_RAM });
  return map;
}

// --- initramfs placement ---------------------------------------------------------------------

/**
 * Where to put an initramfs of `size` bytes: as high as possible below min(`addrMax` + 1, end of
 * low RAM), page aligned (boot.rst: initrd_addr_max is the highest address the initrd may
 * occupy). It must not overlap [0, `minAddr`) (the loaded kernel). Throws RangeError if it
 * does not fit.
 */
export function initramfsAddress(size: number, memSize: number, minAddr: number, addrMax = 0xffffffff): number {
  if (!Number.isInteger(size) || size <= 0) throw new RangeError(`invalid initramfs size ${size}`);
  const top = Math.min(addrMax + 1, lowRamEnd(memSize));
  const addr = Math.floor((top - size) / 4096) * 4096;
  if (top - size < 0 || addr < minAddr) {
    throw new RangeError(`initramfs of ${size} bytes does not fit between 0x${minAddr.toString(16)} and 0x${top.toString(16)}`);
  }
  return addr;
}
