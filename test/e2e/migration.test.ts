// Migration between Stratovisor processes on a real guest (Debian's kernel, the shell scenario),
// while the guest writes its RAM continuously (a counter and a churn loop in its tmpfs):
//   A → B over a Unix socket: B answers vm.receive-migration once the VM runs there, A exits 0;
//   in B the guest goes on where it was (the same shell variable, the counter counting on);
//   B → a closed TCP port: 500, and the guest goes on running in B;
//   B → C over TCP (loopback): C runs it, B exits 0; the guest powers off in C.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { guestImages } from './lib/guest.js';
import { VmmProcess } from './lib/vmm_process.js';
import { waitForPing } from '../../src/api/testing/spawn_vmm.js';

const img = guestImages();

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => { const a = s.address(); s.close(() => resolve(typeof a === 'object' && a ? a.port : 0)); });
  });
}

async function until(what: string, f: () => boolean, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('migration A → B (unix) → closed port (refused, B runs on) → C (tcp) while the guest writes its RAM; the guest carries on at each hop', { timeout: 420_000 }, async (t) => {
  // The sandbox starts with its loopback interface down (a no-op where it is up already).
  const lo = spawnSync('ip', ['link', 'set', 'lo', 'up'], { encoding: 'utf8' });
  if (lo.status !== 0) t.diagnostic(`ip link set lo up: ${lo.stderr.trim()}`);
  const dir = mkdtempSync(join(tmpdir(), 'stv-migr-e2e-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const a = new VmmProcess('migration-a', join(dir, 'a.sock'), [
    '--kernel', img.bzImage, '--initramfs', img.initramfs, '--cmdline', 'console=ttyS0 quiet stv.scenario=shell',
    '--cpus', 'boot=2', '--memory', 'size=256M', '--serial', 'tty', '--console', 'off', '-v',
  ]);
  const b = new VmmProcess('migration-b', join(dir, 'b.sock'), ['-v']);
  const c = new VmmProcess('migration-c', join(dir, 'c.sock'), ['-v']);
  t.after(() => { a.end(); b.end(); c.end(); });
  await waitForPing(a.sock, a.child);
  await a.waitFor(/stv# /, 0, 'the guest shell prompt');
  await a.shell('(i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 1; done) & (while :; do dd if=/dev/urandom of=/tmp/churn bs=64k count=16 2>/dev/null; done) & sleep 2; echo started-$(cat /tmp/count)', /started-\d+\s/, 'the counter and the churn running');
  const m = await a.shell('X=$RANDOM$RANDOM; echo mark-$X count-$(cat /tmp/count)', /mark-(\d+) count-(\d+)\s/, 'the mark');
  const mark = m[1]!;
  const count0 = Number(m[2]);

  // A → B over a Unix socket.
  await waitForPing(b.sock, b.child);
  const usock = join(dir, 'migrate.sock');
  const received = b.api('PUT', 'vm.receive-migration', { receiver_url: `unix:${usock}` });
  await until('the receiver socket', () => existsSync(usock), 30_000);
  const sent = await a.api('PUT', 'vm.send-migration', { destination_url: `unix:${usock}` });
  assert.equal(sent.status, 204, `send-migration A → B: ${sent.status} ${sent.text}\n${a.explain()}\n${b.explain()}`);
  const got = await received;
  assert.equal(got.status, 204, `receive-migration in B: ${got.status} ${got.text}\n${b.explain()}`);
  assert.equal(await a.exited, 0, `A exits 0 after the migration\n${a.explain()}`);
  t.diagnostic(a.err.split('\n').find((l) => /migrated to|migration to/.test(l)) ?? '');
  assert.equal((JSON.parse((await b.api('GET', 'vm.info')).text) as { state: string }).state, 'Running');
  const r = await b.shell('echo got-$X count-$(cat /tmp/count)', /got-(\d*) count-(\d+)\s/, 'the guest answering in B');
  assert.equal(r[1], mark, 'the shell variable set in A');
  const count1 = Number(r[2]);
  assert.ok(count1 >= count0, `the counter went on: ${count0} in A, ${count1} in B`);
  const count2 = Number((await b.shell('sleep 2; echo count-$(cat /tmp/count)', /count-(\d+)\s/, 'the counter in B'))[1]);
  assert.ok(count2 > count1, `the counter still counts in B: ${count1} then ${count2}`);

  // B → a port nobody listens on: refused, B's guest runs on.
  const closed = await freePort();
  const fail = await b.api('PUT', 'vm.send-migration', { destination_url: `tcp:127.0.0.1:${closed}` });
  assert.equal(fail.status, 500, `migration to a closed port: ${fail.status} ${fail.text}`);
  assert.match(fail.text, /cannot connect to tcp:127\.0\.0\.1/);
  assert.equal((JSON.parse((await b.api('GET', 'vm.info')).text) as { state: string }).state, 'Running');
  await b.shell('echo still-$X', new RegExp(`still-${mark}\\s`), 'the guest still answering in B after the failed migration');

  // B → C over TCP on loopback.
  await waitForPing(c.sock, c.child);
  const port = await freePort();
  const received2 = c.api('PUT', 'vm.receive-migration', { receiver_url: `tcp:127.0.0.1:${port}` });
  let sent2 = await b.api('PUT', 'vm.send-migration', { destination_url: `tcp:127.0.0.1:${port}` });
  for (let i = 0; i < 50 && sent2.status === 500 && /ECONNREFUSED/.test(sent2.text); i++) {
    // C's listener may not be up yet (its API answered before it bound the port).
    await new Promise((res) => setTimeout(res, 100));
    sent2 = await b.api('PUT', 'vm.send-migration', { destination_url: `tcp:127.0.0.1:${port}` });
  }
  assert.equal(sent2.status, 204, `send-migration B → C: ${sent2.status} ${sent2.text}\n${b.explain()}\n${c.explain()}`);
  assert.equal((await received2).status, 204);
  assert.equal(await b.exited, 0, `B exits 0 after the migration\n${b.explain()}`);
  const r3 = await c.shell('echo got-$X count-$(cat /tmp/count)', /got-(\d*) count-(\d+)\s/, 'the guest answering in C');
  assert.equal(r3[1], mark);
  assert.ok(Number(r3[2]) >= count2, `the counter went on: ${count2} in B, ${r3[2]} in C`);
  await c.shell('poweroff', /@@stv:poweroff@@/, 'the guest powered off in C');
  await c.api('PUT', 'vmm.shutdown').catch(() => undefined);
  assert.equal(await c.exited, 0, c.explain());
});
