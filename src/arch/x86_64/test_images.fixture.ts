// Test-only helpers: the host's stock Debian kernel and its uncompressed vmlinux.
import { existsSync, readFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';

export const DEBIAN_BZIMAGE = '/boot/vmlinuz-6.1.0-57-amd64';

/** The bzImage bytes, or a reason string when it is not available. */
export function debianBzImage(): Uint8Array | string {
  if (!existsSync(DEBIAN_BZIMAGE)) return `${DEBIAN_BZIMAGE} not present`;
  return new Uint8Array(readFileSync(DEBIAN_BZIMAGE));
}

let vmlinuxCache: Uint8Array | string | undefined;

/**
 * Extract the vmlinux ELF from a bzImage: the compressed payload (setup header payload_offset /
 * payload_length, relative to the protected-mode kernel) piped through `xz -dc`. xz may exit 1
 * ("Unexpected end of input": the kernel's stream has no trailing padding); the output is used
 * when it is an ELF file.
 */
export function debianVmlinux(): Uint8Array | string {
  if (vmlinuxCache !== undefined) return vmlinuxCache;
  const bz = debianBzImage();
  if (typeof bz === 'string') return (vmlinuxCache = bz);
  const dv = new DataView(bz.buffer, bz.byteOffset, bz.byteLength);
  const setupSects = bz[0x1f1] === 0 ? 4 : bz[0x1f1]!;
  const off = (setupSects + 1) * 512 + dv.getUint32(0x248, true);
  const len = dv.getUint32(0x24c, true);
  const payload = bz.subarray(off, off + len);
  if (payload[0] !== 0xfd || payload[1] !== 0x37) return (vmlinuxCache = 'kernel payload is not XZ-compressed');
  const r = spawnSync('xz', ['-dc'], { input: payload, maxBuffer: 512 << 20 });
  if (r.error !== undefined) return (vmlinuxCache = `cannot run xz: ${r.error.message}`);
  const out = new Uint8Array(r.stdout.buffer, r.stdout.byteOffset, r.stdout.byteLength);
  if (out.length < 64 || out[0] !== 0x7f || out[1] !== 0x45) return (vmlinuxCache = `xz did not produce an ELF file (exit ${r.status})`);
  return (vmlinuxCache = out);
}
