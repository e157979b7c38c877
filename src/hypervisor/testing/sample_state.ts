// A deterministic, well-formed hypervisor state for tests of its file forms (no KVM needed).
import type { VcpuState, VmState } from '../hypervisor.js';
import { MP_STATES } from '../regs.js';
import type { PitChannelState, SegmentRegister } from '../regs.js';
import type { HypervisorState } from '../state_json.js';

/** xorshift32: deterministic, so a failing case reproduces. */
export function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    return x / 0x100000000;
  };
}

/** A random but well-formed HypervisorState (2 vCPUs) for codec and snapshot-file tests. */
export function sampleHypervisorState(seed: number): HypervisorState {
  const r = rng(seed);
  const int = (max: number): number => Math.floor(r() * (max + 1));
  const big = (): bigint => (BigInt(int(0xffffffff)) << 32n) | BigInt(int(0xffffffff));
  const blob = (n: number): Uint8Array => Uint8Array.from({ length: n }, () => int(255));
  const seg = (): SegmentRegister => ({
    base: big(), limit: int(0xffffffff), selector: int(0xffff), type: int(15), present: int(1), dpl: int(3),
    db: int(1), s: int(1), l: int(1), g: int(1), avl: int(1), unusable: int(1),
  });
  const vcpu = (): VcpuState => ({
    regs: {
      rax: big(), rbx: big(), rcx: big(), rdx: big(), rsi: big(), rdi: big(), rsp: big(), rbp: big(),
      r8: big(), r9: big(), r10: big(), r11: big(), r12: big(), r13: big(), r14: big(), r15: big(), rip: big(), rflags: big(),
    },
    sregs: {
      cs: seg(), ds: seg(), es: seg(), fs: seg(), gs: seg(), ss: seg(), tr: seg(), ldt: seg(),
      gdt: { base: big(), limit: int(0xffff) }, idt: { base: big(), limit: int(0xffff) },
      cr0: big(), cr2: big(), cr3: big(), cr4: big(), cr8: big(), efer: big(), apicBase: big(),
      interruptBitmap: [big(), 0n, big(), 0n],
    },
    fpu: { fcw: 0x37f, fsw: int(0xffff), ftwx: int(255), lastOpcode: int(0x7ff), lastIp: big(), lastDp: big(), mxcsr: 0x1f80, fpr: blob(128), xmm: blob(256) },
    xsave: r() < 0.5 ? blob(4096) : blob(11008),
    xcrs: [{ xcr: 0, value: 7n }],
    msrs: Array.from({ length: 40 }, (_, i) => ({ index: i === 0 ? 0x10 : 0xc0000080 + i, data: big() })),
    lapic: blob(1024),
    events: {
      exception: { injected: int(1), nr: int(31), hasErrorCode: int(1), pending: int(1), errorCode: int(0xffffffff) },
      interrupt: { injected: int(1), nr: int(255), soft: int(1), shadow: int(3) },
      nmi: { injected: int(1), pending: int(1), masked: int(1) },
      sipiVector: int(255),
      smi: { smm: int(1), pending: int(1), smmInsideNmi: int(1), latchedInit: int(1) },
      exceptionPayload: r() < 0.5 ? null : { hasPayload: 1, payload: big() },
      tripleFaultPending: r() < 0.5 ? null : int(1),
    },
    mpState: MP_STATES[int(MP_STATES.length - 1)]!,
    debugRegs: { db: [big(), big(), 0n, 0n], dr6: 0xffff0ff0n, dr7: 0x400n },
    cpuid: Array.from({ length: 12 }, (_, i) => ({ function: i, index: 0, flags: int(7), eax: int(0xffffffff), ebx: int(0xffffffff), ecx: int(0xffffffff), edx: int(0xffffffff) })),
    tscKhz: int(5_000_000),
  });
  const pic = () => ({
    lastIrr: int(255), irr: int(255), imr: int(255), isr: int(255), priorityAdd: int(7), irqBase: int(255), readRegSelect: int(1),
    poll: int(1), specialMask: int(1), initState: int(3), autoEoi: int(1), rotateOnAutoEoi: int(1), specialFullyNestedMode: int(1),
    init4: int(1), elcr: int(255), elcrMask: int(255),
  });
  const ch = (): PitChannelState => ({
    count: int(0x10000), latchedCount: int(0xffff), countLatched: int(1), statusLatched: int(1), status: int(255), readState: int(3),
    writeState: int(3), writeLatch: int(255), rwMode: int(3), mode: int(5), bcd: int(1), gate: int(1),
    countLoadTime: r() < 0.5 ? -BigInt(int(0x7fffffff)) : big() >> 1n,
  });
  const vm: VmState = {
    irqchip: { picMaster: pic(), picSlave: pic(), ioapic: { baseAddress: 0xfec00000n, ioregsel: int(255), id: int(15), irr: int(0xffffff), redirtbl: Array.from({ length: 24 }, big) } },
    pit: { channels: [ch(), ch(), ch()], flags: int(3) },
    clock: { clock: big(), flags: 6, realtime: big() },
    tscKhz: r() < 0.5 ? null : int(5_000_000),
  };
  return { arch: 'x86_64', vm, vcpus: [vcpu(), vcpu()] };
}
