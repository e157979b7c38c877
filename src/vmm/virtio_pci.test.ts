// The virtio-pci transport and a device's I/O worker together, without a hypervisor: a test
// driver does what Linux's virtio_pci_modern does through BAR 0 (feature negotiation, MSI-X,
// queue setup, DRIVER_OK), kicks the queue by the transport's notify path (an eventfd, as the
// ioeventfd would), and waits for the interrupt on the vector's eventfd (the irqfd's). The device
// is virtio-rng over /dev/urandom in a real worker thread over mmapped guest memory.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { openSync, closeSync } from 'node:fs';
import * as libc from '../sys/libc.js';
import { GuestMemory } from '../memory/guest_memory.js';
import { TestDriver } from '../virtio/testing/driver.js';
import { DeviceStatus, VirtioDeviceType, VIRTIO_F_VERSION_1, VIRTIO_F_EVENT_IDX } from '../virtio/device.js';
import { createShared, Word } from '../virtio/pci/shared.js';
import { VirtioPciTransport, NOTIFY_OFFSET, MSIX_TABLE_OFFSET, DEVICE_CFG_OFFSET } from '../virtio/pci/transport.js';
import { PciRoot, PciConfigIo } from '../pci/bus.js';
import { ONE, le, rd, wr, waitEventfd, startIoWorker } from './testing/transport_rig.js';
import { mulberry32, seedFromEnv } from '../testing/prng.js';

async function setup() {
  const mem = GuestMemory.allocate([{ gpa: 0, size: 4 << 20 }]);
  const numQueues = 1;
  const vectors = 2;
  const shared = createShared({ numQueues, vectors });
  const ev = () => libc.eventfd(0, libc.EFD_CLOEXEC | libc.EFD_NONBLOCK);
  const controlFd = ev();
  const queueFds = [ev()];
  const irqFds = [ev(), ev()];
  const rngFd = openSync('/dev/urandom', 'r');
  const routes = new Map<number, unknown>();
  const t = new VirtioPciTransport({
    deviceType: VirtioDeviceType.Rng, numQueues, shared, barAddr: 0xc0000000,
    hooks: {
      signalWorker: () => { libc.write(controlFd, ONE); },
      fireVector: (v) => { libc.write(irqFds[v]!, ONE); },
      routeVector: (v, msg) => { routes.set(v, msg); },
      barMoved: () => true,
      notifyQueue: (q) => { libc.write(queueFds[q]!, ONE); },
    },
  });
  const io = startIoWorker({ shared, controlFd, queueFds, irqFds }, mem, 'rng-test', { kind: 'rng', fd: rngFd }, numQueues);
  const { events, words } = io;
  const cleanup = async () => {
    await io.stop();
    for (const fd of [controlFd, ...queueFds, ...irqFds]) libc.close(fd);
    closeSync(rngFd);
    mem.free();
  };
  return { mem, t, routes, events, irqFds, cleanup, words };
}

/** Linux's probe order (virtio 1.2, 3.1.1) with MSI-X: vector 0 config, vector 1 queue 0. */
/** Write 0 to device_status and poll it until it reads 0, as Linux's vp_modern_reset does. */
function resetDevice(t: VirtioPciTransport): void {
  wr(t, 0x14, 0, 1);
  const until = Date.now() + 5000;
  while (rd(t, 0x14, 1) !== 0) {
    if (Date.now() > until) throw new Error('device_status never read 0 after a reset');
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1);
  }
}

function bringUp(t: VirtioPciTransport, drv: TestDriver, extraFeatures = 0n): void {
  resetDevice(t);
  wr(t, 0x14, DeviceStatus.ACKNOWLEDGE, 1);
  wr(t, 0x14, DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER, 1);
  wr(t, 0x00, 1, 4);
  const hi = rd(t, 0x04, 4);
  assert.equal(hi & 1, 1, 'VERSION_1 offered');
  const want = (1n << VIRTIO_F_VERSION_1) | extraFeatures;
  wr(t, 0x08, 0, 4); wr(t, 0x0c, Number(want & 0xffffffffn), 4);
  wr(t, 0x08, 1, 4); wr(t, 0x0c, Number(want >> 32n), 4);
  wr(t, 0x14, DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK, 1);
  assert.ok(rd(t, 0x14, 1) & DeviceStatus.FEATURES_OK, 'FEATURES_OK accepted');
  // MSI-X: enable through the capability, program and unmask both vectors.
  const msixCap = findCap(t, 0x11);
  t.writeConfig(msixCap + 2, le(0x8000, 2));
  for (let v = 0; v < 2; v++) {
    wr(t, MSIX_TABLE_OFFSET + v * 16, 0xfee00000, 4);
    wr(t, MSIX_TABLE_OFFSET + v * 16 + 4, 0, 4);
    wr(t, MSIX_TABLE_OFFSET + v * 16 + 8, 0x30 + v, 4);
    wr(t, MSIX_TABLE_OFFSET + v * 16 + 12, 0, 4);
  }
  wr(t, 0x10, 0, 2);
  assert.equal(rd(t, 0x10, 2), 0);
  wr(t, 0x16, 0, 2);
  assert.ok(rd(t, 0x18, 2) >= drv.layout.size);
  wr(t, 0x18, drv.layout.size, 2);
  wr(t, 0x1a, 1, 2);
  assert.equal(rd(t, 0x1a, 2), 1);
  wr(t, 0x20, drv.layout.descTable, 4); wr(t, 0x24, 0, 4);
  wr(t, 0x28, drv.layout.availRing, 4); wr(t, 0x2c, 0, 4);
  wr(t, 0x30, drv.layout.usedRing, 4); wr(t, 0x34, 0, 4);
  wr(t, 0x1c, 1, 2);
  wr(t, 0x14, DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK | DeviceStatus.DRIVER_OK, 1);
}

function findCap(t: VirtioPciTransport, id: number): number {
  const b = new Uint8Array(1);
  t.readConfig(0x34, b);
  let p = b[0]!;
  while (p) {
    t.readConfig(p, b);
    if (b[0] === id) return p;
    t.readConfig(p + 1, b);
    p = b[0]!;
  }
  throw new Error(`capability ${id} not found`);
}

test('virtio-pci: PCI identity and vendor capabilities seen through 0xCF8/0xCFC', async () => {
  const s = await setup();
  try {
    const root = new PciRoot();
    root.add(s.t, 3);
    const io = new PciConfigIo(root);
    const cfg = (dev: number, reg: number) => {
      io.write(0, le(0x80000000 | (dev << 11) | reg, 4));
      const b = new Uint8Array(4);
      io.read(4, b);
      return new DataView(b.buffer).getUint32(0, true);
    };
    assert.equal(cfg(3, 0), 0x1044_1af4, 'vendor 0x1af4, device 0x1040 + 4 (entropy)');
    assert.equal(cfg(5, 0), 0xffffffff, 'an empty slot reads all-ones');
    assert.equal(cfg(0, 0) & 0xffff, 0x8086, 'host bridge at 00:00.0');
    // BAR sizing: write all-ones, read the size mask back, restore.
    io.write(0, le(0x80000000 | (3 << 11) | 0x10, 4));
    io.write(4, le(0xffffffff, 4));
    const b = new Uint8Array(4);
    io.read(4, b);
    assert.equal(new DataView(b.buffer).getUint32(0, true), 0xffff0000, '64 KiB memory BAR');
    io.write(4, le(0xc0000000, 4));
    // Capability list: common, notify, ISR, device, MSI-X.
    const types: number[] = [];
    let p = cfg(3, 0x34) & 0xff;
    while (p) {
      const head = cfg(3, p);
      if ((head & 0xff) === 0x09) types.push((head >>> 24) & 0xff);
      else types.push(-(head & 0xff));
      p = (head >> 8) & 0xff;
    }
    assert.deepEqual(types, [1, 2, 3, 4, -0x11]);
  } finally {
    await s.cleanup();
  }
});

test('virtio-pci: rng request served by the worker, interrupt through the MSI-X vector eventfd', async () => {
  const s = await setup();
  try {
    const drv = new TestDriver(s.mem, { size: 16, base: 0x1000 });
    drv.reset();
    bringUp(s.t, drv, 1n << VIRTIO_F_EVENT_IDX);
    assert.equal(s.routes.size, 2, 'both vectors routed');
    const c = drv.addChain([], [64]);
    wr(s.t, NOTIFY_OFFSET, 0, 2);
    assert.ok(waitEventfd(s.irqFds[1]!, 5000), 'queue interrupt on vector 1');
    const used = drv.used();
    assert.equal(used.length, 1);
    assert.equal(used[0]!.len, 64);
    assert.ok(s.mem.slice(c.writable[0]!, 64).some((x) => x !== 0), 'random bytes written');
    assert.equal(rd(s.t, DEVICE_CFG_OFFSET, 4), 0, 'rng has no configuration');
  } finally {
    await s.cleanup();
  }
});

test('virtio-pci: a descriptor outside guest RAM puts the device into NEEDS_RESET; reset recovers it', async () => {
  const s = await setup();
  try {
    const drv = new TestDriver(s.mem, { size: 16, base: 0x1000 });
    drv.reset();
    bringUp(s.t, drv);
    drv.writeDesc(0, 0x7fff_0000_0000, 4096, 2, 0);
    drv.writeAvailEntry(0, 0);
    drv.setAvailIdx(1);
    wr(s.t, NOTIFY_OFFSET, 0, 2);
    assert.ok(waitEventfd(s.irqFds[0]!, 5000), 'configuration-change interrupt on vector 0');
    assert.ok(rd(s.t, 0x14, 1) & DeviceStatus.DEVICE_NEEDS_RESET, 'status shows DEVICE_NEEDS_RESET');
    assert.equal(Atomics.load(s.words, Word.Errors), 1);
    for (let i = 0; i < 100 && !s.events.some((e) => e.type === 'needs-reset'); i++) await new Promise((r) => setTimeout(r, 10));
    assert.ok(s.events.some((e) => e.type === 'needs-reset'), 'the VMM is told');
    // Reset, then a fresh bring-up works again.
    resetDevice(s.t);
    assert.equal(rd(s.t, 0x14, 1) & DeviceStatus.DEVICE_NEEDS_RESET, 0, 'reset clears DEVICE_NEEDS_RESET');
    drv.reset();
    bringUp(s.t, drv);
    drv.addChain([], [32]);
    wr(s.t, NOTIFY_OFFSET, 0, 2);
    assert.ok(waitEventfd(s.irqFds[1]!, 5000));
    assert.equal(drv.used()[0]!.len, 32);
  } finally {
    await s.cleanup();
  }
});

test('virtio-pci: a masked vector stays pending and is delivered on unmask', async () => {
  const s = await setup();
  try {
    const drv = new TestDriver(s.mem, { size: 16, base: 0x1000 });
    drv.reset();
    bringUp(s.t, drv);
    wr(s.t, MSIX_TABLE_OFFSET + 16 + 12, 1, 4); // mask vector 1
    drv.addChain([], [16]);
    wr(s.t, NOTIFY_OFFSET, 0, 2);
    for (let i = 0; i < 100 && drv.usedIdx === 0; i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(drv.usedIdx, 1, 'request completed');
    assert.equal(waitEventfd(s.irqFds[1]!, 100), false, 'no interrupt while masked');
    const pba = new Uint8Array(8);
    s.t.read(0xc000, pba);
    assert.equal(pba[0]! & 2, 2, 'pending bit set in the PBA');
    wr(s.t, MSIX_TABLE_OFFSET + 16 + 12, 0, 4); // unmask
    assert.ok(waitEventfd(s.irqFds[1]!, 1000), 'delivered on unmask');
  } finally {
    await s.cleanup();
  }
});

test('virtio-pci: FEATURES_OK is refused for features the device does not offer or without VERSION_1', async () => {
  const s = await setup();
  try {
    const t = s.t;
    wr(t, 0x14, DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER, 1);
    wr(t, 0x08, 0, 4); wr(t, 0x0c, 0, 4);
    wr(t, 0x08, 1, 4); wr(t, 0x0c, 0, 4);
    wr(t, 0x14, DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK, 1);
    assert.equal(rd(t, 0x14, 1) & DeviceStatus.FEATURES_OK, 0, 'legacy (no VERSION_1) refused');
    resetDevice(t);
    wr(t, 0x08, 1, 4); wr(t, 0x0c, 1 | (1 << 20), 4);
    wr(t, 0x14, DeviceStatus.FEATURES_OK, 1);
    assert.equal(rd(t, 0x14, 1) & DeviceStatus.FEATURES_OK, 0, 'unknown feature bit refused');
  } finally {
    await s.cleanup();
  }
});

test('virtio-pci: thousands of random guest register accesses never throw, and the device still works after a reset', async () => {
  const s = await setup();
  try {
    const seed = seedFromEnv('STV_FUZZ_SEED');
    console.log(`# transport fuzz seed ${seed} (STV_FUZZ_SEED to replay)`);
    const rnd = mulberry32(seed);
    const pick = <T>(a: readonly T[]): T => a[Math.floor(rnd() * a.length)]!;
    const sizes = [1, 2, 4, 8] as const;
    const interesting = [0, 1, 0xffffffff, 0x7fffffff, 0x80000000, 0xfee00000, 0xffff, 4, 8, 15, 0x1000];
    for (let i = 0; i < 5000; i++) {
      const len = pick(sizes);
      const d = new Uint8Array(len);
      const v = rnd() < 0.5 ? pick(interesting) : Math.floor(rnd() * 2 ** 32);
      for (let b = 0; b < len; b++) d[b] = (v >>> (8 * (b % 4))) & 0xff;
      const where = rnd();
      // Common config (status included: resets, DRIVER_OK with garbage rings), notify, MSI-X,
      // device config, unmapped parts of the BAR, and PCI configuration space.
      const off = where < 0.45 ? Math.floor(rnd() * 0x40) : where < 0.55 ? NOTIFY_OFFSET + Math.floor(rnd() * 8)
        : where < 0.7 ? MSIX_TABLE_OFFSET + Math.floor(rnd() * 0x40) : where < 0.8 ? DEVICE_CFG_OFFSET + Math.floor(rnd() * 0x110)
          : Math.floor(rnd() * 0x10000);
      if (where >= 0.9) {
        const cfgOff = Math.floor(rnd() * 300);
        if (rnd() < 0.5) s.t.writeConfig(cfgOff, d); else s.t.readConfig(cfgOff, d);
      } else if (rnd() < 0.6) {
        s.t.write(off, d);
      } else {
        s.t.read(off, d);
      }
      if (i % 500 === 0) await new Promise((r) => setImmediate(r));
    }
    assert.equal(s.events.filter((e) => e.type === 'error').length, 0, `worker errors: ${JSON.stringify(s.events)}`);
    // Whatever state that left, a reset and a proper bring-up serve a request again.
    const drv = new TestDriver(s.mem, { size: 16, base: 0x1000 });
    drv.reset();
    s.t.writeConfig(0x04, le(0x0006, 2)); // memory decoding and bus mastering back on
    bringUp(s.t, drv);
    drv.addChain([], [48]);
    wr(s.t, NOTIFY_OFFSET, 0, 2);
    assert.ok(waitEventfd(s.irqFds[1]!, 5000), 'queue interrupt after the fuzzing');
    assert.equal(drv.used()[0]!.len, 48);
  } finally {
    await s.cleanup();
  }
});
