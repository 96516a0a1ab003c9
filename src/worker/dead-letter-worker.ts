/**
 * The dead-letter queue (keen-dead-letter) holds Keen events that failed for good. This worker
 * gives each dead letter two lives:
 *
 *   1. A new dead letter is *parked*: marked `parked: true` and failed with the Keen error as
 *      its failure reason, so it waits in the queue's Failed list, where Bull Board shows why
 *      it failed, its attempts and the original event.
 *   2. A parked dead letter that runs again was retried by an operator (Bull Board's Retry or
 *      Retry all, or `npm run dlq -- redrive`): it is *redriven* into keen-delivery under its
 *      original id, the event's `keen.uniqueness_token`, so Keen drops it if it already took it.
 */
import { UnrecoverableError, type ConnectionOptions, type Job, type Queue, type Worker } from 'bullmq';
import { deadLetterReason, deviceIdOf, type DeadLetterJob, type KeenDeliveryJob } from '../shared/jobs.js';
import type { Logger } from '../shared/logger.js';
import { QUEUE_NAMES, queueLabel, type PipelineQueues } from '../shared/queues.js';
import { runStage } from './stage-runner.js';

export interface DeadLetterWorkerOptions {
  connection: ConnectionOptions;
  /** `deadLetter` is this worker's queue; `keen` takes what it redrives. */
  queues: Pick<PipelineQueues, 'keen' | 'deadLetter'>;
  logger: Logger;
  concurrency?: number;
}

export type RedriveOutcome =
  /** The event was added to keen-delivery (`replaced`: an old failed or completed copy was removed first). */
  | { jobId: string; outcome: 'redriven'; replaced: boolean }
  /** keen-delivery already has the event waiting or delayed: nothing was added. */
  | { jobId: string; outcome: 'already-queued'; state: string };

/** The failure a parked dead letter shows (Bull Board prints its stack): Keen's error and what to do. */
function parkingError(data: DeadLetterJob): UnrecoverableError {
  const reason = deadLetterReason(data);
  const error = new UnrecoverableError(reason);
  const answer = [data.lastError?.status && `HTTP ${data.lastError.status}`, data.lastError?.code].filter(Boolean).join(', ');
  error.stack = `${reason}\n    dead-lettered after ${data.attemptsMade} attempt${data.attemptsMade === 1 ? '' : 's'}${answer ? ` (${answer})` : ''} at ${data.failedAt}\n    Retry puts the event back into ${queueLabel(QUEUE_NAMES.keen)} under its uniqueness token`;
  return error;
}

/**
 * Puts a dead letter's event back into keen-delivery, alone in a job whose id is its uniqueness
 * token. An earlier redrive of the same event may have left a job under that id, and BullMQ
 * ignores an add whose id exists, so a failed (or completed) old copy is removed first. A copy that is still waiting or delayed is left alone; an active one makes the redrive
 * fail (try again later). Safe to repeat: the id, and so Keen's deduplication, never changes.
 */
export async function redriveDeadLetter(keen: Queue<KeenDeliveryJob>, data: DeadLetterJob): Promise<RedriveOutcome> {
  const jobId = data.event?.keen?.uniqueness_token;
  if (typeof jobId !== 'string' || jobId === '') {
    throw new Error('dead letter has no event.keen.uniqueness_token: cannot redrive it without changing its identity');
  }
  let replaced = false;
  const old = await keen.getJob(jobId);
  if (old) {
    const state = await old.getState();
    // An active copy may still fail and dead-letter itself, which BullMQ would ignore while
    // this dead letter exists: leave the dead letter parked and let the operator retry later.
    if (state === 'active')
      throw new Error(
        `${queueLabel(QUEUE_NAMES.keen)} job ${jobId} is being delivered right now; retry the dead letter once it has finished`,
      );
    if (state !== 'failed' && state !== 'completed' && state !== 'unknown') return { jobId, outcome: 'already-queued', state };
    if (state !== 'unknown') {
      await old.remove();
      replaced = true;
    }
  }
  const redrives = { count: (data.redrives?.count ?? 0) + 1, lastAt: new Date().toISOString() };
  await keen.add(data.collection, { events: [{ collection: data.collection, event: data.event, redrives }] }, { jobId });
  return { jobId, outcome: 'redriven', replaced };
}

const OLD_DEAD_LETTER_WAIT_MS = 10_000;

/**
 * Adds a dead letter under its event's uniqueness token. BullMQ ignores an add whose id exists,
 * which is right for a retried delivery step (its dead letter is already there) but would lose
 * a redriven event that Keen refused again within moments: its old dead letter may still be
 * active, finishing the redrive. So a copy that is still active is waited for, then the add is
 * made again; one that is parked or waiting is the same event already dead-lettered.
 */
export async function addDeadLetter(deadLetter: Queue<DeadLetterJob>, letter: DeadLetterJob): Promise<void> {
  const jobId = letter.event.keen.uniqueness_token;
  const deadline = Date.now() + OLD_DEAD_LETTER_WAIT_MS;
  for (;;) {
    await deadLetter.add(letter.collection, letter, { jobId });
    const stored = await deadLetter.getJob(jobId);
    if (stored?.data.failedAt === letter.failedAt) return;
    // Missing: the old copy finished its redrive between the add and the read; add again.
    if (stored && (await stored.getState()) !== 'active') return;
    if (Date.now() > deadline)
      throw new Error(`dead letter ${jobId} is still being redriven after ${OLD_DEAD_LETTER_WAIT_MS} ms; the delivery will be retried`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

export function createDeadLetterWorker(options: DeadLetterWorkerOptions): Worker<DeadLetterJob> {
  const { queues, logger } = options;
  const process = async (job: Job<DeadLetterJob>) => {
    const data = job.data;
    const log = logger.child({ job_id: job.id, device_id: deviceIdOf(data), collection: data.collection });
    // A retried job has failed once (attemptsMade > 0; BullMQ's retry keeps the count). One
    // marked parked by a worker that died before failing it has not, and is parked again
    // rather than redriven without an operator.
    if (!data.parked || job.attemptsMade === 0) {
      if (!data.parked) await job.updateData({ ...data, parked: true });
      log.warn(
        {
          attempts: data.attemptsMade,
          failed_at: data.failedAt,
          status: data.lastError?.status,
          code: data.lastError?.code,
          err: deadLetterReason(data),
        },
        'keen event dead-lettered: parked for an operator',
      );
      throw parkingError(data);
    }
    const result = await redriveDeadLetter(queues.keen, data);
    log.info(
      { outcome: result.outcome, replaced: result.outcome === 'redriven' ? result.replaced : undefined },
      `dead letter redriven to ${queueLabel(QUEUE_NAMES.keen)}`,
    );
    return result;
  };
  const worker = runStage({
    queue: queues.deadLetter,
    connection: options.connection,
    process,
    concurrency: options.concurrency ?? 10,
    subject: (data) => ({ device_id: deviceIdOf(data), collection: data.collection }),
    // Parking fails a job on purpose and is logged above; a failed redrive is logged below.
    failureLog: 'nobody',
    logger,
  });
  worker.on('failed', (job, err) => {
    // Parking is the normal path and logged above; anything else is a redrive that failed.
    if (err instanceof UnrecoverableError || !job) return;
    logger.error(
      {
        job_id: job.id,
        queue: queueLabel(QUEUE_NAMES.deadLetter),
        device_id: deviceIdOf(job.data),
        collection: job.data.collection,
        err: err.message,
      },
      'dead letter redrive failed; it stays in the Failed list, retry it again',
    );
  });
  return worker;
}
