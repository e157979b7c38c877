// Kata Containers' Go runtime as the client, end to end (src/runtime/virtcontainers/clh.go):
// `stratovisor --api-socket`, Kata's own vm.create body (real kernel/initramfs substituted;
// debug mode so the serial console carries the guest's markers), vm.info Created, vm.add-net
// with Kata's exact request bytes and a tap fd sent with them over SCM_RIGHTS (the test
// creates the tap and gives its host side an address, as Kata's network setup does; the VMM
// neither creates nor configures it), vm.boot, vm.info Running, and the guest's eth0 really
// working over that fd: the guest fetches a file from the host side and the host fetches one
// from the guest (guest/scenarios/net.sh).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { guestImages, parseMarkers, REPO } from './lib/guest.js';
import { NET, deleteTap, httpGet, listenWhenAddressExists, tapAddresses } from './lib/virtio.js';
import { FdClient } from '../../src/api/testing/fd_client.js';
import { kataGoAddNetRequest, kataGoVmCreateBody } from '../../src/api/testing/kata.js';
import { HostService } from './lib/services.js';
import { spawnVmm } from '../../src/api/testing/spawn_vmm.js';
import { Tap } from '../../src/net/tap.js';

const img = guestImages();
const LOG_DIR = join(REPO, '.cache', 'e2e-logs');
const GUEST_TIMEOUT_MS = 240_000;
const TAP = 'stvkata0';
const PORT = 8081;

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

function noTap(): string | null {
  if (!existsSync('/dev/net/tun')) return '/dev/net/tun is missing (load the tun module)';
  try {
    Tap.open({ vnetHdr: true }).close();
    return null;
  } catch (e) {
    return `cannot create a tap here: ${(e as Error).message}`;
  }
}

test("Kata's Go runtime: its vm.create body, vm.add-net with a tap fd over SCM_RIGHTS, boot; the guest's eth0 works over that fd", { timeout: GUEST_TIMEOUT_MS }, async (t) => {
  const why = noTap();
  if (why !== null) {
    console.log(`# skipped: ${why}`);
    t.skip(why);
    return;
  }
  // The tap, as Kata's netpair makes it: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, host side addressed.
  deleteTap(TAP);
  const tap = Tap.open({ name: TAP, vnetHdr: true });
  t.after(() => tap.close());
  tap.configure({ ip: NET.hostIp, mask: NET.mask });

  // The host side of the check: /blob for the guest to fetch, /done with the verdict.
  const blob = randomBytes(512 * 1024);
  let verdict: string | null = null;
  const server = http.createServer((req, res) => {
    if (req.url === '/blob') res.end(blob);
    else if (req.url === '/done' && verdict !== null) res.end(verdict);
    else {
      res.statusCode = 404;
      res.end();
    }
  });
  t.after(() => new Promise<void>((r) => server.close(() => r())));
  await listenWhenAddressExists(server, NET.hostIp, PORT, 10_000);

  const dir = mkdtempSync(join(process.env.TMPDIR ?? tmpdir(), 'stv-kata-'));
  const sock = join(dir, 'clh-api.sock');
  const vmm = await spawnVmm(sock, { args: ['-v'], stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let markers: Array<{ event: string; data: string }> = [];
  let wake: (() => void) | undefined;
  vmm.child.stdout!.on('data', (b: Buffer) => {
    stdout += b.toString('latin1');
    markers = parseMarkers(stdout);
    wake?.();
  });
  vmm.exited.then(() => wake?.(), () => {});
  const logFile = join(LOG_DIR, 'stv-kata-go.log');
  const explain = () => `log: ${logFile}\n--- console (last 30 lines) ---\n${stdout.split('\n').slice(-30).join('\n')}\n--- stderr ---\n${vmm.stderr().slice(-3000)}\n--- host tap ---\n${tapAddresses(TAP)}`;
  t.after(async () => {
    if (vmm.child.exitCode === null) vmm.child.kill('SIGKILL');
    await vmm.exited;
    mkdirSync(LOG_DIR, { recursive: true });
    writeFileSync(logFile, `${stdout}\n--- stderr ---\n${vmm.stderr()}\n`);
  });
  const marker = async (event: string): Promise<string> => {
    for (;;) {
      const m = markers.find((x) => x.event === event);
      if (m !== undefined) return m.data;
      const err = markers.find((x) => x.event === 'net-error');
      if (err !== undefined) assert.fail(`the guest reported net-error: ${err.data}\n${explain()}`);
      if (vmm.child.exitCode !== null || vmm.child.signalCode !== null) assert.fail(`the VMM exited before marker ${event}\n${explain()}`);
      await new Promise<void>((r) => (wake = r));
    }
  };

  // One connection for everything, as Kata's clients keep one.
  const c = await FdClient.connect(sock);
  t.after(() => c.close());
  const kernelParams = `stv.scenario=net stv.ip=${NET.guestIp}/${NET.prefix} stv.peer=${NET.hostIp} stv.port=${PORT}`;
  const body = kataGoVmCreateBody({ kernel: img.bzImage, initramfs: img.initramfs, kernelParams, memoryMiB: 512, maxMemoryMiB: 1024, maxVcpus: 1, sandboxDir: dir, debug: true });
  // The whole body: vsock (hybrid socket in the sandbox dir), virtio-fs on PCI segment 1 of 2.
  let r = await c.request('PUT', 'vm.create', body);
  assert.equal(r.status, 204, `vm.create: ${r.text}\n${explain()}`);
  r = await c.request('GET', 'vm.info');
  assert.equal(r.status, 200);
  assert.equal((r.json as { state: string }).state, 'Created');

  // Kata's vmAddNetPutRequest: the request bytes and the tap fd in one sendmsg.
  r = await c.send(kataGoAddNetRequest(NET.mac), [tap.fds[0]!]);
  assert.ok(r.status === 204 || r.status === 200, `vm.add-net: ${r.status} ${r.text}\n${explain()}`);

  // Kata starts virtiofsd on the socket its body names before vm.boot; so does this test
  // (Debian's C virtiofsd from qemu-system-common).
  const shared = join(dir, 'shared');
  mkdirSync(shared, { recursive: true });
  const vfsd = await HostService.start({
    name: 'stv-kata-virtiofsd', cmd: '/usr/lib/qemu/virtiofsd',
    args: [`--socket-path=${join(dir, 'virtiofsd.sock')}`, '-o', `source=${shared}`, '-o', 'cache=none', '-o', 'sandbox=chroot'],
    readyPath: join(dir, 'virtiofsd.sock'),
  });
  t.after(() => vfsd.stop());
  r = await c.request('PUT', 'vm.boot');
  assert.equal(r.status, 204, `vm.boot: ${r.text}\n${explain()}`);
  r = await c.request('GET', 'vm.info');
  assert.equal((r.json as { state: string }).state, 'Running');
  assert.match(vmm.stderr(), /tap stvkata0 from 1 fd\(s\) sent with the API request/, 'the VMM used the fd it was sent');

  assert.equal(await marker('net-up'), NET.mac, `the guest's eth0 has the MAC vm.add-net gave\n${explain()}`);
  assert.equal(await marker('net-fetched'), `${sha256(blob)}:${blob.length}`, `the guest's copy of the host's file (sha256:size)\n${explain()}`);
  const [guestSha, guestLen] = (await marker('net-serving')).split(':');
  const fromGuest = await httpGet(`http://${NET.guestIp}/blob`, 60_000);
  verdict = sha256(fromGuest) === guestSha && String(fromGuest.length) === guestLen ? 'ok' : `mismatch-${sha256(fromGuest)}`;
  assert.equal(verdict, 'ok', `the host's copy of the guest's file differs\n${explain()}`);
  assert.equal(await marker('net-host-done'), 'ok', explain());

  r = await c.request('PUT', 'vmm.shutdown');
  assert.equal(r.status, 204);
  assert.equal((await vmm.exited).code, 0, explain());
});
