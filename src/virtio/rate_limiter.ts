// I/O rate limiting for virtio devices: token buckets for bytes and operations, as Cloud
// Hypervisor's `rate_limiter_config` (docs/io_throttling.md) and Firecracker's rate_limiter crate
// define them. A bucket holds at most `size` tokens and starts full, plus `one_time_burst` extra
// tokens spent first and never refilled; it refills continuously at `size` tokens per
// `refill_time` ms. A request takes its tokens from every bucket of the limiter or from none.
//
// A request larger than the bucket could never be admitted; as Firecracker admits it
// ("over-consumption") so that it does not starve, this one admits it when the bucket is full and
// leaves the bucket in debt (a negative budget) for the excess: the long-run rate stays exact.
//
// Devices stop taking requests from a queue while their limiter refuses, leave them in the
// available ring, and arm a LimiterTimer (a timerfd they return from pollFds()) for the time
// `waitMs` says the tokens need. No allocation on the consume path; the clock is injectable.
import * as libc from '../sys/libc.js';

/** Cloud Hypervisor's TokenBucket (size, one_time_burst in tokens; refill_time in ms). */
export interface TokenBucketConfig {
  size: number;
  one_time_burst?: number;
  refill_time: number;
}

/** Cloud Hypervisor's RateLimiterConfig: bandwidth in bytes, ops in requests. */
export interface RateLimiterConfig {
  bandwidth?: TokenBucketConfig;
  ops?: TokenBucketConfig;
}

/** Milliseconds on a monotonic clock. */
export type Clock = () => number;

export const monotonicMs: Clock = () => performance.now();

/** Largest size / one_time_burst (tokens stay exact in a double) and refill_time (ms, ~49 days). */
export const MAX_BUCKET_TOKENS = Number.MAX_SAFE_INTEGER;
export const MAX_REFILL_TIME_MS = 0xffffffff;

/**
 * The problem with one token bucket's numbers, or undefined when they are usable. A bucket of
 * size 0 limits nothing (Firecracker: no bucket) whatever its refill_time; a non-zero size needs
 * a non-zero refill_time.
 */
export function tokenBucketIssue(b: unknown): { field: string; message: string } | undefined {
  if (typeof b !== 'object' || b === null || Array.isArray(b)) return { field: '', message: 'must be an object {size, one_time_burst, refill_time}' };
  const o = b as Record<string, unknown>;
  const int = (k: string, max: number, required: boolean): { field: string; message: string } | undefined => {
    const v = o[k];
    if (v === undefined) return required ? { field: k, message: 'is required' } : undefined;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0 || v > max) return { field: k, message: `must be an integer in 0..${max}, got ${String(v)}` };
    return undefined;
  };
  const bad = int('size', MAX_BUCKET_TOKENS, true) ?? int('refill_time', MAX_REFILL_TIME_MS, true) ?? int('one_time_burst', MAX_BUCKET_TOKENS, false);
  if (bad) return bad;
  if ((o['size'] as number) > 0 && o['refill_time'] === 0) return { field: 'refill_time', message: `must be > 0 for a bucket of size ${o['size'] as number} (the time in ms to refill it)` };
  for (const k of Object.keys(o)) if (k !== 'size' && k !== 'one_time_burst' && k !== 'refill_time') return { field: k, message: 'is not a TokenBucket field' };
  return undefined;
}

/** One token bucket (Firecracker TokenBucket semantics, continuous refill, debt for oversized requests). */
export class TokenBucket {
  readonly size: number;
  readonly refillTimeMs: number;
  /** Refilled tokens available now (may be negative: debt of an oversized request). */
  budget: number;
  /** What is left of one_time_burst (spent first, never refilled). */
  burst: number;
  private last: number;

  constructor(cfg: TokenBucketConfig, now: number) {
    const issue = tokenBucketIssue(cfg);
    if (issue) throw new RangeError(`token bucket ${issue.field}: ${issue.message}`);
    if (cfg.size === 0) throw new RangeError('token bucket of size 0 limits nothing: leave it out');
    this.size = cfg.size;
    this.refillTimeMs = cfg.refill_time;
    this.budget = cfg.size;
    this.burst = cfg.one_time_burst ?? 0;
    this.last = now;
  }

  /** Add what `refill_time` gives for the time since the last refill, up to `size`. */
  refill(now: number): void {
    const dt = now - this.last;
    if (dt <= 0) return; // a clock that did not move (or went back): nothing
    this.last = now;
    if (this.budget >= this.size) return;
    const b = this.budget + (dt * this.size) / this.refillTimeMs;
    this.budget = b > this.size ? this.size : b;
  }

  /** Whether `n` tokens can be taken now (after refill()). */
  canTake(n: number): boolean {
    if (n <= this.burst) return true;
    const need = n - this.burst;
    return need <= this.budget || this.budget >= this.size;
  }

  /** Take `n` tokens (after canTake(n)). */
  take(n: number): void {
    if (n <= this.burst) {
      this.burst -= n;
      return;
    }
    this.budget -= n - this.burst;
    this.burst = 0;
  }

  /** Give back `n` tokens taken by take() (capped at size; burst is not restored). */
  giveBack(n: number): void {
    const b = this.budget + n;
    this.budget = b > this.size ? this.size : b;
  }

  /** Milliseconds until canTake(n) holds (0 when it holds now). */
  waitMs(n: number): number {
    if (this.canTake(n)) return 0;
    // An oversized request waits for a full bucket; any other for the tokens it lacks.
    const target = n - this.burst > this.size ? this.size : n - this.burst;
    return ((target - this.budget) * this.refillTimeMs) / this.size;
  }
}

/** A bandwidth bucket and an ops bucket; a request takes from both or from neither. */
export class RateLimiter {
  readonly bandwidth: TokenBucket | null;
  readonly ops: TokenBucket | null;
  /** Requests refused so far (a counter for vm.counters). */
  throttled = 0;

  constructor(cfg: RateLimiterConfig, readonly clock: Clock = monotonicMs) {
    const now = clock();
    this.bandwidth = cfg.bandwidth !== undefined && cfg.bandwidth.size > 0 ? new TokenBucket(cfg.bandwidth, now) : null;
    this.ops = cfg.ops !== undefined && cfg.ops.size > 0 ? new TokenBucket(cfg.ops, now) : null;
  }

  /** True when neither bucket limits anything (both absent or of size 0). */
  get unlimited(): boolean {
    return this.bandwidth === null && this.ops === null;
  }

  /**
   * Take `bytes` bandwidth tokens and `ops` ops tokens, or nothing. False when a bucket lacks
   * them: the caller leaves the request where it is and asks waitMs() when to try again.
   */
  consume(bytes: number, ops: number): boolean {
    const bw = this.bandwidth;
    const op = this.ops;
    if (bw === null && op === null) return true;
    const now = this.clock();
    if (bw !== null) bw.refill(now);
    if (op !== null) op.refill(now);
    if ((bw !== null && !bw.canTake(bytes)) || (op !== null && !op.canTake(ops))) {
      this.throttled++;
      return false;
    }
    if (bw !== null) bw.take(bytes);
    if (op !== null) op.take(ops);
    return true;
  }

  /** Milliseconds until consume(bytes, ops) can succeed (as of the last consume's refill). */
  waitMs(bytes: number, ops: number): number {
    const a = this.bandwidth?.waitMs(bytes) ?? 0;
    const b = this.ops?.waitMs(ops) ?? 0;
    return a > b ? a : b;
  }
}

/**
 * A one-shot timerfd (CLOCK_MONOTONIC, non-blocking) a throttled device adds to its poll fds:
 * readable once the time given to arm() has passed.
 */
export class LimiterTimer {
  readonly fd: number;
  armed = false;
  /** struct itimerspec: it_interval {sec, nsec}, it_value {sec, nsec}, each an int64. */
  private readonly spec = new Uint8Array(32);
  private readonly specView = new DataView(this.spec.buffer);
  private readonly scratch = new Uint8Array(8);

  constructor() {
    this.fd = libc.timerfdCreate(libc.CLOCK_MONOTONIC, libc.TFD_NONBLOCK | libc.TFD_CLOEXEC);
  }

  /** Fire once after `ms` milliseconds (at least 1 µs: a zero it_value would disarm it). */
  arm(ms: number): void {
    const ns = Math.max(1000, Math.ceil(ms * 1e6));
    const v = this.specView;
    const sec = Math.floor(ns / 1e9);
    v.setUint32(16, sec % 0x100000000, true);
    v.setUint32(20, Math.floor(sec / 0x100000000), true);
    v.setUint32(24, ns - sec * 1e9, true);
    v.setUint32(28, 0, true);
    libc.timerfdSettime(this.fd, this.spec);
    this.armed = true;
  }

  /** Stop it and forget an expiry not read yet. */
  disarm(): void {
    this.spec.fill(0);
    libc.timerfdSettime(this.fd, this.spec);
    this.ack();
    this.armed = false;
  }

  /** Read the expiry count (after poll said readable); false when it had not expired. */
  ack(): boolean {
    const r = libc.readRaw(this.fd, this.scratch, 8);
    if (r === 8) this.armed = false;
    return r === 8;
  }

  close(): void {
    try { libc.close(this.fd); } catch { /* already closed */ }
  }
}
