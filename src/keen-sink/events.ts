/**
 * Keen's write-side rules, pure: validation of one event, enrichment (keen.id, keen.created_at,
 * keen.timestamp) and the add-ons. Nothing here touches the database or the network.
 */
import { randomBytes } from 'node:crypto';
import { unstorableText } from '../shared/text.js';

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

export type KeenErrorName =
  'InvalidCollectionNameError' | 'InvalidPropertyNameError' | 'InvalidPropertyValueError' | 'InvalidEventError' | 'EventTooLargeError';

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

/**
 * A property the object itself holds, never one it inherits: user data is walked only this way,
 * so a key such as `__proto__` or `constructor` is data like any other.
 */
export const own = (object: Record<string, unknown>, key: string): unknown => (Object.hasOwn(object, key) ? object[key] : undefined);

export function collectionNameProblem(name: string): string | undefined {
  if (name.length === 0) return 'Collection names must not be empty.';
  if (name.length > LIMITS.collectionName)
    return `Collection names must be at most ${LIMITS.collectionName} characters: "${name.slice(0, 80)}..." has ${name.length}.`;
  if (name.startsWith('$')) return `Collection names must not start with "$": "${name}".`;
  const text = unstorableText(name);
  if (text) return `Collection names must not contain ${text}.`;
  return undefined;
}

function propertyNameProblem(name: string, where: string): string | undefined {
  const shown = name.length > 80 ? `${name.slice(0, 80)}...` : name;
  if (name.includes('.')) return `Property names must not contain ".": "${shown}" at ${where}.`;
  if (name.startsWith('$')) return `Property names must not start with "$": "${shown}" at ${where}.`;
  if (name.length > LIMITS.propertyName)
    return `Property names must be at most ${LIMITS.propertyName} characters: "${shown}" at ${where} has ${name.length}.`;
  const text = unstorableText(name);
  if (text) return `Property names must not contain ${text} (at ${where}).`;
  return undefined;
}

/** Walks the event without recursion, checking every property name and refusing what PostgreSQL's jsonb cannot hold. */
function checkTree(event: Record<string, unknown>): EventError | undefined {
  const stack: Array<{ value: unknown; where: string; depth: number }> = [{ value: event, where: '(root)', depth: 0 }];
  while (stack.length > 0) {
    const { value, where, depth } = stack.pop()!;
    if (depth > LIMITS.depth)
      return { name: 'InvalidPropertyValueError', description: `Events may nest at most ${LIMITS.depth} levels deep.` };
    if (typeof value === 'string') {
      const text = unstorableText(value);
      if (text) return { name: 'InvalidPropertyValueError', description: `String values must not contain ${text} (at ${where}).` };
    } else if (typeof value === 'number' && !Number.isFinite(value)) {
      return { name: 'InvalidPropertyValueError', description: `Numbers must be finite (at ${where}: a literal too large for a double).` };
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

const ISO_DATE = /^(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?(Z|[+-](\d{2}):?(\d{2}))?)?$/;

/** The instants both JavaScript and PostgreSQL's timestamptz hold, and ISO 8601 writes with four digits. */
export const EARLIEST = new Date('0001-01-01T00:00:00.000Z');
export const LATEST = new Date('9999-12-31T23:59:59.999Z');

export type DateTimeResult = { ok: true; date: Date } | { ok: false; problem: string };

const isLeap = (year: number) => (year % 4 === 0 && year % 100 !== 0) || year % 400 === 0;
const daysIn = (year: number, month: number) => [31, isLeap(year) ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1]!;

/**
 * Parses an ISO-8601 date-time; a time without an offset is taken as UTC, as Keen does. A day
 * that does not exist (2026-02-30) is refused, never moved to another day, and so is an instant
 * before year 1 or after 9999 (PostgreSQL and `toISOString` could not both hold it).
 */
export function parseDateTime(value: unknown): DateTimeResult {
  const problem = (why: string): DateTimeResult => ({ ok: false, problem: why });
  if (typeof value !== 'string') return problem('it is not a string');
  const shown = JSON.stringify(value.slice(0, 40));
  const match = ISO_DATE.exec(value);
  if (!match) return problem(`${shown} is not an ISO-8601 date-time (e.g. 2026-03-18T15:42:10Z)`);
  const [, year, month, day, hour = '0', minute = '0', second = '0', offset, offsetHours = '0', offsetMinutes = '0'] =
    match as unknown as string[];
  const y = Number(year);
  const m = Number(month);
  if (m < 1 || m > 12) return problem(`${shown} has no month ${m}`);
  if (Number(day) < 1 || Number(day) > daysIn(y, m)) return problem(`${shown} names a day that does not exist`);
  if (Number(hour) > 23 || Number(minute) > 59 || Number(second) > 59) return problem(`${shown} names a time that does not exist`);
  if (Number(offsetHours) > 23 || Number(offsetMinutes) > 59) return problem(`${shown} has an impossible UTC offset`);
  const hasTime = value.includes('T');
  const date = new Date(hasTime && !offset ? `${value}Z` : value);
  if (Number.isNaN(date.getTime()) || date < EARLIEST || date > LATEST) return problem(`${shown} is outside the years 0001 to 9999 (UTC)`);
  return { ok: true, date };
}

/** parseDateTime, for callers that need only the date. */
export function parseTimestamp(value: unknown): Date | undefined {
  const parsed = parseDateTime(value);
  return parsed.ok ? parsed.date : undefined;
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
  const givenTimestamp = own(keen, 'timestamp');
  if (givenTimestamp !== undefined) {
    const parsed = parseDateTime(givenTimestamp);
    if (!parsed.ok) return fail('InvalidPropertyValueError', `keen.timestamp must be an ISO-8601 date-time string: ${parsed.problem}.`);
    timestamp = parsed.date;
  }

  let token: string | null = null;
  const givenToken = own(keen, 'uniqueness_token');
  if (givenToken !== undefined) {
    if (typeof givenToken !== 'string' || givenToken.length === 0 || givenToken.length > LIMITS.uniquenessToken) {
      return fail('InvalidPropertyValueError', `keen.uniqueness_token must be a string of 1 to ${LIMITS.uniquenessToken} characters.`);
    }
    token = givenToken;
  }

  const addons = own(keen, 'addons') ?? [];
  if (!Array.isArray(addons)) return fail('InvalidPropertyValueError', 'keen.addons must be an array.');
  const id = newKeenId(now);
  const enriched: Record<string, unknown> = { ...keen, timestamp: timestamp.toISOString(), created_at: now.toISOString(), id };
  delete enriched.addons;
  Object.defineProperty(stored, 'keen', { value: enriched, enumerable: true, writable: true, configurable: true });

  const unknownAddons: string[] = [];
  for (const [index, addon] of addons.entries()) {
    const name = isObject(addon) ? own(addon, 'name') : undefined;
    if (!isObject(addon) || typeof name !== 'string')
      return fail('InvalidPropertyValueError', `keen.addons[${index}] must be an object with a "name".`);
    if (name !== DATE_TIME_PARSER) {
      unknownAddons.push(name);
      continue;
    }
    const addonInput = own(addon, 'input');
    const input = isObject(addonInput) ? own(addonInput, 'date_time') : undefined;
    if (typeof input !== 'string' || input.length === 0)
      return fail('InvalidPropertyValueError', `${DATE_TIME_PARSER} needs input.date_time naming a property (e.g. "keen.timestamp").`);
    const output = own(addon, 'output');
    if (typeof output !== 'string' || output.length === 0)
      return fail('InvalidPropertyValueError', `${DATE_TIME_PARSER} needs an output property name (e.g. "timestamp.info").`);
    const outputPath = output.split('.');
    const outputProblem = outputPath.map((key) => propertyNameProblem(key, `${DATE_TIME_PARSER} output`)).find(Boolean);
    if (outputProblem) return fail('InvalidPropertyNameError', outputProblem);
    if (outputPath[0] === 'keen') return fail('InvalidPropertyValueError', `${DATE_TIME_PARSER} may not write inside "keen".`);
    const date = parseDateTime(getPath(stored, input.split('.')));
    if (!date.ok)
      return fail(
        'InvalidPropertyValueError',
        `${DATE_TIME_PARSER}: input "${input}" is not an ISO-8601 date-time in this event (${date.problem}).`,
      );
    const problem = setPath(stored, outputPath, dateTimeInfo(date.date));
    if (problem) return fail('InvalidPropertyValueError', `${DATE_TIME_PARSER} cannot write "${output}": ${problem}.`);
  }
  return { ok: true, value: { id, collection, timestamp, createdAt: now, token, event: stored, unknownAddons } };
}
