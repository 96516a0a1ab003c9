/**
 * How fast keen-sink answers a `count` with a timeframe and a filter over 1,000,000 events.
 *
 *   node --import tsx bench/keen-sink-count.ts [--events 1000000] [--runs 7] [--keep]
 *
 * Creates a scratch database on the PostgreSQL at BENCH_DATABASE_ADMIN_URL (default: the local
 * postgres superuser), starts keen-sink in-process on it (so its migrations and indexes are the
 * real ones), fills keen_events with generate_series (90 days of devicestate events from 1,000
 * lamps), then times queries through the HTTP API. Prints one line per query: median and best of
 * the timed runs, after one warm-up. The scratch database is dropped unless --keep is given.
 */
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { createLogger } from '../src/shared/logger.js';
import { startKeenSink } from '../src/keen-sink/server.js';

const { values: args } = parseArgs({
  options: { events: { type: 'string', default: '1000000' }, runs: { type: 'string', default: '7' }, keep: { type: 'boolean', default: false } },
});
const EVENTS = Number(args.events);
const RUNS = Number(args.runs);
const PROJECT = 'bench';
const READ_KEY = 'bench-read';
const DAYS = 90;

const adminUrl = process.env.BENCH_DATABASE_ADMIN_URL ?? 'postgresql://postgres@127.0.0.1:5432/postgres';
const name = `keen_sink_bench_${randomBytes(3).toString('hex')}`;
const admin = new pg.Client({ connectionString: adminUrl });
await admin.connect();
await admin.query(`CREATE DATABASE ${name}`);
const url = new URL(adminUrl);
url.pathname = `/${name}`;

const sink = await startKeenSink({
  databaseUrl: url.toString(),
  projectId: PROJECT,
  writeKey: 'bench-write',
  readKey: READ_KEY,
  port: 0,
  host: '127.0.0.1',
  logger: createLogger('keen-sink', 'warn'),
});

try {
  const started = performance.now();
  // Event g is g * (90 days / N) old; lamp-(g % 1000); on for one event in three.
  await sink.db.query(
    `INSERT INTO keen_events (id, project_id, collection, keen_timestamp, keen_created_at, event)
     SELECT id, $1, 'devicestate', ts, ts,
            jsonb_build_object(
              'device_id', 'lamp-' || (g % 1000),
              'state', jsonb_build_object('on', g % 3 = 0, 'brightness', (g % 100) / 100.0, 'hue', (g % 360)),
              'keen', jsonb_build_object('id', id, 'timestamp', stamp, 'created_at', stamp))
       FROM generate_series(1, $2::int) AS g,
            LATERAL (SELECT now() - g * make_interval(secs => $3::float8 / $2::int) AS ts) AS t,
            LATERAL (SELECT lpad(to_hex(g), 24, '0') AS id, to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS stamp) AS s`,
    [PROJECT, EVENTS, DAYS * 86_400],
  );
  await sink.db.query('VACUUM ANALYZE keen_events');
  const { rows } = await sink.db.query(`SELECT pg_size_pretty(pg_total_relation_size('keen_events')) AS size`);
  process.stdout.write(`inserted ${EVENTS.toLocaleString('en')} events over ${DAYS} days in ${((performance.now() - started) / 1000).toFixed(1)} s (table with indexes: ${rows[0].size})\n`);

  const queries: Array<{ label: string; params: Record<string, unknown> }> = [
    { label: 'count, this_7_days, device_id eq lamp-42', params: { timeframe: 'this_7_days', filters: [{ property_name: 'device_id', operator: 'eq', property_value: 'lamp-42' }] } },
    { label: 'count, this_30_days, state.on eq true', params: { timeframe: 'this_30_days', filters: [{ property_name: 'state.on', operator: 'eq', property_value: true }] } },
    { label: 'count, this_30_days, state.brightness gt 0.5', params: { timeframe: 'this_30_days', filters: [{ property_name: 'state.brightness', operator: 'gt', property_value: 0.5 }] } },
    { label: 'count, all time, state.on eq true', params: { filters: [{ property_name: 'state.on', operator: 'eq', property_value: true }] } },
  ];
  for (const { label, params } of queries) {
    const target = new URL(`/3.0/projects/${PROJECT}/queries/count`, sink.url);
    target.searchParams.set('event_collection', 'devicestate');
    for (const [key, value] of Object.entries(params)) target.searchParams.set(key, typeof value === 'string' ? value : JSON.stringify(value));
    const times: number[] = [];
    let result: unknown;
    for (let run = 0; run <= RUNS; run += 1) {
      const t0 = performance.now();
      const response = await fetch(target, { headers: { authorization: READ_KEY } });
      const body = (await response.json()) as { result: unknown };
      if (response.status !== 200) throw new Error(`${label}: ${response.status} ${JSON.stringify(body)}`);
      if (run > 0) times.push(performance.now() - t0); // run 0 warms the cache
      result = body.result;
    }
    times.sort((a, b) => a - b);
    process.stdout.write(`${label}: result ${String(result)}, median ${times[Math.floor(times.length / 2)]!.toFixed(1)} ms, best ${times[0]!.toFixed(1)} ms (${RUNS} runs over HTTP)\n`);
  }
} finally {
  await sink.close();
  if (args.keep) {
    process.stdout.write(`kept database ${name}\n`);
  } else {
    await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  }
  await admin.end();
}
