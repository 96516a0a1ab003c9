/**
 * The Keen features a web page's Keen clients use, spoken to by the real npm clients, unmodified:
 * events written with keen-tracking, queries made with keen-analysis's browser build (its fetch
 * transport; its Node build cannot reach plain HTTP), against keen-sink on real PostgreSQL.
 * Covers median, percentile, multi_analysis, funnel, include_metadata, named time zones and
 * CORS, each answer as Keen gives it.
 */
import { createRequire } from 'node:module';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createLogger } from '../../src/shared/logger.js';
import { intervalBoundaries, parseTimeframe } from '../../src/keen-sink/query.js';
import { startKeenSink, type KeenSink } from '../../src/keen-sink/server.js';
import { parseTimeZone } from '../../src/keen-sink/timezone.js';
import { createTestDatabase, type TestDatabase } from '../support/database.js';

const PROJECT = 'lampi-analyses';
const WRITE_KEY = 'analyses-write-key';
const READ_KEY = 'analyses-read-key';
const ALLOWED_ORIGIN = 'http://lamps.example.test:8000';

/** The parts of the clients' APIs used here (neither ships types). */
interface KeenTrackingClient {
  recordEvents(events: Record<string, object[]>): Promise<Record<string, Array<{ success: boolean }>>>;
}
interface KeenAnalysisClient {
  query(analysis: string, params: Record<string, unknown>): Promise<any>;
}
const load = createRequire(import.meta.url);
const KeenTracking = load('keen-tracking') as new (config: object) => KeenTrackingClient;
// keen-analysis's browser build expects a browser's globals; Node 20 has fetch itself.
Object.assign(globalThis, { window: globalThis, self: globalThis });
const KeenAnalysis = (load('keen-analysis/dist/keen-analysis.js') as { KeenAnalysis: new (config: object) => KeenAnalysisClient })
  .KeenAnalysis;

let database: TestDatabase;
let sink: KeenSink;
let corsSink: KeenSink;
let analysis: KeenAnalysisClient;
let tracking: KeenTrackingClient;

const suffix = randomBytes(3).toString('hex');
const ACTIVATIONS = `activations_${suffix}`;
const STATES = `devicestate_${suffix}`;
const MONITORING = `devicemonitoring_${suffix}`;
const DAY = 86_400_000;
/** Two whole UTC days of fixture events. */
const T0 = Date.parse('2026-11-02T00:00:00.000Z');
const at = (ms: number) => new Date(T0 + ms).toISOString();
const WHOLE = { start: at(0), end: at(2 * DAY) };
const event = (timestamp: string, properties: object) => ({ ...properties, keen: { timestamp } });

beforeAll(async () => {
  database = await createTestDatabase(inject('services').postgres, { migrate: false });
  const logger = createLogger('keen-sink', 'silent');
  const base = {
    databaseUrl: database.url,
    projectId: PROJECT,
    writeKey: WRITE_KEY,
    readKey: READ_KEY,
    port: 0,
    host: '127.0.0.1',
    logger,
  };
  sink = await startKeenSink(base);
  corsSink = await startKeenSink({ ...base, corsOrigins: [ALLOWED_ORIGIN] });
  tracking = new KeenTracking({
    projectId: PROJECT,
    writeKey: WRITE_KEY,
    protocol: 'http',
    host: '127.0.0.1',
    nodeRequestConfig: { port: sink.port },
  });
  analysis = new KeenAnalysis({ projectId: PROJECT, readKey: READ_KEY, protocol: 'http', host: `127.0.0.1:${sink.port}` });

  // Lamps a-d activated on day 1; a, b, c changed state (a and b turned on); a and d reconnected.
  const brightness = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
  const written = await tracking.recordEvents({
    [ACTIVATIONS]: ['lamp-a', 'lamp-b', 'lamp-c', 'lamp-d'].map((id, i) => event(at(i * 60_000), { device_id: id })),
    [STATES]: [
      ...brightness.map((b, i) =>
        event(at(3_600_000 + i * 60_000), { device_id: i < 6 ? 'lamp-a' : 'lamp-b', state: { on: true, brightness: b } }),
      ),
      event(at(DAY + 3_600_000), { device_id: 'lamp-c', state: { on: false, brightness: 20 } }),
    ],
    [MONITORING]: ['lamp-a', 'lamp-d'].map((id, i) => event(at(DAY + i * 60_000), { device_id: id, connected: true })),
  });
  expect(
    Object.values(written)
      .flat()
      .every((result) => result.success),
  ).toBe(true);
});

afterAll(async () => {
  await corsSink?.close();
  await sink?.close();
  await database?.drop();
});

describe('median and percentile', () => {
  it('answers the interpolated median and the asked percentile of a numeric property', async () => {
    const params = { event_collection: STATES, target_property: 'state.brightness', timeframe: WHOLE, timezone: 'UTC' };
    // 1..10 and 20: the median is the 6th value, 6.
    expect((await analysis.query('median', params)).result).toBe(6);
    expect((await analysis.query('percentile', { ...params, percentile: 90 })).result).toBe(10);
    expect((await analysis.query('percentile', { ...params, percentile: 25 })).result).toBe(3.5);
    // Without the off lamp: 1..10, whose median lies between 5 and 6.
    const on = [{ property_name: 'state.on', operator: 'eq', property_value: true }];
    expect((await analysis.query('median', { ...params, filters: on })).result).toBe(5.5);
  });

  it('groups and splits into intervals like every other analysis', async () => {
    const byLamp = await analysis.query('median', {
      event_collection: STATES,
      target_property: 'state.brightness',
      timeframe: WHOLE,
      group_by: 'device_id',
      timezone: 'UTC',
    });
    expect(byLamp.result).toEqual([
      { device_id: 'lamp-a', result: 3.5 },
      { device_id: 'lamp-b', result: 8.5 },
      { device_id: 'lamp-c', result: 20 },
    ]);
    const daily = await analysis.query('percentile', {
      event_collection: STATES,
      target_property: 'state.brightness',
      percentile: 50,
      timeframe: WHOLE,
      interval: 'daily',
      timezone: 'UTC',
    });
    expect(daily.result).toEqual([
      { value: 5.5, timeframe: { start: at(0), end: at(DAY) } },
      { value: 20, timeframe: { start: at(DAY), end: at(2 * DAY) } },
    ]);
  });

  it('refuses a percentile without, or outside 0-100, with 400', async () => {
    for (const percentile of [undefined, 101, -1, 'half']) {
      const failure = await analysis
        .query('percentile', { event_collection: STATES, target_property: 'state.brightness', percentile })
        .catch((err: unknown) => err);
      expect(failure, String(percentile)).toMatchObject({
        status: 400,
        error_code: expect.stringMatching(/^(MissingRequiredParameterError|InvalidParameterError)$/),
      });
    }
  });
});

describe('multi_analysis', () => {
  const analyses = {
    'state changes': { analysis_type: 'count' },
    lamps: { analysis_type: 'count_unique', target_property: 'device_id' },
    'mean brightness': { analysis_type: 'average', target_property: 'state.brightness' },
    p90: { analysis_type: 'percentile', target_property: 'state.brightness', percentile: 90 },
  };

  it('answers every labelled analysis in one result', async () => {
    const { result } = await analysis.query('multi_analysis', { event_collection: STATES, analyses, timeframe: WHOLE, timezone: 'UTC' });
    expect(result).toEqual({ 'state changes': 11, lamps: 3, 'mean brightness': expect.closeTo(75 / 11, 9), p90: 10 });
  });

  it('with group_by, one row per group holding every label', async () => {
    const { result } = await analysis.query('multi_analysis', {
      event_collection: STATES,
      analyses,
      timeframe: WHOLE,
      group_by: 'device_id',
      timezone: 'UTC',
    });
    expect(result).toEqual([
      { device_id: 'lamp-a', 'state changes': 6, lamps: 1, 'mean brightness': 3.5, p90: 5.5 },
      { device_id: 'lamp-b', 'state changes': 4, lamps: 1, 'mean brightness': 8.5, p90: expect.closeTo(9.7, 9) },
      { device_id: 'lamp-c', 'state changes': 1, lamps: 1, 'mean brightness': 20, p90: 20 },
    ]);
  });

  it('with an interval, each interval holds every label; with both, each interval holds groups', async () => {
    const daily = await analysis.query('multi_analysis', {
      event_collection: STATES,
      analyses: { n: { analysis_type: 'count' }, lamps: { analysis_type: 'count_unique', target_property: 'device_id' } },
      timeframe: WHOLE,
      interval: 'daily',
      timezone: 'UTC',
    });
    expect(daily.result).toEqual([
      { value: { n: 10, lamps: 2 }, timeframe: { start: at(0), end: at(DAY) } },
      { value: { n: 1, lamps: 1 }, timeframe: { start: at(DAY), end: at(2 * DAY) } },
    ]);
    const both = await analysis.query('multi_analysis', {
      event_collection: STATES,
      analyses: { n: { analysis_type: 'count' } },
      timeframe: WHOLE,
      interval: 'daily',
      group_by: ['state.on'],
      timezone: 'UTC',
    });
    expect(both.result).toEqual([
      { value: [{ 'state.on': true, n: 10 }], timeframe: { start: at(0), end: at(DAY) } },
      { value: [{ 'state.on': false, n: 1 }], timeframe: { start: at(DAY), end: at(2 * DAY) } },
    ]);
  });

  it('refuses missing analyses, an extraction among them, or an unknown type, with 400', async () => {
    for (const bad of [
      undefined,
      {},
      { e: { analysis_type: 'extraction' } },
      { x: { analysis_type: 'mode' } },
      { s: { analysis_type: 'sum' } },
    ]) {
      const failure = await analysis.query('multi_analysis', { event_collection: STATES, analyses: bad }).catch((err: unknown) => err);
      expect(failure, JSON.stringify(bad)).toMatchObject({ status: 400 });
    }
  });
});

describe('funnel', () => {
  const activated = { event_collection: ACTIVATIONS, actor_property: 'device_id', timeframe: WHOLE };
  const turnedOn = {
    event_collection: STATES,
    actor_property: 'device_id',
    timeframe: WHOLE,
    filters: [{ property_name: 'state.on', operator: 'eq', property_value: true }],
  };
  const reconnected = { event_collection: MONITORING, actor_property: 'device_id', timeframe: WHOLE };

  it('counts the actors who did each step and every step before it', async () => {
    const answer = await analysis.query('funnel', { steps: [activated, turnedOn, reconnected], timezone: 'UTC' });
    expect(answer.result).toEqual([4, 2, 1]);
    expect(answer.steps).toEqual([
      { ...activated, timezone: 'UTC', filters: [], optional: false, inverted: false, with_actors: false },
      { ...turnedOn, timezone: 'UTC', optional: false, inverted: false, with_actors: false },
      { ...reconnected, timezone: 'UTC', filters: [], optional: false, inverted: false, with_actors: false },
    ]);
    expect(answer).not.toHaveProperty('actors');
  });

  it('returns the actors of the steps that ask for them, null for the others', async () => {
    const answer = await analysis.query('funnel', {
      steps: [{ ...activated, with_actors: true }, turnedOn, { ...reconnected, with_actors: true }],
    });
    expect(answer.result).toEqual([4, 2, 1]);
    expect(answer.actors).toEqual([['lamp-a', 'lamp-b', 'lamp-c', 'lamp-d'], null, ['lamp-a']]);
  });

  it('an inverted step counts who did not do it; an optional step does not narrow the next', async () => {
    const inverted = await analysis.query('funnel', { steps: [activated, { ...turnedOn, inverted: true, with_actors: true }] });
    expect(inverted.result).toEqual([4, 2]);
    expect(inverted.actors).toEqual([null, ['lamp-c', 'lamp-d']]);
    const optional = await analysis.query('funnel', {
      steps: [activated, { ...turnedOn, optional: true }, { ...reconnected, with_actors: true }],
    });
    // lamp-d never turned on, yet it reconnected after activating: the optional step let it through.
    expect(optional.result).toEqual([4, 2, 2]);
    expect(optional.actors).toEqual([null, null, ['lamp-a', 'lamp-d']]);
  });

  it("applies each step's own timeframe", async () => {
    const firstDay = { start: at(0), end: at(DAY) };
    const answer = await analysis.query('funnel', { steps: [activated, { ...reconnected, timeframe: firstDay }] });
    expect(answer.result).toEqual([4, 0]);
  });

  it('refuses a funnel without steps, without an actor, or starting optional, with 400', async () => {
    for (const steps of [
      undefined,
      [],
      [{ event_collection: ACTIVATIONS }],
      [{ ...activated, optional: true }],
      [{ ...activated, inverted: 'yes' }],
    ]) {
      const failure = await analysis.query('funnel', { steps }).catch((err: unknown) => err);
      expect(failure, JSON.stringify(steps)).toMatchObject({ status: 400 });
    }
  });
});

describe('include_metadata', () => {
  it("adds Keen's execution_metadata: events scanned in the timeframe, properties read", async () => {
    const answer = await analysis.query('count', {
      event_collection: STATES,
      timeframe: { start: at(0), end: at(DAY) },
      filters: [{ property_name: 'device_id', operator: 'eq', property_value: 'lamp-a' }],
      group_by: 'state.on',
      include_metadata: true,
    });
    expect(answer.result).toEqual([{ 'state.on': true, result: 6 }]);
    expect(answer.execution_metadata).toEqual({
      total_processing_time: expect.any(Number),
      events_scanned: 10,
      properties_per_event: 2,
      total_properties_scanned: 20,
    });
    expect(answer.execution_metadata.total_processing_time).toBeGreaterThan(0);
    const plain = await analysis.query('count', { event_collection: STATES, timeframe: WHOLE });
    expect(plain.result).toBe(11);
    expect(plain).not.toHaveProperty('execution_metadata');
  });

  it('sums the scans of every funnel step', async () => {
    const answer = await analysis.query('funnel', {
      steps: [
        { event_collection: ACTIVATIONS, actor_property: 'device_id', timeframe: WHOLE },
        { event_collection: MONITORING, actor_property: 'device_id', timeframe: WHOLE },
      ],
      include_metadata: true,
    });
    expect(answer.execution_metadata).toMatchObject({ events_scanned: 6, properties_per_event: 1, total_properties_scanned: 6 });
  });
});

describe('named time zones', () => {
  // Berlin moves its clocks from 02:00 to 03:00 on Sunday 29 March 2026 (01:00 UTC).
  const BERLIN_DAYS = ['2026-03-27T23:00:00.000Z', '2026-03-28T23:00:00.000Z', '2026-03-29T22:00:00.000Z', '2026-03-30T22:00:00.000Z'];

  it('splits daily intervals at local midnight, across a daylight-saving change', async () => {
    const coll = `dst_${suffix}`;
    // 00:30 in Berlin on Monday 30 March, after the change: a day later than an offset of +1h would say.
    await tracking.recordEvents({
      [coll]: [event('2026-03-29T22:30:00.000Z', { device_id: 'lamp-a' }), event('2026-03-28T12:00:00.000Z', { device_id: 'lamp-b' })],
    });
    const timeframe = { start: BERLIN_DAYS[0], end: BERLIN_DAYS[3] };
    const berlin = await analysis.query('count', { event_collection: coll, timeframe, interval: 'daily', timezone: 'Europe/Berlin' });
    expect(berlin.result).toEqual([
      { value: 1, timeframe: { start: BERLIN_DAYS[0], end: BERLIN_DAYS[1] } },
      { value: 0, timeframe: { start: BERLIN_DAYS[1], end: BERLIN_DAYS[2] } },
      { value: 1, timeframe: { start: BERLIN_DAYS[2], end: BERLIN_DAYS[3] } },
    ]);
    const fixed = await analysis.query('count', { event_collection: coll, timeframe, interval: 'daily', timezone: 3600 });
    expect(fixed.result.map((interval: { value: number }) => interval.value)).toEqual([1, 1, 0]);
  });

  it('computes relative timeframes on the zone wall clock, a 23-hour day included', () => {
    const berlin = parseTimeZone('Europe/Berlin');
    expect(berlin.ok).toBe(true);
    if (!berlin.ok) return;
    const iso = (tf: { start: Date; end: Date }) => [tf.start.toISOString(), tf.end.toISOString()];
    const now = new Date('2026-03-30T10:00:00.000Z');
    expect(iso(parseTimeframe('previous_1_days', now, berlin.zone))).toEqual([BERLIN_DAYS[1], BERLIN_DAYS[2]]);
    expect(iso(parseTimeframe('this_2_days', now, berlin.zone))).toEqual([BERLIN_DAYS[1], now.toISOString()]);
    // Autumn: clocks go back on 25 October 2026, a 25-hour day.
    expect(iso(parseTimeframe('yesterday', new Date('2026-10-26T12:00:00.000Z'), berlin.zone))).toEqual([
      '2026-10-24T22:00:00.000Z',
      '2026-10-25T23:00:00.000Z',
    ]);
    const pacific = parseTimeZone('US/Pacific');
    expect(pacific.ok && iso(parseTimeframe('this_month', new Date('2026-07-04T12:00:00.000Z'), pacific.zone))[0]).toBe(
      '2026-07-01T07:00:00.000Z',
    );
    // Hourly intervals stay one real hour each through the change.
    const hours = intervalBoundaries(
      { start: new Date('2026-03-29T00:00:00.000Z'), end: new Date('2026-03-29T03:00:00.000Z') },
      'hour',
      berlin.zone,
    );
    expect(hours.map((d) => d.toISOString())).toEqual([
      '2026-03-29T00:00:00.000Z',
      '2026-03-29T01:00:00.000Z',
      '2026-03-29T02:00:00.000Z',
      '2026-03-29T03:00:00.000Z',
    ]);
  });

  it('refuses an unknown zone or an offset out of range with 400 InvalidTimezoneError', async () => {
    for (const timezone of ['Mars/Olympus', 'Europe/Berlin; DROP TABLE', 15 * 3600, '+01:00']) {
      const failure = await analysis.query('count', { event_collection: STATES, timezone }).catch((err: unknown) => err);
      expect(failure, String(timezone)).toMatchObject({ status: 400, error_code: 'InvalidTimezoneError' });
    }
  });
});

describe('CORS', () => {
  const preflight = (target: KeenSink, origin: string) =>
    fetch(`${target.url}/3.0/projects/${PROJECT}/queries/count`, {
      method: 'OPTIONS',
      headers: { origin, 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization, content-type' },
    });

  it('answers the preflight of a configured origin, and marks its answers readable', async () => {
    const answer = await preflight(corsSink, ALLOWED_ORIGIN);
    expect(answer.status).toBe(204);
    expect(answer.headers.get('access-control-allow-origin')).toBe(ALLOWED_ORIGIN);
    expect(answer.headers.get('access-control-allow-methods')).toContain('POST');
    expect(answer.headers.get('access-control-allow-headers')?.toLowerCase()).toContain('authorization');
    expect(answer.headers.get('access-control-allow-credentials')).toBeNull();
    const query = await fetch(`${corsSink.url}/3.0/projects/${PROJECT}/queries/count?event_collection=${STATES}`, {
      headers: { origin: ALLOWED_ORIGIN, authorization: READ_KEY },
    });
    expect(await query.json()).toEqual({ result: 11 });
    expect(query.headers.get('access-control-allow-origin')).toBe(ALLOWED_ORIGIN);
    expect(query.headers.get('vary')).toBe('Origin');
  });

  it('allows no other origin, and none at all by default', async () => {
    for (const [target, origin] of [
      [corsSink, 'http://evil.example.test'],
      [sink, ALLOWED_ORIGIN],
    ] as const) {
      const answer = await preflight(target, origin);
      expect(answer.status).toBe(403);
      expect(answer.headers.get('access-control-allow-origin')).toBeNull();
      expect(await answer.json()).toMatchObject({ error_code: 'CorsOriginNotAllowedError' });
      const query = await fetch(`${target.url}/3.0/projects/${PROJECT}/queries/count?event_collection=${STATES}`, {
        headers: { origin, authorization: READ_KEY },
      });
      expect(query.headers.get('access-control-allow-origin')).toBeNull();
    }
  });
});

describe('collections', () => {
  it("lists the project's collections with the properties of their latest event, for the read key only", async () => {
    const list = await fetch(`${sink.url}/3.0/projects/${PROJECT}/events`, { headers: { authorization: READ_KEY } });
    expect(list.status).toBe(200);
    const collections = (await list.json()) as Array<{ name: string; properties: Record<string, string>; url: string }>;
    const states = collections.find((c) => c.name === STATES);
    expect(states?.properties).toMatchObject({
      device_id: 'string',
      'state.on': 'bool',
      'state.brightness': 'num',
      'keen.timestamp': 'string',
    });
    expect(collections.map((c) => c.name)).toEqual(expect.arrayContaining([ACTIVATIONS, STATES, MONITORING]));
    const refused = await fetch(`${sink.url}/3.0/projects/${PROJECT}/events`, { headers: { authorization: WRITE_KEY } });
    expect(refused.status).toBe(401);
  });
});
