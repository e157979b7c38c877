// The serial / virtio-console sink with a real pipe whose reader never reads: writes never
// block, the buffer stays at its cap, the excess is dropped and counted, and output resumes when
// the reader reads again. The caller's fd is left blocking (its flags are not touched).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, openSync, closeSync, readSync, readFileSync, rmSync, constants } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_SINK_BUFFER_BYTES, OutputSink, sinkBufferBytes } from './sink.js';
import { Serial, UART_LSR, LSR_THRE } from '../devices/serial.js';

const dir = mkdtempSync(join(tmpdir(), 'stv-sink-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

/** A FIFO with a reader that never reads (held open, so writes do not fail with EPIPE). */
function stalledPipe(name: string): { reader: number; writer: number } {
  const p = join(dir, name);
  execFileSync('mkfifo', [p]);
  const reader = openSync(p, constants.O_RDONLY | constants.O_NONBLOCK);
  const writer = openSync(p, constants.O_WRONLY); // blocking, as a shell's pipe would be
  return { reader, writer };
}

function fdFlags(fd: number): number {
  const m = /flags:\s*([0-7]+)/.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
  return parseInt(m![1]!, 8);
}

test('a pipe nobody reads: writes never block, the buffer stays at its cap, the excess is counted as dropped', () => {
  const { reader, writer } = stalledPipe('stalled');
  const sink = new OutputSink(writer, 16 * 1024);
  const chunk = new Uint8Array(4096).fill(0x41);
  const total = 1 << 20;
  for (let i = 0; i < total / chunk.length; i++) {
    sink.write(chunk);
    sink.flush(); // returns at once: the pipe is full after its 64 KiB
    assert.ok(sink.pending <= 16 * 1024);
  }
  const { tx_bytes, tx_dropped_bytes } = sink.counters;
  assert.ok(tx_bytes > 0 && tx_bytes < total, `the pipe took ${tx_bytes} bytes`);
  assert.equal(sink.pending, 16 * 1024, 'the buffer is full, not larger');
  assert.equal(tx_bytes + sink.pending + tx_dropped_bytes, total, 'every byte is written, buffered or counted as dropped');
  assert.equal(fdFlags(writer) & constants.O_NONBLOCK, 0, "the caller's fd stays blocking");
  assert.notEqual(sink.waitFd, -1, 'output is pending: there is an fd to poll for POLLOUT');
  assert.ok(sink.blocked, 'the last flush stopped at a full sink');

  // The reader reads again: the buffered bytes go out on the next flush.
  const buf = new Uint8Array(1 << 20);
  let got = 0;
  for (;;) {
    let n = 0;
    try { n = readSync(reader, buf, 0, buf.length, null); } catch { n = 0; }
    got += n;
    sink.flush();
    if (n === 0 && sink.pending === 0) break;
  }
  assert.equal(sink.pending, 0);
  assert.equal(sink.waitFd, -1);
  assert.ok(!sink.blocked);
  assert.equal(got, total - sink.counters.tx_dropped_bytes, 'everything not dropped arrived');
  sink.close();
  closeSync(writer);
  closeSync(reader);
});

test('the UART stays responsive to a guest writing 1 MiB into a sink nobody reads', () => {
  const { reader, writer } = stalledPipe('uart');
  const sink = new OutputSink(writer);
  const serial = new Serial({ sink: (b) => sink.write(b) });
  const one = new Uint8Array(1);
  const lsr = new Uint8Array(1);
  for (let i = 0; i < 1 << 20; i++) {
    serial.read(UART_LSR, lsr); // the 8250 driver polls LSR.THRE before each byte
    assert.ok((lsr[0]! & LSR_THRE) !== 0);
    one[0] = 0x30 + (i % 10);
    serial.write(0, one);
    if ((i & 1023) === 0) sink.flush(); // what the device thread does when idle
  }
  assert.ok(sink.pending <= 64 * 1024);
  assert.ok(sink.counters.tx_dropped_bytes > 0, 'the excess was dropped, not waited for');
  sink.close();
  assert.equal(sink.pending, 0);
  closeSync(writer);
  closeSync(reader);
});

test('a sink whose reader went away is dropped (output discarded and counted), no exception', () => {
  const { reader, writer } = stalledPipe('gone');
  const sink = new OutputSink(writer);
  closeSync(reader);
  sink.write(new Uint8Array(100));
  sink.flush(); // EPIPE (SIGPIPE is ignored by Node)
  assert.equal(sink.counters.tx_dropped_bytes, 100);
  assert.equal(sink.waitFd, -1);
  sink.write(new Uint8Array(10));
  assert.equal(sink.pending, 0);
  closeSync(writer);
});

test('STV_SINK_BUFFER_BYTES sets the sink buffer; a bad value is refused by name', () => {
  assert.equal(sinkBufferBytes({}), DEFAULT_SINK_BUFFER_BYTES);
  assert.equal(sinkBufferBytes({ STV_SINK_BUFFER_BYTES: '' }), DEFAULT_SINK_BUFFER_BYTES);
  assert.equal(sinkBufferBytes({ STV_SINK_BUFFER_BYTES: '4096' }), 4096);
  for (const bad of ['0', '511', '-1', '4k', '1.5', String((16 << 20) + 1)]) {
    assert.throws(() => sinkBufferBytes({ STV_SINK_BUFFER_BYTES: bad }), new RegExp(`STV_SINK_BUFFER_BYTES .*'${bad.replace('.', '\\.')}'`), bad);
  }
});
