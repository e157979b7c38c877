export { MshvHypervisor, MSHV_DEVICE } from './mshv.js';
export { MshvVm } from './vm.js';
export { MshvVcpu } from './vcpu.js';
