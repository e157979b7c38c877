// Unit tests of the test bench's own pieces: the sandbox's path choice, command script quoting,
// the cpio writer and module ordering, and the vmlinux extraction's input checks.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, readFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chooseSandboxMode, commandScript, parseSystemMap, shq, summarizeRegisters, stuckCpu, symbolize } from '../lib/sandbox.mjs';
import { CpioWriter } from '../lib/cpio.mjs';
import { parseModulesDep, resolveModules } from '../lib/modules.mjs';
import { extractVmlinux, ImageError } from '../lib/images.mjs';

const cpu = (flags) => `processor\t: 0\nflags\t\t: fpu vme ${flags}\n`;

test('sandbox runs directly when the CPU has vmx and /dev/kvm is usable', () => {
  assert.equal(chooseSandboxMode({ cpuinfo: cpu('lm vmx sse'), kvmUsable: true }).mode, 'direct');
  assert.equal(chooseSandboxMode({ cpuinfo: cpu('lm svm sse'), kvmUsable: true }).mode, 'direct');
});

test('sandbox nests when the CPU lacks vmx/svm (PVM) even if /dev/kvm opens', () => {
  const r = chooseSandboxMode({ cpuinfo: cpu('lm hypervisor sse'), kvmUsable: true });
  assert.equal(r.mode, 'nested');
  assert.match(r.reason, /neither vmx nor svm/);
});

test('sandbox nests when vmx is present but /dev/kvm is not usable', () => {
  assert.equal(chooseSandboxMode({ cpuinfo: cpu('vmx'), kvmUsable: false }).mode, 'nested');
});

test('STV_SANDBOX forces a path and rejects unknown values', () => {
  assert.equal(chooseSandboxMode({ cpuinfo: cpu(''), kvmUsable: false, force: 'direct' }).mode, 'direct');
  assert.equal(chooseSandboxMode({ cpuinfo: cpu('vmx'), kvmUsable: true, force: 'nested' }).mode, 'nested');
  assert.throws(() => chooseSandboxMode({ cpuinfo: cpu(''), kvmUsable: false, force: 'maybe' }), /STV_SANDBOX must be/);
});

test('the command script keeps cwd, environment and argv exactly', () => {
  const dir = mkdtempSync(join(tmpdir(), 'stv-sb-'));
  const argv = ['sh', '-c', 'printf "%s|" "$0" "$1" "$WEIRD" "$(pwd)"', "it's", 'a "b" $c'];
  const script = commandScript({ cwd: dir, env: { WEIRD: "x'y\"z $HOME", 'BAD-NAME': 'skip' }, argv });
  assert.doesNotMatch(script, /BAD-NAME/);
  const out = execFileSync('sh', ['-c', script], { encoding: 'utf8' });
  assert.equal(out, `it's|a "b" $c|x'y"z $HOME|${dir}|`);
  assert.equal(shq("a'b"), `'a'\\''b'`);
});

test('cpio writer output unpacks with busybox cpio', (t) => {
  const bb = ['/bin/busybox', '/usr/bin/busybox'].find((p) => existsSync(p));
  if (!bb) return t.skip('busybox is not installed');
  const w = new CpioWriter();
  w.dir('etc');
  w.file('etc/hello', 'hello world\n', 0o644);
  w.symlink('etc/link', 'hello');
  w.file('init', '#!/bin/sh\n', 0o755);
  const archive = w.finish();
  assert.equal(archive.length % 512, 0);
  assert.throws(() => { const x = new CpioWriter(); x.file('a', ''); x.file('a', ''); }, /duplicate entry a/);
  const dir = mkdtempSync(join(tmpdir(), 'stv-cpio-'));
  const r = spawnSync(bb, ['cpio', '-i', '-d'], { cwd: dir, input: archive });
  assert.equal(r.status, 0, String(r.stderr));
  assert.equal(readFileSync(join(dir, 'etc/hello'), 'utf8'), 'hello world\n');
  assert.equal(readFileSync(join(dir, 'etc/link'), 'utf8'), 'hello world\n');
});

test('modules resolve dependencies first, once, and name what is missing', () => {
  const dep = parseModulesDep([
    'kernel/a/virtio_pci.ko: kernel/a/virtio_ring.ko kernel/a/virtio.ko',
    'kernel/a/virtio_ring.ko:',
    'kernel/a/virtio.ko: kernel/a/virtio_ring.ko',
    'kernel/b/virtio-blk.ko: kernel/a/virtio_ring.ko kernel/a/virtio.ko',
  ].join('\n'));
  const order = resolveModules(dep, ['virtio_pci', 'virtio-blk']).map((m) => m.name);
  assert.deepEqual(order, ['virtio_ring', 'virtio', 'virtio_pci', 'virtio_blk']);
  assert.deepEqual(resolveModules(dep, ['virtio_pci'], new Set(['virtio'])).map((m) => m.name), ['virtio_ring', 'virtio_pci']);
  assert.throws(() => resolveModules(dep, ['nope']), /kernel module 'nope' not found/);
});

test('vmlinux extraction rejects a non-kernel and a truncated bzImage', () => {
  assert.throws(() => extractVmlinux(Buffer.alloc(4096)), (e) => e instanceof ImageError && /HdrS/.test(e.message));
  const hdr = Buffer.alloc(0x300);
  hdr.writeUInt32LE(0x53726448, 0x202);
  hdr[0x1f1] = 4;
  hdr.writeUInt32LE(0x100, 0x248);
  hdr.writeUInt32LE(0x100000, 0x24c);
  assert.throws(() => extractVmlinux(hdr), /past the end/);
});

test('a killed sandbox is summarized one line per CPU from QEMU\'s "info registers -a"', () => {
  const cpu = (n, rip, hlt, efer) => [
    `CPU#${n}`,
    'RAX=0000000000000000 RBX=0000000000000000 RCX=0000000000000000 RDX=0000000000000000',
    `RIP=${rip} RFL=00000046 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=${hlt}`,
    'CR0=80000011 CR2=0000000007200000 CR3=0000000004f77000 CR4=00001060',
    `EFER=${efer}`,
  ].join('\n');
  const dump = `QEMU 7.2.22 monitor - type 'help' for more information\n(qemu) info registers -a\n\n${cpu(0, '0000000004f3a4ec', 0, '0000000000001500')}\n${cpu(1, 'ffffffff86e592eb', 1, '0000000000001d01')}\n(qemu) `;
  assert.equal(summarizeRegisters(dump), [
    'CPU#0: RIP=0000000004f3a4ec CPL=0 HLT=0 CR3=0000000004f77000 EFER=0000000000001500',
    'CPU#1: RIP=ffffffff86e592eb CPL=0 HLT=1 CR3=0000000004f77000 EFER=0000000000001d01',
  ].join('\n'));
  assert.equal(summarizeRegisters('(qemu) '), '(no CPU state in the monitor output)');
  // With the kernel's System.map (the sandbox boots nokaslr): kernel-mode RIPs name their function.
  const syms = parseSystemMap([
    'ffffffff81000000 T _text',
    'ffffffff86e59000 t svm_vcpu_run',
    'ffffffff86e5a000 T next_fn',
    'ffffffff86e5b000 D some_data',
  ].join('\n'));
  assert.equal(summarizeRegisters(dump, syms).split('\n')[1], 'CPU#1: RIP=ffffffff86e592eb (svm_vcpu_run+0x2eb) CPL=0 HLT=1 CR3=0000000004f77000 EFER=0000000000001d01');
  assert.equal(symbolize(syms, 0xffffffff80000000n), null);
  assert.equal(symbolize(syms, 0xffffffff86e5a010n), 'next_fn+0x10');
});

test('a sandbox CPU stuck for good is recognised from its kernel\'s console; short lockups and benign lines are not', () => {
  const lockup = (cpu, s, who) => `[   48.377052] watchdog: BUG: soft lockup - CPU#${cpu} stuck for ${s}s! [${who}]`;
  assert.equal(stuckCpu([lockup(0, 27, 'qemu-system-x86:138'), lockup(0, 53, 'qemu-system-x86:138'), lockup(0, 105, 'qemu-system-x86:138')].join('\n')), true);
  assert.equal(stuckCpu(lockup(1, 26, 'khugepaged:36')), false);
  assert.equal(stuckCpu('[   16.554211] kvm [128]: vcpu0, guest rIP: 0xffffffffa187e744 Unhandled WRMSR(0xc0010007) = 0xffff'), false);
  assert.equal(stuckCpu('@@sandbox:init@@\n@@sandbox:run@@\n'), false);
  // Stuck for longer than the sandbox has been running: its clock jumped (the host was paused).
  assert.equal(stuckCpu(lockup(0, 23455, 'node:655'), 900), false);
  assert.equal(stuckCpu(lockup(0, 105, 'node:655'), 900), true);
});
