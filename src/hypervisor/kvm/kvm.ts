// /dev/kvm: API version check, capabilities, VM creation (KVM API doc 4.1-4.5).

import * as libc from '../../sys/libc.js';
import type { CpuIdEntry } from '../regs.js';
import type { Hypervisor, HypervisorCapabilities } from '../hypervisor.js';
import * as abi from './abi.js';
import { readCpuidIoctl } from './cpuid_ioctl.js';
import { KvmVm } from './vm.js';
import { readMsrList } from './msrs.js';

/** Capabilities the VMM cannot run without, with the reason each is needed. */
export const REQUIRED_CAPS: ReadonlyArray<readonly [number, string, string]> = [
  [abi.KVM_CAP_USER_MEMORY, 'KVM_CAP_USER_MEMORY', 'guest memory slots'],
  [abi.KVM_CAP_IRQCHIP, 'KVM_CAP_IRQCHIP', 'in-kernel LAPIC/IOAPIC'],
  [abi.KVM_CAP_IOEVENTFD, 'KVM_CAP_IOEVENTFD', 'virtio queue notifications'],
  [abi.KVM_CAP_IRQFD, 'KVM_CAP_IRQFD', 'device interrupts'],
  [abi.KVM_CAP_IRQ_ROUTING, 'KVM_CAP_IRQ_ROUTING', 'MSI routing'],
  [abi.KVM_CAP_SIGNAL_MSI, 'KVM_CAP_SIGNAL_MSI', 'MSI injection'],
  [abi.KVM_CAP_SET_TSS_ADDR, 'KVM_CAP_SET_TSS_ADDR', 'x86 real-mode TSS'],
  [abi.KVM_CAP_SET_IDENTITY_MAP_ADDR, 'KVM_CAP_SET_IDENTITY_MAP_ADDR', 'x86 identity map page'],
  [abi.KVM_CAP_EXT_CPUID, 'KVM_CAP_EXT_CPUID', 'KVM_GET_SUPPORTED_CPUID / KVM_SET_CPUID2'],
  [abi.KVM_CAP_MP_STATE, 'KVM_CAP_MP_STATE', 'vCPU power state'],
  [abi.KVM_CAP_IMMEDIATE_EXIT, 'KVM_CAP_IMMEDIATE_EXIT', 'pausing vCPUs'],
  [abi.KVM_CAP_TSC_DEADLINE_TIMER, 'KVM_CAP_TSC_DEADLINE_TIMER', 'LAPIC TSC-deadline timer'],
];

export class KvmHypervisor implements Hypervisor {
  readonly backend = 'kvm';
  readonly fd: number;
  readonly vcpuMmapSize: number;
  private closed = false;
  private hvCpuid: CpuIdEntry[] | null | undefined;

  private constructor(fd: number) {
    this.fd = fd;
    let version: number;
    try {
      version = libc.ioctl(fd, abi.KVM_GET_API_VERSION, 0, 'KVM_GET_API_VERSION');
    } catch (e) {
      libc.close(fd);
      throw e;
    }
    if (version !== abi.KVM_API_VERSION) {
      libc.close(fd);
      throw new Error(`KVM API version ${version} is not supported (need ${abi.KVM_API_VERSION})`);
    }
    this.vcpuMmapSize = libc.ioctl(fd, abi.KVM_GET_VCPU_MMAP_SIZE, 0, 'KVM_GET_VCPU_MMAP_SIZE');
    if (this.vcpuMmapSize < abi.layout.kvm_run.SIZE) {
      libc.close(fd);
      throw new Error(`KVM vCPU mmap size ${this.vcpuMmapSize} is smaller than struct kvm_run (${abi.layout.kvm_run.SIZE})`);
    }
  }

  /** Open /dev/kvm (or `path`) and check the API version. */
  static open(path = '/dev/kvm'): KvmHypervisor {
    let fd: number;
    try {
      fd = libc.open(path, libc.O_RDWR | libc.O_CLOEXEC);
    } catch (e) {
      if (e instanceof libc.SysError) {
        const hint = e.errno === libc.ENOENT ? ' (KVM not available: no kvm module loaded?)'
          : e.errno === libc.EACCES ? ' (no permission: add the user to the kvm group)' : '';
        throw new Error(`cannot open ${path}: ${e.code}${hint}`);
      }
      throw e;
    }
    return new KvmHypervisor(fd);
  }

  /** KVM_CHECK_EXTENSION on /dev/kvm: 0 if unsupported, else a capability-specific value. */
  checkExtension(cap: number): number {
    return libc.ioctl(this.fd, abi.KVM_CHECK_EXTENSION, cap, 'KVM_CHECK_EXTENSION');
  }

  checkRequiredExtensions(): void {
    const missing = REQUIRED_CAPS.filter(([cap]) => this.checkExtension(cap) <= 0);
    if (missing.length > 0) {
      throw new Error(`KVM is missing required capabilities: ${missing.map(([, n, why]) => `${n} (${why})`).join(', ')}`);
    }
  }

  capabilities(): HypervisorCapabilities {
    const c = (cap: number): number => this.checkExtension(cap);
    const nrVcpus = c(abi.KVM_CAP_MAX_VCPUS) || c(abi.KVM_CAP_NR_VCPUS) || 4;
    return {
      irqchip: c(abi.KVM_CAP_IRQCHIP) > 0,
      splitIrqchip: c(abi.KVM_CAP_SPLIT_IRQCHIP) > 0,
      irqfd: c(abi.KVM_CAP_IRQFD) > 0,
      irqfdResample: c(abi.KVM_CAP_IRQFD_RESAMPLE) > 0,
      ioeventfd: c(abi.KVM_CAP_IOEVENTFD) > 0,
      ioeventfdAnyLength: c(abi.KVM_CAP_IOEVENTFD_ANY_LENGTH) > 0,
      irqRouting: c(abi.KVM_CAP_IRQ_ROUTING) > 0,
      signalMsi: c(abi.KVM_CAP_SIGNAL_MSI) > 0,
      msiDevid: c(abi.KVM_CAP_MSI_DEVID) > 0,
      immediateExit: c(abi.KVM_CAP_IMMEDIATE_EXIT) > 0,
      maxVcpus: nrVcpus,
      maxMemslots: c(abi.KVM_CAP_NR_MEMSLOTS),
      x2apicApi: c(abi.KVM_CAP_X2APIC_API) > 0,
      tscDeadlineTimer: c(abi.KVM_CAP_TSC_DEADLINE_TIMER) > 0,
    };
  }

  createVm(): KvmVm {
    // KVM_CREATE_VM may fail with EINTR while the kernel sets up the VM; retry (as QEMU does).
    for (let attempt = 0; ; attempt++) {
      try {
        const fd = libc.ioctl(this.fd, abi.KVM_CREATE_VM, 0, 'KVM_CREATE_VM');
        return new KvmVm(fd, this.vcpuMmapSize, (cap) => this.checkExtension(cap), true, () => this.getSupportedHvCpuid());
      } catch (e) {
        if (e instanceof libc.SysError && e.errno === libc.EINTR && attempt < 100) continue;
        throw e;
      }
    }
  }

  getSupportedCpuid(): CpuIdEntry[] {
    return readCpuidIoctl(this.fd, abi.KVM_GET_SUPPORTED_CPUID, 'KVM_GET_SUPPORTED_CPUID');
  }

  /**
   * The Hyper-V CPUID leaves KVM can emulate, from /dev/kvm (KVM_GET_SUPPORTED_HV_CPUID with
   * KVM_CAP_SYS_HYPERV_CPUID, Linux 5.11+; API doc 4.118); null without that capability (the
   * vCPU ioctl answers then: KvmVcpu.enableHyperV). Read once.
   */
  getSupportedHvCpuid(): CpuIdEntry[] | null {
    if (this.hvCpuid === undefined) {
      this.hvCpuid = this.checkExtension(abi.KVM_CAP_SYS_HYPERV_CPUID) > 0
        ? readCpuidIoctl(this.fd, abi.KVM_GET_SUPPORTED_HV_CPUID, 'KVM_GET_SUPPORTED_HV_CPUID', 64)
        : null;
    }
    return this.hvCpuid?.map((e) => ({ ...e })) ?? null;
  }

  getMsrIndexList(): number[] {
    return this.msrList(abi.KVM_GET_MSR_INDEX_LIST, 'KVM_GET_MSR_INDEX_LIST');
  }

  getMsrFeatureIndexList(): number[] {
    return this.msrList(abi.KVM_GET_MSR_FEATURE_INDEX_LIST, 'KVM_GET_MSR_FEATURE_INDEX_LIST');
  }

  private msrList(req: number, name: string): number[] {
    return readMsrList(this.fd, req, name);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    libc.close(this.fd);
  }
}
