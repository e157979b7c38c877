// Save and restore the hypervisor-level state of a whole VM in the right order, whatever the
// backend. The VMM pauses the vCPUs (each stopped outside run(), its last exit completed with
// completePendingExit) and the devices first; guest RAM and device state are its business.

import type { Vcpu, Vm } from './hypervisor.js';
import type { HypervisorState } from './state_json.js';

/** vCPUs in id order, each completed and saved, then the VM (irqchip, PIT, clock last). */
export function saveHypervisorState(vm: Vm, vcpus: readonly Vcpu[]): HypervisorState {
  const ordered = [...vcpus].sort((a, b) => a.id - b.id);
  const states = ordered.map((v) => v.getState());
  return { arch: 'x86_64', vm: vm.getState(), vcpus: states };
}

/**
 * Into a fresh VM built like the source (same irqchip/PIT, same number of vCPUs, none run
 * yet): every vCPU first, then the VM, whose clock is set last so guest time goes on from the
 * saved value.
 */
export function restoreHypervisorState(vm: Vm, vcpus: readonly Vcpu[], s: HypervisorState): void {
  if (vcpus.length !== s.vcpus.length) {
    throw new Error(`the snapshot has ${s.vcpus.length} vCPU${s.vcpus.length === 1 ? '' : 's'}, this VM ${vcpus.length}`);
  }
  const ordered = [...vcpus].sort((a, b) => a.id - b.id);
  ordered.forEach((v, i) => v.setState(s.vcpus[i]!));
  vm.setState(s.vm);
}
