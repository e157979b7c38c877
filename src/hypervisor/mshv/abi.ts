// MSHV (/dev/mshv, the Microsoft Hypervisor's root-partition driver) userspace ABI for x86-64,
// and the Hyper-V TLFS structures that travel through it, in one place.
//
// Sources of truth, each checked by the C probe in abi.test.ts:
//   * `MSHV_*` and `layout.mshv_*`: include/uapi/linux/mshv.h (Debian linux-libc-dev >= 6.15).
//   * `HV*` and the other `layout` entries: the TLFS ("Hypervisor Top-Level Functional
//     Specification" 6.0) as the kernel spells it in include/hyperv/hv{g,h}dk*.h (Debian
//     linux-headers-*-common), and, for what the kernel does not use itself (the x64 register
//     names, TIME_FREEZE, the intercept message bodies), Microsoft's headers as rust-vmm/mshv
//     ships them (hv-headers/). Names are the C names, verbatim.

export { _IO, _IOC, _IOR, _IOW, _IOWR } from '../kvm/abi.js';
import { _IO, _IOR, _IOW, _IOWR } from '../kvm/abi.js';

// ---------------------------------------------------------------------------------------------
// Struct layouts. Keys are C member names; SIZE is sizeof. Bitfields have no offset in C: they
// are described next to the byte that holds them (see HV_X64_* bit helpers below).

export const layout = {
  // ---- include/uapi/linux/mshv.h
  mshv_create_partition: { SIZE: 16, pt_flags: 0, pt_isolation: 8 },
  mshv_create_vp: { SIZE: 4, vp_index: 0 },
  mshv_user_mem_region: { SIZE: 32, size: 0, guest_pfn: 8, userspace_addr: 16, flags: 24, rsvd: 25 },
  mshv_user_irqfd: { SIZE: 16, fd: 0, resamplefd: 4, gsi: 8, flags: 12 },
  mshv_user_ioeventfd: { SIZE: 32, datamatch: 0, addr: 8, len: 16, fd: 20, flags: 24, rsvd: 28 },
  mshv_user_irq_entry: { SIZE: 16, gsi: 0, address_lo: 4, address_hi: 8, data: 12 },
  mshv_user_irq_table: { SIZE: 8, nr: 0, rsvd: 4, entries: 8 },
  mshv_root_hvcall: { SIZE: 32, code: 0, reps: 2, in_sz: 4, out_sz: 6, status: 8, rsvd: 10, in_ptr: 16, out_ptr: 24 },
  mshv_run_vp: { SIZE: 256, msg_buf: 0 },
  mshv_get_set_vp_state: { SIZE: 16, type: 0, rsvd: 1, buf_sz: 4, buf_ptr: 8 },

  // ---- TLFS: messages (TLFS 11.10 "SynIC messages"; hvgdk_mini.h)
  hv_message_header: { SIZE: 16, message_type: 0, payload_size: 4, message_flags: 5, reserved: 6, sender: 8 },
  hv_message: { SIZE: 256, header: 0, u: 16 },
  hv_x64_segment_register: { SIZE: 16, base: 0, limit: 8, selector: 12, attributes: 14 },
  hv_x64_table_register: { SIZE: 16, pad: 0, limit: 6, base: 8 },
  hv_x64_fp_control_status_register: { SIZE: 16, fp_control: 0, fp_status: 2, fp_tag: 4, reserved: 5, last_fp_op: 6, last_fp_rip: 8 },
  hv_x64_xmm_control_status_register: { SIZE: 16, last_fp_rdp: 0, xmm_status_control: 8, xmm_status_control_mask: 12 },
  // ---- TLFS: hypercall inputs (HvCallGet/SetVpRegisters 7.x, HvCallSetPartitionProperty)
  hv_register_assoc: { SIZE: 32, name: 0, reserved1: 4, reserved2: 8, value: 16 },
  hv_input_get_vp_registers: { SIZE: 16, partition_id: 0, vp_index: 8, input_vtl: 12, rsvd_z8: 13, rsvd_z16: 14, names: 16 },
  hv_input_set_vp_registers: { SIZE: 16, partition_id: 0, vp_index: 8, input_vtl: 12, rsvd_z8: 13, rsvd_z16: 14, elements: 16 },
  hv_input_set_partition_property: { SIZE: 24, partition_id: 0, property_code: 8, padding: 12, property_value: 16 },
  hv_input_install_intercept: { SIZE: 24, partition_id: 0, access_type: 8, intercept_type: 12, intercept_parameter: 16 },
  hv_input_register_intercept_result: { SIZE: 60, partition_id: 0, vp_index: 8, intercept_type: 12, parameters: 16 },
  hv_register_x64_cpuid_result_parameters: {
    SIZE: 44,
    input: { OFFSET: 0, SIZE: 12, eax: 0, ecx: 4, subleaf_specific: 8, always_override: 9, padding: 10 },
    result: { OFFSET: 12, SIZE: 32, eax: 12, eax_mask: 16, ebx: 20, ebx_mask: 24, ecx: 28, ecx_mask: 32, edx: 36, edx_mask: 40 },
  },
  hv_input_assert_virtual_interrupt: { SIZE: 32, partition_id: 0, control: 8, dest_addr: 16, vector: 24, target_vtl: 28, rsvd_z0: 29, rsvd_z1: 30 },
  // ---- TLFS: x64 intercept messages (payload of hv_message, i.e. at hv_message.u)
  hv_x64_intercept_message_header: {
    // Byte 4 holds instruction_length:4 | cr8:4 (a bitfield: HV_X64_INSTRUCTION_LENGTH_BYTE).
    SIZE: 40, vp_index: 0, intercept_access_type: 5, execution_state: 6, cs_segment: 8, rip: 24, rflags: 32,
  },
  hv_x64_io_port_intercept_message: {
    SIZE: 128, header: 0, port_number: 40, access_info: 42, instruction_byte_count: 43, reserved: 44, rax: 48,
    instruction_bytes: 56, ds_segment: 72, es_segment: 88, rcx: 104, rsi: 112, rdi: 120,
  },
  hv_x64_memory_intercept_message: {
    SIZE: 80, header: 0, cache_type: 40, instruction_byte_count: 44, memory_access_info: 45, tpr_priority: 46,
    reserved1: 47, guest_virtual_address: 48, guest_physical_address: 56, instruction_bytes: 64,
  },
  hv_x64_cpuid_intercept_message: {
    SIZE: 104, header: 0, rax: 40, rcx: 48, rdx: 56, rbx: 64,
    default_result_rax: 72, default_result_rcx: 80, default_result_rdx: 88, default_result_rbx: 96,
  },
  hv_x64_msr_intercept_message: { SIZE: 64, header: 0, msr_number: 40, reserved: 44, rdx: 48, rax: 56 },
  hv_x64_halt_message: { SIZE: 40, header: 0 },
  hv_x64_unrecoverable_exception_message: { SIZE: 40, header: 0 },
  hv_x64_apic_eoi_message: { SIZE: 8, vp_index: 0, interrupt_vector: 4 },
} as const;

const S = layout;

/** Byte offset of the instruction_length:4 | cr8:4 bitfield in hv_x64_intercept_message_header. */
export const HV_X64_INSTRUCTION_LENGTH_BYTE = 4;

// ---------------------------------------------------------------------------------------------
// include/uapi/linux/mshv.h

export const MSHV_IOCTL = 0xb8;

export const MSHV_PT_BIT_LAPIC = 0;
export const MSHV_PT_BIT_X2APIC = 1;
export const MSHV_PT_BIT_GPA_SUPER_PAGES = 2;
export const MSHV_PT_BIT_CPU_AND_XSAVE_FEATURES = 3;
export const MSHV_PT_BIT_NESTED_VIRTUALIZATION = 4;
export const MSHV_PT_BIT_SMT_ENABLED_GUEST = 5;
export const MSHV_PT_BIT_COUNT = 6;
export const MSHV_PT_ISOLATION_NONE = 0;

export const MSHV_SET_MEM_BIT_WRITABLE = 0;
export const MSHV_SET_MEM_BIT_EXECUTABLE = 1;
export const MSHV_SET_MEM_BIT_UNMAP = 2;
export const MSHV_HV_PAGE_SIZE = 0x1000;

export const MSHV_IRQFD_BIT_DEASSIGN = 0;
export const MSHV_IRQFD_BIT_RESAMPLE = 1;

export const MSHV_IOEVENTFD_BIT_DATAMATCH = 0;
export const MSHV_IOEVENTFD_BIT_PIO = 1;
export const MSHV_IOEVENTFD_BIT_DEASSIGN = 2;

export const MSHV_RUN_VP_BUF_SZ = 256;
export const MSHV_VP_MMAP_OFFSET_REGISTERS = 0;
export const MSHV_VP_MMAP_OFFSET_INTERCEPT_MESSAGE = 1;

export const MSHV_VP_STATE_LAPIC = 0;
export const MSHV_VP_STATE_XSAVE = 1;

/** /dev/mshv */
export const MSHV_CREATE_PARTITION = _IOW(MSHV_IOCTL, 0x00, S.mshv_create_partition.SIZE);
/** Partition fd */
export const MSHV_INITIALIZE_PARTITION = _IO(MSHV_IOCTL, 0x00);
export const MSHV_CREATE_VP = _IOW(MSHV_IOCTL, 0x01, S.mshv_create_vp.SIZE);
export const MSHV_SET_GUEST_MEMORY = _IOW(MSHV_IOCTL, 0x02, S.mshv_user_mem_region.SIZE);
export const MSHV_IRQFD = _IOW(MSHV_IOCTL, 0x03, S.mshv_user_irqfd.SIZE);
export const MSHV_IOEVENTFD = _IOW(MSHV_IOCTL, 0x04, S.mshv_user_ioeventfd.SIZE);
export const MSHV_SET_MSI_ROUTING = _IOW(MSHV_IOCTL, 0x05, S.mshv_user_irq_table.SIZE);
/** Partition fd and VP fd */
export const MSHV_ROOT_HVCALL = _IOWR(MSHV_IOCTL, 0x07, S.mshv_root_hvcall.SIZE);
/** VP fd */
export const MSHV_RUN_VP = _IOR(MSHV_IOCTL, 0x00, S.mshv_run_vp.SIZE);
export const MSHV_GET_VP_STATE = _IOWR(MSHV_IOCTL, 0x01, S.mshv_get_set_vp_state.SIZE);
export const MSHV_SET_VP_STATE = _IOWR(MSHV_IOCTL, 0x02, S.mshv_get_set_vp_state.SIZE);

// ---------------------------------------------------------------------------------------------
// TLFS: hypercall codes (TLFS Appendix A "Hypercall Code Reference"), status, messages

export const HVCALL_GET_PARTITION_PROPERTY = 0x0044;
export const HVCALL_SET_PARTITION_PROPERTY = 0x0045;
export const HVCALL_INSTALL_INTERCEPT = 0x004d;
export const HVCALL_GET_VP_REGISTERS = 0x0050;
export const HVCALL_SET_VP_REGISTERS = 0x0051;
export const HVCALL_REGISTER_INTERCEPT_RESULT = 0x0091;
export const HVCALL_ASSERT_VIRTUAL_INTERRUPT = 0x0094;

export const HV_STATUS_SUCCESS = 0;
export const HV_MESSAGE_SIZE = 256;
export const HV_MESSAGE_PAYLOAD_BYTE_COUNT = 240;

export const HVMSG_NONE = 0x00000000;
export const HVMSG_UNMAPPED_GPA = 0x80000000;
export const HVMSG_GPA_INTERCEPT = 0x80000001;
export const HVMSG_TIMER_EXPIRED = 0x80000010;
export const HVMSG_INVALID_VP_REGISTER_VALUE = 0x80000020;
export const HVMSG_UNRECOVERABLE_EXCEPTION = 0x80000021;
export const HVMSG_UNSUPPORTED_FEATURE = 0x80000022;
export const HVMSG_X64_IO_PORT_INTERCEPT = 0x80010000;
export const HVMSG_X64_MSR_INTERCEPT = 0x80010001;
export const HVMSG_X64_CPUID_INTERCEPT = 0x80010002;
export const HVMSG_X64_EXCEPTION_INTERCEPT = 0x80010003;
export const HVMSG_X64_APIC_EOI = 0x80010004;
export const HVMSG_X64_HALT = 0x80010007;

export const HV_INTERCEPT_ACCESS_READ = 0;
export const HV_INTERCEPT_ACCESS_WRITE = 1;
export const HV_INTERCEPT_ACCESS_EXECUTE = 2;

export const HV_INTERCEPT_TYPE_X64_IO_PORT = 0x00000000;
export const HV_INTERCEPT_TYPE_X64_MSR = 0x00000001;
export const HV_INTERCEPT_TYPE_X64_CPUID = 0x00000002;
export const HV_INTERCEPT_TYPE_EXCEPTION = 0x00000003;
export const HV_INTERCEPT_TYPE_MMIO = 0x00000005;

// hv_x64_io_port_access_info (bitfield byte): access_size:3 | string_op:1 | rep_prefix:1
export const HV_X64_IO_ACCESS_SIZE_MASK = 0x07;
export const HV_X64_IO_STRING_OP = 0x08;
export const HV_X64_IO_REP_PREFIX = 0x10;

// ---------------------------------------------------------------------------------------------
// TLFS: partition properties (HV_PARTITION_PROPERTY_CODE)

export const HV_PARTITION_PROPERTY_SYNTHETIC_PROC_FEATURES = 0x00010001;
export const HV_PARTITION_PROPERTY_TIME_FREEZE = 0x00030003;
export const HV_PARTITION_PROPERTY_UNIMPLEMENTED_MSR_ACTION = 0x00050017;
export const HV_UNIMPLEMENTED_MSR_ACTION_IGNORE_WRITE_READ_ZERO = 1;

/**
 * hv_partition_synthetic_processor_features (hvhdk.h, bit order of its bitfield): what the
 * child partition may use, set before MSHV_INITIALIZE_PARTITION: hypervisor_present(0), hv1(1),
 * access_partition_reference_counter(3), access_synic_regs(4), access_synthetic_timer_regs(5),
 * access_intr_ctrl_regs(6), access_hypercall_regs(7), access_vp_index(8),
 * access_partition_reference_tsc(9), access_guest_idle_reg(10), access_frequency_regs(11),
 * direct_synthetic_timers(22), tb_flush_hypercalls(25), synthetic_cluster_ipi(26). (A subset of
 * what rust-vmm's make_default_synthetic_features_mask sets; it also intersects with the host's
 * assignable set, which this backend does not query.)
 */
export const HV_DEFAULT_SYNTHETIC_PROC_FEATURES = 0xffbn | (1n << 22n) | (1n << 25n) | (1n << 26n);

// ---------------------------------------------------------------------------------------------
// TLFS: register names (HV_REGISTER_NAME, TLFS 7.x / Appendix "Virtual Processor Register Names")

export const HV_X64_REGISTER_RAX = 0x00020000;
export const HV_X64_REGISTER_RCX = 0x00020001;
export const HV_X64_REGISTER_RDX = 0x00020002;
export const HV_X64_REGISTER_RBX = 0x00020003;
export const HV_X64_REGISTER_RSP = 0x00020004;
export const HV_X64_REGISTER_RBP = 0x00020005;
export const HV_X64_REGISTER_RSI = 0x00020006;
export const HV_X64_REGISTER_RDI = 0x00020007;
export const HV_X64_REGISTER_R8 = 0x00020008;
export const HV_X64_REGISTER_R9 = 0x00020009;
export const HV_X64_REGISTER_R10 = 0x0002000a;
export const HV_X64_REGISTER_R11 = 0x0002000b;
export const HV_X64_REGISTER_R12 = 0x0002000c;
export const HV_X64_REGISTER_R13 = 0x0002000d;
export const HV_X64_REGISTER_R14 = 0x0002000e;
export const HV_X64_REGISTER_R15 = 0x0002000f;
export const HV_X64_REGISTER_RIP = 0x00020010;
export const HV_X64_REGISTER_RFLAGS = 0x00020011;
export const HV_X64_REGISTER_CR0 = 0x00040000;
export const HV_X64_REGISTER_CR2 = 0x00040001;
export const HV_X64_REGISTER_CR3 = 0x00040002;
export const HV_X64_REGISTER_CR4 = 0x00040003;
export const HV_X64_REGISTER_CR8 = 0x00040004;
export const HV_X64_REGISTER_ES = 0x00060000;
export const HV_X64_REGISTER_CS = 0x00060001;
export const HV_X64_REGISTER_SS = 0x00060002;
export const HV_X64_REGISTER_DS = 0x00060003;
export const HV_X64_REGISTER_FS = 0x00060004;
export const HV_X64_REGISTER_GS = 0x00060005;
export const HV_X64_REGISTER_LDTR = 0x00060006;
export const HV_X64_REGISTER_TR = 0x00060007;
export const HV_X64_REGISTER_IDTR = 0x00070000;
export const HV_X64_REGISTER_GDTR = 0x00070001;
export const HV_X64_REGISTER_TSC = 0x00080000;
export const HV_X64_REGISTER_EFER = 0x00080001;
export const HV_X64_REGISTER_KERNEL_GS_BASE = 0x00080002;
export const HV_X64_REGISTER_APIC_BASE = 0x00080003;
export const HV_X64_REGISTER_PAT = 0x00080004;
export const HV_X64_REGISTER_SYSENTER_CS = 0x00080005;
export const HV_X64_REGISTER_SYSENTER_EIP = 0x00080006;
export const HV_X64_REGISTER_SYSENTER_ESP = 0x00080007;
export const HV_X64_REGISTER_STAR = 0x00080008;
export const HV_X64_REGISTER_LSTAR = 0x00080009;
export const HV_X64_REGISTER_CSTAR = 0x0008000a;
export const HV_X64_REGISTER_SFMASK = 0x0008000b;
export const HV_X64_REGISTER_MSR_MTRR_DEF_TYPE = 0x0008000e;
export const HV_X64_REGISTER_XMM0 = 0x00030000;
export const HV_X64_REGISTER_FP_MMX0 = 0x00030010;
export const HV_X64_REGISTER_FP_CONTROL_STATUS = 0x00030018;
export const HV_X64_REGISTER_XMM_CONTROL_STATUS = 0x00030019;

/** GPR names in the x86 encoding order (ModRM reg/rm numbers 0..15: rax, rcx, rdx, rbx, ...). */
export const HV_X64_GPR_BY_ENCODING: readonly number[] = [
  HV_X64_REGISTER_RAX, HV_X64_REGISTER_RCX, HV_X64_REGISTER_RDX, HV_X64_REGISTER_RBX,
  HV_X64_REGISTER_RSP, HV_X64_REGISTER_RBP, HV_X64_REGISTER_RSI, HV_X64_REGISTER_RDI,
  HV_X64_REGISTER_R8, HV_X64_REGISTER_R9, HV_X64_REGISTER_R10, HV_X64_REGISTER_R11,
  HV_X64_REGISTER_R12, HV_X64_REGISTER_R13, HV_X64_REGISTER_R14, HV_X64_REGISTER_R15,
];

/** hv_interrupt_control.interrupt_type (HV_INTERRUPT_TYPE, TLFS 11.x): fixed = 0. */
export const HV_X64_INTERRUPT_TYPE_FIXED = 0x0000;
export const HV_X64_INTERRUPT_TYPE_LOWESTPRIORITY = 0x0001;
export const HV_X64_INTERRUPT_TYPE_NMI = 0x0004;
