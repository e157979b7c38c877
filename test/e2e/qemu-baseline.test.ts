// The test bench itself: QEMU (Debian's qemu-system-x86, -accel kvm) boots the project's guest
// images inside scripts/kvm-sandbox. These are the reference every Stratovisor e2e case and
// benchmark is compared with; if they fail, the bench (sandbox, images) is broken, not the VMM.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { guestImages, runGuest, explain, marker } from './lib/guest.js';
import { qemuArgs } from './lib/qemu.js';

const img = guestImages();
const haveQemu = existsSync('/usr/bin/qemu-system-x86_64');
const haveKvm = existsSync('/dev/kvm');

for (const machine of ['microvm', 'q35'] as const) {
  for (const kernel of ['bzImage', 'vmlinux'] as const) {
    if (machine === 'q35' && kernel === 'vmlinux') continue; // q35's SeaBIOS path has no PVH loader worth testing
    test(`QEMU ${machine} boots the ${kernel} to the init marker and reports 2 CPUs`, async (t) => {
      if (!haveQemu) return t.skip('qemu-system-x86_64 is not installed (Debian package qemu-system-x86)');
      if (!haveKvm) return t.skip('/dev/kvm is missing: run the e2e suite through scripts/kvm-sandbox');
      const run = await runGuest('qemu-system-x86_64', qemuArgs({
        machine, kernel: img[kernel], initramfs: img.initramfs, cpus: 2, memMiB: 512, scenario: 'boot',
      }), { name: `qemu-${machine}-${kernel}`, timeoutMs: 180_000 });
      assert.ok(marker(run, 'init'), `no init marker\n${explain(run)}`);
      assert.equal(marker(run, 'cpus')?.data, '2', explain(run));
      const memKb = Number(marker(run, 'memtotal-kb')?.data);
      assert.ok(memKb > 400_000 && memKb <= 512 * 1024, `MemTotal ${memKb} kB for a 512 MiB guest\n${explain(run)}`);
      assert.equal(marker(run, 'modules-failed'), undefined, explain(run));
      assert.ok(marker(run, 'poweroff'), explain(run));
      assert.equal(run.exitCode, 0, explain(run));
    });
  }
}
