// A well-formed snapshot's parts for tests that need one without a guest: real legacy devices'
// and PCI buses' state, a sample hypervisor state (src/hypervisor/testing), no virtio devices.
import { Serial } from '../../devices/serial.js';
import { I8042 } from '../../devices/i8042.js';
import { Cmos } from '../../devices/cmos.js';
import { AcpiPowerDevice } from '../../devices/acpi_power.js';
import { saveLegacyDevices } from '../../devices/state_json.js';
import { createMmioBus } from '../../devices/bus.js';
import { attachPciSegments, savePciState } from '../../pci/segment.js';
import { PciType1 } from '../../pci/bus.js';
import { pciSegmentLayouts } from '../../arch/x86_64/layout.js';
import type { GuestMemory } from '../../memory/guest_memory.js';
import { sampleHypervisorState } from '../../hypervisor/testing/sample_state.js';
import type { SnapshotParts } from '../snapshot.js';

const MiB = 1 << 20;

/** Two vCPUs' worth of state over `mem`, with `config` as config.json. */
export function sampleSnapshotParts(mem: GuestMemory, config: unknown = { cpus: { boot_vcpus: 2 }, memory: { size: 8 * MiB } }): SnapshotParts {
  const serial = new Serial({});
  serial.write(3, Uint8Array.of(0x03)); // LCR: 8N1
  serial.enqueueInput(new TextEncoder().encode('typed'));
  const cmos = new Cmos({ memBelow4g: 8 * MiB, memAbove4g: 0 });
  const i8042 = new I8042({ reset: () => undefined });
  const acpiPower = new AcpiPowerDevice({ onShutdown: () => undefined, onReset: () => undefined });
  const segments = attachPciSegments(createMmioBus(), pciSegmentLayouts(1));
  return {
    config,
    hypervisor: sampleHypervisorState(5),
    devices: saveLegacyDevices({ serial, i8042, cmos, acpiPower }),
    pci: savePciState(segments, [new PciType1(1), new PciType1(1)]),
    virtio: [],
    memoryHotplug: null,
    pciPlacement: [],
    pciHotplug: { up: [0], down: [0] },
    mem,
  };
}
