// Several PCI segments, as Kata Containers uses them on Cloud Hypervisor (virtio devices on
// segment 1): `--platform num_pci_segments=2`, one raw disk on segment 0 and one on segment 1
// (`--disk path=a.img --disk path=b.img,pci_segment=1`), and a virtio-net on segment 1 when taps
// can be made. Debian's stock kernel must find domain 0001 through its ACPI host bridge and MCFG
// entry, read each disk's bytes, reach the host over the segment-1 NIC, and say nothing bad about
// MMCONFIG/ECAM or the second host bridge. Console: .cache/e2e-logs/stratovisor-pci-segments.log.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { explain, guestImages, marker, runGuest, type GuestRun } from './lib/guest.js';
import { stratovisorArgs } from './lib/stratovisor.js';
import { deleteTap, NET, scratchDir, sha256, skipReason, stratovisor } from './lib/virtio.js';

const TAP = 'stvtap1';
const GUEST_MAC = '52:54:00:5e:f9:12';

function keyed(run: GuestRun, event: string, key: string): string | undefined {
  return run.markers.find((m) => m.event === event && m.data.startsWith(`${key}:`))?.data.slice(key.length + 1);
}

test('Stratovisor --platform num_pci_segments=2: disks on segments 0 and 1 (and a NIC on 1) work in a stock Linux guest', async (t) => {
  const why = skipReason(stratovisor);
  if (why) return t.skip(why);
  const withNet = skipReason(stratovisor, { tap: true }) === null;
  if (!withNet) t.diagnostic(`no virtio-net on segment 1 in this run: ${skipReason(stratovisor, { tap: true })}`);
  const dir = scratchDir('pci-segments');
  try {
    const a = randomBytes(1 << 20);
    const b = randomBytes(1 << 20);
    writeFileSync(join(dir, 'a.img'), a);
    writeFileSync(join(dir, 'b.img'), b);
    const img = guestImages();
    const extraArgs = [
      '--platform', 'num_pci_segments=2',
      '--disk', `path=${join(dir, 'a.img')}`, `path=${join(dir, 'b.img')},pci_segment=1`,
    ];
    if (withNet) {
      deleteTap(TAP);
      extraArgs.push('--net', `tap=${TAP},ip=${NET.hostIp},mask=${NET.mask},mac=${GUEST_MAC},pci_segment=1`);
    }
    const [cmd, ...args] = [process.execPath, ...stratovisorArgs({
      kernel: img.bzImage, initramfs: img.initramfs, cpus: 2, memMiB: 512, scenario: 'pciseg',
      extraCmdline: `stv.ip=${NET.guestIp}/${NET.prefix} stv.peer=${NET.hostIp}`, extraArgs,
    })];
    let run: GuestRun;
    try {
      run = await runGuest(cmd!, args, { name: 'stratovisor-pci-segments', timeoutMs: 300_000 });
    } finally {
      if (withNet) deleteTap(TAP);
    }
    const ex = () => explain(run, 40);
    assert.ok(marker(run, 'init'), `the guest did not boot\n${ex()}`);
    assert.equal(run.markers.filter((m) => m.event === 'pciseg-error').map((m) => m.data).join('; '), '', ex());
    assert.ok(marker(run, 'pciseg-done'), `the scenario did not finish\n${ex()}`);

    // Each segment has its host bridge at 00.0 and the devices after it.
    const pci = new Map(run.markers.filter((m) => m.event === 'pci').map((m) => {
      const [d, bus, fn, vendor, device] = m.data.split(':');
      return [`${d}:${bus}:${fn}`, `${vendor}:${device}`];
    }));
    t.diagnostic(`guest PCI functions: ${[...pci].map(([k, v]) => `${k}=${v}`).join(' ')}`);
    assert.equal(pci.get('0000:00:00.0'), '0x8086:0x0d57', `no host bridge at 0000:00:00.0\n${ex()}`);
    assert.equal(pci.get('0001:00:00.0'), '0x8086:0x0d57', `no host bridge at 0001:00:00.0 (segment 1)\n${ex()}`);
    assert.equal(pci.get('0000:00:01.0'), '0x1af4:0x1042', `the first disk should be virtio-blk at 0000:00:01.0\n${ex()}`);
    assert.equal(pci.get('0001:00:01.0'), '0x1af4:0x1042', `the pci_segment=1 disk should be virtio-blk at 0001:00:01.0\n${ex()}`);

    // Both disks read the host's bytes.
    const disks = run.markers.filter((m) => m.event === 'pciseg-disk').map((m) => m.data);
    t.diagnostic(`guest disks: ${disks.join(' ')}`);
    const onSeg = (addr: string) => disks.find((d) => d.startsWith(`${addr}:`))?.split(':').slice(3).join(':');
    assert.match(onSeg('0000:00:01.0') ?? '', new RegExp(`^vd[a-z]:${sha256(a)}$`), `the segment-0 disk's contents differ from a.img\n${ex()}`);
    assert.match(onSeg('0001:00:01.0') ?? '', new RegExp(`^vd[a-z]:${sha256(b)}$`), `the segment-1 disk's contents differ from b.img\n${ex()}`);

    if (withNet) {
      assert.equal(pci.get('0001:00:02.0'), '0x1af4:0x1041', `the pci_segment=1 NIC should be virtio-net at 0001:00:02.0\n${ex()}`);
      assert.match(keyed(run, 'pciseg-net', '0001:00:02.0') ?? '', new RegExp(`^eth\\d+:${GUEST_MAC}$`), `the segment-1 NIC should carry the MAC given\n${ex()}`);
      assert.equal(marker(run, 'pciseg-ping')?.data, 'ok', `the guest could not ping the host over the segment-1 NIC\n${ex()}`);
    }

    // What the kernel said about ECAM and the host bridges.
    const dmesg = run.markers.filter((m) => m.event === 'dmesg').map((m) => m.data);
    t.diagnostic(`guest dmesg (PCI/ACPI lines):\n${dmesg.join('\n')}`);
    assert.ok(dmesg.some((l) => /MMCONFIG for domain 0001 \[bus 00-00\] at \[mem 0xe8100000-0xe81fffff\]/.test(l)), `the kernel did not take segment 1's MCFG entry\n${dmesg.join('\n')}`);
    assert.ok(dmesg.some((l) => /PCI host bridge to bus 0001:00/.test(l)), `the kernel did not add segment 1's host bridge\n${dmesg.join('\n')}`);
    assert.ok(dmesg.some((l) => /system 00:\w+: \[mem 0xe8100000-0xe81fffff\] has been reserved/.test(l)), `segment 1's ECAM window is not reserved as a motherboard resource (PNP0C02)\n${dmesg.join('\n')}`);
    // ("report a bug" is in the kernel's standing "Using host bridge windows from ACPI" line.)
    const bad = dmesg.filter((l) => /not reserved|could not|can't access|fail|error|conflict|ignored|invalid|clipped/i.test(l));
    assert.deepEqual(bad, [], `the kernel complained about PCI/ACPI/MMCONFIG\n${dmesg.join('\n')}`);
    assert.ok(marker(run, 'poweroff'), `the guest did not power off\n${ex()}`);
    assert.equal(run.exitCode, 0, `the VMM did not exit 0\n${ex()}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('Stratovisor without --platform: one segment as before (buses 0-255, 256 MiB ECAM reserved), its disk works, no complaints', async (t) => {
  const why = skipReason(stratovisor);
  if (why) return t.skip(why);
  const dir = scratchDir('pci-segments-default');
  try {
    const a = randomBytes(1 << 20);
    writeFileSync(join(dir, 'a.img'), a);
    const img = guestImages();
    const [cmd, ...args] = [process.execPath, ...stratovisorArgs({
      kernel: img.bzImage, initramfs: img.initramfs, cpus: 2, memMiB: 512, scenario: 'pciseg',
      extraCmdline: 'stv.disks=1', extraArgs: ['--disk', `path=${join(dir, 'a.img')}`],
    })];
    const run = await runGuest(cmd!, args, { name: 'stratovisor-pci-segments-default', timeoutMs: 300_000 });
    const ex = () => explain(run, 40);
    assert.ok(marker(run, 'pciseg-done'), `the scenario did not finish\n${ex()}`);
    assert.equal(run.markers.filter((m) => m.event === 'pciseg-error').map((m) => m.data).join('; '), '', ex());
    const pci = run.markers.filter((m) => m.event === 'pci').map((m) => m.data);
    assert.ok(pci.every((p) => p.startsWith('0000:00:')), `every function is on 0000:00\n${pci.join(' ')}`);
    assert.match(run.markers.find((m) => m.event === 'pciseg-disk')?.data ?? '', new RegExp(`^0000:00:01\\.0:vda:${sha256(a)}$`), ex());
    const dmesg = run.markers.filter((m) => m.event === 'dmesg').map((m) => m.data);
    t.diagnostic(`guest dmesg (PCI/ACPI lines):\n${dmesg.join('\n')}`);
    assert.ok(dmesg.some((l) => /MMCONFIG for domain 0000 \[bus 00-ff\] at \[mem 0xe8000000-0xf7ffffff\]/.test(l)), `segment 0 should keep buses 00-ff\n${dmesg.join('\n')}`);
    assert.ok(dmesg.some((l) => /system 00:\w+: \[mem 0xe8000000-0xf7ffffff\] has been reserved/.test(l)), `the ECAM window should be a reserved motherboard resource\n${dmesg.join('\n')}`);
    const bad = dmesg.filter((l) => /not reserved|could not|can't access|fail|error|conflict|ignored|invalid|clipped/i.test(l));
    assert.deepEqual(bad, [], `the kernel complained about PCI/ACPI/MMCONFIG\n${dmesg.join('\n')}`);
    assert.equal(run.exitCode, 0, `the VMM did not exit 0\n${ex()}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
