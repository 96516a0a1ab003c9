/**
 * The registry stage (ingest queue) against real PostgreSQL, Redis and Mosquitto: activation,
 * bridge monitoring, lamp states, unknown devices, and many workers racing on the same lamps.
 */
import { Queue, type Worker } from 'bullmq';
import { Redis } from 'ioredis';
import mqtt from 'mqtt';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type { IngestJob, KeenDeliveryJob, RejectedMessageJob } from '../../src/shared/jobs.js';
import { createLogger } from '../../src/shared/logger.js';
import { createMetrics } from '../../src/shared/metrics.js';
import { openQueues, QUEUE_NAMES, type PipelineQueues } from '../../src/shared/queues.js';
import { AssociationPublisher } from '../../src/worker/association-publisher.js';
import { createIngestWorkers } from '../../src/worker/ingest-worker.js';
import { DeviceRegistry } from '../../src/worker/registry/registry.js';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { randomDeviceId, randomPrefix } from '../support/ids.js';
import { sleep, waitFor } from '../support/processes.js';

const services = inject('services');
const logger = createLogger('registry-test', 'silent');
const DEFAULT_USER = 'parked_device_user';

describe('registry worker', () => {
  let db: TestDatabase;
  let redis: Redis;
  let queues: PipelineQueues;
  const prefix = randomPrefix('reg');
  const stops: Array<() => Promise<unknown>> = [];
  let associations: mqtt.MqttClient;
  const associationMessages: Array<{ topic: string; payload: string; retain: boolean }> = [];

  async function startWorkers(count: number, concurrency = 20) {
    const workers: Worker[] = [];
    for (let i = 0; i < count; i++) {
      const registry = new DeviceRegistry({ databaseUrl: db.url, defaultUser: DEFAULT_USER, poolSize: 4 });
      const publisher = await AssociationPublisher.connect({ url: services.mqtt }, `${prefix}-${i}`, logger);
      const started = await createIngestWorkers({ connection: redis, prefix, queues, registry, publisher, defaultUser: DEFAULT_USER, concurrency, logger, metrics: createMetrics('t'), unknownDeviceAttempts: 3 });
      workers.push(...started);
      stops.push(async () => {
        await Promise.all(started.map((worker) => worker.close()));
        await publisher.close();
        await registry.close();
      });
    }
    return workers;
  }

  const bridge = (deviceId: string, connected: boolean, extra: Partial<IngestJob> = {}): IngestJob =>
    ({ kind: 'bridge-state', deviceId, connected, retained: false, receivedAt: new Date().toISOString(), ...extra }) as IngestJob;

  const add = (data: IngestJob, jobId: string) => queues.ingestQueueFor(data).add(data.kind, data, { jobId });

  async function allIngestDone(): Promise<boolean> {
    for (const queue of [queues.ingest, ...queues.bridgeState]) {
      const counts = await queue.getJobCounts('waiting', 'active', 'delayed');
      if ((counts.waiting ?? 0) + (counts.active ?? 0) + (counts.delayed ?? 0) > 0) return false;
    }
    return true;
  }

  async function keenJobs(): Promise<KeenDeliveryJob[]> {
    return (await queues.keen.getJobs(['waiting'], 0, -1)).map((job) => job.data);
  }

  beforeAll(async () => {
    db = await createTestDatabase(services.postgres);
    redis = new Redis(services.redis, { maxRetriesPerRequest: null });
    queues = openQueues(redis, prefix);
    associations = await mqtt.connectAsync(services.mqtt, { clientId: `${prefix}-observer` });
    associations.on('message', (topic, payload, packet) => associationMessages.push({ topic, payload: payload.toString(), retain: packet.retain }));
    await associations.subscribeAsync('/devices/+/lamp/associated', { qos: 1 });
  });
  afterAll(async () => {
    for (const stop of stops.reverse()) await stop();
    // Retained association messages of our random lamps are cleared from the shared broker.
    for (const topic of new Set(associationMessages.map((m) => m.topic))) await associations.publishAsync(topic, '', { qos: 1, retain: true });
    await associations.endAsync();
    await queues.close();
    await redis.quit();
    await db.drop();
  });

  it('activates each new lamp exactly once while eight workers race on duplicate and retained connects', async () => {
    await startWorkers(8);
    const devices = Array.from({ length: 40 }, randomDeviceId);
    const jobs: Array<{ data: IngestJob; jobId: string }> = [];
    let n = 0;
    for (const deviceId of devices) {
      for (let copy = 0; copy < 5; copy++) jobs.push({ data: bridge(deviceId, true, { retained: copy > 0 }), jobId: `race${(n++).toString(16).padStart(8, '0')}` });
    }
    await Promise.all(jobs.sort(() => Math.random() - 0.5).map((job) => add(job.data, job.jobId)));
    await waitFor('all ingest jobs done', allIngestDone);

    const { PrismaClient } = await import('../../src/generated/prisma/client.js');
    const { PrismaPg } = await import('@prisma/adapter-pg');
    const prisma = new PrismaClient({ adapter: new PrismaPg({ connectionString: db.url }) });
    try {
      const rows = await prisma.device.findMany({ where: { deviceId: { in: devices } }, include: { user: true } });
      expect(rows).toHaveLength(devices.length);
      for (const row of rows) {
        expect(row.name).toBe('My LAMPI');
        expect(row.associationCode).toMatch(/^[0-9a-f]{32}$/);
        expect(row.user.username).toBe(DEFAULT_USER);
        expect(row.user.isActive).toBe(false);
        expect(row.bridgeConnected).toBe(true);
      }
      expect(await prisma.user.count()).toBe(1);

      const keen = await keenJobs();
      const activations = keen.filter((job) => job.collection === 'activations');
      expect(activations.map((job) => job.event.device_id).sort()).toEqual([...devices].sort());
      for (const job of activations) expect(job.event).toMatchObject({ device_id: expect.any(String), user: DEFAULT_USER });
      // Five connects of an already-connected lamp are one state change.
      const monitoring = keen.filter((job) => job.collection === 'devicemonitoring');
      expect(monitoring.map((job) => job.event.device_id).sort()).toEqual([...devices].sort());
      for (const job of monitoring) expect(job.event).toMatchObject({ service: 'mqttbridge', state: 'connected' });

      await waitFor('one association message per lamp', () => devices.every((d) => associationMessages.some((m) => m.topic === `/devices/${d}/lamp/associated`)));
      await sleep(300);
      for (const row of rows) {
        const received = associationMessages.filter((m) => m.topic === `/devices/${row.deviceId}/lamp/associated`);
        expect(received).toHaveLength(1);
        expect(JSON.parse(received[0]!.payload)).toEqual({ associated: false, code: row.associationCode });
      }
    } finally {
      await prisma.$disconnect();
    }
  });

  it('records every bridge state change, in arrival order, and drops replays of an unchanged state', async () => {
    const device = randomDeviceId();
    const at = (ms: number) => new Date(Date.parse('2026-11-28T10:00:00.000Z') + ms).toISOString();
    const sequence: IngestJob[] = [
      bridge(device, true, { receivedAt: at(0) }),
      bridge(device, true, { receivedAt: at(10), retained: true }),
      bridge(device, false, { receivedAt: at(20) }),
      bridge(device, false, { receivedAt: at(30), retained: true }),
      bridge(device, true, { receivedAt: at(40) }),
    ];
    for (const [i, data] of sequence.entries()) await add(data, `seq${device}${i}`);
    await waitFor('all ingest jobs done', allIngestDone);
    const events = (await keenJobs()).filter((job) => job.event.device_id === device && job.collection === 'devicemonitoring');
    expect(events.map((job) => [job.event.state, job.event.keen.timestamp]).sort((a, b) => String(a[1]).localeCompare(String(b[1])))).toEqual([
      ['connected', at(0)],
      ['disconnected', at(20)],
      ['connected', at(40)],
    ]);
    expect((await keenJobs()).filter((job) => job.event.device_id === device && job.collection === 'activations')).toHaveLength(1);
  });

  it('turns lamp states of known lamps into devicestate events and rejects unknown lamps after waiting for them', async () => {
    const known = randomDeviceId();
    const unknown = randomDeviceId();
    await add(bridge(known, true), `known${known}`);
    const state = { color: { h: 0.44, s: 1 }, brightness: 0.47, on: true, client: 'lamp_ui' };
    const receivedAt = new Date().toISOString();
    await add({ kind: 'lamp-state', deviceId: known, state, receivedAt }, `state${known}`);
    await add({ kind: 'lamp-state', deviceId: unknown, state, receivedAt }, `state${unknown}`);

    const event = await waitFor('devicestate event', async () => (await queues.keen.getJob(`state${known}-devicestate`))?.data);
    expect(event.collection).toBe('devicestate');
    expect(event.event).toEqual({
      device_id: known,
      state,
      keen: {
        timestamp: receivedAt,
        uniqueness_token: `state${known}-devicestate`,
        addons: [{ name: 'keen:date_time_parser', input: { date_time: 'keen.timestamp' }, output: 'timestamp.info' }],
      },
    });

    const rejected = new Queue<RejectedMessageJob>(QUEUE_NAMES.rejected, { connection: redis, prefix });
    const record = await waitFor('unknown device rejection', async () => (await rejected.getJob(`state${unknown}-rejected`))?.data, 20_000, 250);
    expect(record).toMatchObject({ reason: 'unknown_device', deviceId: unknown });
    expect(await queues.keen.getJob(`state${unknown}-devicestate`)).toBeUndefined();
    await rejected.close();
  });
});
