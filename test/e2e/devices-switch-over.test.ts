/**
 * Switching over from the LAMPI mqtt-daemon with our own registry, as an operator does it: the
 * fleet imported with `npm run devices -- import`, lamps already connected to the broker (their
 * retained bridge states and association messages there), then `npm run subscriber` and
 * `npm run worker` started. Nothing is re-issued: no new code, no activations, only
 * devicemonitoring. Then the seed's own test (delete, reconnect: a new activation), a claim
 * through the CLI that a reconnect leaves alone, and a lamp state from a lamp nobody registered
 * recorded as devicestate (UNKNOWN_DEVICE_STATES=record, the default).
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import mqtt from 'mqtt';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { retainedOn, runDevices } from '../support/devices.js';
import { startFakeKeen, type FakeKeen } from '../support/fake-keen.js';
import { randomDeviceId, randomPrefix } from '../support/ids.js';
import { startPipeline, type Pipeline } from '../support/pipeline.js';
import { sleep, waitFor } from '../support/processes.js';

const services = inject('services');
const PROJECT = 'switchover';
const WRITE_KEY = 'switch-over-write-key';
const bridgeTopic = (id: string) => `$SYS/broker/connection/${id}_broker/state`;
const associationTopic = (id: string) => `/devices/${id}/lamp/associated`;
const code = () => (randomDeviceId() + randomDeviceId() + randomDeviceId()).slice(0, 32);

describe('switching over with an imported fleet', () => {
  const prefix = randomPrefix('switch');
  const lamps = { alice: randomDeviceId(), bob: randomDeviceId(), parked: randomDeviceId() };
  const codes = { alice: code(), bob: code(), parked: code() };
  const stranger = randomDeviceId();
  let db: TestDatabase;
  let pool: pg.Pool;
  let keen: FakeKeen;
  let pipeline: Pipeline;
  let broker: mqtt.MqttClient;
  let env: Record<string, string>;
  const retainedTopics = new Set<string>();
  const retain = async (topic: string, payload: string) => {
    retainedTopics.add(topic);
    await broker.publishAsync(topic, payload, { qos: 1, retain: true });
  };
  const row = async (id: string) =>
    (
      await pool.query(
        'SELECT d.association_code, d.bridge_connected, u.username FROM devices d JOIN users u ON u.id = d.user_id WHERE d.device_id = $1',
        [id],
      )
    ).rows[0];
  const of = (collection: string, id: string) => keen.eventsIn(collection).filter((event) => event.device_id === id);

  beforeAll(async () => {
    db = await createTestDatabase(services.postgres);
    pool = new pg.Pool({ connectionString: db.url, max: 1 });
    keen = await startFakeKeen({ projectId: PROJECT, writeKey: WRITE_KEY });
    broker = await mqtt.connectAsync(services.mqtt, { clientId: `${prefix}-fleet` });
    env = { DATABASE_URL: db.url, MQTT_URL: services.mqtt };
  });
  afterEach(({ task }) => {
    if (task.result?.state === 'fail' && pipeline) process.stderr.write(`${pipeline.logs()}\n`);
  });
  afterAll(async () => {
    await pipeline?.kill();
    for (const topic of retainedTopics) await broker?.publishAsync(topic, '', { qos: 1, retain: true });
    await broker?.endAsync();
    await pool?.end();
    await keen?.close();
    await db?.drop();
  });

  it('re-issues nothing to an imported fleet that is already connected: no new code, no activations, only devicemonitoring', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'lampi-switch-'));
    const fleet = path.join(dir, 'fleet.csv');
    writeFileSync(
      fleet,
      [
        'device_id,owner,code,name',
        `${lamps.alice},alice,${codes.alice},Desk`,
        `${lamps.bob},bob,${codes.bob},`,
        `${lamps.parked},parked_device_user,${codes.parked},`,
      ].join('\n'),
    );
    expect((await runDevices(['import', fleet], env)).code).toBe(0);

    // What the old daemon and the site left on the broker: each lamp's association message, and
    // its bridge's retained "connected".
    await retain(associationTopic(lamps.alice), '{"associated":true}');
    await retain(associationTopic(lamps.bob), '{"associated":true}');
    await retain(associationTopic(lamps.parked), JSON.stringify({ associated: false, code: codes.parked }));
    for (const id of Object.values(lamps)) await retain(bridgeTopic(id), '1');

    pipeline = await startPipeline({
      services,
      prefix,
      databaseUrl: db.url,
      keen: { url: keen.url, projectId: PROJECT, writeKey: WRITE_KEY },
    });
    await waitFor(
      'each lamp seen connecting',
      () => Object.values(lamps).every((id) => of('devicemonitoring', id).length === 1),
      30_000,
      100,
    );
    await sleep(1000); // anything re-issued would be on its way by now

    for (const [owner, id] of Object.entries(lamps)) {
      expect(of('devicemonitoring', id).map((event) => event.state)).toEqual(['connected']);
      expect(of('activations', id)).toEqual([]);
      expect(await row(id)).toEqual({
        association_code: codes[owner as keyof typeof codes],
        bridge_connected: true,
        username: owner === 'parked' ? 'parked_device_user' : owner,
      });
    }
    expect(JSON.parse((await retainedOn(services.mqtt, associationTopic(lamps.alice)))!)).toEqual({ associated: true });
    expect(JSON.parse((await retainedOn(services.mqtt, associationTopic(lamps.bob)))!)).toEqual({ associated: true });
    expect(JSON.parse((await retainedOn(services.mqtt, associationTopic(lamps.parked)))!)).toEqual({
      associated: false,
      code: codes.parked,
    });
  });

  it('records a lamp state from a lamp nobody registered as devicestate, at once, and registers nothing', async () => {
    await broker.publishAsync(`/devices/${stranger}/lamp/changed`, JSON.stringify({ on: true, brightness: 0.5 }), { qos: 1 });
    const [event] = await waitFor(
      "the stranger's devicestate",
      () => (of('devicestate', stranger).length > 0 ? of('devicestate', stranger) : undefined),
      10_000,
      50,
    );
    expect(event).toMatchObject({ device_id: stranger, state: { on: true, brightness: 0.5 } });
    expect(await row(stranger)).toBeUndefined();
  });

  it('re-activates a deleted lamp at its next connect: parked again, a new code and association message, one activations event', async () => {
    const deleted = await runDevices(['delete', lamps.parked], env);
    expect(deleted.code).toBe(0);
    await broker.publishAsync(bridgeTopic(lamps.parked), '0', { qos: 1, retain: true });
    await broker.publishAsync(bridgeTopic(lamps.parked), '1', { qos: 1, retain: true });

    await waitFor('the new activation', () => of('activations', lamps.parked).length === 1, 20_000, 50);
    const again = await waitFor('the lamp registered again', () => row(lamps.parked), 10_000, 50);
    expect(again.username).toBe('parked_device_user');
    expect(again.association_code).toMatch(/^[0-9a-f]{32}$/);
    expect(again.association_code).not.toBe(codes.parked);
    expect(of('activations', lamps.parked)[0]).toMatchObject({ device_id: lamps.parked, user: 'parked_device_user' });
    await waitFor(
      'the new code retained for the lamp',
      async () =>
        (await retainedOn(services.mqtt, associationTopic(lamps.parked))) ===
        JSON.stringify({ associated: false, code: again.association_code }),
      10_000,
      100,
    );
    codes.parked = again.association_code;
  });

  it('claims the lamp by its new code through the CLI while the pipeline runs, and a reconnect leaves the claim alone', async () => {
    const claimed = await runDevices(['claim', codes.parked, 'gina'], env);
    expect(claimed.code).toBe(0);
    expect(await retainedOn(services.mqtt, associationTopic(lamps.parked))).toBe('{"associated":true}');

    const monitoring = of('devicemonitoring', lamps.parked).length;
    await broker.publishAsync(bridgeTopic(lamps.parked), '0', { qos: 1, retain: true });
    await broker.publishAsync(bridgeTopic(lamps.parked), '1', { qos: 1, retain: true });
    await waitFor('the reconnect recorded', () => of('devicemonitoring', lamps.parked).length === monitoring + 2, 20_000, 50);
    await sleep(500);
    expect(of('activations', lamps.parked)).toHaveLength(1);
    expect(await row(lamps.parked)).toEqual({ association_code: codes.parked, bridge_connected: true, username: 'gina' });
    expect(await retainedOn(services.mqtt, associationTopic(lamps.parked))).toBe('{"associated":true}');
  });
});
