// Guest RAM in a snapshot: the `memory-ranges` file of Cloud Hypervisor's snapshot layout.
//
// The file holds the VM's RAM regions one after another (region i at the sum of the earlier
// regions' sizes); the table of {gpa, length, file_offset} goes into state.json. The file is
// sparse: pages the guest never touched, and touched pages that hold only zeros, are not
// written, so they are holes that read as zeros (a 512 MiB guest that used 60 MiB leaves a
// ~60 MiB file). Which pages hold data:
//   - shared memory (a memfd per region): lseek(SEEK_DATA / SEEK_HOLE) on the memfd;
//   - private anonymous memory: /proc/self/pagemap, bit 63 (present) or bit 62 (swapped)
//     (Documentation/admin-guide/mm/pagemap.rst), never mincore(2), which misses swapped pages.
// Restore either reads only the file's data extents (SEEK_DATA / SEEK_HOLE again) into fresh
// guest RAM, whose untouched pages are zero already (restoreGuestMemory, "Copy"), or maps the file
// copy-on-write over guest RAM (mapGuestMemory, "OnDemand"): nothing is read until the guest
// touches a page. A region mapped so holds data in pages it never touched: the next snapshot of
// it also writes the file's data extents.
import { closeSync, openSync, readSync, unlinkSync, fstatSync, constants } from 'node:fs';
import * as libc from '../sys/libc.js';
import { PAGE_SIZE, type GuestMemory, type GuestRegion } from './guest_memory.js';

/** One RAM region in the file (Cloud Hypervisor's MemoryRange, plus where it is in the file). */
export interface MemoryRange {
  gpa: number;
  length: number;
  fileOffset: number;
}

export interface MemorySaveResult {
  ranges: MemoryRange[];
  /** Bytes of guest RAM written (the rest are holes). */
  dataBytes: number;
  /** Apparent size of the file (the sum of the regions). */
  fileSize: number;
}

export class MemorySnapshotError extends Error {
  override name = 'MemorySnapshotError';
}

/** Largest single pwritev/preadv (Linux transfers at most 0x7ffff000 bytes per call). */
const IO_CHUNK = 1 << 30;
/** Pages of pagemap read at once (8 bytes each). */
const PAGEMAP_BATCH = 8192;
const PM_PRESENT = 1n << 63n;
const PM_SWAPPED = 1n << 62n;
/** Zero pages are looked for in windows of this many bytes (one host view per window). */
const ZERO_SCAN_WINDOW = 2 << 20;

/** Page-aligned runs [start, end) of region offsets whose pages the guest has touched. */
export function touchedRuns(region: GuestRegion): Array<[number, number]> {
  if (region.fd >= 0) return seekDataRuns(region.fd, 0, region.size);
  if (region.hostAddress === 0n) return region.size > 0 ? [[0, region.size]] : [];
  const present = pagemapRuns(region.hostAddress, region.size);
  if (!region.source) return present;
  const { fd, offset } = region.source;
  const fromFile = seekDataRuns(fd, offset, offset + region.size);
  return unionRuns(present, fromFile);
}

/** The union of two sorted lists of disjoint [start, end) runs, sorted and merged. */
export function unionRuns(a: ReadonlyArray<[number, number]>, b: ReadonlyArray<[number, number]>): Array<[number, number]> {
  const all = [...a, ...b].sort((x, y) => x[0] - y[0]);
  const out: Array<[number, number]> = [];
  for (const [s, e] of all) {
    const last = out[out.length - 1];
    if (last && s <= last[1]) last[1] = Math.max(last[1], e);
    else out.push([s, e]);
  }
  return out;
}

/** Data extents of `fd` within [start, end), page-aligned, as offsets from `start`. */
function seekDataRuns(fd: number, start: number, end: number): Array<[number, number]> {
  const runs: Array<[number, number]> = [];
  let off = start;
  while (off < end) {
    const data = libc.lseekRaw(fd, off, libc.SEEK_DATA);
    if (data === -libc.ENXIO || (data >= 0 && data >= end)) break;
    if (data < 0) throw new MemorySnapshotError(`lseek(SEEK_DATA) at ${off}: errno ${-data}`);
    let hole = libc.lseekRaw(fd, data, libc.SEEK_HOLE);
    if (hole < 0) hole = end;
    const a = Math.floor(data / PAGE_SIZE) * PAGE_SIZE;
    const b = Math.min(end, Math.ceil(hole / PAGE_SIZE) * PAGE_SIZE);
    if (b > a) runs.push([Math.max(a, start) - start, b - start]);
    off = Math.max(hole, data + 1);
  }
  return runs;
}

function pagemapRuns(host: bigint, size: number): Array<[number, number]> {
  const runs: Array<[number, number]> = [];
  const pages = Math.ceil(size / PAGE_SIZE);
  const firstPfnIndex = Number(host / BigInt(PAGE_SIZE));
  const buf = new Uint8Array(PAGEMAP_BATCH * 8);
  const entries = new BigUint64Array(buf.buffer);
  let fd: number;
  try {
    fd = openSync('/proc/self/pagemap', constants.O_RDONLY);
  } catch {
    // No pagemap (a kernel without CONFIG_PROC_PAGE_MONITOR): every page counts as touched.
    return [[0, size]];
  }
  try {
    let runStart = -1;
    for (let p = 0; p < pages; p += PAGEMAP_BATCH) {
      const n = Math.min(PAGEMAP_BATCH, pages - p);
      const got = readSync(fd, buf, 0, n * 8, (firstPfnIndex + p) * 8);
      for (let i = 0; i < n; i++) {
        const e = i * 8 < got ? entries[i]! : PM_PRESENT; // a short read: keep the page
        const touched = (e & (PM_PRESENT | PM_SWAPPED)) !== 0n;
        if (touched && runStart < 0) runStart = (p + i) * PAGE_SIZE;
        else if (!touched && runStart >= 0) {
          runs.push([runStart, (p + i) * PAGE_SIZE]);
          runStart = -1;
        }
      }
    }
    if (runStart >= 0) runs.push([runStart, Math.min(size, pages * PAGE_SIZE)]);
  } finally {
    closeSync(fd);
  }
  return runs;
}

/** Split `runs` of the region at `host` into the sub-runs whose pages are not all zero. */
function nonZeroRuns(host: bigint, runs: Array<[number, number]>): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  let runStart = -1;
  let prevEnd = -1;
  const close = (at: number) => {
    if (runStart >= 0) out.push([runStart, at]);
    runStart = -1;
  };
  for (const [a, b] of runs) {
    if (a !== prevEnd) close(prevEnd);
    for (let w = a; w < b; w += ZERO_SCAN_WINDOW) {
      const len = Math.min(ZERO_SCAN_WINDOW, b - w);
      const words = new BigUint64Array(libc.view(host + BigInt(w), len));
      const perPage = PAGE_SIZE / 8;
      for (let pg = 0; pg * PAGE_SIZE < len; pg++) {
        let zero = true;
        const end = Math.min(words.length, (pg + 1) * perPage);
        for (let i = pg * perPage; i < end; i++) {
          if (words[i] !== 0n) { zero = false; break; }
        }
        const at = w + pg * PAGE_SIZE;
        if (!zero && runStart < 0) runStart = at;
        else if (zero) close(at);
      }
    }
    prevEnd = b;
  }
  close(prevEnd);
  return out;
}

/** The region-relative runs of `region` that a snapshot or a migration must carry: touched, not all zero. */
export function dataRuns(region: GuestRegion): Array<[number, number]> {
  if (region.hostAddress === 0n) throw new MemorySnapshotError(`region at 0x${region.gpa.toString(16)} has no host mapping (test memory)`);
  return nonZeroRuns(region.hostAddress, touchedRuns(region));
}

const iov = new Uint8Array(libc.IOVEC_SIZE);
const iovDv = new DataView(iov.buffer);

/** pwritev/preadv of `len` bytes at host address `host` and file offset `off`, all of it or throw. */
function transfer(write: boolean, fd: number, host: bigint, len: number, off: number, what: string): void {
  let done = 0;
  while (done < len) {
    const n = Math.min(IO_CHUNK, len - done);
    iovDv.setBigUint64(0, host + BigInt(done), true);
    iovDv.setBigUint64(8, BigInt(n), true);
    const r = write ? libc.pwritevRaw(fd, iov, 1, off + done) : libc.preadvRaw(fd, iov, 1, off + done);
    if (r === -libc.EINTR) continue;
    if (r < 0) throw new MemorySnapshotError(`${what}: ${write ? 'write' : 'read'} at offset ${off + done} failed (errno ${-r})`);
    if (r === 0) throw new MemorySnapshotError(`${what}: the file ends at offset ${off + done}, inside the RAM it should hold`);
    done += r;
  }
}

/**
 * Create `path` for writing, exclusively (O_EXCL, mode 0600): an existing file is an error, never
 * overwritten. Errors are made by `error` from one sentence naming the file.
 */
export function createExclusive(path: string, error: (message: string) => Error): number {
  try {
    return openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | libc.O_CLOEXEC, 0o600);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw error(code === 'EEXIST' ? `'${path}' exists already (a snapshot never overwrites a file)` : `cannot create '${path}': ${(e as Error).message}`);
  }
}

/**
 * Write guest RAM to a new file at `path` (created exclusively: an existing file is an error and
 * is left alone), sparse, and fsync it. The VM must be paused with its devices quiesced. A failure
 * removes the partial file.
 */
export function saveGuestMemory(mem: GuestMemory, path: string): MemorySaveResult {
  const fd = createExclusive(path, (m) => new MemorySnapshotError(m));
  try {
    const ranges: MemoryRange[] = [];
    let fileOffset = 0;
    for (const r of mem.regions) {
      ranges.push({ gpa: r.gpa, length: r.size, fileOffset });
      fileOffset += r.size;
    }
    libc.ftruncate(fd, fileOffset);
    let dataBytes = 0;
    mem.regions.forEach((r, i) => {
      if (r.hostAddress === 0n) throw new MemorySnapshotError(`region at 0x${r.gpa.toString(16)} has no host mapping (test memory) and cannot be saved`);
      for (const [a, b] of dataRuns(r)) {
        transfer(true, fd, r.hostAddress + BigInt(a), b - a, ranges[i]!.fileOffset + a, `memory-ranges '${path}'`);
        dataBytes += b - a;
      }
    });
    libc.fsync(fd);
    return { ranges, dataBytes, fileSize: fileOffset };
  } catch (e) {
    try { unlinkSync(path); } catch { /* gone already */ }
    throw e instanceof MemorySnapshotError ? e : new MemorySnapshotError(`writing guest RAM to '${path}': ${(e as Error).message}`);
  } finally {
    closeSync(fd);
  }
}

/**
 * Read guest RAM saved by saveGuestMemory into `mem` (fresh, all zero), checking that `ranges`
 * (from the snapshot's state) describe exactly `mem`'s regions and fit in the file. Only the
 * file's data extents are read.
 */
export function restoreGuestMemory(mem: GuestMemory, path: string, ranges: readonly MemoryRange[]): { dataBytes: number } {
  const fd = openChecked(mem, path, ranges);
  try {
    let dataBytes = 0;
    mem.regions.forEach((r, i) => {
      const m = ranges[i]!;
      for (const [a, b] of seekDataRuns(fd, m.fileOffset, m.fileOffset + m.length)) {
        transfer(false, fd, r.hostAddress + BigInt(a), b - a, m.fileOffset + a, `memory-ranges '${path}'`);
        dataBytes += b - a;
      }
    });
    return { dataBytes };
  } finally {
    closeSync(fd);
  }
}

/**
 * Map guest RAM saved by saveGuestMemory copy-on-write over `mem` (fresh, private), with the
 * same checks as restoreGuestMemory: no page is read now; the guest faults them in from the
 * file's page cache as it touches them, and what it writes stays private. The file must not be
 * changed or truncated while the VM runs (a snapshot never rewrites its files).
 */
export function mapGuestMemory(mem: GuestMemory, path: string, ranges: readonly MemoryRange[], opts: { thp?: boolean } = {}): void {
  const fd = openChecked(mem, path, ranges);
  try {
    mem.regions.forEach((r, i) => {
      if (r.fd >= 0) throw new MemorySnapshotError(`region at 0x${r.gpa.toString(16)} is shared memory: restore it by copying (memory_restore_mode Copy)`);
      const m = ranges[i]!;
      if (m.fileOffset % PAGE_SIZE !== 0) throw new MemorySnapshotError(`memory range ${i}: file offset ${m.fileOffset} is not page aligned, it cannot be mapped`);
      // One descriptor per region: each region owns (and closes) its own.
      mem.mapCopyOnWrite(i, libc.dupCloexec(fd), m.fileOffset, opts);
    });
  } catch (e) {
    throw e instanceof MemorySnapshotError ? e : new MemorySnapshotError(`mapping '${path}': ${(e as Error).message}`);
  } finally {
    closeSync(fd);
  }
}

/** Open the memory-ranges file after checking that `ranges` describe exactly `mem` and fit in it. */
function openChecked(mem: GuestMemory, path: string, ranges: readonly MemoryRange[]): number {
  const regions = mem.regions;
  if (ranges.length !== regions.length) {
    throw new MemorySnapshotError(`the snapshot has ${ranges.length} memory range(s), this VM's RAM has ${regions.length} region(s)`);
  }
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | libc.O_CLOEXEC);
  } catch (e) {
    throw new MemorySnapshotError(`cannot open '${path}': ${(e as Error).message}`);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new MemorySnapshotError(`'${path}' is not a regular file`);
    regions.forEach((r, i) => {
      const m = ranges[i]!;
      const where = `memory range ${i}`;
      if (m.gpa !== r.gpa || m.length !== r.size) {
        throw new MemorySnapshotError(`${where} is 0x${m.gpa.toString(16)}+0x${m.length.toString(16)}, this VM's RAM region is 0x${r.gpa.toString(16)}+0x${r.size.toString(16)}`);
      }
      if (!Number.isSafeInteger(m.fileOffset) || m.fileOffset < 0 || m.fileOffset + m.length > st.size) {
        throw new MemorySnapshotError(`${where} (file offset ${m.fileOffset}, ${m.length} bytes) does not fit in '${path}' (${st.size} bytes)`);
      }
      if (r.hostAddress === 0n) throw new MemorySnapshotError(`region at 0x${r.gpa.toString(16)} has no host mapping (test memory)`);
    });
    return fd;
  } catch (e) {
    closeSync(fd);
    throw e;
  }
}
