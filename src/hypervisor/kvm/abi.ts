// KVM userspace ABI for x86-64: ioctl numbers, constants, struct sizes and field offsets.
// Source of truth: include/uapi/linux/kvm.h and arch/x86/include/uapi/asm/kvm.h, and
// Documentation/virt/kvm/api.rst ("KVM API doc" below). Every numeric `KVM_*` export and every
// entry of `layout` is checked against the system header by the C probe in abi.test.ts, so
// names here are the C names, verbatim.

// ---------------------------------------------------------------------------------------------
// ioctl number encoding (include/uapi/asm-generic/ioctl.h)

export const _IOC_NONE = 0;
export const _IOC_WRITE = 1;
export const _IOC_READ = 2;

export function _IOC(dir: number, type: number, nr: number, size: number): number {
  // dir:2 | size:14 | type:8 | nr:8; kept unsigned (dir bits make it exceed 2^31).
  return ((dir << 30) | ((size & 0x3fff) << 16) | ((type & 0xff) << 8) | (nr & 0xff)) >>> 0;
}
export const _IO = (type: number, nr: number): number => _IOC(_IOC_NONE, type, nr, 0);
export const _IOR = (type: number, nr: number, size: number): number => _IOC(_IOC_READ, type, nr, size);
export const _IOW = (type: number, nr: number, size: number): number => _IOC(_IOC_WRITE, type, nr, size);
export const _IOWR = (type: number, nr: number, size: number): number => _IOC(_IOC_READ | _IOC_WRITE, type, nr, size);

export const KVMIO = 0xae;
export const KVM_API_VERSION = 12;

// ---------------------------------------------------------------------------------------------
// Struct layouts. Keys are C member names (nested objects for sub-structs/unions); SIZE is
// sizeof of the enclosing struct or member, OFFSET the offset of a nested member.

export const layout = {
  kvm_run: {
    SIZE: 2352,
    request_interrupt_window: 0,
    immediate_exit: 1,
    exit_reason: 8,
    ready_for_interrupt_injection: 12,
    if_flag: 13,
    flags: 14,
    cr8: 16,
    apic_base: 24,
    hw: { hardware_exit_reason: 32 },
    fail_entry: { hardware_entry_failure_reason: 32, cpu: 40 },
    ex: { exception: 32, error_code: 36 },
    io: { direction: 32, size: 33, port: 34, count: 36, data_offset: 40 },
    mmio: { phys_addr: 32, data: { OFFSET: 40, SIZE: 8 }, len: 48, is_write: 52 },
    internal: { suberror: 32, ndata: 36, data: { OFFSET: 40, SIZE: 128 } },
    system_event: { type: 32, ndata: 36, data: { OFFSET: 40, SIZE: 128 } },
    /** KVM_EXIT_HYPERV (KVM API doc 5, struct kvm_hyperv_exit). */
    hyperv: {
      OFFSET: 32,
      type: 32,
      u: {
        synic: { msr: 40, control: 48, evt_page: 56, msg_page: 64 },
        hcall: { input: 40, result: 48, params: { OFFSET: 56, SIZE: 16 } },
      },
    },
    kvm_valid_regs: 288,
    kvm_dirty_regs: 296,
    s: { OFFSET: 304, SIZE: 2048 },
  },
  kvm_regs: {
    SIZE: 144,
    rax: 0, rbx: 8, rcx: 16, rdx: 24, rsi: 32, rdi: 40, rsp: 48, rbp: 56,
    r8: 64, r9: 72, r10: 80, r11: 88, r12: 96, r13: 104, r14: 112, r15: 120,
    rip: 128, rflags: 136,
  },
  kvm_segment: {
    SIZE: 24,
    base: 0, limit: 8, selector: 12, type: 14, present: 15, dpl: 16, db: 17, s: 18, l: 19, g: 20,
    avl: 21, unusable: 22, padding: 23,
  },
  kvm_dtable: { SIZE: 16, base: 0, limit: 8, padding: 10 },
  kvm_sregs: {
    SIZE: 312,
    cs: 0, ds: 24, es: 48, fs: 72, gs: 96, ss: 120, tr: 144, ldt: 168, gdt: 192, idt: 208,
    cr0: 224, cr2: 232, cr3: 240, cr4: 248, cr8: 256, efer: 264, apic_base: 272, interrupt_bitmap: 280,
  },
  kvm_sregs2: {
    SIZE: 320,
    cs: 0, ds: 24, es: 48, fs: 72, gs: 96, ss: 120, tr: 144, ldt: 168, gdt: 192, idt: 208,
    cr0: 224, cr2: 232, cr3: 240, cr4: 248, cr8: 256, efer: 264, apic_base: 272, flags: 280, pdptrs: 288,
  },
  kvm_fpu: {
    SIZE: 416,
    fpr: 0, fcw: 128, fsw: 130, ftwx: 132, pad1: 133, last_opcode: 134, last_ip: 136, last_dp: 144,
    xmm: 152, mxcsr: 408, pad2: 412,
  },
  kvm_msr_entry: { SIZE: 16, index: 0, reserved: 4, data: 8 },
  kvm_msrs: { SIZE: 8, nmsrs: 0, pad: 4, entries: 8 },
  kvm_msr_list: { SIZE: 4, nmsrs: 0, indices: 4 },
  kvm_cpuid_entry2: { SIZE: 40, function: 0, index: 4, flags: 8, eax: 12, ebx: 16, ecx: 20, edx: 24, padding: 28 },
  kvm_cpuid2: { SIZE: 8, nent: 0, padding: 4, entries: 8 },
  kvm_lapic_state: { SIZE: 1024, regs: 0 },
  kvm_userspace_memory_region: { SIZE: 32, slot: 0, flags: 4, guest_phys_addr: 8, memory_size: 16, userspace_addr: 24 },
  kvm_irqfd: { SIZE: 32, fd: 0, gsi: 4, flags: 8, resamplefd: 12, pad: 16 },
  kvm_ioeventfd: { SIZE: 64, datamatch: 0, addr: 8, len: 16, fd: 20, flags: 24, pad: 28 },
  kvm_irq_routing: { SIZE: 8, nr: 0, flags: 4, entries: 8 },
  kvm_irq_routing_entry: {
    SIZE: 48, gsi: 0, type: 4, flags: 8, pad: 12,
    u: {
      OFFSET: 16,
      SIZE: 32,
      irqchip: { irqchip: 16, pin: 20 },
      msi: { address_lo: 16, address_hi: 20, data: 24, devid: 28 },
    },
  },
  kvm_irq_routing_irqchip: { SIZE: 8, irqchip: 0, pin: 4 },
  kvm_irq_routing_msi: { SIZE: 16, address_lo: 0, address_hi: 4, data: 8, devid: 12 },
  kvm_msi: { SIZE: 32, address_lo: 0, address_hi: 4, data: 8, flags: 12, devid: 16, pad: 20 },
  kvm_enable_cap: { SIZE: 104, cap: 0, flags: 4, args: 8, pad: 40 },
  kvm_pit_config: { SIZE: 64, flags: 0, pad: 4 },
  kvm_irq_level: { SIZE: 8, irq: 0, status: 0, level: 4 },
  kvm_irqchip: { SIZE: 520, chip_id: 0, pad: 4, chip: 8 },
  kvm_pic_state: {
    SIZE: 16, last_irr: 0, irr: 1, imr: 2, isr: 3, priority_add: 4, irq_base: 5, read_reg_select: 6,
    poll: 7, special_mask: 8, init_state: 9, auto_eoi: 10, rotate_on_auto_eoi: 11,
    special_fully_nested_mode: 12, init4: 13, elcr: 14, elcr_mask: 15,
  },
  kvm_ioapic_state: { SIZE: 216, base_address: 0, ioregsel: 8, id: 12, irr: 16, pad: 20, redirtbl: 24 },
  kvm_signal_mask: { SIZE: 4, len: 0, sigset: 4 },
  kvm_mp_state: { SIZE: 4, mp_state: 0 },
  kvm_interrupt: { SIZE: 4, irq: 0 },
  kvm_translation: { SIZE: 24, linear_address: 0, physical_address: 8, valid: 16, writeable: 17, usermode: 18 },
  kvm_vcpu_events: {
    SIZE: 64,
    exception: { injected: 0, nr: 1, has_error_code: 2, pending: 3, error_code: 4 },
    interrupt: { injected: 8, nr: 9, soft: 10, shadow: 11 },
    nmi: { injected: 12, pending: 13, masked: 14, pad: 15 },
    sipi_vector: 16, flags: 20,
    smi: { smm: 24, pending: 25, smm_inside_nmi: 26, latched_init: 27 },
    triple_fault: { pending: 28 },
    exception_has_payload: 55, exception_payload: 56,
  },
  kvm_debugregs: { SIZE: 128, db: 0, dr6: 32, dr7: 40, flags: 48, reserved: 56 },
  kvm_xcr: { SIZE: 16, xcr: 0, reserved: 4, value: 8 },
  kvm_xcrs: { SIZE: 392, nr_xcrs: 0, flags: 4, xcrs: 8, padding: 264 },
  kvm_xsave: { SIZE: 4096, region: 0 },
  kvm_clock_data: { SIZE: 48, clock: 0, flags: 8, pad0: 12, realtime: 16, host_tsc: 24, pad: 32 },
  kvm_pit_channel_state: { SIZE: 24, count: 0, latched_count: 4, count_latched: 6, status_latched: 7, status: 8, read_state: 9, write_state: 10, write_latch: 11, rw_mode: 12, mode: 13, bcd: 14, gate: 15, count_load_time: 16 },
  kvm_pit_state2: { SIZE: 112, channels: 0, flags: 72, reserved: 76 },
  kvm_coalesced_mmio_zone: { SIZE: 16, addr: 0, size: 8, pad: 12, pio: 12 },
  kvm_dirty_log: { SIZE: 16, slot: 0, padding1: 4, dirty_bitmap: 8 },
  kvm_hyperv_exit: {
    SIZE: 56, type: 0, pad1: 4,
    u: {
      OFFSET: 8,
      SIZE: 48,
      synic: { msr: 8, pad2: 12, control: 16, evt_page: 24, msg_page: 32 },
      hcall: { input: 8, result: 16, params: 24 },
    },
  },
} as const;

// Struct sizes used by the ioctl encodings below.
const S = layout;

// ---------------------------------------------------------------------------------------------
// ioctls on /dev/kvm (system)

export const KVM_GET_API_VERSION = _IO(KVMIO, 0x00);
export const KVM_CREATE_VM = _IO(KVMIO, 0x01);
export const KVM_GET_MSR_INDEX_LIST = _IOWR(KVMIO, 0x02, S.kvm_msr_list.SIZE);
export const KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03);
export const KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04);
export const KVM_GET_SUPPORTED_CPUID = _IOWR(KVMIO, 0x05, S.kvm_cpuid2.SIZE);
export const KVM_GET_EMULATED_CPUID = _IOWR(KVMIO, 0x09, S.kvm_cpuid2.SIZE);
export const KVM_GET_MSR_FEATURE_INDEX_LIST = _IOWR(KVMIO, 0x0a, S.kvm_msr_list.SIZE);
/**
 * Hyper-V CPUID leaves KVM can emulate (KVM API doc 4.118): on /dev/kvm with
 * KVM_CAP_SYS_HYPERV_CPUID, on a vCPU fd with KVM_CAP_HYPERV_CPUID. Same number on both.
 */
export const KVM_GET_SUPPORTED_HV_CPUID = _IOWR(KVMIO, 0xc1, S.kvm_cpuid2.SIZE);

// ioctls on a VM fd
export const KVM_SET_MEMORY_REGION = _IOW(KVMIO, 0x40, 24);
export const KVM_CREATE_VCPU = _IO(KVMIO, 0x41);
export const KVM_GET_DIRTY_LOG = _IOW(KVMIO, 0x42, S.kvm_dirty_log.SIZE);
export const KVM_SET_NR_MMU_PAGES = _IO(KVMIO, 0x44);
export const KVM_GET_NR_MMU_PAGES = _IO(KVMIO, 0x45);
export const KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, S.kvm_userspace_memory_region.SIZE);
export const KVM_SET_TSS_ADDR = _IO(KVMIO, 0x47);
export const KVM_SET_IDENTITY_MAP_ADDR = _IOW(KVMIO, 0x48, 8);
export const KVM_CREATE_IRQCHIP = _IO(KVMIO, 0x60);
export const KVM_IRQ_LINE = _IOW(KVMIO, 0x61, S.kvm_irq_level.SIZE);
export const KVM_GET_IRQCHIP = _IOWR(KVMIO, 0x62, S.kvm_irqchip.SIZE);
export const KVM_SET_IRQCHIP = _IOR(KVMIO, 0x63, S.kvm_irqchip.SIZE);
export const KVM_CREATE_PIT = _IO(KVMIO, 0x64);
export const KVM_IRQ_LINE_STATUS = _IOWR(KVMIO, 0x67, S.kvm_irq_level.SIZE);
export const KVM_REGISTER_COALESCED_MMIO = _IOW(KVMIO, 0x67, S.kvm_coalesced_mmio_zone.SIZE);
export const KVM_UNREGISTER_COALESCED_MMIO = _IOW(KVMIO, 0x68, S.kvm_coalesced_mmio_zone.SIZE);
export const KVM_SET_GSI_ROUTING = _IOW(KVMIO, 0x6a, S.kvm_irq_routing.SIZE);
export const KVM_REINJECT_CONTROL = _IO(KVMIO, 0x71);
export const KVM_IRQFD = _IOW(KVMIO, 0x76, S.kvm_irqfd.SIZE);
export const KVM_CREATE_PIT2 = _IOW(KVMIO, 0x77, S.kvm_pit_config.SIZE);
export const KVM_SET_BOOT_CPU_ID = _IO(KVMIO, 0x78);
export const KVM_IOEVENTFD = _IOW(KVMIO, 0x79, S.kvm_ioeventfd.SIZE);
export const KVM_SET_CLOCK = _IOW(KVMIO, 0x7b, S.kvm_clock_data.SIZE);
export const KVM_GET_CLOCK = _IOR(KVMIO, 0x7c, S.kvm_clock_data.SIZE);
export const KVM_GET_PIT2 = _IOR(KVMIO, 0x9f, S.kvm_pit_state2.SIZE);
export const KVM_SET_PIT2 = _IOW(KVMIO, 0xa0, S.kvm_pit_state2.SIZE);
export const KVM_SIGNAL_MSI = _IOW(KVMIO, 0xa5, S.kvm_msi.SIZE);
export const KVM_ENABLE_CAP = _IOW(KVMIO, 0xa3, S.kvm_enable_cap.SIZE);
export const KVM_GET_STATS_FD = _IO(KVMIO, 0xce);

// ioctls on a vCPU fd
export const KVM_RUN = _IO(KVMIO, 0x80);
export const KVM_GET_REGS = _IOR(KVMIO, 0x81, S.kvm_regs.SIZE);
export const KVM_SET_REGS = _IOW(KVMIO, 0x82, S.kvm_regs.SIZE);
export const KVM_GET_SREGS = _IOR(KVMIO, 0x83, S.kvm_sregs.SIZE);
export const KVM_SET_SREGS = _IOW(KVMIO, 0x84, S.kvm_sregs.SIZE);
export const KVM_TRANSLATE = _IOWR(KVMIO, 0x85, S.kvm_translation.SIZE);
export const KVM_INTERRUPT = _IOW(KVMIO, 0x86, S.kvm_interrupt.SIZE);
export const KVM_GET_MSRS = _IOWR(KVMIO, 0x88, S.kvm_msrs.SIZE);
export const KVM_SET_MSRS = _IOW(KVMIO, 0x89, S.kvm_msrs.SIZE);
export const KVM_SET_SIGNAL_MASK = _IOW(KVMIO, 0x8b, S.kvm_signal_mask.SIZE);
export const KVM_GET_FPU = _IOR(KVMIO, 0x8c, S.kvm_fpu.SIZE);
export const KVM_SET_FPU = _IOW(KVMIO, 0x8d, S.kvm_fpu.SIZE);
export const KVM_GET_LAPIC = _IOR(KVMIO, 0x8e, S.kvm_lapic_state.SIZE);
export const KVM_SET_LAPIC = _IOW(KVMIO, 0x8f, S.kvm_lapic_state.SIZE);
export const KVM_SET_CPUID2 = _IOW(KVMIO, 0x90, S.kvm_cpuid2.SIZE);
export const KVM_GET_CPUID2 = _IOWR(KVMIO, 0x91, S.kvm_cpuid2.SIZE);
export const KVM_GET_MP_STATE = _IOR(KVMIO, 0x98, S.kvm_mp_state.SIZE);
export const KVM_SET_MP_STATE = _IOW(KVMIO, 0x99, S.kvm_mp_state.SIZE);
export const KVM_NMI = _IO(KVMIO, 0x9a);
export const KVM_GET_VCPU_EVENTS = _IOR(KVMIO, 0x9f, S.kvm_vcpu_events.SIZE);
export const KVM_SET_VCPU_EVENTS = _IOW(KVMIO, 0xa0, S.kvm_vcpu_events.SIZE);
export const KVM_GET_DEBUGREGS = _IOR(KVMIO, 0xa1, S.kvm_debugregs.SIZE);
export const KVM_SET_DEBUGREGS = _IOW(KVMIO, 0xa2, S.kvm_debugregs.SIZE);
export const KVM_SET_TSC_KHZ = _IO(KVMIO, 0xa2);
export const KVM_GET_TSC_KHZ = _IO(KVMIO, 0xa3);
export const KVM_GET_XSAVE = _IOR(KVMIO, 0xa4, S.kvm_xsave.SIZE);
export const KVM_SET_XSAVE = _IOW(KVMIO, 0xa5, S.kvm_xsave.SIZE);
export const KVM_GET_XCRS = _IOR(KVMIO, 0xa6, S.kvm_xcrs.SIZE);
export const KVM_SET_XCRS = _IOW(KVMIO, 0xa7, S.kvm_xcrs.SIZE);
export const KVM_KVMCLOCK_CTRL = _IO(KVMIO, 0xad);
export const KVM_SMI = _IO(KVMIO, 0xb7);
export const KVM_GET_SREGS2 = _IOR(KVMIO, 0xcc, S.kvm_sregs2.SIZE);
export const KVM_SET_SREGS2 = _IOW(KVMIO, 0xcd, S.kvm_sregs2.SIZE);
/** Same struct as KVM_GET_XSAVE, but the buffer is KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) bytes (API doc 4.42). */
export const KVM_GET_XSAVE2 = _IOR(KVMIO, 0xcf, S.kvm_xsave.SIZE);

// ---------------------------------------------------------------------------------------------
// Exit reasons (kvm_run.exit_reason)

export const KVM_EXIT_UNKNOWN = 0;
export const KVM_EXIT_EXCEPTION = 1;
export const KVM_EXIT_IO = 2;
export const KVM_EXIT_HYPERCALL = 3;
export const KVM_EXIT_DEBUG = 4;
export const KVM_EXIT_HLT = 5;
export const KVM_EXIT_MMIO = 6;
export const KVM_EXIT_IRQ_WINDOW_OPEN = 7;
export const KVM_EXIT_SHUTDOWN = 8;
export const KVM_EXIT_FAIL_ENTRY = 9;
export const KVM_EXIT_INTR = 10;
export const KVM_EXIT_SET_TPR = 11;
export const KVM_EXIT_TPR_ACCESS = 12;
export const KVM_EXIT_NMI = 16;
export const KVM_EXIT_INTERNAL_ERROR = 17;
export const KVM_EXIT_OSI = 18;
export const KVM_EXIT_WATCHDOG = 21;
export const KVM_EXIT_EPR = 23;
export const KVM_EXIT_SYSTEM_EVENT = 24;
export const KVM_EXIT_IOAPIC_EOI = 26;
export const KVM_EXIT_HYPERV = 27;
export const KVM_EXIT_X86_RDMSR = 29;
export const KVM_EXIT_X86_WRMSR = 30;
export const KVM_EXIT_DIRTY_RING_FULL = 31;
export const KVM_EXIT_X86_BUS_LOCK = 33;
export const KVM_EXIT_XEN = 34;
export const KVM_EXIT_NOTIFY = 37;

// kvm_run.hyperv.type (KVM API doc 5, KVM_EXIT_HYPERV)
export const KVM_EXIT_HYPERV_SYNIC = 1;
export const KVM_EXIT_HYPERV_HCALL = 2;
export const KVM_EXIT_HYPERV_SYNDBG = 3;

export const KVM_EXIT_IO_IN = 0;
export const KVM_EXIT_IO_OUT = 1;

export const KVM_INTERNAL_ERROR_EMULATION = 1;
export const KVM_INTERNAL_ERROR_SIMUL_EX = 2;
export const KVM_INTERNAL_ERROR_DELIVERY_EV = 3;
export const KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON = 4;

export const KVM_SYSTEM_EVENT_SHUTDOWN = 1;
export const KVM_SYSTEM_EVENT_RESET = 2;
export const KVM_SYSTEM_EVENT_CRASH = 3;
export const KVM_SYSTEM_EVENT_WAKEUP = 4;
export const KVM_SYSTEM_EVENT_SUSPEND = 5;
export const KVM_SYSTEM_EVENT_SEV_TERM = 6;

// ---------------------------------------------------------------------------------------------
// Flags and enumerations

export const KVM_MEM_LOG_DIRTY_PAGES = 1;
export const KVM_MEM_READONLY = 2;

export const KVM_IRQFD_FLAG_DEASSIGN = 1;
export const KVM_IRQFD_FLAG_RESAMPLE = 2;

export const KVM_IOEVENTFD_FLAG_DATAMATCH = 1;
export const KVM_IOEVENTFD_FLAG_PIO = 2;
export const KVM_IOEVENTFD_FLAG_DEASSIGN = 4;

export const KVM_IRQ_ROUTING_IRQCHIP = 1;
export const KVM_IRQ_ROUTING_MSI = 2;
export const KVM_MSI_VALID_DEVID = 1;

export const KVM_IRQCHIP_PIC_MASTER = 0;
export const KVM_IRQCHIP_PIC_SLAVE = 1;
export const KVM_IRQCHIP_IOAPIC = 2;
export const KVM_NR_INTERRUPTS = 256;
export const KVM_APIC_REG_SIZE = 0x400;

export const KVM_PIT_SPEAKER_DUMMY = 1;
export const KVM_PIT_FLAGS_HPET_LEGACY = 0x1;
export const KVM_PIT_FLAGS_SPEAKER_DATA_ON = 0x2;

export const KVM_IOAPIC_NUM_PINS = 24;
export const KVM_MAX_XCRS = 16;

// kvm_vcpu_events.flags (KVM API doc 4.31/4.32)
export const KVM_VCPUEVENT_VALID_NMI_PENDING = 0x1;
export const KVM_VCPUEVENT_VALID_SIPI_VECTOR = 0x2;
export const KVM_VCPUEVENT_VALID_SHADOW = 0x4;
export const KVM_VCPUEVENT_VALID_SMM = 0x8;
export const KVM_VCPUEVENT_VALID_PAYLOAD = 0x10;
export const KVM_VCPUEVENT_VALID_TRIPLE_FAULT = 0x20;

// kvm_clock_data.flags (KVM API doc 4.55/4.56)
export const KVM_CLOCK_TSC_STABLE = 2;
export const KVM_CLOCK_REALTIME = 1 << 2;
export const KVM_CLOCK_HOST_TSC = 1 << 3;

export const KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1;

export const KVM_MP_STATE_RUNNABLE = 0;
export const KVM_MP_STATE_UNINITIALIZED = 1;
export const KVM_MP_STATE_INIT_RECEIVED = 2;
export const KVM_MP_STATE_HALTED = 3;
export const KVM_MP_STATE_SIPI_RECEIVED = 4;

export const KVM_X86_DISABLE_EXITS_MWAIT = 1;
export const KVM_X86_DISABLE_EXITS_HLT = 2;
export const KVM_X86_DISABLE_EXITS_PAUSE = 4;
export const KVM_X86_DISABLE_EXITS_CSTATE = 8;

export const KVM_X2APIC_API_USE_32BIT_IDS = 1;
export const KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK = 2;

// ---------------------------------------------------------------------------------------------
// Capabilities (KVM_CHECK_EXTENSION / KVM_ENABLE_CAP)

export const KVM_CAP_IRQCHIP = 0;
export const KVM_CAP_HLT = 1;
export const KVM_CAP_USER_MEMORY = 3;
export const KVM_CAP_SET_TSS_ADDR = 4;
export const KVM_CAP_EXT_CPUID = 7;
export const KVM_CAP_NR_VCPUS = 9;
export const KVM_CAP_NR_MEMSLOTS = 10;
export const KVM_CAP_PIT = 11;
export const KVM_CAP_MP_STATE = 14;
export const KVM_CAP_COALESCED_MMIO = 15;
export const KVM_CAP_SYNC_MMU = 16;
export const KVM_CAP_USER_NMI = 22;
export const KVM_CAP_SET_GUEST_DEBUG = 23;
export const KVM_CAP_IRQ_ROUTING = 25;
export const KVM_CAP_IRQ_INJECT_STATUS = 26;
export const KVM_CAP_IRQFD = 32;
export const KVM_CAP_PIT2 = 33;
export const KVM_CAP_SET_BOOT_CPU_ID = 34;
export const KVM_CAP_PIT_STATE2 = 35;
export const KVM_CAP_IOEVENTFD = 36;
export const KVM_CAP_SET_IDENTITY_MAP_ADDR = 37;
export const KVM_CAP_ADJUST_CLOCK = 39;
export const KVM_CAP_INTERNAL_ERROR_DATA = 40;
export const KVM_CAP_VCPU_EVENTS = 41;
export const KVM_CAP_DEBUGREGS = 50;
export const KVM_CAP_HYPERV = 44;
export const KVM_CAP_HYPERV_VAPIC = 45;
export const KVM_CAP_HYPERV_SPIN = 46;
export const KVM_CAP_ENABLE_CAP = 54;
export const KVM_CAP_XSAVE = 55;
export const KVM_CAP_XCRS = 56;
export const KVM_CAP_TSC_CONTROL = 60;
export const KVM_CAP_GET_TSC_KHZ = 61;
export const KVM_CAP_MAX_VCPUS = 66;
export const KVM_CAP_ONE_REG = 70;
export const KVM_CAP_TSC_DEADLINE_TIMER = 72;
export const KVM_CAP_SYNC_REGS = 74;
export const KVM_CAP_KVMCLOCK_CTRL = 76;
export const KVM_CAP_SIGNAL_MSI = 77;
export const KVM_CAP_READONLY_MEM = 81;
export const KVM_CAP_IRQFD_RESAMPLE = 82;
export const KVM_CAP_EXT_EMUL_CPUID = 95;
export const KVM_CAP_HYPERV_TIME = 96;
export const KVM_CAP_ENABLE_CAP_VM = 98;
export const KVM_CAP_IOEVENTFD_NO_LENGTH = 100;
export const KVM_CAP_CHECK_EXTENSION_VM = 105;
export const KVM_CAP_DISABLE_QUIRKS = 116;
export const KVM_CAP_X86_SMM = 117;
export const KVM_CAP_SPLIT_IRQCHIP = 121;
export const KVM_CAP_HYPERV_SYNIC = 123;
export const KVM_CAP_IOEVENTFD_ANY_LENGTH = 122;
export const KVM_CAP_MAX_VCPU_ID = 128;
export const KVM_CAP_X2APIC_API = 129;
export const KVM_CAP_MSI_DEVID = 131;
export const KVM_CAP_IMMEDIATE_EXIT = 136;
export const KVM_CAP_X86_DISABLE_EXITS = 143;
export const KVM_CAP_HYPERV_SYNIC2 = 148;
export const KVM_CAP_HYPERV_VP_INDEX = 149;
export const KVM_CAP_GET_MSR_FEATURES = 153;
export const KVM_CAP_NESTED_STATE = 157;
export const KVM_CAP_HYPERV_CPUID = 167;
export const KVM_CAP_COALESCED_PIO = 162;
export const KVM_CAP_EXCEPTION_PAYLOAD = 164;
export const KVM_CAP_HALT_POLL = 182;
export const KVM_CAP_X86_USER_SPACE_MSR = 188;
export const KVM_CAP_X86_MSR_FILTER = 189;
export const KVM_CAP_SYS_HYPERV_CPUID = 191;
export const KVM_CAP_DIRTY_LOG_RING = 192;
export const KVM_CAP_SREGS2 = 200;
export const KVM_CAP_BINARY_STATS_FD = 203;
export const KVM_CAP_XSAVE2 = 208;
export const KVM_CAP_VM_TSC_CONTROL = 214;
export const KVM_CAP_SYSTEM_EVENT_DATA = 215;
export const KVM_CAP_X86_TRIPLE_FAULT_EVENT = 218;
export const KVM_CAP_X86_NOTIFY_VMEXIT = 219;

/** x86 KVM_PIO_PAGE_OFFSET: the page of the vcpu mapping holding PIO data (KVM API doc 4.13). */
export const KVM_PIO_PAGE_OFFSET = 1;
