/**
 * The payload of every job in every queue, defined once for the code that adds it and the
 * code that handles it, and the parsers that check a job's data before it is handled (a job can
 * be added by anyone with Redis, the dashboard included). The parsers never throw.
 */
import { KEEN_COLLECTIONS, type KeenCollection, type KeenEvent } from './events.js';
import { KEEN_LIMITS } from './keen/protocol.js';
import type { RejectReason } from './lamp.js';

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

/** One lamp-state message, as the subscriber parsed it: its payload's JSON is the lamp-states stage's to read. */
export interface LampStateMessage {
  kind: 'lamp-state';
  deviceId: string;
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
  states: Array<BridgeStateMessage & { messageId: string; topic: string } & OnBroker>;
  /**
   * The Keen events of states an earlier attempt handled (and dropped from `states`): a failed
   * attempt keeps them, so its retry goes on where it stopped and sends them with its own.
   */
  events?: KeenEventRecord[];
}

/**
 * Which broker of MQTT_BROKERS the lamp's bridge state came from: the broker its association
 * message goes to. Absent with a single broker (MQTT_URL) and in jobs queued before it was
 * kept: the default broker, the first of MQTT_BROKERS.
 */
export interface OnBroker {
  broker?: string;
}

/**
 * One lamp state as queued: the message as the lamp sent it, and no copy of it as parsed. Its
 * payload is valid UTF-8 of at most MAX_LAMP_STATE_BYTES (the subscriber checked); the lamp-states
 * stage reads its JSON (parseLampState), and its topic is kept for the record should that stage
 * reject it.
 */
export interface QueuedLampState {
  /** The id of its MQTT message: its Keen uniqueness token is made from it. */
  messageId: string;
  deviceId: string;
  /** When the message reached us (ISO 8601): the event's `keen.timestamp`. */
  receivedAt: string;
  /** The topic exactly as published (its leading slash and letter case included). */
  topic: string;
  /** The payload as received: this text is exactly its bytes. */
  payload: string;
}

/**
 * The lamp states the subscriber took in together. The same message sent twice (in any two
 * jobs) is one event at Keen: its uniqueness token is made from its message id.
 */
export interface LampStatesJob {
  kind: 'lamp-states';
  states: QueuedLampState[];
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
   * invalid UTF-8 survive.
   */
  payloadBytes: number;
  payloadHead: string;
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

/** A job's data checked against its stage's job type: the data, or the first thing wrong with it. */
export type ParsedJob<T> = { ok: true; data: T } | { ok: false; reason: string };

type Field = (value: unknown) => string | undefined;

const isRecord = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value);
const nonEmptyString: Field = (value) => (typeof value === 'string' && value !== '' ? undefined : 'not a non-empty string');
/** A message id names its Keen events' uniqueness tokens (`<id>-<collection>`), which Keen caps. */
const MAX_MESSAGE_ID = KEEN_LIMITS.uniquenessToken - 1 - Math.max(...KEEN_COLLECTIONS.map((collection) => collection.length));
const messageId: Field = (value) =>
  nonEmptyString(value) ?? ((value as string).length > MAX_MESSAGE_ID ? `longer than ${MAX_MESSAGE_ID} characters` : undefined);
const string: Field = (value) => (typeof value === 'string' ? undefined : 'not a string');
const boolean: Field = (value) => (typeof value === 'boolean' ? undefined : 'not a boolean');
const isoDate: Field = (value) => (typeof value === 'string' && !Number.isNaN(Date.parse(value)) ? undefined : 'not a date');
const literal =
  (expected: string): Field =>
  (value) =>
    value === expected ? undefined : `not '${expected}'`;

/** A job type's fields and their checks, as a list: walked once per item, with no allocation on success. */
type Fields = ReadonlyArray<readonly [name: string, check: Field]>;
const fields = (checks: Record<string, Field>): Fields => Object.entries(checks);

/** The first field of `value` that is missing or of the wrong type, as `path: what is wrong`. */
function firstProblem(value: unknown, checks: Fields, path: string): string | undefined {
  if (!isRecord(value)) return `${path || 'data'}: not an object`;
  for (const [name, check] of checks) {
    const problem = check(value[name]);
    if (problem) return `${path ? `${path}.` : ''}${name}: ${problem}`;
  }
  return undefined;
}

/** The first item of an array (non-empty, unless `allowEmpty`) with a problem, as `path[i].field: what is wrong`. */
function firstItemProblem(items: unknown, checks: Fields, path: string, allowEmpty = false): string | undefined {
  if (!Array.isArray(items) || (items.length === 0 && !allowEmpty)) return `${path}: not ${allowEmpty ? 'an' : 'a non-empty'} array`;
  for (let i = 0; i < items.length; i++) {
    // The item's path is only spelled out for the report: most jobs have none to report.
    if (firstProblem(items[i], checks, '') !== undefined) return firstProblem(items[i], checks, `${path}[${i}]`);
  }
  return undefined;
}

const parsed = <T>(data: unknown, problem: string | undefined): ParsedJob<T> =>
  problem ? { ok: false, reason: problem } : { ok: true, data: data as T };

const KEEN_META_FIELDS = fields({ uniqueness_token: nonEmptyString });
const KEEN_EVENT_FIELDS = fields({
  collection: (value) =>
    (KEEN_COLLECTIONS as readonly unknown[]).includes(value) ? undefined : `not one of ${KEEN_COLLECTIONS.join(', ')}`,
  event: (value) => firstProblem(isRecord(value) ? value.keen : undefined, KEEN_META_FIELDS, 'keen'),
});

const BRIDGE_STATE_FIELDS = fields({
  kind: literal('bridge-state'),
  deviceId: nonEmptyString,
  connected: boolean,
  retained: boolean,
  receivedAt: isoDate,
  messageId,
  topic: string,
  broker: (value) => (value === undefined ? undefined : nonEmptyString(value)),
});

const BRIDGE_STATES_JOB_FIELDS = fields({ kind: literal('bridge-states') });

/** A job left with no states (a retry after every state was handled) is valid: it only sends its events. */
export function parseBridgeStatesJob(data: unknown): ParsedJob<BridgeStatesJob> {
  const job = data as Partial<Record<keyof BridgeStatesJob, unknown>>;
  return parsed(
    data,
    firstProblem(data, BRIDGE_STATES_JOB_FIELDS, '') ??
      firstItemProblem(job.states, BRIDGE_STATE_FIELDS, 'states', true) ??
      (job.events === undefined ? undefined : firstItemProblem(job.events, KEEN_EVENT_FIELDS, 'events', true)),
  );
}

const LAMP_STATE_FIELDS = fields({
  messageId,
  deviceId: nonEmptyString,
  receivedAt: isoDate,
  topic: string,
  payload: string,
});

const optionalCount: Field = (value) =>
  value === undefined || (Number.isInteger(value) && (value as number) >= 0) ? undefined : 'not a count';

const LAMP_STATES_JOB_FIELDS = fields({ kind: literal('lamp-states'), waits: optionalCount });

export function parseLampStatesJob(data: unknown): ParsedJob<LampStatesJob> {
  return parsed(
    data,
    firstProblem(data, LAMP_STATES_JOB_FIELDS, '') ?? firstItemProblem((data as { states?: unknown }).states, LAMP_STATE_FIELDS, 'states'),
  );
}

export function parseKeenDeliveryJob(data: unknown): ParsedJob<KeenDeliveryJob> {
  return parsed(data, firstItemProblem(isRecord(data) ? data.events : undefined, KEEN_EVENT_FIELDS, 'events'));
}
