// Interrupt lines backed by eventfds that the hypervisor turns into guest interrupts (irqfd):
// devices call trigger() and never touch the hypervisor.
import * as libc from '../sys/libc.js';
import type { InterruptLine } from '../devices/interrupt.js';
import type { IrqRoute, Vm } from '../hypervisor/hypervisor.js';
import type { MsiMessageValue } from '../pci/msix.js';

const ONE = new Uint8Array(new BigUint64Array([1n]).buffer);

export class EventFdInterrupt implements InterruptLine {
  constructor(readonly fd: number) {}

  trigger(): void {
    // An eventfd counter write only fails (EAGAIN) at 2^64-2 pending: nothing to lose there.
    libc.write(this.fd, ONE);
  }
}


/** First GSI after the IOAPIC's 24 pins: MSI-X vectors get GSIs from here. */
export const MSI_GSI_BASE = 24;

/**
 * The VM's GSI routing table: the in-kernel irqchip's default routes (PIC pins for GSIs 0-15,
 * IOAPIC pins for 0-23, as KVM sets them up at KVM_CREATE_IRQCHIP) plus one MSI route per
 * programmed MSI-X vector. KVM_SET_GSI_ROUTING replaces the whole table, so every change
 * re-sends all of it (vectors are reprogrammed rarely: at driver probe and IRQ affinity changes).
 */
export class GsiRouter {
  private readonly msi = new Map<number, MsiMessageValue>();
  constructor(private readonly vm: Vm) {}

  /** Route `gsi` to `msg`, or remove its route (null: the irqfd on it then delivers nothing). */
  set(gsi: number, msg: MsiMessageValue | null): void {
    const cur = this.msi.get(gsi);
    if (msg === null) {
      if (!cur) return;
      this.msi.delete(gsi);
    } else {
      if (cur && cur.addressLo === msg.addressLo && cur.addressHi === msg.addressHi && cur.data === msg.data) return;
      this.msi.set(gsi, msg);
    }
    this.commit();
  }

  routes(): IrqRoute[] {
    const r: IrqRoute[] = [];
    for (let gsi = 0; gsi < 16; gsi++) r.push({ gsi, kind: 'irqchip', irqchip: gsi < 8 ? 0 : 1, pin: gsi % 8 });
    for (let gsi = 0; gsi < 24; gsi++) r.push({ gsi, kind: 'irqchip', irqchip: 2, pin: gsi });
    for (const [gsi, m] of this.msi) r.push({ gsi, kind: 'msi', addressLo: m.addressLo, addressHi: m.addressHi, data: m.data });
    return r;
  }

  private commit(): void {
    this.vm.setGsiRouting(this.routes());
  }
}
