/**
 * A small client for Keen's bulk write API over Node's global `fetch`. It replaces
 * keen-tracking as the transport: every failure is an Error (src/shared/keen/errors.ts) that
 * says whether a retry can help, a response we cannot read is never taken for success, and
 * every request has a deadline.
 */
import type { KeenEvent } from '../../shared/events.js';
import { KeenRequestError, parseRetryAfter, retryableStatus, statusHasRetryAfter } from '../../shared/keen/errors.js';
import { eventsPath, type KeenBulkResults, type KeenEventResult } from '../../shared/keen/protocol.js';

export interface KeenClientOptions {
  /** `https://api.keen.io`, or `http://host:port` for a local stand-in; a trailing slash is fine. */
  apiUrl: string;
  projectId: string;
  writeKey: string;
  /** Deadline for one request, response body included. */
  timeoutMs: number;
}

const MAX_ERROR_BODY_CHARS = 300;

/** How long to hold off after a 429 that did not say (no readable `Retry-After`). */
export const DEFAULT_RATE_LIMIT_MS = 5_000;

export class KeenClient {
  readonly timeoutMs: number;
  readonly #bulkUrl: string;
  readonly #writeKey: string;

  constructor(options: KeenClientOptions) {
    let base: URL;
    try {
      base = new URL(options.apiUrl);
    } catch {
      throw new TypeError('KeenClient: apiUrl is not a URL');
    }
    if (base.protocol !== 'http:' && base.protocol !== 'https:')
      throw new TypeError('KeenClient: apiUrl must start with http:// or https://');
    if (!options.projectId) throw new TypeError('KeenClient: projectId is required');
    if (!options.writeKey) throw new TypeError('KeenClient: writeKey is required');
    if (!(options.timeoutMs > 0)) throw new TypeError('KeenClient: timeoutMs must be positive');
    const root = `${base.origin}${base.pathname.replace(/\/+$/, '')}`;
    this.#bulkUrl = `${root}${eventsPath(options.projectId)}`;
    this.#writeKey = options.writeKey;
    this.timeoutMs = options.timeoutMs;
  }

  /** Sends events in one bulk request. Throws KeenRequestError when the request as a whole failed. */
  async recordEvents(batch: Record<string, KeenEvent[]>): Promise<KeenBulkResults> {
    const serialized: Record<string, string[]> = {};
    for (const [collection, events] of Object.entries(batch)) serialized[collection] = events.map((event) => JSON.stringify(event));
    return this.recordSerialized(serialized);
  }

  /**
   * Like recordEvents, for events already serialized with JSON.stringify (the batcher measures
   * each event's size that way and need not serialize it twice).
   */
  async recordSerialized(batch: Record<string, string[]>): Promise<KeenBulkResults> {
    const sent = Object.entries(batch).filter(([, events]) => events.length > 0);
    if (sent.length === 0) return {};
    const body = `{${sent.map(([collection, events]) => `${JSON.stringify(collection)}:[${events.join(',')}]`).join(',')}}`;

    let response: Response;
    let text: string;
    try {
      response = await fetch(this.#bulkUrl, {
        method: 'POST',
        headers: { Authorization: this.#writeKey, 'Content-Type': 'application/json', Accept: 'application/json' },
        body,
        redirect: 'manual',
        signal: AbortSignal.timeout(this.timeoutMs),
      });
      // The deadline covers the body too: a server that sends headers and then stalls times out.
      text = await response.text();
    } catch (err) {
      throw this.#transportError(err);
    }

    if (response.status < 200 || response.status >= 300) throw this.#statusError(response, text);
    return this.#parseResults(response.status, text, sent);
  }

  #transportError(err: unknown): KeenRequestError {
    const name = (err as { name?: unknown } | null)?.name;
    if (name === 'TimeoutError' || name === 'AbortError') {
      return new KeenRequestError(`Keen request timed out after ${this.timeoutMs} ms`, { code: 'ETIMEDOUT', retryable: true, cause: err });
    }
    const code = transportCode(err);
    const detail = this.#redact(describeTransport(err));
    return new KeenRequestError(`Keen request failed: ${detail}`, { ...(code ? { code } : {}), retryable: true, cause: err });
  }

  #statusError(response: Response, text: string): KeenRequestError {
    const status = response.status;
    let message: string | undefined;
    let code: string | undefined;
    try {
      const parsed: unknown = JSON.parse(text);
      if (isRecord(parsed)) {
        if (typeof parsed.message === 'string') message = parsed.message;
        if (typeof parsed.error_code === 'string') code = parsed.error_code;
      }
    } catch {
      // Not JSON (a proxy's HTML page, a plain-text 429): quote the start of it instead.
    }
    const said = message ?? (text.trim() ? text.trim().slice(0, MAX_ERROR_BODY_CHARS) : undefined);
    const label = `${status}${response.statusText ? ` ${response.statusText}` : ''}`;
    const summary = `Keen answered ${label}${said ? `: ${said}` : ''}${code ? ` (${code})` : ''}`;
    const retryAfterMs = statusHasRetryAfter(status) ? parseRetryAfter(response.headers.get('retry-after')) : undefined;
    return new KeenRequestError(this.#redact(summary), {
      status,
      ...(code ? { code } : {}),
      retryable: retryableStatus(status),
      ...(retryAfterMs !== undefined ? { retryAfterMs } : {}),
    });
  }

  #parseResults(status: number, text: string, sent: Array<[string, string[]]>): KeenBulkResults {
    const malformed = (why: string) =>
      new KeenRequestError(`Keen answered ${status} with ${why}; treating the request as failed`, {
        status,
        code: 'MalformedResponse',
        retryable: true,
      });
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      throw malformed(text.trim() ? 'a body that is not JSON' : 'an empty body');
    }
    if (!isRecord(parsed)) throw malformed('a body that is not a JSON object');
    const results: KeenBulkResults = {};
    for (const [collection, events] of sent) {
      const list = Object.hasOwn(parsed, collection) ? parsed[collection] : undefined;
      if (!Array.isArray(list)) throw malformed(`no results for collection ${JSON.stringify(collection)}`);
      if (list.length !== events.length)
        throw malformed(`${list.length} results for the ${events.length} events sent to ${JSON.stringify(collection)}`);
      const checked: KeenEventResult[] = [];
      for (const item of list) {
        const result = toEventResult(item);
        if (!result) throw malformed(`an unreadable result for ${JSON.stringify(collection)}`);
        checked.push(result);
      }
      results[collection] = checked;
    }
    return results;
  }

  /** A write key must never reach a log line, even when a server or proxy echoes it back. */
  #redact(text: string): string {
    return text.split(this.#writeKey).join('***');
  }
}

function toEventResult(item: unknown): KeenEventResult | undefined {
  if (!isRecord(item)) return undefined;
  if (item.success === true) return { success: true };
  if (item.success !== false || !isRecord(item.error) || typeof item.error.name !== 'string') return undefined;
  const description = typeof item.error.description === 'string' ? item.error.description : '';
  return { success: false, error: { name: item.error.name, description } };
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** undici wraps socket errors: `TypeError: fetch failed` with the system error as `cause`. */
function transportCode(err: unknown): string | undefined {
  for (let current = err, depth = 0; current && depth < 5; current = (current as { cause?: unknown }).cause, depth++) {
    const code = (current as { code?: unknown }).code;
    if (typeof code === 'string') return code;
  }
  return undefined;
}

function describeTransport(err: unknown): string {
  const parts: string[] = [];
  for (let current = err, depth = 0; current && depth < 5; current = (current as { cause?: unknown }).cause, depth++) {
    const message = (current as { message?: unknown }).message;
    parts.push(typeof message === 'string' ? message : String(current));
  }
  return parts.join(': ') || 'unknown error';
}
