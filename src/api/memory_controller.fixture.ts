// Test double for the VMM: an in-memory VmmController that tracks lifecycle state
// with `nextVmState` (the same rules a real controller uses) and records calls.

import type { NetConfig, VmConfig } from '../vmm/config.js';
import { NotImplementedError, VmNotCreatedError, nextVmState, pingResponse, type PciDeviceInfo, type RestoreConfig, type VmAction, type VmCounters, type VmInfo, type VmmController, type VmmPingResponse, type VmState } from './controller.js';

export class MemoryController implements VmmController {
  state: VmState | undefined;
  config: VmConfig | undefined;
  vmmShutdown = false;
  readonly calls: string[] = [];
  /** When set, the next action throws this (after the state check). */
  failNext: Error | undefined;

  ping(): VmmPingResponse {
    return pingResponse(['kvm', 'test']);
  }

  private async act(action: VmAction): Promise<void> {
    this.calls.push(action);
    const next = nextVmState(this.state, action);
    if (this.failNext !== undefined) {
      const e = this.failNext;
      this.failNext = undefined;
      throw e;
    }
    // An await, like a real VMM, so that interleavings are exercised.
    await new Promise<void>((r) => setImmediate(r));
    this.state = next;
    if (next === undefined) this.config = undefined;
  }

  async createVm(config: VmConfig): Promise<void> {
    await this.act('create');
    this.config = config;
  }
  bootVm(): Promise<void> {
    return this.act('boot');
  }
  pauseVm(): Promise<void> {
    return this.act('pause');
  }
  resumeVm(): Promise<void> {
    return this.act('resume');
  }
  shutdownVm(): Promise<void> {
    return this.act('shutdown');
  }
  rebootVm(): Promise<void> {
    return this.act('reboot');
  }
  powerButton(): Promise<void> {
    return this.act('power-button');
  }
  deleteVm(): Promise<void> {
    return this.act('delete');
  }
  /** The bodies of vm.snapshot / vm.restore, as the server passed them on. */
  readonly snapshots: string[] = [];
  readonly restores: RestoreConfig[] = [];
  async snapshotVm(destinationUrl: string): Promise<void> {
    await this.act('snapshot');
    this.snapshots.push(destinationUrl);
  }
  async restoreVm(config: RestoreConfig): Promise<void> {
    await this.act('restore');
    this.restores.push(config);
  }
  async shutdownVmm(): Promise<void> {
    this.calls.push('shutdown-vmm');
    this.vmmShutdown = true;
    this.state = undefined;
    this.config = undefined;
  }
  info(): VmInfo {
    const state = nextVmState(this.state, 'info')!;
    return { config: this.config!, state, memory_actual_size: this.config!.memory.size };
  }
  async addNet(net: NetConfig): Promise<PciDeviceInfo | undefined> {
    this.calls.push('add-net');
    if (this.state === undefined || this.config === undefined) throw new VmNotCreatedError('add a network device');
    if (this.state !== 'Created' && this.state !== 'Shutdown') throw new NotImplementedError('vm.add-net on a booted VM (network device hotplug)');
    this.config = { ...this.config, net: [...(this.config.net ?? []), net] };
    return undefined;
  }
  counters(): VmCounters {
    nextVmState(this.state, 'counters');
    return { _disk0: { read_bytes: 4096, write_bytes: 0, read_ops: 1, write_ops: 0 } };
  }
}
