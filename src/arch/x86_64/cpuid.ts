// Per-vCPU CPUID from the hypervisor's supported list (e.g. KVM_GET_SUPPORTED_CPUID).
//
// Topology presented to the guest: one package, `cpuCount` cores, one thread per core, one
// node; x2APIC ID = APIC ID = cpu index. Leaves touched (Intel SDM Vol. 2A "CPUID", AMD APM
// Vol. 3 "CPUID"):
//   0x1         EBX[31:24] initial APIC ID, EBX[23:16] logical processors per package,
//               EDX[28] HTT (when > 1), ECX[31] hypervisor present.
//   0x4         (Intel) EAX[31:26] cores per package - 1, EAX[25:14] logical CPUs sharing the cache - 1.
//   0xB, 0x1F   x2APIC topology: SMT level (1 thread) and core level (cpuCount), EDX = x2APIC ID.
//               Only emitted when the supported list has the leaf. Replaces all given subleaves.
//   0x80000001  (AMD) ECX[1] CmpLegacy with HTT.
//   0x80000008  (AMD) ECX[7:0] NC = cores - 1, ECX[15:12] ApicIdCoreIdSize.
//   0x8000001D  (AMD) EAX[25:14] logical CPUs sharing the cache - 1.
//   0x8000001E  (AMD) extended APIC ID, core ID, threads per core, node ID.
// Features cleared because this VMM does not provide them:
//   - VMX (0x1 ECX[5]) and SVM (0x80000001 ECX[2]) unless `nested` is set: we do not configure
//     nested virtualization state (KVM_{GET,SET}_NESTED_STATE) and cannot migrate it.
//   - MONITOR/MWAIT (0x1 ECX[3]): KVM normally does not report it; cleared defensively because
//     we do not enable KVM_CAP_X86_DISABLE_EXITS, so MWAIT would trap.
// Kept as given: TSC-deadline (0x1 ECX[24]; the in-kernel LAPIC emulates it), the KVM paravirt
// leaves 0x40000000 ("KVMKVMKVM\0\0\0") and 0x40000001 (replaced by Hyper-V's with the `hyperv`
// option: hyperv.ts says why they cannot stay), and everything else.

import type { CpuIdEntry } from '../../hypervisor/regs.js';
import { withHyperVLeaves } from './hyperv.js';

export const KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1;

export const CPUID_1_ECX_MONITOR = 1 << 3;
export const CPUID_1_ECX_VMX = 1 << 5;
export const CPUID_1_ECX_TSC_DEADLINE = 1 << 24;
export const CPUID_1_ECX_HYPERVISOR = 1 << 31;
export const CPUID_1_EDX_HTT = 1 << 28;
export const CPUID_80000001_ECX_CMP_LEGACY = 1 << 1;
export const CPUID_80000001_ECX_SVM = 1 << 2;

/** x2APIC topology level types (leaf 0xB/0x1F ECX[15:8]). */
export const TOPO_LEVEL_INVALID = 0;
export const TOPO_LEVEL_SMT = 1;
export const TOPO_LEVEL_CORE = 2;

export type CpuVendor = 'intel' | 'amd' | 'unknown';

export interface CpuidOptions {
  /** Keep VMX/SVM (nested virtualization). Default false. */
  nested?: boolean;
  /** Hyper-V's leaves 0x40000000.. (hyperv.ts hypervLeaves): they replace KVM's. */
  hyperv?: readonly CpuIdEntry[] | null;
}

export class CpuidError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CpuidError';
  }
}

const sig = (s: string): number => (s.charCodeAt(0) | (s.charCodeAt(1) << 8) | (s.charCodeAt(2) << 16) | (s.charCodeAt(3) << 24)) >>> 0;

/** Vendor from leaf 0 (EBX, EDX, ECX = "GenuineIntel" / "AuthenticAMD" / "HygonGenuine"). */
export function cpuVendor(entries: readonly CpuIdEntry[]): CpuVendor {
  const l0 = entries.find((e) => e.function === 0);
  if (l0 === undefined) return 'unknown';
  const b = l0.ebx >>> 0, d = l0.edx >>> 0, c = l0.ecx >>> 0;
  if (b === sig('Genu') && d === sig('ineI') && c === sig('ntel')) return 'intel';
  if (b === sig('Auth') && d === sig('enti') && c === sig('cAMD')) return 'amd';
  if (b === sig('Hygo') && d === sig('nGen') && c === sig('uine')) return 'amd';
  return 'unknown';
}

/** ceil(log2(n)) for n >= 1. */
function bitsFor(n: number): number {
  let b = 0;
  while ((1 << b) < n) b++;
  return b;
}

function topologyLeaf(fn: number, flags: number, cpuId: number, cpuCount: number): CpuIdEntry[] {
  const f = flags | KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
  return [
    { function: fn, index: 0, flags: f, eax: 0, ebx: 1, ecx: (TOPO_LEVEL_SMT << 8) | 0, edx: cpuId },
    { function: fn, index: 1, flags: f, eax: bitsFor(cpuCount), ebx: cpuCount & 0xffff, ecx: (TOPO_LEVEL_CORE << 8) | 1, edx: cpuId },
    { function: fn, index: 2, flags: f, eax: 0, ebx: 0, ecx: (TOPO_LEVEL_INVALID << 8) | 2, edx: cpuId },
  ];
}

/**
 * The CPUID table for vCPU `cpuId` of `cpuCount`. Pure: the input is not modified.
 */
export function vcpuCpuid(supported: readonly CpuIdEntry[], cpuId: number, cpuCount: number, opts: CpuidOptions = {}): CpuIdEntry[] {
  if (!Number.isInteger(cpuCount) || cpuCount < 1 || cpuCount > 4096) throw new CpuidError(`invalid vCPU count ${cpuCount}`);
  if (!Number.isInteger(cpuId) || cpuId < 0 || cpuId >= cpuCount) throw new CpuidError(`invalid vCPU id ${cpuId} (count ${cpuCount})`);
  const vendor = cpuVendor(supported);
  const nested = opts.nested === true;
  const out: CpuIdEntry[] = [];
  const emitted = new Set<number>();
  for (const src of supported) {
    const e: CpuIdEntry = { ...src };
    switch (e.function) {
      case 0x1: {
        e.ebx = ((e.ebx & 0x0000ffff) | ((cpuId & 0xff) << 24) | (Math.min(cpuCount, 255) << 16)) >>> 0;
        if (cpuCount > 1) e.edx |= CPUID_1_EDX_HTT; else e.edx &= ~CPUID_1_EDX_HTT;
        e.ecx |= CPUID_1_ECX_HYPERVISOR;
        e.ecx &= ~CPUID_1_ECX_MONITOR;
        if (!nested) e.ecx &= ~CPUID_1_ECX_VMX;
        break;
      }
      case 0x4: {
        if (vendor === 'intel' && (e.eax & 0x1f) !== 0) {
          const level = (e.eax >>> 5) & 0x7;
          const sharing = level >= 3 ? Math.min(cpuCount, 4096) - 1 : 0;
          e.eax = (e.eax & 0x3fff) | (sharing << 14) | ((Math.min(cpuCount, 64) - 1) << 26);
        }
        break;
      }
      case 0xb:
      case 0x1f: {
        if (!emitted.has(e.function)) {
          emitted.add(e.function);
          out.push(...topologyLeaf(e.function, e.flags, cpuId, cpuCount));
        }
        continue;
      }
      case 0x80000001: {
        if (vendor === 'amd') {
          if (cpuCount > 1) e.ecx |= CPUID_80000001_ECX_CMP_LEGACY; else e.ecx &= ~CPUID_80000001_ECX_CMP_LEGACY;
        }
        if (!nested) e.ecx &= ~CPUID_80000001_ECX_SVM;
        break;
      }
      case 0x80000008: {
        if (vendor === 'amd') {
          e.ecx = (e.ecx & ~0xf0ff) | ((Math.min(cpuCount, 256) - 1) & 0xff) | (bitsFor(cpuCount) << 12);
        }
        break;
      }
      case 0x8000001d: {
        if (vendor === 'amd' && (e.eax & 0x1f) !== 0) {
          const level = (e.eax >>> 5) & 0x7;
          const sharing = level >= 3 ? Math.min(cpuCount, 4096) - 1 : 0;
          e.eax = (e.eax & ~(0xfff << 14)) | (sharing << 14);
        }
        break;
      }
      case 0x8000001e: {
        if (vendor === 'amd') {
          e.eax = cpuId;
          e.ebx = (e.ebx & ~0xffff) | (cpuId & 0xff); // ThreadsPerComputeUnit - 1 = 0
          e.ecx = e.ecx & ~0x7ff; // node 0, NodesPerProcessor - 1 = 0
        }
        break;
      }
      default:
        break;
    }
    e.eax >>>= 0; e.ebx >>>= 0; e.ecx >>>= 0; e.edx >>>= 0;
    out.push(e);
  }
  return opts.hyperv ? withHyperVLeaves(out, opts.hyperv) : out;
}
