/**
 * Keen's errors, defined once: the names Keen gives a refused event or request, what each HTTP
 * status of Keen's means (a deployment fault, a rate limit, a request too large, a server error),
 * and the two errors a sender raises, KeenRequestError (a whole request failed; it says whether a
 * retry can help) and KeenEventRejected (Keen refused one event for good).
 */

/** Keen's names for one refused event, in a bulk answer's `error.name` or a 400's `error_code`. */
export const KEEN_EVENT_ERRORS = {
  collectionName: 'InvalidCollectionNameError',
  propertyName: 'InvalidPropertyNameError',
  propertyValue: 'InvalidPropertyValueError',
  event: 'InvalidEventError',
  tooLarge: 'EventTooLargeError',
} as const;
export type KeenEventErrorName = (typeof KEEN_EVENT_ERRORS)[keyof typeof KEEN_EVENT_ERRORS];

/** Keen's `error_code`s for a refused request, as every Keen-compatible server here answers them. */
export const KEEN_REQUEST_ERRORS = {
  apiKey: 'InvalidApiKeyError',
  notFound: 'ResourceNotFoundError',
  project: 'ProjectNotFoundError',
  method: 'MethodNotAllowedError',
  json: 'InvalidJsonError',
  tooLarge: 'RequestTooLargeError',
} as const;

/** A per-event failure, in the shape Keen's bulk endpoint reports it. */
export interface KeenEventError {
  name: string;
  description: string;
}

/** The body of every error response of Keen's API. */
export interface KeenErrorBody {
  message: string;
  error_code: string;
}

export const keenErrorBody = (errorCode: string, message: string): KeenErrorBody => ({ message, error_code: errorCode });

/**
 * Keen's answers about the deployment (its key, its account), never about the events sent:
 * retrying them elsewhere cannot help and refusing the events would lose them all, so delivery
 * pauses. The one list of such statuses.
 */
export const DEPLOYMENT_FAULTS = { 401: 'unauthorized', 402: 'account_blocked', 403: 'forbidden' } as const;
export type DeploymentFault = (typeof DEPLOYMENT_FAULTS)[keyof typeof DEPLOYMENT_FAULTS];

export function deploymentFaultOf(status: number | undefined): DeploymentFault | undefined {
  if (status === undefined || !Object.hasOwn(DEPLOYMENT_FAULTS, status)) return undefined;
  return DEPLOYMENT_FAULTS[status as keyof typeof DEPLOYMENT_FAULTS];
}

/**
 * Statuses after which the same request may succeed later: a deployment fault does once the key
 * or account is put right. 3xx and other 4xx need a person.
 */
export function retryableStatus(status: number): boolean {
  return status >= 500 || status === 408 || status === 425 || status === 429 || deploymentFaultOf(status) !== undefined;
}

/**
 * Statuses one event of a bulk request can cause: Keen failing on that event (500), or the
 * request too large with it (413). A sender finds the event by sending the request in parts.
 */
export function statusMayBeOneEvent(status: number | undefined): boolean {
  return status === 500 || status === 413;
}

/** Statuses whose `Retry-After` says how long to wait. */
export function statusHasRetryAfter(status: number): boolean {
  return status === 429 || status === 503;
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

/** Keen refused this event for good (or it is too large to send): retrying cannot help. */
export class KeenEventRejected extends Error {
  override name = 'KeenEventRejected';
  /** Keen's per-event error name, e.g. `InvalidPropertyNameError`. */
  readonly errorName: string;
  readonly description: string;

  constructor(errorName: string, description: string) {
    super(`Keen rejected the event: ${errorName}${description ? `: ${description}` : ''}`);
    this.errorName = errorName;
    this.description = description;
  }
}
