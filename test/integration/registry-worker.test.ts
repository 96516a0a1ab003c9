/**
 * The registry stage (lamp-states and bridge-state queues) against real PostgreSQL, Redis and
 * Mosquitto: activation, bridge monitoring, lamp states, unknown devices, many workers racing on
 * the same lamps, and a lamp's bridge states kept in order through a PostgreSQL outage.
 */
import { randomUUID } from 'node:crypto';
import { Queue, type Job, type Worker } from 'bullmq';
import { Redis } from 'ioredis';
import mqtt from 'mqtt';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type {
  BridgeStateMessage,
  BridgeStatesJob,
  KeenDeliveryJob,
  KeenEventRecord,
  LampStatesJob,
  QueuedLampState,
  RejectedMessageJob,
} from '../../src/shared/jobs.js';
import type { LampState } from '../../src/shared/lamp.js';
import { createLogger, type Logger } from '../../src/shared/logger.js';
import { createMetrics } from '../../src/shared/metrics.js';
import { BRIDGE_PARTITIONS, bridgePartition, openQueues, QUEUE_NAMES, queueKey, type PipelineQueues } from '../../src/shared/queues.js';
import { AssociationPublisher } from '../../src/worker/association-publisher.js';
import { createIngestWorkers } from '../../src/worker/stages/ingest-worker.js';
import { KeenBatcher } from '../../src/worker/keen/batcher.js';
import { KeenClient } from '../../src/worker/keen/client.js';
import { DeviceRegistry } from '../../src/worker/registry/registry.js';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { startFakeKeen, type FakeKeen } from '../support/fake-keen.js';
import { randomDeviceId, randomPrefix } from '../support/ids.js';
import { sleep, waitFor } from '../support/processes.js';

const services = inject('services');
const silent = createLogger('registry-test', 'silent');
const DEFAULT_USER = 'parked_device_user';

/** An id like the subscriber's message ids. */
const messageId = () => randomUUID().replaceAll('-', '');

/** A bridge state as the subscriber queues it, before its message id. */
type QueuedBridgeState = BridgeStateMessage & Pick<BridgeStatesJob['states'][number], 'topic'>;

const bridge = (deviceId: string, connected: boolean, extra: Partial<BridgeStateMessage> = {}): QueuedBridgeState => ({
  kind: 'bridge-state',
  deviceId,
  connected,
  retained: false,
  receivedAt: new Date().toISOString(),
  topic: `$SYS/broker/connection/${deviceId}_broker/state`,
  ...extra,
});

/** A lamp state as the subscriber queues it: the JSON of `state` on the usual topic, unless `asSent` says otherwise. */
const lampState = (
  deviceId: string,
  state: LampState,
  asSent: Partial<Pick<QueuedLampState, 'topic' | 'payload'>> = {},
): QueuedLampState => ({
  messageId: messageId(),
  deviceId,
  receivedAt: new Date().toISOString(),
  topic: `/devices/${deviceId}/lamp/changed`,
  payload: JSON.stringify(state),
  ...asSent,
});
const stateOf = (queued: QueuedLampState): unknown => JSON.parse(queued.payload);

/** Lamps whose bridge states share one partition, as those in one job do. */
function lampsOfPartition(count: number, partition: number): string[] {
  const lamps: string[] = [];
  while (lamps.length < count) {
    const id = randomDeviceId();
    if (bridgePartition(id) === partition) lamps.push(id);
  }
  return lamps;
}

/**
 * A registry stage of a test's own: a database, a queue prefix, and workers on them. Workers of
 * one stage take each other's jobs, never another stage's.
 */
function registryStage(label: string) {
  const stage = {
    db: undefined as unknown as TestDatabase,
    redis: undefined as unknown as Redis,
    queues: undefined as unknown as PipelineQueues,
    prefix: randomPrefix(label),
    stops: [] as Array<() => Promise<unknown>>,

    async open() {
      stage.db = await createTestDatabase(services.postgres);
      stage.redis = new Redis(services.redis, { maxRetriesPerRequest: null });
      stage.queues = openQueues(stage.redis, stage.prefix);
    },

    async close() {
      for (const stop of stage.stops.reverse()) await stop();
      await stage.queues?.close();
      await stage.redis?.quit();
      await stage.db?.drop();
    },

    async startWorkers(
      count: number,
      {
        concurrency = 20,
        logger = silent,
        keen,
        unknownDeviceStates,
      }: { concurrency?: number; logger?: Logger; keen?: KeenBatcher; unknownDeviceStates?: 'record' | 'reject' } = {},
    ) {
      const workers: Worker[] = [];
      for (let i = 0; i < count; i++) {
        const registry = new DeviceRegistry({ databaseUrl: stage.db.url, defaultUser: DEFAULT_USER, poolSize: 4 });
        const publisher = await AssociationPublisher.connect({ url: services.mqtt }, `${stage.prefix}-${i}`, logger);
        const started = await createIngestWorkers({
          connection: stage.redis,
          queues: stage.queues,
          registry,
          publisher,
          defaultUser: DEFAULT_USER,
          concurrency,
          logger,
          metrics: createMetrics('t'),
          unknownDeviceAttempts: 3,
          ...(keen ? { keen } : {}),
          ...(unknownDeviceStates ? { unknownDeviceStates } : {}),
        });
        workers.push(...started);
        stage.stops.push(async () => {
          await Promise.all(started.map((worker) => worker.close()));
          await publisher.close();
          await registry.close();
        });
      }
      return workers;
    },

    /** A job of one bridge state, named (as its message) `jobId`. */
    addBridge: (data: QueuedBridgeState, jobId: string) => stage.addBridgeStates([{ ...data, messageId: jobId }], jobId),

    /** A job of several bridge states, as the subscriber writes them: all of one partition. */
    addBridgeStates: (states: BridgeStatesJob['states'], jobId: string) =>
      stage.queues.bridgeStateQueueFor(states[0]!.deviceId).add('bridge-states', { kind: 'bridge-states', states }, { jobId }),

    addLampStates: (states: LampStatesJob['states'], jobId: string) =>
      stage.queues.lampStates.add('lamp-states', { kind: 'lamp-states', states }, { jobId }),

    async allIngestDone(): Promise<boolean> {
      for (const queue of [stage.queues.lampStates, ...stage.queues.bridgeState]) {
        const counts = await queue.getJobCounts('waiting', 'active', 'delayed', 'prioritized');
        if (Object.values(counts).some((n) => n > 0)) return false;
      }
      return true;
    },

    async keenJobs(): Promise<Array<Job<KeenDeliveryJob>>> {
      return stage.queues.keen.getJobs(['waiting'], 0, -1, true);
    },

    /** Every Keen event queued, from every keen-delivery job. */
    async keenEvents(): Promise<KeenEventRecord[]> {
      return (await stage.keenJobs()).flatMap((job) => job.data.events);
    },

    async prisma() {
      const { PrismaClient } = await import('../../src/generated/prisma/client.js');
      const { PrismaPg } = await import('@prisma/adapter-pg');
      return new PrismaClient({ adapter: new PrismaPg({ connectionString: stage.db.url }) });
    },
  };
  return stage;
}

describe('registry worker', () => {
  const stage = registryStage('reg');
  let associations: mqtt.MqttClient;
  const associationMessages: Array<{ topic: string; payload: string; retain: boolean }> = [];

  beforeAll(async () => {
    await stage.open();
    associations = await mqtt.connectAsync(services.mqtt, { clientId: `${stage.prefix}-observer` });
    associations.on('message', (topic, payload, packet) =>
      associationMessages.push({ topic, payload: payload.toString(), retain: packet.retain }),
    );
    await associations.subscribeAsync('/devices/+/lamp/associated', { qos: 1 });
  });
  afterAll(async () => {
    await stage.close();
    // Retained association messages of our random lamps are cleared from the shared broker.
    for (const topic of new Set(associationMessages.map((m) => m.topic)))
      await associations.publishAsync(topic, '', { qos: 1, retain: true });
    await associations.endAsync();
  });

  it('activates each new lamp exactly once while eight workers race on duplicate and retained connects', async () => {
    await stage.startWorkers(8, { unknownDeviceStates: 'reject' });
    const devices = Array.from({ length: 40 }, randomDeviceId);
    const jobs: Array<{ data: QueuedBridgeState; jobId: string }> = [];
    let n = 0;
    for (const deviceId of devices) {
      for (let copy = 0; copy < 5; copy++)
        jobs.push({ data: bridge(deviceId, true, { retained: copy > 0 }), jobId: `race${(n++).toString(16).padStart(8, '0')}` });
    }
    await Promise.all(jobs.sort(() => Math.random() - 0.5).map((job) => stage.addBridge(job.data, job.jobId)));
    await waitFor('all ingest jobs done', stage.allIngestDone);

    const prisma = await stage.prisma();
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

      const keen = await stage.keenEvents();
      const activations = keen.filter((record) => record.collection === 'activations');
      expect(activations.map((record) => record.event.device_id).sort()).toEqual([...devices].sort());
      for (const record of activations) expect(record.event).toMatchObject({ device_id: expect.any(String), user: DEFAULT_USER });
      // Five connects of an already-connected lamp are one state change.
      const monitoring = keen.filter((record) => record.collection === 'devicemonitoring');
      expect(monitoring.map((record) => record.event.device_id).sort()).toEqual([...devices].sort());
      for (const record of monitoring) expect(record.event).toMatchObject({ service: 'mqttbridge', state: 'connected' });

      // The bridge job that created a lamp sends its activation and its connect in one
      // keen-delivery job named after it, with tokens named after it too.
      for (const job of await stage.keenJobs()) {
        expect(job.id).toMatch(/^race[0-9a-f]{8}-keen$/);
        const bridgeJobId = job.id!.slice(0, -'-keen'.length);
        const row = rows.find((r) => r.deviceId === job.data.events[0]!.event.device_id)!;
        expect(bridgeJobId).toBe(row.createdByMessageId);
        expect(job.data.events.map((record) => [record.collection, record.event.device_id, record.event.keen.uniqueness_token])).toEqual([
          ['activations', row.deviceId, `${bridgeJobId}-activations`],
          ['devicemonitoring', row.deviceId, `${bridgeJobId}-devicemonitoring`],
        ]);
      }
      expect(await stage.keenJobs()).toHaveLength(devices.length);

      // The connect that created a lamp tells it its code; so does every other live connect (the
      // broker's retained replays are no new connects): one code per lamp.
      const liveCopy = new Map(jobs.filter((job) => !job.data.retained).map((job) => [job.data.deviceId, job.jobId]));
      const expectedCount = (row: (typeof rows)[number]) => (row.createdByMessageId === liveCopy.get(row.deviceId) ? 1 : 2);
      await waitFor('the association messages', () =>
        rows.every(
          (row) => associationMessages.filter((m) => m.topic === `/devices/${row.deviceId}/lamp/associated`).length === expectedCount(row),
        ),
      );
      await sleep(300);
      for (const row of rows) {
        const received = associationMessages.filter((m) => m.topic === `/devices/${row.deviceId}/lamp/associated`);
        expect(received).toHaveLength(expectedCount(row));
        for (const message of received) expect(JSON.parse(message.payload)).toEqual({ associated: false, code: row.associationCode });
      }
    } finally {
      await prisma.$disconnect();
    }
  });

  it('records every bridge state change, in arrival order, and drops replays of an unchanged state', async () => {
    const device = randomDeviceId();
    const at = (ms: number) => new Date(Date.parse('2026-11-28T10:00:00.000Z') + ms).toISOString();
    const sequence: QueuedBridgeState[] = [
      bridge(device, true, { receivedAt: at(0) }),
      bridge(device, true, { receivedAt: at(10), retained: true }),
      bridge(device, false, { receivedAt: at(20) }),
      bridge(device, false, { receivedAt: at(30), retained: true }),
      bridge(device, true, { receivedAt: at(40) }),
    ];
    for (const [i, data] of sequence.entries()) await stage.addBridge(data, `seq${device}${i}`);
    await waitFor('all ingest jobs done', stage.allIngestDone);
    const events = (await stage.keenEvents()).filter(
      (record) => record.event.device_id === device && record.collection === 'devicemonitoring',
    );
    expect(
      events.map((record) => [record.event.state, record.event.keen.timestamp]).sort((a, b) => String(a[1]).localeCompare(String(b[1]))),
    ).toEqual([
      ['connected', at(0)],
      ['disconnected', at(20)],
      ['connected', at(40)],
    ]);
    expect(
      (await stage.keenEvents()).filter((record) => record.event.device_id === device && record.collection === 'activations'),
    ).toHaveLength(1);
    // A replay sends nothing to Keen; a change sends its events in one job named after it.
    const ids = (await stage.keenJobs()).map((job) => job.id);
    expect([0, 1, 2, 3, 4].map((i) => ids.includes(`seq${device}${i}-keen`))).toEqual([true, false, true, false, true]);
    expect((await stage.queues.keen.getJob(`seq${device}0-keen`))!.data.events.map((record) => record.collection)).toEqual([
      'activations',
      'devicemonitoring',
    ]);
    expect((await stage.queues.keen.getJob(`seq${device}2-keen`))!.data.events.map((record) => record.event.keen.uniqueness_token)).toEqual(
      [`seq${device}2-devicemonitoring`],
    );
  });

  it('rejects a bridge disconnect of a lamp that never connected at once, recorded as the broker sent it', async () => {
    const device = randomDeviceId();
    const jobId = messageId();
    const topic = `$SYS/broker/connection/${device.toUpperCase()}_broker/state`;
    await stage.addBridgeStates([{ ...bridge(device, false), messageId: jobId, topic }], jobId);
    const rejected = new Queue<RejectedMessageJob>(queueKey(QUEUE_NAMES.rejected), { connection: stage.redis, prefix: stage.prefix });
    try {
      const record = await waitFor('the rejection', async () => (await rejected.getJob(`${jobId}-rejected`))?.data, 5_000, 50);
      expect(record).toEqual({
        reason: 'unknown_device',
        detail: 'bridge disconnect from a device that never connected',
        deviceId: device,
        topic,
        payloadBytes: 1,
        payloadHead: Buffer.from('0').toString('base64'),
        receivedAt: expect.any(String),
      });
    } finally {
      await rejected.close();
    }
    expect(await stage.queues.keen.getJob(`${jobId}-keen`)).toBeUndefined();
    const prisma = await stage.prisma();
    try {
      expect(await prisma.device.findUnique({ where: { deviceId: device } })).toBeNull();
    } finally {
      await prisma.$disconnect();
    }
  });

  it('handles a job of many lamps, each lamp in order, with one keen-delivery job; a message handled twice has its effects once', async () => {
    const partition = 3;
    const [a, b, c] = lampsOfPartition(3, partition);
    const at = (ms: number) => new Date(Date.parse('2026-11-28T11:00:00.000Z') + ms).toISOString();
    const state = (deviceId: string, connected: boolean, ms: number, retained = false) => ({
      ...bridge(deviceId, connected, { receivedAt: at(ms), retained }),
      messageId: messageId(),
    });
    const states = [
      state(a!, true, 0),
      state(b!, true, 1),
      state(a!, false, 10),
      state(c!, false, 11),
      state(a!, true, 20),
      state(b!, true, 30, true),
    ];
    const first = messageId();
    await stage.addBridgeStates(states, first);
    await waitFor('the job done', stage.allIngestDone);

    const keenJob = (await stage.queues.keen.getJob(`${first}-keen`))!.data;
    const of = (device: string) =>
      keenJob.events
        .filter((record) => record.event.device_id === device)
        .map((record) => [record.collection, record.event.state ?? null, record.event.keen.uniqueness_token]);
    expect(of(a!)).toEqual([
      ['activations', null, `${states[0]!.messageId}-activations`],
      ['devicemonitoring', 'connected', `${states[0]!.messageId}-devicemonitoring`],
      ['devicemonitoring', 'disconnected', `${states[2]!.messageId}-devicemonitoring`],
      ['devicemonitoring', 'connected', `${states[4]!.messageId}-devicemonitoring`],
    ]);
    // b's retained replay of its connected state is not a change.
    expect(of(b!)).toEqual([
      ['activations', null, `${states[1]!.messageId}-activations`],
      ['devicemonitoring', 'connected', `${states[1]!.messageId}-devicemonitoring`],
    ]);
    expect(of(c!)).toEqual([]);
    const rejected = new Queue<RejectedMessageJob>(queueKey(QUEUE_NAMES.rejected), { connection: stage.redis, prefix: stage.prefix });
    try {
      expect((await rejected.getJob(`${states[3]!.messageId}-rejected`))?.data).toMatchObject({ reason: 'unknown_device', deviceId: c });
    } finally {
      await rejected.close();
    }

    // The broker sends a's first connect and b's replay again, and the subscriber queues them in a
    // later job: the same Keen events (tokens) for a's, still nothing for b's, the rows untouched.
    const again = messageId();
    await stage.addBridgeStates([states[0]!, states[5]!], again);
    await waitFor('the resends handled', stage.allIngestDone);
    expect((await stage.queues.keen.getJob(`${again}-keen`))!.data.events.map((record) => record.event.keen.uniqueness_token)).toEqual([
      `${states[0]!.messageId}-activations`,
      `${states[0]!.messageId}-devicemonitoring`,
    ]);
    const prisma = await stage.prisma();
    try {
      const rows = await prisma.device.findMany({ where: { deviceId: { in: [a!, b!, c!] } }, orderBy: { deviceId: 'asc' } });
      expect(rows.map((row) => [row.deviceId, row.createdByMessageId, row.bridgeConnected, row.bridgeStateMessageId])).toEqual(
        [
          [a, states[0]!.messageId, true, states[4]!.messageId],
          [b, states[1]!.messageId, true, states[1]!.messageId],
        ].sort((x, y) => String(x[0]).localeCompare(String(y[0]))),
      );
    } finally {
      await prisma.$disconnect();
    }
  });

  it('fails a job whose data is not a bridge-states job for good at once, and handles the next job of its partition', async () => {
    const device = randomDeviceId();
    const partition = stage.queues.bridgeStateQueueFor(device);
    // One state, as jobs were queued before bridge states were grouped, or as typed in the dashboard.
    const malformed = messageId();
    await partition.add('bridge-state', bridge(device, true) as unknown as BridgeStatesJob, { jobId: malformed });
    const next = messageId();
    await stage.addBridge(bridge(device, true), next);
    await waitFor('the partition done', stage.allIngestDone);
    const failed = (await partition.getJob(malformed))!;
    expect(await failed.getState()).toBe('failed');
    expect(failed.attemptsMade).toBe(1);
    expect(failed.failedReason).toBe("malformed job data: kind: not 'bridge-states'");
    expect(await (await partition.getJob(next))!.getState()).toBe('completed');
    expect((await stage.queues.keen.getJob(`${next}-keen`))!.data.events.map((record) => record.collection)).toEqual([
      'activations',
      'devicemonitoring',
    ]);
  });

  it("with UNKNOWN_DEVICE_STATES=reject, turns known lamps' states into one keen-delivery job; unknown lamps wait apart, then are rejected", async () => {
    const known = randomDeviceId();
    const alsoKnown = randomDeviceId();
    const unknown = randomDeviceId();
    await stage.addBridge(bridge(known, true), `known${known}`);
    await stage.addBridge(bridge(alsoKnown, true), `known${alsoKnown}`);
    await waitFor('both lamps registered', stage.allIngestDone);

    const state = { color: { h: 0.44, s: 1 }, brightness: 0.47, on: true, client: 'lamp_ui' };
    // The unknown lamp's first state as its firmware sent it (spaces, a non-ASCII name, upper-case
    // id, leading slash).
    const sent = { topic: `/devices/${unknown.toUpperCase()}/lamp/changed`, payload: '{"on": true, "name": "lámpara 💡"}\n' };
    const states = [
      lampState(known, state),
      lampState(unknown, { on: true, name: 'lámpara 💡' }, sent),
      lampState(alsoKnown, { ...state, on: false }),
      lampState(unknown, { on: false }),
    ];
    const jobId = messageId();
    await stage.addLampStates(states, jobId);

    const keenJob = await waitFor(
      'the devicestate events',
      async () => (await stage.queues.keen.getJob(`${jobId}-keen`))?.data,
      10_000,
      20,
    );
    // The known lamps' states did not wait for the unknown lamp's: theirs wait in a job of their own.
    const waiting = await stage.queues.lampStates.getJob(`${jobId}-w`);
    expect(waiting).toBeDefined();
    expect(waiting!.data).toEqual({ kind: 'lamp-states', states: [states[1], states[3]], waits: 1 });

    expect(keenJob.events.map((record) => record.collection)).toEqual(['devicestate', 'devicestate']);
    expect(keenJob.events[0]!.event).toEqual({
      device_id: known,
      state,
      keen: {
        timestamp: states[0]!.receivedAt,
        uniqueness_token: `${states[0]!.messageId}-devicestate`,
        addons: [{ name: 'keen:date_time_parser', input: { date_time: 'keen.timestamp' }, output: 'timestamp.info' }],
      },
    });
    expect(keenJob.events[1]!.event).toMatchObject({
      device_id: alsoKnown,
      state: { ...state, on: false },
      keen: { uniqueness_token: `${states[2]!.messageId}-devicestate` },
    });

    const rejected = new Queue<RejectedMessageJob>(queueKey(QUEUE_NAMES.rejected), { connection: stage.redis, prefix: stage.prefix });
    try {
      const records = await waitFor(
        'unknown device rejections',
        async () => {
          const found = await Promise.all(
            [states[1]!, states[3]!].map(async (s) => (await rejected.getJob(`${s.messageId}-rejected`))?.data),
          );
          return found.every(Boolean) ? (found as RejectedMessageJob[]) : undefined;
        },
        20_000,
        100,
      );
      const detail = 'lamp state from a device that never connected its bridge';
      expect(records[0]).toEqual({
        reason: 'unknown_device',
        detail,
        deviceId: unknown,
        topic: sent.topic,
        payloadBytes: Buffer.byteLength(sent.payload),
        payloadHead: Buffer.from(sent.payload).toString('base64'),
        receivedAt: states[1]!.receivedAt,
      });
      expect(records[1]).toEqual({
        reason: 'unknown_device',
        detail,
        deviceId: unknown,
        topic: `/devices/${unknown}/lamp/changed`,
        payloadBytes: Buffer.byteLength(states[3]!.payload),
        payloadHead: Buffer.from(states[3]!.payload).toString('base64'),
        receivedAt: states[3]!.receivedAt,
      });
    } finally {
      await rejected.close();
    }
    // They waited the allowed number of times (unknownDeviceAttempts: 3), and nothing of theirs went to Keen.
    expect((await stage.queues.lampStates.getJob(`${jobId}-w-w`))?.data).toMatchObject({ states: [states[1], states[3]], waits: 2 });
    expect(await stage.queues.lampStates.getJob(`${jobId}-w-w-w`)).toBeUndefined();
    expect((await stage.keenEvents()).filter((record) => record.event.device_id === unknown)).toEqual([]);
  });

  it('delivers the states of a lamp whose bridge connects while they wait', async () => {
    const late = randomDeviceId();
    const states = [lampState(late, { on: true, n: 1 }), lampState(late, { on: true, n: 2 })];
    const jobId = messageId();
    await stage.addLampStates(states, jobId);
    await waitFor('the states waiting', async () => (await stage.queues.lampStates.getJob(`${jobId}-w`))?.data, 5_000, 20);
    await stage.addBridge(bridge(late, true), `late${late}`);

    const events = await waitFor(
      'the late states delivered',
      async () => {
        for (const id of [`${jobId}-w-keen`, `${jobId}-w-w-keen`]) {
          const job = await stage.queues.keen.getJob(id);
          if (job) return job.data.events;
        }
        return undefined;
      },
      10_000,
      50,
    );
    expect(
      events.map((record) => [record.collection, record.event.device_id, record.event.state, record.event.keen.uniqueness_token]),
    ).toEqual([
      ['devicestate', late, { on: true, n: 1 }, `${states[0]!.messageId}-devicestate`],
      ['devicestate', late, { on: true, n: 2 }, `${states[1]!.messageId}-devicestate`],
    ]);
    await waitFor('all ingest jobs done', stage.allIngestDone);
    const rejected = new Queue<RejectedMessageJob>(queueKey(QUEUE_NAMES.rejected), { connection: stage.redis, prefix: stage.prefix });
    try {
      for (const s of states) expect(await rejected.getJob(`${s.messageId}-rejected`)).toBeUndefined();
    } finally {
      await rejected.close();
    }
    expect(
      (await stage.keenEvents()).filter((record) => record.event.device_id === late && record.collection === 'devicestate'),
    ).toHaveLength(2);
  });

  it('tells a claimed lamp that reconnects it is claimed, read from the registry at that moment', async () => {
    const device = randomDeviceId();
    await stage.addBridge(bridge(device, true), `claim${device}0`);
    await waitFor('the lamp registered', stage.allIngestDone);
    const prisma = await stage.prisma();
    try {
      const owner = await prisma.user.create({ data: { username: `owner-${device}`, isActive: true } });
      await prisma.device.update({ where: { deviceId: device }, data: { userId: owner.id } });
      const row = await prisma.device.findUniqueOrThrow({ where: { deviceId: device } });
      // The bridge drops and reconnects within one millisecond: the reconnect is still a change.
      const receivedAt = new Date().toISOString();
      await stage.addBridge(bridge(device, false, { receivedAt }), `claim${device}1`);
      await stage.addBridge(bridge(device, true, { receivedAt }), `claim${device}2`);
      await waitFor('the reconnect handled', stage.allIngestDone);
      const topic = `/devices/${device}/lamp/associated`;
      await waitFor('two association messages', () => associationMessages.filter((m) => m.topic === topic).length === 2);
      expect(associationMessages.filter((m) => m.topic === topic).map((m) => [JSON.parse(m.payload), m.retain])).toEqual([
        [{ associated: false, code: row.associationCode }, false],
        [{ associated: true }, false],
      ]);
      // Claimed, not re-created: the same row, one activation.
      expect(await prisma.device.findUniqueOrThrow({ where: { deviceId: device } })).toEqual({
        ...row,
        bridgeConnected: true,
        bridgeStateAt: expect.any(Date),
        bridgeStateMessageId: `claim${device}2`,
      });
      expect(
        (await stage.keenEvents()).filter((record) => record.event.device_id === device && record.collection === 'activations'),
      ).toHaveLength(1);
    } finally {
      await prisma.$disconnect();
    }
  });
});

describe('registry worker delivering lamp states to Keen itself', () => {
  const stage = registryStage('reg-direct');
  let keen: FakeKeen;
  let batcher: KeenBatcher;

  beforeAll(async () => {
    await stage.open();
    keen = await startFakeKeen({ projectId: 'direct-project', writeKey: 'direct-write-key' });
    batcher = new KeenBatcher({
      client: new KeenClient({ apiUrl: keen.url, projectId: keen.projectId, writeKey: keen.writeKey, timeoutMs: 2000 }),
      maxEvents: 50,
      lingerMs: 5,
    });
    await stage.startWorkers(1, { keen: batcher });
  });
  afterAll(async () => {
    await stage.close();
    await batcher.close();
    await keen.close();
  });

  it('sends what Keen takes before the job completes, and passes only the rest on to keen-delivery', async () => {
    const [a, b] = [randomDeviceId(), randomDeviceId()];
    await stage.addBridge(bridge(a, true), messageId());
    await stage.addBridge(bridge(b, true), messageId());
    await waitFor('both lamps registered', stage.allIngestDone);
    // The bridge states' events still travel through keen-delivery (nobody delivers them here).
    const queuedBefore = (await stage.keenJobs()).length;
    keen.rejectEvents((_c, e) =>
      (e.state as { poison?: boolean } | undefined)?.poison
        ? { name: 'InvalidPropertyValueError', description: 'refused for the test' }
        : undefined,
    );

    const states = [lampState(a, { on: true }), lampState(b, { on: false, poison: true }), lampState(a, { on: false })];
    const jobId = messageId();
    await stage.addLampStates(states, jobId);
    await waitFor('the job done', stage.allIngestDone);
    expect(keen.tokens('devicestate').sort()).toEqual(
      [`${states[0]!.messageId}-devicestate`, `${states[2]!.messageId}-devicestate`].sort(),
    );
    // Only the refused event went on, for keen-delivery to retry and dead-letter.
    const rest = await stage.queues.keen.getJob(`${jobId}-keen`);
    expect(rest!.data.events.map((record) => record.event.keen.uniqueness_token)).toEqual([`${states[1]!.messageId}-devicestate`]);
    expect((await stage.keenJobs()).length).toBe(queuedBefore + 1);

    // Keen down: the whole group goes on to keen-delivery, none of it is lost.
    keen.clearFaults();
    keen.respondWith({ status: 503, body: { message: 'down for the test', error_code: 'ServiceUnavailableError' } });
    const later = [lampState(a, { on: true, n: 2 }), lampState(b, { on: true, n: 2 })];
    const laterJobId = messageId();
    await stage.addLampStates(later, laterJobId);
    await waitFor('the second job done', stage.allIngestDone);
    const queued = await stage.queues.keen.getJob(`${laterJobId}-keen`);
    expect(queued!.data.events.map((record) => record.event.keen.uniqueness_token)).toEqual(later.map((s) => `${s.messageId}-devicestate`));
    expect(keen.tokens('devicestate')).toHaveLength(2);
    keen.clearFaults();
  });
});

describe('registry worker with UNKNOWN_DEVICE_STATES=record (the default)', () => {
  const stage = registryStage('reg-record');

  beforeAll(async () => {
    await stage.open();
    await stage.startWorkers(1);
  });
  afterAll(() => stage.close());

  it('records the lamp states of a lamp the registry does not know at once, like any other, and registers nothing', async () => {
    const known = randomDeviceId();
    const unknown = randomDeviceId();
    await stage.addBridge(bridge(known, true), messageId());
    await waitFor('the known lamp registered', stage.allIngestDone);

    const states = [lampState(unknown, { on: true }), lampState(known, { on: false }), lampState(unknown, { on: false, brightness: 0.2 })];
    const jobId = messageId();
    await stage.addLampStates(states, jobId);
    await waitFor('the job done', stage.allIngestDone);

    const keenJob = (await stage.queues.keen.getJob(`${jobId}-keen`))!.data;
    expect(
      keenJob.events.map((record) => [record.collection, record.event.device_id, record.event.state, record.event.keen.uniqueness_token]),
    ).toEqual(states.map((s) => ['devicestate', s.deviceId, stateOf(s), `${s.messageId}-devicestate`]));
    expect(keenJob.events[0]!.event.keen).toMatchObject({ timestamp: states[0]!.receivedAt, addons: [{ name: 'keen:date_time_parser' }] });
    // Nothing waited and nothing was rejected.
    expect(await stage.queues.lampStates.getJob(`${jobId}-w`)).toBeUndefined();
    const rejected = new Queue<RejectedMessageJob>(queueKey(QUEUE_NAMES.rejected), { connection: stage.redis, prefix: stage.prefix });
    try {
      expect(Object.values(await rejected.getJobCounts()).reduce((a, b) => a + b, 0)).toBe(0);
    } finally {
      await rejected.close();
    }
    // A lamp state is not a connect: the unknown lamp is still not registered.
    const prisma = await stage.prisma();
    try {
      expect(await prisma.device.findUnique({ where: { deviceId: unknown } })).toBeNull();
    } finally {
      await prisma.$disconnect();
    }
  });
});

describe('registry worker through a PostgreSQL outage', () => {
  const stage = registryStage('reg-outage');
  const logLines: string[] = [];
  const logger = createLogger('registry-test', 'warn', { write: (line: string) => void logLines.push(line) });
  let admin: pg.Client;

  beforeAll(async () => {
    await stage.open();
    admin = new pg.Client({ connectionString: services.postgres });
    await admin.connect();
  });
  afterAll(async () => {
    await admin.query(`ALTER DATABASE ${stage.db.name} ALLOW_CONNECTIONS true`).catch(() => {});
    await admin.end();
    await stage.close();
  });

  /** The database refuses new connections and loses the ones it had, as in a restart. */
  async function takeDatabaseAway() {
    await admin.query(`ALTER DATABASE ${stage.db.name} ALLOW_CONNECTIONS false`);
    await admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()', [
      stage.db.name,
    ]);
  }

  it('keeps a lamp bridge states in order while the first of them waits for the database', async () => {
    await stage.startWorkers(2, { logger });
    const device = randomDeviceId();
    // The registry has met the database: its pool holds connections that the outage breaks.
    // (Through another partition, which this test then expects to hold the lamp's jobs only.)
    const [warmUp] = lampsOfPartition(1, (bridgePartition(device) + 1) % BRIDGE_PARTITIONS);
    await stage.addBridge(bridge(warmUp!, true), messageId());
    await waitFor('the warm-up done', stage.allIngestDone);

    const at = (ms: number) => new Date(Date.parse('2026-11-28T10:00:00.000Z') + ms).toISOString();
    const ids = [messageId(), messageId(), messageId()];
    await takeDatabaseAway();
    try {
      await stage.addBridge(bridge(device, true, { receivedAt: at(0) }), ids[0]!);
      await stage.addBridge(bridge(device, false, { receivedAt: at(10) }), ids[1]!);
      await stage.addBridge(bridge(device, true, { receivedAt: at(20) }), ids[2]!);

      const retriesOfFirst = () => logLines.filter((line) => line.includes('keeps its place') && line.includes(ids[0]!)).length;
      await waitFor('the first state retried a few times', () => retriesOfFirst() >= 3, 20_000, 20);
      // The partition waits behind it: the lamp's later states have not overtaken it. It is at
      // the head of the queue (the end BullMQ takes from), or being tried again.
      const partition = stage.queues.bridgeState[bridgePartition(device)]!;
      const key = (list: string) => `${stage.prefix}:${partition.name}:${list}`;
      // Both lists in one transaction: the job moves between them.
      const lists = (await stage.redis.multi().lrange(key('active'), 0, -1).lrange(key('wait'), 0, -1).exec())!.map(
        ([, ids]) => ids as string[],
      );
      expect([...lists[0]!, ...lists[1]!.reverse()]).toEqual(ids);
      expect(await partition.getJobCounts('delayed', 'failed', 'completed')).toEqual({ delayed: 0, failed: 0, completed: 0 });
      // Its attempts are the runner's: BullMQ counted none.
      const first = (await partition.getJob(ids[0]!))!;
      expect(first.attemptsMade).toBe(0);
      expect(first.attemptsStarted).toBeGreaterThanOrEqual(3);
      expect(logLines.some((line) => line.includes(ids[1]!) || line.includes(ids[2]!))).toBe(false);
    } finally {
      await admin.query(`ALTER DATABASE ${stage.db.name} ALLOW_CONNECTIONS true`);
    }

    await waitFor('all ingest jobs done', stage.allIngestDone, 30_000);
    const partition = stage.queues.bridgeState[bridgePartition(device)]!;
    const done = await Promise.all(ids.map((id) => partition.getJob(id)));
    for (const job of done) expect(await job!.getState()).toBe('completed');
    // Handled one after the other, in the order they arrived.
    for (let i = 1; i < done.length; i++) expect(done[i]!.processedOn!).toBeGreaterThanOrEqual(done[i - 1]!.finishedOn!);

    // One devicemonitoring event per change, none lost, each from its own job, in order.
    const perJob = await Promise.all(ids.map(async (id) => (await stage.queues.keen.getJob(`${id}-keen`))?.data.events ?? []));
    expect(
      perJob.map((events) => events.map((record) => [record.collection, record.event.state ?? null, record.event.keen.uniqueness_token])),
    ).toEqual([
      [
        ['activations', null, `${ids[0]}-activations`],
        ['devicemonitoring', 'connected', `${ids[0]}-devicemonitoring`],
      ],
      [['devicemonitoring', 'disconnected', `${ids[1]}-devicemonitoring`]],
      [['devicemonitoring', 'connected', `${ids[2]}-devicemonitoring`]],
    ]);
    const monitoring = (await stage.keenEvents()).filter(
      (record) => record.event.device_id === device && record.collection === 'devicemonitoring',
    );
    expect(monitoring.map((record) => [record.event.state, record.event.keen.timestamp])).toEqual([
      ['connected', at(0)],
      ['disconnected', at(10)],
      ['connected', at(20)],
    ]);
    const rejected = new Queue<RejectedMessageJob>(queueKey(QUEUE_NAMES.rejected), { connection: stage.redis, prefix: stage.prefix });
    try {
      expect(await rejected.count()).toBe(0);
      expect(await rejected.getJobCounts('failed', 'completed')).toEqual({ failed: 0, completed: 0 });
    } finally {
      await rejected.close();
    }

    const prisma = await stage.prisma();
    try {
      const row = await prisma.device.findUniqueOrThrow({ where: { deviceId: device } });
      expect(row).toMatchObject({
        bridgeConnected: true,
        bridgeStateMessageId: ids[2],
        createdByMessageId: ids[0],
        bridgeStateAt: new Date(at(20)),
      });
    } finally {
      await prisma.$disconnect();
    }
  });

  it('holds a job of several lamps through the outage, then handles each lamp in order, each event once', async () => {
    const [x, y] = lampsOfPartition(2, 5);
    const at = (ms: number) => new Date(Date.parse('2026-11-28T12:00:00.000Z') + ms).toISOString();
    const states = [
      bridge(x!, true, { receivedAt: at(0) }),
      bridge(y!, true, { receivedAt: at(1) }),
      bridge(x!, false, { receivedAt: at(10) }),
      bridge(y!, false, { receivedAt: at(11) }),
    ].map((state) => ({ ...state, messageId: messageId() }));
    const jobId = messageId();
    await takeDatabaseAway();
    try {
      await stage.addBridgeStates(states, jobId);
      await waitFor('the job retried', () => logLines.some((line) => line.includes('keeps its place') && line.includes(jobId)), 10_000, 20);
    } finally {
      await admin.query(`ALTER DATABASE ${stage.db.name} ALLOW_CONNECTIONS true`);
    }
    await waitFor('all ingest jobs done', stage.allIngestDone, 30_000);
    const events = (await stage.queues.keen.getJob(`${jobId}-keen`))!.data.events;
    for (const [lamp, first, second] of [
      [x!, states[0]!, states[2]!],
      [y!, states[1]!, states[3]!],
    ] as const) {
      expect(
        events
          .filter((record) => record.event.device_id === lamp)
          .map((record) => [record.collection, record.event.state ?? null, record.event.keen.uniqueness_token]),
      ).toEqual([
        ['activations', null, `${first.messageId}-activations`],
        ['devicemonitoring', 'connected', `${first.messageId}-devicemonitoring`],
        ['devicemonitoring', 'disconnected', `${second.messageId}-devicemonitoring`],
      ]);
    }
  });
});
