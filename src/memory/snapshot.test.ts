// Guest RAM saved to a sparse memory-ranges file and read back: real mmapped guest memory (private
// anonymous and shared memfd), a real file; only touched, non-zero pages take file blocks.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync, writeFileSync, existsSync, truncateSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import { GuestMemory, PAGE_SIZE } from './guest_memory.js';
import { MemorySnapshotError, mapGuestMemory, restoreGuestMemory, saveGuestMemory, touchedRuns, unionRuns } from './snapshot.js';
import { Prng } from '../testing/prng.js';
import { guestMemoryRegions } from '../arch/x86_64/layout.js';

const MiB = 1 << 20;
const dir = mkdtempSync(join(tmpdir(), 'stv-memsnap-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

/** Two regions with a gap, as below and above a PCI hole (sizes kept small for the test). */
const LAYOUT = [{ gpa: 0, size: 16 * MiB }, { gpa: 64 * MiB, size: 8 * MiB }];

function digest(mem: GuestMemory): string {
  const h = createHash('sha256');
  for (const r of mem.regions) h.update(new Uint8Array(r.buffer, 0, r.size));
  return h.digest('hex');
}

/** Random pages written with random bytes, one written with zeros only (touched, all zero). */
function scribble(mem: GuestMemory, seed: number): { pages: number } {
  const rng = new Prng(seed);
  let pages = 0;
  for (let i = 0; i < 40; i++) {
    const r = LAYOUT[rng.int(LAYOUT.length)]!;
    const page = rng.int(r.size / PAGE_SIZE);
    const len = 1 + rng.int(3 * PAGE_SIZE);
    const gpa = r.gpa + page * PAGE_SIZE;
    const n = Math.min(len, r.gpa + r.size - gpa);
    mem.writeBytes(gpa, randomBytes(n));
    pages += Math.ceil(n / PAGE_SIZE);
  }
  mem.writeBytes(LAYOUT[0]!.gpa + 5 * MiB, new Uint8Array(PAGE_SIZE)); // touched, zero: no block
  return { pages };
}

for (const [shared, thp] of [[false, false], [false, true], [true, false]] as const) {
  const kind = `${shared ? 'shared memfd' : 'private anonymous'}${thp ? ', THP' : ''}`;
  test(`guest RAM (${kind}) round-trips through a sparse memory-ranges file`, () => {
    const mem = GuestMemory.allocate(LAYOUT, { shared, thp });
    const fresh = GuestMemory.allocate(LAYOUT, { shared, thp });
    try {
      const { pages } = scribble(mem, shared ? 7 : 11);
      const touched = mem.regions.reduce((n, r) => n + touchedRuns(r).reduce((m, [a, b]) => m + b - a, 0), 0);
      // With transparent huge pages one write makes a whole 2 MiB page present: the zero-page
      // scan, not the touched runs, keeps the file small then.
      if (!thp) assert.ok(touched >= PAGE_SIZE && touched < 8 * MiB, `${touched} bytes counted as touched of ${24 * MiB}`);
      const path = join(dir, `memory-ranges-${shared ? 'shared' : 'private'}${thp ? '-thp' : ''}`);
      const saved = saveGuestMemory(mem, path);
      const st = statSync(path);
      assert.equal(st.size, 24 * MiB, 'the file spans every region');
      assert.deepEqual(saved.ranges, [{ gpa: 0, length: 16 * MiB, fileOffset: 0 }, { gpa: 64 * MiB, length: 8 * MiB, fileOffset: 16 * MiB }]);
      assert.ok(saved.dataBytes <= pages * PAGE_SIZE, `${saved.dataBytes} bytes written for ${pages} scribbled pages`);
      assert.ok(st.blocks * 512 <= saved.dataBytes + 64 * 1024, `the file takes ${st.blocks * 512} bytes on disk for ${saved.dataBytes} bytes of data: not sparse`);
      const restored = restoreGuestMemory(fresh, path, saved.ranges);
      assert.ok(restored.dataBytes >= saved.dataBytes - 0 && restored.dataBytes <= saved.dataBytes + 64 * 1024, `read ${restored.dataBytes} bytes of ${saved.dataBytes}`);
      assert.equal(digest(fresh), digest(mem), 'the restored RAM differs from the saved RAM');
    } finally {
      mem.free();
      fresh.free();
    }
  });
}

test('an existing file is never overwritten; a failed save leaves no partial file', () => {
  const mem = GuestMemory.allocate(LAYOUT);
  try {
    const path = join(dir, 'exists');
    writeFileSync(path, 'precious');
    assert.throws(() => saveGuestMemory(mem, path), (e: unknown) => e instanceof MemorySnapshotError && /exists already/.test(e.message));
    assert.equal(statSync(path).size, 8);
    const inMissingDir = join(dir, 'no-such-dir', 'memory-ranges');
    assert.throws(() => saveGuestMemory(mem, inMissingDir), (e: unknown) => e instanceof MemorySnapshotError && /cannot create/.test(e.message));
    assert.equal(existsSync(inMissingDir), false);
  } finally {
    mem.free();
  }
});

test('restore refuses ranges that do not match this VM or do not fit in the file, by name', () => {
  const mem = GuestMemory.allocate(LAYOUT);
  const fresh = GuestMemory.allocate(LAYOUT);
  try {
    mem.writeBytes(0x1000, randomBytes(100));
    const path = join(dir, 'checked');
    const { ranges } = saveGuestMemory(mem, path);
    const bad = (rs: typeof ranges, re: RegExp) =>
      assert.throws(() => restoreGuestMemory(fresh, path, rs), (e: unknown) => e instanceof MemorySnapshotError && re.test(e.message), re.source);
    bad(ranges.slice(0, 1), /1 memory range\(s\), this VM's RAM has 2 region/);
    bad([ranges[0]!, { ...ranges[1]!, gpa: 32 * MiB }], /memory range 1 is 0x2000000\+0x800000, this VM's RAM region is 0x4000000\+0x800000/);
    bad([ranges[0]!, { ...ranges[1]!, fileOffset: 20 * MiB }], /memory range 1 \(file offset 20971520, 8388608 bytes\) does not fit/);
    bad([ranges[0]!, { ...ranges[1]!, fileOffset: -1 }], /memory range 1 \(file offset -1/);
    truncateSync(path, 20 * MiB);
    bad(ranges, /memory range 1 .* does not fit in .* \(20971520 bytes\)/);
    assert.throws(() => restoreGuestMemory(fresh, join(dir, 'missing'), ranges), /cannot open/);
    assert.throws(() => restoreGuestMemory(fresh, dir, ranges), /is not a regular file|cannot open/);
  } finally {
    mem.free();
    fresh.free();
  }
});

test('mapGuestMemory: the file mapped copy-on-write reads as the saved RAM without reading it first; writes stay private; a snapshot of it is whole', () => {
  const mem = GuestMemory.allocate(LAYOUT, { thp: false });
  const lazy = GuestMemory.allocate(LAYOUT, { thp: false });
  const again = GuestMemory.allocate(LAYOUT, { thp: false });
  try {
    scribble(mem, 23);
    const path = join(dir, 'memory-ranges-lazy');
    const saved = saveGuestMemory(mem, path);
    const fileBefore = createHash('sha256').update(readFileSync(path)).digest('hex');
    mapGuestMemory(lazy, path, saved.ranges);
    const regions = lazy.regions;
    assert.deepEqual(regions.map((r) => r.source?.offset), [0, 16 * MiB], 'each region knows its file and offset');
    // Nothing is read by the mapping itself: touchedRuns still finds the data (from the file).
    const touched = regions.map((r) => touchedRuns(r));
    assert.ok(touched.every((t) => t.length > 0), 'the file data counts as data');
    assert.equal(digest(lazy), digest(mem), 'the mapped RAM reads as the saved RAM');
    // The guest writes: its pages change, the file does not.
    lazy.writeBytes(3 * MiB, new TextEncoder().encode('written after the restore'));
    assert.equal(createHash('sha256').update(readFileSync(path)).digest('hex'), fileBefore, 'the memory-ranges file was changed');
    // A snapshot of the lazily restored RAM holds both what came from the file and what was written since.
    const path2 = join(dir, 'memory-ranges-lazy-2');
    const saved2 = saveGuestMemory(lazy, path2);
    restoreGuestMemory(again, path2, saved2.ranges);
    assert.equal(digest(again), digest(lazy));
  } finally {
    mem.free();
    lazy.free();
    again.free();
  }
});

test('mapGuestMemory refuses shared memory, unaligned offsets and a short file, by name; the RAM stays usable', () => {
  const mem = GuestMemory.allocate(LAYOUT, { thp: false });
  const shared = GuestMemory.allocate(LAYOUT, { shared: true, thp: false });
  const lazy = GuestMemory.allocate(LAYOUT, { thp: false });
  try {
    const path = join(dir, 'memory-ranges-refuse');
    const saved = saveGuestMemory(mem, path);
    assert.throws(() => mapGuestMemory(shared, path, saved.ranges), (e: unknown) => e instanceof MemorySnapshotError && /shared memory: restore it by copying/.test(e.message));
    const unaligned = saved.ranges.map((r, i) => (i === 1 ? { ...r, fileOffset: r.fileOffset - 512 } : r));
    assert.throws(() => mapGuestMemory(lazy, path, unaligned), (e: unknown) => e instanceof MemorySnapshotError && /range 1: file offset .* is not page aligned/.test(e.message));
    const short = join(dir, 'memory-ranges-short');
    writeFileSync(short, new Uint8Array(PAGE_SIZE));
    assert.throws(() => mapGuestMemory(lazy, short, saved.ranges), (e: unknown) => e instanceof MemorySnapshotError && /does not fit in/.test(e.message));
    // Region 0 got mapped before region 1 was refused: it reads the file; region 1 is still RAM.
    lazy.writeBytes(64 * MiB, Uint8Array.of(1, 2, 3));
    assert.deepEqual([...lazy.slice(64 * MiB, 3)], [1, 2, 3]);
  } finally {
    mem.free();
    shared.free();
    lazy.free();
  }
});

test('unionRuns merges overlapping and touching runs', () => {
  assert.deepEqual(unionRuns([[0, 4096], [16384, 20480]], [[4096, 8192], [12288, 17000], [40960, 45056]]), [[0, 8192], [12288, 20480], [40960, 45056]]);
  assert.deepEqual(unionRuns([], []), []);
});

test('a virtio-mem region (a guest memory region at 4 GiB, layout.ts guestMemoryRegions) is saved sparsely and restored with RAM', () => {
  const layout = guestMemoryRegions(16 * MiB, 64 * MiB);
  assert.deepEqual(layout.map((r) => Number(r.gpa)), [0, 4096 * MiB]);
  const mem = GuestMemory.allocate(layout);
  const back = GuestMemory.allocate(layout);
  try {
    mem.fill(0x1000, 4096, 0x11);
    // One plugged block the guest wrote to; the rest of the region was never touched.
    mem.fill(4096 * MiB + 2 * MiB, 8192, 0x77);
    const path = join(dir, 'vmem-ranges');
    const saved = saveGuestMemory(mem, path);
    assert.deepEqual(saved.ranges.map((r) => [r.gpa, r.length]), [[0, 16 * MiB], [4096 * MiB, 64 * MiB]]);
    assert.ok(saved.dataBytes <= 4 * MiB, `only touched pages are written (${saved.dataBytes} bytes)`);
    restoreGuestMemory(back, path, saved.ranges);
    assert.equal(digest(back), digest(mem));
    assert.ok(back.slice(4096 * MiB + 2 * MiB, 8192).every((x) => x === 0x77));
  } finally {
    mem.free();
    back.free();
  }
});
