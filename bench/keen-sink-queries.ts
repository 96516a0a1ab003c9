/**
 * How fast keen-sink answers the queries a LAMPI site runs, over 10,000,000 stored events, as
 * ratios to the same query answered by a plain sequential scan of the same data in the same run;
 * and how fast it stores bulk writes, beside the pipeline's max-load throughput (issue 16).
 *
 *   node --import tsx bench/keen-sink-queries.ts [--events 10000000] [--days 28] [--lamps 1000]
 *       [--runs 20] [--seq-runs 20] [--writes 200000] [--no-pipeline] [--pipeline-duration 30] [--keep]
 *
 * Creates a scratch database on the PostgreSQL at BENCH_DATABASE_ADMIN_URL (default: the local
 * postgres superuser), starts keen-sink in-process on it (so its migrations, indexes and rollup
 * are the real ones), and fills keen_events with generate_series straight in SQL: --events over
 * the last --days days from --lamps lamps, 5% activations, 15% devicemonitoring, the rest
 * devicestate. keen_events' indexes are dropped for the fill and rebuilt after it from their own
 * definitions (building an index is far faster than growing it row by row); the rollup is filled
 * by keen-sink's own trigger.
 *
 * Each seed query runs --runs times through the HTTP API (after one warm-up), then --seq-runs
 * times as its plain SQL (query.ts without its fast paths) on a connection that may not use any
 * index, so PostgreSQL scans the table: p50 and p95 of each, and the ratio of the p95s. Both
 * answers must be equal, or the bench exits 1.
 *
 * Bulk writes: --writes devicestate events POSTed to /3.0/projects/{id}/events in bulk requests
 * of KEEN_BATCH_SIZE (500) events, KEEN_CONCURRENCY (64) requests at once, as the worker sends
 * them, into the filled table. Unless --no-pipeline, the same run then measures the pipeline at
 * max load (`npm run bench -- --scenario throughput --workers 1`, which needs Redis at
 * BENCH_REDIS_URL or REDIS_URL) and prints the ratio. The scratch database is dropped unless --keep.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { createLogger } from '../src/shared/logger.js';
import { parseQuery, parseTimeframe, runQuery, type Analysis } from '../src/keen-sink/query.js';
import { startKeenSink } from '../src/keen-sink/server.js';
import { eventsPath } from '../src/shared/keen/protocol.js';

const { values: args } = parseArgs({
  options: {
    events: { type: 'string', default: '10000000' },
    days: { type: 'string', default: '28' },
    lamps: { type: 'string', default: '1000' },
    runs: { type: 'string', default: '20' },
    'seq-runs': { type: 'string', default: '20' },
    writes: { type: 'string', default: '200000' },
    'no-pipeline': { type: 'boolean', default: false },
    'pipeline-duration': { type: 'string', default: '30' },
    keep: { type: 'boolean', default: false },
  },
});
const EVENTS = Number(args.events);
const DAYS = Number(args.days);
const LAMPS = Number(args.lamps);
const RUNS = Number(args.runs);
const SEQ_RUNS = Number(args['seq-runs']);
const WRITES = Number(args.writes);
const BATCH = 500;
const CONCURRENCY = 64;
const PROJECT = 'bench';
const READ_KEY = 'bench-read';
const WRITE_KEY = 'bench-write';
const CHUNK = 1_000_000;

const out = (line: string) => process.stdout.write(`${line}\n`);
const fmt = (n: number, digits = 0) => n.toLocaleString('en', { maximumFractionDigits: digits, minimumFractionDigits: digits });

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
  writeKey: WRITE_KEY,
  readKey: READ_KEY,
  port: 0,
  host: '127.0.0.1',
  logger: createLogger('keen-sink', 'warn'),
});
// May use no index at all: every query is answered by scanning the table.
const seqScan = new pg.Pool({
  connectionString: url.toString(),
  max: 1,
  options: '-c enable_indexscan=off -c enable_bitmapscan=off -c enable_indexonlyscan=off',
});

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

async function timed(runs: number, once: () => Promise<unknown>): Promise<{ p50: number; p95: number; result: unknown }> {
  let result = await once(); // warms the cache
  const times: number[] = [];
  for (let run = 0; run < runs; run += 1) {
    const t0 = performance.now();
    result = await once();
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  return { p50: percentile(times, 50), p95: percentile(times, 95), result };
}

async function fill(): Promise<void> {
  const started = performance.now();
  // A connection of its own: keen-sink's pool times statements out, and filling takes minutes.
  const db = new pg.Client({ connectionString: url.toString() });
  await db.connect();
  try {
    await fillWith(db, started);
  } finally {
    await db.end();
  }
}

async function fillWith(db: pg.Client, started: number): Promise<void> {
  const { rows: indexes } = await db.query<{ name: string; definition: string }>(
    `SELECT indexname AS name, indexdef AS definition FROM pg_indexes WHERE tablename = 'keen_events' AND indexname <> 'keen_events_pkey'`,
  );
  for (const index of indexes) await db.query(`DROP INDEX ${index.name}`);
  // Event g is g * (DAYS / N) old; g % 20 picks its collection, and (g / 20) % LAMPS its lamp.
  for (let from = 1; from <= EVENTS; from += CHUNK) {
    await db.query(
      `INSERT INTO keen_events (id, project_id, collection, keen_timestamp, keen_created_at, event)
       SELECT id, $1, collection, ts, ts,
              CASE collection
                WHEN 'devicestate' THEN jsonb_build_object('device_id', device, 'client', 'lampi',
                  'state', jsonb_build_object('on', g % 3 = 0, 'brightness', (g % 100) / 100.0, 'hue', (g % 360) / 360.0, 'saturation', 1.0))
                WHEN 'devicemonitoring' THEN jsonb_build_object('device_id', device, 'connected', g % 2 = 0)
                ELSE jsonb_build_object('device_id', device, 'user_id', g % 5000)
              END || jsonb_build_object('keen', jsonb_build_object('id', id, 'timestamp', stamp, 'created_at', stamp, 'uniqueness_token', 'bench-' || g))
         FROM generate_series($4::int, least($4::int + $5::int - 1, $2::int)) AS g,
              LATERAL (SELECT now() - g * make_interval(secs => $3::float8 / $2::int) AS ts,
                              CASE WHEN g % 20 = 0 THEN 'activations' WHEN g % 20 < 4 THEN 'devicemonitoring' ELSE 'devicestate' END AS collection,
                              'lamp-' || ((g / 20) % $6::int) AS device) AS t,
              LATERAL (SELECT lpad(to_hex(g), 24, '0') AS id, to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS stamp) AS s`,
      [PROJECT, EVENTS, DAYS * 86_400, from, CHUNK, LAMPS],
    );
    out(`  ${fmt(Math.min(EVENTS, from + CHUNK - 1))} events in ${fmt((performance.now() - started) / 1000, 1)} s`);
  }
  const filled = performance.now();
  for (const index of indexes) await db.query(index.definition);
  await db.query('VACUUM ANALYZE');
  const { rows } = await db.query(`SELECT pg_size_pretty(pg_total_relation_size('keen_events')) AS size`);
  out(
    `inserted ${fmt(EVENTS)} events over ${DAYS} days from ${fmt(LAMPS)} lamps in ${fmt((filled - started) / 1000, 1)} s, ` +
      `indexes rebuilt and analysed in ${fmt((performance.now() - filled) / 1000, 1)} s (keen_events with its indexes: ${rows[0].size})`,
  );
}

/** A filter on one lamp, as the site's per-lamp pages ask. */
const lamp = [{ property_name: 'device_id', operator: 'eq', property_value: 'lamp-42' }];

async function queries(): Promise<boolean> {
  const now = new Date();
  // One absolute timeframe for the whole run: this_14_days as of now, so every run and both
  // paths read the same events.
  const tf = parseTimeframe('this_14_days', now, 0);
  const timeframe = { start: tf.start.toISOString(), end: tf.end.toISOString() };
  const seeds: Array<{ label: string; analysis: Analysis; params: Record<string, unknown> }> = [
    {
      label: 'count devicestate, device_id eq, 14 days',
      analysis: 'count',
      params: { event_collection: 'devicestate', timeframe, filters: lamp },
    },
    {
      label: 'count activations, device_id eq, 14 days',
      analysis: 'count',
      params: { event_collection: 'activations', timeframe, filters: lamp },
    },
    {
      label: 'count devicemonitoring, device_id eq, 14 days',
      analysis: 'count',
      params: { event_collection: 'devicemonitoring', timeframe, filters: lamp },
    },
    {
      label: 'count_unique devicestate device_id, daily, 14 days',
      analysis: 'count_unique',
      params: { event_collection: 'devicestate', target_property: 'device_id', interval: 'daily', timeframe },
    },
    {
      label: 'select_unique activations device_id, 14 days',
      analysis: 'select_unique',
      params: { event_collection: 'activations', target_property: 'device_id', timeframe },
    },
  ];
  out('');
  out(
    `| query (over ${fmt(EVENTS)} events) | keen-sink p50 / p95 (ms, ${RUNS} runs over HTTP) | sequential scan p50 / p95 (ms, ${SEQ_RUNS} runs) | p95 ratio |`,
  );
  out('|---|---|---|---|');
  let same = true;
  for (const seed of seeds) {
    const target = new URL(`/3.0/projects/${PROJECT}/queries/${seed.analysis}`, sink.url);
    const fast = await timed(RUNS, async () => {
      const response = await fetch(target, {
        method: 'POST',
        headers: { authorization: READ_KEY, 'content-type': 'application/json' },
        body: JSON.stringify(seed.params),
      });
      const body = (await response.json()) as { result: unknown };
      if (response.status !== 200) throw new Error(`${seed.label}: ${response.status} ${JSON.stringify(body)}`);
      return body.result;
    });
    const parsed = parseQuery(seed.analysis, seed.params, now);
    const seq = await timed(SEQ_RUNS, () => runQuery(seqScan, PROJECT, parsed, { plain: true }));
    const equal = JSON.stringify(fast.result) === JSON.stringify(seq.result);
    same &&= equal;
    out(
      `| ${seed.label} | ${fmt(fast.p50, 1)} / ${fmt(fast.p95, 1)} | ${fmt(seq.p50)} / ${fmt(seq.p95)} | ` +
        `${fmt(seq.p95 / fast.p95, 1)}×${equal ? '' : ' ANSWERS DIFFER'} |`,
    );
  }
  return same;
}

async function bulkWrites(): Promise<number> {
  const requests = Math.ceil(WRITES / BATCH);
  const target = new URL(eventsPath(PROJECT), sink.url);
  const bodies = Array.from({ length: requests }, (_, r) =>
    JSON.stringify({
      devicestate: Array.from({ length: Math.min(BATCH, WRITES - r * BATCH) }, (_, i) => ({
        device_id: `lamp-${(r * BATCH + i) % LAMPS}`,
        client: 'lampi',
        state: { on: i % 3 === 0, brightness: (i % 100) / 100, hue: 0.5, saturation: 1 },
        keen: { timestamp: new Date().toISOString(), uniqueness_token: `write-${r}-${i}` },
      })),
    }),
  );
  let next = 0;
  let stored = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (next < bodies.length) {
        const body = bodies[next++]!;
        const response = await fetch(target, {
          method: 'POST',
          headers: { authorization: WRITE_KEY, 'content-type': 'application/json' },
          body,
        });
        const result = (await response.json()) as { devicestate: Array<{ success: boolean }> };
        if (response.status !== 200) throw new Error(`bulk write: ${response.status} ${JSON.stringify(result).slice(0, 200)}`);
        stored += result.devicestate.filter((r) => r.success).length;
      }
    }),
  );
  const rate = (stored / (performance.now() - started)) * 1000;
  if (stored !== WRITES) throw new Error(`bulk write stored ${stored} of ${WRITES} events`);
  out('');
  out(
    `bulk writes: ${fmt(WRITES)} events in ${fmt(requests)} requests of ${BATCH}, ${CONCURRENCY} at once, into the filled table: ${fmt(rate)} events/s`,
  );
  return rate;
}

async function pipeline(): Promise<number | undefined> {
  const duration = args['pipeline-duration'];
  const command = `npm run bench -- --scenario throughput --workers 1 --duration ${duration} --repeat 1 --no-write`;
  out(`pipeline at max load (${command}) ...`);
  try {
    const { stdout } = await promisify(execFile)(
      'npm',
      [
        'run',
        '--silent',
        'bench',
        '--',
        '--scenario',
        'throughput',
        '--workers',
        '1',
        '--duration',
        duration!,
        '--repeat',
        '1',
        '--no-write',
      ],
      {
        maxBuffer: 64 * 1024 * 1024,
        timeout: 15 * 60_000,
      },
    );
    const match = /([\d,]+) events\/s; all accepted once/.exec(stdout);
    if (!match) throw new Error(`no throughput in its output:\n${stdout.slice(-2000)}`);
    return Number(match[1]!.replaceAll(',', ''));
  } catch (err) {
    out(`pipeline figure missing: ${(err as Error).message.split('\n').slice(0, 5).join(' ')}`);
    return undefined;
  }
}

let ok: boolean;
try {
  await fill();
  const same = await queries();
  const writes = await bulkWrites();
  const max = args['no-pipeline'] ? undefined : await pipeline();
  if (max !== undefined)
    out(`pipeline at max load, 1 subscriber + 1 worker: ${fmt(max)} events/s; keen-sink bulk writes are ${fmt(writes / max, 1)}× that`);
  else out('pipeline at max load: not measured in this run');
  ok = same;
  if (!same) out('FAILURE: a fast answer differs from the sequential scan');
} finally {
  await seqScan.end();
  await sink.close();
  if (args.keep) out(`kept database ${name}`);
  else await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  await admin.end();
}
process.exitCode = ok ? 0 : 1;
