/**
 * Runs one stage of the pipeline: the BullMQ Worker of one queue, its listeners (metrics, log
 * lines) and its retries. It is the only place that retries a job, with the one backoff formula
 * (jitteredBackoffDelay), and the attempts and base delay the job's options give:
 *
 * - Unordered stages: a failed attempt goes back as `delayed` (BullMQ's retry, our backoff
 *   strategy) while other jobs go on.
 * - Ordered stages (bridge-state partitions): a failed job keeps its place. It is moved back to
 *   the head of its queue and the queue is rate-limited for the backoff, in Redis, so no worker
 *   of any process takes the next job of the partition meanwhile. Nothing sleeps inside the
 *   processor, so a worker told to stop stops at once and the job waits for the next one.
 *   BullMQ counts no attempt for this; the runner counts starts (`attemptsStarted`) and fails
 *   the job for good when its attempts run out.
 * - Malformed data (that does not parse as the stage's job type) fails for good at once, with
 *   one log line, and never holds its queue.
 *
 * Metrics tell attempts (lampi_job_attempts_failed_total) from jobs that failed for good
 * (lampi_jobs_failed_total); every log line about a job names its id, queue, and the lamp and
 * collection it is about when it has them.
 */
import { RateLimitError, UnrecoverableError, Worker, type ConnectionOptions, type Job } from 'bullmq';
import { isConnectionError } from '../shared/dependency-watch.js';
import type { ParsedJob } from '../shared/jobs.js';
import type { Logger } from '../shared/logger.js';
import type { Metrics } from '../shared/metrics.js';
import type { PipelineQueue } from '../shared/queues.js';
import { backoffBaseMs, jitteredBackoff, jitteredBackoffDelay } from '../shared/backoff.js';

export interface StageOptions<T> {
  /** The stage's queue: the worker takes its BullMQ name and prefix; an ordered stage rate-limits it. */
  queue: PipelineQueue<T>;
  connection: ConnectionOptions;
  /** Handles one job whose data has parsed. Throw to fail the attempt; UnrecoverableError fails the job for good. */
  process: (job: Job<T>) => Promise<unknown>;
  /** Checks a job's data before `process` sees it. Default: every job is taken as it is. */
  parse?: (data: unknown) => ParsedJob<T>;
  /** Jobs at once in this process. Default 1; an ordered stage must keep 1. */
  concurrency?: number;
  /** One job at a time across all workers; a failed job keeps its place (see the file header). Default false. */
  ordered?: boolean;
  /**
   * Lets `process` hold the whole queue, across workers, with `queue.rateLimit(ms)` and
   * `throw Worker.RateLimitError()`. Default false; ordered stages always can.
   */
  manualRateLimit?: boolean;
  /** How long a job's lock lasts without renewal (renewed every half). Default 30 s (BullMQ's). */
  lockDurationMs?: number;
  /** How often a job whose worker died may be taken again before it fails. Default 10: a crash is no failure. */
  maxStalledCount?: number;
  logger: Logger;
  metrics?: Metrics;
  /** The lamp and collection a job is about, for its log lines. Only called on data that parsed. */
  subject?: (data: T) => Record<string, unknown>;
  /**
   * Who logs failed attempts: the runner (default), or `process` itself (Keen delivery logs one
   * line per failed request rather than one per job of its batch), or `nobody` (stages whose
   * jobs fail on purpose: parked dead letters, the rejection log). Malformed data is always logged.
   */
  failureLog?: 'runner' | 'process' | 'nobody';
  /** The verb of the line logged when a job succeeds after retries: "handled after 3 attempts". Default `handled`. */
  doneVerb?: string;
}

/** The default limiter never limits; with it, BullMQ checks the limiter key that `rateLimit` sets (across workers). */
const NO_LIMIT = { max: 1_000_000_000, duration: 1000 };

/**
 * Data that is not the stage's job type. A BullMQ UnrecoverableError, which BullMQ fails for good
 * at once, so it cannot be a LampiError; it has a code like one.
 */
export class MalformedJobError extends UnrecoverableError {
  override name = 'MalformedJobError';
  readonly code = 'LAMPI_MALFORMED_JOB';
}

const messageOf = (err: unknown) => (err instanceof Error ? err.message : String(err));
const isUnrecoverable = (err: unknown) => err instanceof UnrecoverableError || (err instanceof Error && err.name === 'UnrecoverableError');
const isRateLimit = (err: unknown) => err instanceof RateLimitError;

export function runStage<T>(options: StageOptions<T>): Worker<T> {
  const { queue, logger, metrics, parse, subject, ordered = false } = options;
  // Metrics and logs name the queue by its name, not by BullMQ's hash-tagged one (src/shared/queues.ts).
  const name = queue.label;
  const concurrency = options.concurrency ?? 1;
  if (ordered && concurrency !== 1) throw new TypeError(`runStage: the ordered stage ${name} runs one job at a time (concurrency 1)`);
  const failureLog = options.failureLog ?? 'runner';

  /** job_id, queue, and what the job is about (when its data parses). */
  const fieldsOf = (job: Job<T>): Record<string, unknown> => {
    const data = parse ? parse(job.data) : ({ ok: true, data: job.data } as const);
    return { job_id: job.id, queue: name, ...(data.ok && subject ? subject(data.data) : {}) };
  };

  const processor = async (job: Job<T>) => {
    const data = parse?.(job.data);
    if (data && !data.ok) throw new MalformedJobError(`malformed job data: ${data.reason}`);
    if (!ordered) return options.process(job);
    try {
      return await options.process(job);
    } catch (err) {
      if (isUnrecoverable(err) || isRateLimit(err)) throw err;
      const attempts = job.opts.attempts ?? 1;
      if (job.attemptsStarted >= attempts) throw new UnrecoverableError(`gave up after ${job.attemptsStarted} attempts: ${messageOf(err)}`);
      const waitMs = jitteredBackoffDelay(job.attemptsStarted, backoffBaseMs(job.opts));
      metrics?.jobAttemptsFailed.inc({ queue: name });
      if (failureLog === 'runner') {
        const fields = { ...fieldsOf(job), attempt: job.attemptsStarted, attempts, wait_ms: waitMs, err };
        logger.warn(fields, `${name} job failed; it keeps its place and its queue waits`);
      }
      // Back to the head of the queue, which no worker of any process takes from until then.
      await queue.rateLimit(waitMs);
      throw Worker.RateLimitError();
    }
  };

  const worker = new Worker<T>(queue.name, processor, {
    connection: options.connection,
    prefix: queue.opts.prefix ?? 'bull',
    concurrency,
    maxStalledCount: options.maxStalledCount ?? 10,
    ...(options.lockDurationMs ? { lockDuration: options.lockDurationMs } : {}),
    ...(ordered || options.manualRateLimit ? { limiter: NO_LIMIT } : {}),
    settings: { backoffStrategy: jitteredBackoff },
    // An ordered stage starts once its queue runs one job at a time across all workers.
    autorun: !ordered,
  });
  if (ordered) {
    void queue
      .setGlobalConcurrency(1)
      .then(() => worker.run())
      .catch((err: unknown) => worker.emit('error', err instanceof Error ? err : new Error(String(err))));
  }

  worker.on('completed', (job) => {
    metrics?.jobsCompleted.inc({ queue: name });
    // BullMQ counts an ordered stage's retries as starts, not attempts.
    const attempts = ordered ? job.attemptsStarted : job.attemptsMade;
    if (attempts > 1) logger.info({ ...fieldsOf(job), attempts }, `${options.doneVerb ?? 'handled'} after ${attempts} attempts`);
  });
  worker.on('failed', (job, err) => {
    metrics?.jobAttemptsFailed.inc({ queue: name });
    const final = !job || isUnrecoverable(err) || job.attemptsMade >= (job.opts.attempts ?? 1);
    if (final) metrics?.jobsFailed.inc({ queue: name });
    const malformed = err instanceof MalformedJobError;
    if (!malformed && failureLog !== 'runner') return;
    const attempts = job && (ordered ? job.attemptsStarted : job.attemptsMade);
    const fields = { ...(job ? fieldsOf(job) : { queue: name }), attempts, err };
    if (malformed) logger.error(fields, `${name} job failed for good: its data is not a ${name} job`);
    else if (final) logger.error(fields, `${name} job failed for good`);
    else logger.warn(fields, `${name} job failed; will retry`);
  });
  // Without a listener, BullMQ's 'error' ends the process. A connection error is the outage the
  // process's DependencyWatch reports, once.
  worker.on('error', (err) => isConnectionError(err) || logger.error({ queue: name, err }, `${name} worker error`));
  return worker;
}
