import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GuestMemory } from '../../memory/guest_memory.js';
import { CMDLINE_START, e820Map, MiB, PVH_INFO_START, PVH_MEMMAP_START, PVH_MODLIST_START } from './layout.js';
import { ElfImageError, HVM_START_MAGIC, loadPvhKernel, parseElfKernel, PT_LOAD, PT_NOTE } from './pvh.js';
import { debianVmlinux } from './test_images.fixture.js';

interface Seg { type: number; paddr: number; data: Uint8Array; memsz?: number }

/** Build an ELF64 x86-64 executable with the given segments (data placed after the headers). */
function fakeElf(segs: Seg[], patch?: (dv: DataView) => void): Uint8Array {
  const phoff = 64;
  let off = phoff + 56 * segs.length;
  const offsets = segs.map((s) => { const o = off; off += s.data.length; return o; });
  const img = new Uint8Array(off);
  const dv = new DataView(img.buffer);
  img.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]);
  dv.setUint16(16, 2, true); // ET_EXEC
  dv.setUint16(18, 62, true); // EM_X86_64
  dv.setUint32(20, 1, true);
  dv.setBigUint64(24, 0xffffffff81000000n, true);
  dv.setBigUint64(32, BigInt(phoff), true);
  dv.setUint16(52, 64, true);
  dv.setUint16(54, 56, true);
  dv.setUint16(56, segs.length, true);
  segs.forEach((s, i) => {
    const p = phoff + 56 * i;
    dv.setUint32(p, s.type, true);
    dv.setBigUint64(p + 8, BigInt(offsets[i]!), true);
    dv.setBigUint64(p + 16, BigInt(s.paddr) | 0xffffffff80000000n, true);
    dv.setBigUint64(p + 24, BigInt(s.paddr), true);
    dv.setBigUint64(p + 32, BigInt(s.data.length), true);
    dv.setBigUint64(p + 40, BigInt(s.memsz ?? s.data.length), true);
    img.set(s.data, offsets[i]!);
  });
  patch?.(dv);
  return img;
}

/** An Elf64_Nhdr note. */
function note(name: string, type: number, desc: Uint8Array): Uint8Array {
  const nameBytes = new TextEncoder().encode(`${name}\0`);
  const pad = (n: number): number => (n + 3) & ~3;
  const out = new Uint8Array(12 + pad(nameBytes.length) + pad(desc.length));
  const dv = new DataView(out.buffer);
  dv.setUint32(0, nameBytes.length, true);
  dv.setUint32(4, desc.length, true);
  dv.setUint32(8, type, true);
  out.set(nameBytes, 12);
  out.set(desc, 12 + pad(nameBytes.length));
  return out;
}

const u32 = (v: number): Uint8Array => { const b = new Uint8Array(4); new DataView(b.buffer).setUint32(0, v, true); return b; };
const u64 = (v: number): Uint8Array => { const b = new Uint8Array(8); new DataView(b.buffer).setBigUint64(0, BigInt(v), true); return b; };

function notes(entry: Uint8Array = u32(0x1000100)): Uint8Array {
  const a = note('GNU', 3, new Uint8Array(20).fill(7));
  const b = note('Xen', 6, new TextEncoder().encode('linux\0'));
  const c = note('Xen', 18, entry);
  const out = new Uint8Array(a.length + b.length + c.length);
  out.set(a); out.set(b, a.length); out.set(c, a.length + b.length);
  return out;
}

function goodElf(): Uint8Array {
  return fakeElf([
    { type: PT_LOAD, paddr: 0x1000000, data: new Uint8Array(0x2000).fill(0xc3) },
    { type: PT_LOAD, paddr: 0x1400000, data: new Uint8Array(0x100).fill(0xd4), memsz: 0x3000 },
    { type: PT_NOTE, paddr: 0, data: notes() },
  ]);
}

function mem(size: number, fill = 0): GuestMemory {
  const b = new ArrayBuffer(size);
  new Uint8Array(b).fill(fill);
  return GuestMemory.fromBuffers([{ gpa: 0, buffer: b }]);
}

function rejects(fn: () => unknown, re: RegExp): void {
  assert.throws(fn, (e: unknown) => e instanceof ElfImageError && re.test(e.message), re.source);
}

test('parse a synthetic vmlinux: segments and the PVH note (4- and 8-byte descriptors)', () => {
  const e = parseElfKernel(goodElf());
  assert.equal(e.pvhEntry, 0x1000100);
  assert.equal(e.segments.length, 2);
  assert.equal(e.kernelEnd, 0x1403000);
  const e8 = parseElfKernel(fakeElf([{ type: PT_LOAD, paddr: 0x1000000, data: new Uint8Array(16) }, { type: PT_NOTE, paddr: 0, data: notes(u64(0x1000850)) }]));
  assert.equal(e8.pvhEntry, 0x1000850);
  const none = parseElfKernel(fakeElf([{ type: PT_LOAD, paddr: 0x1000000, data: new Uint8Array(16) }]));
  assert.equal(none.pvhEntry, undefined);
});

test('reject malformed ELF files with clear messages', () => {
  const seg = [{ type: PT_LOAD, paddr: 0x1000000, data: new Uint8Array(16) }];
  rejects(() => parseElfKernel(new TextEncoder().encode('hello world, not an elf file at all............................')), /not an ELF file/);
  rejects(() => parseElfKernel(goodElf().subarray(0, 40)), /truncated ELF file: 40 bytes/);
  rejects(() => parseElfKernel(fakeElf(seg, (dv) => dv.setUint8(4, 1))), /not a 64-bit ELF/);
  rejects(() => parseElfKernel(fakeElf(seg, (dv) => dv.setUint16(18, 3, true))), /not for x86-64 \(e_machine 3\)/);
  rejects(() => parseElfKernel(fakeElf(seg, (dv) => dv.setUint16(16, 1, true))), /not an executable/);
  rejects(() => parseElfKernel(fakeElf(seg, (dv) => dv.setBigUint64(32, 0x10000n, true))), /program headers 0x10000\+1x56 run past the end/);
  rejects(() => parseElfKernel(goodElf().subarray(0, 200)), /program headers|runs past the end/);
  rejects(() => parseElfKernel(fakeElf(seg, (dv) => dv.setBigUint64(64 + 8, 0xfffffffn, true))), /segment 0 \(file 0xfffffff\+0x10\) runs past the end/);
  rejects(() => parseElfKernel(fakeElf(seg, (dv) => dv.setBigUint64(64 + 40, 8n, true))), /p_filesz 0x10 > p_memsz 0x8/);
  rejects(() => parseElfKernel(fakeElf(seg, (dv) => dv.setBigUint64(64 + 24, 0xfffffffffffff000n, true))), /p_paddr 0xfffffffffffff000 is out of range/);
  rejects(() => parseElfKernel(fakeElf([{ type: PT_NOTE, paddr: 0, data: notes() }])), /no PT_LOAD segments/);
  const badNote = notes(); new DataView(badNote.buffer).setUint32(4, 0x1000, true);
  rejects(() => parseElfKernel(fakeElf([...seg, { type: PT_NOTE, paddr: 0, data: badNote }])), /malformed ELF note/);
  rejects(() => parseElfKernel(fakeElf([...seg, { type: PT_NOTE, paddr: 0, data: notes(new Uint8Array(2)) }])), /2-byte descriptor/);
});

test('load: segments copied, bss zeroed, hvm_start_info/memmap/modlist written', () => {
  const m = mem(64 * MiB, 0xff);
  const initrd = new Uint8Array(10000).fill(0x42);
  const r = loadPvhKernel(m, goodElf(), { cmdline: 'console=hvc0', initramfs: initrd, rsdpAddr: 0xe0000 });
  assert.equal(r.entry, 0x1000100);
  assert.equal(r.startInfoAddr, PVH_INFO_START);
  assert.equal(m.readU8(0x1000000), 0xc3);
  assert.equal(m.readU8(0x1001fff), 0xc3);
  assert.equal(m.readU8(0x14000ff), 0xd4);
  assert.ok(m.slice(0x1400100, 0x2f00).every((b) => b === 0), 'bss zeroed');
  assert.equal(m.readU8(0x1403000), 0xff, 'nothing written past p_memsz');
  assert.equal(m.readU32(PVH_INFO_START), HVM_START_MAGIC);
  assert.equal(m.readU32(PVH_INFO_START + 4), 1);
  assert.equal(m.readU32(PVH_INFO_START + 12), 1);
  assert.equal(m.readU64(PVH_INFO_START + 16), BigInt(PVH_MODLIST_START));
  assert.equal(m.readU64(PVH_INFO_START + 24), BigInt(CMDLINE_START));
  assert.equal(m.readU64(PVH_INFO_START + 32), 0xe0000n);
  assert.equal(m.readU64(PVH_INFO_START + 40), BigInt(PVH_MEMMAP_START));
  const e820 = e820Map(64 * MiB);
  assert.equal(m.readU32(PVH_INFO_START + 48), e820.length);
  e820.forEach((e, i) => {
    assert.equal(m.readU64(PVH_MEMMAP_START + 24 * i), BigInt(e.addr));
    assert.equal(m.readU64(PVH_MEMMAP_START + 24 * i + 8), BigInt(e.size));
    assert.equal(m.readU32(PVH_MEMMAP_START + 24 * i + 16), e.type);
  });
  assert.ok(r.initramfs);
  assert.equal(m.readU64(PVH_MODLIST_START), BigInt(r.initramfs.addr));
  assert.equal(m.readU64(PVH_MODLIST_START + 8), 10000n);
  assert.ok(r.initramfs.addr >= 0x1403000 && r.initramfs.addr % 4096 === 0);
  assert.equal(m.readU8(r.initramfs.addr + 9999), 0x42);
  assert.equal(new TextDecoder().decode(m.slice(CMDLINE_START, 12)), 'console=hvc0');
});

test('load errors: segments outside RAM or below 1 MiB, missing PVH note', () => {
  rejects(() => loadPvhKernel(mem(16 * MiB), goodElf(), { cmdline: '' }), /segment 0 0x1000000\+0x2000 does not fit in guest RAM/);
  const low = fakeElf([{ type: PT_LOAD, paddr: 0x7000, data: new Uint8Array(16) }, { type: PT_NOTE, paddr: 0, data: notes() }]);
  rejects(() => loadPvhKernel(mem(64 * MiB), low, { cmdline: '' }), /below 1 MiB/);
  const nonote = fakeElf([{ type: PT_LOAD, paddr: 0x1000000, data: new Uint8Array(16) }]);
  rejects(() => loadPvhKernel(mem(64 * MiB), nonote, { cmdline: '' }), /no XEN_ELFNOTE_PHYS32_ENTRY/);
  const hugeBss = fakeElf([{ type: PT_LOAD, paddr: 0x1000000, data: new Uint8Array(16), memsz: 2 ** 40 }, { type: PT_NOTE, paddr: 0, data: notes() }]);
  rejects(() => loadPvhKernel(mem(64 * MiB), hugeBss, { cmdline: '' }), /does not fit in guest RAM/);
});

test('Debian vmlinux (extracted from the stock bzImage): PVH entry point and load', (t) => {
  const img = debianVmlinux();
  if (typeof img === 'string') { t.skip(img); return; }
  const e = parseElfKernel(img);
  assert.ok(e.pvhEntry !== undefined, 'kernel has a PVH note');
  assert.ok(e.pvhEntry >= 0x1000000 && e.pvhEntry < e.kernelEnd, `entry 0x${e.pvhEntry.toString(16)}`);
  assert.ok(e.segments.every((s) => s.paddr >= 0x1000000));
  const m = mem(256 * MiB, 0xff);
  const r = loadPvhKernel(m, img, { cmdline: 'console=ttyS0', initramfs: new Uint8Array(MiB) });
  assert.equal(r.entry, e.pvhEntry);
  const s0 = e.segments[0]!;
  assert.deepEqual(m.slice(s0.paddr, 256), img.subarray(s0.offset, s0.offset + 256));
  assert.equal(m.readU32(r.startInfoAddr), HVM_START_MAGIC);
  assert.ok(r.initramfs && r.initramfs.addr >= e.kernelEnd);
});

test('an ELF kernel from a file: same segments, same rejections as from bytes', async () => {
  const { FileImage } = await import('./image_source.js');
  const { mkdtempSync, rmSync, writeFileSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const dir = mkdtempSync(join(tmpdir(), 'stv-pvh-'));
  try {
    let n = 0;
    const fileOf = (b: Uint8Array) => { const p = join(dir, `e${n++}`); writeFileSync(p, b); return new FileImage(p); };
    const good = fileOf(goodElf());
    const a = mem(64 * MiB, 0xaa);
    const b = mem(64 * MiB, 0xaa);
    const initrd = new Uint8Array(MiB).fill(9);
    assert.deepEqual(loadPvhKernel(b, good, { cmdline: 'x', initramfs: fileOf(initrd) }), loadPvhKernel(a, goodElf(), { cmdline: 'x', initramfs: initrd }));
    assert.deepEqual(b.slice(0x1000000, 0x2000), a.slice(0x1000000, 0x2000));
    assert.deepEqual(b.slice(0x1400000, 0x3000), a.slice(0x1400000, 0x3000));
    const seg = [{ type: PT_LOAD, paddr: 0x1000000, data: new Uint8Array(16) }];
    const badNote = note('Xen', 18, u32(1));
    new DataView(badNote.buffer).setUint32(4, 0x1000, true);
    const hostile: Array<[Uint8Array, RegExp]> = [
      [goodElf().subarray(0, 40), /truncated ELF file: 40 bytes/],
      [fakeElf(seg, (dv) => dv.setBigUint64(32, 0x10000n, true)), /program headers 0x10000\+1x56 run past the end/],
      [fakeElf(seg, (dv) => dv.setBigUint64(64 + 8, 0xfffffffn, true)), /segment 0 \(file 0xfffffff\+0x10\) runs past the end/],
      [fakeElf([...seg, { type: PT_NOTE, paddr: 0, data: badNote }]), /malformed ELF note at file offset 0xc0 /],
    ];
    for (const [img, re] of hostile) {
      rejects(() => parseElfKernel(img), re);
      const f = fileOf(img);
      rejects(() => parseElfKernel(f), re);
      f.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
