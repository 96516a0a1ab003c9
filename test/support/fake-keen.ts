/**
 * A local stand-in for Keen's write API (node:http, no dependencies), for every test that sends
 * events. It speaks the real wire format (see /work/shared/NOTES.md, "Keen's write API"):
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
 *
 * The validation functions at the top are pure and independent of the server, so a real
 * Keen-compatible service can reuse them.
 */
import { randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type OutgoingHttpHeaders, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

// ---------------------------------------------------------------------------------------------
// Keen's validation rules
// ---------------------------------------------------------------------------------------------

export const KEEN_LIMITS = {
  maxEventBytes: 900_000,
  maxRequestBytes: 10 * 1024 * 1024,
  maxCollectionName: 64,
  maxPropertyName: 256,
  maxUniquenessToken: 64,
} as const;

/** A per-event error, as Keen reports it in a bulk response. */
export interface KeenEventError {
  name: string;
  description: string;
}

export function validateCollectionName(name: unknown): KeenEventError | undefined {
  const invalid = (description: string) => ({ name: 'InvalidCollectionNameError', description });
  if (typeof name !== 'string' || name.length === 0) return invalid('An event collection name must be a non-empty string.');
  if (name.startsWith('$')) return invalid(`Event collection names cannot start with "$": ${JSON.stringify(name)}.`);
  if (name.length > KEEN_LIMITS.maxCollectionName)
    return invalid(`Event collection names must be at most ${KEEN_LIMITS.maxCollectionName} characters.`);
  return undefined;
}

export function validatePropertyName(name: string): string | undefined {
  if (name.includes('.')) return 'Property names cannot contain ".".';
  if (name.startsWith('$')) return 'Property names cannot start with "$".';
  if (name.length > KEEN_LIMITS.maxPropertyName) return `Property names must be at most ${KEEN_LIMITS.maxPropertyName} characters.`;
  return undefined;
}

/**
 * Checks one event: a JSON object; every property name, at any depth, valid; a root `keen` that
 * is an object; a `keen.uniqueness_token` that is a string of at most 64 characters; a
 * `keen.timestamp` that is a date-time; at most 900,000 bytes serialized.
 */
export function validateEvent(event: unknown, serializedBytes?: number): KeenEventError | undefined {
  if (typeof event !== 'object' || event === null || Array.isArray(event)) {
    return { name: 'InvalidEventError', description: 'An event must be a JSON object.' };
  }
  const bytes = serializedBytes ?? Buffer.byteLength(JSON.stringify(event));
  if (bytes > KEEN_LIMITS.maxEventBytes) {
    return {
      name: 'EventTooLargeError',
      description: `An event must be at most ${KEEN_LIMITS.maxEventBytes} bytes; this one is ${bytes}.`,
    };
  }
  const stack: Array<{ value: unknown; path: string }> = [{ value: event, path: '' }];
  while (stack.length > 0) {
    const { value, path } = stack.pop()!;
    if (Array.isArray(value)) {
      value.forEach((item, i) => stack.push({ value: item, path: `${path}[${i}]` }));
    } else if (typeof value === 'object' && value !== null) {
      for (const [key, child] of Object.entries(value)) {
        const problem = validatePropertyName(key);
        const at = path ? `${path}.${key}` : key;
        if (problem) return { name: 'InvalidPropertyNameError', description: `${problem} Found: ${JSON.stringify(at.slice(0, 300))}.` };
        stack.push({ value: child, path: at });
      }
    }
  }
  const keen = (event as Record<string, unknown>).keen;
  if (keen === undefined) return undefined;
  const invalidValue = (description: string) => ({ name: 'InvalidPropertyValueError', description });
  if (typeof keen !== 'object' || keen === null || Array.isArray(keen)) return invalidValue('The "keen" property must be an object.');
  const { uniqueness_token: token, timestamp } = keen as Record<string, unknown>;
  if (token !== undefined && (typeof token !== 'string' || token.length > KEEN_LIMITS.maxUniquenessToken)) {
    return invalidValue(`keen.uniqueness_token must be a string of at most ${KEEN_LIMITS.maxUniquenessToken} characters.`);
  }
  if (timestamp !== undefined && (typeof timestamp !== 'string' || Number.isNaN(Date.parse(timestamp)))) {
    return invalidValue('keen.timestamp must be an ISO-8601 date-time string.');
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------------

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

const EVENTS_PATH = /^\/3\.0\/projects\/([^/]+)\/events(?:\/([^/]+))?\/?$/;

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
    const invalid = validateCollectionName(collection) ?? validateEvent(event);
    if (invalid) return invalid;
    const refused = rejector?.(collection, event as Record<string, unknown>);
    if (!refused) return undefined;
    return typeof refused === 'string' ? { name: refused, description: `refused by the test (${refused})` } : refused;
  };

  const apiError = (status: number, error_code: string, message: string): Outcome => ({ status, body: { message, error_code } });

  const handle = (req: IncomingMessage, body: Buffer, record: RecordedRequest): Outcome => {
    const url = new URL(req.url ?? '/', 'http://fake-keen');
    const match = EVENTS_PATH.exec(url.pathname);
    if (!match) return apiError(404, 'ResourceNotFoundError', `No resource at ${url.pathname}.`);
    if (req.method !== 'POST') return apiError(405, 'MethodNotAllowedError', `Method ${req.method} is not allowed here.`);
    if (decodeURIComponent(match[1]!) !== projectId) return apiError(404, 'ProjectNotFoundError', 'Project not found.');
    const key = req.headers.authorization ?? url.searchParams.get('api_key');
    if (key !== writeKey) return apiError(401, 'InvalidApiKeyError', 'The API key is invalid for this project.');
    if (body.length > KEEN_LIMITS.maxRequestBytes)
      return apiError(413, 'RequestEntityTooLargeError', `Requests must be at most ${KEEN_LIMITS.maxRequestBytes} bytes.`);

    let parsed: unknown;
    try {
      parsed = JSON.parse(body.toString('utf8'));
    } catch {
      return apiError(400, 'InvalidJSONError', 'The request body is not valid JSON.');
    }

    const poisoned = (collection: string, event: unknown) =>
      poison !== undefined && typeof event === 'object' && event !== null && poison.matches(collection, event as Record<string, unknown>);
    if (record.kind === 'single') {
      const collection = decodeURIComponent(match[2]!);
      if (poisoned(collection, parsed)) return { status: poison!.status, body: poison!.body };
      record.eventCount = 1;
      if (body.length > KEEN_LIMITS.maxEventBytes)
        return apiError(413, 'EventTooLargeError', `An event must be at most ${KEEN_LIMITS.maxEventBytes} bytes.`);
      const error = checkEvent(collection, parsed);
      if (error) return apiError(400, error.name, error.description);
      store(collection, parsed as Record<string, unknown>);
      return { status: 201, body: { created: true } };
    }

    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
      return apiError(400, 'InvalidEventError', 'A bulk request must be an object of event collections to arrays of events.');
    }
    const entries = Object.entries(parsed);
    const notArray = entries.find(([, list]) => !Array.isArray(list));
    if (notArray)
      return apiError(400, 'InvalidEventError', `The value of collection ${JSON.stringify(notArray[0])} must be an array of events.`);
    record.eventCount = entries.reduce((n, [, list]) => n + (list as unknown[]).length, 0);
    if (entries.some(([collection, list]) => (list as unknown[]).some((event) => poisoned(collection, event))))
      return { status: poison!.status, body: poison!.body };
    const results: Record<string, unknown[]> = {};
    for (const [collection, list] of entries) {
      results[collection] = (list as unknown[]).map((event) => {
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
    const match = EVENTS_PATH.exec(path);
    const kind = !match ? 'other' : match[2] === undefined ? 'bulk' : 'single';
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
      if (size <= KEEN_LIMITS.maxRequestBytes + 1) chunks.push(chunk);
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
      const outcome = handle(
        req,
        size > KEEN_LIMITS.maxRequestBytes ? Buffer.alloc(KEEN_LIMITS.maxRequestBytes + 1) : Buffer.concat(chunks),
        record,
      );
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
