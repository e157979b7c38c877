// The virtio baseline: QEMU q35 with modern virtio-*-pci devices (blk, blk read-only, net on a tap
// without vhost, rng, console) passes the very checks test/e2e/virtio.test.ts holds Stratovisor to
// (test/e2e/lib/virtio.ts). If these fail, the guest scenarios or the bench are broken, not the VMM.
import { test } from 'node:test';
import { CHECKS, qemuQ35, skipReason } from './lib/virtio.js';

for (const [title, check, tap] of CHECKS) {
  test(`QEMU q35 ${title}`, async (t) => {
    const why = skipReason(qemuQ35, { tap });
    if (why) return t.skip(why);
    await check(qemuQ35);
  });
}
