// The inner load of `npm run sandbox-health`, run inside one scripts/kvm-sandbox boot: the same
// work an e2e file does — QEMU microvm boots the test guest to poweroff, Stratovisor boots it
// with 2 vCPUs to poweroff, and Stratovisor runs the virtio-blk read/write check (ext4 image made
// by the host, written by the guest, read back with debugfs). Prints one JSON line
// `@@health:{...}@@` with each step's result and time; exits 1 when a step failed.
import { guestImages, runGuest, marker, explain } from '../test/e2e/lib/guest.js';
import { qemuArgs } from '../test/e2e/lib/qemu.js';
import { stratovisorArgs } from '../test/e2e/lib/stratovisor.js';
import { checkBlockReadWrite, stratovisor } from '../test/e2e/lib/virtio.js';

interface Step { name: string; ok: boolean; ms: number; why?: string; retried?: boolean }

async function step(name: string, fn: () => Promise<boolean | void>): Promise<Step> {
  const t0 = performance.now();
  try {
    const retried = await fn();
    return { name, ok: true, ms: Math.round(performance.now() - t0), ...(retried ? { retried: true } : {}) };
  } catch (e) {
    const why = (e instanceof Error ? e.message : String(e)).split('\n').slice(0, 3).join(' | ');
    return { name, ok: false, ms: Math.round(performance.now() - t0), why };
  }
}

const img = guestImages();
const tag = process.env.STV_HEALTH_TAG ?? 'health';
const steps: Step[] = [];
steps.push(await step('qemu-boot', async () => {
  const run = await runGuest('qemu-system-x86_64', qemuArgs({ machine: 'microvm', kernel: img.bzImage, initramfs: img.initramfs, cpus: 2, memMiB: 512, scenario: 'poweroff' }), { name: `${tag}-qemu`, timeoutMs: 240_000 });
  if (!marker(run, 'poweroff') || run.exitCode !== 0) throw new Error(`QEMU boot: ${explain(run, 5)}`);
  return run.retried; // a first attempt printed nothing (runGuest retries once)
}));
steps.push(await step('stratovisor-boot', async () => {
  const run = await runGuest(process.execPath, stratovisorArgs({ kernel: img.bzImage, initramfs: img.initramfs, cpus: 2, memMiB: 512, scenario: 'poweroff' }), { name: `${tag}-stv`, timeoutMs: 240_000 });
  if (!marker(run, 'poweroff') || run.exitCode !== 0) throw new Error(`Stratovisor boot: ${explain(run, 5)}`);
  return run.retried;
}));
steps.push(await step('stratovisor-virtio-blk', () => checkBlockReadWrite(stratovisor)));
process.stdout.write(`@@health:${JSON.stringify({ steps })}@@\n`);
process.exitCode = steps.every((s) => s.ok) ? 0 : 1;
