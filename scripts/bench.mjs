#!/usr/bin/env node
// npm run bench: benchmarks beside QEMU in the same run, medians and ratios.
//  1. port-I/O exits/s of a tiny guest, TypeScript backend vs a C loop doing the same ioctls
//     (alternating, STV_BENCH_RUNS times each; bench/pio.ts): on this host's /dev/kvm, or inside
//     the sandbox when the host has none (then it measures the sandbox's nested KVM);
//  2. inside one scripts/kvm-sandbox boot: QEMU (microvm, q35) and Stratovisor booting the same
//     kernel and initramfs (bench/boot.ts).
//  3. on the host: REST API start-to-ping time and vmm.ping latency under concurrent clients.
//  4. in the same sandbox boot as 2: virtio I/O, QEMU q35 vs Stratovisor (bench/io.ts): disk
//     sequential MB/s and 4 KiB random-read IOPS in the guest, TCP MB/s each way over a tap.
//  5. in the same sandbox boot: virtio-fs sequential write/read MB/s with Debian's virtiofsd,
//     QEMU q35 vhost-user-fs-pci vs Stratovisor --fs (bench/fs.ts; STV_BENCH_FS_MIB, 64).
//  6. in the same sandbox boot: virtio-vsock stream MB/s both ways and connect latency, QEMU q35
//     vhost-vsock-pci (in-kernel) vs Stratovisor --vsock (hybrid socket) (bench/vsock.ts;
//     STV_BENCH_VSOCK_MIB, 64; STV_BENCH_VSOCK_CONNS, 20).
//  7. in the same sandbox boot: pause+snapshot time and size, restore-to-running time (lazily
//     mapped and prefaulted), QEMU q35 stop + migrate file: / -incoming file: vs Stratovisor
//     vm.snapshot / vm.restore (bench/snapshot.ts; STV_BENCH_SNAP_MIB, "512,2048").
//  8. in the same sandbox boot: CPU hotplug, 1 -> 4 vCPUs and back: request to the guest's sysfs
//     for add and remove, and onlining, QEMU q35 QMP device_add/device_del vs Stratovisor
//     vm.resize desired_vcpus (bench/cpuhp.ts).
//  9. in the same sandbox boot: memory hotplug, +512 MiB by ACPI and by virtio-mem: request to the
//     guest's MemTotal, QEMU q35 pc-dimm / virtio-mem-pci vs Stratovisor vm.resize desired_ram
//     (bench/memhp.ts).
// Env: STV_BENCH_RUNS (5), STV_BENCH_VMMS (comma list: qemu-microvm, qemu-q35, stratovisor),
// STV_BENCH_ONLY=pio|api|boot|io|fs|vsock|snapshot|cpuhp|memhp (a comma list runs several), and for io: STV_BENCH_IO_MIB (64),
// STV_BENCH_RAND_S (5), STV_BENCH_NET_MIB (32).
import { join } from 'node:path';
import { ensureGuestImages, REPO } from './lib/images.mjs';
import { ensureNodeModules, build, log } from './lib/setup.mjs';
import { runInSandbox, shq, hostFacts, chooseSandboxMode, spawnWait } from './lib/sandbox.mjs';

ensureNodeModules();
if (!build()) process.exit(1);
const images = ensureGuestImages({ log });
const runs = Number(process.env.STV_BENCH_RUNS ?? 5);
const KINDS = ['pio', 'api', 'boot', 'io', 'fs', 'vsock', 'snapshot', 'cpuhp', 'memhp'];
const only = process.env.STV_BENCH_ONLY ? process.env.STV_BENCH_ONLY.split(',') : null;
for (const k of only ?? []) {
  if (!KINDS.includes(k)) {
    log(`STV_BENCH_ONLY: unknown benchmark '${k}' (known: ${KINDS.join(', ')})`);
    process.exit(2);
  }
}
const want = (k) => !only || only.includes(k);
let status = 0;

// Port-I/O exits: on the host's /dev/kvm when it is hardware KVM (not PVM's), else in the sandbox below.
const hostKvm = chooseSandboxMode(hostFacts()).mode === 'direct';
if (want('pio') && hostKvm) {
  status = (await spawnWait(process.execPath, [join(REPO, 'dist', 'bench', 'pio.js')], { stdio: 'inherit' })) || status;
}
if (want('api')) {
  const { apiBench } = await import(join(REPO, 'dist', 'bench', 'api.js'));
  const { fmt, table } = await import(join(REPO, 'dist', 'bench', 'stats.js'));
  const a = await apiBench(runs);
  console.log('\n' + table(['REST API (host, stratovisor --api-socket)', 'value'], [
    ['process start to vmm.ping answered (median)', `${fmt(a.startToPingMs)} ms`],
    [`vmm.ping round trip, ${a.clients} clients: p50`, `${fmt(a.p50Us)} us`],
    [`vmm.ping round trip, ${a.clients} clients: p99`, `${fmt(a.p99Us)} us`],
    ['vmm.ping throughput', `${fmt(a.requestsPerSec)} req/s`],
  ]));
}
// The boot and I/O benchmarks share one sandbox boot, one after the other.
const inSandbox = [...(hostKvm ? [] : ['pio']), 'boot', 'io', 'fs', 'vsock', 'snapshot', 'cpuhp', 'memhp'].filter(want).map((k) => join(REPO, 'dist', 'bench', `${k}.js`));
if (inSandbox.length) {
  process.env.STV_GUEST_BZIMAGE = images.bzImage;
  process.env.STV_GUEST_VMLINUX = images.vmlinux;
  process.env.STV_GUEST_INITRAMFS = images.initramfs;
  const script = inSandbox.map((f) => `${shq(process.execPath)} ${shq(f)} || rc=1`).join('; ') + '; exit ${rc:-0}';
  status = (await runInSandbox(['/bin/sh', '-c', `rc=0; ${script}`])) || status;
}
process.exit(status);
