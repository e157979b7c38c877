// A single-producer single-consumer byte ring in shared memory: the main thread feeds host
// input (stdin) to the device thread's serial port without message passing.
const HEAD = 0; // next byte to read (consumer owns)
const TAIL = 1; // next byte to write (producer owns)

export class ByteRing {
  readonly sab: SharedArrayBuffer;
  private readonly idx: Int32Array;
  private readonly buf: Uint8Array;
  private readonly cap: number;

  constructor(sabOrCapacity: SharedArrayBuffer | number) {
    this.sab = typeof sabOrCapacity === 'number' ? new SharedArrayBuffer(8 + sabOrCapacity) : sabOrCapacity;
    this.idx = new Int32Array(this.sab, 0, 2);
    this.buf = new Uint8Array(this.sab, 8);
    this.cap = this.buf.length;
  }

  /** Append as many bytes as fit; returns the count written. */
  push(bytes: Uint8Array): number {
    const head = Atomics.load(this.idx, HEAD);
    let tail = Atomics.load(this.idx, TAIL);
    const free = this.cap - 1 - ((tail - head + this.cap) % this.cap);
    const n = Math.min(free, bytes.length);
    for (let i = 0; i < n; i++) {
      this.buf[tail] = bytes[i]!;
      tail = tail + 1 === this.cap ? 0 : tail + 1;
    }
    Atomics.store(this.idx, TAIL, tail);
    return n;
  }

  available(): number {
    const head = Atomics.load(this.idx, HEAD);
    const tail = Atomics.load(this.idx, TAIL);
    return (tail - head + this.cap) % this.cap;
  }

  /** Copy up to out.length bytes without consuming them; returns the count. */
  peek(out: Uint8Array): number {
    let head = Atomics.load(this.idx, HEAD);
    const n = Math.min(this.available(), out.length);
    for (let i = 0; i < n; i++) {
      out[i] = this.buf[head]!;
      head = head + 1 === this.cap ? 0 : head + 1;
    }
    return n;
  }

  consume(n: number): void {
    const head = Atomics.load(this.idx, HEAD);
    Atomics.store(this.idx, HEAD, (head + n) % this.cap);
  }
}
