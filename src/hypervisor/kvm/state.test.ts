// Saved vCPU/VM state against this host's /dev/kvm: a guest stopped mid-computation, saved
// (through the JSON file form), restored into a FRESH VM and vCPU, finishes with the same
// result as an uninterrupted run; every state part survives get -> set -> get; LAPIC timers
// (periodic and TSC-deadline) and the irqchip/PIT survive a restore.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import * as libc from '../../sys/libc.js';
import { VmExitKind } from '../hypervisor.js';
import type { VcpuState, VmState } from '../hypervisor.js';
import { parseHypervisorState, stringifyHypervisorState } from '../state_json.js';
import { restoreHypervisorState, saveHypervisorState } from '../state.js';
import * as abi from './abi.js';
import { KvmHypervisor } from './kvm.js';
import { MSR_IA32_CR_PAT, MSR_IA32_SYSENTER_EIP, MSR_IA32_TSC, MSR_IA32_TSC_DEADLINE, MSR_LSTAR, MSR_MTRR_DEF_TYPE, MSR_STAR } from './msrs.js';
import { enterLongMode, kvmUnavailable } from './testguest.js';
import type { KvmVcpu } from './vcpu.js';
import type { KvmVm } from './vm.js';

const noKvm = kvmUnavailable();
function skipIfNoKvm(t: { skip: (m: string) => void }): boolean {
  if (noKvm === null) return false;
  console.log(`# skipped: ${noKvm}`);
  t.skip(noKvm);
  return true;
}

const MEM_SIZE = 2 << 20;
const CODE = 0x1000;
const PORT_CHECKPOINT = 0x80;
const PORT_DONE = 0x81;
const RESULTS = 0x8800;
const ARRAY = 0x9000;

// The computing guest (64-bit; GNU as, Intel syntax):
//     xor ecx, ecx; mov rbx, 0x0123456789abcdef; mov edi, 0x9000; mov r8, 6364136223846793005
//     pxor xmm0, xmm0; fninit; fld1; fldz
//   loop: inc ecx; imul rbx, r8; add rbx, rcx               ; LCG in rbx, counter in rcx
//     mov edx, ecx; and edx, 255; xor [rdi+rdx*8], rbx       ; 256-entry table in RAM
//     movq xmm2, rbx; paddq xmm0, xmm2; pshufd xmm0, xmm0, 0x4e   ; SSE accumulator
//     fadd st(0), st(1)                                      ; x87: st0 += 1.0
//     cmp ecx, 500; jne 1f; mov al, cl; out 0x80, al          ; checkpoint exit at i = 500
//   1: cmp ecx, 1000; jb loop
//     mov [0x8800], rbx; movdqu [0x8810], xmm0; fstp qword [0x8820]; fstp qword [0x8828]
//     mov al, 1; out 0x81, al; hlt
const COMPUTE = [
  0x31, 0xc9, 0x48, 0xbb, 0xef, 0xcd, 0xab, 0x89, 0x67, 0x45, 0x23, 0x01,
  0xbf, 0x00, 0x90, 0x00, 0x00, 0x49, 0xb8, 0x2d, 0x7f, 0x95, 0x4c, 0x2d,
  0xf4, 0x51, 0x58, 0x66, 0x0f, 0xef, 0xc0, 0xdb, 0xe3, 0xd9, 0xe8, 0xd9,
  0xee, 0xff, 0xc1, 0x49, 0x0f, 0xaf, 0xd8, 0x48, 0x01, 0xcb, 0x89, 0xca,
  0x81, 0xe2, 0xff, 0x00, 0x00, 0x00, 0x48, 0x31, 0x1c, 0xd7, 0x66, 0x48,
  0x0f, 0x6e, 0xd3, 0x66, 0x0f, 0xd4, 0xc2, 0x66, 0x0f, 0x70, 0xc0, 0x4e,
  0xd8, 0xc1, 0x81, 0xf9, 0xf4, 0x01, 0x00, 0x00, 0x75, 0x04, 0x88, 0xc8,
  0xe6, 0x80, 0x81, 0xf9, 0xe8, 0x03, 0x00, 0x00, 0x72, 0xc7, 0x48, 0x89,
  0x1c, 0x25, 0x00, 0x88, 0x00, 0x00, 0xf3, 0x0f, 0x7f, 0x04, 0x25, 0x10,
  0x88, 0x00, 0x00, 0xdd, 0x1c, 0x25, 0x20, 0x88, 0x00, 0x00, 0xdd, 0x1c,
  0x25, 0x28, 0x88, 0x00, 0x00, 0xb0, 0x01, 0xe6, 0x81, 0xf4,
];

/** A VM as the VMM builds one: in-kernel irqchip and PIT, one RAM slot at 0, one vCPU. */
interface Platform {
  vm: KvmVm;
  vcpu: KvmVcpu;
  mem: Uint8Array;
  close(): void;
}

function platform(kvm: KvmHypervisor, ram?: Uint8Array): Platform {
  const vm = kvm.createVm();
  const memAddr = libc.mmap(MEM_SIZE, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_PRIVATE | libc.MAP_ANONYMOUS | libc.MAP_NORESERVE, -1, 0);
  let vcpu: KvmVcpu | null = null;
  const close = (): void => {
    vcpu?.close();
    vm.close();
    libc.munmap(memAddr, MEM_SIZE);
  };
  try {
    vm.setTssAddress(0xfffbd000);
    vm.setIdentityMapAddress(0xfffbc000n);
    vm.createIrqChip();
    vm.createPit();
    const mem = new Uint8Array(libc.view(memAddr, MEM_SIZE));
    if (ram) mem.set(ram);
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0n, memorySize: MEM_SIZE, userspaceAddr: memAddr });
    vcpu = vm.createVcpu(0);
    return { vm, vcpu, mem, close };
  } catch (e) {
    close();
    throw e;
  }
}

const CPUID_1_ECX_TSC_DEADLINE = 1 << 24;
const CPUID_1_ECX_XSAVE = 1 << 26;
const CPUID_1_ECX_AVX = 1 << 28;

/** Fresh guest setup as a boot would do it: CPUID, LAPIC LINTs, long mode with SSE (and XSAVE). */
function bootGuest(kvm: KvmHypervisor, p: Platform, rip: number): void {
  const cpuid = kvm.getSupportedCpuid();
  // KVM emulates the TSC-deadline timer but leaves the bit to the VMM (as QEMU and CH set it).
  const l1 = cpuid.find((e) => e.function === 1);
  if (l1 !== undefined && kvm.capabilities().tscDeadlineTimer) l1.ecx = (l1.ecx | CPUID_1_ECX_TSC_DEADLINE) >>> 0;
  p.vcpu.setCpuid2(cpuid);
  p.vcpu.setupLapicLints();
  enterLongMode(p.vcpu, p.mem, rip);
  const s = p.vcpu.getSregs();
  const leaf1 = cpuid.find((e) => e.function === 1);
  const xsave = leaf1 !== undefined && (leaf1.ecx & CPUID_1_ECX_XSAVE) !== 0;
  s.cr4 |= 0x600n | (xsave ? 1n << 18n : 0n); // OSFXSR | OSXMMEXCPT (| OSXSAVE), SDM Vol. 3, 2.5
  p.vcpu.setSregs(s);
  if (xsave) p.vcpu.setXcrs([{ xcr: 0, value: (leaf1.ecx & CPUID_1_ECX_AVX) !== 0 ? 7n : 3n }]);
}

function json(v: unknown): string {
  return JSON.stringify(v, (_, x: unknown) => (typeof x === 'bigint' ? `0x${x.toString(16)}` : x instanceof Uint8Array ? `<${x.length} bytes>` : x));
}

/** Run until an OUT to `stopPort` (returns AL) ; OUTs to other ports are ignored. */
function runToPort(vcpu: KvmVcpu, stopPort: number): number {
  for (let exits = 0; exits < 100_000; exits++) {
    const k = vcpu.run();
    if (k === VmExitKind.IoOut) {
      if (vcpu.exit.port === stopPort) return vcpu.exit.data[0]!;
      continue;
    }
    if (k === VmExitKind.Intr) throw new Error('vCPU was kicked (watchdog) before the guest reached its port');
    throw new Error(`unexpected exit ${json(vcpu.decodeExit())} at rip 0x${vcpu.getRegs().rip.toString(16)}`);
  }
  throw new Error(`no OUT to 0x${stopPort.toString(16)} within 100000 exits`);
}

/** What the guest leaves behind: its result block and the table. */
function results(mem: Uint8Array): Uint8Array {
  return mem.slice(RESULTS, ARRAY + 256 * 8);
}

/** The state through its file form, as a snapshot would store it. */
function throughFile(vm: VmState, vcpu: VcpuState): { vm: VmState; vcpu: VcpuState } {
  const text = stringifyHypervisorState({ arch: 'x86_64', vm, vcpus: [vcpu] });
  const back = parseHypervisorState(text);
  assert.equal(back.vcpus.length, 1);
  return { vm: back.vm, vcpu: back.vcpus[0]! };
}

test('a guest stopped mid-computation, restored into a fresh VM, ends as an uninterrupted run', (t) => {
  if (skipIfNoKvm(t)) return;
  const kvm = KvmHypervisor.open();
  try {
    // Reference: one uninterrupted run.
    const ref = platform(kvm);
    let expected: Uint8Array;
    let expectedRegs: ReturnType<KvmVcpu['getRegs']>;
    try {
      ref.mem.set(COMPUTE, CODE);
      bootGuest(kvm, ref, CODE);
      assert.equal(runToPort(ref.vcpu, PORT_DONE), 1);
      expected = results(ref.mem);
      expectedRegs = ref.vcpu.getRegs();
    } finally {
      ref.close();
    }
    const dv = new DataView(expected.buffer);
    assert.equal(dv.getFloat64(0x20, true), 1000, 'x87 st0 counted to 1000');
    assert.equal(dv.getFloat64(0x28, true), 1, 'x87 st1');

    // Interrupted: stop at the checkpoint (i = 500), save everything, drop the VM.
    const src = platform(kvm);
    let saved: { vm: VmState; vcpu: VcpuState };
    let ram: Uint8Array;
    try {
      src.mem.set(COMPUTE, CODE);
      bootGuest(kvm, src, CODE);
      assert.equal(runToPort(src.vcpu, PORT_CHECKPOINT), 500 & 0xff);
      src.vcpu.completePendingExit();
      const all = saveHypervisorState(src.vm, [src.vcpu]);
      const vcpuState = all.vcpus[0]!;
      const vmState = all.vm;
      assert.equal(vcpuState.regs.rcx, 500n, 'stopped at i = 500');
      // The OUT is complete (RIP past it) only after completePendingExit (KVM API doc 5).
      assert.equal(vcpuState.regs.rip, BigInt(CODE + 0x56), 'RIP after the checkpoint OUT');
      assert.ok(vcpuState.msrs.length > 10, `saved ${vcpuState.msrs.length} MSRs`);
      assert.equal(vcpuState.msrs[0]!.index, MSR_IA32_TSC, 'TSC first');
      assert.notEqual(vmState.irqchip, null);
      assert.notEqual(vmState.pit, null);
      console.log(`# saved ${vcpuState.msrs.length} MSRs, XSAVE ${vcpuState.xsave?.length ?? 'none'} bytes, XCRs ${json(vcpuState.xcrs)}, TSC ${vcpuState.tscKhz} kHz`);
      saved = throughFile(vmState, vcpuState);
      ram = src.mem.slice();
    } finally {
      src.close();
    }

    // Restore into a fresh VM and vCPU; continue.
    const dst = platform(kvm, ram);
    try {
      assert.throws(() => restoreHypervisorState(dst.vm, [], { arch: 'x86_64', vm: saved.vm, vcpus: [saved.vcpu] }), /the snapshot has 1 vCPU, this VM 0/);
      restoreHypervisorState(dst.vm, [dst.vcpu], { arch: 'x86_64', vm: saved.vm, vcpus: [saved.vcpu] });
      assert.equal(runToPort(dst.vcpu, PORT_DONE), 1);
      assert.deepEqual(results(dst.mem), expected, 'same registers, SSE, x87 and RAM results');
      const regs = dst.vcpu.getRegs();
      assert.deepEqual([regs.rbx, regs.rcx, regs.rip], [expectedRegs.rbx, expectedRegs.rcx, expectedRegs.rip]);
    } finally {
      dst.close();
    }
  } finally {
    kvm.close();
  }
});

const APIC_SVR = 0xf0;
const APIC_LVTT = 0x320;
const APIC_TMICT = 0x380;
const APIC_TMCCT = 0x390;
const APIC_TDCR = 0x3e0;

function lapicReg(lapic: Uint8Array, reg: number): number {
  return new DataView(lapic.buffer, lapic.byteOffset).getUint32(reg, true);
}
function setLapicReg(lapic: Uint8Array, reg: number, v: number): void {
  new DataView(lapic.buffer, lapic.byteOffset).setUint32(reg, v >>> 0, true);
}

// MSRs that are clocks and tick between two reads: KVM lists Hyper-V's HV_X64_MSR_VP_RUNTIME
// (the vCPU's run time, 100 ns units) and HV_X64_MSR_TIME_REF_COUNT (the partition's reference
// counter; a host write is ignored, TLFS "Partition Reference Counter") with the TSC.
const HV_X64_MSR_VP_RUNTIME = 0x40000010;
const HV_X64_MSR_TIME_REF_COUNT = 0x40000020;
const TICKING_MSRS = new Set([MSR_IA32_TSC, HV_X64_MSR_VP_RUNTIME, HV_X64_MSR_TIME_REF_COUNT]);

/** Parts of a vCPU state that must read back identically (clock MSRs and the timer's current count tick). */
function comparable(s: VcpuState): VcpuState {
  const lapic = s.lapic.slice();
  setLapicReg(lapic, APIC_TMCCT, 0);
  return { ...s, msrs: s.msrs.filter((m) => !TICKING_MSRS.has(m.index)), lapic };
}

function comparableVm(s: VmState): VmState {
  return {
    ...s,
    pit: s.pit === null ? null : { ...s.pit, channels: s.pit.channels.map((c) => ({ ...c, countLoadTime: 0n })) as NonNullable<VmState['pit']>['channels'] },
    clock: { clock: 0n, flags: 0, realtime: 0n },
  };
}

test('every state part reads back as set: same vCPU, and a fresh VM + vCPU', (t) => {
  if (skipIfNoKvm(t)) return;
  const kvm = KvmHypervisor.open();
  const a = platform(kvm);
  try {
    a.mem.set(COMPUTE, CODE);
    bootGuest(kvm, a, CODE);
    runToPort(a.vcpu, PORT_CHECKPOINT);
    a.vcpu.completePendingExit();

    // Distinctive values in each part.
    a.vcpu.setMsrs([
      { index: MSR_IA32_SYSENTER_EIP, data: 0xffffffff81000000n },
      { index: MSR_STAR, data: 0x0023001000000000n },
      { index: MSR_LSTAR, data: 0xffffffff81a00000n },
      { index: MSR_IA32_CR_PAT, data: 0x0007040600070406n },
      { index: MSR_MTRR_DEF_TYPE, data: 0xc06n },
    ]);
    a.vcpu.setDebugRegs({ db: [0x1000n, 0x2000n, 0x3000n, 0x4000n], dr6: 0xffff0ff0n, dr7: 0x400n });
    const lapic = a.vcpu.getLapic();
    setLapicReg(lapic, APIC_SVR, 0x1ff);
    setLapicReg(lapic, APIC_TDCR, 0xb); // divide by 1
    setLapicReg(lapic, APIC_LVTT, (1 << 16) | 0x40); // masked, one-shot, vector 0x40
    setLapicReg(lapic, APIC_TMICT, 0x7fffffff);
    a.vcpu.setLapic(lapic);
    const ev = a.vcpu.getVcpuEvents();
    ev.nmi.pending = 1;
    ev.nmi.masked = 1;
    a.vcpu.setVcpuEvents(ev);
    const chip = a.vm.getIrqchip();
    chip.picMaster.imr = 0xfa;
    chip.picMaster.irqBase = 0x20;
    chip.picSlave.imr = 0xff;
    chip.picSlave.irqBase = 0x28;
    chip.ioapic.redirtbl[4] = (1n << 16n) | 0x34n; // masked, vector 0x34
    chip.ioapic.redirtbl[9] = (1n << 16n) | (1n << 15n) | 0x39n; // masked, level, 0x39
    a.vm.setIrqchip(chip);
    assert.deepEqual(a.vm.getIrqchip(), chip, 'irqchip: get -> set -> get');
    const pit = a.vm.getPit();
    pit.channels[2] = { ...pit.channels[2], count: 0x1234, rwMode: 3, mode: 0, gate: 0 };
    a.vm.setPit(pit);
    const noLoadTime = (p: typeof pit): unknown => p.channels.map((c) => ({ ...c, countLoadTime: 0n }));
    assert.deepEqual(noLoadTime(a.vm.getPit()), noLoadTime(pit), 'PIT: get -> set -> get');

    const s1 = a.vcpu.getState();
    const vm1 = a.vm.getState();
    assert.equal(s1.events.nmi.pending, 1);
    assert.equal(lapicReg(s1.lapic, APIC_TMICT), 0x7fffffff);
    assert.ok(s1.msrs.some((m) => m.index === MSR_IA32_TSC_DEADLINE) ? s1.msrs[s1.msrs.length - 1]!.index === MSR_IA32_TSC_DEADLINE : true, 'TSC deadline last');

    // Same vCPU: set what was read, read again.
    a.vcpu.setState(s1);
    a.vm.setState(vm1);
    const s2 = a.vcpu.getState();
    assert.deepEqual(comparable(s2), comparable(s1), 'same vCPU: get -> set -> get');
    assert.deepEqual(comparableVm(a.vm.getState()), comparableVm(vm1), 'same VM: get -> set -> get');

    // A fresh VM and vCPU, through the file form.
    const f = throughFile(vm1, s1);
    const b = platform(kvm, a.mem);
    try {
      b.vcpu.setState(f.vcpu);
      b.vm.setState(f.vm);
      const s3 = b.vcpu.getState();
      const vm3 = b.vm.getState();
      for (const part of Object.keys(s1) as Array<keyof VcpuState>) {
        assert.deepEqual(comparable(s3)[part], comparable(s1)[part], `fresh vCPU: ${part}`);
      }
      assert.deepEqual(comparableVm(vm3), comparableVm(vm1), 'fresh VM: irqchip, PIT, TSC kHz');
      const tsc1 = s1.msrs.find((m) => m.index === MSR_IA32_TSC)!.data;
      const tsc3 = s3.msrs.find((m) => m.index === MSR_IA32_TSC)!.data;
      // KVM (kvm_synchronize_tsc) takes a host TSC write within 1 s of what a vCPU created at
      // that time would read as an attempt to sync vCPUs and matches it instead: a source VM
      // younger than a second may come back up to 1 s of TSC early.
      const oneSecond = BigInt(s1.tscKhz) * 1000n;
      assert.ok(tsc3 + oneSecond >= tsc1, `guest TSC goes on from the saved value (0x${tsc1.toString(16)} -> 0x${tsc3.toString(16)})`);
      console.log(`# TSC saved 0x${tsc1.toString(16)}, restored vCPU reads 0x${tsc3.toString(16)} (${s1.tscKhz} kHz)`);
      // The clock goes on from what was saved, not from the host's time.
      const later = { ...vm1.clock, clock: vm1.clock.clock + 1_000_000_000_000n };
      b.vm.setClock(later);
      const c = b.vm.getClock().clock;
      assert.ok(c >= later.clock && c < later.clock + 1_000_000_000_000n, `kvmclock ${c} continues from ${later.clock}`);
    } finally {
      b.close();
    }
  } finally {
    a.close();
    kvm.close();
  }
});

// Timer guest: IDT at 0x6000 with vectors 0x40 and 0x41; main loop `sti; hlt; jmp` at 0x1000;
// the handlers report their vector: 0x1100: mov al, 0x40; out 0x81, al; hlt
//                                     0x1110: mov al, 0x41; out 0x81, al; hlt
const IDT = 0x6000;
function timerGuest(mem: Uint8Array): void {
  mem.set([0xfb, 0xf4, 0xeb, 0xfc], CODE);
  mem.set([0xb0, 0x40, 0xe6, PORT_DONE, 0xf4], 0x1100);
  mem.set([0xb0, 0x41, 0xe6, PORT_DONE, 0xf4], 0x1110);
  const dv = new DataView(mem.buffer, mem.byteOffset);
  for (const [vector, handler] of [[0x40, 0x1100], [0x41, 0x1110]] as const) {
    // 64-bit interrupt gate (SDM Vol. 3, 6.14.1): offset 15:0, selector, type 0xE present, offset 63:16.
    const o = IDT + vector * 16;
    dv.setUint16(o, handler & 0xffff, true);
    dv.setUint16(o + 2, 0x08, true);
    dv.setUint8(o + 5, 0x8e);
    dv.setUint16(o + 6, handler >>> 16, true);
    dv.setUint32(o + 8, 0, true);
  }
}

/** A worker that kicks the vCPU if the guest is not done by then: a hang becomes a failure. */
function watchdog(h: ReturnType<KvmVcpu['handle']>, ms: number): Worker {
  const vcpuUrl = new URL('./vcpu.js', import.meta.url).href;
  return new Worker(`
    const { workerData } = require('node:worker_threads');
    import(${JSON.stringify(vcpuUrl)}).then(({ kickVcpu }) => setTimeout(() => kickVcpu(workerData), ${ms}));`,
  { eval: true, workerData: h });
}

test('LAPIC timers (periodic, TSC-deadline) and their interrupt fire after a restore into a fresh VM', async (t) => {
  if (skipIfNoKvm(t)) return;
  const kvm = KvmHypervisor.open();
  try {
    for (const mode of ['periodic', 'tsc-deadline'] as const) {
      if (mode === 'tsc-deadline' && !kvm.capabilities().tscDeadlineTimer) {
        console.log('# TSC-deadline case skipped: no KVM_CAP_TSC_DEADLINE_TIMER');
        continue;
      }
      const vector = mode === 'periodic' ? 0x40 : 0x41;
      const src = platform(kvm);
      let saved: { vm: VmState; vcpu: VcpuState };
      let ram: Uint8Array;
      try {
        timerGuest(src.mem);
        bootGuest(kvm, src, CODE);
        const s = src.vcpu.getSregs();
        s.idt = { base: BigInt(IDT), limit: 256 * 16 - 1 };
        src.vcpu.setSregs(s);
        const lapic = src.vcpu.getLapic();
        setLapicReg(lapic, APIC_SVR, 0x1ff); // APIC software-enabled, spurious vector 0xff
        setLapicReg(lapic, APIC_TDCR, 0xb);
        if (mode === 'periodic') {
          setLapicReg(lapic, APIC_LVTT, (1 << 17) | vector); // periodic (SDM Vol. 3, 11.5.4)
          setLapicReg(lapic, APIC_TMICT, 1_000_000);
        } else {
          setLapicReg(lapic, APIC_LVTT, (2 << 17) | vector); // TSC-deadline
        }
        src.vcpu.setLapic(lapic);
        if (mode === 'tsc-deadline') {
          const [tsc] = src.vcpu.getMsrs([MSR_IA32_TSC]);
          src.vcpu.setMsrs([{ index: MSR_IA32_TSC_DEADLINE, data: tsc!.data + 10_000_000n }]);
        }
        const st = src.vcpu.getState();
        assert.equal(lapicReg(st.lapic, APIC_LVTT) & 0xff, vector);
        if (mode === 'tsc-deadline') assert.notEqual(st.msrs.find((m) => m.index === MSR_IA32_TSC_DEADLINE)?.data ?? 0n, 0n, 'deadline saved');
        saved = throughFile(src.vm.getState(), st);
        ram = src.mem.slice();
      } finally {
        src.close();
      }
      const dst = platform(kvm, ram);
      const dog = watchdog(dst.vcpu.handle(), 120_000);
      try {
        dst.vcpu.setState(saved.vcpu);
        dst.vm.setState(saved.vm);
        const lapic = dst.vcpu.getLapic();
        assert.equal(lapicReg(lapic, APIC_LVTT), lapicReg(saved.vcpu.lapic, APIC_LVTT), `${mode}: LVT timer restored`);
        if (mode === 'periodic') assert.equal(lapicReg(lapic, APIC_TMICT), 1_000_000);
        assert.equal(runToPort(dst.vcpu, PORT_DONE), vector, `${mode}: the restored timer interrupted the halted guest`);
      } finally {
        await dog.terminate();
        dst.close();
      }
    }
  } finally {
    kvm.close();
  }
});

test('restore errors name the part: a VM without the saved irqchip, a too-large XSAVE area', (t) => {
  if (skipIfNoKvm(t)) return;
  const kvm = KvmHypervisor.open();
  const a = platform(kvm);
  try {
    bootGuest(kvm, a, CODE);
    const vmState = a.vm.getState();
    const bare = kvm.createVm();
    try {
      assert.throws(() => bare.setState(vmState), /restoring the VM's PIT: the saved VM had one, this VM has none in the kernel/);
      assert.deepEqual([bare.getState().irqchip, bare.getState().pit], [null, null]);
    } finally {
      bare.close();
    }
    const s = a.vcpu.getState();
    if (s.xsave !== null) {
      const big = { ...s, xsave: new Uint8Array(s.xsave.length + 4096) };
      const b = platform(kvm);
      try {
        assert.throws(() => b.vcpu.setState(big), /restoring vCPU 0 XSAVE area: saved XSAVE area is \d+ bytes, this host's KVM takes at most \d+/);
      } finally {
        b.close();
      }
    }
    assert.throws(() => a.vcpu.setMsrs([{ index: 0xdeadbeef, data: 1n }]), /MSR 0xdeadbeef = 0x1 was rejected/);
    assert.equal(abi.KVM_MP_STATE_HALTED, 3);
    a.vcpu.setMpState('halted');
    assert.equal(a.vcpu.getMpState(), 'halted');
    a.vcpu.setMpState('runnable');
  } finally {
    a.close();
    kvm.close();
  }
});
