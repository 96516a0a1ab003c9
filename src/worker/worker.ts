/**
 * Wires a worker process: the registry stage (lamp-states and bridge-state queues), Keen delivery (keen-delivery
 * queue), parking and redriving dead letters (keen-dead-letter) and the rejection log. Run as many as the fleet
 * needs; they share nothing but Redis, PostgreSQL and the broker.
 */
import type { Worker } from 'bullmq';
import type { Config } from '../shared/config.js';
import type { Logger } from '../shared/logger.js';
import { DependencyWatch } from '../shared/dependency-watch.js';
import { checkDjangoTables, DJANGO_MODE_OWN_TABLES, djangoTablesProblem } from '../shared/django-site.js';
import { refreshQueueDepths, refreshRedisMemory, type Metrics } from '../shared/metrics.js';
import { checkConnection, MISSING_REGISTRY_DATABASE, MISSING_SITE_DATABASE } from '../shared/postgres.js';
import { brokerSettings } from '../shared/mqtt.js';
import type { ReadinessCheck } from '../shared/ops-server.js';
import { allQueues, openQueues } from '../shared/queues.js';
import { AssociationPublisher } from './association-publisher.js';
import { createDeadLettersWorker } from './stages/dead-letters-worker.js';
import { createIngestWorkers } from './stages/ingest-worker.js';
import { KeenBatcher } from './keen/batcher.js';
import { KeenClient } from './keen/client.js';
import { createKeenDeliveryWorker } from './stages/keen-delivery-worker.js';
import { KeenDeliveryPause } from './keen/pause.js';
import { DeviceRegistry } from './registry/registry.js';
import { createRejectedMessagesWorker } from './stages/rejected-messages-worker.js';
import { StartupError } from '../shared/errors.js';
import { safeUrl } from '../shared/redact.js';
import { connectRedis, redisWhere } from '../shared/redis.js';
import { withTimeout } from '../shared/timeout.js';

export type WorkerConfig = Config<'common' | 'mqtt' | 'database' | 'registry' | 'worker' | 'keen'>;

export interface WorkerProcess {
  workers: Worker[];
  readiness: ReadinessCheck;
  /** Sets the queue depth gauges from Redis (called when metrics are scraped). */
  refreshQueueGauges(): Promise<void>;
  close(): Promise<void>;
}

const POSTGRES_PING_MS = 2000;
/** A ping of PostgreSQL this often is how the worker notices it is gone (and back) while idle. */
const POSTGRES_CHECK_MS = 5000;

export async function startWorker(config: WorkerConfig, logger: Logger, metrics: Metrics): Promise<WorkerProcess> {
  const registry = new DeviceRegistry({
    databaseUrl: config.DATABASE_URL,
    defaultUser: config.DEFAULT_USER,
    schema: config.REGISTRY_SCHEMA,
  });
  const watch = new DependencyWatch(logger);
  const cleanups: Array<() => Promise<unknown>> = [() => registry.close()];
  const closeAll = async () => {
    // From here on the connections are ours to close, not an outage.
    watch.stop();
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => {});
  };
  try {
    await checkDatabase(registry, config.DATABASE_URL);
    const redis = await connectRedis(config);
    cleanups.push(() => redis.quit());
    const queues = openQueues(redis, config.QUEUE_PREFIX, config.KEEN_ATTEMPTS);
    cleanups.push(() => queues.close());
    watch.redis(redis, redisWhere(config), 'jobs wait until it is back');
    watch.bullmq(allQueues(queues));
    const publisher = await AssociationPublisher.connect(brokerSettings(config), config.MQTT_CLIENT_ID, logger, config.ASSOCIATION_TOPIC);
    cleanups.push(() => publisher.close());

    // No key check here: Keen has none that writes no event (pause.ts); a wrong key pauses delivery at the first request.
    const keenPause = new KeenDeliveryPause({ probeIntervalMs: config.KEEN_PAUSE_PROBE_MS, logger, metrics });
    const batcher = new KeenBatcher({
      client: new KeenClient({
        apiUrl: config.KEEN_API_URL,
        projectId: config.KEEN_PROJECT_ID,
        writeKey: config.KEEN_WRITE_KEY,
        timeoutMs: config.KEEN_TIMEOUT_MS,
      }),
      maxEvents: config.KEEN_BATCH_SIZE,
      lingerMs: config.KEEN_LINGER_MS,
      metrics,
      pause: keenPause,
    });
    cleanups.push(() => batcher.close());

    const prefix = config.QUEUE_PREFIX;
    const workers: Worker[] = [
      ...createIngestWorkers({
        connection: redis,
        queues,
        registry,
        publisher,
        defaultUser: config.DEFAULT_USER,
        concurrency: config.WORKER_CONCURRENCY,
        unknownDeviceStates: config.UNKNOWN_DEVICE_STATES,
        logger,
        metrics,
        keen: batcher,
      }),
      createKeenDeliveryWorker({ connection: redis, prefix, queues, batcher, concurrency: config.KEEN_CONCURRENCY, logger, metrics }),
      createDeadLettersWorker({ connection: redis, queues, logger }),
      createRejectedMessagesWorker(redis, queues.rejected, logger),
    ];
    // Workers close first: each finishes its active jobs (which may need the batcher, the
    // publisher and the database), then those close in turn.
    cleanups.push(() => Promise.all(workers.map((worker) => worker.close())));
    publisher.reportTo(watch, logger);
    watch.poll(
      'postgres',
      config.DATABASE_URL,
      'ingest jobs are retried until it is back',
      () => withTimeout(registry.ping(), POSTGRES_PING_MS),
      POSTGRES_CHECK_MS,
    );
    logger.info(
      { concurrency: config.WORKER_CONCURRENCY, keen_concurrency: config.KEEN_CONCURRENCY, keen_api: safeUrl(config.KEEN_API_URL) },
      'worker ready',
    );
    return {
      workers,
      close: closeAll,
      async readiness() {
        const postgres = await withTimeout(registry.ping(), POSTGRES_PING_MS).then(
          () => true,
          () => false,
        );
        return { redis: redis.status === 'ready', mqtt: publisher.connected, postgres, keen: keenPause.readiness() };
      },
      refreshQueueGauges: async () => {
        await Promise.all([refreshQueueDepths(metrics, allQueues(queues)), refreshRedisMemory(metrics, redis)]);
      },
    };
  } catch (err) {
    await closeAll();
    throw err;
  }
}

async function checkDatabase(registry: DeviceRegistry, databaseUrl: string): Promise<void> {
  const where = `DATABASE_URL=${safeUrl(databaseUrl)}`;
  await checkConnection(databaseUrl, { missingDatabase: registry.schema === 'django' ? MISSING_SITE_DATABASE : MISSING_REGISTRY_DATABASE });
  if (registry.schema === 'django') {
    const check = await checkDjangoTables((sql, values) => registry.prisma.$queryRawUnsafe(sql, ...values));
    if (!check.ok) throw new StartupError(djangoTablesProblem(check.missing, where));
  }
  const own = registry.schema === 'django' ? DJANGO_MODE_OWN_TABLES : ['devices'];
  for (const table of own) {
    try {
      await registry.prisma.$queryRawUnsafe(`SELECT 1 FROM ${table} LIMIT 0`);
    } catch {
      throw new StartupError(
        `the database at ${where} has no ${table} table: run \`npm run migrate\`${registry.schema === 'django' ? ' with REGISTRY_SCHEMA=django' : ''} first`,
      );
    }
  }
}
