/**
 * What a lamp's messages are made of, named once for the message parser (message.ts) and the job
 * payloads (jobs.ts): a lamp's state, and the reasons a message is refused. It imports nothing,
 * so both import it without importing each other in a circle.
 */

/** Why a message was refused: the parser's reasons, and the worker's `unknown_device`. */
export const REJECT_REASONS = [
  'unrecognized_topic',
  'invalid_device_id',
  'invalid_bridge_state',
  'payload_too_large',
  'invalid_utf8',
  'invalid_json',
  'not_an_object',
  'too_deeply_nested',
  'unstorable_text',
  'invalid_lamp_state',
  'unknown_device',
] as const;
export type RejectReason = (typeof REJECT_REASONS)[number];

/** The fields LAMPI firmware sends must have their types; anything extra is kept as sent. */
export interface LampState {
  color?: { h: number; s: number; [key: string]: unknown };
  brightness?: number;
  on?: boolean;
  client?: string;
  [key: string]: unknown;
}
