/**
 * A bulk request Keen fails as a whole (500, 413) because of one event: the real delivery
 * worker, batcher and client, real Redis and BullMQ, and the fake Keen taught to fail every
 * request that carries the poisoned event. The batcher splits the request in halves down to that
 * event: the others are delivered once each, and the poisoned one alone is dead-lettered, with
 * its last error.
 */
import { randomBytes } from 'node:crypto';
import type { Job, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { deviceStateEvent, uniquenessToken, type KeenEvent } from '../../src/shared/events.js';
import type { DeadLetterJob, KeenDeliveryJob } from '../../src/shared/jobs.js';
import { createLogger } from '../../src/shared/logger.js';
import { createMetrics } from '../../src/shared/metrics.js';
import { openQueues, type PipelineQueues } from '../../src/shared/queues.js';
import { JITTERED_BACKOFF } from '../../src/shared/backoff.js';
import { KeenBatcher } from '../../src/worker/keen/batcher.js';
import { KeenClient } from '../../src/worker/keen/client.js';
import { createKeenDeliveryWorker } from '../../src/worker/stages/keen-delivery-worker.js';
import { startFakeKeen, type FakeKeen } from '../support/fake-keen.js';
import { randomDeviceId, randomPrefix } from '../support/ids.js';
import { waitFor } from '../support/processes.js';

const PROJECT = 'lampi_split_test';
const WRITE_KEY = `wk-${randomBytes(12).toString('hex')}`;
const ATTEMPTS = 4;

let redis: Redis;
let keen: FakeKeen;
let queues: PipelineQueues;
let worker: Worker<KeenDeliveryJob>;
let batcher: KeenBatcher;
let prefix: string;

const event = (state: object = { on: true }): KeenEvent =>
  deviceStateEvent(
    randomDeviceId(),
    state,
    new Date().toISOString(),
    uniquenessToken(`sp${randomBytes(8).toString('hex')}`, 'devicestate'),
  );
const tokenOf = (e: KeenEvent) => e.keen.uniqueness_token;
const sorted = (list: string[]) => [...list].sort();
const isPoisoned = (_collection: string, sent: Record<string, unknown>) =>
  (sent.state as { poison?: boolean } | undefined)?.poison === true;

async function deliver(events: KeenEvent[]): Promise<void> {
  // One job of 100 events, as one ingest job's group: it goes to Keen as one bulk request.
  await queues.keen.add(
    'devicestate',
    { events: events.map((e) => ({ collection: 'devicestate' as const, event: e })) },
    {
      jobId: `ing${randomBytes(8).toString('hex')}-keen`,
      attempts: ATTEMPTS,
      backoff: { type: JITTERED_BACKOFF, delay: 50 },
      removeOnComplete: false,
      removeOnFail: false,
    },
  );
  await waitFor(
    'keen-delivery to settle',
    async () => Object.values(await queues.keen.getJobCounts('waiting', 'active', 'delayed', 'prioritized')).every((n) => n === 0),
    30_000,
    50,
  );
}

const deadLetters = async () =>
  (await queues.deadLetter.getJobs(['waiting', 'active', 'failed', 'completed', 'delayed'])) as Array<Job<DeadLetterJob>>;

beforeAll(() => {
  redis = new Redis(inject('services').redis, { maxRetriesPerRequest: null });
});
afterAll(async () => redis.quit());

async function start(): Promise<void> {
  prefix = randomPrefix('split');
  keen = await startFakeKeen({ projectId: PROJECT, writeKey: WRITE_KEY });
  queues = openQueues(redis, prefix, 2);
  const client = new KeenClient({ apiUrl: keen.url, projectId: PROJECT, writeKey: WRITE_KEY, timeoutMs: 2000 });
  batcher = new KeenBatcher({ client, maxEvents: 100, lingerMs: 20, metrics: createMetrics('split-test') });
  worker = createKeenDeliveryWorker({
    connection: redis,
    prefix,
    queues,
    batcher,
    concurrency: 10,
    logger: createLogger('split-test', 'silent'),
    metrics: createMetrics('split-test'),
  });
}

afterEach(async () => {
  await worker.close();
  await batcher.close();
  await queues.close();
  await keen.close();
  const stream = redis.scanStream({ match: `${prefix}:*`, count: 1000 });
  for await (const keys of stream as AsyncIterable<string[]>) if (keys.length) await redis.unlink(...keys);
});

describe('a bulk request failed whole by one event', () => {
  it('500: the 99 good events are delivered once each, the poisoned one alone is dead-lettered after its attempts, with the 500', async () => {
    await start();
    keen.failRequestsContaining({
      matches: isPoisoned,
      status: 500,
      body: { message: 'Internal server error', error_code: 'InternalServerError' },
    });
    const good = Array.from({ length: 99 }, () => event());
    const poisoned = event({ on: true, poison: true });
    const all = [...good.slice(0, 42), poisoned, ...good.slice(42)];
    await deliver(all);

    expect(sorted(keen.tokens('devicestate'))).toEqual(sorted(good.map(tokenOf)));
    expect(keen.duplicatesDropped).toBe(0);
    const letters = await deadLetters();
    expect(letters.map((letter) => letter.id)).toEqual([tokenOf(poisoned)]);
    expect(letters[0]!.data).toMatchObject({
      event: { keen: { uniqueness_token: tokenOf(poisoned) } },
      attemptsMade: ATTEMPTS,
      lastError: { status: 500, code: 'InternalServerError' },
    });
    // The first attempt isolated it in 1 + 2·7 requests (halves down to one event); each retry sends it alone.
    const bulk = keen.requests.filter((request) => request.kind === 'bulk');
    expect(bulk[0]!.eventCount).toBe(100);
    expect(bulk.length).toBeLessThanOrEqual(1 + 2 * 7 + (ATTEMPTS - 1));
    expect(bulk.slice(-(ATTEMPTS - 1)).map((request) => [request.eventCount, request.status])).toEqual(Array(ATTEMPTS - 1).fill([1, 500]));
  });

  it('413: the poisoned event is dead-lettered at its first attempt, the rest delivered', async () => {
    await start();
    keen.failRequestsContaining({
      matches: isPoisoned,
      status: 413,
      body: { message: 'Request entity too large', error_code: 'RequestEntityTooLargeError' },
    });
    const good = Array.from({ length: 99 }, () => event());
    const poisoned = event({ on: false, poison: true });
    await deliver([poisoned, ...good]);

    expect(sorted(keen.tokens('devicestate'))).toEqual(sorted(good.map(tokenOf)));
    const letters = await deadLetters();
    expect(letters.map((letter) => letter.id)).toEqual([tokenOf(poisoned)]);
    expect(letters[0]!.data).toMatchObject({ attemptsMade: 1, lastError: { status: 413 } });
  });

  it('a Keen failing every request: splitting stops after two rounds (7 requests) and the events wait for their retries', async () => {
    await start();
    keen.respondWith({ status: 500, body: { message: 'down', error_code: 'InternalServerError' } });
    const all = Array.from({ length: 100 }, () => event());
    await queues.keen.add(
      'devicestate',
      { events: all.map((e) => ({ collection: 'devicestate' as const, event: e })) },
      { jobId: `ing${randomBytes(8).toString('hex')}-keen`, attempts: 1, removeOnComplete: false, removeOnFail: false },
    );
    await waitFor('all 100 dead-lettered', async () => (await deadLetters()).length === 100, 30_000, 50);
    expect(keen.requests.map((request) => request.eventCount)).toEqual([100, 50, 50, 25, 25, 25, 25]);
    expect(keen.eventCount()).toBe(0);
  });
});
