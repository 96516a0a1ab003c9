/**
 * Keen's write-side rules, pure: validation of one event, enrichment (keen.id, keen.created_at,
 * keen.timestamp) and the add-ons. Nothing here touches the database or the network.
 */
import { randomBytes } from 'node:crypto';

export const LIMITS = {
  /** One event, as JSON bytes. */
  eventBytes: 900_000,
  /** One bulk request. */
  bulkBytes: 10 * 1024 * 1024,
  collectionName: 64,
  propertyName: 256,
  uniquenessToken: 64,
  /** Deeper nesting than this is refused rather than risking the stack. */
  depth: 1000,
} as const;

/** A claimed uniqueness token blocks duplicates for this long. */
export const UNIQUENESS_WINDOW_DAYS = 31;

export type KeenErrorName = 'InvalidCollectionNameError' | 'InvalidPropertyNameError' | 'InvalidPropertyValueError' | 'InvalidEventError' | 'EventTooLargeError';

/** A per-event failure, in the shape Keen's bulk endpoint reports it. */
export interface EventError {
  name: KeenErrorName;
  description: string;
}

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

export type PrepareResult = { ok: true; value: PreparedEvent } | { ok: false; error: EventError };

export const DATE_TIME_PARSER = 'keen:date_time_parser';

const fail = (name: KeenErrorName, description: string): PrepareResult => ({ ok: false, error: { name, description } });

const isObject = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value);

export function collectionNameProblem(name: string): string | undefined {
  if (name.length === 0) return 'Collection names must not be empty.';
  if (name.length > LIMITS.collectionName) return `Collection names must be at most ${LIMITS.collectionName} characters: "${name.slice(0, 80)}..." has ${name.length}.`;
  if (name.startsWith('$')) return `Collection names must not start with "$": "${name}".`;
  if (name.includes('\u0000')) return 'Collection names must not contain NUL characters.';
  return undefined;
}

function propertyNameProblem(name: string, where: string): string | undefined {
  const shown = name.length > 80 ? `${name.slice(0, 80)}...` : name;
  if (name.includes('.')) return `Property names must not contain ".": "${shown}" at ${where}.`;
  if (name.startsWith('$')) return `Property names must not start with "$": "${shown}" at ${where}.`;
  if (name.length > LIMITS.propertyName) return `Property names must be at most ${LIMITS.propertyName} characters: "${shown}" at ${where} has ${name.length}.`;
  if (name.includes('\u0000')) return `Property names must not contain NUL characters (at ${where}).`;
  return undefined;
}

/** Walks the event without recursion, checking every property name and refusing what PostgreSQL's jsonb cannot hold. */
function checkTree(event: Record<string, unknown>): EventError | undefined {
  const stack: Array<{ value: unknown; where: string; depth: number }> = [{ value: event, where: '(root)', depth: 0 }];
  while (stack.length > 0) {
    const { value, where, depth } = stack.pop()!;
    if (depth > LIMITS.depth) return { name: 'InvalidPropertyValueError', description: `Events may nest at most ${LIMITS.depth} levels deep.` };
    if (typeof value === 'string') {
      if (value.includes('\u0000')) return { name: 'InvalidPropertyValueError', description: `String values must not contain NUL characters (at ${where}).` };
    } else if (Array.isArray(value)) {
      value.forEach((item, index) => stack.push({ value: item, where: `${where}[${index}]`, depth: depth + 1 }));
    } else if (isObject(value)) {
      for (const [key, child] of Object.entries(value)) {
        const path = where === '(root)' ? key : `${where}.${key}`;
        const problem = propertyNameProblem(key, where === '(root)' ? 'the top level' : where);
        if (problem) return { name: 'InvalidPropertyNameError', description: problem };
        stack.push({ value: child, where: path, depth: depth + 1 });
      }
    }
  }
  return undefined;
}

/** Keen-style ids: 24 hex digits, seconds first, so they sort roughly by arrival. */
export function newKeenId(now: Date): string {
  const id = randomBytes(12);
  id.writeUInt32BE(Math.floor(now.getTime() / 1000) >>> 0, 0);
  return id.toString('hex');
}

const ISO_DATE = /^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$/;

/** Parses an ISO-8601 date-time; a time without an offset is taken as UTC, as Keen does. */
export function parseTimestamp(value: unknown): Date | undefined {
  if (typeof value !== 'string' || !ISO_DATE.test(value)) return undefined;
  const hasTime = value.includes('T');
  const hasOffset = /(Z|[+-]\d{2}:?\d{2})$/.test(value) && hasTime;
  const date = new Date(hasTime && !hasOffset ? `${value}Z` : value);
  return Number.isNaN(date.getTime()) ? undefined : date;
}

const DAY_NAMES = ['Sunday', 'Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday'];

/**
 * What `keen:date_time_parser` writes, in UTC. day_of_week and week follow ISO 8601
 * (Monday = 1 ... Sunday = 7; week 1 holds the year's first Thursday).
 */
export function dateTimeInfo(date: Date): Record<string, number | string> {
  const isoDay = date.getUTCDay() === 0 ? 7 : date.getUTCDay();
  const thursday = new Date(Date.UTC(date.getUTCFullYear(), date.getUTCMonth(), date.getUTCDate() + 4 - isoDay));
  const yearStart = Date.UTC(thursday.getUTCFullYear(), 0, 1);
  const week = Math.ceil(((thursday.getTime() - yearStart) / 86_400_000 + 1) / 7);
  return {
    millisecond: date.getUTCMilliseconds(),
    second: date.getUTCSeconds(),
    minute: date.getUTCMinutes(),
    hour: date.getUTCHours(),
    day_of_week: isoDay,
    day_of_week_string: DAY_NAMES[date.getUTCDay()]!,
    day_of_month: date.getUTCDate(),
    week,
    month: date.getUTCMonth() + 1,
    year: date.getUTCFullYear(),
    timezone_offset: 0,
  };
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
 * is not modified (the stored event is a copy).
 */
export function prepareEvent(collection: string, event: unknown, now: Date): PrepareResult {
  const collectionProblem = collectionNameProblem(collection);
  if (collectionProblem) return fail('InvalidCollectionNameError', collectionProblem);
  if (!isObject(event)) return fail('InvalidEventError', 'An event must be a JSON object.');
  const treeProblem = checkTree(event);
  if (treeProblem) return { ok: false, error: treeProblem };

  const stored = structuredClone(event);
  const keen = Object.hasOwn(stored, 'keen') ? stored.keen : {};
  if (!isObject(keen)) return fail('InvalidPropertyValueError', 'The root "keen" property must be an object.');

  let timestamp = now;
  if (keen.timestamp !== undefined) {
    const parsed = parseTimestamp(keen.timestamp);
    if (!parsed) return fail('InvalidPropertyValueError', `keen.timestamp must be an ISO-8601 date-time string, got ${JSON.stringify(keen.timestamp)?.slice(0, 80)}.`);
    timestamp = parsed;
  }

  let token: string | null = null;
  if (keen.uniqueness_token !== undefined) {
    if (typeof keen.uniqueness_token !== 'string' || keen.uniqueness_token.length === 0 || keen.uniqueness_token.length > LIMITS.uniquenessToken) {
      return fail('InvalidPropertyValueError', `keen.uniqueness_token must be a string of 1 to ${LIMITS.uniquenessToken} characters.`);
    }
    token = keen.uniqueness_token;
  }

  const addons = keen.addons ?? [];
  if (!Array.isArray(addons)) return fail('InvalidPropertyValueError', 'keen.addons must be an array.');
  const id = newKeenId(now);
  const enriched: Record<string, unknown> = { ...keen, timestamp: timestamp.toISOString(), created_at: now.toISOString(), id };
  delete enriched.addons;
  Object.defineProperty(stored, 'keen', { value: enriched, enumerable: true, writable: true, configurable: true });

  const unknownAddons: string[] = [];
  for (const [index, addon] of addons.entries()) {
    if (!isObject(addon) || typeof addon.name !== 'string') return fail('InvalidPropertyValueError', `keen.addons[${index}] must be an object with a "name".`);
    if (addon.name !== DATE_TIME_PARSER) {
      unknownAddons.push(addon.name);
      continue;
    }
    const input = isObject(addon.input) ? addon.input.date_time : undefined;
    if (typeof input !== 'string' || input.length === 0) return fail('InvalidPropertyValueError', `${DATE_TIME_PARSER} needs input.date_time naming a property (e.g. "keen.timestamp").`);
    if (typeof addon.output !== 'string' || addon.output.length === 0) return fail('InvalidPropertyValueError', `${DATE_TIME_PARSER} needs an output property name (e.g. "timestamp.info").`);
    const outputPath = addon.output.split('.');
    const outputProblem = outputPath.map((key) => propertyNameProblem(key, `${DATE_TIME_PARSER} output`)).find(Boolean);
    if (outputProblem) return fail('InvalidPropertyNameError', outputProblem);
    if (outputPath[0] === 'keen') return fail('InvalidPropertyValueError', `${DATE_TIME_PARSER} may not write inside "keen".`);
    const date = parseTimestamp(getPath(stored, input.split('.')));
    if (!date) return fail('InvalidPropertyValueError', `${DATE_TIME_PARSER}: input "${input}" is not an ISO-8601 date-time in this event.`);
    const problem = setPath(stored, outputPath, dateTimeInfo(date));
    if (problem) return fail('InvalidPropertyValueError', `${DATE_TIME_PARSER} cannot write "${addon.output}": ${problem}.`);
  }
  return { ok: true, value: { id, collection, timestamp, createdAt: now, token, event: stored, unknownAddons } };
}
