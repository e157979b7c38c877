// The KVM ioctls that fill a struct kvm_cpuid2 (KVM_GET_SUPPORTED_CPUID, KVM_GET_SUPPORTED_HV_CPUID):
// the caller offers `nent` entries; KVM answers E2BIG when it has more (KVM API doc 4.46, 4.118).

import * as libc from '../../sys/libc.js';
import type { CpuIdEntry } from '../regs.js';
import { cpuidBuffer, decodeCpuid } from './serialize.js';

export function readCpuidIoctl(fd: number, req: number, name: string, first = 256): CpuIdEntry[] {
  for (let n = first; ; n *= 2) {
    const buf = cpuidBuffer(n);
    try {
      libc.ioctl(fd, req, buf, name);
      return decodeCpuid(buf);
    } catch (e) {
      if (e instanceof libc.SysError && e.errno === libc.E2BIG && n < 4096) continue;
      throw e;
    }
  }
}
