// /dev/mshv: partition creation and initialisation (mshv.h "Entry point to main VMM APIs").
//
// Sequence (as Cloud Hypervisor's MSHV backend does it, our own code):
//   MSHV_CREATE_PARTITION {pt_flags: LAPIC | X2APIC | GPA_SUPER_PAGES, isolation NONE}
//   HvCallSetPartitionProperty(SYNTHETIC_PROC_FEATURES)        -- an "early" property
//   MSHV_INITIALIZE_PARTITION
//   HvCallSetPartitionProperty(UNIMPLEMENTED_MSR_ACTION = IGNORE_WRITE_READ_ZERO)
//   HvCallSetPartitionProperty(TIME_FREEZE = 0)                -- thaw the partition's clock

import * as libc from '../../sys/libc.js';
import type { CpuIdEntry } from '../regs.js';
import type { Hypervisor, HypervisorCapabilities } from '../hypervisor.js';
import * as abi from './abi.js';
import { setPartitionProperty } from './hvcall.js';
import type { MshvSys } from './sys.js';
import { realSys } from './sys.js';
import { MshvVm } from './vm.js';

export const MSHV_DEVICE = '/dev/mshv';

export class MshvHypervisor implements Hypervisor {
  readonly backend = 'mshv';
  private closed = false;

  private constructor(readonly sys: MshvSys, readonly fd: number) {}

  /** Open /dev/mshv (or `path`); the error says why when it cannot. */
  static open(path = MSHV_DEVICE, sys: MshvSys = realSys): MshvHypervisor {
    try {
      return new MshvHypervisor(sys, sys.open(path));
    } catch (e) {
      if (e instanceof libc.SysError) {
        const hint = e.errno === libc.ENOENT ? ' (not running as the root partition of the Microsoft Hypervisor, or the mshv_root module is not loaded)'
          : e.errno === libc.EACCES ? ' (no permission)' : '';
        throw new Error(`cannot open ${path}: ${e.code}${hint}`);
      }
      throw e;
    }
  }

  checkRequiredExtensions(): void {}

  capabilities(): HypervisorCapabilities {
    return {
      irqchip: true, splitIrqchip: false, irqfd: true, irqfdResample: true, ioeventfd: true, ioeventfdAnyLength: true,
      irqRouting: true, signalMsi: true, msiDevid: false, immediateExit: false, maxVcpus: 256, maxMemslots: 512,
      x2apicApi: true, tscDeadlineTimer: true,
    };
  }

  createVm(): MshvVm {
    const C = abi.layout.mshv_create_partition;
    const args = new Uint8Array(C.SIZE);
    const dv = new DataView(args.buffer);
    dv.setBigUint64(C.pt_flags, BigInt((1 << abi.MSHV_PT_BIT_LAPIC) | (1 << abi.MSHV_PT_BIT_X2APIC) | (1 << abi.MSHV_PT_BIT_GPA_SUPER_PAGES)), true);
    dv.setBigUint64(C.pt_isolation, BigInt(abi.MSHV_PT_ISOLATION_NONE), true);
    let fd = -1;
    for (let attempt = 0; fd < 0; attempt++) {
      try {
        fd = this.sys.ioctl(this.fd, abi.MSHV_CREATE_PARTITION, args, 'MSHV_CREATE_PARTITION');
      } catch (e) {
        if (e instanceof libc.SysError && e.errno === libc.EINTR && attempt < 100) continue;
        throw e;
      }
    }
    const vm = new MshvVm(this.sys, fd);
    try {
      setPartitionProperty(vm.hv, abi.HV_PARTITION_PROPERTY_SYNTHETIC_PROC_FEATURES, abi.HV_DEFAULT_SYNTHETIC_PROC_FEATURES, 'SYNTHETIC_PROC_FEATURES');
      this.sys.ioctl(fd, abi.MSHV_INITIALIZE_PARTITION, 0, 'MSHV_INITIALIZE_PARTITION');
      setPartitionProperty(vm.hv, abi.HV_PARTITION_PROPERTY_UNIMPLEMENTED_MSR_ACTION, BigInt(abi.HV_UNIMPLEMENTED_MSR_ACTION_IGNORE_WRITE_READ_ZERO), 'UNIMPLEMENTED_MSR_ACTION');
      vm.freezeTime(false);
    } catch (e) {
      vm.close();
      throw e;
    }
    return vm;
  }

  /** The hypervisor computes CPUID itself; setCpuid2 registers overrides. Nothing to report. */
  getSupportedCpuid(): CpuIdEntry[] {
    return [];
  }

  getMsrIndexList(): number[] {
    return [0x10, 0x1b, 0x174, 0x175, 0x176, 0x277, 0xc0000080, 0xc0000081, 0xc0000082, 0xc0000083, 0xc0000084, 0xc0000102];
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.sys.close(this.fd);
  }
}
