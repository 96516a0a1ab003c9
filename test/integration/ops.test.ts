/**
 * What an operator watches: /metrics, /healthz and /readyz of the real processes. The backlog
 * grows while no worker runs and drains when one starts; readiness follows Redis.
 */
import mqtt from 'mqtt';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { startFakeKeen, type FakeKeen } from '../support/fake-keen.js';
import { randomDeviceId, randomPrefix } from '../support/ids.js';
import { freePort, startRedis, startService, waitFor, waitForLog, type ManagedProcess } from '../support/processes.js';

const services = inject('services');

async function scrape(port: number): Promise<string> {
  const response = await fetch(`http://127.0.0.1:${port}/metrics`);
  expect(response.status).toBe(200);
  return response.text();
}

function gauge(metrics: string, name: string, labels: Record<string, string>): number | undefined {
  const line = metrics
    .split('\n')
    .find((l) => l.startsWith(`${name}{`) && Object.entries(labels).every(([k, v]) => l.includes(`${k}="${v}"`)));
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1));
}

describe('operations endpoints', () => {
  const prefix = randomPrefix('ops');
  let db: TestDatabase;
  let keen: FakeKeen;
  const procs: ManagedProcess[] = [];

  beforeAll(async () => {
    db = await createTestDatabase(services.postgres);
    keen = await startFakeKeen({ projectId: 'ops', writeKey: 'ops-key' });
  });
  afterAll(async () => {
    for (const proc of procs) await proc.kill('SIGKILL');
    await keen.close();
    await db.drop();
  });

  it('shows the backlog rising while workers are stopped and draining when one starts', async () => {
    const subscriberPort = await freePort();
    const common = { REDIS_URL: services.redis, QUEUE_PREFIX: prefix, MQTT_URL: services.mqtt, MQTT_CLIENT_ID: prefix };
    const subscriber = startService('subscriber', { ...common, MQTT_SHARE_GROUP: prefix, METRICS_PORT: String(subscriberPort) });
    procs.push(subscriber);
    await waitForLog(subscriber, 'subscriber ready');

    const health = await fetch(`http://127.0.0.1:${subscriberPort}/healthz`);
    expect(health.status).toBe(200);
    const ready = await fetch(`http://127.0.0.1:${subscriberPort}/readyz`);
    expect(await ready.json()).toEqual({ status: 'ready', checks: { redis: true, mqtt: true } });

    const device = randomDeviceId();
    const lamp = await mqtt.connectAsync(services.mqtt, { clientId: `${prefix}-lamp` });
    await lamp.publishAsync(`$SYS/broker/connection/${device}_broker/state`, '1', { qos: 1 });
    for (let i = 0; i < 40; i++)
      await lamp.publishAsync(`/devices/${device}/lamp/changed`, JSON.stringify({ on: true, brightness: i / 40 }), { qos: 1 });

    await waitFor(
      '40 lamp states queued',
      async () => gauge(await scrape(subscriberPort), 'lampi_messages_enqueued_total', { kind: 'lamp-state' }) === 40,
    );
    const metrics = await scrape(subscriberPort);
    // Lamp states travel in groups: the backlog is counted in jobs, each holding one or more.
    const jobs = gauge(metrics, 'lampi_queue_jobs', { queue: 'lamp-states', state: 'waiting' })!;
    expect(jobs).toBeGreaterThan(0);
    expect(jobs).toBeLessThanOrEqual(40);
    expect(gauge(metrics, 'lampi_messages_received_total', { kind: 'bridge-state' })).toBe(1);

    const workerPort = await freePort();
    const worker = startService('worker', {
      ...common,
      METRICS_PORT: String(workerPort),
      DATABASE_URL: db.url,
      KEEN_API_URL: keen.url,
      KEEN_PROJECT_ID: 'ops',
      KEEN_WRITE_KEY: 'ops-key',
    });
    procs.push(worker);
    await waitForLog(worker, 'worker ready');
    await waitFor(
      'the backlog drained',
      async () => gauge(await scrape(subscriberPort), 'lampi_queue_jobs', { queue: 'lamp-states', state: 'waiting' }) === 0,
      30_000,
    );
    await waitFor('every event at Keen', () => keen.eventsIn('devicestate').length === 40);

    const workerMetrics = await waitFor('the worker counted its Keen deliveries', async () => {
      const text = await scrape(workerPort);
      return (gauge(text, 'lampi_keen_events_total', { collection: 'devicestate', outcome: 'accepted' }) ?? 0) >= 40 ? text : undefined;
    });
    // At least those jobs: states that overtook their lamp's activation wait in jobs of their own.
    expect(gauge(workerMetrics, 'lampi_jobs_completed_total', { queue: 'lamp-states' })).toBeGreaterThanOrEqual(jobs);
    expect(workerMetrics).toMatch(/lampi_keen_request_duration_seconds_bucket\{/);
    expect(workerMetrics).toMatch(/lampi_keen_responses_total\{status="200"/);
    const readiness = await (await fetch(`http://127.0.0.1:${workerPort}/readyz`)).json();
    expect(readiness).toEqual({ status: 'ready', checks: { redis: true, mqtt: true, postgres: true, keen: true } });
    await lamp.endAsync();
  });

  it('reports not ready, naming Redis, while Redis is down', async () => {
    const redis = await startRedis();
    const port = await freePort();
    const own = randomPrefix('ops-ready');
    const subscriber = startService('subscriber', {
      REDIS_URL: redis.url,
      QUEUE_PREFIX: own,
      MQTT_URL: services.mqtt,
      MQTT_CLIENT_ID: own,
      MQTT_SHARE_GROUP: own,
      METRICS_PORT: String(port),
    });
    procs.push(subscriber);
    await waitForLog(subscriber, 'subscriber ready');
    await redis.kill('SIGKILL');
    const response = await waitFor('readiness to fail', async () => {
      const r = await fetch(`http://127.0.0.1:${port}/readyz`);
      return r.status === 503 ? r : undefined;
    });
    expect(await response.json()).toMatchObject({ status: 'not ready', checks: { redis: false, mqtt: true } });
    expect((await fetch(`http://127.0.0.1:${port}/healthz`)).status).toBe(200);
  });
});
