// KVM's Hyper-V emulation through the backend (needs /dev/kvm: npm test runs this file inside
// scripts/kvm-sandbox when the host has none): a tiny 64-bit guest reads the Hyper-V vendor
// leaf, sets up the hypercall page as a TLFS guest does (guest OS id, then the hypercall MSR),
// enables SynIC (a KVM_EXIT_HYPERV_SYNIC exit), makes HvPostMessage (a KVM_EXIT_HYPERV_HCALL exit
// whose answer comes back in RAX) and reads its VP index.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as libc from '../../sys/libc.js';
import { readLe, VmExitKind } from '../hypervisor.js';
import { vcpuCpuid } from '../../arch/x86_64/cpuid.js';
import {
  cpuidSig, HV_STATUS_INVALID_HYPERCALL_CODE, HV_X64_MSR_SCONTROL, HVCALL_POST_MESSAGE, hypervLeaves,
} from '../../arch/x86_64/hyperv.js';
import { KvmHypervisor } from './kvm.js';
import { enterLongMode, kvmUnavailable } from './testguest.js';
import * as abi from './abi.js';

const CODE = 0x1000;
/**
 * Assembled with GNU as (intel syntax), at CODE:
 *   mov eax, 0x40000000; cpuid; mov eax, ebx; out 0x10, eax; mov eax, ecx; out 0x10, eax;
 *   mov eax, edx; out 0x10, eax                        ; the vendor, 4 bytes at a time
 *   mov ecx, 0x40000000; mov eax, 1; mov edx, 0x81000000; wrmsr   ; HV_X64_MSR_GUEST_OS_ID
 *   mov ecx, 0x40000001; mov eax, 0x6001; xor edx, edx; wrmsr     ; hypercall page at 0x6000
 *   mov ecx, 0x40000080; mov eax, 1; xor edx, edx; wrmsr          ; SCONTROL: SynIC on
 *   mov ecx, 0x5c; mov edx, 0x7000; xor r8d, r8d; mov eax, 0x6000; call rax  ; HvPostMessage
 *   out 0x11, eax                                      ; its status
 *   mov ecx, 0x40000002; rdmsr; out 0x11, eax          ; HV_X64_MSR_VP_INDEX
 *   out 0x12, al                                       ; done (hlt stays in the kernel)
 */
const PROGRAM = 'b8000000400fa289d8e71089c8e71089d0e710b900000040b801000000ba000000810f30b901000040b80160000031d20f30'
  + 'b980000040b80100000031d20f30b95c000000ba007000004531c0b800600000ffd0e711b9020000400f32e711e612';

test('Hyper-V on KVM: vendor leaf, hypercall page, SynIC exit, HvPostMessage exit answered, VP index', (t) => {
  const why = kvmUnavailable();
  if (why !== null) {
    console.log(`# skipping: ${why}`);
    t.skip(why);
    return;
  }
  const kvm = KvmHypervisor.open();
  const memSize = 2 << 20;
  const memAddr = libc.mmap(memSize, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_PRIVATE | libc.MAP_ANONYMOUS | libc.MAP_NORESERVE, -1, 0);
  const vm = kvm.createVm();
  try {
    if (kvm.checkExtension(abi.KVM_CAP_HYPERV_CPUID) <= 0) {
      t.skip('this KVM has no KVM_CAP_HYPERV_CPUID (Linux < 5.0)');
      return;
    }
    vm.setTssAddress(0xfffbd000);
    vm.setIdentityMapAddress(0xfffbc000n);
    vm.createIrqChip(); // SynIC needs the in-kernel LAPIC
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0n, memorySize: memSize, userspaceAddr: memAddr });
    const mem = new Uint8Array(libc.view(memAddr, memSize));
    mem.set(Buffer.from(PROGRAM, 'hex'), CODE);
    const vcpu = vm.createVcpu(0);
    try {
      const hv = vcpu.enableHyperV();
      assert.equal(hv.cpuid.find((e) => e.function === 0x40000001)?.eax, cpuidSig('Hv#1'), 'KVM_GET_SUPPORTED_HV_CPUID decoded');
      const sys = kvm.getSupportedHvCpuid();
      if (sys !== null) assert.equal(sys.find((e) => e.function === 0x40000001)?.eax, cpuidSig('Hv#1'), 'the /dev/kvm ioctl too');
      assert.equal(hv.synic, kvm.checkExtension(abi.KVM_CAP_HYPERV_SYNIC2) > 0);
      if (!hv.synic) {
        t.skip('this KVM has no KVM_CAP_HYPERV_SYNIC2');
        return;
      }
      const { entries } = hypervLeaves({ supported: hv.cpuid, synic: hv.synic });
      vcpu.setCpuid2(vcpuCpuid(kvm.getSupportedCpuid(), 0, 1, { hyperv: entries }));
      enterLongMode(vcpu, mem, CODE);

      const out = (port: number): number => {
        const k = vcpu.run();
        assert.equal(k, VmExitKind.IoOut, `expected an out to 0x${port.toString(16)}, got ${JSON.stringify(vcpu.decodeExit(), (_k, v: unknown) => (typeof v === 'bigint' ? v.toString(16) : v))}`);
        assert.equal(vcpu.exit.port, port);
        return readLe(vcpu.exit.data);
      };
      const vendor = [out(0x10), out(0x10), out(0x10)];
      assert.deepEqual(vendor, [cpuidSig('Micr'), cpuidSig('osof'), cpuidSig('t Hv')], 'the guest reads "Microsoft Hv"');

      assert.equal(vcpu.run(), VmExitKind.HypervSynic, 'SCONTROL write exits');
      assert.equal(vcpu.exit.msr, HV_X64_MSR_SCONTROL);
      const synic = vcpu.decodeExit();
      assert.ok(synic.kind === 'HypervSynic' && synic.control === 1n, JSON.stringify(synic, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v)));
      assert.notEqual(mem[0x6000], 0, 'KVM wrote the hypercall page');

      assert.equal(vcpu.run(), VmExitKind.HypervHcall, 'HvPostMessage is left to the VMM');
      assert.equal(vcpu.exit.hypercallCode, HVCALL_POST_MESSAGE);
      const hc = vcpu.decodeExit();
      assert.ok(hc.kind === 'HypervHcall');
      assert.equal(hc.input, BigInt(HVCALL_POST_MESSAGE));
      assert.deepEqual(hc.params, [0x7000n, 0n]);
      vcpu.completeHypercall(HV_STATUS_INVALID_HYPERCALL_CODE);
      assert.equal(out(0x11), HV_STATUS_INVALID_HYPERCALL_CODE, 'the status reached the guest\'s RAX');
      assert.equal(out(0x11), 0, 'VP index of vCPU 0');
      out(0x12);
      assert.throws(() => vcpu.completeHypercall(0), /not a hypercall/);
    } finally {
      vcpu.close();
    }
  } finally {
    vm.close();
    kvm.close();
    libc.munmap(memAddr, memSize);
  }
});
