// Fuzz: random, mostly malformed virtqueues (virtio 1.2, 2.7) against every device model.
//
// Each case lays out a fresh queue (sometimes at the end of RAM, misaligned or outside it), fills
// the descriptor table with a mix of plausible requests and garbage (addresses inside RAM, across
// a region's end, in the gap between regions, near 2^52 and 2^64; lengths 0 to 2^32-1; random
// flags, next indexes, loops, indirect tables), publishes random heads with a random avail.idx,
// and lets the device process the queue. Every case must end in a defined state:
//   - nothing but a VirtqueueError escapes (from the SplitQueue constructor or processQueue);
//   - the device wrote guest memory only inside the used ring and the device-writable buffers of
//     chains it popped; each used element names the chain just popped, with a length no larger
//     than its writable bytes, and (virtio-blk) a status byte of OK, IOERR or UNSUPP;
//   - the image file keeps its size; a read-only image keeps its contents; virtio-pmem answers
//     every request it completes with a 4-byte response of OK or EIO and never writes its file;
//     virtio-balloon writes nothing into its buffers (used length 0) and gives back to the host
//     only whole, page-aligned ranges inside one RAM region (those pages may change: they read
//     zero afterwards); virtio-mem answers every request it completes with a 10-byte response of
//     ACK, NACK, BUSY or ERROR (or completes a chain without room for it with used length 0),
//     gives back only whole blocks of its region, and its plugged_size matches its bitmap.
// Afterwards, reset() and a well-formed request on a fresh queue still work.
//
// STV_FUZZ_SEED=<n> replays a run (the seed is printed); STV_FUZZ_CASES=<n> changes the count of
// cases, STV_FUZZ_OPS=<n> runs each device until it was called n times (npm run soak: 10^6), and
// STV_FUZZ_DEVICES=blk,blk-ro,rng,console,pmem,balloon,mem picks devices (src/testing/prng.ts).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { closeSync, fstatSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GuestMemory } from '../memory/guest_memory.js';
import type { VirtioDevice } from './device.js';
import {
  DescriptorChain,
  SplitQueue,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VirtqueueError,
  availRingBytes,
  descTableBytes,
  usedRingBytes,
  type QueueLayout,
  type QueueOptions,
} from './queue.js';
import { TestDriver, writeDescAt } from './testing/driver.js';
import {
  BlockDevice,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES,
} from './block/device.js';
import { RngDevice } from './rng/device.js';
import { ConsoleDevice } from './console/device.js';
import { PmemDevice, VIRTIO_PMEM_REQ_TYPE_FLUSH, VIRTIO_PMEM_RESP_TYPE_EIO, VIRTIO_PMEM_RESP_TYPE_OK } from './pmem/device.js';
import { BalloonDevice, INFLATEQ, REPORTINGQ } from './balloon/device.js';
import {
  MEM_RESP_BYTES, MemDevice, VIRTIO_MEM_REQ_PLUG, VIRTIO_MEM_REQ_STATE, VIRTIO_MEM_REQ_UNPLUG, VIRTIO_MEM_REQ_UNPLUG_ALL,
  VIRTIO_MEM_RESP_ACK, VIRTIO_MEM_RESP_ERROR, VIRTIO_MEM_STATE_PLUGGED,
} from './mem/device.js';
import { Prng as Rng, fuzzBudget, fuzzDeviceWanted, seedFromEnv } from '../testing/prng.js';

const SEED = seedFromEnv('STV_FUZZ_SEED');
const BUDGET = fuzzBudget(3000);

const NEXT = VIRTQ_DESC_F_NEXT;
const WRITE = VIRTQ_DESC_F_WRITE;
const INDIRECT = VIRTQ_DESC_F_INDIRECT;

// Guest RAM: region A [0, 256 KiB) holds the rings (first 64 KiB) and data; region B
// [1 MiB, 1 MiB + 64 KiB) is more data; between them a gap that is not RAM.
const A_END = 0x40000;
const B_START = 0x100000;
const B_END = 0x110000;
const DATA_START = 0x10000;
const IMAGE_BYTES = 64 * 1024; // 128 sectors
const CAPACITY = IMAGE_BYTES / 512;

const dir = mkdtempSync(join(tmpdir(), 'stv-fuzz-'));
after(() => rmSync(dir, { recursive: true, force: true }));

type Kind = 'blk' | 'blk-ro' | 'rng' | 'console' | 'pmem' | 'balloon' | 'mem';

/** Ranges [gpa, len, ...] the balloon gave back to the host in the current case (allowed to change). */
const discarded: number[] = [];
/** Queue count of the device under test (the balloon has inflateq, deflateq, reporting_vq). */
const QUEUES: Record<Kind, number> = { blk: 1, 'blk-ro': 1, rng: 1, console: 2, pmem: 1, balloon: 3, mem: 1 };

// virtio-mem: a region of 20 blocks of 2 MiB at 1 GiB (not RAM here: the device never touches it).
const MEM_ADDR = 0x4000_0000;
const MEM_BS = 2 << 20;
const MEM_BLOCKS = 20;

interface Seg { addr: number | bigint; len: number; write: boolean }

/** Builds one case's guest memory contents. */
class CaseGen {
  private next = DATA_START;
  constructor(private readonly r: Rng, private readonly mem: GuestMemory, private readonly size: number, private readonly layout: QueueLayout) {}

  /** A plausible buffer of `len` bytes in a data area (A or B); wraps around, may overlap. */
  data(len: number, align = 8): number {
    if (this.r.chance(0.15) && len <= B_END - B_START) return B_START + Math.floor(this.r.int(B_END - B_START - len + 1) / align) * align;
    let a = Math.ceil(this.next / align) * align;
    if (a + len > A_END) a = DATA_START;
    if (a + len > A_END) return DATA_START;
    this.next = a + len;
    return a;
  }

  /** Any address: mostly RAM, else across a region end, the gap, beyond RAM, near 2^52 / 2^64, the rings. */
  addr(len: number): number | bigint {
    const r = this.r;
    switch (r.int(12)) {
      case 0: return A_END - 1 - r.int(Math.max(1, Math.min(len, 64))); // straddles the end of A
      case 1: return B_END - r.int(Math.max(1, Math.min(len, 64)) + 1);
      case 2: return A_END + r.int(B_START - A_END); // the gap
      case 3: return B_END + r.int(0x100000); // beyond RAM
      case 4: return r.chance(0.5) ? 2 ** 52 - 1 - r.int(0x10000) : 2n ** 52n + BigInt(r.int(0x10000));
      case 5: return 2n ** 64n - 1n - BigInt(r.int(0x10000));
      case 6: return r.pick([this.layout.descTable, this.layout.availRing, this.layout.usedRing]) + r.int(64);
      case 7: return r.u32();
      default: return this.data(Math.min(len, 0x2000));
    }
  }

  len(): number {
    const r = this.r;
    return r.pick([0, 1, 15, 16, 17, 512, 513, 1024, 4096, 0x10000, 0x80000000, 0xffffffff, r.int(0x2000), r.int(600), r.u32()]);
  }

  flags(): number {
    const r = this.r;
    return r.chance(0.9) ? r.int(8) : r.u32() & 0xffff;
  }

  nextIdx(n: number): number {
    return this.r.chance(0.9) ? this.r.int(n) : this.r.int(0x10000);
  }

  /** Fill descriptor i with garbage. */
  garbageDesc(i: number): void {
    const a = this.addr(16);
    writeDescAt(this.mem, this.layout.descTable + 16 * i, a, this.len(), this.flags(), this.nextIdx(this.size));
  }

  /** Segments of a plausible request for `kind` on queue `qi`. */
  request(kind: Kind, qi: number): Seg[] {
    const r = this.r;
    const segs: Seg[] = [];
    const readable = (len: number, fill?: Uint8Array): void => {
      const a = this.data(Math.max(len, 1));
      this.mem.writeBytes(a, fill ?? r.bytes(Math.min(len, 64)));
      segs.push({ addr: a, len, write: false });
    };
    const writable = (len: number): void => { segs.push({ addr: this.data(Math.max(len, 1)), len, write: true }); };
    if (kind === 'blk' || kind === 'blk-ro') {
      const hdr = new Uint8Array(16);
      const dv = new DataView(hdr.buffer);
      const type = r.pick([VIRTIO_BLK_T_IN, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES, r.u32(), 10, 14]);
      dv.setUint32(0, type, true);
      const sector = r.pick<bigint>([0n, BigInt(r.int(CAPACITY)), BigInt(CAPACITY - 1), BigInt(CAPACITY), BigInt(r.u32()), 2n ** 32n + BigInt(r.int(4)), 2n ** 53n - 1n, 2n ** 63n, 2n ** 64n - 1n]);
      dv.setBigUint64(8, sector, true);
      if (r.chance(0.2)) { readable(7, hdr.subarray(0, 7)); readable(9, hdr.subarray(7)); } else readable(16, hdr);
      const dataLen = r.pick([512, 1024, 4096, 512 * (1 + r.int(8)), r.int(2000), 0]);
      let status = 1;
      if (type === VIRTIO_BLK_T_IN || type === VIRTIO_BLK_T_GET_ID) {
        const n = type === VIRTIO_BLK_T_GET_ID ? r.pick([20, 8, 0, 512]) : dataLen;
        if (r.chance(0.3)) status += n; // status byte in the data descriptor
        else if (n > 0) {
          const parts = 1 + r.int(3);
          for (let p = 0; p < parts; p++) writable(p === parts - 1 ? n - Math.floor(n / parts) * (parts - 1) : Math.floor(n / parts));
        }
      } else if (type === VIRTIO_BLK_T_OUT) {
        if (dataLen > 0) readable(dataLen);
      } else if (type === VIRTIO_BLK_T_DISCARD || type === VIRTIO_BLK_T_WRITE_ZEROES) {
        const nseg = r.pick([1, 1, 2, 16, 17, 0]);
        const b = new Uint8Array(16 * nseg);
        const bv = new DataView(b.buffer);
        for (let s = 0; s < nseg; s++) {
          bv.setBigUint64(16 * s, r.chance(0.7) ? BigInt(r.int(CAPACITY)) : BigInt.asUintN(64, BigInt(r.u32()) << BigInt(r.int(40))), true);
          bv.setUint32(16 * s + 8, r.pick([1, 8, r.int(CAPACITY), r.u32()]), true);
          bv.setUint32(16 * s + 12, r.chance(0.8) ? 0 : r.int(4), true);
        }
        if (nseg > 0) readable(b.length, b);
      }
      if (r.chance(0.95)) writable(status);
    } else if (kind === 'pmem') {
      // struct virtio_pmem_req { le32 type } (mostly FLUSH), then struct virtio_pmem_resp.
      const type = r.chance(0.8) ? VIRTIO_PMEM_REQ_TYPE_FLUSH : r.u32();
      const req = new Uint8Array(r.chance(0.9) ? 4 : r.pick([0, 1, 3, 8]));
      if (req.length >= 4) new DataView(req.buffer).setUint32(0, type, true);
      if (r.chance(0.9)) readable(req.length, req);
      if (r.chance(0.95)) writable(r.chance(0.85) ? 4 : r.pick([0, 1, 3, 64]));
    } else if (kind === 'balloon' && qi !== REPORTINGQ) {
      // An array of le32 PFNs: mostly pages of the data areas, else anything (the gap, beyond RAM).
      const n = r.pick([1, 2, 16, 256, r.int(300)]);
      const b = new Uint8Array(4 * n + (r.chance(0.1) ? r.int(4) : 0));
      const dv = new DataView(b.buffer);
      let p = (r.chance(0.5) ? B_START : DATA_START) / 4096 + r.int(16);
      for (let i = 0; i < n; i++) {
        p = r.chance(0.7) ? p + 1 : r.chance(0.7) ? (r.chance(0.5) ? B_START : DATA_START) / 4096 + r.int(48) : r.u32();
        dv.setUint32(4 * i, p >>> 0, true);
      }
      readable(b.length, b);
      if (r.chance(0.05)) writable(r.int(64));
    } else if (kind === 'balloon') {
      // A free page report: runs of free memory, device-writable as Linux adds them.
      const parts = 1 + r.int(4);
      for (let p = 0; p < parts; p++) {
        const len = r.chance(0.8) ? 4096 * (1 + r.int(8)) : r.int(10000);
        const a = r.chance(0.5) ? B_START + 4096 * r.int(8) : this.data(len, r.chance(0.8) ? 4096 : 8);
        segs.push({ addr: a, len, write: r.chance(0.9) });
      }
    } else if (kind === 'mem') {
      // struct virtio_mem_req: le16 type, padding, le64 addr, le16 nb_blocks, padding (5.15.6).
      const b = new Uint8Array(24);
      const dv = new DataView(b.buffer);
      dv.setUint16(0, r.chance(0.9) ? r.pick([VIRTIO_MEM_REQ_PLUG, VIRTIO_MEM_REQ_PLUG, VIRTIO_MEM_REQ_UNPLUG, VIRTIO_MEM_REQ_UNPLUG, VIRTIO_MEM_REQ_UNPLUG_ALL, VIRTIO_MEM_REQ_STATE]) : r.u32() & 0xffff, true);
      const addr = r.pick<bigint>([
        BigInt(MEM_ADDR + MEM_BS * r.int(MEM_BLOCKS)), BigInt(MEM_ADDR + MEM_BS * r.int(MEM_BLOCKS)), BigInt(MEM_ADDR + MEM_BS * (r.int(MEM_BLOCKS + 4) - 2)),
        BigInt(MEM_ADDR + r.int(MEM_BLOCKS * MEM_BS)), 0n, BigInt(r.u32()), 2n ** 53n + BigInt(MEM_ADDR), 2n ** 64n - BigInt(MEM_BS), BigInt.asUintN(64, BigInt(r.u32()) << 32n),
      ]);
      dv.setBigUint64(8, addr, true);
      dv.setUint16(16, r.pick([1, 1, 2, 3, r.int(MEM_BLOCKS + 2), 0, 0xffff, r.u32() & 0xffff]), true);
      if (r.chance(0.1)) for (const o of [2, 4, 6, 18, 20, 22]) b[o] = r.u32() & 0xff; // padding: ignored
      const len = r.chance(0.9) ? 24 : r.pick([0, 1, 2, 17, 18, 23]);
      if (len > 0) {
        if (r.chance(0.2) && len > 2) { const cut = 1 + r.int(len - 1); readable(cut, b.subarray(0, cut)); readable(len - cut, b.subarray(cut, len)); } else readable(len, b.subarray(0, len));
      }
      if (r.chance(0.95)) {
        const w = r.chance(0.85) ? MEM_RESP_BYTES : r.pick([0, 1, 9, 64]);
        if (w >= 2 && r.chance(0.2)) { const cut = 1 + r.int(w - 1); writable(cut); writable(w - cut); } else writable(w);
      }
    } else if (kind === 'rng' || (kind === 'console' && qi === 0)) {
      if (r.chance(0.1)) readable(r.int(100));
      const parts = 1 + r.int(3);
      for (let p = 0; p < parts; p++) writable(r.pick([0, 1, 64, 4096, r.int(9000)]));
    } else {
      const parts = 1 + r.int(3);
      for (let p = 0; p < parts; p++) readable(r.pick([0, 1, 80, 4096, r.int(9000)]));
      if (r.chance(0.1)) writable(r.int(100));
    }
    return segs;
  }

  /** Mutate one field of one segment, sometimes. */
  mutate(segs: Seg[]): void {
    const r = this.r;
    if (segs.length === 0 || !r.chance(0.35)) return;
    const s = r.pick(segs);
    switch (r.int(4)) {
      case 0: s.addr = this.addr(s.len); break;
      case 1: s.len = this.len(); break;
      case 2: s.write = !s.write; break;
      default: segs.splice(r.int(segs.length), 1);
    }
  }
}

/** A SplitQueue that records what the device popped and checks what it hands back. */
class CheckingQueue extends SplitQueue {
  readonly problems: string[] = [];
  /** Device-writable segments of every chain popped: [addr, len]. */
  readonly writableSegs: number[] = [];
  completed = 0;
  readonly statuses = [0, 0, 0];
  private lastHead = -1;
  private lastWritable = 0;
  private lastStatusAddr = -1;
  constructor(private readonly m: GuestMemory, layout: QueueLayout, opts: QueueOptions, private readonly kind: Kind, private readonly qi: number) {
    super(m, layout, opts);
  }

  /** The first device-writable byte of the chain popped last (-1 if none). */
  private firstWritableAddr = -1;
  firstWritable(): number {
    return this.firstWritableAddr;
  }

  override pop(c: DescriptorChain): boolean {
    const ok = super.pop(c);
    if (!ok) return false;
    this.firstWritableAddr = -1;
    for (let k = c.readableCount; k < c.length && this.firstWritableAddr < 0; k++) if (c.len[k]! > 0) this.firstWritableAddr = c.addr[k]!;
    this.lastHead = c.head;
    this.lastWritable = c.writableBytes;
    this.lastStatusAddr = -1;
    for (let k = c.readableCount; k < c.length; k++) {
      this.writableSegs.push(c.addr[k]!, c.len[k]!);
      if (c.len[k]! > 0) this.lastStatusAddr = c.addr[k]! + c.len[k]! - 1;
    }
    return true;
  }

  override addUsed(head: number, len: number): void {
    if (head !== this.lastHead) this.problems.push(`used id ${head}, but the chain popped last was ${this.lastHead}`);
    if (len > this.lastWritable) this.problems.push(`used length ${len} > ${this.lastWritable} writable bytes (head ${head})`);
    if (this.kind === 'blk' || this.kind === 'blk-ro') {
      if (this.lastStatusAddr < 0) this.problems.push(`blk completed head ${head} without a status byte`);
      else {
        const st = this.m.readU8(this.lastStatusAddr);
        if (st > VIRTIO_BLK_S_UNSUPP) this.problems.push(`blk status ${st} for head ${head}`);
        else this.statuses[st]!++;
      }
    }
    if (this.kind === 'console' && this.qi === 1 && len !== 0) this.problems.push(`console transmit used length ${len}`);
    if (this.kind === 'rng' && len > 65536) this.problems.push(`rng used length ${len} above the cap`);
    if (this.kind === 'balloon' && len !== 0) this.problems.push(`balloon used length ${len} (it writes nothing)`);
    if (this.kind === 'mem') {
      if (len === 0) {
        if (this.lastWritable >= MEM_RESP_BYTES) this.problems.push(`mem used length 0 with room for the response (head ${head})`);
      } else if (len !== MEM_RESP_BYTES) this.problems.push(`mem used length ${len}, not the ${MEM_RESP_BYTES}-byte response`);
      else {
        // The response's first byte is at the chain's first writable byte: ACK 0 .. ERROR 3.
        const first = this.firstWritable();
        const t = first >= 0 ? this.m.readU8(first) : -1;
        if (t < VIRTIO_MEM_RESP_ACK || t > VIRTIO_MEM_RESP_ERROR) this.problems.push(`mem response ${t} for head ${head}`);
      }
    }
    if (this.kind === 'pmem') {
      if (len !== 4) this.problems.push(`pmem used length ${len}, not the 4-byte response`);
      else if (this.lastStatusAddr >= 0) {
        // The response's first byte is at the chain's first writable byte; its value is 0 or 1.
        const first = this.writableSegs.length >= 2 ? this.firstWritable() : -1;
        const ret = first >= 0 ? this.m.readU8(first) : -1;
        if (ret !== VIRTIO_PMEM_RESP_TYPE_OK && ret !== VIRTIO_PMEM_RESP_TYPE_EIO) this.problems.push(`pmem response ${ret} for head ${head}`);
      }
    }
    this.lastHead = -1;
    super.addUsed(head, len);
    this.completed++;
  }
}

interface Stats { cases: number; ops: number; ms: number; badLayout: number; errors: Map<string, number>; completed: number; statuses: number[] }

function makeDevice(kind: Kind, r: Rng): { dev: VirtioDevice; check: () => void; finish: () => void; inputFd: number } {
  if (kind === 'blk' || kind === 'blk-ro') {
    const path = join(dir, `${kind}.img`);
    const image = r.bytes(IMAGE_BYTES);
    writeFileSync(path, image);
    const hash = createHash('sha256').update(image).digest('hex');
    const ro = kind === 'blk-ro';
    const fd = openSync(path, ro ? 'r' : 'r+');
    const dev = new BlockDevice({ fd, size: IMAGE_BYTES, readonly: ro, numQueues: 1, queueSize: 256, serial: 'fuzz' });
    return {
      dev, inputFd: -1,
      check: () => assert.equal(fstatSync(fd).size, IMAGE_BYTES, 'image size changed'),
      finish: () => {
        assert.equal(readFileSync(path).length, IMAGE_BYTES);
        if (ro) assert.equal(createHash('sha256').update(readFileSync(path)).digest('hex'), hash, 'read-only image changed');
      },
    };
  }
  if (kind === 'rng') return { dev: new RngDevice({ fd: openSync('/dev/urandom', 'r') }), inputFd: -1, check: () => {}, finish: () => {} };
  if (kind === 'balloon') {
    const problems: string[] = [];
    const dev = new BalloonDevice({
      numPages: r.int(1000), deflateOnOom: true, freePageReporting: true,
      discard: (mem, gpa, len) => {
        if (gpa % 4096 !== 0 || len % 4096 !== 0 || len === 0 || !mem.checkedRange(gpa, len)) problems.push(`discard of 0x${gpa.toString(16)}+0x${len.toString(16)}`);
        discarded.push(gpa, len);
        return mem.discard(gpa, len);
      },
    });
    return { dev, inputFd: -1, check: () => assert.deepEqual(problems, [], 'the balloon gave back a range that is not whole pages of one RAM region'), finish: () => {} };
  }
  if (kind === 'mem') {
    const problems: string[] = [];
    const dev = new MemDevice({
      addr: MEM_ADDR, regionSize: MEM_BLOCKS * MEM_BS, requestedSize: MEM_BS * r.int(MEM_BLOCKS + 1),
      discard: (gpa, len) => {
        if ((gpa - MEM_ADDR) % MEM_BS !== 0 || len % MEM_BS !== 0 || len === 0 || gpa < MEM_ADDR || gpa + len > MEM_ADDR + MEM_BLOCKS * MEM_BS) problems.push(`discard of 0x${gpa.toString(16)}+0x${len.toString(16)}`);
        return r.chance(0.95);
      },
      populate: (gpa, len) => {
        if ((gpa - MEM_ADDR) % MEM_BS !== 0 || len % MEM_BS !== 0 || len === 0 || gpa < MEM_ADDR || gpa + len > MEM_ADDR + MEM_BLOCKS * MEM_BS) problems.push(`populate of 0x${gpa.toString(16)}+0x${len.toString(16)}`);
        if (r.chance(0.02)) throw new Error('ENOMEM');
        return r.chance(0.95);
      },
    });
    const check = (): void => {
      let n = 0;
      for (let i = 0; i < MEM_BLOCKS; i++) if (dev.isPlugged(i)) n++;
      const cfg = new Uint8Array(56);
      dev.readConfig(0, cfg);
      const plugged = Number(new DataView(cfg.buffer).getBigUint64(40, true));
      if (plugged !== n * MEM_BS || dev.pluggedSize !== plugged) problems.push(`plugged_size ${plugged} with ${n} blocks plugged`);
      assert.deepEqual(problems, [], 'virtio-mem: a host range that is not whole blocks of the region, or plugged_size off the bitmap');
      if (r.chance(0.2)) dev.setRequestedSize(MEM_BS * r.int(MEM_BLOCKS + 1)); // the host resizes between cases
    };
    const finish = (): void => {
      // The generator must reach every answer, not only fail early.
      const c = dev.counters;
      for (const k of ['acks', 'nacks', 'busy', 'errors', 'invalid_requests', 'bad_chains', 'plug_requests', 'unplug_requests', 'unplug_all_requests', 'state_requests']) {
        assert.ok(c[k]! > 0, `virtio-mem counter ${k} stayed 0 (${JSON.stringify(c)})`);
      }
    };
    return { dev, inputFd: -1, check, finish };
  }
  if (kind === 'pmem') {
    const path = join(dir, 'pmem.raw');
    const image = r.bytes(IMAGE_BYTES);
    writeFileSync(path, image);
    const hash = createHash('sha256').update(image).digest('hex');
    const fd = openSync(path, 'r+');
    const dev = new PmemDevice({ fd, start: 0x1_0000_0000, size: 2 << 20 });
    return {
      dev, inputFd: -1, check: () => {},
      finish: () => { assert.equal(createHash('sha256').update(readFileSync(path)).digest('hex'), hash, 'the pmem device wrote its file'); },
    };
  }
  const fd = openSync('/dev/urandom', 'r'); // console input that is always readable
  return { dev: new ConsoleDevice({ sink: () => {}, input: { fd } }), inputFd: fd, check: () => {}, finish: () => closeSync(fd) };
}

function fuzzDevice(kind: Kind, seed: number): Stats {
  const r = new Rng(seed);
  const bufA = new ArrayBuffer(A_END);
  const bufB = new ArrayBuffer(B_END - B_START);
  const mem = GuestMemory.fromBuffers([{ gpa: 0, buffer: bufA }, { gpa: B_START, buffer: bufB }]);
  const u8A = new Uint8Array(bufA);
  const u8B = new Uint8Array(bufB);
  const { dev, check, finish, inputFd } = makeDevice(kind, r);
  const stats: Stats = { cases: 0, ops: 0, ms: 0, badLayout: 0, errors: new Map(), completed: 0, statuses: [0, 0, 0] };
  const t0 = performance.now();

  for (let n = 0; BUDGET.more(n, stats.ops); n++) {
    const where = `${kind} case ${n} (STV_FUZZ_SEED=${SEED})`;
    stats.cases++;
    dev.reset();
    u8A.fill(0);
    u8B.fill(0);
    discarded.length = 0;
    const size = r.chance(0.85) ? r.pick([1, 2, 4, 8, 16, 32, 64, 128, 256]) : r.chance(0.7) ? r.pick([512, 1024]) : r.pick([0, 3, 100, 65536]);
    const layout = chooseLayout(r, size);
    const opts: QueueOptions = { eventIdx: r.chance(0.5), indirect: r.chance(0.7) };
    const qi = QUEUES[kind] > 1 ? r.int(QUEUES[kind]) : 0; // one draw only where there is a choice (seeds replay as before)
    let q: CheckingQueue;
    try {
      q = new CheckingQueue(mem, layout, opts, kind, qi);
    } catch (e) {
      assert.ok(e instanceof VirtqueueError, `${where}: SplitQueue constructor threw ${String(e)}`);
      stats.badLayout++;
      continue;
    }
    const g = new CaseGen(r, mem, size, layout);
    const heads = fillQueue(r, g, mem, kind, qi, layout, size);
    publish(r, mem, layout, size, heads, 0);

    const snapA = u8A.slice();
    const snapB = u8B.slice();
    const queues: Array<SplitQueue | null> = Array.from({ length: QUEUES[kind] }, (_, i) => (i === qi ? q : null));
    dev.activate({ mem, queues, features: dev.features, notifyQueue: () => {}, notifyConfig: () => {} });
    const rounds = r.chance(0.3) ? 2 : 1;
    for (let round = 0; round < rounds; round++) {
      if (round > 0) { // a second batch of buffers on the same queue
        publish(r, mem, layout, size, fillQueue(r, g, mem, kind, qi, layout, size), q.lastAvailIdx);
        snapA.set(u8A);
        snapB.set(u8B);
      }
      try {
        stats.ops++;
        dev.processQueue(qi);
        if (kind === 'console' && qi === 0) {
          if (r.chance(0.5)) (dev as ConsoleDevice).pushInput(r.bytes(1 + r.int(300)));
          if (dev.pollFds?.().includes(inputFd) === true) { stats.ops++; dev.onFdReady?.(inputFd); }
        }
      } catch (e) {
        if (!(e instanceof VirtqueueError)) assert.fail(`${where}: processQueue threw ${e instanceof Error ? e.stack : String(e)}`);
        stats.errors.set(e.reason, (stats.errors.get(e.reason) ?? 0) + 1);
        round = rounds; // the device would now be in DEVICE_NEEDS_RESET
      }
      assert.deepEqual(q.problems, [], where);
      // Writable buffers of every chain popped so far stay fair game (a held receive buffer).
      checkWrites(where, q, layout, size, snapA, u8A, 0);
      checkWrites(where, q, layout, size, snapB, u8B, B_START);
    }
    check();
    stats.completed += q.completed;
    for (let s = 0; s < 3; s++) stats.statuses[s]! += q.statuses[s]!;
  }
  stats.ms = performance.now() - t0;
  finish();
  wellFormedAfterwards(kind, dev, mem, u8A, u8B);
  dev.close();
  return stats;
}

function chooseLayout(r: Rng, size: number): QueueLayout {
  const n = Number.isInteger(size) && size > 0 && size <= 65536 ? size : 8;
  const d = descTableBytes(n);
  const a = availRingBytes(n);
  const u = usedRingBytes(n);
  switch (r.int(20)) {
    case 0: case 1: { // packed against the end of region A
      const used = (A_END - u) & ~3;
      const avail = (used - a - 2 * r.int(4)) & ~1;
      return { size, descTable: (avail - d) & ~15, availRing: avail, usedRing: used };
    }
    case 2: { // against the end of region B
      const used = (B_END - u) & ~3;
      const avail = (used - a) & ~1;
      return { size, descTable: (avail - d) & ~15, availRing: avail, usedRing: used };
    }
    case 3: { // one ring straddling the end of A, or in the gap
      const over = r.pick([2, 4, 16, 0x1000]);
      const base = { size, descTable: 0, availRing: 0x8000, usedRing: 0xc000 };
      const which = r.int(3);
      if (which === 0) return { ...base, descTable: (A_END - d + over + 15) & ~15 };
      if (which === 1) return { ...base, availRing: (A_END - a + over + 1) & ~1 };
      return { ...base, usedRing: (A_END - u + over + 3) & ~3 };
    }
    case 4: // misaligned
      return { size, descTable: 0x10 * r.int(8) + r.pick([0, 1, 8]), availRing: 0x8000 + r.pick([0, 1]), usedRing: 0xc000 + r.pick([0, 1, 2]) };
    case 5: // anywhere
      return { size, descTable: r.pick([2 ** 52, 2 ** 64, B_START - 16, r.u32() & ~15]), availRing: 0x8000, usedRing: 0xc000 };
    default:
      return { size, descTable: 0, availRing: 0x8000, usedRing: 0xc000 };
  }
}

/** Write garbage and plausible chains into the descriptor table; returns the heads to publish. */
function fillQueue(r: Rng, g: CaseGen, mem: GuestMemory, kind: Kind, qi: number, layout: QueueLayout, size: number): number[] {
  const heads: number[] = [];
  const garbage = r.chance(0.1);
  let next = 0;
  for (let i = 0; i < size; i++) if (garbage || r.chance(0.3)) g.garbageDesc(i);
  while (!garbage && next < size && heads.length < 1 + r.int(size)) {
    const segs = g.request(kind, qi);
    g.mutate(segs);
    if (segs.length === 0) continue;
    const indirect = r.chance(0.25);
    if (indirect) {
      // Optionally the first segment stays direct, before the indirect descriptor (2.7.5.3.2).
      const direct = r.chance(0.3) ? segs.shift() : undefined;
      const need = direct !== undefined ? 2 : 1;
      if (next + need > size) break;
      const table = g.data(16 * Math.max(segs.length, 1), 16);
      segs.forEach((s, i) => writeDescAt(mem, table + 16 * i, s.addr, s.len, (s.write ? WRITE : 0) | (i < segs.length - 1 ? NEXT : 0), i + 1));
      let tableLen = 16 * segs.length;
      if (r.chance(0.1)) tableLen = r.pick([0, 8, tableLen + 16, 0x100000]);
      let flags = INDIRECT;
      if (r.chance(0.05)) flags |= NEXT;
      heads.push(next);
      if (direct !== undefined) {
        writeDescAt(mem, layout.descTable + 16 * next, direct.addr, direct.len, (direct.write ? WRITE : 0) | NEXT, next + 1);
        next++;
      }
      writeDescAt(mem, layout.descTable + 16 * next, table, tableLen, flags, g.nextIdx(size));
      next++;
    } else {
      if (next + segs.length > size) break;
      heads.push(next);
      segs.forEach((s, i) => {
        const last = i === segs.length - 1;
        let nx = next + i + 1;
        if (r.chance(0.02)) nx = r.chance(0.5) ? next : g.nextIdx(size); // loops, wild links
        writeDescAt(mem, layout.descTable + 16 * (next + i), s.addr, s.len, (s.write ? WRITE : 0) | (last ? 0 : NEXT), last ? 0 : nx);
      });
      next += segs.length;
    }
  }
  if (garbage || r.chance(0.1)) for (let i = 0; i < 1 + r.int(4); i++) heads.push(g.nextIdx(size));
  return heads;
}

/** Put `heads` in the available ring from index `from` and set avail.idx (sometimes wildly). */
function publish(r: Rng, mem: GuestMemory, layout: QueueLayout, size: number, heads: number[], from: number): void {
  let idx = from;
  for (const h of heads) {
    mem.writeU16(layout.availRing + 4 + 2 * (idx % size), h & 0xffff);
    idx = (idx + 1) & 0xffff;
  }
  if (r.chance(0.05)) idx = (from + size + 1 + r.int(0x10000 - size - 1)) & 0xffff; // too far ahead
  else if (r.chance(0.05)) idx = (from + r.int(size + 1)) & 0xffff;
  mem.writeU16(layout.availRing + 2, idx);
  mem.writeU16(layout.availRing, r.chance(0.2) ? 1 : 0); // VIRTQ_AVAIL_F_NO_INTERRUPT
  mem.writeU16(layout.availRing + 4 + 2 * size, r.u32() & 0xffff); // used_event
}

/** Every byte that changed must lie in the used ring or in a writable buffer the device popped. */
function checkWrites(where: string, q: CheckingQueue, layout: QueueLayout, size: number, before: Uint8Array, after: Uint8Array, base: number): void {
  const CH = 4096;
  const usedEnd = layout.usedRing + usedRingBytes(size);
  const segs = [...q.writableSegs, ...discarded];
  for (let off = 0; off < before.length; off += CH) {
    const end = Math.min(off + CH, before.length);
    if (Buffer.compare(before.subarray(off, end), after.subarray(off, end)) === 0) continue;
    for (let i = off; i < end; i++) {
      if (before[i] === after[i]) continue;
      const gpa = base + i;
      if (gpa >= layout.usedRing && gpa < usedEnd) continue;
      let ok = false;
      for (let s = 0; s < segs.length && !ok; s += 2) ok = gpa >= segs[s]! && gpa < segs[s]! + segs[s + 1]!;
      if (!ok) assert.fail(`${where}: the device wrote guest byte 0x${gpa.toString(16)}, outside the used ring and every writable buffer`);
    }
  }
}

/** After all that: reset, a fresh well-formed queue, and a request that must succeed. */
function wellFormedAfterwards(kind: Kind, dev: VirtioDevice, mem: GuestMemory, u8A: Uint8Array, u8B: Uint8Array): void {
  dev.reset();
  u8A.fill(0);
  u8B.fill(0);
  const drv = new TestDriver(mem, { size: 16 });
  const q = drv.queue({ eventIdx: true, indirect: true });
  const qi = kind === 'console' ? 1 : 0;
  let notified = 0;
  dev.activate({ mem, queues: kind === 'console' ? [null, q] : kind === 'balloon' ? [q, null, null] : [q], features: dev.features, notifyQueue: () => { notified++; }, notifyConfig: () => {} });
  if (kind === 'blk' || kind === 'blk-ro') {
    const hdr = (type: number, sector: number): Uint8Array => {
      const h = new Uint8Array(16);
      new DataView(h.buffer).setUint32(0, type, true);
      new DataView(h.buffer).setUint32(8, sector, true);
      return h;
    };
    const data = Uint8Array.from({ length: 1024 }, (_, i) => (i * 13) & 0xff);
    const w = drv.addChain([hdr(VIRTIO_BLK_T_OUT, 3), data], [1], { indirect: true });
    dev.processQueue(qi);
    assert.equal(mem.readU8(w.writable[0]!), kind === 'blk' ? VIRTIO_BLK_S_OK : VIRTIO_BLK_S_IOERR);
    const rd = drv.addChain([hdr(VIRTIO_BLK_T_IN, 3)], [1024, 1]);
    dev.processQueue(qi);
    assert.equal(mem.readU8(rd.writable[1]!), VIRTIO_BLK_S_OK);
    if (kind === 'blk') assert.deepEqual(mem.slice(rd.writable[0]!, 1024), data);
    assert.deepEqual(drv.used().map((u) => u.len), [1, 1025]);
  } else if (kind === 'pmem') {
    const req = new Uint8Array(4);
    new DataView(req.buffer).setUint32(0, VIRTIO_PMEM_REQ_TYPE_FLUSH, true);
    const f = drv.addChain([req], [4], { indirect: true });
    dev.processQueue(qi);
    assert.equal(mem.readU32(f.writable[0]!), VIRTIO_PMEM_RESP_TYPE_OK);
    assert.deepEqual(drv.used().map((u) => u.len), [4]);
  } else if (kind === 'balloon') {
    const pfns = new Uint8Array(8);
    new DataView(pfns.buffer).setUint32(0, B_START / 4096 + 2, true);
    new DataView(pfns.buffer).setUint32(4, B_START / 4096 + 3, true);
    u8B.fill(0x5a, 0, 5 * 4096);
    drv.addChain([pfns], [], { indirect: true });
    dev.processQueue(INFLATEQ);
    assert.deepEqual(drv.used().map((u) => u.len), [0]);
    assert.ok(u8B.subarray(2 * 4096, 4 * 4096).every((x) => x === 0), 'the inflated pages were given back');
    assert.ok(u8B.subarray(4 * 4096, 5 * 4096).every((x) => x === 0x5a), 'the next page was not');
  } else if (kind === 'mem') {
    const m = dev as MemDevice;
    const rq = (type: number, addr: number, nb: number): Uint8Array => {
      const b = new Uint8Array(24);
      const dv = new DataView(b.buffer);
      dv.setUint16(0, type, true);
      dv.setBigUint64(8, BigInt(addr), true);
      dv.setUint16(16, nb, true);
      return b;
    };
    m.setRequestedSize(4 * MEM_BS);
    // UNPLUG_ALL until it is through (the fuzz discard fails now and then: BUSY), then a plug.
    let all = -1;
    for (let i = 0; i < 20 && all !== VIRTIO_MEM_RESP_ACK; i++) {
      const c = drv.addChain([rq(VIRTIO_MEM_REQ_UNPLUG_ALL, 0, 0)], [MEM_RESP_BYTES]);
      dev.processQueue(qi);
      all = mem.readU16(c.writable[0]!);
    }
    assert.equal(all, VIRTIO_MEM_RESP_ACK);
    assert.equal(m.pluggedSize, 0);
    let plug = -1;
    for (let i = 0; i < 20 && plug !== VIRTIO_MEM_RESP_ACK; i++) {
      const c = drv.addChain([rq(VIRTIO_MEM_REQ_PLUG, MEM_ADDR + MEM_BS, 2)], [MEM_RESP_BYTES], { indirect: true });
      dev.processQueue(qi);
      plug = mem.readU16(c.writable[0]!);
    }
    assert.equal(plug, VIRTIO_MEM_RESP_ACK);
    const st = drv.addChain([rq(VIRTIO_MEM_REQ_STATE, MEM_ADDR + MEM_BS, 2)], [MEM_RESP_BYTES]);
    const bad = drv.addChain([rq(VIRTIO_MEM_REQ_STATE, MEM_ADDR + 4096, 1)], [MEM_RESP_BYTES]);
    dev.processQueue(qi);
    assert.deepEqual([mem.readU16(st.writable[0]!), mem.readU16(st.writable[0]! + 8)], [VIRTIO_MEM_RESP_ACK, VIRTIO_MEM_STATE_PLUGGED]);
    assert.equal(mem.readU16(bad.writable[0]!), VIRTIO_MEM_RESP_ERROR);
    assert.ok(drv.used().every((u) => u.len === MEM_RESP_BYTES));
    assert.equal(m.pluggedSize, 2 * MEM_BS);
  } else if (kind === 'rng') {
    drv.addChain([], [256]);
    dev.processQueue(qi);
    assert.deepEqual(drv.used().map((u) => u.len), [256]);
  } else {
    drv.addChain([Buffer.from('still alive\n')], []);
    dev.processQueue(qi);
    assert.deepEqual(drv.used().map((u) => u.len), [0]);
  }
  assert.ok(notified > 0);
}

for (const kind of ['blk', 'blk-ro', 'rng', 'console', 'pmem', 'balloon', 'mem'] as const) {
  test(`fuzz ${kind}: ${BUDGET.label} of random malformed virtqueues end in a defined state`, { skip: fuzzDeviceWanted(kind) ? false : `not in STV_FUZZ_DEVICES=${process.env.STV_FUZZ_DEVICES}` }, (t) => {
    const seed = (SEED ^ { blk: 0x1111, 'blk-ro': 0x2222, rng: 0x3333, console: 0x4444, pmem: 0x5555, balloon: 0x6666, mem: 0x7777 }[kind]) >>> 0;
    t.diagnostic(`STV_FUZZ_SEED=${SEED} (${kind} stream seed ${seed})`);
    const s = fuzzDevice(kind, seed);
    const errs = [...s.errors].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k}:${v}`).join(' ');
    t.diagnostic(`@@fuzz:${JSON.stringify({ device: kind, seed: SEED, cases: s.cases, ops: s.ops, ms: Math.round(s.ms) })}@@`);
    t.diagnostic(`${s.cases} cases, ${s.ops} virtqueue operations in ${(s.ms / 1000).toFixed(1)} s: ${s.badLayout} bad layouts, ${s.completed} requests completed, errors ${errs}` +
      (kind.startsWith('blk') ? `, statuses ok/ioerr/unsupp ${s.statuses.join('/')}` : ''));
    // The generator must reach deep paths, not only fail early.
    assert.ok(s.completed > s.cases / 10, `only ${s.completed} requests completed`);
    assert.ok(s.errors.size >= 5, `only ${s.errors.size} kinds of VirtqueueError seen`);
    assert.ok(s.badLayout > 0);
    if (kind === 'blk') assert.ok(s.statuses.every((x) => x > 0), `statuses ${s.statuses.join('/')}`);
  });
}
