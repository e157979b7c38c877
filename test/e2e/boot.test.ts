// Stratovisor boots Debian's stock kernel, as a bzImage and as a PVH vmlinux, and the guest
// reports the CPUs and memory it was given; guest poweroff ends the VMM with status 0.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { guestImages, runGuest, explain, marker } from './lib/guest.js';
import { stratovisorArgs } from './lib/stratovisor.js';

const img = guestImages();

const cases: Array<{ kernel: 'bzImage' | 'vmlinux'; cpus: number; memMiB: number }> = [
  { kernel: 'bzImage', cpus: 1, memMiB: 256 },
  { kernel: 'bzImage', cpus: 2, memMiB: 1024 },
  { kernel: 'bzImage', cpus: 4, memMiB: 4096 },
  { kernel: 'vmlinux', cpus: 1, memMiB: 4096 },
  { kernel: 'vmlinux', cpus: 2, memMiB: 256 },
  { kernel: 'vmlinux', cpus: 4, memMiB: 1024 },
];

for (const c of cases) {
  test(`boots the ${c.kernel} with ${c.cpus} vCPU(s) and ${c.memMiB} MiB; the guest sees exactly that and powers off with 0`, async () => {
    const run = await runGuest(process.execPath, stratovisorArgs({ kernel: img[c.kernel], initramfs: img.initramfs, cpus: c.cpus, memMiB: c.memMiB, scenario: 'boot' }), {
      name: `stv-boot-${c.kernel}-${c.cpus}cpu-${c.memMiB}M`, timeoutMs: 240_000,
    });
    assert.ok(marker(run, 'init'), `no init marker\n${explain(run)}`);
    assert.equal(marker(run, 'cpus')?.data, String(c.cpus), explain(run));
    assert.equal(marker(run, 'online')?.data, c.cpus === 1 ? '0' : `0-${c.cpus - 1}`, explain(run));
    // MemTotal is RAM minus what the kernel reserves for itself (its image, page structs, ...).
    const memKb = Number(marker(run, 'memtotal-kb')?.data);
    const sizeKb = c.memMiB * 1024;
    assert.ok(memKb <= sizeKb && memKb >= sizeKb - Math.max(96 * 1024, sizeKb * 0.06),
      `MemTotal ${memKb} kB for ${c.memMiB} MiB\n${explain(run)}`);
    assert.equal(marker(run, 'modules-failed'), undefined, explain(run));
    assert.ok(marker(run, 'poweroff'), explain(run));
    assert.equal(run.exitCode, 0, explain(run));
  });
}

test('guest reboot boots the guest again; SIGTERM then stops the VMM cleanly', async () => {
  let inits = 0;
  const run = await runGuest(process.execPath, stratovisorArgs({ kernel: img.bzImage, initramfs: img.initramfs, cpus: 2, memMiB: 512, scenario: 'reboot' }), {
    name: 'stv-reboot', timeoutMs: 300_000,
    onMarker: (m, ctl) => {
      if (m.event === 'init' && ++inits === 2 && ctl.pid !== undefined) process.kill(ctl.pid, 'SIGTERM');
    },
  });
  assert.ok(inits >= 2, `expected the guest to boot twice, saw ${inits} init marker(s)\n${explain(run)}`);
  assert.ok(run.markers.some((m) => m.event === 'rebooting'), explain(run));
  assert.equal(run.markers.find((m) => m.event === 'reboot-failed'), undefined, explain(run));
  assert.equal(run.exitCode, 0, explain(run));
});

test('the serial console is interactive through a pty: a command typed into the guest shell answers', async (t) => {
  const args = stratovisorArgs({ kernel: img.bzImage, initramfs: img.initramfs, cpus: 1, memMiB: 256, scenario: 'shell' });
  const quoted = [process.execPath, ...args].map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
  let sent = 0;
  const run = await runGuest('script', ['-qfec', quoted, '/dev/null'], {
    name: 'stv-serial-pty', timeoutMs: 240_000,
    onMarker: (m, ctl) => {
      if (m.event === 'scenario' && !sent++) {
        // The shell prints its prompt next; type a computation whose answer is not in the input.
        setTimeout(() => ctl.send('echo "@@stv:answer:$((6*7))@""@"\r'), 2000);
        setTimeout(() => ctl.send('poweroff\r'), 6000);
      }
    },
  });
  if (run.exitCode === 127 && /spawn error/.test(run.output)) return t.skip('util-linux `script` is not installed (needed for a pty)');
  assert.equal(marker(run, 'answer')?.data, '42', explain(run));
  assert.ok(marker(run, 'poweroff'), explain(run));
  assert.equal(run.exitCode, 0, explain(run));
});
