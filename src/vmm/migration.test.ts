// The migration protocol and the receiver against hostile senders, in-process over real Unix
// sockets: CH's 16-byte framing, a range table checked against the VM's RAM, every out-of-order,
// malformed, oversized or truncated message refused with an Error response naming the problem
// (or a MigrationError when the sender vanished), never a crash; and a fuzz of random streams.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  Command, HEADER_SIZE, MigrationChannel, MigrationError, PROTOCOL_VERSION, Status, decodeHeader, decodeRangeTable, encodeHeader,
  encodeRangeTable, parseMigrationUrl,
} from '../migration/protocol.js';
import { receiveMigration } from './migration.js';
import { createVmConfig } from './config.js';
import { VirtualMachine } from './vm.js';
import { Prng } from '../testing/prng.js';

const dir = mkdtempSync(join(tmpdir(), 'stv-migr-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
let n = 0;

test('headers and range tables round-trip; bad tables are refused by entry', () => {
  const h = decodeHeader(encodeHeader(Command.Start, 0, PROTOCOL_VERSION));
  assert.deepEqual(h, { code: Command.Start, arg: 0, length: 0 });
  assert.deepEqual(decodeHeader(encodeHeader(Command.Memory, 2 ** 40)), { code: Command.Memory, arg: 0, length: 2 ** 40 });
  const huge = encodeHeader(Command.State, 0);
  new DataView(huge.buffer).setBigUint64(8, 2n ** 63n, true);
  assert.throws(() => decodeHeader(huge), MigrationError);
  const fits = (g: number, l: number) => g + l <= 1 << 24;
  const t = [{ gpa: 0, length: 4096 }, { gpa: 8192, length: 8192 }];
  assert.deepEqual(decodeRangeTable(encodeRangeTable(t), fits), t);
  for (const [bad, why] of [
    [[{ gpa: 0, length: 100 }], /not page aligned/],
    [[{ gpa: 8192, length: 4096 }, { gpa: 4096, length: 4096 }], /overlaps or is not after/],
    [[{ gpa: 1 << 24, length: 4096 }], /not inside the VM's RAM/],
    [[{ gpa: 0, length: 0 }], /empty/],
  ] as const) {
    assert.throws(() => decodeRangeTable(encodeRangeTable(bad), fits), (e: unknown) => e instanceof MigrationError && why.test(e.message));
  }
  assert.throws(() => decodeRangeTable(new Uint8Array(17), fits), /not a multiple of 16/);
  assert.deepEqual(parseMigrationUrl('unix:/tmp/m.sock', 'u'), { kind: 'unix', path: '/tmp/m.sock' });
  assert.deepEqual(parseMigrationUrl('tcp:127.0.0.1:6000', 'u'), { kind: 'tcp', host: '127.0.0.1', port: 6000 });
  for (const u of ['unix:', 'tcp:host', 'tcp:h:0', 'tcp:h:70000', 'file:///x']) assert.throws(() => parseMigrationUrl(u, 'destination_url'), MigrationError, u);
});

const config = createVmConfig({ payload: { kernel: '/nonexistent/stv-kernel' }, memory: { size: 64 << 20 } });

/** A receiver on a fresh socket, a client connected to it, the client's channel. */
async function pair(build = () => new VirtualMachine(config)): Promise<{ received: Promise<unknown>; ch: MigrationChannel }> {
  const path = join(dir, `r${n++}.sock`);
  const received = receiveMigration({ kind: 'unix', path }, { build });
  received.catch(() => undefined);
  for (let i = 0; ; i++) {
    try {
      const s = await new Promise<net.Socket>((res, rej) => { const c = net.connect(path, () => res(c)); c.once('error', rej); });
      return { received, ch: new MigrationChannel(s, 'test receiver', 5000) };
    } catch (e) {
      if (i > 200) throw e;
      await new Promise((r) => setTimeout(r, 5));
    }
  }
}

async function send(ch: MigrationChannel, cmd: number, payload?: Uint8Array, arg = 0): Promise<{ status: number; reason: string }> {
  await ch.write(encodeHeader(cmd, payload?.length ?? 0, arg));
  if (payload?.length) await ch.write(payload);
  const h = await ch.readHeader();
  return { status: h.code, reason: (await ch.read(h.length)).toString('utf8') };
}

const json = (v: unknown) => new TextEncoder().encode(JSON.stringify(v));
const goodConfig = json({ format: 'stratovisor-migration-config', version: 1, config });

test('the receiver refuses, by name: wrong order, bad version, bad Config, a table outside RAM, bad State, Complete before State', async () => {
  const cases: Array<{ steps: Array<[number, Uint8Array | undefined, number?]>; why: RegExp }> = [
    { steps: [[Command.Config, goodConfig]], why: /Config is out of order \(after nothing\)/ },
    { steps: [[Command.Start, undefined, 7]], why: /protocol version 7 is not supported/ },
    { steps: [[Command.Start, undefined], [Command.Config, json({ format: 'other' })]], why: /not a stratovisor-migration-config document/ },
    { steps: [[Command.Start, undefined], [Command.Config, new TextEncoder().encode('{not json')]], why: /migration config/ },
    { steps: [[Command.Start, undefined], [Command.Config, json({ format: 'stratovisor-migration-config', version: 1, config: { memory: { size: 1 } } })]], why: /Config: .*payload/ },
    { steps: [[Command.Start, undefined], [Command.Config, goodConfig], [Command.Memory, encodeRangeTable([{ gpa: 1 << 30, length: 4096 }])]], why: /not inside the VM's RAM/ },
    { steps: [[Command.Start, undefined], [Command.Config, goodConfig], [Command.State, json({ format: 'stratovisor-snapshot-state', version: 9 })]], why: /snapshot state/ },
    { steps: [[Command.Start, undefined], [Command.Config, goodConfig], [Command.Complete, undefined]], why: /Complete is out of order/ },
    { steps: [[Command.Start, undefined], [Command.PageFault, undefined]], why: /PageFault is not supported/ },
  ];
  for (const c of cases) {
    const { received, ch } = await pair();
    let last = { status: 0, reason: '' };
    for (const [cmd, payload, arg] of c.steps) last = await send(ch, cmd, payload, arg ?? 0);
    assert.equal(last.status, Status.Error, `${c.why}: answered ${last.status} ${last.reason}`);
    assert.match(last.reason, c.why);
    await assert.rejects(received, (e: unknown) => e instanceof MigrationError && c.why.test(e.message));
    ch.close();
  }
});

test('the receiver: Memory data lands; Abandon and a sender that hangs up mid-stream end it with a MigrationError', async () => {
  {
    const { received, ch } = await pair();
    assert.equal((await send(ch, Command.Start)).status, Status.Ok);
    assert.equal((await send(ch, Command.Config, goodConfig)).status, Status.Ok);
    const table = encodeRangeTable([{ gpa: 0x10_0000, length: 8192 }]);
    await ch.write(encodeHeader(Command.Memory, table.length));
    await ch.write(table);
    await ch.write(new Uint8Array(8192).fill(0x5a));
    const h = await ch.readHeader();
    assert.equal(h.code, Status.Ok);
    assert.equal((await send(ch, Command.Abandon)).status, Status.Ok);
    await assert.rejects(received, /abandoned/);
    ch.close();
  }
  {
    const { received, ch } = await pair();
    assert.equal((await send(ch, Command.Start)).status, Status.Ok);
    assert.equal((await send(ch, Command.Config, goodConfig)).status, Status.Ok);
    const table = encodeRangeTable([{ gpa: 0, length: 1 << 20 }]);
    await ch.write(encodeHeader(Command.Memory, table.length));
    await ch.write(table);
    await ch.write(new Uint8Array(4096)); // then gone
    ch.close();
    await assert.rejects(received, (e: unknown) => e instanceof MigrationError && /closed/.test(e.message));
  }
});

test('fuzz: random byte streams and random well-framed messages never crash the receiver (MigrationError only)', async () => {
  const rng = new Prng(4242);
  for (let i = 0; i < 60; i++) {
    const { received, ch } = await pair();
    const parts: Uint8Array[] = [];
    if (rng.int(2) === 0) {
      parts.push(Uint8Array.from({ length: 1 + rng.int(80) }, () => rng.int(256)));
    } else {
      for (let k = 0; k < 1 + rng.int(4); k++) {
        const cmd = rng.int(11);
        const body = cmd === Command.Config && rng.int(2) ? goodConfig : Uint8Array.from({ length: rng.int(40) }, () => rng.int(256));
        parts.push(encodeHeader(cmd, body.length, rng.int(3) === 0 ? rng.int(3) : 0), body);
      }
    }
    for (const p of parts) await ch.write(p).catch(() => undefined);
    ch.socket.end();
    await assert.rejects(received, (e: unknown) => {
      assert.ok(e instanceof MigrationError, `case ${i}: ${String(e)}`);
      return true;
    });
    ch.close();
  }
  assert.equal(HEADER_SIZE, 16);
});
