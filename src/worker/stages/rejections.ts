/**
 * The record of a state a stage refuses as `unknown_device` (a lamp state or a bridge disconnect
 * of a lamp the registry does not know), made as the lamp sent it: the topic and payload its job
 * kept. Pure: the lamp-states and bridge-states stages decide their rejections with it, and their
 * workers queue them (ingest-effects.ts).
 */
import { payloadRecord, type RejectedMessageJob } from '../../shared/jobs.js';

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

/**
 * A refused state as its job kept it. A job queued before topics and payloads were kept has
 * neither: the topic is then rebuilt from the device id (`usualTopic`) and the payload left
 * out (what we parsed is not what the lamp sent), and the record's detail says so.
 */
export interface RefusedState {
  messageId: string;
  deviceId: string;
  receivedAt: string;
  detail: string;
  topic: string | undefined;
  usualTopic: string;
  /** undefined: not kept. */
  payload: Uint8Array | undefined;
}

export function unknownDeviceRejection(refused: RefusedState): Rejection {
  const unkept = [refused.topic === undefined && 'topic rebuilt', refused.payload === undefined && 'payload not kept'].filter(Boolean);
  return {
    jobId: `${refused.messageId}-rejected`,
    messageId: refused.messageId,
    deviceId: refused.deviceId,
    detail: refused.detail,
    record: {
      topic: refused.topic ?? refused.usualTopic,
      reason: 'unknown_device',
      detail: unkept.length === 0 ? refused.detail : `${refused.detail} (${unkept.join(', ')}: queued by an older subscriber)`,
      deviceId: refused.deviceId,
      ...(refused.payload ? payloadRecord(refused.payload) : {}),
      receivedAt: refused.receivedAt,
    },
  };
}
