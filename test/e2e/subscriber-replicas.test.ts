/**
 * Two subscriber replicas (their own client ids, one share group) run at once: lamp states are
 * split between them, bridge states reach both, and Keen still gets every event exactly once.
 */
import mqtt from 'mqtt';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { startFakeKeen, type FakeKeen } from '../support/fake-keen.js';
import { randomDeviceId, randomPrefix } from '../support/ids.js';
import { startPipeline, type Pipeline } from '../support/pipeline.js';
import { enqueuedByKind, sleep, startService, waitFor, waitForLog, type ManagedProcess } from '../support/processes.js';

const services = inject('services');

describe('two subscriber replicas', () => {
  const prefix = randomPrefix('ha');
  let db: TestDatabase;
  let keen: FakeKeen;
  let pipeline: Pipeline;
  let second: ManagedProcess;

  beforeAll(async () => {
    db = await createTestDatabase(services.postgres);
    keen = await startFakeKeen({ projectId: 'ha', writeKey: 'ha-key' });
    pipeline = await startPipeline({ services, prefix, databaseUrl: db.url, keen: { url: keen.url, projectId: 'ha', writeKey: 'ha-key' } });
    second = startService('subscriber', {
      REDIS_URL: services.redis,
      QUEUE_PREFIX: prefix,
      MQTT_URL: services.mqtt,
      MQTT_CLIENT_ID: `${prefix}-b`,
      MQTT_SHARE_GROUP: prefix,
      SUBSCRIBER_CONNECTIONS: '2',
      METRICS_PORT: '0',
    });
    await waitForLog(second, 'subscriber ready');
  });
  afterEach(({ task }) => {
    if (task.result?.state === 'fail') process.stderr.write(`${pipeline.logs()}\n${second.output().slice(-4000)}\n`);
  });
  afterAll(async () => {
    await second?.kill('SIGKILL');
    await pipeline?.kill();
    await keen?.close();
    await db?.drop();
  });

  it('processes every message once', async () => {
    const devices = [randomDeviceId(), randomDeviceId(), randomDeviceId()];
    const lamp = await mqtt.connectAsync(services.mqtt, { clientId: `${prefix}-lamps` });
    for (const device of devices) await lamp.publishAsync(`$SYS/broker/connection/${device}_broker/state`, '1', { qos: 1 });
    for (let i = 0; i < 60; i++) {
      const device = devices[i % devices.length]!;
      await lamp.publishAsync(`/devices/${device}/lamp/changed`, JSON.stringify({ on: true, seq: i }), { qos: 1 });
    }
    for (const device of devices) await lamp.publishAsync(`$SYS/broker/connection/${device}_broker/state`, '0', { qos: 1 });

    const ours = (collection: string) => keen.eventsIn(collection).filter((e) => devices.includes(e.device_id as string));
    await waitFor(
      'every event',
      () => ours('devicestate').length >= 60 && ours('devicemonitoring').length >= 6 && ours('activations').length >= 3,
    );
    await sleep(1500);
    expect(
      ours('devicestate')
        .map((e) => (e.state as { seq: number }).seq)
        .sort((a, b) => a - b),
    ).toEqual(Array.from({ length: 60 }, (_, i) => i));
    expect(ours('activations')).toHaveLength(3);
    expect(
      ours('devicemonitoring')
        .map((e) => `${e.device_id}:${e.state}`)
        .sort(),
    ).toEqual(devices.flatMap((d) => [`${d}:connected`, `${d}:disconnected`]).sort());
    // Both replicas really took part: each read all six bridge states, and they shared the lamp states.
    const counts = await Promise.all([pipeline.subscriber, second].map((proc) => enqueuedByKind(proc)));
    for (const count of counts) {
      expect(count['bridge-state']).toBe(6);
      expect(count['lamp-state']).toBeGreaterThan(0);
    }
    expect(counts[0]!['lamp-state']! + counts[1]!['lamp-state']!).toBe(60);
    expect(keen.duplicatesDropped).toBe(0);
    for (const device of devices) await lamp.publishAsync(`/devices/${device}/lamp/associated`, '', { qos: 1, retain: true });
    await lamp.endAsync();
  });
});
