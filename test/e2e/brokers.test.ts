/**
 * A fleet split over two brokers (two Mosquittos of the test's own): one subscriber per broker
 * (BROKER_ID), one worker holding a connection to each (MQTT_BROKERS). Each lamp gets its
 * association message on its own broker and never on the other, and every lamp's events reach
 * Keen. With one broker down, the other's lamps carry on; a new lamp of the broker that is down
 * gets its code once the broker is back (its job retries), even though the worker started while
 * that broker was unreachable. Each broker takes its own login, and a refused one is named by its settings.
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { PrismaPg } from '@prisma/adapter-pg';
import mqtt from 'mqtt';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { PrismaClient } from '../../src/generated/prisma/client.js';
import { openQueues } from '../../src/shared/queues.js';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { startFakeKeen, type FakeKeen } from '../support/fake-keen.js';
import { randomDeviceId, randomPrefix } from '../support/ids.js';
import { startPipeline, type Pipeline } from '../support/pipeline.js';
import { enqueuedByKind, sleep, startMosquitto, startService, waitFor, waitForLog, type ManagedProcess } from '../support/processes.js';

const services = inject('services');
const PROJECT = 'brokers';
const WRITE_KEY = 'brokers-write-key';
const ASSOCIATED = '/devices/+/lamp/associated';
/** Three processes start at once on a machine that may be busy. */
const READY_MS = 120_000;

type Broker = Awaited<ReturnType<typeof startMosquitto>>;

/** Every association message a broker carries, as a lamp subscribed to all of them would see it. */
async function watchAssociations(url: string, clientId: string) {
  const seen: Array<{ deviceId: string; message: unknown }> = [];
  const client = await mqtt.connectAsync(url, { clientId, reconnectPeriod: 200 });
  client.on('message', (topic, payload) => {
    if (payload.length > 0) seen.push({ deviceId: topic.split('/')[2]!, message: JSON.parse(payload.toString()) });
  });
  client.on('connect', () => void client.subscribeAsync(ASSOCIATED, { qos: 1 }));
  await client.subscribeAsync(ASSOCIATED, { qos: 1 });
  return { seen, of: (deviceId: string) => seen.filter((s) => s.deviceId === deviceId).map((s) => s.message), client };
}

/** The worker's /readyz, its port read from its log. */
async function readiness(
  proc: ManagedProcess,
): Promise<{ status: string; checks: Record<string, boolean>; reasons?: Record<string, string> }> {
  const port = /"port":(\d+),[^\n]*"msg":"serving \/metrics/.exec(proc.output())?.[1];
  return (await fetch(`http://127.0.0.1:${port}/readyz`)).json();
}

describe('a fleet on two brokers', () => {
  const prefix = randomPrefix('brokers');
  let a: Broker;
  let b: Broker;
  let db: TestDatabase;
  let keen: FakeKeen;
  let pipeline: Pipeline;
  let subscriberB: ManagedProcess;
  let worker: ManagedProcess | undefined;
  let prisma: InstanceType<typeof PrismaClient>;
  let lampsA: mqtt.MqttClient;
  let lampsB: mqtt.MqttClient;
  let onA: Awaited<ReturnType<typeof watchAssociations>>;
  let onB: Awaited<ReturnType<typeof watchAssociations>>;
  let workerEnv: Record<string, string>;

  const brokers = () => `a=${a.url},b=${b.url}`;
  const ofDevice = (collection: string, device: string) => keen.eventsIn(collection).filter((e) => e.device_id === device);
  const codeOf = (device: string) =>
    waitFor(`${device}'s row`, () => prisma.device.findUnique({ where: { deviceId: device } }).then((d) => d?.associationCode));
  const connect = (lamps: mqtt.MqttClient, device: string) =>
    lamps.publishAsync(`$SYS/broker/connection/${device}_broker/state`, '1', { qos: 1 });
  const changed = (lamps: mqtt.MqttClient, device: string, seq: number) =>
    lamps.publishAsync(`/devices/${device}/lamp/changed`, JSON.stringify({ on: true, seq }), { qos: 1 });

  beforeAll(async () => {
    [a, b] = await Promise.all([startMosquitto(), startMosquitto()]);
    db = await createTestDatabase(services.postgres);
    keen = await startFakeKeen({ projectId: PROJECT, writeKey: WRITE_KEY });
    workerEnv = { MQTT_BROKERS: brokers(), KEEN_ATTEMPTS: '30' };
    // The same MQTT_CLIENT_ID as broker a's subscriber: sessions on two brokers, kept apart in the ledger.
    subscriberB = startService('subscriber', {
      REDIS_URL: services.redis,
      QUEUE_PREFIX: prefix,
      MQTT_BROKERS: brokers(),
      BROKER_ID: 'b',
      MQTT_CLIENT_ID: prefix,
      MQTT_SHARE_GROUP: prefix,
      SUBSCRIBER_CONNECTIONS: '2',
      METRICS_PORT: '0',
    });
    pipeline = await startPipeline({
      services,
      prefix,
      databaseUrl: db.url,
      keen: { url: keen.url, projectId: PROJECT, writeKey: WRITE_KEY },
      workerEnv,
      subscriberEnv: { MQTT_BROKERS: brokers(), BROKER_ID: 'a' },
      readyTimeoutMs: READY_MS,
    });
    await waitForLog(subscriberB, 'subscriber ready', READY_MS);
    prisma = new PrismaClient({ adapter: new PrismaPg({ connectionString: db.url }) });
    lampsA = await mqtt.connectAsync(a.url, { clientId: `${prefix}-lamps-a` });
    lampsB = await mqtt.connectAsync(b.url, { clientId: `${prefix}-lamps-b`, reconnectPeriod: 200 });
    onA = await watchAssociations(a.url, `${prefix}-watch-a`);
    onB = await watchAssociations(b.url, `${prefix}-watch-b`);
  }, 3 * READY_MS);

  afterEach(({ task }) => {
    if (task.result?.state === 'fail')
      process.stderr.write(`${pipeline.logs()}\n${subscriberB.output().slice(-4000)}\n${worker?.output().slice(-6000) ?? ''}\n`);
  });

  afterAll(async () => {
    await Promise.all([lampsA, lampsB, onA?.client, onB?.client].map((client) => client?.endAsync(true)));
    await Promise.all([pipeline?.kill(), subscriberB?.kill('SIGKILL'), worker?.kill('SIGKILL')]);
    await prisma?.$disconnect();
    await keen?.close();
    await db?.drop();
    await Promise.all([a?.kill(), b?.kill()]);
  });

  it(
    "tells each lamp its code on its own broker, never on the other, and every lamp's events reach Keen",
    async () => {
      const fleetA = [randomDeviceId(), randomDeviceId()];
      const fleetB = [randomDeviceId(), randomDeviceId()];
      for (const device of fleetA) await connect(lampsA, device);
      for (const device of fleetB) await connect(lampsB, device);
      for (let seq = 0; seq < 5; seq++) {
        for (const device of fleetA) await changed(lampsA, device, seq);
        for (const device of fleetB) await changed(lampsB, device, seq);
      }

      for (const [own, other, fleet] of [
        [onA, onB, fleetA],
        [onB, onA, fleetB],
      ] as const) {
        for (const device of fleet) {
          const code = await codeOf(device);
          await waitFor(`${device}'s association message`, () => own.of(device).length > 0);
          expect(own.of(device)).toEqual([{ associated: false, code }]);
          expect(other.of(device)).toEqual([]);
        }
      }
      const everyLamp = [...fleetA, ...fleetB];
      await waitFor('every event at Keen', () =>
        everyLamp.every(
          (d) =>
            ofDevice('activations', d).length === 1 &&
            ofDevice('devicemonitoring', d).length === 1 &&
            ofDevice('devicestate', d).length === 5,
        ),
      );
      // Each broker's subscriber read its own lamps' messages only: 2 connects and 10 states each.
      for (const proc of [pipeline.subscriber, subscriberB]) {
        expect(await enqueuedByKind(proc)).toEqual({ 'bridge-state': 2, 'lamp-state': 10 });
      }
      // Exactly one stored event each (a request that timed out on a busy machine is sent again, and
      // Keen keeps one copy by its uniqueness token: the count that matters is what Keen stored).
      await sleep(1500);
      for (const d of everyLamp) {
        expect([ofDevice('activations', d), ofDevice('devicemonitoring', d), ofDevice('devicestate', d)].map((e) => e.length)).toEqual([
          1, 1, 5,
        ]);
      }
    },
    2 * READY_MS,
  );

  it(
    "carries on with broker a's lamps while broker b is down, and sends b's new lamp its code once b is back",
    async () => {
      const queues = openQueues({ url: services.redis }, prefix);
      try {
        // A bridge connect broker b's subscriber queued just before b went down, while no worker ran.
        await pipeline.worker.kill('SIGTERM');
        const newOnB = randomDeviceId();
        await connect(lampsB, newOnB);
        await waitFor('its job queued', async () =>
          (await queues.bridgeStateQueueFor(newOnB).getJobs(['waiting'])).some((job) => job.data.states.some((s) => s.deviceId === newOnB)),
        );
        const queued = (await queues.bridgeStateQueueFor(newOnB).getJobs(['waiting'])).find((job) =>
          job.data.states.some((s) => s.deviceId === newOnB),
        )!;
        expect(queued.data.states.find((s) => s.deviceId === newOnB)?.broker).toBe('b');
        await b.kill('SIGTERM');

        // A worker that starts while b is unreachable starts all the same.
        worker = startService('worker', {
          REDIS_URL: services.redis,
          QUEUE_PREFIX: prefix,
          MQTT_CLIENT_ID: prefix,
          METRICS_PORT: '0',
          DATABASE_URL: db.url,
          KEEN_API_URL: keen.url,
          KEEN_PROJECT_ID: PROJECT,
          KEEN_WRITE_KEY: WRITE_KEY,
          KEEN_TIMEOUT_MS: '2000',
          ...workerEnv,
        });
        await waitForLog(worker, 'worker ready', READY_MS);
        expect(worker.output()).toMatch(/"msg":"broker b=mqtt:\/\/127\.0\.0\.1:\d+\/? unreachable at start/);
        const ready = await readiness(worker);
        expect(ready.checks.mqtt).toBe(false);
        expect(ready.reasons?.mqtt).toBe('not connected to broker b');

        // The ordered partitions are shared by both brokers' lamps: a lamp in b's waiting partition
        // waits with it (the stage runner's model, as in a registry outage). One in another goes on.
        let newOnA = randomDeviceId();
        while (queues.bridgeStateQueueFor(newOnA).name === queues.bridgeStateQueueFor(newOnB).name) newOnA = randomDeviceId();
        await connect(lampsA, newOnA);
        await changed(lampsA, newOnA, 0);
        const codeA = await codeOf(newOnA);
        await waitFor("a's new lamp's code, on a", () => onA.of(newOnA).length > 0);
        expect(onA.of(newOnA)).toEqual([{ associated: false, code: codeA }]);
        await waitFor(
          "a's new lamp's events at Keen",
          () => ofDevice('activations', newOnA).length === 1 && ofDevice('devicestate', newOnA).length === 1,
        );

        // b's lamp is registered, but its code cannot reach it yet: the attempt fails and is retried.
        const codeB = await codeOf(newOnB);
        await waitFor('a failed attempt', () => worker!.output().includes('not connected'));
        expect(onA.of(newOnB)).toEqual([]);

        b = await startMosquitto({ port: b.port, dir: b.dir });
        await waitFor("b's new lamp's code, on b, once b is back", () => onB.of(newOnB).length > 0, 90_000);
        expect(onB.of(newOnB)).toEqual([{ associated: false, code: codeB }]);
        expect(onA.of(newOnB)).toEqual([]);
        await waitFor("b's new lamp's events at Keen", () => ofDevice('activations', newOnB).length === 1, 30_000);
        await waitFor('the worker ready again', async () => (await readiness(worker!)).status === 'ready');
      } finally {
        await queues.close();
      }
    },
    4 * READY_MS,
  );

  it(
    "logs in to each broker with its own login (a _FILE secret), and names that broker's settings when it is refused",
    async () => {
      const dir = mkdtempSync(path.join(tmpdir(), 'lampi-brokers-auth-'));
      const passwd = path.join(dir, 'passwd');
      const made = spawnSync('mosquitto_passwd', ['-b', '-c', passwd, 'ingest-c', 'right-password']);
      if (made.status !== 0) throw new Error(`mosquitto_passwd failed: ${made.stderr}`);
      chmodSync(passwd, 0o644);
      const c = await startMosquitto({ dir, extraConfig: `allow_anonymous false\npassword_file ${passwd}` });
      try {
        writeFileSync(path.join(dir, 'right'), 'right-password\n');
        writeFileSync(path.join(dir, 'wrong'), 'wrong-password\n');
        const withC = `a=${a.url},c=${c.url}`;
        const login = (file: string) => ({ MQTT_BROKER_C_USERNAME: 'ingest-c', MQTT_BROKER_C_PASSWORD_FILE: path.join(dir, file) });
        const subscriber = startService('subscriber', {
          REDIS_URL: services.redis,
          QUEUE_PREFIX: `${prefix}-c`,
          MQTT_BROKERS: withC,
          BROKER_ID: 'c',
          MQTT_CLIENT_ID: `${prefix}-c`,
          METRICS_PORT: '0',
          ...login('right'),
        });
        try {
          await waitForLog(subscriber, 'subscriber ready', READY_MS);
        } finally {
          await subscriber.kill();
        }
        const refused = startService('worker', {
          REDIS_URL: services.redis,
          QUEUE_PREFIX: `${prefix}-c`,
          MQTT_CLIENT_ID: `${prefix}-c`,
          METRICS_PORT: '0',
          DATABASE_URL: db.url,
          KEEN_PROJECT_ID: PROJECT,
          KEEN_WRITE_KEY: WRITE_KEY,
          MQTT_BROKERS: withC,
          ...login('wrong'),
        });
        expect(await refused.exited).toBe(1);
        const lines = refused.output().trim().split('\n');
        const refusal =
          /^worker: the MQTT broker at MQTT_BROKERS c=mqtt:\/\/127\.0\.0\.1:\d+\/? refused our credentials: /.source +
          /check MQTT_BROKER_C_USERNAME and MQTT_BROKER_C_PASSWORD \(or MQTT_USERNAME and MQTT_PASSWORD\)$/.source;
        expect(lines.at(-1)).toMatch(new RegExp(refusal));
        expect(refused.output()).not.toContain('wrong-password');
      } finally {
        await c.kill();
      }
    },
    2 * READY_MS,
  );
});
