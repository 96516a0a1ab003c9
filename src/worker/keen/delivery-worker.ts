/**
 * Handles the keen-delivery queue: each job holds Keen events, sent in bulk through the batcher
 * together with those of other jobs. Per event:
 *
 * - accepted by Keen: done;
 * - refused for good (a per-event error, or a 4xx such as 400/404/413): copied to
 *   keen-dead-letter at once, under its uniqueness token;
 * - 429: the whole queue pauses for Keen's `Retry-After` and the job goes back to wait without
 *   spending an attempt;
 * - 401, 402, 403 (the key or the account is refused, see pause.ts): the same, for the probe
 *   interval, again and again until Keen accepts: such a fault is the deployment's, not the
 *   events', and must not spend them;
 * - anything else (5xx, timeout, reset, unreadable answer): the job is retried with jittered
 *   backoff, holding only the events still undelivered, and dead-letters them when its attempts
 *   run out.
 *
 * Every event carries its `keen.uniqueness_token`, so one that Keen recorded but whose answer
 * was lost is dropped by Keen when it is sent again.
 */
import { UnrecoverableError, Worker, type ConnectionOptions, type Job } from 'bullmq';
import {
  deviceIdOf,
  parseKeenDeliveryJob,
  type DeadLetterJob,
  type DeliveryError,
  type KeenDeliveryJob,
  type KeenEventRecord,
} from '../../shared/jobs.js';
import type { Logger } from '../../shared/logger.js';
import type { Metrics } from '../../shared/metrics.js';
import { QUEUE_NAMES, type PipelineQueues } from '../../shared/queues.js';
import { addDeadLetter } from '../dead-letter-worker.js';
import { runStage } from '../stage-runner.js';
import { KeenEventRejected, KeenRequestError } from '../../shared/keen/errors.js';
import { DEFAULT_RATE_LIMIT_MS } from './client.js';

export interface KeenDeliveryWorkerOptions {
  connection: ConnectionOptions;
  prefix: string;
  /** `deadLetter` receives what cannot be delivered; `keen` must be this worker's queue (same prefix). */
  queues: PipelineQueues;
  batcher: { submit(collection: string, event: KeenEventRecord['event']): Promise<void> };
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
  if (queues.keen.name !== QUEUE_NAMES.keen || (queues.keen.opts.prefix ?? 'bull') !== options.prefix) {
    throw new TypeError(`createKeenDeliveryWorker: queues.keen must be the ${QUEUE_NAMES.keen} queue with prefix ${options.prefix}`);
  }
  /** A failed request fails every job of its batch with the same error: it is logged once. */
  const reported = new WeakSet<object>();
  /** One warning per rate-limit window, however many jobs it sends back to wait. */
  let rateLimitReportedUntil = 0;

  const deadLetter = async (job: Job<KeenDeliveryJob>, record: KeenEventRecord, lastError: DeliveryError) => {
    const letter: DeadLetterJob = {
      ...record,
      sourceJobId: job.id!,
      attemptsMade: job.attemptsMade + 1,
      lastError,
      failedAt: new Date().toISOString(),
    };
    // Under the event's token: a retry of this step cannot add a second dead letter.
    await addDeadLetter(queues.deadLetter, letter);
    metrics?.deadLettered.inc({ collection: record.collection });
  };

  const process = async (job: Job<KeenDeliveryJob>) => {
    const { events } = job.data;
    const outcomes = await Promise.allSettled(events.map(({ collection, event }) => batcher.submit(collection, event)));
    const attempts = job.attemptsMade + 1;
    const lastAttempt = attempts >= (job.opts.attempts ?? 1);
    const undelivered: KeenEventRecord[] = [];
    let retryError: unknown;
    /** Keen asked us to wait (429) or refuses the deployment: the job waits without spending an attempt. */
    let holdError: KeenRequestError | undefined;
    for (const [i, outcome] of outcomes.entries()) {
      if (outcome.status === 'fulfilled') continue;
      const err: unknown = outcome.reason;
      const record = events[i]!;
      const permanent = err instanceof KeenEventRejected || (err instanceof KeenRequestError && !err.retryable);
      if (permanent) {
        const lastError = toDeliveryError(err);
        await deadLetter(job, record, lastError);
        logger.error(
          {
            job_id: job.id,
            queue: QUEUE_NAMES.keen,
            collection: record.collection,
            device_id: deviceIdOf(record),
            status: lastError.status,
            code: lastError.code,
            err: lastError.message,
          },
          'Keen refused the event; dead-lettered',
        );
        continue;
      }
      undelivered.push(record);
      retryError ??= err;
      if (err instanceof KeenRequestError && (err.deploymentFault || err.status === 429) && !holdError?.deploymentFault) holdError = err;
    }
    if (undelivered.length === 0) return;

    const log = logger.child({
      job_id: job.id,
      queue: QUEUE_NAMES.keen,
      ...keenSubject({ events: undelivered }),
      events: undelivered.length,
    });
    if (holdError) {
      const waitMs = holdError.retryAfterMs ?? DEFAULT_RATE_LIMIT_MS;
      // A pause logs itself (pause.ts), once a minute at most.
      if (!holdError.deploymentFault && Date.now() >= rateLimitReportedUntil) {
        rateLimitReportedUntil = Date.now() + waitMs;
        log.warn({ retry_after_ms: waitMs }, 'Keen is rate limiting; pausing keen-delivery');
      }
      await keepOnly(job, undelivered);
      await queues.keen.rateLimit(waitMs);
      throw Worker.RateLimitError();
    }

    const lastError = toDeliveryError(retryError);
    if (lastAttempt) {
      for (const record of undelivered) await deadLetter(job, record, lastError);
      log.error(
        { attempts, status: lastError.status, code: lastError.code, err: lastError.message },
        'Keen delivery attempts exhausted; dead-lettered',
      );
      throw new UnrecoverableError(lastError.message);
    }
    await keepOnly(job, undelivered);
    if (!(retryError instanceof KeenRequestError) || !reported.has(retryError)) {
      if (retryError instanceof KeenRequestError) reported.add(retryError);
      log.warn({ attempts, status: lastError.status, code: lastError.code, err: lastError.message }, 'Keen delivery failed; will retry');
    }
    throw retryError;
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

/** A retry sends only what is still undelivered (and a crash before this resends all: tokens dedupe). */
async function keepOnly(job: Job<KeenDeliveryJob>, undelivered: KeenEventRecord[]): Promise<void> {
  if (undelivered.length < job.data.events.length) await job.updateData({ events: undelivered });
}

function toDeliveryError(err: unknown): DeliveryError {
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
