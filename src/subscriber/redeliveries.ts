/**
 * Recognises a QoS 1 message that the broker sends again because our acknowledgement never
 * reached it (we crashed, or the connection dropped, after Redis took the message). Such a
 * resend carries the DUP flag and the same packet id in the same session. Before a message is
 * queued we remember `session + packet id → message id + content digest`; a DUP resend that
 * matches gets the same message id, and so the same Keen uniqueness token, as the original.
 *
 * Packet ids are reused by the broker, so the digest guards against mistaking a new message
 * for an old one, and a message without the DUP flag always gets a new id.
 */
import { createHash, hash, randomBytes, randomUUID } from 'node:crypto';
import { Cluster } from 'ioredis';
import type { MqttMessage } from '../shared/message.js';
import type { RedisClient } from '../shared/redis.js';

/** Long enough to outlive any realistic outage of the subscriber; short enough to stay small. */
const REMEMBER_S = 24 * 3600;

export interface RememberedMessage {
  session: string;
  message: MqttMessage;
  messageId: string;
  /** The message's payload as text, exactly its bytes, when the caller has it: the digest is then cheaper. */
  payload?: string;
}

export class RedeliveryLedger {
  constructor(
    private readonly redis: RedisClient,
    private readonly keyPrefix: string,
  ) {}

  /**
   * Whether the jobs must wait until rememberAll is confirmed. One Redis runs one connection's
   * commands in the order sent, so there the ledger and the jobs go out together. A cluster keeps
   * the ledger and each queue on whichever primaries own their slots, with no order between
   * them: a crash between the two could leave a job queued with no ledger entry, and its resend
   * would get a new message id (a second event at Keen). There the ledger is stored first.
   */
  get storeFirst(): boolean {
    return this.redis instanceof Cluster;
  }

  /** The message id we gave this DUP resend the first time, if we saw it. Costs a round trip. */
  async remembered(session: string, message: MqttMessage): Promise<string | undefined> {
    if (message.packetId === undefined || !message.dup) return undefined;
    const remembered = await this.redis.hget(this.key(session), String(message.packetId));
    const [messageId, rememberedDigest] = remembered?.split(' ') ?? [];
    return messageId && rememberedDigest === contentDigest(message.topic, message.payload) ? messageId : undefined;
  }

  /**
   * Records the ids of messages that may be resent: one HSET per session. Send it before the
   * jobs that carry them, on the same Redis connection: Redis then runs them in that order, so
   * no queued message exists that a resend could not find (on a cluster, see storeFirst). Each
   * session's hash is one key, so HSET and EXPIRE land on one slot of a cluster.
   */
  rememberAll(messages: RememberedMessage[]): Array<Promise<unknown>> {
    const bySession = new Map<string, string[]>();
    for (const { session, message, messageId, payload } of messages) {
      if (message.packetId === undefined) continue;
      let fields = bySession.get(session);
      if (!fields) bySession.set(session, (fields = []));
      fields.push(String(message.packetId), `${messageId} ${contentDigest(message.topic, payload ?? message.payload)}`);
    }
    // Packet ids are 16 bits, so a session's hash never holds more than 65,535 fields.
    return [...bySession].flatMap(([session, fields]) => [
      this.redis.hset(this.key(session), ...fields),
      this.redis.expire(this.key(session), REMEMBER_S),
    ]);
  }

  private key(session: string): string {
    return `${this.keyPrefix}:mqtt-inflight:${session}`;
  }
}

/** 32 hex characters: short enough to build Keen uniqueness tokens from, never containing `:`. */
export function newMessageId(): string {
  return randomUUID().replaceAll('-', '');
}

/**
 * `count` new ids at once: a random 104-bit base and each one's index in the last 6 hex digits
 * (a group is far smaller than 16 million messages). One random draw per group instead of
 * one per message; as unique as random ids of that size.
 */
export function newMessageIds(count: number): string[] {
  if (count > 0xffffff) return Array.from({ length: count }, newMessageId);
  const base = randomBytes(13).toString('hex');
  const ids = new Array<string>(count);
  for (let i = 0; i < count; i++) ids[i] = base + i.toString(16).padStart(6, '0');
  return ids;
}

/**
 * SHA-1 of topic, NUL, payload. The payload as text (exactly its bytes, so the same digest) takes
 * the one-shot hash, which costs a third of a Hash object's.
 */
export function contentDigest(topic: string, payload: Uint8Array | string): string {
  if (typeof payload === 'string') return hash('sha1', `${topic}\0${payload}`, 'base64url');
  return createHash('sha1').update(topic).update('\0').update(payload).digest('base64url');
}
