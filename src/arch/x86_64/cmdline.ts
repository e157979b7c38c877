// Kernel command line placement, shared by the bzImage and PVH loaders.

import type { GuestMemory } from '../../memory/guest_memory.js';
import { CMDLINE_MAX_SIZE, CMDLINE_START } from './layout.js';

export class CmdlineError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CmdlineError';
  }
}

/**
 * Write `cmdline` NUL-terminated at CMDLINE_START. `kernelLimit` is the kernel's own maximum
 * length excluding the NUL (setup header cmdline_size, boot.rst). Returns the address.
 * Only printable ASCII is accepted (the kernel parses bytes; anything else is almost surely a
 * caller bug).
 */
export function writeCmdline(mem: GuestMemory, cmdline: string, kernelLimit = CMDLINE_MAX_SIZE - 1): number {
  for (let i = 0; i < cmdline.length; i++) {
    const c = cmdline.charCodeAt(i);
    if (c < 0x20 || c > 0x7e) {
      throw new CmdlineError(`kernel command line has a non-printable or non-ASCII character (code ${c}) at index ${i}`);
    }
  }
  const limit = Math.min(kernelLimit, CMDLINE_MAX_SIZE - 1);
  if (cmdline.length > limit) {
    throw new CmdlineError(`kernel command line is ${cmdline.length} bytes; the limit is ${limit}`);
  }
  const bytes = new Uint8Array(cmdline.length + 1);
  for (let i = 0; i < cmdline.length; i++) bytes[i] = cmdline.charCodeAt(i);
  mem.writeBytes(CMDLINE_START, bytes);
  return CMDLINE_START;
}
