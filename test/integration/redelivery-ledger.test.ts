/** The redelivery ledger against a real Redis: every session's entries expire, though the expiry is refreshed once a minute, not at every write. */
import mqttPacket from 'mqtt-packet';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { connectRedis } from '../../src/shared/redis.js';
import { puback } from '../../src/subscriber/connections.js';
import { RedeliveryLedger } from '../../src/subscriber/redeliveries.js';
import { randomPrefix } from '../support/ids.js';

const services = inject('services');
let redis: Awaited<ReturnType<typeof connectRedis>>;

beforeAll(async () => {
  redis = await connectRedis(services.redis);
});
afterAll(async () => {
  await redis.quit();
});

const packet = (messageId: number) => ({ messageId, dup: false, topic: '/devices/b827eb0a1b2c/lamp/changed', payload: Buffer.from('{}') });

describe('RedeliveryLedger.rememberAll', () => {
  it('gives a new session key its expiry, refreshes it after a minute, and skips the EXPIRE in between', async () => {
    const prefix = randomPrefix();
    let now = 1_000_000;
    const ledger = new RedeliveryLedger(redis, prefix, () => now);
    const key = `${prefix}:mqtt-inflight:s1`;
    const write = (id: number) =>
      Promise.all(ledger.rememberAll([{ session: 's1', packet: packet(id), messageId: `m${id}`, payload: '{}' }]));

    expect(await write(1)).toHaveLength(2); // HSET + EXPIRE
    expect(await redis.ttl(key)).toBeGreaterThan(24 * 3600 - 60);
    await redis.persist(key); // were the EXPIRE sent again within the minute, the TTL would come back
    now += 59_000;
    expect(await write(2)).toHaveLength(1);
    expect(await redis.ttl(key)).toBe(-1);
    now += 2_000;
    expect(await write(3)).toHaveLength(2);
    expect(await redis.ttl(key)).toBeGreaterThan(24 * 3600 - 60);
    expect(Object.keys(await redis.hgetall(key)).sort()).toEqual(['1', '2', '3']);
    // A session of its own gets its own expiry at once.
    await Promise.all(ledger.rememberAll([{ session: 's2', packet: packet(1), messageId: 'x' }]));
    expect(await redis.ttl(`${prefix}:mqtt-inflight:s2`)).toBeGreaterThan(24 * 3600 - 60);
    await redis.del(key, `${prefix}:mqtt-inflight:s2`);
  });
});

describe('puback', () => {
  it('is the packet mqtt-packet generates', () => {
    for (const messageId of [1, 2, 255, 256, 0xabcd, 65535]) {
      expect(puback(messageId)).toEqual(mqttPacket.generate({ cmd: 'puback', messageId }));
    }
  });
});
