/**
 * Whether Keen refuses this deployment (a 401, 402 or 403: a wrong or revoked write key, a
 * project the key does not belong to, a blocked account), and so whether Keen delivery is
 * paused. Such an answer is about the key or the account, never about the events sent, so no
 * event is spent on it: while paused, the batcher sends nothing until the next probe and
 * refuses its events with the pause, and keen-delivery puts their jobs back to wait without
 * spending an attempt. The first request Keen accepts again ends the pause.
 *
 * Guarantee: while paused, readiness is red with a reason, the gauge
 * `lampi_keen_delivery_paused{reason}` is 1, and one log line naming the settings to fix (never
 * the key) is written at most once a minute; one info line says when delivery resumes.
 *
 * There is no check of the key at start-up: Keen's API has no request that proves a write key
 * without writing an event (its read endpoints take a read or master key), so the first
 * request is the check, and a wrong key pauses delivery then.
 */
import { DEFAULT_KEEN_PAUSE_PROBE_MS } from '../../shared/config.js';
import type { Logger } from '../../shared/logger.js';
import type { Metrics } from '../../shared/metrics.js';
import { DEPLOYMENT_FAULTS, KeenRequestError, type DeploymentFault } from '../../shared/keen/errors.js';

const REPEAT_LOG_MS = 60_000;

/** What the operator must do, per fault: named settings only, never their values. */
const REMEDY: Record<DeploymentFault, string> = {
  unauthorized: 'Keen does not accept KEEN_WRITE_KEY for KEEN_PROJECT_ID: set the write key of that project in KEEN_WRITE_KEY',
  account_blocked: 'Keen has blocked the account of KEEN_PROJECT_ID: settle it with Keen or set another KEEN_PROJECT_ID and KEEN_WRITE_KEY',
  forbidden: 'Keen forbids writes with KEEN_WRITE_KEY to KEEN_PROJECT_ID: give the key write access, or set a write key in KEEN_WRITE_KEY',
};

export interface KeenPauseOptions {
  /** While paused, how long to wait before trying Keen again. Default: KEEN_PAUSE_PROBE_MS's. */
  probeIntervalMs?: number;
  logger?: Logger;
  metrics?: Metrics;
  /** The clock (tests move it to see the once-a-minute log). */
  now?: () => number;
}

interface PausedState {
  fault: DeploymentFault;
  error: KeenRequestError;
  since: number;
  probeAt: number;
  loggedAt: number;
}

export class KeenDeliveryPause {
  readonly probeIntervalMs: number;
  readonly #logger: Logger | undefined;
  readonly #metrics: Metrics | undefined;
  readonly #now: () => number;
  #state: PausedState | undefined;

  constructor(options: KeenPauseOptions = {}) {
    this.probeIntervalMs = options.probeIntervalMs ?? DEFAULT_KEEN_PAUSE_PROBE_MS;
    if (!(this.probeIntervalMs > 0)) throw new TypeError('KeenDeliveryPause: probeIntervalMs must be positive');
    this.#logger = options.logger;
    this.#metrics = options.metrics;
    this.#now = options.now ?? Date.now;
    // Every reason is exported at 0 from the start, so an alert sees the series before any fault.
    this.#setGauge(undefined);
  }

  /** The fault delivery is paused for, or undefined when it runs. */
  get fault(): DeploymentFault | undefined {
    return this.#state?.fault;
  }

  /** For /readyz: true while delivery runs, else why it is paused. */
  readiness(): true | string {
    const state = this.#state;
    if (!state) return true;
    return `Keen delivery paused since ${new Date(state.since).toISOString()}: ${REMEDY[state.fault]} (${state.error.message})`;
  }

  /**
   * Keen refused a request with a deployment fault: pauses (or stays paused) until the next
   * probe. Returns the error to fail the request's events with, which says how long to wait.
   */
  refused(err: KeenRequestError): KeenRequestError {
    const fault = err.deploymentFault;
    if (!fault) throw new TypeError('KeenDeliveryPause.refused: not a deployment fault');
    const now = this.#now();
    const previous = this.#state;
    const logDue = !previous || previous.fault !== fault || now - previous.loggedAt >= REPEAT_LOG_MS;
    const loggedAt = logDue || !previous ? now : previous.loggedAt;
    this.#state = { fault, error: err, since: previous?.since ?? now, probeAt: now + this.probeIntervalMs, loggedAt };
    if (!previous || previous.fault !== fault) this.#setGauge(fault);
    if (logDue) {
      this.#logger?.error(
        { reason: fault, status: err.status, code: err.code, err, probe_interval_ms: this.probeIntervalMs },
        `${REMEDY[fault]}. Keen delivery is paused: no event is dropped, events wait in keen-delivery and go out once Keen accepts again`,
      );
    }
    return this.#holdError(this.#state, this.probeIntervalMs);
  }

  /** Keen accepted a request: a pause ends. */
  accepted(): void {
    const state = this.#state;
    if (!state) return;
    this.#state = undefined;
    this.#setGauge(undefined);
    this.#logger?.info({ reason: state.fault, paused_ms: this.#now() - state.since }, 'Keen accepts requests again; Keen delivery resumed');
  }

  /** While paused and before the next probe: the error to refuse a send with, without sending. */
  held(): KeenRequestError | undefined {
    const state = this.#state;
    if (!state) return undefined;
    const remaining = state.probeAt - this.#now();
    return remaining > 0 ? this.#holdError(state, remaining) : undefined;
  }

  #holdError(state: PausedState, waitMs: number): KeenRequestError {
    const original = state.error;
    return new KeenRequestError(`${original.message} (Keen delivery paused; next try in ${waitMs} ms)`, {
      ...(original.status !== undefined ? { status: original.status } : {}),
      ...(original.code !== undefined ? { code: original.code } : {}),
      retryable: true,
      retryAfterMs: waitMs,
    });
  }

  #setGauge(current: DeploymentFault | undefined): void {
    for (const reason of Object.values(DEPLOYMENT_FAULTS)) this.#metrics?.keenDeliveryPaused.set({ reason }, reason === current ? 1 : 0);
  }
}
