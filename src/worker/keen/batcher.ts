/**
 * Groups the events of concurrently running delivery jobs into Keen bulk requests. Each event
 * settles with its own outcome (`submit`, one event; `submitAll`, a job's events, one outcome
 * each), so a job completes only once Keen has accepted its events, and an event fails alone
 * when Keen refused only it. While Keen asks us to wait (a 429) or refuses the deployment (a 401,
 * 402 or 403, see pause.ts), events fail at once without a request.
 */
import type { KeenEvent } from '../../shared/events.js';
import type { Metrics } from '../../shared/metrics.js';
import { KEEN_EVENT_ERRORS, KeenEventRejected, KeenRequestError, statusMayBeOneEvent } from '../../shared/keen/errors.js';
import { checkEventSize, KEEN_LIMITS, type KeenBulkResults } from '../../shared/keen/protocol.js';
import { DEFAULT_RATE_LIMIT_MS } from './client.js';
import { KeenDeliveryPause } from './pause.js';

/** Half of Keen's 10 MB request limit. */
export const DEFAULT_MAX_BATCH_BYTES = KEEN_LIMITS.bulkBytes / 2;

export interface KeenBatcherOptions {
  client: { recordSerialized(batch: Record<string, string[]>): Promise<KeenBulkResults> };
  /** Events per request: a batch is sent as soon as it has this many. */
  maxEvents: number;
  /** Serialized bytes per request (Keen allows 10 MB). */
  maxBytes?: number;
  /** How long a partial batch waits for more events after its first one. */
  lingerMs: number;
  /** Larger events are refused here, without a request. */
  maxEventBytes?: number;
  metrics?: Metrics;
  /** Where a refused key or account pauses delivery; without it, a silent one with the default probe interval. */
  pause?: KeenDeliveryPause;
}

/** An event's outcome, as Promise.allSettled gives it: fulfilled once Keen accepted it, or rejected with why not. */
export type KeenEventOutcome = PromiseSettledResult<void>;

const ACCEPTED: KeenEventOutcome = Object.freeze({ status: 'fulfilled', value: undefined });

/**
 * The events of one submitAll (or one submit), waiting together: one promise for all of them,
 * not one per event (a job's events are many, at full load hundreds).
 */
class Submission {
  readonly done: Promise<KeenEventOutcome[]>;
  readonly #outcomes: KeenEventOutcome[];
  #left: number;
  #resolve!: (outcomes: KeenEventOutcome[]) => void;
  constructor(count: number) {
    this.#outcomes = new Array<KeenEventOutcome>(count);
    this.#left = count;
    this.done = new Promise((resolve) => (this.#resolve = resolve));
    if (count === 0) this.#resolve(this.#outcomes);
  }
  accepted(index: number): void {
    this.#settle(index, ACCEPTED);
  }
  /** Whatever `err` is (even undefined, should anything throw that), the event was not delivered. */
  failed(index: number, err: unknown): void {
    this.#settle(index, { status: 'rejected', reason: err });
  }
  #settle(index: number, outcome: KeenEventOutcome): void {
    this.#outcomes[index] = outcome;
    if (--this.#left === 0) this.#resolve(this.#outcomes);
  }
}

interface Entry {
  collection: string;
  serialized: string;
  submission: Submission;
  index: number;
}

interface Batch {
  entries: Entry[];
  bytes: number;
  collections: Set<string>;
  timer?: NodeJS.Timeout;
}

export class KeenBatcher {
  readonly #client: KeenBatcherOptions['client'];
  readonly #maxEvents: number;
  readonly #maxBytes: number;
  readonly #lingerMs: number;
  readonly #maxEventBytes: number;
  readonly #metrics: Metrics | undefined;
  readonly pause: KeenDeliveryPause;
  #pending: Batch | undefined;
  readonly #inFlight = new Set<Promise<void>>();
  /** After a 429, nothing is sent before this time; submits are refused with the 429 meanwhile. */
  #rateLimitedUntil = 0;
  #rateLimitError: KeenRequestError | undefined;
  #closed = false;

  constructor(options: KeenBatcherOptions) {
    if (!(Number.isInteger(options.maxEvents) && options.maxEvents > 0))
      throw new TypeError('KeenBatcher: maxEvents must be a positive integer');
    if (!(options.lingerMs >= 0)) throw new TypeError('KeenBatcher: lingerMs must be 0 or more');
    this.#client = options.client;
    this.#maxEvents = options.maxEvents;
    this.#maxBytes = options.maxBytes ?? DEFAULT_MAX_BATCH_BYTES;
    this.#lingerMs = options.lingerMs;
    this.#maxEventBytes = options.maxEventBytes ?? KEEN_LIMITS.eventBytes;
    this.#metrics = options.metrics;
    this.pause = options.pause ?? new KeenDeliveryPause();
  }

  /** Events waiting for their batch to be sent, and requests under way. */
  get stats(): { pending: number; inFlight: number } {
    return { pending: this.#pending?.entries.length ?? 0, inFlight: this.#inFlight.size };
  }

  /**
   * Resolves once Keen has accepted the event. Rejects with KeenEventRejected when Keen refused
   * this event, or with the KeenRequestError that failed its whole request.
   */
  async submit(collection: string, event: KeenEvent): Promise<void> {
    const [outcome] = await this.submitAll([{ collection, event }]);
    if (outcome!.status === 'rejected') throw outcome!.reason;
  }

  /** Each event's outcome, in order, as `submit` would settle it; never rejects. */
  submitAll(events: ReadonlyArray<{ collection: string; event: KeenEvent }>): Promise<KeenEventOutcome[]> {
    const submission = new Submission(events.length);
    for (let i = 0; i < events.length; i++) this.#add(events[i]!.collection, events[i]!.event, submission, i);
    return submission.done;
  }

  #add(collection: string, event: KeenEvent, submission: Submission, index: number): void {
    if (this.#closed) return submission.failed(index, new Error('KeenBatcher is closed'));
    let serialized: string;
    try {
      serialized = JSON.stringify(event);
    } catch (err) {
      this.#countEvents(collection, 'rejected');
      return submission.failed(
        index,
        new KeenEventRejected(KEEN_EVENT_ERRORS.event, `The event cannot be serialized as JSON: ${(err as Error).message}.`),
      );
    }
    const bytes = Buffer.byteLength(serialized);
    const size = checkEventSize(bytes, this.#maxEventBytes);
    if (!size.ok) {
      this.#countEvents(collection, 'rejected');
      return submission.failed(index, new KeenEventRejected(size.error.name, size.error.description));
    }
    const held = this.#held();
    if (held) return submission.failed(index, held);
    let batch = this.#pending;
    if (batch && batch.bytes + entryBytes(batch, collection, bytes) > this.#maxBytes) {
      this.#flush();
      batch = undefined;
    }
    if (!batch) {
      batch = { entries: [], bytes: 2, collections: new Set() };
      this.#pending = batch;
      batch.timer = setTimeout(() => this.#flush(), this.#lingerMs);
    }
    batch.bytes += entryBytes(batch, collection, bytes);
    batch.collections.add(collection);
    batch.entries.push({ collection, serialized, submission, index });
    if (batch.entries.length >= this.#maxEvents || batch.bytes >= this.#maxBytes) this.#flush();
  }

  /** Sends what is pending, then waits until no request is under way. Later submits are refused. */
  async close(): Promise<void> {
    this.#closed = true;
    this.#flush();
    while (this.#inFlight.size > 0) await Promise.allSettled([...this.#inFlight]);
  }

  /** Why nothing may be sent now (a pause, a 429's wait), or undefined. */
  #held(): KeenRequestError | undefined {
    const paused = this.pause.held();
    if (paused) return paused;
    const remaining = this.#rateLimitedUntil - Date.now();
    if (remaining <= 0 || !this.#rateLimitError) return undefined;
    const original = this.#rateLimitError;
    return new KeenRequestError(`${original.message} (not sending for another ${remaining} ms)`, {
      ...(original.status !== undefined ? { status: original.status } : {}),
      ...(original.code !== undefined ? { code: original.code } : {}),
      retryable: true,
      retryAfterMs: remaining,
    });
  }

  #flush(): void {
    const batch = this.#pending;
    if (!batch) return;
    this.#pending = undefined;
    clearTimeout(batch.timer);
    const request = this.#send(batch.entries).finally(() => this.#inFlight.delete(request));
    this.#inFlight.add(request);
  }

  /**
   * Sends a batch. A 500 or 413 answered to the whole request may be one event's doing (an event
   * Keen chokes on, or a request too large), so the request is split in halves and each half sent
   * again, down to the event that causes it, which alone fails; its neighbours are delivered.
   * When nothing at all is accepted after two rounds of splitting (seven requests), Keen is
   * failing as a whole, and the batch's events fail with the error instead of splitting on.
   */
  async #send(entries: Entry[]): Promise<void> {
    let round: Entry[][] = [entries];
    let accepted = false;
    for (let depth = 0; round.length > 0; depth += 1) {
      const failed: Array<{ part: Entry[]; err: unknown }> = [];
      await Promise.all(
        round.map(async (part) => {
          const held = this.#held();
          if (held) return this.#fail(part, held);
          try {
            const results = await this.#request(part);
            accepted = true;
            this.#settle(part, results);
          } catch (err) {
            failed.push({ part, err });
          }
        }),
      );
      const next: Entry[][] = [];
      for (const { part, err } of failed) {
        if (part.length > 1 && splitsOn(err) && (accepted || depth < 2)) {
          const half = Math.ceil(part.length / 2);
          next.push(part.slice(0, half), part.slice(half));
        } else {
          this.#fail(part, err);
        }
      }
      round = next;
    }
  }

  /** One bulk request, with its metrics; throws what the client throws. */
  async #request(entries: Entry[]): Promise<KeenBulkResults> {
    const byCollection: Record<string, string[]> = {};
    for (const entry of entries) (byCollection[entry.collection] ??= []).push(entry.serialized);
    const metrics = this.#metrics;
    metrics?.keenEventsPerRequest.observe(entries.length);
    const started = process.hrtime.bigint();
    const seconds = () => Number(process.hrtime.bigint() - started) / 1e9;
    try {
      const results = await this.#client.recordSerialized(byCollection);
      metrics?.keenRequestSeconds.observe({ outcome: 'ok' }, seconds());
      metrics?.keenResponses.inc({ status: '200' });
      this.pause.accepted();
      return results;
    } catch (err) {
      if (err instanceof KeenRequestError) {
        metrics?.keenRequestSeconds.observe({ outcome: requestOutcome(err) }, seconds());
        metrics?.keenResponses.inc({
          status: err.status !== undefined ? String(err.status) : err.code === 'ETIMEDOUT' ? 'timeout' : 'network',
        });
        if (err.status === 429) {
          const until = Date.now() + (err.retryAfterMs ?? DEFAULT_RATE_LIMIT_MS);
          if (until > this.#rateLimitedUntil) {
            this.#rateLimitedUntil = until;
            this.#rateLimitError = err;
          }
        }
        if (err.deploymentFault) throw this.pause.refused(err);
      } else {
        metrics?.keenRequestSeconds.observe({ outcome: 'error' }, seconds());
      }
      throw err;
    }
  }

  /** Every event of a failed request fails with its error. */
  #fail(entries: Entry[], err: unknown): void {
    const counts = new EventCounts();
    for (const entry of entries) {
      counts.add(entry.collection, 'request_failed');
      entry.submission.failed(entry.index, err);
    }
    this.#count(counts);
  }

  /** Each event settles with its own result from Keen's answer. */
  #settle(entries: Entry[], results: KeenBulkResults): void {
    const seen: Record<string, number> = {};
    const counts = new EventCounts();
    for (const entry of entries) {
      const index = seen[entry.collection] ?? 0;
      seen[entry.collection] = index + 1;
      const result = Object.hasOwn(results, entry.collection) ? results[entry.collection]![index] : undefined;
      if (result?.success) {
        counts.add(entry.collection, 'accepted');
        entry.submission.accepted(entry.index);
      } else if (result) {
        counts.add(entry.collection, 'rejected');
        entry.submission.failed(entry.index, new KeenEventRejected(result.error.name, result.error.description));
      } else {
        // The client checks that every event has a result; this only guards against a bug.
        counts.add(entry.collection, 'request_failed');
        entry.submission.failed(
          entry.index,
          new KeenRequestError('Keen returned no result for this event', { code: 'MalformedResponse', retryable: true }),
        );
      }
    }
    this.#count(counts);
  }

  #countEvents(collection: string, outcome: EventOutcome, n = 1): void {
    this.#metrics?.keenEvents.inc({ collection, outcome }, n);
  }

  /** A request's events counted once per collection and outcome, not once per event (a label lookup each). */
  #count(counts: EventCounts): void {
    for (const [collection, byOutcome] of counts.byCollection) {
      for (const outcome of EVENT_OUTCOMES) if (byOutcome[outcome] > 0) this.#countEvents(collection, outcome, byOutcome[outcome]);
    }
  }
}

/** What an event of `bytes` adds to a batch's body: its comma, and `"name":[ ]` if it is the first of its collection there. */
function entryBytes(batch: Batch, collection: string, bytes: number): number {
  return bytes + 1 + (batch.collections.has(collection) ? 0 : Buffer.byteLength(JSON.stringify(collection)) + 3);
}

/** What one event can cause: Keen failing on it (500), or a request too large with it (413). */
function splitsOn(err: unknown): boolean {
  return err instanceof KeenRequestError && statusMayBeOneEvent(err.status);
}

function requestOutcome(err: KeenRequestError): string {
  if (err.code === 'MalformedResponse') return 'malformed';
  if (err.status !== undefined) return 'http_error';
  return err.code === 'ETIMEDOUT' ? 'timeout' : 'network_error';
}

const EVENT_OUTCOMES = ['accepted', 'rejected', 'request_failed'] as const;
type EventOutcome = (typeof EVENT_OUTCOMES)[number];

/** Events per collection and outcome. */
class EventCounts {
  readonly byCollection = new Map<string, Record<EventOutcome, number>>();

  add(collection: string, outcome: EventOutcome): void {
    let counts = this.byCollection.get(collection);
    if (!counts) this.byCollection.set(collection, (counts = { accepted: 0, rejected: 0, request_failed: 0 }));
    counts[outcome] += 1;
  }
}
