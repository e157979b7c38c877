// PCI hotplug (ACPI, src/pci/hotplug.ts) on a running Debian guest, in the spirit of Cloud
// Hypervisor's test_disk_hotplug: vm.add-disk answers 200 with the id and the PCI address Kata
// parses ("0000:00:NN.0"); the guest's acpiphp scans the slot and virtio_blk gives /dev/vda,
// which reads the host's data; vm.remove-device asks the guest to eject it; once the guest's
// _EJ0 ran the device is gone in the guest, a "device-removed" event is on the event monitor,
// the image is unlocked and the guest's write is in it. Then: add and remove several times in a
// row, a hot-added disk kept across a guest reboot (and removed after it), and bad requests;
// a NIC added by tap fd over SCM_RIGHTS; virtio-fs, vsock and virtio-pmem added to a running guest.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, openSync, readFileSync, readSync, closeSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { guestImages } from './lib/guest.js';
import { VmmProcess as Vmm } from './lib/vmm_process.js';
import { NET, deleteTap, listenWhenAddressExists, scratchDir, sha256 } from './lib/virtio.js';
import { FdClient } from '../../src/api/testing/fd_client.js';
import { kataGoAddNetRequest } from '../../src/api/testing/kata.js';
import { Tap } from '../../src/net/tap.js';
import { HostService } from './lib/services.js';
import { waitForPing } from '../../src/api/testing/spawn_vmm.js';

const img = guestImages();
const TIMEOUT_MS = 420_000;
const MiB = 1024 * 1024;

/** A raw image: a marker at offset 0, random data after it; the sha256 of its first MiB. */
function image(path: string, marker: string): string {
  const b = randomBytes(4 * MiB);
  b.write(marker.padEnd(16, '.'), 0, 'latin1');
  writeFileSync(path, b);
  return sha256(b.subarray(0, MiB));
}

/** 16 bytes at `offset` of a file. */
function readAt(path: string, offset: number): string {
  const fd = openSync(path, 'r');
  try {
    const b = Buffer.alloc(16);
    readSync(fd, b, 0, 16, offset);
    return b.toString('latin1');
  } finally {
    closeSync(fd);
  }
}

/** Whether another process can take the image's write lock now (the VMM holds LOCK_EX while it is a disk). */
function unlocked(path: string): boolean {
  try {
    execFileSync('flock', ['-n', '-x', path, 'true'], { stdio: 'pipe' });
    return true;
  } catch {
    return false;
  }
}

function events(file: string): Array<{ source: string; event: string; properties?: Record<string, string> }> {
  if (!existsSync(file)) return [];
  const text = readFileSync(file, 'utf8');
  // The monitor writes one JSON object after another (pretty-printed, as Cloud Hypervisor does).
  const out: Array<{ source: string; event: string; properties?: Record<string, string> }> = [];
  let depth = 0;
  let start = -1;
  for (let i = 0; i < text.length; i++) {
    if (text[i] === '{') { if (depth++ === 0) start = i; }
    else if (text[i] === '}' && --depth === 0) out.push(JSON.parse(text.slice(start, i + 1)) as never);
  }
  return out;
}

/** Waits until the guest's device node exists: `stvw PATH SECONDS` (drivers probe asynchronously). */
const WAIT_HELPER = 'stvw() { i=0; while [ ! -e $1 ] && [ $i -lt $2 ]; do sleep 1; i=$((i+1)); done; [ -e $1 ]; }; echo DEF""INED';

/** A VMM with a 1-vCPU, 256 MiB guest at its shell prompt (extra args after the defaults). */
async function bootShell(t: TestContext, name: string, dir: string, memory = 'size=256M', extra: string[] = [], cmdline = ''): Promise<Vmm> {
  const vmm = new Vmm(name, join(dir, 'api.sock'), [
    '--kernel', img.bzImage, '--initramfs', img.initramfs,
    '--cmdline', `console=ttyS0 quiet stv.scenario=shell${cmdline ? ` ${cmdline}` : ''}`,
    '--cpus', 'boot=1', '--memory', memory, '--serial', 'tty', '--console', 'off', ...extra, '-v',
  ]);
  t.after(() => vmm.end());
  await waitForPing(vmm.sock, vmm.child);
  await vmm.waitFor(/stv# /, 0, 'the guest shell prompt');
  return vmm;
}

test('PCI hotplug: vm.add-disk into a running guest, read it, vm.remove-device (guest ejects, event, image unlocked), repeated, across a reboot, bad requests', { timeout: TIMEOUT_MS }, async (t) => {
  const dir = scratchDir('hotplug');
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const disks = ['a', 'b', 'c'].map((n) => {
    const path = join(dir, `${n}.raw`);
    return { path, marker: `stv-hot-${n}`, hash: image(path, `stv-hot-${n}`) };
  });
  const evFile = join(dir, 'events.json');
  const vmm = await bootShell(t, 'hotplug', dir, 'size=256M', ['--event-monitor', `path=${evFile}`]);
  const defineWait = () => vmm.shell(WAIT_HELPER, /\bDEFINED\b/, 'the wait helper');
  await defineWait();

  const removedCount = () => events(evFile).filter((e) => e.source === 'vm' && e.event === 'device-removed').length;
  const waitRemoved = async (n: number, what: string) => {
    for (let i = 0; i < 120 && removedCount() < n; i++) await new Promise((r) => setTimeout(r, 500));
    assert.equal(removedCount(), n, `${what}: ${n} device-removed event(s)\n${vmm.explain()}`);
  };

  /** Add `d` as `id`, check the answer and that the guest reads it as /dev/vda; returns the bdf. */
  const addAndRead = async (d: (typeof disks)[number], id: string, write?: string): Promise<string> => {
    const r = await vmm.api('PUT', 'vm.add-disk', { path: d.path, id });
    assert.equal(r.status, 200, `vm.add-disk: ${r.text}`);
    const info = JSON.parse(r.text) as { id: string; bdf: string };
    assert.equal(info.id, id);
    assert.match(info.bdf, /^0000:00:[0-1][0-9a-f]\.0$/, 'segment:bus:device.function');
    assert.equal(unlocked(d.path), false, 'the VMM holds the image lock while it is a disk');
    const o = await vmm.shellOutput(
      `stvw /dev/vda 30 && echo "VDA $(cat /sys/block/vda/size) $(head -c 16 /dev/vda) $(dd if=/dev/vda bs=1M count=1 2>/dev/null | sha256sum | head -c 64)" || echo "NO""VDA"; ` +
      `ls /sys/bus/pci/devices/ | tr '\\n' ' '; echo; ${write ? `printf ${write} | dd of=/dev/vda bs=4096 seek=1 conv=notrunc,fsync 2>/dev/null; sync; ` : ''}echo RE""AD`,
      /\bREAD\b/, `the guest's view of ${id}`);
    assert.doesNotMatch(o.text, /NOVDA/, `the guest has no /dev/vda after vm.add-disk\n${vmm.explain()}`);
    const m = /VDA (\d+) (\S+) ([0-9a-f]{64})/.exec(o.text);
    assert.ok(m, `VDA line\n${vmm.explain()}`);
    assert.equal(Number(m[1]) * 512, 4 * MiB, 'its size');
    assert.equal(m[2], d.marker.padEnd(16, '.'), 'the marker at offset 0');
    assert.equal(m[3], d.hash, 'the sha256 of its first MiB');
    assert.ok(o.text.includes(info.bdf), `the guest lists ${info.bdf} in /sys/bus/pci/devices: ${o.text}`);
    return info.bdf;
  };

  /** Remove `id`; the guest loses /dev/vda, the event comes, the image is unlocked. */
  const removeAndCheck = async (d: (typeof disks)[number], id: string, removedBefore: number) => {
    const r = await vmm.api('PUT', 'vm.remove-device', { id });
    assert.equal(r.status, 204, `vm.remove-device: ${r.text}`);
    await waitRemoved(removedBefore + 1, `removing ${id}`);
    assert.equal(events(evFile).filter((e) => e.event === 'device-removed').at(-1)?.properties?.['id'], id);
    const o = await vmm.shellOutput('i=0; while [ -e /dev/vda ] && [ $i -lt 20 ]; do sleep 1; i=$((i+1)); done; [ -e /dev/vda ] && echo "STILL""THERE" || echo "VDA""GONE"', /VDAGONE|STILLTHERE/, `the guest after removing ${id}`);
    assert.match(o.text, /VDAGONE/, `/dev/vda is gone in the guest\n${vmm.explain()}`);
    assert.equal(unlocked(d.path), true, 'the image is unlocked');
    const info = JSON.parse((await vmm.api('GET', 'vm.info')).text) as { config: { disks?: Array<{ id?: string }> } };
    assert.ok(!(info.config.disks ?? []).some((x) => x.id === id), `vm.info no longer lists ${id}`);
  };

  // 1. Add, read, write, remove: the write is in the host file.
  const bdf = await addAndRead(disks[0]!, 'hot0', 'stv-guest-wrote1');
  t.diagnostic(`hot0 at ${bdf}`);
  await removeAndCheck(disks[0]!, 'hot0', 0);
  assert.equal(readAt(disks[0]!.path, 4096), 'stv-guest-wrote1', 'the guest\'s write reached the image before the device went');

  // 2. Several times in a row, different images and the same one again.
  await addAndRead(disks[1]!, 'hot1');
  await removeAndCheck(disks[1]!, 'hot1', 1);
  await addAndRead(disks[2]!, 'hot2');
  await removeAndCheck(disks[2]!, 'hot2', 2);
  await addAndRead(disks[1]!, 'hot1');
  await removeAndCheck(disks[1]!, 'hot1', 3);

  // 2b. The guest ejects a disk on its own (the slot's power off in sysfs): it goes as if asked.
  // (disks[1]: disks[0] holds the guest's write of step 1 now, so its first MiB changed.)
  const own = await addAndRead(disks[1]!, 'own');
  const sun = parseInt(own.slice(-4, -2), 16);
  const before = removedCount();
  await vmm.shell(`echo 0 > /sys/bus/pci/slots/${sun}/power; echo EJ""ECTED`, /\bEJECTED\b/, 'the guest ejecting its disk');
  await waitRemoved(before + 1, 'the guest\'s own eject');
  assert.equal(unlocked(disks[1]!.path), true, 'the image is unlocked after the guest\'s own eject');

  // 3. Bad requests: a missing image, an id or image in use, an unknown id, a body without id.
  let r = await vmm.api('PUT', 'vm.add-disk', { path: join(dir, 'missing.raw') });
  assert.equal(r.status, 400, r.text);
  assert.match(r.text, /missing\.raw' does not exist/);
  await addAndRead(disks[2]!, 'keep');
  r = await vmm.api('PUT', 'vm.add-disk', { path: disks[0]!.path, id: 'keep' });
  assert.equal(r.status, 409, r.text);
  r = await vmm.api('PUT', 'vm.add-disk', { path: disks[2]!.path });
  assert.equal(r.status, 409, r.text);
  r = await vmm.api('PUT', 'vm.remove-device', { id: 'nope' });
  assert.equal(r.status, 404, r.text);
  assert.equal(unlocked(disks[0]!.path), true, 'a refused add leaves its image unlocked');

  // 4. Across a guest reboot the hot-added disk is still there (it is in the configuration),
  //    then it is removed from the rebooted guest.
  const mark = vmm.out.length;
  vmm.child.stdin.write('reboot -f\n');
  await vmm.waitFor(/@@stv:init@@[\s\S]*stv# /, mark, 'the shell after the guest rebooted');
  await defineWait();
  const o = await vmm.shellOutput('stvw /dev/vda 30 && echo "VDA $(head -c 16 /dev/vda)" || echo "NO""VDA"; echo BO""OTED', /\bBOOTED\b/, 'the disk after the reboot');
  assert.match(o.text, new RegExp(`VDA ${disks[2]!.marker}`), `the hot-added disk is there after the reboot\n${vmm.explain()}`);
  await removeAndCheck(disks[2]!, 'keep', 5);

  await vmm.shell('poweroff', /@@stv:poweroff@@/, 'the guest powered off');
  await vmm.api('PUT', 'vmm.shutdown').catch(() => undefined);
  await vmm.exited;
  assert.doesNotMatch(vmm.err, /device error|TypeError|RangeError/, `no device errors in the log\n${vmm.explain()}`);
});

test('PCI hotplug: a NIC added by tap fd (SCM_RIGHTS, as Kata sends it) into a running guest carries traffic; removed, eth0 goes', { timeout: TIMEOUT_MS }, async (t) => {
  if (!existsSync('/dev/net/tun')) { t.skip('/dev/net/tun is missing (load the tun module)'); return; }
  const TAPNAME = 'stvhot0';
  deleteTap(TAPNAME);
  const tap = Tap.open({ name: TAPNAME, vnetHdr: true });
  t.after(() => tap.close());
  tap.configure({ ip: NET.hostIp, mask: NET.mask });
  const blob = randomBytes(256 * 1024);
  const server = http.createServer((req, res) => { if (req.url === '/blob') res.end(blob); else { res.statusCode = 404; res.end(); } });
  t.after(() => new Promise<void>((r) => server.close(() => r())));
  await listenWhenAddressExists(server, NET.hostIp, NET.httpPort, 10_000);

  const dir = scratchDir('hotplug-net');
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const vmm = await bootShell(t, 'hotplug-net', dir);

  const c = await FdClient.connect(vmm.sock);
  t.after(() => c.close());
  const r = await c.send(kataGoAddNetRequest(NET.mac), [tap.fds[0]!]);
  assert.equal(r.status, 200, `vm.add-net: ${r.status} ${r.text}\n${vmm.explain()}`);
  const info = r.json as { id: string; bdf: string };
  assert.match(info.bdf, /^0000:00:[0-1][0-9a-f]\.0$/);
  t.diagnostic(`hot-added NIC ${info.id} at ${info.bdf}`);
  const o = await vmm.shellOutput(
    'i=0; while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 30 ]; do sleep 1; i=$((i+1)); done; ' +
    `echo "MAC $(cat /sys/class/net/eth0/address)"; ip link set eth0 up; ip addr add ${NET.guestIp}/${NET.prefix} dev eth0; ` +
    `timeout 60 wget -q -O /tmp/blob http://${NET.hostIp}:${NET.httpPort}/blob; echo "GOT $(wc -c < /tmp/blob) $(sha256sum /tmp/blob | head -c 64)"; echo FET""CHED`,
    /\bFETCHED\b/, 'the guest fetching over the hot-added NIC');
  assert.match(o.text, new RegExp(`MAC ${NET.mac}`), `eth0 has the MAC of vm.add-net\n${vmm.explain()}`);
  assert.match(o.text, new RegExp(`GOT ${blob.length} ${sha256(blob)}`), `the guest's copy of the host's file\n${vmm.explain()}`);

  const rm = await c.request('PUT', 'vm.remove-device', { id: info.id });
  assert.equal(rm.status, 204, rm.text);
  const g = await vmm.shellOutput('i=0; while [ -e /sys/class/net/eth0 ] && [ $i -lt 30 ]; do sleep 1; i=$((i+1)); done; [ -e /sys/class/net/eth0 ] && echo "STILL""THERE" || echo "ETH""GONE"', /ETHGONE|STILLTHERE/, 'eth0 after vm.remove-device');
  assert.match(g.text, /ETHGONE/, `eth0 is gone\n${vmm.explain()}`);
  for (let i = 0; i < 40 && !/removed \(ejected by the guest\)/.test(vmm.err); i++) await new Promise((res) => setTimeout(res, 250));
  assert.match(vmm.err, new RegExp(`${info.id}: removed \\(ejected by the guest\\)`), 'the VMM released it');

  await vmm.shell('poweroff', /@@stv:poweroff@@/, 'the guest powered off');
  await c.request('PUT', 'vmm.shutdown').catch(() => undefined);
  await vmm.exited;
});

test('PCI hotplug: virtio-fs (Debian virtiofsd), vsock and virtio-pmem added to a running guest work; fs and vsock removed again', { timeout: TIMEOUT_MS }, async (t) => {
  const VIRTIOFSD = '/usr/lib/qemu/virtiofsd';
  if (!existsSync(VIRTIOFSD)) { t.skip(`${VIRTIOFSD} is missing (Debian package qemu-system-common)`); return; }
  const dir = scratchDir('hotplug-fs');
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const share = join(dir, 'share');
  mkdirSync(share);
  const hostText = `stratovisor host file ${randomBytes(8).toString('hex')}`;
  writeFileSync(join(share, 'host.txt'), `${hostText}\n`);
  const fsSock = join(dir, 'virtiofsd.sock');
  const vfsd = await HostService.start({
    name: 'stv-hotplug-virtiofsd', cmd: VIRTIOFSD,
    args: [`--socket-path=${fsSock}`, '-o', `source=${share}`, '-o', 'cache=none', '-o', 'sandbox=chroot'],
    readyPath: fsSock,
  });
  t.after(() => vfsd.stop());
  const vmm = await bootShell(t, 'hotplug-fs', dir, 'size=256M,shared=on');

  // virtio-fs: mount the hot-added tag, read the host's file, write one the host reads.
  let r = await vmm.api('PUT', 'vm.add-fs', { tag: 'hotfs', socket: fsSock, num_queues: 1, queue_size: 512 });
  assert.equal(r.status, 200, `vm.add-fs: ${r.text}\n${vmm.explain()}`);
  const fsInfo = JSON.parse(r.text) as { id: string; bdf: string };
  const m = await vmm.shellOutput(
    'mkdir -p /mnt/h; i=0; until mount -t virtiofs hotfs /mnt/h 2>/dev/null || [ $i -ge 30 ]; do sleep 1; i=$((i+1)); done; ' +
    'echo "HOST""TXT $(cat /mnt/h/host.txt)"; echo "guest wrote this" > /mnt/h/guest.txt; sync; umount /mnt/h && echo UMOUN""TED || echo UMOUNT""FAILED',
    /UMOUNTED|UMOUNTFAILED/, 'the hot-added virtio-fs');
  assert.match(m.text, new RegExp(`HOSTTXT ${hostText}`), `the guest read the host's file\n${vmm.explain()}`);
  assert.match(m.text, /UMOUNTED/);
  assert.equal(readFileSync(join(share, 'guest.txt'), 'utf8'), 'guest wrote this\n');

  // vsock: a guest listener reached through the hybrid socket of the hot-added device.
  const vsockPath = join(dir, 'v.sock');
  r = await vmm.api('PUT', 'vm.add-vsock', { cid: 3, socket: vsockPath });
  assert.equal(r.status, 200, `vm.add-vsock: ${r.text}\n${vmm.explain()}`);
  const vsInfo = JSON.parse(r.text) as { id: string; bdf: string };
  t.diagnostic(`virtio-fs ${fsInfo.id} at ${fsInfo.bdf}, vsock ${vsInfo.id} at ${vsInfo.bdf}`);
  r = await vmm.api('PUT', 'vm.add-vsock', { cid: 4, socket: join(dir, 'w.sock') });
  assert.equal(r.status, 400, `a second vsock: ${r.text}`);
  const mark = vmm.out.length;
  vmm.child.stdin.write('i=0; until ls /sys/bus/virtio/drivers/vmw_vsock_virtio_transport/ 2>/dev/null | grep -q virtio || [ $i -ge 30 ]; do sleep 1; i=$((i+1)); done; stvsock serve 1234 1\n');
  await vmm.waitFor(/@@stv:vsock-listening:1234@@/, mark, 'the guest vsock listener');
  const payload = randomBytes(64 * 1024);
  const reply = await new Promise<Buffer>((resolve, reject) => {
    const s = net.createConnection(vsockPath);
    let got = Buffer.alloc(0);
    let ok = false;
    s.on('error', reject);
    s.on('connect', () => s.write('CONNECT 1234\n'));
    s.on('data', (b: Buffer) => {
      got = Buffer.concat([got, b]);
      if (!ok) {
        const nl = got.indexOf(10);
        if (nl < 0) return;
        const line = got.subarray(0, nl).toString('latin1');
        if (!/^OK \d+$/.test(line)) { reject(new Error(`handshake answer ${JSON.stringify(line)}`)); s.destroy(); return; }
        ok = true;
        got = got.subarray(nl + 1);
        s.end(payload);
      }
    });
    s.on('end', () => resolve(got));
  });
  const served = await vmm.waitFor(/@@stv:vsock-served:1234:(\d+):([0-9a-f]{64}):(\d+):([0-9a-f]{64})@@/, mark, 'the guest served the connection');
  assert.equal(Number(served[1]), payload.length, 'the guest got every byte');
  assert.equal(served[2], sha256(payload), 'and the same bytes');
  assert.equal(sha256(reply), served[4], 'the host got what the guest sent');

  // virtio-pmem: the guest's /dev/pmem0 reads the file; it cannot be removed (its memory slot stays).
  const pmemFile = join(dir, 'pmem.raw');
  const pm = Buffer.alloc(16 * MiB);
  pm.write('stv-hot-pmem-mk0', 0, 'latin1');
  writeFileSync(pmemFile, pm);
  r = await vmm.api('PUT', 'vm.add-pmem', { file: pmemFile, id: 'hotpmem' });
  assert.equal(r.status, 200, `vm.add-pmem: ${r.text}
${vmm.explain()}`);
  const pmo = await vmm.shellOutput('i=0; while [ ! -b /dev/pmem0 ] && [ $i -lt 30 ]; do sleep 1; i=$((i+1)); done; echo "PM""EM $(cat /sys/block/pmem0/size) $(head -c 16 /dev/pmem0)"; echo PM""DONE', /\bPMDONE\b/, 'the hot-added pmem');
  assert.match(pmo.text, /PMEM 32768 stv-hot-pmem-mk0/, `/dev/pmem0 has the file's size and marker
${vmm.explain()}`);
  r = await vmm.api('PUT', 'vm.remove-device', { id: 'hotpmem' });
  assert.equal(r.status, 400, r.text);
  assert.match(r.text, /virtio-pmem device: removing one from a running VM is not supported/);

  // Both removed: the guest ejects them, the VMM releases them (the vsock socket is unlinked).
  for (const id of [fsInfo.id, vsInfo.id]) {
    r = await vmm.api('PUT', 'vm.remove-device', { id });
    assert.equal(r.status, 204, r.text);
    for (let i = 0; i < 120 && !vmm.err.includes(`${id}: removed (ejected by the guest)`); i++) await new Promise((res) => setTimeout(res, 250));
    assert.ok(vmm.err.includes(`${id}: removed (ejected by the guest)`), `${id} released\n${vmm.explain()}`);
  }
  assert.equal(existsSync(vsockPath), false, 'the vsock socket is gone with its device');
  const info = JSON.parse((await vmm.api('GET', 'vm.info')).text) as { config: { fs?: unknown[]; vsock?: unknown } };
  assert.deepEqual([info.config.fs ?? [], info.config.vsock], [[], undefined], 'vm.info lists neither');

  await vmm.shell('poweroff', /@@stv:poweroff@@/, 'the guest powered off');
  await vmm.api('PUT', 'vmm.shutdown').catch(() => undefined);
  await vmm.exited;
});

test('PCI hotplug, bad input: a disk removed while the guest writes to it: the guest ejects it, its writes fail from then on, every write it saw complete is on the image', { timeout: TIMEOUT_MS }, async (t) => {
  const dir = scratchDir('hotplug-busy');
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'busy.raw');
  const BLOCKS = 256;
  writeFileSync(path, '');
  execFileSync('truncate', ['-s', `${BLOCKS}M`, path]);
  const evFile = join(dir, 'events.json');
  const vmm = await bootShell(t, 'hotplug-busy', dir, 'size=256M', ['--event-monitor', `path=${evFile}`]);
  await vmm.shell(WAIT_HELPER, /\bDEFINED\b/, 'the wait helper');
  const r = await vmm.api('PUT', 'vm.add-disk', { path, id: 'busy' });
  assert.equal(r.status, 200, `vm.add-disk: ${r.text}`);
  await vmm.shell('stvw /dev/vda 30 && echo VDA""UP || echo NO""VDA', /VDAUP|NOVDA/, 'the hot-added disk');
  assert.doesNotMatch(vmm.out, /NOVDA/, `no /dev/vda\n${vmm.explain()}`);
  // MiB i gets 'stv-blk-NNNN' and zeros (conv=sync pads the block), written and flushed (fsync)
  // before its marker; the loop stops at the first write that fails. Once the guest removed the
  // node, `dd of=/dev/vda` would create a regular file in devtmpfs (guest RAM): a write counts only
  // while /dev/vda is a block device before and after it.
  const mark = vmm.out.length;
  vmm.child.stdin.write(`(i=0; while [ $i -lt ${BLOCKS} ] && [ -b /dev/vda ]; do printf 'stv-blk-%04d' $i > /tmp/b; dd if=/tmp/b of=/dev/vda bs=1M seek=$i count=1 conv=sync,notrunc,fsync 2>/dev/null && [ -b /dev/vda ] || break; echo "@@stvw:$i@@"; i=$((i+1)); done; [ -f /dev/vda ] && rm -f /dev/vda; echo "@@stvwend:$i@@") &\n`);
  await vmm.waitFor(/@@stvw:7@@/, mark, 'the guest\'s first 8 MiB written');
  const asked = await vmm.api('PUT', 'vm.remove-device', { id: 'busy' });
  assert.equal(asked.status, 204, `vm.remove-device: ${asked.text}`);
  for (let i = 0; i < 120 && !events(evFile).some((e) => e.event === 'device-removed'); i++) await new Promise((res) => setTimeout(res, 500));
  assert.ok(events(evFile).some((e) => e.event === 'device-removed' && e.properties?.['id'] === 'busy'), `device-removed for busy\n${vmm.explain()}`);
  const end = await vmm.waitFor(/@@stvwend:(\d+)@@/, mark, 'the guest\'s writer stopping');
  const written = [...vmm.out.slice(mark).matchAll(/@@stvw:(\d+)@@/g)].map((m) => Number(m[1]));
  const last = Math.max(...written);
  t.diagnostic(`the guest saw ${last + 1} of ${BLOCKS} MiB written before the disk went (its loop stopped at ${end[1]})`);
  assert.ok(Number(end[1]) < BLOCKS, `the guest's writes fail once the disk is gone (it wrote all ${BLOCKS} MiB first: the removal came too late to test)\n${vmm.explain()}`);
  assert.equal(unlocked(path), true, 'the image is unlocked');
  const missing = [];
  for (let i = 0; i <= last; i++) if (readAt(path, i * MiB).slice(0, 12) !== `stv-blk-${String(i).padStart(4, '0')}`) missing.push(i);
  assert.deepEqual(missing, [], `every MiB the guest saw written is on the image\n${vmm.explain()}`);
  // The VMM and the guest go on.
  const o = await vmm.shellOutput('ls /dev/vda 2>&1; echo ST""ILL', /\bSTILL\b/, 'the guest after the removal');
  assert.match(o.text, /No such file/, `/dev/vda is gone\n${vmm.explain()}`);
  assert.equal((await vmm.api('GET', 'vm.info')).status, 200);
  await vmm.shell('poweroff', /@@stv:poweroff@@/, 'the guest powered off');
  await vmm.exited;
  assert.doesNotMatch(vmm.err, /device error|TypeError|RangeError/, `no device errors in the log\n${vmm.explain()}`);
});

test('PCI hotplug, bad input: a guest that never ejects (no acpiphp): the removal waits, asked again is logged, the id stays taken, the disk works; the next reboot removes it; an add past the free slots is refused', { timeout: TIMEOUT_MS }, async (t) => {
  const dir = scratchDir('hotplug-lazy');
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'lazy.raw');
  const hash = image(path, 'stv-lazy');
  const other = join(dir, 'other.raw');
  image(other, 'stv-other');
  const evFile = join(dir, 'events.json');
  // acpiphp.disable=1: a guest without the ACPI PCI hotplug driver ignores the GED's slot
  // notifications (no _EJ0 will run); a rescan finds the added disk.
  const vmm = await bootShell(t, 'hotplug-lazy', dir, 'size=256M', ['--event-monitor', `path=${evFile}`], 'acpiphp.disable=1');
  await vmm.shell(WAIT_HELPER, /\bDEFINED\b/, 'the wait helper');
  const r = await vmm.api('PUT', 'vm.add-disk', { path, id: 'lazy' });
  assert.equal(r.status, 200, `vm.add-disk: ${r.text}`);
  let o = await vmm.shellOutput('echo 1 > /sys/bus/pci/rescan; stvw /dev/vda 30 && echo "VDA $(dd if=/dev/vda bs=1M count=1 2>/dev/null | sha256sum | head -c 64)" || echo NO""VDA; printf stv-before-asked | dd of=/dev/vda bs=4096 seek=1 conv=notrunc,fsync 2>/dev/null; echo WR""OTE', /\bWROTE\b/, 'the disk found by a rescan');
  assert.match(o.text, new RegExp(`VDA ${hash}`), `the guest reads the disk\n${vmm.explain()}`);

  let asked = await vmm.api('PUT', 'vm.remove-device', { id: 'lazy' });
  assert.equal(asked.status, 204, `vm.remove-device: ${asked.text}`);
  await new Promise((res) => setTimeout(res, 8000));
  assert.equal(events(evFile).filter((e) => e.event === 'device-removed').length, 0, 'no device-removed while the guest has not ejected it');
  let info = JSON.parse((await vmm.api('GET', 'vm.info')).text) as { config: { disks?: Array<{ id?: string }> } };
  assert.ok((info.config.disks ?? []).some((x) => x.id === 'lazy'), 'vm.info still lists the disk');
  assert.equal(unlocked(path), false, 'the VMM still holds its image');
  o = await vmm.shellOutput('printf stv-after-asked. | dd of=/dev/vda bs=4096 seek=2 conv=notrunc,fsync 2>/dev/null && echo "OK""WRITE"; head -c 8 /dev/vda; echo; echo DO""NE', /\bDONE\b/, 'the disk after the removal was asked');
  assert.match(o.text, /OKWRITE[\s\S]*stv-lazy/, `the disk still works in the guest\n${vmm.explain()}`);
  asked = await vmm.api('PUT', 'vm.remove-device', { id: 'lazy' });
  assert.equal(asked.status, 204, `asked again: ${asked.text}`);
  assert.match(vmm.err, /lazy: removal requested again \(the guest has not ejected it yet\)/, 'the second request is logged');
  const taken = await vmm.api('PUT', 'vm.add-disk', { path: other, id: 'lazy' });
  assert.equal(taken.status, 409, `the id stays taken: ${taken.text}`);
  assert.equal(unlocked(other), true, 'the refused add leaves its image unlocked');

  // A reboot ends the guest's run: the removal it never answered happens then.
  const mark = vmm.out.length;
  vmm.child.stdin.write('reboot -f\n');
  await vmm.waitFor(/@@stv:init@@[\s\S]*stv# /, mark, 'the shell after the guest rebooted');
  assert.ok(events(evFile).some((e) => e.event === 'device-removed' && e.properties?.['id'] === 'lazy'), `device-removed after the reboot\n${vmm.explain()}`);
  assert.match(vmm.err, /lazy: removed \(the guest stopped before it ejected the device\)/);
  assert.equal(unlocked(path), true, 'the image is unlocked');
  info = JSON.parse((await vmm.api('GET', 'vm.info')).text) as { config: { disks?: Array<{ id?: string }> } };
  assert.ok(!(info.config.disks ?? []).some((x) => x.id === 'lazy'), 'vm.info no longer lists it');
  o = await vmm.shellOutput('echo 1 > /sys/bus/pci/rescan; sleep 2; ls /dev/vda 2>&1; echo GO""NE', /\bGONE\b/, 'the rebooted guest');
  assert.match(o.text, /No such file/, `the rebooted guest has no disk\n${vmm.explain()}`);
  assert.equal(readAt(path, 4096), 'stv-before-asked', 'the write before the removal was asked is on the image');
  assert.equal(readAt(path, 8192), 'stv-after-asked.', 'and the one after it');

  // Hot-adding past the free slots: bus 0 has 31 device numbers; the add after the last answers
  // 400 naming it, and the VM goes on.
  let added = 0;
  let refused: { status: number; text: string } | undefined;
  for (let n = 0; n < 40 && !refused; n++) {
    const p = join(dir, `fill${n}.raw`);
    image(p, `stv-fill${n}`);
    const a = await vmm.api('PUT', 'vm.add-disk', { path: p, id: `fill${n}` });
    if (a.status === 200) added++;
    else refused = a;
  }
  assert.ok(refused, `an add past the free slots is refused (${added} added)`);
  assert.equal(refused.status, 400, `past the free slots: ${refused.text}`);
  assert.match(refused.text, /PCI segment 0 is full \(at most 31 devices/, 'the error names the full segment');
  assert.ok(added >= 20, `the free slots were usable first (${added} added)`);
  assert.equal(unlocked(join(dir, `fill${added}.raw`)), true, 'the refused add leaves its image unlocked');
  o = await vmm.shellOutput('echo ST""ILL', /\bSTILL\b/, 'the guest after the refused add');
  assert.equal((await vmm.api('GET', 'vm.info')).status, 200);
  await vmm.api('PUT', 'vmm.shutdown').catch(() => undefined);
  await vmm.exited;
  assert.doesNotMatch(vmm.err, /device error|TypeError|RangeError/, `no device errors in the log\n${vmm.explain()}`);
});

test('PCI hotplug and snapshot: a boot disk removed before the others, then vm.snapshot; vm.restore in a new VMM puts every device back where the guest saw it (the hole stays), the devices answer; a disk added while paused takes the hole, is snapshotted before the guest heard of it and appears in a third VMM restored from that', { timeout: TIMEOUT_MS }, async (t) => {
  const dir = scratchDir('hotplug-snap');
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const first = join(dir, 'first.raw');
  image(first, 'stv-first');
  const second = join(dir, 'second.raw');
  const secondHash = image(second, 'stv-second');
  const later = join(dir, 'later.raw');
  const laterHash = image(later, 'stv-later');
  const snap = join(dir, 'snap');
  mkdirSync(snap);
  const evFile = join(dir, 'events.json');
  // disk0 at 00:01.0, disk1 at 00:02.0, the virtio-rng after them (00:03.0).
  const vmm = await bootShell(t, 'hotplug-snap', dir, 'size=256M', ['--event-monitor', `path=${evFile}`, '--disk', `path=${first},id=disk0`, '--disk', `path=${second},id=disk1`]);
  await vmm.shell(WAIT_HELPER, /\bDEFINED\b/, 'the wait helper');
  const bdfs = await vmm.shellOutput('for d in /sys/bus/pci/devices/*; do echo "DEV $(basename $d) $(cat $d/device)"; done; echo LI""STED', /\bLISTED\b/, 'the guest\'s PCI devices');
  assert.match(bdfs.text, /DEV 0000:00:03\.0 0x1044/, `the virtio-rng (1af4:1044) is at 00:03.0\n${bdfs.text}`);
  assert.equal((await vmm.api('PUT', 'vm.remove-device', { id: 'disk0' })).status, 204);
  for (let i = 0; i < 120 && !events(evFile).some((e) => e.event === 'device-removed'); i++) await new Promise((res) => setTimeout(res, 500));
  assert.ok(events(evFile).some((e) => e.event === 'device-removed' && e.properties?.['id'] === 'disk0'), `device-removed for disk0\n${vmm.explain()}`);
  await vmm.shell('i=0; while [ -e /dev/vda ] && [ $i -lt 20 ]; do sleep 1; i=$((i+1)); done; [ -e /dev/vda ] || echo VDA""GONE', /\bVDAGONE\b/, 'the guest without disk0');
  assert.equal((await vmm.api('PUT', 'vm.pause')).status, 204);
  const s = await vmm.api('PUT', 'vm.snapshot', { destination_url: pathToFileURL(snap).href });
  assert.equal(s.status, 204, `vm.snapshot: ${s.text}\n${vmm.explain()}`);
  const saved = JSON.parse(readFileSync(join(snap, 'state.json'), 'utf8')) as { version: number; pciPlacement: Array<{ id: string; segment: number; slot: number }> };
  t.diagnostic(`state.json version ${saved.version}, pciPlacement ${JSON.stringify(saved.pciPlacement)}`);
  assert.deepEqual(saved.pciPlacement.map((p) => `${p.id}@${p.slot}`), ['disk1@2', '_rng0@3'], 'each device where the guest saw it');
  await vmm.api('PUT', 'vmm.shutdown').catch(() => undefined);
  await vmm.exitCode('vmm.shutdown of the paused VM');

  const evFile2 = join(dir, 'events2.json');
  const restored = new Vmm('hotplug-snap-restore', join(dir, 'api2.sock'), ['--event-monitor', `path=${evFile2}`, '-v']);
  t.after(() => restored.end());
  let back = restored;
  await waitForPing(back.sock, back.child);
  const r = await back.api('PUT', 'vm.restore', { source_url: pathToFileURL(snap).href });
  assert.equal(r.status, 204, `vm.restore after a boot device was removed: ${r.status} ${r.text}\n${back.explain()}`);
  assert.equal((await back.api('PUT', 'vm.resume')).status, 204);
  let o = await back.shellOutput(`echo "VDB $(head -c 16 /dev/vdb) $(dd if=/dev/vdb bs=1M count=1 2>/dev/null | sha256sum | head -c 64)"; echo "RNG $(head -c 8 /dev/hwrng | od -An -tx1 | wc -w)"; echo CHE""CKED`, /\bCHECKED\b/, 'the restored guest\'s disk and rng');
  assert.match(o.text, new RegExp(`VDB stv-second\\.+ ${secondHash}`), `disk1 reads its image in the restored guest\n${back.explain()}`);
  assert.match(o.text, /RNG 8\b/, `the virtio-rng answers in the restored guest\n${back.explain()}`);
  // The hole disk0 left is the lowest free device number: a hot-add takes it. Added to the
  // paused VM (as CH allows) and snapshotted before the guest heard of it: the hotplug
  // controller's pending bit and the GED's interrupt go with the snapshot, and the guest of a
  // third VMM, restored from it, scans the slot when it resumes.
  assert.equal((await back.api('PUT', 'vm.pause')).status, 204);
  const a = await back.api('PUT', 'vm.add-disk', { path: later, id: 'later' });
  assert.equal(a.status, 200, `vm.add-disk into the paused, restored VM: ${a.text}\n${back.explain()}`);
  assert.equal((JSON.parse(a.text) as { bdf: string }).bdf, '0000:00:01.0');
  assert.equal(JSON.parse((await back.api('GET', 'vm.info')).text).state, 'Paused', 'the VM stays paused');
  const snap2 = join(dir, 'snap2');
  mkdirSync(snap2);
  const s2 = await back.api('PUT', 'vm.snapshot', { destination_url: pathToFileURL(snap2).href });
  assert.equal(s2.status, 204, `vm.snapshot with a device added while paused: ${s2.text}\n${back.explain()}`);
  const saved2 = JSON.parse(readFileSync(join(snap2, 'state.json'), 'utf8')) as { pciPlacement: Array<{ id: string; slot: number }>; pciHotplug: { up: number[] } };
  t.diagnostic(`second snapshot: pciPlacement ${JSON.stringify(saved2.pciPlacement)}, pciHotplug ${JSON.stringify(saved2.pciHotplug)}`);
  assert.ok((saved2.pciHotplug.up[0]! & 0b10) !== 0, `device 1's insertion is pending in the snapshot (PCIU)\n${JSON.stringify(saved2.pciHotplug)}`);
  await back.api('PUT', 'vmm.shutdown').catch(() => undefined);
  await back.exitCode('vmm.shutdown of the paused VM with the added disk');
  assert.equal(unlocked(later), true, 'the first restored VMM let go of the added image');

  const evFile3 = join(dir, 'events3.json');
  const third = new Vmm('hotplug-snap-restore2', join(dir, 'api3.sock'), ['--event-monitor', `path=${evFile3}`, '-v']);
  t.after(() => third.end());
  await waitForPing(third.sock, third.child);
  const r2 = await third.api('PUT', 'vm.restore', { source_url: pathToFileURL(snap2).href });
  assert.equal(r2.status, 204, `vm.restore of the snapshot with a pending insertion: ${r2.status} ${r2.text}\n${third.explain()}`);
  assert.equal((await third.api('PUT', 'vm.resume')).status, 204);
  back = third;
  o = await back.shellOutput(`stvw /dev/vda 30 && echo "VDA $(dd if=/dev/vda bs=1M count=1 2>/dev/null | sha256sum | head -c 64)" || echo NO""VDA; echo AD""DED`, /\bADDED\b/, 'the disk hot-added after the restore');
  assert.match(o.text, new RegExp(`VDA ${laterHash}`), `the guest reads the disk added while paused, after the second restore\n${back.explain()}`);
  assert.equal((await back.api('PUT', 'vm.remove-device', { id: 'disk1' })).status, 204);
  for (let i = 0; i < 120 && !events(evFile3).some((e) => e.event === 'device-removed'); i++) await new Promise((res) => setTimeout(res, 500));
  assert.ok(events(evFile3).some((e) => e.event === 'device-removed' && e.properties?.['id'] === 'disk1'), `a device of the snapshot is removed from the restored VM\n${back.explain()}`);
  assert.equal(unlocked(second), true, 'and its image unlocked');
  await back.shell('poweroff', /@@stv:poweroff@@/, 'the restored guest powered off');
  // An API-mode VMM stays after its guest powered off (as CH): vmm.shutdown ends it.
  await back.api('PUT', 'vmm.shutdown').catch(() => undefined);
  assert.equal(await back.exitCode('vmm.shutdown after the restored guest powered off'), 0, back.explain());
  assert.doesNotMatch(back.err, /device error|TypeError|RangeError/, `no device errors in the log\n${back.explain()}`);
});
