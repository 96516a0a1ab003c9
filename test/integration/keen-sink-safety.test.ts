/**
 * keen-sink against hostile and broken input, over HTTP as any client would send it: no query
 * changes the server, every bad event fails alone with Keen's error for it, bad parameters are
 * 400s, and no answer grows past KEEN_SINK_MAX_RESULT_BYTES.
 */
import { randomBytes } from 'node:crypto';
import { connect } from 'node:net';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { prepareEvent, type PreparedEvent } from '../../src/keen-sink/events.js';
import { storeEvents } from '../../src/keen-sink/store.js';
import { PROJECT, READ_KEY, startTestSink, type TestSink } from '../support/keen-sink.js';

let t: TestSink;
let db: pg.Pool;
const collection = (label: string) => `${label}_${randomBytes(4).toString('hex')}`;

beforeAll(async () => {
  t = await startTestSink(inject('services').postgres);
  db = new pg.Pool({ connectionString: t.database.url, max: 2 });
});

afterAll(async () => {
  await db?.end();
  await t?.close();
});

const storedCount = async (coll: string) =>
  (await db.query<{ n: number }>('SELECT count(*)::int AS n FROM keen_events WHERE collection = $1', [coll])).rows[0]!.n;

/** Nested objects {"a":{"a":...1}} `depth` deep, as text (JSON.stringify itself would overflow). */
const nestedObjects = (depth: number) => `${'{"a":'.repeat(depth)}1${'}'.repeat(depth)}`;
const nestedArrays = (depth: number) => `${'['.repeat(depth)}${']'.repeat(depth)}`;

describe('a query cannot change the server: the __proto__ attack', () => {
  it('plants an event, queries it by __proto__ paths with the read key, and every later answer is unchanged', async () => {
    const lamps = collection('lamps');
    const planted = collection('planted');
    await t.recordMany({
      [lamps]: [
        { device_id: 'a', keen: { timestamp: '2026-01-10T01:00:00Z' } },
        { device_id: 'b', keen: { timestamp: '2026-01-10T02:00:00Z' } },
      ],
    });
    const probes: Array<[string, Record<string, unknown>]> = [
      ['count', { event_collection: lamps }],
      ['count', { event_collection: lamps, timeframe: { start: '2026-01-10T00:00:00Z', end: '2026-01-11T00:00:00Z' }, interval: 'daily' }],
      ['select_unique', { event_collection: lamps, target_property: 'device_id', timeframe: 'this_100_years' }],
      ['count', { event_collection: lamps, group_by: 'device_id' }],
    ];
    const answers = async () => Promise.all(probes.map(async ([analysis, params]) => (await t.query(analysis, params)).text));
    const before = await answers();

    // What a lamp can plant: its state is stored as sent, `__proto__` key and all.
    const poison = '{"timezone":"US/Pacific","uniqueness_token":"polluted","timeframe":"this_1_minutes","filters":"[","polluted":"yes"}';
    const write = await t.record(planted, `{"device_id":"evil","__proto__":${poison},"state":{"__proto__":${poison}}}`);
    expect(write.status).toBe(201);
    const attacks: Array<[string, Record<string, unknown>]> = [
      [
        'extraction',
        {
          event_collection: planted,
          property_names: [
            '__proto__.timezone',
            '__proto__.uniqueness_token',
            '__proto__.timeframe',
            '__proto__.filters',
            '__proto__.polluted',
            'state.__proto__.polluted',
          ],
        },
      ],
      ['extraction', { event_collection: planted, property_names: ['__proto__', 'constructor.prototype.polluted', 'state'] }],
      ['select_unique', { event_collection: planted, target_property: '__proto__' }],
      ['count', { event_collection: planted, group_by: ['__proto__', 'state.__proto__', 'constructor'] }],
      ['count', { event_collection: planted, interval: '__proto__', timeframe: 'this_1_days' }],
    ];
    for (const [analysis, params] of attacks) expect((await t.query(analysis, params)).status).toBeLessThan(500);
    const extracted = await t.query(...attacks[0]!);
    expect(extracted.status).toBe(200);
    // The planted object comes back as data, under its own key.
    expect(extracted.text).toContain('"__proto__":{"timezone":"US/Pacific"');
    const posted = await t.http('POST', `/3.0/projects/${PROJECT}/queries/count`, {
      key: READ_KEY,
      body: `{"__proto__":{"event_collection":"${lamps}"},"event_collection":"${planted}"}`,
    });
    expect(posted.body).toEqual({ result: 1 });

    // This process runs the sink: its shared prototype is untouched.
    expect(Object.keys(Object.prototype)).toEqual([]);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(await answers()).toEqual(before);
    // Writes are stored, not taken for duplicates of a "polluted" token.
    const again = collection('after');
    for (const n of [1, 2, 3]) expect((await t.record(again, { n })).body).toEqual({ created: true });
    expect(await storedCount(again)).toBe(3);
  });
});

describe("every bad event fails alone, with Keen's error for it", () => {
  // Each is refused: [label, event as JSON text, Keen error name].
  const bad: Array<[string, string, string]> = [
    ['a lone high surrogate in a value', '{"s":"\\ud800"}', 'InvalidPropertyValueError'],
    ['a lone low surrogate in a nested value', '{"a":{"b":["x\\udfff"]}}', 'InvalidPropertyValueError'],
    ['a lone surrogate in a key', '{"k\\udc00":1}', 'InvalidPropertyNameError'],
    ['a NUL in a value', '{"s":"a\\u0000b"}', 'InvalidPropertyValueError'],
    ['a NUL in a nested key', '{"a":{"k\\u0000":1}}', 'InvalidPropertyNameError'],
    ['a timestamp in year 0', '{"keen":{"timestamp":"0000-06-01T00:00:00Z"}}', 'InvalidPropertyValueError'],
    ['a timestamp that an offset moves before year 1', '{"keen":{"timestamp":"0001-01-01T00:00:00+01:00"}}', 'InvalidPropertyValueError'],
    ['a timestamp that an offset moves past 9999', '{"keen":{"timestamp":"9999-12-31T23:00:00-05:00"}}', 'InvalidPropertyValueError'],
    ['a day that does not exist (February 30)', '{"keen":{"timestamp":"2026-02-30T00:00:00Z"}}', 'InvalidPropertyValueError'],
    ['hour 24', '{"keen":{"timestamp":"2026-01-01T24:00:00Z"}}', 'InvalidPropertyValueError'],
    [
      'a date_time_parser input on February 29 of a common year',
      '{"when":"2027-02-29T00:00:00Z","keen":{"addons":[{"name":"keen:date_time_parser","input":{"date_time":"when"},"output":"when_info"}]}}',
      'InvalidPropertyValueError',
    ],
    ['1,001 levels of objects', nestedObjects(1001), 'InvalidPropertyValueError'],
    ['200,000 levels of arrays', `{"deep":${nestedArrays(200_000)}}`, 'InvalidPropertyValueError'],
    ['a number too large for a double', '{"n":1e999}', 'InvalidPropertyValueError'],
  ];

  it('in a bulk request: each bad event gets its error, every neighbour is stored', async () => {
    const coll = collection('bulk');
    const good = (n: number) => `{"n":${n}}`;
    const body = `{"${coll}":[${good(0)},${bad.map(([, event], i) => `${event},${good(i + 1)}`).join(',')}],"bad\\ud800name":[${good(99)}]}`;
    const reply = await t.recordMany(body);
    expect(reply.status).toBe(200);
    const results = reply.body[coll];
    expect(results).toHaveLength(1 + 2 * bad.length);
    bad.forEach(([label, , name], i) => {
      expect(results[2 * i + 1], label).toEqual({ success: false, error: { name, description: expect.any(String) } });
      expect(results[2 * i + 2], `the neighbour after ${label}`).toEqual({ success: true });
    });
    expect(reply.body['bad\ud800name']).toEqual([
      { success: false, error: { name: 'InvalidCollectionNameError', description: expect.stringContaining('surrogate') } },
    ]);
    expect(await storedCount(coll)).toBe(1 + bad.length);
  });

  it.each(bad)('on its own, %s is a 400', async (_label, event, name) => {
    const reply = await t.record(collection('single'), event);
    expect([reply.status, reply.body]).toEqual([400, { message: expect.any(String), error_code: name }]);
  });

  it('accepts what is valid at the edges: 1,000 levels, February 29 of a leap year, years 0001 and 9999, surrogate pairs', async () => {
    const coll = collection('edges');
    const events = [
      nestedObjects(999),
      '{"keen":{"timestamp":"2028-02-29T12:00:00Z"}}',
      '{"keen":{"timestamp":"0001-01-01T00:00:00Z"}}',
      '{"keen":{"timestamp":"9999-12-31T23:59:59.999Z"}}',
      '{"emoji":"\\ud83d\\udca1 lamp"}',
    ];
    const reply = await t.recordMany(`{"${coll}":[${events.join(',')}]}`);
    expect(reply.body[coll]).toEqual(events.map(() => ({ success: true })));
    const extraction = await t.query('extraction', { event_collection: coll, property_names: ['emoji'] });
    expect(extraction.body.result).toContainEqual({ emoji: '\u{1F4A1} lamp' });
  });

  it('stores the rest when PostgreSQL itself refuses one event of a request (validation bypassed)', async () => {
    const coll = collection('split');
    const now = new Date();
    const events: PreparedEvent[] = Array.from({ length: 100 }, (_, n) => {
      const prepared = prepareEvent(coll, { n, keen: { uniqueness_token: `t${n}` } }, now);
      if (!prepared.ok) throw new Error(prepared.error.description);
      return prepared.value;
    });
    events[37] = { ...events[37]!, event: { ...events[37]!.event, s: 'lone \ud800' } };
    const outcomes = await storeEvents(t.sink.db, PROJECT, events);
    expect(outcomes.filter((outcome) => outcome.status === 'created')).toHaveLength(99);
    expect(outcomes[37]).toEqual({ status: 'refused', problem: expect.stringContaining('PostgreSQL cannot store this event') });
    expect(await storedCount(coll)).toBe(99);
    // The 99 hold their tokens: sent again, they are duplicates, and the fixed 38th is stored.
    const fixed = prepareEvent(coll, { n: 37, keen: { uniqueness_token: 't37' } }, now);
    const retried = await storeEvents(t.sink.db, PROJECT, [events[36]!, fixed.ok ? fixed.value : events[37]!]);
    expect(retried).toEqual([{ status: 'duplicate' }, { status: 'created' }]);
  });
});

describe('bad parameters are 400s with {message, error_code}, never 500', () => {
  const coll = 'anything';
  const deepValue = JSON.parse(nestedArrays(1200));
  const cases: Array<[string, string, Record<string, unknown>, string]> = [
    [
      'a start on February 30',
      'count',
      { event_collection: coll, timeframe: { start: '2026-02-30T00:00:00Z', end: '2026-03-05T00:00:00Z' } },
      'TimeframeDefinitionError',
    ],
    [
      'an end on April 31',
      'count',
      { event_collection: coll, timeframe: { start: '2026-04-01T00:00:00Z', end: '2026-04-31T00:00:00Z' } },
      'TimeframeDefinitionError',
    ],
    [
      'a start in year 0',
      'count',
      { event_collection: coll, timeframe: { start: '0000-01-01T00:00:00Z', end: '2026-01-01T00:00:00Z' } },
      'TimeframeDefinitionError',
    ],
    ['this_999999_years', 'count', { event_collection: coll, timeframe: 'this_999999_years' }, 'TimeframeDefinitionError'],
    ['previous_99999_months', 'count', { event_collection: coll, timeframe: 'previous_99999_months' }, 'TimeframeDefinitionError'],
    [
      'an interval ending after 9999',
      'count',
      { event_collection: coll, timeframe: { start: '9999-11-01T00:00:00Z', end: '9999-12-31T00:00:00Z' }, interval: 'monthly' },
      'InvalidIntervalError',
    ],
    ['interval __proto__', 'count', { event_collection: coll, timeframe: 'this_1_days', interval: '__proto__' }, 'InvalidIntervalError'],
    [
      'interval constructor',
      'count',
      { event_collection: coll, timeframe: 'this_1_days', interval: 'constructor' },
      'InvalidIntervalError',
    ],
    ['a NUL in the collection', 'count', { event_collection: 'a\u0000b' }, 'InvalidParameterError'],
    [
      'a lone surrogate in the target property',
      'count_unique',
      { event_collection: coll, target_property: 'a\ud800' },
      'InvalidParameterError',
    ],
    ['a NUL in a group_by name', 'count', { event_collection: coll, group_by: ['ok', 'x\u0000'] }, 'InvalidParameterError'],
    [
      'a NUL in a filter property name',
      'count',
      { event_collection: coll, filters: [{ property_name: 'a\u0000', operator: 'exists', property_value: true }] },
      'InvalidParameterError',
    ],
    [
      'a lone surrogate in a filter value',
      'count',
      { event_collection: coll, filters: [{ property_name: 'a', operator: 'eq', property_value: '\udc00' }] },
      'FilterDefinitionError',
    ],
    [
      'a NUL in an "in" list',
      'count',
      { event_collection: coll, filters: [{ property_name: 'a', operator: 'in', property_value: ['ok', 'x\u0000'] }] },
      'FilterDefinitionError',
    ],
    [
      'a NUL in a contains string',
      'count',
      { event_collection: coll, filters: [{ property_name: 'a', operator: 'contains', property_value: '\u0000' }] },
      'FilterDefinitionError',
    ],
    [
      'a filter value 1,200 levels deep',
      'count',
      { event_collection: coll, filters: [{ property_name: 'a', operator: 'eq', property_value: deepValue }] },
      'FilterDefinitionError',
    ],
    [
      '101 filters',
      'count',
      {
        event_collection: coll,
        filters: Array.from({ length: 101 }, () => ({ property_name: 'a', operator: 'exists', property_value: true })),
      },
      'FilterDefinitionError',
    ],
    [
      'a path of 1,001 segments',
      'count',
      { event_collection: coll, filters: [{ property_name: Array(1001).fill('a').join('.'), operator: 'eq', property_value: 1 }] },
      'InvalidParameterError',
    ],
    [
      '101 property_names',
      'extraction',
      { event_collection: coll, property_names: Array.from({ length: 101 }, (_, i) => `p${i}`) },
      'InvalidParameterError',
    ],
    ['a filter that is not an object', 'count', { event_collection: coll, filters: [null] }, 'FilterDefinitionError'],
    ['a collection that is a number (POST)', 'count', { event_collection: 7 }, 'MissingRequiredParameterError'],
  ];

  it.each(cases)('%s', async (label, analysis, params, code) => {
    // POSTed as JSON, as keen-analysis sends it; a GET carries the same through the URL.
    const posted = await t.http('POST', `/3.0/projects/${PROJECT}/queries/${analysis}`, { key: READ_KEY, body: params });
    expect([posted.status, posted.body]).toEqual([400, { message: expect.any(String), error_code: code }]);
    // (A URL cannot carry a lone surrogate: it arrives as U+FFFD, which is valid.)
    if (typeof params.event_collection === 'string' && !label.includes('surrogate')) {
      const got = await t.query(analysis, params);
      expect([got.status, got.body.error_code]).toEqual([400, code]);
    }
  });

  it('answers 400 for a request target that is not a URL', async () => {
    const status = await new Promise<string>((resolve, reject) => {
      const socket = connect(t.sink.port, '127.0.0.1', () => socket.write('GET http://[ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'));
      let text = '';
      socket.on('data', (chunk) => (text += chunk.toString()));
      socket.on('end', () => resolve(text.split('\r\n')[0]!));
      socket.on('error', reject);
    });
    expect(status).toMatch(/^HTTP\/1\.1 400 /);
  });
});

describe('bounded answers: KEEN_SINK_MAX_RESULT_BYTES', () => {
  const LIMIT = 64 * 1024;
  let small: TestSink;
  const coll = collection('big');
  // 200 events of about 1 KB each: 200 KB in all, three times the limit.
  const pad = (n: number) => `${String(n).padStart(4, '0')}${'x'.repeat(1000)}`;

  beforeAll(async () => {
    small = await startTestSink(inject('services').postgres, { maxResultBytes: LIMIT });
    const events = Array.from({ length: 200 }, (_, n) => ({
      n,
      pad: pad(n),
      keen: { timestamp: new Date(Date.UTC(2026, 0, 1, 0, n)).toISOString() },
    }));
    expect((await small.recordMany({ [coll]: events })).status).toBe(200);
  });
  afterAll(async () => small?.close());

  it('refuses an extraction past the limit, saying how to page, and answers the pages', async () => {
    const all = await small.query('extraction', { event_collection: coll });
    expect(all.status).toBe(400);
    expect(all.body).toEqual({
      message: expect.stringMatching(/65536 bytes.*KEEN_SINK_MAX_RESULT_BYTES.*timeframe.*"latest".*"property_names"/),
      error_code: 'ResultTooLargeError',
    });
    const latest = await small.query('extraction', { event_collection: coll, latest: '20' });
    expect(latest.status).toBe(200);
    expect(latest.body.result.map((event: any) => event.n)).toEqual(Array.from({ length: 20 }, (_, i) => 180 + i));
    expect(latest.text.length).toBeLessThan(LIMIT);
    const narrow = await small.query('extraction', {
      event_collection: coll,
      timeframe: { start: '2026-01-01T00:00:00Z', end: '2026-01-01T00:30:00Z' },
    });
    expect(narrow.body.result).toHaveLength(30);
    const names = await small.query('extraction', { event_collection: coll, property_names: ['n'] });
    expect(names.body.result).toEqual(Array.from({ length: 200 }, (_, n) => ({ n })));
  });

  it('refuses select_unique and group_by answers past the limit, and answers the small ones', async () => {
    expect((await small.query('select_unique', { event_collection: coll, target_property: 'pad' })).body.error_code).toBe(
      'ResultTooLargeError',
    );
    expect((await small.query('count', { event_collection: coll, group_by: 'pad' })).body.error_code).toBe('ResultTooLargeError');
    expect(
      (
        await small.query('count', {
          event_collection: coll,
          group_by: 'pad',
          timeframe: { start: '2026-01-01T00:00:00Z', end: '2026-01-01T00:05:00Z' },
        })
      ).body.result,
    ).toHaveLength(5);
    const unique = await small.query('select_unique', { event_collection: coll, target_property: 'n' });
    expect(unique.body.result).toEqual(Array.from({ length: 200 }, (_, n) => n));
  });

  it('refuses a multi_analysis and a funnel with_actors past the limit, and answers the small ones', async () => {
    // Each label alone is under the limit; the answer holding both is not.
    const pads = {
      event_collection: coll,
      target_property: 'pad',
      timeframe: { start: '2026-01-01T00:00:00Z', end: '2026-01-01T00:40:00Z' },
    };
    expect((await small.query('select_unique', pads)).status).toBe(200);
    const both = await small.query('multi_analysis', {
      ...pads,
      analyses: {
        a: { analysis_type: 'select_unique', target_property: 'pad' },
        b: { analysis_type: 'select_unique', target_property: 'pad' },
      },
    });
    expect(both.body.error_code).toBe('ResultTooLargeError');
    const counts = await small.query('multi_analysis', {
      event_collection: coll,
      analyses: { a: { analysis_type: 'count' }, b: { analysis_type: 'count_unique', target_property: 'n' } },
    });
    expect(counts.body.result).toEqual({ a: 200, b: 200 });

    const step = (withActors: boolean) => ({
      event_collection: coll,
      actor_property: 'pad',
      timeframe: { start: '2026-01-01T00:00:00Z', end: '2026-01-01T04:00:00Z' },
      with_actors: withActors,
    });
    const actors = await small.query('funnel', { steps: [step(true)] });
    expect(actors.status).toBe(400);
    expect(actors.body).toEqual({
      message: expect.stringMatching(/steps\[0\].*KEEN_SINK_MAX_RESULT_BYTES/),
      error_code: 'ResultTooLargeError',
    });
    expect((await small.query('funnel', { steps: [step(false)] })).body.result).toEqual([200]);
    const few = await small.query('funnel', {
      steps: [{ ...step(true), timeframe: { start: '2026-01-01T00:00:00Z', end: '2026-01-01T00:03:00Z' } }],
    });
    expect(few.body.actors).toEqual([[pad(0), pad(1), pad(2)]]);
  });

  it('keeps serving after refusals: the refused queries leave no connection or transaction behind', async () => {
    for (let i = 0; i < 15; i += 1) expect((await small.query('extraction', { event_collection: coll })).status).toBe(400);
    expect((await small.query('count', { event_collection: coll })).body).toEqual({ result: 200 });
    const { rows } = await db.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1 AND state LIKE 'idle in transaction%'`,
      [small.database.name],
    );
    expect(rows[0]!.n).toBe(0);
  });
});
