// Host side of the virtio devices: what the user gave is checked and opened before any VM exists.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VirtioManager, VirtioConfigError } from './virtio_manager.js';
import { parseMac } from '../net/tap.js';
import { view as libcView } from '../sys/libc.js';
import { createVmConfig, type VmConfig, type VmConfigInput } from './config.js';

const dir = mkdtempSync(join(tmpdir(), 'stv-virtio-mgr-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

function cfg(disks: Array<{ path: string; readonly?: boolean }>, extra: Partial<VmConfig> = {}): VmConfig {
  return { ...createVmConfig({ payload: { kernel: '/nonexistent' }, disks, console: { mode: 'Off' } } as VmConfigInput), ...extra };
}

function image(name: string, size = 1 << 20): string {
  const p = join(dir, name);
  writeFileSync(p, new Uint8Array(size));
  return p;
}

test('a disk image opened for writing is locked: a second VMM cannot open it, read-only or not', () => {
  const img = image('locked.img');
  const a = new VirtioManager(() => {});
  a.open(cfg([{ path: img }]), 1);
  try {
    const b = new VirtioManager(() => {});
    assert.throws(() => b.open(cfg([{ path: img }]), 1), (e: Error) => e instanceof VirtioConfigError && /locked by another process/.test(e.message));
    assert.throws(() => b.open(cfg([{ path: img, readonly: true }]), 1), /locked by another process/);
    assert.equal(b.count, 0, 'nothing stays open after a failed open');
  } finally {
    a.close();
  }
  const c = new VirtioManager(() => {});
  c.open(cfg([{ path: img }]), 1);
  c.close();
});

test('read-only images can be shared; a writer is refused while readers hold them', () => {
  const img = image('shared.img');
  const r1 = new VirtioManager(() => {});
  const r2 = new VirtioManager(() => {});
  r1.open(cfg([{ path: img, readonly: true }]), 1);
  r2.open(cfg([{ path: img, readonly: true }]), 1);
  assert.throws(() => new VirtioManager(() => {}).open(cfg([{ path: img }]), 1), /locked/);
  r1.close();
  r2.close();
});

test('bad disk, entropy and console settings are named', () => {
  const m = new VirtioManager(() => {});
  assert.throws(() => m.open(cfg([{ path: join(dir, 'missing.img') }]), 1), /disk image '.*missing\.img' does not exist/);
  assert.throws(() => m.open(cfg([{ path: dir }]), 1), /is a directory|not a regular file/);
  assert.throws(() => m.open(cfg([{ path: image('tiny.img', 100) }]), 1), /smaller than one 512-byte sector/);
  assert.throws(() => m.open(cfg([], { rng: { src: join(dir, 'no-such-rng'), iommu: false } }), 1), /cannot open entropy source/);
  assert.throws(() => m.open(cfg([], { console: { mode: 'File', file: join(dir, 'no', 'such', 'dir'), iommu: false } }), 1), /cannot open console output file/);
  assert.equal(m.count, 0);
});

test('MAC addresses are parsed strictly', () => {
  assert.deepEqual([...parseMac('52:54:00:ab:CD:0f')], [0x52, 0x54, 0x00, 0xab, 0xcd, 0x0f]);
  for (const bad of ['52:54:00:ab:cd', '52-54-00-ab-cd-ef', '52:54:00:ab:cd:xyz', '']) assert.throws(() => parseMac(bad), /invalid MAC/);
});

test('vsock: the manager listens on socket=, refuses a path that exists or cannot be bound, and removes its socket on close', () => {
  const sock = join(dir, 'v.sock');
  const m = new VirtioManager(() => {});
  m.open(cfg([], { vsock: { cid: 3, socket: sock } }), 1);
  try {
    assert.ok(existsSync(sock), 'the socket was created');
    const again = new VirtioManager(() => {});
    assert.throws(() => again.open(cfg([], { vsock: { cid: 4, socket: sock } }), 1), (e: Error) => e instanceof VirtioConfigError && e.message.includes(`'${sock}' already exists`));
    assert.equal(again.count, 0);
  } finally {
    m.close();
  }
  assert.ok(!existsSync(sock), 'close() removed the socket');
  const file = image('not-a-socket');
  assert.throws(() => new VirtioManager(() => {}).open(cfg([], { vsock: { cid: 3, socket: file } }), 1), /already exists/);
  assert.throws(() => new VirtioManager(() => {}).open(cfg([], { vsock: { cid: 3, socket: join(dir, 'no', 'such', 'dir', 's') } }), 1), /vsock socket '.*' is in a directory that does not exist/);
  assert.throws(() => new VirtioManager(() => {}).open(cfg([], { vsock: { cid: 3, socket: join(dir, 'x'.repeat(120)) } }), 1), /cannot be used/);
});

test('virtio-pmem: the file is mapped above RAM (shared, or private with discard_writes); bad files and sizes are named', () => {
  const MiB = 1 << 20;
  const pm = (pmem: VmConfigInput['pmem']) => ({ ...createVmConfig({ payload: { kernel: '/nonexistent' }, console: { mode: 'Off' }, memory: { size: 256 * MiB }, pmem } as VmConfigInput) });
  const a = image('pmem-a.raw', 4 * MiB);
  const b = image('pmem-b.raw', 6 * MiB);
  const m = new VirtioManager(() => {});
  m.open(pm([{ file: a, id: 'pa' }, { file: b, size: 2 * MiB, discard_writes: true }]), 1);
  try {
    const mem = m.deviceMemory;
    assert.deepEqual(mem.map((d) => [d.id, d.gpa, d.size]), [['pa', 4 * 1024 * MiB, 4 * MiB], ['_pmem1', 4 * 1024 * MiB + 4 * MiB, 2 * MiB]]);
    // Shared: a store through the mapping is in the file; private: it is not.
    const shared = new Uint8Array(libcView(mem[0]!.hostAddress, 4 * MiB));
    shared.set([1, 2, 3], 4096);
    assert.deepEqual([...readFileSync(a).subarray(4096, 4099)], [1, 2, 3]);
    const priv = new Uint8Array(libcView(mem[1]!.hostAddress, 2 * MiB));
    priv.set([9, 9], 0);
    assert.deepEqual([...readFileSync(b).subarray(0, 2)], [0, 0]);
    // A writable file is locked against a second VMM.
    assert.throws(() => new VirtioManager(() => {}).open(pm([{ file: a }]), 1), /_pmem0: pmem file '.*pmem-a\.raw' is locked by another process/);
  } finally {
    m.close();
  }
  assert.throws(() => m.open(pm([{ file: join(dir, 'no-such.raw') }]), 1), /_pmem0: pmem file '.*no-such\.raw' does not exist/);
  assert.throws(() => m.open(pm([{ file: dir }]), 1), /is a directory|is not a regular file/);
  assert.throws(() => m.open(pm([{ file: image('pmem-odd.raw', 3 * MiB) }]), 1), /is 3145728 bytes, not a multiple of 2 MiB .*give size=/);
  assert.throws(() => m.open(pm([{ file: image('pmem-small.raw', 2 * MiB), size: 4 * MiB }]), 1), /is 2097152 bytes, smaller than size=4194304 \(4 MiB\)/);
  assert.throws(() => m.open(pm([{ file: image('pmem-empty.raw', 0) }]), 1), /pmem file '.*pmem-empty\.raw' is empty/);
  assert.equal(m.count, 0, 'nothing stays open after a failed open');
  assert.deepEqual(m.deviceMemory, []);
});

test('virtio-mem: hotplug_method VirtioMem opens _mem0 (no host memory of its own: its region is guest memory), pmem goes after the region; requested size kept, bad sizes named', () => {
  const MiB = 1 << 20;
  const GiB = 1024 * MiB;
  const vm = (memory: VmConfigInput['memory'], pmem?: VmConfigInput['pmem']) => createVmConfig({ payload: { kernel: '/nonexistent' }, console: { mode: 'Off' }, memory, ...(pmem ? { pmem } : {}) } as VmConfigInput);
  const m = new VirtioManager(() => {});
  m.open(vm({ size: 256 * MiB, hotplug_method: 'VirtioMem', hotplug_size: 512 * MiB, hotplugged_size: 64 * MiB }, [{ file: image('pmem-vmem.raw', 4 * MiB) }]), 1);
  try {
    const at = m.placement('_mem0');
    assert.ok(at !== undefined, 'the virtio-mem device is placed on the PCI bus');
    assert.deepEqual([at.segment, at.mapsMemory, at.removable], [0, false, false]);
    // The region is [4 GiB, 4.5 GiB): pmem starts after it.
    assert.deepEqual(m.deviceMemory.map((d) => [d.id, d.gpa, d.size]), [['_pmem0', 4 * GiB + 512 * MiB, 4 * MiB]]);
    assert.equal(m.setMemRequestedSize(128 * MiB), true, 'kept for the guest runs (none running)');
    assert.equal(m.memPluggedBytes(), 0, 'no guest running: nothing plugged');
    assert.throws(() => m.setMemRequestedSize(513 * MiB), /_mem0: requested size 537919488 is not a multiple of 2097152 in 0\.\.536870912/);
    assert.throws(() => m.setMemRequestedSize(3 * MiB), /is not a multiple of 2097152/);
  } finally {
    m.close();
  }
  // Acpi (the default) with hotplug_size: no device.
  const a = new VirtioManager(() => {});
  a.open(vm({ size: 256 * MiB, hotplug_size: 512 * MiB }), 1);
  try {
    assert.equal(a.placement('_mem0'), undefined);
    assert.equal(a.setMemRequestedSize(0), false, 'no virtio-mem device');
  } finally {
    a.close();
  }
});

test('hotplug host side: the lowest free device number; a full bus, a missing image or a locked one refused with nothing left open; remove() unlocks', async () => {
  const m = new VirtioManager(() => {});
  const c = cfg([{ path: image('hp-root.img') }]);
  m.open(c, 1);
  try {
    const base = m.count;
    const first = m.openHotplug(c, { kind: 'disk', config: { ...c.disks![0]!, path: image('hp-1.img'), id: undefined } });
    assert.equal(first, '_disk1', 'the first free default id');
    const at = m.placement(first)!;
    assert.deepEqual([at.segment, at.mapsMemory], [0, false]);
    assert.equal(at.slot, base + 1, 'the next device number');
    assert.throws(() => m.openHotplug(c, { kind: 'disk', config: { ...c.disks![0]!, path: join(dir, 'hp-missing.img'), id: 'x' } }), /hp-missing\.img' does not exist/);
    assert.throws(() => m.openHotplug(c, { kind: 'disk', config: { ...c.disks![0]!, path: image('hp-1.img', 1 << 20), id: 'y' } }), /locked by another process/);
    assert.throws(() => m.openHotplug(c, { kind: 'disk', config: { ...c.disks![0]!, path: image('hp-dup.img'), id: '_disk0' } }), /identifier '_disk0' is already in use/);
    assert.throws(() => m.openHotplug(c, { kind: 'disk', config: { ...c.disks![0]!, path: image('hp-io.img'), id: 'io', iothread: 'fast' } }), /iothread: a hot-added device gets an I\/O thread of its own/);
    assert.throws(() => m.openHotplug(c, { kind: 'disk', config: { ...c.disks![0]!, path: image('hp-g.img'), id: 'g', rate_limit_group: 'g0' } }), /rate_limit_group/);
    assert.equal(m.count, base + 1, 'refused devices leave nothing behind');
    assert.equal(m.placement(first)!.removable, true);
    // Fill bus 0 (device numbers 1..31), then one more.
    const ids: string[] = [];
    const paths = new Map<string, string>();
    while (m.count < 31) {
      const path = image(`hp-f${m.count}.img`);
      const id = m.openHotplug(c, { kind: 'disk', config: { ...c.disks![0]!, path, id: `f${m.count}` } });
      ids.push(id);
      paths.set(id, path);
    }
    assert.throws(() => m.openHotplug(c, { kind: 'disk', config: { ...c.disks![0]!, path: image('hp-over.img'), id: 'over' } }), /PCI segment 0 is full \(at most 31 devices/);
    assert.equal(m.count, 31);
    // A removed device's number is the next one given out; its image is unlocked.
    const gone = m.placement(ids[3]!)!.slot;
    assert.equal(await m.remove(null, ids[3]!), true);
    assert.equal(await m.remove(null, ids[3]!), false, 'already gone');
    const again = new VirtioManager(() => {});
    again.open(cfg([{ path: paths.get(ids[3]!)! }]), 1);
    again.close();
    const next = m.openHotplug(c, { kind: 'disk', config: { ...c.disks![0]!, path: image('hp-new.img'), id: 'new' } });
    assert.equal(m.placement(next)!.slot, gone);
  } finally {
    m.close();
  }
});

test('a restore pins each device to its saved PCI address (a removed device\'s hole stays); a saved placement that does not fit this VM is refused whole, naming the device', () => {
  const m = new VirtioManager(() => {});
  m.open(cfg([{ path: image('pin-a.img') }, { path: image('pin-b.img') }]), 1);
  try {
    // open() places by the configuration: the lowest free numbers in configuration order.
    const opened = [{ id: '_disk0', segment: 0, slot: 1 }, { id: '_disk1', segment: 0, slot: 2 }, { id: '_rng0', segment: 0, slot: 3 }];
    assert.deepEqual(m.placements(), opened);
    for (const [saved, why] of [
      [[{ id: '_disk0', segment: 0, slot: 4 }, { id: '_disk1', segment: 0, slot: 2 }, { id: '_rng0', segment: 0, slot: 3 }, { id: '_disk9', segment: 0, slot: 5 }], /places virtio device '_disk9', which this VM does not have/],
      [[{ id: '_disk0', segment: 0, slot: 4 }, { id: '_rng0', segment: 0, slot: 3 }], /no PCI address for virtio device '_disk1'/],
      [[{ id: '_disk0', segment: 0, slot: 4 }, { id: '_disk0', segment: 0, slot: 5 }, { id: '_disk1', segment: 0, slot: 2 }, { id: '_rng0', segment: 0, slot: 3 }], /places virtio device '_disk0' twice/],
      [[{ id: '_disk0', segment: 1, slot: 4 }, { id: '_disk1', segment: 0, slot: 2 }, { id: '_rng0', segment: 0, slot: 3 }], /_disk0: the saved state has it on PCI segment 1, the configuration on 0/],
      [[{ id: '_disk0', segment: 0, slot: 2 }, { id: '_disk1', segment: 0, slot: 2 }, { id: '_rng0', segment: 0, slot: 3 }], /the saved PCI addresses: _disk1: PCI slot 2 of segment 0 is taken twice/],
      [[{ id: '_disk0', segment: 0, slot: 32 }, { id: '_disk1', segment: 0, slot: 2 }, { id: '_rng0', segment: 0, slot: 3 }], /PCI slot 32 outside 1\.\.31/],
    ] as const) {
      assert.throws(() => m.pinPlacements(saved), (e: Error) => e instanceof VirtioConfigError && why.test(e.message), JSON.stringify(saved));
      assert.deepEqual(m.placements(), opened, 'a refused placement changes nothing');
    }
    // The boot disk that sat at 00:01.0 was removed before the snapshot: its slot stays empty.
    m.pinPlacements([{ id: '_disk1', segment: 0, slot: 2 }, { id: '_rng0', segment: 0, slot: 3 }, { id: '_disk0', segment: 0, slot: 4 }]);
    assert.deepEqual(m.placements(), [{ id: '_disk0', segment: 0, slot: 4 }, { id: '_disk1', segment: 0, slot: 2 }, { id: '_rng0', segment: 0, slot: 3 }]);
    assert.equal(m.placement('_rng0')?.slot, 3);
  } finally {
    m.close();
  }
  // A device number the configuration fixes (pci_device_id) must be the saved one.
  const f = new VirtioManager(() => {});
  f.open(cfg([], { disks: [{ path: image('pin-c.img'), pci_device_id: 7 } as NonNullable<VmConfig['disks']>[number]] }), 1);
  try {
    assert.throws(() => f.pinPlacements([{ id: '_disk0', segment: 0, slot: 6 }, { id: '_rng0', segment: 0, slot: 1 }]), /_disk0: the saved state has it at device number 6, the configuration \(pci_device_id\) at 7/);
    f.pinPlacements([{ id: '_disk0', segment: 0, slot: 7 }, { id: '_rng0', segment: 0, slot: 1 }]);
    assert.deepEqual(f.placements().map((p) => p.slot), [7, 1]);
  } finally {
    f.close();
  }
});
