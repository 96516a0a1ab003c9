/**
 * keen-sink's HTTP server: Keen's write API (single and bulk) and query API for one project,
 * over PostgreSQL. Plain node:http, so status codes, bodies and size limits are exactly ours.
 *
 *   POST     /3.0/projects/{id}/events/{collection}   write key   201 {"created": true}
 *   POST     /3.0/projects/{id}/events                write key   200 {collection: [{success}...]}
 *   GET      /3.0/projects/{id}/events                read key    200 [{name, properties, url}]
 *   GET|POST /3.0/projects/{id}/queries/{analysis}    read key    200 {"result": ...}
 *   GET      /, /explorer/*                           none        the browser explorer (the page asks for the read key)
 *   GET      /healthz, /readyz
 *   OPTIONS  (CORS preflight, for KEEN_SINK_CORS_ORIGINS)
 *
 * Keys come from the `Authorization` header or the `api_key` query parameter.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import path from 'node:path';
import pg from 'pg';
import type { Logger } from '../shared/logger.js';
import { ensureDatabase } from '../shared/postgres.js';
import { applyMigrations } from '../shared/migrations.js';
import { KEEN_EVENT_ERRORS, KEEN_REQUEST_ERRORS, keenErrorBody } from '../shared/keen/errors.js';
import { checkBulkBody, KEEN_LIMITS, TOO_LARGE, UNIQUENESS_WINDOW_DAYS, type KeenRefusal } from '../shared/keen/protocol.js';
import { collectionNameProblem, prepareEvent, type PreparedEvent } from './events.js';
import { answerQuery, isQueryName, QUERY_NAMES } from './analyses.js';
import { listCollections } from './collections.js';
import { Cors } from './cors.js';
import { Explorer } from './explorer.js';
import { JsonText, QueryError } from './query.js';
import { expireUniquenessTokens, storeEvents, type StoreOutcome } from './store.js';
import { MigrationError, StartupError, describeError } from '../shared/errors.js';
import { safeUrl } from '../shared/redact.js';

export const MIGRATIONS = path.resolve(import.meta.dirname, 'migrations');
export const MIGRATIONS_TABLE = '_keen_sink_migrations';

export interface KeenSinkOptions {
  databaseUrl: string;
  projectId: string;
  writeKey: string;
  readKey: string;
  port: number;
  host: string;
  logger: Logger;
  /** Origins whose web pages may call keen-sink (CORS); "*" for any. Default: none. */
  corsOrigins?: readonly string[];
  /** Longest a query may run before it is answered 503, as Keen does. */
  statementTimeoutMs?: number;
  /** The most one query's answer may hold, as JSON bytes (KEEN_SINK_MAX_RESULT_BYTES). Default 32 MiB. */
  maxResultBytes?: number;
}

export interface KeenSink {
  port: number;
  /** http://127.0.0.1:<port>, for tests and logs. */
  url: string;
  db: pg.Pool;
  close(): Promise<void>;
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/** Beyond this much over-limit body the connection is cut instead of read to the end. */
const DRAIN_LIMIT = 64 * 1024 * 1024;

function send(res: ServerResponse, status: number, body: unknown): void {
  sendText(res, status, JSON.stringify(body));
}

function sendText(res: ServerResponse, status: number, text: string): void {
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

/** Reads the body; over `limit` the rest is read and dropped, and `tooLarge` is set. */
function readBody(req: IncomingMessage, limit: number): Promise<{ body: Buffer; tooLarge: boolean }> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size <= limit) chunks.push(chunk);
      else if (size > limit + DRAIN_LIMIT) req.destroy();
    });
    req.on('end', () => resolve({ body: size <= limit ? Buffer.concat(chunks) : Buffer.alloc(0), tooLarge: size > limit }));
    req.on('error', reject);
    req.on('close', () => {
      if (!req.complete) reject(new Error('request aborted'));
    });
  });
}

function parseJson(body: Buffer): unknown {
  try {
    return JSON.parse(body.toString('utf8'));
  } catch {
    throw new HttpError(400, KEEN_REQUEST_ERRORS.json, 'The request body is not valid JSON.');
  }
}

const digest = (value: string) => createHash('sha256').update(value).digest();

function keyMatches(given: string | undefined, expected: string): boolean {
  return given !== undefined && timingSafeEqual(digest(given), digest(expected));
}

export async function startKeenSink(options: KeenSinkOptions): Promise<KeenSink> {
  const { logger } = options;
  const where = `KEEN_SINK_DATABASE_URL=${safeUrl(options.databaseUrl)}`;
  const created = await ensureDatabase(options.databaseUrl, 'KEEN_SINK_DATABASE_URL');
  if (created) logger.info({ database: created }, 'database did not exist: created it');
  try {
    const result = await applyMigrations({ databaseUrl: options.databaseUrl, directory: MIGRATIONS, table: MIGRATIONS_TABLE });
    for (const name of result.applied) logger.info({ migration: name }, 'applied migration');
  } catch (err) {
    if (err instanceof MigrationError) throw new StartupError(`${err.message} (${where})`);
    throw new StartupError(`cannot migrate ${where} (${describeError(err)}): check that PostgreSQL is up and the user may create tables`);
  }

  const db = new pg.Pool({ connectionString: options.databaseUrl, max: 10, statement_timeout: options.statementTimeoutMs ?? 60_000 });
  db.on('error', (err) => logger.warn({ err }, 'idle PostgreSQL connection failed'));
  const reportedAddons = new Set<string>();
  const cors = new Cors({ origins: options.corsOrigins ?? [] });
  const explorer = new Explorer(options.projectId);

  const authorize = (req: IncomingMessage, url: URL, key: string) => {
    const given = req.headers.authorization ?? url.searchParams.get('api_key') ?? undefined;
    if (given === undefined || given === '')
      throw new HttpError(
        401,
        KEEN_REQUEST_ERRORS.apiKey,
        "An API key is required: send it in the 'Authorization' header or as ?api_key=.",
      );
    if (!keyMatches(given, key))
      throw new HttpError(401, KEEN_REQUEST_ERRORS.apiKey, 'The API key is not valid for this project and operation.');
  };

  const reportAddons = (events: PreparedEvent[]) => {
    for (const event of events) {
      for (const addon of event.unknownAddons) {
        if (reportedAddons.has(addon)) continue;
        reportedAddons.add(addon);
        logger.warn(
          { addon, collection: event.collection },
          'add-on not implemented by keen-sink: events are stored without its output (reported once)',
        );
      }
    }
  };

  /** Validation should have refused what PostgreSQL refuses: each such event is worth a line (never its content). */
  const reportRefusal = (event: PreparedEvent, outcome: StoreOutcome | undefined) => {
    if (outcome?.status === 'refused')
      logger.warn(
        { collection: event.collection, problem: outcome.problem },
        'PostgreSQL refused an event that passed validation; refused it alone',
      );
  };

  async function writeOne(req: IncomingMessage, res: ServerResponse, collectionSegment: string) {
    let collection: string;
    try {
      collection = decodeURIComponent(collectionSegment);
    } catch {
      throw new HttpError(400, KEEN_EVENT_ERRORS.collectionName, 'The collection name in the URL is not valid percent-encoding.');
    }
    const { body, tooLarge } = await readBody(req, KEEN_LIMITS.eventBytes);
    if (tooLarge) throw new HttpError(413, KEEN_EVENT_ERRORS.tooLarge, TOO_LARGE.event);
    const prepared = prepareEvent(collection, parseJson(body), new Date(), body.length);
    if (!prepared.ok) throw new HttpError(400, prepared.error.name, prepared.error.description);
    const [outcome] = await storeEvents(db, options.projectId, [prepared.value]);
    reportRefusal(prepared.value, outcome);
    if (outcome?.status === 'refused') throw new HttpError(400, KEEN_EVENT_ERRORS.propertyValue, outcome.problem);
    reportAddons([prepared.value]);
    if (outcome?.status === 'duplicate') {
      send(res, 200, { created: false, duplicate: true, message: duplicateMessage });
    } else {
      send(res, 201, { created: true });
    }
  }

  async function writeMany(req: IncomingMessage, res: ServerResponse) {
    const { body, tooLarge } = await readBody(req, KEEN_LIMITS.bulkBytes);
    if (tooLarge) throw new HttpError(413, KEEN_REQUEST_ERRORS.tooLarge, TOO_LARGE.bulk);
    const batch = checkBulkBody(parseJson(body));
    if (!batch.ok) throw new HttpError(400, batch.error.name, batch.error.description);
    const now = new Date();
    type Slot = { error: KeenRefusal } | { event: PreparedEvent };
    const slots: Array<[string, Slot[]]> = [];
    for (const [collection, events] of batch.value) {
      const problem = collectionNameProblem(collection);
      // Alone, an oversized event is a 413; in a batch it fails alone (prepareEvent measures it),
      // so a sender's batch of good events is not refused (and dead-lettered) whole because of one.
      const results = events.map((event): Slot => {
        if (problem) return { error: problem };
        const prepared = prepareEvent(collection, event, now);
        return prepared.ok ? { event: prepared.value } : { error: prepared.error };
      });
      slots.push([collection, results]);
    }
    const valid = slots.flatMap(([, results]) => results.flatMap((slot) => ('event' in slot ? [slot.event] : [])));
    const outcomes = await storeEvents(db, options.projectId, valid);
    const outcomeById = new Map(valid.map((event, index) => [event.id, outcomes[index]]));
    for (const event of valid) reportRefusal(event, outcomeById.get(event.id));
    reportAddons(valid.filter((event) => outcomeById.get(event.id)?.status !== 'refused'));
    // Collection names are the sender's: a null-prototype object keeps `__proto__` a plain key.
    const response: Record<string, unknown> = Object.create(null);
    for (const [collection, results] of slots) {
      const answer = results.map((slot) => {
        if ('error' in slot) return { success: false, error: slot.error };
        const outcome = outcomeById.get(slot.event.id);
        if (outcome?.status === 'refused')
          return { success: false, error: { name: KEEN_EVENT_ERRORS.propertyValue, description: outcome.problem } };
        return outcome?.status === 'duplicate' ? { success: true, duplicate: true, message: duplicateMessage } : { success: true };
      });
      response[collection] = answer;
    }
    send(res, 200, response);
  }

  async function query(req: IncomingMessage, res: ServerResponse, url: URL, analysis: string) {
    if (!isQueryName(analysis))
      throw new HttpError(
        404,
        KEEN_REQUEST_ERRORS.notFound,
        `Unknown analysis "${analysis.slice(0, 40)}": keen-sink answers ${QUERY_NAMES.join(', ')}.`,
      );
    // The sender names the keys: a null-prototype object, filled with own properties only, so
    // `__proto__` or `constructor` is a parameter like any other (and unknown, so ignored).
    const params: Record<string, unknown> = Object.create(null);
    for (const [key, value] of url.searchParams) if (key !== 'api_key') params[key] = value;
    if (req.method === 'POST') {
      const { body, tooLarge } = await readBody(req, 1024 * 1024);
      if (tooLarge) throw new HttpError(413, KEEN_REQUEST_ERRORS.tooLarge, 'A query body may be at most 1 MiB.');
      if (body.length > 0) {
        const parsed = parseJson(body);
        if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed))
          throw new HttpError(400, 'InvalidParameterError', 'A query body must be a JSON object of parameters.');
        for (const [key, value] of Object.entries(parsed)) params[key] = value;
      }
    }
    const body = await answerQuery(db, options.projectId, analysis, params, { maxResultBytes: options.maxResultBytes });
    // An extraction arrives as PostgreSQL's JSON text, sent on without a parse and a stringify.
    const members = Object.entries(body).map(
      ([key, value]) => `${JSON.stringify(key)}:${value instanceof JsonText ? value.text : JSON.stringify(value)}`,
    );
    sendText(res, 200, `{${members.join(',')}}`);
  }

  async function route(req: IncomingMessage, res: ServerResponse) {
    let url: URL;
    try {
      url = new URL(req.url ?? '/', 'http://keen-sink');
    } catch {
      throw new HttpError(400, 'InvalidRequestError', 'The request target is not a valid URL path.');
    }
    const parts = url.pathname.split('/').filter(Boolean);
    if (cors.handle(req, res)) return undefined;
    if (req.method === 'GET' && explorer.serve(url.pathname, res)) return undefined;
    if (req.method === 'GET' && url.pathname === '/healthz') return send(res, 200, { status: 'ok' });
    if (req.method === 'GET' && url.pathname === '/readyz') {
      try {
        await db.query('SELECT 1');
        return send(res, 200, { status: 'ready', checks: { postgres: true } });
      } catch {
        return send(res, 503, { status: 'not ready', checks: { postgres: false } });
      }
    }
    if (parts[0] !== '3.0' || parts[1] !== 'projects' || parts.length < 4)
      throw new HttpError(404, KEEN_REQUEST_ERRORS.notFound, `Nothing at ${url.pathname.slice(0, 200)}.`);
    if (parts[2] !== options.projectId)
      throw new HttpError(404, KEEN_REQUEST_ERRORS.project, `Project ${parts[2]!.slice(0, 64)} does not exist on this keen-sink.`);
    const [resource, name, ...rest] = parts.slice(3);
    if (resource === 'events' && name === undefined && req.method === 'GET') {
      authorize(req, url, options.readKey);
      return send(res, 200, await listCollections(db, options.projectId));
    }
    if (resource === 'events' && rest.length === 0) {
      if (req.method !== 'POST') throw new HttpError(405, KEEN_REQUEST_ERRORS.method, 'Events are recorded with POST.');
      authorize(req, url, options.writeKey);
      return name === undefined ? writeMany(req, res) : writeOne(req, res, name);
    }
    if (resource === 'queries' && name !== undefined && rest.length === 0) {
      if (req.method !== 'GET' && req.method !== 'POST') throw new HttpError(405, KEEN_REQUEST_ERRORS.method, 'Queries use GET or POST.');
      authorize(req, url, options.readKey);
      return query(req, res, url, name);
    }
    throw new HttpError(404, KEEN_REQUEST_ERRORS.notFound, `Nothing at ${url.pathname.slice(0, 200)}.`);
  }

  const server: Server = createServer((req, res) => {
    const started = process.hrtime.bigint();
    route(req, res)
      .catch((err: unknown) => {
        if (err instanceof HttpError) return send(res, err.status, keenErrorBody(err.code, err.message));
        if (err instanceof QueryError) return send(res, 400, keenErrorBody(err.code, err.message));
        if ((err as { code?: string }).code === '57014') {
          return send(res, 503, {
            message: 'The query took too long and was cancelled: narrow the timeframe or filters.',
            error_code: 'QueryTimeoutError',
          });
        }
        if ((err as Error).message === 'request aborted') return undefined;
        logger.error({ err, method: req.method, path: (req.url ?? '').split('?')[0] }, 'request failed');
        if (!res.headersSent)
          send(res, 500, { message: 'keen-sink failed to handle this request; see its log.', error_code: 'InternalServerError' });
        return undefined;
      })
      .finally(() => {
        logger.debug(
          {
            method: req.method,
            path: (req.url ?? '').split('?')[0],
            status: res.statusCode,
            ms: Number(process.hrtime.bigint() - started) / 1e6,
          },
          'request',
        );
      });
  });
  // Keen clients keep connections alive between batches.
  server.keepAliveTimeout = 65_000;

  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(options.port, options.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } catch (err) {
    await db.end().catch(() => {});
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EADDRINUSE')
      throw new StartupError(
        `port ${options.port} on ${options.host} is already in use (EADDRINUSE): stop what listens there or set KEEN_SINK_PORT`,
      );
    throw new StartupError(
      `cannot listen on ${options.host}:${options.port} (${describeError(err)}): fix KEEN_SINK_HOST or KEEN_SINK_PORT`,
    );
  }

  const expiry = setInterval(() => {
    expireUniquenessTokens(db).then(
      (count) => count > 0 && logger.info({ count }, 'forgot expired uniqueness tokens'),
      (err: unknown) => logger.warn({ err }, 'could not expire uniqueness tokens'),
    );
  }, 3_600_000);
  expiry.unref();

  const { port } = server.address() as { port: number };
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    db,
    async close() {
      clearInterval(expiry);
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      const force = setTimeout(() => server.closeAllConnections(), 5_000);
      await closed;
      clearTimeout(force);
      await db.end();
    },
  };
}

const duplicateMessage =
  `An event with this keen.uniqueness_token was already recorded in this collection within ${UNIQUENESS_WINDOW_DAYS} days; ` +
  'this one was not stored again.';
