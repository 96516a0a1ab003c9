/**
 * The subscriber against a real broker and a real Redis: what it enqueues, what it refuses,
 * and that a message is acknowledged only once Redis holds its job.
 */
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import mqtt from 'mqtt';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import type { IngestJob, RejectedMessageJob } from '../../src/shared/jobs.js';
import { createLogger } from '../../src/shared/logger.js';
import { createMetrics } from '../../src/shared/metrics.js';
import { BRIDGE_PARTITIONS, QUEUE_NAMES } from '../../src/shared/queues.js';
import { startSubscriber, type Subscriber, type SubscriberConfig } from '../../src/subscriber/subscriber.js';
import { randomDeviceId, randomPrefix } from '../support/ids.js';
import { sleep, startMosquitto, startRedis, startService, waitFor, waitForLog } from '../support/processes.js';

const services = inject('services');
const logger = createLogger('subscriber-test', 'silent');

function configFor(prefix: string, overrides: Partial<SubscriberConfig> = {}): SubscriberConfig {
  return {
    REDIS_URL: services.redis,
    QUEUE_PREFIX: prefix,
    LOG_LEVEL: 'silent',
    MQTT_URL: services.mqtt,
    MQTT_CLIENT_ID: prefix,
    MQTT_SHARE_GROUP: prefix,
    SUBSCRIBER_CONNECTIONS: 3,
    ...overrides,
  };
}

async function publish(url: string, messages: Array<{ topic: string; payload: string | Buffer; retain?: boolean }>) {
  const client = await mqtt.connectAsync(url, { clientId: `pub-${randomPrefix()}` });
  for (const m of messages) await client.publishAsync(m.topic, m.payload, { qos: 1, retain: m.retain ?? false });
  await client.endAsync();
}

async function jobsIn<T>(redisUrl: string, prefix: string, name: string, states: Array<'waiting' | 'failed' | 'completed' | 'active' | 'delayed'> = ['waiting']) {
  const queue = new Queue<T>(name, { connection: { url: redisUrl }, prefix });
  try {
    return await queue.getJobs(states, 0, -1);
  } finally {
    await queue.close();
  }
}

/** Jobs of every queue the subscriber feeds: lamp states and each bridge-state partition. */
async function ingestJobs(redisUrl: string, prefix: string) {
  const names = [QUEUE_NAMES.ingest, ...Array.from({ length: BRIDGE_PARTITIONS }, (_, n) => QUEUE_NAMES.bridgeState(n))];
  return (await Promise.all(names.map((name) => jobsIn<IngestJob>(redisUrl, prefix, name)))).flat();
}

describe('subscriber', () => {
  const prefix = randomPrefix('sub');
  const metrics = createMetrics('subscriber-test');
  let subscriber: Subscriber;

  beforeAll(async () => {
    subscriber = await startSubscriber(configFor(prefix), logger, metrics);
  });
  afterAll(async () => {
    await subscriber?.close();
  });

  it('enqueues lamp states and bridge states with the time they arrived', async () => {
    const a = randomDeviceId();
    const b = randomDeviceId().toUpperCase();
    const before = Date.now();
    const state = { color: { h: 0.44, s: 1.0 }, brightness: 0.47, on: true, client: 'lamp_ui' };
    await publish(services.mqtt, [
      { topic: `/devices/${a}/lamp/changed`, payload: JSON.stringify(state) },
      { topic: `devices/${a}/lamp/changed`, payload: JSON.stringify({ ...state, on: false }) },
      { topic: `$SYS/broker/connection/${b}_broker/state`, payload: '1' },
      { topic: `$SYS/broker/connection/${b}_broker/state`, payload: '0' },
    ]);
    const jobs = await waitFor('four ingest jobs', async () => {
      const found = await ingestJobs(services.redis, prefix);
      return found.length === 4 ? found : undefined;
    });
    const after = Date.now();
    const data = jobs.map((job) => job.data).sort((x, y) => x.receivedAt.localeCompare(y.receivedAt));
    for (const job of data) {
      expect(Date.parse(job.receivedAt)).toBeGreaterThanOrEqual(before);
      expect(Date.parse(job.receivedAt)).toBeLessThanOrEqual(after);
    }
    expect(data.filter((d) => d.kind === 'lamp-state')).toEqual(
      expect.arrayContaining([
        { kind: 'lamp-state', deviceId: a, state, receivedAt: expect.any(String) },
        { kind: 'lamp-state', deviceId: a, state: { ...state, on: false }, receivedAt: expect.any(String) },
      ]),
    );
    expect(data.filter((d) => d.kind === 'bridge-state').map((d) => d.kind === 'bridge-state' && [d.deviceId, d.connected, d.retained])).toEqual(
      expect.arrayContaining([
        [b.toLowerCase(), true, false],
        [b.toLowerCase(), false, false],
      ]),
    );
    expect(new Set(jobs.map((job) => job.id)).size).toBe(4);
    expect(jobs.every((job) => /^[0-9a-f]{32}$/.test(job.id!))).toBe(true);
  });

  it('records each bad message with its reason while the good ones around it flow', async () => {
    const device = randomDeviceId();
    const good = (n: number) => ({ topic: `/devices/${device}/lamp/changed`, payload: JSON.stringify({ on: true, n }) });
    await publish(services.mqtt, [
      good(1),
      { topic: `/devices/${device}/lamp/changed`, payload: 'not json' },
      { topic: `/devices/${device}/lamp/changed`, payload: Buffer.from([0xc3, 0x28]) },
      { topic: `/devices/${device}/lamp/changed`, payload: Buffer.alloc(64 * 1024 + 1, 0x20) },
      { topic: `/devices/${device}/lamp/changed`, payload: '{"brightness":"high"}' },
      { topic: `/devices/nothex!/lamp/changed`, payload: '{}' },
      { topic: `$SYS/broker/connection/${device}_broker/state`, payload: '2' },
      good(2),
    ]);
    const rejected = await waitFor('six rejection records', async () => {
      const found = await jobsIn<RejectedMessageJob>(services.redis, prefix, QUEUE_NAMES.rejected);
      return found.length === 6 ? found : undefined;
    });
    expect(rejected.map((job) => job.data.reason).sort()).toEqual(
      ['invalid_bridge_state', 'invalid_device_id', 'invalid_json', 'invalid_lamp_state', 'invalid_utf8', 'payload_too_large'].sort(),
    );
    const utf8 = rejected.find((job) => job.data.reason === 'invalid_utf8')!;
    expect(Buffer.from(utf8.data.payloadHead, 'base64')).toEqual(Buffer.from([0xc3, 0x28]));
    expect(utf8.data.deviceId).toBe(device);
    const goodJobs = await waitFor('both good messages', async () => {
      const found = (await ingestJobs(services.redis, prefix)).filter((job) => job.data.deviceId === device);
      return found.length === 2 ? found : undefined;
    });
    expect(goodJobs.map((job) => (job.data.kind === 'lamp-state' ? job.data.state.n : null)).sort()).toEqual([1, 2]);
    const counted = await metrics.messagesRejected.get();
    expect(counted.values.find((v) => v.labels.reason === 'invalid_json')?.value).toBe(1);
  });

  it('marks the broker replay of a retained bridge state as retained', async () => {
    const device = randomDeviceId();
    const topic = `$SYS/broker/connection/${device}_broker/state`;
    await publish(services.mqtt, [{ topic, payload: '1', retain: true }]);
    const own = randomPrefix('sub-retained');
    const second = await startSubscriber(configFor(own), logger, createMetrics('t'));
    try {
      const jobs = await waitFor('the retained replay', async () => {
        const found = (await ingestJobs(services.redis, own)).filter((job) => job.data.deviceId === device);
        return found.length === 1 ? found : undefined;
      });
      expect(jobs[0]!.data).toMatchObject({ kind: 'bridge-state', connected: true, retained: true });
    } finally {
      await second.close();
      await publish(services.mqtt, [{ topic, payload: '', retain: true }]);
    }
  });
});

describe('subscriber durability', () => {
  const cleanups: Array<() => Promise<unknown>> = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {});
  });

  const lampMessages = (device: string, from: number, count: number) =>
    Array.from({ length: count }, (_, i) => ({ topic: `/devices/${device}/lamp/changed`, payload: JSON.stringify({ on: true, seq: from + i }) }));

  async function seqsIn(redisUrl: string, prefix: string): Promise<number[]> {
    const jobs = await jobsIn<IngestJob>(redisUrl, prefix, QUEUE_NAMES.ingest);
    return jobs.map((job) => (job.data.kind === 'lamp-state' ? (job.data.state.seq as number) : -1)).sort((a, b) => a - b);
  }

  it('holds messages while Redis is down and enqueues every one, once, when it is back', async () => {
    let redis = await startRedis({ appendonly: true });
    cleanups.push(() => redis.kill('SIGKILL'));
    const broker = await startMosquitto();
    cleanups.push(() => broker.kill());
    const prefix = randomPrefix('outage');
    const subscriber = await startSubscriber(configFor(prefix, { REDIS_URL: redis.url, MQTT_URL: broker.url }), logger, createMetrics('t'));
    cleanups.push(() => subscriber.close());
    const device = randomDeviceId();

    await publish(broker.url, lampMessages(device, 0, 50));
    await waitFor('first 50 jobs', async () => (await seqsIn(redis.url, prefix)).length === 50);

    await redis.kill('SIGKILL');
    await publish(broker.url, lampMessages(device, 50, 50));
    await sleep(1500);
    redis = await startRedis({ port: redis.port, dir: redis.dir, appendonly: true });

    const seqs = await waitFor('all 100 jobs', async () => {
      const found = await seqsIn(redis.url, prefix);
      return found.length >= 100 ? found : undefined;
    });
    await sleep(500);
    expect(await seqsIn(redis.url, prefix)).toEqual(Array.from({ length: 100 }, (_, i) => i));
    expect(seqs).toHaveLength(100);
  });

  it('loses and duplicates nothing when the subscriber process is killed mid-stream', async () => {
    const broker = await startMosquitto();
    cleanups.push(() => broker.kill());
    const prefix = randomPrefix('crash');
    const env = {
      REDIS_URL: services.redis,
      QUEUE_PREFIX: prefix,
      MQTT_URL: broker.url,
      MQTT_CLIENT_ID: prefix,
      MQTT_SHARE_GROUP: prefix,
      SUBSCRIBER_CONNECTIONS: '4',
    };
    let proc = startService('subscriber', env);
    cleanups.push(() => proc.kill('SIGKILL'));
    await waitForLog(proc, 'subscriber ready');
    const device = randomDeviceId();
    const total = 3000;
    const publishing = publish(broker.url, lampMessages(device, 0, total));
    await waitFor('some jobs', async () => (await seqsIn(services.redis, prefix)).length > 300, 30_000, 20);
    await proc.kill('SIGKILL');
    await publishing;
    proc = startService('subscriber', env);
    await waitForLog(proc, 'subscriber ready');
    await waitFor('every message', async () => (await seqsIn(services.redis, prefix)).length >= total, 60_000);
    await sleep(1000);
    expect(await seqsIn(services.redis, prefix)).toEqual(Array.from({ length: total }, (_, i) => i));
    expect(await proc.kill('SIGTERM')).toBe(0);
  });
});
