/**
 * The keen-dead-letter stage's worker: the I/O around dead-letters.ts. It parks a new dead
 * letter (marked, then failed with Keen's error, for an operator) and redrives a parked one
 * that an operator retried into keen-delivery under its uniqueness token. Also how the Keen
 * delivery stage adds a dead letter.
 */
import { UnrecoverableError, type ConnectionOptions, type Job, type Queue, type Worker } from 'bullmq';
import { deadLetterReason, deviceIdOf, type DeadLetterJob, type KeenDeliveryJob } from '../../shared/jobs.js';
import type { Logger } from '../../shared/logger.js';
import { QUEUE_NAMES, type PipelineQueues } from '../../shared/queues.js';
import { runStage } from '../stage-runner.js';
import { planDeadLetter, planRedrive, redriveJobId, NO_REDRIVE_ID } from './dead-letters.js';

export interface DeadLettersWorkerOptions {
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

/**
 * Puts a dead letter's event back into keen-delivery, alone in a job whose id is its uniqueness
 * token (planRedrive says how, given what keen-delivery holds under that id). Safe to repeat:
 * the id, and so Keen's deduplication, never changes.
 */
export async function redriveDeadLetter(keen: Queue<KeenDeliveryJob>, data: DeadLetterJob): Promise<RedriveOutcome> {
  const jobId = redriveJobId(data);
  if (jobId === undefined) throw new Error(NO_REDRIVE_ID);
  const old = await keen.getJob(jobId);
  const plan = planRedrive(data, old ? await old.getState() : undefined, new Date());
  if (plan.kind === 'refuse') throw new Error(plan.message);
  if (plan.kind === 'already-queued') return { jobId, outcome: 'already-queued', state: plan.state };
  if (plan.replace) await old!.remove();
  await keen.add(plan.name, plan.data, { jobId });
  return { jobId, outcome: 'redriven', replaced: plan.replace };
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

export function createDeadLettersWorker(options: DeadLettersWorkerOptions): Worker<DeadLetterJob> {
  const { queues, logger } = options;
  const process = async (job: Job<DeadLetterJob>) => {
    const data = job.data;
    const log = logger.child({ job_id: job.id, device_id: deviceIdOf(data), collection: data.collection });
    const plan = planDeadLetter(data, job.attemptsMade);
    if (plan.kind === 'park') {
      if (plan.markParked) await job.updateData({ ...data, parked: true });
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
      const error = new UnrecoverableError(plan.reason);
      // Bull Board prints the stack: Keen's error and what to do.
      error.stack = plan.stack;
      throw error;
    }
    const result = await redriveDeadLetter(queues.keen, data);
    log.info(
      { outcome: result.outcome, replaced: result.outcome === 'redriven' ? result.replaced : undefined },
      `dead letter redriven to ${QUEUE_NAMES.keen}`,
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
        queue: QUEUE_NAMES.deadLetter,
        device_id: deviceIdOf(job.data),
        collection: job.data.collection,
        err,
      },
      'dead letter redrive failed; it stays in the Failed list, retry it again',
    );
  });
  return worker;
}
