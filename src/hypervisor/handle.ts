// Rebuild a Vm from its handle in another thread, whatever the backend.
import type { Vm, VmHandle } from './hypervisor.js';
import { KvmVm } from './kvm/vm.js';

export function vmFromHandle(h: VmHandle): Vm {
  switch (h.backend) {
    case 'kvm': return KvmVm.fromHandle(h);
    default: throw new Error(`unknown hypervisor backend '${h.backend}'`);
  }
}
