/**
 * Dead letters against a real Redis: one per Keen event, under its uniqueness token, parked in
 * the Failed list with Keen's error; redriven when retried into keen-delivery as a job of that
 * one event, whose id is the token; and the `npm run dlq` CLI run as its own process (list,
 * redrive, purge, exit codes).
 */
import { spawn } from 'node:child_process';
import { UnrecoverableError, Worker } from 'bullmq';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { deviceStateEvent, type KeenCollection } from '../../src/shared/events.js';
import type { DeadLetterJob, KeenDeliveryJob, KeenEventRecord } from '../../src/shared/jobs.js';
import { createLogger } from '../../src/shared/logger.js';
import { connectRedis, JITTERED_BACKOFF, openQueues, QUEUE_NAMES, type PipelineQueues } from '../../src/shared/queues.js';
import { createDeadLetterWorker, redriveDeadLetter } from '../../src/worker/dead-letter-worker.js';
import { KeenBatcher } from '../../src/worker/keen/batcher.js';
import { KeenClient } from '../../src/worker/keen/client.js';
import { createKeenDeliveryWorker } from '../../src/worker/keen/delivery-worker.js';
import { startFakeKeen } from '../support/fake-keen.js';
import { randomDeviceId, randomPrefix } from '../support/ids.js';
import { ROOT, sleep, waitFor } from '../support/processes.js';

const services = inject('services');
const logger = createLogger('dead-letter-test', 'silent');

let counter = 0;
/** A dead letter as the Keen delivery worker writes it: job id = the event's uniqueness token. */
function deadLetterFor(deviceId = randomDeviceId(), collection: KeenCollection = 'devicestate', error = 'Keen rejected the event: InvalidPropertyNameError: Property names cannot contain "."'): DeadLetterJob {
  counter += 1;
  const token = `${randomPrefix('job')}-${counter}-${collection}`;
  const event = deviceStateEvent(deviceId, { on: true, brightness: 0.5 }, new Date().toISOString(), token);
  return { collection, event, sourceJobId: token, attemptsMade: 12, lastError: { message: error, status: 400, code: 'InvalidPropertyNameError' }, failedAt: new Date().toISOString() };
}

const tokenOf = (data: KeenEventRecord) => data.event.keen.uniqueness_token;
/** A keen-delivery job of this one event, as a redrive adds it. */
const deliveryOf = (data: KeenEventRecord): KeenDeliveryJob => ({ events: [{ collection: data.collection, event: data.event }] });

async function addDeadLetter(queues: PipelineQueues, data: DeadLetterJob): Promise<string> {
  await queues.deadLetter.add(data.collection, data, { jobId: tokenOf(data) });
  return tokenOf(data);
}

async function stateOf(queue: PipelineQueues['deadLetter'] | PipelineQueues['keen'], id: string): Promise<string> {
  const job = await queue.getJob(id);
  return job ? job.getState() : 'missing';
}

const parked = (queues: PipelineQueues, id: string) =>
  waitFor(`dead letter ${id} parked`, async () => {
    // State first: a job read before it failed would carry no failure reason.
    if ((await queues.deadLetter.getJobState(id)) !== 'failed') return undefined;
    return queues.deadLetter.getJob(id);
  });

/** Runs `npm run dlq -- ...` as its own process. */
function dlq(prefix: string, args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/dlq/main.ts', ...args], {
      cwd: ROOT,
      env: { PATH: process.env.PATH, REDIS_URL: services.redis, QUEUE_PREFIX: prefix, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

describe('dead-letter worker', () => {
  const prefix = randomPrefix('dlq');
  let redis: Redis;
  let queues: PipelineQueues;
  let worker: Worker<DeadLetterJob>;

  beforeAll(async () => {
    redis = await connectRedis(services.redis);
    queues = openQueues(redis, prefix);
    worker = createDeadLetterWorker({ connection: redis, prefix, queues, logger });
  });
  afterAll(async () => {
    await worker?.close();
    await queues?.close();
    redis?.disconnect();
  });

  it('parks a new dead letter in Failed with the Keen error as its reason', async () => {
    const data = deadLetterFor();
    const id = await addDeadLetter(queues, data);
    const job = await parked(queues, id);
    expect(job.failedReason).toBe(data.lastError.message);
    expect(job.data).toEqual({ ...data, parked: true });
    // Parking sent nothing to Keen.
    expect(await queues.keen.getJob(id)).toBeUndefined();
  });

  it('redrives a retried dead letter into keen-delivery under the same uniqueness token, and lets it go', async () => {
    const data = deadLetterFor();
    const id = await addDeadLetter(queues, data);
    const job = await parked(queues, id);
    await job.retry('failed');

    const delivery = await waitFor('the event back in keen-delivery', () => queues.keen.getJob(tokenOf(data)));
    expect(delivery.id).toBe(tokenOf(data));
    expect(delivery.name).toBe(data.collection);
    expect(delivery.data).toEqual({ events: [{ collection: data.collection, event: data.event }] });
    expect(delivery.data.events[0]!.event.keen.uniqueness_token).toBe(tokenOf(data));
    expect(await delivery.getState()).toBe('waiting');
    // A redriven dead letter is removed, so the same event can be dead-lettered again if it fails again.
    await waitFor('the redriven dead letter removed', async () => (await stateOf(queues.deadLetter, id)) === 'missing');
    await queues.deadLetter.add(data.collection, data, { jobId: id });
    await parked(queues, id);
  });

  it('replaces the old failed delivery job that has the same id', async () => {
    const data = deadLetterFor();
    const token = tokenOf(data);
    // An earlier redrive of the event that gave up: failed in keen-delivery under the token.
    await queues.keen.add(data.collection, deliveryOf(data), { jobId: token });
    const giveUp = new Worker<KeenDeliveryJob>(QUEUE_NAMES.keen, async (job) => {
      if (job.id === token) throw new UnrecoverableError('Keen said no');
    }, { connection: redis, prefix });
    await waitFor('the old delivery job failed', async () => (await stateOf(queues.keen, token)) === 'failed');
    await giveUp.close();
    const old = (await queues.keen.getJob(token))!;
    expect(old.failedReason).toBe('Keen said no');

    await addDeadLetter(queues, data);
    const job = await parked(queues, token);
    await job.retry('failed');

    const fresh = await waitFor('a fresh delivery job', async () => {
      const candidate = await queues.keen.getJob(token);
      return candidate && (await candidate.getState()) === 'waiting' ? candidate : undefined;
    });
    expect(fresh.id).toBe(token);
    expect(fresh.attemptsMade).toBe(0);
    expect(fresh.failedReason).toBeFalsy();
    expect(fresh.timestamp).toBeGreaterThan(old.timestamp);
    expect(fresh.data).toEqual(deliveryOf(data));
    expect((await queues.keen.getJobs(['failed'])).map((job) => job.id)).not.toContain(token);
  });

  it('adds no second copy when the event is already waiting in keen-delivery', async () => {
    const data = deadLetterFor();
    const token = tokenOf(data);
    await queues.keen.add(data.collection, deliveryOf(data), { jobId: token });
    const outcome = await redriveDeadLetter(queues.keen, { ...data, parked: true });
    expect(outcome).toEqual({ jobId: token, outcome: 'already-queued', state: 'waiting' });
    expect((await queues.keen.getJobs(['waiting'])).filter((job) => job.id === token)).toHaveLength(1);
  });

  it('parks, rather than redrives, a dead letter marked parked by a worker that died before failing it', async () => {
    const data = { ...deadLetterFor(), parked: true };
    const id = await addDeadLetter(queues, data);
    const job = await parked(queues, id);
    expect(job.failedReason).toBe(data.lastError.message);
    expect(await queues.keen.getJob(id)).toBeUndefined();
  });

  it('with the real Keen delivery worker: the refused event of a job dead-lettered by Keen, parked, redriven, delivered once', async () => {
    const keen = await startFakeKeen({ projectId: 'dlq-project', writeKey: 'dlq-write-key' });
    const batcher = new KeenBatcher({ client: new KeenClient({ apiUrl: keen.url, projectId: keen.projectId, writeKey: keen.writeKey, timeoutMs: 2000 }), maxEvents: 50, lingerMs: 5 });
    const delivery = createKeenDeliveryWorker({ connection: redis, prefix, queues, batcher, concurrency: 10, logger });
    try {
      const deviceId = randomDeviceId();
      keen.rejectEvents((_collection, event) => (event.device_id === deviceId ? { name: 'InvalidPropertyValueError', description: 'refused for the test' } : undefined));
      // A job as the registry worker writes it: the events of one ingest job, one of them refused.
      // (Earlier tests of this file left redriven events in keen-delivery: only this job's count.)
      const ingestId = randomPrefix('ingest');
      const ours = () => keen.tokens('devicestate').filter((t) => t.startsWith(ingestId));
      const sourceJobId = `${ingestId}-keen`;
      const token = `${ingestId}-1-devicestate`;
      const event = deviceStateEvent(deviceId, { on: true }, new Date().toISOString(), token);
      const others = [2, 3].map((n) => deviceStateEvent(randomDeviceId(), { on: false }, new Date().toISOString(), `${ingestId}-${n}-devicestate`));
      await queues.keen.add('devicestate', { events: [event, ...others].map((e) => ({ collection: 'devicestate' as const, event: e })) }, { jobId: sourceJobId });

      const job = await parked(queues, token);
      expect(job.failedReason).toContain('InvalidPropertyValueError');
      expect(job.data).toMatchObject({ collection: 'devicestate', event, sourceJobId, attemptsMade: 1, lastError: { code: 'InvalidPropertyValueError' } });
      expect(job.data.lastError.message).toBe(job.failedReason);
      // The others were accepted and the job completed; only the refused event is a dead letter.
      expect(await waitFor('the source job completed', async () => (await stateOf(queues.keen, sourceJobId)) === 'completed')).toBe(true);
      expect(ours().sort()).toEqual(others.map((e) => e.keen.uniqueness_token).sort());
      expect((await queues.deadLetter.getJobs(['failed', 'waiting', 'active'])).map((j) => j.id).filter((id) => id?.startsWith(ingestId))).toEqual([token]);

      keen.clearFaults();
      await job.retry('failed');
      await waitFor('the event stored by Keen', () => keen.tokens('devicestate').includes(token));
      expect(await waitFor('the delivery completed', async () => (await stateOf(queues.keen, token)) === 'completed')).toBe(true);
      expect((await queues.keen.getJob(token))!.data).toEqual(deliveryOf(job.data));
      expect(ours().sort()).toEqual([token, ...others.map((e) => e.keen.uniqueness_token)].sort());
      expect(keen.duplicatesDropped).toBe(0);

      // Redriving an event Keen already took sends it again under its token: Keen drops it.
      await redriveDeadLetter(queues.keen, { ...job.data, parked: true });
      await waitFor('the second copy sent', () => keen.duplicatesDropped === 1);
      expect(keen.tokens('devicestate').filter((t) => t === token)).toHaveLength(1);
    } finally {
      await delivery.close();
      await batcher.close();
      await keen.close();
    }
  });

  it('with the real Keen delivery worker: attempts run out, every event of the job dead-lettered, each redriven and delivered once', async () => {
    const keen = await startFakeKeen({ projectId: 'dlq-project', writeKey: 'dlq-write-key' });
    const batcher = new KeenBatcher({ client: new KeenClient({ apiUrl: keen.url, projectId: keen.projectId, writeKey: keen.writeKey, timeoutMs: 2000 }), maxEvents: 50, lingerMs: 5 });
    const delivery = createKeenDeliveryWorker({ connection: redis, prefix, queues, batcher, concurrency: 10, logger });
    try {
      keen.respondWith({ status: 503, body: { message: 'down for the test', error_code: 'ServiceUnavailableError' } });
      const ingestId = randomPrefix('ingest');
      const ours = () => keen.tokens('devicestate').filter((t) => t.startsWith(ingestId));
      const sourceJobId = `${ingestId}-keen`;
      const events = [1, 2, 3].map((n) => deviceStateEvent(randomDeviceId(), { on: true }, new Date().toISOString(), `${ingestId}-${n}-devicestate`));
      const tokens = events.map((e) => e.keen.uniqueness_token);
      await queues.keen.add('devicestate', { events: events.map((e) => ({ collection: 'devicestate' as const, event: e })) }, { jobId: sourceJobId, attempts: 2, backoff: { type: JITTERED_BACKOFF, delay: 20 } });

      const letters = await Promise.all(tokens.map((token) => parked(queues, token)));
      for (const [i, letter] of letters.entries()) {
        expect(letter.data).toMatchObject({ collection: 'devicestate', event: events[i], sourceJobId, attemptsMade: 2, lastError: { status: 503, code: 'ServiceUnavailableError' } });
        expect(letter.failedReason).toContain('down for the test');
      }
      expect(await waitFor('the source job failed', async () => (await stateOf(queues.keen, sourceJobId)) === 'failed')).toBe(true);
      expect(ours()).toEqual([]);

      keen.clearFaults();
      for (const letter of letters) await letter.retry('failed');
      await waitFor('every event stored by Keen', () => ours().length === 3);
      for (const token of tokens) {
        expect(await waitFor(`${token} delivered`, async () => (await stateOf(queues.keen, token)) === 'completed')).toBe(true);
        await waitFor(`${token} no longer a dead letter`, async () => (await stateOf(queues.deadLetter, token)) === 'missing');
      }
      expect(ours().sort()).toEqual([...tokens].sort());
      expect(keen.duplicatesDropped).toBe(0);
      // The job that gave up stays as the trail, untouched by the redrives.
      expect(await stateOf(queues.keen, sourceJobId)).toBe('failed');
    } finally {
      await delivery.close();
      await batcher.close();
      await keen.close();
    }
  });
});

describe('npm run dlq', () => {
  const prefix = randomPrefix('dlqcli');
  let redis: Redis;
  let queues: PipelineQueues;

  const startWorker = () => createDeadLetterWorker({ connection: redis, prefix, queues, logger });

  beforeAll(async () => {
    redis = await connectRedis(services.redis);
    queues = openQueues(redis, prefix);
  });
  afterAll(async () => {
    await queues?.close();
    redis?.disconnect();
  });

  it('refuses bad arguments with a usage line and exit code 1', async () => {
    const cases = [[], ['bogus'], ['list', 'extra'], ['redrive'], ['redrive', '--all', 'some-id'], ['redrive', '--bogus'], ['purge'], ['purge', '--older-than', '7x'], ['purge', '--older-than', '7d', 'extra']];
    const results = await Promise.all(cases.map((args) => dlq(prefix, args)));
    for (const [i, result] of results.entries()) {
      expect(result.code, `dlq ${cases[i]!.join(' ')}`).toBe(1);
      expect(result.stderr).toMatch(/^dlq: .+\nusage: npm run dlq -- list \| redrive/);
      expect(result.stdout).toBe('');
    }
  });

  it('says in one line when Redis cannot be reached (exit 1)', async () => {
    const result = await dlq(prefix, ['list'], { REDIS_URL: 'redis://127.0.0.1:1' });
    expect(result.code).toBe(1);
    expect(result.stderr.trim().split('\n')).toHaveLength(1);
    expect(result.stderr).toContain('cannot reach Redis at REDIS_URL=redis://127.0.0.1:1');
  });

  it('lists, redrives and purges dead letters', async () => {
    expect(await dlq(prefix, ['list'])).toMatchObject({ code: 0, stdout: `no dead letters in ${prefix}:${QUEUE_NAMES.deadLetter}\n` });

    const devices = [randomDeviceId(), randomDeviceId(), randomDeviceId()];
    const letters = [deadLetterFor(devices[0], 'devicestate', 'Keen answered 503: Service Unavailable'), deadLetterFor(devices[1], 'activations'), deadLetterFor(devices[2], 'devicemonitoring')];
    let worker = startWorker();
    for (const data of letters) await parked(queues, await addDeadLetter(queues, data));
    await worker.close();

    const listed = await dlq(prefix, ['list']);
    expect(listed.code).toBe(0);
    const lines = listed.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^ID\s+STATE\s+COLLECTION\s+DEVICE_ID\s+ATTEMPTS\s+FAILED_AT\s+LAST_ERROR$/);
    expect(lines).toHaveLength(5);
    for (const data of letters) {
      const line = lines.find((l) => l.startsWith(tokenOf(data)));
      expect(line, tokenOf(data)).toBeDefined();
      const cells = line!.split(/\s{2,}/);
      expect(cells.slice(0, 6)).toEqual([tokenOf(data), 'parked', data.collection, data.event.device_id, '12', data.failedAt]);
      expect(line!.endsWith(data.lastError.message)).toBe(true);
    }
    expect(lines[4]).toBe(`3 dead letters in ${prefix}:${QUEUE_NAMES.deadLetter}: 3 parked`);

    // Without a worker: queued, and it says when the redrive will happen.
    const [first, second, third] = letters.map(tokenOf) as [string, string, string];
    const queued = await dlq(prefix, ['redrive', first]);
    expect(queued.code).toBe(0);
    expect(queued.stdout).toContain(`queued for redrive: ${first}\n`);
    expect(queued.stdout).toContain('no worker is consuming keen-dead-letter now: the redrive happens when one runs (npm run worker)');
    expect(queued.stdout).toContain('redrive: 0 redriven, 1 queued, 0 failed, 0 not found');
    expect(await stateOf(queues.keen, first)).toBe('missing');

    worker = startWorker();
    try {
      await waitFor('the queued redrive done by the worker', async () => (await stateOf(queues.keen, first)) === 'waiting');
      expect((await queues.keen.getJob(first))!.data).toEqual(deliveryOf(letters[0]!));

      // A named id that is not a dead letter: the others are redriven, exit code 2.
      const partly = await dlq(prefix, ['redrive', second, 'no-such-dead-letter']);
      expect(partly.code).toBe(2);
      expect(partly.stderr).toContain('no-such-dead-letter: not found in keen-dead-letter');
      expect(partly.stdout).toContain(`redriven: ${second} -> keen-delivery job ${second} (waiting)`);
      expect(partly.stdout).toContain('redrive: 1 redriven, 0 queued, 0 failed, 1 not found');

      const all = await dlq(prefix, ['redrive', '--all']);
      expect(all.code).toBe(0);
      expect(all.stdout).toContain(`redriven: ${third} -> keen-delivery job ${third} (waiting)`);
      expect(all.stdout).toContain('redrive: 1 redriven, 0 queued, 0 failed, 0 not found');
      expect(await dlq(prefix, ['redrive', '--all'])).toMatchObject({ code: 0, stdout: 'no parked dead letters to redrive\n' });
      for (const token of [first, second, third]) expect(await stateOf(queues.keen, token)).toBe('waiting');

      // Purge: nothing is older than an hour; everything is older than a second, a second later.
      const fresh = [deadLetterFor(), deadLetterFor()];
      for (const data of fresh) await parked(queues, await addDeadLetter(queues, data));
      expect(await dlq(prefix, ['purge', '--older-than', '1h'])).toMatchObject({ code: 0, stdout: 'purged 0 dead letters older than 1h (0 parked, 0 not parked yet, 0 already redriven)\n' });
      expect(await queues.deadLetter.getFailedCount()).toBe(2);
      await sleep(1100);
      expect(await dlq(prefix, ['purge', '--older-than=1s'])).toMatchObject({ code: 0, stdout: 'purged 2 dead letters older than 1s (2 parked, 0 not parked yet, 0 already redriven)\n' });
      expect(await queues.deadLetter.getFailedCount()).toBe(0);
      expect((await dlq(prefix, ['list'])).stdout).toBe(`no dead letters in ${prefix}:${QUEUE_NAMES.deadLetter}\n`);
    } finally {
      await worker.close();
    }
  });

  it('exits 2 when a named id is not a parked dead letter', async () => {
    const result = await dlq(prefix, ['redrive', 'nothing-here']);
    expect(result).toMatchObject({ code: 2 });
    expect(result.stderr).toBe('nothing-here: not found in keen-dead-letter\n');
    expect(result.stdout).toBe('redrive: 0 redriven, 0 queued, 0 failed, 1 not found\n');
  });
});
