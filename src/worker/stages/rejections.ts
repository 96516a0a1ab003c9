/**
 * The record of a state a stage refuses (a lamp state or a bridge disconnect of a lamp the
 * registry does not know, a lamp state whose payload is no lamp state), made as the lamp sent
 * it: the topic and payload its job kept. Pure: the lamp-states and bridge-states stages decide
 * their rejections with it, and their workers queue them (ingest-effects.ts).
 */
import { payloadRecord, type RejectedMessageJob } from '../../shared/jobs.js';
import type { LampStateRejectReason } from '../../shared/message.js';

/** One refused message: its record for the rejection log, and the words of its log line. */
export interface Rejection {
  /** The record's job id, after the message: handled twice, it is still one record. */
  jobId: string;
  messageId: string;
  deviceId: string;
  /** The log line's words; the record's detail also says what its job did not keep. */
  detail: string;
  record: RejectedMessageJob;
}

/** A refused state as its job kept it: its topic and payload exactly as the lamp sent them. */
export interface RefusedState {
  messageId: string;
  deviceId: string;
  receivedAt: string;
  detail: string;
  topic: string;
  payload: Uint8Array;
}

/** The record of a state a stage refuses: `unknown_device`, or a payload that is no lamp state (parseLampState's reasons). */
export function stateRejection(reason: LampStateRejectReason | 'unknown_device', refused: RefusedState): Rejection {
  return {
    jobId: `${refused.messageId}-rejected`,
    messageId: refused.messageId,
    deviceId: refused.deviceId,
    detail: refused.detail,
    record: {
      topic: refused.topic,
      reason,
      detail: refused.detail,
      deviceId: refused.deviceId,
      ...payloadRecord(refused.payload),
      receivedAt: refused.receivedAt,
    },
  };
}
