/**
 * The payload of every job in every queue, defined once for the code that adds it and the
 * code that handles it.
 */
import type { KeenCollection, KeenEvent } from './events.js';
import type { LampState } from './message.js';
import type { RejectReason } from './message.js';

/** A lamp's bridge connected (`1`) or disconnected (`0`), as parsed. */
export interface BridgeStateMessage {
  kind: 'bridge-state';
  deviceId: string;
  connected: boolean;
  /** Set on a broker's replay of the last known state (after our (re)subscribe). */
  retained: boolean;
  /** When the message reached us (ISO 8601): the events' `keen.timestamp`. */
  receivedAt: string;
}

/** One lamp-state message, as parsed. */
export interface LampStateMessage {
  kind: 'lamp-state';
  deviceId: string;
  state: LampState;
  receivedAt: string;
}

/** A message the subscriber accepted, stamped with when it reached us. */
export type IngestMessage = BridgeStateMessage | LampStateMessage;

/**
 * The bridge states of one partition that the subscriber took in together, in the order they
 * arrived (a lamp's states are handled in that order). Each keeps the id of its own MQTT
 * message: the device row and the Keen events it causes are named after it, so the same
 * message handled twice (in any two jobs) has its effects once.
 */
export interface BridgeStatesJob {
  kind: 'bridge-states';
  states: Array<BridgeStateMessage & { messageId: string } & Pick<AsSent, 'topic'>>;
}

/**
 * What the lamp itself sent, kept in the job for the one case that needs it: a state the worker
 * rejects (unknown_device) is recorded as it arrived, not as we parsed it. Absent in jobs queued
 * before it was kept. A bridge state keeps only its topic: its payload is `1` or `0`, by parsing.
 */
export interface AsSent {
  /** The topic exactly as published (its leading slash and letter case included). */
  topic?: string;
  /** The payload as received: valid UTF-8 by parsing, so this text is exactly its bytes. */
  payload?: string;
}

/** A bridge-state job as queued before bridge states were grouped: one state, named by the job id. */
export type SingleBridgeStateJob = BridgeStateMessage;

/**
 * The lamp states the subscriber took in together. Each keeps the id of its own MQTT message,
 * from which its Keen uniqueness token is made, so the same message sent twice (in any two
 * jobs) is one event at Keen.
 */
export interface LampStatesJob {
  kind: 'lamp-states';
  states: Array<LampStateMessage & { messageId: string } & AsSent>;
  /** How many times these states already waited for their lamp's first bridge connect. */
  waits?: number;
}

/** One Keen event and its collection. The event carries its `keen.uniqueness_token`. */
export interface KeenEventRecord {
  collection: KeenCollection;
  event: KeenEvent;
  /**
   * Set on an event an operator redrove out of the dead-letter queue. It travels with the event
   * (never to Keen), so a dead letter refused again still shows how often it was redriven.
   */
  redrives?: RedriveHistory;
}

/** How many times an event was redriven from the dead-letter queue, and when last (ISO 8601). */
export interface RedriveHistory {
  count: number;
  lastAt: string;
}

/** Keen events on their way, sent in bulk. Accepted ones are dropped from a job that retries. */
export interface KeenDeliveryJob {
  events: KeenEventRecord[];
}

export interface DeliveryError {
  message: string;
  /** HTTP status, when Keen answered. */
  status?: number;
  /** Keen's `error_code`, or the per-event error name from a bulk response. */
  code?: string;
}

/**
 * A Keen event that will not be delivered without an operator: the original event and why.
 * Its job id is the event's uniqueness token.
 */
export interface DeadLetterJob extends KeenEventRecord {
  /** The keen-delivery job that gave up on the event. */
  sourceJobId: string;
  attemptsMade: number;
  lastError: DeliveryError;
  failedAt: string;
  /**
   * Set by the dead-letter worker when it parks the job in the Failed list for an operator.
   * A parked job that runs again was retried (Bull Board, `npm run dlq -- redrive`): it is
   * then redriven into keen-delivery.
   */
  parked?: boolean;
}

/** The failure reason a parked dead letter shows: the last error Keen delivery met. */
export function deadLetterReason(data: DeadLetterJob): string {
  return data.lastError?.message || 'failed for good without an error message';
}

/** What an operator sees of a message we refused: its topic and payload as the lamp sent them. */
export interface RejectedMessageJob {
  topic: string;
  reason: RejectReason;
  detail: string;
  deviceId?: string;
  /**
   * The payload's size in bytes and its first PAYLOAD_HEAD_BYTES bytes, base64, so binary and
   * invalid UTF-8 survive. Both absent only for a lamp state queued before payloads were kept
   * in jobs (its detail says so): what we parsed is not what the lamp sent.
   */
  payloadBytes?: number;
  payloadHead?: string;
  receivedAt: string;
}

/** How much of a refused payload its record keeps. */
export const PAYLOAD_HEAD_BYTES = 512;

/** The payload part of a rejection record. */
export function payloadRecord(payload: Uint8Array): Pick<RejectedMessageJob, 'payloadBytes' | 'payloadHead'> {
  return { payloadBytes: payload.length, payloadHead: Buffer.from(payload.subarray(0, PAYLOAD_HEAD_BYTES)).toString('base64') };
}

/** The lamp a Keen event (or dead letter) is about, for log lines and listings. */
export function deviceIdOf(record: KeenEventRecord): string | undefined {
  const id = (record.event as { device_id?: unknown } | undefined)?.device_id;
  return typeof id === 'string' ? id : undefined;
}
