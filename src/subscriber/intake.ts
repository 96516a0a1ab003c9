/**
 * The subscriber's one job: turn each MQTT message into a durable job, or a durable record of
 * why it was refused. `accept` resolves only when Redis has confirmed one of the two, and only
 * then may the caller acknowledge the message to the broker.
 */
import type { Logger } from '../shared/logger.js';
import type { RejectedMessageJob } from '../shared/jobs.js';
import { parseMessage } from '../shared/message.js';
import type { Metrics } from '../shared/metrics.js';
import type { PipelineQueues } from '../shared/queues.js';
import { describe } from '../shared/queues.js';
import { newJobId, type RedeliveryLedger } from './redeliveries.js';

export interface MqttMessage {
  topic: string;
  payload: Uint8Array;
  retain: boolean;
  dup: boolean;
  messageId?: number;
}

export interface IntakeOptions {
  queues: PipelineQueues;
  ledger: RedeliveryLedger;
  logger: Logger;
  metrics: Metrics;
  /** Waits between attempts while Redis refuses writes (out of memory, read-only replica, ...). */
  retryDelayMs?: number;
  now?: () => Date;
}

const PAYLOAD_HEAD_BYTES = 512;
const TOPIC_LOG_CHARS = 256;

export class Intake {
  private readonly retryDelayMs: number;
  private readonly now: () => Date;

  constructor(private readonly options: IntakeOptions) {
    this.retryDelayMs = options.retryDelayMs ?? 1000;
    this.now = options.now ?? (() => new Date());
  }

  async accept(session: string, message: MqttMessage): Promise<void> {
    const receivedAt = this.now();
    const parsed = parseMessage({ topic: message.topic, payload: message.payload, retained: message.retain, receivedAt });
    const { metrics, logger } = this.options;
    if (!parsed.ok) {
      metrics.messagesReceived.inc({ kind: 'invalid' });
      metrics.messagesRejected.inc({ reason: parsed.reason });
      const record: RejectedMessageJob = {
        topic: message.topic.slice(0, TOPIC_LOG_CHARS),
        reason: parsed.reason,
        detail: parsed.detail,
        ...(parsed.deviceId ? { deviceId: parsed.deviceId } : {}),
        payloadBytes: message.payload.length,
        payloadHead: Buffer.from(message.payload.subarray(0, PAYLOAD_HEAD_BYTES)).toString('base64'),
        receivedAt: receivedAt.toISOString(),
      };
      logger.warn({ reason: parsed.reason, detail: parsed.detail, topic: record.topic, device_id: parsed.deviceId, bytes: record.payloadBytes }, 'message rejected');
      const jobId = newJobId();
      await this.untilStored('rejection record', () => this.options.queues.rejected.add(parsed.reason, record, { jobId }));
      return;
    }
    const { job } = parsed;
    metrics.messagesReceived.inc({ kind: job.kind });
    const { jobId, redelivery } = await this.untilStored('redelivery lookup', () => this.options.ledger.jobIdFor(session, message));
    if (redelivery) {
      metrics.redeliveriesDeduplicated.inc();
      logger.info({ job_id: jobId, device_id: job.deviceId }, 'broker redelivered a message we had already queued');
    }
    // Both commands are sent without waiting for each other; Redis runs them in this order.
    // A retry reuses the job id, so it cannot add a second job.
    await this.untilStored('job', () =>
      Promise.all([redelivery ? undefined : this.options.ledger.remember(session, message, jobId), this.options.queues.ingestQueueFor(job).add(job.kind, job, { jobId })]),
    );
    metrics.messagesEnqueued.inc({ kind: job.kind });
  }

  /**
   * Connection loss is absorbed by ioredis (commands wait for the reconnect). An error that
   * Redis itself returns is retried here, for as long as it takes: the message stays
   * unacknowledged, so the broker keeps it, and nothing after it on this connection is read.
   */
  private async untilStored<T>(what: string, store: () => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt += 1) {
      try {
        const result = await store();
        if (attempt > 1) this.options.logger.info({ attempt }, `Redis accepted the ${what} again`);
        return result;
      } catch (err) {
        if (attempt === 1 || attempt % 30 === 0) {
          this.options.logger.error({ err: describe(err), attempt }, `Redis refused the ${what}; holding the message unacknowledged and retrying`);
        }
        await new Promise((resolve) => setTimeout(resolve, this.retryDelayMs));
      }
    }
  }
}
