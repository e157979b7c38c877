// The device thread: owns the legacy devices and the port/MMIO buses, serves the vCPUs'
// mailboxes, feeds host input to the serial port and writes its output to the configured sink.
// Lifecycle requests from devices (ACPI S5, reset) go to the VMM's main thread as messages.
import { parentPort, receiveMessageOnPort } from 'node:worker_threads';
import { createPioBus, createMmioBus } from '../devices/bus.js';
import { Serial } from '../devices/serial.js';
import { I8042 } from '../devices/i8042.js';
import { Cmos } from '../devices/cmos.js';
import { AcpiPowerDevice, AcpiGedDevice, GED_CPU_HOTPLUG, GED_MEMORY_HOTPLUG, GED_PCI_HOTPLUG } from '../devices/acpi_power.js';
import { MemoryHotplugController, MEMORY_HOTPLUG_BLOCK_SIZE } from '../devices/memory_hotplug.js';
import { CpuHotplugController, CPU_HOTPLUG_BLOCK_SIZE } from '../devices/cpu_hotplug.js';
import { PciHotplugController } from '../pci/hotplug.js';
import { NO_INTERRUPT } from '../devices/interrupt.js';
import { EventFdInterrupt } from './interrupts.js';
import { MailboxServer, MailboxOp, SPIN_LIMIT } from './mailbox.js';
import { DeviceControl, DeviceControlOp, RunState, type DeviceWorkerData, type DeviceEvent, type HotplugRequest } from './protocol.js';
import { saveLegacyDevices, restoreLegacyDevices } from '../devices/state_json.js';
import { underField } from '../devices/state.js';
import { ByteRing } from './ring.js';
import { PIO_COM1, PIO_I8042, PIO_CMOS, PIO_ACPI_POWER } from './layout_ports.js';
import { CPU_HOTPLUG_MMIO_START, GED_MMIO_SIZE, GED_MMIO_START, MEMORY_HOTPLUG_MMIO_START, PCI_HOTPLUG_MMIO_START, pciSegmentLayouts } from '../arch/x86_64/layout.js';
import { vmFromHandle } from '../hypervisor/handle.js';
import { setupPci } from './pci_setup.js';
import { OutputSink } from './sink.js';

const post = (e: DeviceEvent) => parentPort!.postMessage(e);
/** While serial output waits for a full sink, retry this often. */
const SINK_RETRY_MS = 10;
/** Buffered serial output that is written out at once, busy or not. */
const SINK_HIGH_WATER = 8192;

// Spawned before the VM exists; the first message brings the devices' configuration.
parentPort!.once('message', (data: DeviceWorkerData) => start(data));

function start(data: DeviceWorkerData): void {
  // Serial output is buffered (bounded) and written, without blocking, when the thread has
  // nothing else to do: a sink that does not keep up loses what does not fit (counted), it never
  // holds up a vCPU's port access (sink.ts). While output is pending the thread sleeps at most
  // SINK_RETRY_MS, then tries again.
  const out = new OutputSink(data.serialFd);
  const outCounters = data.serialCounters ? new Float64Array(data.serialCounters) : null;
  function flush(): void {
    out.flush();
    if (outCounters) { outCounters[0] = out.counters.tx_bytes; outCounters[1] = out.counters.tx_dropped_bytes; }
  }

  let powerEvent = false;
  const serial = new Serial({
    interrupt: data.serialIrqfd >= 0 ? new EventFdInterrupt(data.serialIrqfd) : NO_INTERRUPT,
    sink: (bytes) => {
      out.write(bytes);
      // A guest that prints without pause keeps this thread busy: write out (non-blocking)
      // before the buffer fills, so that a sink that keeps up loses nothing.
      if (out.pending >= SINK_HIGH_WATER && !out.blocked) flush();
    },
    inputCapacity: 64,
  });
  const pio = createPioBus();
  const mmio = createMmioBus();
  pio.insert(serial, PIO_COM1.base, PIO_COM1.length);
  const i8042 = new I8042({ reset: () => { if (!powerEvent) { powerEvent = true; post({ type: 'reset', reason: 'i8042 reset line' }); } } });
  pio.insert(i8042, PIO_I8042.base, PIO_I8042.length);
  const cmos = new Cmos({ memBelow4g: data.memBelow4g, memAbove4g: data.memAbove4g });
  pio.insert(cmos, PIO_CMOS.base, PIO_CMOS.length);
  const acpiPower = new AcpiPowerDevice({
    onShutdown: () => { if (!powerEvent) { powerEvent = true; post({ type: 'shutdown' }); } },
    onReset: () => { if (!powerEvent) { powerEvent = true; post({ type: 'reset', reason: 'ACPI reset register' }); } },
  });
  pio.insert(acpiPower, PIO_ACPI_POWER.base, PIO_ACPI_POWER.length);
  // ACPI 6.x 5.6.9 Generic Event Device: the event register the DSDT's _EVT reads.
  const ged = new AcpiGedDevice(data.gedIrqfd !== undefined && data.gedIrqfd >= 0 ? new EventFdInterrupt(data.gedIrqfd) : NO_INTERRUPT);
  mmio.insert(ged, GED_MMIO_START, GED_MMIO_SIZE);
  const legacy = { serial, i8042, cmos, acpiPower, ged };

  const logPci = (m: string) => { if (data.verbose) process.stderr.write(`stratovisor: ${m}\n`); };
  const pci = setupPci(mmio, vmFromHandle(data.vm), data.virtio, logPci, data.pciSegments);
  // ACPI PCI hotplug (src/pci/hotplug.ts): the guest's _EJ0 lands here; the device leaves the
  // bus at once and the main thread releases the rest (its I/O thread, eventfds, host files).
  const hotplug = new PciHotplugController((data.pciSegments ?? pciSegmentLayouts(1)).length, (segment, slot) => {
    const d = pci.at(segment, slot);
    if (d === null) { logPci(`PCI hotplug: eject of empty slot ${segment.toString(16).padStart(4, '0')}:00:${slot.toString(16).padStart(2, '0')}.0 ignored`); return; }
    if (!d.removable) { process.stderr.write(`stratovisor: ${d.id}: the guest's eject refused (this device cannot be removed; it stays on the bus)\n`); return; }
    pci.remove(d.id);
    logPci(`${d.id}: ejected by the guest`);
    post({ type: 'ejected', id: d.id });
  });
  mmio.insert(hotplug, PCI_HOTPLUG_MMIO_START, hotplug.size);
  // ACPI CPU hotplug (src/devices/cpu_hotplug.ts): the DSDT's \_SB_.CPUS methods read it; the
  // guest's _EJ0 of a vCPU lands here and the main thread parks that vCPU's thread.
  const cpus = data.cpus ?? { max: 1, present: 1 };
  const cpuHotplug = new CpuHotplugController(cpus.max, cpus.present, (id) => {
    logPci(`vCPU ${id}: ejected by the guest`);
    post({ type: 'cpu-ejected', id });
  });
  mmio.insert(cpuHotplug, CPU_HOTPLUG_MMIO_START, CPU_HOTPLUG_BLOCK_SIZE);
  // ACPI memory hotplug (src/devices/memory_hotplug.ts): the DSDT's \_SB_.MHPC methods read it.
  const memHotplug = data.memoryHotplug !== undefined ? new MemoryHotplugController(data.memoryHotplug.area, data.memoryHotplug.boot) : null;
  if (memHotplug !== null) mmio.insert(memHotplug, MEMORY_HOTPLUG_MMIO_START, MEMORY_HOTPLUG_BLOCK_SIZE);
  function serveHotplug(): void {
    const m = data.hotplugPort ? receiveMessageOnPort(data.hotplugPort) : undefined;
    if (m === undefined) throw new Error('no hotplug request came with the doorbell');
    let req = m.message as HotplugRequest;
    // Requests whose answer the main thread stopped waiting for are dropped: this doorbell's is the last one.
    for (let next = receiveMessageOnPort(data.hotplugPort!); next !== undefined; next = receiveMessageOnPort(data.hotplugPort!)) req = next.message as HotplugRequest;
    if (req.seq !== controlSeq) throw new Error(`hotplug request ${req.seq} does not match the doorbell's ${controlSeq}`);
    if (req.type === 'mem-add') {
      if (memHotplug === null) throw new Error('this guest has no ACPI memory hotplug controller');
      const slot = memHotplug.plug(req.gpa, req.size);
      logPci(`memory: [0x${req.gpa.toString(16)}, 0x${(req.gpa + req.size).toString(16)}) plugged into memory device ${slot}`);
      ged.notify(GED_MEMORY_HOTPLUG);
      return;
    }
    if (req.type === 'cpu-add' || req.type === 'cpu-remove') {
      if (req.type === 'cpu-add') cpuHotplug.inserted(req.id);
      else cpuHotplug.removeRequested(req.id);
      ged.notify(GED_CPU_HOTPLUG);
      return;
    }
    if (req.type === 'add') {
      pci.add(req.device);
      hotplug.inserted(req.device.segment ?? 0, req.device.slot);
      logPci(`${req.device.id}: hot-plugged at ${(req.device.segment ?? 0).toString(16).padStart(4, '0')}:00:${req.device.slot.toString(16).padStart(2, '0')}.0`);
    } else {
      const d = pci.get(req.id);
      if (d === null) throw new Error(`${req.id}: not on a PCI bus`);
      hotplug.ejectRequested(d.segment ?? 0, d.slot);
    }
    ged.notify(GED_PCI_HOTPLUG);
  }

  if (data.restore !== undefined) {
    // A restore (protocol.ts): before any vCPU runs, every device takes its saved state; the
    // buses are checked whole before anything changes (PciRoot.restoreState).
    const r = data.restore;
    try {
      restoreLegacyDevices(legacy, r.legacy);
      if (r.memoryHotplug !== undefined) {
        if (memHotplug === null) throw new Error('the state has an ACPI memory hotplug controller, this VM none (memory.hotplug_size)');
        underField('memoryHotplug', 'memory hotplug state', () => memHotplug.restoreState(r.memoryHotplug!));
      }
      if (r.pciRoots.length !== pci.roots.length) throw new Error(`the state has ${r.pciRoots.length} PCI segment(s), this VM ${pci.roots.length}`);
      r.pciRoots.forEach((root, i) => underField(`segments[${i}]`, 'PCI state', () => pci.roots[i]!.checkState(root)));
      r.pciRoots.forEach((root, i) => underField(`segments[${i}]`, 'PCI state', () => pci.roots[i]!.restoreState(root)));
      // Insertions and eject requests the guest had not read: its PCNT reads them on the GED
      // event still latched in the restored GED (and its interrupt in the restored irqchip).
      if (r.pciHotplug !== undefined) hotplug.restoreState(r.pciHotplug);
      // A clone or restore: the guest's VMGenID driver reads the new ID on this event (the
      // interrupt waits in the restored irqchip until the vCPUs run).
      if (data.vmGenIdChanged === true) ged.vmGenIdChanged();
      post({ type: 'restored' });
    } catch (e) {
      post({ type: 'restore-error', message: (e as Error).message });
    }
  }

  const server = new MailboxServer(data.shared);
  const ring = new ByteRing(data.input);
  const inBuf = new Uint8Array(64);

  let deviceErrors = 0;
  function handle(op: MailboxOp, addr: number, d: Uint8Array): void {
    try {
      switch (op) {
        case MailboxOp.PioRead: pio.read(addr, d); break;
        case MailboxOp.PioWrite: pio.write(addr, d); break;
        case MailboxOp.MmioRead: mmio.read(addr, d); break;
        case MailboxOp.MmioWrite: mmio.write(addr, d); break;
      }
    } catch (e) {
      // A device model bug or a guest access it did not expect: the access reads all-ones and
      // the VM goes on; the first few are reported.
      if (op === MailboxOp.PioRead || op === MailboxOp.MmioRead) d.fill(0xff);
      if (deviceErrors++ < 10) process.stderr.write(`stratovisor: device error at ${op <= 1 ? 'port' : 'address'} 0x${addr.toString(16)}: ${(e as Error).message}\n`);
    }
  }

  const runState = data.runState ? new Int32Array(data.runState) : null;
  function pumpInput(): void {
    // Paused (vm.pause): host input waits in the ring, the UART state and its interrupt do not
    // change until resume.
    if (runState !== null && Atomics.load(runState, 0) === RunState.Pause) return;
    if (ring.available() === 0) return;
    const n = ring.peek(inBuf);
    const accepted = serial.enqueueInput(n === inBuf.length ? inBuf : inBuf.subarray(0, n));
    if (accepted > 0) ring.consume(accepted);
  }

  // Requests from the main thread (protocol.ts DeviceControl), seen when the doorbell rings.
  const control = data.control ? new Int32Array(data.control) : null;
  let controlSeq = control ? Atomics.load(control, DeviceControl.Seq) : 0;
  function serveControl(): void {
    if (!control || Atomics.load(control, DeviceControl.Seq) === controlSeq) return;
    controlSeq = Atomics.load(control, DeviceControl.Seq);
    const op = Atomics.load(control, DeviceControl.Op);
    try {
      if (op === DeviceControlOp.PowerButton) {
        ged.powerButton();
        post({ type: 'done', seq: controlSeq });
        return;
      }
      if (op === DeviceControlOp.HotplugAdd || op === DeviceControlOp.HotplugRemove) {
        serveHotplug();
        post({ type: 'done', seq: controlSeq });
        return;
      }
      if (op !== DeviceControlOp.SaveState) throw new Error(`unknown device thread request ${op}`);
      // The VM is paused: no vCPU is inside a device access, so the state is consistent. The
      // virtio functions' config space and MSI-X table are saved here with the bus; their
      // transport registers, queues and pending vectors by the I/O threads (virtio state).
      post({ type: 'state', seq: controlSeq, state: { legacy: saveLegacyDevices(legacy), pciRoots: pci.roots.map((r) => r.saveState()), cpuHotplug: cpuHotplug.saveState(), pciHotplug: hotplug.saveState(), ...(memHotplug !== null ? { memoryHotplug: memHotplug.saveState() } : {}) } });
    } catch (e) {
      post({ type: 'state-error', seq: controlSeq, message: (e as Error).message });
    }
  }

  const bell = server.bell;
  while (!server.stopRequested()) {
    const seq = Atomics.load(bell, 0);
    const served = server.serve(handle);
    pumpInput();
    serveControl();
    if (served === 0) {
      // A vCPU that just got an answer often asks again at once (the UART's LSR, then THR):
      // spin a little before sleeping, and write buffered output only when going to sleep.
      // Input the UART refused is retried on the next access.
      for (let spin = 0; spin < SPIN_LIMIT && Atomics.load(bell, 0) === seq; spin++);
      if (Atomics.load(bell, 0) === seq) {
        flush();
        Atomics.wait(bell, 0, seq, out.pending > 0 ? SINK_RETRY_MS : 50);
      }
    }
  }
  flush();
  out.close();
  flush();
  pci.teardown();
  post({ type: 'stats', pioUnhandled: pio.unhandledAccesses, mmioUnhandled: mmio.unhandledAccesses });
}
