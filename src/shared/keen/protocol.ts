/**
 * Keen's write protocol, defined once for every part that sends or receives events (the
 * worker's client and batcher, keen-sink, the test fake, the bench's recorder): its endpoints,
 * its limits, its rules for collection and property names, for the `keen` envelope and its
 * add-ons, and for date-times. Pure: every check returns a discriminated union and never throws,
 * whatever it is given.
 */
import { DATE_TIME_PARSER_NAME } from './envelope.js';
import { KEEN_EVENT_ERRORS, type KeenEventErrorName } from './errors.js';

export const KEEN_LIMITS = {
  /** One event, as JSON bytes. */
  eventBytes: 900_000,
  /** One bulk request, as bytes. */
  bulkBytes: 10 * 1024 * 1024,
  collectionName: 64,
  propertyName: 256,
  uniquenessToken: 64,
} as const;

/** A 413's sentence, for a body found over a limit before it is read to the end. */
export const TOO_LARGE = {
  event: `An event may be at most ${KEEN_LIMITS.eventBytes} bytes.`,
  bulk: `A bulk request may be at most ${KEEN_LIMITS.bulkBytes} bytes.`,
} as const;

/** Keen keeps only the first event with a given `keen.uniqueness_token` per collection, for this long. */
export const UNIQUENESS_WINDOW_DAYS = 31;

/** Keen's answer to one event of a bulk request. */
export type KeenEventResult = { success: true } | { success: false; error: { name: string; description: string } };

/** Keen's answer to a bulk request: per collection, one result per event sent, in order. */
export type KeenBulkResults = Record<string, KeenEventResult[]>;

/** The write endpoints: bulk (`POST .../events`) without a collection, one event with one. */
export function eventsPath(projectId: string, collection?: string): string {
  const base = `/3.0/projects/${encodeURIComponent(projectId)}/events`;
  return collection === undefined ? base : `${base}/${encodeURIComponent(collection)}`;
}

const EVENTS_PATH = /^\/3\.0\/projects\/([^/]+)\/events(?:\/([^/]+))?\/?$/;

/** The project and (for the single-event endpoint) the collection a write path names, decoded. */
export type EventsPathMatch = { ok: true; projectId: string; collection?: string } | { ok: false };

export function matchEventsPath(pathname: string): EventsPathMatch {
  const match = EVENTS_PATH.exec(pathname);
  if (!match) return { ok: false };
  try {
    const projectId = decodeURIComponent(match[1]!);
    return match[2] === undefined ? { ok: true, projectId } : { ok: true, projectId, collection: decodeURIComponent(match[2]) };
  } catch {
    return { ok: false };
  }
}

/** Why Keen refuses an event: its name (Keen's) and a sentence for the sender. */
export interface KeenRefusal {
  name: KeenEventErrorName;
  description: string;
}

export type Checked<T> = { ok: true; value: T } | { ok: false; error: KeenRefusal };

const refuse = (name: KeenEventErrorName, description: string): { ok: false; error: KeenRefusal } => ({
  ok: false,
  error: { name, description },
});

const isObject = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value);

/** A property the object itself holds, never one it inherits: `__proto__` is data like any other. */
const own = (object: Record<string, unknown>, key: string): unknown => (Object.hasOwn(object, key) ? object[key] : undefined);

/**
 * What a store adds to Keen's rules (keen-sink: what PostgreSQL cannot hold). Each returns the
 * end of a sentence ("must not contain a NUL character") when it refuses.
 */
export interface StoreRules {
  /** Every collection and property name. */
  name?: (name: string) => string | undefined;
  /** Every value that is not an object or an array. */
  value?: (value: unknown) => string | undefined;
  /** Deeper nesting than this is refused (a store that bounds its stack). */
  maxDepth?: number;
}

export function checkCollectionName(name: unknown, rules: StoreRules = {}): Checked<string> {
  const invalid = (description: string) => refuse(KEEN_EVENT_ERRORS.collectionName, description);
  if (typeof name !== 'string') return invalid('Collection names must be strings.');
  if (name.length === 0) return invalid('Collection names must not be empty.');
  if (name.length > KEEN_LIMITS.collectionName)
    return invalid(
      `Collection names must be at most ${KEEN_LIMITS.collectionName} characters: "${name.slice(0, 80)}..." has ${name.length}.`,
    );
  if (name.startsWith('$')) return invalid(`Collection names must not start with "$": "${name}".`);
  const problem = rules.name?.(name);
  if (problem) return invalid(`Collection names ${problem}.`);
  return { ok: true, value: name };
}

/** Keen's rule for property names, as a yes or no: no `.`, no leading `$`, at most 256 characters. */
export function isKeenPropertyName(name: string): boolean {
  return name.length <= KEEN_LIMITS.propertyName && name[0] !== '$' && !name.includes('.');
}

/** Why `name`, found at `where`, is not a property name Keen (and the store) accepts, or undefined. */
function propertyNameProblem(name: string, where: string, rules: StoreRules): string | undefined {
  const shown = name.length > 80 ? `${name.slice(0, 80)}...` : name;
  if (name.includes('.')) return `Property names must not contain ".": "${shown}" at ${where}.`;
  if (name.startsWith('$')) return `Property names must not start with "$": "${shown}" at ${where}.`;
  if (name.length > KEEN_LIMITS.propertyName)
    return `Property names must be at most ${KEEN_LIMITS.propertyName} characters: "${shown}" at ${where} has ${name.length}.`;
  const problem = rules.name?.(name);
  if (problem) return `Property names ${problem} (at ${where}).`;
  return undefined;
}

export function checkPropertyName(name: string, where = 'the top level', rules: StoreRules = {}): Checked<string> {
  const problem = propertyNameProblem(name, where, rules);
  return problem ? refuse(KEEN_EVENT_ERRORS.propertyName, problem) : { ok: true, value: name };
}

export function checkEventSize(bytes: number, maxBytes: number = KEEN_LIMITS.eventBytes): Checked<number> {
  if (bytes <= maxBytes) return { ok: true, value: bytes };
  return refuse(KEEN_EVENT_ERRORS.tooLarge, `An event may be at most ${maxBytes} bytes as JSON; this one has ${bytes}.`);
}

/**
 * A bulk request's body: an object of collection names to arrays of events, as its entries.
 * Anything else is refused as a whole (a 400), before any event is looked at.
 */
export function checkBulkBody(body: unknown): Checked<Array<[string, unknown[]]>> {
  if (!isObject(body)) return refuse(KEEN_EVENT_ERRORS.event, 'A bulk request body must be an object of {collection: [events]}.');
  const entries = Object.entries(body);
  for (const [collection, events] of entries) {
    if (!Array.isArray(events))
      return refuse(KEEN_EVENT_ERRORS.event, `The value for collection "${collection.slice(0, 80)}" must be an array of events.`);
  }
  return { ok: true, value: entries as Array<[string, unknown[]]> };
}

// ---------------------------------------------------------------------------------------------
// Date-times
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// One event
// ---------------------------------------------------------------------------------------------

/** An add-on an event asks for; `dateTime` is set for `keen:date_time_parser`, whose paths are checked. */
export interface CheckedAddon {
  name: string;
  dateTime?: {
    /** The property it reads, e.g. `keen.timestamp`. */
    input: string;
    /** The property it writes, e.g. `timestamp.info`. */
    output: string;
  };
}

/** What a valid event's `keen` asks for. */
export interface CheckedEnvelope {
  /** `keen.timestamp`, when the event has one. */
  timestamp?: Date;
  /** `keen.uniqueness_token`, when the event has one. */
  uniquenessToken?: string;
  addons: CheckedAddon[];
  /** The event's size as JSON. */
  bytes: number;
}

export interface CheckEventOptions {
  /** The event's size as JSON, when the caller has measured it (it is measured otherwise). */
  bytes?: number;
  /** Larger events are refused (default: Keen's 900,000 bytes). */
  maxBytes?: number;
  rules?: StoreRules;
}

/**
 * Checks one event as Keen does: a JSON object; every property name, at any depth, valid; a
 * root `keen`, if any, that is an object, with an ISO-8601 `keen.timestamp`, a
 * `keen.uniqueness_token` of 1 to 64 characters and `keen.addons` an array of named add-ons
 * (`keen:date_time_parser` with an input and an output outside `keen`); at most 900,000 bytes.
 * The walk is iterative, so no nesting can overflow the stack.
 */
export function checkEvent(event: unknown, options: CheckEventOptions = {}): Checked<CheckedEnvelope> {
  const rules = options.rules ?? {};
  if (!isObject(event)) return refuse(KEEN_EVENT_ERRORS.event, 'An event must be a JSON object.');
  const treeProblem = checkTree(event, rules);
  if (treeProblem) return { ok: false, error: treeProblem };
  const envelope = checkEnvelope(Object.hasOwn(event, 'keen') ? event.keen : {}, rules);
  if (!envelope.ok) return envelope;
  let bytes = options.bytes;
  if (bytes === undefined) {
    try {
      bytes = Buffer.byteLength(JSON.stringify(event));
    } catch (err) {
      return refuse(KEEN_EVENT_ERRORS.event, `The event cannot be serialized as JSON: ${(err as Error).message}.`);
    }
  }
  const size = checkEventSize(bytes, options.maxBytes);
  if (!size.ok) return size;
  return { ok: true, value: { ...envelope.value, bytes } };
}

/** Walks the event without recursion, checking every property name and, with `rules`, every value. */
function checkTree(event: Record<string, unknown>, rules: StoreRules): KeenRefusal | undefined {
  const { maxDepth = Infinity } = rules;
  const stack: Array<{ value: unknown; where: string; depth: number }> = [{ value: event, where: '(root)', depth: 0 }];
  while (stack.length > 0) {
    const { value, where, depth } = stack.pop()!;
    if (depth > maxDepth) return { name: KEEN_EVENT_ERRORS.propertyValue, description: `Events may nest at most ${maxDepth} levels deep.` };
    if (Array.isArray(value)) {
      value.forEach((item, index) => stack.push({ value: item, where: `${where}[${index}]`, depth: depth + 1 }));
    } else if (isObject(value)) {
      for (const [key, child] of Object.entries(value)) {
        const problem = propertyNameProblem(key, where === '(root)' ? 'the top level' : where, rules);
        if (problem) return { name: KEEN_EVENT_ERRORS.propertyName, description: problem };
        stack.push({ value: child, where: where === '(root)' ? key : `${where}.${key}`, depth: depth + 1 });
      }
    } else if (rules.value) {
      const problem = rules.value(value);
      if (problem) return { name: KEEN_EVENT_ERRORS.propertyValue, description: `${problem} (at ${where}).` };
    }
  }
  return undefined;
}

function checkEnvelope(keen: unknown, rules: StoreRules): Checked<Omit<CheckedEnvelope, 'bytes'>> {
  const invalid = (description: string) => refuse(KEEN_EVENT_ERRORS.propertyValue, description);
  if (!isObject(keen)) return invalid('The root "keen" property must be an object.');
  const envelope: Omit<CheckedEnvelope, 'bytes'> = { addons: [] };

  const timestamp = own(keen, 'timestamp');
  if (timestamp !== undefined) {
    const parsed = parseDateTime(timestamp);
    if (!parsed.ok) return invalid(`keen.timestamp must be an ISO-8601 date-time string: ${parsed.problem}.`);
    envelope.timestamp = parsed.date;
  }

  const token = own(keen, 'uniqueness_token');
  if (token !== undefined) {
    if (typeof token !== 'string' || token.length === 0 || token.length > KEEN_LIMITS.uniquenessToken)
      return invalid(`keen.uniqueness_token must be a string of 1 to ${KEEN_LIMITS.uniquenessToken} characters.`);
    envelope.uniquenessToken = token;
  }

  const addons = own(keen, 'addons') ?? [];
  if (!Array.isArray(addons)) return invalid('keen.addons must be an array.');
  for (const [index, addon] of addons.entries()) {
    const name = isObject(addon) ? own(addon, 'name') : undefined;
    if (!isObject(addon) || typeof name !== 'string') return invalid(`keen.addons[${index}] must be an object with a "name".`);
    if (name !== DATE_TIME_PARSER_NAME) {
      envelope.addons.push({ name });
      continue;
    }
    const addonInput = own(addon, 'input');
    const input = isObject(addonInput) ? own(addonInput, 'date_time') : undefined;
    if (typeof input !== 'string' || input.length === 0)
      return invalid(`${DATE_TIME_PARSER_NAME} needs input.date_time naming a property (e.g. "keen.timestamp").`);
    const output = own(addon, 'output');
    if (typeof output !== 'string' || output.length === 0)
      return invalid(`${DATE_TIME_PARSER_NAME} needs an output property name (e.g. "timestamp.info").`);
    const outputPath = output.split('.');
    const outputProblem = outputPath.map((key) => propertyNameProblem(key, `${DATE_TIME_PARSER_NAME} output`, rules)).find(Boolean);
    if (outputProblem) return refuse(KEEN_EVENT_ERRORS.propertyName, outputProblem);
    if (outputPath[0] === 'keen') return invalid(`${DATE_TIME_PARSER_NAME} may not write inside "keen".`);
    envelope.addons.push({ name, dateTime: { input, output } });
  }
  return { ok: true, value: envelope };
}
