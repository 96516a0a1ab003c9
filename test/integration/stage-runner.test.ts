/**
 * The stage runner against real Redis: an ordered stage keeps a failing job at the head of its
 * queue (two workers, so across workers) with backoff, and fails it for good when its attempts
 * run out; a worker closing while a job keeps failing closes at once and leaves the job waiting;
 * malformed data fails for good at once without holding the queue; attempts and jobs are counted apart.
 */
import type { Job, JobsOptions, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import type { ParsedJob } from '../../src/shared/jobs.js';
import { createLogger } from '../../src/shared/logger.js';
import { createMetrics, type Metrics } from '../../src/shared/metrics.js';
import { JITTERED_BACKOFF } from '../../src/shared/backoff.js';
import { PipelineQueue } from '../../src/shared/queues.js';
import { runStage, type StageOptions } from '../../src/worker/stage-runner.js';
import { randomPrefix } from '../support/ids.js';
import { waitFor } from '../support/processes.js';

const services = inject('services');

interface TestJob {
  deviceId: string;
  /** How many attempts fail before one succeeds (-1: all). */
  failures: number;
}

const parseTestJob = (data: unknown): ParsedJob<TestJob> => {
  const job = data as Partial<TestJob> | null;
  return typeof job?.deviceId === 'string' && typeof job.failures === 'number'
    ? { ok: true, data: job as TestJob }
    : { ok: false, reason: 'deviceId: missing' };
};

let redis: Redis;
beforeAll(() => {
  redis = new Redis(services.redis, { maxRetriesPerRequest: null });
});
afterAll(async () => {
  await redis.quit();
});

/** A queue of its own, workers on it that record what they start, a log and metrics to read. */
function stageUnderTest(label: string) {
  const queue = new PipelineQueue<TestJob>(label, { connection: redis, prefix: randomPrefix(label) });
  const lines: Array<Record<string, unknown>> = [];
  const logger = createLogger('stage-test', 'info', {
    write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>),
  });
  const metrics = createMetrics('stage-test');
  const started: string[] = [];
  const workers: Worker[] = [];
  const process = async (job: Job<TestJob>) => {
    started.push(job.id!);
    const failed = started.filter((id) => id === job.id).length - 1;
    if (job.data.failures < 0 || failed < job.data.failures) throw new Error(`lamp ${job.data.deviceId} is away`);
    return 'done';
  };
  const start = (options: Partial<StageOptions<TestJob>> = {}) => {
    const worker = runStage<TestJob>({
      queue,
      connection: redis,
      process,
      parse: parseTestJob,
      subject: (data) => ({ device_id: data.deviceId }),
      logger,
      metrics,
      ...options,
    });
    workers.push(worker);
    return worker;
  };
  const add = (id: string, data: TestJob, opts: JobsOptions = {}) =>
    queue.add('test', data, { jobId: id, attempts: 5, backoff: { type: JITTERED_BACKOFF, delay: 50 }, ...opts });
  const stateOf = async (id: string) => (await queue.getJob(id))!.getState();
  const done = async (ids: string[]) => (await Promise.all(ids.map(stateOf))).every((state) => state === 'completed' || state === 'failed');
  const close = async () => {
    await Promise.all(workers.map((worker) => worker.close()));
    await queue.obliterate({ force: true });
    await queue.close();
  };
  return { queue, lines, metrics, started, start, add, stateOf, done, close };
}

const count = async (metric: Metrics['jobAttemptsFailed'], queue: string) =>
  (await metric.get()).values.find((v) => v.labels.queue === queue)?.value ?? 0;

/** The message of the error a log line carries as `err` (logged as `{ err }`, so serialized by pino). */
const errorMessage = (line: Record<string, unknown>) => (line.err as { message?: unknown } | undefined)?.message;

describe('stage runner, ordered stage', () => {
  let stage: ReturnType<typeof stageUnderTest>;
  afterEach(async () => {
    await stage.close();
  });

  it('keeps a failing job at the head of its queue across workers, with backoff, and logs its success after retries', async () => {
    stage = stageUnderTest('ordered-retry');
    stage.start({ ordered: true });
    stage.start({ ordered: true });
    await stage.add('a', { deviceId: 'lamp-a', failures: 2 });
    await stage.add('b', { deviceId: 'lamp-a', failures: 0 });
    await stage.add('c', { deviceId: 'lamp-a', failures: 0 });
    await waitFor('the queue done', () => stage.done(['a', 'b', 'c']));

    // The later states of the lamp never started before the first succeeded.
    expect(stage.started).toEqual(['a', 'a', 'a', 'b', 'c']);
    for (const id of ['a', 'b', 'c']) expect(await stage.stateOf(id)).toBe('completed');
    const a = (await stage.queue.getJob('a'))!;
    expect(a.attemptsStarted).toBe(3);

    const retries = stage.lines.filter((line) => line.msg === `${stage.queue.label} job failed; it keeps its place and its queue waits`);
    expect(retries.map((line) => [line.job_id, line.queue, line.device_id, line.attempt, line.attempts, errorMessage(line)])).toEqual([
      ['a', stage.queue.label, 'lamp-a', 1, 5, 'lamp lamp-a is away'],
      ['a', stage.queue.label, 'lamp-a', 2, 5, 'lamp lamp-a is away'],
    ]);
    // Equal jitter around the doubling base: 25-50 ms, then 50-100 ms.
    const [first, second] = retries.map((line) => line.wait_ms as number);
    expect(first).toBeGreaterThanOrEqual(25);
    expect(first).toBeLessThanOrEqual(50);
    expect(second).toBeGreaterThanOrEqual(50);
    expect(second).toBeLessThanOrEqual(100);
    expect(
      stage.lines.filter((line) => line.msg === 'handled after 3 attempts').map((line) => [line.job_id, line.device_id, line.attempts]),
    ).toEqual([['a', 'lamp-a', 3]]);

    expect(await count(stage.metrics.jobAttemptsFailed, stage.queue.label)).toBe(2);
    expect(await count(stage.metrics.jobsFailed, stage.queue.label)).toBe(0);
    expect(await count(stage.metrics.jobsCompleted, stage.queue.label)).toBe(3);
  });

  it('fails a job for good when its attempts run out, then the queue moves on', async () => {
    stage = stageUnderTest('ordered-dead-end');
    stage.start({ ordered: true });
    await stage.add('d', { deviceId: 'lamp-d', failures: -1 }, { attempts: 3 });
    await stage.add('e', { deviceId: 'lamp-d', failures: 0 });
    await waitFor('the queue done', () => stage.done(['d', 'e']));

    expect(stage.started).toEqual(['d', 'd', 'd', 'e']);
    const d = (await stage.queue.getJob('d'))!;
    expect(await d.getState()).toBe('failed');
    expect(d.failedReason).toBe('gave up after 3 attempts: lamp lamp-d is away');
    expect(await stage.stateOf('e')).toBe('completed');
    const final = stage.lines.filter((line) => line.msg === `${stage.queue.label} job failed for good`);
    expect(final.map((line) => [line.level, line.job_id, line.queue, line.device_id, line.attempts])).toEqual([
      ['error', 'd', stage.queue.label, 'lamp-d', 3],
    ]);

    expect(await count(stage.metrics.jobAttemptsFailed, stage.queue.label)).toBe(3);
    expect(await count(stage.metrics.jobsFailed, stage.queue.label)).toBe(1);
  });

  it('closes at once while a job keeps failing, and the job waits at the head of its queue, not lost', async () => {
    stage = stageUnderTest('ordered-close');
    // Waits of half a minute and more: a close that waited for them would outlast this test.
    const worker = stage.start({ ordered: true });
    await stage.add('f', { deviceId: 'lamp-f', failures: -1 }, { attempts: 30, backoff: { type: JITTERED_BACKOFF, delay: 60_000 } });
    await stage.add('g', { deviceId: 'lamp-f', failures: 0 });
    await waitFor('the job failed once', () => stage.lines.some((line) => line.job_id === 'f' && line.attempt === 1));

    await worker.close();
    expect(await stage.stateOf('f')).toBe('waiting');
    expect(await stage.stateOf('g')).toBe('waiting');
    // BullMQ takes from the right of its wait list: f is next, then g.
    expect(await redis.lrange(`${stage.queue.opts.prefix}:${stage.queue.name}:wait`, 0, -1)).toEqual(['g', 'f']);
    const f = (await stage.queue.getJob('f'))!;
    expect(f.attemptsMade).toBe(0);
    expect(stage.started).toEqual(['f']);
  }, 15_000);

  it('fails a job whose data does not parse for good at once, logged once, and handles the next job', async () => {
    stage = stageUnderTest('ordered-malformed');
    stage.start({ ordered: true });
    await stage.queue.add('test', { failures: 0 } as unknown as TestJob, { jobId: 'bad', attempts: 30 });
    await stage.add('next', { deviceId: 'lamp-n', failures: 0 });
    await waitFor('the queue done', () => stage.done(['bad', 'next']));

    const bad = (await stage.queue.getJob('bad'))!;
    expect(await bad.getState()).toBe('failed');
    expect(bad.attemptsMade).toBe(1);
    expect(bad.failedReason).toBe('malformed job data: deviceId: missing');
    expect(await stage.stateOf('next')).toBe('completed');
    expect(stage.started).toEqual(['next']);
    const about = stage.lines.filter((line) => line.job_id === 'bad');
    expect(about.map((line) => [line.level, line.queue, errorMessage(line), (line.err as { code?: string }).code])).toEqual([
      ['error', stage.queue.label, 'malformed job data: deviceId: missing', 'LAMPI_MALFORMED_JOB'],
    ]);
    expect(await count(stage.metrics.jobAttemptsFailed, stage.queue.label)).toBe(1);
    expect(await count(stage.metrics.jobsFailed, stage.queue.label)).toBe(1);
  });
});

describe('stage runner, unordered stage', () => {
  let stage: ReturnType<typeof stageUnderTest>;
  afterEach(async () => {
    await stage.close();
  });

  it('retries through BullMQ (delayed) and counts failed attempts apart from jobs that failed for good', async () => {
    stage = stageUnderTest('unordered');
    stage.start({ concurrency: 5 });
    await stage.add('recovers', { deviceId: 'lamp-r', failures: 1 }, { attempts: 3 });
    await stage.add('gives-up', { deviceId: 'lamp-g', failures: -1 }, { attempts: 3 });
    await waitFor('both done', () => stage.done(['recovers', 'gives-up']));

    expect(await stage.stateOf('recovers')).toBe('completed');
    expect(await stage.stateOf('gives-up')).toBe('failed');
    expect((await stage.queue.getJob('gives-up'))!.attemptsMade).toBe(3);
    // One failed attempt of the first, three of the second; one job failed for good.
    expect(await count(stage.metrics.jobAttemptsFailed, stage.queue.label)).toBe(4);
    expect(await count(stage.metrics.jobsFailed, stage.queue.label)).toBe(1);
    const about = (id: string) =>
      stage.lines.filter((line) => line.job_id === id).map((line) => [line.level, line.msg, line.device_id, line.attempts]);
    expect(about('recovers')).toEqual([
      ['warn', `${stage.queue.label} job failed; will retry`, 'lamp-r', 1],
      ['info', 'handled after 2 attempts', 'lamp-r', 2],
    ]);
    expect(about('gives-up')).toEqual([
      ['warn', `${stage.queue.label} job failed; will retry`, 'lamp-g', 1],
      ['warn', `${stage.queue.label} job failed; will retry`, 'lamp-g', 2],
      ['error', `${stage.queue.label} job failed for good`, 'lamp-g', 3],
    ]);
  });
});
