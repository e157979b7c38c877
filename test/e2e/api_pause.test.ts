// The Cloud Hypervisor-compatible REST API driving a real guest, continued (split from
// api.test.ts so that each file runs in a shorter sandbox session):
//   c. pause stops the vCPUs: a command typed while paused is answered only after resume; a
//      guest power-off leaves an API-created VM in Shutdown with the VMM still up;
//   f. pause quiesces the devices: a guest writing its virtio-blk disk without pause leaves the
//      image unchanged for seconds while Paused; after resume its writes go on and it powers off;
//   d. a VM given on the command line with --api-socket: the guest's power-off ends the VMM;
//   e. the Node library (src/index.ts) boots, pauses, resumes a guest in-process and reports
//      its power-off as events.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { guestResetLines, parseMarkers } from './lib/guest.js';
import { apiRequest } from '../../src/cli/remote.js';
import { Stratovisor, type LifecycleEvent, type VmExitInfo } from '../../src/index.js';
import { img, LOG_DIR, GUEST_TIMEOUT_MS, kataLikeConfig, sockDir, waitForPing, state, put, startVmm } from './lib/api_vmm.js';

test('pause stops the vCPUs: a command typed while paused is answered only after resume; guest poweroff leaves the VM in Shutdown', { timeout: GUEST_TIMEOUT_MS }, async (t) => {
  const dir = sockDir();
  const sock = join(dir, 'api.sock');
  const vmm = startVmm(t, 'stv-api-pause', ['--api-socket', `path=${sock}`]);
  await waitForPing(sock, vmm);
  await put(sock, 'vm.create', kataLikeConfig('shell'));
  await put(sock, 'vm.boot');
  await vmm.waitMarker('scenario', 1, 'shell');
  // The shell answers (the echoed input cannot match a marker; only the computed output can).
  const ask = (tag: string, a: number, b: number) => vmm.send(`echo "@@stv:${tag}:$((${a}*${b}))@""@"\n`);
  ask('ready', 2, 3);
  await vmm.waitMarker('ready', 1, '6');

  await put(sock, 'vm.pause');
  assert.equal(await state(sock), 'Paused');
  // Let the device thread flush what the guest wrote before it stopped.
  await new Promise((r) => setTimeout(r, 1000));
  const before = vmm.stdout.length;
  ask('tick', 6, 7);
  await new Promise((r) => setTimeout(r, 3000));
  assert.equal(vmm.count('tick'), 0, `answered while paused\n${vmm.explain()}`);
  assert.equal(vmm.stdout.slice(before), '', 'no guest output at all while paused (not even the echo of the typed line)');
  assert.equal(await state(sock), 'Paused');

  await put(sock, 'vm.resume');
  await vmm.waitMarker('tick', 1, '42');
  assert.equal(await state(sock), 'Running');

  // A guest power-off: an API-created VM goes to Shutdown and the VMM stays up.
  vmm.send('poweroff\n');
  while ((await state(sock)) !== 'Shutdown') await new Promise((r) => setTimeout(r, 100));
  assert.equal((await apiRequest(sock, 'GET', 'vmm.ping')).status, 200);
  assert.equal((await apiRequest(sock, 'PUT', 'vm.shutdown')).status, 405);
  await put(sock, 'vmm.shutdown');
  assert.equal((await vmm.exit).code, 0, vmm.explain());
});

test('pause quiesces the devices: a guest writing its disk continuously leaves the image unchanged while paused; after resume the writes go on and it powers off cleanly', { timeout: GUEST_TIMEOUT_MS }, async (t) => {
  const dir = sockDir();
  const sock = join(dir, 'api.sock');
  const disk = join(dir, 'disk.img');
  writeFileSync(disk, new Uint8Array(4 << 20));
  const imageHash = () => createHash('sha256').update(readFileSync(disk)).digest('hex');
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  const vmm = startVmm(t, 'stv-api-pause-quiesce', ['--api-socket', `path=${sock}`]);
  await waitForPing(sock, vmm);
  await put(sock, 'vm.create', { ...kataLikeConfig('shell'), disks: [{ path: disk }] });
  await put(sock, 'vm.boot');
  await vmm.waitMarker('scenario', 1, 'shell');
  // The guest writes /dev/vda without pause: each round a 512-byte record at the next sector,
  // flushed (conv=fsync: a write and a FLUSH request to virtio-blk), its count kept in /tmp/n.
  vmm.send('i=0; while :; do i=$((i+1)); echo "stv write $i" | dd of=/dev/vda bs=512 seek=$((i % 8192)) conv=notrunc,fsync 2>/dev/null; echo $i > /tmp/n; done &\n');
  const count = async (k: number): Promise<number> => {
    vmm.send(`echo "@@stv:n:$(cat /tmp/n 2>/dev/null || echo 0)@""@"\n`);
    await vmm.waitMarker('n', k);
    return Number(vmm.markers.filter((m) => m.event === 'n')[k - 1]!.data);
  };
  const h0 = imageHash();
  while (imageHash() === h0) await sleep(200); // the writes reach the image
  const n1 = await count(1);

  await put(sock, 'vm.pause');
  const hp = imageHash();
  assert.equal(await state(sock), 'Paused');
  // Quiesced: nothing reaches the image while paused, however long (here 5 s, checked 10 times).
  for (let k = 0; k < 10; k++) {
    await sleep(500);
    assert.equal(imageHash(), hp, `the image changed while paused (after ${(k + 1) * 500} ms)\n${vmm.explain()}`);
  }
  assert.equal(await state(sock), 'Paused');

  await put(sock, 'vm.resume');
  assert.equal(await state(sock), 'Running');
  while (imageHash() === hp) await sleep(200); // the guest's writes go on
  const n2 = await count(2);
  assert.ok(n2 > n1, `the write loop went on after resume (${n1} -> ${n2})`);
  t.diagnostic(`guest write rounds: ${n1} before the pause, ${n2} after resume`);

  vmm.send('kill %1; poweroff\n');
  while ((await state(sock)) !== 'Shutdown') await sleep(100);
  assert.equal(vmm.count('poweroff'), 1, vmm.explain());
  await put(sock, 'vmm.shutdown');
  assert.equal((await vmm.exit).code, 0, vmm.explain());
});

test('a VM given on the command line with --api-socket is served by the API and ends the VMM when the guest powers off', { timeout: GUEST_TIMEOUT_MS }, async (t) => {
  const dir = sockDir();
  const sock = join(dir, 'api.sock');
  const vmm = startVmm(t, 'stv-api-cli-payload', [
    '--api-socket', sock, '--kernel', img.bzImage, '--initramfs', img.initramfs,
    '--cmdline', 'console=ttyS0 quiet stv.scenario=wait', '--cpus', 'boot=1', '--memory', 'size=256M', '--serial', 'tty', '--console', 'off',
  ]);
  await waitForPing(sock, vmm);
  await vmm.waitMarker('init');
  assert.equal(await state(sock), 'Running');
  await vmm.waitMarker('waiting');
  vmm.send('\n'); // `wait` powers off once a line arrives
  const exit = await vmm.exit;
  assert.equal(vmm.count('poweroff'), 1, vmm.explain());
  assert.equal(exit.code, 0, vmm.explain());
});

test('the Node library boots a guest in-process: events, pause/resume, input, and the guest power-off', { timeout: GUEST_TIMEOUT_MS }, async () => {
  const dir = sockDir();
  const serialFile = join(dir, 'serial.log');
  // The VMM's log, kept: a guest reset it reports (the sandbox's triple faults) heads a failure
  // (guestResetLines), so the runner can tell a sandbox fault from ours.
  const log: string[] = [];
  const vmm = new Stratovisor({ log: (m) => log.push(m) });
  const events: string[] = [];
  vmm.on('event', (e: LifecycleEvent) => events.push(`${e.source}:${e.event}${e.properties?.reason ? `(${e.properties.reason})` : ''}`));
  const exited = new Promise<VmExitInfo>((r) => vmm.once('exit', r));
  const serial = () => { try { return readFileSync(serialFile, 'latin1'); } catch { return ''; } };
  const explainLib = () => `${guestResetLines(log.join('\n'))}events: ${events.join(' ')}\n--- serial (${serialFile}) ---\n${serial().split('\n').slice(-25).join('\n')}`;
  const waitSerial = async (event: string) => {
    while (!parseMarkers(serial()).some((m) => m.event === event)) {
      assert.notEqual(vmm.state, 'Shutdown', `guest stopped before ${event}\n${explainLib()}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  try {
    await vmm.create({ ...kataLikeConfig('wait'), cpus: { boot_vcpus: 1, max_vcpus: 1 }, serial: { mode: 'File', file: serialFile } });
    assert.equal(vmm.info().state, 'Created');
    await vmm.boot();
    assert.equal(vmm.state, 'Running');
    await waitSerial('waiting');
    await vmm.pause();
    assert.equal(vmm.info().state, 'Paused');
    await vmm.resume();
    assert.equal(vmm.sendInput('go\n') > 0, true);
    const info = await exited;
    assert.equal(info.reason, 'poweroff', explainLib());
    assert.equal(vmm.state, 'Shutdown');
    assert.ok(parseMarkers(serial()).some((m) => m.event === 'poweroff'), explainLib());
  } finally {
    await vmm.close();
    mkdirSync(LOG_DIR, { recursive: true });
    writeFileSync(join(LOG_DIR, 'stv-api-library.log'), `${serial()}\n--- events ---\n${events.join('\n')}\n--- VMM log ---\n${log.join('\n')}\n`);
  }
  // ('vmm:starting' is emitted by the constructor, before anyone can subscribe.)
  assert.deepEqual(events, [
    'vm:created', 'vm:booting', 'vm:booted', 'vm:pausing', 'vm:paused', 'vm:resuming', 'vm:resumed',
    'vm:shutdown(poweroff)', 'vm:deleted', 'vmm:shutdown',
  ], explainLib());
});
