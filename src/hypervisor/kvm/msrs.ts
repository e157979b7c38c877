// Which MSRs a vCPU's saved state holds, and in which order they are restored.
//
// KVM_GET_MSR_INDEX_LIST (KVM API doc 4.3) lists the MSRs KVM saves ("msrs_to_save" and the
// emulated ones: SYSENTER_*, STAR/LSTAR/CSTAR/SFMASK, KERNEL_GS_BASE, TSC, TSC_AUX, TSC_ADJUST,
// TSC_DEADLINE, MISC_ENABLE, the kvmclock/async-PF/steal-time MSRs, ...). It does not list
// the MTRRs or PAT, which KVM nevertheless emulates per vCPU (QEMU and Firecracker add them
// too), so they are added here. The union is then filtered, per vCPU, to the MSRs KVM_GET_MSRS
// can read with that vCPU's CPUID (the guest cannot see the others either).

import * as libc from '../../sys/libc.js';
import * as abi from './abi.js';

// Architectural MSR numbers (SDM Vol. 4, Table 2-2) and KVM's paravirtual ones
// (Documentation/virt/kvm/x86/msr.rst).
export const MSR_IA32_TSC = 0x10;
export const MSR_IA32_TSC_ADJUST = 0x3b;
export const MSR_IA32_SYSENTER_CS = 0x174;
export const MSR_IA32_SYSENTER_ESP = 0x175;
export const MSR_IA32_SYSENTER_EIP = 0x176;
export const MSR_IA32_MISC_ENABLE = 0x1a0;
export const MSR_MTRR_PHYSBASE0 = 0x200;
export const MSR_MTRR_FIX64K_00000 = 0x250;
export const MSR_MTRR_FIX16K_80000 = 0x258;
export const MSR_MTRR_FIX16K_A0000 = 0x259;
export const MSR_MTRR_FIX4K_C0000 = 0x268;
export const MSR_IA32_CR_PAT = 0x277;
export const MSR_MTRR_DEF_TYPE = 0x2ff;
export const MSR_IA32_TSC_DEADLINE = 0x6e0;
export const MSR_STAR = 0xc0000081;
export const MSR_LSTAR = 0xc0000082;
export const MSR_CSTAR = 0xc0000083;
export const MSR_SYSCALL_MASK = 0xc0000084;
export const MSR_KERNEL_GS_BASE = 0xc0000102;
export const MSR_TSC_AUX = 0xc0000103;
export const MSR_KVM_WALL_CLOCK_NEW = 0x4b564d00;
export const MSR_KVM_SYSTEM_TIME_NEW = 0x4b564d01;

/** KVM emulates 8 variable-range MTRRs (KVM_NR_VAR_MTRR): PHYSBASE/PHYSMASK pairs. */
const VAR_MTRRS = 8;

/** MSRs added to KVM's list: MTRRs (SDM Vol. 3, 11.11) and PAT (11.12.2). */
export const EXTRA_STATE_MSRS: readonly number[] = [
  MSR_MTRR_DEF_TYPE,
  ...Array.from({ length: VAR_MTRRS * 2 }, (_, i) => MSR_MTRR_PHYSBASE0 + i),
  MSR_MTRR_FIX64K_00000, MSR_MTRR_FIX16K_80000, MSR_MTRR_FIX16K_A0000,
  ...Array.from({ length: 8 }, (_, i) => MSR_MTRR_FIX4K_C0000 + i),
  MSR_IA32_CR_PAT,
];

/** KVM_GET_MSRS / KVM_SET_MSRS refuse nmsrs >= MAX_IO_MSRS (256) with E2BIG. */
export const MSRS_PER_IOCTL = 255;

/**
 * Restore order: the TSC first (KVM derives the TSC offset from it, and TSC_ADJUST and the
 * deadline are relative to it), TSC_DEADLINE last (KVM only arms it when the LAPIC timer is in
 * TSC-deadline mode, so after the LAPIC and the TSC). Others keep the list's order.
 */
export function orderStateMsrs(indices: readonly number[]): number[] {
  const seen = new Set<number>();
  const rest: number[] = [];
  for (const i of indices) {
    if (seen.has(i)) continue;
    seen.add(i);
    if (i !== MSR_IA32_TSC && i !== MSR_IA32_TSC_DEADLINE) rest.push(i);
  }
  return [
    ...(seen.has(MSR_IA32_TSC) ? [MSR_IA32_TSC] : []),
    ...rest,
    ...(seen.has(MSR_IA32_TSC_DEADLINE) ? [MSR_IA32_TSC_DEADLINE] : []),
  ];
}

/** KVM_GET_MSR_INDEX_LIST-style ioctl on a /dev/kvm fd, growing the buffer on E2BIG. */
export function readMsrList(fd: number, req: number, name: string): number[] {
  for (let n = 512; ; n *= 2) {
    const buf = new Uint8Array(abi.layout.kvm_msr_list.SIZE + n * 4);
    const dv = new DataView(buf.buffer);
    dv.setUint32(abi.layout.kvm_msr_list.nmsrs, n, true);
    try {
      libc.ioctl(fd, req, buf, name);
    } catch (e) {
      if (e instanceof libc.SysError && e.errno === libc.E2BIG && n < 16384) continue;
      throw e;
    }
    const count = dv.getUint32(abi.layout.kvm_msr_list.nmsrs, true);
    const out: number[] = [];
    for (let i = 0; i < count; i++) out.push(dv.getUint32(abi.layout.kvm_msr_list.indices + i * 4, true));
    return out;
  }
}

// Facts about /dev/kvm a vCPU needs for its state, wherever it was rebuilt (a worker has
// only the vCPU fd). Read once per thread; /dev/kvm is opened just for the query.
let msrIndexList: number[] | null = null;
let xsave2Size = -1;

function withSystemFd<T>(f: (fd: number) => T): T {
  const fd = libc.open('/dev/kvm', libc.O_RDWR | libc.O_CLOEXEC);
  try {
    return f(fd);
  } finally {
    libc.close(fd);
  }
}

/** KVM_GET_MSR_INDEX_LIST of this host, cached. */
export function systemMsrIndexList(): number[] {
  if (msrIndexList === null) msrIndexList = withSystemFd((fd) => readMsrList(fd, abi.KVM_GET_MSR_INDEX_LIST, 'KVM_GET_MSR_INDEX_LIST'));
  return msrIndexList;
}

/**
 * Bytes of the XSAVE area KVM_GET_XSAVE2/KVM_SET_XSAVE use: KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2)
 * (KVM API doc 4.42, 8.x), 4096 (struct kvm_xsave) when it reports less or nothing, 0 without
 * KVM_CAP_XSAVE at all.
 */
export function systemXsaveSize(): number {
  if (xsave2Size < 0) {
    xsave2Size = withSystemFd((fd) => {
      const check = (cap: number): number => libc.ioctl(fd, abi.KVM_CHECK_EXTENSION, cap, 'KVM_CHECK_EXTENSION');
      if (check(abi.KVM_CAP_XSAVE) <= 0) return 0;
      return Math.max(check(abi.KVM_CAP_XSAVE2), abi.layout.kvm_xsave.SIZE);
    });
  }
  return xsave2Size;
}
