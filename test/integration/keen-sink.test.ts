/**
 * keen-sink, started in-process on port 0 against a fresh database of its own, spoken to over
 * HTTP exactly as Keen clients do.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createLogger } from '../../src/shared/logger.js';
import { buildSql, parseQuery, parseTimeframe } from '../../src/keen-sink/query.js';
import { MIGRATIONS_TABLE, startKeenSink, type KeenSink } from '../../src/keen-sink/server.js';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { freePort, startService, waitForLog } from '../support/processes.js';

const PROJECT = 'lampi-test';
const WRITE_KEY = 'write-key-for-tests';
const READ_KEY = 'read-key-for-tests';

let database: TestDatabase;
let sink: KeenSink;
let db: pg.Pool;
const logLines: string[] = [];

const collection = (label = 'c') => `${label}_${randomBytes(4).toString('hex')}`;

interface Reply {
  status: number;
  body: any;
  headers: Headers;
}

async function http(
  method: string,
  path: string,
  options: { body?: string | object; key?: string | null; query?: Record<string, string> } = {},
): Promise<Reply> {
  const url = new URL(path, sink.url);
  for (const [name, value] of Object.entries(options.query ?? {})) url.searchParams.set(name, value);
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (options.key) headers.authorization = options.key;
  const body = options.body === undefined ? undefined : typeof options.body === 'string' ? options.body : JSON.stringify(options.body);
  const response = await fetch(url, { method, headers, body });
  const text = await response.text();
  let parsed: unknown = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // left as text: a test will say so
  }
  return { status: response.status, body: parsed, headers: response.headers };
}

const record = (coll: string, event: unknown, key: string | null = WRITE_KEY) =>
  http('POST', `/3.0/projects/${PROJECT}/events/${encodeURIComponent(coll)}`, {
    body: typeof event === 'string' ? event : JSON.stringify(event),
    key,
  });
const recordMany = (batch: unknown, key: string | null = WRITE_KEY) =>
  http('POST', `/3.0/projects/${PROJECT}/events`, { body: batch as object, key });

/** A GET query the way Keen's URLs carry it: structured parameters as JSON strings. */
async function query(analysis: string, params: Record<string, unknown>, key: string | null = READ_KEY): Promise<Reply> {
  const q = Object.fromEntries(
    Object.entries(params).map(([name, value]) => [name, typeof value === 'string' ? value : JSON.stringify(value)]),
  );
  return http('GET', `/3.0/projects/${PROJECT}/queries/${analysis}`, { query: q, key });
}

async function result(analysis: string, params: Record<string, unknown>): Promise<any> {
  const reply = await query(analysis, params);
  expect(reply.status, JSON.stringify(reply.body)).toBe(200);
  return reply.body.result;
}

async function storedEvents(coll: string): Promise<any[]> {
  const { rows } = await db.query<{ event: any }>('SELECT event FROM keen_events WHERE collection = $1 ORDER BY keen_timestamp, id', [
    coll,
  ]);
  return rows.map((row) => row.event);
}

const ago = (ms: number) => new Date(Date.now() - ms).toISOString();
const HOUR = 3_600_000;
const DAY = 24 * HOUR;

beforeAll(async () => {
  database = await createTestDatabase(inject('services').postgres, { migrate: false });
  const logger = createLogger('keen-sink', 'info', { write: (line: string) => void logLines.push(line) });
  sink = await startKeenSink({
    databaseUrl: database.url,
    projectId: PROJECT,
    writeKey: WRITE_KEY,
    readKey: READ_KEY,
    port: 0,
    host: '127.0.0.1',
    logger,
  });
  db = new pg.Pool({ connectionString: database.url, max: 4 });
});

afterAll(async () => {
  await db?.end();
  await sink?.close();
  await database?.drop();
});

describe('migrations', () => {
  it('applies its own migrations, recorded in its own bookkeeping table, and again is a no-op', async () => {
    const { rows } = await db.query(`SELECT migration_name FROM ${MIGRATIONS_TABLE}`);
    expect(rows.map((row) => row.migration_name)).toEqual(['20261128120000_keen_events', '20261203120000_keen_query_speed']);
    const { rows: prisma } = await db.query(`SELECT to_regclass('_prisma_migrations') AS t`);
    expect(prisma[0].t).toBeNull();
    const again = await startKeenSink({
      databaseUrl: database.url,
      projectId: PROJECT,
      writeKey: WRITE_KEY,
      readKey: READ_KEY,
      port: 0,
      host: '127.0.0.1',
      logger: createLogger('keen-sink', 'silent'),
    });
    await again.close();
    const { rows: after } = await db.query(`SELECT count(*)::int AS n FROM ${MIGRATIONS_TABLE}`);
    expect(after[0].n).toBe(2);
  });
});

describe('npm run keen-sink', () => {
  const env = { KEEN_PROJECT_ID: PROJECT, KEEN_WRITE_KEY: WRITE_KEY, KEEN_READ_KEY: READ_KEY, KEEN_SINK_HOST: '127.0.0.1' };

  it('says what is wrong in one line and exits 1: missing settings, unreachable PostgreSQL', async () => {
    const missing = startService('keen-sink', { KEEN_PROJECT_ID: PROJECT });
    expect(await missing.exited).toBe(1);
    expect(missing.output().trim().split('\n')).toEqual([
      'keen-sink: invalid configuration: KEEN_SINK_DATABASE_URL (or DATABASE_URL) is required; KEEN_WRITE_KEY is required; KEEN_READ_KEY is required',
    ]);
    const unreachable = startService('keen-sink', {
      ...env,
      KEEN_SINK_PORT: String(await freePort()),
      DATABASE_URL: `postgresql://keen:secret@127.0.0.1:${await freePort()}/keen`,
    });
    expect(await unreachable.exited).toBe(1);
    const lines = unreachable.output().trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]!.replace(/@127\.0\.0\.1:\d+\//, '@127.0.0.1:<port>/')).toBe(
      'keen-sink: cannot reach PostgreSQL at KEEN_SINK_DATABASE_URL=postgresql://keen:***@127.0.0.1:<port>/keen (ECONNREFUSED): ' +
        'start PostgreSQL or fix KEEN_SINK_DATABASE_URL',
    );
  });

  it('serves on KEEN_SINK_PORT, falling back to DATABASE_URL, and stops on SIGTERM', async () => {
    const port = await freePort();
    const proc = startService('keen-sink', { ...env, KEEN_SINK_PORT: String(port), DATABASE_URL: database.url });
    try {
      await waitForLog(proc, 'keen-sink ready');
      const reply = await fetch(
        `http://127.0.0.1:${port}/3.0/projects/${PROJECT}/queries/count?api_key=${READ_KEY}&event_collection=nothing`,
      );
      expect(await reply.json()).toEqual({ result: 0 });
    } finally {
      expect(await proc.kill('SIGTERM')).toBe(0);
    }
  });
});

describe('write API: wire format', () => {
  it('records a single event: 201 {"created": true}', async () => {
    const coll = collection('single');
    const reply = await record(coll, { device_id: 'aa', on: true });
    expect(reply.status).toBe(201);
    expect(reply.body).toEqual({ created: true });
    expect(reply.headers.get('content-type')).toMatch(/^application\/json/);
    const [event] = await storedEvents(coll);
    expect(event).toMatchObject({ device_id: 'aa', on: true });
  });

  it('records a bulk request: 200 with per-event results in order; a bad event fails alone', async () => {
    const a = collection('bulk_a');
    const b = collection('bulk_b');
    const reply = await recordMany({
      [a]: [{ n: 1 }, { 'bad.name': 2 }, { n: 3 }, { keen: 'not an object' }, { n: 5 }],
      [b]: [{ n: 10 }],
    });
    expect(reply.status).toBe(200);
    expect(Object.keys(reply.body)).toEqual([a, b]);
    expect(reply.body[a]).toEqual([
      { success: true },
      { success: false, error: { name: 'InvalidPropertyNameError', description: expect.stringContaining('bad.name') } },
      { success: true },
      { success: false, error: { name: 'InvalidPropertyValueError', description: expect.stringContaining('keen') } },
      { success: true },
    ]);
    expect(reply.body[b]).toEqual([{ success: true }]);
    expect((await storedEvents(a)).map((event) => event.n).sort()).toEqual([1, 3, 5]);
    expect((await storedEvents(b)).map((event) => event.n)).toEqual([10]);
  });

  it('gives every event of a badly named collection in a bulk request its own error, and stores the rest', async () => {
    const good = collection('good');
    const reply = await recordMany({ $bad: [{ n: 1 }, { n: 2 }], [good]: [{ n: 3 }] });
    expect(reply.status).toBe(200);
    expect(reply.body.$bad).toEqual([
      { success: false, error: { name: 'InvalidCollectionNameError', description: expect.any(String) } },
      { success: false, error: { name: 'InvalidCollectionNameError', description: expect.any(String) } },
    ]);
    expect(reply.body[good]).toEqual([{ success: true }]);
  });

  it('answers keen-tracking 5 (the official Node SDK) in the shapes it expects', async () => {
    // @ts-expect-error keen-tracking ships no types
    const { default: KeenTracking } = await import('keen-tracking');
    const client = new KeenTracking({
      projectId: PROJECT,
      writeKey: WRITE_KEY,
      protocol: 'http',
      host: '127.0.0.1',
      nodeRequestConfig: { port: sink.port },
    });
    const coll = collection('sdk');
    await expect(client.recordEvent(coll, { via: 'sdk' })).resolves.toEqual({ created: true });
    await expect(client.recordEvents({ [coll]: [{ via: 'bulk' }, { $bad: 1 }] })).resolves.toEqual({
      [coll]: [{ success: true }, { success: false, error: { name: 'InvalidPropertyNameError', description: expect.any(String) } }],
    });
    expect(await storedEvents(coll)).toHaveLength(2);
  });
});

describe('write API: authentication', () => {
  it('takes the write key from the Authorization header or ?api_key=', async () => {
    const coll = collection('auth');
    expect((await record(coll, { via: 'header' })).status).toBe(201);
    const viaQuery = await http('POST', `/3.0/projects/${PROJECT}/events/${coll}`, {
      body: { via: 'query' },
      key: null,
      query: { api_key: WRITE_KEY },
    });
    expect(viaQuery.status).toBe(201);
    expect(await storedEvents(coll)).toHaveLength(2);
  });

  it('refuses a missing or wrong key, and the read key, with 401 and stores nothing', async () => {
    const coll = collection('auth_bad');
    for (const key of [null, 'wrong', READ_KEY]) {
      const single = await record(coll, { n: 1 }, key);
      expect(single.status).toBe(401);
      expect(single.body).toEqual({ message: expect.any(String), error_code: 'InvalidApiKeyError' });
      const bulk = await recordMany({ [coll]: [{ n: 1 }] }, key);
      expect(bulk.status).toBe(401);
      expect(bulk.body.error_code).toBe('InvalidApiKeyError');
    }
    expect(await storedEvents(coll)).toHaveLength(0);
  });

  it('answers 404 for another project id', async () => {
    const reply = await http('POST', '/3.0/projects/someone-else/events/x', { body: {}, key: WRITE_KEY });
    expect(reply.status).toBe(404);
    expect(reply.body).toEqual({ message: expect.any(String), error_code: 'ProjectNotFoundError' });
  });
});

describe('write API: validation (400 with {message, error_code})', () => {
  const cases: Array<[string, string, unknown, string]> = [
    ['collection name starting with $', '$events', {}, 'InvalidCollectionNameError'],
    ['collection name of 65 characters', 'c'.repeat(65), {}, 'InvalidCollectionNameError'],
    ['property name with a dot', 'ok', { 'a.b': 1 }, 'InvalidPropertyNameError'],
    ['property name starting with $', 'ok', { $a: 1 }, 'InvalidPropertyNameError'],
    ['property name of 257 characters', 'ok', { ['p'.repeat(257)]: 1 }, 'InvalidPropertyNameError'],
    ['nested property name with a dot', 'ok', { state: { list: [{ 'x.y': 1 }] } }, 'InvalidPropertyNameError'],
    ['root keen that is an array', 'ok', { keen: [] }, 'InvalidPropertyValueError'],
    ['root keen that is a string', 'ok', { keen: 'x' }, 'InvalidPropertyValueError'],
    ['root keen that is null', 'ok', { keen: null }, 'InvalidPropertyValueError'],
    ['keen.timestamp that is not a date', 'ok', { keen: { timestamp: 'yesterday' } }, 'InvalidPropertyValueError'],
    ['uniqueness_token of 65 characters', 'ok', { keen: { uniqueness_token: 't'.repeat(65) } }, 'InvalidPropertyValueError'],
    ['uniqueness_token that is not a string', 'ok', { keen: { uniqueness_token: 7 } }, 'InvalidPropertyValueError'],
    ['a NUL character (jsonb cannot hold it)', 'ok', { s: 'a\u0000b' }, 'InvalidPropertyValueError'],
    ['an event that is not an object', 'ok', [1, 2], 'InvalidEventError'],
  ];
  it.each(cases)('refuses a %s', async (_label, coll, event, code) => {
    const reply = await record(coll, event);
    expect(reply.status).toBe(400);
    expect(reply.body).toEqual({ message: expect.any(String), error_code: code });
  });

  it('accepts the limits themselves: 64-character collection, 256-character property name', async () => {
    const coll = `l${randomBytes(4).toString('hex')}`.padEnd(64, 'x');
    expect((await record(coll, { ['p'.repeat(256)]: 1 })).status).toBe(201);
  });

  it('refuses a body that is not JSON', async () => {
    const reply = await record('ok', '{"unterminated": ');
    expect(reply.status).toBe(400);
    expect(reply.body.error_code).toBe('InvalidJsonError');
  });

  it('answers 413 for an event over 900,000 bytes (in bulk it fails alone) and for a bulk request over 10 MB', async () => {
    const coll = collection('big');
    const event = (bytes: number) => JSON.stringify({ pad: 'x'.repeat(bytes - '{"pad":""}'.length) });
    expect(Buffer.byteLength(event(900_001))).toBe(900_001);
    const over = await record(coll, event(900_001));
    expect(over.status).toBe(413);
    expect(over.body).toEqual({ message: expect.any(String), error_code: 'EventTooLargeError' });
    expect((await record(coll, event(900_000))).status).toBe(201);
    const bulk = await recordMany(`{"${coll}": [{"n": 1}, ${event(900_001)}]}`);
    expect(bulk.status).toBe(200);
    expect(bulk.body[coll]).toEqual([
      { success: true },
      { success: false, error: { name: 'EventTooLargeError', description: expect.stringContaining('900000') } },
    ]);
    const huge = await recordMany(`{"${coll}": [${Array.from({ length: 12 }, () => event(899_000)).join(',')}]}`);
    expect(huge.status).toBe(413);
    expect(huge.body.error_code).toBe('RequestTooLargeError');
    expect(await storedEvents(coll)).toHaveLength(2);
  });
});

describe('write API: enrichment and add-ons', () => {
  it('sets keen.id and keen.created_at, keeps a given keen.timestamp and sets an absent one', async () => {
    const coll = collection('enrich');
    const before = Date.now();
    await recordMany({ [coll]: [{ n: 1, keen: { timestamp: '2025-03-04T05:06:07.089Z', id: 'mine' } }, { n: 2 }] });
    const after = Date.now();
    const [given, absent] = (await storedEvents(coll)).sort((x, y) => x.n - y.n);
    expect(given.keen.timestamp).toBe('2025-03-04T05:06:07.089Z');
    expect(given.keen.id).toMatch(/^[0-9a-f]{24}$/);
    expect(given.keen.id).not.toBe(absent.keen.id);
    for (const event of [given, absent]) {
      const created = Date.parse(event.keen.created_at);
      expect(created).toBeGreaterThanOrEqual(before);
      expect(created).toBeLessThanOrEqual(after);
    }
    expect(absent.keen.timestamp).toBe(absent.keen.created_at);
    // The timestamp column the timeframes use agrees with the JSON.
    const { rows } = await db.query(`SELECT keen_timestamp FROM keen_events WHERE collection = $1 AND event->>'n' = '1'`, [coll]);
    expect(rows[0].keen_timestamp.toISOString()).toBe('2025-03-04T05:06:07.089Z');
  });

  it('applies keen:date_time_parser with Keen fields in UTC and removes the add-ons from the stored event', async () => {
    const coll = collection('dtp');
    const addon = { name: 'keen:date_time_parser', input: { date_time: 'keen.timestamp' }, output: 'timestamp.info' };
    // A Sunday in ISO week 52 of 2024, given with an offset: the fields are in UTC.
    await record(coll, { keen: { timestamp: '2024-12-30T01:59:58.123+02:00', addons: [addon] } });
    const [event] = await storedEvents(coll);
    expect(event.keen.addons).toBeUndefined();
    expect(event.timestamp.info).toEqual({
      millisecond: 123,
      second: 58,
      minute: 59,
      hour: 23,
      day_of_week: 7,
      day_of_week_string: 'Sunday',
      day_of_month: 29,
      week: 52,
      month: 12,
      year: 2024,
      timezone_offset: 0,
    });
  });

  it('stores events with an add-on it does not implement, without its output, and logs that once', async () => {
    const coll = collection('addon');
    const unknown = { name: 'keen:ip_to_geo', input: { ip: 'ip' }, output: 'geo' };
    const reply = await recordMany({
      [coll]: [
        { ip: '1.2.3.4', keen: { addons: [unknown] } },
        { ip: '5.6.7.8', keen: { addons: [unknown] } },
      ],
    });
    expect(reply.body[coll]).toEqual([{ success: true }, { success: true }]);
    await record(coll, { ip: '9.9.9.9', keen: { addons: [unknown] } });
    const events = await storedEvents(coll);
    expect(events).toHaveLength(3);
    for (const event of events) {
      expect(event.geo).toBeUndefined();
      expect(event.keen.addons).toBeUndefined();
    }
    expect(logLines.filter((line) => line.includes('keen:ip_to_geo'))).toHaveLength(1);
  });

  it('refuses a date_time_parser whose input is not a date', async () => {
    const reply = await record('ok', {
      when: 'soon',
      keen: { addons: [{ name: 'keen:date_time_parser', input: { date_time: 'when' }, output: 'when_info' }] },
    });
    expect(reply.status).toBe(400);
    expect(reply.body.error_code).toBe('InvalidPropertyValueError');
  });
});

describe('write API: keen.uniqueness_token', () => {
  it('stores the first event with a token and says the second is a duplicate', async () => {
    const coll = collection('unique');
    const first = await record(coll, { n: 1, keen: { uniqueness_token: 'tok-1' } });
    expect(first).toMatchObject({ status: 201, body: { created: true } });
    const second = await record(coll, { n: 2, keen: { uniqueness_token: 'tok-1' } });
    expect(second.status).toBe(200);
    expect(second.body).toEqual({ created: false, duplicate: true, message: expect.stringContaining('uniqueness_token') });
    const bulk = await recordMany({
      [coll]: [
        { n: 3, keen: { uniqueness_token: 'tok-1' } },
        { n: 4, keen: { uniqueness_token: 'tok-2' } },
        { n: 5, keen: { uniqueness_token: 'tok-2' } },
      ],
    });
    expect(bulk.body[coll]).toEqual([
      { success: true, duplicate: true, message: expect.any(String) },
      { success: true },
      { success: true, duplicate: true, message: expect.any(String) },
    ]);
    const events = await storedEvents(coll);
    expect(events.map((event) => event.n).sort()).toEqual([1, 4]);
    expect(events.find((event) => event.n === 1).keen.uniqueness_token).toBe('tok-1');
  });

  it('dedupes per collection', async () => {
    const a = collection('ua');
    const b = collection('ub');
    expect((await record(a, { keen: { uniqueness_token: 'same' } })).status).toBe(201);
    expect((await record(b, { keen: { uniqueness_token: 'same' } })).status).toBe(201);
  });

  it('stores exactly one of many concurrent duplicates, single and bulk', async () => {
    const coll = collection('race');
    const replies = await Promise.all(Array.from({ length: 30 }, (_, n) => record(coll, { n, keen: { uniqueness_token: 'raced' } })));
    expect(replies.filter((reply) => reply.status === 201)).toHaveLength(1);
    expect(replies.filter((reply) => reply.status === 200 && reply.body.duplicate === true)).toHaveLength(29);
    // Bulk requests claiming the same tokens in opposite orders: no deadlock, one event per token.
    const tokens = Array.from({ length: 50 }, (_, i) => `t${i}`);
    const batch = (order: string[]) => ({ [coll]: order.map((token) => ({ token, keen: { uniqueness_token: token } })) });
    const bulks = await Promise.all(Array.from({ length: 8 }, (_, i) => recordMany(batch(i % 2 ? [...tokens].reverse() : tokens))));
    for (const reply of bulks) expect(reply.status).toBe(200);
    const stored = bulks.flatMap((reply) => reply.body[coll]).filter((item: any) => item.success && !item.duplicate);
    expect(stored).toHaveLength(50);
    const events = await storedEvents(coll);
    expect(events).toHaveLength(51);
    expect(new Set(events.map((event) => event.keen.uniqueness_token)).size).toBe(51);
  });

  it('lets a token be used again once its first use is more than 31 days old', async () => {
    const coll = collection('expired');
    await record(coll, { n: 1, keen: { uniqueness_token: 'old' } });
    await db.query(`UPDATE keen_uniqueness_tokens SET claimed_at = now() - interval '32 days' WHERE collection = $1`, [coll]);
    const again = await record(coll, { n: 2, keen: { uniqueness_token: 'old' } });
    expect(again.status).toBe(201);
    expect((await record(coll, { n: 3, keen: { uniqueness_token: 'old' } })).body.duplicate).toBe(true);
    expect((await storedEvents(coll)).map((event) => event.n).sort()).toEqual([1, 2]);
  });
});

describe('query API', () => {
  const coll = collection('lamps');
  // Absolute times inside a fixed day, so interval tests do not depend on the clock.
  const day = '2026-01-10';
  const at = (time: string) => `${day}T${time}Z`;
  const events = [
    {
      device_id: 'lamp-a',
      state: { on: true, brightness: 0.5, hue: 10 },
      tags: ['kitchen', 'warm'],
      note: 'hello world',
      keen: { timestamp: at('01:00:00') },
    },
    { device_id: 'lamp-a', state: { on: false, brightness: 0.0, hue: 20 }, tags: ['kitchen'], keen: { timestamp: at('01:30:00') } },
    { device_id: 'lamp-b', state: { on: true, brightness: 1.0, hue: 30 }, tags: [], note: 'goodbye', keen: { timestamp: at('02:15:00') } },
    { device_id: 'lamp-c', state: { on: true, brightness: 0.25 }, keen: { timestamp: at('05:00:00') } },
    { device_id: 'lamp-b', state: { on: false, brightness: 'dim' }, keen: { timestamp: '2026-02-03T00:00:00Z' } },
  ];
  const allTime = { event_collection: coll };
  const jan10 = { start: at('00:00:00'), end: '2026-01-11T00:00:00Z' };

  beforeAll(async () => {
    const reply = await recordMany({ [coll]: events });
    expect(reply.body[coll].every((item: any) => item.success)).toBe(true);
  });

  it('authenticates with the read key only', async () => {
    expect((await query('count', allTime)).status).toBe(200);
    expect(
      (await http('GET', `/3.0/projects/${PROJECT}/queries/count`, { key: null, query: { api_key: READ_KEY, event_collection: coll } }))
        .status,
    ).toBe(200);
    for (const key of [null, WRITE_KEY, 'nope']) {
      const reply = await query('count', allTime, key);
      expect(reply.status).toBe(401);
      expect(reply.body.error_code).toBe('InvalidApiKeyError');
    }
  });

  it("answers each analysis type in Keen's shape", async () => {
    expect(await result('count', allTime)).toBe(5);
    expect(await result('count_unique', { ...allTime, target_property: 'device_id' })).toBe(3);
    expect(await result('select_unique', { ...allTime, target_property: 'device_id' })).toEqual(['lamp-a', 'lamp-b', 'lamp-c']);
    expect(await result('select_unique', { ...allTime, target_property: 'state.on' })).toEqual([false, true]);
    // Non-numbers ("dim") are ignored by the numeric analyses.
    expect(await result('sum', { ...allTime, target_property: 'state.brightness' })).toBe(1.75);
    expect(await result('minimum', { ...allTime, target_property: 'state.brightness' })).toBe(0);
    expect(await result('maximum', { ...allTime, target_property: 'state.brightness' })).toBe(1);
    expect(await result('average', { ...allTime, target_property: 'state.brightness' })).toBeCloseTo(0.4375, 10);
    expect(await result('average', { ...allTime, target_property: 'missing' })).toBeNull();
    expect(await result('sum', { ...allTime, target_property: 'missing' })).toBe(0);
    const extraction = await result('extraction', allTime);
    expect(extraction).toHaveLength(5);
    expect(extraction[0]).toMatchObject({ device_id: 'lamp-a', state: { hue: 10 }, keen: { timestamp: at('01:00:00.000') } });
    expect(await result('extraction', { ...allTime, latest: '2', property_names: ['device_id', 'state.on'] })).toEqual([
      { device_id: 'lamp-c', state: { on: true } },
      { device_id: 'lamp-b', state: { on: false } },
    ]);
  });

  it('answers POSTed JSON queries, as keen-analysis sends them', async () => {
    const reply = await http('POST', `/3.0/projects/${PROJECT}/queries/count_unique`, {
      key: READ_KEY,
      body: {
        analysis_type: 'count_unique',
        event_collection: coll,
        target_property: 'device_id',
        timeframe: jan10,
        filters: [{ property_name: 'state.on', operator: 'eq', property_value: true }],
        timezone: 0,
      },
    });
    expect(reply).toMatchObject({ status: 200, body: { result: 3 } });
  });

  it('filters with eq, ne, lt, lte, gt, gte, exists, in and contains', async () => {
    const count = (filters: unknown[]) => result('count', { ...allTime, filters });
    const f = (property_name: string, operator: string, property_value: unknown) => ({ property_name, operator, property_value });
    expect(await count([f('device_id', 'eq', 'lamp-a')])).toBe(2);
    expect(await count([f('state.on', 'eq', true)])).toBe(3);
    expect(await count([f('tags', 'eq', 'kitchen')])).toBe(2); // any element of an array
    expect(await count([f('device_id', 'ne', 'lamp-a')])).toBe(3);
    expect(await count([f('state.hue', 'ne', 10)])).toBe(4); // absent counts as not equal
    expect(await count([f('state.brightness', 'lt', 0.5)])).toBe(2);
    expect(await count([f('state.brightness', 'lte', 0.5)])).toBe(3);
    expect(await count([f('state.brightness', 'gt', 0.5)])).toBe(1);
    expect(await count([f('state.brightness', 'gte', 0.25)])).toBe(3);
    expect(await count([f('device_id', 'gt', 'lamp-a')])).toBe(3); // strings compare as strings
    expect(await count([f('keen.timestamp', 'lt', at('02:00:00'))])).toBe(2);
    expect(await count([f('note', 'exists', true)])).toBe(2);
    expect(await count([f('note', 'exists', false)])).toBe(3);
    expect(await count([f('device_id', 'in', ['lamp-b', 'lamp-c', 'nope'])])).toBe(3);
    expect(await count([f('note', 'contains', 'world')])).toBe(1);
    expect(await count([f('tags', 'contains', 'warm')])).toBe(1);
    expect(await count([f('state.on', 'eq', true), f('state.brightness', 'gte', 0.5)])).toBe(2); // filters are ANDed
  });

  it('groups by one or more properties, nested ones included, with absent values as null', async () => {
    expect(await result('count', { ...allTime, group_by: 'device_id' })).toEqual([
      { device_id: 'lamp-a', result: 2 },
      { device_id: 'lamp-b', result: 2 },
      { device_id: 'lamp-c', result: 1 },
    ]);
    expect(await result('average', { ...allTime, target_property: 'state.hue', group_by: ['state.on'] })).toEqual([
      { 'state.on': false, result: 20 },
      { 'state.on': true, result: 20 },
    ]);
    const pairs = await result('count', { ...allTime, group_by: ['device_id', 'state.on'] });
    expect(pairs).toContainEqual({ device_id: 'lamp-b', 'state.on': false, result: 1 });
    expect(pairs).toHaveLength(5);
    expect(await result('count', { ...allTime, group_by: 'note' })).toContainEqual({ note: null, result: 3 });
  });

  it('splits a timeframe into intervals: [{timeframe: {start, end}, value}]', async () => {
    const hourly = await result('count', { ...allTime, timeframe: { start: at('00:00:00'), end: at('06:00:00') }, interval: 'hourly' });
    expect(hourly).toHaveLength(6);
    expect(hourly.map((item: any) => item.value)).toEqual([0, 2, 1, 0, 0, 1]);
    expect(hourly[1]).toEqual({ value: 2, timeframe: { start: at('01:00:00.000'), end: at('02:00:00.000') } });
    const monthly = await result('count', {
      ...allTime,
      timeframe: { start: '2026-01-01T00:00:00Z', end: '2026-03-01T00:00:00Z' },
      interval: 'monthly',
    });
    expect(monthly).toEqual([
      { value: 4, timeframe: { start: '2026-01-01T00:00:00.000Z', end: '2026-02-01T00:00:00.000Z' } },
      { value: 1, timeframe: { start: '2026-02-01T00:00:00.000Z', end: '2026-03-01T00:00:00.000Z' } },
    ]);
    const grouped = await result('select_unique', {
      ...allTime,
      target_property: 'device_id',
      group_by: 'state.on',
      timeframe: jan10,
      interval: 'daily',
    });
    expect(grouped).toEqual([
      {
        value: [
          { 'state.on': false, result: ['lamp-a'] },
          { 'state.on': true, result: ['lamp-a', 'lamp-b', 'lamp-c'] },
        ],
        timeframe: { start: '2026-01-10T00:00:00.000Z', end: '2026-01-11T00:00:00.000Z' },
      },
    ]);
    for (const interval of ['minutely', 'weekly', 'yearly'])
      expect((await query('count', { ...allTime, timeframe: jan10, interval })).status).toBe(200);
  });

  it('limits timeframes: absolute {start, end}, and relative this_ and previous_ units', async () => {
    expect(await result('count', { ...allTime, timeframe: { start: at('01:30:00'), end: at('05:00:00') } })).toBe(2); // start inclusive, end exclusive
    const recent = collection('recent');
    await recordMany({
      [recent]: [
        { k: 'now', keen: { timestamp: ago(1000) } },
        { k: '3 days', keen: { timestamp: ago(3 * DAY) } },
        { k: '20 days', keen: { timestamp: ago(20 * DAY) } },
        { k: '2 years', keen: { timestamp: ago(800 * DAY) } },
      ],
    });
    const count = (timeframe: string) => result('count', { event_collection: recent, timeframe });
    expect(await count('this_14_days')).toBe(2);
    expect(await count('this_30_days')).toBe(3);
    expect(await count('this_2_hours')).toBe(1);
    expect(await count('this_minute')).toBeLessThanOrEqual(1);
    expect(await count('previous_7_days')).toBe(1);
    expect(await count('this_4_years')).toBe(4);
    expect(await count('this_2_months')).toBeGreaterThanOrEqual(2);
    expect(await count('previous_1_weeks')).toBeLessThanOrEqual(2);
    expect(await result('count', { event_collection: recent })).toBe(4); // no timeframe: all time
  });

  it('computes relative timeframes on unit boundaries, in UTC unless a timezone offset is given', () => {
    const now = new Date('2026-03-18T15:42:10.500Z'); // a Wednesday
    const iso = (tf: { start: Date; end: Date }) => [tf.start.toISOString(), tf.end.toISOString()];
    expect(iso(parseTimeframe('this_14_days', now, 0))).toEqual(['2026-03-05T00:00:00.000Z', '2026-03-18T15:42:10.500Z']);
    expect(iso(parseTimeframe('previous_2_hours', now, 0))).toEqual(['2026-03-18T13:00:00.000Z', '2026-03-18T15:00:00.000Z']);
    expect(iso(parseTimeframe('previous_minute', now, 0))).toEqual(['2026-03-18T15:41:00.000Z', '2026-03-18T15:42:00.000Z']);
    expect(iso(parseTimeframe('this_week', now, 0))).toEqual(['2026-03-15T00:00:00.000Z', '2026-03-18T15:42:10.500Z']);
    expect(iso(parseTimeframe('previous_1_months', now, 0))).toEqual(['2026-02-01T00:00:00.000Z', '2026-03-01T00:00:00.000Z']);
    expect(iso(parseTimeframe('this_year', now, 0))).toEqual(['2026-01-01T00:00:00.000Z', '2026-03-18T15:42:10.500Z']);
    expect(iso(parseTimeframe('previous_3_years', now, 0))).toEqual(['2023-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z']);
    expect(iso(parseTimeframe('yesterday', now, 0))).toEqual(['2026-03-17T00:00:00.000Z', '2026-03-18T00:00:00.000Z']);
    // UTC-8: local midnight is 08:00Z.
    expect(iso(parseTimeframe('previous_1_days', now, -8 * 3600))).toEqual(['2026-03-17T08:00:00.000Z', '2026-03-18T08:00:00.000Z']);
  });

  it('refuses bad queries with 400 and Keen-style error codes', async () => {
    const bad: Array<[string, Record<string, unknown>, string]> = [
      ['count', {}, 'MissingRequiredParameterError'],
      ['sum', { event_collection: coll }, 'MissingRequiredParameterError'],
      ['count', { event_collection: coll, timeframe: 'last_week' }, 'TimeframeDefinitionError'],
      ['count', { event_collection: coll, timeframe: { start: jan10.end, end: jan10.start } }, 'TimeframeDefinitionError'],
      ['count', { event_collection: coll, interval: 'daily' }, 'InvalidIntervalError'],
      ['count', { event_collection: coll, timeframe: jan10, interval: 'fortnightly' }, 'InvalidIntervalError'],
      ['count', { event_collection: coll, timeframe: 'this_10_years', interval: 'minutely' }, 'InvalidIntervalError'],
      [
        'count',
        { event_collection: coll, filters: [{ property_name: 'a', operator: 'like', property_value: 1 }] },
        'FilterDefinitionError',
      ],
      ['count', { event_collection: coll, filters: '{"not": "an array"}' }, 'FilterDefinitionError'],
      ['count', { event_collection: coll, filters: '[' }, 'InvalidParameterError'],
      ['count', { event_collection: coll, timezone: 'Mars/Olympus' }, 'InvalidTimezoneError'],
      ['sum', { event_collection: coll, target_property: 'a..b' }, 'InvalidParameterError'],
    ];
    for (const [analysis, params, code] of bad) {
      const reply = await query(analysis, params);
      expect([reply.status, reply.body], JSON.stringify(params)).toEqual([400, { message: expect.any(String), error_code: code }]);
    }
    const unknown = await query('retention', { event_collection: coll });
    expect(unknown.status).toBe(404);
  });

  it("answers the seed's Explorer example: select_unique on activations, device_id, this_14_days", async () => {
    const devices = ['b827eb000001', 'b827eb000002'];
    await recordMany({
      activations: [
        { device_id: devices[0], user: 'parked_device_user', keen: { timestamp: ago(HOUR) } },
        { device_id: devices[1], user: 'parked_device_user', keen: { timestamp: ago(13 * DAY) } },
        { device_id: devices[0], user: 'parked_device_user', keen: { timestamp: ago(2 * DAY) } },
        { device_id: 'b827eb0000ff', user: 'parked_device_user', keen: { timestamp: ago(15 * DAY) } },
      ],
    });
    const reply = await http(
      'GET',
      `/3.0/projects/${PROJECT}/queries/select_unique?api_key=${READ_KEY}&event_collection=activations&target_property=device_id&timeframe=this_14_days`,
    );
    expect(reply).toMatchObject({ status: 200, body: { result: devices } });
  });

  it('treats SQL-looking property paths and values as data', async () => {
    const evil = ["device_id'); DROP TABLE keen_events; --", 'x" OR 1=1 --', "state}'::text[]) OR true --", '{keen,id}'];
    for (const path of evil) {
      expect(await result('count_unique', { ...allTime, target_property: path })).toBe(0);
      expect(await result('count', { ...allTime, filters: [{ property_name: path, operator: 'exists', property_value: true }] })).toBe(0);
      expect(await result('count', { ...allTime, filters: [{ property_name: 'device_id', operator: 'eq', property_value: path }] })).toBe(
        0,
      );
      expect(await result('count', { ...allTime, group_by: path })).toEqual([{ [path]: null, result: 5 }]);
    }
    expect(await result('count', { event_collection: "x' OR '1'='1" })).toBe(0);
    expect(await result('count', allTime)).toBe(5);
    const { rows } = await db.query(`SELECT to_regclass('keen_events') AS t`);
    expect(rows[0].t).toBe('keen_events');
  });

  it('builds SQL that carries every user input as a bind parameter and can use the indexes', async () => {
    const parsed = parseQuery('count', {
      event_collection: coll,
      timeframe: jan10,
      filters: JSON.stringify([
        { property_name: "a'b", operator: 'eq', property_value: "c'd" },
        { property_name: 'state.brightness', operator: 'gt', property_value: 0.1 },
      ]),
      group_by: 'device_id',
    });
    const { text, values } = buildSql(PROJECT, parsed);
    expect(text).not.toContain("a'b");
    expect(text).not.toContain("c'd");
    expect(text).not.toContain(coll);
    expect(values).toContainEqual(['device_id']);
    const client = await db.connect();
    try {
      await client.query('BEGIN');
      await client.query('SET LOCAL enable_seqscan = off');
      const timeframeOnly = buildSql(PROJECT, parseQuery('count', { event_collection: coll, timeframe: jan10 }));
      const plan = (await client.query(`EXPLAIN ${timeframeOnly.text}`, timeframeOnly.values)).rows
        .map((row) => row['QUERY PLAN'])
        .join('\n');
      // Either index leads with (project_id, collection) and ends with keen_timestamp.
      expect(plan).toMatch(/keen_events_(collection_timestamp|device_id)_idx/);
      const eq = buildSql(
        PROJECT,
        parseQuery('count', {
          event_collection: coll,
          filters: [{ property_name: 'device_id', operator: 'eq', property_value: 'lamp-a' }],
        }),
      );
      const eqPlan = (await client.query(`EXPLAIN ${eq.text}`, eq.values)).rows.map((row) => row['QUERY PLAN']).join('\n');
      expect(eqPlan).toMatch(/keen_events_(event|collection_timestamp|device_id)_idx/);
      await client.query('ROLLBACK');
    } finally {
      client.release();
    }
  });
});
