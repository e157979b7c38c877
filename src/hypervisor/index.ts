export * from './hypervisor.js';
export * from './regs.js';
export { KvmHypervisor, KvmVm, KvmVcpu, kickVcpu } from './kvm/index.js';
export * from './state_json.js';
export * from './state.js';
