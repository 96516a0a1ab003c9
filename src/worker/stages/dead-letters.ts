/**
 * The keen-dead-letter stage, as pure handlers. A dead letter has two lives:
 *
 *   1. A new dead letter is *parked*: marked `parked: true` and failed with Keen's error as its
 *      failure, so it waits in the queue's Failed list, where Bull Board shows why it failed,
 *      its attempts and the original event.
 *   2. A parked dead letter that runs again was retried by an operator (Bull Board's Retry or
 *      Retry all, or `npm run dlq -- redrive`): it is *redriven* into keen-delivery under its
 *      original id, the event's `keen.uniqueness_token`, so Keen drops it if it already took it.
 *
 * planDeadLetter decides which; planRedrive, given what keen-delivery holds under that id, how.
 * No I/O, deterministic (the redrive's time is given), never throws. dead-letters-worker.ts
 * reads the queues and applies the plans.
 */
import { deadLetterReason, type DeadLetterJob, type KeenDeliveryJob } from '../../shared/jobs.js';
import { QUEUE_NAMES } from '../../shared/queues.js';

export type DeadLetterPlan =
  /** Failed on purpose, with `reason`; `stack` is what Bull Board shows under it. `markParked`: save `parked: true` first. */
  { kind: 'park'; markParked: boolean; reason: string; stack: string } | { kind: 'redrive' };

/**
 * `attemptsMade`: BullMQ's count of the job's failed attempts. A retried job has failed once
 * (its retry keeps the count). One marked parked by a worker that died before failing it has
 * not, and is parked again rather than redriven without an operator.
 */
export function planDeadLetter(data: DeadLetterJob, attemptsMade: number): DeadLetterPlan {
  if (data.parked && attemptsMade > 0) return { kind: 'redrive' };
  const reason = deadLetterReason(data);
  const answer = [data.lastError?.status && `HTTP ${data.lastError.status}`, data.lastError?.code].filter(Boolean).join(', ');
  const stack = [
    reason,
    `    dead-lettered after ${data.attemptsMade} attempt${data.attemptsMade === 1 ? '' : 's'}${answer ? ` (${answer})` : ''} at ${data.failedAt}`,
    `    Retry puts the event back into ${QUEUE_NAMES.keen} under its uniqueness token`,
  ].join('\n');
  return { kind: 'park', markParked: !data.parked, reason, stack };
}

/** The keen-delivery job id a dead letter is redriven under: its event's uniqueness token, if it has one. */
export function redriveJobId(data: DeadLetterJob): string | undefined {
  const token = data.event?.keen?.uniqueness_token;
  return typeof token === 'string' && token !== '' ? token : undefined;
}

export const NO_REDRIVE_ID = 'dead letter has no event.keen.uniqueness_token: cannot redrive it without changing its identity';

export type RedrivePlan =
  /** Refused: the operator is told why, and the dead letter stays parked. */
  | { kind: 'refuse'; message: string }
  /** keen-delivery already has the event waiting or delayed: nothing is added. */
  | { kind: 'already-queued'; jobId: string; state: string }
  /** Added to keen-delivery under `jobId`, alone in its job; `replace`: an old failed or completed copy is removed first. */
  | { kind: 'add'; jobId: string; replace: boolean; name: string; data: KeenDeliveryJob };

/**
 * `old`: the state of the keen-delivery job under the redrive id, undefined when there is none.
 * BullMQ ignores an add whose id exists, so a failed (or completed) old copy, left by an earlier
 * redrive of the same event, is replaced. A copy still waiting or delayed is left alone. An
 * active one may still fail and dead-letter itself, which BullMQ would ignore while this dead
 * letter exists: the dead letter stays parked, for the operator to retry later.
 */
export function planRedrive(data: DeadLetterJob, old: string | undefined, now: Date): RedrivePlan {
  const jobId = redriveJobId(data);
  if (jobId === undefined) return { kind: 'refuse', message: NO_REDRIVE_ID };
  if (old === 'active') {
    return {
      kind: 'refuse',
      message: `${QUEUE_NAMES.keen} job ${jobId} is being delivered right now; retry the dead letter once it has finished`,
    };
  }
  if (old !== undefined && old !== 'failed' && old !== 'completed' && old !== 'unknown')
    return { kind: 'already-queued', jobId, state: old };
  const redrives = { count: (data.redrives?.count ?? 0) + 1, lastAt: now.toISOString() };
  return {
    kind: 'add',
    jobId,
    replace: old === 'failed' || old === 'completed',
    name: data.collection,
    data: { events: [{ collection: data.collection, event: data.event, redrives }] },
  };
}
