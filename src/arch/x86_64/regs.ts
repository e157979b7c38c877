// Initial vCPU state for direct kernel boot, as backend-neutral register structs
// (src/hypervisor/regs.ts) plus the bytes (GDT, IDT, page tables) to write into guest memory.
//
// 64-bit Linux boot (boot.rst "64-bit BOOT PROTOCOL"): long mode with paging, an identity map
// covering the kernel, boot_params and cmdline (we map the low 4 GiB with 2 MiB pages), a GDT
// with flat __BOOT_CS (0x10, execute/read) and __BOOT_DS (0x18, read/write), CS = __BOOT_CS,
// DS/ES/SS = __BOOT_DS, interrupts disabled, RSI = boot_params.
//
// PVH (xen docs/misc/pvh.pandoc "x86/HVM direct boot ABI"): 32-bit protected mode, paging off,
// CS flat 4 GiB 32-bit code, DS/ES/SS flat 4 GiB data, TR a 32-bit TSS, EFLAGS.IF/VM clear,
// EBX = hvm_start_info address.

import type { GuestMemory } from '../../memory/guest_memory.js';
import {
  emptySegment, type DescriptorTable, type FpuState, type MsrEntry, type SegmentRegister, type SpecialRegisters,
  type StandardRegisters,
} from '../../hypervisor/regs.js';
import {
  APIC_START, BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_PAGES, PDE_START, PDPTE_START, PML4_START,
} from './layout.js';

export const BOOT_CS_SELECTOR = 0x10;
export const BOOT_DS_SELECTOR = 0x18;
export const BOOT_TSS_SELECTOR = 0x20;

// CR0/CR4/EFER bits (SDM Vol. 3, 2.5; EFER: Vol. 3, 2.2.1).
export const X86_CR0_PE = 0x1n;
export const X86_CR0_ET = 0x10n;
export const X86_CR0_PG = 0x80000000n;
export const X86_CR4_PAE = 0x20n;
export const EFER_LME = 0x100n;
export const EFER_LMA = 0x400n;
/** IA32_APIC_BASE: BSP flag (bit 8), global enable (bit 11). */
export const APIC_BASE_BSP = 0x100n;
export const APIC_BASE_ENABLE = 0x800n;
/** EFLAGS bit 1 is reserved and always 1. */
export const RFLAGS_RESERVED = 0x2n;

// Page table entry bits (SDM Vol. 3, 4.5).
const PTE_P = 0x1n;
const PTE_RW = 0x2n;
const PTE_PS = 0x80n;

// --- GDT ---------------------------------------------------------------------------------------

/**
 * Encode a code/data segment descriptor (SDM Vol. 3, 3.4.5). `flags` packs access byte (bits
 * 0-7: type, S, DPL, P) and the G/DB/L/AVL nibble (bits 12-15), e.g. 0xa09b = 64-bit code.
 */
export function gdtEntry(flags: number, base: number, limit: number): bigint {
  const b = BigInt(base >>> 0);
  const l = BigInt(limit >>> 0);
  const f = BigInt(flags & 0xf0ff);
  return ((b & 0xff000000n) << 32n) | ((b & 0x00ffffffn) << 16n) | (l & 0xffffn) | ((l & 0xf0000n) << 32n) | (f << 40n);
}

/** The hidden-part view of a descriptor, as loaded into a segment register. */
export function segmentFromGdtEntry(entry: bigint, selector: number): SegmentRegister {
  const n = (shift: bigint, mask: bigint): number => Number((entry >> shift) & mask);
  const base = ((entry >> 16n) & 0xffffffn) | (((entry >> 56n) & 0xffn) << 24n);
  let limit = n(0n, 0xffffn) | (n(48n, 0xfn) << 16);
  const g = n(55n, 1n);
  if (g === 1) limit = ((limit << 12) | 0xfff) >>> 0;
  const present = n(47n, 1n);
  return {
    base,
    limit,
    selector,
    type: n(40n, 0xfn),
    s: n(44n, 1n),
    dpl: n(45n, 3n),
    present,
    avl: n(52n, 1n),
    l: n(53n, 1n),
    db: n(54n, 1n),
    g,
    unusable: present === 1 ? 0 : 1,
  };
}

export const GDT_CODE64 = gdtEntry(0xa09b, 0, 0xfffff); // P, S, type 0xb (exec/read, accessed), L, G
export const GDT_CODE32 = gdtEntry(0xc09b, 0, 0xfffff); // P, S, type 0xb, D/B, G
export const GDT_DATA = gdtEntry(0xc093, 0, 0xfffff); // P, S, type 0x3 (read/write, accessed), D/B, G
export const GDT_TSS = gdtEntry(0x008b, 0, 0x67); // P, system type 0xb (busy TSS), byte granular

function gdtBytes(entries: bigint[]): Uint8Array {
  const out = new Uint8Array(entries.length * 8);
  const dv = new DataView(out.buffer);
  entries.forEach((e, i) => dv.setBigUint64(i * 8, e, true));
  return out;
}

// --- Page tables ---------------------------------------------------------------------------------

/**
 * Identity map of the low 4 GiB with 2 MiB pages: PML4[0] -> PDPT, PDPT[0..3] -> 4 page
 * directories, 2048 PDEs. Returns the writes (PML4, PDPT, PDs) and the CR3 value.
 */
export function identityPageTables(): { cr3: bigint; writes: GuestWrite[] } {
  const pml4 = new Uint8Array(4096);
  new DataView(pml4.buffer).setBigUint64(0, BigInt(PDPTE_START) | PTE_P | PTE_RW, true);
  const pdpt = new Uint8Array(4096);
  const pdptDv = new DataView(pdpt.buffer);
  for (let i = 0; i < PDE_PAGES; i++) pdptDv.setBigUint64(i * 8, BigInt(PDE_START + i * 4096) | PTE_P | PTE_RW, true);
  const pd = new Uint8Array(4096 * PDE_PAGES);
  const pdDv = new DataView(pd.buffer);
  for (let j = 0; j < 512 * PDE_PAGES; j++) pdDv.setBigUint64(j * 8, (BigInt(j) << 21n) | PTE_P | PTE_RW | PTE_PS, true);
  return {
    cr3: BigInt(PML4_START),
    writes: [{ gpa: PML4_START, bytes: pml4 }, { gpa: PDPTE_START, bytes: pdpt }, { gpa: PDE_START, bytes: pd }],
  };
}

// --- Boot state ----------------------------------------------------------------------------------

export interface GuestWrite {
  gpa: number;
  bytes: Uint8Array;
}

export interface BootVcpuState {
  regs: StandardRegisters;
  sregs: SpecialRegisters;
  /** GDT, IDT and (64-bit) page tables to write into guest memory before running. */
  writes: GuestWrite[];
}

export function zeroRegisters(): StandardRegisters {
  return {
    rax: 0n, rbx: 0n, rcx: 0n, rdx: 0n, rsi: 0n, rdi: 0n, rsp: 0n, rbp: 0n,
    r8: 0n, r9: 0n, r10: 0n, r11: 0n, r12: 0n, r13: 0n, r14: 0n, r15: 0n,
    rip: 0n, rflags: RFLAGS_RESERVED,
  };
}

function apicBase(cpuId: number): bigint {
  return BigInt(APIC_START) | APIC_BASE_ENABLE | (cpuId === 0 ? APIC_BASE_BSP : 0n);
}

function baseSregs(code: bigint, gdt: DescriptorTable, cpuId: number): SpecialRegisters {
  const data = (): SegmentRegister => segmentFromGdtEntry(GDT_DATA, BOOT_DS_SELECTOR);
  return {
    cs: segmentFromGdtEntry(code, BOOT_CS_SELECTOR),
    ds: data(), es: data(), fs: data(), gs: data(), ss: data(),
    tr: segmentFromGdtEntry(GDT_TSS, BOOT_TSS_SELECTOR),
    ldt: { ...emptySegment(), type: 2, unusable: 1 },
    gdt,
    idt: { base: BigInt(BOOT_IDT_START), limit: 7 },
    cr0: 0n, cr2: 0n, cr3: 0n, cr4: 0n, cr8: 0n, efer: 0n,
    apicBase: apicBase(cpuId),
    interruptBitmap: [0n, 0n, 0n, 0n],
  };
}

/** GDT: null, null, __BOOT_CS (0x10), __BOOT_DS (0x18), TSS (0x20; 16 bytes in long mode). */
function bootGdt(code: bigint): { bytes: Uint8Array; table: DescriptorTable } {
  const bytes = gdtBytes([0n, 0n, code, GDT_DATA, GDT_TSS, 0n]);
  return { bytes, table: { base: BigInt(BOOT_GDT_START), limit: bytes.length - 1 } };
}

/**
 * vCPU state for the 64-bit Linux boot protocol: RIP = `entry` (load address + 0x200),
 * RSI = `bootParamsAddr`. `cpuId` only affects IA32_APIC_BASE.BSP.
 */
export function linux64BootState(entry: number, bootParamsAddr: number, cpuId = 0): BootVcpuState {
  const gdt = bootGdt(GDT_CODE64);
  const pt = identityPageTables();
  const sregs = baseSregs(GDT_CODE64, gdt.table, cpuId);
  sregs.cr3 = pt.cr3;
  sregs.cr4 = X86_CR4_PAE;
  sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
  sregs.efer = EFER_LME | EFER_LMA;
  const regs = zeroRegisters();
  regs.rip = BigInt(entry);
  regs.rsi = BigInt(bootParamsAddr);
  regs.rsp = BigInt(BOOT_STACK_POINTER);
  regs.rbp = BigInt(BOOT_STACK_POINTER);
  return {
    regs,
    sregs,
    writes: [{ gpa: BOOT_GDT_START, bytes: gdt.bytes }, { gpa: BOOT_IDT_START, bytes: new Uint8Array(8) }, ...pt.writes],
  };
}

/** vCPU state for the PVH 32-bit entry: EIP = `entry`, EBX = `startInfoAddr`, paging off. */
export function pvhBootState(entry: number, startInfoAddr: number, cpuId = 0): BootVcpuState {
  const gdt = bootGdt(GDT_CODE32);
  const sregs = baseSregs(GDT_CODE32, gdt.table, cpuId);
  sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
  const regs = zeroRegisters();
  regs.rip = BigInt(entry);
  regs.rbx = BigInt(startInfoAddr);
  return {
    regs,
    sregs,
    writes: [{ gpa: BOOT_GDT_START, bytes: gdt.bytes }, { gpa: BOOT_IDT_START, bytes: new Uint8Array(8) }],
  };
}

/** Write a BootVcpuState's GDT/IDT/page tables into guest memory (bounds-checked). */
export function writeBootTables(mem: GuestMemory, writes: readonly GuestWrite[]): void {
  for (const w of writes) mem.writeBytes(w.gpa, w.bytes);
}

// --- FPU and MSRs ----------------------------------------------------------------------------

/** FPU state after FNINIT with MXCSR at its reset value (SDM Vol. 1, 8.1.5 / 10.2.3). */
export function defaultFpu(): FpuState {
  return {
    fcw: 0x37f, fsw: 0, ftwx: 0, lastOpcode: 0, lastIp: 0n, lastDp: 0n, mxcsr: 0x1f80,
    fpr: new Uint8Array(128), xmm: new Uint8Array(256),
  };
}

// MSR indices (SDM Vol. 4).
export const MSR_IA32_TSC = 0x10;
export const MSR_IA32_SYSENTER_CS = 0x174;
export const MSR_IA32_SYSENTER_ESP = 0x175;
export const MSR_IA32_SYSENTER_EIP = 0x176;
export const MSR_IA32_MISC_ENABLE = 0x1a0;
export const MSR_MTRR_DEF_TYPE = 0x2ff;
export const MSR_STAR = 0xc0000081;
export const MSR_LSTAR = 0xc0000082;
export const MSR_CSTAR = 0xc0000083;
export const MSR_SYSCALL_MASK = 0xc0000084;
export const MSR_KERNEL_GS_BASE = 0xc0000102;
export const MISC_ENABLE_FAST_STRING = 0x1n;
/** IA32_MTRR_DEF_TYPE: MTRRs enabled (bit 11), default type write-back (6). */
export const MTRR_ENABLE = 0x800n;
export const MTRR_MEM_TYPE_WB = 0x6n;

/**
 * MSRs to set on every vCPU before boot: syscall/sysenter MSRs cleared, TSC 0, fast strings
 * enabled, MTRRs enabled with write-back default (otherwise guests may treat RAM as uncached).
 */
export function bootMsrEntries(): MsrEntry[] {
  return [
    { index: MSR_IA32_SYSENTER_CS, data: 0n },
    { index: MSR_IA32_SYSENTER_ESP, data: 0n },
    { index: MSR_IA32_SYSENTER_EIP, data: 0n },
    { index: MSR_STAR, data: 0n },
    { index: MSR_CSTAR, data: 0n },
    { index: MSR_KERNEL_GS_BASE, data: 0n },
    { index: MSR_SYSCALL_MASK, data: 0n },
    { index: MSR_LSTAR, data: 0n },
    { index: MSR_IA32_TSC, data: 0n },
    { index: MSR_IA32_MISC_ENABLE, data: MISC_ENABLE_FAST_STRING },
    { index: MSR_MTRR_DEF_TYPE, data: MTRR_ENABLE | MTRR_MEM_TYPE_WB },
  ];
}
