/**
 * What a user gets by default: the pipeline delivering to keen-sink (the bundled Keen-compatible
 * store), and the fleet's events read back through keen-sink's query API.
 */
import mqtt from 'mqtt';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { randomDeviceId, randomPrefix } from '../support/ids.js';
import { startPipeline, type Pipeline } from '../support/pipeline.js';
import { freePort, startService, waitFor, waitForLog, type ManagedProcess } from '../support/processes.js';

const services = inject('services');
const PROJECT = 'lampisink';
const WRITE_KEY = 'sink-write-key';
const READ_KEY = 'sink-read-key';

describe('pipeline into keen-sink', () => {
  const prefix = randomPrefix('sink');
  const devices = [randomDeviceId(), randomDeviceId()];
  let registryDb: TestDatabase;
  let sinkDb: TestDatabase;
  let sink: ManagedProcess;
  let sinkUrl: string;
  let pipeline: Pipeline;
  let lamp: mqtt.MqttClient;

  const query = async (analysis: string, params: Record<string, unknown>) => {
    const url = new URL(`${sinkUrl}/3.0/projects/${PROJECT}/queries/${analysis}`);
    for (const [key, value] of Object.entries(params)) url.searchParams.set(key, typeof value === 'string' ? value : JSON.stringify(value));
    const response = await fetch(url, { headers: { Authorization: READ_KEY } });
    expect(response.status).toBe(200);
    return ((await response.json()) as { result: unknown }).result;
  };
  const ours = (property = 'device_id') => [{ property_name: property, operator: 'in', property_value: devices }];

  beforeAll(async () => {
    [registryDb, sinkDb] = await Promise.all([
      createTestDatabase(services.postgres),
      createTestDatabase(services.postgres, { migrate: false }),
    ]);
    const port = await freePort();
    sink = startService('keen-sink', {
      KEEN_SINK_PORT: String(port),
      KEEN_SINK_HOST: '127.0.0.1',
      KEEN_SINK_DATABASE_URL: sinkDb.url,
      KEEN_PROJECT_ID: PROJECT,
      KEEN_WRITE_KEY: WRITE_KEY,
      KEEN_READ_KEY: READ_KEY,
    });
    await waitForLog(sink, 'keen-sink ready');
    sinkUrl = `http://127.0.0.1:${port}`;
    pipeline = await startPipeline({
      services,
      prefix,
      databaseUrl: registryDb.url,
      keen: { url: sinkUrl, projectId: PROJECT, writeKey: WRITE_KEY },
    });
    lamp = await mqtt.connectAsync(services.mqtt, { clientId: `${prefix}-lamp` });
  });

  afterEach(({ task }) => {
    if (task.result?.state === 'fail') process.stderr.write(`${pipeline?.logs()}\n${sink?.output().slice(-5000)}\n`);
  });

  afterAll(async () => {
    for (const device of devices) await lamp?.publishAsync(`/devices/${device}/lamp/associated`, '', { qos: 1, retain: true });
    await lamp?.endAsync();
    await pipeline?.kill();
    await sink?.kill();
    await Promise.all([registryDb?.drop(), sinkDb?.drop()]);
  });

  it('stores every LAMPI event with Keen enrichment, and answers the Explorer example', async () => {
    for (const device of devices) {
      await lamp.publishAsync(`$SYS/broker/connection/${device}_broker/state`, '1', { qos: 1 });
      for (let i = 0; i < 3; i++) {
        await lamp.publishAsync(
          `/devices/${device}/lamp/changed`,
          JSON.stringify({ color: { h: 0.44, s: 1 }, brightness: i / 4, on: true, client: 'lamp_ui' }),
          { qos: 1 },
        );
      }
    }

    await waitFor(
      '6 devicestate events in keen-sink',
      async () => (await query('count', { event_collection: 'devicestate', timeframe: 'this_1_days', filters: ours() })) === 6,
    );
    // Lamp states are recorded without waiting for their lamp's connect (UNKNOWN_DEVICE_STATES=record), so they may arrive first.
    await waitFor('2 activations and 2 devicemonitoring events in keen-sink', async () => {
      const counts = await Promise.all(
        ['activations', 'devicemonitoring'].map((collection) =>
          query('count', { event_collection: collection, timeframe: 'this_1_days', filters: ours() }),
        ),
      );
      return counts.every((n) => n === 2);
    });

    // The seed's Explorer example.
    const activated = (await query('select_unique', {
      event_collection: 'activations',
      target_property: 'device_id',
      timeframe: 'this_14_days',
      filters: ours(),
    })) as string[];
    expect([...activated].sort()).toEqual([...devices].sort());

    const monitoring = (await query('extraction', {
      event_collection: 'devicemonitoring',
      timeframe: 'this_1_days',
      filters: ours(),
    })) as Array<Record<string, any>>;
    expect(monitoring).toHaveLength(2);
    for (const event of monitoring) {
      expect(event).toMatchObject({ service: 'mqttbridge', state: 'connected' });
      expect(event.keen).toMatchObject({ timestamp: expect.any(String), id: expect.any(String), created_at: expect.any(String) });
      expect(event.keen.addons).toBeUndefined();
      const at = new Date(event.keen.timestamp);
      // The date_time_parser add-on ran on our keen.timestamp.
      expect(event.timestamp.info).toMatchObject({
        year: at.getUTCFullYear(),
        month: at.getUTCMonth() + 1,
        hour: at.getUTCHours(),
        minute: at.getUTCMinutes(),
      });
    }

    const brightness = await query('sum', {
      event_collection: 'devicestate',
      target_property: 'state.brightness',
      timeframe: 'this_1_days',
      filters: ours(),
    });
    expect(brightness).toBeCloseTo(2 * (0 + 0.25 + 0.5));
  });
});
