import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { CpuIdEntry } from '../../hypervisor/regs.js';
import { cpuVendor, CPUID_1_ECX_TSC_DEADLINE, vcpuCpuid } from './cpuid.js';

const sig = (s: string): number => (s.charCodeAt(0) | (s.charCodeAt(1) << 8) | (s.charCodeAt(2) << 16) | (s.charCodeAt(3) << 24)) >>> 0;
const e = (fn: number, index: number, eax: number, ebx: number, ecx: number, edx: number, flags = 0): CpuIdEntry =>
  ({ function: fn, index, flags, eax: eax >>> 0, ebx: ebx >>> 0, ecx: ecx >>> 0, edx: edx >>> 0 });

function intel(): CpuIdEntry[] {
  return [
    e(0, 0, 0x1f, sig('Genu'), sig('ntel'), sig('ineI')),
    e(1, 0, 0x000806f8, 0x12340800 | 0xff0000, (1 << 24) | (1 << 5) | (1 << 3) | 1, 0x178bfbff & ~(1 << 28)),
    e(4, 0, 0x1c004121, 0x02c0003f, 0x3f, 0, 1), // L1d
    e(4, 1, 0x1c004122, 0x01c0003f, 0x3f, 0, 1), // L1i
    e(4, 2, 0x1c004143, 0x03c0003f, 0x7ff, 0, 1), // L2
    e(4, 3, 0x1c03c163, 0x03c0003f, 0xffff, 0, 1), // L3
    e(4, 4, 0, 0, 0, 0, 1),
    e(0xb, 0, 1, 2, 0x100, 7, 1),
    e(0xb, 1, 7, 112, 0x201, 7, 1),
    e(0x40000000, 0, 0x40000001, sig('KVMK'), sig('VMKV'), sig('M\0\0\0')),
    e(0x40000001, 0, 0x01007afb, 0, 0, 0),
    e(0x80000000, 0, 0x80000008, 0, 0, 0),
    e(0x80000001, 0, 0, 0, 0x121, 0x2c100800),
    e(0x80000008, 0, 0x3030, 0, 0, 0),
  ];
}

function amd(): CpuIdEntry[] {
  return [
    e(0, 0, 0x10, sig('Auth'), sig('cAMD'), sig('enti')),
    e(1, 0, 0x00a20f10, 0x00100800, 1 << 24, 0x178bfbff),
    e(0x80000001, 0, 0, 0, (1 << 2) | (1 << 1) | 1, 0),
    e(0x80000008, 0, 0x3030, 0, 0x0001700f, 0),
    e(0x8000001d, 0, 0x00004121, 0x01c0003f, 0x3f, 0, 1),
    e(0x8000001d, 3, 0x0003c163, 0x03c0003f, 0x7fff, 1, 1),
    e(0x8000001e, 0, 7, 0x00000103, 0x00000303, 0),
  ];
}

const find = (l: CpuIdEntry[], fn: number, index = 0): CpuIdEntry => {
  const r = l.find((x) => x.function === fn && x.index === index);
  assert.ok(r, `leaf 0x${fn.toString(16)}.${index}`);
  return r;
};

test('vendor detection', () => {
  assert.equal(cpuVendor(intel()), 'intel');
  assert.equal(cpuVendor(amd()), 'amd');
  assert.equal(cpuVendor([]), 'unknown');
});

test('Intel: leaf 1 APIC ID/count/HTT/hypervisor, leaf 4 topology, leaf 0xB, VMX/MONITOR cleared', () => {
  const input = intel();
  const before = JSON.stringify(input);
  const out = vcpuCpuid(input, 2, 4);
  assert.equal(JSON.stringify(input), before, 'input untouched');
  const l1 = find(out, 1);
  assert.equal(l1.ebx >>> 24, 2);
  assert.equal((l1.ebx >>> 16) & 0xff, 4);
  assert.equal(l1.ebx & 0xffff, 0x0800, 'CLFLUSH/brand bits kept');
  assert.notEqual(l1.edx & (1 << 28), 0, 'HTT');
  assert.notEqual(l1.ecx & (1 << 31), 0, 'hypervisor');
  assert.equal(l1.ecx & (1 << 5), 0, 'VMX cleared');
  assert.equal(l1.ecx & (1 << 3), 0, 'MONITOR cleared');
  assert.notEqual(l1.ecx & CPUID_1_ECX_TSC_DEADLINE, 0, 'TSC deadline kept');
  assert.ok(l1.ecx >= 0 && l1.ebx >= 0, 'unsigned');
  for (const i of [0, 1, 2, 3]) {
    const l4 = find(out, 4, i);
    assert.equal(l4.eax >>> 26, 3, 'cores per package - 1');
    assert.equal((l4.eax >>> 14) & 0xfff, i === 3 ? 3 : 0, 'sharing');
    assert.equal(l4.eax & 0x3fff, find(input, 4, i).eax & 0x3fff, 'cache type/level kept');
  }
  assert.equal(find(out, 4, 4).eax, 0);
  const b0 = find(out, 0xb, 0), b1 = find(out, 0xb, 1), b2 = find(out, 0xb, 2);
  assert.deepEqual([b0.eax, b0.ebx, b0.ecx, b0.edx], [0, 1, 0x100, 2]);
  assert.deepEqual([b1.eax, b1.ebx, b1.ecx, b1.edx], [2, 4, 0x201, 2]);
  assert.deepEqual([b2.eax, b2.ebx, b2.ecx & 0xff00, b2.edx], [0, 0, 0, 2]);
  assert.ok([b0, b1, b2].every((x) => (x.flags & 1) === 1));
  assert.equal(out.filter((x) => x.function === 0xb).length, 3);
  assert.equal(out.some((x) => x.function === 0x1f), false, '0x1F only when supported');
  assert.deepEqual(find(out, 0x40000000), find(input, 0x40000000), 'KVM signature leaf kept');
  assert.deepEqual(find(out, 0x80000008), find(input, 0x80000008), 'AMD fields untouched on Intel');
});

test('leaf 0x1F is generated when supported; single vCPU has no HTT; nested keeps VMX', () => {
  const input = [...intel(), e(0x1f, 0, 1, 2, 0x100, 0, 1)];
  const out = vcpuCpuid(input, 0, 1, { nested: true });
  assert.equal(out.filter((x) => x.function === 0x1f).length, 3);
  assert.equal(find(out, 0x1f, 1).ebx, 1);
  assert.equal(find(out, 0x1f, 1).eax, 0);
  const l1 = find(out, 1);
  assert.equal(l1.edx & (1 << 28), 0);
  assert.notEqual(l1.ecx & (1 << 5), 0);
  assert.equal(find(vcpuCpuid(intel(), 5, 6), 0xb, 1).eax, 3, 'ceil(log2(6))');
});

test('AMD: NC, ApicIdCoreIdSize, extended APIC ID, cache sharing, CmpLegacy, SVM cleared', () => {
  const out = vcpuCpuid(amd(), 3, 8);
  const l8 = find(out, 0x80000008);
  assert.equal(l8.ecx & 0xff, 7);
  assert.equal((l8.ecx >>> 12) & 0xf, 3);
  assert.equal(l8.ecx & 0x30000, 0x10000, 'PerfTscSize kept');
  const l1e = find(out, 0x8000001e);
  assert.equal(l1e.eax, 3);
  assert.equal(l1e.ebx & 0xff, 3);
  assert.equal((l1e.ebx >>> 8) & 0xff, 0);
  assert.equal(l1e.ecx & 0x7ff, 0);
  assert.equal((find(out, 0x8000001d, 3).eax >>> 14) & 0xfff, 7);
  assert.equal((find(out, 0x8000001d, 0).eax >>> 14) & 0xfff, 0);
  const ext = find(out, 0x80000001);
  assert.equal(ext.ecx & (1 << 2), 0, 'SVM cleared');
  assert.notEqual(ext.ecx & (1 << 1), 0, 'CmpLegacy');
  assert.equal(find(out, 1).ebx >>> 24, 3);
});

test('invalid vCPU ids are rejected', () => {
  assert.throws(() => vcpuCpuid(intel(), 4, 4), /invalid vCPU id 4/);
  assert.throws(() => vcpuCpuid(intel(), 0, 0), /invalid vCPU count 0/);
});
