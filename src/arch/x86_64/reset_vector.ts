// A minimal "firmware" at the x86 reset vector. Linux on hardware-reduced ACPI without EFI runtime
// services ends its default reboot sequence with BOOT_BIOS (arch/x86/kernel/reboot.c): it drops
// to real mode and jumps to F000:FFF0, where a PC has its BIOS. With no firmware there the guest
// would run zeros forever; this stub asks the i8042 to pulse the reset line, like a BIOS's warm
// reset, so the VMM sees the reset.
import type { GuestMemory } from '../../memory/guest_memory.js';

/** Physical address of the real-mode reset vector F000:FFF0. */
export const RESET_VECTOR = 0xffff0;

/** mov al, 0xfe; out 0x64, al; hlt; jmp $-1 (back to the hlt). */
export const RESET_VECTOR_STUB: readonly number[] = [0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd];

export function writeResetVectorStub(mem: GuestMemory): void {
  mem.writeBytes(RESET_VECTOR, Uint8Array.from(RESET_VECTOR_STUB));
}
