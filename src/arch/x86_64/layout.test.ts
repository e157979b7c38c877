import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  ACPI_TABLES_END, APIC_START, BOOT_GDT_START, BOOT_IDT_START, CMDLINE_MAX_SIZE, CMDLINE_START, E820_RAM, E820_RESERVED,
  DEVICE_MEMORY_ALIGN, deviceMemoryRanges, e820Map, EBDA_START, GiB, HIGH_RAM_START, initramfsAddress, IOAPIC_START, MiB, PCI_ECAM_SIZE, PCI_ECAM_START,
  PCI_MMIO32_SIZE, PCI_MMIO32_START, pciMmio64Window, PDE_PAGES, PDE_START, PDPTE_START, PLATFORM_MMIO_START, PML4_START,
  PVH_INFO_START, PVH_MEMMAP_START, ramEnd, ramRegions, RSDP_POINTER, ZERO_PAGE_START, guestMemoryRegions, hotplugRegion,
} from './layout.js';

test('ramRegions splits around the 3-4 GiB hole', () => {
  assert.deepEqual(ramRegions(512 * MiB), [{ gpa: 0, size: 512 * MiB }]);
  assert.deepEqual(ramRegions(3 * GiB), [{ gpa: 0, size: 3 * GiB }]);
  assert.deepEqual(ramRegions(8 * GiB), [{ gpa: 0, size: 3 * GiB }, { gpa: 4 * GiB, size: 5 * GiB }]);
  assert.equal(ramEnd(8 * GiB), 9 * GiB);
  assert.throws(() => ramRegions(1000), /multiple of 4 KiB/);
  assert.throws(() => ramRegions(4 * MiB), /16 MiB minimum/);
  assert.throws(() => ramRegions(-4096), /invalid/);
});

test('e820 map: sorted, non-overlapping, RAM adds up, legacy area and ECAM reserved', () => {
  for (const size of [64 * MiB, 3 * GiB, 6 * GiB]) {
    const map = e820Map(size);
    let prev = 0;
    let ram = 0;
    for (const e of map) {
      assert.ok(e.addr >= prev, `sorted at 0x${e.addr.toString(16)}`);
      prev = e.addr + e.size;
      if (e.type === E820_RAM) ram += e.size;
    }
    // RAM = memSize minus the reserved legacy area [EBDA, 1 MiB).
    assert.equal(ram, size - (HIGH_RAM_START - EBDA_START));
    assert.ok(map.some((e) => e.type === E820_RESERVED && e.addr === EBDA_START && e.addr + e.size === HIGH_RAM_START));
    assert.ok(map.some((e) => e.type === E820_RESERVED && e.addr === PCI_ECAM_START && e.size === PCI_ECAM_SIZE));
    assert.ok(!map.some((e) => e.type === E820_RAM && e.addr < 4 * GiB && e.addr + e.size > 3 * GiB));
  }
});

test('fixed addresses do not overlap and sit where the boot protocols expect', () => {
  const areas: Array<[string, number, number]> = [
    ['gdt', BOOT_GDT_START, 0x40], ['idt', BOOT_IDT_START, 8], ['pvh', PVH_INFO_START, 0x1000],
    ['zero page', ZERO_PAGE_START, 0x1000], ['pml4', PML4_START, 0x1000], ['pdpt', PDPTE_START, 0x1000],
    ['pd', PDE_START, 0x1000 * PDE_PAGES], ['cmdline', CMDLINE_START, CMDLINE_MAX_SIZE],
  ];
  areas.sort((a, b) => a[1] - b[1]);
  for (let i = 1; i < areas.length; i++) {
    assert.ok(areas[i - 1]![1] + areas[i - 1]![2] <= areas[i]![1], `${areas[i - 1]![0]} overlaps ${areas[i]![0]}`);
  }
  assert.ok(CMDLINE_START + CMDLINE_MAX_SIZE <= EBDA_START);
  assert.ok(PVH_MEMMAP_START < ZERO_PAGE_START);
  assert.ok(RSDP_POINTER >= 0xe0000 && RSDP_POINTER < 0x100000 && RSDP_POINTER % 16 === 0);
  assert.ok(ACPI_TABLES_END <= 0x100000);
  assert.equal(PCI_MMIO32_START, 0xc0000000);
  assert.equal(PCI_MMIO32_START + PCI_MMIO32_SIZE, PCI_ECAM_START);
  assert.ok(PLATFORM_MMIO_START < IOAPIC_START && IOAPIC_START < APIC_START);
  assert.equal(IOAPIC_START, 0xfec00000);
  assert.equal(APIC_START, 0xfee00000);
});

test('initramfs goes high in low RAM, page aligned, below initrd_addr_max', () => {
  const a = initramfsAddress(10 * MiB + 123, 512 * MiB, 80 * MiB, 0x7fffffff);
  assert.equal(a % 4096, 0);
  assert.ok(a + 10 * MiB + 123 <= 512 * MiB);
  assert.ok(a >= 512 * MiB - 10 * MiB - 4096 - 123);
  const b = initramfsAddress(MiB, 4 * GiB, 0, 0x37ffffff);
  assert.ok(b + MiB <= 0x38000000);
  const c = initramfsAddress(MiB, 8 * GiB, 0);
  assert.ok(c + MiB <= 3 * GiB);
  assert.throws(() => initramfsAddress(500 * MiB, 512 * MiB, 80 * MiB), /does not fit/);
  assert.throws(() => initramfsAddress(0, 512 * MiB, 0), /invalid initramfs size/);
});

test('64-bit PCI window starts above RAM, 1 GiB aligned', () => {
  const w = pciMmio64Window(6 * GiB, 40);
  assert.equal(w.start, 7 * GiB);
  assert.equal(w.start + w.size, 2 ** 40);
  assert.equal(pciMmio64Window(1 * GiB).start, 4 * GiB);
  assert.throws(() => pciMmio64Window(GiB, 20), /outside 36..52/);
});

test('device memory (virtio-pmem) goes above RAM, 2 MiB aligned, outside e820 RAM and every fixed window', () => {
  assert.deepEqual(deviceMemoryRanges(512 * MiB, [32 * MiB, 2 * MiB]), [{ gpa: 4 * GiB, size: 32 * MiB }, { gpa: 4 * GiB + 32 * MiB, size: 2 * MiB }]);
  // RAM above 4 GiB: from the next 1 GiB boundary past its end (the start of the 64-bit PCI window).
  const mem = 5 * GiB + 4 * MiB;
  const r = deviceMemoryRanges(mem, [64 * MiB]);
  assert.equal(r[0]!.gpa, pciMmio64Window(mem).start);
  assert.ok(r[0]!.gpa >= ramEnd(mem));
  assert.equal(r[0]!.gpa % DEVICE_MEMORY_ALIGN, 0);
  for (const e of e820Map(mem)) assert.ok(e.addr + e.size <= r[0]!.gpa, `e820 entry at 0x${e.addr.toString(16)} overlaps device memory`);
  assert.throws(() => deviceMemoryRanges(512 * MiB, [3 * MiB]), /3145728 is not a positive multiple of 2 MiB/);
  assert.throws(() => deviceMemoryRanges(512 * MiB, [0]), /not a positive multiple/);
  assert.throws(() => deviceMemoryRanges(512 * MiB, [2 * GiB], 32), /does not fit below 2\^32/);
  assert.deepEqual(deviceMemoryRanges(512 * MiB, []), []);
});

test('the virtio-mem region: first in device memory (1 GiB boundary above RAM), outside e820 RAM; pmem after it; a guest memory region of its own', () => {
  assert.deepEqual(hotplugRegion(512 * MiB, 512 * MiB), { gpa: 4 * GiB, size: 512 * MiB });
  // RAM above 4 GiB: the next 1 GiB boundary past its end.
  const mem = 5 * GiB + 4 * MiB;
  const r = hotplugRegion(mem, 2 * GiB);
  assert.equal(r.gpa, 7 * GiB);
  assert.equal(r.gpa % GiB, 0);
  for (const e of e820Map(mem)) assert.ok(e.addr + e.size <= r.gpa, `e820 entry at 0x${e.addr.toString(16)} overlaps the virtio-mem region`);
  // virtio-pmem ranges follow the region.
  assert.deepEqual(deviceMemoryRanges(512 * MiB, [32 * MiB], 52, 512 * MiB), [{ gpa: 4 * GiB + 512 * MiB, size: 32 * MiB }]);
  assert.deepEqual(deviceMemoryRanges(512 * MiB, [32 * MiB], 52, 0), [{ gpa: 4 * GiB, size: 32 * MiB }], 'no region: as before');
  // Guest memory: RAM, then the region.
  assert.deepEqual(guestMemoryRegions(512 * MiB, 512 * MiB), [{ gpa: 0, size: 512 * MiB }, { gpa: 4 * GiB, size: 512 * MiB }]);
  assert.deepEqual(guestMemoryRegions(4 * GiB, 1 * GiB), [{ gpa: 0, size: 3 * GiB }, { gpa: 4 * GiB, size: 1 * GiB }, { gpa: 5 * GiB, size: 1 * GiB }]);
  assert.deepEqual(guestMemoryRegions(512 * MiB), ramRegions(512 * MiB));
  assert.throws(() => hotplugRegion(512 * MiB, 3 * MiB), /hotplug region size 3145728 is not a positive multiple of 2 MiB/);
  assert.throws(() => hotplugRegion(512 * MiB, 0), /not a positive multiple/);
  assert.throws(() => hotplugRegion(512 * MiB, 2 ** 40, 40), /does not fit below 2\^40/);
});
