/**
 * Connecting to Redis, for BullMQ and for our own keys: the one place that opens a single Redis
 * (REDIS_URL) or a Redis Cluster (REDIS_CLUSTER_NODES). Start-up fails with one StartupError
 * line naming the setting (passwords masked, never shown) when Redis cannot be reached, and
 * warns when any primary may evict queued jobs.
 */
import { Cluster, Redis } from 'ioredis';
import { describeError, StartupError } from './errors.js';
import { safeUrl } from './redact.js';
import { withTimeout } from './timeout.js';

/** What every process holds: BullMQ takes either as its `connection`. */
export type RedisClient = Redis | Cluster;

/** The settings that say where Redis is (src/shared/config.ts, section `common`). */
export interface RedisSettings {
  REDIS_URL: string;
  REDIS_CLUSTER_NODES: string[];
  REDIS_PASSWORD?: string | undefined;
}

/** A bare URL stands for a single Redis with no password setting (tests, bench tools). */
const settingsOf = (target: string | RedisSettings): RedisSettings =>
  typeof target === 'string' ? { REDIS_URL: target, REDIS_CLUSTER_NODES: [] } : target;

interface ConnectOptions {
  connectTimeoutMs?: number;
  autoPipelining?: boolean;
}

/** Where Redis is, for log and error lines: the URL with its password masked, or the cluster's seed nodes. */
export function redisWhere(target: string | RedisSettings): string {
  const settings = settingsOf(target);
  return settings.REDIS_CLUSTER_NODES.length > 0 ? `cluster ${settings.REDIS_CLUSTER_NODES.join(',')}` : safeUrl(settings.REDIS_URL);
}

/**
 * A Redis connection for BullMQ. `maxRetriesPerRequest: null` makes commands wait through a
 * Redis outage (or a cluster failover) instead of failing: a subscriber's `add` then simply
 * does not return, so the MQTT message is not acknowledged and stays with the broker until
 * Redis is back. No ioredis `keyPrefix`: BullMQ's scripts build their own keys, and a prefix
 * added underneath them breaks them; QUEUE_PREFIX is BullMQ's own `prefix` instead.
 */
export async function connectRedis(url: string, options?: ConnectOptions): Promise<Redis>;
export async function connectRedis(settings: RedisSettings, options?: ConnectOptions): Promise<RedisClient>;
export async function connectRedis(
  target: string | RedisSettings,
  { connectTimeoutMs = 10_000, autoPipelining = false }: ConnectOptions = {},
): Promise<RedisClient> {
  const settings = settingsOf(target);
  const cluster = settings.REDIS_CLUSTER_NODES.length > 0;
  const password = settings.REDIS_PASSWORD ? { password: settings.REDIS_PASSWORD } : {};
  const redis: RedisClient = cluster
    ? new Cluster(
        settings.REDIS_CLUSTER_NODES.map((node) => {
          const at = node.lastIndexOf(':');
          return { host: node.slice(0, at), port: Number(node.slice(at + 1)) };
        }),
        {
          redisOptions: { maxRetriesPerRequest: null, ...password },
          enableReadyCheck: true,
          lazyConnect: true,
          enableAutoPipelining: autoPipelining,
          // Commands wait (offline queue) while the cluster elects a replica; ioredis follows MOVED.
          retryDelayOnFailover: 200,
          retryDelayOnClusterDown: 300,
        },
      )
    : new Redis(settings.REDIS_URL, {
        maxRetriesPerRequest: null,
        enableReadyCheck: true,
        lazyConnect: true,
        enableAutoPipelining: autoPipelining,
        ...(new URL(settings.REDIS_URL).password ? {} : password),
      });
  let lastError: unknown;
  redis.on('error', (err) => {
    // Reconnection is automatic; callers watch 'ready'/'close' (health) rather than each error.
    lastError = err;
  });
  const setting = cluster ? 'REDIS_CLUSTER_NODES' : 'REDIS_URL';
  const where = cluster ? `${setting}=${settings.REDIS_CLUSTER_NODES.join(',')}` : `${setting}=${safeUrl(settings.REDIS_URL)}`;
  try {
    await withTimeout(redis.connect(), connectTimeoutMs);
    for (const node of primaries(redis)) {
      const policy = await node.config('GET', 'maxmemory-policy').catch(() => null);
      if (Array.isArray(policy) && policy[1] && policy[1] !== 'noeviction') {
        const which = cluster ? `the primary ${node.options.host}:${node.options.port} of ${where}` : `Redis at ${where}`;
        process.emitWarning(`${which} has maxmemory-policy ${policy[1]}: it may evict queued jobs; set noeviction`);
      }
    }
  } catch (err) {
    redis.disconnect();
    throw new StartupError(`cannot reach Redis at ${where} (${describeError(lastError ?? err)}): start Redis or fix ${setting}`);
  }
  return redis;
}

/** The Redis servers that hold the data: the primaries of a cluster, or the one Redis. */
export function primaries(redis: RedisClient): Redis[] {
  return redis instanceof Cluster ? redis.nodes('master') : [redis];
}
