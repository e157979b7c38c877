// Stratovisor's virtio-pci devices with Debian's stock kernel, through the CLI (Cloud Hypervisor's
// flags: --disk path=,readonly=on  --net tap=,ip=,mask=,mac=  --rng src=  --console file=):
// the same guest scenarios and host-side checks as the QEMU baseline (test/e2e/qemu-virtio.test.ts,
// both in test/e2e/lib/virtio.ts). Every run's console is kept in .cache/e2e-logs/stratovisor-virtio-*.
import { test } from 'node:test';
import { CHECKS, skipReason, stratovisor } from './lib/virtio.js';

for (const [title, check, tap] of CHECKS) {
  test(`Stratovisor ${title}`, async (t) => {
    const why = skipReason(stratovisor, { tap });
    if (why) return t.skip(why);
    await check(stratovisor);
  });
}
