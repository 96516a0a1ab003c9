/**
 * The whole pipeline as a user runs it: `npm run subscriber` and `npm run worker` as real
 * processes, a real broker, Redis and PostgreSQL, and Keen played by a local server that
 * speaks its wire format. A lamp connects, changes state and disconnects; a bad message
 * passes through; Keen goes down and comes back; Keen refuses one event for good.
 */
import { Queue } from 'bullmq';
import { PrismaPg } from '@prisma/adapter-pg';
import { Redis } from 'ioredis';
import mqtt from 'mqtt';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { PrismaClient } from '../../src/generated/prisma/client.js';
import type { DeadLetterJob, RejectedMessageJob } from '../../src/shared/jobs.js';
import { QUEUE_NAMES, queueKey } from '../../src/shared/queues.js';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { startFakeKeen, type FakeKeen, type StoredEvent } from '../support/fake-keen.js';
import { randomDeviceId, randomPrefix } from '../support/ids.js';
import { startPipeline, type Pipeline } from '../support/pipeline.js';
import { scrapeMetrics, sleep, waitFor } from '../support/processes.js';

const services = inject('services');
const PROJECT = 'lampiproject';
const WRITE_KEY = 'e2e-write-key-0123456789abcdef';
const DATE_TIME_PARSER = { name: 'keen:date_time_parser', input: { date_time: 'keen.timestamp' }, output: 'timestamp.info' };

describe('pipeline end to end', () => {
  const prefix = randomPrefix('e2e');
  const device = randomDeviceId();
  let db: TestDatabase;
  let keen: FakeKeen;
  let pipeline: Pipeline;
  let prisma: InstanceType<typeof PrismaClient>;
  let publisher: mqtt.MqttClient;
  const published: Record<string, number> = {};

  const publish = async (topic: string, payload: string | Buffer) => {
    published[topic] = Date.now();
    await publisher.publishAsync(topic, payload, { qos: 1 });
  };
  const lampTopic = `/devices/${device}/lamp/changed`;
  const bridgeTopic = `$SYS/broker/connection/${device}_broker/state`;
  const ofDevice = (collection: string) => keen.eventsIn(collection).filter((e) => e.device_id === device);

  beforeAll(async () => {
    db = await createTestDatabase(services.postgres);
    keen = await startFakeKeen({ projectId: PROJECT, writeKey: WRITE_KEY });
    pipeline = await startPipeline({
      services,
      prefix,
      databaseUrl: db.url,
      keen: { url: keen.url, projectId: PROJECT, writeKey: WRITE_KEY },
    });
    prisma = new PrismaClient({ adapter: new PrismaPg({ connectionString: db.url }) });
    publisher = await mqtt.connectAsync(services.mqtt, { clientId: `${prefix}-lamp` });
  });

  afterEach(({ task }) => {
    // What the processes said is the first thing anyone needs when this fails.
    if (task.result?.state === 'fail') process.stderr.write(`${pipeline.logs()}\n`);
  });

  afterAll(async () => {
    await publisher?.publishAsync(`/devices/${device}/lamp/associated`, '', { qos: 1, retain: true });
    await publisher?.endAsync();
    await pipeline?.kill();
    await prisma?.$disconnect();
    await keen?.close();
    await db?.drop();
  });

  it('registers a new lamp, sends its association code, and records its events at Keen', async () => {
    const state1 = { color: { h: 0.44, s: 1.0 }, brightness: 0.47, on: true, client: 'lamp_ui' };
    const state2 = { ...state1, on: false, 'ui.theme': 'dark' };
    await publish(bridgeTopic, '1');
    await publish(lampTopic, JSON.stringify(state1));
    await publish(lampTopic, '{"on": tru'); // a bad message between good ones
    await publish(lampTopic, JSON.stringify(state2));
    await publish(bridgeTopic, '0');

    const row = await waitFor('device row, disconnected', () =>
      prisma.device
        .findUnique({ where: { deviceId: device }, include: { user: true } })
        .then((d) => (d?.bridgeConnected === false ? d : undefined)),
    );
    expect(row.name).toBe('My LAMPI');
    expect(row.associationCode).toMatch(/^[0-9a-f]{32}$/);
    expect(row.user).toMatchObject({ username: 'parked_device_user', isActive: false });

    // A lamp that comes online later still finds its code: the message is retained.
    const lamp = await mqtt.connectAsync(services.mqtt, { clientId: `${prefix}-lamp-late` });
    const association = await new Promise<{ payload: string; retain: boolean }>((resolve) => {
      lamp.on('message', (_topic, payload, packet) => resolve({ payload: payload.toString(), retain: packet.retain }));
      void lamp.subscribeAsync(`/devices/${device}/lamp/associated`, { qos: 1 });
    });
    await lamp.endAsync();
    expect(association.retain).toBe(true);
    expect(JSON.parse(association.payload)).toEqual({ associated: false, code: row.associationCode });

    await waitFor(
      'all five events at Keen',
      () => ofDevice('devicemonitoring').length === 2 && ofDevice('devicestate').length === 2 && ofDevice('activations').length === 1,
    );
    const [activation] = ofDevice('activations') as [StoredEvent];
    expectEnvelope(activation, bridgeTopic);
    expect(withoutKeen(activation)).toEqual({ device_id: device, user: 'parked_device_user' });

    const monitoring = ofDevice('devicemonitoring').sort((a, b) => a.keen.timestamp.localeCompare(b.keen.timestamp));
    expect(monitoring.map(withoutKeen)).toEqual([
      { device_id: device, service: 'mqttbridge', state: 'connected' },
      { device_id: device, service: 'mqttbridge', state: 'disconnected' },
    ]);
    monitoring.forEach((event) => expectEnvelope(event, bridgeTopic));

    const states = ofDevice('devicestate').sort((a, b) => a.keen.timestamp.localeCompare(b.keen.timestamp));
    expect(states.map(withoutKeen)).toEqual([
      { device_id: device, state: state1 },
      // Keen refuses dotted property names; they arrive rewritten, not dead-lettered.
      { device_id: device, state: { color: state1.color, brightness: 0.47, on: false, client: 'lamp_ui', ui_theme: 'dark' } },
    ]);
    states.forEach((event) => expectEnvelope(event, lampTopic));

    const rejected = new Queue<RejectedMessageJob>(queueKey(QUEUE_NAMES.rejected), { connection: { url: services.redis }, prefix });
    const record = await waitFor('the rejection record', async () =>
      (await rejected.getJobs(['failed', 'waiting', 'active'])).find((job) => job.data.deviceId === device),
    );
    await rejected.close();
    expect(record.data).toMatchObject({ reason: 'invalid_json', topic: lampTopic });
    expect(pipeline.worker.output()).toContain('"msg":"message rejected: payload is not JSON');
  });

  it('holds events through a Keen outage and delivers every one once Keen is back', async () => {
    keen.respondWith({ status: 503, body: { message: 'Service unavailable', error_code: 'ServiceUnavailable' } });
    const before = ofDevice('devicestate').length;
    for (let i = 0; i < 20; i++) await publish(lampTopic, JSON.stringify({ on: i % 2 === 0, brightness: i / 20 }));
    await waitFor('Keen to be asked and refuse', () => keen.requests.some((r) => r.status === 503));
    await sleep(1500);
    expect(ofDevice('devicestate').length).toBe(before);
    keen.clearFaults();
    await waitFor('all 20 events after recovery', () => ofDevice('devicestate').length === before + 20, 60_000);
    const brightness = ofDevice('devicestate')
      .slice(before)
      .map((e) => (e.state as { brightness: number }).brightness)
      .sort((a, b) => a - b);
    expect(brightness).toEqual(Array.from({ length: 20 }, (_, i) => i / 20));
  });

  it('dead-letters an event Keen refuses for good, with the event and the error, and delivers the rest', async () => {
    keen.rejectEvents((_collection, event) =>
      (event.state as { poison?: boolean } | undefined)?.poison ? 'InvalidPropertyValueError' : undefined,
    );
    const before = ofDevice('devicestate').length;
    await publish(lampTopic, JSON.stringify({ on: true, poison: true }));
    await publish(lampTopic, JSON.stringify({ on: true, brightness: 0.9 }));
    const deadLetters = new Queue<DeadLetterJob>(queueKey(QUEUE_NAMES.deadLetter), { connection: { url: services.redis }, prefix });
    const dead = await waitFor('the dead letter', async () =>
      (await deadLetters.getJobs(['failed', 'waiting', 'active'])).find((job) => job.data.event.device_id === device),
    );
    await deadLetters.close();
    expect(dead.data.collection).toBe('devicestate');
    expect(dead.data.event.state).toEqual({ on: true, poison: true });
    expect(dead.data.lastError.code).toBe('InvalidPropertyValueError');
    expect(dead.data.attemptsMade).toBe(1);
    await waitFor('the good event', () => ofDevice('devicestate').length === before + 1);
    keen.clearFaults();
  });

  it('stops both processes cleanly on SIGTERM, and the write key is nowhere in logs, metrics or Redis', async () => {
    const metrics = (await Promise.all([pipeline.subscriber, pipeline.worker].map(scrapeMetrics))).join('\n');
    expect(metrics).toContain('lampi_keen_events_total');
    expect(metrics).not.toContain(WRITE_KEY);
    expect(await pipeline.subscriber.kill('SIGTERM')).toBe(0);
    expect(await pipeline.worker.kill('SIGTERM')).toBe(0);
    expect(pipeline.logs(100_000)).not.toContain(WRITE_KEY);
    expect(await redisText(services.redis, prefix)).not.toContain(WRITE_KEY);
  });

  function expectEnvelope(event: StoredEvent, topic: string) {
    const sentAt = published[topic]!;
    expect(event.keen.addons).toEqual([DATE_TIME_PARSER]);
    expect(event.keen.uniqueness_token).toMatch(/^[0-9a-f]{32}-(activations|devicemonitoring|devicestate)$/);
    expect(event.keen.timestamp).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    // Stamped on arrival at the subscriber, not when a worker got to it.
    expect(Math.abs(Date.parse(event.keen.timestamp) - sentAt)).toBeLessThan(5000);
  }
});

/** Everything the pipeline keeps in Redis under its prefix (job data, options, errors), as text. */
async function redisText(url: string, prefix: string): Promise<string> {
  const redis = new Redis(url);
  const parts: string[] = [];
  try {
    for await (const keys of redis.scanStream({ match: `${prefix}:*`, count: 500 }) as AsyncIterable<string[]>) {
      for (const key of keys) {
        const type = await redis.type(key);
        if (type === 'hash') parts.push(JSON.stringify(await redis.hgetall(key)));
        else if (type === 'string') parts.push((await redis.get(key)) ?? '');
        else if (type === 'list') parts.push(...(await redis.lrange(key, 0, -1)));
        else if (type === 'zset') parts.push(...(await redis.zrange(key, 0, -1)));
        else if (type === 'set') parts.push(...(await redis.smembers(key)));
        else if (type === 'stream') parts.push(JSON.stringify(await redis.xrange(key, '-', '+')));
      }
    }
  } finally {
    redis.disconnect();
  }
  expect(parts.length).toBeGreaterThan(10);
  return parts.join('\n');
}

function withoutKeen(event: StoredEvent): Record<string, unknown> {
  const { keen: _keen, ...rest } = event;
  return rest;
}
