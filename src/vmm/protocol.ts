// Messages and shared data between the VMM's main thread and its vCPU and device threads.
import type { VcpuHandle } from '../hypervisor/hypervisor.js';
import type { MailboxShared } from './mailbox.js';

export interface VcpuWorkerData {
  handle: VcpuHandle;
  shared: MailboxShared;
  /** Int32[0]: 0 run, 1 pause, 2 stop (see RunState). */
  runState: SharedArrayBuffer;
}

export const RunState = { Run: 0, Pause: 1, Stop: 2 } as const;

export type VcpuEvent =
  | { type: 'started'; id: number }
  | { type: 'paused'; id: number }
  | { type: 'shutdown'; id: number }
  | { type: 'reset'; id: number; reason: string }
  | { type: 'error'; id: number; message: string }
  | { type: 'stopped'; id: number; exits: number; deviceExits: number; kinds: Record<string, number> };

export interface DeviceWorkerData {
  shared: MailboxShared;
  input: SharedArrayBuffer;
  /** fd that serial output is written to, or -1 to discard it. */
  serialFd: number;
  serialIrqfd: number;
  memBelow4g: number;
  memAbove4g: number;
}

export type DeviceEvent =
  | { type: 'shutdown' }
  | { type: 'reset'; reason: string }
  | { type: 'stats'; pioUnhandled: number; mmioUnhandled: number };

