/**
 * Recognises a QoS 1 message that the broker sends again because our acknowledgement never
 * reached it (we crashed, or the connection dropped, after Redis took the job). Such a resend
 * carries the DUP flag and the same packet id in the same session. Before a job is added we
 * remember `session + packet id → job id + content digest`; a DUP resend that matches reuses
 * the job id, so BullMQ sees the same job again instead of a new one.
 *
 * Packet ids are reused by the broker, so the digest guards against mistaking a new message
 * for an old one, and a message without the DUP flag always gets a new job.
 */
import { createHash, randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';

/** Long enough to outlive any realistic outage of the subscriber; short enough to stay small. */
const REMEMBER_S = 24 * 3600;

export class RedeliveryLedger {
  constructor(
    private readonly redis: Redis,
    private readonly keyPrefix: string,
  ) {}

  /**
   * The job id for this message. For a message that can be redelivered (QoS 1 or 2), the
   * returned id is durable in Redis before this resolves.
   */
  async jobIdFor(session: string, packet: { messageId?: number; dup: boolean; topic: string; payload: Uint8Array }): Promise<{ jobId: string; redelivery: boolean }> {
    if (packet.messageId === undefined) return { jobId: newJobId(), redelivery: false };
    const key = `${this.keyPrefix}:mqtt-inflight:${session}:${packet.messageId}`;
    const digest = contentDigest(packet.topic, packet.payload);
    if (packet.dup) {
      const remembered = await this.redis.get(key);
      const [jobId, rememberedDigest] = remembered?.split(' ') ?? [];
      if (jobId && rememberedDigest === digest) return { jobId, redelivery: true };
    }
    const jobId = newJobId();
    await this.redis.set(key, `${jobId} ${digest}`, 'EX', REMEMBER_S);
    return { jobId, redelivery: false };
  }
}

/** 32 hex characters: short enough to build Keen uniqueness tokens from, never containing `:`. */
export function newJobId(): string {
  return randomUUID().replaceAll('-', '');
}

function contentDigest(topic: string, payload: Uint8Array): string {
  return createHash('sha1').update(topic).update('\0').update(payload).digest('base64url');
}
