/**
 * The keen-delivery stage end to end: real Redis and BullMQ, the real KeenClient and batcher,
 * and the fake Keen server with injected faults. A job holds many events (as the registry
 * worker writes it: all Keen events of one ingest job, under `${ingestJobId}-keen`). Every event
 * must reach Keen exactly once (by uniqueness token) or end in keen-dead-letter, under its
 * token, with why; a retry sends only the events still undelivered.
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
import { openQueues, type PipelineQueues } from '../../src/shared/queues.js';
import { JITTERED_BACKOFF } from '../../src/shared/backoff.js';
import { KeenBatcher } from '../../src/worker/keen/batcher.js';
import { KeenClient } from '../../src/worker/keen/client.js';
import { createKeenDeliveryWorker } from '../../src/worker/stages/keen-delivery-worker.js';
import { KeenDeliveryPause } from '../../src/worker/keen/pause.js';
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
  /** How often a paused delivery (401/402/403) tries Keen again. */
  probeIntervalMs?: number;
}

/** One request the batcher made, as it made it: the events' tokens, and how it ended. */
interface SentRequest {
  at: number;
  tokens: string[];
  /** 200 when Keen answered the bulk request; else the error's HTTP status or code. Unset while under way. */
  outcome?: number | string;
}

interface Harness {
  keen: FakeKeen;
  queues: PipelineQueues;
  worker: Worker<KeenDeliveryJob>;
  pause: KeenDeliveryPause;
  logs: () => string;
  /** Every request the batcher made, in the order it made them. */
  sent: SentRequest[];
  /** When the batcher started each request, and when it learned of each request error. */
  requestStarts: number[];
  requestErrors: Array<{ at: number; err: unknown }>;
  /** Adds one delivery job per group, the way the registry worker does (job id `${ingestJobId}-keen`). */
  addJobs(groups: KeenEvent[][], opts?: JobsOptions): Promise<string[]>;
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
  return deviceStateEvent(
    props.deviceId ?? randomDeviceId(),
    props.state ?? { on: true, brightness: 0.5 },
    new Date().toISOString(),
    token,
  );
};
const events = (n: number) => Array.from({ length: n }, () => event());
const tokenOf = (e: KeenEvent) => e.keen.uniqueness_token;
/** The tokens a job holds now (a retried job holds only what was still undelivered). */
const tokensIn = (job: Job<KeenDeliveryJob>) => job.data.events.map((record) => tokenOf(record.event));
const sorted = (list: string[]) => [...list].sort();

/** Consecutive groups of these sizes, as ingest jobs of different sizes would make. */
function groupsOf(list: KeenEvent[], sizes: number[]): KeenEvent[][] {
  const groups: KeenEvent[][] = [];
  for (let at = 0, i = 0; at < list.length; i += 1) {
    const size = sizes[i % sizes.length]!;
    groups.push(list.slice(at, at + size));
    at += size;
  }
  return groups;
}

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
  const pause = new KeenDeliveryPause({ probeIntervalMs: options.probeIntervalMs ?? 30_000, logger });
  const client = new KeenClient({ apiUrl: keen.url, projectId: PROJECT, writeKey: WRITE_KEY, timeoutMs: options.timeoutMs ?? 2000 });
  const sent: SentRequest[] = [];
  const requestStarts: number[] = [];
  const requestErrors: Harness['requestErrors'] = [];
  const batcher = new KeenBatcher({
    client: {
      recordSerialized: (batch) => {
        const request: SentRequest = {
          at: Date.now(),
          tokens: Object.values(batch).flatMap((list) => list.map((json) => tokenOf(JSON.parse(json) as KeenEvent))),
        };
        sent.push(request);
        requestStarts.push(request.at);
        return client.recordSerialized(batch).then(
          (results) => {
            request.outcome = 200;
            return results;
          },
          (err: unknown) => {
            const { status, code } = err as { status?: number; code?: string };
            request.outcome = status ?? code ?? 'error';
            requestErrors.push({ at: Date.now(), err });
            throw err;
          },
        );
      },
    },
    maxEvents: options.maxEvents ?? 100,
    lingerMs: options.lingerMs ?? 20,
    metrics: createMetrics('keen-delivery-test'),
    pause,
  });
  const worker = createKeenDeliveryWorker({
    connection: redis,
    prefix,
    queues,
    batcher,
    concurrency: options.concurrency ?? 100,
    logger,
    metrics: createMetrics('keen-delivery-test'),
  });
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
    pause,
    logs: () => output,
    sent,
    requestStarts,
    requestErrors,
    async addJobs(groups, opts = {}) {
      const ids = groups.map(() => `ing${randomBytes(8).toString('hex')}-keen`);
      await queues.keen.addBulk(
        groups.map((group, i) => ({
          name: 'devicestate',
          data: { events: group.map((e) => ({ collection: 'devicestate' as const, event: e })) },
          opts: { ...JOB_OPTS, ...opts, jobId: ids[i]! },
        })),
      );
      return ids;
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
  expect(sorted(keen.tokens('devicestate'))).toEqual(sorted(tokens));
}

/** The tokens of the requests Keen answered with 200, each as often as it was in one. */
const answered = (sent: SentRequest[]) => sent.filter((request) => request.outcome === 200).flatMap((request) => request.tokens);

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
  it('batches the events of a burst of concurrent jobs of many sizes into few bulk requests', async () => {
    const h = await harness({ concurrency: 500, maxEvents: 200, lingerMs: 20 });
    const all = events(2000);
    const groups = groupsOf(all, [1, 7, 40, 3, 120, 25]);
    const ids = await h.addJobs(groups);
    await waitFor('2000 events at Keen', () => h.keen.eventCount() === 2000, 60_000);
    await h.settled();
    expectDeliveredOnce(h.keen, all.map(tokenOf));
    const bulk = h.keen.requests.filter((r) => r.kind === 'bulk');
    expect(bulk.length).toBeLessThan(all.length / 10);
    // Every event sent once: nothing needed a second request.
    expect(bulk.reduce((n, r) => n + r.eventCount, 0)).toBe(2000);
    expect(Math.max(...bulk.map((r) => r.eventCount))).toBeLessThanOrEqual(200);
    expect(await h.queues.keen.getCompletedCount()).toBe(groups.length);
    // A job delivered at the first attempt keeps its events as they were added.
    for (const [i, job] of (await h.finished(ids)).entries()) {
      expect(job.attemptsMade).toBe(1);
      expect(tokensIn(job)).toEqual(groups[i]!.map(tokenOf));
    }
    expect(await h.deadLetters()).toHaveLength(0);
  });

  it('rides out a 503 outage: every event of every multi-event job accepted exactly once, nothing dead-lettered', async () => {
    const h = await harness({ concurrency: 100, maxEvents: 50 });
    h.keen.respondWith(
      { status: 503, body: { message: 'Keen is down for maintenance', error_code: 'ServiceUnavailableError' } },
      { times: 4 },
    );
    const all = events(300);
    // Jobs of 7 in requests of 50: some jobs straddle two requests, one refused and one accepted.
    const groups = groupsOf(all, [7]);
    const ids = await h.addJobs(groups);
    await waitFor('300 events at Keen', () => h.keen.eventCount() === 300);
    await h.settled();
    expectDeliveredOnce(h.keen, all.map(tokenOf));
    expect(h.keen.requests.filter((r) => r.status === 503)).toHaveLength(4);
    // After the outage each event was in exactly one request Keen answered: a retried job sent
    // again only what the outage had kept from Keen, never an event already accepted.
    expect(sorted(answered(h.sent))).toEqual(sorted(all.map(tokenOf)));
    expect(h.keen.duplicatesDropped).toBe(0);

    const jobs = await h.finished(ids);
    for (const job of jobs) expect(await job.getState()).toBe('completed');
    // The outage really reached the jobs: some needed more than one attempt (BullMQ counts the
    // successful attempt in attemptsMade too).
    expect(jobs.some((job) => job.attemptsMade > 1)).toBe(true);
    for (const [i, job] of jobs.entries()) {
      const original = groups[i]!.map(tokenOf);
      if (job.attemptsMade === 1) expect(tokensIn(job)).toEqual(original);
      // A retried job holds what its last attempt sent: part of what it was given, in order.
      else expect(original.filter((token) => tokensIn(job).includes(token))).toEqual(tokensIn(job));
    }
    expect(await h.deadLetters()).toHaveLength(0);
  });

  it('retries after a partial success with only the undelivered events', async () => {
    // One job of 10 events, sent in requests of 4, 4 and 2; Keen answers one of them 503.
    const h = await harness({ maxEvents: 4, lingerMs: 20 });
    h.keen.respondWith({ status: 503, body: { message: 'Keen hiccup', error_code: 'ServiceUnavailableError' } }, { times: 1 });
    const all = events(10);
    const [id] = await h.addJobs([all]);
    await h.settled();

    const first = h.sent.slice(0, 3);
    expect(first.map((request) => request.tokens.length)).toEqual([4, 4, 2]);
    expect(first.flatMap((request) => request.tokens)).toEqual(all.map(tokenOf));
    const failed = first.filter((request) => request.outcome === 503);
    expect(failed).toHaveLength(1);
    const undelivered = failed[0]!.tokens;

    // The retry sent exactly the events of the refused request, once, and Keen took them.
    const retry = h.sent.slice(3);
    expect(retry).toHaveLength(1);
    expect(retry[0]).toMatchObject({ outcome: 200 });
    expect(sorted(retry[0]!.tokens)).toEqual(sorted(undelivered));
    // Seen from Keen: 4 requests, and 10 events plus the resent ones.
    expect(h.keen.requests).toHaveLength(4);
    expect(h.keen.requests.reduce((n, r) => n + r.eventCount, 0)).toBe(10 + undelivered.length);
    expectDeliveredOnce(h.keen, all.map(tokenOf));
    expect(h.keen.duplicatesDropped).toBe(0);

    const [job] = await h.finished([id!]);
    expect(await job!.getState()).toBe('completed');
    expect(job!.attemptsMade).toBe(2);
    // The job was cut down to what was undelivered before it was retried.
    expect(tokensIn(job!)).toEqual(undelivered);
    expect(await h.deadLetters()).toHaveLength(0);
  });

  it('does not resend an event Keen refused: it is dead-lettered while the rest of its job retries', async () => {
    // One job of 8 events in two requests of 4; the first event is refused by Keen, and one of
    // the two requests meets a 503.
    const h = await harness({ maxEvents: 4, lingerMs: 20 });
    const refusedDevice = randomDeviceId();
    h.keen.rejectEvents((_c, e) =>
      e.device_id === refusedDevice ? { name: 'InvalidPropertyValueError', description: 'refused for the test' } : undefined,
    );
    h.keen.respondWith({ status: 503, body: { message: 'Keen hiccup', error_code: 'ServiceUnavailableError' } }, { times: 1 });
    const refused = event({ deviceId: refusedDevice });
    const good = events(7);
    const [id] = await h.addJobs([[refused, ...good]]);
    await h.settled();

    const failed = h.sent.slice(0, 2).filter((request) => request.outcome === 503);
    expect(failed).toHaveLength(1);
    const retry = h.sent.slice(2);
    expect(retry).toHaveLength(1);
    expect(sorted(retry[0]!.tokens)).toEqual(sorted(failed[0]!.tokens));
    // Sent once, in the request that failed (then retried), or in the one Keen answered (then
    // dead-lettered at once and never sent again).
    const refusedAt = failed[0]!.tokens.includes(tokenOf(refused)) ? 2 : 1;
    expect(h.sent.filter((request) => request.tokens.includes(tokenOf(refused)))).toHaveLength(refusedAt);
    expectDeliveredOnce(h.keen, good.map(tokenOf));

    const [dead, ...others] = await h.deadLetters();
    expect(others).toHaveLength(0);
    expect(dead!.id).toBe(tokenOf(refused));
    expect(dead!.data).toMatchObject({
      collection: 'devicestate',
      event: refused,
      sourceJobId: id,
      attemptsMade: refusedAt,
      lastError: { code: 'InvalidPropertyValueError' },
    });
    const [job] = await h.finished([id!]);
    expect(await job!.getState()).toBe('completed');
    expect(job!.attemptsMade).toBe(2);
  });

  it('honours a 429’s Retry-After: no request before it ends, no attempt spent, delivered after the wait', async () => {
    const h = await harness({ concurrency: 100, maxEvents: 20, lingerMs: 10 });
    h.keen.respondWith({ status: 429, body: 'Too Many Requests', headers: { 'retry-after': '2' } }, { times: 1 });
    const all = events(100);
    // Jobs of 7 in requests of 20: some jobs straddle the refused request and an accepted one.
    const groups = groupsOf(all, [7]);
    const ids = await h.addJobs(groups);
    await waitFor('100 events at Keen', () => h.keen.eventCount() === 100);
    await h.settled();
    expectDeliveredOnce(h.keen, all.map(tokenOf));

    expect(h.keen.requests.filter((r) => r.status === 429)).toHaveLength(1);
    // Requests already under way when the 429 arrived cannot be recalled; from the moment the
    // worker learned of it, nothing may be sent for the 2 s Keen asked for.
    const learned = h.requestErrors.find(({ err }) => (err as { status?: number }).status === 429)!;
    expect(learned).toBeDefined();
    const later = h.requestStarts.filter((at) => at >= learned.at);
    expect(later.length).toBeGreaterThan(0);
    for (const at of later) expect(at).toBeGreaterThanOrEqual(learned.at + 2000);
    expect(h.requestStarts).toHaveLength(h.keen.requests.length);
    // The refused events were sent again after the wait, and nothing Keen had accepted was.
    const limited = h.sent.find((request) => request.outcome === 429)!;
    expect(limited.tokens.length).toBeGreaterThan(0);
    expect(sorted(answered(h.sent))).toEqual(sorted(all.map(tokenOf)));
    for (const token of limited.tokens) {
      expect(
        h.sent.filter((request) => request.at >= learned.at + 2000 && request.tokens.includes(token)),
        token,
      ).toHaveLength(1);
    }

    // attemptsMade counts the successful attempt: 1 means the 429 spent none. The jobs that had
    // events in the refused request did run again (attemptsStarted).
    const jobs = await h.finished(ids);
    expect(jobs.map((job) => job.attemptsMade)).toEqual(ids.map(() => 1));
    for (const [i, job] of jobs.entries()) {
      expect(await job.getState()).toBe('completed');
      if (groups[i]!.some((e) => limited.tokens.includes(tokenOf(e)))) expect(job.attemptsStarted).toBeGreaterThan(1);
    }
    expect(await h.deadLetters()).toHaveLength(0);
  });

  it.each([
    [401, 'InvalidApiKeyError', 'unauthorized'],
    [402, 'AccountBlockedError', 'account_blocked'],
    [403, 'ForbiddenError', 'forbidden'],
  ])('a %i (%s) pauses delivery: no attempt spent, nothing dead-lettered, all delivered once Keen accepts', async (status, code, fault) => {
    const h = await harness({ maxEvents: 10, probeIntervalMs: 100 });
    h.keen.respondWith({ status, body: { message: `refused with ${status}`, error_code: code } });
    const all = events(30);
    // Fewer attempts than the probes the pause will make: a probe must not spend one.
    const ids = await h.addJobs(groupsOf(all, [5]), { attempts: 2 });
    await waitFor('four refused probes', () => h.keen.requests.filter((r) => r.status === status).length >= 4, 20_000);
    expect(h.pause.fault).toBe(fault);
    expect(await h.deadLetters()).toHaveLength(0);
    expect(await h.queues.keen.getFailedCount()).toBe(0);
    expect(h.keen.eventCount()).toBe(0);

    h.keen.clearFaults();
    await waitFor('30 events at Keen', () => h.keen.eventCount() === 30, 20_000);
    await h.settled();
    expectDeliveredOnce(h.keen, all.map(tokenOf));
    expect(h.pause.fault).toBeUndefined();
    for (const job of await h.finished(ids)) {
      expect(await job.getState()).toBe('completed');
      expect(job.attemptsMade).toBe(1);
    }
    expect(await h.deadLetters()).toHaveLength(0);
    expect(h.logs()).toContain('Keen delivery resumed');
    expect(h.logs()).not.toContain(WRITE_KEY);
  });

  it('times out a request that hangs, retries, and delivers', async () => {
    const h = await harness({ timeoutMs: 500 });
    h.keen.hang({ times: 1 });
    const all = events(20);
    const groups = groupsOf(all, [5]);
    const ids = await h.addJobs(groups);
    await waitFor('20 events at Keen', () => h.keen.eventCount() === 20);
    await h.settled();
    expectDeliveredOnce(h.keen, all.map(tokenOf));
    expect(h.keen.requests.filter((r) => r.fault === 'hang')).toHaveLength(1);
    const timedOut = h.sent.filter((request) => request.outcome === 'ETIMEDOUT');
    expect(timedOut).toHaveLength(1);
    const jobs = await h.finished(ids);
    // The jobs with events in the hung request took a second attempt (attemptsMade counts the successful one).
    for (const [i, job] of jobs.entries()) {
      const hung = groups[i]!.some((e) => timedOut[0]!.tokens.includes(tokenOf(e)));
      expect(job.attemptsMade).toBe(hung ? 2 : 1);
    }
    expect(h.logs()).toContain('timed out after 500 ms');
  });

  it.each([
    ['before Keen stored the events', false],
    ['after Keen stored the events (the answer is lost)', true],
  ])('survives a connection reset %s', async (_when, afterStore) => {
    const h = await harness();
    h.keen.resetConnections({ times: 1, afterStore });
    const all = events(30);
    const ids = await h.addJobs(groupsOf(all, [10]));
    await waitFor('30 events at Keen', () => h.keen.eventCount() === 30);
    await h.settled();
    expectDeliveredOnce(h.keen, all.map(tokenOf));
    const reset = h.keen.requests.find((r) => r.fault === 'reset')!;
    expect(reset).toBeDefined();
    // Resent events Keen already had are dropped by their uniqueness token.
    expect(h.keen.duplicatesDropped).toBe(afterStore ? reset.eventCount : 0);
    for (const job of await h.finished(ids)) expect(await job.getState()).toBe('completed');
    expect(await h.deadLetters()).toHaveLength(0);
  });

  it('dead-letters only the events Keen refused in a bulk response, with their errors, and completes their job', async () => {
    const h = await harness();
    const refusedDevice = randomDeviceId();
    h.keen.rejectEvents((_c, e) =>
      e.device_id === refusedDevice ? { name: 'InvalidPropertyValueError', description: 'state is not allowed here' } : undefined,
    );
    const good = events(40);
    const refused = event({ deviceId: refusedDevice });
    // Keen's own validation: a dotted property name that bypassed toKeenProperties.
    const badName = { ...event(), state: { 'color.h': 0.5 } } as KeenEvent;
    const mixed = [...good.slice(0, 10), refused, ...good.slice(10, 20), badName];
    const [mixedId, goodId] = await h.addJobs([mixed, good.slice(20)]);
    await h.settled();
    expectDeliveredOnce(h.keen, good.map(tokenOf));
    // One round: no event was sent twice.
    expect(h.keen.requests.reduce((n, r) => n + r.eventCount, 0)).toBe(42);

    const dead = await h.deadLetters();
    expect(sorted(dead.map((job) => job.id!))).toEqual(sorted([tokenOf(refused), tokenOf(badName)]));
    const byId = new Map(dead.map((job) => [job.id, job.data]));
    expect(byId.get(tokenOf(refused))).toEqual({
      collection: 'devicestate',
      event: refused,
      sourceJobId: mixedId,
      attemptsMade: 1,
      lastError: { code: 'InvalidPropertyValueError', message: expect.stringContaining('state is not allowed here') },
      failedAt: expect.stringMatching(/^\d{4}-\d{2}-\d{2}T/),
    });
    expect(byId.get(tokenOf(badName))).toMatchObject({
      event: badName,
      sourceJobId: mixedId,
      attemptsMade: 1,
      lastError: { code: 'InvalidPropertyNameError' },
    });

    // Both jobs complete at the first attempt, the mixed one holding all it was given.
    const [mixedJob, goodJob] = await h.finished([mixedId!, goodId!]);
    for (const job of [mixedJob!, goodJob!]) {
      expect(await job.getState()).toBe('completed');
      expect(job.attemptsMade).toBe(1);
    }
    expect(tokensIn(mixedJob!)).toEqual(mixed.map(tokenOf));
    const lines = h
      .logs()
      .split('\n')
      .filter((l) => l.includes('Keen refused the event; dead-lettered'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines).toHaveLength(2);
    expect(lines).toContainEqual(
      expect.objectContaining({ job_id: mixedId, collection: 'devicestate', device_id: refusedDevice, code: 'InvalidPropertyValueError' }),
    );
  });

  it('dead-letters every event of a request refused with a permanent 400 at once, with the original event and last error', async () => {
    const h = await harness();
    h.keen.respondWith({ status: 400, body: { message: 'Malformed event payload', error_code: 'InvalidEventError' } }, { times: 1 });
    const originals = events(3);
    const [id] = await h.addJobs([originals]);
    await h.settled();

    const dead = await h.deadLetters();
    expect(sorted(dead.map((job) => job.id!))).toEqual(sorted(originals.map(tokenOf)));
    for (const original of originals) {
      expect(dead.find((job) => job.id === tokenOf(original))!.data).toEqual({
        collection: 'devicestate',
        event: original,
        sourceJobId: id,
        attemptsMade: 1,
        lastError: { message: expect.stringContaining('Malformed event payload'), status: 400, code: 'InvalidEventError' },
        failedAt: expect.stringMatching(/^\d{4}-\d{2}-\d{2}T/),
      });
    }
    // Nothing is left to deliver, so the job completes: its events are in keen-dead-letter.
    const job = (await h.finished([id!]))[0]!;
    expect(await job.getState()).toBe('completed');
    expect(job.attemptsMade).toBe(1);
    expect(h.keen.requests).toHaveLength(1);
    expect(h.keen.eventCount()).toBe(0);

    const logs = h.logs();
    const lines = logs
      .split('\n')
      .filter((l) => l.includes('dead-lettered'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines).toHaveLength(3);
    for (const original of originals) {
      expect(lines).toContainEqual(
        expect.objectContaining({
          job_id: id,
          collection: 'devicestate',
          device_id: original.device_id,
          status: 400,
          code: 'InvalidEventError',
        }),
      );
    }
    expect(logs).not.toContain(WRITE_KEY);
  });

  it('dead-letters an event over 900,000 bytes without sending it, and delivers the rest of its job', async () => {
    const h = await harness();
    const huge = event({ state: { blob: 'x'.repeat(950_000) } });
    const small = event();
    const [id] = await h.addJobs([[huge, small]]);
    await h.settled();
    const [dead, ...others] = await h.deadLetters();
    expect(others).toHaveLength(0);
    expect(dead?.id).toBe(tokenOf(huge));
    expect(dead?.data).toMatchObject({ sourceJobId: id, attemptsMade: 1, lastError: { code: 'EventTooLargeError' } });
    expect(h.sent.map((request) => request.tokens)).toEqual([[tokenOf(small)]]);
    expectDeliveredOnce(h.keen, [tokenOf(small)]);
    expect(await (await h.finished([id!]))[0]!.getState()).toBe('completed');
  });

  it('dead-letters every event of jobs whose attempts run out on a persistent 503', async () => {
    const h = await harness();
    h.keen.respondWith({ status: 503, body: { message: 'still down', error_code: 'ServiceUnavailableError' } });
    const all = events(5);
    const groups = groupsOf(all, [3, 2]);
    const ids = await h.addJobs(groups, { attempts: 3, backoff: { type: JITTERED_BACKOFF, delay: 20 } });
    await waitFor('5 dead letters', async () => (await h.deadLetters()).length === 5);
    await h.settled();

    const dead = await h.deadLetters();
    expect(sorted(dead.map((job) => job.id!))).toEqual(sorted(all.map(tokenOf)));
    for (const job of dead) {
      const source = ids[groups.findIndex((group) => group.some((e) => tokenOf(e) === job.id))]!;
      expect(job.data).toMatchObject({
        sourceJobId: source,
        attemptsMade: 3,
        lastError: { status: 503, code: 'ServiceUnavailableError', message: expect.stringContaining('still down') },
      });
      expect(job.data.event).toEqual(all.find((e) => tokenOf(e) === job.id));
    }
    for (const job of await h.finished(ids)) {
      expect(await job.getState()).toBe('failed');
      expect(job.attemptsMade).toBe(3);
      expect(job.failedReason).toContain('still down');
    }
    expect(h.keen.requests.length).toBeGreaterThanOrEqual(3);
    expect(h.keen.eventCount()).toBe(0);
    expect(h.logs()).not.toContain(WRITE_KEY);
  });

  it('when attempts run out after a partial success, dead-letters only the undelivered events, with the last error', async () => {
    // 12 events in requests of 4: the first two requests meet a 503, the third is accepted;
    // then Keen answers 500 until the job's 3 attempts are spent.
    const h = await harness({ maxEvents: 4, lingerMs: 20 });
    h.keen.respondWith({ status: 503, body: { message: 'brief outage', error_code: 'ServiceUnavailableError' } }, { times: 2 });
    const all = events(12);
    const [id] = await h.addJobs([all], { attempts: 3, backoff: { type: JITTERED_BACKOFF, delay: 1000 } });
    await waitFor(
      'the first attempt answered',
      () => h.sent.length >= 3 && h.sent.slice(0, 3).every((request) => request.outcome !== undefined),
      10_000,
      10,
    );
    h.keen.respondWith({ status: 500, body: { message: 'still broken', error_code: 'InternalServerError' } });
    await waitFor('8 dead letters', async () => (await h.deadLetters()).length === 8, 20_000);
    await h.settled();

    const first = h.sent.slice(0, 3);
    expect(first.map((request) => request.outcome).sort()).toEqual([200, 503, 503]);
    const delivered = first.find((request) => request.outcome === 200)!.tokens;
    const undelivered = all.map(tokenOf).filter((token) => !delivered.includes(token));
    expectDeliveredOnce(h.keen, delivered);
    // Each retry sent the 8 undelivered events, and only those (each 500 split in halves, down to single events).
    const retries = h.sent.slice(3);
    expect(retries.length).toBeGreaterThanOrEqual(2);
    for (const request of retries) expect(request.outcome).toBe(500);
    expect(sorted([...new Set(retries.flatMap((request) => request.tokens))])).toEqual(sorted(undelivered));
    expect(retries.filter((request) => request.tokens.length === 1)).toHaveLength(2 * undelivered.length);

    const dead = await h.deadLetters();
    expect(sorted(dead.map((job) => job.id!))).toEqual(sorted(undelivered));
    for (const job of dead) {
      expect(job.data).toMatchObject({
        sourceJobId: id,
        attemptsMade: 3,
        lastError: { status: 500, code: 'InternalServerError', message: expect.stringContaining('still broken') },
      });
      expect(job.data.event).toEqual(all.find((e) => tokenOf(e) === job.id));
    }
    const [job] = await h.finished([id!]);
    expect(await job!.getState()).toBe('failed');
    expect(job!.attemptsMade).toBe(3);
    expect(job!.failedReason).toContain('still broken');
    expect(sorted(tokensIn(job!))).toEqual(sorted(undelivered));
  });
});
