/**
 * Bull Board over every queue of the pipeline, behind HTTP basic auth.
 *
 *   /          Bull Board (UI and its /api): every route needs the credentials
 *   /healthz   liveness, no auth
 *   /readyz    readiness (Redis answers), no auth
 *
 * Never a hang while Redis is gone: its commands wait for the reconnect (connectRedis), so
 * while Redis is unreachable the API answers 503 `{"error":"redis_unreachable"}` at once, and
 * any API call Redis does not answer within API_TIMEOUT_MS (a Redis that hangs) answers the
 * same. A page asked for meanwhile is a plain one saying so, reloading itself; Bull Board's
 * own pages get a banner that says so while it lasts.
 *
 * Rejected messages are a log, not work to redo: no Retry, their payload decoded, no stack.
 *
 * Dead letters are parked in keen-dead-letter's Failed list with Keen's error as the failure
 * reason; Bull Board's Retry / Retry all there is the redrive (see dead-letters-worker.ts).
 * With DASHBOARD_READ_ONLY every adapter is read-only and the server itself refuses any
 * PUT, POST, PATCH or DELETE with 403, so no mutating route can slip through the UI's checks.
 */
import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { FastifyAdapter } from '@bull-board/fastify';
import Fastify, { type FastifyInstance } from 'fastify';
import { DEFAULT_KEEN_ATTEMPTS, type Config } from '../shared/config.js';
import { DependencyWatch } from '../shared/dependency-watch.js';
import type { RejectedMessageJob } from '../shared/jobs.js';
import type { Logger } from '../shared/logger.js';
import { allQueues, JOB_OPTIONS, openQueues, QUEUE_NAMES } from '../shared/queues.js';
import { retryWindowMs } from '../shared/backoff.js';
import { createBasicAuthCheck, isLoopback, REALM } from './auth.js';
import { ConfigError } from '../shared/errors.js';
import { connectRedis, redisWhere } from '../shared/redis.js';
import { withTimeout } from '../shared/timeout.js';

export type DashboardConfig = Config<'common' | 'dashboard'>;

export interface Dashboard {
  /** The port it listens on (DASHBOARD_PORT=0 picks a free one). */
  port: number;
  url: string;
  close(): Promise<void>;
}

/** An API call Redis has not answered by then answers 503. */
export const API_TIMEOUT_MS = 3000;
const READY_PING_MS = 1000;

/** "about 9 min to 19 min": a retry window as an operator reads it. */
function windowText({ minMs, maxMs }: { minMs: number; maxMs: number }): string {
  const unit = (ms: number) => {
    if (ms < 120_000) return `${Math.round(ms / 1000)} s`;
    return ms < 7_200_000 ? `${Math.round(ms / 60_000)} min` : `${(ms / 3_600_000).toFixed(1)} h`;
  };
  return `about ${unit(minMs)} to ${unit(maxMs)}`;
}
const ingestWindow = windowText(retryWindowMs(JOB_OPTIONS.ingest));
const ingestRetries = `A failing job is tried ${JOB_OPTIONS.ingest.attempts} times over ${ingestWindow} before it fails for good.`;
const keenWindow = windowText(retryWindowMs(JOB_OPTIONS.keen(DEFAULT_KEEN_ATTEMPTS)));
const keenRetries =
  `An event Keen does not take is tried ${DEFAULT_KEEN_ATTEMPTS} times (KEEN_ATTEMPTS, the default) over ${keenWindow}, ` +
  'then goes to keen-dead-letter.';

const DESCRIPTIONS: Record<string, string> = {
  [QUEUE_NAMES.lampStates]: `Lamp states, in groups, on their way past the device registry to Keen. ${ingestRetries}`,
  [QUEUE_NAMES.keen]:
    `Keen events in groups (one job per lamp-states or bridge-states job; a redriven dead letter alone, under its ` +
    `keen.uniqueness_token). ${keenRetries} Failed jobs here are a trail: their events are in keen-dead-letter.`,
  [QUEUE_NAMES.deadLetter]:
    'Keen events that failed for good, parked in Failed with the last Keen error. Retry (or Retry all) ' +
    'puts an event back into keen-delivery with the same uniqueness token, so Keen never counts it twice.',
  [QUEUE_NAMES.rejected]:
    'Messages the pipeline refused, in Failed: the failure reason says why, the data shows the message ' +
    '(payload: its first 512 bytes). Retrying cannot help, so there is no Retry.',
};
const BRIDGE_DESCRIPTION =
  `Lamp bridge connects and disconnects (activation, monitoring) of one partition of the lamps, many ` +
  `per job, handled one job at a time; each lamp in arrival order. ${ingestRetries}`;

/** A rejection's data as the operator reads it: the payload as text when it is UTF-8 (base64 otherwise). */
export function showRejection(data: unknown): unknown {
  const record = data as Partial<RejectedMessageJob> | null;
  if (typeof record?.payloadHead !== 'string') return data;
  const { payloadHead, ...rest } = record;
  const bytes = Buffer.from(payloadHead, 'base64');
  try {
    return { ...rest, payload: new TextDecoder('utf-8', { fatal: true }).decode(bytes) };
  } catch {
    return { ...rest, payloadBase64: payloadHead };
  }
}

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
  const redis = await connectRedis(config);
  const queues = openQueues(redis, config.QUEUE_PREFIX);
  const watch = new DependencyWatch(logger);
  watch.redis(redis, redisWhere(config), 'the dashboard answers 503 until it is back');
  watch.bullmq(allQueues(queues));
  let app: FastifyInstance | undefined;
  try {
    const readOnlyMode = config.DASHBOARD_READ_ONLY;
    const serverAdapter = new FastifyAdapter();
    serverAdapter.setBasePath('/');
    createBullBoard({
      queues: allQueues(queues).map((queue) => {
        const rejected = queue.label === QUEUE_NAMES.rejected;
        const adapter = new BullMQAdapter(queue, {
          readOnlyMode,
          // Bull Board's URLs use BullMQ's name, the hash-tagged queueKey; the page shows ours.
          displayName: queue.label,
          ...(rejected ? { allowRetries: false } : {}),
          description: `${DESCRIPTIONS[queue.label] ?? BRIDGE_DESCRIPTION} Redis prefix: ${config.QUEUE_PREFIX}.`,
        });
        if (rejected) adapter.setFormatter('data', showRejection);
        return adapter;
      }),
      serverAdapter,
      options: { uiConfig: { boardTitle: readOnlyMode ? 'LAMPI (read-only)' : 'LAMPI ingest' } },
    });

    app = Fastify({ logger: false });
    let redisHangs = false;
    const check =
      config.DASHBOARD_USERNAME && config.DASHBOARD_PASSWORD
        ? createBasicAuthCheck({ username: config.DASHBOARD_USERNAME, password: config.DASHBOARD_PASSWORD })
        : undefined;

    app.addHook('onRequest', async (request, reply) => {
      const path = request.url.split('?')[0]!;
      if (OPEN_PATHS.has(path)) return;
      if (check && !check(request.headers.authorization)) {
        if (request.headers.authorization !== undefined)
          logger.warn({ ip: request.ip, method: request.method, path }, 'dashboard: wrong credentials');
        return reply.code(401).header('WWW-Authenticate', REALM).type('text/plain').send('authentication required\n');
      }
      if (readOnlyMode && MUTATING.has(request.method)) {
        logger.info({ ip: request.ip, method: request.method, path }, 'dashboard: refused a change (read-only)');
        return reply.code(403).type('application/json').send({ error: 'the dashboard is read-only (DASHBOARD_READ_ONLY=true)' });
      }
      if (path.startsWith('/static/')) return;
      const api = path.startsWith('/api/');
      if (watch.isDown('redis')) {
        if (api)
          return reply
            .code(503)
            .type('application/json')
            .send({ error: 'redis_unreachable', message: watch.describeDown('redis') });
        return reply
          .code(503)
          .type('text/html; charset=utf-8')
          .header('retry-after', '5')
          .send(outagePage(watch.describeDown('redis')));
      }
      if (api) {
        let timedOut = false;
        const timer = setTimeout(() => {
          if (reply.sent) return;
          timedOut = true;
          // Once per hang, like the outage lines: the page polls, and every poll would say it again.
          if (!redisHangs)
            logger.warn({ method: request.method, path, timeout_ms: API_TIMEOUT_MS }, 'dashboard: Redis did not answer in time');
          redisHangs = true;
          const body = { error: 'redis_unreachable', message: `Redis did not answer within ${API_TIMEOUT_MS} ms` };
          void reply.code(503).type('application/json').send(body);
        }, API_TIMEOUT_MS);
        reply.raw.once('close', () => {
          clearTimeout(timer);
          if (redisHangs && !timedOut && reply.statusCode < 500) {
            redisHangs = false;
            logger.info('dashboard: Redis answers again');
          }
        });
      }
    });
    // Bull Board's pages, once loaded, only say "Loading" while Redis is gone: the banner says why.
    app.addHook('onSend', async (_request, reply, payload) => {
      const html = typeof payload === 'string' && String(reply.getHeader('content-type') ?? '').startsWith('text/html');
      return html && payload.includes('</body>') ? payload.replace('</body>', `${OUTAGE_BANNER}</body>`) : payload;
    });
    app.addHook('onError', async (request, _reply, error) => {
      logger.error({ method: request.method, path: request.url.split('?')[0], err: error }, 'dashboard request failed');
    });

    // Alive while Redis is gone (a restart would not bring it back), and saying so.
    app.get('/healthz', async () => ({ status: 'ok', ...(watch.isDown('redis') ? { redis: 'unreachable' } : {}) }));
    app.get('/readyz', async (_request, reply) => {
      const ready =
        redis.status === 'ready' &&
        (await withTimeout(redis.ping(), READY_PING_MS).then(
          () => true,
          () => false,
        ));
      // Open to anyone, so it names no address: the authenticated pages do.
      const body = { status: ready ? 'ready' : 'not ready', checks: { redis: ready }, ...(ready ? {} : { error: 'redis_unreachable' }) };
      return reply.code(ready ? 200 : 503).send(body);
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
        watch.stop();
        await server.close();
        await queues.close();
        await redis.quit().catch(() => redis.disconnect());
      },
    };
  } catch (err) {
    watch.stop();
    await app?.close().catch(() => {});
    await queues.close().catch(() => {});
    redis.disconnect();
    throw err;
  }
}

const escapeHtml = (text: string) => text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function outagePage(message: string): string {
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="5"><title>LAMPI: Redis is unreachable</title></head>
<body style="font-family:sans-serif;margin:3rem;max-width:48rem">
<h1>Redis is unreachable</h1>
<p>${escapeHtml(message)}.</p>
<p>Nothing is lost: the queues are in Redis, and the subscriber leaves new messages with the MQTT broker until Redis is back.
This page reloads every 5 seconds and shows the queues again as soon as Redis answers.</p>
</body></html>
`;
}

/** Polls /readyz (no credentials needed) and shows or removes a banner. */
const OUTAGE_BANNER = `<script>
(() => {
  const OUTAGE = 'Redis is unreachable: what the dashboard shows is out of date. It catches up by itself when Redis is back.';
  const show = (text) => {
    let banner = document.getElementById('lampi-outage');
    if (!text) return banner && banner.remove();
    if (!banner) {
      banner = document.createElement('div');
      banner.id = 'lampi-outage';
      banner.setAttribute('role', 'alert');
      banner.style.cssText = 'position:fixed;top:0;left:0;right:0;z-index:2147483647;padding:12px;'
        + 'background:#b42318;color:#fff;font:600 15px sans-serif;text-align:center';
      document.body.appendChild(banner);
    }
    banner.textContent = text;
  };
  const check = () =>
    fetch('readyz', { cache: 'no-store' })
      .then((response) => show(response.ok ? '' : OUTAGE))
      .catch(() => show('The dashboard does not answer: is it running?'));
  check();
  setInterval(check, 5000);
})();
</script>`;
