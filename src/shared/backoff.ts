/**
 * The pipeline's one retry model: how long a job waits before its next attempt. Every Worker
 * registers `jitteredBackoff` as its backoff strategy, and whatever else waits before trying
 * again (a bridge-state partition holding its head job) uses the same formula.
 */
import type { DefaultJobOptions } from 'bullmq';

/** Registered with every Worker; jobs ask for it with `backoff: { type: JITTERED_BACKOFF }`. */
export const JITTERED_BACKOFF = 'jittered-exponential';
const MAX_BACKOFF_MS = 5 * 60_000;

/**
 * The one backoff formula of the pipeline: exponential with "equal jitter" (half fixed, half
 * random), capped at five minutes. Whatever waits before trying again waits this long.
 */
export function jitteredBackoffDelay(attemptsMade: number, baseMs: number, random = Math.random): number {
  const ceiling = Math.min(MAX_BACKOFF_MS, baseMs * 2 ** Math.max(0, attemptsMade - 1));
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}

/** The base of a job's backoff: its `backoff.delay`, or 1 s when it names none. */
export function backoffBaseMs(opts: { backoff?: number | { delay?: number } }): number {
  const { backoff } = opts;
  return typeof backoff === 'object' ? (backoff.delay ?? 1000) : (backoff ?? 1000);
}

/**
 * The Worker `settings.backoffStrategy` for jobs with `backoff: { type: JITTERED_BACKOFF, delay }`;
 * `delay` is the base of the exponential.
 */
export function jitteredBackoff(
  attemptsMade: number,
  type?: string,
  _err?: Error,
  job?: { opts: { backoff?: number | { delay?: number } } },
): number {
  if (type !== JITTERED_BACKOFF) return 0;
  return jitteredBackoffDelay(attemptsMade, backoffBaseMs(job?.opts ?? {}));
}

/**
 * The shortest and longest time from a job's first attempt to its last, with its backoff at
 * the ends of its jitter: how long a dependency may be gone before the job fails for good.
 */
export function retryWindowMs(options: Pick<DefaultJobOptions, 'attempts' | 'backoff'>): { minMs: number; maxMs: number } {
  const base = backoffBaseMs(options);
  let minMs = 0;
  let maxMs = 0;
  for (let attemptsMade = 1; attemptsMade < (options.attempts ?? 1); attemptsMade++) {
    minMs += jitteredBackoffDelay(attemptsMade, base, () => 0);
    maxMs += jitteredBackoffDelay(attemptsMade, base, () => 1);
  }
  return { minMs, maxMs };
}
