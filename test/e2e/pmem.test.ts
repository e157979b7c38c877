// virtio-pmem (virtio 1.2, 5.19) on a real guest (Debian's kernel: virtio_pmem, libnvdimm,
// nd_pmem), as Cloud Hypervisor's --pmem, with three devices in one VM:
//   - a raw file (32 MiB) with a marker at offset 0: the guest's /dev/pmemN has its size and reads
//     the marker; a second marker the guest writes (dd conv=fsync, then sync) is in the host
//     file, and the guest's flushes reached the device (its flushes counter in vm.counters);
//   - the same with discard_writes=on (16 MiB): the guest reads the marker and its own write back,
//     the host file does not change;
//   - an ext4 image (64 MiB, mke2fs -d on the host): the guest mounts it from /dev/pmemN, reads the
//     host's file, writes one; after umount the host reads it with debugfs and e2fsck finds the
//     file system clean.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { guestImages } from './lib/guest.js';
import { VmmProcess as Vmm } from './lib/vmm_process.js';
import { debugfsCat, fsckProblems, makeHostDisk, scratchDir, sha256 } from './lib/virtio.js';
import { waitForPing } from '../../src/api/testing/spawn_vmm.js';

const img = guestImages();
const TIMEOUT_MS = 300_000;
const MiB = 1024 * 1024;
const MARK = 'stv-pmem-marker-0';
const SECOND = 'stv-pmem-second1';

function rawFile(path: string, size: number): Buffer {
  const b = Buffer.alloc(size);
  b.write(MARK, 0, 'latin1');
  writeFileSync(path, b);
  return b;
}

test('virtio-pmem: /dev/pmemN of the right size, reads and persistent writes (flush), discard_writes, ext4 mounted from it', { timeout: TIMEOUT_MS }, async (t) => {
  const dir = scratchDir('pmem');
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const shared = join(dir, 'shared.raw');
  const discard = join(dir, 'discard.raw');
  rawFile(shared, 32 * MiB);
  const discardBytes = rawFile(discard, 16 * MiB);
  const discardHash = sha256(discardBytes);
  const ext4 = await makeHostDisk(dir); // 64 MiB
  const sizes = new Map([[32 * MiB, 'shared'], [16 * MiB, 'discard'], [64 * MiB, 'ext4']]);

  const vmm = new Vmm('pmem', join(dir, 'api.sock'), [
    '--kernel', img.bzImage, '--initramfs', img.initramfs,
    '--cmdline', 'console=ttyS0 quiet stv.scenario=shell',
    '--cpus', 'boot=1', '--memory', 'size=256M', '--serial', 'tty', '--console', 'off',
    '--pmem', `file=${shared},id=pmem_shared`, `file=${discard},discard_writes=on,id=pmem_discard`,
    '--pmem', `file=${ext4.path},size=64M,id=pmem_ext4`, '-v',
  ]);
  t.after(() => vmm.end());
  await waitForPing(vmm.sock, vmm.child);
  await vmm.waitFor(/stv# /, 0, 'the guest shell prompt');

  // nd_pmem binds the regions as the modules load; wait until all three disks are there.
  const list = await vmm.shellOutput(
    'for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do [ -b /dev/pmem2 ] && break; sleep 1; done; ' +
    'for b in /sys/block/pmem*; do n=${b##*/}; echo "PM""EM $n $(cat $b/size) $(dd if=/dev/$n bs=4096 count=1 2>/dev/null | head -c 17 | tr -c "a-z0-9-" .)"; done; echo LIST""ED',
    /LISTED/, 'the list of pmem disks');
  const found = new Map<string, { dev: string; sectors: number; head: string }>();
  for (const m of list.text.matchAll(/^PMEM (pmem\d+) (\d+) (\S*)\r?$/gm)) {
    const bytes = Number(m[2]) * 512;
    const kind = sizes.get(bytes);
    assert.ok(kind !== undefined, `/dev/${m[1]} has ${bytes} bytes, none of the files' sizes\n${vmm.explain()}`);
    found.set(kind, { dev: m[1]!, sectors: Number(m[2]), head: m[3]! });
  }
  t.diagnostic(`guest pmem disks: ${[...found].map(([k, v]) => `${k}=/dev/${v.dev} (${v.sectors} sectors, starts "${v.head}")`).join(', ')}`);
  assert.equal(found.size, 3, `the guest has three pmem disks of 32, 16 and 64 MiB\n${vmm.explain()}`);
  const sh = found.get('shared')!;
  const dis = found.get('discard')!;
  const fs = found.get('ext4')!;
  assert.equal(sh.head, MARK, 'the guest reads the marker at offset 0 of the shared file');
  assert.equal(dis.head, MARK, 'the guest reads the marker at offset 0 of the discard_writes file');

  // Writes: the second marker at offset 4096 of both, fsync'ed (a flush request) and synced.
  const w = await vmm.shellOutput(
    `printf ${SECOND} > /tmp/m; for n in ${sh.dev} ${dis.dev}; do dd if=/tmp/m of=/dev/$n bs=4096 seek=1 conv=notrunc,fsync 2>/dev/null || echo "WRITE ""FAILED $n"; done; sync; ` +
    `for n in ${sh.dev} ${dis.dev}; do echo "BACK""READ $n $(dd if=/dev/$n bs=4096 skip=1 count=1 2>/dev/null | head -c 16)"; done; echo WRIT""TEN`,
    /WRITTEN/, 'the writes to the pmem disks');
  assert.doesNotMatch(w.text, /WRITE FAILED/, `a write failed\n${vmm.explain()}`);
  assert.match(w.text, new RegExp(`BACKREAD ${sh.dev} ${SECOND}`), 'the guest reads its write back (shared)');
  assert.match(w.text, new RegExp(`BACKREAD ${dis.dev} ${SECOND}`), 'the guest reads its write back (discard_writes: its private copy)');

  // ext4 on pmem: DAX when the kernel offers it for this region, else through the page cache.
  const e = await vmm.shellOutput(
    `mkdir -p /mnt/p; if mount -t ext4 -o dax /dev/${fs.dev} /mnt/p 2>/dev/null; then echo "DA""X=on"; else mount -t ext4 /dev/${fs.dev} /mnt/p && echo "DA""X=off"; fi; ` +
    'echo "HOST""TXT $(cat /mnt/p/host.txt)"; echo "stratovisor guest wrote this on pmem" > /mnt/p/guest.txt; umount /mnt/p && echo UMOUN""TED || echo UMOUNT""FAILED',
    // Not the prompt: busybox redraws it while a long line is echoed, before the command ran.
    /UMOUNTED|UMOUNTFAILED/, 'the ext4 file system on pmem');
  assert.match(e.text, /DAX=(on|off)/, `the ext4 on /dev/${fs.dev} mounted\n${vmm.explain()}`);
  t.diagnostic(`ext4 on /dev/${fs.dev}: ${/DAX=(on|off)/.exec(e.text)![0]}`);
  assert.match(e.text, /UMOUNTED/, `umount\n${vmm.explain()}`);

  // The guest's flushes went through the device (conv=fsync, sync, ext4's journal and umount).
  const c = await vmm.api('GET', 'vm.counters');
  assert.equal(c.status, 200, c.text);
  const counters = JSON.parse(c.text) as Record<string, Record<string, number>>;
  t.diagnostic(`vm.counters: ${JSON.stringify({ pmem_shared: counters['pmem_shared'], pmem_discard: counters['pmem_discard'], pmem_ext4: counters['pmem_ext4'] })}`);
  assert.ok((counters['pmem_shared']?.['flushes'] ?? 0) >= 1, `flush requests on the shared device: ${c.text}`);
  assert.equal(counters['pmem_shared']?.['flush_errors'], 0);
  assert.equal(counters['pmem_shared']?.['malformed_requests'], 0);

  await vmm.shell('poweroff', /@@stv:poweroff@@/, 'the guest powered off');
  await vmm.api('PUT', 'vmm.shutdown').catch(() => undefined);
  await vmm.exited;

  const after = readFileSync(shared);
  assert.equal(after.subarray(0, MARK.length).toString('latin1'), MARK);
  assert.equal(after.subarray(4096, 4096 + SECOND.length).toString('latin1'), SECOND, 'the guest\'s write is in the host file');
  assert.equal(after.length, 32 * MiB, 'the file keeps its size');
  assert.equal(createHash('sha256').update(readFileSync(discard)).digest('hex'), discardHash, 'discard_writes=on: the host file is unchanged');
  assert.match(e.text, new RegExp(`HOSTTXT ${(/stratovisor host file [0-9a-f]+/.exec(debugfsCat(ext4.path, 'host.txt')?.toString() ?? '') ?? ['?'])[0]}`), 'the guest read the host\'s file from ext4 on pmem');
  assert.equal(debugfsCat(ext4.path, 'guest.txt')?.toString(), 'stratovisor guest wrote this on pmem\n', 'guest.txt read back from the image (debugfs)');
  assert.equal(fsckProblems(ext4.path), null, 'e2fsck -fn: the file system is clean');
});
