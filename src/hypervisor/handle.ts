// Rebuild a Vm from its handle in another thread, whatever the backend.
import type { Vcpu, VcpuHandle, Vm, VmHandle } from './hypervisor.js';
import { KvmVcpu } from './kvm/vcpu.js';
import { MshvVcpu } from './mshv/vcpu.js';
import { KvmVm } from './kvm/vm.js';
import { MshvVm } from './mshv/vm.js';

export function vmFromHandle(h: VmHandle): Vm {
  switch (h.backend) {
    case 'kvm': return KvmVm.fromHandle(h);
    case 'mshv': return MshvVm.fromHandle(h);
    default: throw new Error(`unknown hypervisor backend '${h.backend}'`);
  }
}

/** Rebuild a Vcpu from its handle in another thread, whatever the backend. */
export function vcpuFromHandle(h: VcpuHandle): Vcpu {
  switch (h.backend) {
    case 'kvm': return KvmVcpu.fromHandle(h);
    case 'mshv': return MshvVcpu.fromHandle(h);
    default: throw new Error(`unknown hypervisor backend '${h.backend}'`);
  }
}
