// Token buckets and the rate limiter (Cloud Hypervisor / Firecracker semantics) on a fake clock.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as libc from '../sys/libc.js';
import { LimiterTimer, RateLimiter, TokenBucket, tokenBucketIssue } from './rate_limiter.js';

/** A clock the test moves by hand. */
function fakeClock(start = 1000): { now: () => number; advance: (ms: number) => void } {
  let t = start;
  return { now: () => t, advance: (ms) => { t += ms; } };
}

test('a bucket starts full, refills size tokens per refill_time continuously, never above size', () => {
  const c = fakeClock();
  const b = new TokenBucket({ size: 1000, refill_time: 100 }, c.now());
  assert.ok(b.canTake(1000));
  b.take(1000);
  assert.equal(b.budget, 0);
  assert.equal(b.canTake(1), false);
  assert.equal(b.waitMs(500), 50);
  c.advance(25);
  b.refill(c.now());
  assert.equal(b.budget, 250); // continuous: a quarter of the refill time, a quarter of the bucket
  assert.equal(b.canTake(250), true);
  assert.equal(b.canTake(251), false);
  c.advance(10_000);
  b.refill(c.now());
  assert.equal(b.budget, 1000); // capped at size
});

test('one_time_burst is spent first and never refilled', () => {
  const c = fakeClock();
  const b = new TokenBucket({ size: 100, one_time_burst: 300, refill_time: 1000 }, c.now());
  assert.ok(b.canTake(400)); // burst + a full bucket
  b.take(250);
  assert.equal(b.burst, 50);
  assert.equal(b.budget, 100);
  b.take(120); // 50 from the burst, 70 from the budget
  assert.equal(b.burst, 0);
  assert.equal(b.budget, 30);
  assert.equal(b.canTake(31), false);
  c.advance(100_000);
  b.refill(c.now());
  assert.equal(b.budget, 100);
  assert.equal(b.burst, 0);
  assert.equal(b.canTake(101), true); // oversized, but the bucket is full (see the next test)
});

test('a request larger than the bucket passes when the bucket is full and leaves a debt', () => {
  const c = fakeClock();
  const b = new TokenBucket({ size: 100, refill_time: 100 }, c.now());
  b.take(10);
  assert.equal(b.canTake(250), false); // not full: it waits for a full bucket, never starves
  assert.equal(b.waitMs(250), 10);
  c.advance(10);
  b.refill(c.now());
  assert.equal(b.canTake(250), true);
  b.take(250);
  assert.equal(b.budget, -150);
  // The debt is paid at the refill rate before anything else passes: the long-run rate holds.
  assert.equal(b.waitMs(1), 151);
  c.advance(150);
  b.refill(c.now());
  assert.equal(b.budget, 0);
  assert.equal(b.canTake(1), false);
});

test('a clock that goes back refills nothing', () => {
  const b = new TokenBucket({ size: 10, refill_time: 10 }, 500);
  b.take(10);
  b.refill(400);
  assert.equal(b.budget, 0);
  b.refill(505);
  assert.equal(b.budget, 5);
});

test('RateLimiter: a request takes from both buckets or from neither', () => {
  const c = fakeClock();
  const l = new RateLimiter({ bandwidth: { size: 4096, refill_time: 1000 }, ops: { size: 2, refill_time: 1000 } }, c.now);
  assert.equal(l.consume(1024, 1), true);
  assert.equal(l.consume(1024, 1), true);
  // ops are out: this request takes no bandwidth either.
  assert.equal(l.consume(1024, 1), false);
  assert.equal(l.bandwidth!.budget, 2048);
  assert.equal(l.waitMs(1024, 1), 500);
  c.advance(500);
  assert.equal(l.consume(1024, 1), true);
  // bandwidth short (1024 + 2048 + 512 refilled = 3072 - 1024 = 2048 left; 4000 needs more).
  assert.equal(l.consume(3000, 1), false);
  assert.equal(l.ops!.budget, 0);
  assert.equal(l.throttled, 2);
  assert.ok(Math.abs(l.waitMs(3000, 1) - 500) < 1e-9); // the slower bucket decides: ops 1 op = 500 ms
});

test('RateLimiter: absent or size-0 buckets limit nothing', () => {
  const l = new RateLimiter({ bandwidth: { size: 0, refill_time: 0 } });
  assert.equal(l.unlimited, true);
  for (let i = 0; i < 1000; i++) assert.equal(l.consume(1 << 30, 1), true);
  const o = new RateLimiter({ ops: { size: 1, refill_time: 1_000_000 } }, () => 0);
  assert.equal(o.unlimited, false);
  assert.equal(o.consume(1 << 30, 1), true); // bytes unlimited
  assert.equal(o.consume(0, 1), false);
});

test('tokenBucketIssue names the bad field', () => {
  assert.equal(tokenBucketIssue({ size: 10, refill_time: 100 }), undefined);
  assert.equal(tokenBucketIssue({ size: 0, refill_time: 0 }), undefined);
  assert.deepEqual(tokenBucketIssue({ size: 10, refill_time: 0 })?.field, 'refill_time');
  assert.deepEqual(tokenBucketIssue({ size: -1, refill_time: 10 })?.field, 'size');
  assert.deepEqual(tokenBucketIssue({ size: 1.5, refill_time: 10 })?.field, 'size');
  assert.deepEqual(tokenBucketIssue({ size: 2 ** 60, refill_time: 10 })?.field, 'size');
  assert.deepEqual(tokenBucketIssue({ size: 10, refill_time: 2 ** 33 })?.field, 'refill_time');
  assert.deepEqual(tokenBucketIssue({ size: 10, refill_time: 10, one_time_burst: -5 })?.field, 'one_time_burst');
  assert.deepEqual(tokenBucketIssue({ refill_time: 10 })?.field, 'size');
  assert.deepEqual(tokenBucketIssue({ size: 10 })?.field, 'refill_time');
  assert.deepEqual(tokenBucketIssue({ size: 10, refill_time: 10, rate: 1 })?.field, 'rate');
  assert.throws(() => new TokenBucket({ size: 10, refill_time: 0 }, 0), /refill_time/);
});

test('LimiterTimer: readable only once armed and expired; disarm forgets it', () => {
  const t = new LimiterTimer();
  const fds = libc.pollFds(1);
  const readable = (ms: number): boolean => {
    libc.pollFdSet(fds, 0, t.fd, libc.POLLIN);
    libc.poll(fds, ms);
    return (libc.pollRevents(fds, 0) & libc.POLLIN) !== 0;
  };
  try {
    assert.equal(readable(0), false);
    assert.equal(t.ack(), false);
    t.arm(1);
    assert.equal(t.armed, true);
    // poll blocks until the timer fires (no time is asserted: only that it fires).
    assert.equal(readable(-1), true);
    assert.equal(t.ack(), true);
    assert.equal(t.armed, false);
    assert.equal(readable(0), false);
    t.arm(60_000);
    t.disarm();
    assert.equal(t.armed, false);
    assert.equal(readable(0), false);
  } finally {
    t.close();
  }
});
