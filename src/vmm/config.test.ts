import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  MAX_VCPUS,
  VmConfigError,
  assertValidVmConfig,
  createVmConfig,
  isValidMac,
  parseIpv4,
  validateVmConfig,
  desiredRamIssue,
  virtioMemRegionSize, acpiHotplugAreaSize, hotplugRegionSize,
  type VmConfig,
} from './config.js';

const MIB = 1024 * 1024;

function valid(): VmConfig {
  return createVmConfig({ payload: { kernel: '/k', cmdline: 'console=ttyS0' } });
}

function messages(c: VmConfig): string[] {
  return validateVmConfig(c).map((i) => `${i.path}: ${i.message}`);
}

test('defaults follow Cloud Hypervisor', () => {
  const c = createVmConfig({ payload: { kernel: '/k' } });
  assert.equal(c.cpus.boot_vcpus, 1);
  assert.equal(c.cpus.max_vcpus, 1);
  assert.equal(c.cpus.max_phys_bits, 46);
  assert.equal(c.memory.size, 512 * MIB);
  assert.equal(c.memory.shared, false);
  assert.equal(c.memory.thp, true);
  assert.deepEqual(c.serial, { mode: 'Null' });
  assert.deepEqual(c.console, { mode: 'Tty', iommu: false });
  assert.deepEqual(c.rng, { src: '/dev/urandom', iommu: false });
  assert.equal(c.disks, undefined);
  assert.deepEqual(validateVmConfig(c), []);
  const d = createVmConfig({
    payload: { kernel: '/k' },
    cpus: { boot_vcpus: 4 },
    disks: [{ path: '/d' }],
    net: [{ tap: 'tap0' }],
  });
  assert.equal(d.cpus.max_vcpus, 4);
  assert.deepEqual(d.disks, [
    { path: '/d', readonly: false, direct: false, iommu: false, num_queues: 1, queue_size: 128, vhost_user: false },
  ]);
  assert.equal(d.net![0]!.num_queues, 2);
  assert.equal(d.net![0]!.queue_size, 256);
  assert.equal(d.net![0]!.ip, '192.168.249.1');
  assert.equal(d.net![0]!.mask, '255.255.255.0');
  assert.deepEqual(validateVmConfig(d), []);
});

test('explicit undefined fields do not erase defaults', () => {
  const c = createVmConfig({ payload: { kernel: '/k' }, memory: { size: undefined, shared: true } });
  assert.equal(c.memory.size, 512 * MIB);
  assert.equal(c.memory.shared, true);
});

test('cpus ranges', () => {
  const c = valid();
  c.cpus.boot_vcpus = 0;
  assert.deepEqual(messages(c), ['cpus.boot_vcpus: must be an integer >= 1, got 0']);
  c.cpus.boot_vcpus = 1.5;
  assert.match(messages(c)[0]!, /boot_vcpus: must be an integer/);
  c.cpus.boot_vcpus = 4;
  c.cpus.max_vcpus = 2;
  assert.deepEqual(messages(c), ['cpus.max_vcpus: (2) is lower than boot_vcpus (4)']);
  c.cpus.boot_vcpus = MAX_VCPUS + 1;
  c.cpus.max_vcpus = MAX_VCPUS + 1;
  assert.deepEqual(messages(c), ['cpus.boot_vcpus: 255 exceeds the limit of 254', 'cpus.max_vcpus: 255 exceeds the limit of 254']);
  c.cpus.boot_vcpus = 2;
  c.cpus.max_vcpus = 4;
  c.cpus.topology = { threads_per_core: 2, cores_per_die: 1, dies_per_package: 1, packages: 1 };
  assert.deepEqual(messages(c), ['cpus.topology: describes 2 vCPUs but max_vcpus is 4']);
  c.cpus.topology.packages = 2;
  assert.deepEqual(messages(c), []);
  c.cpus.max_phys_bits = 60;
  assert.match(messages(c)[0]!, /max_phys_bits: must be an integer in 32..52/);
});

test('memory size', () => {
  const c = valid();
  c.memory.size = 512 * MIB + 1;
  assert.deepEqual(messages(c), [`memory.size: ${512 * MIB + 1} is not a multiple of 4 KiB`]);
  c.memory.size = 16 * MIB;
  assert.match(messages(c)[0]!, /below the minimum/);
  c.memory.size = 0;
  assert.match(messages(c)[0]!, /must be a positive integer/);
  c.memory.size = 64 * MIB;
  c.memory.hugepage_size = 3 * MIB;
  assert.deepEqual(messages(c), [
    'memory.hugepage_size: requires hugepages',
    'memory.hugepage_size: must be a power of two >= 4 KiB, got 3145728',
  ]);
  c.memory.hugepages = true;
  c.memory.hugepage_size = 2 * MIB;
  c.memory.size = 65 * MIB;
  assert.deepEqual(messages(c), ['memory.size: must be a multiple of hugepage_size (2097152)']);
});

test('payload, serial and console', () => {
  const c = valid();
  c.payload = {};
  assert.deepEqual(messages(c), ['payload: a kernel or a firmware is required to boot']);
  c.payload = { firmware: '/fw', initramfs: '/i' };
  assert.deepEqual(messages(c), ['payload.initramfs: requires a kernel']);
  c.payload = { kernel: '' };
  assert.deepEqual(messages(c), ['payload.kernel: must be a non-empty string']);
  const s = valid();
  s.serial = { mode: 'File' };
  s.console = { mode: 'Socket', iommu: false };
  assert.deepEqual(messages(s), ['serial.file: is required', 'console.socket: is required']);
  s.serial = { mode: 'Bogus' as never };
  s.console = { mode: 'Off', iommu: false };
  assert.match(messages(s)[0]!, /serial.mode: must be one of Off, Pty, Tty, File, Socket, Null, got Bogus/);
});

test('disks and net', () => {
  const c = createVmConfig({
    payload: { kernel: '/k' },
    cpus: { boot_vcpus: 2 },
    disks: [
      { path: '/a', queue_size: 100, id: 'x' },
      { path: '/b', num_queues: 4, id: 'x' },
      {},
      { vhost_user: true, path: '/c' },
    ],
    net: [
      { mac: '01:00:00:00:00:01', ip: '10.0.0.300', mask: '255.0.255.0', num_queues: 3, queue_size: 1000 },
      { tap: 'averyveryverylongname', mtu: 10, num_queues: 6 },
    ],
  });
  assert.deepEqual(messages(c), [
    'disks[0].queue_size: must be a power of two in 4..32768, got 100',
    'disks[1].num_queues: (4) exceeds the number of boot vCPUs (2)',
    'disks[1].id: "x" is already used by disks[0]',
    'disks[2].path: is required',
    'disks[3].vhost_socket: is required',
    'disks[3]: path and vhost_socket are mutually exclusive',
    'disks[3]: vhost_user requires shared memory (memory.shared)',
    'net[0].ip: must be an IPv4 address, got 10.0.0.300',
    'net[0].mask: must be an IPv4 netmask, got 255.0.255.0',
    'net[0].mac: must be a unicast MAC address xx:xx:xx:xx:xx:xx, got 01:00:00:00:00:01',
    'net[0].num_queues: must be an even integer >= 2 (RX/TX pairs), got 3',
    'net[0].queue_size: must be a power of two in 2..32768, got 1000',
    'net[1].tap: interface names are at most 15 characters',
    'net[1].mtu: must be an integer in 68..65535, got 10',
    'net[1].num_queues: (6) has more queue pairs than boot vCPUs (2)',
  ]);
});

test('assertValidVmConfig throws with every issue; helpers', () => {
  const c = valid();
  c.cpus.boot_vcpus = 0;
  c.memory.size = 1;
  assert.throws(
    () => assertValidVmConfig(c),
    (e: unknown) => e instanceof VmConfigError && e.issues.length === 2 && /cpus.boot_vcpus/.test(e.message),
  );
  assert.doesNotThrow(() => assertValidVmConfig(valid()));
  assert.deepEqual(parseIpv4('192.168.1.2'), [192, 168, 1, 2]);
  assert.equal(parseIpv4('1.2.3'), undefined);
  assert.equal(isValidMac('12:34:56:78:9a:bc'), true);
  assert.equal(isValidMac('12:34:56:78:9a'), false);
});

test('untrusted shapes give errors, never a crash', () => {
  const garbage = (v: unknown) => v as never;
  assert.throws(
    () => createVmConfig(garbage({ payload: { kernel: '/k' }, cpus: 4, disks: 'a', net: [null] })),
    (e: unknown) =>
      e instanceof VmConfigError &&
      e.message === 'cpus: must be an object; disks: must be an array; net[0]: must be an object',
  );
  assert.throws(() => createVmConfig(garbage(null)), /\(config\): must be an object/);
  assert.throws(() => createVmConfig(garbage({ cpus: { topology: 1 } })), /cpus.topology: must be an object/);
  const c = valid();
  const raw = c as unknown as Record<string, unknown>;
  raw['serial'] = null;
  raw['disks'] = [7];
  raw['net'] = {};
  raw['rng'] = 'x';
  (c.cpus as unknown as Record<string, unknown>)['topology'] = 'x';
  assert.deepEqual(messages(c), [
    'cpus.topology: must be an object',
    'serial: is required',
    'disks[0]: must be an object',
    'net: must be an array',
    'rng: is required',
  ]);
  const d = valid();
  (d as unknown as Record<string, unknown>)['cpus'] = null;
  (d as unknown as Record<string, unknown>)['memory'] = [];
  (d as unknown as Record<string, unknown>)['payload'] = 'k';
  assert.deepEqual(messages(d), ['payload: is required', 'cpus: is required', 'memory: is required']);
});

test('rate limiters: bad shapes and numbers are named by path, never a crash', () => {
  const garbage = (v: unknown) => v as never;
  assert.throws(() => createVmConfig(garbage({ payload: { kernel: '/k' }, rate_limit_groups: 'g' })), /rate_limit_groups: must be an array/);
  assert.throws(() => createVmConfig(garbage({ payload: { kernel: '/k' }, rate_limit_groups: [null] })), /rate_limit_groups\[0\]: must be an object/);
  const c = createVmConfig({
    payload: { kernel: '/k' },
    disks: [
      { path: '/a', rate_limiter_config: garbage({ bandwidth: 'fast' }) },
      { path: '/b', rate_limiter_config: garbage({ ops: { size: 1, refill_time: 1, extra: 1 }, iops: 3 }) },
      { path: '/c', rate_limiter_config: garbage(7) },
      { path: '/d', rate_limit_group: garbage(3) },
    ],
    net: [{ rate_limiter_config: { bandwidth: { size: 2 ** 54, refill_time: 1 }, ops: { size: 0, refill_time: 0 } } }],
    rate_limit_groups: garbage([{ id: '' }, { id: 'g', rate_limiter_config: { ops: { size: 3, refill_time: 1.5 } } }]),
  });
  assert.deepEqual(messages(c), [
    'rate_limit_groups[0].id: is required (a non-empty string)',
    'rate_limit_groups[0].rate_limiter_config: is required',
    'rate_limit_groups[1].rate_limiter_config.ops.refill_time: must be an integer in 0..4294967295, got 1.5',
    'disks[0].rate_limiter_config.bandwidth: must be an object {size, one_time_burst, refill_time}',
    'disks[1].rate_limiter_config.ops.extra: is not a TokenBucket field',
    'disks[1].rate_limiter_config.iops: is not a RateLimiterConfig field (bandwidth, ops)',
    'disks[2].rate_limiter_config: must be an object {bandwidth, ops}',
    'disks[3].rate_limit_group: must be a non-empty string',
    `net[0].rate_limiter_config.bandwidth.size: must be an integer in 0..${Number.MAX_SAFE_INTEGER}, got ${2 ** 54}`,
  ]);
});

test('cpus.kvm_hyperv: off unless set (as Cloud Hypervisor), true kept, a non-boolean named', () => {
  assert.equal(valid().cpus.kvm_hyperv, false);
  const on = createVmConfig({ payload: { kernel: '/k' }, cpus: { boot_vcpus: 2, kvm_hyperv: true } });
  assert.equal(on.cpus.kvm_hyperv, true);
  assert.deepEqual(validateVmConfig(on), []);
  const bad = createVmConfig({ payload: { kernel: '/k' }, cpus: { kvm_hyperv: 'on' as unknown as boolean } });
  assert.deepEqual(messages(bad), ['cpus.kvm_hyperv: must be a boolean']);
});

test('pmem: defaults, and every bad field named by path', () => {
  const c = createVmConfig({ payload: { kernel: '/k' }, pmem: [{ file: '/a' }, { file: '', size: 5 }, { file: '/c', size: 4 * MIB, iommu: true, id: 'c' }, { file: '/d', id: 'c', discard_writes: 'yes' as unknown as boolean }] });
  assert.deepEqual(c.pmem![0], { file: '/a', iommu: false, discard_writes: false });
  assert.deepEqual(messages(c), [
    'pmem[1].file: is required (file=<path> of the backing file)',
    'pmem[1].size: 5 is not a multiple of 2 MiB (virtio-pmem regions are mapped in 2 MiB units)',
    'pmem[2].iommu: is not supported (no virtual IOMMU)',
    'pmem[3].discard_writes: must be a boolean',
    'pmem[3].id: "c" is already used by pmem[2]',
  ]);
  assert.throws(() => createVmConfig({ payload: { kernel: '/k' }, pmem: {} as unknown as [] }), /pmem: must be an array/);
  assert.throws(() => createVmConfig({ payload: { kernel: '/k' }, pmem: [7 as unknown as { file: string }] }), /pmem\[0\]: must be an object/);
});

test('memory.hotplug_method: Acpi (CH\'s default; the area in 128 MiB blocks) or VirtioMem (hotplug_size required, 2 MiB blocks; hotplugged_size within it)', () => {
  const c = valid();
  const m = (memory: Partial<VmConfig['memory']>): string[] => messages({ ...c, memory: { ...c.memory, ...memory } });
  assert.deepEqual(m({ hotplug_method: 'VirtioMem', hotplug_size: 512 * MIB }), []);
  assert.deepEqual(m({ hotplug_method: 'VirtioMem', hotplug_size: 512 * MIB, hotplugged_size: 256 * MIB }), []);
  assert.deepEqual(m({ hotplug_method: 'Acpi', hotplug_size: 3 * MIB + 4096 }), [], 'Acpi: only the 4 KiB rule, as before');
  // Acpi (the default): the area is hotplug_size in whole 128 MiB blocks; hotplugged_size (what is plugged) in the same blocks, within it.
  assert.deepEqual(m({ hotplug_size: 1024 * MIB, hotplugged_size: 256 * MIB }), []);
  assert.deepEqual(m({ hotplug_size: 1024 * MIB, hotplugged_size: 3 }), ['memory.hotplugged_size: must be a non-negative multiple of 128 MiB (the memory block ACPI hotplug adds), got 3']);
  assert.deepEqual(m({ hotplug_size: 200 * MIB, hotplugged_size: 256 * MIB }), [`memory.hotplugged_size: ${256 * MIB} bytes is more than the ACPI memory hotplug area (${128 * MIB} bytes: hotplug_size ${200 * MIB} in whole 128 MiB blocks)`]);
  assert.deepEqual(m({ hotplugged_size: 128 * MIB }), [`memory.hotplugged_size: ${128 * MIB} bytes is more than the ACPI memory hotplug area (0 bytes: hotplug_size 0 in whole 128 MiB blocks)`]);
  assert.deepEqual(messages({ ...c, cpus: { ...c.cpus, max_phys_bits: 32 }, memory: { ...c.memory, hotplug_size: 512 * MIB } }),
    ['memory.hotplug_size: the ACPI memory hotplug area [0x100000000, 0x120000000) lies above the guest\'s 32 physical address bits (cpus.max_phys_bits)']);
  assert.deepEqual(m({ hotplug_method: 'Dimm' }), ['memory.hotplug_method: must be one of "Acpi", "VirtioMem", got "Dimm"']);
  assert.deepEqual(m({ hotplug_method: 'VirtioMem' }), ['memory.hotplug_size: is required with hotplug_method "VirtioMem" (the size of the virtio-mem region, e.g. hotplug_size=1G)']);
  assert.deepEqual(m({ hotplug_method: 'VirtioMem', hotplug_size: 0 }), ['memory.hotplug_size: is required with hotplug_method "VirtioMem" (the size of the virtio-mem region, e.g. hotplug_size=1G)']);
  assert.deepEqual(m({ hotplug_method: 'VirtioMem', hotplug_size: 3 * MIB }), ['memory.hotplug_size: 3145728 is not a multiple of 2 MiB (the virtio-mem block size)']);
  assert.deepEqual(m({ hotplug_method: 'VirtioMem', hotplug_size: 2 ** 51 }), [`memory.hotplug_size: ${2 ** 51} bytes beside ${512 * MIB} of RAM do not fit in the guest physical address space`]);
  assert.deepEqual(m({ hotplug_method: 'VirtioMem', hotplug_size: 64 * MIB, hotplugged_size: 128 * MIB }), [`memory.hotplugged_size: ${128 * MIB} bytes is more than hotplug_size (${64 * MIB})`]);
  assert.deepEqual(m({ hotplug_method: 'VirtioMem', hotplug_size: 64 * MIB, hotplugged_size: MIB }), ['memory.hotplugged_size: must be a non-negative multiple of 2 MiB (the virtio-mem block size), got 1048576']);
  assert.deepEqual(messages({ ...c, cpus: { ...c.cpus, max_phys_bits: 32 }, memory: { ...c.memory, hotplug_method: 'VirtioMem', hotplug_size: 512 * MIB } }),
    ['memory.hotplug_size: the virtio-mem region [0x100000000, 0x120000000) lies above the guest\'s 32 physical address bits (cpus.max_phys_bits)']);
  // Untrusted shapes: named, never a crash.
  assert.deepEqual(m({ hotplug_method: 7 as unknown as string }), ['memory.hotplug_method: must be one of "Acpi", "VirtioMem", got 7']);
});

test('desiredRamIssue and acpiHotplugAreaSize: desired_ram with ACPI memory hotplug only adds, whole 128 MiB blocks, within the area', () => {
  const mem = { size: 512 * MIB, hotplug_size: 600 * MIB, hotplugged_size: 128 * MIB };
  assert.equal(acpiHotplugAreaSize(mem), 512 * MIB, 'hotplug_size in whole 128 MiB blocks');
  assert.equal(acpiHotplugAreaSize({ hotplug_size: 100 * MIB }), 0);
  assert.equal(acpiHotplugAreaSize({ hotplug_size: 512 * MIB, hotplug_method: 'VirtioMem' }), 0);
  assert.equal(hotplugRegionSize(mem), 512 * MIB);
  assert.equal(hotplugRegionSize({ hotplug_size: 6 * MIB, hotplug_method: 'VirtioMem' }), 6 * MIB);
  for (const ok of [640 * MIB, 768 * MIB, 1024 * MIB]) assert.equal(desiredRamIssue(ok, mem), undefined, String(ok));
  assert.match(desiredRamIssue(512 * MIB, mem)!, /is less than the guest's memory now \(671088640: memory\.size \+ hotplugged_size\): ACPI memory hotplug only adds memory/);
  assert.match(desiredRamIssue(1152 * MIB, mem)!, /is more than memory\.size \+ memory\.hotplug_size \(1073741824, the hotplug area in whole 128 MiB blocks\)/);
  assert.match(desiredRamIssue(704 * MIB, mem)!, /plus a multiple of 128 MiB/);
});

test('desiredRamIssue and virtioMemRegionSize: Cloud Hypervisor\'s desired_ram rules for virtio-mem', () => {
  const mem = { size: 512 * MIB, hotplug_method: 'VirtioMem', hotplug_size: 512 * MIB };
  assert.equal(virtioMemRegionSize(mem), 512 * MIB);
  assert.equal(virtioMemRegionSize({ hotplug_size: 512 * MIB }), 0, 'Acpi: no virtio-mem region');
  assert.equal(virtioMemRegionSize({ hotplug_method: 'VirtioMem' }), 0);
  for (const ok of [512 * MIB, 514 * MIB, 1024 * MIB]) assert.equal(desiredRamIssue(ok, mem), undefined, String(ok));
  assert.match(desiredRamIssue(510 * MIB, mem)!, /is less than the boot memory/);
  assert.match(desiredRamIssue(1026 * MIB, mem)!, /is more than memory\.size \+ memory\.hotplug_size \(1073741824\)/);
  assert.match(desiredRamIssue(513 * MIB, mem)!, /not memory\.size \(536870912\) plus a multiple of 2 MiB/);
  assert.match(desiredRamIssue('1G', mem)!, /must be an integer number of bytes, got 1G/);
  assert.match(desiredRamIssue(-1, mem)!, /must be an integer/);
});
