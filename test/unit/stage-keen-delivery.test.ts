/**
 * The keen-delivery stage's pure handler (src/worker/stages/keen-delivery.ts): given Keen's
 * answer for each event of a job (the errors the batcher and client really raise), which are
 * done, which are dead-lettered alone with their own error, and whether the job is done, holds,
 * retries or gives up. No Redis, no Keen.
 */
import { describe, expect, it } from 'vitest';
import { buildKeenEvent } from '../../src/shared/events.js';
import type { KeenEventRecord } from '../../src/shared/jobs.js';
import { KeenEventRejected, KeenRequestError } from '../../src/shared/keen/errors.js';
import { DEFAULT_RATE_LIMIT_MS } from '../../src/worker/keen/client.js';
import { planDelivery, toDeliveryError, type DeliveryInput } from '../../src/worker/stages/keen-delivery.js';

const NOW = new Date('2026-12-03T12:34:56.789Z');
const record = (n: number): KeenEventRecord => ({
  collection: 'devicestate',
  event: buildKeenEvent({ device_id: 'b827eb000001', state: { n } }, '2026-12-03T12:00:00.000Z', `m${n}-devicestate`),
});
const ok: PromiseSettledResult<unknown> = { status: 'fulfilled', value: undefined };
const failed = (reason: unknown): PromiseSettledResult<unknown> => ({ status: 'rejected', reason });
const input = (outcomes: Array<PromiseSettledResult<unknown>>, extra: Partial<DeliveryInput> = {}): DeliveryInput => ({
  jobId: 'job-7',
  events: outcomes.map((_, i) => record(i)),
  outcomes,
  attempt: 1,
  attempts: 8,
  now: NOW,
  ...extra,
});
const tokens = (records: KeenEventRecord[]) => records.map((r) => r.event.keen.uniqueness_token);

const status = (code: number, extra: { retryable?: boolean; retryAfterMs?: number; code?: string } = {}) =>
  new KeenRequestError(`Keen answered HTTP ${code}`, { status: code, retryable: extra.retryable ?? code >= 500, ...extra });

describe('keen-delivery stage', () => {
  it('every event accepted: the job is done, nothing kept, nothing dead-lettered', () => {
    expect(planDelivery(input([ok, ok, ok]))).toEqual({ deadLetters: [], undelivered: [], keep: undefined, next: { kind: 'done' } });
  });

  it.each([
    ['InvalidCollectionNameError', 'collection name is invalid'],
    ['InvalidPropertyNameError', 'property name has a dot'],
    ['InvalidPropertyValueError', 'keen must be an object'],
    ['EventTooLargeError', 'event is 900001 bytes serialized; Keen accepts at most 900000'],
    ['InvalidEventError', 'event cannot be serialized as JSON'],
  ])('an event Keen refused with %s is dead-lettered alone, with its error, and the rest of its job is done', (name, description) => {
    const refused = new KeenEventRejected(name, description);
    const plan = planDelivery(input([ok, failed(refused), ok], { attempt: 3 }));
    expect(plan.deadLetters).toEqual([
      {
        ...record(1),
        sourceJobId: 'job-7',
        attemptsMade: 3,
        lastError: { message: `Keen rejected the event: ${name}: ${description}`, code: name },
        failedAt: NOW.toISOString(),
      },
    ]);
    expect(plan.next).toEqual({ kind: 'done' });
    expect(plan.keep).toBeUndefined();
  });

  it.each([400, 404, 413])('a request refused for good (HTTP %i) dead-letters each of its events at once, with the status', (code) => {
    const err = status(code, { retryable: false, code: 'BadRequest' });
    const plan = planDelivery(input([failed(err), failed(err)]));
    expect(plan.deadLetters.map((letter) => [letter.event.keen.uniqueness_token, letter.lastError])).toEqual([
      ['m0-devicestate', { message: `Keen answered HTTP ${code}`, status: code, code: 'BadRequest' }],
      ['m1-devicestate', { message: `Keen answered HTTP ${code}`, status: code, code: 'BadRequest' }],
    ]);
    expect(plan.next).toEqual({ kind: 'done' });
  });

  it('a 5xx, a timeout or a reset: the job retries with only the undelivered events, failing with the first error', () => {
    const unavailable = status(503);
    const timeout = new KeenRequestError('Keen did not answer within 10000 ms', { code: 'ETIMEDOUT', retryable: true });
    const reset = new Error('socket hang up');
    const plan = planDelivery(input([ok, failed(unavailable), failed(timeout), ok, failed(reset)]));
    expect(tokens(plan.undelivered)).toEqual(['m1-devicestate', 'm2-devicestate', 'm4-devicestate']);
    expect(plan.keep).toEqual({ events: plan.undelivered });
    expect(plan.deadLetters).toEqual([]);
    expect(plan.next).toEqual({ kind: 'retry', error: unavailable, lastError: { message: 'Keen answered HTTP 503', status: 503 } });
    if (plan.next.kind === 'retry') expect(plan.next.error).toBe(unavailable);
  });

  it('nothing delivered: the retry keeps the job as it is', () => {
    const plan = planDelivery(input([failed(status(500)), failed(status(500))]));
    expect(plan.keep).toBeUndefined();
    expect(plan.next.kind).toBe('retry');
  });

  it("a 429 holds the job for Keen's Retry-After (or the default) without spending an attempt, even on its last attempt", () => {
    const limited = status(429, { retryable: true, retryAfterMs: 1234 });
    const plan = planDelivery(input([ok, failed(limited)], { attempt: 8, attempts: 8 }));
    expect(plan.next).toEqual({ kind: 'hold', waitMs: 1234, error: limited });
    expect(plan.keep).toEqual({ events: [record(1)] });
    expect(planDelivery(input([failed(status(429, { retryable: true }))])).next).toMatchObject({
      kind: 'hold',
      waitMs: DEFAULT_RATE_LIMIT_MS,
    });
  });

  it.each([401, 402, 403])('a refused key or account (HTTP %i) holds the job too, and outweighs a 429 in either order', (code) => {
    const refused = new KeenRequestError(`Keen answered HTTP ${code}`, { status: code, retryable: true, retryAfterMs: 30_000 });
    expect(refused.deploymentFault).toBeDefined();
    const limited = status(429, { retryable: true, retryAfterMs: 1000 });
    for (const outcomes of [
      [failed(refused), failed(limited)],
      [failed(limited), failed(refused)],
    ]) {
      expect(planDelivery(input(outcomes)).next).toEqual({ kind: 'hold', waitMs: 30_000, error: refused });
    }
    // Of two 429s the later one counts; a 5xx beside them does not stop the hold.
    const later = status(429, { retryable: true, retryAfterMs: 9000 });
    expect(planDelivery(input([failed(limited), failed(later), failed(status(503))])).next).toEqual({
      kind: 'hold',
      waitMs: 9000,
      error: later,
    });
  });

  it('the last attempt fails: every undelivered event is dead-lettered with the last error; those refused for good keep their own', () => {
    const refused = new KeenEventRejected('InvalidPropertyNameError', 'bad name');
    const plan = planDelivery(
      input([ok, failed(refused), failed(status(502)), failed(new Error('ECONNRESET'))], { attempt: 8, attempts: 8 }),
    );
    const lastError = { message: 'Keen answered HTTP 502', status: 502 };
    expect(plan.deadLetters.map((letter) => [letter.event.keen.uniqueness_token, letter.lastError.code])).toEqual([
      ['m1-devicestate', 'InvalidPropertyNameError'],
    ]);
    expect(plan.next).toEqual({
      kind: 'give-up',
      lastError,
      deadLetters: [2, 3].map((n) => ({ ...record(n), sourceJobId: 'job-7', attemptsMade: 8, lastError, failedAt: NOW.toISOString() })),
    });
    // The job fails for good: its data is not cut.
    expect(plan.keep).toBeUndefined();
  });

  it('keeps an event redriven from the dead-letter queue as it is, its redrive history included', () => {
    const redriven: KeenEventRecord = { ...record(0), redrives: { count: 2, lastAt: '2026-12-02T00:00:00.000Z' } };
    const plan = planDelivery({ ...input([failed(new KeenEventRejected('InvalidPropertyValueError', ''))]), events: [redriven] });
    expect(plan.deadLetters[0]).toMatchObject({
      redrives: { count: 2 },
      lastError: { message: 'Keen rejected the event: InvalidPropertyValueError' },
    });
  });

  it('an error that is no Error (a raw body string) is retried, its text the last error', () => {
    const plan = planDelivery(input([failed('<html>Bad Gateway</html>')], { attempt: 2, attempts: 2 }));
    expect(plan.next).toMatchObject({ kind: 'give-up', lastError: { message: '<html>Bad Gateway</html>' } });
    expect(toDeliveryError(undefined)).toEqual({ message: 'undefined' });
  });

  it('is deterministic and leaves its input alone', () => {
    const outcomes = [ok, failed(status(503)), failed(new KeenEventRejected('InvalidPropertyNameError', 'x'))];
    const events = outcomes.map((_, i) => Object.freeze(record(i)));
    const run = () => planDelivery(input(outcomes, { events: Object.freeze(events) as KeenEventRecord[] }));
    expect(run()).toEqual(run());
    expect(events.map((r) => r.event.keen.uniqueness_token)).toEqual(['m0-devicestate', 'm1-devicestate', 'm2-devicestate']);
  });
});
