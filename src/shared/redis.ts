/**
 * Connecting to Redis, for BullMQ and for our own keys. Start-up fails with one StartupError
 * line naming REDIS_URL (password masked) when Redis cannot be reached, and warns when Redis
 * may evict queued jobs.
 */
import { Redis } from 'ioredis';
import { describeError, StartupError } from './errors.js';
import { safeUrl } from './redact.js';
import { withTimeout } from './timeout.js';

/**
 * A Redis connection for BullMQ. `maxRetriesPerRequest: null` makes commands wait through a
 * Redis outage instead of failing: a subscriber's `add` then simply does not return, so the
 * MQTT message is not acknowledged and stays with the broker until Redis is back.
 */
export async function connectRedis(url: string, { connectTimeoutMs = 10_000, autoPipelining = false } = {}): Promise<Redis> {
  const redis = new Redis(url, {
    maxRetriesPerRequest: null,
    enableReadyCheck: true,
    lazyConnect: true,
    enableAutoPipelining: autoPipelining,
  });
  let lastError: unknown;
  redis.on('error', (err) => {
    // Reconnection is automatic; callers watch 'ready'/'close' (health) rather than each error.
    lastError = err;
  });
  const where = safeUrl(url);
  try {
    await withTimeout(redis.connect(), connectTimeoutMs);
    const policy = await redis.config('GET', 'maxmemory-policy').catch(() => null);
    if (Array.isArray(policy) && policy[1] && policy[1] !== 'noeviction') {
      process.emitWarning(`Redis at REDIS_URL=${where} has maxmemory-policy ${policy[1]}: it may evict queued jobs; set noeviction`);
    }
  } catch (err) {
    redis.disconnect();
    throw new StartupError(`cannot reach Redis at REDIS_URL=${where} (${describeError(lastError ?? err)}): start Redis or fix REDIS_URL`);
  }
  return redis;
}
