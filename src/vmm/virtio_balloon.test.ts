// virtio-balloon through the virtio-pci transport and a real I/O worker, without a hypervisor
// (as virtio_pci.test.ts for rng): the target set from the VMM's side (Word.HostValue) reaches
// num_pages with a configuration-change interrupt on the config vector and a new
// config_generation; the driver's write of `actual` through BAR 0 stays in the configuration
// (not lost when the worker republishes it) and a reset empties it; an inflate on the queue gives
// the pages of mmapped guest RAM back (they read zero afterwards).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as libc from '../sys/libc.js';
import { GuestMemory } from '../memory/guest_memory.js';
import { TestDriver } from '../virtio/testing/driver.js';
import { DeviceStatus, VirtioDeviceType, VIRTIO_F_VERSION_1 } from '../virtio/device.js';
import { Word, Command, postCommand } from '../virtio/pci/shared.js';
import { NOTIFY_OFFSET, DEVICE_CFG_OFFSET } from '../virtio/pci/transport.js';
import { ONE, rd, wr, waitEventfd, transportRig, probeLikeLinux, startIoWorker } from './testing/transport_rig.js';


const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
async function eventually(what: string, ok: () => boolean): Promise<void> {
  for (let i = 0; i < 500 && !ok(); i++) await sleep(10);
  assert.ok(ok(), what);
}

test('virtio-balloon over virtio-pci in an I/O worker: target -> config interrupt; actual kept; inflate frees mmapped pages', async () => {
  const mem = GuestMemory.allocate([{ gpa: 0, size: 8 << 20 }]);
  const numQueues = 2;
  const vectors = 3;
  const rig = transportRig(VirtioDeviceType.Balloon, numQueues, vectors);
  const { t, controlFd, irqFds } = rig;
  const io = startIoWorker(rig, mem, '_balloon0', { kind: 'balloon', numPages: 100, deflateOnOom: false, freePageReporting: false }, numQueues);
  const { events, words } = io;
  const setTarget = (pages: number) => {
    Atomics.store(words, Word.HostValue, pages);
    postCommand(words, Command.HostValue);
    libc.write(controlFd, ONE);
  };
  try {
    assert.equal(rd(t, DEVICE_CFG_OFFSET, 4), 100, 'num_pages: the initial target');
    // Linux's probe (3.1.1) with MSI-X: vector 0 config, 1 inflateq, 2 deflateq.
    probeLikeLinux(t, 1n << VIRTIO_F_VERSION_1, vectors);
    const drivers = [0, 1].map((q) => new TestDriver(mem, { size: 16, base: 0x1000 * (q + 1), dataStart: 0x10000 + q * 0x10000, dataEnd: 0x20000 + q * 0x10000 }));
    drivers.forEach((d, q) => {
      d.reset();
      wr(t, 0x16, q, 2);
      wr(t, 0x18, 16, 2);
      wr(t, 0x1a, q + 1, 2);
      wr(t, 0x20, d.layout.descTable, 4); wr(t, 0x24, 0, 4);
      wr(t, 0x28, d.layout.availRing, 4); wr(t, 0x2c, 0, 4);
      wr(t, 0x30, d.layout.usedRing, 4); wr(t, 0x34, 0, 4);
      wr(t, 0x1c, 1, 2);
    });
    wr(t, 0x14, DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK | DeviceStatus.DRIVER_OK, 1);

    // The driver reports 40 pages in the balloon (actual is the only writable field).
    wr(t, DEVICE_CFG_OFFSET + 4, 40, 4);
    wr(t, DEVICE_CFG_OFFSET, 7, 4);
    assert.equal(rd(t, DEVICE_CFG_OFFSET + 4, 4), 40);
    assert.equal(rd(t, DEVICE_CFG_OFFSET, 4), 100, 'num_pages is not the driver\'s to write');
    // A new target: config generation moves, the config vector fires, actual is kept.
    const gen = rd(t, 0x15, 1);
    setTarget(65536);
    assert.ok(waitEventfd(irqFds[0]!, 5000), 'configuration change interrupt on vector 0');
    assert.equal(rd(t, DEVICE_CFG_OFFSET, 4), 65536);
    assert.equal(rd(t, 0x15, 1), (gen + 1) & 0xff);
    assert.equal(rd(t, DEVICE_CFG_OFFSET + 4, 4), 40, 'the driver\'s actual survives the republished configuration');

    // Inflate two pages of mmapped RAM: they read zero afterwards, their neighbour keeps its data.
    const page = 0x200000;
    mem.fill(page, 3 * 4096, 0xa5);
    const pfns = new Uint8Array(8);
    new DataView(pfns.buffer).setUint32(0, page / 4096, true);
    new DataView(pfns.buffer).setUint32(4, page / 4096 + 1, true);
    drivers[0]!.addChain([pfns], []);
    wr(t, NOTIFY_OFFSET, 0, 2);
    assert.ok(waitEventfd(irqFds[1]!, 5000), 'inflateq interrupt on vector 1');
    assert.deepEqual(drivers[0]!.used().map((u) => u.len), [0]);
    assert.ok(mem.slice(page, 2 * 4096).every((x) => x === 0), 'the inflated pages were given back (zero)');
    assert.ok(mem.slice(page + 2 * 4096, 4096).every((x) => x === 0xa5));

    // A reset: the balloon is empty again for the next driver, the target stays.
    wr(t, 0x14, 0, 1);
    await eventually('device_status reads 0 after the reset', () => rd(t, 0x14, 1) === 0);
    assert.equal(rd(t, DEVICE_CFG_OFFSET + 4, 4), 0);
    assert.equal(rd(t, DEVICE_CFG_OFFSET, 4), 65536);
    // Not driven: a new target is published without an interrupt.
    setTarget(5);
    await eventually('the new target is published', () => rd(t, DEVICE_CFG_OFFSET, 4) === 5);
    assert.equal(waitEventfd(irqFds[0]!, 100), false, 'no interrupt for a device the driver has not set up');
    assert.deepEqual(events.filter((e) => e.type === 'error' || e.type === 'needs-reset'), []);
  } finally {
    await io.stop();
    rig.close();
    mem.free();
  }
});
