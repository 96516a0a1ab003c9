/**
 * The chaos run (issue 6): the real subscriber and two real workers, their own Redis, Mosquitto
 * and PostgreSQL, a fake Keen, and a simulated fleet publishing through crashes and outages of
 * every part. At the end it checks that every event reached Keen exactly once (after uniqueness
 * tokens), that only the events Keen refused for good are dead letters, and that every lamp was
 * registered once, and prints the figures.
 */
import { chmodSync, mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Queue } from 'bullmq';
import mqtt from 'mqtt';
import pg from 'pg';
import { applyMigrations } from '../src/shared/migrations.js';
import type { DeadLetterJob, RejectedMessageJob } from '../src/shared/jobs.js';
import { KEEN_EVENT_ERRORS } from '../src/shared/keen/errors.js';
import { BRIDGE_PARTITIONS, QUEUE_NAMES, queueKey } from '../src/shared/queues.js';
import { startFakeKeen, type FakeKeen, type StoredEvent } from '../test/support/fake-keen.js';
import { freePort, sleep, ROOT } from '../test/support/processes.js';
import { Fleet, lampId } from './fleet.js';
import { startKeenProxy, type KeenProxy } from './keen-proxy.js';
import { createPrivatePostgres, type PrivatePostgres } from './postgres.js';
import { countLogLines, mosquittoServer, redisServer, rssOf, spawnService, type Proc, type Restartable } from './procs.js';

export interface Profile {
  name: 'full' | 'quick';
  lamps: number;
  /** Lamps whose bridges first connect while PostgreSQL is down. */
  newLamps: number;
  events: number;
  rate: number;
  /** Lamps whose bridge drops and comes back during the run. */
  flaps: number;
  poison: number;
  /** Seconds after the lamp states start. */
  at: {
    killWorker: number;
    killSubscriber: [number, number];
    keen: number;
    restartRedis: number;
    stopPostgres: number;
    restartBroker: number;
    firstFlap: number;
    flapEvery: number;
  };
  /** Fault lengths, seconds. */
  len: { keen503: number; keen429: number; retryAfter: number; keenHang: number; keenReset: number; postgres: number; flapDown: number };
  drainTimeoutS: number;
}

export const PROFILES: Record<'full' | 'quick', Profile> = {
  full: {
    name: 'full',
    lamps: 200,
    newLamps: 20,
    events: 200_000,
    rate: 2000,
    flaps: 20,
    poison: 5,
    at: {
      killWorker: 4,
      killSubscriber: [8, 60],
      keen: 14,
      restartRedis: 22,
      stopPostgres: 32,
      restartBroker: 78,
      firstFlap: 16,
      flapEvery: 3,
    },
    len: { keen503: 30, keen429: 8, retryAfter: 4, keenHang: 15, keenReset: 5, postgres: 20, flapDown: 5 },
    drainTimeoutS: 1200,
  },
  quick: {
    name: 'quick',
    lamps: 50,
    newLamps: 5,
    events: 24_000,
    rate: 800,
    flaps: 5,
    poison: 3,
    at: {
      killWorker: 2,
      killSubscriber: [15, 26],
      keen: 3,
      restartRedis: 8,
      stopPostgres: 11,
      restartBroker: 21,
      firstFlap: 6,
      flapEvery: 3,
    },
    len: { keen503: 8, keen429: 3, retryAfter: 2, keenHang: 4, keenReset: 2, postgres: 8, flapDown: 3 },
    drainTimeoutS: 480,
  },
};

export interface RunOptions {
  profile: Profile;
  /** Redis's AOF fsync policy; docker-compose.yml ships everysec. */
  redisFsync: 'always' | 'everysec';
  keep: boolean;
  log: (line: string) => void;
}

export interface RunResult {
  ok: boolean;
  problems: string[];
  figures: Record<string, string | number>;
  dir: string;
}

const PROJECT = 'chaosproject';
const WRITE_KEY = 'chaos-write-key-5f0d9c1e2b';
const PREFIX = 'chaos';

export async function runChaos(options: RunOptions): Promise<RunResult> {
  const { profile, log } = options;
  const dir = mkdtempSync(path.join(tmpdir(), `lampi-chaos-${profile.name}-`));
  const logs = path.join(dir, 'logs');
  mkdirSync(logs);
  // PostgreSQL and Mosquitto run as their own users when we are root: let them reach their folders.
  chmodSync(dir, 0o711);
  const problems: string[] = [];
  const figures: Record<string, string | number> = {};
  const timeline: string[] = [];
  const t0 = Date.now();
  let statesStartedAt = 0;
  const stamp = () => `${((Date.now() - (statesStartedAt || t0)) / 1000).toFixed(1).padStart(6)}s`;
  const note = (line: string) => {
    timeline.push(`${stamp()}  ${line}`);
    log(`[chaos ${stamp()}] ${line}`);
  };

  const cleanups: Array<() => Promise<unknown>> = [];
  // Ctrl-C (or a test runner's kill) still stops every process and the PostgreSQL cluster.
  const onSignal = (signal: NodeJS.Signals) => {
    log(`[chaos] ${signal}: stopping everything the run started (run directory ${dir})`);
    void (async () => {
      for (const cleanup of cleanups.reverse()) await cleanup().catch(() => {});
      process.exit(130);
    })();
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  cleanups.push(async () => {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  });
  const procs: Proc[] = [];
  const crashes: string[] = [];
  const startRefusals: string[] = [];
  const peakRss = new Map<string, number>();
  let keen: FakeKeen | undefined;

  try {
    // ---- services of our own -------------------------------------------------------------
    note(`run directory ${dir} (logs in ${logs})`);
    const postgres: PrivatePostgres = await createPrivatePostgres(path.join(dir, 'pg'), await freePort());
    cleanups.push(() => postgres.stop().catch(() => {}));
    await applyMigrations({ databaseUrl: postgres.url, directory: path.join(ROOT, 'prisma/migrations') });
    note(`PostgreSQL ${postgres.port} up and migrated`);

    mkdirSync(path.join(dir, 'redis'));
    const redis: Restartable = redisServer(await freePort(), path.join(dir, 'redis'), path.join(logs, 'redis.log'), options.redisFsync);
    await redis.start();
    cleanups.push(() => redis.stop('SIGTERM'));
    mkdirSync(path.join(dir, 'mosquitto'));
    const broker: Restartable = mosquittoServer(await freePort(), path.join(dir, 'mosquitto'), path.join(logs, 'mosquitto.log'));
    await broker.start();
    cleanups.push(() => broker.stop('SIGTERM'));
    note(`Redis ${redis.port} (AOF, appendfsync ${options.redisFsync}) and Mosquitto ${broker.port} (persistence) up`);

    keen = await startFakeKeen({ projectId: PROJECT, writeKey: WRITE_KEY });
    const fakeKeen = keen;
    cleanups.push(() => fakeKeen.close());
    const isPoison = (event: Record<string, unknown>) => (event.state as { poison?: unknown } | undefined)?.poison === true;
    /** Every Keen fault change goes through here, so the permanent refusal is never off. */
    const keenFault = (apply?: (k: FakeKeen) => void) => {
      fakeKeen.clearFaults();
      fakeKeen.rejectEvents((_collection, event) =>
        isPoison(event) ? { name: KEEN_EVENT_ERRORS.propertyValue, description: 'poison: refused for good by the chaos run' } : undefined,
      );
      apply?.(fakeKeen);
    };
    keenFault();
    const proxies: KeenProxy[] = [await startKeenProxy(keen.url), await startKeenProxy(keen.url)];
    cleanups.push(() => Promise.all(proxies.map((p) => p.close())));

    // ---- our processes -------------------------------------------------------------------
    const pgUrl = postgres.url;
    const common = { REDIS_URL: redis.url, QUEUE_PREFIX: PREFIX, MQTT_URL: broker.url, MQTT_CLIENT_ID: PREFIX, METRICS_HOST: '127.0.0.1' };
    const ports = { subscriber: await freePort(), workers: [await freePort(), await freePort()] };
    const roles = {
      subscriber: () =>
        spawnService(
          'subscriber',
          'subscriber',
          { ...common, METRICS_PORT: String(ports.subscriber), MQTT_SHARE_GROUP: PREFIX, SUBSCRIBER_CONNECTIONS: '4' },
          path.join(logs, 'subscriber.log'),
        ),
      worker: (i: number) =>
        spawnService(
          `worker-${i + 1}`,
          'worker',
          {
            ...common,
            METRICS_PORT: String(ports.workers[i]),
            DATABASE_URL: pgUrl,
            KEEN_API_URL: proxies[i]!.url,
            KEEN_PROJECT_ID: PROJECT,
            KEEN_WRITE_KEY: WRITE_KEY,
            KEEN_TIMEOUT_MS: '5000',
          },
          path.join(logs, `worker-${i + 1}.log`),
        ),
    };
    const current: { subscriber?: Proc; workers: Array<Proc | undefined> } = { workers: [] };
    let stopping = false;
    const readyLine = (proc: Proc) => `"msg":"${proc.name === 'subscriber' ? 'subscriber' : 'worker'} ready"`;
    /**
     * Restarts a process that exits without being told to, as a supervisor (compose's
     * `restart: unless-stopped`) would. A process that refused to start because Redis, the
     * broker or PostgreSQL was down at that moment did what it is designed to do (one line,
     * exit 1): that is counted, not a failure. An exit after start-up is a crash.
     */
    const supervise = (proc: Proc, restart: () => void) => {
      procs.push(proc);
      void proc.exited.then((code) => {
        if (proc.expectedExit || stopping) return;
        const started = proc.tail().includes(readyLine(proc));
        if (!started && /cannot reach|refused/.test(proc.tail())) {
          startRefusals.push(`${proc.name}: ${proc.tail().trim().split('\n').pop()}`);
          note(`${proc.name} refused to start (${proc.tail().trim().split('\n').pop()?.slice(0, 120)}); restarting it in 1 s`);
        } else {
          crashes.push(`${proc.name} (pid ${proc.pid}) exited on its own with ${code}; last output:\n${proc.tail().slice(-3000)}`);
          note(`!! ${proc.name} crashed (${code}); restarting it in 1 s`);
        }
        setTimeout(restart, 1000);
      });
    };
    const startSubscriber = () => {
      const proc = roles.subscriber();
      current.subscriber = proc;
      supervise(proc, startSubscriber);
    };
    const startWorker = (i: number) => {
      const proc = roles.worker(i);
      current.workers[i] = proc;
      supervise(proc, () => startWorker(i));
    };
    /** Waits until the role's current process (whichever restart it is) is ready. */
    const ready = (role: () => Proc | undefined, timeoutMs = 300_000) =>
      waitUntil(`${role()?.name ?? 'process'} to be ready`, async () => role()?.tail().includes(readyLine(role()!)) ?? false, timeoutMs);
    cleanups.push(async () => {
      stopping = true;
      await Promise.all(procs.filter((p) => p.running()).map((p) => p.kill('SIGKILL')));
    });

    // Watches what the workers publish to lamps: every association message, live.
    const associations = new Map<string, { publishes: number; codes: Set<string> }>();
    const monitor = await mqtt.connectAsync(broker.url, { clientId: `${PREFIX}-monitor`, clean: false, reconnectPeriod: 500 });
    cleanups.push(() => monitor.endAsync(true));
    monitor.on('message', (topic, payload, packet) => {
      if (packet.retain) return; // a replay of the retained copy after (re)subscribing
      const id = /^\/devices\/([^/]+)\/lamp\/associated$/.exec(topic)?.[1];
      if (!id) return;
      const entry = associations.get(id) ?? { publishes: 0, codes: new Set<string>() };
      entry.publishes += 1;
      try {
        entry.codes.add(String((JSON.parse(payload.toString()) as { code?: unknown }).code));
      } catch {
        entry.codes.add(`unreadable: ${payload.toString().slice(0, 40)}`);
      }
      associations.set(id, entry);
    });
    await monitor.subscribeAsync('/devices/+/lamp/associated', { qos: 1 });

    startSubscriber();
    startWorker(0);
    startWorker(1);
    await Promise.all([ready(() => current.subscriber), ready(() => current.workers[0]), ready(() => current.workers[1])]);
    note('subscriber and 2 workers ready');

    const rssTimer = setInterval(() => {
      for (const proc of procs) {
        if (!proc.running()) continue;
        const role = proc.name;
        const rss = rssOf(proc.pid) ?? 0;
        peakRss.set(role, Math.max(peakRss.get(role) ?? 0, rss));
      }
    }, 1000);
    cleanups.push(async () => clearInterval(rssTimer));

    // ---- the fleet comes online ----------------------------------------------------------
    const fleet = new Fleet(broker.url, `${PREFIX}-fleet`);
    await fleet.connect();
    cleanups.push(() => fleet.close());
    for (let i = 0; i < profile.lamps; i++) fleet.bridge(i, true);
    const db = new pg.Pool({ connectionString: pgUrl, max: 2 });
    db.on('error', () => {});
    cleanups.push(() => db.end());
    const deviceCount = async () => Number((await db.query<{ n: string }>('SELECT count(*) AS n FROM devices')).rows[0]!.n);
    await waitUntil(`${profile.lamps} devices registered`, async () => (await deviceCount()) >= profile.lamps, 120_000);
    note(`${profile.lamps} lamps connected and registered`);

    // ---- lamp states, and the faults -----------------------------------------------------
    const queues = openChaosQueues(redis.url);
    cleanups.push(() => queues.close());
    const newLampIndexes = Array.from({ length: profile.newLamps }, (_, k) => profile.lamps + k);
    const eligible = () => [...fleet.lamps.values()].filter((lamp) => lamp.connected).map((lamp) => lamp.index);
    const poisonAt = Array.from({ length: profile.poison }, (_, k) => Math.floor(((k + 0.5) * profile.events) / profile.poison));

    const steps: Array<{ at: number; name: string; run: () => Promise<string | void> }> = [];
    const step = (at: number, name: string, run: () => Promise<string | void>) => steps.push({ at, name, run });
    const { at, len } = profile;

    step(at.killWorker, 'kill -9 worker-1 during a Keen batch', async () => {
      const held = await Promise.race([proxies[0]!.holdNextAnswer(), sleep(60_000).then(() => undefined)]);
      await current.workers[0]!.kill('SIGKILL');
      if (!held) problems.push('fault not exercised: worker-1 sent no Keen batch within 60 s, so it was not killed during one');
      const detail = held
        ? `Keen had answered ${held.status} to its batch of ${held.eventsInBatch} events; answer withheld`
        : 'no batch seen within 60 s; killed anyway';
      await sleep(2000);
      startWorker(0);
      await ready(() => current.workers[0]);
      return `${detail}; restarted`;
    });
    profile.at.killSubscriber.forEach((when, n) =>
      step(when, `kill -9 subscriber (#${n + 1})`, async () => {
        await current.subscriber!.kill('SIGKILL');
        await sleep(3000);
        startSubscriber();
        await ready(() => current.subscriber);
        return 'restarted';
      }),
    );
    step(at.keen, 'Keen faults', async () => {
      const met = (outcome: string) =>
        fakeKeen.requests.filter((r) => (outcome === 'hang' || outcome === 'reset' ? r.fault === outcome : String(r.status) === outcome))
          .length;
      /**
       * A phase lasts its length, and on a slow or stalled pipeline longer: until at least one
       * request has met the fault (at most 120 s more), so that every fault is exercised.
       */
      const phase = async (outcome: string, seconds: number) => {
        const before = met(outcome);
        await sleep(seconds * 1000);
        const deadline = Date.now() + 120_000;
        while (met(outcome) === before && Date.now() < deadline) await sleep(250);
      };
      keenFault((k) => k.respondWith({ status: 503, body: { message: 'Service unavailable', error_code: 'ServiceUnavailableError' } }));
      note(`Keen answers 503 for ${len.keen503} s`);
      await phase('503', len.keen503);
      keenFault((k) =>
        k.respondWith({
          status: 429,
          body: { message: 'Rate limit exceeded', error_code: 'TooManyRequestsError' },
          headers: { 'Retry-After': String(len.retryAfter) },
        }),
      );
      note(`Keen answers 429 Retry-After: ${len.retryAfter} for ${len.keen429} s`);
      await phase('429', len.keen429);
      keenFault((k) => k.hang());
      note(`Keen hangs (reads requests, never answers) for ${len.keenHang} s`);
      await phase('hang', len.keenHang);
      keenFault((k) => k.resetConnections({ afterStore: true }));
      note(`Keen stores the events then resets the connection, for ${len.keenReset} s`);
      await phase('reset', len.keenReset);
      keenFault();
      return 'Keen healthy again (still refusing the poison events)';
    });
    step(at.restartRedis, 'kill -9 Redis and restart it', async () => {
      await redis.stop('SIGKILL');
      await sleep(2000);
      await redis.start();
      return 'Redis back (AOF replayed)';
    });
    step(at.stopPostgres, `stop PostgreSQL for ${len.postgres} s while ${profile.newLamps} new lamps connect`, async () => {
      const stoppedAt = Date.now();
      await postgres.stop();
      note('PostgreSQL stopped');
      await sleep(1000);
      for (const index of newLampIndexes) fleet.bridge(index, true);
      note(`${profile.newLamps} new lamps connected their bridges (and start sending states)`);
      await sleep(Math.max(0, len.postgres * 1000 - (Date.now() - stoppedAt)));
      await postgres.start();
      return 'PostgreSQL started again';
    });
    step(at.restartBroker, 'restart the broker (SIGTERM, persistence)', async () => {
      // Not while the subscriber is itself down: see the $share window in RELIABILITY.md.
      await ready(() => current.subscriber);
      await broker.stop('SIGTERM');
      await sleep(2000);
      await broker.start();
      return 'Mosquitto back';
    });
    for (let k = 0; k < profile.flaps; k++) {
      const index = (k * 7) % profile.lamps;
      step(at.firstFlap + k * at.flapEvery, `bridge of lamp ${lampId(index)} drops`, async () => {
        fleet.bridge(index, false);
        await sleep(len.flapDown * 1000);
        fleet.bridge(index, true);
        return 'and reconnects';
      });
    }

    note(
      `fleet: ${profile.events} lamp states at ${profile.rate}/s over ${profile.lamps} lamps (+${profile.newLamps} new), ${profile.poison} poison events`,
    );
    statesStartedAt = Date.now();
    timeline.length = 0;
    let lastProgress = Date.now();
    const publishing = fleet.runStates({
      rate: profile.rate,
      count: profile.events,
      eligible,
      poisonAt,
      onTick: (n) => {
        if (Date.now() - lastProgress >= 10_000) {
          lastProgress = Date.now();
          void scrapeCounter(ports.subscriber, 'lampi_messages_enqueued_total').then((enqueued) =>
            log(
              `[chaos ${stamp()}] published ${n}, acked by broker ${fleet.acked}, enqueued by this subscriber ` +
                `${enqueued ?? '-'}, at Keen ${fakeKeen.eventsIn('devicestate').length}`,
            ),
          );
        }
      },
    });
    const running = steps.map(async (s) => {
      await sleep(Math.max(0, statesStartedAt + s.at * 1000 - Date.now()));
      note(`>> ${s.name}`);
      try {
        const result = await s.run();
        note(`<< ${s.name}${result ? `: ${result}` : ''}`);
      } catch (err) {
        problems.push(`fault step "${s.name}" failed: ${String(err)}`);
        note(`!! ${s.name} failed: ${String(err)}`);
      }
    });
    await publishing;
    const publishedAt = Date.now();
    note(`all ${profile.events} lamp states published`);
    await Promise.all(running);
    await fleet.drain(300_000);
    note(`every fleet message acknowledged by the broker (${fleet.disconnects} broker disconnect(s) with messages in flight)`);

    // ---- wait for the pipeline to drain --------------------------------------------------
    const expectedStates = [...fleet.published].filter((key) => !fleet.poisoned.has(key));
    const lampIds = [...fleet.lamps.values()].map((lamp) => lamp.id);
    let stable = 0;
    const deadline = Date.now() + profile.drainTimeoutS * 1000;
    /** Nothing left to do and nothing arriving: what is missing will not come. */
    let idle = { since: Date.now(), missing: -1 };
    let lastReport = 0;
    for (;;) {
      const present = new Set(keen.eventsIn('devicestate').map(eventKey));
      const missing = expectedStates.filter((key) => !present.has(key)).length;
      const activations = keen.eventsIn('activations').length;
      const dlq = await queues.deadLetter
        .getJobCountByTypes('waiting', 'active', 'delayed', 'failed', 'completed', 'paused', 'prioritized')
        .catch(() => -1);
      const busy = await queues.busy().catch(() => -1);
      const done = missing === 0 && activations >= lampIds.length && dlq >= fleet.poisoned.size && busy === 0;
      stable = done ? stable + 1 : 0;
      if (stable >= 3) break;
      if (Date.now() - lastReport >= 10_000) {
        lastReport = Date.now();
        log(
          `[chaos ${stamp()}] draining: ${missing} lamp states not yet at Keen, ` +
            `${activations}/${lampIds.length} activations, ${dlq} dead letters, ${busy} jobs queued/active/delayed`,
        );
      }
      if (Date.now() > deadline) {
        problems.push(
          `the pipeline did not drain within ${profile.drainTimeoutS} s (${missing} lamp states missing, ${busy} jobs still queued)`,
        );
        break;
      }
      if (busy !== 0 || missing !== idle.missing) idle = { since: Date.now(), missing };
      else if (Date.now() - idle.since > 60_000) {
        note(`no job queued and nothing new at Keen for 60 s: ${missing} lamp states will not arrive`);
        break;
      }
      await sleep(1000);
    }
    const drainedAt = Date.now();
    note('pipeline drained');

    // ---- checks --------------------------------------------------------------------------
    // Lamp states: each published one exactly once at Keen, after uniqueness tokens.
    const stateCounts = new Map<string, number>();
    for (const event of keen.eventsIn('devicestate')) stateCounts.set(eventKey(event), (stateCounts.get(eventKey(event)) ?? 0) + 1);
    const missing = expectedStates.filter((key) => !stateCounts.has(key));
    const dups = [...stateCounts].filter(([, n]) => n > 1);
    const dupsBeforePipeline = dups.filter(([key]) => fleet.resentRisk.has(key));
    const dupsInPipeline = dups.filter(([key]) => !fleet.resentRisk.has(key));
    const strangers = [...stateCounts.keys()].filter((key) => !fleet.published.has(key));
    const poisonAccepted = [...fleet.poisoned].filter((key) => stateCounts.has(key));
    if (missing.length) {
      // When they were published (seconds after the states started), and whether the fleet was offline then.
      const bySecond = countBy(missing, (key) => {
        const when = fleet.publishedAt.get(key);
        return when ? `${Math.floor((when.at - statesStartedAt) / 1000)}s${when.offline ? ' (fleet offline)' : ''}` : '?';
      });
      writeFileSync(path.join(dir, 'missing.txt'), missing.map((key) => `${key} ${JSON.stringify(fleet.publishedAt.get(key))}`).join('\n'));
      problems.push(
        `${missing.length} published lamp states never reached Keen (lost), e.g. ` +
          `${missing.slice(0, 10).join(', ')}; published at ` +
          `${[...bySecond].map(([k, n]) => `${k}: ${n}`).join(', ')} (all in ${path.join(dir, 'missing.txt')})`,
      );
    }
    if (dupsInPipeline.length)
      problems.push(
        `${dupsInPipeline.length} lamp states reached Keen more than once under different uniqueness tokens, e.g. ${dupsInPipeline
          .slice(0, 10)
          .map(([k, n]) => `${k} x${n}`)
          .join(', ')}`,
      );
    if (strangers.length)
      problems.push(`${strangers.length} events at Keen that nobody published, e.g. ${strangers.slice(0, 5).join(', ')}`);
    if (poisonAccepted.length) problems.push(`poison events accepted by Keen: ${poisonAccepted.join(', ')}`);

    // Dead letters: exactly the poison events, each with its error.
    const deadJobs = await queues.deadLetter.getJobs(['waiting', 'active', 'delayed', 'failed', 'completed', 'paused', 'prioritized']);
    const deadKeys = new Map<string, DeadLetterJob>();
    for (const job of deadJobs) {
      const key = eventKey(job.data.event as unknown as StoredEvent);
      if (deadKeys.has(key)) problems.push(`dead letter ${key} is there twice`);
      deadKeys.set(key, job.data);
      if (!fleet.poisoned.has(key))
        problems.push(`dead letter ${key} (${job.data.collection}) is not a poison event: ${job.data.lastError?.message}`);
      else if (!job.data.lastError?.message || job.data.lastError.code !== KEEN_EVENT_ERRORS.propertyValue)
        problems.push(`dead letter ${key} lacks Keen's error: ${JSON.stringify(job.data.lastError)}`);
    }
    for (const key of fleet.poisoned) if (!deadKeys.has(key)) problems.push(`poison event ${key} is not in the dead-letter queue`);

    // Lamps: one device row, one retained association message, one activations event each.
    const rows = (await db.query<{ device_id: string; association_code: string }>('SELECT device_id, association_code FROM devices')).rows;
    const rowsById = new Map<string, string[]>();
    for (const row of rows) rowsById.set(row.device_id, [...(rowsById.get(row.device_id) ?? []), row.association_code]);
    const retained = await readRetainedAssociations(broker.url, lampIds.length);
    const activationCounts = countBy(keen.eventsIn('activations'), (e) => String(e.device_id));
    for (const [id] of rowsById) if (!lampIds.includes(id)) problems.push(`a device row for ${id}, which is not one of the fleet's lamps`);
    for (const [id] of activationCounts)
      if (!lampIds.includes(id)) problems.push(`an activations event for ${id}, which is not one of the fleet's lamps`);
    let associationPublishes = 0;
    for (const id of lampIds) {
      const codes = rowsById.get(id) ?? [];
      if (codes.length !== 1) problems.push(`lamp ${id} has ${codes.length} device rows`);
      const retainedCode = retained.get(id);
      if (retainedCode === undefined) problems.push(`lamp ${id} has no retained association message`);
      else if (codes[0] !== undefined && retainedCode !== codes[0])
        problems.push(`lamp ${id}: retained association code ${retainedCode} differs from its device row's ${codes[0]}`);
      const live = associations.get(id);
      associationPublishes += live?.publishes ?? 0;
      if (live && live.codes.size > 1) problems.push(`lamp ${id} was sent ${live.codes.size} different association codes`);
      if ((activationCounts.get(id) ?? 0) !== 1)
        problems.push(`lamp ${id} has ${activationCounts.get(id) ?? 0} activations events at Keen`);
    }

    // Bridge states: one devicemonitoring event per change, per lamp.
    const monitoring = keen.eventsIn('devicemonitoring');
    let expectedMonitoring = 0;
    for (const lamp of fleet.lamps.values()) {
      const expected = { connected: 0, disconnected: 0 };
      let previous: boolean | null = null;
      for (const state of lamp.bridgeStates) {
        if (state !== previous) expected[state ? 'connected' : 'disconnected'] += 1;
        previous = state;
      }
      expectedMonitoring += expected.connected + expected.disconnected;
      const got = { connected: 0, disconnected: 0 };
      const own = monitoring.filter((event) => event.device_id === lamp.id);
      for (const event of own) got[event.state === 'connected' ? 'connected' : 'disconnected'] += 1;
      if (got.connected !== expected.connected || got.disconnected !== expected.disconnected) {
        const seen = own
          .map((event) => `${String(event.state)} at ${String(event.keen.timestamp)} (${String(event.keen.uniqueness_token)})`)
          .join(', ');
        problems.push(
          `lamp ${lamp.id}: devicemonitoring ${JSON.stringify(got)} at Keen, expected ` +
            `${JSON.stringify(expected)} (bridge states published: ${lamp.bridgeStates.map(Number).join('')}); at Keen: ${seen}`,
        );
      }
    }

    // Nothing valid was refused.
    const rejectedJobs = await queues.rejected.getJobs(['failed', 'waiting', 'active', 'completed', 'delayed']);
    if (rejectedJobs.length > 0) {
      const reasons = countBy(
        rejectedJobs.map((j) => j.data),
        (d) => d.reason,
      );
      problems.push(
        `${rejectedJobs.length} valid messages were rejected: ${JSON.stringify(Object.fromEntries(reasons))}, e.g. ${rejectedJobs
          .slice(0, 3)
          .map((j) => `${j.data.deviceId}: ${j.data.detail}`)
          .join('; ')}`,
      );
    }
    for (const crash of crashes) problems.push(`crash: ${crash}`);

    // ---- figures -------------------------------------------------------------------------
    const requestsByOutcome = countBy(keen.requests, (r) =>
      r.fault === 'hang' ? 'hang' : r.fault === 'reset' ? 'reset' : String(r.status ?? 'no answer'),
    );
    // A Keen fault that no request met tested nothing.
    for (const outcome of ['503', '429', 'hang', 'reset']) {
      if (!requestsByOutcome.get(outcome))
        problems.push(`fault not exercised: no Keen request was answered with ${outcome} (no traffic reached Keen during that phase)`);
    }
    Object.assign(figures, {
      profile: profile.name,
      'lamps (registered before the states)': profile.lamps,
      'new lamps (connected while PostgreSQL was down)': profile.newLamps,
      'lamp states published': fleet.published.size,
      'poison events (refused by Keen for good)': fleet.poisoned.size,
      'bridge states published': [...fleet.lamps.values()].reduce((n, l) => n + l.bridgeStates.length, 0),
      'publish rate (events/s, achieved)': Math.round(profile.events / ((publishedAt - statesStartedAt) / 1000)),
      'lamp states at Keen (distinct)': stateCounts.size,
      'lamp states lost': missing.length,
      'duplicates at Keen after tokens (pipeline)': dupsInPipeline.length,
      'duplicates at Keen after tokens (lamp->broker QoS 1 resends)': dupsBeforePipeline.length,
      'fleet messages in flight at a broker disconnect': fleet.resentRisk.size,
      'raw duplicates sent to Keen (dropped by uniqueness token)': keen.duplicatesDropped,
      'dead letters': deadJobs.length,
      'activations at Keen': keen.eventsIn('activations').length,
      'devicemonitoring at Keen / expected': `${monitoring.length} / ${expectedMonitoring}`,
      'device rows': rows.length,
      'association messages published (live)': associationPublishes,
      'retained association messages': retained.size,
      'rejected messages': rejectedJobs.length,
      'MQTT redeliveries deduplicated by the subscriber': countLogLines(
        path.join(logs, 'subscriber.log'),
        'broker redelivered a message we had already queued',
      ),
      'Keen requests by answer': [...requestsByOutcome].map(([k, v]) => `${k}: ${v}`).join(', '),
      'process crashes (unplanned exits after start-up)': crashes.length,
      'start-ups refused while a dependency was down (restarted)': startRefusals.length,
      'peak RSS MB': [...peakRss].map(([k, v]) => `${k} ${Math.round(v / 1e6)}`).join(', '),
      'drain after last publish (s)': Math.round((drainedAt - publishedAt) / 1000),
      'whole run (s)': Math.round((Date.now() - t0) / 1000),
    });
    figures.timeline = `\n    ${timeline.join('\n    ')}`;
  } catch (err) {
    problems.push(`the run itself failed: ${(err as Error).stack ?? String(err)}`);
  } finally {
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => {});
  }
  const ok = problems.length === 0;
  if (ok && !options.keep) rmSync(dir, { recursive: true, force: true });
  return { ok, problems, figures, dir };
}

/** `<device id>:<seq>` of a lamp-state event at Keen (or a dead letter's event). */
function eventKey(event: StoredEvent | Record<string, unknown>): string {
  return `${String(event.device_id)}:${String((event.state as { seq?: unknown } | undefined)?.seq)}`;
}

function countBy<T>(items: Iterable<T>, key: (item: T) => string): Map<string, number> {
  const counts = new Map<string, number>();
  for (const item of items) counts.set(key(item), (counts.get(key(item)) ?? 0) + 1);
  return counts;
}

async function waitUntil(what: string, check: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check().catch(() => false)) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(250);
  }
}

function openChaosQueues(url: string) {
  const connection = { url };
  const open = <T>(name: string) => new Queue<T>(queueKey(name), { connection, prefix: PREFIX });
  const work = [
    open(QUEUE_NAMES.lampStates),
    ...Array.from({ length: BRIDGE_PARTITIONS }, (_, p) => open(QUEUE_NAMES.bridgeState(p))),
    open(QUEUE_NAMES.keen),
  ];
  const deadLetter = open<DeadLetterJob>(QUEUE_NAMES.deadLetter);
  const rejected = open<RejectedMessageJob>(QUEUE_NAMES.rejected);
  return {
    deadLetter,
    rejected,
    /** Jobs still to be done in the lamp-states, bridge-state and keen-delivery queues. */
    async busy(): Promise<number> {
      let n = 0;
      for (const queue of work)
        n += await queue.getJobCountByTypes('waiting', 'active', 'delayed', 'paused', 'prioritized', 'waiting-children');
      return n;
    },
    async close() {
      await Promise.all([...work, deadLetter, rejected].map((q) => q.close()));
    },
  };
}

/** The retained association message of each lamp, read by a fresh client. */
async function readRetainedAssociations(url: string, expected: number): Promise<Map<string, string>> {
  const client = await mqtt.connectAsync(url, { clientId: `${PREFIX}-retained-reader`, clean: true });
  const codes = new Map<string, string>();
  client.on('message', (topic, payload, packet) => {
    const id = /^\/devices\/([^/]+)\/lamp\/associated$/.exec(topic)?.[1];
    if (!id || !packet.retain) return;
    try {
      codes.set(id, String((JSON.parse(payload.toString()) as { code?: unknown }).code));
    } catch {
      codes.set(id, 'unreadable');
    }
  });
  await client.subscribeAsync('/devices/+/lamp/associated', { qos: 1 });
  const deadline = Date.now() + 10_000;
  while (codes.size < expected && Date.now() < deadline) await sleep(100);
  await sleep(500);
  await client.endAsync(true);
  return codes;
}

/** Sum of a counter over all its labels, from a process's /metrics; undefined if it does not answer. */
async function scrapeCounter(port: number, name: string): Promise<number | undefined> {
  try {
    const text = await (await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(2000) })).text();
    return text
      .split('\n')
      .filter((line) => line.startsWith(`${name}{`) || line.startsWith(`${name} `))
      .reduce((sum, line) => sum + Number(line.slice(line.lastIndexOf(' ') + 1)), 0);
  } catch {
    return undefined;
  }
}
