/**
 * A Keen-compatible write endpoint for the bench: the same wire format and rules as Keen (both
 * from src/shared/keen/, as test/support/fake-keen.ts's), built to keep up with the pipeline at
 * full speed and to record, per event, when it was accepted.
 *
 * - `POST /3.0/projects/{id}/events` (bulk, `{collection: [events]}`) answers 200 with one
 *   `{success: true}` (or `{success: false, error}`) per event, in order;
 * - `POST /3.0/projects/{id}/events/{collection}` (one event) answers 201 `{"created": true}`;
 * - `Authorization: <write key>`, else 401 `InvalidApiKeyError`;
 * - `keen.uniqueness_token`: an event whose token its collection has already accepted is answered
 *   as a success and not counted again (Keen's exactly-once), and counted in `tokenDuplicates`.
 *
 * Lamp-state events carry the publisher's sequence number and publish time in their state
 * (`state.seq`, `state.t`). For each sequence number the recorder keeps how often it was accepted
 * under a distinct token (a second one is a duplicate event, which Keen would not drop), the
 * publish time, the subscriber's receipt time (`keen.timestamp`) and the acceptance time.
 *
 * Events are validated (Keen's rules, src/shared/keen/protocol.ts) one in `validateEvery`: every one in
 * --quick runs, a sample at full speed, where validating all would take CPU from the pipeline.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { KEEN_EVENT_ERRORS, KEEN_REQUEST_ERRORS, keenErrorBody, type KeenEventError } from '../src/shared/keen/errors.js';
import { checkBulkBody, checkCollectionName, checkEvent, matchEventsPath } from '../src/shared/keen/protocol.js';

export interface RecorderOptions {
  projectId: string;
  writeKey: string;
  /** Validate one event in this many (1 = all). */
  validateEvery?: number;
}

/** Per sequence number of lamp-state events: growable typed arrays. */
export class SeqLog {
  count = new Uint8Array(1024);
  publishedAt = new Float64Array(1024);
  receivedAt = new Float64Array(1024);
  acceptedAt = new Float64Array(1024);
  /** Highest seq + 1 seen. */
  size = 0;

  ensure(n: number): void {
    if (n <= this.count.length) return;
    let capacity = this.count.length;
    while (capacity < n) capacity *= 2;
    const grow = <T extends Uint8Array | Float64Array>(old: T, make: (n: number) => T): T => {
      const next = make(capacity);
      next.set(old);
      return next;
    };
    this.count = grow(this.count, (c) => new Uint8Array(c));
    this.publishedAt = grow(this.publishedAt, (c) => new Float64Array(c));
    this.receivedAt = grow(this.receivedAt, (c) => new Float64Array(c));
    this.acceptedAt = grow(this.acceptedAt, (c) => new Float64Array(c));
  }
}

export interface CollectionLog {
  /** Events accepted (distinct tokens, or every event without a token). */
  accepted: number;
  /** Accepted events per device id. */
  byDevice: Map<string, number>;
  firstAt: number;
  lastAt: number;
}

export interface RecorderCounters {
  requests: number;
  bulkRequests: number;
  singleRequests: number;
  /** Events in request bodies, duplicates included. */
  eventsReceived: number;
}

export interface KeenRecorder {
  url: string;
  projectId: string;
  writeKey: string;
  seqs: SeqLog;
  collections: Map<string, CollectionLog>;
  counters: RecorderCounters;
  /** Events dropped because their token was already accepted (Keen's deduplication at work). */
  readonly tokenDuplicates: number;
  /** Lamp-state events accepted under a new token for a sequence number already accepted. */
  readonly seqDuplicates: number;
  /** Lamp-state events without a readable `state.seq`. */
  readonly withoutSeq: number;
  /** Events refused by validation (answered as Keen would: a per-event error or a 400). */
  readonly invalid: KeenEventError[];
  /** Lamp-state events accepted (distinct tokens). */
  readonly lampStates: number;
  accepted(collection: string): number;
  /** Forgets everything, for the next phase of a scenario. */
  reset(): void;
  close(): Promise<void>;
}

const SUCCESS = '{"success":true}';

export async function startRecorder(options: RecorderOptions): Promise<KeenRecorder> {
  const { projectId, writeKey } = options;
  const validateEvery = Math.max(1, options.validateEvery ?? 1);
  let seqs = new SeqLog();
  let collections = new Map<string, CollectionLog>();
  let tokens = new Map<string, Set<string>>();
  let counters: RecorderCounters = { requests: 0, bulkRequests: 0, singleRequests: 0, eventsReceived: 0 };
  let tokenDuplicates = 0;
  let seqDuplicates = 0;
  let withoutSeq = 0;
  let invalid: KeenEventError[] = [];
  let lampStates = 0;
  let validated = 0;
  const sockets = new Set<Socket>();

  /** Stores one event; returns its per-event error, if it is refused. */
  const store = (collection: string, event: unknown, now: number): KeenEventError | undefined => {
    counters.eventsReceived += 1;
    if (validated++ % validateEvery === 0) {
      const name = checkCollectionName(collection);
      const checked = name.ok ? checkEvent(event) : name;
      if (!checked.ok) {
        if (invalid.length < 100) invalid.push(checked.error);
        return checked.error;
      }
    } else if (typeof event !== 'object' || event === null || Array.isArray(event)) {
      const problem = { name: KEEN_EVENT_ERRORS.event, description: 'An event must be a JSON object.' };
      if (invalid.length < 100) invalid.push(problem);
      return problem;
    }
    const record = event as {
      keen?: { uniqueness_token?: unknown; timestamp?: unknown };
      device_id?: unknown;
      state?: { seq?: unknown; t?: unknown };
    };
    const token = record.keen?.uniqueness_token;
    if (typeof token === 'string') {
      let seen = tokens.get(collection);
      if (!seen) tokens.set(collection, (seen = new Set()));
      if (seen.has(token)) {
        tokenDuplicates += 1;
        return undefined;
      }
      seen.add(token);
    }
    let log = collections.get(collection);
    if (!log) collections.set(collection, (log = { accepted: 0, byDevice: new Map(), firstAt: now, lastAt: now }));
    log.accepted += 1;
    log.lastAt = now;
    if (collection === 'devicestate') {
      lampStates += 1;
      const seq = record.state?.seq;
      if (typeof seq !== 'number' || !Number.isInteger(seq) || seq < 0) {
        withoutSeq += 1;
        return undefined;
      }
      seqs.ensure(seq + 1);
      if (seq >= seqs.size) seqs.size = seq + 1;
      if (seqs.count[seq]! > 0) seqDuplicates += 1;
      if (seqs.count[seq]! < 255) seqs.count[seq]! += 1;
      if (seqs.count[seq] === 1) {
        seqs.acceptedAt[seq] = now;
        seqs.publishedAt[seq] = typeof record.state?.t === 'number' ? record.state.t : NaN;
        const received = typeof record.keen?.timestamp === 'string' ? Date.parse(record.keen.timestamp) : NaN;
        seqs.receivedAt[seq] = received;
      }
    } else if (typeof record.device_id === 'string') {
      log.byDevice.set(record.device_id, (log.byDevice.get(record.device_id) ?? 0) + 1);
    }
    return undefined;
  };

  const reply = (res: ServerResponse, status: number, body: string) => {
    res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
    res.end(body);
  };
  const apiError = (res: ServerResponse, status: number, code: string, message: string) =>
    reply(res, status, JSON.stringify(keenErrorBody(code, message)));

  const handle = (req: IncomingMessage, res: ServerResponse, body: Buffer) => {
    counters.requests += 1;
    const match = matchEventsPath((req.url ?? '').split('?')[0]!);
    if (!match.ok) return apiError(res, 404, KEEN_REQUEST_ERRORS.notFound, 'No such resource.');
    if (req.method !== 'POST') return apiError(res, 405, KEEN_REQUEST_ERRORS.method, 'POST only.');
    if (match.projectId !== projectId) return apiError(res, 404, KEEN_REQUEST_ERRORS.project, 'Project not found.');
    if (req.headers.authorization !== writeKey)
      return apiError(res, 401, KEEN_REQUEST_ERRORS.apiKey, 'The API key is invalid for this project.');
    let parsed: unknown;
    try {
      parsed = JSON.parse(body.toString('utf8'));
    } catch {
      return apiError(res, 400, KEEN_REQUEST_ERRORS.json, 'The request body is not valid JSON.');
    }
    const now = Date.now();
    if (match.collection !== undefined) {
      counters.singleRequests += 1;
      const problem = store(match.collection, parsed, now);
      if (problem) return apiError(res, 400, problem.name, problem.description);
      return reply(res, 201, '{"created":true}');
    }
    counters.bulkRequests += 1;
    const bulk = checkBulkBody(parsed);
    if (!bulk.ok) return apiError(res, 400, bulk.error.name, bulk.error.description);
    const parts: string[] = [];
    for (const [collection, list] of bulk.value) {
      const results: string[] = [];
      for (const event of list) {
        const problem = store(collection, event, now);
        results.push(problem ? JSON.stringify({ success: false, error: problem }) : SUCCESS);
      }
      parts.push(`${JSON.stringify(collection)}:[${results.join(',')}]`);
    }
    return reply(res, 200, `{${parts.join(',')}}`);
  };

  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => handle(req, res, chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks)));
    req.on('error', () => {});
    res.on('error', () => {});
  });
  server.keepAliveTimeout = 60_000;
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as AddressInfo;

  return {
    url: `http://127.0.0.1:${port}`,
    projectId,
    writeKey,
    get seqs() {
      return seqs;
    },
    get collections() {
      return collections;
    },
    get counters() {
      return counters;
    },
    get tokenDuplicates() {
      return tokenDuplicates;
    },
    get seqDuplicates() {
      return seqDuplicates;
    },
    get withoutSeq() {
      return withoutSeq;
    },
    get invalid() {
      return invalid;
    },
    get lampStates() {
      return lampStates;
    },
    accepted: (collection) => collections.get(collection)?.accepted ?? 0,
    reset() {
      seqs = new SeqLog();
      collections = new Map();
      tokens = new Map();
      counters = { requests: 0, bulkRequests: 0, singleRequests: 0, eventsReceived: 0 };
      tokenDuplicates = 0;
      seqDuplicates = 0;
      withoutSeq = 0;
      invalid = [];
      lampStates = 0;
    },
    async close() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const socket of sockets) socket.destroy();
      server.closeAllConnections();
      await closed;
    },
  };
}
