/**
 * A small client for Keen's bulk write API over Node's global `fetch`. It replaces
 * keen-tracking as the transport (see /work/shared/NOTES.md): every failure is an Error that
 * says whether a retry can help, a response we cannot read is never taken for success, and
 * every request has a deadline.
 */
import type { KeenEvent } from '../../shared/events.js';

export interface KeenClientOptions {
  /** `https://api.keen.io`, or `http://host:port` for a local stand-in; a trailing slash is fine. */
  apiUrl: string;
  projectId: string;
  writeKey: string;
  /** Deadline for one request, response body included. */
  timeoutMs: number;
}

export type KeenEventResult = { success: true } | { success: false; error: { name: string; description: string } };

/** Keen's answer to a bulk request: per collection, one result per event sent, in order. */
export type KeenBulkResults = Record<string, KeenEventResult[]>;

/**
 * Keen's answers about the deployment (its key, its account), never about the events sent:
 * retrying them elsewhere cannot help and refusing the events would lose them all, so delivery
 * pauses (see pause.ts). The one list of such statuses.
 */
export const DEPLOYMENT_FAULTS = { 401: 'unauthorized', 402: 'account_blocked', 403: 'forbidden' } as const;
export type DeploymentFault = (typeof DEPLOYMENT_FAULTS)[keyof typeof DEPLOYMENT_FAULTS];

export function deploymentFaultOf(status: number | undefined): DeploymentFault | undefined {
  if (status === undefined || !Object.hasOwn(DEPLOYMENT_FAULTS, status)) return undefined;
  return DEPLOYMENT_FAULTS[status as keyof typeof DEPLOYMENT_FAULTS];
}

export interface KeenRequestErrorDetails {
  status?: number;
  /** Keen's `error_code`, or a transport code such as `ETIMEDOUT` or `ECONNRESET`. */
  code?: string;
  retryable: boolean;
  retryAfterMs?: number;
  cause?: unknown;
}

/** A whole request failed: nothing in it was recorded (as far as we can know). */
export class KeenRequestError extends Error {
  override name = 'KeenRequestError';
  readonly status?: number;
  readonly code?: string;
  readonly retryable: boolean;
  readonly retryAfterMs?: number;
  /** Set for a 401, 402 or 403: the key or the account is refused, and delivery pauses. */
  readonly deploymentFault?: DeploymentFault;

  constructor(message: string, details: KeenRequestErrorDetails) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    if (details.status !== undefined) this.status = details.status;
    const fault = deploymentFaultOf(details.status);
    if (fault) this.deploymentFault = fault;
    if (details.code !== undefined) this.code = details.code;
    this.retryable = details.retryable;
    if (details.retryAfterMs !== undefined) this.retryAfterMs = details.retryAfterMs;
  }
}

/**
 * Statuses after which the same request may succeed later: a deployment fault does once the key
 * or account is put right. 3xx and other 4xx need a person.
 */
function retryableStatus(status: number): boolean {
  return status >= 500 || status === 408 || status === 425 || status === 429 || deploymentFaultOf(status) !== undefined;
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
    this.#bulkUrl = `${root}/3.0/projects/${encodeURIComponent(options.projectId)}/events`;
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
    const retryAfterMs = status === 429 || status === 503 ? parseRetryAfter(response.headers.get('retry-after')) : undefined;
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

const MAX_RETRY_AFTER_MS = 3600_000;

/** `Retry-After` is either delay-seconds or an HTTP-date. Returns undefined when absent or unreadable. */
export function parseRetryAfter(value: string | null | undefined, now = Date.now()): number | undefined {
  if (value === null || value === undefined) return undefined;
  const trimmed = value.trim();
  if (trimmed === '') return undefined;
  if (/^\d+(\.\d+)?$/.test(trimmed)) return Math.min(Math.ceil(Number(trimmed) * 1000), MAX_RETRY_AFTER_MS);
  // An HTTP-date names its day and month; Date.parse would also take "-5" as a year.
  if (!/[a-z]{3}/i.test(trimmed)) return undefined;
  const at = Date.parse(trimmed);
  if (Number.isNaN(at)) return undefined;
  return Math.min(Math.max(0, at - now), MAX_RETRY_AFTER_MS);
}
