/**
 * The subscriber's one job: turn each MQTT message into a durable job, or a durable record of
 * why it was refused. `accept` resolves only when Redis has confirmed one of the two, and only
 * then may the caller acknowledge the message to the broker.
 *
 * Messages are stored in groups (group commit): while one write is under way, the messages
 * that arrive meanwhile wait, and all of them go in the next write. At low load a group is one
 * message and adds no delay; under load a group grows with the rate, so one Redis round trip
 * and one job carry many states. Writes are never concurrent, so jobs reach Redis in the order
 * their messages arrived, and a bridge-state job lists its states in that order too (which the
 * bridge-state partitions rely on).
 */
import { groupBy } from '../shared/collections.js';
import type { Logger } from '../shared/logger.js';
import { payloadRecord, type BridgeStatesJob, type LampStatesJob, type RejectedMessageJob } from '../shared/jobs.js';
import { parseMessage, type MqttMessage, type ParsedMessage } from '../shared/message.js';
import type { Metrics } from '../shared/metrics.js';
import type { PipelineQueues } from '../shared/queues.js';
import { newMessageId, newMessageIds, type RedeliveryLedger, type RememberedMessage } from './redeliveries.js';

export interface IntakeOptions {
  queues: PipelineQueues;
  ledger: RedeliveryLedger;
  logger: Logger;
  metrics: Metrics;
  /** The MQTT_BROKERS id of the broker the messages come from, recorded in each bridge state; none with MQTT_URL. */
  broker?: string;
  /** States per job; a larger group becomes several jobs in the same write. */
  maxStatesPerJob?: number;
  /** Waits between attempts while Redis refuses writes (out of memory, read-only replica, ...). */
  retryDelayMs?: number;
  /** The clock, in milliseconds (Date.now). */
  now?: () => number;
}

const TOPIC_LOG_CHARS = 256;
export const DEFAULT_MAX_STATES_PER_JOB = 100;

interface Arrival {
  session: string;
  message: MqttMessage;
  parsed: ParsedMessage;
  /** ISO 8601. */
  receivedAt: string;
}

/** The messages of the next write, and the one promise they all wait on (one per group, not per message). */
interface Group {
  arrivals: Arrival[];
  stored: Promise<void>;
  resolve(): void;
}

function newGroup(): Group {
  let resolve!: () => void;
  const stored = new Promise<void>((r) => (resolve = r));
  return { arrivals: [], stored, resolve };
}

export class Intake {
  readonly #options: IntakeOptions;
  readonly #retryDelayMs: number;
  readonly #maxStatesPerJob: number;
  readonly #now: () => number;
  /** The last receipt time and its ISO text: messages of the same millisecond share one. */
  #receivedMs = Number.NaN;
  #receivedAt = '';
  #waiting: Group = newGroup();
  #writing = false;
  #scheduled = false;

  constructor(options: IntakeOptions) {
    this.#options = options;
    this.#retryDelayMs = options.retryDelayMs ?? 1000;
    this.#maxStatesPerJob = options.maxStatesPerJob ?? DEFAULT_MAX_STATES_PER_JOB;
    this.#now = options.now ?? Date.now;
  }

  /**
   * Resolves once Redis holds the message's job or its rejection record. Messages stored in the
   * same write share the promise.
   */
  accept(session: string, message: MqttMessage): Promise<void> {
    const receivedAt = this.#receivedAtText();
    const parsed = parseMessage(message, receivedAt);
    const { metrics, logger } = this.#options;
    // Accepted messages are counted per group (#plan): a labelled counter costs a lookup per call.
    if (!parsed.ok) {
      metrics.messagesReceived.inc({ kind: 'invalid' });
      metrics.messagesRejected.inc({ reason: parsed.reason });
      logger.warn(
        {
          reason: parsed.reason,
          detail: parsed.detail,
          topic: message.topic.slice(0, TOPIC_LOG_CHARS),
          device_id: parsed.deviceId,
          bytes: message.payload.length,
        },
        'message rejected',
      );
    }
    this.#waiting.arrivals.push({ session, message, parsed, receivedAt });
    this.#scheduleWrite();
    return this.#waiting.stored;
  }

  #receivedAtText(): string {
    const ms = this.#now();
    if (ms !== this.#receivedMs) {
      this.#receivedMs = ms;
      this.#receivedAt = new Date(ms).toISOString();
    }
    return this.#receivedAt;
  }

  /** Messages parsed in the same turn of the event loop (one socket read) share a write. */
  #scheduleWrite(): void {
    if (this.#writing || this.#scheduled) return;
    this.#scheduled = true;
    setImmediate(() => {
      this.#scheduled = false;
      void this.#write();
    });
  }

  async #write(): Promise<void> {
    const { arrivals: group, resolve } = this.#waiting;
    if (group.length === 0) return;
    this.#waiting = newGroup();
    this.#writing = true;
    try {
      const ids = await this.#untilStored('redelivery lookup', () => this.#messageIds(group));
      const store = this.#plan(group, ids);
      // A retry sends the very same jobs (same ids), so it cannot add any twice.
      await this.#untilStored('jobs', store);
    } finally {
      this.#writing = false;
    }
    resolve();
    this.#scheduleWrite();
  }

  /** A new id per message, or the one a DUP resend had the first time. */
  async #messageIds(group: Arrival[]): Promise<string[]> {
    const { ledger, metrics, logger } = this.#options;
    const ids = newMessageIds(group.length);
    // Only a DUP resend can have been stored before: a lookup each (they are rare).
    const resends = group.flatMap((arrival, i) => (arrival.parsed.ok && arrival.message.dup ? [i] : []));
    await Promise.all(
      resends.map(async (i) => {
        const { session, message, parsed } = group[i]!;
        const remembered = await ledger.remembered(session, message);
        if (!remembered) return;
        ids[i] = remembered;
        metrics.redeliveriesDeduplicated.inc();
        logger.info(
          { message_id: remembered, device_id: parsed.ok ? parsed.message.deviceId : undefined },
          'broker redelivered a message we had already queued',
        );
      }),
    );
    return ids;
  }

  /** The Redis commands that store a group, ledger first (see RedeliveryLedger.rememberAll). */
  #plan(group: Arrival[], ids: string[]): () => Promise<unknown> {
    const { queues, ledger, metrics, broker } = this.#options;
    const remember: RememberedMessage[] = [];
    const bridgeStates: BridgeStatesJob['states'] = [];
    const lampStates: LampStatesJob['states'] = [];
    const rejections: Array<{ record: RejectedMessageJob; id: string }> = [];
    group.forEach(({ session, message, parsed, receivedAt }, i) => {
      const messageId = ids[i]!;
      if (!parsed.ok) {
        const record: RejectedMessageJob = {
          topic: message.topic.slice(0, TOPIC_LOG_CHARS),
          reason: parsed.reason,
          detail: parsed.detail,
          ...(parsed.deviceId ? { deviceId: parsed.deviceId } : {}),
          ...payloadRecord(message.payload),
          receivedAt,
        };
        rejections.push({ record, id: messageId });
        return;
      }
      remember.push({ session, message, messageId, payload: parsed.payload });
      // A lamp state travels as sent (the lamp-states stage reads its JSON); a bridge state as parsed,
      // with its topic as sent, for the record should the worker reject it.
      const { topic } = message;
      // Spelled out, not spread: V8 builds a literal of known shape about 100 times faster than a
      // spread copy (bench/results/2026-12-04.md), and this runs for every message.
      const state = parsed.message;
      if (state.kind === 'bridge-state') {
        const { deviceId, connected, retained } = state;
        const queued: BridgeStatesJob['states'][number] = {
          kind: 'bridge-state',
          deviceId,
          connected,
          retained,
          receivedAt,
          messageId,
          topic,
        };
        if (broker !== undefined) queued.broker = broker;
        bridgeStates.push(queued);
      } else {
        lampStates.push({ messageId, deviceId: state.deviceId, receivedAt, topic, payload: parsed.payload });
      }
    });
    if (bridgeStates.length > 0) metrics.messagesReceived.inc({ kind: 'bridge-state' }, bridgeStates.length);
    if (lampStates.length > 0) metrics.messagesReceived.inc({ kind: 'lamp-state' }, lampStates.length);
    const byPartition = groupBy(bridgeStates, (state) => queues.bridgeStateQueueFor(state.deviceId));
    // Ids are chosen now, so that a retried write sends the very same jobs.
    const bridgeJobs = [...byPartition].flatMap(([queue, states]) =>
      this.#chunks(states).map((chunk) => ({
        queue,
        job: { kind: 'bridge-states', states: chunk } satisfies BridgeStatesJob,
        id: newMessageId(),
      })),
    );
    const lampJobs = this.#chunks(lampStates).map((chunk) => ({
      job: { kind: 'lamp-states', states: chunk } satisfies LampStatesJob,
      id: newMessageId(),
    }));

    return async () => {
      // Sent together without waiting for one another; Redis runs them in this order.
      const remembered = ledger.rememberAll(remember);
      if (ledger.storeFirst) await Promise.all(remembered);
      await Promise.all([
        ...remembered,
        ...bridgeJobs.map(({ queue, job, id }) => queue.add(job.kind, job, { jobId: id })),
        ...lampJobs.map(({ job, id }) => queues.lampStates.add(job.kind, job, { jobId: id })),
        ...rejections.map(({ record, id }) => queues.rejected.add(record.reason, record, { jobId: id })),
      ]);
      if (bridgeStates.length > 0) metrics.messagesEnqueued.inc({ kind: 'bridge-state' }, bridgeStates.length);
      if (lampStates.length > 0) metrics.messagesEnqueued.inc({ kind: 'lamp-state' }, lampStates.length);
    };
  }

  #chunks<T>(items: T[]): T[][] {
    const chunks: T[][] = [];
    for (let i = 0; i < items.length; i += this.#maxStatesPerJob) chunks.push(items.slice(i, i + this.#maxStatesPerJob));
    return chunks;
  }

  /**
   * Connection loss is absorbed by ioredis (commands wait for the reconnect). An error that
   * Redis itself returns is retried here, for as long as it takes: the messages stay
   * unacknowledged, so the broker keeps them.
   */
  async #untilStored<T>(what: string, store: () => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt += 1) {
      try {
        const result = await store();
        if (attempt > 1) this.#options.logger.info({ attempt }, `Redis accepted the ${what} again`);
        return result;
      } catch (err) {
        if (attempt === 1 || attempt % 30 === 0) {
          this.#options.logger.error({ err, attempt }, `Redis refused the ${what}; holding the messages unacknowledged and retrying`);
        }
        await new Promise((resolve) => setTimeout(resolve, this.#retryDelayMs));
      }
    }
  }
}
