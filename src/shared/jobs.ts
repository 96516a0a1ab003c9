/**
 * The payload of every job in every queue, defined once for the code that adds it and the
 * code that handles it.
 */
import type { KeenCollection, KeenEvent } from './events.js';
import type { LampState } from './message.js';
import type { RejectReason } from './message.js';

/** A message the subscriber accepted, stamped with when it reached us. */
export type IngestJob =
  | {
      kind: 'bridge-state';
      deviceId: string;
      connected: boolean;
      /** Set on a broker's replay of the last known state (after our (re)subscribe). */
      retained: boolean;
      receivedAt: string;
    }
  | { kind: 'lamp-state'; deviceId: string; state: LampState; receivedAt: string };

/** One event on its way to Keen. Its job id is the event's `keen.uniqueness_token`. */
export interface KeenDeliveryJob {
  collection: KeenCollection;
  event: KeenEvent;
}

export interface DeliveryError {
  message: string;
  /** HTTP status, when Keen answered. */
  status?: number;
  /** Keen's `error_code`, or the per-event error name from a bulk response. */
  code?: string;
}

/** A Keen event that will not be delivered without an operator: the original event and why. */
export interface DeadLetterJob extends KeenDeliveryJob {
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

/** What an operator sees of a message we refused. The payload is kept short and printable. */
export interface RejectedMessageJob {
  topic: string;
  reason: RejectReason;
  detail: string;
  deviceId?: string;
  payloadBytes: number;
  /** The first bytes of the payload, base64, so binary and invalid UTF-8 survive. */
  payloadHead: string;
  receivedAt: string;
}

/** The lamp a Keen delivery (or dead letter) is about, for log lines and listings. */
export function deviceIdOf(job: KeenDeliveryJob): string | undefined {
  const id = (job.event as { device_id?: unknown } | undefined)?.device_id;
  return typeof id === 'string' ? id : undefined;
}
