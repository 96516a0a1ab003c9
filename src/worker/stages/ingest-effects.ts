/**
 * The effects the two ingest stages (lamp states, bridge states) share, applied: a rejection
 * recorded (counted, logged, queued for the rejection log) and Keen events sent (first straight
 * to Keen, then what it did not take in one keen-delivery job per ingest job, so a Keen retry
 * never repeats database work). Also the options both stages' workers are made with.
 */
import type { ConnectionOptions } from 'bullmq';
import type { KeenEventRecord } from '../../shared/jobs.js';
import type { Logger } from '../../shared/logger.js';
import type { Metrics } from '../../shared/metrics.js';
import type { PipelineQueues } from '../../shared/queues.js';
import type { AssociationPublisher } from '../association-publisher.js';
import type { KeenBatcher } from '../keen/batcher.js';
import type { DeviceRegistry } from '../registry/registry.js';
import type { UnknownDeviceStates } from './lamp-states.js';
import type { Rejection } from './rejections.js';

export interface IngestWorkerOptions {
  connection: ConnectionOptions;
  /** The stages' queues: the workers take their names and prefix. */
  queues: PipelineQueues;
  registry: DeviceRegistry;
  publisher: AssociationPublisher;
  defaultUser: string;
  /** Lamp-state jobs handled at once by this process. */
  concurrency: number;
  logger: Logger;
  metrics: Metrics;
  /**
   * A lamp state from a lamp the registry does not know: `record` (the default, the seed's way)
   * records it as devicestate at once, like any other; `reject` holds it for the connect that
   * may still be on its way (unknownDeviceAttempts), then rejects it as unknown_device.
   */
  unknownDeviceStates?: UnknownDeviceStates;
  /**
   * With `reject`, how often a state of a lamp we do not know is looked for before it is
   * rejected: it can overtake its lamp's first bridge connect, which travels in another queue.
   */
  unknownDeviceAttempts?: number;
  /**
   * Where lamp-state events go to Keen first, before their job completes. What it does not
   * take (an outage, a refusal) goes on in a keen-delivery job, with its retries and dead
   * letters. Without it, every event goes through keen-delivery.
   */
  keen?: Pick<KeenBatcher, 'submitAll'>;
}

export interface IngestEffects {
  /** Counted, logged and recorded in rejected-messages (once per message: the record is named after it). */
  reject(rejection: Rejection): Promise<void>;
  /** The events Keen did not take when sent straight to it (all of them without `keen`). */
  undeliveredOf(events: KeenEventRecord[]): Promise<KeenEventRecord[]>;
  /** One keen-delivery job for an ingest job's events, named after it: added again when that job is retried, it is a no-op. */
  queueForKeen(ingestJobId: string, events: KeenEventRecord[]): Promise<unknown>;
}

export function ingestEffects(options: IngestWorkerOptions): IngestEffects {
  const { queues, logger, metrics, keen } = options;
  return {
    async reject(rejection) {
      metrics.messagesRejected.inc({ reason: rejection.record.reason });
      logger.warn(
        { message_id: rejection.messageId, device_id: rejection.deviceId, reason: rejection.record.reason },
        `message rejected: ${rejection.detail}`,
      );
      await queues.rejected.add(rejection.record.reason, rejection.record, { jobId: rejection.jobId });
    },
    async undeliveredOf(events) {
      if (!keen || events.length === 0) return events;
      const outcomes = await keen.submitAll(events);
      return events.filter((_, i) => outcomes[i]!.status === 'rejected');
    },
    async queueForKeen(ingestJobId, events) {
      if (events.length === 0) return undefined;
      return queues.keen.add(events[0]!.collection, { events }, { jobId: `${ingestJobId}-keen` });
    },
  };
}

/** The lamp (or lamps) of a job's states, for its log lines. */
export function lampsSubject(data: { states: Array<{ deviceId: string }> }): Record<string, unknown> {
  const lamps = [...new Set(data.states.map((state) => state.deviceId))];
  return lamps.length === 1 ? { device_id: lamps[0] } : { device_ids: lamps };
}
