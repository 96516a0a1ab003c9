/**
 * Keen events, built the way the seed's recorder built them. Pure: the caller supplies the
 * receipt time and the uniqueness token. Keen's own rules (the envelope, names, limits) are
 * src/shared/keen/'s.
 */
import { keenEnvelope, type KeenEnvelope } from './keen/envelope.js';
import { isKeenPropertyName, KEEN_LIMITS } from './keen/protocol.js';

export const KEEN_COLLECTIONS = ['activations', 'devicemonitoring', 'devicestate'] as const;
export type KeenCollection = (typeof KEEN_COLLECTIONS)[number];

export type KeenEvent = { [property: string]: unknown; keen: KeenEnvelope };

const MAX_PROPERTY_NAME = KEEN_LIMITS.propertyName;

export function uniquenessToken(messageId: string, collection: KeenCollection): string {
  const token = `${messageId}-${collection}`;
  if (token.length > KEEN_LIMITS.uniquenessToken)
    throw new RangeError(`uniqueness token longer than ${KEEN_LIMITS.uniquenessToken}: ${token}`);
  return token;
}

/*
 * Our own properties go on top, the `keen` envelope last, so nothing a device sends (it only
 * ever appears nested under `state`) can replace `device_id` or `keen`. Each event is an object
 * literal rather than a spread of its properties: one is built for every message, and V8 builds
 * a literal of known shape about 100 times faster than a spread copy.
 */

/** An event of any properties, the envelope put last over any `keen` among them. */
export function buildKeenEvent(properties: Record<string, unknown>, receivedAt: string, token: string): KeenEvent {
  return { ...properties, keen: keenEnvelope(receivedAt, token) };
}

export function activationEvent(deviceId: string, user: string, receivedAt: string, token: string): KeenEvent {
  return { device_id: deviceId, user, keen: keenEnvelope(receivedAt, token) };
}

export function deviceMonitoringEvent(deviceId: string, connected: boolean, receivedAt: string, token: string): KeenEvent {
  const state = connected ? 'connected' : 'disconnected';
  return { device_id: deviceId, service: 'mqttbridge', state, keen: keenEnvelope(receivedAt, token) };
}

export function deviceStateEvent(deviceId: string, state: object, receivedAt: string, token: string): KeenEvent {
  return { device_id: deviceId, state: toKeenProperties(state), keen: keenEnvelope(receivedAt, token) };
}

/**
 * Keen refuses a property name with a `.`, a leading `$`, or more than 256 characters, and the
 * refusal would dead-letter the whole event. Such names are rewritten instead: `.` and a leading
 * `$` become `_`, long names are cut, and a rewritten name that collides with an existing one
 * gets a `_<n>` suffix. Keys like `__proto__` stay plain data properties.
 */
export function toKeenProperties(value: unknown): unknown {
  // Nearly every lamp state needs no rename: it is sent as it is, without a copy.
  if (isSentAsItIs(value)) return value;
  if (Array.isArray(value)) return value.map(toKeenProperties);
  if (typeof value !== 'object' || value === null) return value;
  const out: Record<string, unknown> = {};
  const entries = Object.entries(value);
  const taken = new Set(entries.map(([key]) => key).filter(isSentAsIs));
  for (const [key, child] of entries) {
    const wanted = keenPropertyName(key);
    let name = wanted;
    if (name !== key) {
      for (let n = 1; taken.has(name); n += 1) name = `${wanted.slice(0, MAX_PROPERTY_NAME - `_${n}`.length)}_${n}`;
      taken.add(name);
    }
    Object.defineProperty(out, name, { value: toKeenProperties(child), enumerable: true, writable: true, configurable: true });
  }
  return out;
}

/** Whether no name anywhere in `value` needs a rename (a walk that allocates nothing). */
function isSentAsItIs(value: unknown): boolean {
  if (typeof value !== 'object' || value === null) return true;
  if (Array.isArray(value)) {
    for (const item of value) if (!isSentAsItIs(item)) return false;
    return true;
  }
  for (const key in value) {
    if (!Object.hasOwn(value, key)) continue;
    if (!isSentAsIs(key) || !isSentAsItIs((value as Record<string, unknown>)[key])) return false;
  }
  return true;
}

/** A name Keen accepts, and not empty: an empty name cannot be named in a property path. */
function isSentAsIs(key: string): boolean {
  return key.length > 0 && isKeenPropertyName(key);
}

function keenPropertyName(key: string): string {
  let name = key.replaceAll('.', '_');
  if (name.startsWith('$')) name = `_${name.slice(1)}`;
  if (name.length === 0) name = '_';
  return name.length > MAX_PROPERTY_NAME ? name.slice(0, MAX_PROPERTY_NAME) : name;
}
