// Synchronous I/O hand-off from a vCPU thread to the device thread, over shared memory.
// A vCPU that exits on port or MMIO I/O for a device posts the access into its own mailbox,
// rings the device thread's doorbell and sleeps (Atomics.wait) until the access is done; the
// device thread serves every pending mailbox, then sleeps on the doorbell. No allocation and no
// message passing on this path.

/** Int32 word indices of a mailbox. */
const STATE = 0;
const OP = 1;
const ADDR_LO = 2;
const ADDR_HI = 3;
const LEN = 4;
const WORDS = 8;
/** Data area: up to 8 bytes (MMIO) or size*count bytes of string port I/O, capped here. */
export const MAILBOX_DATA_MAX = 4096;

/** Busy-wait iterations before a thread sleeps on a futex (each is one atomic load). */
export const SPIN_LIMIT = 2000;

export const MailboxState = { Idle: 0, Pending: 1, Done: 2 } as const;
export const MailboxOp = { PioRead: 0, PioWrite: 1, MmioRead: 2, MmioWrite: 3 } as const;
export type MailboxOp = (typeof MailboxOp)[keyof typeof MailboxOp];

export interface MailboxShared {
  mailboxes: SharedArrayBuffer[];
  /** Int32[0]: doorbell sequence; Int32[1]: stop flag for the device thread. */
  doorbell: SharedArrayBuffer;
}

export function createMailboxes(vcpus: number): MailboxShared {
  const mailboxes: SharedArrayBuffer[] = [];
  for (let i = 0; i < vcpus; i++) mailboxes.push(new SharedArrayBuffer(WORDS * 4 + MAILBOX_DATA_MAX));
  return { mailboxes, doorbell: new SharedArrayBuffer(16) };
}

/** The vCPU side of one mailbox. */
export class MailboxClient {
  private readonly w: Int32Array;
  private readonly data: Uint8Array;
  private readonly bell: Int32Array;

  /** `abort`: Int32 word that becomes non-zero when the VM stops, so a wait never outlives it. */
  constructor(mailbox: SharedArrayBuffer, doorbell: SharedArrayBuffer, private readonly abort?: Int32Array) {
    this.w = new Int32Array(mailbox, 0, WORDS);
    this.data = new Uint8Array(mailbox, WORDS * 4, MAILBOX_DATA_MAX);
    this.bell = new Int32Array(doorbell);
  }

  /** Perform one access; for reads, `data` is filled with the result. */
  access(op: MailboxOp, addr: number, data: Uint8Array): void {
    const len = data.length > MAILBOX_DATA_MAX ? MAILBOX_DATA_MAX : data.length;
    const w = this.w;
    w[OP] = op;
    w[ADDR_LO] = addr >>> 0;
    w[ADDR_HI] = Math.floor(addr / 0x1_0000_0000);
    w[LEN] = len;
    if (op === MailboxOp.PioWrite || op === MailboxOp.MmioWrite) this.data.set(data.length === len ? data : data.subarray(0, len));
    Atomics.store(w, STATE, MailboxState.Pending);
    Atomics.add(this.bell, 0, 1);
    Atomics.notify(this.bell, 0);
    // Device accesses are short: spin briefly before sleeping, saving two futex round trips.
    for (let spin = 0; spin < SPIN_LIMIT && Atomics.load(w, STATE) === MailboxState.Pending; spin++);
    while (Atomics.load(w, STATE) === MailboxState.Pending) {
      // Normally woken by the device thread; the timeout only matters if that thread is gone.
      if (Atomics.wait(w, STATE, MailboxState.Pending, 200) === 'timed-out' && this.abort && Atomics.load(this.abort, 0) === 2) {
        data.fill(0xff);
        Atomics.store(w, STATE, MailboxState.Idle);
        return;
      }
    }
    if (op === MailboxOp.PioRead || op === MailboxOp.MmioRead) {
      for (let i = 0; i < len; i++) data[i] = this.data[i]!;
    }
    Atomics.store(w, STATE, MailboxState.Idle);
  }
}

/** The device-thread side: serve every pending mailbox. */
export class MailboxServer {
  private readonly words: Int32Array[];
  private readonly datas: Uint8Array[][];
  readonly bell: Int32Array;

  constructor(shared: MailboxShared) {
    this.words = shared.mailboxes.map((m) => new Int32Array(m, 0, WORDS));
    // Exact-length views per mailbox, so handlers get data.length === access size without allocating.
    this.datas = shared.mailboxes.map((m) => {
      const views: Uint8Array[] = [];
      for (let l = 0; l <= 8; l++) views.push(new Uint8Array(m, WORDS * 4, l));
      return views;
    });
    this.bell = new Int32Array(shared.doorbell);
  }

  /** Handle pending requests; returns how many were served. */
  serve(handler: (op: MailboxOp, addr: number, data: Uint8Array) => void): number {
    let served = 0;
    for (let i = 0; i < this.words.length; i++) {
      const w = this.words[i]!;
      if (Atomics.load(w, STATE) !== MailboxState.Pending) continue;
      const len = w[LEN]!;
      const addr = (w[ADDR_HI]! >>> 0) * 0x1_0000_0000 + (w[ADDR_LO]! >>> 0);
      const views = this.datas[i]!;
      const data = len <= 8 ? views[len]! : new Uint8Array(w.buffer, WORDS * 4, len);
      handler(w[OP] as MailboxOp, addr, data);
      Atomics.store(w, STATE, MailboxState.Done);
      Atomics.notify(w, STATE);
      served++;
    }
    return served;
  }

  stopRequested(): boolean {
    return Atomics.load(this.bell, 1) !== 0;
  }
}

export function ringDoorbell(doorbell: SharedArrayBuffer, stop = false): void {
  const bell = new Int32Array(doorbell);
  if (stop) Atomics.store(bell, 1, 1);
  Atomics.add(bell, 0, 1);
  Atomics.notify(bell, 0);
}
