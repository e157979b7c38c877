// Memory hotplug benchmark, run inside scripts/kvm-sandbox by `npm run bench` (STV_BENCH_ONLY=
// memhp): 512 MiB of RAM, then 512 MiB added while the guest runs, by ACPI and by virtio-mem, in
// QEMU q35 and in Stratovisor, the same kernel and initramfs (scenario "shell", the kernel booted
// with memhp_default_state=online so that added memory is onlined as it arrives):
//   - ACPI: QEMU `-m 512M,slots=4,maxmem=2G`, QMP object-add memory-backend-ram + device_add
//     pc-dimm; Stratovisor `--memory size=512M,hotplug_size=1G`, vm.resize desired_ram=1 GiB;
//   - virtio-mem: QEMU `-m 512M,maxmem=2G` and a virtio-mem-pci of 512 MiB, QMP qom-set
//     requested-size; Stratovisor `--memory size=512M,hotplug_method=virtio-mem,hotplug_size=512M`,
//     vm.resize desired_ram=1 GiB.
// Each from the host's request to the guest's MemTotal grown by 480 MiB (a shell loop polling
// /proc/meminfo every 50 ms, already running when the request went out). Alternating VMMs run by
// run; medians of STV_BENCH_RUNS (default 3 here: each run boots).
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { guestImages, REPO } from '../test/e2e/lib/guest.js';
import { qemuArgs } from '../test/e2e/lib/qemu.js';
import { STRATOVISOR } from '../test/e2e/lib/stratovisor.js';
import { apiRequest } from '../src/cli/remote.js';
import { waitForPing } from '../src/api/testing/spawn_vmm.js';
import { median, fmt, ratio, table } from './stats.js';
import { Proc, Qmp } from './procs.js';

const QEMU = '/usr/bin/qemu-system-x86_64';
const MiB = 1024 * 1024;
const ADD = 512 * MiB;
const CMDLINE = 'memhp_default_state=online';
const img = guestImages();

type Method = 'acpi' | 'virtio-mem';

async function memTotalKb(p: Proc): Promise<number> {
  const mark = p.out.length;
  p.child.stdin.write('echo "MEM""TOTAL $(grep MemTotal /proc/meminfo | tr -s " " | cut -d" " -f2) E""ND"\n');
  await p.waitFor(/MEMTOTAL \d+ END/, mark);
  return Number(/MEMTOTAL (\d+) END/.exec(p.out.slice(mark))![1]);
}

/** ms from `request` to MemTotal grown by 480 MiB. */
async function added(p: Proc, request: () => Promise<void>): Promise<number> {
  const want = (await memTotalKb(p)) + (480 * MiB) / 1024;
  return p.timed(`[ $(grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2) -ge ${want} ]`, request);
}

async function qemuRun(dir: string, method: Method): Promise<number> {
  const qmpPath = join(dir, 'qmp.sock');
  const args = qemuArgs({ machine: 'q35', kernel: img.bzImage, initramfs: img.initramfs, cpus: 1, memMiB: 512, scenario: 'shell', extraCmdline: CMDLINE });
  args[args.indexOf('-m') + 1] = method === 'acpi' ? '512M,slots=4,maxmem=2G' : '512M,maxmem=2G';
  if (method === 'virtio-mem') args.push('-object', `memory-backend-ram,id=vmem0,size=${ADD}`, '-device', 'virtio-mem-pci,id=vm0,memdev=vmem0,requested-size=0');
  const p = new Proc(QEMU, [...args, '-qmp', `unix:${qmpPath},server=on,wait=off`]);
  try {
    await p.waitFor(/stv# /, 0);
    const q = await Qmp.connect(qmpPath);
    try {
      return await added(p, async () => {
        if (method === 'acpi') {
          await q.cmd('object-add', { 'qom-type': 'memory-backend-ram', id: 'mem1', size: ADD });
          await q.cmd('device_add', { driver: 'pc-dimm', id: 'dimm1', memdev: 'mem1' });
        } else {
          await q.cmd('qom-set', { path: 'vm0', property: 'requested-size', value: ADD });
        }
      });
    } finally {
      q.close();
    }
  } finally {
    await p.kill();
  }
}

async function stratovisorRun(dir: string, method: Method): Promise<number> {
  const sock = join(dir, 'api.sock');
  const memory = method === 'acpi' ? 'size=512M,hotplug_size=1G' : 'size=512M,hotplug_method=virtio-mem,hotplug_size=512M';
  const p = new Proc(process.execPath, [STRATOVISOR, '--api-socket', `path=${sock}`, '--kernel', img.bzImage, '--initramfs', img.initramfs,
    '--cmdline', `console=ttyS0 quiet ${CMDLINE} stv.scenario=shell`, '--cpus', 'boot=1', '--memory', memory, '--serial', 'tty', '--console', 'off']);
  try {
    await waitForPing(sock, p.child);
    await p.waitFor(/stv# /, 0);
    return await added(p, async () => {
      const r = await apiRequest(sock, 'PUT', 'vm.resize', JSON.stringify({ desired_ram: 512 * MiB + ADD }));
      if (r.status !== 204) throw new Error(`vm.resize: ${r.status} ${r.text}`);
    });
  } finally {
    await p.kill();
  }
}

async function main(): Promise<void> {
  const runs = Number(process.env.STV_BENCH_RUNS ?? 3);
  const vmms: Array<[string, (d: string, m: Method) => Promise<number>]> = [['stratovisor', stratovisorRun]];
  if (existsSync(QEMU)) vmms.unshift(['qemu-q35', qemuRun]);
  else process.stderr.write(`bench: skipping qemu-q35: ${QEMU} not installed\n`);
  const methods: Method[] = ['acpi', 'virtio-mem'];
  const results: Record<string, number[]> = {};
  for (let i = 0; i < runs; i++) {
    for (const method of methods) {
      for (const [name, run] of vmms) {
        const dir = mkdtempSync(join(process.env.TMPDIR ?? tmpdir(), 'stv-bench-memhp-'));
        try {
          const ms = await run(dir, method);
          (results[`${name} ${method}`] ??= []).push(ms);
          process.stderr.write(`bench: memhp ${name} ${method} run ${i + 1}/${runs}: +512 MiB in ${fmt(ms)} ms\n`);
        } catch (e) {
          process.stderr.write(`bench: memhp ${name} ${method} run ${i + 1} failed: ${(e as Error).message}\n`);
        } finally {
          rmSync(dir, { recursive: true, force: true });
        }
      }
    }
  }
  const med = (k: string) => median(results[k] ?? []);
  const rows = methods.flatMap((m) => vmms.map(([name]) => [`${name} ${m}`, `${(results[`${name} ${m}`] ?? []).length}/${runs}`, fmt(med(`${name} ${m}`)), ratio(med(`${name} ${m}`), med(`qemu-q35 ${m}`))]));
  console.log(`\n${table(['memory hotplug (+512 MiB to 512 MiB, shell guest)', 'ok', 'ms to MemTotal +480 MiB', 'vs QEMU'], rows)}\n(medians inside the KVM sandbox; from the request to the guest's /proc/meminfo: QEMU q35 QMP pc-dimm / virtio-mem-pci requested-size, Stratovisor vm.resize desired_ram)`);
  const out = join(REPO, '.cache', 'bench');
  mkdirSync(out, { recursive: true });
  writeFileSync(join(out, 'memhp.json'), JSON.stringify(results, null, 2));
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.stack : e);
  process.exitCode = 1;
});
