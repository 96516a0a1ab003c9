/**
 * `npm run dlq -- redrive`: retries parked dead letters, then follows each event to its outcome
 * and says it. A redrive is done by the dead-letter worker (in every `npm run worker`), which
 * puts the event into keen-delivery under its uniqueness token; the delivery then either
 * reaches Keen, or is refused again and comes back as a new dead letter under the same id.
 * Waiting is bounded: what has no outcome yet is reported as still queued, with where it is.
 */
import type { Job } from 'bullmq';
import { deadLetterReason, type DeadLetterJob } from '../shared/jobs.js';
import { QUEUE_NAMES, type PipelineQueues } from '../shared/queues.js';
import { err, jobsIn, oneLine, out } from './listing.js';

export type RedriveOutcome =
  | { outcome: 'delivered' }
  /** Keen refused the event again (or its attempts ran out): it is a dead letter again. */
  | { outcome: 'refused-again'; reason: string }
  /** The dead-letter worker could not put it into keen-delivery: it stays parked. */
  | { outcome: 'redrive-failed'; reason: string }
  /** No outcome yet; `where` says what it is waiting for. */
  | { outcome: 'still-queued'; where: string };

export interface RedriveOptions {
  all: boolean;
  ids: string[];
  waitMs: number;
}

const POLL_MS = 200;
const CHUNK = 100;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Where the redrive of `before` (the parked dead letter as it was before its retry) stands now.
 * A new dead letter under the same id is told from the old one by its creation time. The
 * delivery worker adds a dead letter before it finishes the job, so a completed delivery job
 * with no new dead letter after it is a delivered event.
 */
export async function outcomeOf(queues: PipelineQueues, before: Job<DeadLetterJob>): Promise<RedriveOutcome> {
  const id = before.id!;
  const refusedAgain = async (): Promise<RedriveOutcome | undefined> => {
    const now = await queues.deadLetter.getJob(id);
    if (now && now.timestamp !== before.timestamp) return { outcome: 'refused-again', reason: deadLetterReason(now.data) };
    return undefined;
  };
  const letter = await queues.deadLetter.getJob(id);
  if (letter) {
    if (letter.timestamp !== before.timestamp) return { outcome: 'refused-again', reason: deadLetterReason(letter.data) };
    const state = await letter.getState();
    if (state === 'failed' && letter.attemptsMade > before.attemptsMade) return { outcome: 'redrive-failed', reason: letter.failedReason };
    return { outcome: 'still-queued', where: `in ${QUEUE_NAMES.deadLetter} (${state}), waiting for the dead-letter worker` };
  }
  const token = before.data.event?.keen?.uniqueness_token ?? id;
  const delivery = await queues.keen.getJob(token);
  if (!delivery)
    return (
      (await refusedAgain()) ?? {
        outcome: 'still-queued',
        where: `neither in ${QUEUE_NAMES.deadLetter} nor in ${QUEUE_NAMES.keen} (removed by hand?)`,
      }
    );
  const state = await delivery.getState();
  if (state === 'completed') return (await refusedAgain()) ?? { outcome: 'delivered' };
  if (state === 'failed')
    return (
      (await refusedAgain()) ?? {
        outcome: 'still-queued',
        where: `${QUEUE_NAMES.keen} job ${token} failed; its dead letter is on its way`,
      }
    );
  const lastError = delivery.failedReason ? `, last error: ${oneLine(delivery.failedReason, 120)}` : '';
  return {
    outcome: 'still-queued',
    where: `in ${QUEUE_NAMES.keen} job ${token} (${state}, ${delivery.attemptsMade} of ${delivery.opts.attempts ?? 1} attempts made${lastError})`,
  };
}

function describe(result: RedriveOutcome): string {
  switch (result.outcome) {
    case 'delivered':
      return 'delivered to Keen';
    case 'refused-again':
      return `refused again: ${oneLine(result.reason)}`;
    case 'redrive-failed':
      return `redrive failed: ${oneLine(result.reason)}`;
    case 'still-queued':
      return `still queued: ${result.where}`;
  }
}

/**
 * Exit code: 1 when any event was refused again or could not be redriven, else 2 when a named
 * id is not a parked dead letter, else 3 when an outcome is not known yet, else 0.
 */
export async function redrive(queues: PipelineQueues, { all, ids, waitMs }: RedriveOptions): Promise<number> {
  const targets: Job<DeadLetterJob>[] = [];
  let missing = 0;
  if (all) {
    for await (const job of jobsIn(queues.deadLetter, ['failed'])) targets.push(job);
    if (targets.length === 0) {
      out('no parked dead letters to redrive');
      return 0;
    }
  } else {
    for (const id of ids) {
      const job = await queues.deadLetter.getJob(id);
      const state = job ? await job.getState() : 'missing';
      if (job && state === 'failed') targets.push(job);
      else {
        missing += 1;
        err(
          job
            ? `${id}: not a parked dead letter (it is ${state}); only parked ones can be redriven`
            : `${id}: not found in ${QUEUE_NAMES.deadLetter}`,
        );
      }
    }
  }

  const results = new Map<string, RedriveOutcome>();
  const pending: Job<DeadLetterJob>[] = [];
  for (const job of targets) {
    try {
      // Keeps attemptsMade: the dead-letter worker tells an operator's retry from a first run by it.
      await job.retry('failed');
      pending.push(job);
    } catch (e) {
      results.set(job.id!, { outcome: 'redrive-failed', reason: `could not retry: ${(e as Error).message}` });
    }
  }

  const workers = pending.length > 0 ? await queues.deadLetter.getWorkersCount() : 0;
  const deadline = Date.now() + waitMs;
  while (pending.length > 0) {
    const finished = new Set<Job<DeadLetterJob>>();
    const last = workers === 0 || Date.now() >= deadline;
    for (let i = 0; i < pending.length; i += CHUNK) {
      const chunk = pending.slice(i, i + CHUNK);
      const outcomes = await Promise.all(chunk.map((job) => outcomeOf(queues, job)));
      for (const [n, result] of outcomes.entries()) {
        if (result.outcome === 'still-queued' && !last) continue;
        results.set(chunk[n]!.id!, result);
        finished.add(chunk[n]!);
      }
    }
    pending.splice(0, pending.length, ...pending.filter((job) => !finished.has(job)));
    if (pending.length > 0) await sleep(POLL_MS);
  }

  const counts = { delivered: 0, 'refused-again': 0, 'redrive-failed': 0, 'still-queued': 0 };
  for (const job of targets) {
    const result = results.get(job.id!)!;
    counts[result.outcome] += 1;
    out(`${job.id}: ${describe(result)}`);
  }
  if (counts['still-queued'] > 0) {
    out(
      workers === 0
        ? `no worker is consuming ${QUEUE_NAMES.deadLetter} now: the redrive happens when one runs (npm run worker)`
        : `still queued: no outcome within ${waitMs} ms (--wait). Nothing is lost: each such event either ` +
            `reaches Keen or comes back to ${QUEUE_NAMES.deadLetter} (see npm run dlq -- list)`,
    );
  }
  out(
    `redrive: ${counts.delivered} delivered, ${counts['refused-again']} refused again, ` +
      `${counts['redrive-failed']} redrive failed, ${counts['still-queued']} still queued, ${missing} not found`,
  );
  if (counts['refused-again'] + counts['redrive-failed'] > 0) return 1;
  if (missing > 0) return 2;
  return counts['still-queued'] > 0 ? 3 : 0;
}
