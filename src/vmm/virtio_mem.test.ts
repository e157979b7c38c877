// virtio-mem through the virtio-pci transport and a real I/O worker, without a hypervisor (as
// virtio_balloon.test.ts): guest memory laid out as the VMM lays it out (RAM, then the region,
// layout.ts guestMemoryRegions), requested_size set from the VMM's side (Word.HostValue, MiB)
// reaches the configuration with a configuration-change interrupt and a new config_generation;
// PLUG and UNPLUG on the queue change plugged_size with a new config_generation and no
// configuration interrupt (VirtioActivation.publishConfig, 5.15.4); an unplugged block's host
// pages are given back (it reads zero); the request buffers themselves may lie in the region
// (it is guest memory); bad requests are answered ERROR, nothing thrown.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as libc from '../sys/libc.js';
import { GuestMemory } from '../memory/guest_memory.js';
import { guestMemoryRegions, hotplugRegion } from '../arch/x86_64/layout.js';
import { TestDriver } from '../virtio/testing/driver.js';
import { DeviceStatus, VirtioDeviceType, VIRTIO_F_VERSION_1 } from '../virtio/device.js';
import {
  MemConfig, MEM_REQ_BYTES, MEM_RESP_BYTES, VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE, VIRTIO_MEM_REQ_PLUG, VIRTIO_MEM_REQ_STATE, VIRTIO_MEM_REQ_UNPLUG,
  VIRTIO_MEM_RESP_ACK, VIRTIO_MEM_RESP_ERROR, VIRTIO_MEM_STATE_MIXED,
} from '../virtio/mem/device.js';
import { Word, Command, postCommand } from '../virtio/pci/shared.js';
import { NOTIFY_OFFSET, DEVICE_CFG_OFFSET } from '../virtio/pci/transport.js';
import { ONE, rd, wr, waitEventfd, transportRig, probeLikeLinux, startIoWorker } from './testing/transport_rig.js';

const MiB = 1 << 20;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
async function eventually(what: string, ok: () => boolean): Promise<void> {
  for (let i = 0; i < 500 && !ok(); i++) await sleep(10);
  assert.ok(ok(), what);
}

function req(type: number, addr = 0, nbBlocks = 0): Uint8Array {
  const b = new Uint8Array(MEM_REQ_BYTES);
  const v = new DataView(b.buffer);
  v.setUint16(0, type, true);
  v.setBigUint64(8, BigInt(addr), true);
  v.setUint16(16, nbBlocks, true);
  return b;
}

test('virtio-mem over virtio-pci in an I/O worker: requested_size -> config interrupt; plug/unplug publish plugged_size without one; unplugged blocks discarded', async () => {
  const ram = 16 * MiB;
  const region = hotplugRegion(ram, 8 * MiB);
  assert.equal(region.gpa, 4 * 1024 * MiB);
  const mem = GuestMemory.allocate(guestMemoryRegions(ram, region.size));
  const numQueues = 1;
  const vectors = 2;
  const rig = transportRig(VirtioDeviceType.Mem, numQueues, vectors);
  const { t, controlFd, irqFds } = rig;
  const io = startIoWorker(rig, mem, '_mem0', { kind: 'mem', addr: region.gpa, regionSize: region.size, blockSize: 2 * MiB, requestedSize: 0 }, numQueues);
  const { events, words } = io;
  const setRequested = (mib: number) => {
    Atomics.store(words, Word.HostValue, mib);
    postCommand(words, Command.HostValue);
    libc.write(controlFd, ONE);
  };
  const cfg64 = (off: number) => rd(t, DEVICE_CFG_OFFSET + off, 4) + rd(t, DEVICE_CFG_OFFSET + off + 4, 4) * 2 ** 32;
  try {
    await eventually('the device is built', () => Atomics.load(words, Word.Ready) === 1);
    assert.deepEqual(
      [cfg64(MemConfig.blockSize), cfg64(MemConfig.addr), cfg64(MemConfig.regionSize), cfg64(MemConfig.usableRegionSize), cfg64(MemConfig.pluggedSize), cfg64(MemConfig.requestedSize)],
      [2 * MiB, region.gpa, 8 * MiB, 8 * MiB, 0, 0]);
    // Linux's probe (3.1.1) with MSI-X: vector 0 config, 1 guestq; features VERSION_1 and UNPLUGGED_INACCESSIBLE.
    probeLikeLinux(t, (1n << VIRTIO_F_VERSION_1) | (1n << VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE), vectors);
    // The rings in RAM; the request buffers in the region's last block (guest memory like RAM:
    // a guest puts virtqueue buffers into plugged memory).
    const bufs = region.gpa + 6 * MiB;
    const d = new TestDriver(mem, { size: 16, base: 0x1000, dataStart: bufs, dataEnd: bufs + 0x10000 });
    d.reset();
    wr(t, 0x16, 0, 2);
    wr(t, 0x18, 16, 2);
    wr(t, 0x1a, 1, 2);
    wr(t, 0x20, d.layout.descTable, 4); wr(t, 0x24, 0, 4);
    wr(t, 0x28, d.layout.availRing, 4); wr(t, 0x2c, 0, 4);
    wr(t, 0x30, d.layout.usedRing, 4); wr(t, 0x34, 0, 4);
    wr(t, 0x1c, 1, 2);
    wr(t, 0x14, DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK | DeviceStatus.DRIVER_OK, 1);

    // vm.resize: requested_size 4 MiB, a configuration change interrupt (5.15.4).
    let gen = rd(t, 0x15, 1);
    setRequested(4);
    assert.ok(waitEventfd(irqFds[0]!, 5000), 'configuration change interrupt on vector 0');
    assert.equal(cfg64(MemConfig.requestedSize), 4 * MiB);
    assert.equal(rd(t, 0x15, 1), (gen + 1) & 0xff, 'config_generation moved');

    /** One request on guestq: the response type (and state). */
    const ask = (r: Uint8Array): { type: number; state: number } => {
      d.resetData();
      const c = d.addChain([r], [MEM_RESP_BYTES]);
      wr(t, NOTIFY_OFFSET, 0, 2);
      assert.ok(waitEventfd(irqFds[1]!, 5000), 'guestq interrupt on vector 1');
      assert.deepEqual(d.used().map((u) => u.len), [MEM_RESP_BYTES]);
      const v = new DataView(mem.slice(c.writable[0]!, MEM_RESP_BYTES).slice().buffer);
      return { type: v.getUint16(0, true), state: v.getUint16(8, true) };
    };

    // PLUG blocks 0 and 1: ACK, plugged_size 4 MiB, a new generation, no configuration interrupt.
    gen = rd(t, 0x15, 1);
    assert.equal(ask(req(VIRTIO_MEM_REQ_PLUG, region.gpa, 2)).type, VIRTIO_MEM_RESP_ACK);
    assert.equal(cfg64(MemConfig.pluggedSize), 4 * MiB);
    assert.equal(rd(t, 0x15, 1), (gen + 1) & 0xff, 'plugged_size republished with a new config_generation (4.1.4.3)');
    assert.equal(waitEventfd(irqFds[0]!, 100), false, 'no configuration interrupt for plugged_size (5.15.4)');
    // The guest uses the plugged blocks; UNPLUG block 0 gives its host pages back (reads zero).
    mem.fill(region.gpa, 4096, 0xa5);
    mem.fill(region.gpa + 2 * MiB, 4096, 0x5a);
    assert.equal(ask(req(VIRTIO_MEM_REQ_UNPLUG, region.gpa, 1)).type, VIRTIO_MEM_RESP_ACK);
    assert.equal(cfg64(MemConfig.pluggedSize), 2 * MiB);
    assert.ok(mem.slice(region.gpa, 4096).every((x) => x === 0), 'the unplugged block was discarded');
    assert.ok(mem.slice(region.gpa + 2 * MiB, 4096).every((x) => x === 0x5a), 'the plugged one keeps its data');
    const st = ask(req(VIRTIO_MEM_REQ_STATE, region.gpa, 2));
    assert.deepEqual([st.type, st.state], [VIRTIO_MEM_RESP_ACK, VIRTIO_MEM_STATE_MIXED]);
    // Guest-supplied ranges are checked: unaligned, outside the region, empty: ERROR.
    assert.equal(ask(req(VIRTIO_MEM_REQ_PLUG, region.gpa + 4096, 1)).type, VIRTIO_MEM_RESP_ERROR);
    assert.equal(ask(req(VIRTIO_MEM_REQ_PLUG, region.gpa + 8 * MiB, 1)).type, VIRTIO_MEM_RESP_ERROR);
    assert.equal(ask(req(VIRTIO_MEM_REQ_PLUG, 0, 1)).type, VIRTIO_MEM_RESP_ERROR);
    assert.equal(ask(req(VIRTIO_MEM_REQ_PLUG, region.gpa, 0)).type, VIRTIO_MEM_RESP_ERROR);
    assert.equal(cfg64(MemConfig.pluggedSize), 2 * MiB, 'refused requests change nothing');

    // A reset keeps the blocks (5.15.5) and requested_size; undriven, a new request is published without an interrupt.
    wr(t, 0x14, 0, 1);
    await eventually('device_status reads 0 after the reset', () => rd(t, 0x14, 1) === 0);
    assert.deepEqual([cfg64(MemConfig.pluggedSize), cfg64(MemConfig.requestedSize)], [2 * MiB, 4 * MiB]);
    setRequested(8);
    await eventually('the new requested_size is published', () => cfg64(MemConfig.requestedSize) === 8 * MiB);
    assert.equal(waitEventfd(irqFds[0]!, 100), false, 'no interrupt for a device the driver has not set up');
    // More than the region: refused by the model, reported, nothing changes.
    setRequested(10);
    await eventually('the refused value is reported', () => events.some((e) => e.type === 'error' && /host value 10/.test(e.message)));
    assert.equal(cfg64(MemConfig.requestedSize), 8 * MiB);
    assert.deepEqual(events.filter((e) => e.type === 'needs-reset'), []);
  } finally {
    await io.stop();
    rig.close();
    mem.free();
  }
});
