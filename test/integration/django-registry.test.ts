/**
 * The registry in the LAMPI site's own tables (REGISTRY_SCHEMA=django), against a real Django
 * 3.2 site (test/django) whose tables Django's `manage.py migrate` created: `npm run migrate`
 * leaves them byte for byte as they were; every process refuses to start without them; workers
 * racing on new lamps make one parked user, as Django would, and one row per lamp; a claim saved
 * on the site while we publish is never overwritten; a deletion on the site is seen at once.
 */
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { promisify } from 'node:util';
import type { Worker } from 'bullmq';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import mqtt from 'mqtt';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type { BridgeStatesJob, KeenEventRecord, RejectedMessageJob } from '../../src/shared/jobs.js';
import { createLogger } from '../../src/shared/logger.js';
import { createMetrics } from '../../src/shared/metrics.js';
import { openQueues, QUEUE_NAMES, queueKey, type PipelineQueues } from '../../src/shared/queues.js';
import { applyMigrations } from '../../src/shared/migrations.js';
import { AssociationPublisher } from '../../src/worker/association-publisher.js';
import { createIngestWorkers } from '../../src/worker/stages/ingest-worker.js';
import { DeviceRegistry } from '../../src/worker/registry/registry.js';
import { DJANGO_MODE_MIGRATIONS, startDjangoSite, type DjangoSite } from '../support/django.js';
import { randomDeviceId, randomPrefix } from '../support/ids.js';
import { sleep, startMosquitto, startService, waitFor } from '../support/processes.js';

const services = inject('services');
const silent = createLogger('django-registry-test', 'silent');
const PARKED = 'parked_device_user';
const run = promisify(execFile);
const messageId = () => randomUUID().replaceAll('-', '');

/** `pg_dump -s` of the database, without the random `\restrict` lines PostgreSQL's dumps now carry. */
async function schemaDump(url: string, exclude: string[] = []): Promise<string> {
  const { stdout } = await run('pg_dump', ['-s', '--no-owner', ...exclude.flatMap((table) => ['-T', table]), url], {
    maxBuffer: 64 * 1024 * 1024,
  });
  return stdout
    .split('\n')
    .filter((line) => !/^\\(un)?restrict /.test(line))
    .join('\n');
}

async function tablesOf(url: string): Promise<string[]> {
  const { stdout } = await run('psql', ['-At', '-c', "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1", url]);
  return stdout.trim().split('\n');
}

async function failure(name: 'worker' | 'migrate', env: Record<string, string>) {
  const proc = startService(name, {
    METRICS_PORT: '0',
    REDIS_URL: services.redis,
    MQTT_URL: services.mqtt,
    KEEN_PROJECT_ID: 'p',
    KEEN_WRITE_KEY: 'django-write-key',
    REGISTRY_SCHEMA: 'django',
    ...env,
  });
  const code = await proc.exited;
  return { code, lines: proc.output().trim().split('\n') };
}

describe('npm run migrate with REGISTRY_SCHEMA=django', () => {
  let site: DjangoSite;
  beforeAll(async () => {
    site = await startDjangoSite(services.postgres, services.mqtt);
  });
  afterAll(() => site?.drop());

  it("leaves Django's tables byte-identical (pg_dump -s) and adds only its own, once", async () => {
    const djangoTables = await tablesOf(site.db.url);
    expect(djangoTables).toEqual(expect.arrayContaining(['auth_user', 'lampi_lampi', 'django_migrations']));
    const before = await schemaDump(site.db.url);
    for (const round of [1, 2]) {
      const migrate = startService('migrate', { DATABASE_URL: site.db.url, REGISTRY_SCHEMA: 'django' });
      expect(await migrate.exited, migrate.output()).toBe(0);
      expect(migrate.output()).toContain(round === 1 ? 'migrate: applied 20261202190000_ingest_lamps' : 'migrate: nothing to apply');
    }
    expect(await tablesOf(site.db.url)).toEqual([...djangoTables, '_prisma_migrations', 'ingest_lamps'].sort());
    const after = await schemaDump(site.db.url, ['_prisma_migrations', 'ingest_lamps']);
    expect(after).toBe(before);
    // Django still agrees with its own tables.
    expect((await site.manage(['makemigrations', '--check', '--dry-run'])).stdout).toContain('No changes detected');
  });
});

describe('start-up checks with REGISTRY_SCHEMA=django', () => {
  const sites: DjangoSite[] = [];
  afterAll(async () => {
    for (const site of sites) await site.drop();
  });
  const newSite = async (migrate: boolean) => {
    const site = await startDjangoSite(services.postgres, services.mqtt, { migrate });
    sites.push(site);
    return site;
  };

  it("a database without the site's tables: the worker and migrate exit with one line naming them", async () => {
    const empty = await newSite(false);
    for (const name of ['worker', 'migrate'] as const) {
      const { code, lines } = await failure(name, { DATABASE_URL: empty.db.url });
      expect(code).toBe(1);
      expect(lines).toEqual([
        `${name}: REGISTRY_SCHEMA=django but the database at DATABASE_URL=${empty.db.url} lacks table ` +
          `auth_user, table lampi_lampi: run the LAMPI site's \`manage.py migrate\` against it first`,
      ]);
    }
    // migrate created nothing there.
    expect(await tablesOf(empty.db.url)).toEqual(['']);
  });

  it('a column missing from lampi_lampi is named; without our own table the worker asks for npm run migrate', async () => {
    const site = await newSite(true);
    const worker = await failure('worker', { DATABASE_URL: site.db.url });
    expect(worker).toEqual({
      code: 1,
      lines: [
        `worker: the database at DATABASE_URL=${site.db.url} has no ingest_lamps table: run \`npm run migrate\` with REGISTRY_SCHEMA=django first`,
      ],
    });

    await run('psql', ['-q', '-c', 'ALTER TABLE lampi_lampi DROP COLUMN name', site.db.url]);
    for (const name of ['worker', 'migrate'] as const) {
      const { code, lines } = await failure(name, { DATABASE_URL: site.db.url });
      expect(code).toBe(1);
      expect(lines).toEqual([
        expect.stringMatching(
          /: REGISTRY_SCHEMA=django but the database at .* lacks column lampi_lampi\.name: run the LAMPI site's `manage\.py migrate` against it first$/,
        ),
      ]);
    }
  });
});

describe('workers on a LAMPI site', () => {
  const prefix = randomPrefix('django-reg');
  // Course firmware without the leading slash: the association topic is a setting.
  const TOPIC = 'devices/{device_id}/lamp/associated';
  let site: DjangoSite;
  let redis: Redis;
  let queues: PipelineQueues;
  let observer: mqtt.MqttClient;
  const associations: Array<{ topic: string; payload: string }> = [];
  const stops: Array<() => Promise<unknown>> = [];

  const newRegistry = () => {
    const registry = new DeviceRegistry({ databaseUrl: site.db.url, defaultUser: PARKED, schema: 'django', poolSize: 4 });
    stops.push(() => registry.close());
    return registry;
  };
  const newPublisher = async (label: string, url = services.mqtt) => {
    const publisher = await AssociationPublisher.connect({ url }, `${prefix}-${label}`, silent, TOPIC);
    stops.push(() => publisher.close());
    return publisher;
  };
  const workers: Worker[] = [];
  /** `brokerUrl`: where the workers publish association messages (default: the test broker). */
  async function startWorkers(count: number, { brokerUrl = services.mqtt } = {}): Promise<Worker[]> {
    const started: Worker[] = [];
    for (let i = 0; i < count; i++) {
      const publisher = await newPublisher(`w${workers.length}-${i}`, brokerUrl);
      const ingest = await createIngestWorkers({
        connection: redis,
        queues,
        registry: newRegistry(),
        publisher,
        defaultUser: PARKED,
        concurrency: 10,
        logger: silent,
        metrics: createMetrics('t'),
      });
      stops.push(() => Promise.all(ingest.map((worker) => worker.close())));
      started.push(...ingest);
    }
    workers.push(...started);
    return started;
  }
  const addBridgeStates = (states: BridgeStatesJob['states'], jobId: string) =>
    queues.bridgeStateQueueFor(states[0]!.deviceId).add('bridge-states', { kind: 'bridge-states', states }, { jobId });
  const bridge = (deviceId: string, connected: boolean, retained = false) => ({
    kind: 'bridge-state' as const,
    deviceId,
    connected,
    retained,
    receivedAt: new Date().toISOString(),
    messageId: messageId(),
    topic: `$SYS/broker/connection/${deviceId}_broker/state`,
  });
  async function allDone(): Promise<boolean> {
    for (const queue of queues.bridgeState)
      if (Object.values(await queue.getJobCounts('waiting', 'active', 'delayed', 'prioritized')).some((n) => n > 0)) return false;
    return true;
  }
  const keenEvents = async (): Promise<KeenEventRecord[]> =>
    (await queues.keen.getJobs(['waiting'], 0, -1, true)).flatMap((job) => job.data.events);

  beforeAll(async () => {
    site = await startDjangoSite(services.postgres, services.mqtt);
    await applyMigrations({ databaseUrl: site.db.url, directory: DJANGO_MODE_MIGRATIONS });
    redis = new Redis(services.redis, { maxRetriesPerRequest: null });
    queues = openQueues(redis, prefix);
    observer = await mqtt.connectAsync(services.mqtt, { clientId: `${prefix}-observer` });
    observer.on('message', (topic, payload) => associations.push({ topic, payload: payload.toString() }));
    await observer.subscribeAsync('devices/+/lamp/associated', { qos: 1 });
  });
  afterAll(async () => {
    for (const stop of stops.reverse()) await stop().catch(() => {});
    await queues?.close();
    await redis?.quit();
    for (const topic of new Set(associations.map((m) => m.topic))) await observer.publishAsync(topic, '', { qos: 1, retain: true });
    await observer?.endAsync();
    await site?.drop();
  });

  it('six workers racing on new lamps (and copies of their connects) leave one parked user, made as Django makes it, and one row per lamp', async () => {
    await startWorkers(6);
    const lamps = Array.from({ length: 30 }, randomDeviceId);
    const jobs = lamps.flatMap((deviceId) => [0, 1, 2].map((copy) => ({ state: bridge(deviceId, true, copy > 0), jobId: messageId() })));
    await Promise.all(jobs.sort(() => Math.random() - 0.5).map(({ state, jobId }) => addBridgeStates([state], jobId)));
    await waitFor('every connect handled', allDone);

    const seen = await site.python<{ users: Array<Record<string, unknown>>; lamps: Array<[string, string, string, number]> }>(`
users = [{'username': u.username, 'usable': u.has_usable_password(), 'password': u.password, 'is_active': u.is_active, 'is_staff': u.is_staff,
          'is_superuser': u.is_superuser, 'first_name': u.first_name, 'last_name': u.last_name, 'email': u.email,
          'last_login': u.last_login, 'date_joined': u.date_joined.isoformat()} for u in User.objects.all()]
lamps = [[l.device_id, l.user.username, l.association_code, Lampi.objects.filter(device_id=l.device_id).count()] for l in Lampi.objects.order_by('device_id')]
emit({'users': users, 'lamps': lamps})`);
    expect(seen.users).toHaveLength(1);
    const [parked] = seen.users as [Record<string, unknown>];
    expect(parked).toMatchObject({
      username: PARKED,
      usable: false,
      is_active: false,
      is_staff: false,
      is_superuser: false,
      first_name: '',
      last_name: '',
      email: '',
      last_login: null,
    });
    expect(parked.password).toMatch(/^![A-Za-z0-9]{40}$/);
    expect(Math.abs(Date.parse(parked.date_joined as string) - Date.now())).toBeLessThan(60_000);

    expect(seen.lamps.map(([deviceId]) => deviceId)).toEqual([...lamps].sort());
    for (const [, owner, code] of seen.lamps) {
      expect(owner).toBe(PARKED);
      expect(code).toMatch(/^[0-9a-f]{32}$/);
    }
    const activations = (await keenEvents()).filter((record) => record.collection === 'activations');
    expect(activations.map((record) => record.event.device_id).sort()).toEqual([...lamps].sort());

    // The connect that created a lamp told it its code, on the configured topic, and so did its
    // live copy if that was another (retained replays are no new connects).
    await waitFor('an association message per lamp', () =>
      lamps.every((d) => associations.some((m) => m.topic === `devices/${d}/lamp/associated`)),
    );
    await sleep(300);
    for (const [deviceId, , code] of seen.lamps) {
      const received = associations.filter((m) => m.topic === `devices/${deviceId}/lamp/associated`);
      expect(received.length).toBeLessThanOrEqual(2);
      for (const message of received) expect(JSON.parse(message.payload)).toEqual({ associated: false, code });
    }
  });

  it('a claim saved on the site while we publish waits for our message, so the lamp ends up told it is claimed', async () => {
    const registry = newRegistry();
    const publisher = await newPublisher('claim');
    const device = randomDeviceId();
    await registry.activate([{ deviceId: device, messageId: messageId(), connectedAt: new Date() }]);
    const code = await site.python<string>(`emit(Lampi.objects.get(device_id='${device}').association_code)`);

    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    let read: unknown;
    const publishing = registry.publishAssociation(device, async (association) => {
      read = association;
      await gate;
      await publisher.publish(device, association);
    });
    await waitFor('the association read', () => read !== undefined);
    // The site claims the lamp now, between our read and our publish.
    let claimed = false;
    const claim = site
      .python(
        `
from django.conf import settings
settings.LAMPI_ASSOCIATION_TOPIC = '${TOPIC}'
carol = User.objects.create_user('carol', password='carol-pw')
Lampi.objects.get(association_code='${code}').associate_and_publish_associated_msg(carol)
emit(True)`,
      )
      .then(() => (claimed = true));
    await sleep(1500);
    expect(claimed).toBe(false); // its save waits for our row lock
    release();
    expect(await publishing).toEqual({ associated: false, code });
    await claim;
    const topic = `devices/${device}/lamp/associated`;
    await waitFor('both messages', () => associations.filter((m) => m.topic === topic).length === 2);
    // Ours first, the site's last: what the broker keeps is the claim.
    expect(associations.filter((m) => m.topic === topic).map((m) => JSON.parse(m.payload))).toEqual([
      { associated: false, code },
      { associated: true },
    ]);
    // Read again now, the registry says the same as the site.
    expect(await registry.publishAssociation(device, (association) => publisher.publish(device, association))).toEqual({
      associated: true,
    });
  });

  it("with the broker away, a known lamp's connect is still recorded (its message waits for the next connect), a new lamp's waits for the broker", async () => {
    const known = randomDeviceId();
    await addBridgeStates([bridge(known, true)], messageId());
    await waitFor('the known lamp registered', allDone);
    // From now on one worker, whose publisher talks to a broker of its own that goes away.
    for (const worker of workers.splice(0)) await worker.close();
    const broker = await startMosquitto();
    stops.push(() => broker.kill('SIGKILL'));
    await startWorkers(1, { brokerUrl: broker.url });
    await broker.kill('SIGKILL');

    await addBridgeStates([bridge(known, false)], messageId());
    await addBridgeStates([bridge(known, true)], messageId());
    const recorded = async () =>
      (await keenEvents()).filter((r) => r.event.device_id === known && r.collection === 'devicemonitoring').length === 3;
    await waitFor('both states of the known lamp recorded', recorded, 10_000);
    const newLamp = bridge(randomDeviceId(), true);
    const newJob = await addBridgeStates([newLamp], messageId());
    await sleep(1500);
    // Retried at the head of its partition (being tried, or waiting for its backoff): its code must reach it.
    expect(['active', 'waiting']).toContain(await newJob.getState());
    expect((await keenEvents()).filter((r) => r.event.device_id === newLamp.deviceId)).toEqual([]);

    const back = await startMosquitto({ port: broker.port, dir: broker.dir });
    stops.push(() => back.kill('SIGKILL'));
    await waitFor(
      'the new lamp activated once the broker is back',
      async () => (await keenEvents()).some((r) => r.event.device_id === newLamp.deviceId && r.collection === 'activations'),
      20_000,
    );
  });

  it('a lamp deleted on the site is unknown at once: its lamp states are not taken as known, its disconnect is rejected', async () => {
    const registry = newRegistry();
    const device = randomDeviceId();
    await addBridgeStates([bridge(device, true)], messageId());
    await waitFor('the connect handled', allDone);
    expect(await registry.knownAmong([device])).toEqual(new Set([device]));
    await site.python(`emit(Lampi.objects.get(device_id='${device}').delete()[0])`);
    expect(await registry.knownAmong([device])).toEqual(new Set());

    const disconnect = bridge(device, false);
    await addBridgeStates([disconnect], messageId());
    const rejected = new Queue<RejectedMessageJob>(queueKey(QUEUE_NAMES.rejected), { connection: redis, prefix });
    try {
      const record = await waitFor(
        'the rejection',
        async () => (await rejected.getJob(`${disconnect.messageId}-rejected`))?.data,
        10_000,
        50,
      );
      expect(record).toMatchObject({ reason: 'unknown_device', deviceId: device });
    } finally {
      await rejected.close();
    }
    expect((await keenEvents()).filter((record) => record.event.device_id === device).map((record) => record.collection)).toEqual([
      'activations',
      'devicemonitoring',
    ]);
  });
});
