/**
 * keen-sink driven over HTTP with arbitrary input (fast-check): arbitrary JSON events, strings
 * (lone surrogates and NULs included), property paths and query parameters, by GET and by POST.
 * Whatever arrives: nothing answers 500, every valid event is stored, and no request changes the
 * answer to any later query (a fixed set of queries is answered the same before and after).
 */
import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { PROJECT, READ_KEY, startTestSink, type Reply, type TestSink } from '../support/keen-sink.js';

let t: TestSink;
let db: pg.Pool;
const FIXED = `fixed_${randomBytes(4).toString('hex')}`;

const ANALYSES = ['count', 'count_unique', 'select_unique', 'sum', 'minimum', 'maximum', 'average', 'extraction'];
/** The queries whose answers no request may change. */
const PROBES: Array<[string, Record<string, unknown>]> = [
  ['count', { event_collection: FIXED }],
  ['count', { event_collection: FIXED, filters: [{ property_name: 'state.on', operator: 'eq', property_value: true }] }],
  [
    'count_unique',
    { event_collection: FIXED, target_property: 'device_id', timeframe: { start: '2026-01-01T00:00:00Z', end: '2026-02-01T00:00:00Z' } },
  ],
  ['select_unique', { event_collection: FIXED, target_property: 'device_id' }],
  ['average', { event_collection: FIXED, target_property: 'state.brightness', group_by: 'device_id' }],
  [
    'count',
    {
      event_collection: FIXED,
      timeframe: { start: '2026-01-01T00:00:00Z', end: '2026-01-04T00:00:00Z' },
      interval: 'daily',
      group_by: ['state.on'],
    },
  ],
  ['extraction', { event_collection: FIXED, latest: 3, property_names: ['device_id', 'state.on'] }],
  ['count', { event_collection: 'collection-nobody-writes' }],
];

beforeAll(async () => {
  t = await startTestSink(inject('services').postgres);
  db = new pg.Pool({ connectionString: t.database.url, max: 2 });
  const events = Array.from({ length: 30 }, (_, n) => ({
    device_id: `lamp-${n % 4}`,
    state: { on: n % 3 === 0, brightness: (n % 10) / 10 },
    keen: { timestamp: new Date(Date.UTC(2026, 0, 1 + (n % 3), n)).toISOString() },
  }));
  expect((await t.recordMany({ [FIXED]: events })).status).toBe(200);
});

afterAll(async () => {
  await db?.end();
  await t?.close();
});

const answers = () => Promise.all(PROBES.map(async ([analysis, params]) => (await t.query(analysis, params)).text));

// ---- arbitraries -------------------------------------------------------------------------

/** Strings as hostile as JSON allows: any code unit (lone surrogates), NUL, Keen's special characters. */
const hostileString = fc.oneof(
  fc.string({ maxLength: 12 }),
  fc.string({ unit: 'binary', maxLength: 8 }),
  fc.string({ unit: fc.constantFrom('a', '.', '$', '_', '\u0000', '\ud800', '\udc00', '\ud83d', '\udca1', '"', '\\'), maxLength: 6 }),
  fc.constantFrom('__proto__', 'constructor', 'prototype', 'toString', 'keen', 'keen.timestamp', 'keen.uniqueness_token', 'result', ''),
);
const hostilePath = fc.oneof(
  hostileString,
  fc.array(hostileString, { minLength: 1, maxLength: 4 }).map((parts) => parts.join('.')),
);
const dateText = fc.oneof(
  fc
    .date({ min: new Date('0001-01-01T00:00:00Z'), max: new Date('9999-12-31T23:59:59Z'), noInvalidDate: true })
    .map((d) => d.toISOString()),
  fc
    .tuple(
      fc.integer({ min: 0, max: 9999 }),
      fc.integer({ min: 0, max: 13 }),
      fc.integer({ min: 0, max: 32 }),
      fc.integer({ min: 0, max: 25 }),
    )
    .map(
      ([y, m, d, h]) =>
        `${String(y).padStart(4, '0')}-${String(m).padStart(2, '0')}-${String(d).padStart(2, '0')}T${String(h).padStart(2, '0')}:00:00Z`,
    ),
  fc.constantFrom('2026-02-30T00:00:00Z', '0000-01-01T00:00:00Z', '9999-12-31T23:00:00-05:00', '+010000-01-01T00:00:00Z', 'yesterday', ''),
  hostileString,
);
/** JSON values with hostile keys and strings, written as text so that `__proto__` stays a key. */
const { value: jsonText } = fc.letrec<{ value: string }>((tie) => ({
  value: fc.oneof(
    { depthSize: 'small', maxDepth: 4 },
    fc.oneof(
      fc.constant('null'),
      fc.boolean().map(String),
      fc.double().map((n) => (Number.isFinite(n) ? String(n) : '1e999')),
      hostileString.map((s) => JSON.stringify(s)),
    ),
    fc
      .array(fc.tuple(hostileString, tie('value')), { maxLength: 4 })
      .map((entries) => `{${entries.map(([key, value]) => `${JSON.stringify(key)}:${value}`).join(',')}}`),
    fc.array(tie('value'), { maxLength: 3 }).map((items) => `[${items.join(',')}]`),
  ),
}));
const keenText = fc
  .record(
    {
      timestamp: dateText,
      uniqueness_token: fc.oneof(hostileString, fc.integer()),
      addons: fc.constantFrom([], 'x', [{ name: 'keen:date_time_parser', input: { date_time: 'keen.timestamp' }, output: 'info' }]),
    },
    { requiredKeys: [] },
  )
  .map((keen) => JSON.stringify(keen));
const anyEventText = fc.oneof(
  jsonText,
  fc.tuple(jsonText, keenText).map(([value, keen]) => `{"keen":${keen},"data":${value}}`),
  fc.integer({ min: 990, max: 1010 }).map((depth) => `{"d":${'['.repeat(depth)}${']'.repeat(depth)}}`),
);
/** Events any Keen must store: plain keys, text without NUL or lone surrogates, sane dates. */
const safeKey = fc
  .string({ unit: fc.constantFrom('a', 'b', 'z', '_', '-', '1', ' ', 'é', '\u{1F4A1}'), minLength: 1, maxLength: 8 })
  .filter((key) => !key.startsWith('$'));
const { value: safeValue } = fc.letrec<{ value: unknown }>((tie) => ({
  value: fc.oneof(
    { depthSize: 'small', maxDepth: 3 },
    fc.constant(null),
    fc.boolean(),
    fc.double({ noNaN: true, noDefaultInfinity: true }),
    fc.string({ unit: fc.constantFrom('a', '.', '$', ' ', '\t', '\u0001', 'é', '\u{1F4A1}', '"'), maxLength: 8 }),
    fc.array(tie('value'), { maxLength: 3 }),
    fc.dictionary(safeKey, tie('value'), { maxKeys: 3 }),
  ),
}));
const validEvent = fc
  .record({
    props: fc.dictionary(
      safeKey.filter((key) => key !== 'keen'),
      safeValue,
      { maxKeys: 5 },
    ),
    timestamp: fc.option(fc.date({ min: new Date('1970-01-01T00:00:00Z'), max: new Date('2100-01-01T00:00:00Z'), noInvalidDate: true }), {
      nil: undefined,
    }),
  })
  .map(({ props, timestamp }) => (timestamp ? { ...props, keen: { timestamp: timestamp.toISOString() } } : props));

const filter = fc.record(
  {
    property_name: fc.oneof(hostilePath, fc.constantFrom('device_id', 'state.on', 'state.brightness')),
    operator: fc.oneof(fc.constantFrom('eq', 'ne', 'lt', 'lte', 'gt', 'gte', 'exists', 'in', 'contains'), hostileString),
    property_value: fc.jsonValue({ maxDepth: 2 }),
  },
  { requiredKeys: [] },
);
const params = fc.record(
  {
    event_collection: fc.oneof(fc.constant(FIXED), hostileString, fc.integer()),
    target_property: fc.oneof(hostilePath, fc.constantFrom('device_id', 'state.brightness')),
    timeframe: fc.oneof(
      fc
        .tuple(
          fc.constantFrom('this', 'previous', 'last'),
          fc.integer({ min: 0, max: 2_000_000 }),
          fc.constantFrom('minutes', 'hours', 'days', 'weeks', 'months', 'years', 'fortnights'),
        )
        .map(([kind, n, unit]) => `${kind}_${n}_${unit}`),
      fc.record({ start: dateText, end: dateText }),
      hostileString,
    ),
    interval: fc.oneof(
      fc.constantFrom('minutely', 'hourly', 'daily', 'weekly', 'monthly', 'yearly', '__proto__', 'constructor'),
      hostileString,
    ),
    timezone: fc.oneof(fc.integer({ min: -100_000, max: 100_000 }), hostileString),
    filters: fc.oneof(fc.array(filter, { maxLength: 3 }), hostileString, fc.jsonValue({ maxDepth: 2 })),
    group_by: fc.oneof(hostilePath, fc.array(hostilePath, { maxLength: 3 })),
    property_names: fc.oneof(fc.array(hostilePath, { maxLength: 4 }), hostileString),
    latest: fc.oneof(fc.integer({ min: -5, max: 200_000 }), hostileString),
  },
  { requiredKeys: [] },
);

/** Nothing is a 500; a refusal is Keen's `{message, error_code}`. */
function expectHandled(reply: Reply, what: unknown): void {
  expect(reply.status, JSON.stringify(what)).toBeLessThan(500);
  if (reply.status >= 400)
    expect(reply.body, JSON.stringify(what)).toEqual({ message: expect.any(String), error_code: expect.any(String) });
}

const stored = async (collection: string) =>
  (await db.query<{ n: number }>('SELECT count(*)::int AS n FROM keen_events WHERE collection = $1', [collection])).rows[0]!.n;

describe('keen-sink over HTTP, arbitrary input (property)', () => {
  let before: string[];
  beforeAll(async () => {
    before = await answers();
  });

  it('stores every valid event and answers each arbitrary one with success or its own error, in bulk and alone', async () => {
    let collections = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.array(validEvent, { maxLength: 4 }),
        fc.array(anyEventText, { maxLength: 4 }),
        fc.boolean(),
        async (valid, arbitrary, single) => {
          const coll = `prop_${(collections += 1)}_${randomBytes(3).toString('hex')}`;
          const texts = [...valid.map((event) => JSON.stringify(event)), ...arbitrary];
          if (single) {
            let created = 0;
            for (const [i, text] of texts.entries()) {
              const reply = await t.record(coll, text);
              expectHandled(reply, text);
              if (i < valid.length) expect([reply.status, reply.body], text).toEqual([201, { created: true }]);
              if (reply.status === 201) created += 1;
            }
            expect(await stored(coll)).toBe(created);
            return;
          }
          const reply = await t.recordMany(`{${JSON.stringify(coll)}:[${texts.join(',')}]}`);
          expectHandled(reply, texts);
          expect(reply.status).toBe(200);
          const results: Array<{ success: boolean }> = reply.body[coll];
          expect(results).toHaveLength(texts.length);
          results.slice(0, valid.length).forEach((result, i) => expect(result, texts[i]).toEqual({ success: true }));
          expect(await stored(coll)).toBe(results.filter((result) => result.success).length);
        },
      ),
      { numRuns: 300 },
    );
  });

  it('answers every arbitrary query, GET or POST, with a result or a 400, never a 500', async () => {
    await fc.assert(
      fc.asyncProperty(fc.oneof(fc.constantFrom(...ANALYSES), hostileString), params, fc.boolean(), async (analysis, query, post) => {
        // A URL cannot carry a lone surrogate (encodeURIComponent refuses it): U+FFFD stands in.
        const name = encodeURIComponent(
          analysis.replace(/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, '\ufffd'),
        );
        const reply = post
          ? await t.http('POST', `/3.0/projects/${PROJECT}/queries/${name}`, { key: READ_KEY, body: query })
          : await t.query(name, query);
        expectHandled(reply, [analysis, query]);
        if (reply.status === 200) expect(Object.keys(reply.body)).toEqual(['result']);
      }),
      { numRuns: 1200 },
    );
  });

  it('answers a valid query with one parameter made hostile with a result or a 400, never a 500', async () => {
    // One hostile parameter among valid ones reaches the database; many at once mostly stop at the first.
    const valid = fc.record({
      analysis: fc.constantFrom(...ANALYSES),
      base: fc.record(
        {
          target_property: fc.constantFrom('device_id', 'state.brightness', 'state.on'),
          timeframe: fc.constantFrom(
            'this_30_years',
            'previous_3_days',
            JSON.stringify({ start: '2026-01-01T00:00:00Z', end: '2026-01-05T00:00:00Z' }),
          ),
          filters: fc.constant(JSON.stringify([{ property_name: 'state.on', operator: 'exists', property_value: true }])),
          group_by: fc.constantFrom('device_id', JSON.stringify(['state.on'])),
          timezone: fc.constantFrom('0', '-28800'),
        },
        { requiredKeys: ['target_property'] },
      ),
    });
    const hostile = params.filter((query) => Object.keys(query).length > 0).map((query) => Object.fromEntries([Object.entries(query)[0]!]));
    await fc.assert(
      fc.asyncProperty(valid, hostile, fc.boolean(), async ({ analysis, base }, one, post) => {
        const query: Record<string, unknown> = { event_collection: FIXED, ...base, ...one };
        if (analysis === 'extraction') {
          delete query.group_by;
          delete query.interval;
        }
        const reply = post
          ? await t.http('POST', `/3.0/projects/${PROJECT}/queries/${analysis}`, { key: READ_KEY, body: query })
          : await t.query(analysis, query);
        expectHandled(reply, [analysis, query]);
      }),
      { numRuns: 800 },
    );
  });

  it('leaves every later answer as it was, and the process prototype untouched', async () => {
    expect(await answers()).toEqual(before);
    expect(Object.keys(Object.prototype)).toEqual([]);
    const coll = `after_${randomBytes(3).toString('hex')}`;
    for (const token of ['t1', 't2']) expect((await t.record(coll, { keen: { uniqueness_token: token } })).body).toEqual({ created: true });
  });
});
