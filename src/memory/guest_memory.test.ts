import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import { readFileSync, readlinkSync, fstatSync } from 'node:fs';
import * as libc from '../sys/libc.js';
import { GuestMemory, GuestMemoryError, GPA_LIMIT, WINDOW_STRIDE, HUGE_PAGE_SIZE, thpNeedsAdvice } from './guest_memory.js';

const GiB = 2 ** 30;

function twoRegions(): GuestMemory {
  // [0x0, 0x1000) and [0x1000, 0x3000) are adjacent; [0x10000, 0x11000) after a gap.
  return GuestMemory.fromBuffers([
    { gpa: 0, buffer: new ArrayBuffer(0x1000) },
    { gpa: 0x1000, buffer: new ArrayBuffer(0x2000) },
    { gpa: 0x10000n, buffer: new ArrayBuffer(0x1000) },
  ]);
}

function throwsGme(fn: () => unknown, re: RegExp): void {
  assert.throws(fn, (e: unknown) => e instanceof GuestMemoryError && re.test(e.message));
}

test('typed little-endian access and slices alias guest memory', () => {
  const m = twoRegions();
  m.writeU8(0x10, 0xab);
  m.writeU16(0x20, 0x1234);
  m.writeU32(0x1ffc, 0xdeadbeef);
  m.writeU64(0x10ff8n, 0x0102030405060708n);
  assert.equal(m.readU8(0x10), 0xab);
  assert.equal(m.readU16(0x20), 0x1234);
  assert.deepEqual([...m.slice(0x20, 2)], [0x34, 0x12]);
  assert.equal(m.readU32(0x1ffc), 0xdeadbeef);
  assert.equal(m.readU64(0x10ff8), 0x0102030405060708n);
  assert.equal(m.readU8(0x10ff8), 8);
  m.writeU64(0x100, -1n);
  assert.equal(m.readU64(0x100), 0xffffffffffffffffn);
  const s = m.slice(0x1000, 4);
  s[0] = 7;
  assert.equal(m.readU8(0x1000), 7);
  const dst = new Uint8Array(4);
  m.readBytes(0x1ffc, dst);
  assert.deepEqual([...dst], [0xef, 0xbe, 0xad, 0xde]);
  m.writeBytes(0x2ffe, Uint8Array.of(1, 2));
  assert.equal(m.readU16(0x2ffe), 0x0201);
  m.fill(0x2ffe, 2, 0);
  assert.equal(m.readU16(0x2ffe), 0);
  assert.equal(m.totalSize, 0x4000);
  assert.equal(m.lastAddress, 0x11000);
  assert.equal(m.regions.length, 3);
  assert.equal(m.regions[2]!.gpa, 0x10000);
});

test('bounds: outside RAM, spanning regions, wrap and invalid input are rejected with the address', () => {
  const m = twoRegions();
  throwsGme(() => m.slice(0x3000, 1), /0x3000\+0x1 is outside guest RAM/);
  throwsGme(() => m.readU32(0x2ffe), /0x2ffe\+0x4 is outside guest RAM/);
  throwsGme(() => m.slice(0xff8, 16), /0xff8\+0x10 spans two RAM regions/);
  throwsGme(() => m.readU64(0xffc), /spans two RAM regions/);
  throwsGme(() => m.slice(0x10000, 0x1001), /outside guest RAM/);
  // 2^64 - 8 must not wrap to a small address.
  throwsGme(() => m.readU64(0xfffffffffffffff8n), /invalid guest physical address 18446744073709551608/);
  throwsGme(() => m.slice(GPA_LIMIT - 4, 8), /runs past the 52-bit physical address space/);
  throwsGme(() => m.slice(2 ** 53, 1), /invalid guest physical address/);
  throwsGme(() => m.readU8(-1), /invalid guest physical address -1/);
  throwsGme(() => m.readU8(1.5), /invalid guest physical address 1.5/);
  throwsGme(() => m.slice(0, -1), /invalid guest memory access length -1/);
  throwsGme(() => m.slice(0, Number.NaN), /invalid guest memory access length NaN/);
  const e = (() => { try { m.slice(0x5000, 3); } catch (x) { return x as GuestMemoryError; } return undefined; })();
  assert.ok(e);
  assert.equal(e.gpa, 0x5000);
  assert.equal(e.length, 3);
  assert.equal(m.slice(0x3000, 0).length, 0); // zero-length at the end of a region
});

test('checkedRange never throws and matches slice()', () => {
  const m = twoRegions();
  assert.equal(m.checkedRange(0, 0x1000), true);
  assert.equal(m.checkedRange(0x1000, 0x2000), true);
  assert.equal(m.checkedRange(0xfff, 2), false);
  assert.equal(m.checkedRange(0x3000, 1), false);
  assert.equal(m.checkedRange(-1, 1), false);
  assert.equal(m.checkedRange(0, -1), false);
  assert.equal(m.checkedRange(Number.NaN, 1), false);
  assert.equal(m.checkedRange(2 ** 53, 0), false);
  assert.equal(m.checkedRange(GPA_LIMIT - 1, 2), false);
  assert.equal(m.checkedRange(0x10000, 0x1000), true);
});

test('layout validation: overlap, unsorted and bad sizes are rejected', () => {
  assert.throws(() => GuestMemory.fromBuffers([]), GuestMemoryError);
  assert.throws(() => GuestMemory.fromBuffers([{ gpa: 0x1000, buffer: new ArrayBuffer(0x1000) }, { gpa: 0x1800, buffer: new ArrayBuffer(0x1000) }]), /overlaps/);
  assert.throws(() => GuestMemory.fromBuffers([{ gpa: 0, buffer: new ArrayBuffer(0) }]), /invalid size/);
  assert.throws(() => GuestMemory.allocate([{ gpa: 0x800, size: 0x1000 }]), /not page aligned/);
  assert.throws(() => GuestMemory.allocate([{ gpa: 2n ** 52n, size: 0x1000 }]), /52-bit/);
});

test('mmap-backed memory: allocate, access, free', () => {
  const m = GuestMemory.allocate([{ gpa: 0, size: 16 << 20 }, { gpa: 4 * GiB, size: 2 << 20 }]);
  assert.notEqual(m.regions[0]!.hostAddress, 0n);
  m.writeU64(4 * GiB + 8, 0x1122334455667788n);
  assert.equal(m.readU64(4 * GiB + 8), 0x1122334455667788n);
  assert.equal(m.readU32((16 << 20) - 4), 0); // fresh anonymous memory is zero
  m.free();
  assert.equal(m.isFreed, true);
  throwsGme(() => m.readU8(0), /after free\(\)/);
  assert.equal(m.checkedRange(0, 1), false);
  m.free(); // idempotent
});

/** The VmFlags line of /proc/self/smaps for the mapping that starts at `addr`. */
function vmFlags(addr: bigint): string[] {
  const smaps = readFileSync('/proc/self/smaps', 'utf8');
  const at = smaps.indexOf(`${addr.toString(16)}-`);
  assert.ok(at >= 0, 'mapping not found in /proc/self/smaps');
  const m = /^VmFlags:(.*)$/m.exec(smaps.slice(at));
  return m![1]!.trim().split(/\s+/);
}

test('MADV_HUGEPAGE is needed for THP unless the host gives them to all anonymous memory', () => {
  assert.equal(thpNeedsAdvice('[always] madvise never\n'), false);
  assert.equal(thpNeedsAdvice('always [madvise] never\n'), true);
  assert.equal(thpNeedsAdvice('always madvise [never]\n'), true);
  assert.equal(thpNeedsAdvice(''), true);
});

test('guest RAM mappings: private, THP-eligible by default; shared=on and thp=off as Cloud Hypervisor', () => {
  let mode = '';
  try { mode = readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8'); } catch { /* no THP: advice ignored */ }
  const adviceNeeded = thpNeedsAdvice(mode) && mode !== '';
  const plain = GuestMemory.allocate([{ gpa: 0, size: 4 << 20 }]);
  const shared = GuestMemory.allocate([{ gpa: 0, size: 4 << 20 }], { shared: true, thp: false });
  try {
    assert.equal(plain.regions[0]!.hostAddress % BigInt(HUGE_PAGE_SIZE), 0n, 'guest RAM starts on a 2 MiB boundary');
    const p = vmFlags(plain.regions[0]!.hostAddress);
    assert.ok(!p.includes('sh'), `private mapping expected, VmFlags ${p.join(' ')}`);
    assert.equal(p.includes('hg'), adviceNeeded, `MADV_HUGEPAGE ${adviceNeeded ? 'expected' : 'not wanted where THP is [always]'} (hg), VmFlags ${p.join(' ')}`);
    assert.ok(p.includes('dc'), `MADV_DONTFORK expected (dc), VmFlags ${p.join(' ')}`);
    const s = vmFlags(shared.regions[0]!.hostAddress);
    assert.ok(s.includes('sh'), `shared mapping expected, VmFlags ${s.join(' ')}`);
    assert.ok(!s.includes('hg') && (s.includes('nh') || mode === ''), `MADV_NOHUGEPAGE with thp=off, VmFlags ${s.join(' ')}`);
    // Both are usable memory all the same.
    plain.writeU32(0x1000, 0xdeadbeef);
    shared.writeU32(0x1000, 0xfeedface);
    assert.equal(plain.readU32(0x1000), 0xdeadbeef);
    assert.equal(shared.readU32(0x1000), 0xfeedface);
  } finally {
    plain.free();
    shared.free();
  }
});

test('regions over 4 GiB use overlapping windows: any access up to 2 GiB works', () => {
  const size = 6 * GiB; // MAP_NORESERVE: only touched pages are committed
  const m = GuestMemory.allocate([{ gpa: 4 * GiB, size }]);
  try {
    assert.equal(m.regions[0]!.windows.length, 3);
    const base = 4 * GiB;
    for (const off of [0, WINDOW_STRIDE - 4, 2 * WINDOW_STRIDE - 4, 4 * GiB - 4, size - 8]) {
      m.writeU64(base + off, BigInt(off) + 1n);
      assert.equal(m.readU64(base + off), BigInt(off) + 1n, `offset ${off}`);
    }
    // Windows alias the same host memory.
    const a = m.slice(base + WINDOW_STRIDE - 4, 8);
    assert.equal(new DataView(a.buffer, a.byteOffset).getBigUint64(0, true), BigInt(WINDOW_STRIDE - 4) + 1n);
    assert.equal(m.slice(base + 1, 2 * GiB).length, 2 * GiB);
    assert.equal(m.checkedRange(base + size - 1, 1), true);
    assert.equal(m.checkedRange(base + size, 1), false);
    assert.equal(m.slice(base + size, 0).length, 0);
    assert.equal(m.slice(base + 3 * GiB, 3 * GiB).length, 3 * GiB); // fits in window 1
    throwsGme(() => m.slice(base + GiB, 3.5 * GiB), /larger than 2 GiB and crosses a host view window/);
  } finally {
    m.free();
  }
});

function runWorker(data: unknown): Promise<{ value: bigint; error: string }> {
  return new Promise((resolve, reject) => {
    const w = new Worker(new URL('./attach_worker.fixture.js', import.meta.url), { workerData: data });
    w.once('message', resolve);
    w.once('error', reject);
  });
}

test('describe()/attach(): a worker sees and writes the same mmap-backed memory', async () => {
  const m = GuestMemory.allocate([{ gpa: 0, size: 1 << 20 }, { gpa: 4 * GiB, size: 1 << 20 }]);
  try {
    m.writeU64(4 * GiB + 0x100, 0xcafef00d12345678n);
    const desc = m.describe();
    assert.equal(typeof desc.regions[0]!.hostAddress, 'bigint');
    const r = await runWorker({ desc, readAt: 4 * GiB + 0x100, writeAt: 0x200, bad: 2 << 20 });
    assert.equal(r.value, 0xcafef00d12345678n);
    assert.equal(r.error, 'GuestMemoryError');
    assert.equal(m.readU32(0x200), 0xdeadbeef);
  } finally {
    m.free();
  }
});

test('describe()/attach() with SharedArrayBuffer test memory; private buffers cannot be shared', async () => {
  const sab = new SharedArrayBuffer(0x2000);
  const m = GuestMemory.fromBuffers([{ gpa: 0x100000, buffer: sab }]);
  m.writeU64(0x100008, 42n);
  const r = await runWorker({ desc: m.describe(), readAt: 0x100008, writeAt: 0x100010, bad: 0 });
  assert.equal(r.value, 42n);
  assert.equal(m.readU32(0x100010), 0xdeadbeef);
  assert.throws(() => twoRegions().describe(), /private ArrayBuffer/);
  assert.throws(() => GuestMemory.attach({ regions: [{ gpa: 0, size: 0x1000, hostAddress: 0n }] }), /no host address/);
});

test('shared=on: guest RAM is a memfd per region; mapping its fd elsewhere shows the same bytes', () => {
  const mem = GuestMemory.allocate([{ gpa: 0, size: 4 << 20 }, { gpa: 8 << 20, size: 2 << 20 }], { shared: true });
  const priv = GuestMemory.allocate([{ gpa: 0, size: 2 << 20 }]);
  try {
    assert.equal(priv.regions[0]!.fd, -1);
    for (const r of mem.regions) {
      assert.ok(r.fd >= 0, 'a shared region has a memfd');
      assert.equal(Number(r.hostAddress % BigInt(HUGE_PAGE_SIZE)), 0, 'the 2 MiB alignment is kept');
      const link = readlinkSync(`/proc/self/fd/${r.fd}`);
      assert.match(link, /^\/memfd:stratovisor-ram-/);
      assert.equal(fstatSync(r.fd).size, r.size);
    }
    mem.writeU32(0x1234, 0xc0ffee11);
    mem.writeU32((8 << 20) + 0x10, 0x5a5a1234);
    // A second mapping of the fd (what a vhost-user backend does) sees guest writes, and the guest
    // sees its writes.
    const r1 = mem.regions[1]!;
    const other = libc.mmap(r1.size, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED, r1.fd, 0);
    try {
      const dv = new DataView(libc.view(other, r1.size));
      assert.equal(dv.getUint32(0x10, true), 0x5a5a1234);
      dv.setUint32(0x20, 0xdeadbeef, true);
      assert.equal(mem.readU32((8 << 20) + 0x20), 0xdeadbeef);
    } finally {
      libc.munmap(other, r1.size);
    }
    // attach() carries the fd (not owned by the copy).
    const att = GuestMemory.attach(mem.describe());
    assert.deepEqual(att.regions.map((r) => r.fd), mem.regions.map((r) => r.fd));
    assert.equal(att.readU32(0x1234), 0xc0ffee11);
    att.free();
    assert.equal(fstatSync(mem.regions[0]!.fd).size, 4 << 20, 'freeing the attached copy leaves the fd open');
  } finally {
    const fds = mem.regions.map((r) => r.fd);
    mem.free();
    priv.free();
    for (const fd of fds) assert.throws(() => fstatSync(fd), /EBADF/, 'free() closes the memfds');
  }
});

test('discard(): the pages go back to the host and read zero (private: MADV_DONTNEED; shared: a hole in the memfd); bad ranges refused', () => {
  const priv = GuestMemory.allocate([{ gpa: 0, size: 4 << 20 }]);
  const shared = GuestMemory.allocate([{ gpa: 0, size: 4 << 20 }], { shared: true });
  const test = GuestMemory.fromBuffers([{ gpa: 0, buffer: new ArrayBuffer(1 << 20) }]);
  try {
    for (const mem of [priv, shared, test]) {
      mem.fill(0, 1 << 20, 0x77);
      assert.equal(mem.discard(0x2000, 0x3000), true);
      assert.ok(mem.slice(0x2000, 0x3000).every((x) => x === 0), 'discarded pages read zero');
      assert.ok(mem.slice(0x1000, 0x1000).every((x) => x === 0x77) && mem.slice(0x5000, 0x1000).every((x) => x === 0x77), 'the neighbours keep their bytes');
      assert.equal(mem.discard(0x2001, 0x1000), false, 'unaligned address');
      assert.equal(mem.discard(0x2000, 0x800), false, 'unaligned length');
      assert.equal(mem.discard(mem.totalSize - 0x1000, 0x2000), false, 'beyond RAM');
      assert.equal(mem.discard(0, 0), true);
      assert.equal(mem.readU8(0x1000), 0x77);
    }
    // The memfd's blocks are freed (st_blocks counts 512-byte units allocated).
    const fd = shared.regions[0]!.fd;
    shared.fill(0, 4 << 20, 1);
    const full = fstatSync(fd).blocks;
    assert.equal(shared.discard(0, 2 << 20), true);
    assert.ok(full - fstatSync(fd).blocks >= (2 << 20) / 512, `${full} -> ${fstatSync(fd).blocks} blocks`);
    // Private memory: the process's RSS drops by the discarded pages.
    const rssKb = () => Number(/^VmRSS:\s+(\d+) kB$/m.exec(readFileSync('/proc/self/status', 'latin1'))![1]);
    priv.fill(0, 4 << 20, 1);
    const before = rssKb();
    assert.equal(priv.discard(0, 4 << 20), true);
    assert.ok(before - rssKb() >= 3 * 1024, `RSS ${before} -> ${rssKb()} kB`);
  } finally {
    priv.free();
    shared.free();
  }
});
