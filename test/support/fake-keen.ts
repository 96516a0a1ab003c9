/**
 * A local stand-in for Keen's write API (node:http), for every test that sends events. It speaks
 * the real wire format and applies Keen's rules, both from src/shared/keen/:
 *
 * - `POST /3.0/projects/{id}/events/{collection}` (one event) answers 201 `{"created":true}`, or
 *   400 `{message, error_code}` when the event is invalid;
 * - `POST /3.0/projects/{id}/events` (bulk, `{collection: [events]}`) answers 200 with one result
 *   per event, in order: `{success: true}` or `{success: false, error: {name, description}}`;
 * - `Authorization: <write key>` (or `?api_key=`); a wrong key gets 401 `InvalidApiKeyError`;
 * - `keen.uniqueness_token`: a second event with a token already seen in its collection is
 *   answered as a success and not stored again (counted in `duplicatesDropped`).
 *
 * Faults can be injected for the next N requests or until cleared: any status/body/headers,
 * hanging (the request is read and never answered), connection resets, per-event refusals, and
 * poisoned events that fail every request carrying them (a 500 or 413, nothing stored).
 */
import { randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type OutgoingHttpHeaders, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { KEEN_EVENT_ERRORS, KEEN_REQUEST_ERRORS, keenErrorBody, type KeenEventError } from '../../src/shared/keen/errors.js';
import {
  checkBulkBody,
  checkCollectionName,
  checkEvent as checkKeenEvent,
  KEEN_LIMITS,
  matchEventsPath,
  TOO_LARGE,
} from '../../src/shared/keen/protocol.js';

export interface FakeKeenOptions {
  projectId: string;
  writeKey: string;
  host?: string;
  /** 0 (the default) picks a free port. */
  port?: number;
}

/** An event as stored: what was sent, with the `keen.id` and `keen.created_at` Keen adds. */
export type StoredEvent = Record<string, unknown> & {
  keen: Record<string, unknown> & { id: string; created_at: string; timestamp: string };
};

export type FaultKind = 'respond' | 'hang' | 'reset';

export interface RecordedRequest {
  /** 1, 2, 3, ... in arrival order. */
  seq: number;
  method: string;
  path: string;
  kind: 'bulk' | 'single' | 'other';
  /** Events in the request body (0 when unreadable, or for a reset before the body was read). */
  eventCount: number;
  /** Date.now() when the request (headers) arrived. */
  receivedAt: number;
  /** Date.now() when the response was written; unset for a hang or a reset. */
  respondedAt?: number;
  status?: number;
  fault?: FaultKind;
}

export interface FaultResponse {
  status: number;
  /** A string is sent as is (`text/plain` unless headers say otherwise); anything else as JSON. */
  body?: unknown;
  headers?: OutgoingHttpHeaders;
}

export interface FaultOptions {
  /** How many requests this fault applies to; Infinity (the default) until `clearFaults()`. */
  times?: number;
}

export interface AfterStoreOption {
  /**
   * When true, the request is handled (its events stored) before the fault strikes: Keen
   * recorded the events but the client never learns it.
   */
  afterStore?: boolean;
}

/** Returns an error (name, or name and description) to refuse the event, or nothing to accept it. */
export type EventRejector = (collection: string, event: Record<string, unknown>) => string | KeenEventError | undefined | null | false;

/** Fails every request that carries a matching event with this status and body, storing none of it. */
export interface RequestPoison {
  matches: (collection: string, event: Record<string, unknown>) => boolean;
  status: number;
  body?: unknown;
}

export interface FakeKeen {
  url: string;
  projectId: string;
  writeKey: string;
  /** Accepted events per collection, in arrival order, once per uniqueness token. */
  readonly events: Map<string, StoredEvent[]>;
  /** Every request that reached the server, in arrival order. */
  readonly requests: RecordedRequest[];
  readonly duplicatesDropped: number;
  eventsIn(collection: string): StoredEvent[];
  /** The `keen.uniqueness_token` of each stored event of a collection. */
  tokens(collection: string): string[];
  /** Stored events in all collections. */
  eventCount(): number;
  /** Answers the next requests with this response instead of handling them (nothing stored). */
  respondWith(response: FaultResponse, options?: FaultOptions): void;
  /** Reads the next requests and never answers them. */
  hang(options?: FaultOptions & AfterStoreOption): void;
  /** Destroys the connection of the next requests instead of answering. */
  resetConnections(options?: FaultOptions & AfterStoreOption): void;
  /** Refuses matching events with a per-event error (400 on the single-event endpoint) until cleared. */
  rejectEvents(rejector: EventRejector | undefined): void;
  /** Fails whole requests that carry a matching event, until cleared (see RequestPoison). */
  failRequestsContaining(poison: RequestPoison | undefined): void;
  /** Removes every fault, rejector and poison. Stored events and the request log stay. */
  clearFaults(): void;
  close(): Promise<void>;
}

type Fault =
  { kind: 'respond'; remaining: number; response: FaultResponse } | { kind: 'hang' | 'reset'; remaining: number; afterStore: boolean };

interface Outcome {
  status: number;
  body: unknown;
}

export async function startFakeKeen(options: FakeKeenOptions): Promise<FakeKeen> {
  const { projectId, writeKey } = options;
  const events = new Map<string, StoredEvent[]>();
  const seenTokens = new Map<string, Set<string>>();
  const requests: RecordedRequest[] = [];
  let duplicatesDropped = 0;
  let faults: Fault[] = [];
  let rejector: EventRejector | undefined;
  let poison: RequestPoison | undefined;
  const sockets = new Set<Socket>();

  const store = (collection: string, event: Record<string, unknown>) => {
    const keen = (event.keen ?? {}) as Record<string, unknown>;
    const token = typeof keen.uniqueness_token === 'string' ? keen.uniqueness_token : undefined;
    if (token !== undefined) {
      let tokens = seenTokens.get(collection);
      if (!tokens) seenTokens.set(collection, (tokens = new Set()));
      if (tokens.has(token)) {
        duplicatesDropped += 1;
        return;
      }
      tokens.add(token);
    }
    const createdAt = new Date().toISOString();
    const stored = {
      ...event,
      keen: {
        ...keen,
        timestamp: typeof keen.timestamp === 'string' ? keen.timestamp : createdAt,
        created_at: createdAt,
        id: randomBytes(12).toString('hex'),
      },
    } as StoredEvent;
    let list = events.get(collection);
    if (!list) events.set(collection, (list = []));
    list.push(stored);
  };

  /** Validation plus the injected rejector: the per-event error for this event, if any. */
  const checkEvent = (collection: string, event: unknown): KeenEventError | undefined => {
    const name = checkCollectionName(collection);
    if (!name.ok) return name.error;
    const checked = checkKeenEvent(event);
    if (!checked.ok) return checked.error;
    const refused = rejector?.(collection, event as Record<string, unknown>);
    if (!refused) return undefined;
    return typeof refused === 'string' ? { name: refused, description: `refused by the test (${refused})` } : refused;
  };

  const apiError = (status: number, errorCode: string, message: string): Outcome => ({ status, body: keenErrorBody(errorCode, message) });

  const handle = (req: IncomingMessage, body: Buffer, record: RecordedRequest): Outcome => {
    const url = new URL(req.url ?? '/', 'http://fake-keen');
    const match = matchEventsPath(url.pathname);
    if (!match.ok) return apiError(404, KEEN_REQUEST_ERRORS.notFound, `No resource at ${url.pathname}.`);
    if (req.method !== 'POST') return apiError(405, KEEN_REQUEST_ERRORS.method, `Method ${req.method} is not allowed here.`);
    if (match.projectId !== projectId) return apiError(404, KEEN_REQUEST_ERRORS.project, 'Project not found.');
    const key = req.headers.authorization ?? url.searchParams.get('api_key');
    if (key !== writeKey) return apiError(401, KEEN_REQUEST_ERRORS.apiKey, 'The API key is invalid for this project.');
    if (body.length > KEEN_LIMITS.bulkBytes) return apiError(413, KEEN_REQUEST_ERRORS.tooLarge, TOO_LARGE.bulk);

    let parsed: unknown;
    try {
      parsed = JSON.parse(body.toString('utf8'));
    } catch {
      return apiError(400, KEEN_REQUEST_ERRORS.json, 'The request body is not valid JSON.');
    }

    const poisoned = (collection: string, event: unknown) =>
      poison !== undefined && typeof event === 'object' && event !== null && poison.matches(collection, event as Record<string, unknown>);
    if (match.collection !== undefined) {
      const collection = match.collection;
      if (poisoned(collection, parsed)) return { status: poison!.status, body: poison!.body };
      record.eventCount = 1;
      if (body.length > KEEN_LIMITS.eventBytes) return apiError(413, KEEN_EVENT_ERRORS.tooLarge, TOO_LARGE.event);
      const error = checkEvent(collection, parsed);
      if (error) return apiError(400, error.name, error.description);
      store(collection, parsed as Record<string, unknown>);
      return { status: 201, body: { created: true } };
    }

    const bulk = checkBulkBody(parsed);
    if (!bulk.ok) return apiError(400, bulk.error.name, bulk.error.description);
    const entries = bulk.value;
    record.eventCount = entries.reduce((n, [, list]) => n + list.length, 0);
    if (entries.some(([collection, list]) => list.some((event) => poisoned(collection, event))))
      return { status: poison!.status, body: poison!.body };
    const results: Record<string, unknown[]> = {};
    for (const [collection, list] of entries) {
      results[collection] = list.map((event) => {
        const error = checkEvent(collection, event);
        if (error) return { success: false, error };
        store(collection, event as Record<string, unknown>);
        return { success: true };
      });
    }
    return { status: 200, body: results };
  };

  const nextFault = (): Fault | undefined => {
    const fault = faults.find((f) => f.remaining > 0);
    if (fault) fault.remaining -= 1;
    faults = faults.filter((f) => f.remaining > 0);
    return fault;
  };

  const send = (res: ServerResponse, record: RecordedRequest, status: number, body: unknown, headers: OutgoingHttpHeaders = {}) => {
    const text = typeof body === 'string' ? body : body === undefined ? '' : JSON.stringify(body);
    const contentType = typeof body === 'string' ? 'text/plain; charset=utf-8' : 'application/json';
    record.status = status;
    record.respondedAt = Date.now();
    res.writeHead(status, { 'Content-Type': contentType, 'Content-Length': Buffer.byteLength(text), ...headers });
    res.end(text);
  };

  const server = createServer((req, res) => {
    const path = (req.url ?? '').split('?')[0]!;
    const match = matchEventsPath(path);
    const kind = !match.ok ? 'other' : match.collection === undefined ? 'bulk' : 'single';
    const record: RecordedRequest = {
      seq: requests.length + 1,
      method: req.method ?? '',
      path,
      kind,
      eventCount: 0,
      receivedAt: Date.now(),
    };
    requests.push(record);
    req.on('error', () => {});
    res.on('error', () => {});
    const fault = nextFault();
    if (fault) record.fault = fault.kind;
    if (fault?.kind === 'reset' && !fault.afterStore) {
      req.socket.destroy();
      return;
    }

    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      // Keep reading past the limit (so the client can finish sending) but stop storing.
      if (size <= KEEN_LIMITS.bulkBytes + 1) chunks.push(chunk);
    });
    req.on('end', () => {
      if (fault?.kind === 'respond') {
        const { status, body, headers } = fault.response;
        record.eventCount = countEvents(record.kind, Buffer.concat(chunks));
        send(res, record, status, body, headers);
        return;
      }
      if (fault?.kind === 'hang' && !fault.afterStore) {
        record.eventCount = countEvents(record.kind, Buffer.concat(chunks));
        return;
      }
      const outcome = handle(req, size > KEEN_LIMITS.bulkBytes ? Buffer.alloc(KEEN_LIMITS.bulkBytes + 1) : Buffer.concat(chunks), record);
      if (fault?.kind === 'hang') return;
      if (fault?.kind === 'reset') {
        req.socket.destroy();
        return;
      }
      send(res, record, outcome.status, outcome.body);
    });
  });

  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, options.host ?? '127.0.0.1', () => resolve());
  });
  const address = server.address() as AddressInfo;
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;

  return {
    url: `http://${host}:${address.port}`,
    projectId,
    writeKey,
    events,
    requests,
    get duplicatesDropped() {
      return duplicatesDropped;
    },
    eventsIn: (collection) => events.get(collection) ?? [],
    tokens: (collection) => (events.get(collection) ?? []).map((event) => String(event.keen.uniqueness_token)),
    eventCount: () => [...events.values()].reduce((n, list) => n + list.length, 0),
    respondWith(response, { times = Infinity } = {}) {
      faults.push({ kind: 'respond', remaining: times, response });
    },
    hang({ times = Infinity, afterStore = false } = {}) {
      faults.push({ kind: 'hang', remaining: times, afterStore });
    },
    resetConnections({ times = Infinity, afterStore = false } = {}) {
      faults.push({ kind: 'reset', remaining: times, afterStore });
    },
    rejectEvents(next) {
      rejector = next;
    },
    failRequestsContaining(next) {
      poison = next;
    },
    clearFaults() {
      faults = [];
      rejector = undefined;
      poison = undefined;
    },
    async close() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const socket of sockets) socket.destroy();
      server.closeAllConnections();
      await closed;
    },
  };
}

/** How many events a request body carries, for the log of a request that was not handled. */
function countEvents(kind: RecordedRequest['kind'], body: Buffer): number {
  if (kind === 'single') return 1;
  if (kind !== 'bulk') return 0;
  try {
    const parsed: unknown = JSON.parse(body.toString('utf8'));
    if (typeof parsed !== 'object' || parsed === null) return 0;
    return Object.values(parsed).reduce((n: number, list) => n + (Array.isArray(list) ? list.length : 0), 0);
  } catch {
    return 0;
  }
}
