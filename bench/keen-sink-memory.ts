/**
 * What repeated large queries cost keen-sink's memory, with and without the answer limit
 * (KEEN_SINK_MAX_RESULT_BYTES), measured in one run so that the two compare.
 *
 *   node --import tsx bench/keen-sink-memory.ts [--events 50000] [--pad 2000] [--queries 10]
 *
 * Fills a scratch database (BENCH_DATABASE_ADMIN_URL, default the local postgres superuser) with
 * `--events` events of about `--pad` bytes, then starts `npm run keen-sink` twice as a child
 * process: once with the default limit, once with a limit above the whole data (what keen-sink
 * did before it had one). Each answers `--queries` extractions of everything, one after the
 * other, then a select_unique of the padded property and a group_by on it, while /healthz is
 * asked every 100 ms. Prints the process's peak RSS (VmHWM) and RSS after the queries, the
 * slowest /healthz, and the ratios between the two runs.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import path from 'node:path';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { DEFAULT_KEEN_SINK_MAX_RESULT_BYTES } from '../src/shared/config.js';

const { values: args } = parseArgs({
  options: {
    events: { type: 'string', default: '50000' },
    pad: { type: 'string', default: '2000' },
    queries: { type: 'string', default: '10' },
  },
});
const EVENTS = Number(args.events);
const PAD = Number(args.pad);
const QUERIES = Number(args.queries);
const PROJECT = 'bench';
const READ_KEY = 'bench-read';
const ROOT = path.resolve(import.meta.dirname, '..');

const adminUrl = process.env.BENCH_DATABASE_ADMIN_URL ?? 'postgresql://postgres@127.0.0.1:5432/postgres';
const name = `keen_sink_memory_${randomBytes(3).toString('hex')}`;
const admin = new pg.Client({ connectionString: adminUrl });
await admin.connect();
await admin.query(`CREATE DATABASE ${name}`);
const url = new URL(adminUrl);
url.pathname = `/${name}`;

const freePort = () =>
  new Promise<number>((resolve) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });

const kib = (pid: number, field: 'VmHWM' | 'VmRSS') =>
  Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) / 1024;

interface Figures {
  startMb: number;
  firstMb: number;
  peakMb: number;
  afterMb: number;
  slowestHealthMs: number;
  statuses: string;
}

async function measure(limit: number): Promise<Figures> {
  const port = await freePort();
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/keen-sink/main.ts'], {
    cwd: ROOT,
    env: {
      ...process.env,
      KEEN_PROJECT_ID: PROJECT,
      KEEN_WRITE_KEY: 'bench-write',
      KEEN_READ_KEY: READ_KEY,
      KEEN_SINK_DATABASE_URL: url.toString(),
      KEEN_SINK_PORT: String(port),
      KEEN_SINK_HOST: '127.0.0.1',
      KEEN_SINK_MAX_RESULT_BYTES: String(limit),
      LOG_LEVEL: 'warn',
    },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const base = `http://127.0.0.1:${port}`;
  for (let i = 0; ; i += 1) {
    if ((await fetch(`${base}/healthz`).catch(() => undefined))?.ok) break;
    if (i > 300) throw new Error('keen-sink did not start');
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  let slowestHealthMs = 0;
  let polling = true;
  const poll = (async () => {
    while (polling) {
      const t0 = performance.now();
      await fetch(`${base}/healthz`);
      slowestHealthMs = Math.max(slowestHealthMs, performance.now() - t0);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  })();
  const statuses = new Map<number, number>();
  const ask = async (analysis: string, params: Record<string, string>) => {
    const target = new URL(`/3.0/projects/${PROJECT}/queries/${analysis}`, base);
    for (const [key, value] of Object.entries({ event_collection: 'devicestate', ...params })) target.searchParams.set(key, value);
    const response = await fetch(target, { headers: { authorization: READ_KEY } });
    await response.arrayBuffer();
    statuses.set(response.status, (statuses.get(response.status) ?? 0) + 1);
  };
  const startMb = kib(child.pid!, 'VmRSS');
  let firstMb = 0;
  for (let i = 0; i < QUERIES; i += 1) {
    await ask('extraction', {});
    if (i === 0) firstMb = kib(child.pid!, 'VmRSS');
  }
  await ask('select_unique', { target_property: 'pad' });
  await ask('count', { group_by: 'pad' });
  polling = false;
  await poll;
  const figures = {
    startMb,
    firstMb,
    peakMb: kib(child.pid!, 'VmHWM'),
    afterMb: kib(child.pid!, 'VmRSS'),
    slowestHealthMs,
    statuses: [...statuses].map(([status, n]) => `${n}× ${status}`).join(', '),
  };
  child.kill('SIGTERM');
  await new Promise((resolve) => child.once('exit', resolve));
  return figures;
}

try {
  await admin.end();
  const db = new pg.Pool({ connectionString: url.toString(), max: 1 });
  // The sink's own migrations create the table: start it once, then fill.
  await measure(DEFAULT_KEEN_SINK_MAX_RESULT_BYTES).catch(() => undefined);
  await db.query(
    `INSERT INTO keen_events (id, project_id, collection, keen_timestamp, keen_created_at, event)
     SELECT lpad(to_hex(g), 24, '0'), $1, 'devicestate', now() - g * interval '1 second', now(),
            jsonb_build_object('device_id', 'lamp-' || (g % 1000), 'pad', g || repeat('x', $3::int), 'keen', jsonb_build_object('timestamp', now()))
       FROM generate_series(1, $2::int) AS g`,
    [PROJECT, EVENTS, PAD],
  );
  const { rows } = await db.query(`SELECT pg_size_pretty(sum(octet_length(event::text))) AS size FROM keen_events`);
  await db.end();
  process.stdout.write(`${EVENTS.toLocaleString('en')} events of about ${PAD} bytes: ${rows[0].size} of JSON\n`);
  const capped = await measure(DEFAULT_KEEN_SINK_MAX_RESULT_BYTES);
  const uncapped = await measure(2 ** 31);
  const line = (label: string, f: Figures) =>
    `${label}: RSS ${f.startMb.toFixed(0)} MB at start, ${f.firstMb.toFixed(0)} MB after the first ` +
    `extraction, ${f.afterMb.toFixed(0)} MB after all ${QUERIES + 2} queries, peak ` +
    `${f.peakMb.toFixed(0)} MB; slowest /healthz ${f.slowestHealthMs.toFixed(0)} ms (${f.statuses})\n`;
  process.stdout.write(line(`limit ${DEFAULT_KEEN_SINK_MAX_RESULT_BYTES} bytes (default)`, capped));
  process.stdout.write(line('limit 2 GiB (no effective limit)', uncapped));
  process.stdout.write(
    `ratio without / with the limit: peak RSS above start ` +
      `${((uncapped.peakMb - uncapped.startMb) / (capped.peakMb - capped.startMb)).toFixed(1)}×, slowest ` +
      `/healthz ${(uncapped.slowestHealthMs / Math.max(1, capped.slowestHealthMs)).toFixed(1)}×\n`,
  );
} finally {
  const cleanup = new pg.Client({ connectionString: adminUrl });
  await cleanup.connect();
  await cleanup.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  await cleanup.end();
}
