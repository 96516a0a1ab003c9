/**
 * The keen-delivery stage end to end: real Redis and BullMQ, the real KeenClient and batcher,
 * and the fake Keen server with injected faults. Every event must reach Keen exactly once (by
 * uniqueness token) or end in keen-dead-letter with why.
 */
import { randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';
import type { Job, JobsOptions, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { deviceStateEvent, uniquenessToken, type KeenEvent } from '../../src/shared/events.js';
import type { DeadLetterJob, KeenDeliveryJob } from '../../src/shared/jobs.js';
import { createLogger } from '../../src/shared/logger.js';
import { createMetrics } from '../../src/shared/metrics.js';
import { JITTERED_BACKOFF, openQueues, type PipelineQueues } from '../../src/shared/queues.js';
import { KeenBatcher } from '../../src/worker/keen/batcher.js';
import { KeenClient } from '../../src/worker/keen/client.js';
import { createKeenDeliveryWorker } from '../../src/worker/keen/delivery-worker.js';
import { startFakeKeen, type FakeKeen } from '../support/fake-keen.js';
import { randomDeviceId, randomPrefix } from '../support/ids.js';
import { waitFor } from '../support/processes.js';

const services = inject('services');
const PROJECT = 'lampi_delivery_test';
const WRITE_KEY = `wk-${randomBytes(12).toString('hex')}`;

interface HarnessOptions {
  concurrency?: number;
  maxEvents?: number;
  lingerMs?: number;
  timeoutMs?: number;
}

interface Harness {
  keen: FakeKeen;
  queues: PipelineQueues;
  worker: Worker<KeenDeliveryJob>;
  logs: () => string;
  /** When the batcher started each request, and when it learned of each request error. */
  requestStarts: number[];
  requestErrors: Array<{ at: number; err: unknown }>;
  /** Adds delivery jobs the way the registry worker does (job id = uniqueness token). */
  add(events: KeenEvent[], opts?: JobsOptions): Promise<string[]>;
  /** Waits until no delivery job is waiting, active or delayed. */
  settled(timeoutMs?: number): Promise<void>;
  deadLetters(): Promise<Array<Job<DeadLetterJob>>>;
  finished(ids: string[]): Promise<Array<Job<KeenDeliveryJob>>>;
}

let redis: Redis;
const cleanups: Array<() => Promise<unknown>> = [];

/** Few attempts and a short backoff keep retries quick; jobs are kept to be inspected. */
const JOB_OPTS: JobsOptions = { attempts: 6, backoff: { type: JITTERED_BACKOFF, delay: 50 }, removeOnComplete: false, removeOnFail: false };

const event = (props: { deviceId?: string; state?: object } = {}): KeenEvent => {
  const token = uniquenessToken(`it${randomBytes(8).toString('hex')}`, 'devicestate');
  return deviceStateEvent(props.deviceId ?? randomDeviceId(), props.state ?? { on: true, brightness: 0.5 }, new Date().toISOString(), token);
};
const tokenOf = (e: KeenEvent) => e.keen.uniqueness_token;

async function harness(options: HarnessOptions = {}): Promise<Harness> {
  const prefix = randomPrefix('keen');
  const keen = await startFakeKeen({ projectId: PROJECT, writeKey: WRITE_KEY });
  const queues = openQueues(redis, prefix, 6);
  let output = '';
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      output += chunk.toString();
      done();
    },
  });
  const logger = createLogger('keen-delivery-test', 'debug', sink);
  const client = new KeenClient({ apiUrl: keen.url, projectId: PROJECT, writeKey: WRITE_KEY, timeoutMs: options.timeoutMs ?? 2000 });
  const requestStarts: number[] = [];
  const requestErrors: Harness['requestErrors'] = [];
  const batcher = new KeenBatcher({
    client: {
      recordSerialized: (batch) => {
        requestStarts.push(Date.now());
        return client.recordSerialized(batch).catch((err: unknown) => {
          requestErrors.push({ at: Date.now(), err });
          throw err;
        });
      },
    },
    maxEvents: options.maxEvents ?? 100,
    lingerMs: options.lingerMs ?? 20,
    metrics: createMetrics('keen-delivery-test'),
  });
  const worker = createKeenDeliveryWorker({ connection: redis, prefix, queues, batcher, concurrency: options.concurrency ?? 100, logger, metrics: createMetrics('keen-delivery-test') });
  cleanups.push(async () => {
    await worker.close();
    await batcher.close();
    await queues.close();
    await keen.close();
    await deleteKeys(prefix);
  });
  return {
    keen,
    queues,
    worker,
    logs: () => output,
    requestStarts,
    requestErrors,
    async add(events, opts = {}) {
      await queues.keen.addBulk(events.map((e) => ({ name: 'devicestate', data: { collection: 'devicestate', event: e }, opts: { ...JOB_OPTS, ...opts, jobId: tokenOf(e) } })));
      return events.map(tokenOf);
    },
    async settled(timeoutMs = 30_000) {
      await waitFor(
        'keen-delivery to settle',
        async () => {
          const counts = await queues.keen.getJobCounts('waiting', 'active', 'delayed', 'prioritized');
          return Object.values(counts).every((n) => n === 0);
        },
        timeoutMs,
        50,
      );
    },
    deadLetters: () => queues.deadLetter.getJobs(['waiting', 'active', 'failed', 'completed', 'delayed']),
    async finished(ids) {
      return Promise.all(ids.map(async (id) => (await queues.keen.getJob(id))!));
    },
  };
}

async function deleteKeys(prefix: string) {
  const stream = redis.scanStream({ match: `${prefix}:*`, count: 1000 });
  for await (const keys of stream as AsyncIterable<string[]>) if (keys.length) await redis.unlink(...keys);
}

/** Each token stored exactly once, and nothing else stored. */
function expectDeliveredOnce(keen: FakeKeen, tokens: string[]) {
  expect([...keen.tokens('devicestate')].sort()).toEqual([...tokens].sort());
}

beforeAll(() => {
  redis = new Redis(services.redis, { maxRetriesPerRequest: null });
});
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});
afterAll(async () => {
  await redis.quit();
});

describe('keen-delivery', () => {
  it('batches a burst of concurrent jobs into few bulk requests', async () => {
    const h = await harness({ concurrency: 500, maxEvents: 200, lingerMs: 20 });
    const events = Array.from({ length: 2000 }, () => event());
    const tokens = await h.add(events);
    await waitFor('2000 events at Keen', () => h.keen.eventCount() === 2000, 60_000);
    await h.settled();
    expectDeliveredOnce(h.keen, tokens);
    const bulk = h.keen.requests.filter((r) => r.kind === 'bulk');
    expect(bulk.length).toBeLessThan(events.length / 10);
    expect(bulk.reduce((n, r) => n + r.eventCount, 0)).toBe(2000);
    expect(Math.max(...bulk.map((r) => r.eventCount))).toBeLessThanOrEqual(200);
    expect(await h.queues.keen.getCompletedCount()).toBe(2000);
  });

  it('rides out a 503 outage: every event delivered exactly once, nothing dead-lettered', async () => {
    const h = await harness({ concurrency: 100, maxEvents: 50 });
    h.keen.respondWith({ status: 503, body: { message: 'Keen is down for maintenance', error_code: 'ServiceUnavailableError' } }, { times: 4 });
    const tokens = await h.add(Array.from({ length: 300 }, () => event()));
    await waitFor('300 events at Keen', () => h.keen.eventCount() === 300);
    await h.settled();
    expectDeliveredOnce(h.keen, tokens);
    expect(h.keen.requests.filter((r) => r.status === 503)).toHaveLength(4);
    const jobs = await h.finished(tokens);
    for (const job of jobs) expect(await job.getState()).toBe('completed');
    // The outage really reached the jobs: some needed more than one attempt (BullMQ counts the
    // successful attempt in attemptsMade too).
    expect(jobs.some((job) => job.attemptsMade > 1)).toBe(true);
    expect(await h.deadLetters()).toHaveLength(0);
  });

  it('honours a 429’s Retry-After: no request before it ends, and no attempt spent', async () => {
    const h = await harness({ concurrency: 100, maxEvents: 20, lingerMs: 10 });
    h.keen.respondWith({ status: 429, body: 'Too Many Requests', headers: { 'retry-after': '2' } }, { times: 1 });
    const tokens = await h.add(Array.from({ length: 100 }, () => event()));
    await waitFor('100 events at Keen', () => h.keen.eventCount() === 100);
    await h.settled();
    expectDeliveredOnce(h.keen, tokens);

    expect(h.keen.requests.filter((r) => r.status === 429)).toHaveLength(1);
    // Requests already under way when the 429 arrived cannot be recalled; from the moment the
    // worker learned of it, nothing may be sent for the 2 s Keen asked for.
    const learned = h.requestErrors.find(({ err }) => (err as { status?: number }).status === 429)!;
    expect(learned).toBeDefined();
    const later = h.requestStarts.filter((at) => at >= learned.at);
    expect(later.length).toBeGreaterThan(0);
    for (const at of later) expect(at).toBeGreaterThanOrEqual(learned.at + 2000);
    expect(h.requestStarts).toHaveLength(h.keen.requests.length);

    // attemptsMade counts the successful attempt: 1 means the 429 spent none. The jobs of the
    // refused request did run twice (attemptsStarted).
    const jobs = await h.finished(tokens);
    expect(jobs.map((job) => job.attemptsMade)).toEqual(tokens.map(() => 1));
    expect(jobs.filter((job) => job.attemptsStarted > 1).length).toBeGreaterThanOrEqual(h.keen.requests.find((r) => r.status === 429)!.eventCount);
    expect(await h.deadLetters()).toHaveLength(0);
  });

  it('times out a request that hangs, retries, and delivers', async () => {
    const h = await harness({ timeoutMs: 500 });
    h.keen.hang({ times: 1 });
    const tokens = await h.add(Array.from({ length: 20 }, () => event()));
    await waitFor('20 events at Keen', () => h.keen.eventCount() === 20);
    await h.settled();
    expectDeliveredOnce(h.keen, tokens);
    const hung = h.keen.requests.filter((r) => r.fault === 'hang');
    expect(hung).toHaveLength(1);
    const jobs = await h.finished(tokens);
    // The events of the hung request took a second attempt (attemptsMade counts the successful one).
    expect(jobs.filter((job) => job.attemptsMade === 2)).toHaveLength(hung[0]!.eventCount);
    expect(jobs.filter((job) => job.attemptsMade === 1)).toHaveLength(20 - hung[0]!.eventCount);
    expect(h.logs()).toContain('timed out after 500 ms');
  });

  it.each([
    ['before Keen stored the events', false],
    ['after Keen stored the events (the answer is lost)', true],
  ])('survives a connection reset %s', async (_when, afterStore) => {
    const h = await harness();
    h.keen.resetConnections({ times: 1, afterStore });
    const tokens = await h.add(Array.from({ length: 30 }, () => event()));
    await waitFor('30 events at Keen', () => h.keen.eventCount() === 30);
    await h.settled();
    expectDeliveredOnce(h.keen, tokens);
    const reset = h.keen.requests.find((r) => r.fault === 'reset')!;
    expect(reset).toBeDefined();
    // Resent events Keen already had are dropped by their uniqueness token.
    expect(h.keen.duplicatesDropped).toBe(afterStore ? reset.eventCount : 0);
    expect(await h.deadLetters()).toHaveLength(0);
  });

  it('dead-letters only the events Keen refused in a bulk request, with their errors', async () => {
    const h = await harness();
    const refusedDevice = randomDeviceId();
    h.keen.rejectEvents((_c, e) => (e.device_id === refusedDevice ? { name: 'InvalidPropertyValueError', description: 'state is not allowed here' } : undefined));
    const good = Array.from({ length: 40 }, () => event());
    const refused = event({ deviceId: refusedDevice });
    // Keen's own validation: a dotted property name that bypassed toKeenProperties.
    const badName = { ...event(), state: { 'color.h': 0.5 } } as KeenEvent;
    const tokens = await h.add([...good.slice(0, 20), refused, badName, ...good.slice(20)]);
    await h.settled();
    expectDeliveredOnce(h.keen, good.map(tokenOf));

    const dead = await h.deadLetters();
    expect(dead.map((job) => job.id).sort()).toEqual([tokenOf(refused), tokenOf(badName)].sort());
    const byId = new Map(dead.map((job) => [job.id, job.data]));
    expect(byId.get(tokenOf(refused))).toMatchObject({
      collection: 'devicestate',
      event: refused,
      sourceJobId: tokenOf(refused),
      attemptsMade: 1,
      lastError: { code: 'InvalidPropertyValueError', message: expect.stringContaining('state is not allowed here') },
    });
    expect(byId.get(tokenOf(badName))?.lastError.code).toBe('InvalidPropertyNameError');

    const jobs = new Map((await h.finished(tokens)).map((job) => [job.id, job]));
    for (const e of [refused, badName]) {
      const job = jobs.get(tokenOf(e))!;
      expect(await job.getState()).toBe('failed');
      expect(job.attemptsMade).toBe(1);
    }
    for (const e of good) expect(await jobs.get(tokenOf(e))!.getState()).toBe('completed');
  });

  it('dead-letters a permanent 400 at once with the original event, attempts and last error', async () => {
    const h = await harness();
    h.keen.respondWith({ status: 400, body: { message: 'Malformed event payload', error_code: 'InvalidEventError' } }, { times: 1 });
    const original = event();
    const [id] = await h.add([original]);
    await h.settled();

    const [dead] = await h.deadLetters();
    expect(dead?.id).toBe(id);
    expect(dead!.data).toEqual({
      collection: 'devicestate',
      event: original,
      sourceJobId: id,
      attemptsMade: 1,
      lastError: { message: expect.stringContaining('Malformed event payload'), status: 400, code: 'InvalidEventError' },
      failedAt: expect.stringMatching(/^\d{4}-\d{2}-\d{2}T/),
    });
    const job = (await h.finished([id!]))[0]!;
    expect(await job.getState()).toBe('failed');
    expect(job.attemptsMade).toBe(1);
    expect(h.keen.requests).toHaveLength(1);
    expect(h.keen.eventCount()).toBe(0);

    const logs = h.logs();
    const line = logs.split('\n').find((l) => l.includes('dead-lettered'));
    expect(line && JSON.parse(line)).toMatchObject({ job_id: id, collection: 'devicestate', device_id: original.device_id, status: 400 });
    expect(logs).not.toContain(WRITE_KEY);
  });

  it('dead-letters an event over 900,000 bytes without sending it', async () => {
    const h = await harness();
    const huge = event({ state: { blob: 'x'.repeat(950_000) } });
    const [id] = await h.add([huge]);
    await h.settled();
    const [dead] = await h.deadLetters();
    expect(dead?.data).toMatchObject({ sourceJobId: id, attemptsMade: 1, lastError: { code: 'EventTooLargeError' } });
    expect(h.keen.requests).toHaveLength(0);
  });

  it('dead-letters events whose attempts run out on a persistent 503', async () => {
    const h = await harness();
    h.keen.respondWith({ status: 503, body: { message: 'still down', error_code: 'ServiceUnavailableError' } });
    const events = Array.from({ length: 5 }, () => event());
    const tokens = await h.add(events, { attempts: 3, backoff: { type: JITTERED_BACKOFF, delay: 20 } });
    await waitFor('5 dead letters', async () => (await h.deadLetters()).length === 5);
    await h.settled();

    const dead = await h.deadLetters();
    expect(dead.map((job) => job.id).sort()).toEqual([...tokens].sort());
    for (const job of dead) {
      expect(job.data).toMatchObject({ attemptsMade: 3, lastError: { status: 503, code: 'ServiceUnavailableError', message: expect.stringContaining('still down') } });
      expect(job.data.event).toEqual(events.find((e) => tokenOf(e) === job.id));
    }
    for (const job of await h.finished(tokens)) {
      expect(await job.getState()).toBe('failed');
      expect(job.attemptsMade).toBe(3);
    }
    expect(h.keen.requests.length).toBeGreaterThanOrEqual(3);
    expect(h.keen.eventCount()).toBe(0);
    expect(h.logs()).not.toContain(WRITE_KEY);
  });
});
