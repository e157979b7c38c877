export { KvmHypervisor, REQUIRED_CAPS } from './kvm.js';
export { KvmVm } from './vm.js';
export { KvmVcpu, kickVcpu, KICK_SIGNAL } from './vcpu.js';
