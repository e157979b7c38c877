// Writing a device's output (serial, virtio-console) to the host sink the user chose.
import { writeSync } from 'node:fs';

/**
 * Write the first `len` bytes of `bytes` to `fd`, retrying EAGAIN (a non-blocking terminal or
 * pipe). Returns false when the sink is gone (closed terminal or pipe): the caller then discards
 * its output from there on.
 */
export function writeAll(fd: number, bytes: Uint8Array, len = bytes.length): boolean {
  let off = 0;
  while (off < len) {
    try {
      off += writeSync(fd, bytes, off, len - off);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EAGAIN') continue;
      return false;
    }
  }
  return true;
}
