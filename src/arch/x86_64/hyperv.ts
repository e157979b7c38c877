// Hyper-V's guest interface on x86 (Hypervisor Top-Level Functional Specification, "TLFS"
// below, v6.0b; Linux's asm/hyperv-tlfs.h uses the same names): the CPUID leaves a guest reads
// to find Hyper-V and its features, the synthetic MSRs, hypercall status codes.
//
// The hypervisor CPUID range with enlightenments on:
//   0x40000000..0x4000000A  Hyper-V: vendor "Microsoft Hv", interface "Hv#1" (TLFS 2.4), built
//                           from what the hypervisor can emulate (KVM_GET_SUPPORTED_HV_CPUID)
//                           intersected with the features this VMM offers (HYPERV_OFFERED).
//   nothing else up to 0x4000FFFF: KVM's own paravirt leaves ("KVMKVMKVM") are left out, as
//                           Cloud Hypervisor does with kvm_hyperv (QEMU's "kvm=off"). Moving them
//                           to 0x40000100, QEMU's default, is not enough for a Linux guest: each
//                           platform's detect() returns a priority and the highest wins
//                           (arch/x86/kernel/cpu/hypervisor.c detect_hypervisor_vendor); Hyper-V's
//                           (mshyperv.c ms_hyperv_platform) is HYPERV_CPUID_MIN = 0x40000005, KVM's
//                           (kvm.c kvm_detect) is the leaf where it found "KVMKVMKVM", searching
//                           0x40000000..0x4000FF00 in steps of 0x100 (asm/kvm_para.h kvm_cpuid_base):
//                           0x40000100 beats 0x40000005, and the guest says "Hypervisor detected:
//                           KVM" and runs on kvm-clock (seen in the sandbox with Debian's 6.1).
//                           Without them the guest has no kvm-clock, PV EOI, steal time or async
//                           page faults; Hyper-V's TSC page and APIC MSRs (lazy EOI) stand in.

import type { CpuIdEntry } from '../../hypervisor/regs.js';

export const HYPERV_CPUID_VENDOR_AND_MAX_FUNCTIONS = 0x40000000;
export const HYPERV_CPUID_INTERFACE = 0x40000001;
export const HYPERV_CPUID_VERSION = 0x40000002;
export const HYPERV_CPUID_FEATURES = 0x40000003;
export const HYPERV_CPUID_ENLIGHTMENT_INFO = 0x40000004;
export const HYPERV_CPUID_IMPLEMENT_LIMITS = 0x40000005;
export const HYPERV_CPUID_NESTED_FEATURES = 0x4000000a;
/** TLFS 2.4: a "Hv#1" hypervisor implements the leaves up to 0x4000000A. */
export const HYPERV_CPUID_LAST = HYPERV_CPUID_NESTED_FEATURES;
/** The range Linux (kvm_cpuid_base) and KVM (kvm_get_hypervisor_cpuid) search for "KVMKVMKVM". */
export const HYPERVISOR_CPUID_RANGE_END = 0x40010000;
const HYPERVISOR_CPUID_BASE = 0x40000000;

// HYPERV_CPUID_FEATURES.EAX: partition privileges (TLFS 2.4.4).
export const HV_MSR_VP_RUNTIME_AVAILABLE = 1 << 0;
export const HV_MSR_TIME_REF_COUNT_AVAILABLE = 1 << 1;
export const HV_MSR_SYNIC_AVAILABLE = 1 << 2;
export const HV_MSR_SYNTIMER_AVAILABLE = 1 << 3;
export const HV_MSR_APIC_ACCESS_AVAILABLE = 1 << 4;
export const HV_MSR_HYPERCALL_AVAILABLE = 1 << 5;
export const HV_MSR_VP_INDEX_AVAILABLE = 1 << 6;
export const HV_MSR_RESET_AVAILABLE = 1 << 7;
export const HV_MSR_REFERENCE_TSC_AVAILABLE = 1 << 9;
export const HV_ACCESS_FREQUENCY_MSRS = 1 << 11;
export const HV_ACCESS_TSC_INVARIANT = 1 << 15;
// HYPERV_CPUID_FEATURES.EBX: partition creation flags (TLFS 2.4.4, "HV_PARTITION_PRIVILEGE_MASK").
export const HV_CREATE_PARTITIONS = 1 << 0;
export const HV_POST_MESSAGES = 1 << 4;
export const HV_SIGNAL_EVENTS = 1 << 5;
// HYPERV_CPUID_FEATURES.EDX: miscellaneous features.
export const HV_FEATURE_FREQUENCY_MSRS_AVAILABLE = 1 << 8;
export const HV_STIMER_DIRECT_MODE_AVAILABLE = 1 << 19;
// HYPERV_CPUID_ENLIGHTMENT_INFO.EAX: recommendations (TLFS 2.4.5).
export const HV_APIC_ACCESS_RECOMMENDED = 1 << 3;
export const HV_RELAXED_TIMING_RECOMMENDED = 1 << 5;
/** HYPERV_CPUID_ENLIGHTMENT_INFO.EBX: spinlock retries before notifying; all ones = never (TLFS 2.4.5). */
export const HV_SPINLOCK_NEVER_NOTIFY = 0xffffffff;

// Synthetic MSRs (TLFS Appendix "Hyper-V Synthetic MSRs").
export const HV_X64_MSR_GUEST_OS_ID = 0x40000000;
export const HV_X64_MSR_HYPERCALL = 0x40000001;
export const HV_X64_MSR_VP_INDEX = 0x40000002;
export const HV_X64_MSR_TIME_REF_COUNT = 0x40000020;
export const HV_X64_MSR_REFERENCE_TSC = 0x40000021;
export const HV_X64_MSR_SCONTROL = 0x40000080;
export const HV_X64_MSR_SIEFP = 0x40000082;
export const HV_X64_MSR_SIMP = 0x40000083;

// Hypercall input value (TLFS 3.7): call code in bits 15:0, fast in bit 16.
export const HV_HYPERCALL_CODE_MASK = 0xffff;
export const HVCALL_POST_MESSAGE = 0x005c;
export const HVCALL_SIGNAL_EVENT = 0x005d;
// Hypercall status codes (TLFS 3.10 / Appendix B).
export const HV_STATUS_SUCCESS = 0;
export const HV_STATUS_INVALID_HYPERCALL_CODE = 2;
export const HV_STATUS_INVALID_HYPERCALL_INPUT = 3;

/** Little-endian 4-character CPUID register value ("Hv#1" = 0x31237648). */
export const cpuidSig = (s: string): number =>
  (s.charCodeAt(0) | (s.charCodeAt(1) << 8) | (s.charCodeAt(2) << 16) | (s.charCodeAt(3) << 24)) >>> 0;

/** The 12-byte vendor of a 0x40000000-style leaf (EBX, ECX, EDX), as a string. */
export function cpuidVendor(e: CpuIdEntry): string {
  let s = '';
  for (const r of [e.ebx, e.ecx, e.edx]) for (let i = 0; i < 4; i++) s += String.fromCharCode((r >>> (8 * i)) & 0xff);
  return s;
}

/**
 * The enlightenments this VMM offers (each still needs the hypervisor's support): the
 * hypercall page and VP index (every Hyper-V guest needs them), VP runtime, the partition
 * reference counter and reference TSC page (hyperv_clocksource_tsc_page), SynIC, the TSC/APIC
 * frequency MSRs, the APIC access MSRs (EOI/ICR/TPR, the VP assist page's lazy EOI), relaxed
 * timing; post-message/signal-event hypercalls with SynIC (the VMM answers them, VMBus needs
 * them). Not offered: the reset MSR (the guest resets through ACPI and the i8042 here),
 * invariant TSC (it would make Linux prefer the raw TSC over the TSC page), crash MSRs, stats
 * pages, reenlightenment, TLB-flush/IPI hypercalls, enlightened VMCS, and the synthetic timers
 * (TLFS 12.4; with direct mode, 12.4.4). Without synthetic timers a Linux guest keeps the local
 * APIC timer as its clockevent (its hv_stimer clockevent registers only with
 * HV_MSR_SYNTIMER_AVAILABLE, drivers/clocksource/hyperv_timer.c). Why they are left out: of
 * the sandbox boots of a 2-vCPU Linux guest with them, 2 of 8 went wrong (a console that
 * stopped mid-echo; a sandbox whose CPUs spun in its kernel), none of the 6 without them did;
 * KVM's synthetic timers are reported to storm on an expiry in the past under nested
 * virtualisation without TSC scaling, as in the sandbox. Not proven: README "Hyper-V
 * enlightenments" has the counts. The bits stay defined, and hypervLeaves keeps their
 * dependencies, for when they are offered again.
 */
export const HYPERV_OFFERED = {
  eax: HV_MSR_VP_RUNTIME_AVAILABLE | HV_MSR_TIME_REF_COUNT_AVAILABLE | HV_MSR_SYNIC_AVAILABLE
    | HV_MSR_APIC_ACCESS_AVAILABLE | HV_MSR_HYPERCALL_AVAILABLE
    | HV_MSR_VP_INDEX_AVAILABLE | HV_MSR_REFERENCE_TSC_AVAILABLE | HV_ACCESS_FREQUENCY_MSRS,
  ebx: HV_POST_MESSAGES | HV_SIGNAL_EVENTS,
  edx: HV_FEATURE_FREQUENCY_MSRS_AVAILABLE,
  hints: HV_APIC_ACCESS_RECOMMENDED | HV_RELAXED_TIMING_RECOMMENDED,
} as const;

/** What needs SynIC: its MSRs, synthetic timers (they signal through SINTs), message hypercalls. */
const NEEDS_SYNIC = {
  eax: HV_MSR_SYNIC_AVAILABLE | HV_MSR_SYNTIMER_AVAILABLE,
  ebx: HV_POST_MESSAGES | HV_SIGNAL_EVENTS,
  edx: HV_STIMER_DIRECT_MODE_AVAILABLE,
} as const;

export class HyperVCpuidError extends Error {
  override name = 'HyperVCpuidError';
}

/** What the hypervisor gave for Hyper-V: its leaves and whether SynIC is on for this vCPU. */
export interface HyperVLeavesInput {
  /** The hypervisor's Hyper-V leaves (KVM_GET_SUPPORTED_HV_CPUID). */
  supported: readonly CpuIdEntry[];
  /** SynIC was enabled on this vCPU (KVM_CAP_HYPERV_SYNIC2). */
  synic: boolean;
}

export interface HyperVLeaves {
  /** 0x40000000..0x4000000A, in order. */
  entries: CpuIdEntry[];
  /** Offered features the hypervisor does not support (names), for the log. */
  missing: string[];
}

const FEATURE_NAMES: ReadonlyArray<readonly ['eax' | 'ebx' | 'edx' | 'hints', number, string]> = [
  ['eax', HV_MSR_VP_RUNTIME_AVAILABLE, 'VP runtime'],
  ['eax', HV_MSR_TIME_REF_COUNT_AVAILABLE, 'time reference count'],
  ['eax', HV_MSR_SYNIC_AVAILABLE, 'SynIC'],
  ['eax', HV_MSR_SYNTIMER_AVAILABLE, 'synthetic timers'],
  ['eax', HV_MSR_APIC_ACCESS_AVAILABLE, 'APIC access MSRs'],
  ['eax', HV_MSR_REFERENCE_TSC_AVAILABLE, 'reference TSC page'],
  ['eax', HV_ACCESS_FREQUENCY_MSRS, 'frequency MSRs'],
  ['ebx', HV_POST_MESSAGES, 'post messages'],
  ['ebx', HV_SIGNAL_EVENTS, 'signal events'],
  ['edx', HV_FEATURE_FREQUENCY_MSRS_AVAILABLE, 'frequency MSRs (misc)'],
  ['edx', HV_STIMER_DIRECT_MODE_AVAILABLE, 'synthetic timer direct mode'],
  ['hints', HV_APIC_ACCESS_RECOMMENDED, 'APIC access recommended'],
  ['hints', HV_RELAXED_TIMING_RECOMMENDED, 'relaxed timing'],
];

const leaf = (fn: number, eax = 0, ebx = 0, ecx = 0, edx = 0): CpuIdEntry =>
  ({ function: fn, index: 0, flags: 0, eax: eax >>> 0, ebx: ebx >>> 0, ecx: ecx >>> 0, edx: edx >>> 0 });

/**
 * Hyper-V's CPUID leaves 0x40000000..0x4000000A for one vCPU: the hypervisor's leaves, with
 * the vendor "Microsoft Hv" (Linux's ms_hyperv_platform and Windows look for exactly that; KVM
 * says "Linux KVM Hv"), the features limited to HYPERV_OFFERED, the leaves KVM leaves out
 * (0x40000006..9, hardware features and reserved) present as zeros. Pure. Throws when the
 * hypervisor lacks what every Hyper-V guest needs (interface "Hv#1", hypercall page, VP index).
 */
export function hypervLeaves(input: HyperVLeavesInput): HyperVLeaves {
  const byFn = new Map<number, CpuIdEntry>();
  for (const e of input.supported) if (e.index === 0 && !byFn.has(e.function)) byFn.set(e.function, e);
  const iface = byFn.get(HYPERV_CPUID_INTERFACE);
  if (iface === undefined || iface.eax >>> 0 !== cpuidSig('Hv#1')) {
    throw new HyperVCpuidError(`the hypervisor does not implement Hyper-V's "Hv#1" interface (CPUID 0x40000001 EAX is ${iface === undefined ? 'absent' : `0x${(iface.eax >>> 0).toString(16)}`})`);
  }
  const feat = byFn.get(HYPERV_CPUID_FEATURES);
  const need = HV_MSR_HYPERCALL_AVAILABLE | HV_MSR_VP_INDEX_AVAILABLE;
  if (feat === undefined || (feat.eax & need) !== need) {
    throw new HyperVCpuidError('the hypervisor\'s Hyper-V emulation lacks the hypercall page or the VP index MSR (CPUID 0x40000003 EAX bits 5 and 6)');
  }
  const hintsIn = byFn.get(HYPERV_CPUID_ENLIGHTMENT_INFO);
  const have = { eax: feat.eax, ebx: feat.ebx, edx: feat.edx, hints: hintsIn?.eax ?? 0 };
  const want = { ...HYPERV_OFFERED } as { eax: number; ebx: number; edx: number; hints: number };
  if (!input.synic) {
    want.eax &= ~NEEDS_SYNIC.eax;
    want.ebx &= ~NEEDS_SYNIC.ebx;
    want.edx &= ~NEEDS_SYNIC.edx;
  }
  const got = { eax: want.eax & have.eax, ebx: want.ebx & have.ebx, edx: want.edx & have.edx, hints: want.hints & have.hints };
  // Dependencies (TLFS 12.1, 12.4): synthetic timers count in reference time and signal through
  // SynIC; direct mode is a mode of the synthetic timers; the frequency MSRs need both bits.
  if (!(got.eax & HV_MSR_SYNIC_AVAILABLE) || !(got.eax & HV_MSR_TIME_REF_COUNT_AVAILABLE)) got.eax &= ~HV_MSR_SYNTIMER_AVAILABLE;
  if (!(got.eax & HV_MSR_SYNTIMER_AVAILABLE)) got.edx &= ~HV_STIMER_DIRECT_MODE_AVAILABLE;
  if (!(got.eax & HV_MSR_SYNIC_AVAILABLE)) got.ebx &= ~NEEDS_SYNIC.ebx;
  if (!(got.eax & HV_ACCESS_FREQUENCY_MSRS) || !(got.edx & HV_FEATURE_FREQUENCY_MSRS_AVAILABLE)) {
    got.eax &= ~HV_ACCESS_FREQUENCY_MSRS;
    got.edx &= ~HV_FEATURE_FREQUENCY_MSRS_AVAILABLE;
  }
  if (!(got.eax & HV_MSR_APIC_ACCESS_AVAILABLE)) got.hints &= ~HV_APIC_ACCESS_RECOMMENDED;
  const missing = FEATURE_NAMES.filter(([r, bit]) => (want[r] & bit) !== 0 && (got[r] & bit) === 0).map(([, , n]) => n);

  const version = byFn.get(HYPERV_CPUID_VERSION);
  const limits = byFn.get(HYPERV_CPUID_IMPLEMENT_LIMITS);
  const entries: CpuIdEntry[] = [
    leaf(HYPERV_CPUID_VENDOR_AND_MAX_FUNCTIONS, HYPERV_CPUID_LAST, cpuidSig('Micr'), cpuidSig('osof'), cpuidSig('t Hv')),
    leaf(HYPERV_CPUID_INTERFACE, cpuidSig('Hv#1')),
    // Build number, major.minor version, service pack/branch: what the hypervisor says.
    version ? leaf(HYPERV_CPUID_VERSION, version.eax, version.ebx, version.ecx, version.edx) : leaf(HYPERV_CPUID_VERSION),
    leaf(HYPERV_CPUID_FEATURES, got.eax, got.ebx, 0, got.edx),
    leaf(HYPERV_CPUID_ENLIGHTMENT_INFO, got.hints, HV_SPINLOCK_NEVER_NOTIFY),
    // Maximum virtual and logical processors.
    limits ? leaf(HYPERV_CPUID_IMPLEMENT_LIMITS, limits.eax, limits.ebx) : leaf(HYPERV_CPUID_IMPLEMENT_LIMITS),
  ];
  for (let fn = HYPERV_CPUID_IMPLEMENT_LIMITS + 1; fn <= HYPERV_CPUID_LAST; fn++) entries.push(leaf(fn));
  return { entries, missing };
}

/**
 * A vCPU's CPUID table with Hyper-V's leaves: every entry of `table` in the hypervisor range
 * 0x40000000..0x4000FFFF (KVM's "KVMKVMKVM" leaves) is taken out, so that nothing but Hyper-V is
 * found there (see the top of this file), and `hyperv` goes in at 0x40000000, in function order.
 * Pure.
 */
export function withHyperVLeaves(table: readonly CpuIdEntry[], hyperv: readonly CpuIdEntry[]): CpuIdEntry[] {
  const inRange = (fn: number) => (fn >>> 0) >= HYPERVISOR_CPUID_BASE && (fn >>> 0) < HYPERVISOR_CPUID_RANGE_END;
  const out = table.filter((e) => !inRange(e.function)).map((e) => ({ ...e }));
  const at = out.findIndex((e) => (e.function >>> 0) >= HYPERVISOR_CPUID_RANGE_END);
  const hv = hyperv.map((e) => ({ ...e }));
  if (at < 0) out.push(...hv);
  else out.splice(at, 0, ...hv);
  return out;
}
