/**
 * The keen-delivery stage, as a pure handler: given a job's events and what Keen answered for
 * each (the batcher's settled submits), which are done, which are dead-lettered at once, alone,
 * with their own error, and what the job does with the rest. Per event:
 *
 * - accepted by Keen: done;
 * - refused for good (a per-event error, or a 4xx such as 400/404/413): dead-lettered at once;
 * - 429: the job holds for Keen's `Retry-After` without spending an attempt;
 * - 401, 402, 403 (the key or the account is refused, see pause.ts): the same, for the probe
 *   interval, again and again until Keen accepts: such a fault is the deployment's, not the
 *   events', and must not spend them;
 * - anything else (5xx, timeout, reset, unreadable answer): retried, holding only the events
 *   still undelivered; dead-lettered with the last error when the job's attempts run out.
 *
 * No I/O, deterministic (the dead letters' time is given), never throws.
 * keen-delivery-worker.ts submits the events and applies the plan.
 */
import type { DeadLetterJob, DeliveryError, KeenDeliveryJob, KeenEventRecord } from '../../shared/jobs.js';
import { KeenEventRejected, KeenRequestError } from '../../shared/keen/errors.js';
import { DEFAULT_RATE_LIMIT_MS } from '../keen/client.js';

export interface DeliveryInput {
  jobId: string;
  events: KeenEventRecord[];
  /** Keen's answer for each event, in the same order: `rejected` with the batcher's error. */
  outcomes: Array<PromiseSettledResult<unknown>>;
  /** This attempt's number (1 for the first) and how many the job has. */
  attempt: number;
  attempts: number;
  now: Date;
}

export type DeliveryNext =
  | { kind: 'done' }
  /** Keen asked us to wait (429) or refuses the deployment: the job waits without spending an attempt. */
  | { kind: 'hold'; waitMs: number; error: KeenRequestError }
  /** The job fails this attempt with `error` (the first failure), and is retried. */
  | { kind: 'retry'; error: unknown; lastError: DeliveryError }
  /** The job's attempts ran out: every undelivered event is dead-lettered with the last error, and the job fails for good. */
  | { kind: 'give-up'; lastError: DeliveryError; deadLetters: DeadLetterJob[] };

export interface DeliveryPlan {
  /** Events Keen refused for good, each a dead letter of its own, with its own error. */
  deadLetters: DeadLetterJob[];
  /** Events still undelivered, in the job's order. */
  undelivered: KeenEventRecord[];
  /** The job's data for its next attempt when it holds fewer events than now (a retry sends only those). */
  keep: KeenDeliveryJob | undefined;
  next: DeliveryNext;
}

/** Retrying cannot help: Keen refused this event, or the whole request for good. */
export function isPermanent(err: unknown): boolean {
  return err instanceof KeenEventRejected || (err instanceof KeenRequestError && !err.retryable);
}

export function toDeliveryError(err: unknown): DeliveryError {
  if (err instanceof KeenEventRejected) return { message: err.message, code: err.errorName };
  if (err instanceof KeenRequestError) {
    return {
      message: err.message,
      ...(err.status !== undefined ? { status: err.status } : {}),
      ...(err.code !== undefined ? { code: err.code } : {}),
    };
  }
  return { message: err instanceof Error ? err.message : String(err) };
}

export function planDelivery(input: DeliveryInput): DeliveryPlan {
  const deadLetter = (record: KeenEventRecord, lastError: DeliveryError): DeadLetterJob => ({
    ...record,
    sourceJobId: input.jobId,
    attemptsMade: input.attempt,
    lastError,
    failedAt: input.now.toISOString(),
  });
  const deadLetters: DeadLetterJob[] = [];
  const undelivered: KeenEventRecord[] = [];
  let retryError: unknown;
  let holdError: KeenRequestError | undefined;
  for (const [i, record] of input.events.entries()) {
    const outcome = input.outcomes[i];
    if (outcome?.status === 'fulfilled') continue;
    // No answer at all for an event is a bug of the caller's: retried, never taken for success.
    const err: unknown = outcome ? outcome.reason : new Error('no outcome for this event');
    if (isPermanent(err)) {
      deadLetters.push(deadLetter(record, toDeliveryError(err)));
      continue;
    }
    undelivered.push(record);
    retryError ??= err;
    // A refused deployment outweighs a 429: its pause outlasts any Retry-After.
    if (err instanceof KeenRequestError && (err.deploymentFault || err.status === 429) && !holdError?.deploymentFault) holdError = err;
  }
  const keep = undelivered.length > 0 && undelivered.length < input.events.length ? { events: undelivered } : undefined;
  // A job that gives up fails for good: its data is not cut.
  const plan = (next: DeliveryNext): DeliveryPlan => ({ deadLetters, undelivered, keep: next.kind === 'give-up' ? undefined : keep, next });
  if (undelivered.length === 0) return plan({ kind: 'done' });
  if (holdError) return plan({ kind: 'hold', waitMs: holdError.retryAfterMs ?? DEFAULT_RATE_LIMIT_MS, error: holdError });
  const lastError = toDeliveryError(retryError);
  if (input.attempt >= input.attempts) {
    return plan({ kind: 'give-up', lastError, deadLetters: undelivered.map((record) => deadLetter(record, lastError)) });
  }
  return plan({ kind: 'retry', error: retryError, lastError });
}
