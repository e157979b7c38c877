// A vCPU thread: KVM_RUN (through the hypervisor interface) in a loop. Port and MMIO accesses to
// devices go to the device thread through this vCPU's mailbox; ports no device claims are
// answered here (reads all-ones, writes dropped: e.g. the 0x80 POST/io-delay port) without
// waking anyone. Lifecycle exits are reported to the main thread.
import { parentPort } from 'node:worker_threads';
import { VmExitKind, VmExitKindName } from '../hypervisor/hypervisor.js';
import { vcpuFromHandle } from '../hypervisor/handle.js';
import { MailboxClient, MailboxOp } from './mailbox.js';
import { PlugState, RunState, type VcpuWorkerData, type VcpuEvent } from './protocol.js';
import { DEVICE_PORTS, PIO_PCI_CONFIG } from './layout_ports.js';
import { PciType1 } from '../pci/bus.js';
import { PCI_ECAM_START } from '../arch/x86_64/layout.js';
import { HV_STATUS_INVALID_HYPERCALL_CODE } from '../arch/x86_64/hyperv.js';

const post = (e: VcpuEvent) => parentPort!.postMessage(e);

// The thread is spawned before the VM exists (its start-up overlaps the VM's set-up); the
// first message brings its vCPU.
parentPort!.once('message', (wd: VcpuWorkerData) => start(wd));

function start(wd: VcpuWorkerData): void {
  const vcpu = vcpuFromHandle(wd.handle);
  const id = wd.handle.id;
  const state = new Int32Array(wd.runState);
  const mailbox = new MailboxClient(wd.shared.mailboxes[id]!, wd.shared.doorbell, state);

  // Claimed port bitmap: one bit per port.
  const claimed = new Uint8Array(0x10000 >> 3);
  for (const r of DEVICE_PORTS) for (let p = r.base; p < r.base + r.length; p++) claimed[p >> 3]! |= 1 << (p & 7);
  const isClaimed = (port: number) => (claimed[port >> 3]! & (1 << (port & 7))) !== 0;

  const tracePio = process.env.STV_TRACE_PIO === '1';
  const pciBase = PIO_PCI_CONFIG.base;
  const pciType1 = new PciType1(wd.pciSlots);
  if (wd.configAddress !== undefined) pciType1.restoreState({ configAddress: wd.configAddress });

  /** 0xCF8-0xCFF: the address latch lives here; only accesses to present functions leave the thread. */
  function pciConfig(op: MailboxOp, port: number, d: Uint8Array): void {
    const off = port - pciBase;
    if (off < 4) {
      if (op === MailboxOp.PioRead) pciType1.readAddress(off, d);
      else pciType1.writeAddress(off, d);
      return;
    }
    const e = pciType1.ecamOffset(off - 4, d.length);
    if (e < 0) {
      if (op === MailboxOp.PioRead) d.fill(0xff);
      return;
    }
    deviceExits++;
    mailbox.access(op === MailboxOp.PioRead ? MailboxOp.MmioRead : MailboxOp.MmioWrite, PCI_ECAM_START + e, d);
  }

  function pio(op: MailboxOp, port: number, size: number, count: number, d: Uint8Array): void {
    if (tracePio && (port < 0x3f8 || port > 0x3ff) && port !== 0x80) {
      process.stderr.write(`vcpu${id} ${op === MailboxOp.PioRead ? 'in ' : 'out'} 0x${port.toString(16)} size ${size} ${op === MailboxOp.PioRead ? '' : Array.from(d).join(',')}\n`);
    }
    if (!isClaimed(port)) {
      if (port - pciBase >>> 0 < PIO_PCI_CONFIG.length && count === 1) { pciConfig(op, port, d); return; }
      if (op === MailboxOp.PioRead) d.fill(0xff);
      return;
    }
    deviceExits++;
    if (count === 1) mailbox.access(op, port, d);
    else for (let i = 0; i < count; i++) mailbox.access(op, port, d.subarray(i * size, (i + 1) * size)); // string I/O (rare)
  }

  function describe(): string {
    try {
      const r = vcpu.getRegs();
      return `${JSON.stringify(vcpu.decodeExit(), (_k, v: unknown) => (typeof v === 'bigint' ? `0x${v.toString(16)}` : v instanceof Uint8Array ? Array.from(v) : v))} rip=0x${r.rip.toString(16)} rsp=0x${r.rsp.toString(16)}`;
    } catch (e) {
      return String(e);
    }
  }

  /** Registers that say where a triple fault happened (the exit itself carries nothing). */
  function faultContext(): string {
    try {
      const r = vcpu.getRegs();
      const sr = vcpu.getSregs();
      const hex = (v: bigint | number) => `0x${v.toString(16)}`;
      return `rip=${hex(r.rip)} rsp=${hex(r.rsp)} rflags=${hex(r.rflags)} cr0=${hex(sr.cr0)} cr2=${hex(sr.cr2)} cr3=${hex(sr.cr3)} cr4=${hex(sr.cr4)} efer=${hex(sr.efer)} cs=${hex(sr.cs.selector)} idt=${hex(sr.idt.base)}+${hex(sr.idt.limit)} after ${exits} exits`;
    } catch (e) {
      return `registers unavailable: ${(e as Error).message}`;
    }
  }

  let exits = 0;
  /** Exits per VmExitKind, reported when the vCPU stops (shown with -v). */
  const byKind = new Float64Array(16);
  /** Port/MMIO exits that went to the device thread. */
  let deviceExits = 0;
  /** RunState Pause: say so (with the latch, for a snapshot) and wait for Run or Stop. */
  function park(): number {
    let s = Atomics.load(state, 0);
    if (s === RunState.Pause) {
      post({ type: 'paused', id, configAddress: pciType1.saveState().configAddress });
      while ((s = Atomics.load(state, 0)) === RunState.Pause) Atomics.wait(state, 0, RunState.Pause);
    }
    return s;
  }

  // CPU hotplug: the guest ejected this vCPU (it had offlined it): no KVM_RUN until it is
  // plugged in again (its state is kept: the guest's INIT/SIPI wakes it then) or the VM stops.
  const plug = wd.plug ? new Int32Array(wd.plug) : null;
  function unplugged(): boolean {
    if (plug === null || Atomics.load(plug, id) !== PlugState.Unplugged) return false;
    post({ type: 'unplugged', id });
    let p: number;
    while ((p = Atomics.load(plug, id)) === PlugState.Unplugged) Atomics.wait(plug, id, PlugState.Unplugged);
    return p === PlugState.Stop || Atomics.load(state, 0) === RunState.Stop;
  }

  post({ type: 'started', id });
  const e = vcpu.exit;
  // A restored VM starts paused: no KVM_RUN before vm.resume.
  if (park() === RunState.Stop) {
    post({ type: 'stopped', id, exits: 0, deviceExits: 0, kinds: {} });
    return;
  }
  loop: for (;;) {
    const kind = vcpu.run();
    exits++;
    byKind[kind]!++;
    switch (kind) {
      case VmExitKind.IoOut: pio(MailboxOp.PioWrite, e.port, e.size, e.count, e.data); break;
      case VmExitKind.IoIn: pio(MailboxOp.PioRead, e.port, e.size, e.count, e.data); break;
      case VmExitKind.MmioWrite: deviceExits++; mailbox.access(MailboxOp.MmioWrite, e.addr, e.data); break;
      case VmExitKind.MmioRead: deviceExits++; mailbox.access(MailboxOp.MmioRead, e.addr, e.data); break;
      case VmExitKind.Hlt: break; // only without an in-kernel LAPIC; the next run() waits
      // kvm_hyperv: the hypervisor has applied the SynIC MSR write and only tells (no VMBus to
      // tell yet). Hypercalls it leaves to the VMM (HvPostMessage, HvSignalEvent to a connection
      // with no event fd) have no server here yet: the guest gets "invalid hypercall code" (TLFS 3.10).
      case VmExitKind.HypervSynic: break;
      case VmExitKind.HypervHcall: vcpu.completeHypercall(HV_STATUS_INVALID_HYPERCALL_CODE); break;
      case VmExitKind.Intr: {
        vcpu.takeKick();
        if (park() === RunState.Stop) break loop;
        if (unplugged()) break loop;
        break;
      }
      case VmExitKind.Shutdown:
        // Triple fault: a PC resets (Cloud Hypervisor and Firecracker do the same). Where the
        // guest was goes into the reason (the log), for telling a guest bug from a host one.
        post({ type: 'reset', id, reason: `triple fault (KVM_EXIT_SHUTDOWN) on vCPU ${id}: ${faultContext()}` });
        break loop;
      case VmExitKind.SystemEvent: {
        const d = vcpu.decodeExit();
        if (d.kind === 'SystemEvent' && d.type === 'reset') post({ type: 'reset', id, reason: 'system event reset' });
        else if (d.kind === 'SystemEvent' && d.type === 'shutdown') post({ type: 'shutdown', id });
        else post({ type: 'error', id, message: `unexpected system event: ${describe()}` });
        break loop;
      }
      default:
        post({ type: 'error', id, message: `vCPU ${id} stopped on an unhandled exit: ${describe()}` });
        break loop;
    }
    if (Atomics.load(state, 0) === RunState.Stop) break;
  }
  const kinds: Record<string, number> = {};
  byKind.forEach((n, k) => { if (n) kinds[VmExitKindName[k] ?? String(k)] = n; });
  post({ type: 'stopped', id, exits, deviceExits, kinds });
}
