// Hyper-V CPUID leaves from what KVM reports (KVM_GET_SUPPORTED_HV_CPUID), and the table a
// guest then reads. The KVM input is what Linux 6.1's kvm_get_hv_cpuid (arch/x86/kvm/hyperv.c)
// returns; the guest-side checks are what Linux's ms_hyperv_platform and kvm_cpuid_base read.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { CpuIdEntry } from '../../hypervisor/regs.js';
import { vcpuCpuid } from './cpuid.js';
import {
  cpuidSig, cpuidVendor, HV_ACCESS_FREQUENCY_MSRS, HV_ACCESS_TSC_INVARIANT, HV_APIC_ACCESS_RECOMMENDED,
  HV_FEATURE_FREQUENCY_MSRS_AVAILABLE, HV_MSR_APIC_ACCESS_AVAILABLE, HV_MSR_HYPERCALL_AVAILABLE,
  HV_MSR_REFERENCE_TSC_AVAILABLE, HV_MSR_RESET_AVAILABLE, HV_MSR_SYNIC_AVAILABLE, HV_MSR_SYNTIMER_AVAILABLE,
  HV_MSR_TIME_REF_COUNT_AVAILABLE, HV_MSR_VP_INDEX_AVAILABLE, HV_MSR_VP_RUNTIME_AVAILABLE, HV_POST_MESSAGES,
  HV_RELAXED_TIMING_RECOMMENDED, HV_SIGNAL_EVENTS, HV_STIMER_DIRECT_MODE_AVAILABLE, HyperVCpuidError,
  hypervLeaves, withHyperVLeaves,
} from './hyperv.js';

const e = (fn: number, eax: number, ebx = 0, ecx = 0, edx = 0, index = 0, flags = 0): CpuIdEntry =>
  ({ function: fn, index, flags, eax: eax >>> 0, ebx: ebx >>> 0, ecx: ecx >>> 0, edx: edx >>> 0 });
const bits = (...b: number[]) => b.reduce((a, x) => a | (1 << x), 0) >>> 0;

/** Linux 6.1 KVM_GET_SUPPORTED_HV_CPUID on an Intel host without eVMCS. */
function kvmHv(): CpuIdEntry[] {
  return [
    e(0x40000000, 0x40000082, cpuidSig('Linu'), cpuidSig('x KV'), cpuidSig('M Hv')),
    e(0x40000001, cpuidSig('Hv#1')),
    e(0x40000002, 0x00003839, 0x000a0000),
    // EAX: VP runtime .. VP index, reset, ref TSC, frequency MSRs, reenlightenment, invariant TSC.
    // EBX: post messages, signal events, extended hypercalls. EDX: XMM input, frequency MSRs,
    // crash MSRs, XMM output, stimer direct mode.
    e(0x40000003, bits(0, 1, 2, 3, 4, 5, 6, 7, 9, 11, 13, 15), bits(4, 5, 20), 0, bits(4, 8, 10, 15, 19)),
    // Remote TLB flush, APIC access, relaxed timing, cluster IPI, ExProcessorMasks; 0xfff retries.
    e(0x40000004, bits(2, 3, 5, 10, 11), 0xfff),
    e(0x40000005, 1024, 64),
    e(0x4000000a, 0),
    e(0x40000080, 0, cpuidSig('Micr'), cpuidSig('osof'), cpuidSig('t VS')),
    e(0x40000081, cpuidSig('VS#1')),
    e(0x40000082, bits(1)),
  ];
}

function host(): CpuIdEntry[] {
  return [
    e(0, 0x1f, cpuidSig('Genu'), cpuidSig('ntel'), cpuidSig('ineI')),
    e(1, 0x000806f8, 0x00000800, 1 | (1 << 24), 0x178bfbff),
    e(0x40000000, 0x40000001, cpuidSig('KVMK'), cpuidSig('VMKV'), cpuidSig('M\0\0\0')),
    e(0x40000001, 0x01007afb, 0, 0, 1),
    e(0x80000000, 0x80000008),
    e(0x80000008, 0x3030),
  ];
}

const leafOf = (t: readonly CpuIdEntry[], fn: number) => t.find((x) => x.function === fn);

test('the Hyper-V leaves: "Microsoft Hv", "Hv#1", the offered features KVM has, zeros up to 0x4000000A', () => {
  const { entries, missing } = hypervLeaves({ supported: kvmHv(), synic: true });
  assert.deepEqual(entries.map((x) => x.function), [0x40000000, 0x40000001, 0x40000002, 0x40000003, 0x40000004, 0x40000005, 0x40000006, 0x40000007, 0x40000008, 0x40000009, 0x4000000a]);
  const v = entries[0]!;
  assert.equal(cpuidVendor(v), 'Microsoft Hv');
  assert.equal(v.eax, 0x4000000a, 'last leaf: the syndbg leaves KVM reports are not offered');
  assert.equal(entries[1]!.eax, 0x31237648, 'Hv#1');
  assert.deepEqual([entries[2]!.eax, entries[2]!.ebx], [0x3839, 0xa0000], 'version as KVM says');
  const f = entries[3]!;
  assert.equal(f.eax, (HV_MSR_VP_RUNTIME_AVAILABLE | HV_MSR_TIME_REF_COUNT_AVAILABLE | HV_MSR_SYNIC_AVAILABLE
    | HV_MSR_APIC_ACCESS_AVAILABLE | HV_MSR_HYPERCALL_AVAILABLE | HV_MSR_VP_INDEX_AVAILABLE
    | HV_MSR_REFERENCE_TSC_AVAILABLE | HV_ACCESS_FREQUENCY_MSRS) >>> 0);
  assert.equal(f.eax & HV_MSR_SYNTIMER_AVAILABLE, 0, 'no synthetic timers although KVM has them (the guest keeps the APIC timer)');
  assert.equal(f.eax & HV_MSR_RESET_AVAILABLE, 0, 'no reset MSR');
  assert.equal(f.eax & HV_ACCESS_TSC_INVARIANT, 0, 'no invariant TSC (Linux would prefer the raw TSC to the TSC page)');
  assert.equal(f.ebx, (HV_POST_MESSAGES | HV_SIGNAL_EVENTS) >>> 0, 'no CreatePartitions (a root partition) nor extended hypercalls');
  assert.equal(f.edx, HV_FEATURE_FREQUENCY_MSRS_AVAILABLE, 'no synthetic timer direct mode, no crash MSRs, no XMM hypercall I/O');
  assert.equal(f.edx & HV_STIMER_DIRECT_MODE_AVAILABLE, 0);
  const hints = entries[4]!;
  assert.equal(hints.eax, (HV_APIC_ACCESS_RECOMMENDED | HV_RELAXED_TIMING_RECOMMENDED) >>> 0, 'no TLB-flush/IPI hypercalls recommended');
  assert.equal(hints.ebx, 0xffffffff, 'never notify on spinlocks');
  assert.deepEqual([entries[5]!.eax, entries[5]!.ebx], [1024, 64]);
  for (const z of entries.slice(6)) assert.deepEqual([z.eax, z.ebx, z.ecx, z.edx], [0, 0, 0, 0], `leaf 0x${z.function.toString(16)}`);
  assert.deepEqual(missing, []);
});

test('without SynIC: no SynIC, synthetic timers, direct mode or message hypercalls', () => {
  const { entries, missing } = hypervLeaves({ supported: kvmHv(), synic: false });
  const f = entries[3]!;
  assert.equal(f.eax & (HV_MSR_SYNIC_AVAILABLE | HV_MSR_SYNTIMER_AVAILABLE), 0);
  assert.equal(f.ebx, 0);
  assert.ok(f.eax & HV_MSR_REFERENCE_TSC_AVAILABLE, 'the TSC page does not need SynIC');
  assert.deepEqual(missing, [], 'not asked for, so not missing');
});

test('features an older KVM lacks are left out, with what they need, and named (what is not offered is not missing)', () => {
  const old = kvmHv().map((x) => x.function === 0x40000003
    ? { ...x, eax: (x.eax & ~(HV_MSR_TIME_REF_COUNT_AVAILABLE | HV_MSR_APIC_ACCESS_AVAILABLE)) >>> 0, edx: 0 }
    : x);
  const { entries, missing } = hypervLeaves({ supported: old, synic: true });
  const f = entries[3]!;
  assert.equal(f.eax & HV_ACCESS_FREQUENCY_MSRS, 0, 'frequency MSRs need both bits');
  assert.equal(entries[4]!.eax & HV_APIC_ACCESS_RECOMMENDED, 0, 'no APIC-access hint without the MSRs');
  assert.deepEqual(missing, ['time reference count', 'APIC access MSRs', 'frequency MSRs',
    'frequency MSRs (misc)', 'APIC access recommended']);
});

test('a hypervisor without "Hv#1", the hypercall page or VP index is an error naming it', () => {
  const noIface = kvmHv().filter((x) => x.function !== 0x40000001);
  assert.throws(() => hypervLeaves({ supported: noIface, synic: true }), (err: Error) => err instanceof HyperVCpuidError && /"Hv#1".*absent/.test(err.message));
  const noHypercall = kvmHv().map((x) => x.function === 0x40000003 ? { ...x, eax: x.eax & ~HV_MSR_HYPERCALL_AVAILABLE } : x);
  assert.throws(() => hypervLeaves({ supported: noHypercall, synic: true }), /hypercall page or the VP index/);
  const noVpIndex = kvmHv().map((x) => x.function === 0x40000003 ? { ...x, eax: x.eax & ~HV_MSR_VP_INDEX_AVAILABLE } : x);
  assert.throws(() => hypervLeaves({ supported: noVpIndex, synic: true }), /hypercall page or the VP index/);
  assert.throws(() => hypervLeaves({ supported: [], synic: true }), HyperVCpuidError);
});

/** Linux's kvm_cpuid_base (asm/kvm_para.h): the first leaf in 0x40000000..0x4000ff00, step 0x100, that says KVM. */
function kvmCpuidBase(t: readonly CpuIdEntry[]): number {
  for (let base = 0x40000000; base < 0x40010000; base += 0x100) {
    const l = leafOf(t, base);
    if (l && cpuidVendor(l) === 'KVMKVMKVM\0\0\0') return base;
  }
  return 0;
}

/**
 * Which of Hyper-V and KVM a Linux guest picks (arch/x86/kernel/cpu/hypervisor.c
 * detect_hypervisor_vendor: the highest detect() wins, Hyper-V before KVM on a tie):
 * ms_hyperv_platform returns HYPERV_CPUID_MIN (0x40000005) for "Microsoft Hv" with the
 * hypercall and VP index MSRs, kvm_detect the base where it found KVM.
 */
function linuxPicks(t: readonly CpuIdEntry[]): 'Microsoft Hyper-V' | 'KVM' | 'none' {
  const v = leafOf(t, 0x40000000);
  const f = leafOf(t, 0x40000003);
  const need = HV_MSR_HYPERCALL_AVAILABLE | HV_MSR_VP_INDEX_AVAILABLE;
  const hyperv = v && cpuidVendor(v) === 'Microsoft Hv' && v.eax >= 0x40000005 && v.eax <= 0x4000ffff && f && (f.eax & need) === need
    ? 0x40000005 : 0;
  const kvm = kvmCpuidBase(t);
  if (hyperv === 0 && kvm === 0) return 'none';
  return hyperv >= kvm ? 'Microsoft Hyper-V' : 'KVM';
}

test('the vCPU table: Hyper-V at 0x40000000, KVM\'s leaves gone from the range, the rest untouched', () => {
  const hv = hypervLeaves({ supported: kvmHv(), synic: true }).entries;
  const t = vcpuCpuid(host(), 0, 2, { hyperv: hv });
  assert.equal(linuxPicks(t), 'Microsoft Hyper-V');
  assert.equal(leafOf(t, 0x40000001)!.eax, cpuidSig('Hv#1'), 'what KVM turns its Hyper-V MSRs on by');
  assert.equal(kvmCpuidBase(t), 0, 'no "KVMKVMKVM" anywhere Linux looks');
  // The hypervisor range holds exactly Hyper-V's leaves, once each, in order.
  const fns = t.map((x) => x.function);
  assert.equal(new Set(fns).size, fns.length);
  assert.deepEqual(fns.filter((f) => f >= 0x40000000 && f < 0x40010000), hv.map((x) => x.function));
  assert.ok(fns.every((f, i) => i === 0 || (fns[i - 1]! >>> 0) <= (f >>> 0)), `leaves in order: ${fns.map((f) => f.toString(16)).join(' ')}`);
  // Outside the hypervisor range the table is what it is without Hyper-V.
  const plain = vcpuCpuid(host(), 0, 2);
  const outside = (x: CpuIdEntry) => x.function < 0x40000000 || x.function >= 0x80000000;
  assert.deepEqual(t.filter(outside), plain.filter(outside));
  // Without Hyper-V, KVM stays at 0x40000000 and is what Linux finds.
  assert.equal(kvmCpuidBase(plain), 0x40000000);
  assert.equal(linuxPicks(plain), 'KVM');
});

test('KVM\'s leaves moved to 0x40000100 (QEMU\'s layout) would still win in a Linux guest: why they are dropped', () => {
  const hv = hypervLeaves({ supported: kvmHv(), synic: true }).entries;
  const moved = [
    ...vcpuCpuid(host(), 0, 1, { hyperv: hv }),
    e(0x40000100, 0x40000101, cpuidSig('KVMK'), cpuidSig('VMKV'), cpuidSig('M\0\0\0')),
    e(0x40000101, 0x01007afb),
  ];
  assert.equal(linuxPicks(moved), 'KVM');
});

test('a table without KVM\'s leaves gets Hyper-V\'s all the same', () => {
  const h = host().filter((x) => x.function < 0x40000000 || x.function >= 0x80000000);
  const t = withHyperVLeaves(h, hypervLeaves({ supported: kvmHv(), synic: true }).entries);
  assert.equal(linuxPicks(t), 'Microsoft Hyper-V');
  assert.equal(t.filter((x) => x.function >= 0x40000000 && x.function < 0x40010000).length, 11);
});
