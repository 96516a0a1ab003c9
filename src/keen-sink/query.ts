/**
 * Keen's query API over the events table: parameters are parsed and checked here, then turned
 * into ONE parameterised SQL statement. Nothing a user sends is ever spliced into SQL text:
 * property paths travel as text[] bind parameters used with `#>`, values as jsonb parameters,
 * and operators are looked up in a fixed table. Timeframes filter the indexed keen_timestamp
 * column; `eq` filters become jsonb containment, which the GIN index on the event serves, or,
 * on device_id, equality on its expression index. count_unique and select_unique of device_id
 * read an hourly rollup (see "fast paths"); every fast path answers exactly what the plain SQL does.
 */
import type pg from 'pg';
import { unstorableText } from '../shared/text.js';
import { DEFAULT_KEEN_SINK_MAX_RESULT_BYTES } from '../shared/config.js';
import { EARLIEST, LATEST, parseDateTime } from '../shared/keen/protocol.js';
import { MAX_DEPTH, own } from './events.js';
import { fixedOffset, fromWallClock, parseTimeZone, toWallClock, type TimeZone } from './timezone.js';

export const ANALYSES = [
  'count',
  'count_unique',
  'select_unique',
  'sum',
  'minimum',
  'maximum',
  'average',
  'median',
  'percentile',
  'extraction',
] as const;
export type Analysis = (typeof ANALYSES)[number];

export const isAnalysis = (value: string): value is Analysis => (ANALYSES as readonly string[]).includes(value);

/** A bad query: answered 400 with Keen's `{message, error_code}`. */
export class QueryError extends Error {
  override name = 'QueryError';
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

type Unit = 'minute' | 'hour' | 'day' | 'week' | 'month' | 'year';
const INTERVALS: Record<string, Unit> = {
  minutely: 'minute',
  hourly: 'hour',
  daily: 'day',
  weekly: 'week',
  monthly: 'month',
  yearly: 'year',
};
/** Keen caps a series at 2,500 intervals. */
export const MAX_INTERVALS = 2500;
/** Largest synchronous extraction. */
export const MAX_EXTRACTION = 100_000;
/** Filters per query, and names per extraction's property_names: far above any real query, low enough to bound the work. */
export const MAX_FILTERS = 100;
export const MAX_PROPERTY_NAMES = 100;

const OPERATORS = ['eq', 'ne', 'lt', 'lte', 'gt', 'gte', 'exists', 'in', 'contains'] as const;
type Operator = (typeof OPERATORS)[number];

interface Filter {
  path: string[];
  operator: Operator;
  value: unknown;
}

export interface Timeframe {
  start: Date;
  end: Date;
}

export interface ParsedQuery {
  analysis: Analysis;
  collection: string;
  target?: string[];
  timeframe?: Timeframe;
  filters: Filter[];
  groupBy: Array<{ name: string; path: string[] }>;
  /** n+1 boundaries of n intervals. */
  intervals?: Date[];
  latest?: number;
  propertyNames?: string[][];
  /** percentile only: 0 to 100. median is the 50th. */
  percentile?: number;
}

export const isObject = (value: unknown): value is Record<string, unknown> =>
  typeof value === 'object' && value !== null && !Array.isArray(value);

/** GET parameters arrive as strings; structured ones are JSON. POST bodies are JSON already. */
export function structured(name: string, value: unknown, openers = '[{'): unknown {
  if (typeof value !== 'string') return value;
  const trimmed = value.trim();
  if (!openers.includes(trimmed.charAt(0)) || trimmed.length === 0) return value;
  try {
    return JSON.parse(trimmed);
  } catch {
    throw new QueryError('InvalidParameterError', `${name} is not valid JSON.`);
  }
}

export function propertyPath(name: unknown, what: string): string[] {
  if (typeof name !== 'string' || name.length === 0)
    throw new QueryError('InvalidParameterError', `${what} must be a non-empty property name (nested names use ".", e.g. "state.on").`);
  const text = unstorableText(name);
  if (text) throw new QueryError('InvalidParameterError', `${what} contains ${text}, which no stored property name can.`);
  const path = name.split('.');
  if (path.some((key) => key.length === 0))
    throw new QueryError('InvalidParameterError', `${what} "${name.slice(0, 80)}" has an empty segment.`);
  if (path.length > MAX_DEPTH)
    throw new QueryError('InvalidParameterError', `${what} has ${path.length} segments; events nest at most ${MAX_DEPTH} levels deep.`);
  return path;
}

/** A filter value is compared with stored JSON: it must be JSON PostgreSQL can hold, as shallow as a stored event. */
function valueProblem(root: unknown): string | undefined {
  const stack: Array<[unknown, number]> = [[root, 0]];
  while (stack.length > 0) {
    const [value, depth] = stack.pop()!;
    if (depth > MAX_DEPTH) return `nests deeper than ${MAX_DEPTH} levels`;
    if (typeof value === 'string') {
      const text = unstorableText(value);
      if (text) return `contains ${text}`;
    } else if (typeof value === 'number' && !Number.isFinite(value)) {
      return 'holds a number too large for a double';
    } else if (typeof value === 'object' && value !== null) {
      for (const [key, child] of Object.entries(value)) {
        const text = unstorableText(key);
        if (text) return `has a key that contains ${text}`;
        stack.push([child, depth + 1]);
      }
    }
  }
  return undefined;
}

// ---- time -------------------------------------------------------------------------------
// Relative timeframes and intervals of a day or longer are computed on the wall clock of
// `timezone` (UTC by default; see timezone.ts), then mapped back to instants.

function floorTo(date: Date, unit: Unit): Date {
  const d = new Date(date.getTime());
  switch (unit) {
    case 'year':
      return new Date(Date.UTC(d.getUTCFullYear(), 0, 1));
    case 'month':
      return new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), 1));
    case 'week': // weeks start on Sunday, as in Keen's US-centric calendar
      return new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate() - d.getUTCDay()));
    case 'day':
      return new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()));
    case 'hour':
      d.setUTCMinutes(0, 0, 0);
      return d;
    case 'minute':
      d.setUTCSeconds(0, 0);
      return d;
  }
}

const FIXED_MS: Partial<Record<Unit, number>> = { minute: 60_000, hour: 3_600_000, day: 86_400_000, week: 7 * 86_400_000 };

/** `date` plus `n` units; months and years keep the day of month where it exists (Jan 31 + 1 month = Feb 28/29). */
function addUnits(date: Date, unit: Unit, n: number): Date {
  const fixed = FIXED_MS[unit];
  if (fixed) return new Date(date.getTime() + n * fixed);
  const months = unit === 'year' ? 12 * n : n;
  const year = date.getUTCFullYear();
  const month = date.getUTCMonth() + months;
  const lastDay = new Date(Date.UTC(year, month + 1, 0)).getUTCDate();
  const result = new Date(date.getTime());
  result.setUTCFullYear(year, month, Math.min(date.getUTCDate(), lastDay));
  return result;
}

const RELATIVE = /^(this|previous)(?:_(\d{1,6}))?_(minute|hour|day|week|month|year)s?$/;

/** `zone` as a number is an offset in seconds east of UTC. */
export function parseTimeframe(raw: unknown, now: Date, zone: TimeZone | number): Timeframe {
  const tz = typeof zone === 'number' ? fixedOffset(zone) : zone;
  const value = structured('timeframe', raw);
  if (isObject(value)) {
    const instant = (name: 'start' | 'end') => {
      const parsed = parseDateTime(own(value, name));
      if (!parsed.ok)
        throw new QueryError(
          'TimeframeDefinitionError',
          `An absolute timeframe needs "start" and "end" as ISO-8601 date-times: "${name}" is wrong, ${parsed.problem}.`,
        );
      return parsed.date;
    };
    const start = instant('start');
    const end = instant('end');
    if (start >= end) throw new QueryError('TimeframeDefinitionError', 'The timeframe "start" must be before its "end".');
    return { start, end };
  }
  if (typeof value !== 'string')
    throw new QueryError('TimeframeDefinitionError', 'timeframe must be a relative timeframe (e.g. "this_14_days") or {"start", "end"}.');
  const name = value === 'today' ? 'this_day' : value === 'yesterday' ? 'previous_day' : value;
  const match = RELATIVE.exec(name);
  if (!match)
    throw new QueryError(
      'TimeframeDefinitionError',
      `Unknown timeframe "${value.slice(0, 80)}": use this_N_units or previous_N_units (minutes, hours, days, weeks, months, years), or {"start", "end"}.`,
    );
  const [, kind, count = '1', unit] = match as unknown as [string, 'this' | 'previous', string | undefined, Unit];
  const n = Number(count);
  if (n < 1) throw new QueryError('TimeframeDefinitionError', 'A relative timeframe needs at least 1 unit.');
  const localNow = toWallClock(tz, now);
  const current = floorTo(localNow, unit);
  // this_N_units: the current (partial) unit and the N-1 before it, up to now.
  // previous_N_units: the N complete units before the current one.
  const startLocal = kind === 'this' ? addUnits(current, unit, -(n - 1)) : addUnits(current, unit, -n);
  const timeframe = { start: fromWallClock(tz, startLocal), end: kind === 'this' ? now : fromWallClock(tz, current) };
  // NaN (beyond JavaScript's dates) fails these comparisons too.
  if (!(timeframe.start >= EARLIEST && timeframe.end <= LATEST)) {
    throw new QueryError('TimeframeDefinitionError', `${value.slice(0, 80)} reaches outside the years 0001 to 9999: use fewer ${unit}s.`);
  }
  return timeframe;
}

export function intervalBoundaries(timeframe: Timeframe, unit: Unit, zone: TimeZone | number): Date[] {
  const tz = typeof zone === 'number' ? fixedOffset(zone) : zone;
  // Minutes and hours are fixed lengths of real time; days and longer follow the wall clock, so
  // a daily interval across a daylight-saving change lasts 23 or 25 hours.
  const fixed = unit === 'minute' || unit === 'hour';
  const startLocal = toWallClock(tz, timeframe.start);
  const boundaries = [timeframe.start];
  for (let k = 1; boundaries[boundaries.length - 1]! < timeframe.end; k += 1) {
    if (k > MAX_INTERVALS)
      throw new QueryError(
        'InvalidIntervalError',
        `That timeframe holds more than ${MAX_INTERVALS} ${unit}s: use a longer interval or a shorter timeframe.`,
      );
    const boundary = fixed ? addUnits(timeframe.start, unit, k) : fromWallClock(tz, addUnits(startLocal, unit, k));
    if (!(boundary <= LATEST))
      throw new QueryError(
        'InvalidIntervalError',
        `The last ${unit} of that timeframe ends after the year 9999: end the timeframe earlier.`,
      );
    boundaries.push(boundary);
  }
  return boundaries;
}

export function parseTimezone(raw: unknown): TimeZone {
  const parsed = parseTimeZone(raw);
  if (!parsed.ok) throw new QueryError('InvalidTimezoneError', parsed.message);
  return parsed.zone;
}

// ---- parameters -------------------------------------------------------------------------

function parseFilters(raw: unknown): Filter[] {
  if (raw === undefined || raw === null || raw === '') return [];
  const value = structured('filters', raw);
  if (!Array.isArray(value))
    throw new QueryError('FilterDefinitionError', 'filters must be a JSON array of {property_name, operator, property_value}.');
  if (value.length > MAX_FILTERS) throw new QueryError('FilterDefinitionError', `A query takes at most ${MAX_FILTERS} filters.`);
  return value.map((item, index) => {
    if (!isObject(item)) throw new QueryError('FilterDefinitionError', `filters[${index}] must be an object.`);
    const path = propertyPath(own(item, 'property_name'), `filters[${index}].property_name`);
    const operator = own(item, 'operator');
    if (typeof operator !== 'string' || !(OPERATORS as readonly string[]).includes(operator)) {
      throw new QueryError('FilterDefinitionError', `filters[${index}].operator must be one of ${OPERATORS.join(', ')}.`);
    }
    if (!Object.hasOwn(item, 'property_value')) throw new QueryError('FilterDefinitionError', `filters[${index}] needs a property_value.`);
    let value = item.property_value;
    const problem = valueProblem(value);
    if (problem) throw new QueryError('FilterDefinitionError', `filters[${index}].property_value ${problem}.`);
    switch (operator as Operator) {
      case 'exists':
        if (value === 'true' || value === 'false') value = value === 'true';
        if (typeof value !== 'boolean') throw new QueryError('FilterDefinitionError', `filters[${index}]: "exists" takes true or false.`);
        break;
      case 'in':
        if (!Array.isArray(value)) throw new QueryError('FilterDefinitionError', `filters[${index}]: "in" takes an array of values.`);
        break;
      case 'lt':
      case 'lte':
      case 'gt':
      case 'gte':
        if (typeof value !== 'number' && typeof value !== 'string')
          throw new QueryError('FilterDefinitionError', `filters[${index}]: "${operator}" compares with a number or a string.`);
        break;
      case 'contains':
        if (value === null || typeof value === 'object')
          throw new QueryError('FilterDefinitionError', `filters[${index}]: "contains" takes a string (or an array element).`);
        break;
      default:
        break;
    }
    return { path, operator: operator as Operator, value };
  });
}

function parseGroupBy(raw: unknown): ParsedQuery['groupBy'] {
  if (raw === undefined || raw === null || raw === '') return [];
  const value = structured('group_by', raw, '['); // a plain name may start with {
  const names = Array.isArray(value) ? value : [value];
  if (names.length === 0 || names.length > 10) throw new QueryError('InvalidParameterError', 'group_by takes 1 to 10 property names.');
  return names.map((name, index) => ({ name: name as string, path: propertyPath(name, `group_by[${index}]`) }));
}

function parsePercentile(raw: unknown): number {
  if (raw === undefined || raw === null || raw === '')
    throw new QueryError('MissingRequiredParameterError', 'percentile is required for percentile: a number from 0 to 100 (e.g. 95).');
  const value = typeof raw === 'string' ? Number(raw) : raw;
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0 || value > 100) {
    throw new QueryError('InvalidParameterError', 'percentile must be a number from 0 to 100 (e.g. 95 or 99.9).');
  }
  return value;
}

export function parseQuery(analysis: Analysis, params: Record<string, unknown>, now = new Date()): ParsedQuery {
  const param = (name: string) => own(params, name);
  const collection = param('event_collection');
  if (typeof collection !== 'string' || collection.length === 0)
    throw new QueryError('MissingRequiredParameterError', 'event_collection is required.');
  const collectionText = unstorableText(collection);
  if (collectionText)
    throw new QueryError('InvalidParameterError', `event_collection contains ${collectionText}, which no collection name can.`);
  const zone = parseTimezone(param('timezone'));
  const query: ParsedQuery = { analysis, collection, filters: parseFilters(param('filters')), groupBy: parseGroupBy(param('group_by')) };
  if (analysis !== 'count' && analysis !== 'extraction') {
    if (param('target_property') === undefined || param('target_property') === '')
      throw new QueryError('MissingRequiredParameterError', `target_property is required for ${analysis}.`);
    query.target = propertyPath(param('target_property'), 'target_property');
  }
  if (analysis === 'median') query.percentile = 50;
  if (analysis === 'percentile') query.percentile = parsePercentile(param('percentile'));
  if (param('timeframe') !== undefined && param('timeframe') !== '') query.timeframe = parseTimeframe(param('timeframe'), now, zone);
  if (param('interval') !== undefined && param('interval') !== '') {
    const interval = param('interval');
    const unit = typeof interval === 'string' && Object.hasOwn(INTERVALS, interval) ? INTERVALS[interval] : undefined;
    if (!unit) throw new QueryError('InvalidIntervalError', `interval must be one of ${Object.keys(INTERVALS).join(', ')}.`);
    if (!query.timeframe) throw new QueryError('InvalidIntervalError', 'An interval needs a timeframe.');
    query.intervals = intervalBoundaries(query.timeframe, unit, zone);
  }
  if (analysis === 'extraction') {
    if (query.groupBy.length > 0 || query.intervals)
      throw new QueryError('InvalidParameterError', 'extraction takes neither group_by nor interval.');
    if (param('latest') !== undefined && param('latest') !== '') {
      const latest = Number(param('latest'));
      if (!Number.isInteger(latest) || latest < 1 || latest > MAX_EXTRACTION)
        throw new QueryError('InvalidParameterError', `latest must be an integer from 1 to ${MAX_EXTRACTION}.`);
      query.latest = latest;
    }
    if (param('property_names') !== undefined && param('property_names') !== '') {
      const names = structured('property_names', param('property_names'));
      if (!Array.isArray(names) || names.length === 0)
        throw new QueryError('InvalidParameterError', 'property_names must be a JSON array of property names.');
      if (names.length > MAX_PROPERTY_NAMES)
        throw new QueryError('InvalidParameterError', `property_names takes at most ${MAX_PROPERTY_NAMES} names.`);
      query.propertyNames = names.map((name, index) => propertyPath(name, `property_names[${index}]`));
    }
    if (param('email') !== undefined)
      throw new QueryError('InvalidParameterError', 'keen-sink answers extractions synchronously only: drop "email".');
  }
  return query;
}

// ---- SQL --------------------------------------------------------------------------------

export class Statement {
  readonly values: unknown[] = [];
  /** false: the plain SQL, which no fast path shapes (tests and the bench compare the two). */
  constructor(readonly fast = true) {}
  /** A bind parameter with an explicit type; the SQL text only ever holds `$n::type`. */
  param(value: unknown, type: 'text' | 'text[]' | 'jsonb' | 'timestamptz' | 'timestamptz[]' | 'int' | 'boolean' | 'float8'): string {
    this.values.push(value);
    return `$${this.values.length}::${type}`;
  }
}

/** {"a": {"b": value}} for path [a, b]: what `eq` looks for with `@>`. */
function containment(path: string[], value: unknown): string {
  return path.reduceRight((inner, key) => `{${JSON.stringify(key)}:${inner}}`, JSON.stringify(value));
}

// ---- fast paths -------------------------------------------------------------------------
// The seed's queries name device_id: `eq` filters on it, and count_unique/select_unique of it.
// Migration 20261203120000_keen_query_speed indexes `event -> 'device_id'` (the expression must
// be spelled here exactly as there for PostgreSQL to use the index) and keeps the rollup
// keen_property_hours: one row per project, collection, value and UTC hour that holds an event.

/** Top-level properties with an expression index (project_id, collection, (event -> name), keen_timestamp) and a rollup. */
export const INDEXED_PROPERTIES = ['device_id'] as const;
const indexed = (path: string[] | undefined): string | undefined =>
  path?.length === 1 ? INDEXED_PROPERTIES.find((name) => name === path[0]) : undefined;

/**
 * eq on an indexed property, in the form its indexes serve: equality on the indexed expression, or
 * (the partial index holds the rare events where it is an array) an array holding the value.
 * Exactly what the containment below answers. `name` is one of INDEXED_PROPERTIES, never input.
 */
function indexedEqSql(sql: Statement, name: string, value: unknown): string {
  const x = `(event -> '${name}')`;
  const scalar = sql.param(JSON.stringify(value), 'jsonb');
  return `(${x} = ${scalar} OR (jsonb_typeof(${x}) = 'array' AND ${x} @> ${sql.param(JSON.stringify([value]), 'jsonb')}))`;
}

function filterSql(sql: Statement, filter: Filter): string {
  const json = (value: unknown) => sql.param(JSON.stringify(value), 'jsonb');
  const name = indexed(filter.path);
  const scalar = filter.value === null || typeof filter.value !== 'object';
  if (sql.fast && name && filter.operator === 'eq' && scalar) return indexedEqSql(sql, name, filter.value);
  if (filter.operator === 'eq' && scalar && !filter.path.some((key) => /^\d+$/.test(key))) {
    // Scalars use containment, which the GIN index serves: {"p": v}, or {"p": [v]} so that on an
    // array property eq matches any element, as Keen's eq does. Containment cannot step into
    // arrays by index, so paths with numeric segments use plain equality below.
    const holdsValue = sql.param(containment(filter.path, filter.value), 'jsonb');
    const holdsElement = sql.param(containment(filter.path, [filter.value]), 'jsonb');
    return `(event @> ${holdsValue} OR event @> ${holdsElement})`;
  }
  const x = `(event #> ${sql.param(filter.path, 'text[]')})`;
  switch (filter.operator) {
    case 'eq':
      return `(${x} = ${json(filter.value)})`;
    case 'ne':
      return `(${x} IS DISTINCT FROM ${json(filter.value)})`;
    case 'lt':
    case 'lte':
    case 'gt':
    case 'gte': {
      const op = { lt: '<', lte: '<=', gt: '>', gte: '>=' }[filter.operator];
      // Only like with like: numbers with numbers, strings with strings.
      return `(jsonb_typeof(${x}) = ${sql.param(typeof filter.value === 'number' ? 'number' : 'string', 'text')} AND ${x} ${op} ${json(filter.value)})`;
    }
    case 'exists':
      // A property holding JSON null counts as absent.
      return filter.value ? `(jsonb_typeof(${x}) <> 'null')` : `(${x} IS NULL OR jsonb_typeof(${x}) = 'null')`;
    case 'in':
      return `(${x} IN (SELECT elements.value FROM jsonb_array_elements(${json(filter.value)}) AS elements))`;
    case 'contains': {
      const value = json(filter.value);
      const text =
        typeof filter.value === 'string'
          ? `(jsonb_typeof(${x}) = 'string' AND strpos(${x} #>> '{}', ${sql.param(filter.value, 'text')}) > 0) OR `
          : '';
      return `(${text}(jsonb_typeof(${x}) = 'array' AND ${x} @> jsonb_build_array(${value})))`;
    }
  }
}

export function whereSql(sql: Statement, projectId: string, query: ParsedQuery): string {
  const clauses = [`project_id = ${sql.param(projectId, 'text')}`, `collection = ${sql.param(query.collection, 'text')}`];
  if (query.timeframe) {
    clauses.push(`keen_timestamp >= ${sql.param(query.timeframe.start.toISOString(), 'timestamptz')}`);
    clauses.push(`keen_timestamp < ${sql.param(query.timeframe.end.toISOString(), 'timestamptz')}`);
  }
  for (const filter of query.filters) clauses.push(filterSql(sql, filter));
  return clauses.join('\n   AND ');
}

function aggregateSql(sql: Statement, query: ParsedQuery): string {
  if (query.analysis === 'count') return 'count(*)';
  const target = `(event #> ${sql.param(query.target, 'text[]')})`;
  const number = `(CASE WHEN jsonb_typeof(${target}) = 'number' THEN (${target})::numeric END)`;
  switch (query.analysis) {
    case 'count_unique':
      return `count(DISTINCT ${target}) FILTER (WHERE jsonb_typeof(${target}) <> 'null')`;
    case 'sum':
      return `coalesce(sum(${number}), 0)`;
    case 'minimum':
      return `min(${number})`;
    case 'maximum':
      return `max(${number})`;
    case 'average':
      return `avg(${number})`;
    case 'median':
    case 'percentile':
      // Interpolated between the two nearest values, as a median of an even count usually is.
      return `percentile_cont(${sql.param(query.percentile! / 100, 'float8')}) WITHIN GROUP (ORDER BY ${number})`;
    default:
      throw new Error(`no aggregate for ${query.analysis}`);
  }
}

export interface BuiltQuery {
  text: string;
  values: unknown[];
}

const HOUR_MS = 3_600_000;
const floorHour = (date: Date) => new Date(Math.floor(date.getTime() / HOUR_MS) * HOUR_MS);

/**
 * count_unique or select_unique of an indexed property, unfiltered and ungrouped, from the rollup:
 * each UTC hour that lies whole inside one interval (or the timeframe) is read from
 * keen_property_hours, and only the hours that a boundary cuts are read from keen_events. The
 * distinct values of an interval are the union of both, so the answer is the plain one exactly,
 * whatever the time zone or the boundaries.
 */
function rollupSql(projectId: string, query: ParsedQuery, name: string): BuiltQuery {
  const sql = new Statement();
  const project = sql.param(projectId, 'text');
  const collection = sql.param(query.collection, 'text');
  // The last interval may end after the timeframe, which is what bounds the events.
  const edges = query.timeframe ? [query.timeframe.start, query.timeframe.end] : [];
  const boundaries = [...(query.intervals ?? []), ...edges].sort((a, b) => a.getTime() - b.getTime());
  // Hours a boundary falls inside (not on), in order and once each: read from the events.
  const cut: Date[] = [];
  for (const boundary of boundaries) {
    const hour = floorHour(boundary);
    if (hour.getTime() !== boundary.getTime() && hour.getTime() !== cut[cut.length - 1]?.getTime()) cut.push(hour);
  }
  const hours = [`project_id = ${project}`, `collection = ${collection}`, `property = ${sql.param(name, 'text')}`];
  const events: string[] = [];
  if (query.timeframe) {
    const start = sql.param(query.timeframe.start.toISOString(), 'timestamptz');
    const end = sql.param(query.timeframe.end.toISOString(), 'timestamptz');
    const cutHours = sql.param(
      cut.map((d) => d.toISOString()),
      'timestamptz[]',
    );
    hours.push(`hour >= ${start}`, `hour + interval '1 hour' <= ${end}`, `hour <> ALL (${cutHours})`);
    events.push(`
 UNION ALL
SELECT e.value, e.at
  FROM unnest(${cutHours}) AS cut(hour),
       LATERAL (SELECT event -> '${name}' AS value, keen_timestamp AS at FROM keen_events
                 WHERE project_id = ${project} AND collection = ${collection}
                   AND keen_timestamp >= greatest(cut.hour, ${start})
                   AND keen_timestamp < least(cut.hour + interval '1 hour', ${end})) AS e`);
  }
  const seen = `SELECT value, hour AS at FROM keen_property_hours WHERE ${hours.join(' AND ')}${events.join('')}`;
  const bucket = query.intervals
    ? `width_bucket(at, ${sql.param(
        query.intervals.map((d) => d.toISOString()),
        'timestamptz[]',
      )})`
    : '1';
  // Distinct (value, interval) pairs first: hashing them is far cheaper than count(DISTINCT)'s sort.
  const distinct = `SELECT value, ${bucket} AS bucket FROM (${seen}) AS seen GROUP BY 1, 2`;
  const order = query.intervals ? 'bucket' : '';
  if (query.analysis === 'select_unique') {
    return {
      text: `SELECT value${order && ', bucket'} FROM (${distinct}) AS d\n ORDER BY ${order && 'bucket, '}value`,
      values: sql.values,
    };
  }
  const count = `count(*) FILTER (WHERE jsonb_typeof(value) <> 'null') AS value`;
  if (!order) return { text: `SELECT ${count} FROM (${distinct}) AS d`, values: sql.values };
  return { text: `SELECT ${count}, bucket FROM (${distinct}) AS d\n GROUP BY bucket ORDER BY bucket`, values: sql.values };
}

/** The SQL that answers `query`: a fast path where one applies (answers identical to buildSql's), else buildSql's. */
export function planSql(projectId: string, query: ParsedQuery): BuiltQuery {
  const name = indexed(query.target);
  const distinctOf = query.analysis === 'count_unique' || query.analysis === 'select_unique';
  if (name && distinctOf && query.filters.length === 0 && query.groupBy.length === 0) return rollupSql(projectId, query, name);
  return buildSql(projectId, query, true);
}

/** The plain SQL for `query`; `fast` lets its filters take the indexed forms. */
export function buildSql(projectId: string, query: ParsedQuery, fast = false): BuiltQuery {
  const sql = new Statement(fast);
  if (query.analysis === 'extraction') {
    const where = whereSql(sql, projectId, query);
    const limit = sql.param(query.latest ?? MAX_EXTRACTION + 1, 'int');
    const order = query.latest ? 'DESC' : 'ASC';
    return {
      text: `SELECT event FROM keen_events\n WHERE ${where}\n ORDER BY keen_timestamp ${order}, id ${order}\n LIMIT ${limit}`,
      values: sql.values,
    };
  }
  // select_unique answers one row per distinct value (folded into arrays by shapeResult), so
  // that its answer is read and bounded row by row instead of built whole in one jsonb_agg.
  const distinct = query.analysis === 'select_unique';
  const columns = [`${distinct ? `event #> ${sql.param(query.target, 'text[]')}` : aggregateSql(sql, query)} AS value`];
  query.groupBy.forEach((group, index) => columns.push(`event #> ${sql.param(group.path, 'text[]')} AS g${index}`));
  if (query.intervals)
    columns.push(
      `width_bucket(keen_timestamp, ${sql.param(
        query.intervals.map((d) => d.toISOString()),
        'timestamptz[]',
      )}) AS bucket`,
    );
  const where = whereSql(sql, projectId, query);
  // Ordinal positions of the grouping columns: fixed numbers, never user input.
  const grouping = columns.slice(1).map((_, index) => String(index + 2));
  if (distinct) grouping.push('1');
  const tail = grouping.length > 0 ? `\n GROUP BY ${grouping.join(', ')}\n ORDER BY ${grouping.join(', ')}` : '';
  return { text: `SELECT ${columns.join(', ')}\n  FROM keen_events\n WHERE ${where}${tail}`, values: sql.values };
}

// ---- results ----------------------------------------------------------------------------
// Rows arrive as PostgreSQL's text, unparsed (see readRows), and are parsed here.

/** Text PostgreSQL returned for one row: every column as text, SQL NULL as null. */
type Row = Record<string, string | null>;

/** An answer already serialized as JSON (an extraction's events, kept as PostgreSQL wrote them). */
export class JsonText {
  constructor(readonly text: string) {}
}

interface ResultRow {
  value: unknown;
  groups: unknown[];
  bucket: number | undefined;
}

const parseJsonText = (text: string | null | undefined): unknown => (text === null || text === undefined ? null : JSON.parse(text));

/** Defines an own property, whatever the key (`__proto__` included). */
function define(target: object, key: string, value: unknown): void {
  Object.defineProperty(target, key, { value, enumerable: true, writable: true, configurable: true });
}

export function emptyValue(analysis: Analysis): unknown {
  if (analysis === 'count' || analysis === 'count_unique' || analysis === 'sum') return 0;
  if (analysis === 'select_unique') return [];
  return null;
}

function toValue(analysis: Analysis, raw: unknown): unknown {
  if (raw === null || raw === undefined) return emptyValue(analysis);
  if (analysis === 'select_unique') return raw;
  return Number(raw);
}

/** The properties `paths` name, copied from `event` into a null-prototype object of the same shape. */
function pick(event: unknown, paths: string[][]): Record<string, unknown> {
  const out: Record<string, unknown> = Object.create(null);
  for (const path of paths) {
    let source: unknown = event;
    for (const key of path) source = isObject(source) ? own(source, key) : undefined;
    if (source === undefined) continue;
    let target = out;
    for (const key of path.slice(0, -1)) {
      const next = own(target, key);
      if (!isObject(next)) define(target, key, Object.create(null));
      target = own(target, key) as Record<string, unknown>;
    }
    define(target, path[path.length - 1]!, source);
  }
  return out;
}

function readRow(query: ParsedQuery, row: Row): ResultRow {
  return {
    value: query.analysis === 'select_unique' ? parseJsonText(row.value) : row.value,
    groups: query.groupBy.map((_, index) => parseJsonText(row[`g${index}`])),
    bucket: row.bucket === null || row.bucket === undefined ? undefined : Number(row.bucket),
  };
}

/** select_unique's rows (one per group, interval and distinct value, in order) as one row per group and interval, holding its values; null is no value. */
function foldDistinct(rows: ResultRow[]): ResultRow[] {
  const folded: ResultRow[] = [];
  let key: string | undefined;
  for (const row of rows) {
    const rowKey = JSON.stringify([row.groups, row.bucket ?? null]);
    if (rowKey !== key) {
      folded.push({ ...row, value: [] });
      key = rowKey;
    }
    if (row.value !== null) (folded[folded.length - 1]!.value as unknown[]).push(row.value);
  }
  return folded;
}

function groupedResult(query: ParsedQuery, rows: ResultRow[]): Array<Record<string, unknown>> {
  return rows.map((row) => {
    // Group names are the user's: a null-prototype entry keeps `__proto__` a plain key.
    const entry: Record<string, unknown> = Object.create(null);
    query.groupBy.forEach((group, index) => define(entry, group.name, row.groups[index] ?? null));
    entry.result = toValue(query.analysis, row.value);
    return entry;
  });
}

export function shapeResult(query: ParsedQuery, rawRows: Row[]): unknown {
  const parsed = rawRows.map((row) => readRow(query, row));
  const rows = query.analysis === 'select_unique' ? foldDistinct(parsed) : parsed;
  const single = (subset: ResultRow[]) =>
    query.groupBy.length > 0 ? groupedResult(query, subset) : toValue(query.analysis, subset[0]?.value);
  if (!query.intervals) return single(rows);
  const boundaries = query.intervals;
  const byBucket = new Map<number, ResultRow[]>();
  for (const row of rows) {
    const bucket = row.bucket ?? 0;
    const list = byBucket.get(bucket);
    if (list) list.push(row);
    else byBucket.set(bucket, [row]);
  }
  return boundaries.slice(0, -1).map((start, index) => ({
    value: single(byBucket.get(index + 1) ?? []),
    timeframe: { start: start.toISOString(), end: boundaries[index + 1]!.toISOString() },
  }));
}

// ---- reading ----------------------------------------------------------------------------

export interface RunOptions {
  /** The most one answer may hold, as JSON bytes; larger answers are refused with advice on paging. Default KEEN_SINK_MAX_RESULT_BYTES's. */
  maxResultBytes?: number;
  /** Answer with the plain SQL only, never a fast path: for tests and the bench, which compare the two. */
  plain?: boolean;
}

/** Each FETCH asks for about this many bytes of rows, judged by the rows read so far. */
const FETCH_BYTES = 1024 * 1024;
const MAX_FETCH_ROWS = 10_000;
/** Every column as PostgreSQL's text: nothing is parsed before it is counted and kept. */
const AS_TEXT = { getTypeParser: () => (value: string) => value };

/**
 * Runs `built` through a cursor and hands each row to `take`, which keeps what it needs and
 * returns the bytes that adds to the answer. Once the answer would pass `maxBytes`, the query is
 * cancelled (the cursor closes with the transaction) and `tooLarge` is thrown: what is held
 * never grows past the limit plus one FETCH, whatever matches.
 */
async function readRows(
  db: pg.Pool,
  built: BuiltQuery,
  maxBytes: number,
  tooLarge: () => Error,
  take: (row: Row) => number,
): Promise<void> {
  const client = await db.connect();
  let broken = false;
  try {
    await client.query('BEGIN READ ONLY');
    // Plan as for a plain query (the default 0.1 would favour fast first rows).
    await client.query('SET LOCAL cursor_tuple_fraction = 1');
    await client.query(`DECLARE answer NO SCROLL CURSOR FOR ${built.text}`, built.values);
    let bytes = 0;
    let rows = 0;
    let fetch = 16;
    for (;;) {
      const page = await client.query<Row>({ text: `FETCH ${fetch} FROM answer`, types: AS_TEXT });
      for (const row of page.rows) {
        bytes += take(row);
        rows += 1;
        if (bytes > maxBytes) throw tooLarge();
      }
      if (page.rows.length < fetch) break;
      fetch = Math.max(1, Math.min(MAX_FETCH_ROWS, Math.floor(FETCH_BYTES / Math.max(1, bytes / rows))));
    }
    await client.query('COMMIT');
  } catch (err) {
    await client.query('ROLLBACK').catch(() => {
      broken = true;
    });
    throw err;
  } finally {
    client.release(broken);
  }
}

const rowBytes = (row: Row) => Object.values(row).reduce((sum, text) => sum + (text === null ? 4 : Buffer.byteLength(text)), 0);

export async function runQuery(db: pg.Pool, projectId: string, query: ParsedQuery, options: RunOptions = {}): Promise<unknown> {
  const maxBytes = options.maxResultBytes ?? DEFAULT_KEEN_SINK_MAX_RESULT_BYTES;
  const built = options.plain ? buildSql(projectId, query) : planSql(projectId, query);
  if (query.analysis === 'extraction') {
    const events: string[] = [];
    const tooLarge = () =>
      new QueryError(
        'ResultTooLargeError',
        `The extraction holds more than ${maxBytes} bytes of events, this keen-sink's limit (KEEN_SINK_MAX_RESULT_BYTES): ` +
          'page through it with narrower timeframes (split it in halves, or in intervals), ' +
          'ask for the newest events only with "latest", or fewer properties with "property_names".',
      );
    await readRows(db, built, maxBytes, tooLarge, (row) => {
      if (events.length === MAX_EXTRACTION)
        throw new QueryError(
          'ExtractionTooLargeError',
          `More than ${MAX_EXTRACTION} events match: add "latest" or narrow the timeframe or filters.`,
        );
      const text = query.propertyNames ? JSON.stringify(pick(parseJsonText(row.event), query.propertyNames)) : row.event!;
      events.push(text);
      return Buffer.byteLength(text) + 1;
    });
    if (query.latest) events.reverse();
    return new JsonText(`[${events.join(',')}]`);
  }
  const rows: Row[] = [];
  // Each group's name is repeated in every entry of the answer.
  const namesBytes = query.groupBy.reduce((sum, group) => sum + Buffer.byteLength(group.name) + 4, 16);
  const tooLarge = () =>
    new QueryError(
      'ResultTooLargeError',
      `The answer holds more than ${maxBytes} bytes, this keen-sink's limit (KEEN_SINK_MAX_RESULT_BYTES): ` +
        'narrow the timeframe or filters, group by fewer properties, or use a longer interval.',
    );
  await readRows(db, built, maxBytes, tooLarge, (row) => {
    rows.push(row);
    return rowBytes(row) + namesBytes;
  });
  return shapeResult(query, rows);
}
