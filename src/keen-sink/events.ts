/**
 * keen-sink's side of a write, pure: Keen's rules (src/shared/keen/protocol.ts) plus what
 * PostgreSQL's jsonb cannot hold, then the enrichment Keen does (keen.id, keen.created_at,
 * keen.timestamp) and the add-ons. Nothing here touches the database or the network.
 */
import { randomBytes } from 'node:crypto';
import { dateTimeInfo } from '../shared/keen/envelope.js';
import { KEEN_EVENT_ERRORS } from '../shared/keen/errors.js';
import { checkCollectionName, checkEvent, parseDateTime, type KeenRefusal, type StoreRules } from '../shared/keen/protocol.js';
import { unstorableText } from '../shared/text.js';

/** Deeper nesting than this is refused rather than risking the stack (in PostgreSQL's jsonb too). */
export const MAX_DEPTH = 1000;

/** What PostgreSQL refuses, on top of Keen's rules: unstorable text, numbers JSON cannot carry, deep nesting. */
export const STORE_RULES: StoreRules = {
  name: (name) => {
    const text = unstorableText(name);
    return text ? `must not contain ${text}` : undefined;
  },
  value: (value) => {
    if (typeof value === 'string') {
      const text = unstorableText(value);
      return text ? `String values must not contain ${text}` : undefined;
    }
    if (typeof value === 'number' && !Number.isFinite(value)) return 'Numbers must be finite, not a literal too large for a double';
    return undefined;
  },
  maxDepth: MAX_DEPTH,
};

export interface PreparedEvent {
  id: string;
  collection: string;
  timestamp: Date;
  createdAt: Date;
  token: string | null;
  event: Record<string, unknown>;
  /** Add-ons asked for that this store does not implement (accepted, not applied). */
  unknownAddons: string[];
}

export type PrepareResult = { ok: true; value: PreparedEvent } | { ok: false; error: KeenRefusal };

const fail = (name: KeenRefusal['name'], description: string): PrepareResult => ({ ok: false, error: { name, description } });

const isObject = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value);

/**
 * A property the object itself holds, never one it inherits: user data is walked only this way,
 * so a key such as `__proto__` or `constructor` is data like any other.
 */
export const own = (object: Record<string, unknown>, key: string): unknown => (Object.hasOwn(object, key) ? object[key] : undefined);

/** keen-sink's refusal of a collection name (Keen's rules and PostgreSQL's), or undefined. */
export function collectionNameProblem(name: string): KeenRefusal | undefined {
  const checked = checkCollectionName(name, STORE_RULES);
  return checked.ok ? undefined : checked.error;
}

/** Keen-style ids: 24 hex digits, seconds first, so they sort roughly by arrival. */
export function newKeenId(now: Date): string {
  const id = randomBytes(12);
  id.writeUInt32BE(Math.floor(now.getTime() / 1000) >>> 0, 0);
  return id.toString('hex');
}

function getPath(root: Record<string, unknown>, path: string[]): unknown {
  let node: unknown = root;
  for (const key of path) {
    if (!isObject(node) || !Object.hasOwn(node, key)) return undefined;
    node = node[key];
  }
  return node;
}

/** Writes `value` at `path`, creating objects on the way; refuses to replace a non-object. */
function setPath(root: Record<string, unknown>, path: string[], value: unknown): string | undefined {
  let node = root;
  for (const [index, key] of path.entries()) {
    if (index === path.length - 1) {
      Object.defineProperty(node, key, { value, enumerable: true, writable: true, configurable: true });
      return undefined;
    }
    if (!Object.hasOwn(node, key)) {
      Object.defineProperty(node, key, { value: {}, enumerable: true, writable: true, configurable: true });
    }
    const next = node[key];
    if (!isObject(next)) return `"${path.slice(0, index + 1).join('.')}" is not an object`;
    node = next;
  }
  return undefined;
}

/**
 * Validates and enriches one event for `collection`. `event` is the parsed JSON as received; it
 * is not modified (the stored event is a copy). `bytes` is its size as JSON when the caller knows it.
 */
export function prepareEvent(collection: string, event: unknown, now: Date, bytes?: number): PrepareResult {
  const collectionProblem = collectionNameProblem(collection);
  if (collectionProblem) return { ok: false, error: collectionProblem };
  const checked = checkEvent(event, { rules: STORE_RULES, ...(bytes === undefined ? {} : { bytes }) });
  if (!checked.ok) return checked;
  const envelope = checked.value;

  const stored = structuredClone(event as Record<string, unknown>);
  const keen = (own(stored, 'keen') ?? {}) as Record<string, unknown>;
  const timestamp = envelope.timestamp ?? now;
  const id = newKeenId(now);
  const enriched: Record<string, unknown> = { ...keen, timestamp: timestamp.toISOString(), created_at: now.toISOString(), id };
  delete enriched.addons;
  Object.defineProperty(stored, 'keen', { value: enriched, enumerable: true, writable: true, configurable: true });

  const unknownAddons: string[] = [];
  for (const addon of envelope.addons) {
    if (!addon.dateTime) {
      unknownAddons.push(addon.name);
      continue;
    }
    const { input, output } = addon.dateTime;
    const date = parseDateTime(getPath(stored, input.split('.')));
    if (!date.ok)
      return fail(
        KEEN_EVENT_ERRORS.propertyValue,
        `${addon.name}: input "${input}" is not an ISO-8601 date-time in this event (${date.problem}).`,
      );
    const problem = setPath(stored, output.split('.'), dateTimeInfo(date.date));
    if (problem) return fail(KEEN_EVENT_ERRORS.propertyValue, `${addon.name} cannot write "${output}": ${problem}.`);
  }
  return {
    ok: true,
    value: { id, collection, timestamp, createdAt: now, token: envelope.uniquenessToken ?? null, event: stored, unknownAddons },
  };
}
