// vm.power-button on a real guest (Debian's kernel, the busybox test guest): the ACPI Generic
// Event Device's interrupt reaches the guest's GED driver (drivers/acpi/evged.c), whose _EVT
// notifies \_SB_.PWRB; the kernel's button driver (PNP0C0C) reports KEY_POWER and guest/init's
// acpid powers the guest off, as a distribution's acpid or logind would; the VMM exits 0.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { guestImages } from './lib/guest.js';
import { VmmProcess } from './lib/vmm_process.js';
import { waitForPing } from '../../src/api/testing/spawn_vmm.js';

const img = guestImages();
const TIMEOUT_MS = 300_000;

test('vm.power-button: the guest gets the GED interrupt, its button driver the press, and it powers off; the VMM exits 0', { timeout: TIMEOUT_MS }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'stv-pwrb-'));
  const vmm = new VmmProcess('power-button', join(dir, 'api.sock'), [
    '--kernel', img.bzImage, '--initramfs', img.initramfs,
    '--cmdline', 'console=ttyS0 quiet stv.scenario=shell', '--cpus', 'boot=1', '--memory', `size=${256 << 20}`,
    '--serial', 'tty', '--console', 'off', '-v',
  ]);
  t.after(() => {
    vmm.end();
    rmSync(dir, { recursive: true, force: true });
  });

  await waitForPing(vmm.sock, vmm.child);
  await vmm.waitFor(/stv# /, 0, 'the guest shell prompt');
  // The guest found the GED (its interrupt, nothing delivered yet) and bound the button driver.
  const ged = await vmm.shell('grep ACPI:Ged /proc/interrupts || echo ged-missing-$((1+1))', /^\s*(\d+):\s+(\d+)\s+IO-APIC\s+(\d+)-edge\s+ACPI:Ged|ged-missing-2/m, 'the GED line of /proc/interrupts');
  assert.ok(ged[1] !== undefined, `no ACPI:Ged interrupt in the guest\n${vmm.explain()}`);
  assert.equal(ged[3], '5', 'on IOAPIC pin 5 (IRQ_GED)');
  assert.equal(ged[2], '0', 'no GED event before the press');
  await vmm.shell('ls /sys/bus/acpi/drivers/button/', /PNP0C0C:00/, 'the ACPI button driver bound to \\_SB_.PWRB');
  await vmm.shell('ls /sys/bus/acpi/drivers/vmgenid/', /STRV0001:00/, 'the vmgenid driver bound to \\_SB_.VGEN');
  await vmm.shell('pidof acpid || echo acpid-missing-$((1+1))', /^\s*\d+\s*$|acpid-missing-2/m, 'acpid running').then((m) => assert.ok(!m[0].includes('missing'), `no acpid in the guest\n${vmm.explain()}`));

  const from = vmm.out.length;
  const r = await vmm.api('PUT', 'vm.power-button');
  assert.equal(r.status, 204, `vm.power-button: ${r.status} ${r.text}`);
  await vmm.waitFor(/@@stv:power-button@@[\s\S]*@@stv:poweroff@@/, from, 'the guest powering off on the power button');
  // The guest's S5 write ends the VM; the VMM, started with a payload on its command line, exits
  // with it (status 0, as on any guest power-off).
  assert.equal(await vmm.exited, 0, vmm.explain());
  assert.match(vmm.err, /guest powered off/);
});
