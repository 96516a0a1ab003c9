/**
 * A wrong Keen key, end to end through the real subscriber and worker processes: while Keen
 * answers 401, no event is spent (nothing dead-lettered, no keen-delivery job failed, however
 * many probes outlast KEEN_ATTEMPTS), /readyz says why it is not ready, and the gauge an alert
 * reads is 1; once Keen accepts again, every event arrives exactly once and all is green again.
 */
import { Redis } from 'ioredis';
import mqtt from 'mqtt';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { openQueues } from '../../src/shared/queues.js';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { startFakeKeen, type FakeKeen } from '../support/fake-keen.js';
import { randomDeviceId, randomPrefix } from '../support/ids.js';
import { freePort, startService, waitFor, waitForLog, type ManagedProcess } from '../support/processes.js';

const services = inject('services');
const PROJECT = 'auth-pause';
const WRITE_KEY = 'auth-pause-write-key';
const STATES = 20;

function gauge(metrics: string, name: string, labels: Record<string, string>): number | undefined {
  const matches = (l: string) => l.startsWith(`${name}{`) && Object.entries(labels).every(([k, v]) => l.includes(`${k}="${v}"`));
  const line = metrics.split('\n').find(matches);
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1));
}

describe('a Keen key refused with 401', () => {
  const prefix = randomPrefix('auth');
  let db: TestDatabase;
  let keen: FakeKeen;
  let redis: Redis;
  const procs: ManagedProcess[] = [];

  beforeAll(async () => {
    db = await createTestDatabase(services.postgres);
    keen = await startFakeKeen({ projectId: PROJECT, writeKey: WRITE_KEY });
    redis = new Redis(services.redis, { maxRetriesPerRequest: null });
  });
  afterAll(async () => {
    for (const proc of procs) await proc.kill('SIGKILL');
    await redis.quit();
    await keen.close();
    await db.drop();
  });

  it('pauses delivery (not ready, gauge 1, nothing dead-lettered) and delivers everything once when Keen accepts again', async () => {
    // Keen's own answer to a key it does not know (the shape its API documents).
    keen.respondWith({ status: 401, body: { message: 'The API key is invalid for this project.', error_code: 'InvalidApiKeyError' } });
    const common = { REDIS_URL: services.redis, QUEUE_PREFIX: prefix, MQTT_URL: services.mqtt, MQTT_CLIENT_ID: prefix };
    const workerPort = await freePort();
    const worker = startService('worker', {
      ...common,
      METRICS_PORT: String(workerPort),
      DATABASE_URL: db.url,
      KEEN_API_URL: keen.url,
      KEEN_PROJECT_ID: PROJECT,
      KEEN_WRITE_KEY: WRITE_KEY,
      KEEN_ATTEMPTS: '2',
      KEEN_PAUSE_PROBE_MS: '200',
    });
    procs.push(worker);
    const subscriber = startService('subscriber', { ...common, MQTT_SHARE_GROUP: prefix, METRICS_PORT: '0' });
    procs.push(subscriber);
    await waitForLog(worker, 'worker ready');
    await waitForLog(subscriber, 'subscriber ready');

    const device = randomDeviceId();
    const lamp = await mqtt.connectAsync(services.mqtt, { clientId: `${prefix}-lamp` });
    await lamp.publishAsync(`$SYS/broker/connection/${device}_broker/state`, '1', { qos: 1 });
    for (let i = 0; i < STATES; i++) {
      await lamp.publishAsync(`/devices/${device}/lamp/changed`, JSON.stringify({ on: true, brightness: i / STATES }), { qos: 1 });
    }
    await lamp.endAsync();

    type Readiness = { status: string; checks: Record<string, boolean>; reasons?: Record<string, string> };
    const readyz = async () => {
      const response = await fetch(`http://127.0.0.1:${workerPort}/readyz`);
      return { status: response.status, body: (await response.json()) as Readiness };
    };
    const metrics = async () => (await fetch(`http://127.0.0.1:${workerPort}/metrics`)).text();
    const queues = openQueues(redis, prefix, 2);
    const total = (counts: Record<string, number>) => Object.values(counts).reduce((a, b) => a + b, 0);
    const deadLetters = async () => total(await queues.deadLetter.getJobCounts('waiting', 'active', 'delayed', 'failed', 'completed'));
    const undelivered = async () => total(await queues.keen.getJobCounts('waiting', 'active', 'delayed', 'prioritized'));
    try {
      // More refused probes than KEEN_ATTEMPTS: had a probe spent an attempt, the events would be dead letters by now.
      await waitFor('five refused probes', () => keen.requests.filter((r) => r.status === 401).length >= 5, 30_000);
      const paused = await readyz();
      expect(paused.status).toBe(503);
      expect(paused.body).toMatchObject({ status: 'not ready', checks: { redis: true, mqtt: true, postgres: true, keen: false } });
      expect(paused.body.reasons?.keen).toContain('KEEN_WRITE_KEY');
      expect(paused.body.reasons?.keen).toContain('InvalidApiKeyError');
      expect(gauge(await metrics(), 'lampi_keen_delivery_paused', { reason: 'unauthorized' })).toBe(1);
      expect(await deadLetters()).toBe(0);
      expect(await queues.keen.getFailedCount()).toBe(0);
      expect(keen.eventCount()).toBe(0);
      // One line for the operator (this test runs well inside the minute it may repeat after).
      const pausedLines = worker
        .output()
        .split('\n')
        .filter((line) => line.includes('Keen delivery is paused'));
      expect(pausedLines).toHaveLength(1);
      const line = JSON.parse(pausedLines[0]!) as Record<string, unknown>;
      expect(line).toMatchObject({ level: 'error', reason: 'unauthorized', status: 401, code: 'InvalidApiKeyError' });
      expect(pausedLines[0]).toContain('KEEN_WRITE_KEY');

      keen.clearFaults();
      await waitFor(`${STATES} lamp states at Keen`, () => keen.eventsIn('devicestate').length === STATES, 30_000);
      await waitFor('keen-delivery drained', async () => (await undelivered()) === 0, 30_000);
      const ready = await waitFor('ready again', async () => ((await readyz()).status === 200 ? readyz() : undefined));
      expect(ready.body).toEqual({ status: 'ready', checks: { redis: true, mqtt: true, postgres: true, keen: true } });
      expect(gauge(await metrics(), 'lampi_keen_delivery_paused', { reason: 'unauthorized' })).toBe(0);
      await waitForLog(worker, 'Keen accepts requests again; Keen delivery resumed');

      // Every event once: the lamp states, and the bridge state's events, each token stored once.
      const tokens = ['devicestate', 'devicemonitoring', 'activations'].flatMap((collection) => keen.tokens(collection));
      expect(new Set(tokens).size).toBe(tokens.length);
      expect(keen.eventsIn('devicestate')).toHaveLength(STATES);
      expect(keen.eventsIn('activations')).toHaveLength(1);
      expect(await deadLetters()).toBe(0);
      expect(await queues.keen.getFailedCount()).toBe(0);
      expect(worker.output()).not.toContain(WRITE_KEY);
    } finally {
      await queues.close();
    }
  });
});
