// Hypercalls through the root pass-through (MSHV_ROOT_HVCALL on a partition or VP fd): the
// input and output live in two preallocated pages; the kernel fills in partition_id.
// TLFS 3.x "Hypercall Interface": rep hypercalls report reps completed; status 0 is success.

import * as abi from './abi.js';
import type { MsiMessage } from '../hypervisor.js';
import type { MshvPage, MshvSys } from './sys.js';

const A = abi.layout.mshv_root_hvcall;

export class HvCaller {
  readonly input: MshvPage;
  readonly output: MshvPage;
  readonly in: DataView;
  readonly out: DataView;
  private readonly args = new Uint8Array(A.SIZE);
  private readonly argsDv = new DataView(this.args.buffer);

  constructor(private readonly sys: MshvSys, private readonly fd: number) {
    this.input = sys.allocPages(abi.MSHV_HV_PAGE_SIZE);
    this.output = sys.allocPages(abi.MSHV_HV_PAGE_SIZE);
    this.in = new DataView(this.input.bytes.buffer, this.input.bytes.byteOffset, abi.MSHV_HV_PAGE_SIZE);
    this.out = new DataView(this.output.bytes.buffer, this.output.bytes.byteOffset, abi.MSHV_HV_PAGE_SIZE);
  }

  /** Zero the first `n` input bytes (reserved fields must be zero). */
  clearInput(n: number): void {
    this.input.bytes.fill(0, 0, n);
  }

  /** Issue hypercall `code` with `inSz` input bytes; returns reps completed. Throws naming it. */
  call(code: number, name: string, inSz: number, outSz = 0, reps = 0): number {
    const dv = this.argsDv;
    this.args.fill(0);
    dv.setUint16(A.code, code, true);
    dv.setUint16(A.reps, reps, true);
    dv.setUint16(A.in_sz, inSz, true);
    dv.setUint16(A.out_sz, outSz, true);
    dv.setBigUint64(A.in_ptr, this.input.addr, true);
    dv.setBigUint64(A.out_ptr, outSz > 0 ? this.output.addr : 0n, true);
    this.sys.ioctl(this.fd, abi.MSHV_ROOT_HVCALL, this.args, `MSHV_ROOT_HVCALL(${name})`);
    const status = dv.getUint16(A.status, true);
    if (status !== abi.HV_STATUS_SUCCESS) throw new Error(`${name}: hypervisor status 0x${status.toString(16)}`);
    const done = dv.getUint16(A.reps, true);
    if (reps > 0 && done !== reps) throw new Error(`${name}: ${done} of ${reps} repetitions completed`);
    return done;
  }

  close(): void {
    this.sys.freePages(this.input);
    this.sys.freePages(this.output);
  }
}

/** HvCallSetPartitionProperty (TLFS; hv_input_set_partition_property). */
export function setPartitionProperty(h: HvCaller, code: number, value: bigint, name: string): void {
  const I = abi.layout.hv_input_set_partition_property;
  h.clearInput(I.SIZE);
  h.in.setUint32(I.property_code, code, true);
  h.in.setBigUint64(I.property_value, value, true);
  h.call(abi.HVCALL_SET_PARTITION_PROPERTY, `HvCallSetPartitionProperty(${name}=${value})`, I.SIZE);
}

/**
 * Deliver an MSI through HvCallAssertVirtualInterrupt (on a partition or VP fd): x86 MSI
 * address/data (SDM Vol. 3 11.11.1/11.11.2): destination APIC id = address[19:12],
 * logical = address[2], vector = data[7:0], delivery mode = data[10:8] (fixed, lowest
 * priority, NMI), level = data[15].
 */
export function assertMsi(h: HvCaller, msi: MsiMessage): void {
  const I = abi.layout.hv_input_assert_virtual_interrupt;
  const mode = (msi.data >> 8) & 7;
  const type = mode === 0 ? abi.HV_X64_INTERRUPT_TYPE_FIXED : mode === 1 ? abi.HV_X64_INTERRUPT_TYPE_LOWESTPRIORITY
    : mode === 4 ? abi.HV_X64_INTERRUPT_TYPE_NMI : -1;
  if (type < 0) throw new Error(`MSHV: MSI delivery mode ${mode} is not supported`);
  h.clearInput(I.SIZE);
  // hv_interrupt_control: interrupt_type (u32), then level_triggered:1, logical_dest_mode:1.
  h.in.setUint32(I.control, type, true);
  h.in.setUint32(I.control + 4, ((msi.data >> 15) & 1) | (((msi.addressLo >> 2) & 1) << 1), true);
  h.in.setBigUint64(I.dest_addr, BigInt((msi.addressLo >>> 12) & 0xff), true);
  h.in.setUint32(I.vector, msi.data & 0xff, true);
  h.call(abi.HVCALL_ASSERT_VIRTUAL_INTERRUPT, 'HvCallAssertVirtualInterrupt', I.SIZE);
}
