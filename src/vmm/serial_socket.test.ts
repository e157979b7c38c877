// `--serial socket=PATH`: a client connected to the VMM's serial socket reads what the device
// thread writes to the sink fd (as the 16550's output is written) and its keystrokes reach the
// VM's input; a guest that reads slowly gets a paste whole; bad paths get clear errors.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { mkdtempSync, rmSync, writeFileSync, existsSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { SerialSocketSink, SerialSocketError } from './serial_socket.js';
import { OutputSink } from './sink.js';
import { Serial } from '../devices/serial.js';
import { ByteRing } from './ring.js';

function connect(path: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const c = net.connect(path, () => resolve(c));
    c.once('error', reject);
  });
}

function readUntil(c: net.Socket, want: string): Promise<string> {
  return new Promise((resolve) => {
    let got = '';
    const on = (b: Buffer) => {
      got += b.toString('latin1');
      if (got.includes(want)) { c.off('data', on); resolve(got); }
    };
    c.on('data', on);
  });
}

test('a client reads the guest output written to the sink fd and types into the VM input', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'stv-serial-sock-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'serial.sock');
  const ring = new ByteRing(4096);
  const sink = new SerialSocketSink({ path, input: (b) => ring.push(b) });
  t.after(() => sink.close());
  await sink.listening;
  assert.equal(statSync(path).mode & 0o777, 0o600, 'the socket is 0600');
  // The 16550 model's transmitter writes into the sink as the device thread does (THR at +0):
  // through the bounded, non-blocking OutputSink (device_worker.ts).
  const out = new OutputSink(sink.fd);
  t.after(() => out.close());
  const serial = new Serial({ sink: (bytes) => { out.write(bytes); out.flush(); } });
  const a = await connect(path);
  const b = await connect(path);
  const gotA = readUntil(a, 'login: ');
  const gotB = readUntil(b, 'login: ');
  for (const ch of Buffer.from('guest says hi\r\nlogin: ')) serial.write(0, new Uint8Array([ch]));
  assert.match(await gotA, /guest says hi\r\nlogin: /);
  assert.match(await gotB, /guest says hi\r\nlogin: /, 'every connected client gets the output');
  a.write('root\r');
  await new Promise<void>((r) => { const i = setInterval(() => { if (ring.available() >= 5) { clearInterval(i); r(); } }, 5); });
  const inBuf = new Uint8Array(16);
  const n = ring.peek(inBuf);
  assert.equal(Buffer.from(inBuf.subarray(0, n)).toString(), 'root\r');
  a.destroy();
  b.destroy();
});

test('a paste larger than the input ring arrives whole while the guest drains it slowly', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'stv-serial-sock-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 's.sock');
  const ring = new ByteRing(4096);
  const sink = new SerialSocketSink({ path, input: (b) => ring.push(b) });
  t.after(() => sink.close());
  await sink.listening;
  const c = await connect(path);
  const paste = Buffer.alloc(256 * 1024);
  for (let i = 0; i < paste.length; i++) paste[i] = 0x20 + (i % 90);
  c.write(paste);
  // The "guest": reads 512 bytes every millisecond, like a UART drained by its driver.
  const got: Buffer[] = [];
  let total = 0;
  const buf = new Uint8Array(512);
  await new Promise<void>((resolve) => {
    const i = setInterval(() => {
      const n = ring.peek(buf);
      ring.consume(n);
      got.push(Buffer.from(buf.subarray(0, n)));
      total += n;
      if (total >= paste.length) { clearInterval(i); resolve(); }
    }, 1);
  });
  assert.ok(Buffer.concat(got).equals(paste), 'every byte of the paste, in order');
  c.destroy();
});

test('a client that goes away, and closing the sink, leave the VMM side intact', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'stv-serial-sock-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 's.sock');
  const sink = new SerialSocketSink({ path, input: (b) => b.length });
  await sink.listening;
  const c = await connect(path);
  c.destroy();
  await new Promise<void>((r) => { const i = setInterval(() => { if (sink.clientCount === 0) { clearInterval(i); r(); } }, 5); });
  // Output with nobody connected is simply not kept (the console server keeps scroll-back), and
  // the device thread's writes still go through whole.
  const out = new OutputSink(sink.fd);
  out.write(Buffer.from('nobody listens\n'));
  out.flush();
  assert.deepEqual(out.counters, { tx_bytes: 15, tx_dropped_bytes: 0 });
  out.close();
  const closed = new Promise<void>((r) => { const d = net.connect(path); d.on('close', () => r()); d.on('error', () => {}); });
  sink.close();
  await closed;
  assert.equal(existsSync(path), false, 'the socket file is removed');
});

test('bad serial socket paths are refused with the path named', () => {
  const dir = mkdtempSync(join(tmpdir(), 'stv-serial-sock-'));
  try {
    const file = join(dir, 'not-a-socket');
    writeFileSync(file, 'x');
    assert.throws(() => new SerialSocketSink({ path: file, input: () => 0 }), (e: Error) => e instanceof SerialSocketError && /not a socket is in the way/.test(e.message) && e.message.includes(file));
    assert.throws(() => new SerialSocketSink({ path: join(dir, 'x'.repeat(200)), input: () => 0 }), /too long for a Unix socket/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('--serial socket= under the default seccomp deny-list and the strict allow-list', () => {
  // The VMM installs its filter before any VM exists; the serial socket is made at boot, after it.
  const fixture = fileURLToPath(new URL('./serial_socket_seccomp.fixture.js', import.meta.url));
  for (const mode of ['true', 'strict']) {
    const r = spawnSync(process.execPath, [fixture, mode], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(r.signal, null, `seccomp ${mode}: killed by ${r.signal} (a call outside the filter): ${r.stderr}`);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`serial socket under seccomp ${mode}: ok`));
  }
});
