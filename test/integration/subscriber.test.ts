/**
 * The subscriber against a real broker and a real Redis: what it enqueues, what it refuses,
 * that lamp states arriving together are stored together (group commit), and that a message
 * is acknowledged only once Redis holds its job.
 */
import { createServer, connect, type Socket } from 'node:net';
import { Queue } from 'bullmq';
import mqtt from 'mqtt';
import mqttPacket from 'mqtt-packet';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import type { BridgeStatesJob, LampStatesJob, RejectedMessageJob } from '../../src/shared/jobs.js';
import { createLogger } from '../../src/shared/logger.js';
import type { MqttMessage } from '../../src/shared/message.js';
import { createMetrics } from '../../src/shared/metrics.js';
import { BRIDGE_PARTITIONS, bridgePartition, openQueues, QUEUE_NAMES, queueKey } from '../../src/shared/queues.js';
import { Intake } from '../../src/subscriber/intake.js';
import { RedeliveryLedger } from '../../src/subscriber/redeliveries.js';
import { startSubscriber, type Subscriber, type SubscriberConfig } from '../../src/subscriber/subscriber.js';
import { randomDeviceId, randomPrefix } from '../support/ids.js';
import { freePort, sleep, startMosquitto, startRedis, startService, waitFor, waitForLog } from '../support/processes.js';
import { connectRedis } from '../../src/shared/redis.js';

const services = inject('services');
const logger = createLogger('subscriber-test', 'silent');

type JobState = 'waiting' | 'failed' | 'completed' | 'active' | 'delayed';
type StoredLampState = LampStatesJob['states'][number];

function configFor(prefix: string, overrides: Partial<SubscriberConfig> = {}): SubscriberConfig {
  return {
    REDIS_URL: services.redis,
    REDIS_CLUSTER_NODES: [],
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

/** All at once: the broker passes them on as fast as the subscriber's in-flight windows allow. */
async function publishAtOnce(url: string, messages: Array<{ topic: string; payload: string | Buffer }>) {
  const client = await mqtt.connectAsync(url, { clientId: `pub-${randomPrefix()}` });
  await Promise.all(messages.map((m) => client.publishAsync(m.topic, m.payload, { qos: 1 })));
  await client.endAsync();
}

/** Jobs in one queue, oldest first. */
async function jobsIn<T>(redisUrl: string, prefix: string, name: string, states: JobState[] = ['waiting']) {
  const queue = new Queue<T>(queueKey(name), { connection: { url: redisUrl }, prefix });
  try {
    return await queue.getJobs(states, 0, -1, true);
  } finally {
    await queue.close();
  }
}

/** The jobs of the lamp-states queue. */
const lampStateJobs = (redisUrl: string, prefix: string) => jobsIn<LampStatesJob>(redisUrl, prefix, QUEUE_NAMES.lampStates);

/** Every lamp state stored, each with the id of the lamp-states job that carries it. */
async function lampStatesIn(redisUrl: string, prefix: string): Promise<Array<StoredLampState & { jobId: string }>> {
  return (await lampStateJobs(redisUrl, prefix)).flatMap((job) => job.data.states.map((state) => ({ ...state, jobId: job.id! })));
}

type StoredBridgeState = BridgeStatesJob['states'][number] & { jobId: string };

/** The bridge states stored in one partition, in the order its worker takes them. */
async function bridgeStatesInPartition(redisUrl: string, prefix: string, partition: number): Promise<StoredBridgeState[]> {
  const jobs = await jobsIn<BridgeStatesJob>(redisUrl, prefix, QUEUE_NAMES.bridgeState(partition));
  return jobs.flatMap((job) => job.data.states.map((state) => ({ ...state, jobId: job.id! })));
}

/** The bridge states of every partition. */
async function bridgeStatesIn(redisUrl: string, prefix: string): Promise<StoredBridgeState[]> {
  const partitions = Array.from({ length: BRIDGE_PARTITIONS }, (_, n) => bridgeStatesInPartition(redisUrl, prefix, n));
  return (await Promise.all(partitions)).flat();
}

const HEX_ID = /^[0-9a-f]{32}$/;
/** A queued lamp state's JSON, as the worker reads it. */
const stateOf = (queued: { payload: string }): Record<string, unknown> => JSON.parse(queued.payload) as Record<string, unknown>;

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
    // As LAMPI's Python firmware writes it (json.dumps: spaces after separators), not as we would.
    const sent = JSON.stringify({ ...state, on: false }, null, 1);
    await publish(services.mqtt, [
      { topic: `/devices/${a}/lamp/changed`, payload: JSON.stringify(state) },
      { topic: `devices/${a}/lamp/changed`, payload: sent },
      { topic: `$SYS/broker/connection/${b}_broker/state`, payload: '1' },
      { topic: `$SYS/broker/connection/${b}_broker/state`, payload: '0' },
    ]);
    const states = await waitFor('two lamp states', async () => {
      const found = (await lampStatesIn(services.redis, prefix)).filter((s) => s.deviceId === a);
      return found.length === 2 ? found : undefined;
    });
    const bridges = await waitFor('two bridge states', async () => {
      const found = (await bridgeStatesIn(services.redis, prefix)).filter((s) => s.deviceId === b.toLowerCase());
      return found.length === 2 ? found : undefined;
    });
    const after = Date.now();
    for (const receivedAt of [...states, ...bridges].map((s) => s.receivedAt)) {
      expect(Date.parse(receivedAt)).toBeGreaterThanOrEqual(before);
      expect(Date.parse(receivedAt)).toBeLessThanOrEqual(after);
    }
    expect(states.map(({ jobId: _, ...s }) => s)).toEqual(
      expect.arrayContaining([
        // A lamp state travels exactly as sent, topic and payload: the worker parses it again.
        {
          deviceId: a,
          receivedAt: expect.any(String),
          messageId: expect.stringMatching(HEX_ID),
          topic: `/devices/${a}/lamp/changed`,
          payload: JSON.stringify(state),
        },
        {
          deviceId: a,
          receivedAt: expect.any(String),
          messageId: expect.stringMatching(HEX_ID),
          topic: `devices/${a}/lamp/changed`,
          payload: sent,
        },
      ]),
    );
    // Both bridge states sit in their lamp's partition, in the order they were published.
    expect(bridges.map((s) => [s.kind, s.connected, s.retained, s.topic])).toEqual([
      ['bridge-state', true, false, `$SYS/broker/connection/${b}_broker/state`],
      ['bridge-state', false, false, `$SYS/broker/connection/${b}_broker/state`],
    ]);
    // Every message has an id of its own, and every job.
    const ids = [...states, ...bridges].map((s) => s.messageId);
    expect(new Set(ids).size).toBe(4);
    expect(ids.every((id) => HEX_ID.test(id))).toBe(true);
    expect([...states, ...bridges].every((s) => HEX_ID.test(s.jobId))).toBe(true);
  });

  it('records each message it cannot store with its reason while the others around it flow', async () => {
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
    const rejected = await waitFor('four rejection records', async () => {
      const found = await jobsIn<RejectedMessageJob>(services.redis, prefix, QUEUE_NAMES.rejected);
      return found.length === 4 ? found : undefined;
    });
    expect(rejected.map((job) => job.data.reason).sort()).toEqual(
      ['invalid_bridge_state', 'invalid_device_id', 'invalid_utf8', 'payload_too_large'].sort(),
    );
    const utf8 = rejected.find((job) => job.data.reason === 'invalid_utf8')!;
    expect(Buffer.from(utf8.data.payloadHead!, 'base64')).toEqual(Buffer.from([0xc3, 0x28]));
    expect(utf8.data.deviceId).toBe(device);
    expect(rejected.every((job) => HEX_ID.test(job.id!))).toBe(true);
    // Text whose JSON is no lamp state is stored as sent: the lamp-states stage reads it, and refuses it.
    const stored = await waitFor('the good messages and the two of text', async () => {
      const found = (await lampStatesIn(services.redis, prefix)).filter((s) => s.deviceId === device);
      return found.length === 4 ? found : undefined;
    });
    expect(stored.map((s) => s.payload).sort()).toEqual([good(1).payload, good(2).payload, 'not json', '{"brightness":"high"}'].sort());
    expect((await bridgeStatesIn(services.redis, prefix)).filter((s) => s.deviceId === device)).toEqual([]);
    const counted = await metrics.messagesRejected.get();
    expect(counted.values.find((v) => v.labels.reason === 'invalid_utf8')?.value).toBe(1);
    expect(counted.values.find((v) => v.labels.reason === 'invalid_json')).toBeUndefined();
  });

  it('stores lamp states that arrive together in far fewer lamp-states jobs, each state once with an id of its own', async () => {
    const device = randomDeviceId();
    const total = 2000;
    const jobsBefore = new Set((await lampStateJobs(services.redis, prefix)).map((job) => job.id));
    await publishAtOnce(
      services.mqtt,
      Array.from({ length: total }, (_, seq) => ({ topic: `/devices/${device}/lamp/changed`, payload: JSON.stringify({ on: true, seq }) })),
    );
    const states = await waitFor(
      `${total} lamp states`,
      async () => {
        const found = (await lampStatesIn(services.redis, prefix)).filter((s) => s.deviceId === device);
        return found.length >= total ? found : undefined;
      },
      60_000,
      200,
    );
    await sleep(300);
    const jobs = (await lampStateJobs(services.redis, prefix)).filter((job) => !jobsBefore.has(job.id));
    const ours = jobs.filter((job) => job.data.states.some((s) => s.deviceId === device));
    // Every state exactly once, each with an id of its own.
    expect(states.map((s) => stateOf(s).seq as number).sort((x, y) => x - y)).toEqual(Array.from({ length: total }, (_, i) => i));
    expect(new Set(states.map((s) => s.messageId)).size).toBe(total);
    expect(states.every((s) => HEX_ID.test(s.messageId))).toBe(true);
    // Group commit: the messages that arrived during one write went together into the next.
    expect(ours.length).toBeLessThan(total / 10);
    expect(Math.max(...ours.map((job) => job.data.states.length))).toBeGreaterThan(10);
    for (const job of ours) {
      expect(job.data.kind).toBe('lamp-states');
      expect(job.data.waits).toBeUndefined();
      expect(job.data.states.length).toBeLessThanOrEqual(500);
    }
  });

  it('keeps the arrival order of each lamp bridge states in its partition', async () => {
    const devices = Array.from({ length: 6 }, randomDeviceId);
    const flips = 12;
    const messages = [];
    // Interleaved: lamp after lamp, each alternating connect and disconnect.
    for (let n = 0; n < flips; n++) {
      for (const [i, device] of devices.entries()) {
        messages.push({ topic: `$SYS/broker/connection/${device}_broker/state`, payload: (n + i) % 2 === 0 ? '1' : '0' });
      }
    }
    await publishAtOnce(services.mqtt, messages);
    const stored = await waitFor('every bridge state', async () => {
      const found = (await bridgeStatesIn(services.redis, prefix)).filter((s) => devices.includes(s.deviceId));
      return found.length >= devices.length * flips ? found : undefined;
    });
    // States that arrived together share a job (one per partition).
    expect(new Set(stored.map((s) => s.jobId)).size).toBeLessThan(stored.length);
    for (const [i, device] of devices.entries()) {
      const own = (await bridgeStatesInPartition(services.redis, prefix, bridgePartition(device))).filter((s) => s.deviceId === device);
      expect(own.map((s) => s.connected)).toEqual(Array.from({ length: flips }, (_, n) => (n + i) % 2 === 0));
      const times = own.map((s) => Date.parse(s.receivedAt));
      expect(times).toEqual([...times].sort((x, y) => x - y));
      expect(new Set(own.map((s) => s.messageId)).size).toBe(flips);
    }
  });

  it('marks the broker replay of a retained bridge state as retained', async () => {
    const device = randomDeviceId();
    const topic = `$SYS/broker/connection/${device}_broker/state`;
    await publish(services.mqtt, [{ topic, payload: '1', retain: true }]);
    const own = randomPrefix('sub-retained');
    const second = await startSubscriber(configFor(own), logger, createMetrics('t'));
    try {
      const jobs = await waitFor('the retained replay', async () => {
        const found = (await bridgeStatesIn(services.redis, own)).filter((s) => s.deviceId === device);
        return found.length === 1 ? found : undefined;
      });
      expect(jobs[0]).toMatchObject({ kind: 'bridge-state', connected: true, retained: true });
    } finally {
      await second.close();
      await publish(services.mqtt, [{ topic, payload: '', retain: true }]);
    }
  });
});

describe('subscriber intake', () => {
  const prefix = randomPrefix('intake');
  let redis: Awaited<ReturnType<typeof connectRedis>>;
  let queues: ReturnType<typeof openQueues>;

  beforeAll(async () => {
    redis = await connectRedis(services.redis, { autoPipelining: true });
    queues = openQueues(redis, prefix);
  });
  afterAll(async () => {
    await queues.close();
    await redis.quit();
  });

  const lamp = (device: string, n: number, packetId?: number, dup = false): MqttMessage => ({
    topic: `/devices/${device}/lamp/changed`,
    payload: Buffer.from(JSON.stringify({ on: true, n })),
    retain: false,
    dup,
    ...(packetId !== undefined ? { packetId } : {}),
  });

  it('writes one group per Redis round trip, split into jobs of at most maxStatesPerJob states', async () => {
    const intake = new Intake({
      queues,
      ledger: new RedeliveryLedger(redis, prefix),
      logger,
      metrics: createMetrics('t'),
      maxStatesPerJob: 2,
    });
    const device = randomDeviceId();
    const bridged = randomDeviceId();
    // Accepted in one turn of the event loop: one group.
    await Promise.all([
      ...Array.from({ length: 5 }, (_, n) => intake.accept('s1', lamp(device, n, n + 1))),
      intake.accept('s1', {
        topic: `$SYS/broker/connection/${bridged}_broker/state`,
        payload: Buffer.from('1'),
        retain: false,
        dup: false,
        packetId: 10,
      }),
      intake.accept('s1', {
        topic: `/devices/${device}/lamp/changed`,
        payload: Buffer.from([0xc3, 0x28]),
        retain: false,
        dup: false,
        packetId: 11,
      }),
    ]);
    const jobs = await lampStateJobs(services.redis, prefix);
    expect(jobs.map((job) => job.data.states.length).sort()).toEqual([1, 2, 2]);
    expect(jobs.flatMap((job) => job.data.states.map((s) => stateOf(s).n)).sort()).toEqual([0, 1, 2, 3, 4]);
    const bridge = await jobsIn<BridgeStatesJob>(services.redis, prefix, QUEUE_NAMES.bridgeState(bridgePartition(bridged)));
    expect(bridge.map((job) => job.data)).toEqual([
      {
        kind: 'bridge-states',
        states: [
          {
            kind: 'bridge-state',
            deviceId: bridged,
            connected: true,
            retained: false,
            receivedAt: expect.any(String),
            messageId: expect.stringMatching(HEX_ID),
            topic: `$SYS/broker/connection/${bridged}_broker/state`,
          },
        ],
      },
    ]);
    const rejected = await jobsIn<RejectedMessageJob>(services.redis, prefix, QUEUE_NAMES.rejected);
    expect(rejected.map((job) => job.data.reason)).toEqual(['invalid_utf8']);
    // The ledger: one hash for the session, a field per packet id of an accepted message.
    expect(Object.keys(await redis.hgetall(`${prefix}:mqtt-inflight:s1`)).sort((x, y) => Number(x) - Number(y))).toEqual([
      '1',
      '2',
      '3',
      '4',
      '5',
      '10',
    ]);
  });

  it('gives a DUP resend of a stored message the same message id, and anything else a new one', async () => {
    const metrics = createMetrics('t');
    const intake = new Intake({ queues, ledger: new RedeliveryLedger(redis, prefix), logger, metrics });
    const device = randomDeviceId();
    await intake.accept('s2', lamp(device, 1, 7));
    await intake.accept('s2', lamp(device, 1, 7, true)); // the same message again
    await intake.accept('s2', lamp(device, 2, 7, true)); // the packet id, reused for another message
    await intake.accept('s3', lamp(device, 1, 7, true)); // the same packet id in another session
    await intake.accept('s2', lamp(device, 1, 7)); // no DUP flag: a new message
    const states = (await lampStatesIn(services.redis, prefix)).filter((s) => s.deviceId === device);
    expect(states).toHaveLength(5);
    const [first, resent, reused, otherSession, fresh] = states.map((s) => s.messageId);
    expect(resent).toBe(first);
    expect(new Set([first, reused, otherSession, fresh]).size).toBe(4);
    // Each write was its own group, so the resend went into another lamp-states job.
    expect(new Set(states.map((s) => s.jobId)).size).toBe(5);
    expect((await metrics.redeliveriesDeduplicated.get()).values[0]?.value).toBe(1);
  });
});

/**
 * A TCP proxy in front of a broker that sees what the subscriber acknowledges: it reads the
 * client's packets (dropping its PUBACKs on request) and the PUBLISH packets sent to it.
 */
async function startMqttProxy(brokerPort: number) {
  const sockets = new Set<Socket>();
  const state = {
    url: '',
    /** PUBACKs from the subscriber, forwarded or not: `<connection>:<packet id>`. */
    pubacks: [] as string[],
    /** PUBLISH packets the broker sent to the subscriber; `packet` is `<connection>:<packet id>`. */
    delivered: [] as Array<{ packet: string; dup: boolean; topic: string; payload: string }>,
    dropAcks: false,
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
  let connections = 0;
  const server = createServer((client) => {
    const connection = connections++;
    const upstream = connect(brokerPort, '127.0.0.1');
    sockets.add(client).add(upstream);
    const end = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    for (const socket of [client, upstream]) {
      socket.on('close', end);
      socket.on('error', end);
    }
    const fromBroker = mqttPacket.parser({ protocolVersion: 4 });
    fromBroker.on('packet', (packet) => {
      if (packet.cmd === 'publish')
        state.delivered.push({
          packet: `${connection}:${packet.messageId}`,
          dup: packet.dup,
          topic: packet.topic,
          payload: packet.payload.toString(),
        });
    });
    upstream.on('data', (chunk: Buffer) => {
      fromBroker.parse(chunk);
      client.write(chunk);
    });
    let pending = Buffer.alloc(0);
    client.on('data', (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk]);
      for (let frame = takeFrame(pending); frame; frame = takeFrame(pending)) {
        pending = pending.subarray(frame.length);
        if (frame[0]! >> 4 === 4) {
          state.pubacks.push(`${connection}:${frame.readUInt16BE(frame.length - 2)}`);
          if (state.dropAcks) continue;
        }
        upstream.write(frame);
      }
    });
  });
  const port = await freePort();
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  state.url = `mqtt://127.0.0.1:${port}`;
  return state;
}

/** One whole MQTT control packet from the front of the buffer, if it is all there. */
function takeFrame(buffer: Buffer): Buffer | undefined {
  let remaining = 0;
  for (let i = 1; i <= 4; i++) {
    if (buffer.length <= i) return undefined;
    const byte = buffer[i]!;
    remaining += (byte & 0x7f) * 128 ** (i - 1);
    if ((byte & 0x80) === 0) return buffer.length >= 1 + i + remaining ? buffer.subarray(0, 1 + i + remaining) : undefined;
  }
  throw new Error('malformed MQTT remaining length');
}

describe('subscriber durability', () => {
  const cleanups: Array<() => Promise<unknown>> = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {});
  });

  const lampMessages = (device: string, from: number, count: number) =>
    Array.from({ length: count }, (_, i) => ({
      topic: `/devices/${device}/lamp/changed`,
      payload: JSON.stringify({ on: true, seq: from + i }),
    }));

  async function seqsIn(redisUrl: string, prefix: string): Promise<number[]> {
    return (await lampStatesIn(redisUrl, prefix)).map((s) => stateOf(s).seq as number).sort((a, b) => a - b);
  }

  it('acknowledges no message before Redis holds it', async () => {
    const redis = await startRedis({ appendonly: false });
    cleanups.push(() => redis.kill('SIGKILL'));
    const broker = await startMosquitto();
    cleanups.push(() => broker.kill());
    const proxy = await startMqttProxy(broker.port);
    cleanups.push(() => proxy.close());
    const prefix = randomPrefix('ack');
    const subscriber = await startSubscriber(
      configFor(prefix, { REDIS_URL: redis.url, MQTT_URL: proxy.url, SUBSCRIBER_CONNECTIONS: 2 }),
      logger,
      createMetrics('t'),
    );
    cleanups.push(() => subscriber.close());
    const device = randomDeviceId();

    // Acknowledgements pass through the proxy as they should.
    await publish(broker.url, lampMessages(device, 0, 1));
    await waitFor('the first PUBACK', () => proxy.pubacks.length === 1);
    expect(await seqsIn(redis.url, prefix)).toEqual([0]);

    // Redis stops answering (its process is frozen): messages arrive, none is acknowledged.
    redis.child.kill('SIGSTOP');
    cleanups.push(async () => redis.child.kill('SIGCONT'));
    const delivered = proxy.delivered.length;
    await publish(broker.url, [...lampMessages(device, 1, 30), { topic: `$SYS/broker/connection/${device}_broker/state`, payload: '1' }]);
    await waitFor('31 messages delivered to the subscriber', () => proxy.delivered.length - delivered === 31);
    await sleep(1000);
    expect(proxy.pubacks).toHaveLength(1);

    // Redis is back: the messages are stored, then acknowledged, each once.
    redis.child.kill('SIGCONT');
    await waitFor('31 more PUBACKs', () => proxy.pubacks.length === 32);
    // One PUBACK for each message delivered, on the connection it came on.
    expect(proxy.pubacks.slice(1).sort()).toEqual(
      proxy.delivered
        .slice(delivered)
        .map((p) => p.packet)
        .sort(),
    );
    expect(await seqsIn(redis.url, prefix)).toEqual(Array.from({ length: 31 }, (_, i) => i));
    expect((await bridgeStatesIn(redis.url, prefix)).map((s) => s.deviceId)).toEqual([device]);
  });

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
    await waitFor('first 50 states', async () => (await seqsIn(redis.url, prefix)).length === 50);

    await redis.kill('SIGKILL');
    await publish(broker.url, lampMessages(device, 50, 50));
    await sleep(1500);
    redis = await startRedis({ port: redis.port, dir: redis.dir, appendonly: true });

    const seqs = await waitFor('all 100 states', async () => {
      const found = await seqsIn(redis.url, prefix);
      return found.length >= 100 ? found : undefined;
    });
    await sleep(500);
    expect(await seqsIn(redis.url, prefix)).toEqual(Array.from({ length: 100 }, (_, i) => i));
    expect(seqs).toHaveLength(100);
    expect(new Set((await lampStatesIn(redis.url, prefix)).map((s) => s.messageId)).size).toBe(100);
  });

  it('gives a message the broker resends after a crash the id it had, so Keen counts it once', async () => {
    const broker = await startMosquitto();
    cleanups.push(() => broker.kill());
    const proxy = await startMqttProxy(broker.port);
    cleanups.push(() => proxy.close());
    const prefix = randomPrefix('dup');
    const env = {
      REDIS_URL: services.redis,
      QUEUE_PREFIX: prefix,
      MQTT_URL: proxy.url,
      MQTT_CLIENT_ID: prefix,
      MQTT_SHARE_GROUP: prefix,
      SUBSCRIBER_CONNECTIONS: '2',
    };
    // The subscriber stores the messages and acknowledges them, but the acks are lost:
    // to the broker it is as if the process had died between the two.
    proxy.dropAcks = true;
    let proc = startService('subscriber', env);
    cleanups.push(() => proc.kill('SIGKILL'));
    await waitForLog(proc, 'subscriber ready');
    const device = randomDeviceId();
    const total = 20;
    await publish(broker.url, lampMessages(device, 0, total));
    await waitFor('every state stored', async () => (await seqsIn(services.redis, prefix)).length === total);
    await waitFor('every message acknowledged', () => proxy.pubacks.length === total);
    await proc.kill('SIGKILL');

    proxy.dropAcks = false;
    const deliveredBefore = proxy.delivered.length;
    proc = startService('subscriber', env);
    await waitForLog(proc, 'subscriber ready');
    const states = await waitFor('every state stored twice', async () => {
      const found = await lampStatesIn(services.redis, prefix);
      return found.length >= 2 * total ? found : undefined;
    });
    const resent = proxy.delivered.slice(deliveredBefore);
    expect(resent).toHaveLength(total);
    expect(resent.every((p) => p.dup)).toBe(true);
    expect(resent.map((p) => JSON.parse(p.payload).seq as number).sort((x, y) => x - y)).toEqual(
      Array.from({ length: total }, (_, i) => i),
    );

    expect(states).toHaveLength(2 * total);
    const bySeq = new Map<number, typeof states>();
    for (const s of states) bySeq.set(stateOf(s).seq as number, [...(bySeq.get(stateOf(s).seq as number) ?? []), s]);
    expect([...bySeq.keys()].sort((a, b) => a - b)).toEqual(Array.from({ length: total }, (_, i) => i));
    for (const copies of bySeq.values()) {
      expect(copies).toHaveLength(2);
      // The same message id, hence the same Keen uniqueness token; in another lamp-states job.
      expect(copies[0]!.messageId).toBe(copies[1]!.messageId);
      expect(copies[0]!.jobId).not.toBe(copies[1]!.jobId);
    }
    expect(new Set(states.map((s) => s.messageId)).size).toBe(total);
    expect(proc.output().split('broker redelivered a message we had already queued').length - 1).toBe(total);

    // This time the acknowledgements reached the broker: after a clean restart nothing comes again.
    await waitFor('the resends acknowledged', () => proxy.pubacks.length === 2 * total);
    expect(await proc.kill('SIGTERM')).toBe(0);
    proc = startService('subscriber', env);
    await waitForLog(proc, 'subscriber ready');
    await sleep(1000);
    expect(await lampStatesIn(services.redis, prefix)).toHaveLength(2 * total);
    expect(proxy.delivered.length - deliveredBefore).toBe(total);
  });

  it('loses nothing and gives every message one id when the subscriber process is killed mid-stream', async () => {
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
    await waitFor('some states', async () => (await seqsIn(services.redis, prefix)).length > 300, 30_000, 20);
    await proc.kill('SIGKILL');
    await publishing;
    proc = startService('subscriber', env);
    await waitForLog(proc, 'subscriber ready');
    const distinct = async () => new Set(await seqsIn(services.redis, prefix)).size;
    await waitFor('every message', async () => (await distinct()) >= total, 60_000);
    await sleep(1000);
    const states = await lampStatesIn(services.redis, prefix);
    // A message stored but not yet acknowledged when the process died is resent with DUP and
    // may be stored again: with the same message id, so Keen keeps one event.
    const idsBySeq = new Map<number, Set<string>>();
    for (const s of states) idsBySeq.set(stateOf(s).seq as number, (idsBySeq.get(stateOf(s).seq as number) ?? new Set()).add(s.messageId));
    expect([...idsBySeq.keys()].sort((a, b) => a - b)).toEqual(Array.from({ length: total }, (_, i) => i));
    expect([...idsBySeq.values()].filter((ids) => ids.size !== 1)).toEqual([]);
    expect(new Set(states.map((s) => s.messageId)).size).toBe(total);
    expect(await proc.kill('SIGTERM')).toBe(0);
  });
});
