/**
 * lampi_redis_memory_used_ratio, the alert for a Redis nearing its maxmemory (at 1, with
 * noeviction, it refuses new jobs): used_memory / maxmemory from a real Redis's INFO memory,
 * refreshed on each scrape; 0 when Redis has no maxmemory (no limit to be near).
 */
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createMetrics, parseRedisMemory, refreshRedisMemory } from '../../src/shared/metrics.js';
import { startRedis } from '../support/processes.js';

describe('lampi_redis_memory_used_ratio', () => {
  let server: Awaited<ReturnType<typeof startRedis>>;
  let redis: Redis;
  beforeAll(async () => {
    server = await startRedis();
    redis = new Redis(server.url, { lazyConnect: true });
    await redis.connect();
  });
  afterAll(async () => {
    await redis?.quit().catch(() => {});
    await server?.kill();
  });

  const ratio = async (metrics: ReturnType<typeof createMetrics>) => {
    await refreshRedisMemory(metrics, redis);
    const values = (await metrics.redisMemoryUsedRatio.get()).values;
    return values.length ? values[0]!.value : undefined;
  };

  it('is used_memory / maxmemory, and follows what Redis holds', async () => {
    const metrics = createMetrics('test');
    await redis.config('SET', 'maxmemory', String(64 * 1024 * 1024));
    const before = await ratio(metrics);
    expect(before).toBeGreaterThan(0);
    expect(before).toBeLessThan(0.5);
    // About 16 MB more: a quarter of the limit.
    const pipeline = redis.pipeline();
    for (let i = 0; i < 16; i++) pipeline.set(`filler:${i}`, 'x'.repeat(1024 * 1024));
    await pipeline.exec();
    const after = await ratio(metrics);
    expect(after! - before!).toBeGreaterThan(0.2);
    const { used, max } = parseRedisMemory(await redis.info('memory')) as { used: number; max: number };
    expect(max).toBe(64 * 1024 * 1024);
    expect(Math.abs(after! - used / max)).toBeLessThan(0.05);
    expect(await metrics.registry.metrics()).toMatch(/^lampi_redis_memory_used_ratio\{process="test"\} 0\.\d+$/m);
  });

  it('is 0 when Redis has no maxmemory', async () => {
    const metrics = createMetrics('test');
    await redis.config('SET', 'maxmemory', String(64 * 1024 * 1024));
    expect(await ratio(metrics)).toBeGreaterThan(0);
    await redis.config('SET', 'maxmemory', '0');
    expect(await ratio(metrics)).toBe(0);
  });
});

describe('parseRedisMemory', () => {
  it('reads the two fields from INFO memory text, and says so when they are missing', () => {
    expect(parseRedisMemory('# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\nmaxmemory:268435456\r\n')).toEqual({
      ok: true,
      used: 1048576,
      max: 268435456,
    });
    expect(parseRedisMemory('# Memory\r\nused_memory_human:1.00M\r\n')).toEqual({
      ok: false,
      reason: 'INFO memory has no used_memory or maxmemory',
    });
  });
});
