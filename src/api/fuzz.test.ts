// Fuzz the API server with requests generated from the document's schemas: valid
// bodies, bodies with one mutation that makes them invalid, malformed JSON, random
// paths and methods, and raw garbage on the socket. The server must stay up, answer
// every well-formed HTTP request, and answer every bad request with a 4xx. Run against the
// server over an in-memory VMM and against the real `stratovisor --api-socket` process. The
// generators live in src/api/testing/fuzz_cases.ts (npm run soak sends 10^5 of them to a running VM).

import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import { join } from 'node:path';
import { spawnVmm } from './testing/spawn_vmm.js';
import { request, startTestServer, tempDir } from './test_server.fixture.js';
import { listOperations } from './validate.js';
import { ApiFuzzer } from './testing/fuzz_cases.js';
import { mulberry32, seedFromEnv } from '../testing/prng.js';

const SEED = seedFromEnv('STRATOVISOR_FUZZ_SEED', 0x5eed);
const fuzz = new ApiFuzzer(mulberry32(SEED));
const chance = (p: number) => fuzz.chance(p);

interface Target { socketPath: string; close(): Promise<void> }

/** The real VMM process (stratovisor --api-socket, VmmCore behind the server). */
async function startVmmProcess(): Promise<Target> {
  const socketPath = join(tempDir(), 'api.sock');
  const vmm = await spawnVmm(socketPath);
  return {
    socketPath,
    close: async () => {
      assert.equal(vmm.child.exitCode, null, `the VMM process died during the fuzz run: ${vmm.stderr()}`);
      await request(socketPath, 'PUT', 'vmm.shutdown');
      assert.equal((await vmm.exited).code, 0, vmm.stderr());
    },
  };
}

const targets: Array<{ name: string; start: () => Promise<Target> }> = [
  { name: 'the API server over an in-memory VMM', start: async () => startTestServer() },
  { name: 'the stratovisor process', start: startVmmProcess },
];

for (const target of targets) describe(target.name, () => {
let t: Target;
before(async () => {
  t = await target.start();
});
after(async () => {
  await t.close();
});

test(`fuzz: 3000 generated requests (seed ${SEED}); the server stays up and rejects every bad one with 4xx`, async (ctx) => {
  const ops = listOperations().filter((o) => o.path !== '/vmm.shutdown');
  const N = 3000;
  const CONCURRENCY = 16;
  const counts = new Map<number, number>();
  let next = 0;
  let validCreates = 0;
  const worker = async () => {
    while (next < N) {
      next++;
      const c = fuzz.makeCase(ops);
      const r = await request(t.socketPath, c.method, c.path, c.body);
      counts.set(r.status, (counts.get(r.status) ?? 0) + 1);
      if (c.expect === 'bad') {
        assert.ok(r.status >= 400 && r.status < 500, `${c.what}: ${c.method} ${c.path} ${c.body ?? ''} -> ${r.status} ${r.text}`);
      } else {
        assert.ok([200, 204, 400, 404, 405, 409, 500].includes(r.status), `${c.what}: ${c.method} ${c.path} -> ${r.status} ${r.text}`);
        if (c.path === 'vm.create' && r.status === 204) validCreates++;
      }
      if (r.status >= 400) assert.ok(Array.isArray(r.json), `error body is a JSON array: ${r.text}`);
      // Keep the lifecycle moving so that state-dependent routes see every state.
      if (chance(0.02)) await request(t.socketPath, 'PUT', 'vm.delete');
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  const ping = await request(t.socketPath, 'GET', 'vmm.ping');
  assert.equal(ping.status, 200);
  assert.ok((counts.get(400) ?? 0) > 500, `many 400s: ${JSON.stringify([...counts])}`);
  ctx.diagnostic(`status counts ${JSON.stringify([...counts].sort((a, b) => a[0] - b[0]))}, successful vm.create ${validCreates}`);
});

test('fuzz: 500 raw garbage / truncated HTTP messages; the server stays up', async () => {
  const send = (data: Buffer, close: boolean) =>
    new Promise<void>((resolve) => {
      const c = net.connect(t.socketPath);
      c.on('error', () => resolve());
      c.on('close', () => resolve());
      c.on('data', () => {});
      c.setTimeout(2000, () => c.destroy());
      c.on('connect', () => {
        c.write(data);
        if (close) c.destroy();
        else c.end();
      });
    });
  const jobs: Promise<void>[] = [];
  for (let i = 0; i < 500; i++) {
    const data = fuzz.garbage();
    jobs.push(send(data, chance(0.5)));
    if (jobs.length >= 16) await Promise.all(jobs.splice(0));
  }
  await Promise.all(jobs);
  assert.equal((await request(t.socketPath, 'GET', 'vmm.ping')).status, 200);
});
});
