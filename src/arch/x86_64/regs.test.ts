import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GuestMemory } from '../../memory/guest_memory.js';
import { BOOT_GDT_START, BOOT_STACK_POINTER, GiB, MiB, PML4_START } from './layout.js';
import {
  BOOT_CS_SELECTOR, BOOT_DS_SELECTOR, bootMsrEntries, defaultFpu, GDT_CODE32, GDT_CODE64, GDT_DATA, gdtEntry,
  linux64BootState, MSR_IA32_MISC_ENABLE, MSR_MTRR_DEF_TYPE, pvhBootState, segmentFromGdtEntry, writeBootTables,
} from './regs.js';

test('GDT descriptor encoding (SDM Vol. 3, 3.4.5)', () => {
  assert.equal(GDT_CODE64, 0x00af9b000000ffffn);
  assert.equal(GDT_CODE32, 0x00cf9b000000ffffn);
  assert.equal(GDT_DATA, 0x00cf93000000ffffn);
  assert.equal(gdtEntry(0x008b, 0x12345678, 0x67), 0x12008b345678_0067n);
  const cs = segmentFromGdtEntry(GDT_CODE64, 0x10);
  assert.deepEqual(cs, { base: 0n, limit: 0xffffffff, selector: 0x10, type: 0xb, s: 1, dpl: 0, present: 1, avl: 0, l: 1, db: 0, g: 1, unusable: 0 });
  const tss = segmentFromGdtEntry(gdtEntry(0x008b, 0x12345678, 0x67), 0x20);
  assert.equal(tss.base, 0x12345678n);
  assert.equal(tss.limit, 0x67);
  assert.equal(tss.s, 0);
});

/** Walk 4-level paging (SDM Vol. 3, 4.5) for a 2 MiB-page identity map. */
function translate(m: GuestMemory, cr3: bigint, va: number): number | undefined {
  const idx = (shift: number): number => Math.floor(va / 2 ** shift) % 512;
  const pml4e = m.readU64(Number(cr3) + idx(39) * 8);
  if ((pml4e & 1n) === 0n) return undefined;
  const pdpte = m.readU64(Number(pml4e & 0xffffffffff000n) + idx(30) * 8);
  if ((pdpte & 1n) === 0n) return undefined;
  const pde = m.readU64(Number(pdpte & 0xffffffffff000n) + idx(21) * 8);
  if ((pde & 1n) === 0n || (pde & 0x80n) === 0n) return undefined;
  return Number(pde & 0xfffffffe00000n) + (va % (2 * MiB));
}

test('64-bit Linux boot state: long mode, identity map of 4 GiB, __BOOT_CS/__BOOT_DS, RSI', () => {
  const s = linux64BootState(0x100200, 0x7000);
  assert.equal(s.regs.rip, 0x100200n);
  assert.equal(s.regs.rsi, 0x7000n);
  assert.equal(s.regs.rsp, BigInt(BOOT_STACK_POINTER));
  assert.equal(s.regs.rflags, 2n, 'IF clear');
  assert.equal(s.sregs.cr0 & 0x80000001n, 0x80000001n);
  assert.equal(s.sregs.cr4 & 0x20n, 0x20n);
  assert.equal(s.sregs.efer, 0x500n);
  assert.equal(s.sregs.cr3, BigInt(PML4_START));
  assert.equal(s.sregs.cs.selector, BOOT_CS_SELECTOR);
  assert.equal(s.sregs.cs.l, 1);
  assert.equal(s.sregs.cs.db, 0);
  for (const seg of [s.sregs.ds, s.sregs.es, s.sregs.ss]) {
    assert.equal(seg.selector, BOOT_DS_SELECTOR);
    assert.equal(seg.limit, 0xffffffff);
    assert.equal(seg.type & 0x2, 0x2, 'writable');
  }
  assert.equal(s.sregs.tr.type, 0xb);
  assert.equal(s.sregs.tr.present, 1);
  assert.equal(s.sregs.apicBase, 0xfee00900n);
  assert.equal(linux64BootState(0x100200, 0x7000, 1).sregs.apicBase, 0xfee00800n);

  const m = GuestMemory.fromBuffers([{ gpa: 0, buffer: new ArrayBuffer(MiB) }]);
  writeBootTables(m, s.writes);
  assert.equal(m.readU64(BOOT_GDT_START + 0x10), GDT_CODE64);
  assert.equal(m.readU64(BOOT_GDT_START + 0x18), GDT_DATA);
  assert.equal(Number(s.sregs.gdt.base), BOOT_GDT_START);
  assert.ok(s.sregs.gdt.limit >= 0x27);
  for (const va of [0, 0x7000, 0x100200, 0x1000000, 3 * GiB - 1, 0xfee00000, 4 * GiB - 1]) {
    assert.equal(translate(m, s.sregs.cr3, va), va, `identity at 0x${va.toString(16)}`);
  }
  assert.equal(translate(m, s.sregs.cr3, 4 * GiB), undefined);
});

test('PVH boot state: 32-bit protected mode, paging off, EBX = start_info', () => {
  const s = pvhBootState(0x1000850, 0x6000);
  assert.equal(s.regs.rip, 0x1000850n);
  assert.equal(s.regs.rbx, 0x6000n);
  assert.equal(s.regs.rflags, 2n);
  assert.equal(s.sregs.cr0 & 1n, 1n);
  assert.equal(s.sregs.cr0 & 0x80000000n, 0n);
  assert.equal(s.sregs.efer, 0n);
  assert.equal(s.sregs.cr4, 0n);
  assert.equal(s.sregs.cs.db, 1);
  assert.equal(s.sregs.cs.l, 0);
  assert.equal(s.sregs.cs.limit, 0xffffffff);
  assert.equal(s.sregs.cs.type, 0xb);
  assert.equal(s.sregs.ds.limit, 0xffffffff);
  assert.equal(s.sregs.tr.type, 0xb);
  assert.equal(s.writes.length, 2, 'no page tables');
});

test('default FPU and boot MSRs', () => {
  const f = defaultFpu();
  assert.equal(f.fcw, 0x37f);
  assert.equal(f.mxcsr, 0x1f80);
  assert.equal(f.fpr.length, 128);
  assert.equal(f.xmm.length, 256);
  const msrs = bootMsrEntries();
  const idx = new Set(msrs.map((e) => e.index));
  for (const i of [0x174, 0x175, 0x176, 0xc0000081, 0xc0000082, 0xc0000083, 0xc0000084, 0xc0000102, 0x10]) assert.ok(idx.has(i), `MSR 0x${i.toString(16)}`);
  assert.equal(msrs.find((e) => e.index === MSR_IA32_MISC_ENABLE)!.data, 1n);
  assert.equal(msrs.find((e) => e.index === MSR_MTRR_DEF_TYPE)!.data, 0x806n);
});
