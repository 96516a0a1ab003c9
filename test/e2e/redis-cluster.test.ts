/**
 * The pipeline on a real Redis Cluster (3 primaries, 3 replicas, started here with
 * `redis-server --cluster-enabled yes` and `redis-cli --cluster create`): the subscriber and the
 * worker as real processes with REDIS_CLUSTER_NODES, the dashboard and `npm run dlq` against
 * it, the queues spread over the primaries, and a primary killed while lamps publish.
 */
import { PrismaPg } from '@prisma/adapter-pg';
import { Redis } from 'ioredis';
import mqtt from 'mqtt';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { startDashboard, type Dashboard } from '../../src/dashboard/dashboard.js';
import { PrismaClient } from '../../src/generated/prisma/client.js';
import { createLogger } from '../../src/shared/logger.js';
import { BRIDGE_PARTITIONS, QUEUE_NAMES, queueKey } from '../../src/shared/queues.js';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { startFakeKeen, type FakeKeen } from '../support/fake-keen.js';
import { randomDeviceId, randomPrefix } from '../support/ids.js';
import { startPipeline, type Pipeline } from '../support/pipeline.js';
import { sleep, waitFor } from '../support/processes.js';
import { runTool } from '../support/devices.js';
import { clusterUnsupported, startRedisCluster, waitForClusterOk, type RedisCluster } from '../support/redis-cluster.js';

const services = inject('services');
const PROJECT = 'clusterproject';
const WRITE_KEY = 'cluster-write-key-0123456789';
const unsupported = clusterUnsupported();
if (unsupported) console.warn(`skipping the Redis Cluster tests: ${unsupported}`);

describe.skipIf(unsupported)('on a Redis Cluster', () => {
  const prefix = randomPrefix('cluster');
  let cluster: RedisCluster;
  let db: TestDatabase;
  let keen: FakeKeen;
  let pipeline: Pipeline;
  let prisma: InstanceType<typeof PrismaClient>;
  let publisher: mqtt.MqttClient;
  const queueNames = [
    QUEUE_NAMES.lampStates,
    ...Array.from({ length: BRIDGE_PARTITIONS }, (_, p) => QUEUE_NAMES.bridgeState(p)),
    QUEUE_NAMES.keen,
    QUEUE_NAMES.deadLetter,
    QUEUE_NAMES.rejected,
  ];

  beforeAll(async () => {
    [cluster, db, keen] = await Promise.all([
      startRedisCluster(),
      createTestDatabase(services.postgres),
      startFakeKeen({ projectId: PROJECT, writeKey: WRITE_KEY }),
    ]);
    pipeline = await startPipeline({
      services,
      prefix,
      databaseUrl: db.url,
      keen: { url: keen.url, projectId: PROJECT, writeKey: WRITE_KEY },
      // REDIS_URL points nowhere: with REDIS_CLUSTER_NODES set it must not be used.
      redisEnv: { REDIS_CLUSTER_NODES: cluster.seeds, REDIS_URL: 'redis://127.0.0.1:1' },
    });
    prisma = new PrismaClient({ adapter: new PrismaPg({ connectionString: db.url }) });
    publisher = await mqtt.connectAsync(services.mqtt, { clientId: `${prefix}-lamps` });
  }, 60_000);

  afterEach(({ task }) => {
    if (task.result?.state === 'fail') process.stderr.write(`${pipeline?.logs()}\n`);
  });

  afterAll(async () => {
    await publisher?.endAsync();
    await pipeline?.kill();
    await prisma?.$disconnect();
    await keen?.close();
    await db?.drop();
    await cluster?.stop();
  });

  const lampTopic = (device: string) => `/devices/${device}/lamp/changed`;
  const bridgeTopic = (device: string) => `$SYS/broker/connection/${device}_broker/state`;
  const ofDevice = (collection: string, device: string) => keen.eventsIn(collection).filter((e) => e.device_id === device);

  it('runs the whole LAMPI flow: registry row, association message, activation, bridge and lamp states at Keen', async () => {
    const device = randomDeviceId();
    await publisher.publishAsync(bridgeTopic(device), '1', { qos: 1 });
    await publisher.publishAsync(lampTopic(device), JSON.stringify({ on: true, brightness: 0.5 }), { qos: 1 });
    await publisher.publishAsync(lampTopic(device), '{"on": tru', { qos: 1 });

    const row = await waitFor('the device row', () =>
      prisma.device.findUnique({ where: { deviceId: device } }).then((d) => d ?? undefined),
    );
    expect(row.associationCode).toMatch(/^[0-9a-f]{32}$/);
    const lamp = await mqtt.connectAsync(services.mqtt, { clientId: `${prefix}-lamp-late` });
    const association = await new Promise<string>((resolve) => {
      lamp.on('message', (_topic, payload) => resolve(payload.toString()));
      void lamp.subscribeAsync(`/devices/${device}/lamp/associated`, { qos: 1 });
    });
    await lamp.endAsync();
    expect(JSON.parse(association)).toEqual({ associated: false, code: row.associationCode });
    await publisher.publishAsync(`/devices/${device}/lamp/associated`, '', { qos: 1, retain: true });

    await waitFor(
      'activation, connect and lamp state at Keen',
      () =>
        ofDevice('activations', device).length === 1 &&
        ofDevice('devicemonitoring', device).length === 1 &&
        ofDevice('devicestate', device).length === 1,
    );
    expect(ofDevice('devicestate', device)[0]!.state).toEqual({ on: true, brightness: 0.5 });
    // The bad message is recorded in rejected-messages, which lives on its own slot too.
    await waitFor('the rejection record', () => pipeline.worker.output().includes('"msg":"message rejected: payload is not JSON'));
  });

  it('spreads the queues over the primaries: each queue on one slot, at least 3 primaries holding queues', async () => {
    const owners = new Map<string, number>();
    for (const name of queueNames) owners.set(name, await cluster.primaryFor(`${prefix}:${queueKey(name)}:wait`));
    const primaries = await cluster.primaries();
    expect(primaries).toHaveLength(3);
    expect(new Set(owners.values()).size).toBe(3);

    // And the keys are really there: each primary, asked directly, holds only its own queues' keys.
    const seen = new Map<number, Set<string>>();
    for (const port of primaries) {
      const node = new Redis(port, '127.0.0.1');
      try {
        const tags = new Set<string>();
        for await (const keys of node.scanStream({ match: `${prefix}:*`, count: 1000 }) as AsyncIterable<string[]>) {
          for (const key of keys) {
            const tag = /\{([^}]+)\}/.exec(key)?.[1];
            if (tag && queueNames.includes(tag)) tags.add(tag);
          }
        }
        seen.set(port, tags);
      } finally {
        node.disconnect();
      }
    }
    for (const [port, tags] of seen) for (const tag of tags) expect(owners.get(tag), `${tag} found on ${port}`).toBe(port);
    // The first test's traffic wrote lamp-states, bridge-state, keen-delivery's and rejected-messages' keys.
    expect([...seen.values()].filter((tags) => tags.size > 0).length).toBeGreaterThanOrEqual(2);
    expect([...seen.values()].some((tags) => tags.has(QUEUE_NAMES.lampStates))).toBe(true);
  });

  it('serves the dashboard and npm run dlq from the cluster', async () => {
    const logger = createLogger('cluster-dashboard', 'silent');
    let dashboard: Dashboard | undefined;
    try {
      dashboard = await startDashboard(
        {
          REDIS_URL: 'redis://127.0.0.1:1',
          REDIS_CLUSTER_NODES: cluster.seeds.split(','),
          QUEUE_PREFIX: prefix,
          LOG_LEVEL: 'silent',
          DASHBOARD_PORT: 0,
          DASHBOARD_HOST: '127.0.0.1',
          DASHBOARD_READ_ONLY: true,
        },
        logger,
      );
      const answer = (await (await fetch(new URL('/api/queues', dashboard.url))).json()) as {
        queues: Array<{ name: string; displayName?: string; counts: Record<string, number> }>;
      };
      expect(answer.queues.map((q) => q.name).sort()).toEqual(queueNames.map(queueKey).sort());
      // Bull Board shows the names, not BullMQ's hash-tagged ones.
      expect(answer.queues.map((q) => q.displayName).sort()).toEqual([...queueNames].sort());
      const lampStates = answer.queues.find((q) => q.displayName === QUEUE_NAMES.lampStates)!;
      expect(Object.values(lampStates.counts).reduce((a, b) => a + b, 0)).toBeGreaterThan(0);
    } finally {
      await dashboard?.close();
    }
    const dlq = await runTool('dlq', ['list'], {
      REDIS_CLUSTER_NODES: cluster.seeds,
      REDIS_URL: 'redis://127.0.0.1:1',
      QUEUE_PREFIX: prefix,
    });
    expect(dlq.stderr).toBe('');
    expect(dlq.code).toBe(0);
  });

  /**
   * What can repeat on the wire when a primary dies: a job a worker finished whose completion the
   * dead primary had not replicated is still active on the promoted replica, so it stalls and runs
   * again, and its events are sent to Keen a second time; the subscriber's writes that waited
   * through the failover are retried by ioredis; a Keen request whose answer was lost is sent
   * again. Each copy carries the same `keen.uniqueness_token` (the MQTT message's id, chosen once
   * by the subscriber and stored with the job), and Keen keeps the first event per token and
   * collection: every lamp state is stored exactly once, however often it was sent.
   */
  it('delivers every lamp state to Keen exactly once when the primary holding the lamp-states queue is killed mid-stream', async () => {
    const target = await cluster.primaryFor(`${prefix}:${queueKey(QUEUE_NAMES.lampStates)}:wait`);
    const devices = Array.from({ length: 10 }, () => randomDeviceId());
    const total = 1500;
    const sentBefore = keen.duplicatesDropped;
    let killedAt = -1;
    const publishing = (async () => {
      for (let seq = 0; seq < total; seq++) {
        const device = devices[seq % devices.length]!;
        await publisher.publishAsync(lampTopic(device), JSON.stringify({ on: seq % 2 === 0, seq }), { qos: 1 });
        if (seq === total / 3) {
          killedAt = seq;
          await cluster.kill(target);
        }
        if (seq % 50 === 0) await sleep(20);
      }
    })();
    await publishing;
    expect(killedAt).toBeGreaterThan(0);
    // The cluster may still report the dead primary until its node timeout has passed; the
    // replica's promotion is what the rest of the test depends on.
    await waitFor(
      'the replica promoted',
      async () => (await cluster.primaryFor(`${prefix}:${queueKey(QUEUE_NAMES.lampStates)}:wait`)) !== target,
      30_000,
      200,
    );
    await waitForClusterOk(cluster);

    const ours = () => keen.eventsIn('devicestate').filter((e) => devices.includes(e.device_id as string));
    await waitFor('every lamp state at Keen', () => ours().length >= total, 60_000, 200);
    await sleep(1000); // anything sent twice arrives by now
    const stored = ours();
    const tokens = new Set(stored.map((e) => e.keen.uniqueness_token));
    const seqs = stored.map((e) => (e.state as { seq: number }).seq).sort((a, b) => a - b);
    expect(tokens.size).toBe(total);
    expect(stored).toHaveLength(total);
    expect(seqs).toEqual(Array.from({ length: total }, (_, i) => i));
    const resent = keen.duplicatesDropped - sentBefore;
    console.log(`failover: ${total} lamp states stored once each; ${resent} copies sent again and dropped by their uniqueness token`);
  }, 120_000);
});
