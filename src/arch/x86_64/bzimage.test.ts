import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GuestMemory } from '../../memory/guest_memory.js';
import {
  BP, buildBootParams, HDR, KernelImageError, loadBzImage, parseBzImage, XLF_KERNEL_64,
} from './bzimage.js';
import { CMDLINE_START, e820Map, MiB, ZERO_PAGE_START } from './layout.js';
import { debianBzImage } from './test_images.fixture.js';
import { FileImage } from './image_source.js';
import { mkdtempSync, rmSync, writeFileSync, truncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const tmp = mkdtempSync(join(tmpdir(), 'stv-bzimage-'));
process.on('exit', () => rmSync(tmp, { recursive: true, force: true }));
let files = 0;

/** `bytes` as an open file image (what the VMM loads from), in a temporary folder. */
function fileOf(bytes: Uint8Array): FileImage {
  const p = join(tmp, `img-${files++}`);
  writeFileSync(p, bytes);
  return new FileImage(p);
}

interface Fake { version?: number; xlf?: number; setupSects?: number; kernelSize?: number; loadflags?: number; syssize?: number }

/** A minimal well-formed bzImage: setup sectors with a 2.15 header, then a marked kernel. */
function fakeBzImage(o: Fake = {}): Uint8Array {
  const setupSects = o.setupSects ?? 4;
  const kernelSize = o.kernelSize ?? 0x4000;
  const realSects = setupSects === 0 ? 4 : setupSects;
  const img = new Uint8Array((realSects + 1) * 512 + kernelSize);
  const dv = new DataView(img.buffer);
  img[HDR.setup_sects] = setupSects;
  dv.setUint32(HDR.syssize, o.syssize ?? Math.ceil(kernelSize / 16), true);
  dv.setUint16(HDR.boot_flag, 0xaa55, true);
  img[0x200] = 0xeb; img[0x201] = 0x6a; // jmp: header ends at 0x26c
  dv.setUint32(HDR.header, 0x53726448, true);
  dv.setUint16(HDR.version, o.version ?? 0x020f, true);
  img[HDR.loadflags] = o.loadflags ?? 1;
  dv.setUint32(HDR.code32_start, 0x100000, true);
  dv.setUint32(HDR.initrd_addr_max, 0x7fffffff, true);
  dv.setUint32(HDR.kernel_alignment, 0x200000, true);
  img[HDR.relocatable_kernel] = 1;
  dv.setUint16(HDR.xloadflags, o.xlf ?? 0x7f, true);
  dv.setUint32(HDR.cmdline_size, 2047, true);
  dv.setUint32(HDR.payload_offset, 0x100, true);
  dv.setUint32(HDR.payload_length, 0x200, true);
  dv.setBigUint64(HDR.pref_address, 0x1000000n, true);
  dv.setUint32(HDR.init_size, 0x400000, true);
  const k = (realSects + 1) * 512;
  img[k] = 0x4b; img[k + 0x200] = 0x64; img[img.length - 1] = 0xee; // markers
  return img;
}

function mem(size: number): GuestMemory {
  return GuestMemory.fromBuffers([{ gpa: 0, buffer: new ArrayBuffer(size) }]);
}

/** Rejected with a message matching `re`, from bytes and from a file alike. */
function rejects(img: Uint8Array, re: RegExp): void {
  assert.throws(() => parseBzImage(img), (e: unknown) => e instanceof KernelImageError && re.test(e.message), re.source);
  const f = fileOf(img);
  try {
    assert.throws(() => parseBzImage(f), (e: unknown) => e instanceof KernelImageError && re.test(e.message), `${re.source} (from a file)`);
  } finally {
    f.close();
  }
}

test('parse a synthetic bzImage', () => {
  const b = parseBzImage(fakeBzImage());
  assert.equal(b.kernelOffset, 5 * 512);
  assert.equal(b.header.version, 0x20f);
  assert.equal(b.header.headerEnd, 0x26c);
  assert.equal(b.header.relocatable, true);
  assert.equal(b.header.prefAddress, 0x1000000n);
  assert.equal(b.kernelSize, fakeBzImage().length - 5 * 512);
  assert.equal(fakeBzImage()[b.kernelOffset], 0x4b);
  assert.equal(parseBzImage(fakeBzImage({ setupSects: 0 })).kernelOffset, 5 * 512); // 0 means 4
});

test('reject non-kernel, truncated, old and 32-bit-only images with clear messages', () => {
  rejects(new TextEncoder().encode('#!/bin/sh\necho not a kernel\n'), /not a Linux kernel image: file is only 28 bytes/);
  rejects(new Uint8Array(4096), /not a Linux kernel image: boot_flag at 0x1fe is 0x0, expected 0xaa55/);
  const noHdrs = fakeBzImage(); noHdrs.fill(0, 0x202, 0x206);
  rejects(noHdrs, /no "HdrS" setup header magic/);
  rejects(fakeBzImage().subarray(0, 0x204), /truncated bzImage: 516 bytes, the setup header is cut off before its "HdrS" magic/);
  rejects(fakeBzImage().subarray(0, 0x206), /truncated bzImage: 518 bytes, the setup header is cut off before its boot protocol version at 0x206/);
  rejects(fakeBzImage().subarray(0, 0x207), /truncated bzImage: 519 bytes, the setup header is cut off before its boot protocol version/);
  rejects(fakeBzImage().subarray(0, 0x240), /truncated bzImage: 576 bytes, the setup header needs 620/);
  rejects(fakeBzImage().subarray(0, 2000), /truncated bzImage: 2000 bytes, but the setup code alone is 2560 bytes/);
  rejects(fakeBzImage().subarray(0, 5 * 512 + 0x1000), /truncated bzImage: syssize says the protected-mode kernel is 16384 bytes, the file has 4096/);
  rejects(fakeBzImage({ version: 0x0206 }), /boot protocol 2\.06 is too old: 2\.12 or later/);
  rejects(fakeBzImage({ xlf: 0 }), /no 64-bit entry point \(xloadflags XLF_KERNEL_64 clear\)/);
  rejects(fakeBzImage({ loadflags: 0 }), /zImage/);
  const badPayload = fakeBzImage(); new DataView(badPayload.buffer).setUint32(HDR.payload_length, 0x10000, true);
  rejects(badPayload, /payload 0x100\+0x10000 runs past/);
});

test('every truncation of a bzImage (0..0x300 bytes, with the magic) gets a KernelImageError naming the problem', () => {
  const full = fakeBzImage();
  for (let len = 0; len <= 0x300; len++) {
    // A copy, so the DataView covers exactly `len` bytes (as a file of that size would).
    const img = full.slice(0, len);
    assert.throws(() => parseBzImage(img), (e: unknown) => {
      assert.ok(e instanceof KernelImageError, `length ${len}: ${(e as Error).name}: ${(e as Error).message}`);
      assert.match(e.message, /truncated bzImage|not a Linux kernel image/, `length ${len}`);
      return true;
    });
  }
  // Same with the header's own length byte at its maximum (header up to 0x301).
  const long = fakeBzImage(); long[0x201] = 0xff;
  for (let len = 0x200; len <= 0x300; len++) {
    assert.throws(() => parseBzImage(long.slice(0, len)), KernelImageError, `length ${len}`);
  }
});

test('load a synthetic bzImage: kernel at 1 MiB, boot_params filled in', () => {
  const m = mem(128 * MiB);
  const initrd = new Uint8Array(3 * 4096 + 5).fill(0x5a);
  const r = loadBzImage(m, fakeBzImage(), { cmdline: 'console=ttyS0 reboot=k', initramfs: initrd, rsdpAddr: 0xe0000 });
  assert.equal(r.loadAddr, 0x100000);
  assert.equal(r.entry, 0x100200);
  assert.equal(r.bootParamsAddr, ZERO_PAGE_START);
  assert.equal(m.readU8(0x100000), 0x4b);
  assert.equal(m.readU8(0x100200), 0x64);
  const zp = (off: number): number => m.readU32(ZERO_PAGE_START + off);
  assert.equal(m.readU16(ZERO_PAGE_START + HDR.boot_flag), 0xaa55);
  assert.equal(zp(HDR.header), 0x53726448);
  assert.equal(m.readU8(ZERO_PAGE_START + HDR.type_of_loader), 0xff);
  assert.equal(m.readU8(ZERO_PAGE_START + HDR.loadflags) & 1, 1);
  assert.equal(zp(HDR.cmd_line_ptr), CMDLINE_START);
  assert.equal(zp(BP.ext_cmd_line_ptr), 0);
  assert.equal(zp(HDR.cmdline_size), 2047);
  assert.equal(new TextDecoder().decode(m.slice(CMDLINE_START, 22)), 'console=ttyS0 reboot=k');
  assert.equal(m.readU8(CMDLINE_START + 22), 0);
  assert.ok(r.initramfs);
  assert.equal(zp(HDR.ramdisk_image), r.initramfs.addr);
  assert.equal(zp(HDR.ramdisk_size), initrd.length);
  assert.equal(zp(BP.ext_ramdisk_image), 0);
  assert.equal(r.initramfs.addr % 4096, 0);
  assert.ok(r.initramfs.addr >= 0x1000000 + 0x400000, 'initramfs above the kernel runtime footprint');
  assert.ok(r.initramfs.addr + initrd.length <= 128 * MiB);
  assert.equal(m.readU8(r.initramfs.addr + initrd.length - 1), 0x5a);
  assert.equal(m.readU64(ZERO_PAGE_START + BP.acpi_rsdp_addr), 0xe0000n);
  const e820 = e820Map(128 * MiB);
  assert.equal(m.readU8(ZERO_PAGE_START + BP.e820_entries), e820.length);
  e820.forEach((e, i) => {
    const off = ZERO_PAGE_START + BP.e820_table + 20 * i;
    assert.equal(m.readU64(off), BigInt(e.addr));
    assert.equal(m.readU64(off + 8), BigInt(e.size));
    assert.equal(m.readU32(off + 16), e.type);
  });
});

test('load errors: command line too long, RAM too small, bad characters', () => {
  assert.throws(() => loadBzImage(mem(128 * MiB), fakeBzImage(), { cmdline: 'x'.repeat(2048) }), /command line is 2048 bytes; the limit is 2047/);
  assert.throws(() => loadBzImage(mem(128 * MiB), fakeBzImage(), { cmdline: 'a\nb' }), /non-printable/);
  assert.throws(() => loadBzImage(mem(16 * MiB), fakeBzImage(), { cmdline: '' }), KernelImageError);
  assert.throws(() => loadBzImage(mem(32 * MiB), fakeBzImage(), { cmdline: '', initramfs: new Uint8Array(20 * MiB) }), /initramfs placement/);
});

test('buildBootParams rejects more than 128 e820 entries', () => {
  const hdr = parseBzImage(fakeBzImage()).headerBytes;
  const e820 = Array.from({ length: 129 }, (_, i) => ({ addr: i * 4096, size: 4096, type: 1 }));
  assert.throws(() => buildBootParams(hdr, { cmdlineAddr: CMDLINE_START, e820, loadAddr: 0x100000 }), /too many e820 entries/);
});

test('Debian stock kernel: parse and load', (t) => {
  const img = debianBzImage();
  if (typeof img === 'string') { t.skip(img); return; }
  const b = parseBzImage(img);
  assert.ok(b.header.version >= 0x20c);
  assert.ok((b.header.xloadflags & XLF_KERNEL_64) !== 0);
  assert.equal(b.header.relocatable, true);
  assert.equal(b.header.kernelAlignment, 0x200000);
  assert.ok(b.header.initSize > b.kernelSize);
  const kernel = img.subarray(b.kernelOffset);
  assert.equal(kernel.length, b.kernelSize);
  const dv = new DataView(kernel.buffer, kernel.byteOffset + b.header.payloadOffset, 6);
  assert.equal(dv.getUint32(0, false), 0xfd377a58, 'payload is XZ ("\\xfd7zXZ")');
  const m = mem(256 * MiB);
  const r = loadBzImage(m, img, { cmdline: 'console=ttyS0 panic=-1', initramfs: new Uint8Array(MiB).fill(1) });
  assert.equal(r.entry, 0x100200);
  assert.ok(r.initramfs);
  assert.ok(r.initramfs.addr >= Number(b.header.prefAddress) + b.header.initSize);
  assert.ok(r.initramfs.addr + MiB - 1 <= b.header.initrdAddrMax);
  assert.deepEqual(m.slice(0x100000, 64), kernel.subarray(0, 64));
  assert.deepEqual(m.slice(0x100000 + kernel.length - 64, 64), kernel.subarray(kernel.length - 64));
  assert.equal(m.readU16(ZERO_PAGE_START + HDR.version), b.header.version);
  assert.throws(() => loadBzImage(mem(64 * MiB), img, { cmdline: '' }), /too small: the kernel needs memory up to/);
});

test('a bzImage and initramfs loaded from files land in guest RAM exactly as from bytes', () => {
  const img = fakeBzImage({ kernelSize: 3 * MiB + 123 });
  for (let i = 0; i < img.length; i += 4093) img[i] = (i * 7) & 0xff;
  img.set(fakeBzImage().subarray(0, 5 * 512)); // keep a valid header
  new DataView(img.buffer).setUint32(HDR.syssize, Math.floor((img.length - 5 * 512) / 16), true);
  const initrd = new Uint8Array(2 * MiB + 5).map((_, i) => (i * 13) & 0xff);
  const a = mem(128 * MiB);
  const ra = loadBzImage(a, img, { cmdline: 'console=ttyS0', initramfs: initrd });
  const kf = fileOf(img);
  const rf = fileOf(initrd);
  const b = mem(128 * MiB);
  const rb = loadBzImage(b, kf, { cmdline: 'console=ttyS0', initramfs: rf });
  assert.deepEqual(rb, ra);
  assert.ok(ra.initramfs);
  assert.deepEqual(b.slice(0x100000, img.length - 5 * 512), img.subarray(5 * 512));
  assert.deepEqual(b.slice(ra.initramfs.addr, initrd.length), initrd);
  assert.deepEqual(b.slice(ZERO_PAGE_START, 4096), a.slice(ZERO_PAGE_START, 4096));
  // A file that shrinks after its headers were checked fails with a message, not a crash.
  truncateSync(kf.path, img.length - 100);
  assert.throws(() => loadBzImage(mem(128 * MiB), kf, { cmdline: '' }), /file ended at \d+ bytes .*did it shrink/);
  kf.close();
  rf.close();
  assert.throws(() => parseBzImage(kf), /read after close/);
});
