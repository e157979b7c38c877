// Which hypervisor backend to use: `--hypervisor kvm|mshv`, or auto: mshv when /dev/mshv exists
// and /dev/kvm does not, else kvm.

import { existsSync } from 'node:fs';
import type { Hypervisor } from './hypervisor.js';
import { KvmHypervisor } from './kvm/kvm.js';
import { MshvHypervisor } from './mshv/mshv.js';

export type HypervisorKind = 'kvm' | 'mshv';

export function parseHypervisorKind(s: string): HypervisorKind | 'auto' {
  if (s === 'kvm' || s === 'mshv' || s === 'auto') return s;
  throw new Error(`--hypervisor: '${s}' is not kvm, mshv or auto`);
}

export function chooseHypervisor(want: HypervisorKind | 'auto', exists: (p: string) => boolean = existsSync): HypervisorKind {
  if (want === 'auto') return exists('/dev/mshv') && !exists('/dev/kvm') ? 'mshv' : 'kvm';
  const dev = want === 'kvm' ? '/dev/kvm' : '/dev/mshv';
  if (!exists(dev)) throw new Error(`--hypervisor ${want}: ${dev} does not exist on this host`);
  return want;
}

export function openHypervisor(kind: HypervisorKind): Hypervisor {
  return kind === 'mshv' ? MshvHypervisor.open() : KvmHypervisor.open();
}
