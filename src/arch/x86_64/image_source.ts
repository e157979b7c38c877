// Kernel and initramfs images as byte sources: the loaders read the few header bytes they
// validate into small buffers and copy the bulk (the protected-mode kernel, ELF segments, the
// initramfs) straight from the file into guest RAM with pread(2), so no JS buffer holds an image
// (tens of MiB) for the VM's life and nothing is copied twice. Tests pass plain byte arrays.
import { closeSync, fstatSync, openSync, readSync, statSync } from 'node:fs';
import type { GuestMemory } from '../../memory/guest_memory.js';

/** An image: its size and a way to copy any byte range of it. */
export interface ImageSource {
  readonly size: number;
  /** Copy image bytes [offset, offset + dst.length) into dst; throws if they are not all there. */
  read(offset: number, dst: Uint8Array): void;
}

/** What the loaders accept: the bytes themselves (tests) or a source such as an open file. */
export type Image = Uint8Array | ImageSource;

/** An in-memory image. */
export class BytesImage implements ImageSource {
  constructor(private readonly bytes: Uint8Array) {}
  get size(): number { return this.bytes.length; }
  read(offset: number, dst: Uint8Array): void {
    if (offset < 0 || offset + dst.length > this.bytes.length) throw new RangeError(`image read ${offset}+${dst.length} outside ${this.bytes.length} bytes`);
    dst.set(this.bytes.subarray(offset, offset + dst.length));
  }
}

/** A regular file, read with pread(2) at each use; the fd stays open (and the content fixed) until close(). */
export class FileImage implements ImageSource {
  readonly size: number;
  private fd: number;

  /** Open `path` read-only; fs errors propagate (the caller words them). */
  constructor(readonly path: string) {
    // stat before open: opening a FIFO or a device could block or have side effects.
    if (!statSync(path).isFile()) throw notRegular();
    this.fd = openSync(path, 'r');
    try {
      const st = fstatSync(this.fd);
      if (!st.isFile()) throw notRegular();
      this.size = st.size;
    } catch (e) {
      closeSync(this.fd);
      throw e;
    }
  }

  read(offset: number, dst: Uint8Array): void {
    if (this.fd < 0) throw new Error(`${this.path}: read after close`);
    let done = 0;
    while (done < dst.length) {
      const n = readSync(this.fd, dst, done, dst.length - done, offset + done);
      if (n === 0) throw new Error(`${this.path}: file ended at ${offset + done} bytes while reading ${offset}+${dst.length} (did it shrink?)`);
      done += n;
    }
  }

  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }
}

function notRegular(): Error {
  return Object.assign(new Error('not a regular file'), { code: 'ENOTREG' });
}

export function imageSource(i: Image): ImageSource {
  return i instanceof Uint8Array ? new BytesImage(i) : i;
}

/** Bytes [offset, offset + len) of the image in a new buffer (for headers: keep `len` small). */
export function readImage(src: ImageSource, offset: number, len: number): Uint8Array {
  const b = new Uint8Array(len);
  src.read(offset, b);
  return b;
}

/** Largest piece copied into guest RAM by one read (a typed-array view and one pread each). */
const COPY_CHUNK = 256 * 1024 * 1024;

/**
 * Copy image bytes [offset, offset + len) to guest RAM at `gpa`, through views of guest memory
 * (the kernel writes into the mapping itself). The caller has checked the range fits in RAM.
 */
export function copyImageToGuest(mem: GuestMemory, gpa: number, src: ImageSource, offset: number, len: number): void {
  for (let done = 0; done < len;) {
    const n = Math.min(COPY_CHUNK, len - done);
    src.read(offset + done, mem.slice(gpa + done, n));
    done += n;
  }
}
