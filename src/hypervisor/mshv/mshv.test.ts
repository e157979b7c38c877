// The MSHV backend's ioctl sequences against a RECORDING FAKE of the ioctl layer (MshvSys).
// The fake decodes every argument with the abi.ts layouts (checked against the real headers by
// abi.test.ts) and answers with scripted intercept messages. This checks ordering and argument
// layout only: it is NOT a verification of behaviour on a real Microsoft Hypervisor, which
// these machines do not have (no /dev/mshv).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as abi from './abi.js';
import { MshvHypervisor } from './mshv.js';
import { decodeMessage, InterceptInfo } from './message.js';
import type { MshvPage, MshvSys } from './sys.js';
import { VmExitKind } from '../hypervisor.js';
import { chooseHypervisor } from '../select.js';
import { parseArgs } from '../../cli/args.js';

const L = abi.layout;
type Rec = { fd: number; op: string; args: Record<string, bigint | number | number[]> };

class FakeSys implements MshvSys {
  readonly log: Rec[] = [];
  private nextFd = 10;
  private nextAddr = 0x7000_0000_0000n;
  private readonly pages = new Map<bigint, Uint8Array>();
  /** Scripted MSHV_RUN_VP messages (256 bytes each). */
  readonly runQueue: Uint8Array[] = [];
  /** Register values GET_VP_REGISTERS answers with. */
  readonly regs = new Map<number, bigint>();

  open(path: string): number { this.log.push({ fd: -1, op: `open ${path}`, args: {} }); return this.nextFd++; }
  close(fd: number): void { this.log.push({ fd, op: 'close', args: {} }); }
  allocPages(bytes: number): MshvPage {
    const addr = this.nextAddr;
    this.nextAddr += 0x10000n;
    const b = new Uint8Array(bytes);
    this.pages.set(addr, b);
    return { addr, bytes: b };
  }
  freePages(p: MshvPage): void { this.pages.delete(p.addr); }
  ioctlRaw(fd: number, request: number, arg: number | Uint8Array): number { return this.ioctl(fd, request, arg, ''); }

  ioctl(fd: number, request: number, arg: number | Uint8Array, _name: string): number {
    const buf = typeof arg === 'number' ? new Uint8Array(0) : arg;
    const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    const u64 = (o: number): bigint => dv.getBigUint64(o, true);
    switch (request) {
      case abi.MSHV_CREATE_PARTITION:
        assert.equal(buf.length, L.mshv_create_partition.SIZE);
        this.log.push({ fd, op: 'CREATE_PARTITION', args: { pt_flags: u64(L.mshv_create_partition.pt_flags), pt_isolation: u64(L.mshv_create_partition.pt_isolation) } });
        return this.nextFd++;
      case abi.MSHV_INITIALIZE_PARTITION:
        this.log.push({ fd, op: 'INITIALIZE_PARTITION', args: {} });
        return 0;
      case abi.MSHV_CREATE_VP:
        this.log.push({ fd, op: 'CREATE_VP', args: { vp_index: dv.getUint32(0, true) } });
        return this.nextFd++;
      case abi.MSHV_SET_GUEST_MEMORY: {
        const o = L.mshv_user_mem_region;
        assert.equal(buf.length, o.SIZE);
        assert.deepEqual([...buf.subarray(o.rsvd, o.SIZE)], [0, 0, 0, 0, 0, 0, 0], 'rsvd MBZ');
        this.log.push({ fd, op: 'SET_GUEST_MEMORY', args: { size: u64(o.size), guest_pfn: u64(o.guest_pfn), userspace_addr: u64(o.userspace_addr), flags: dv.getUint8(o.flags) } });
        return 0;
      }
      case abi.MSHV_IRQFD: {
        const o = L.mshv_user_irqfd;
        this.log.push({ fd, op: 'IRQFD', args: { fd: dv.getInt32(o.fd, true), resamplefd: dv.getInt32(o.resamplefd, true), gsi: dv.getUint32(o.gsi, true), flags: dv.getUint32(o.flags, true) } });
        return 0;
      }
      case abi.MSHV_IOEVENTFD: {
        const o = L.mshv_user_ioeventfd;
        this.log.push({ fd, op: 'IOEVENTFD', args: { datamatch: u64(o.datamatch), addr: u64(o.addr), len: dv.getUint32(o.len, true), fd: dv.getInt32(o.fd, true), flags: dv.getUint32(o.flags, true) } });
        return 0;
      }
      case abi.MSHV_SET_MSI_ROUTING: {
        const n = dv.getUint32(L.mshv_user_irq_table.nr, true);
        assert.equal(buf.length, L.mshv_user_irq_table.SIZE + n * L.mshv_user_irq_entry.SIZE);
        const e = L.mshv_user_irq_entry;
        const entries: number[] = [];
        for (let i = 0; i < n; i++) {
          const o = L.mshv_user_irq_table.entries + i * e.SIZE;
          entries.push(dv.getUint32(o + e.gsi, true), dv.getUint32(o + e.address_lo, true), dv.getUint32(o + e.address_hi, true), dv.getUint32(o + e.data, true));
        }
        this.log.push({ fd, op: 'SET_MSI_ROUTING', args: { nr: n, entries } });
        return 0;
      }
      case abi.MSHV_ROOT_HVCALL:
        return this.hvcall(fd, dv);
      case abi.MSHV_RUN_VP: {
        const m = this.runQueue.shift();
        if (!m) throw new Error('fake: no scripted message');
        buf.set(m);
        this.log.push({ fd, op: 'RUN_VP', args: {} });
        return 0;
      }
      default:
        throw new Error(`fake: unexpected ioctl 0x${request.toString(16)}`);
    }
  }

  private hvcall(fd: number, a: DataView): number {
    const A = L.mshv_root_hvcall;
    const code = a.getUint16(A.code, true);
    const reps = a.getUint16(A.reps, true);
    const inSz = a.getUint16(A.in_sz, true);
    const outSz = a.getUint16(A.out_sz, true);
    assert.equal(a.getUint16(A.status, true), 0, 'status MBZ on input');
    const input = this.pages.get(a.getBigUint64(A.in_ptr, true));
    assert.ok(input, 'in_ptr is an allocated page');
    assert.ok(inSz <= abi.MSHV_HV_PAGE_SIZE && outSz <= abi.MSHV_HV_PAGE_SIZE);
    const iv = new DataView(input.buffer, 0, inSz);
    const args: Record<string, bigint | number | number[]> = { reps, in_sz: inSz, out_sz: outSz };
    let name = `hvcall 0x${code.toString(16)}`;
    switch (code) {
      case abi.HVCALL_SET_PARTITION_PROPERTY: {
        const I = L.hv_input_set_partition_property;
        assert.equal(inSz, I.SIZE);
        name = 'SetPartitionProperty';
        args.property_code = iv.getUint32(I.property_code, true);
        args.property_value = iv.getBigUint64(I.property_value, true);
        break;
      }
      case abi.HVCALL_GET_VP_REGISTERS: {
        const I = L.hv_input_get_vp_registers;
        assert.equal(inSz, I.SIZE + reps * 4);
        assert.equal(outSz, reps * 16);
        name = 'GetVpRegisters';
        args.vp_index = iv.getUint32(I.vp_index, true);
        const names: number[] = [];
        for (let i = 0; i < reps; i++) names.push(iv.getUint32(I.names + i * 4, true));
        args.names = names;
        const out = new DataView(this.pages.get(a.getBigUint64(A.out_ptr, true))!.buffer);
        names.forEach((n, i) => out.setBigUint64(i * 16, this.regs.get(n) ?? 0n, true));
        break;
      }
      case abi.HVCALL_SET_VP_REGISTERS: {
        const I = L.hv_input_set_vp_registers;
        const R = L.hv_register_assoc;
        assert.equal(inSz, I.SIZE + reps * R.SIZE);
        name = 'SetVpRegisters';
        args.vp_index = iv.getUint32(I.vp_index, true);
        const set: number[] = [];
        for (let i = 0; i < reps; i++) {
          const o = I.elements + i * R.SIZE;
          assert.equal(iv.getUint32(o + R.reserved1, true), 0);
          const reg = iv.getUint32(o + R.name, true);
          const v = iv.getBigUint64(o + R.value, true);
          set.push(reg, Number(v));
          this.regs.set(reg, v);
        }
        args.set = set;
        break;
      }
      case abi.HVCALL_REGISTER_INTERCEPT_RESULT: {
        const I = L.hv_input_register_intercept_result;
        const C = L.hv_register_x64_cpuid_result_parameters;
        name = 'RegisterInterceptResult';
        args.intercept_type = iv.getUint32(I.intercept_type, true);
        args.leaf = [iv.getUint32(I.parameters + C.input.eax, true), iv.getUint32(I.parameters + C.input.ecx, true),
          iv.getUint8(I.parameters + C.input.always_override), iv.getUint32(I.parameters + C.result.ebx, true), iv.getUint32(I.parameters + C.result.ebx_mask, true)];
        break;
      }
      case abi.HVCALL_ASSERT_VIRTUAL_INTERRUPT: {
        const I = L.hv_input_assert_virtual_interrupt;
        name = 'AssertVirtualInterrupt';
        args.type = iv.getUint32(I.control, true);
        args.flags = iv.getUint32(I.control + 4, true);
        args.dest = iv.getBigUint64(I.dest_addr, true);
        args.vector = iv.getUint32(I.vector, true);
        break;
      }
      default:
        break;
    }
    a.setUint16(A.reps, reps, true); // all repetitions completed
    this.log.push({ fd, op: name, args });
    return 0;
  }
}

/** An hv_message with an x64 intercept header; `body` writes the rest at payload offsets. */
function message(type: number, rip: bigint, insnLen: number, accessType: number, body: (dv: DataView, p: number) => void): Uint8Array {
  const b = new Uint8Array(abi.HV_MESSAGE_SIZE);
  const dv = new DataView(b.buffer);
  const p = L.hv_message.u;
  dv.setUint32(L.hv_message_header.message_type, type, true);
  dv.setUint8(L.hv_message_header.payload_size, abi.HV_MESSAGE_PAYLOAD_BYTE_COUNT);
  dv.setUint8(p + abi.HV_X64_INSTRUCTION_LENGTH_BYTE, insnLen);
  dv.setUint8(p + L.hv_x64_intercept_message_header.intercept_access_type, accessType);
  dv.setBigUint64(p + L.hv_x64_intercept_message_header.rip, rip, true);
  body(dv, p);
  return b;
}

function ioMessage(port: number, size: number, write: boolean, rax: bigint, rip: bigint): Uint8Array {
  const IO = L.hv_x64_io_port_intercept_message;
  return message(abi.HVMSG_X64_IO_PORT_INTERCEPT, rip, 1, write ? 1 : 0, (dv, p) => {
    dv.setUint16(p + IO.port_number, port, true);
    dv.setUint8(p + IO.access_info, size);
    dv.setBigUint64(p + IO.rax, rax, true);
  });
}

function mmioMessage(gpa: number, insn: number[], rip: bigint, write: boolean): Uint8Array {
  const M = L.hv_x64_memory_intercept_message;
  return message(abi.HVMSG_UNMAPPED_GPA, rip, 0, write ? 1 : 0, (dv, p) => {
    dv.setUint8(p + M.instruction_byte_count, insn.length);
    dv.setBigUint64(p + M.guest_physical_address, BigInt(gpa), true);
    insn.forEach((x, i) => dv.setUint8(p + M.instruction_bytes + i, x));
  });
}

test('intercept message decoding (TLFS layouts): I/O port, unmapped GPA, halt, CPUID', () => {
  const info = new InterceptInfo();
  const m = ioMessage(0x3f8, 1, true, 0x4142n, 0x1000n);
  new DataView(m.buffer).setUint8(L.hv_message.u + L.hv_x64_io_port_intercept_message.access_info, 1 | abi.HV_X64_IO_STRING_OP | abi.HV_X64_IO_REP_PREFIX);
  assert.equal(decodeMessage(new DataView(m.buffer), info), abi.HVMSG_X64_IO_PORT_INTERCEPT);
  assert.deepEqual([info.port, info.accessSize, info.stringOp, info.repPrefix, info.rax, info.rip, info.instructionLength, info.accessType],
    [0x3f8, 1, true, true, 0x4142n, 0x1000n, 1, 1]);
  const g = mmioMessage(0xfee0_0030, [0x8b, 0x47, 0x14], 0x2000n, false);
  assert.equal(decodeMessage(new DataView(g.buffer), info), abi.HVMSG_UNMAPPED_GPA);
  assert.deepEqual([info.gpa, info.insnCount, g[info.insnOffset], info.rip], [0xfee0_0030, 3, 0x8b, 0x2000n]);
  const big = mmioMessage(0xf_ffff_f000, [0x90], 0n, false);
  decodeMessage(new DataView(big.buffer), info);
  assert.equal(info.gpa, 0xf_ffff_f000);
  const h = message(abi.HVMSG_X64_HALT, 0x3000n, 1, 0, () => {});
  assert.equal(decodeMessage(new DataView(h.buffer), info), abi.HVMSG_X64_HALT);
  const C = L.hv_x64_cpuid_intercept_message;
  const c = message(abi.HVMSG_X64_CPUID_INTERCEPT, 0n, 2, 0, (dv, p) => { dv.setBigUint64(p + C.rax, 7n, true); dv.setBigUint64(p + C.default_result_rbx, 0x1234n, true); });
  decodeMessage(new DataView(c.buffer), info);
  assert.deepEqual([info.cpuidRax, info.defaultRbx], [7n, 0x1234n]);
});

test('partition create/initialise, memory, VP, registers, CPUID, routing, irqfd, ioeventfd, MSI (recording fake: order and layouts only)', () => {
  const sys = new FakeSys();
  const hv = MshvHypervisor.open('/dev/mshv', sys);
  const vm = hv.createVm();
  const ops = () => sys.log.map((r) => r.op);
  assert.deepEqual(ops(), ['open /dev/mshv', 'CREATE_PARTITION', 'SetPartitionProperty', 'INITIALIZE_PARTITION', 'SetPartitionProperty', 'SetPartitionProperty']);
  assert.equal(sys.log[1]!.args.pt_flags, 0b111n);
  assert.equal(sys.log[2]!.args.property_code, abi.HV_PARTITION_PROPERTY_SYNTHETIC_PROC_FEATURES);
  assert.equal(sys.log[4]!.args.property_code, abi.HV_PARTITION_PROPERTY_UNIMPLEMENTED_MSR_ACTION);
  assert.deepEqual([sys.log[5]!.args.property_code, sys.log[5]!.args.property_value], [abi.HV_PARTITION_PROPERTY_TIME_FREEZE, 0n]);

  sys.log.length = 0;
  vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0x100000n, memorySize: 0x200000, userspaceAddr: 0x7f00_0000_0000n });
  vm.setUserMemoryRegion({ slot: 1, guestPhysAddr: 0xfff00000n, memorySize: 0x100000, userspaceAddr: 0x7f10_0000_0000n, readonly: true });
  vm.removeUserMemoryRegion(0);
  assert.deepEqual(sys.log.map((r) => r.args), [
    { size: 0x200000n, guest_pfn: 0x100n, userspace_addr: 0x7f00_0000_0000n, flags: 0b011 },
    { size: 0x100000n, guest_pfn: 0xfff00n, userspace_addr: 0x7f10_0000_0000n, flags: 0b010 },
    { size: 0x200000n, guest_pfn: 0x100n, userspace_addr: 0x7f00_0000_0000n, flags: 0b100 },
  ]);
  assert.throws(() => vm.setUserMemoryRegion({ slot: 2, guestPhysAddr: 0x1001n, memorySize: 0x1000, userspaceAddr: 0n }), /multiples of 4 KiB/);

  sys.log.length = 0;
  vm.setGsiRouting([{ gsi: 5, kind: 'msi', addressLo: 0xfee01000, addressHi: 0, data: 0x41 }, { gsi: 4, kind: 'irqchip', irqchip: 0, pin: 4 }]);
  vm.registerIrqfd(33, 5);
  vm.registerIrqfd(34, 6, 35);
  vm.unregisterIrqfd(33, 5);
  vm.registerIoevent(40, { space: 'mmio', addr: 0xe000_3000n }, { datamatch: { value: 2, len: 2 } });
  vm.registerIoevent(41, { space: 'pio', addr: 0x510 });
  vm.signalMsi({ addressLo: 0xfee02004, addressHi: 0, data: 0x8051 });
  assert.deepEqual(sys.log.map((r) => [r.op, r.args]), [
    ['SET_MSI_ROUTING', { nr: 1, entries: [5, 0xfee01000, 0, 0x41] }],
    ['IRQFD', { fd: 33, resamplefd: 0, gsi: 5, flags: 0 }],
    ['IRQFD', { fd: 34, resamplefd: 35, gsi: 6, flags: 2 }],
    ['IRQFD', { fd: 33, resamplefd: 0, gsi: 5, flags: 1 }],
    ['IOEVENTFD', { datamatch: 2n, addr: 0xe000_3000n, len: 2, fd: 40, flags: 1 }],
    ['IOEVENTFD', { datamatch: 0n, addr: 0x510n, len: 0, fd: 41, flags: 2 }],
    ['AssertVirtualInterrupt', { reps: 0, in_sz: 32, out_sz: 0, type: 0, flags: 0b11, dest: 2n, vector: 0x51 }],
  ]);
  assert.throws(() => vm.setIrqLine(30, true), /not an IOAPIC pin/);

  sys.log.length = 0;
  const vcpu = vm.createVcpu(1);
  vcpu.setCpuid2([{ function: 7, index: 0, flags: 1, eax: 0, ebx: 0x29c6fbf, ecx: 0, edx: 0 }]);
  const regs = vcpu.getRegs();
  vcpu.setRegs({ ...regs, rip: 0x100000n, rflags: 2n });
  assert.deepEqual(sys.log[0], { fd: 10 + 1, op: 'CREATE_VP', args: { vp_index: 1 } });
  assert.deepEqual(sys.log[1]!.args.leaf, [7, 0, 1, 0x29c6fbf, 0x29c6fbf]);
  assert.equal(sys.log[2]!.op, 'GetVpRegisters');
  assert.equal((sys.log[2]!.args.names as number[]).length, 18);
  assert.equal(sys.log[3]!.op, 'SetVpRegisters');
  assert.equal(sys.regs.get(abi.HV_X64_REGISTER_RIP), 0x100000n);
  sys.log.length = 0;
  vcpu.setFpu({ fcw: 0x37f, fsw: 0, ftwx: 0, lastOpcode: 0, lastIp: 0n, lastDp: 0n, mxcsr: 0x1f80, fpr: new Uint8Array(128), xmm: new Uint8Array(256).fill(7) });
  vcpu.setMsrs([{ index: 0x1a0, data: 1n }, { index: 0xc0000082, data: 0xffffffff81000000n }, { index: 0x2ff, data: 0xc06n }]);
  assert.throws(() => vcpu.getMsrs([0x12345]), /MSR 0x12345 has no TLFS register name/);
  const sets = sys.log.filter((r) => r.op === 'SetVpRegisters');
  assert.equal(sets[0]!.args.reps, 26);
  assert.equal(sys.regs.get(abi.HV_X64_REGISTER_FP_CONTROL_STATUS), 0x37fn, 'fp_control at offset 0 of the value');
  assert.equal(sys.regs.get(abi.HV_X64_REGISTER_XMM0), 0x0707070707070707n);
  assert.deepEqual(sets[1]!.args.set, [abi.HV_X64_REGISTER_LSTAR, Number(0xffffffff81000000n), abi.HV_X64_REGISTER_MSR_MTRR_DEF_TYPE, 0xc06], 'IA32_MISC_ENABLE is the hypervisor\'s');
  vcpu.close();
  vm.close();
  hv.close();
});

test('MSHV_RUN_VP: port I/O and MMIO exits, then RIP advance and the destination register (recording fake)', () => {
  const sys = new FakeSys();
  const hv = MshvHypervisor.open('/dev/mshv', sys);
  const vm = hv.createVm();
  const vcpu = vm.createVcpu(0);
  sys.log.length = 0;
  // out dx, al  (rax = 0x4142): data 0x42, RIP + 1
  sys.runQueue.push(ioMessage(0x3f8, 1, true, 0x4142n, 0x1000n));
  assert.equal(vcpu.run(), VmExitKind.IoOut);
  assert.deepEqual([vcpu.exit.port, [...vcpu.exit.data]], [0x3f8, [0x42]]);
  // in ax, dx  (rax = 0xffff_ffff_1111_2222): the VMM answers 0xbeef; bits above 15 kept
  sys.runQueue.push(ioMessage(0x60, 2, false, 0xffff_ffff_1111_2222n, 0x1001n));
  assert.equal(vcpu.run(), VmExitKind.IoIn);
  assert.deepEqual(sys.regs.get(abi.HV_X64_REGISTER_RIP), 0x1001n, 'the OUT completed first');
  vcpu.exit.data.set([0xef, 0xbe]);
  // mov eax, DWORD PTR [rdi+0x14] at GPA 0xfebf0014
  sys.runQueue.push(mmioMessage(0xfebf0014, [0x8b, 0x47, 0x14], 0x2000n, false));
  assert.equal(vcpu.run(), VmExitKind.MmioRead);
  assert.deepEqual([sys.regs.get(abi.HV_X64_REGISTER_RAX), sys.regs.get(abi.HV_X64_REGISTER_RIP)], [0xffff_ffff_1111_beefn, 0x1002n]);
  assert.deepEqual([vcpu.exit.addr, vcpu.exit.len], [0xfebf0014, 4]);
  vcpu.exit.data.set([1, 2, 3, 4]);
  // mov BYTE PTR [rax], bh  (a write: the backend reads RBX)
  sys.regs.set(abi.HV_X64_REGISTER_RBX, 0xab00n);
  sys.runQueue.push(mmioMessage(0xfebf0000, [0x88, 0x38], 0x3000n, true));
  assert.equal(vcpu.run(), VmExitKind.MmioWrite);
  assert.equal(sys.regs.get(abi.HV_X64_REGISTER_RIP), 0x2003n, 'the load advanced RIP by its 3 bytes');
  assert.equal(sys.regs.get(abi.HV_X64_REGISTER_RAX), 0x04030201n, 'a 32-bit load zero-extends into RAX');
  assert.deepEqual([...vcpu.exit.data], [0xab]);
  // 66 0f be 08 = movsx cx, BYTE PTR [rax]: a 16-bit destination keeps RCX's upper bits
  sys.regs.set(abi.HV_X64_REGISTER_RCX, 0x1111_2222_3333_4444n);
  sys.runQueue.push(mmioMessage(0xfebf0001, [0x66, 0x0f, 0xbe, 0x08], 0x5000n, false));
  assert.equal(vcpu.run(), VmExitKind.MmioRead);
  vcpu.exit.data.set([0x80]);
  // then halt, and a triple fault
  sys.runQueue.push(message(abi.HVMSG_X64_HALT, 0x5004n, 1, 0, () => {}));
  assert.equal(vcpu.run(), VmExitKind.Hlt);
  assert.equal(sys.regs.get(abi.HV_X64_REGISTER_RIP), 0x5004n);
  assert.equal(sys.regs.get(abi.HV_X64_REGISTER_RCX), 0x1111_2222_3333_ff80n, 'movsx cx sign-extends 0x80 into CX only');
  sys.runQueue.push(message(abi.HVMSG_UNRECOVERABLE_EXCEPTION, 0n, 0, 0, () => {}));
  assert.equal(vcpu.run(), VmExitKind.Shutdown);
  // stosd (ab) with DF clear: writes EAX, then RIP + 1 and RDI + 4
  sys.regs.set(abi.HV_X64_REGISTER_RAX, 0x11223344n);
  sys.regs.set(abi.HV_X64_REGISTER_RDI, 0xfebf1000n);
  sys.runQueue.push(mmioMessage(0xfebf1000, [0xab], 0x6000n, true));
  assert.equal(vcpu.run(), VmExitKind.MmioWrite);
  assert.deepEqual([...vcpu.exit.data], [0x44, 0x33, 0x22, 0x11]);
  sys.runQueue.push(message(abi.HVMSG_X64_HALT, 0x6001n, 1, 0, () => {}));
  assert.equal(vcpu.run(), VmExitKind.Hlt);
  assert.deepEqual([sys.regs.get(abi.HV_X64_REGISTER_RIP), sys.regs.get(abi.HV_X64_REGISTER_RDI)], [0x6001n, 0xfebf1004n]);
  // An instruction the decoder does not emulate: a clear error, no crash.
  sys.runQueue.push(mmioMessage(0xfebf0000, [0x01, 0x03], 0x4000n, true));
  assert.throws(() => vcpu.run(), /MMIO at GPA 0xfebf0000 .*opcode 01/);
  // completePendingExit finishes an exit without entering the guest.
  sys.runQueue.push(ioMessage(0x70, 1, false, 0n, 0x7000n));
  assert.equal(vcpu.run(), VmExitKind.IoIn);
  vcpu.exit.data[0] = 0x5a;
  const runs = sys.log.filter((r) => r.op === 'RUN_VP').length;
  vcpu.completePendingExit();
  assert.equal(sys.log.filter((r) => r.op === 'RUN_VP').length, runs);
  assert.deepEqual([sys.regs.get(abi.HV_X64_REGISTER_RAX), sys.regs.get(abi.HV_X64_REGISTER_RIP)], [0x5an, 0x7001n]);
  // A kick before run returns Intr without entering the guest.
  vcpu.kick();
  assert.equal(vcpu.run(), VmExitKind.Intr);
  assert.equal(vcpu.takeKick(), true);
});

test('kvm_hyperv on the mshv backend: a clear "not supported" error, nothing sent to the hypervisor (recording fake)', () => {
  const sys = new FakeSys();
  const hv = MshvHypervisor.open('/dev/mshv', sys);
  const vm = hv.createVm();
  const vcpu = vm.createVcpu(0);
  sys.log.length = 0;
  assert.throws(() => vcpu.enableHyperV(), /kvm_hyperv=on is not supported on the mshv backend/);
  assert.throws(() => vcpu.completeHypercall(2), /no hypercall exits/);
  assert.deepEqual(sys.log, []);
  vcpu.close();
  vm.close();
  hv.close();
});

test('--hypervisor selection: auto picks mshv only without /dev/kvm; a missing device is a clear error', () => {
  const has = (...d: string[]) => (p: string) => d.includes(p);
  assert.equal(chooseHypervisor('auto', has('/dev/mshv')), 'mshv');
  assert.equal(chooseHypervisor('auto', has('/dev/mshv', '/dev/kvm')), 'kvm');
  assert.equal(chooseHypervisor('auto', has()), 'kvm');
  assert.throws(() => chooseHypervisor('mshv', has('/dev/kvm')), /--hypervisor mshv: \/dev\/mshv does not exist/);
  assert.throws(() => chooseHypervisor('kvm', has('/dev/mshv')), /--hypervisor kvm: \/dev\/kvm does not exist/);
  assert.throws(() => MshvHypervisor.open('/nonexistent/mshv'), /cannot open \/nonexistent\/mshv: ENOENT/);
});

test('userspace IOAPIC: the guest programs a pin by MMIO, it becomes an MSI route; level pins wait for the EOI (recording fake)', () => {
  const sys = new FakeSys();
  const hv = MshvHypervisor.open('/dev/mshv', sys);
  const vm = hv.createVm();
  const vcpu = vm.createVcpu(0);
  vm.setGsiRouting([{ gsi: 24, kind: 'msi', addressLo: 0xfee00000, addressHi: 0, data: 0x40 }]);
  sys.log.length = 0;
  // mov DWORD PTR [rax], ecx at IOREGSEL (ecx = 0x18: IOREDTBL[4] low), then mov [rax], edx at
  // IOWIN (edx = 0x8031: vector 0x31, level-triggered, unmasked); then a halt exits to the VMM.
  sys.regs.set(abi.HV_X64_REGISTER_RCX, 0x18n);
  sys.regs.set(abi.HV_X64_REGISTER_RDX, 0x8031n);
  sys.runQueue.push(mmioMessage(0xfec00000, [0x89, 0x08], 0x1000n, true));
  sys.runQueue.push(mmioMessage(0xfec00010, [0x89, 0x10], 0x1002n, true));
  sys.runQueue.push(message(abi.HVMSG_X64_HALT, 0x1004n, 1, 0, () => {}));
  assert.equal(vcpu.run(), VmExitKind.Hlt, 'IOAPIC accesses are handled inside run()');
  const routing = sys.log.filter((r) => r.op === 'SET_MSI_ROUTING').at(-1)!;
  assert.deepEqual(routing.args, { nr: 2, entries: [24, 0xfee00000, 0, 0x40, 4, 0xfee00000, 0, 0x31 | (1 << 15) | (1 << 14)] });
  assert.deepEqual(vm.ioapic.rte(4), [0x8031, 0]);
  // Read it back: mov ebx, DWORD PTR [rax] at IOWIN
  sys.runQueue.push(mmioMessage(0xfec00010, [0x8b, 0x18], 0x1004n, false));
  sys.runQueue.push(message(abi.HVMSG_X64_HALT, 0x1006n, 1, 0, () => {}));
  assert.equal(vcpu.run(), VmExitKind.Hlt);
  assert.equal(sys.regs.get(abi.HV_X64_REGISTER_RBX), 0x8031n);

  sys.log.length = 0;
  vm.setIrqLine(4, true);
  vm.setIrqLine(4, false);
  vm.setIrqLine(4, true); // Remote IRR still set: no second interrupt
  assert.deepEqual(sys.log.filter((r) => r.op === 'AssertVirtualInterrupt').map((r) => r.args.vector), [0x31]);
  // The guest's EOI for 0x31 clears Remote IRR; the line is still high, so it fires again.
  sys.runQueue.push(message(abi.HVMSG_X64_APIC_EOI, 0n, 0, 0, (dv, p) => dv.setUint32(p + L.hv_x64_apic_eoi_message.interrupt_vector, 0x31, true)));
  sys.runQueue.push(message(abi.HVMSG_X64_HALT, 0x1008n, 1, 0, () => {}));
  assert.equal(vcpu.run(), VmExitKind.Hlt);
  assert.deepEqual(sys.log.filter((r) => r.op === 'AssertVirtualInterrupt').map((r) => r.args.vector), [0x31, 0x31]);
  // The device thread's view (fromHandle) shares the same IOAPIC state.
  const h = vm.handle();
  assert.ok(h.ioapic instanceof SharedArrayBuffer);
});

test('--hypervisor on the command line', () => {
  const ok = parseArgs(['--hypervisor', 'mshv', '--kernel', '/k']);
  assert.equal(ok.kind === 'run' && ok.hypervisor, 'mshv');
  const none = parseArgs(['--kernel', '/k']);
  assert.equal(none.kind === 'run' && none.hypervisor, undefined);
  assert.throws(() => parseArgs(['--hypervisor', 'xen', '--kernel', '/k']), /--hypervisor: bad value "xen" \(expected kvm, mshv or auto\)/);
});

test('decodeMessage on random 256-byte messages never throws', () => {
  const info = new InterceptInfo();
  const m = new Uint8Array(abi.HV_MESSAGE_SIZE);
  const dv = new DataView(m.buffer);
  const types = [abi.HVMSG_X64_IO_PORT_INTERCEPT, abi.HVMSG_UNMAPPED_GPA, abi.HVMSG_X64_CPUID_INTERCEPT, abi.HVMSG_X64_APIC_EOI, abi.HVMSG_X64_HALT, 0x12345678];
  let s = 7;
  for (let k = 0; k < 5000; k++) {
    for (let i = 0; i < m.length; i++) { s = (s * 1103515245 + 12345) >>> 0; m[i] = s >>> 24; }
    dv.setUint32(0, types[k % types.length]!, true);
    decodeMessage(dv, info);
    assert.ok(info.insnCount <= 16 && info.gpa < 2 ** 64);
  }
});
