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
import { openQueues, QUEUE_NAMES, queueKey, type PipelineQueues } from '../../src/shared/queues.js';
import { JITTERED_BACKOFF } from '../../src/shared/backoff.js';
import { createDeadLettersWorker, redriveDeadLetter } from '../../src/worker/stages/dead-letters-worker.js';
import { KeenBatcher } from '../../src/worker/keen/batcher.js';
import { KeenClient } from '../../src/worker/keen/client.js';
import { createKeenDeliveryWorker } from '../../src/worker/stages/keen-delivery-worker.js';
import { startFakeKeen } from '../support/fake-keen.js';
import { randomDeviceId, randomPrefix } from '../support/ids.js';
import { ROOT, sleep, waitFor } from '../support/processes.js';
import { connectRedis } from '../../src/shared/redis.js';

const services = inject('services');
const logger = createLogger('dead-letter-test', 'silent');

let counter = 0;
/** A dead letter as the Keen delivery worker writes it: job id = the event's uniqueness token. */
function deadLetterFor(
  deviceId = randomDeviceId(),
  collection: KeenCollection = 'devicestate',
  error = 'Keen rejected the event: InvalidPropertyNameError: Property names cannot contain "."',
): DeadLetterJob {
  counter += 1;
  const token = `${randomPrefix('job')}-${counter}-${collection}`;
  const event = deviceStateEvent(deviceId, { on: true, brightness: 0.5 }, new Date().toISOString(), token);
  return {
    collection,
    event,
    sourceJobId: token,
    attemptsMade: 12,
    lastError: { message: error, status: 400, code: 'InvalidPropertyNameError' },
    failedAt: new Date().toISOString(),
  };
}

const tokenOf = (data: KeenEventRecord) => data.event.keen.uniqueness_token;
/** A keen-delivery job of this one event, as a redrive adds it. */
const deliveryOf = (data: KeenEventRecord): KeenDeliveryJob => ({ events: [{ collection: data.collection, event: data.event }] });
/** The keen-delivery job a redrive adds: the one event, carrying its redrive history. */
const redrivenDeliveryOf = (data: KeenEventRecord, count = 1) => ({
  events: [{ collection: data.collection, event: data.event, redrives: { count, lastAt: expect.stringMatching(/^\d{4}-\d\d-\d\dT/) } }],
});

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
function dlq(
  prefix: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
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
    worker = createDeadLettersWorker({ connection: redis, queues, logger });
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
    expect(delivery.data).toEqual(redrivenDeliveryOf(data));
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
    const giveUp = new Worker<KeenDeliveryJob>(
      queueKey(QUEUE_NAMES.keen),
      async (job) => {
        if (job.id === token) throw new UnrecoverableError('Keen said no');
      },
      { connection: redis, prefix },
    );
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
    expect(fresh.data).toEqual(redrivenDeliveryOf(data));
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
    const batcher = new KeenBatcher({
      client: new KeenClient({ apiUrl: keen.url, projectId: keen.projectId, writeKey: keen.writeKey, timeoutMs: 2000 }),
      maxEvents: 50,
      lingerMs: 5,
    });
    const delivery = createKeenDeliveryWorker({ connection: redis, prefix, queues, batcher, concurrency: 10, logger });
    try {
      const deviceId = randomDeviceId();
      keen.rejectEvents((_collection, event) =>
        event.device_id === deviceId ? { name: 'InvalidPropertyValueError', description: 'refused for the test' } : undefined,
      );
      // A job as the registry worker writes it: the events of one ingest job, one of them refused.
      // (Earlier tests of this file left redriven events in keen-delivery: only this job's count.)
      const ingestId = randomPrefix('ingest');
      const ours = () => keen.tokens('devicestate').filter((t) => t.startsWith(ingestId));
      const sourceJobId = `${ingestId}-keen`;
      const token = `${ingestId}-1-devicestate`;
      const event = deviceStateEvent(deviceId, { on: true }, new Date().toISOString(), token);
      const others = [2, 3].map((n) =>
        deviceStateEvent(randomDeviceId(), { on: false }, new Date().toISOString(), `${ingestId}-${n}-devicestate`),
      );
      await queues.keen.add(
        'devicestate',
        { events: [event, ...others].map((e) => ({ collection: 'devicestate' as const, event: e })) },
        { jobId: sourceJobId },
      );

      const job = await parked(queues, token);
      expect(job.failedReason).toContain('InvalidPropertyValueError');
      expect(job.data).toMatchObject({
        collection: 'devicestate',
        event,
        sourceJobId,
        attemptsMade: 1,
        lastError: { code: 'InvalidPropertyValueError' },
      });
      expect(job.data.lastError.message).toBe(job.failedReason);
      // The others were accepted and the job completed; only the refused event is a dead letter.
      expect(await waitFor('the source job completed', async () => (await stateOf(queues.keen, sourceJobId)) === 'completed')).toBe(true);
      expect(ours().sort()).toEqual(others.map((e) => e.keen.uniqueness_token).sort());
      expect(
        (await queues.deadLetter.getJobs(['failed', 'waiting', 'active'])).map((j) => j.id).filter((id) => id?.startsWith(ingestId)),
      ).toEqual([token]);

      keen.clearFaults();
      await job.retry('failed');
      await waitFor('the event stored by Keen', () => keen.tokens('devicestate').includes(token));
      expect(await waitFor('the delivery completed', async () => (await stateOf(queues.keen, token)) === 'completed')).toBe(true);
      expect((await queues.keen.getJob(token))!.data).toEqual(redrivenDeliveryOf(job.data));
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
    const batcher = new KeenBatcher({
      client: new KeenClient({ apiUrl: keen.url, projectId: keen.projectId, writeKey: keen.writeKey, timeoutMs: 2000 }),
      maxEvents: 50,
      lingerMs: 5,
    });
    const delivery = createKeenDeliveryWorker({ connection: redis, prefix, queues, batcher, concurrency: 10, logger });
    try {
      keen.respondWith({ status: 503, body: { message: 'down for the test', error_code: 'ServiceUnavailableError' } });
      const ingestId = randomPrefix('ingest');
      const ours = () => keen.tokens('devicestate').filter((t) => t.startsWith(ingestId));
      const sourceJobId = `${ingestId}-keen`;
      const events = [1, 2, 3].map((n) =>
        deviceStateEvent(randomDeviceId(), { on: true }, new Date().toISOString(), `${ingestId}-${n}-devicestate`),
      );
      const tokens = events.map((e) => e.keen.uniqueness_token);
      await queues.keen.add(
        'devicestate',
        { events: events.map((e) => ({ collection: 'devicestate' as const, event: e })) },
        { jobId: sourceJobId, attempts: 2, backoff: { type: JITTERED_BACKOFF, delay: 20 } },
      );

      const letters = await Promise.all(tokens.map((token) => parked(queues, token)));
      for (const [i, letter] of letters.entries()) {
        expect(letter.data).toMatchObject({
          collection: 'devicestate',
          event: events[i],
          sourceJobId,
          attemptsMade: 2,
          lastError: { status: 503, code: 'ServiceUnavailableError' },
        });
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

/** Runs the CLI under a pseudo-terminal (util-linux `script`), typing `answer` at its prompt. */
function dlqOnTerminal(prefix: string, args: string[], answer: string): Promise<{ code: number | null; output: string }> {
  const command = [process.execPath, '--import', 'tsx', 'src/dlq/main.ts', ...args]
    .map((part) => `'${part.replace(/'/g, `'\\''`)}'`)
    .join(' ');
  return new Promise((resolve) => {
    const child = spawn('script', ['-qec', command, '/dev/null'], {
      cwd: ROOT,
      env: { PATH: process.env.PATH, REDIS_URL: services.redis, QUEUE_PREFIX: prefix },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let output = '';
    let answered = false;
    const collect = (chunk: Buffer) => {
      output += chunk.toString();
      if (!answered && output.includes('[y/N]')) {
        answered = true;
        child.stdin.write(`${answer}\n`);
      }
    };
    child.stdout.on('data', collect);
    child.stderr.on('data', collect);
    child.on('close', (code) => resolve({ code, output }));
  });
}

/** The JSON lines of a CLI's stderr (the audit line), parsed. */
const jsonLines = (text: string) =>
  text
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as Record<string, unknown>);

describe('npm run dlq', () => {
  const prefix = randomPrefix('dlqcli');
  let redis: Redis;
  let queues: PipelineQueues;

  const startWorker = () => createDeadLettersWorker({ connection: redis, queues, logger });
  const parkAll = async (letters: DeadLetterJob[]) => {
    const worker = startWorker();
    try {
      for (const data of letters) await parked(queues, await addDeadLetter(queues, data));
    } finally {
      await worker.close();
    }
    return letters.map(tokenOf);
  };

  beforeAll(async () => {
    redis = await connectRedis(services.redis);
    queues = openQueues(redis, prefix);
  });
  afterAll(async () => {
    await queues?.close();
    redis?.disconnect();
  });

  it('refuses bad arguments with a usage line and exit code 1', async () => {
    const cases = [
      [],
      ['bogus'],
      ['list', 'extra'],
      ['redrive'],
      ['redrive', '--all', 'some-id'],
      ['redrive', '--bogus'],
      ['purge'],
      ['purge', '--older-than', '7x'],
      ['purge', '--older-than', '7d', 'extra'],
      ['purge', '--older-than', '0s', '--yes'],
      ['purge', '--older-than=0d'],
    ];
    const results = await Promise.all(cases.map((args) => dlq(prefix, args)));
    for (const [i, result] of results.entries()) {
      expect(result.code, `dlq ${cases[i]!.join(' ')}`).toBe(1);
      expect(result.stderr).toMatch(/^dlq: .+\nusage: npm run dlq -- list \| redrive/);
      expect(result.stdout).toBe('');
    }
    expect(results[9]!.stderr).toContain('would purge every dead letter, even one dead-lettered a moment ago: give an age above zero');
  });

  it('says in one line when Redis cannot be reached (exit 1)', async () => {
    const result = await dlq(prefix, ['list'], { REDIS_URL: 'redis://127.0.0.1:1' });
    expect(result.code).toBe(1);
    expect(result.stderr.trim().split('\n')).toHaveLength(1);
    expect(result.stderr).toContain('cannot reach Redis at REDIS_URL=redis://127.0.0.1:1');
  });

  it('lists dead letters; without a worker a redrive is still queued (exit 3), and a worker then does it', async () => {
    expect(await dlq(prefix, ['list'])).toMatchObject({ code: 0, stdout: `no dead letters in ${prefix}:${QUEUE_NAMES.deadLetter}\n` });

    const devices = [randomDeviceId(), randomDeviceId(), randomDeviceId()];
    const letters = [
      deadLetterFor(devices[0], 'devicestate', 'Keen answered 503: Service Unavailable'),
      deadLetterFor(devices[1], 'activations'),
      deadLetterFor(devices[2], 'devicemonitoring'),
    ];
    const [first, second, third] = (await parkAll(letters)) as [string, string, string];

    const listed = await dlq(prefix, ['list']);
    expect(listed.code).toBe(0);
    const lines = listed.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^ID\s+STATE\s+COLLECTION\s+DEVICE_ID\s+ATTEMPTS\s+FAILED_AT\s+REDRIVES\s+LAST_REDRIVE\s+LAST_ERROR$/);
    expect(lines).toHaveLength(5);
    for (const data of letters) {
      const line = lines.find((l) => l.startsWith(tokenOf(data)));
      expect(line, tokenOf(data)).toBeDefined();
      const cells = line!.split(/\s{2,}/);
      expect(cells.slice(0, 8)).toEqual([tokenOf(data), 'parked', data.collection, data.event.device_id, '12', data.failedAt, '0', '-']);
      expect(line!.endsWith(data.lastError.message)).toBe(true);
    }
    expect(lines[4]).toBe(`3 dead letters in ${prefix}:${QUEUE_NAMES.deadLetter}: 3 parked`);

    const queued = await dlq(prefix, ['redrive', first]);
    expect(queued.code).toBe(3);
    expect(queued.stdout).toContain(`${first}: still queued: in keen-dead-letter (waiting), waiting for the dead-letter worker\n`);
    expect(queued.stdout).toContain('no worker is consuming keen-dead-letter now: the redrive happens when one runs (npm run worker)');
    expect(queued.stdout).toContain('redrive: 0 delivered, 0 refused again, 0 redrive failed, 1 still queued, 0 not found');
    expect(await stateOf(queues.keen, first)).toBe('missing');

    const worker = startWorker();
    try {
      await waitFor('the queued redrive done by the worker', async () => (await stateOf(queues.keen, first)) === 'waiting');
      expect((await queues.keen.getJob(first))!.data).toEqual(redrivenDeliveryOf(letters[0]!));

      // No keen-delivery worker runs: the events wait there, and --wait bounds how long we look.
      const partly = await dlq(prefix, ['redrive', '--wait', '1s', second, 'no-such-dead-letter']);
      // A missing id (2) outranks an outcome not known yet (3).
      expect(partly.code).toBe(2);
      expect(partly.stderr).toContain('no-such-dead-letter: not found in keen-dead-letter');
      expect(partly.stdout).toContain(`${second}: still queued: in keen-delivery job ${second} (waiting, 0 of 12 attempts made)\n`);
      expect(partly.stdout).toContain('still queued: no outcome within 1000 ms (--wait). Nothing is lost');
      expect(partly.stdout).toContain('redrive: 0 delivered, 0 refused again, 0 redrive failed, 1 still queued, 1 not found');

      const all = await dlq(prefix, ['redrive', '--all', '--wait=1s']);
      expect(all.code).toBe(3);
      expect(all.stdout).toContain(`${third}: still queued: in keen-delivery job ${third} (waiting`);
      expect(await dlq(prefix, ['redrive', '--all'])).toMatchObject({ code: 0, stdout: 'no parked dead letters to redrive\n' });
      for (const token of [first, second, third]) expect(await stateOf(queues.keen, token)).toBe('waiting');
    } finally {
      await worker.close();
    }
  });

  it('redrive reports each outcome from the real Keen delivery: delivered, refused again (exit 1), and list shows the history', async () => {
    const keen = await startFakeKeen({ projectId: 'dlq-project', writeKey: 'dlq-write-key' });
    const batcher = new KeenBatcher({
      client: new KeenClient({ apiUrl: keen.url, projectId: keen.projectId, writeKey: keen.writeKey, timeoutMs: 2000 }),
      maxEvents: 50,
      lingerMs: 5,
    });
    const delivery = createKeenDeliveryWorker({ connection: redis, prefix, queues, batcher, concurrency: 10, logger });
    const worker = startWorker();
    try {
      const refusedDevice = randomDeviceId();
      const good = deadLetterFor();
      const bad = deadLetterFor(refusedDevice);
      for (const data of [good, bad]) await parked(queues, await addDeadLetter(queues, data));
      keen.rejectEvents((_collection, event) =>
        event.device_id === refusedDevice ? { name: 'InvalidPropertyValueError', description: 'still out of range' } : undefined,
      );

      const result = await dlq(prefix, ['redrive', tokenOf(good), tokenOf(bad)]);
      expect(result.stdout).toContain(`${tokenOf(good)}: delivered to Keen\n`);
      expect(result.stdout).toContain(
        `${tokenOf(bad)}: refused again: Keen rejected the event: InvalidPropertyValueError: still out of range\n`,
      );
      expect(result.stdout).toContain('redrive: 1 delivered, 1 refused again, 0 redrive failed, 0 still queued, 0 not found');
      expect(result.code).toBe(1);
      expect(keen.tokens('devicestate')).toContain(tokenOf(good));
      expect(keen.tokens('devicestate')).not.toContain(tokenOf(bad));

      // The refused event is a dead letter again, with its history; a second redrive counts 2.
      const again = await parked(queues, tokenOf(bad));
      expect(again.data.redrives).toEqual({ count: 1, lastAt: expect.any(String) });
      const second = await dlq(prefix, ['redrive', tokenOf(bad)]);
      expect(second.code).toBe(1);
      expect(second.stdout).toContain(`${tokenOf(bad)}: refused again:`);
      await parked(queues, tokenOf(bad));
      const listed = await dlq(prefix, ['list']);
      const line = listed.stdout.split('\n').find((l) => l.startsWith(tokenOf(bad)))!;
      const cells = line.split(/\s{2,}/);
      expect(cells[1]).toBe('parked');
      expect(cells[6]).toBe('2');
      expect(cells[7]).toMatch(/^\d{4}-\d\d-\d\dT\S+ refused again$/);
      expect(cells[8]).toBe('Keen rejected the event: InvalidPropertyValueError: still out of range');
      expect(listed.stdout).toContain('1 refused again after a redrive');

      // Keen down: the redriven event is retried in keen-delivery; the CLI says so when --wait ends.
      keen.clearFaults();
      keen.respondWith({ status: 503, body: { message: 'down for the test', error_code: 'ServiceUnavailableError' } });
      const down = await dlq(prefix, ['redrive', '--wait', '2s', tokenOf(bad)]);
      expect(down.code).toBe(3);
      expect(down.stdout).toMatch(
        new RegExp(
          `${tokenOf(bad)}: still queued: in keen-delivery job ${tokenOf(bad)} \\((delayed|active|waiting), [0-9]+ of 12 attempts made`,
        ),
      );
      keen.clearFaults();
      await waitFor('the event delivered once Keen is back', () => keen.tokens('devicestate').includes(tokenOf(bad)), 20_000);
    } finally {
      await worker.close();
      await delivery.close();
      await batcher.close();
      await keen.close();
    }
  });

  it('purge lists first, refuses without a terminal or --yes, has --dry-run, and audits every id it deletes', async () => {
    const purgePrefix = randomPrefix('dlqpurge');
    const own = openQueues(redis, purgePrefix);
    const run = (args: string[]) => dlq(purgePrefix, args);
    const worker = createDeadLettersWorker({ connection: redis, queues: own, logger });
    try {
      const letters = [deadLetterFor(), deadLetterFor(), deadLetterFor()];
      for (const data of letters) await parked(own, await addDeadLetter(own, data));
      const ids = letters.map(tokenOf);

      expect(await run(['purge', '--older-than', '1h'])).toMatchObject({
        code: 0,
        stdout: `no dead letters older than 1h in ${purgePrefix}:${QUEUE_NAMES.deadLetter}: nothing to purge\n`,
      });
      await sleep(1100);

      const dry = await run(['purge', '--older-than', '1s', '--dry-run']);
      expect(dry.code).toBe(0);
      for (const id of ids) expect(dry.stdout).toContain(id);
      expect(dry.stdout).toContain(
        `dry run: would delete these 3 dead letters older than 1s from ${purgePrefix}:${QUEUE_NAMES.deadLetter}; nothing was deleted`,
      );
      expect(await own.deadLetter.getFailedCount()).toBe(3);

      const refused = await run(['purge', '--older-than', '1s']);
      expect(refused.code).toBe(1);
      for (const id of ids) expect(refused.stdout).toContain(id);
      expect(refused.stderr).toContain('refusing to purge 3 dead letters without confirmation: stdin is not a terminal. Add --yes');
      expect(await own.deadLetter.getFailedCount()).toBe(3);

      // On a terminal: "n" keeps everything, "y" deletes.
      const no = await dlqOnTerminal(purgePrefix, ['purge', '--older-than', '1s'], 'n');
      expect(no.output).toContain('delete these 3 dead letters for good? Their events will never reach Keen. [y/N]');
      expect(no.output).toContain('nothing deleted');
      expect(no.code).toBe(1);
      expect(await own.deadLetter.getFailedCount()).toBe(3);

      const [kept] = await Promise.all([own.deadLetter.getJob(ids[0]!)]);
      const yes = await dlqOnTerminal(purgePrefix, ['purge', '--older-than', '1s'], 'y');
      expect(yes.code, yes.output).toBe(0);
      expect(yes.output).toContain('purged 3 dead letters older than 1s');
      expect(await own.deadLetter.getFailedCount()).toBe(0);
      expect(kept).toBeDefined();

      // --yes for scripts; the JSON audit line on stderr names every id deleted.
      const more = [deadLetterFor(), deadLetterFor()];
      for (const data of more) await parked(own, await addDeadLetter(own, data));
      await sleep(1100);
      const scripted = await run(['purge', '--older-than=1s', '--yes']);
      expect(scripted.code).toBe(0);
      expect(scripted.stdout).toContain('purged 2 dead letters older than 1s');
      const audit = jsonLines(scripted.stderr);
      expect(audit).toHaveLength(1);
      expect(audit[0]).toMatchObject({
        level: 'info',
        process: 'dlq',
        msg: 'dead letters purged',
        audit: 'dlq-purge',
        older_than: '1s',
        deleted_count: 2,
        skipped: [],
        queue: `${purgePrefix}:${QUEUE_NAMES.deadLetter}`,
      });
      expect((audit[0]!.deleted as string[]).sort()).toEqual(more.map(tokenOf).sort());
      expect(audit[0]!.user).toEqual(expect.any(String));
      expect((await run(['list'])).stdout).toBe(`no dead letters in ${purgePrefix}:${QUEUE_NAMES.deadLetter}\n`);
    } finally {
      await worker.close();
      await own.close();
    }
  });

  it('exits 2 when a named id is not a parked dead letter', async () => {
    const result = await dlq(prefix, ['redrive', 'nothing-here']);
    expect(result).toMatchObject({ code: 2 });
    expect(result.stderr).toBe('nothing-here: not found in keen-dead-letter\n');
    expect(result.stdout).toBe('redrive: 0 delivered, 0 refused again, 0 redrive failed, 0 still queued, 1 not found\n');
  });
});
