// virtio-fs benchmark, run inside scripts/kvm-sandbox by `npm run bench` (alone:
// STV_BENCH_ONLY=fs). QEMU q35 (`-object memory-backend-memfd,…,share=on -numa node,memdev=mem
// -chardev socket,… -device vhost-user-fs-pci,…`) and Stratovisor (`--memory …,shared=on --fs
// tag=myfs,socket=…`) boot the same kernel and initramfs (2 vCPUs, 512 MiB), each with its own
// fresh virtiofsd (Debian's /usr/lib/qemu/virtiofsd, cache=none) sharing an empty directory on the
// sandbox's tmpfs, alternating VMMs run by run. The guest (guest/scenarios/fsbench.sh) writes then
// reads STV_BENCH_FS_MIB MiB sequentially (1 MiB O_DIRECT requests). Medians and the
// Stratovisor/QEMU ratio (higher is better); raw samples in .cache/bench/fs.json.
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { explain, guestImages, REPO, runGuest } from '../test/e2e/lib/guest.js';
import { qemuArgs } from '../test/e2e/lib/qemu.js';
import { HostService, stopAll } from '../test/e2e/lib/services.js';
import { STRATOVISOR, stratovisorArgs } from '../test/e2e/lib/stratovisor.js';
import { scratchDir } from '../test/e2e/lib/virtio.js';
import { fmt, median, ratio, table } from './stats.js';

const FS_MIB = Number(process.env.STV_BENCH_FS_MIB ?? 64);
const VIRTIOFSD = '/usr/lib/qemu/virtiofsd';
const QEMU = '/usr/bin/qemu-system-x86_64';

type Vmm = 'qemu-q35' | 'stratovisor';
const METRICS = [
  ['seqwrite', `virtio-fs sequential write, MB/s (1 MiB O_DIRECT, ${FS_MIB} MiB, virtiofsd cache=none)`],
  ['seqread', `virtio-fs sequential read, MB/s (1 MiB O_DIRECT, ${FS_MIB} MiB)`],
] as const;
type Metric = (typeof METRICS)[number][0];
type Sample = Record<Metric, number> & { ok: boolean };

function command(vmm: Vmm, socket: string): [string, string[]] {
  const img = guestImages();
  const extra = `stv.fs_mib=${FS_MIB}`;
  if (vmm === 'qemu-q35') {
    const args = qemuArgs({ machine: 'q35', kernel: img.bzImage, initramfs: img.initramfs, cpus: 2, memMiB: 512, scenario: 'fsbench', extraCmdline: extra });
    args.push('-object', 'memory-backend-memfd,id=mem,size=512M,share=on', '-numa', 'node,memdev=mem',
      '-chardev', `socket,id=c,path=${socket}`, '-device', 'vhost-user-fs-pci,chardev=c,tag=myfs');
    return [QEMU, args];
  }
  const args = stratovisorArgs({
    kernel: img.bzImage, initramfs: img.initramfs, cpus: 2, memMiB: 512, scenario: 'fsbench', extraCmdline: extra,
    extraArgs: ['--fs', `tag=myfs,socket=${socket},num_queues=1,queue_size=1024`],
  }).map((a) => (a === 'size=512M' ? 'size=512M,shared=on' : a));
  return [process.execPath, args];
}

async function once(vmm: Vmm, run: number): Promise<Sample> {
  const dir = scratchDir(`bench-fs-${vmm}`);
  const shared = join(dir, 'shared');
  mkdirSync(shared);
  const socket = join(dir, 'vfsd.sock');
  let vfsd: HostService | null = null;
  const s = { ok: false, seqwrite: NaN, seqread: NaN } as Sample;
  try {
    vfsd = await HostService.start({
      name: `bench-fs-virtiofsd-${vmm}-${run}`, cmd: VIRTIOFSD, readyPath: socket,
      args: [`--socket-path=${socket}`, '-o', `source=${shared}`, '-o', 'cache=none', '-o', 'sandbox=chroot'],
    });
    const [cmd, args] = command(vmm, socket);
    const r = await runGuest(cmd, args, { name: `bench-fs-${vmm}-${run}`, timeoutMs: 600_000 });
    for (const [m] of METRICS) {
      const d = r.markers.find((x) => x.event === `io-${m}`)?.data;
      s[m] = d === undefined ? NaN : Number(d);
    }
    s.ok = METRICS.every(([m]) => Number.isFinite(s[m])) && r.exitCode === 0 && r.markers.some((m) => m.event === 'fsbench-done');
    if (!s.ok) process.stderr.write(`bench: fs: ${vmm} run ${run} incomplete: ${r.markers.filter((m) => m.event === 'io-error').map((m) => m.data).join('; ') || 'no error marker'}\n${explain(r, 12)}\n${vfsd.explain(8)}\n`);
  } finally {
    await stopAll(vfsd);
    rmSync(dir, { recursive: true, force: true });
  }
  return s;
}

export async function main(): Promise<void> {
  const runs = Number(process.env.STV_BENCH_RUNS ?? 5);
  const vmms: Vmm[] = [];
  if (!existsSync(VIRTIOFSD)) { process.stderr.write(`bench: fs: skipped: ${VIRTIOFSD} is missing (Debian package qemu-system-common)\n`); return; }
  if (existsSync(QEMU) && existsSync('/dev/kvm')) vmms.push('qemu-q35');
  else process.stderr.write('bench: fs: skipping qemu-q35: no qemu-system-x86_64 or /dev/kvm\n');
  if (existsSync(STRATOVISOR)) vmms.push('stratovisor');
  const samples = new Map<Vmm, Sample[]>(vmms.map((v) => [v, []]));
  for (let i = 0; i < runs; i++) {
    for (const v of vmms) {
      const s = await once(v, i);
      samples.get(v)!.push(s);
      process.stderr.write(`bench: fs run ${i + 1}/${runs} ${v}: ${METRICS.map(([m]) => `${m} ${fmt(s[m], 1)}`).join(', ')}\n`);
    }
  }
  const med = (v: Vmm, m: Metric) => median((samples.get(v) ?? []).map((s) => s[m]));
  const both = samples.has('qemu-q35') && samples.has('stratovisor');
  const rows = METRICS.map(([m, label]) => [label, ...vmms.map((v) => fmt(med(v, m), 1)), ...(both ? [ratio(med('stratovisor', m), med('qemu-q35', m))] : [])]);
  rows.push(['runs with every figure', ...vmms.map((v) => `${samples.get(v)!.filter((s) => s.ok).length}/${runs}`), ...(both ? [''] : [])]);
  console.log(`\n${table(['virtio-fs (2 vCPU, 512 MiB shared, inside the KVM sandbox)', ...vmms, ...(both ? ['stratovisor vs q35'] : [])], rows)}\n(medians of ${runs} alternating runs; higher is better; the same virtiofsd for both)`);
  const out = join(REPO, '.cache', 'bench');
  mkdirSync(out, { recursive: true });
  writeFileSync(join(out, 'fs.json'), JSON.stringify(Object.fromEntries(samples), null, 2));
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.stack : e);
  process.exitCode = 1;
});
