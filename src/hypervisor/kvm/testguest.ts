// Tiny hand-assembled guests for tests and benchmarks: a VM with one memory slot at GPA 0,
// one vCPU, and helpers to enter real mode or 64-bit long mode directly.

import * as libc from '../../sys/libc.js';
import { emptySegment } from '../regs.js';
import type { SegmentRegister } from '../regs.js';
import { KvmHypervisor } from './kvm.js';
import type { KvmVm } from './vm.js';
import type { KvmVcpu } from './vcpu.js';

export interface TinyGuest {
  kvm: KvmHypervisor;
  vm: KvmVm;
  vcpu: KvmVcpu;
  memAddr: bigint;
  memSize: number;
  mem: Uint8Array;
  close(): void;
}

/** Why KVM guests cannot run here, or null when /dev/kvm is usable. */
export function kvmUnavailable(): string | null {
  try {
    KvmHypervisor.open().close();
    return null;
  } catch (e) {
    return `/dev/kvm not usable: ${(e as Error).message}`;
  }
}

export function createTinyGuest(memSize = 2 << 20): TinyGuest {
  const kvm = KvmHypervisor.open();
  const vm = kvm.createVm();
  const memAddr = libc.mmap(memSize, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_PRIVATE | libc.MAP_ANONYMOUS | libc.MAP_NORESERVE, -1, 0);
  vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0n, memorySize: memSize, userspaceAddr: memAddr });
  const vcpu = vm.createVcpu(0);
  const mem = new Uint8Array(libc.view(memAddr, memSize));
  return {
    kvm, vm, vcpu, memAddr, memSize, mem,
    close() {
      vcpu.close();
      vm.close();
      kvm.close();
      libc.munmap(memAddr, memSize);
    },
  };
}

/** Real mode, CS=DS=SS=0, IP=`rip`. */
export function enterRealMode(vcpu: KvmVcpu, rip: number): void {
  const s = vcpu.getSregs();
  for (const seg of [s.cs, s.ds, s.es, s.fs, s.gs, s.ss]) {
    seg.base = 0n;
    seg.selector = 0;
  }
  vcpu.setSregs(s);
  const r = vcpu.getRegs();
  r.rip = BigInt(rip);
  r.rflags = 2n;
  r.rsp = 0x8000n;
  vcpu.setRegs(r);
}

const PML4 = 0x2000;
const PDPT = 0x3000;
const PD = 0x4000;
const GDT = 0x500;

function seg64(code: boolean, selector: number): SegmentRegister {
  return {
    ...emptySegment(),
    base: 0n, limit: 0xffffffff, selector, present: 1, dpl: 0, s: 1, g: 1,
    type: code ? 0xb : 0x3, l: code ? 1 : 0, db: code ? 0 : 1,
  };
}

/**
 * 64-bit long mode with the first 1 GiB identity-mapped by 2 MiB pages (so MMIO below 1 GiB
 * outside guest RAM exits to userspace), a flat GDT, paging tables at 0x2000-0x4fff.
 */
export function enterLongMode(vcpu: KvmVcpu, mem: Uint8Array, rip: number): void {
  const dv = new DataView(mem.buffer, mem.byteOffset, mem.byteLength);
  // Page tables (SDM Vol. 3, 4.5): PML4[0] -> PDPT, PDPT[0] -> PD, PD[i] = 2 MiB page i.
  dv.setBigUint64(PML4, BigInt(PDPT | 0x3), true);
  dv.setBigUint64(PDPT, BigInt(PD | 0x3), true);
  for (let i = 0; i < 512; i++) dv.setBigUint64(PD + i * 8, (BigInt(i) << 21n) | 0x83n, true);
  // GDT: null, 64-bit code (0x08), data (0x10).
  dv.setBigUint64(GDT, 0n, true);
  dv.setBigUint64(GDT + 8, 0x00af9b000000ffffn, true);
  dv.setBigUint64(GDT + 16, 0x00cf93000000ffffn, true);

  const s = vcpu.getSregs();
  s.cs = seg64(true, 0x08);
  s.ds = seg64(false, 0x10);
  s.es = seg64(false, 0x10);
  s.fs = seg64(false, 0x10);
  s.gs = seg64(false, 0x10);
  s.ss = seg64(false, 0x10);
  s.gdt = { base: BigInt(GDT), limit: 23 };
  s.cr3 = BigInt(PML4);
  s.cr4 = 0x20n; // PAE
  s.cr0 = 0x80000033n; // PG | NE | ET | MP | PE
  s.efer = 0x500n; // LMA | LME
  vcpu.setSregs(s);
  const r = vcpu.getRegs();
  r.rip = BigInt(rip);
  r.rflags = 2n;
  r.rsp = 0x8000n;
  vcpu.setRegs(r);
}
