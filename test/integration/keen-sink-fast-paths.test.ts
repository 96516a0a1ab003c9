/**
 * keen-sink's fast paths (query.ts: the device_id expression indexes and the keen_property_hours
 * rollup) answer exactly what the plain SQL answers, on the same events: values of every JSON
 * kind, events on day and hour boundaries and a millisecond either side, time zones whose days
 * start off the hour, and intervals across a daylight-saving change. Events are written through
 * the bulk endpoint, so the rollup is the one keen-sink keeps itself.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createLogger } from '../../src/shared/logger.js';
import { buildSql, parseQuery, planSql, runQuery, type Analysis } from '../../src/keen-sink/query.js';
import { startKeenSink, type KeenSink } from '../../src/keen-sink/server.js';
import { createTestDatabase, type TestDatabase } from '../support/database.js';

const PROJECT = 'lampi-fast';
const WRITE_KEY = 'write-key-for-tests';
const HOUR = 3_600_000;

let database: TestDatabase;
let sink: KeenSink;

const DEVICES: unknown[] = ['lamp-1', 'lamp-2', 'lamp-3', 7, 7.0, 8.5, true, null, ['lamp-1', 'lamp-9'], { id: 'lamp-1' }, '', 'Lamp-1'];

/**
 * Instants around the edges that matter: UTC midnights and hours, Kolkata's midnight (18:30 UTC),
 * Kathmandu's (18:15 UTC), each exactly and a millisecond either side, plus Berlin's DST change.
 */
function instants(): Date[] {
  const out: Date[] = [];
  for (let day = 0; day < 6; day += 1) {
    const midnight = Date.UTC(2026, 2, 25 + day); // across Europe's change to summer time (29 March)
    for (const edge of [0, 6 * HOUR, 18.5 * HOUR, 18.25 * HOUR, 22 * HOUR, 23 * HOUR]) {
      for (const delta of [-1, 0, 1]) out.push(new Date(midnight + edge + delta));
    }
    out.push(new Date(midnight + 13 * HOUR + 17 * 60_000 + 123));
  }
  return out;
}

beforeAll(async () => {
  database = await createTestDatabase(inject('services').postgres, { migrate: false });
  sink = await startKeenSink({
    databaseUrl: database.url,
    projectId: PROJECT,
    writeKey: WRITE_KEY,
    readKey: 'read',
    port: 0,
    host: '127.0.0.1',
    logger: createLogger('keen-sink', 'silent'),
  });
  const batch: Record<string, unknown[]> = { devicestate: [], activations: [] };
  instants().forEach((at, index) => {
    const device = DEVICES[index % DEVICES.length];
    const event: Record<string, unknown> = { n: index, keen: { timestamp: at.toISOString() } };
    if (index % 13 !== 5) event.device_id = device; // and some events have none
    batch.devicestate!.push(event);
    if (index % 4 === 0) batch.activations!.push({ ...event, keen: { timestamp: at.toISOString() } });
  });
  // Two requests, the second repeating hours the first already rolled up.
  const half = Math.ceil(batch.devicestate!.length / 2);
  for (const part of [
    { devicestate: batch.devicestate!.slice(0, half) },
    { devicestate: batch.devicestate!.slice(half), activations: batch.activations },
  ]) {
    const response = await fetch(new URL(`/3.0/projects/${PROJECT}/events`, sink.url), {
      method: 'POST',
      headers: { authorization: WRITE_KEY, 'content-type': 'application/json' },
      body: JSON.stringify(part),
    });
    expect(response.status).toBe(200);
  }
});

afterAll(async () => {
  await sink?.close();
  await database?.drop();
});

const timeframes: Array<Record<string, unknown>> = [
  { timeframe: { start: '2026-03-25T00:00:00.000Z', end: '2026-03-31T00:00:00.000Z' } },
  { timeframe: { start: '2026-03-25T18:30:00.000Z', end: '2026-03-30T18:30:00.000Z' }, timezone: 'Asia/Kolkata' },
  { timeframe: { start: '2026-03-24T18:15:00.000Z', end: '2026-03-30T18:15:00.000Z' }, timezone: 'Asia/Kathmandu' },
  { timeframe: { start: '2026-03-25T23:00:00.000Z', end: '2026-03-30T22:00:00.000Z' }, timezone: 'Europe/Berlin' },
  { timeframe: { start: '2026-03-26T06:00:00.001Z', end: '2026-03-28T13:17:00.123Z' } },
  { timeframe: { start: '2026-03-26T13:00:00.000Z', end: '2026-03-26T13:30:00.000Z' } },
  { timeframe: { start: '2026-03-25T18:29:59.999Z', end: '2026-03-29T18:30:00.001Z' }, timezone: 19_800 },
  {},
];

async function both(analysis: Analysis, params: Record<string, unknown>) {
  const parsed = parseQuery(analysis, params);
  const fast = await runQuery(sink.db, PROJECT, parsed);
  const plain = await runQuery(sink.db, PROJECT, parsed, { plain: true });
  return { fast, plain, sql: planSql(PROJECT, parsed).text };
}

describe('fast paths answer what the plain SQL answers', () => {
  for (const [index, frame] of timeframes.entries()) {
    const label = `timeframe ${index} ${JSON.stringify(frame).slice(0, 90)}`;
    for (const analysis of ['count_unique', 'select_unique'] as const) {
      for (const interval of frame.timeframe ? [undefined, 'daily', 'hourly'] : [undefined]) {
        it(`${analysis} of device_id, ${interval ?? 'no interval'}, ${label}`, async () => {
          for (const collection of ['devicestate', 'activations', 'nothing-here']) {
            const { fast, plain, sql } = await both(analysis, {
              event_collection: collection,
              target_property: 'device_id',
              ...frame,
              ...(interval ? { interval } : {}),
            });
            expect(sql).toContain('keen_property_hours');
            expect(fast).toEqual(plain);
          }
        });
      }
    }
    it(`count with device_id eq each value, daily and not, ${label}`, async () => {
      for (const value of [...DEVICES.filter((d) => d === null || typeof d !== 'object'), 'lamp-9', 'absent']) {
        for (const interval of frame.timeframe ? [undefined, 'daily'] : [undefined]) {
          const filters = [{ property_name: 'device_id', operator: 'eq', property_value: value }];
          const { fast, plain, sql } = await both('count', {
            event_collection: 'devicestate',
            filters,
            ...frame,
            ...(interval ? { interval } : {}),
          });
          expect(sql).toContain(`(event -> 'device_id') = `);
          expect(fast).toEqual(plain);
        }
      }
    });
  }

  it('the comparison can fail: the data has distinct lamps and matches in every case above', async () => {
    const all = await both('count_unique', { event_collection: 'devicestate', target_property: 'device_id' });
    // Every distinct non-null value of DEVICES (7 and 7.0 are one number).
    expect(all.fast).toBe(10);
    const lamp1 = await both('count', {
      event_collection: 'devicestate',
      filters: [{ property_name: 'device_id', operator: 'eq', property_value: 'lamp-1' }],
    });
    const stringsAndArrays = await sink.db.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM keen_events WHERE collection = 'devicestate' AND (event->'device_id' ` +
        `= '"lamp-1"' OR event->'device_id' = '["lamp-1", "lamp-9"]')`,
    );
    expect(lamp1.fast).toBe(stringsAndArrays.rows[0]!.n);
    expect(lamp1.fast).toBeGreaterThan(0);
  });

  it('other queries keep the plain SQL: filtered or grouped count_unique, other targets', () => {
    const frame = timeframes[0]!;
    const filtered = parseQuery('count_unique', {
      event_collection: 'devicestate',
      target_property: 'device_id',
      filters: [{ property_name: 'n', operator: 'gt', property_value: 3 }],
      ...frame,
    });
    const grouped = parseQuery('select_unique', { event_collection: 'devicestate', target_property: 'device_id', group_by: 'n', ...frame });
    const other = parseQuery('count_unique', { event_collection: 'devicestate', target_property: 'n', ...frame });
    const nested = parseQuery('count', {
      event_collection: 'devicestate',
      filters: [{ property_name: 'device_id.id', operator: 'eq', property_value: 'lamp-1' }],
      ...frame,
    });
    for (const query of [filtered, grouped, other]) expect(planSql(PROJECT, query).text).toBe(buildSql(PROJECT, query, true).text);
    for (const query of [filtered, grouped, other, nested]) expect(planSql(PROJECT, query).text).not.toContain('keen_property_hours');
    expect(planSql(PROJECT, nested).text).not.toContain(`(event -> 'device_id')`);
  });
});

describe('the indexes and the rollup', () => {
  it('keeps one rollup row per collection, device_id value and UTC hour, none for null or missing ids', async () => {
    const { rows } = await sink.db.query<{ missing: number; extra: number; nulls: number }>(`
      WITH expected AS (
        SELECT DISTINCT project_id, collection, event -> 'device_id' AS value, date_trunc('hour', keen_timestamp AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hour
          FROM keen_events WHERE event ? 'device_id' AND event -> 'device_id' <> 'null'
      ), kept AS (SELECT project_id, collection, value, hour FROM keen_property_hours WHERE property = 'device_id')
      SELECT (SELECT count(*) FROM (SELECT * FROM expected EXCEPT SELECT * FROM kept) AS m)::int AS missing,
             (SELECT count(*) FROM (SELECT * FROM kept EXCEPT SELECT * FROM expected) AS e)::int AS extra,
             (SELECT count(*) FROM keen_property_hours WHERE value = 'null')::int AS nulls`);
    expect(rows[0]).toEqual({ missing: 0, extra: 0, nulls: 0 });
    const { rows: count } = await sink.db.query<{ n: number }>('SELECT count(*)::int AS n FROM keen_property_hours');
    expect(count[0]!.n).toBeGreaterThan(50);
  });

  it('concurrent bulk writes of the same lamps and hours all succeed (the rollup takes its locks in order)', async () => {
    const at = (i: number) => new Date(Date.UTC(2026, 3, 1) + (i % 5) * HOUR).toISOString();
    const bodies = Array.from({ length: 8 }, (_, r) =>
      JSON.stringify({
        devicestate: Array.from({ length: 200 }, (_, i) => ({
          device_id: `race-${(i * (r % 2 ? 7 : 3)) % 50}`,
          keen: { timestamp: at(i + r) },
        })),
      }),
    );
    const statuses = await Promise.all(
      bodies.map(
        async (body) =>
          (
            await fetch(new URL(`/3.0/projects/${PROJECT}/events`, sink.url), {
              method: 'POST',
              headers: { authorization: WRITE_KEY, 'content-type': 'application/json' },
              body,
            })
          ).status,
      ),
    );
    expect(statuses).toEqual(bodies.map(() => 200));
    const { rows } = await sink.db.query<{ kept: number; seen: number }>(`
      SELECT (SELECT count(*) FROM keen_property_hours WHERE value::text LIKE '"race-%')::int AS kept,
             (SELECT count(DISTINCT (event -> 'device_id', date_trunc('hour', keen_timestamp AT TIME ZONE 'UTC')))
                FROM keen_events WHERE event ->> 'device_id' LIKE 'race-%')::int AS seen`);
    expect(rows[0]!.kept).toBe(rows[0]!.seen);
    expect(rows[0]!.kept).toBeGreaterThan(50);
  });

  it('PostgreSQL uses the device_id index for eq and reads count_unique from the rollup', async () => {
    const frame = timeframes[0]!;
    const client = await sink.db.connect();
    try {
      await client.query('BEGIN');
      await client.query('SET LOCAL enable_seqscan = off');
      const plan = async (built: { text: string; values: unknown[] }) =>
        (await client.query(`EXPLAIN ${built.text}`, built.values)).rows.map((row) => row['QUERY PLAN']).join('\n');
      const eq = planSql(
        PROJECT,
        parseQuery('count', {
          event_collection: 'devicestate',
          filters: [{ property_name: 'device_id', operator: 'eq', property_value: 'lamp-2' }],
          ...frame,
        }),
      );
      expect(await plan(eq)).toContain('keen_events_device_id_idx');
      const unique = planSql(
        PROJECT,
        parseQuery('count_unique', { event_collection: 'devicestate', target_property: 'device_id', interval: 'daily', ...frame }),
      );
      expect(await plan(unique)).toContain('keen_property_hours_pkey');
      await client.query('ROLLBACK');
    } finally {
      client.release();
    }
  });
});
