// A receive-queue chain held between events: a device that writes host data into the guest
// (console input, vsock packets) pops a device-writable chain, and keeps it while the data it was
// popped for is not there yet, so that no buffer is taken from the driver and handed back empty.
// The rx loops of virtio-console and virtio-vsock share this instead of each keeping a flag.
import { DescriptorChain, type SplitQueue } from './queue.js';

export class HeldChain {
  private c: DescriptorChain;
  /** A chain was popped and waits to be filled. */
  held = false;

  constructor(capacity: number) {
    this.c = new DescriptorChain(capacity);
  }

  /** Room for chains of queues up to `size` (at activation; forgets a held chain). */
  grow(size: number): void {
    if (size > this.c.capacity) this.c = new DescriptorChain(size);
    this.held = false;
  }

  /**
   * The held chain, else the next available one, else null. With `rearm`, an empty queue turns
   * notifications back on and is looked at once more (virtio 1.2, 2.7.10: a buffer the driver
   * added meanwhile would otherwise wait for the next kick).
   */
  next(q: SplitQueue, rearm = false): DescriptorChain | null {
    if (this.held) return this.c;
    for (;;) {
      if (q.pop(this.c)) {
        this.held = true;
        return this.c;
      }
      if (!rearm || !q.enableNotification()) return null;
    }
  }

  /** Give the held chain back to the driver with `len` bytes written. */
  complete(q: SplitQueue, len: number): void {
    q.addUsed(this.c.head, len);
    this.held = false;
  }

  /** Hand the held chain back to the queue unused (pause): the next pop returns it again. */
  giveBack(q: SplitQueue): void {
    if (!this.held) return;
    q.rewind(1);
    this.held = false;
  }

  /** Forget the held chain (reset). */
  release(): void {
    this.held = false;
  }
}
