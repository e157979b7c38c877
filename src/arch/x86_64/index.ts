// x86-64 boot support: memory layout, bzImage and PVH loaders, initial vCPU state, CPUID, ACPI.
export * from './layout.js';
export * from './cmdline.js';
export * from './bzimage.js';
export * from './pvh.js';
export * from './regs.js';
export * from './cpuid.js';
export * from './acpi.js';
export * as aml from './aml.js';
