import { describe, expect, it } from 'vitest';
import { JOB_OPTIONS } from '../../src/shared/queues.js';
import { backoffBaseMs, JITTERED_BACKOFF, jitteredBackoff, jitteredBackoffDelay, retryWindowMs } from '../../src/shared/backoff.js';
import { safeUrl } from '../../src/shared/redact.js';

const FIVE_MINUTES = 5 * 60_000;
const fixed = (value: number) => () => value;
/** The largest value Math.random can return. */
const ALMOST_ONE = 1 - Number.EPSILON / 2;

describe('jitteredBackoffDelay', () => {
  it('waits the base delay, give or take half, on the first retry', () => {
    expect(jitteredBackoffDelay(1, 1000, fixed(0))).toBe(500);
    expect(jitteredBackoffDelay(1, 1000, fixed(0.5))).toBe(750);
    expect(jitteredBackoffDelay(1, 1000, fixed(ALMOST_ONE))).toBe(1000);
  });

  it('doubles with every attempt', () => {
    const delays = [1, 2, 3, 4, 5, 6].map((attempt) => jitteredBackoffDelay(attempt, 500, fixed(0)));
    expect(delays).toEqual([250, 500, 1000, 2000, 4000, 8000]);
    const tops = [1, 2, 3, 4].map((attempt) => jitteredBackoffDelay(attempt, 500, fixed(ALMOST_ONE)));
    expect(tops).toEqual([500, 1000, 2000, 4000]);
  });

  it('treats attempt 0 like attempt 1', () => {
    expect(jitteredBackoffDelay(0, 1000, fixed(0))).toBe(500);
  });

  it('stays within [ceiling/2, ceiling] for any random value, as a whole number of milliseconds', () => {
    for (let attempt = 1; attempt <= 40; attempt += 1) {
      const ceiling = Math.min(FIVE_MINUTES, 500 * 2 ** (attempt - 1));
      for (const r of [0, 1e-9, 0.1, 0.25, 0.5, 0.75, 0.999, ALMOST_ONE]) {
        const delay = jitteredBackoffDelay(attempt, 500, fixed(r));
        expect(Number.isInteger(delay)).toBe(true);
        expect(delay).toBeGreaterThanOrEqual(Math.floor(ceiling / 2));
        expect(delay).toBeLessThanOrEqual(ceiling);
      }
    }
  });

  it('uses the random source: different draws give different delays (jitter spreads retries)', () => {
    expect(jitteredBackoffDelay(5, 1000, fixed(0.1))).not.toBe(jitteredBackoffDelay(5, 1000, fixed(0.9)));
    const draws = new Set(Array.from({ length: 50 }, () => jitteredBackoffDelay(8, 1000)));
    expect(draws.size).toBeGreaterThan(1);
    for (const delay of draws) {
      expect(delay).toBeGreaterThanOrEqual(64_000);
      expect(delay).toBeLessThanOrEqual(128_000);
    }
  });

  it('is capped at five minutes, however many attempts', () => {
    expect(jitteredBackoffDelay(30, 500, fixed(ALMOST_ONE))).toBe(FIVE_MINUTES);
    expect(jitteredBackoffDelay(30, 500, fixed(0))).toBe(FIVE_MINUTES / 2);
    for (const attempt of [10, 20, 100, 1075, 10_000, Number.MAX_SAFE_INTEGER]) {
      const delay = jitteredBackoffDelay(attempt, 1000, fixed(ALMOST_ONE));
      expect(delay, `attempt ${attempt}`).toBe(FIVE_MINUTES);
    }
    // A base above the cap is capped too.
    expect(jitteredBackoffDelay(1, 3_600_000, fixed(ALMOST_ONE))).toBe(FIVE_MINUTES);
  });

  it('reaches the cap at the attempt where doubling passes it', () => {
    // 500 ms * 2^9 = 256 s < 300 s; 500 ms * 2^10 = 512 s is capped.
    expect(jitteredBackoffDelay(10, 500, fixed(ALMOST_ONE))).toBe(256_000);
    expect(jitteredBackoffDelay(11, 500, fixed(ALMOST_ONE))).toBe(FIVE_MINUTES);
  });
});

describe('backoffBaseMs and jitteredBackoff', () => {
  it("take the base from the job's backoff, 1 s when it names none", () => {
    expect(backoffBaseMs({ backoff: { delay: 500 } })).toBe(500);
    expect(backoffBaseMs({ backoff: 250 })).toBe(250);
    expect(backoffBaseMs({})).toBe(1000);
    expect(backoffBaseMs({ backoff: {} })).toBe(1000);
  });

  it('is the same formula for BullMQ retries, and no wait for a backoff type that is not ours', () => {
    const job = { opts: { backoff: { delay: 500 } } };
    for (let attempt = 1; attempt < 12; attempt++) {
      const delay = jitteredBackoff(attempt, JITTERED_BACKOFF, undefined, job);
      const ceiling = Math.min(FIVE_MINUTES, 500 * 2 ** (attempt - 1));
      expect(delay).toBeGreaterThanOrEqual(ceiling / 2);
      expect(delay).toBeLessThanOrEqual(ceiling);
    }
    expect(jitteredBackoff(3, 'exponential', undefined, job)).toBe(0);
  });
});

describe('retryWindowMs', () => {
  it('adds the delays between the attempts, each at the low and the high end of its jitter', () => {
    expect(retryWindowMs({ attempts: 1, backoff: { type: 'x', delay: 1000 } })).toEqual({ minMs: 0, maxMs: 0 });
    // Retries wait 1, 2 and 4 s (at most), half that at least.
    expect(retryWindowMs({ attempts: 4, backoff: { type: 'x', delay: 1000 } })).toEqual({ minMs: 3500, maxMs: 7000 });
    // Keen's default: 1 + 2 + ... + 256 s, then twice the five-minute cap.
    expect(retryWindowMs(JOB_OPTIONS.keen(12))).toEqual({ minMs: 555_500, maxMs: 1_111_000 });
  });
});

describe('safeUrl', () => {
  it('masks the password in the authority and as ?password=, and keeps the rest', () => {
    expect(safeUrl('postgresql://lampi:s3cret@db:5432/lampi')).toBe('postgresql://lampi:***@db:5432/lampi');
    expect(safeUrl('postgresql://lampi@db:5432/lampi?password=s3cret&sslmode=require')).toBe(
      'postgresql://lampi@db:5432/lampi?password=***&sslmode=require',
    );
    expect(safeUrl('redis://127.0.0.1:6379')).toBe('redis://127.0.0.1:6379');
    expect(safeUrl('not a url s3cret')).toBe('(unparseable URL)');
  });
});
