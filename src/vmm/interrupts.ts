// Interrupt lines backed by eventfds that the hypervisor turns into guest interrupts (irqfd):
// devices call trigger() and never touch the hypervisor.
import * as libc from '../sys/libc.js';
import type { InterruptLine } from '../devices/interrupt.js';

const ONE = new Uint8Array(new BigUint64Array([1n]).buffer);

export class EventFdInterrupt implements InterruptLine {
  constructor(readonly fd: number) {}

  trigger(): void {
    // An eventfd counter write only fails (EAGAIN) at 2^64-2 pending: nothing to lose there.
    libc.write(this.fd, ONE);
  }
}
