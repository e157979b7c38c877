// vm.power-button on a real guest (Debian's kernel, the busybox test guest): the ACPI Generic
// Event Device's interrupt reaches the guest's GED driver (drivers/acpi/evged.c), whose _EVT
// notifies \_SB_.PWRB; the kernel's button driver (PNP0C0C) reports KEY_POWER and guest/init's
// acpid powers the guest off, as a distribution's acpid or logind would; the VMM exits 0.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { guestImages, LOG_DIR } from './lib/guest.js';
import { STRATOVISOR } from './lib/stratovisor.js';
import { apiRequest } from '../../src/cli/remote.js';
import { waitForPing } from '../../src/api/testing/spawn_vmm.js';

const img = guestImages();
const TIMEOUT_MS = 300_000;

test('vm.power-button: the guest gets the GED interrupt, its button driver the press, and it powers off; the VMM exits 0', { timeout: TIMEOUT_MS }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'stv-pwrb-'));
  const sock = join(dir, 'api.sock');
  const args = [
    '--api-socket', `path=${sock}`, '--kernel', img.bzImage, '--initramfs', img.initramfs,
    '--cmdline', 'console=ttyS0 quiet stv.scenario=shell', '--cpus', 'boot=1', '--memory', `size=${256 << 20}`,
    '--serial', 'tty', '--console', 'off', '-v',
  ];
  const child = spawn(process.execPath, [STRATOVISOR, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  let done = false;
  const waiters: Array<() => void> = [];
  const wake = () => { for (const w of waiters.splice(0)) w(); };
  child.stdout.on('data', (b: Buffer) => { out += b.toString('latin1'); wake(); });
  child.stderr.on('data', (b: Buffer) => { err += b.toString('latin1'); wake(); });
  const exited = new Promise<number | null>((r) => child.on('close', (c) => { done = true; wake(); r(c); }));
  const explain = () => `--- console (last 2000) ---\n${out.slice(-2000)}\n--- stderr ---\n${err.slice(-3000)}`;
  t.after(() => {
    if (!done) child.kill('SIGKILL');
    mkdirSync(LOG_DIR, { recursive: true });
    writeFileSync(join(LOG_DIR, 'stv-power-button.log'), `$ stratovisor ${args.join(' ')}\n${out}\n--- stderr ---\n${err}\n`);
    rmSync(dir, { recursive: true, force: true });
  });
  const waitFor = async (re: RegExp, from: number, what: string): Promise<RegExpExecArray> => {
    for (;;) {
      const m = re.exec(out.slice(from));
      if (m) return m;
      if (done) assert.fail(`the VMM exited before ${what}\n${explain()}`);
      await new Promise<void>((r) => { waiters.push(r); setTimeout(r, 1000); });
    }
  };
  const shell = (line: string, re: RegExp, what: string) => {
    const mark = out.length;
    child.stdin.write(`${line}\n`);
    return waitFor(re, mark, what);
  };
  const api = (method: string, ep: string) => apiRequest(sock, method, ep);

  await waitForPing(sock, child);
  await waitFor(/stv# /, 0, 'the guest shell prompt');
  // The guest found the GED (its interrupt, nothing delivered yet) and bound the button driver.
  const ged = await shell('grep ACPI:Ged /proc/interrupts || echo ged-missing-$((1+1))', /^\s*(\d+):\s+(\d+)\s+IO-APIC\s+(\d+)-edge\s+ACPI:Ged|ged-missing-2/m, 'the GED line of /proc/interrupts');
  assert.ok(ged[1] !== undefined, `no ACPI:Ged interrupt in the guest\n${explain()}`);
  assert.equal(ged[3], '5', 'on IOAPIC pin 5 (IRQ_GED)');
  assert.equal(ged[2], '0', 'no GED event before the press');
  await shell('ls /sys/bus/acpi/drivers/button/', /PNP0C0C:00/, 'the ACPI button driver bound to \\_SB_.PWRB');
  await shell('ls /sys/bus/acpi/drivers/vmgenid/', /STRV0001:00/, 'the vmgenid driver bound to \\_SB_.VGEN');
  await shell('pidof acpid || echo acpid-missing-$((1+1))', /^\s*\d+\s*$|acpid-missing-2/m, 'acpid running').then((m) => assert.ok(!m[0].includes('missing'), `no acpid in the guest\n${explain()}`));

  const from = out.length;
  const r = await api('PUT', 'vm.power-button');
  assert.equal(r.status, 204, `vm.power-button: ${r.status} ${r.text}`);
  await waitFor(/@@stv:power-button@@[\s\S]*@@stv:poweroff@@/, from, 'the guest powering off on the power button');
  // The guest's S5 write ends the VM; the VMM, started with a payload on its command line, exits
  // with it (status 0, as on any guest power-off).
  assert.equal(await exited, 0, explain());
  assert.match(err, /guest powered off/);
});
