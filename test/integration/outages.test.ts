/**
 * Outages as an operator sees them, with the real processes: a Redis and a Mosquitto of the
 * test's own are stopped and restarted under a running subscriber, worker and dashboard. Each
 * process says once that a dependency is gone and once that it is back, however long it lasts
 * and however many connections it has; every line it prints is JSON; and the dashboard answers
 * 503 at once while Redis is gone (and within its timeout while Redis hangs), never hangs.
 * The worker's PostgreSQL is a server of the test's own too, stopped and started the same way.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createPrivatePostgres, type PrivatePostgres } from '../../chaos/postgres.js';
import { API_TIMEOUT_MS } from '../../src/dashboard/dashboard.js';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { startFakeKeen, type FakeKeen } from '../support/fake-keen.js';
import { randomPrefix } from '../support/ids.js';
import {
  freePort,
  sleep,
  startMosquitto,
  startRedis,
  startService,
  waitFor,
  waitForLog,
  type ManagedProcess,
} from '../support/processes.js';

const services = inject('services');

type Running = Awaited<ReturnType<typeof startRedis>> | Awaited<ReturnType<typeof startMosquitto>>;

/** Every line a process printed, parsed; a line that is not JSON fails the test with the line. */
function logLines(proc: ManagedProcess): Array<Record<string, unknown>> {
  return proc
    .output()
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => {
      try {
        return JSON.parse(line) as Record<string, unknown>;
      } catch {
        throw new Error(`a line that is not JSON: ${line.slice(0, 300)}`);
      }
    });
}

const count = (proc: ManagedProcess, dependency: string, msg: RegExp) =>
  logLines(proc).filter((line) => line.dependency === dependency && msg.test(String(line.msg))).length;
const DOWN = /is unreachable/;
const BACK = /is reachable again/;

describe('outages', () => {
  const prefix = randomPrefix('outage');
  let redis: Awaited<ReturnType<typeof startRedis>>;
  let mosquitto: Awaited<ReturnType<typeof startMosquitto>>;
  let db: TestDatabase;
  let keen: FakeKeen;
  let subscriber: ManagedProcess;
  let worker: ManagedProcess;
  let dashboard: ManagedProcess;
  let dashboardUrl: string;
  const processes = () => ({ subscriber, worker, dashboard });

  beforeAll(async () => {
    [redis, mosquitto, db, keen] = await Promise.all([
      startRedis({ appendonly: false }),
      startMosquitto(),
      createTestDatabase(services.postgres),
      startFakeKeen({ projectId: 'outage-project', writeKey: 'outage-write-key' }),
    ]);
    const common = { REDIS_URL: redis.url, QUEUE_PREFIX: prefix, MQTT_URL: mosquitto.url, MQTT_CLIENT_ID: prefix, METRICS_PORT: '0' };
    subscriber = startService('subscriber', { ...common, MQTT_SHARE_GROUP: prefix, SUBSCRIBER_CONNECTIONS: '3' });
    worker = startService('worker', {
      ...common,
      DATABASE_URL: db.url,
      KEEN_API_URL: keen.url,
      KEEN_PROJECT_ID: keen.projectId,
      KEEN_WRITE_KEY: keen.writeKey,
    });
    const port = await freePort();
    dashboardUrl = `http://127.0.0.1:${port}`;
    dashboard = startService('dashboard', { REDIS_URL: redis.url, QUEUE_PREFIX: prefix, DASHBOARD_PORT: String(port) });
    await Promise.all([
      waitForLog(subscriber, 'subscriber ready'),
      waitForLog(worker, 'worker ready'),
      waitForLog(dashboard, 'dashboard listening'),
    ]);
  });

  afterAll(async () => {
    await Promise.all([subscriber, worker, dashboard].map((proc) => proc?.kill('SIGKILL')));
    await Promise.all([redis, mosquitto].map((proc: Running | undefined) => proc?.kill('SIGKILL')));
    await Promise.all([db?.drop(), keen?.close()]);
  });

  /** Never waits past a generous bound: a hang fails the test instead of stalling it. */
  const get = (path: string) => fetch(`${dashboardUrl}${path}`, { signal: AbortSignal.timeout(API_TIMEOUT_MS + 5000) });

  it('a Redis that hangs: the dashboard API answers 503 within its timeout', async () => {
    redis.child.kill('SIGSTOP');
    try {
      const response = await get('/api/queues');
      expect(response.status).toBe(503);
      expect(await response.json()).toEqual({ error: 'redis_unreachable', message: `Redis did not answer within ${API_TIMEOUT_MS} ms` });
      expect((await get('/readyz')).status).toBe(503);
      expect((await get('/api/queues')).status).toBe(503);
    } finally {
      redis.child.kill('SIGCONT');
    }
    await waitFor('the dashboard ready again', async () => (await get('/readyz')).status === 200);
    expect((await get('/api/queues')).status).toBe(200);
    const said = (msg: string) => logLines(dashboard).filter((line) => line.msg === msg).length;
    await waitFor('the dashboard saying Redis answers again', () => said('dashboard: Redis answers again') > 0, 5000);
    expect({ hangs: said('dashboard: Redis did not answer in time'), back: said('dashboard: Redis answers again') }).toEqual({
      hangs: 1,
      back: 1,
    });
  });

  it('Redis gone for a few seconds: one warning and one "back" line per process, and the dashboard answers 503 meanwhile', async () => {
    await redis.kill('SIGKILL');
    for (const [name, proc] of Object.entries(processes()))
      await waitFor(`${name} saying Redis is gone`, () => count(proc, 'redis', DOWN) > 0, 10_000);

    const api = await get('/api/queues');
    expect(api.status).toBe(503);
    expect(await api.json()).toEqual({
      error: 'redis_unreachable',
      message: `Redis is unreachable (${redis.url}): the dashboard answers 503 until it is back`,
    });
    const page = await get('/');
    expect(page.status).toBe(503);
    expect(await page.text()).toContain('<h1>Redis is unreachable</h1>');
    const ready = await get('/readyz');
    expect(ready.status).toBe(503);
    expect(await ready.json()).toEqual({ status: 'not ready', checks: { redis: false }, error: 'redis_unreachable' });
    expect(await (await get('/healthz')).json()).toEqual({ status: 'ok', redis: 'unreachable' });

    // Long enough for many reconnect attempts of every connection.
    await sleep(3000);
    redis = await startRedis({ port: redis.port, appendonly: false });
    for (const [name, proc] of Object.entries(processes()))
      await waitFor(`${name} saying Redis is back`, () => count(proc, 'redis', BACK) > 0, 15_000);
    expect((await get('/api/queues')).status).toBe(200);
    const page2 = await get('/');
    expect(page2.status).toBe(200);
    // Bull Board's own page, with the banner that shows while Redis is gone.
    expect(await page2.text()).toContain("getElementById('lampi-outage')");

    for (const [name, proc] of Object.entries(processes())) {
      expect({ name, down: count(proc, 'redis', DOWN), back: count(proc, 'redis', BACK) }).toEqual({ name, down: 1, back: 1 });
      const warning = logLines(proc).find((line) => line.dependency === 'redis' && DOWN.test(String(line.msg)))!;
      expect(warning.level).toBe('warn');
      expect(String(warning.msg)).toContain(`Redis is unreachable (${redis.url})`);
      const back = logLines(proc).find((line) => line.dependency === 'redis' && BACK.test(String(line.msg)))!;
      expect(back).toMatchObject({ level: 'info', msg: 'Redis is reachable again', downForMs: expect.any(Number) });
      // Nothing else about the outage at error level: the reconnect attempts are not news.
      expect(logLines(proc).filter((line) => line.level === 'error')).toEqual([]);
    }
  });

  it('the broker gone for a few seconds: one warning and one "back" line from the subscriber (3 connections) and the worker', async () => {
    const { port, dir } = mosquitto;
    await mosquitto.kill('SIGKILL');
    for (const [name, proc] of Object.entries({ subscriber, worker }))
      await waitFor(`${name} saying the broker is gone`, () => count(proc, 'mqtt', DOWN) > 0, 10_000);
    await sleep(3000);
    mosquitto = await startMosquitto({ port, dir });
    for (const [name, proc] of Object.entries({ subscriber, worker }))
      await waitFor(`${name} saying the broker is back`, () => count(proc, 'mqtt', BACK) > 0, 15_000);
    for (const [name, proc] of Object.entries({ subscriber, worker })) {
      expect({ name, down: count(proc, 'mqtt', DOWN), back: count(proc, 'mqtt', BACK) }).toEqual({ name, down: 1, back: 1 });
      expect(logLines(proc).filter((line) => line.level === 'error')).toEqual([]);
    }
    expect(logLines(subscriber).find((line) => line.dependency === 'mqtt' && DOWN.test(String(line.msg)))?.msg).toBe(
      `The MQTT broker is unreachable (${mosquitto.url}): the broker keeps lamp messages for our sessions until it is back`,
    );
  });
});

describe('PostgreSQL outage', () => {
  const prefix = randomPrefix('pgoutage');
  const dir = mkdtempSync(path.join(tmpdir(), 'lampi-pg-outage-'));
  let postgres: PrivatePostgres;
  let db: TestDatabase;
  let keen: FakeKeen;
  let worker: ManagedProcess;

  beforeAll(async () => {
    postgres = await createPrivatePostgres(path.join(dir, 'pg'), await freePort());
    [db, keen] = await Promise.all([
      createTestDatabase(postgres.adminUrl),
      startFakeKeen({ projectId: 'pg-outage', writeKey: 'pg-outage-key' }),
    ]);
    worker = startService('worker', {
      REDIS_URL: services.redis,
      MQTT_URL: services.mqtt,
      QUEUE_PREFIX: prefix,
      MQTT_CLIENT_ID: prefix,
      METRICS_PORT: '0',
      DATABASE_URL: db.url,
      KEEN_API_URL: keen.url,
      KEEN_PROJECT_ID: keen.projectId,
      KEEN_WRITE_KEY: keen.writeKey,
    });
    await waitForLog(worker, 'worker ready');
  });

  afterAll(async () => {
    await worker?.kill('SIGKILL');
    await keen?.close();
    await postgres?.stop().catch(() => {});
    rmSync(dir, { recursive: true, force: true });
  });

  it('the worker says once that PostgreSQL is gone and once that it is back', async () => {
    await postgres.stop();
    await waitFor('the worker saying PostgreSQL is gone', () => count(worker, 'postgres', DOWN) > 0, 20_000);
    await sleep(1000);
    await postgres.start();
    await waitFor('the worker saying PostgreSQL is back', () => count(worker, 'postgres', BACK) > 0, 20_000);
    expect({ down: count(worker, 'postgres', DOWN), back: count(worker, 'postgres', BACK) }).toEqual({ down: 1, back: 1 });
    expect(logLines(worker).find((line) => line.dependency === 'postgres' && DOWN.test(String(line.msg)))?.msg).toBe(
      `PostgreSQL is unreachable (${db.url}): ingest jobs are retried until it is back`,
    );
    expect(logLines(worker).filter((line) => line.level === 'error')).toEqual([]);
  });
});
