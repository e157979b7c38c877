// The seeded PRNG and the environment knobs shared by the fuzz tests (src/virtio/fuzz.test.ts,
// src/virtio/net/fuzz.test.ts, src/virtio/vsock/fuzz.test.ts, src/api/fuzz.test.ts) and the soak
// (bench/soak_load.ts): one generator, so a printed seed replays a run anywhere.

/** mulberry32: small, fast, good enough for fuzzing (not for anything secret). */
export class Prng {
  private s: number;
  constructor(seed: number) { this.s = seed >>> 0; }
  /** The next 32-bit value. */
  u32(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
  /** In [0, 1). */
  float(): number { return this.u32() / 4294967296; }
  /** In [0, n) (u32 modulo n). */
  int(n: number): number { return n <= 1 ? 0 : this.u32() % n; }
  chance(p: number): boolean { return this.u32() / 2 ** 32 < p; }
  pick<T>(a: readonly T[]): T { return a[this.int(a.length)]!; }
  bytes(n: number): Uint8Array { const b = new Uint8Array(n); for (let i = 0; i < n; i++) b[i] = this.u32() & 0xff; return b; }
}

/** The same stream as a function returning floats in [0, 1) (`r()`), the style of the net, vsock and API fuzzers. */
export function mulberry32(seed: number): () => number {
  const p = new Prng(seed);
  return () => p.float();
}

/** A seed from `name` in the environment (decimal or 0x hex), else `dflt`, else a fresh one. */
export function seedFromEnv(name: string, dflt?: number, env: NodeJS.ProcessEnv = process.env): number {
  const v = env[name];
  if (v !== undefined && v !== '') {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0) throw new Error(`${name} must be a non-negative integer seed, not '${v}'`);
    return n >>> 0;
  }
  return dflt !== undefined ? dflt >>> 0 : (Date.now() ^ (process.pid << 16)) >>> 0;
}

/** A count from `name` in the environment (1e6 and 1000000 both read), else `dflt`. */
export function countFromEnv(name: string, dflt: number, env: NodeJS.ProcessEnv = process.env): number {
  const v = env[name];
  if (v === undefined || v === '') return dflt;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`${name} must be a non-negative integer, not '${v}'`);
  return n;
}

/**
 * How long a fuzzer runs: `STV_FUZZ_OPS=<n>` (the soak: npm run soak) runs until the device has
 * been called n times (processQueue / onFdReady: virtqueue operations); otherwise
 * `STV_FUZZ_CASES=<n>` cases (default `dfltCases`, what npm test runs).
 */
export interface FuzzBudget {
  /** Cases to run when no op target is set. */
  cases: number;
  /** The op target, or 0 for none. */
  ops: number;
  /** Whether to go on after `casesDone` cases and `opsDone` device calls. */
  more(casesDone: number, opsDone: number): boolean;
  /** For test names and diagnostics: "3000 cases" or "1000000 virtqueue operations". */
  label: string;
}

export function fuzzBudget(dfltCases: number, env: NodeJS.ProcessEnv = process.env): FuzzBudget {
  const ops = countFromEnv('STV_FUZZ_OPS', 0, env);
  const cases = countFromEnv('STV_FUZZ_CASES', dfltCases, env);
  return {
    cases, ops,
    more: ops > 0 ? (_c, o) => o < ops : (c) => c < cases,
    label: ops > 0 ? `${ops} virtqueue operations` : `${cases} cases`,
  };
}

/** Whether a fuzzer for `device` should run: STV_FUZZ_DEVICES=blk,net,… (default: all). */
export function fuzzDeviceWanted(device: string, env: NodeJS.ProcessEnv = process.env): boolean {
  const v = env.STV_FUZZ_DEVICES;
  return v === undefined || v === '' || v.split(',').map((s) => s.trim()).includes(device);
}
