/**
 * Bull Board over every queue of the pipeline, behind HTTP basic auth.
 *
 *   /          Bull Board (UI and its /api): every route needs the credentials
 *   /healthz   liveness, no auth
 *   /readyz    readiness (Redis connected), no auth
 *
 * Dead letters are parked in keen-dead-letter's Failed list with Keen's error as the failure
 * reason; Bull Board's Retry / Retry all there is the redrive (see dead-letter-worker.ts).
 * With DASHBOARD_READ_ONLY every adapter is read-only and the server itself refuses any
 * PUT, POST, PATCH or DELETE with 403, so no mutating route can slip through the UI's checks.
 */
import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { FastifyAdapter } from '@bull-board/fastify';
import Fastify, { type FastifyInstance } from 'fastify';
import { ConfigError, type Config } from '../shared/config.js';
import type { Logger } from '../shared/logger.js';
import { allQueues, connectRedis, openQueues, QUEUE_NAMES } from '../shared/queues.js';
import { createBasicAuthCheck, isLoopback, REALM } from './auth.js';

export type DashboardConfig = Config<'common' | 'dashboard'>;

export interface Dashboard {
  /** The port it listens on (DASHBOARD_PORT=0 picks a free one). */
  port: number;
  url: string;
  close(): Promise<void>;
}

const DESCRIPTIONS: Record<string, string> = {
  [QUEUE_NAMES.ingest]: 'Lamp states, in groups, on their way past the device registry to Keen.',
  [QUEUE_NAMES.keen]: 'Keen events in groups (one job per ingest job; a redriven dead letter alone, under its keen.uniqueness_token). Failed jobs here are a trail: their events are in keen-dead-letter.',
  [QUEUE_NAMES.deadLetter]: 'Keen events that failed for good, parked in Failed with the last Keen error. Retry (or Retry all) puts an event back into keen-delivery with the same uniqueness token, so Keen never counts it twice.',
  [QUEUE_NAMES.rejected]: 'Messages the pipeline refused; the failure reason says why.',
};
const BRIDGE_DESCRIPTION = 'Lamp bridge connects and disconnects (activation, monitoring) of one partition of the lamps, many per job, handled one job at a time; each lamp in arrival order.';

const MUTATING = new Set(['PUT', 'POST', 'PATCH', 'DELETE']);
const OPEN_PATHS = new Set(['/healthz', '/readyz']);

/** Throws a ConfigError (one line) when the settings would expose the board without a password. */
export function checkDashboardConfig(config: DashboardConfig): void {
  const { DASHBOARD_USERNAME: username, DASHBOARD_PASSWORD: password, DASHBOARD_HOST: host } = config;
  if ((username === undefined) !== (password === undefined)) {
    throw new ConfigError(`invalid configuration: set both DASHBOARD_USERNAME and DASHBOARD_PASSWORD, or neither`);
  }
  if (username === undefined && !isLoopback(host)) {
    throw new ConfigError(
      `refusing to serve the dashboard on DASHBOARD_HOST=${host} without credentials: set DASHBOARD_USERNAME and DASHBOARD_PASSWORD, or bind it to 127.0.0.1`,
    );
  }
}

export async function startDashboard(config: DashboardConfig, logger: Logger): Promise<Dashboard> {
  checkDashboardConfig(config);
  const redis = await connectRedis(config.REDIS_URL);
  const queues = openQueues(redis, config.QUEUE_PREFIX);
  let app: FastifyInstance | undefined;
  try {
    const readOnlyMode = config.DASHBOARD_READ_ONLY;
    const serverAdapter = new FastifyAdapter();
    serverAdapter.setBasePath('/');
    createBullBoard({
      queues: allQueues(queues).map(
        (queue) =>
          new BullMQAdapter(queue, {
            readOnlyMode,
            description: `${DESCRIPTIONS[queue.name] ?? BRIDGE_DESCRIPTION} Redis prefix: ${config.QUEUE_PREFIX}.`,
          }),
      ),
      serverAdapter,
      options: { uiConfig: { boardTitle: readOnlyMode ? 'LAMPI (read-only)' : 'LAMPI ingest' } },
    });

    app = Fastify({ logger: false });
    const check = config.DASHBOARD_USERNAME && config.DASHBOARD_PASSWORD ? createBasicAuthCheck({ username: config.DASHBOARD_USERNAME, password: config.DASHBOARD_PASSWORD }) : undefined;

    app.addHook('onRequest', async (request, reply) => {
      const path = request.url.split('?')[0]!;
      if (OPEN_PATHS.has(path)) return;
      if (check && !check(request.headers.authorization)) {
        if (request.headers.authorization !== undefined) logger.warn({ ip: request.ip, method: request.method, path }, 'dashboard: wrong credentials');
        return reply.code(401).header('WWW-Authenticate', REALM).type('text/plain').send('authentication required\n');
      }
      if (readOnlyMode && MUTATING.has(request.method)) {
        logger.info({ ip: request.ip, method: request.method, path }, 'dashboard: refused a change (read-only)');
        return reply.code(403).type('application/json').send({ error: 'the dashboard is read-only (DASHBOARD_READ_ONLY=true)' });
      }
    });
    app.addHook('onError', async (request, _reply, error) => {
      logger.error({ method: request.method, path: request.url.split('?')[0], err: error.message }, 'dashboard request failed');
    });

    app.get('/healthz', async () => ({ status: 'ok' }));
    app.get('/readyz', async (_request, reply) => {
      const ready = redis.status === 'ready';
      return reply.code(ready ? 200 : 503).send({ status: ready ? 'ready' : 'not ready', checks: { redis: ready } });
    });
    await app.register(serverAdapter.registerPlugin(), { prefix: '/' });

    await app.listen({ port: config.DASHBOARD_PORT, host: config.DASHBOARD_HOST });
    const address = app.server.address();
    const port = typeof address === 'object' && address ? address.port : config.DASHBOARD_PORT;
    const host = config.DASHBOARD_HOST.includes(':') ? `[${config.DASHBOARD_HOST}]` : config.DASHBOARD_HOST;
    const url = `http://${host}:${port}/`;
    if (!check) logger.warn({ host: config.DASHBOARD_HOST }, 'dashboard has no credentials: anyone on this machine can use it');
    logger.info({ port, host: config.DASHBOARD_HOST, read_only: readOnlyMode, prefix: config.QUEUE_PREFIX }, 'dashboard listening');
    const server = app;
    return {
      port,
      url,
      async close() {
        await server.close();
        await queues.close();
        await redis.quit().catch(() => redis.disconnect());
      },
    };
  } catch (err) {
    await app?.close().catch(() => {});
    await queues.close().catch(() => {});
    redis.disconnect();
    throw err;
  }
}
