/**
 * The keen-delivery stage's worker: the I/O around planDelivery (keen-delivery.ts). Each job's
 * events are sent in bulk through the batcher, together with those of other jobs; the plan
 * says what Keen's answers mean, and this applies it: dead letters added, the job's data cut to
 * what is still undelivered, the queue paused for a 429 or a refused deployment, the attempt
 * failed for a retry. Every event carries its `keen.uniqueness_token`, so one that Keen
 * recorded but whose answer was lost is dropped by Keen when it is sent again.
 */
import { UnrecoverableError, Worker, type ConnectionOptions, type Job } from 'bullmq';
import { deviceIdOf, parseKeenDeliveryJob, type DeadLetterJob, type KeenDeliveryJob } from '../../shared/jobs.js';
import type { Logger } from '../../shared/logger.js';
import type { Metrics } from '../../shared/metrics.js';
import { QUEUE_NAMES, type PipelineQueues } from '../../shared/queues.js';
import { KeenRequestError } from '../../shared/keen/errors.js';
import type { KeenBatcher } from '../keen/batcher.js';
import { runStage } from '../stage-runner.js';
import { addDeadLetter } from './dead-letters-worker.js';
import { planDelivery } from './keen-delivery.js';

export interface KeenDeliveryWorkerOptions {
  connection: ConnectionOptions;
  prefix: string;
  /** `deadLetter` receives what cannot be delivered; `keen` must be this worker's queue (same prefix). */
  queues: PipelineQueues;
  batcher: Pick<KeenBatcher, 'submitAll'>;
  concurrency: number;
  logger: Logger;
  metrics?: Metrics;
  /**
   * How long a job's lock lasts without renewal (BullMQ renews it every half). It must outlast
   * a batch's linger plus Keen's timeout, or a slow request would look like a crashed worker.
   */
  lockDurationMs?: number;
}

export function createKeenDeliveryWorker(options: KeenDeliveryWorkerOptions): Worker<KeenDeliveryJob> {
  const { queues, batcher, logger, metrics } = options;
  if (queues.keen.label !== QUEUE_NAMES.keen || (queues.keen.opts.prefix ?? 'bull') !== options.prefix) {
    throw new TypeError(`createKeenDeliveryWorker: queues.keen must be the ${QUEUE_NAMES.keen} queue with prefix ${options.prefix}`);
  }
  /** A failed request fails every job of its batch with the same error: it is logged once. */
  const reported = new WeakSet<object>();
  /** One warning per rate-limit window, however many jobs it sends back to wait. */
  let rateLimitReportedUntil = 0;

  const deadLetter = async (letter: DeadLetterJob) => {
    // Under the event's token: a retry of this step cannot add a second dead letter.
    await addDeadLetter(queues.deadLetter, letter);
    metrics?.deadLettered.inc({ collection: letter.collection });
  };

  /** A retry sends only what is still undelivered (and a crash before this resends all: tokens dedupe). */
  const keepOnly = async (job: Job<KeenDeliveryJob>, keep: KeenDeliveryJob | undefined) => {
    if (keep) await job.updateData(keep);
  };

  const process = async (job: Job<KeenDeliveryJob>) => {
    const { events } = job.data;
    const outcomes = await batcher.submitAll(events);
    const attempt = job.attemptsMade + 1;
    const plan = planDelivery({ jobId: job.id!, events, outcomes, attempt, attempts: job.opts.attempts ?? 1, now: new Date() });
    for (const letter of plan.deadLetters) {
      await deadLetter(letter);
      logger.error(
        {
          job_id: job.id,
          queue: QUEUE_NAMES.keen,
          collection: letter.collection,
          device_id: deviceIdOf(letter),
          status: letter.lastError.status,
          code: letter.lastError.code,
          last_error: letter.lastError.message,
        },
        'Keen refused the event; dead-lettered',
      );
    }
    const { next } = plan;
    if (next.kind === 'done') return;

    const log = logger.child({
      job_id: job.id,
      queue: QUEUE_NAMES.keen,
      ...keenSubject({ events: plan.undelivered }),
      events: plan.undelivered.length,
    });
    if (next.kind === 'hold') {
      // A pause logs itself (pause.ts), once a minute at most.
      if (!next.error.deploymentFault && Date.now() >= rateLimitReportedUntil) {
        rateLimitReportedUntil = Date.now() + next.waitMs;
        log.warn({ retry_after_ms: next.waitMs }, 'Keen is rate limiting; pausing keen-delivery');
      }
      await keepOnly(job, plan.keep);
      await queues.keen.rateLimit(next.waitMs);
      throw Worker.RateLimitError();
    }
    const { lastError } = next;
    if (next.kind === 'give-up') {
      for (const letter of next.deadLetters) await deadLetter(letter);
      log.error(
        { attempts: attempt, status: lastError.status, code: lastError.code, last_error: lastError.message },
        'Keen delivery attempts exhausted; dead-lettered',
      );
      throw new UnrecoverableError(lastError.message);
    }
    await keepOnly(job, plan.keep);
    const { error } = next;
    if (!(error instanceof KeenRequestError) || !reported.has(error)) {
      if (error instanceof KeenRequestError) reported.add(error);
      log.warn({ attempts: attempt, status: lastError.status, code: lastError.code, err: error }, 'Keen delivery failed; will retry');
    }
    throw error;
  };

  return runStage({
    queue: queues.keen,
    connection: options.connection,
    process,
    parse: parseKeenDeliveryJob,
    subject: keenSubject,
    concurrency: options.concurrency,
    // A slow request must not look like a crashed worker; a worker killed mid-job is no failure:
    // its jobs are redone, and Keen drops the copy of any event it already recorded (uniqueness token).
    lockDurationMs: options.lockDurationMs ?? 60_000,
    manualRateLimit: true,
    // One line per failed request above, not one per job of its batch.
    failureLog: 'process',
    doneVerb: 'delivered',
    logger,
    ...(metrics ? { metrics } : {}),
  });
}

/** The collection and lamp a job's events are about, when they share one. */
function keenSubject(data: KeenDeliveryJob): Record<string, unknown> {
  const only = (values: Array<string | undefined>) => (new Set(values).size === 1 ? values[0] : undefined);
  const collection = only(data.events.map((record) => record.collection));
  const deviceId = only(data.events.map(deviceIdOf));
  return { ...(collection ? { collection } : {}), ...(deviceId ? { device_id: deviceId } : {}) };
}
