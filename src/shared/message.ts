/**
 * The one type of an MQTT message as it arrived (MqttMessage), and its two readers. parseMessage
 * (the subscriber's) checks what the subscriber must know to store a message: its topic, its
 * size and, for a lamp state, that it is text. parseLampState (the lamp-states stage's) reads a
 * lamp state's JSON, once, where the event is built. Each turns bad input into a rejection with a
 * reason. Pure: no I/O, never throws, whatever the bytes.
 */
import type { IngestMessage } from './jobs.js';
import type { LampState, RejectReason } from './lamp.js';
import { unstorableText } from './text.js';
import { parseTopic } from './topics.js';

export const MAX_LAMP_STATE_BYTES = 64 * 1024;
/** Deeper than any lamp needs, shallow enough that nothing downstream recurses dangerously. */
export const MAX_LAMP_STATE_DEPTH = 16;

const MAX_CLIENT_CHARS = 256;

/** One MQTT message as it arrived: the PUBLISH packet's fields that we use. */
export interface MqttMessage {
  topic: string;
  payload: Uint8Array;
  retain: boolean;
  dup: boolean;
  /** QoS 1 and 2 only; unique among the session's unacknowledged messages, reused after. */
  packetId?: number;
}

/**
 * `payload`: an accepted message's payload as text, exactly its bytes (valid UTF-8 by parsing, a
 * leading byte order mark kept), decoded once here for whoever needs it as sent.
 */
export type ParsedMessage =
  { ok: true; message: IngestMessage; payload: string } | { ok: false; reason: RejectReason; detail: string; deviceId?: string };

// The BOM is kept in the text (the payload as sent) and skipped for JSON.parse only.
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const BOM = 0xfeff;

/** `receivedAt`: when the message reached us, as ISO 8601 text (the events' `keen.timestamp`). */
export function parseMessage(message: MqttMessage, receivedAt: string): ParsedMessage {
  const topic = parseTopic(message.topic);
  if (!topic.ok) return topic;
  const { deviceId } = topic;

  if (topic.kind === 'bridge-state') {
    const text = message.payload.length === 1 ? String.fromCharCode(message.payload[0]!) : '';
    if (text !== '0' && text !== '1')
      return { ok: false, reason: 'invalid_bridge_state', deviceId, detail: 'bridge state payload must be 1 or 0' };
    return {
      ok: true,
      message: { kind: 'bridge-state', deviceId, connected: text === '1', retained: message.retain, receivedAt },
      payload: text,
    };
  }

  if (message.payload.length > MAX_LAMP_STATE_BYTES) {
    return {
      ok: false,
      reason: 'payload_too_large',
      deviceId,
      detail: `lamp state is ${message.payload.length} bytes, the limit is ${MAX_LAMP_STATE_BYTES}`,
    };
  }
  let text: string;
  try {
    text = utf8.decode(message.payload);
  } catch {
    return { ok: false, reason: 'invalid_utf8', deviceId, detail: 'payload is not valid UTF-8' };
  }
  // Its JSON is read once, by the lamp-states stage (parseLampState): the subscriber only stores it.
  return { ok: true, message: { kind: 'lamp-state', deviceId, receivedAt }, payload: text };
}

/** The reasons parseLampState gives (the lamp-states stage's); the others but `unknown_device` are parseMessage's. */
export const LAMP_STATE_REJECT_REASONS = [
  'invalid_json',
  'not_an_object',
  'too_deeply_nested',
  'unstorable_text',
  'invalid_lamp_state',
] as const satisfies readonly RejectReason[];
export type LampStateRejectReason = (typeof LAMP_STATE_REJECT_REASONS)[number];
export type ParsedLampState = { ok: true; state: LampState } | { ok: false; reason: LampStateRejectReason; detail: string };

/**
 * A lamp state's payload as text (exactly its bytes, a leading byte order mark allowed) read as
 * the lamp state it must be: a JSON object, not too deep, with nothing Keen cannot store, and
 * LAMPI's fields of their types.
 */
export function parseLampState(text: string): ParsedLampState {
  let value: unknown;
  try {
    value = JSON.parse(text.charCodeAt(0) === BOM ? text.slice(1) : text);
  } catch (err) {
    return { ok: false, reason: 'invalid_json', detail: `payload is not JSON: ${(err as Error).message.slice(0, 120)}` };
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return { ok: false, reason: 'not_an_object', detail: 'lamp state must be a JSON object' };
  }
  // Only a JSON escape can put a NUL or a lone surrogate in a string: valid UTF-8 cannot hold them.
  const problem = findStructuralProblem(value, text.includes('\\u'));
  if (problem) return { ok: false, ...problem };
  const invalid = lampStateProblem(value as Record<string, unknown>);
  if (invalid) return { ok: false, reason: 'invalid_lamp_state', detail: invalid };
  return { ok: true, state: value as LampState };
}

/** The first field of LampState with the wrong type or range, as `field: what is wrong`. */
function lampStateProblem(state: Record<string, unknown>): string | undefined {
  if (Object.hasOwn(state, 'color')) {
    const color = state.color;
    if (typeof color !== 'object' || color === null || Array.isArray(color)) return 'color: expected an object with h and s';
    for (const key of ['h', 's'] as const) {
      const problem = unitProblem(Object.hasOwn(color, key) ? (color as Record<string, unknown>)[key] : undefined);
      if (problem) return `color.${key}: ${problem}`;
    }
  }
  if (Object.hasOwn(state, 'brightness')) {
    const problem = unitProblem(state.brightness);
    if (problem) return `brightness: ${problem}`;
  }
  if (Object.hasOwn(state, 'on') && typeof state.on !== 'boolean') return 'on: expected true or false';
  if (Object.hasOwn(state, 'client')) {
    if (typeof state.client !== 'string') return 'client: expected a string';
    if (state.client.length > MAX_CLIENT_CHARS) return `client: longer than ${MAX_CLIENT_CHARS} characters`;
  }
  return undefined;
}

function unitProblem(value: unknown): string | undefined {
  if (typeof value !== 'number') return 'expected a number from 0 to 1';
  return value >= 0 && value <= 1 ? undefined : `${value} is not from 0 to 1`;
}

/**
 * Walks the parsed JSON: too deep, a number JSON cannot represent (1e999), or text that no Keen
 * can store (a NUL or a lone surrogate, which JSON escapes let through valid UTF-8) in a key or
 * a value: refused here, it cannot fail a Keen request of other lamps' events later. `escaped`:
 * whether the text had a `\u` escape, without which no string can hold such text.
 *
 * Every message passes a quick walk that allocates nothing; only one it finds something in is
 * walked again to say what and where (and so with the very words it always had).
 */
function findStructuralProblem(root: object, escaped: boolean): { reason: LampStateRejectReason; detail: string } | undefined {
  if (!mayHoldProblem(root, 1, escaped)) return undefined;
  const stack: Array<[unknown, number, string]> = [[root, 1, '(root)']];
  while (stack.length > 0) {
    const [value, depth, where] = stack.pop()!;
    if (typeof value === 'number' && !Number.isFinite(value)) {
      return { reason: 'invalid_lamp_state', detail: 'a number is too large to represent' };
    }
    if (typeof value === 'string') {
      const text = unstorableText(value);
      if (text) return { reason: 'unstorable_text', detail: `the value at ${where} contains ${text}` };
    }
    if (typeof value !== 'object' || value === null) continue;
    if (depth > MAX_LAMP_STATE_DEPTH) {
      return { reason: 'too_deeply_nested', detail: `lamp state is nested deeper than ${MAX_LAMP_STATE_DEPTH} levels` };
    }
    for (const [key, child] of Object.entries(value)) {
      const path = where === '(root)' ? key : `${where}.${key}`;
      const text = unstorableText(key);
      // The key is not quoted: it may hold the very character that is refused.
      if (text)
        return { reason: 'unstorable_text', detail: `a key ${where === '(root)' ? 'at the top level' : `in ${where}`} contains ${text}` };
      stack.push([child, depth + 1, path]);
    }
  }
  return undefined;
}

/** Whether findStructuralProblem's walk could find anything in `value`. Recurses at most MAX_LAMP_STATE_DEPTH + 1 deep. */
function mayHoldProblem(value: unknown, depth: number, escaped: boolean): boolean {
  if (typeof value === 'number') return !Number.isFinite(value);
  if (typeof value === 'string') return escaped && unstorableText(value) !== undefined;
  if (typeof value !== 'object' || value === null) return false;
  if (depth > MAX_LAMP_STATE_DEPTH) return true;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) if (mayHoldProblem(value[i], depth + 1, escaped)) return true;
    return false;
  }
  // JSON.parse makes plain objects whose keys are all their own.
  for (const key in value) {
    if (escaped && unstorableText(key) !== undefined) return true;
    if (mayHoldProblem((value as Record<string, unknown>)[key], depth + 1, escaped)) return true;
  }
  return false;
}
