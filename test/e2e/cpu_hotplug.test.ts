// CPU hotplug (ACPI, src/devices/cpu_hotplug.ts, as Cloud Hypervisor on x86) on a running Debian
// guest: booted with 1 of max 4 vCPUs the guest sees 4 possible CPUs; vm.resize desired_vcpus 4
// plugs vCPUs 1-3 in (the guest gets Notify(Cxxx, 1), adds the CPUs and onlines them when told
// to through sysfs: nproc 4); resize to 2 asks it to eject vCPUs 3 and 2: it offlines each and
// runs _EJ0, the VMM parks their threads; resize to 3 plugs vCPU 2 in again. vm.info's
// boot_vcpus follows. Then pause, snapshot and restore in a second VMM: the restored guest has its
// 3 CPUs online and takes a fourth. Last, a guest that refuses ejects (processor hotplug disabled
// in sysfs) leaves the removal pending: the next vm.resize answers 429, as CH does.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { guestImages } from './lib/guest.js';
import { VmmProcess as Vmm } from './lib/vmm_process.js';
import { scratchDir } from './lib/virtio.js';
import { waitForPing } from '../../src/api/testing/spawn_vmm.js';

const img = guestImages();
const TIMEOUT_MS = 480_000;
const CPU = '/sys/devices/system/cpu';

test('vm.resize desired_vcpus: hot-add, online in the guest, eject, re-plug, snapshot/restore with hot-added vCPUs, 429 while a removal is pending', { timeout: TIMEOUT_MS }, async (t) => {
  const dir = scratchDir('cpuhp');
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const vmm = new Vmm('cpu-hotplug', join(dir, 'api.sock'), [
    '--kernel', img.bzImage, '--initramfs', img.initramfs,
    '--cmdline', 'console=ttyS0 quiet stv.scenario=shell',
    '--cpus', 'boot=1,max=4', '--memory', 'size=256M', '--serial', 'tty', '--console', 'off', '-v',
  ]);
  t.after(() => vmm.end());
  await waitForPing(vmm.sock, vmm.child);
  await vmm.waitFor(/stv# /, 0, 'the guest shell prompt');

  const cpus = async (v: Vmm, what: string) => {
    const m = await v.shell(`echo "CPUS $(cat ${CPU}/possible) $(cat ${CPU}/present) $(cat ${CPU}/online) $(grep -c ^processor /proc/cpuinfo) END"`, /CPUS (\S+) (\S+) (\S+) (\d+) END/, what);
    return { possible: m[1], present: m[2], online: m[3], cpuinfo: Number(m[4]) };
  };
  const bootVcpus = async (v: Vmm) => (JSON.parse((await v.api('GET', 'vm.info')).text) as { config: { cpus: { boot_vcpus: number; max_vcpus: number } } }).config.cpus;
  /** Wait (in the guest, bounded) until cpuN's sysfs directory exists or not, then online the given CPUs. */
  const waitCpu = async (v: Vmm, n: number, there: boolean, what: string) => {
    const o = await v.shellOutput(`i=0; while [ ${there ? '!' : ''} -e ${CPU}/cpu${n} ] && [ $i -lt 60 ]; do sleep 1; i=$((i+1)); done; [ -e ${CPU}/cpu${n} ] && echo "CPU${n}""-THERE" || echo "CPU${n}""-GONE"`, new RegExp(`CPU${n}-(THERE|GONE)`), what);
    assert.match(o.text, new RegExp(`CPU${n}-${there ? 'THERE' : 'GONE'}`), `${what}\n${v.explain()}`);
  };
  const online = (v: Vmm, ids: number[]) => v.shell(`${ids.map((n) => `echo 1 > ${CPU}/cpu${n}/online`).join('; ')}; echo ON""LINED`, /\bONLINED\b/, `online ${ids.join(', ')}`);
  const waitLog = async (v: Vmm, re: RegExp, what: string) => {
    for (let i = 0; i < 120 && !re.test(v.err); i++) await new Promise((r) => setTimeout(r, 500));
    assert.match(v.err, re, `${what}\n${v.explain()}`);
  };

  // 1. The MADT's online-capable entries are the guest's hot-plug headroom.
  assert.deepEqual(await cpus(vmm, 'the CPUs at boot'), { possible: '0-3', present: '0', online: '0', cpuinfo: 1 });

  // 2. Up to 4: the guest adds CPUs 1-3 (device check), onlines them when told.
  let r = await vmm.api('PUT', 'vm.resize', { desired_vcpus: 4 });
  assert.equal(r.status, 204, `vm.resize 4: ${r.text}`);
  assert.equal((await bootVcpus(vmm)).boot_vcpus, 4);
  for (const n of [3, 2, 1]) await waitCpu(vmm, n, true, `cpu${n} added by the guest`);
  await online(vmm, [1, 2, 3]);
  assert.deepEqual(await cpus(vmm, 'the CPUs after the hot-add'), { possible: '0-3', present: '0-3', online: '0-3', cpuinfo: 4 });
  const nproc = await vmm.shell('echo "NPROC $(nproc) END"', /NPROC (\d+) END/, 'nproc');
  assert.equal(nproc[1], '4', 'the guest\'s nproc after the hot-add');

  // 3. Back to 2: the guest offlines CPUs 3 and 2 and ejects them; their threads park.
  r = await vmm.api('PUT', 'vm.resize', { desired_vcpus: 2 });
  assert.equal(r.status, 204, `vm.resize 2: ${r.text}`);
  for (const n of [3, 2]) {
    await waitLog(vmm, new RegExp(`vCPU ${n}: removed \\(ejected by the guest\\)`), `the guest ejected vCPU ${n}`);
    await waitCpu(vmm, n, false, `cpu${n} gone from the guest`);
  }
  assert.deepEqual(await cpus(vmm, 'the CPUs after the eject'), { possible: '0-3', present: '0-1', online: '0-1', cpuinfo: 2 });
  assert.equal((await bootVcpus(vmm)).boot_vcpus, 2);
  for (const n of [3, 2]) await waitLog(vmm, new RegExp(`vCPU ${n} thread parked \\(ejected\\)`), `vCPU ${n}'s thread parked`);

  // 4. Up to 3 again: the same vCPU (its fd kept) comes back and runs.
  r = await vmm.api('PUT', 'vm.resize', { desired_vcpus: 3 });
  assert.equal(r.status, 204, `vm.resize 3 again: ${r.text}`);
  await waitCpu(vmm, 2, true, 'cpu2 added again');
  await online(vmm, [2]);
  assert.deepEqual(await cpus(vmm, 'the CPUs after the re-plug'), { possible: '0-3', present: '0-2', online: '0-2', cpuinfo: 3 });
  r = await vmm.api('PUT', 'vm.resize', { desired_vcpus: 5 });
  assert.equal(r.status, 400, `above max_vcpus: ${r.text}`);

  // The guest's ACPI interpreter had nothing to say about the CPU hotplug AML.
  const dm = await vmm.shellOutput('dmesg | grep -i -E "acpi (error|warning|exception)|_SB.CPUS|smpboot" | tail -20; echo DM""END', /\bDMEND\b/, 'the guest\'s kernel log');
  t.diagnostic(dm.text);
  assert.doesNotMatch(dm.text, /ACPI (Error|Exception|Warning)[^\n]*(CPUS|C00\d|CSCN|CSTA|CMAT|CEJ0)/i, 'no ACPI error about the CPU hotplug methods');

  // 5. A snapshot with hot-added vCPUs, restored in a second VMM.
  const snap = join(dir, 'snap');
  mkdirSync(snap);
  await vmm.shell('X=$RANDOM$RANDOM; echo mark-$X', /mark-(\d+)\s/, 'a mark before the snapshot');
  assert.equal((await vmm.api('PUT', 'vm.pause')).status, 204);
  r = await vmm.api('PUT', 'vm.resize', { desired_vcpus: 4 });
  assert.equal(r.status, 405, `resize while paused: ${r.text}`);
  r = await vmm.api('PUT', 'vm.snapshot', { destination_url: pathToFileURL(snap).href });
  assert.equal(r.status, 204, `vm.snapshot: ${r.text}\n${vmm.explain()}`);
  await vmm.api('PUT', 'vmm.shutdown').catch(() => undefined);
  await vmm.exited;

  const vmm2 = new Vmm('cpu-hotplug-restore', join(dir, 'api2.sock'), ['-v']);
  t.after(() => vmm2.end());
  await waitForPing(vmm2.sock, vmm2.child);
  r = await vmm2.api('PUT', 'vm.restore', { source_url: pathToFileURL(snap).href });
  assert.equal(r.status, 204, `vm.restore: ${r.text}\n${vmm2.explain()}`);
  assert.deepEqual(await bootVcpus(vmm2), { ...(await bootVcpus(vmm2)), boot_vcpus: 3, max_vcpus: 4 });
  assert.equal((await vmm2.api('PUT', 'vm.resume')).status, 204);
  assert.deepEqual(await cpus(vmm2, 'the restored guest\'s CPUs'), { possible: '0-3', present: '0-2', online: '0-2', cpuinfo: 3 });
  r = await vmm2.api('PUT', 'vm.resize', { desired_vcpus: 4 });
  assert.equal(r.status, 204, `vm.resize 4 after the restore: ${r.text}`);
  await waitCpu(vmm2, 3, true, 'cpu3 added to the restored guest');
  await online(vmm2, [3]);
  assert.deepEqual(await cpus(vmm2, 'the restored guest after a hot-add'), { possible: '0-3', present: '0-3', online: '0-3', cpuinfo: 4 });

  // 6. A guest that will not eject: the removal stays pending, the next resize answers 429.
  await vmm2.shell('echo 0 > /sys/firmware/acpi/hotplug/processor/enabled; echo DIS""ABLED', /\bDISABLED\b/, 'processor ejects disabled in the guest');
  r = await vmm2.api('PUT', 'vm.resize', { desired_vcpus: 3 });
  assert.equal(r.status, 204, `vm.resize 3: ${r.text}`);
  r = await vmm2.api('PUT', 'vm.resize', { desired_vcpus: 2 });
  assert.equal(r.status, 429, `a resize while vCPU 3's removal is pending: ${r.status} ${r.text}`);
  assert.match(r.text, /vCPU removal is still pending/);
  assert.deepEqual(await cpus(vmm2, 'the CPUs of a guest that refused the eject'), { possible: '0-3', present: '0-3', online: '0-3', cpuinfo: 4 });

  await vmm2.shell('poweroff', /@@stv:poweroff@@/, 'the guest powered off');
  await vmm2.api('PUT', 'vmm.shutdown').catch(() => undefined);
  await vmm2.exited;
  for (const v of [vmm, vmm2]) assert.doesNotMatch(v.err, /device error|TypeError|RangeError|thread failed/, `no errors in the log\n${v.explain()}`);
});
