// Decoding of the hv_message that MSHV_RUN_VP returns (TLFS 11.10 "SynIC Messages": a 16-byte
// header, then the x64 intercept message, hvhdk.h layouts in abi.ts). Fills a preallocated
// InterceptInfo; no allocation.

import * as abi from './abi.js';

const L = abi.layout;
const P = L.hv_message.u; // payload offset
const H = L.hv_x64_intercept_message_header;
const IO = L.hv_x64_io_port_intercept_message;
const MEM = L.hv_x64_memory_intercept_message;
const CPUID = L.hv_x64_cpuid_intercept_message;
const EOI = L.hv_x64_apic_eoi_message;

export class InterceptInfo {
  messageType = 0;
  payloadSize = 0;
  vpIndex = 0;
  instructionLength = 0;
  accessType = 0;
  rip = 0n;
  rflags = 0n;
  // HVMSG_X64_IO_PORT_INTERCEPT
  port = 0;
  accessSize = 0;
  stringOp = false;
  repPrefix = false;
  rax = 0n;
  rcx = 0n;
  rsi = 0n;
  rdi = 0n;
  // HVMSG_UNMAPPED_GPA / HVMSG_GPA_INTERCEPT
  gpa = 0;
  gva = 0n;
  /** Offset in the message buffer of the instruction bytes, and how many are valid (<= 16). */
  insnOffset = 0;
  insnCount = 0;
  // HVMSG_X64_CPUID_INTERCEPT: guest inputs and the hypervisor's default results
  cpuidRax = 0n; cpuidRcx = 0n;
  defaultRax = 0n; defaultRbx = 0n; defaultRcx = 0n; defaultRdx = 0n;
  // HVMSG_X64_APIC_EOI
  eoiVector = 0;
}

/** Decode `msg` (an hv_message, 256 bytes) into `out`. Returns the message type. */
export function decodeMessage(msg: DataView, out: InterceptInfo): number {
  const type = msg.getUint32(L.hv_message_header.message_type, true);
  out.messageType = type;
  out.payloadSize = msg.getUint8(L.hv_message_header.payload_size);
  switch (type) {
    case abi.HVMSG_X64_IO_PORT_INTERCEPT:
    case abi.HVMSG_UNMAPPED_GPA:
    case abi.HVMSG_GPA_INTERCEPT:
    case abi.HVMSG_X64_CPUID_INTERCEPT:
    case abi.HVMSG_X64_HALT:
    case abi.HVMSG_UNRECOVERABLE_EXCEPTION:
    case abi.HVMSG_X64_MSR_INTERCEPT:
    case abi.HVMSG_X64_EXCEPTION_INTERCEPT:
      decodeHeader(msg, out);
      break;
    default:
      break;
  }
  switch (type) {
    case abi.HVMSG_X64_IO_PORT_INTERCEPT: {
      out.port = msg.getUint16(P + IO.port_number, true);
      const ai = msg.getUint8(P + IO.access_info);
      out.accessSize = ai & abi.HV_X64_IO_ACCESS_SIZE_MASK;
      out.stringOp = (ai & abi.HV_X64_IO_STRING_OP) !== 0;
      out.repPrefix = (ai & abi.HV_X64_IO_REP_PREFIX) !== 0;
      out.insnCount = Math.min(msg.getUint8(P + IO.instruction_byte_count), 16);
      out.insnOffset = P + IO.instruction_bytes;
      out.rax = msg.getBigUint64(P + IO.rax, true);
      out.rcx = msg.getBigUint64(P + IO.rcx, true);
      out.rsi = msg.getBigUint64(P + IO.rsi, true);
      out.rdi = msg.getBigUint64(P + IO.rdi, true);
      break;
    }
    case abi.HVMSG_UNMAPPED_GPA:
    case abi.HVMSG_GPA_INTERCEPT: {
      out.insnCount = Math.min(msg.getUint8(P + MEM.instruction_byte_count), 16);
      out.insnOffset = P + MEM.instruction_bytes;
      out.gva = msg.getBigUint64(P + MEM.guest_virtual_address, true);
      // GPAs are < 2^52: exact as a number.
      out.gpa = msg.getUint32(P + MEM.guest_physical_address, true) + msg.getUint32(P + MEM.guest_physical_address + 4, true) * 0x100000000;
      break;
    }
    case abi.HVMSG_X64_CPUID_INTERCEPT:
      out.cpuidRax = msg.getBigUint64(P + CPUID.rax, true);
      out.cpuidRcx = msg.getBigUint64(P + CPUID.rcx, true);
      out.defaultRax = msg.getBigUint64(P + CPUID.default_result_rax, true);
      out.defaultRbx = msg.getBigUint64(P + CPUID.default_result_rbx, true);
      out.defaultRcx = msg.getBigUint64(P + CPUID.default_result_rcx, true);
      out.defaultRdx = msg.getBigUint64(P + CPUID.default_result_rdx, true);
      break;
    case abi.HVMSG_X64_APIC_EOI:
      out.vpIndex = msg.getUint32(P + EOI.vp_index, true);
      out.eoiVector = msg.getUint32(P + EOI.interrupt_vector, true);
      break;
    default:
      break;
  }
  return type;
}

function decodeHeader(msg: DataView, out: InterceptInfo): void {
  out.vpIndex = msg.getUint32(P + H.vp_index, true);
  out.instructionLength = msg.getUint8(P + abi.HV_X64_INSTRUCTION_LENGTH_BYTE) & 0x0f;
  out.accessType = msg.getUint8(P + H.intercept_access_type);
  out.rip = msg.getBigUint64(P + H.rip, true);
  out.rflags = msg.getBigUint64(P + H.rflags, true);
}
