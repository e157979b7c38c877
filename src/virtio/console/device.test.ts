// virtio-console (virtio 1.2, 5.3), single port, driven by the test driver.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { closeSync, constants, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GuestMemory } from '../../memory/guest_memory.js';
import { VirtioDeviceType, bit } from '../device.js';
import { TestDriver } from '../testing/driver.js';
import { ConsoleConfig, ConsoleDevice, VIRTIO_CONSOLE_F_EMERG_WRITE, VIRTIO_CONSOLE_F_MULTIPORT, VIRTIO_CONSOLE_F_SIZE, type ConsoleDeviceOptions } from './device.js';

const dir = mkdtempSync(join(tmpdir(), 'stv-console-'));
after(() => rmSync(dir, { recursive: true, force: true }));

interface Rig { dev: ConsoleDevice; rx: TestDriver; tx: TestDriver; mem: GuestMemory; out: Uint8Array[]; notified: number[]; configChanges: number }

function rig(opts: Partial<ConsoleDeviceOptions> = {}, activate = true): Rig {
  const out: Uint8Array[] = [];
  const dev = new ConsoleDevice({ sink: (b) => out.push(b), input: null, ...opts });
  const mem = GuestMemory.fromBuffers([{ gpa: 0, buffer: new ArrayBuffer(4 << 20) }]);
  const rx = new TestDriver(mem, { size: 8, base: 0, dataStart: 0x10000, dataEnd: 0x100000 });
  const tx = new TestDriver(mem, { size: 8, base: 0x8000, dataStart: 0x100000, dataEnd: 0x400000 });
  const r: Rig = { dev, rx, tx, mem, out, notified: [], configChanges: 0 };
  if (activate) {
    dev.activate({ mem, queues: [rx.queue({ eventIdx: false, indirect: true }), tx.queue({ eventIdx: true, indirect: true })], features: dev.features,
      notifyQueue: (i) => r.notified.push(i), notifyConfig: () => { r.configChanges++; } });
  }
  return r;
}

const text = (bufs: Uint8Array[]): string => Buffer.concat(bufs).toString();

test('features, size and emergency write (5.3.3, 5.3.4)', () => {
  const r = rig({ cols: 132, rows: 43 });
  assert.equal(r.dev.deviceType, VirtioDeviceType.Console);
  assert.equal(r.dev.numQueues, 2);
  assert.notEqual(r.dev.features & bit(VIRTIO_CONSOLE_F_SIZE), 0n);
  assert.equal(r.dev.features & bit(VIRTIO_CONSOLE_F_EMERG_WRITE), 0n, "not offered: config writes stay in the transport");
  assert.equal(r.dev.features & bit(VIRTIO_CONSOLE_F_MULTIPORT), 0n);
  const cfg = new Uint8Array(ConsoleConfig.size).fill(0xff);
  r.dev.readConfig(0, cfg);
  const dv = new DataView(cfg.buffer);
  assert.equal(dv.getUint16(ConsoleConfig.cols, true), 132);
  assert.equal(dv.getUint16(ConsoleConfig.rows, true), 43);
  assert.equal(dv.getUint32(ConsoleConfig.emergWr, true), 0);
  r.dev.setSize(100, 30);
  assert.equal(r.configChanges, 1);
  const two = new Uint8Array(2);
  r.dev.readConfig(ConsoleConfig.rows, two);
  assert.deepEqual([...two], [30, 0]);
  r.dev.writeConfig(ConsoleConfig.emergWr, Uint8Array.of(0x41, 0, 0, 0));
  r.dev.writeConfig(ConsoleConfig.cols, Uint8Array.of(1, 2)); // read-only field: ignored
  assert.equal(r.dev.cols, 100);
  assert.equal(text(r.out), 'A');
  // Before activation too.
  const idle = rig({}, false);
  idle.dev.writeConfig(ConsoleConfig.emergWr, Uint8Array.of(0x42));
  assert.equal(text(idle.out), 'B');
  idle.dev.setSize(1, 1);
  assert.equal(idle.configChanges, 0);
  assert.equal(rig().dev.rows, 24);
});

test('transmitq: readable bytes go to the sink as copies, used length 0', () => {
  const r = rig();
  const a = r.tx.addChain([Buffer.from('hello, '), Buffer.from('world\n')], []);
  const b = r.tx.addChain([Buffer.from('indirect\n')], [], { indirect: true });
  r.dev.processQueue(1);
  assert.deepEqual(r.tx.used(), [{ id: a.head, len: 0 }, { id: b.head, len: 0 }]);
  assert.deepEqual(r.out.map((x) => Buffer.from(x).toString()), ['hello, world\n', 'indirect\n']);
  r.mem.writeU8(a.readable[0]!, 0x58); // the guest reuses its buffer: our copy is unaffected
  assert.equal(text(r.out), 'hello, world\nindirect\n');
  assert.deepEqual(r.notified, [1]);
  // A large chain arrives in pieces of at most 64 KiB, in order.
  const big = Uint8Array.from({ length: 200_000 }, (_, i) => 32 + (i % 90));
  r.out.length = 0;
  r.tx.resetData();
  r.tx.addChain([big.subarray(0, 150_000), big.subarray(150_000)], []);
  r.dev.processQueue(1);
  assert.ok(r.out.every((x) => x.length <= 65536));
  assert.deepEqual(Buffer.concat(r.out), Buffer.from(big));
});

test('receiveq: pushInput waits for buffers, then fills them in order', () => {
  const r = rig();
  r.dev.pushInput(Buffer.from('early '));
  r.dev.pushInput(Buffer.from('input'));
  assert.deepEqual(r.rx.used(), []);
  const a = r.rx.addChain([], [4]);
  const b = r.rx.addChain([], [3, 100]);
  r.dev.processQueue(0); // the guest's notification for new buffers
  assert.deepEqual(r.rx.used(), [{ id: a.head, len: 4 }, { id: b.head, len: 7 }]);
  assert.equal(Buffer.from(r.mem.slice(a.writable[0]!, 4)).toString(), 'earl');
  assert.equal(Buffer.from(r.mem.slice(b.writable[0]!, 3)).toString(), 'y i');
  assert.equal(Buffer.from(r.mem.slice(b.writable[1]!, 4)).toString(), 'nput');
  const c = r.rx.addChain([], [16]);
  r.dev.processQueue(0);
  assert.deepEqual(r.rx.used(), []); // no input: the buffer stays with the device
  r.dev.pushInput(Buffer.from('later'));
  assert.deepEqual(r.rx.used(), [{ id: c.head, len: 5 }]);
  assert.deepEqual(r.notified, [0, 0]);
});

test('receiveq from a non-blocking fd: polled only while buffers are posted; EAGAIN and EOF', () => {
  const fifo = join(dir, 'in.fifo');
  execFileSync('mkfifo', [fifo]);
  const rfd = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
  const wfd = openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK);
  try {
    const r = rig({ input: { fd: rfd } });
    assert.deepEqual(r.dev.pollFds(), []); // no receive buffers yet
    const a = r.rx.addChain([], [64]);
    assert.deepEqual(r.dev.pollFds(), [rfd]);
    r.dev.onFdReady(rfd); // spurious: EAGAIN, the buffer is kept
    assert.deepEqual(r.rx.used(), []);
    assert.deepEqual(r.dev.pollFds(), [rfd]);
    writeSync(wfd, Buffer.from('typed\n'));
    r.dev.onFdReady(rfd);
    assert.deepEqual(r.rx.used(), [{ id: a.head, len: 6 }]);
    assert.equal(Buffer.from(r.mem.slice(a.writable[0]!, 6)).toString(), 'typed\n');
    assert.deepEqual(r.dev.pollFds(), []); // no more buffers
    r.dev.onFdReady(rfd); // nothing to read into: nothing happens
    r.rx.addChain([], [64]);
    closeSync(wfd);
    r.dev.onFdReady(rfd); // EOF: stop polling the fd
    assert.deepEqual(r.rx.used(), []);
    assert.deepEqual(r.dev.pollFds(), []);
    r.dev.pushInput(Buffer.from('x')); // pushInput still works
    assert.equal(r.rx.used().length, 1);
    r.dev.onFdReady(99); // not ours
    r.dev.close(); // leaves the caller's fd open
  } finally {
    closeSync(rfd);
  }
});

test('reset forgets the queues and the held receive buffer', () => {
  const r = rig({ input: { fd: 0 } });
  r.rx.addChain([], [8]);
  assert.deepEqual(r.dev.pollFds(), [0]);
  r.dev.reset();
  assert.deepEqual(r.dev.pollFds(), []);
  r.dev.pushInput(Buffer.from('abc')); // kept for the next activation
  r.dev.processQueue(0);
  r.dev.processQueue(1);
  assert.deepEqual(r.rx.used(), []);
});

test('pause hands back the receive buffer held for input that has not come; after resume the input fills it (no buffer lost, none handed back empty)', () => {
  const fifo = join(dir, 'pause-in.fifo');
  execFileSync('mkfifo', [fifo]);
  const fd = openSync(fifo, constants.O_RDWR | constants.O_NONBLOCK);
  try {
    const out: Uint8Array[] = [];
    const dev = new ConsoleDevice({ sink: (b) => out.push(b), input: { fd } });
    const mem = GuestMemory.fromBuffers([{ gpa: 0, buffer: new ArrayBuffer(4 << 20) }]);
    const rx = new TestDriver(mem, { size: 8, base: 0, dataStart: 0x10000, dataEnd: 0x100000 });
    const tx = new TestDriver(mem, { size: 8, base: 0x8000, dataStart: 0x100000, dataEnd: 0x400000 });
    const rq = rx.queue({ eventIdx: false, indirect: true });
    dev.activate({ mem, queues: [rq, tx.queue()], features: dev.features, notifyQueue: () => {}, notifyConfig: () => {} });
    const c = rx.addChain([], [64]);
    dev.onFdReady(fd); // poll said readable, read(2) says EAGAIN: the chain stays held
    assert.equal(rq.lastAvailIdx, 1, 'the device holds the receive buffer');
    dev.pause();
    assert.equal(rq.lastAvailIdx, 0, 'given back at pause: nothing held in flight');
    assert.deepEqual(rx.used(), []);
    writeSync(fd, Buffer.from('typed while paused'));
    dev.onFdReady(fd);
    const u = rx.used();
    assert.equal(u.length, 1);
    assert.equal(u[0]!.id, c.head, 'the same buffer, taken again');
    assert.equal(Buffer.from(mem.slice(c.writable[0]!, u[0]!.len)).toString(), 'typed while paused');
    const s = dev.saveState();
    assert.deepEqual(s, { kind: 'console', cols: 80, rows: 24 });
  } finally {
    closeSync(fd);
  }
});
