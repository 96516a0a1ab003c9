/**
 * The operations endpoints every process serves on METRICS_PORT:
 *   /metrics  Prometheus text format
 *   /healthz  liveness: the event loop answers
 *   /readyz   readiness: each connection the process needs is up (503 and which one is not,
 *             with a reason where the check gives one)
 * The port is taken before the process connects to anything, so a port another process has (a
 * second worker on the host) is one StartupError line naming METRICS_PORT, before any job is
 * taken. Until `serve` hands it the process's checks, /readyz answers 503 "starting".
 */
import { createServer, type Server } from 'node:http';
import type { Logger } from './logger.js';
import type { Metrics } from './metrics.js';
import { StartupError, describeError } from './errors.js';

/** Per check: true when ready, false when not, or a sentence saying why not. */
export type ReadinessCheck = () => Promise<Record<string, boolean | string>>;

export interface OpsServerOptions {
  /** The process serving them (`worker`, `subscriber`), named when its port is taken. */
  service: string;
  port: number;
  host: string;
  metrics: Metrics;
  logger: Logger;
}

export interface ProcessChecks {
  readiness: ReadinessCheck;
  /** Called before each scrape, to refresh gauges that are read on demand (queue depths). */
  beforeScrape?: () => Promise<void>;
}

export interface OpsServer {
  port: number;
  /** The started process's checks; logs where the endpoints are. */
  serve(checks: ProcessChecks): void;
  close(): Promise<void>;
}

const STARTING: ProcessChecks = { readiness: async () => ({ started: false }) };

export async function startOpsServer(options: OpsServerOptions): Promise<OpsServer> {
  let checks = STARTING;
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    const respond = (status: number, type: string, body: string) => {
      res.writeHead(status, { 'content-type': type });
      res.end(body);
    };
    if (req.method !== 'GET') return respond(405, 'text/plain', 'method not allowed\n');
    if (path === '/healthz') return respond(200, 'application/json', '{"status":"ok"}\n');
    if (path === '/readyz') {
      checks.readiness().then(
        (results) => {
          const checks = Object.fromEntries(Object.entries(results).map(([name, result]) => [name, result === true]));
          const reasons = Object.entries(results).filter(([, result]) => typeof result === 'string');
          const ready = Object.values(checks).every(Boolean);
          const body = {
            status: ready ? 'ready' : 'not ready',
            checks,
            ...(reasons.length > 0 ? { reasons: Object.fromEntries(reasons) } : {}),
          };
          respond(ready ? 200 : 503, 'application/json', `${JSON.stringify(body)}\n`);
        },
        (err: unknown) => respond(503, 'application/json', `${JSON.stringify({ status: 'not ready', error: String(err) })}\n`),
      );
      return;
    }
    if (path === '/metrics') {
      (checks.beforeScrape?.() ?? Promise.resolve())
        .catch((err: unknown) => options.logger.warn({ err }, 'could not refresh queue gauges'))
        .then(() => options.metrics.registry.metrics())
        .then(
          (text) => respond(200, options.metrics.registry.contentType, text),
          (err: unknown) => respond(500, 'text/plain', `${String(err)}\n`),
        );
      return;
    }
    respond(404, 'text/plain', 'not found: try /metrics, /healthz or /readyz\n');
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => reject(listenProblem(err, options)));
    server.listen(options.port, options.host, () => resolve());
  });
  const { port } = server.address() as { port: number };
  return {
    port,
    serve(started) {
      checks = started;
      options.logger.info({ port, host: options.host }, 'serving /metrics, /healthz and /readyz');
    },
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

function listenProblem(err: NodeJS.ErrnoException, { service, port, host }: OpsServerOptions): StartupError {
  if (err.code === 'EADDRINUSE') {
    return new StartupError(
      `METRICS_PORT ${port} is in use (another ${service} on this host?): set METRICS_PORT to a free port, or 0 to pick one (it is logged)`,
    );
  }
  return new StartupError(
    `cannot serve /metrics on ${host}:${port} (${describeError(err)}): set METRICS_PORT to a free port (or 0) and METRICS_HOST to an address of this host`,
  );
}
