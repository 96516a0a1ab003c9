/**
 * What a process says when a service it depends on (Redis, the MQTT broker, PostgreSQL) goes
 * away: one warning when the first of its connections to it is lost, and one info line, with
 * how long it was gone, when every connection is back. Reconnect attempts, and the errors each
 * connection (and each BullMQ queue and worker on it) reports meanwhile, add nothing: an outage
 * of an hour is two lines, not thousands.
 *
 * It also owns the 'error' listeners of those connections, queues and workers: an emitter with
 * none prints a raw stack trace to the console (ioredis: "[ioredis] Unhandled error event";
 * BullMQ: the bare error), which is not JSON. Errors that are not about the connection are
 * logged, one line each.
 */
import type { RedisClient } from './redis.js';
import type { MqttClient } from 'mqtt';
import type { Logger } from './logger.js';
import { safeUrl } from './redact.js';

export type Dependency = 'redis' | 'mqtt' | 'postgres';

const NAMES: Record<Dependency, string> = { redis: 'Redis', mqtt: 'the MQTT broker', postgres: 'PostgreSQL' };

/** Socket-level failures: the service is unreachable (for PostgreSQL's start-up lines too), and the watch has already said so. */
export const CONNECTION_CODES: ReadonlySet<string> = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EPIPE',
]);
/**
 * Connection failures that only an error's text tells, the one place here that reads it:
 * ioredis rejects commands on a lost connection with plain Errors that have no code ('Connection
 * is closed.', "Stream isn't writeable and enableOfflineQueue options is false"), and an error
 * that wraps a socket failure may carry its code in its text only.
 */
function isConnectionErrorText(err: unknown): boolean {
  const message = err instanceof Error ? err.message : String(err);
  return /connection is closed|stream isn't writeable|\b(ECONNREFUSED|ECONNRESET|ETIMEDOUT)\b/i.test(message);
}

export function isConnectionError(err: unknown): boolean {
  if (err instanceof AggregateError) return err.errors.some(isConnectionError);
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === 'string' && CONNECTION_CODES.has(code)) return true;
  // ioredis gave up on a command while Redis was gone (its class is not exported; its name is the class's).
  if (err instanceof Error && err.name === 'MaxRetriesPerRequestError') return true;
  return isConnectionErrorText(err);
}

interface Watched {
  where: string;
  consequence: string;
  /** Each connection to it, and whether it is up. */
  connections: Map<object, boolean>;
  downSince?: number;
  lastError?: unknown;
}

/** A BullMQ Queue. */
interface ErrorEmitter {
  name?: string;
  on(event: 'error', listener: (err: Error) => void): unknown;
}

export class DependencyWatch {
  readonly #logger: Logger;
  readonly #now: () => number;
  readonly #watched = new Map<Dependency, Watched>();
  readonly #timers: NodeJS.Timeout[] = [];
  #stopped = false;

  constructor(logger: Logger, now: () => number = Date.now) {
    this.#logger = logger;
    this.#now = now;
  }

  /** Whether any connection to the dependency is down right now. */
  isDown(dependency: Dependency): boolean {
    return this.#watched.get(dependency)?.downSince !== undefined;
  }

  /** Its masked URL and what waits while it is gone, e.g. 'jobs wait until it is back'. */
  describeDown(dependency: Dependency): string {
    const watched = this.#watched.get(dependency);
    const consequence = watched?.consequence ?? 'waiting until it is back';
    return `${capitalize(NAMES[dependency])} is unreachable (${watched?.where ?? '?'}): ${consequence}`;
  }

  /**
   * Follows an ioredis client we own (a single Redis or a Cluster): 'close' and 'end' are losing
   * Redis, 'ready' is having it back. `where` is already masked (redisWhere).
   */
  redis(client: RedisClient, where: string, consequence: string): void {
    const watched = this.#register('redis', where, consequence, where);
    watched.connections.set(client, client.status === 'ready');
    client.on('ready', () => this.#set('redis', client, true));
    client.on('close', () => this.#set('redis', client, false));
    client.on('end', () => this.#set('redis', client, false));
    client.on('error', (err) => this.#onError('redis', err, {}, 'Redis error'));
  }

  /** Follows an MQTT client: 'offline' is losing the broker, 'connect' is having it back. */
  mqtt(client: MqttClient, url: string, consequence: string): void {
    const watched = this.#register('mqtt', url, consequence);
    watched.connections.set(client, client.connected);
    client.on('connect', () => this.#set('mqtt', client, true));
    client.on('offline', () => this.#set('mqtt', client, false));
  }

  /**
   * The 'error' listener of BullMQ queues. They run on the Redis connection watched above, so
   * their connection errors are the outage already reported. (Workers have their own listener,
   * skipping connection errors the same way.)
   */
  bullmq(emitters: ErrorEmitter[]): void {
    for (const emitter of emitters) emitter.on('error', (err) => this.#onError('redis', err, { queue: emitter.name }, 'queue error'));
  }

  /** For a dependency with no connection events to follow: `check` every `everyMs`, rejecting while it is down. */
  poll(dependency: Dependency, url: string, consequence: string, check: () => Promise<unknown>, everyMs: number): void {
    this.#register(dependency, url, consequence).connections.set(check, true);
    let running = false;
    const timer = setInterval(() => {
      if (running) return;
      running = true;
      check()
        .then(
          () => this.#set(dependency, check, true),
          (err: unknown) => {
            this.#remember(dependency, err);
            this.#set(dependency, check, false);
          },
        )
        .finally(() => (running = false));
    }, everyMs);
    timer.unref();
    this.#timers.push(timer);
  }

  /** From now on the process is closing its connections itself: nothing to report. */
  stop(): void {
    this.#stopped = true;
    for (const timer of this.#timers) clearInterval(timer);
  }

  #register(dependency: Dependency, url: string, consequence: string, where = safeUrl(url)): Watched {
    let watched = this.#watched.get(dependency);
    if (!watched) this.#watched.set(dependency, (watched = { where, consequence, connections: new Map() }));
    return watched;
  }

  #onError(dependency: Dependency, err: unknown, fields: Record<string, unknown>, message: string): void {
    if (this.#stopped) return;
    if (isConnectionError(err)) {
      this.#remember(dependency, err);
      return;
    }
    this.#logger.error({ dependency, err, ...fields }, message);
  }

  #remember(dependency: Dependency, err: unknown): void {
    const watched = this.#watched.get(dependency);
    if (watched) watched.lastError = err;
  }

  #set(dependency: Dependency, connection: object, up: boolean): void {
    const watched = this.#watched.get(dependency);
    if (!watched || this.#stopped) return;
    watched.connections.set(connection, up);
    const allUp = [...watched.connections.values()].every(Boolean);
    if (!up && watched.downSince === undefined) {
      watched.downSince = this.#now();
      this.#logger.warn(
        { dependency, ...(watched.lastError !== undefined ? { err: watched.lastError } : {}) },
        this.describeDown(dependency),
      );
    } else if (allUp && watched.downSince !== undefined) {
      const downForMs = this.#now() - watched.downSince;
      watched.downSince = undefined;
      watched.lastError = undefined;
      this.#logger.info({ dependency, downForMs }, `${capitalize(NAMES[dependency])} is reachable again`);
    }
  }
}

function capitalize(text: string): string {
  return text.charAt(0).toUpperCase() + text.slice(1);
}
