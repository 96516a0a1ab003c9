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
   * The job id for this message: the remembered one for a DUP resend we have seen before,
   * otherwise a new one. Only a DUP resend costs a round trip here.
   */
  async jobIdFor(session: string, packet: MqttPacketIdentity): Promise<{ jobId: string; redelivery: boolean }> {
    if (packet.messageId === undefined || !packet.dup) return { jobId: newJobId(), redelivery: false };
    const remembered = await this.redis.get(this.key(session, packet.messageId));
    const [jobId, rememberedDigest] = remembered?.split(' ') ?? [];
    if (jobId && rememberedDigest === contentDigest(packet.topic, packet.payload)) return { jobId, redelivery: true };
    return { jobId: newJobId(), redelivery: false };
  }

  /**
   * Records the job id of a message that may be resent. Call it before adding the job, on the
   * same Redis connection: Redis then runs the two in that order, so no job exists that a
   * resend could not find.
   */
  remember(session: string, packet: MqttPacketIdentity, jobId: string): Promise<unknown> | undefined {
    if (packet.messageId === undefined) return undefined;
    return this.redis.set(this.key(session, packet.messageId), `${jobId} ${contentDigest(packet.topic, packet.payload)}`, 'EX', REMEMBER_S);
  }

  private key(session: string, messageId: number): string {
    return `${this.keyPrefix}:mqtt-inflight:${session}:${messageId}`;
  }
}

export interface MqttPacketIdentity {
  messageId?: number;
  dup: boolean;
  topic: string;
  payload: Uint8Array;
}

/** 32 hex characters: short enough to build Keen uniqueness tokens from, never containing `:`. */
export function newJobId(): string {
  return randomUUID().replaceAll('-', '');
}

function contentDigest(topic: string, payload: Uint8Array): string {
  return createHash('sha1').update(topic).update('\0').update(payload).digest('base64url');
}
