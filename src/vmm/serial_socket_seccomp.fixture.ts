// Child process of serial_socket.test.ts: installs the seccomp filter named in argv[2] (as the VMM
// does before any VM exists), then runs `--serial socket=` as a VM does: the sink's pipe written
// from a worker thread through OutputSink (as device_worker.ts), two clients, typed input, a
// client that goes, close. A call outside the filter kills this process with SIGSYS.
import net from 'node:net';
import { Worker } from 'node:worker_threads';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { installSeccomp, parseSeccompMode } from '../sys/seccomp.js';
import { SerialSocketSink } from './serial_socket.js';
import { ByteRing } from './ring.js';

const mode = parseSeccompMode(process.argv[2] ?? 'true');
if (mode === undefined) throw new Error(`bad seccomp mode ${process.argv[2]}`);
const dir = mkdtempSync(join(tmpdir(), 'stv-serial-seccomp-'));
installSeccomp(mode);
const ring = new ByteRing(4096);
const sink = new SerialSocketSink({ path: join(dir, 'serial.sock'), input: (b) => ring.push(b) });
await sink.listening;
const connect = (): Promise<net.Socket> => new Promise((resolve, reject) => {
  const c = net.connect(sink.path, () => resolve(c));
  c.once('error', reject);
});
const a = await connect();
const b = await connect();
const got = (c: net.Socket, want: string): Promise<void> => new Promise((resolve) => {
  let s = '';
  c.on('data', (d: Buffer) => { s += d.toString(); if (s.includes(want)) resolve(); });
});
const gotA = got(a, 'login: ');
const gotB = got(b, 'login: ');
const sinkUrl = new URL('./sink.js', import.meta.url).href;
const w = new Worker(`import { OutputSink } from ${JSON.stringify(sinkUrl)};
const out = new OutputSink(${sink.fd}); out.write(new TextEncoder().encode('hello\\r\\nlogin: ')); out.flush(); out.close();`, { eval: true });
await new Promise((resolve, reject) => { w.once('exit', resolve); w.once('error', reject); });
await Promise.all([gotA, gotB]);
a.write('root\r');
await new Promise<void>((resolve) => { const i = setInterval(() => { if (ring.available() >= 5) { clearInterval(i); resolve(); } }, 5); });
b.destroy();
sink.close();
a.destroy();
rmSync(dir, { recursive: true, force: true });
process.stdout.write(`serial socket under seccomp ${mode}: ok\n`);
