/**
 * `npm run bench`: the whole pipeline measured as a user runs it (issue 5).
 *
 *   npm run bench                          every scenario, full length, 3 runs each (about 30 minutes)
 *   npm run bench -- --quick               small counts, correctness only (CI smoke check, < 2 min)
 *   npm run bench -- --scenario latency    one scenario (repeat, or comma-separate, for several)
 *   npm run bench -- --scenario throughput --workers 1 --duration 30 --profile
 *
 * Scenarios: raw-ceiling, yardstick-direct, yardstick-queue, throughput, throughput-cluster,
 * latency, sweep, activations, backlog. throughput-cluster is throughput with 2 workers on a local
 * Redis Cluster of 3 primaries and 3 replicas that it starts (test/support/redis-cluster.ts;
 * BENCH_CLUSTER_PORTS=p1,…,p6 picks the ports); run it with
 * `--scenario throughput,throughput-cluster --workers 2` to compare.
 * Options: --duration <s> (throughput, raw ceiling and yardsticks, default 60), --workers <list>
 * (default 1,2,4), --lamps <n>, --window <n> (events in flight at max load), --backlog <n>,
 * --activations <n>, --rates <list>, --latency-duration <s>, --sweep-rates <list> (offered
 * rates of the sweep, `max` for max load; default 1000,2000,5000,max), --sweep-duration <s>
 * (per rate, default 5), --profile (CPU profiles of our
 * subscriber and workers in every scenario, summarised), --env KEY=VALUE (extra
 * environment for our subscriber and workers, repeatable), --repeat <n> (runs of each scenario
 * but backlog, one round after the other; the table gives medians; default 3, --quick 1),
 * --no-write.
 *
 * Each scenario gets its own Mosquitto (the compose settings that matter: max_queued_messages
 * 1000000, set_tcp_nodelay true), a queue prefix of its own on the local Redis (REDIS_URL, or
 * BENCH_REDIS_URL), a scratch database on the local PostgreSQL (BENCH_DATABASE_ADMIN_URL,
 * TEST_DATABASE_ADMIN_URL, or postgres@127.0.0.1), migrated with src/shared/migrations.ts, and the
 * Keen recorder (bench/keen-recorder.ts). Our subscriber and worker run as `npm run` runs them,
 * as their own processes. The fleet (bench/fleet.ts) is a process of its own.
 *
 * "Max load" is a closed loop: the fleet keeps `--window` events published and not yet accepted
 * by Keen, so the pipeline never waits for work, and the broker's queue (and our latency) stays
 * bounded. Throughput is events / (last event accepted by Keen - first publish).
 *
 * Every run checks its own result: every published lamp state accepted by Keen exactly once (by
 * uniqueness token, and by the sequence number in its payload). A scenario that loses or
 * duplicates events reports FAILURE instead of a speed, and the bench exits 1.
 *
 * The table also gives, from one run, CPU per event of each process against Mosquitto's on the
 * same events, and throughput against the raw ceiling of the same round (issue 15). The sweep
 * runs the pipeline, the raw ceiling and both yardsticks at each offered rate; its plot
 * (throughput and p99 against offered rate) goes to bench/results/<YYYY-MM-DD>-sweep.svg.
 *
 * Prints one table and appends it, with details, to bench/results/<YYYY-MM-DD>.md.
 */
import { execFileSync } from 'node:child_process';
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import mqtt from 'mqtt';
import { ROOT, scrapeMetrics, sleep, type ManagedProcess } from '../test/support/processes.js';
import { startRedisCluster } from '../test/support/redis-cluster.js';
import { QUEUE_NAMES, queueKey } from '../src/shared/queues.js';
import { lampId, type PublishReport } from './fleet.js';
import { cpuBetween, loadAverage, systemCpu } from './lib/procs.js';
import {
  BenchFailure,
  buildEntryPoints,
  cleanupAll,
  KEEN_PROJECT,
  KEEN_WRITE_KEY,
  stop,
  Stack,
  startBenchProcess,
  waitForLine,
  waitProgress,
  type BenchServices,
} from './lib/stack.js';
import { formatSummary, summarize } from './profile-summary.js';
import type { KeenRecorder } from './keen-recorder.js';
import {
  checkSeqs,
  lastArrival,
  percentile,
  percentiles,
  type Percentiles,
  type SeqCheck,
  type SinkCommand,
  type SinkReply,
} from './lib/seqs.js';
import { sweepSvg, type SweepSeries } from './lib/plot.js';

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

const SCENARIOS = [
  'raw-ceiling',
  'yardstick-direct',
  'yardstick-queue',
  'throughput',
  'throughput-cluster',
  'latency',
  'sweep',
  'activations',
  'backlog',
] as const;
/** Workers of the throughput-cluster scenario (the cluster with 2 workers, next to single Redis). */
const CLUSTER_WORKERS = 2;
type ScenarioName = (typeof SCENARIOS)[number];

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    scenario: { type: 'string', multiple: true },
    duration: { type: 'string' },
    workers: { type: 'string' },
    lamps: { type: 'string' },
    window: { type: 'string' },
    backlog: { type: 'string' },
    activations: { type: 'string' },
    rates: { type: 'string' },
    'latency-duration': { type: 'string' },
    'sweep-rates': { type: 'string' },
    'sweep-duration': { type: 'string' },
    profile: { type: 'boolean', default: false },
    repeat: { type: 'string' },
    env: { type: 'string', multiple: true },
    'no-write': { type: 'boolean', default: false },
    help: { type: 'boolean', default: false },
  },
});
if (args.help) {
  const doc = /\/\*\*([\s\S]*?)\*\//.exec((await import('node:fs')).readFileSync(new URL(import.meta.url), 'utf8'))?.[1] ?? '';
  process.stdout.write(`${doc.replace(/^ \* ?/gm, '')}\n`);
  process.exit(0);
}

const quick = args.quick;
const list = (value: string | undefined, fallback: number[]) => (value ? value.split(',').map((v) => Number(v.trim())) : fallback);
const num = (value: string | undefined, fallback: number) => (value !== undefined ? Number(value) : fallback);
const P = {
  lamps: num(args.lamps, quick ? 50 : 1000),
  durationS: num(args.duration, quick ? 4 : 60),
  workers: list(args.workers, quick ? [1, 2] : [1, 2, 4]),
  window: num(args.window, quick ? 2000 : 10_000),
  rates: list(args.rates, quick ? [500, 2000] : [500, 2000, 5000]),
  latencyS: num(args['latency-duration'], quick ? 2 : 20),
  /** Offered rates of the sweep; 0 is max load (the closed loop). */
  sweepRates: (args['sweep-rates'] ?? (quick ? 'max' : '1000,2000,5000,max')).split(',').map((v) => (v.trim() === 'max' ? 0 : Number(v))),
  sweepS: num(args['sweep-duration'], quick ? 1 : 5),
  warmupS: quick ? 0.5 : 2,
  backlog: num(args.backlog, quick ? 5000 : 1_000_000),
  activations: num(args.activations, quick ? 300 : 10_000),
  stallMs: quick ? 30_000 : 60_000,
  graceMs: quick ? 300 : 1500,
  validateEvery: quick ? 1 : 64,
  repeat: num(args.repeat, quick ? 1 : 3),
};
for (const [key, value] of Object.entries(P)) {
  const bad = Array.isArray(value) ? value.some((v) => !(v > 0 || (key === 'sweepRates' && v === 0))) : !(value > 0);
  if (bad) {
    process.stderr.write(`bench: invalid --${key}\n`);
    process.exit(2);
  }
}
const chosen: ScenarioName[] = (args.scenario ?? []).flatMap((s) => s.split(',')).map((s) => s.trim()) as ScenarioName[];
for (const name of chosen) {
  if (!SCENARIOS.includes(name)) {
    process.stderr.write(`bench: unknown scenario ${name}; one of ${SCENARIOS.join(', ')}\n`);
    process.exit(2);
  }
}
const scenarios = chosen.length > 0 ? SCENARIOS.filter((s) => chosen.includes(s)) : [...SCENARIOS];
const clusterPorts = process.env.BENCH_CLUSTER_PORTS?.split(',').map(Number);
const extraEnv = Object.fromEntries((args.env ?? []).map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]));

const services: BenchServices = {
  redisUrl: process.env.BENCH_REDIS_URL ?? process.env.REDIS_URL ?? 'redis://127.0.0.1:6379',
  databaseAdminUrl:
    process.env.BENCH_DATABASE_ADMIN_URL ?? process.env.TEST_DATABASE_ADMIN_URL ?? 'postgresql://postgres@127.0.0.1:5432/postgres',
};
buildEntryPoints();
// What was built, before the sources can change under a long run.
let commit: string;
try {
  commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).trim();
  const dirty = execFileSync('git', ['status', '--porcelain', '--', 'src'], { cwd: ROOT, encoding: 'utf8' }).trim();
  if (dirty) commit += ` + uncommitted changes in src/ (${dirty.split('\n').length} files)`;
} catch {
  commit = 'unknown';
}
const profileDir = args.profile ? mkdtempSync(path.join(tmpdir(), 'lampi-bench-profiles-')) : undefined;

// ---------------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------------

interface Outcome {
  scenario: string;
  /** 1-based, when a scenario ran more than once (--repeat). */
  run?: number;
  ok: boolean;
  failure?: string;
  /** Figures other scenarios and the table read. */
  data: Record<string, number>;
  details: string[];
}

const outcomes: Outcome[] = [];
const log = (line: string) => process.stdout.write(`${line}\n`);
const fmt = (n: number, digits = 0) =>
  Number.isFinite(n) ? n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits }) : '-';
const mb = (bytes: number | undefined) => (bytes === undefined ? '-' : `${fmt(bytes / 1024 / 1024)} MB`);

interface Latency {
  n: number;
  p50: number;
  p95: number;
  p99: number;
  max: number;
  /** publish → subscriber receipt (keen.timestamp), p50 / p99. */
  toSubscriber: [number, number];
  /** subscriber receipt → Keen accepted, p50 / p99. */
  toKeen: [number, number];
}

function latencyOf(recorder: KeenRecorder, from: number, to: number, publishedAfter: number): Latency {
  const { seqs } = recorder;
  const e2e: number[] = [];
  const toSub: number[] = [];
  const toKeen: number[] = [];
  for (let seq = from; seq < Math.min(to, seqs.size); seq++) {
    if (seqs.count[seq] === 0) continue;
    const published = seqs.publishedAt[seq]!;
    if (!(published >= publishedAfter)) continue;
    e2e.push(seqs.acceptedAt[seq]! - published);
    toSub.push(seqs.receivedAt[seq]! - published);
    toKeen.push(seqs.acceptedAt[seq]! - seqs.receivedAt[seq]!);
  }
  const sorted = (values: number[]) => Float64Array.from(values.filter(Number.isFinite)).sort();
  const sub = sorted(toSub);
  const keen = sorted(toKeen);
  return {
    ...percentiles(e2e),
    toSubscriber: [percentile(sub, 50), percentile(sub, 99)],
    toKeen: [percentile(keen, 50), percentile(keen, 99)],
  };
}

function describeLoss(what: string, published: number, accepted: number, check: SeqCheck, extra = ''): string {
  return (
    `${what}: ${fmt(published)} published, ${fmt(accepted)} accepted by Keen; ${fmt(check.missing)} ` +
    `missing, ${fmt(check.duplicated)} duplicated${check.examples.length ? ` (seq ${check.examples.join(', ')})` : ''}${extra}`
  );
}

// ---------------------------------------------------------------------------------------------
// Lamp-state phases
// ---------------------------------------------------------------------------------------------

interface Phase {
  report: PublishReport;
  accepted: number;
  check: SeqCheck;
  lastAcceptedAt: number;
  /** events/s from first publish to last event accepted. */
  throughput: number;
  drained: boolean;
  requests: number;
  seqStart: number;
}

/** Publishes lamp states through a stack whose downstream is the Keen recorder, and checks them. */
async function lampStatePhase(
  stack: Stack,
  options: { seqStart: number; count?: number; durationMs?: number; rate?: number; window?: number },
): Promise<Phase> {
  const recorder = stack.recorder;
  const base = recorder.lampStates;
  const requestsBefore = recorder.counters.requests;
  const duplicatesBefore = recorder.seqDuplicates;
  const report = await stack.fleet.states({ ...options, lamps: P.lamps }, () => recorder.lampStates - base);
  const drained = await waitProgress(() => recorder.lampStates - base, report.published, P.stallMs, stack.running);
  await sleep(P.graceMs); // late duplicates, if any, show up here
  const to = options.seqStart + report.published;
  const check = checkSeqs(recorder.seqs, options.seqStart, to);
  const lastAcceptedAt = lastArrival(recorder.seqs, options.seqStart, to);
  const accepted = recorder.lampStates - base;
  const extra = accepted - (report.published - check.missing) - (recorder.seqDuplicates - duplicatesBefore);
  if (extra !== 0) check.duplicated += Math.abs(extra);
  return {
    report,
    accepted,
    check,
    lastAcceptedAt,
    throughput: (report.published / (lastAcceptedAt - report.firstAt)) * 1000,
    drained,
    requests: recorder.counters.requests - requestsBefore,
    seqStart: options.seqStart,
  };
}

function phaseOk(phase: Phase, recorder: KeenRecorder): string | undefined {
  if (recorder.invalid.length > 0)
    return `Keen recorder refused ${recorder.invalid.length} events, e.g. ${JSON.stringify(recorder.invalid[0])}`;
  if (recorder.withoutSeq > 0) return `${recorder.withoutSeq} lamp-state events reached Keen without their sequence number`;
  if (phase.check.missing > 0 || phase.check.duplicated > 0 || phase.accepted !== phase.report.published) {
    return describeLoss(
      'lamp states',
      phase.report.published,
      phase.accepted,
      phase.check,
      phase.drained ? '' : ` (no progress for ${P.stallMs / 1000} s)`,
    );
  }
  return undefined;
}

function cpuDetails(cpu: Record<string, number>, events: number, wallS: number): string {
  const sys = cpu['(machine busy)'] ?? 0;
  const ours = Object.entries(cpu).filter(([name]) => !name.startsWith('('));
  const accounted = ours.reduce((a, [, s]) => a + s, 0);
  const parts = ours
    .filter(([, s]) => s > 0.005)
    .map(([name, s]) => `${name} ${fmt((s / events) * 1e6, 0)} µs/event (${fmt((s / wallS) * 100, 0)}% of a core)`);
  return (
    `CPU: ${parts.join(', ')}; whole machine ${fmt((sys / wallS) * 100, 0)}% of ${cpus().length} cores, ` +
    `of which outside these processes (other users, PostgreSQL) ${fmt(((sys - accounted) / wallS) * 100, 0)}%`
  );
}

function measureCpu(stack: Stack): () => Record<string, number> {
  const before = stack.watch.cpu();
  const machineBefore = systemCpu().busy;
  return () => ({ ...cpuBetween(before, stack.watch.cpu()), '(machine busy)': systemCpu().busy - machineBefore });
}

function rssDetails(stack: Stack): string {
  return `peak RSS: ${stack.watch
    .names()
    .filter((name) => name === 'subscriber' || name === 'raw-ceiling' || name.startsWith('worker') || name.startsWith('yardstick'))
    .map((name) => `${name} ${mb(stack.watch.peakRss(name))}`)
    .join(', ')}`;
}

function recordPeaks(stack: Stack, data: Record<string, number>): void {
  const sub = stack.watch.peakRss('subscriber');
  if (sub !== undefined) data.subscriberRss = sub;
  const workers = stack.watch
    .names()
    .filter((name) => name.startsWith('worker'))
    .map((name) => stack.watch.peakRss(name) ?? 0);
  if (workers.length) data.workerRss = Math.max(...workers);
}

function profileEnv(scenario: string) {
  if (!profileDir) return undefined;
  return (role: string) => ['--cpu-prof', `--cpu-prof-dir=${path.join(profileDir, scenario, role)}`];
}

function summarizeProfiles(scenario: string): string[] {
  if (!profileDir || !existsSync(path.join(profileDir, scenario))) return [];
  const lines: string[] = [`CPU profiles in ${path.join(profileDir, scenario)} (whole process life, startup included):`];
  for (const role of readdirSync(path.join(profileDir, scenario)).sort()) {
    // tsx's module loader runs in a thread of its own, which writes a profile too: keep the busiest (the main thread).
    const summaries = readdirSync(path.join(profileDir, scenario, role))
      .filter((f) => f.endsWith('.cpuprofile'))
      .map((f) => summarize(path.join(profileDir, scenario, role, f)))
      .sort((a, b) => b.totalMs - b.idleMs - (a.totalMs - a.idleMs));
    if (summaries[0]) lines.push(`[${role}] ${formatSummary(summaries[0], 12)}`);
  }
  return lines;
}

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

let round = 1;

async function scenario(name: string, run: (outcome: Outcome) => Promise<void>): Promise<void> {
  const outcome: Outcome = { scenario: name, ok: true, data: {}, details: [], ...(P.repeat > 1 ? { run: round } : {}) };
  const started = Date.now();
  log(`\n== ${name}${outcome.run ? ` (run ${outcome.run} of ${P.repeat})` : ''}`);
  try {
    await run(outcome);
  } catch (err) {
    outcome.ok = false;
    outcome.failure = err instanceof BenchFailure ? err.message : String((err as Error)?.stack ?? err);
  }
  outcome.details.push(`(scenario took ${fmt((Date.now() - started) / 1000, 1)} s)`);
  for (const line of outcome.details) log(`   ${line}`);
  if (!outcome.ok) log(`   FAILURE: ${outcome.failure}`);
  outcomes.push(outcome);
}

async function throughput(workers: number, on: 'redis' | 'cluster' = 'redis'): Promise<void> {
  const name = `throughput-${workers}w${on === 'cluster' ? '-cluster' : ''}`;
  await scenario(name, async (outcome) => {
    const cluster = on === 'cluster' ? await startRedisCluster({ ports: clusterPorts }) : undefined;
    const primaries = (await cluster?.primaries()) ?? [];
    const stack = await Stack.start({
      name,
      services: cluster
        ? {
            ...services,
            redisCluster: {
              seeds: cluster.seeds,
              pids: Object.fromEntries(
                cluster.nodes.map((node) => [
                  `redis ${primaries.includes(node.port) ? 'primary' : 'replica'} ${node.port}`,
                  node.proc.child.pid!,
                ]),
              ),
            },
          }
        : services,
      workers,
      env: extraEnv,
      validateEvery: P.validateEvery,
      nodeOptions: profileEnv(name),
    }).catch(async (err: unknown) => {
      await cluster?.stop();
      throw err;
    });
    try {
      await stack.connectLamps(0, P.lamps, P.stallMs);
      const cpu = measureCpu(stack);
      const phase = await lampStatePhase(stack, { seqStart: 0, durationMs: P.durationS * 1000, window: P.window });
      const used = cpu();
      const failure = phaseOk(phase, stack.recorder);
      if (failure) throw new BenchFailure(`${failure}\n${stack.logs()}`);
      const wallS = (phase.lastAcceptedAt - phase.report.firstAt) / 1000;
      const latency = latencyOf(stack.recorder, 0, phase.report.published, 0);
      Object.assign(
        outcome.data,
        {
          throughput: phase.throughput,
          events: phase.report.published,
          requestsPerEvent: phase.requests / phase.accepted,
          p99AtMax: latency.p99,
        },
        cpuPerEvent(used, phase.report.published),
      );
      // Issue 15's yardstick: CPU per event against what the broker spends on the same events.
      const { cpuSubscriber = NaN, cpuWorker = NaN, cpuRedis = NaN, cpuMosquitto = NaN } = outcome.data;
      outcome.data.pipelineOverBroker = (cpuSubscriber + cpuWorker + cpuRedis) / cpuMosquitto;
      outcome.data.subscriberOverBroker = cpuSubscriber / cpuMosquitto;
      outcome.details.push(
        `${fmt(phase.report.published)} lamp states from ${fmt(P.lamps)} lamps in ${fmt(wallS, 1)} s: ` +
          `${fmt(phase.throughput)} events/s; all accepted once; Keen requests ${fmt(phase.requests)} (1 per ` +
          `${fmt(phase.accepted / phase.requests, 0)} events)`,
        `latency at saturation (window ${fmt(P.window)}): p50 ${fmt(latency.p50)} ms, p99 ` +
          `${fmt(latency.p99)} ms; publish→subscriber p50 ${fmt(latency.toSubscriber[0])} ms, subscriber→Keen ` +
          `p50 ${fmt(latency.toKeen[0])} ms`,
        cpuDetails(used, phase.report.published, wallS),
      );
    } finally {
      await stack.close();
      await cluster?.stop();
      recordPeaks(stack, outcome.data);
      outcome.details.push(rssDetails(stack));
    }
    outcome.details.push(...summarizeProfiles(name));
  });
}

async function latency(): Promise<void> {
  await scenario('latency', async (outcome) => {
    const stack = await Stack.start({
      name: 'latency',
      services,
      workers: 1,
      env: extraEnv,
      validateEvery: P.validateEvery,
      nodeOptions: profileEnv('latency'),
    });
    try {
      await stack.connectLamps(0, P.lamps, P.stallMs);
      let seqStart = 0;
      const failures: string[] = [];
      for (const rate of P.rates) {
        const count = Math.round(rate * P.latencyS);
        const phase = await lampStatePhase(stack, { seqStart, count, rate });
        const failure = phaseOk(phase, stack.recorder);
        if (failure) failures.push(`at ${rate}/s: ${failure}`);
        const l = latencyOf(stack.recorder, seqStart, seqStart + phase.report.published, phase.report.firstAt + P.warmupS * 1000);
        outcome.data[`p50@${rate}`] = l.p50;
        outcome.data[`p95@${rate}`] = l.p95;
        outcome.data[`p99@${rate}`] = l.p99;
        outcome.data[`requestsPerEvent@${rate}`] = phase.requests / phase.accepted;
        outcome.details.push(
          `${rate}/s: ${fmt(phase.report.published)} events (publisher lag max ${fmt(phase.report.maxLagMs)} ` +
            `ms), latency over ${fmt(l.n)} after ${P.warmupS} s warm-up: p50 ${fmt(l.p50)} / p95 ${fmt(l.p95)} / ` +
            `p99 ${fmt(l.p99)} / max ${fmt(l.max)} ms; publish→subscriber p50/p99 ` +
            `${fmt(l.toSubscriber[0])}/${fmt(l.toSubscriber[1])} ms, subscriber→Keen p50/p99 ` +
            `${fmt(l.toKeen[0])}/${fmt(l.toKeen[1])} ms; Keen requests ${fmt(phase.requests)} (1 per ` +
            `${fmt(phase.accepted / phase.requests, 1)} events)`,
        );
        const stages = await stack.stageBreakdown();
        if (stages)
          outcome.details.push(
            `   where the last ${fmt(Math.min(1000, phase.report.published))} went (p50/p99 ms, from BullMQ's job timestamps): ${Object.entries(
              stages,
            )
              .map(([stage, [p50, p99]]) => `${stage} ${fmt(p50)}/${fmt(p99)}`)
              .join(', ')}`,
          );
        seqStart += phase.report.published;
      }
      if (failures.length) throw new BenchFailure(`${failures.join('; ')}\n${stack.logs()}`);
    } finally {
      await stack.close();
      recordPeaks(stack, outcome.data);
      outcome.details.push(rssDetails(stack));
    }
    outcome.details.push(...summarizeProfiles('latency'));
  });
}

async function activations(): Promise<void> {
  await scenario('activations', async (outcome) => {
    const n = P.activations;
    const stack = await Stack.start({
      name: 'activations',
      services,
      workers: 1,
      env: extraEnv,
      validateEvery: P.validateEvery,
      nodeOptions: profileEnv('activations'),
    });
    const associations = new Map<string, number>();
    const listener = await mqtt.connectAsync(stack.broker.url, { clientId: `${stack.prefix}-lamps`, clean: true });
    try {
      listener.on('message', (topic) => associations.set(topic, (associations.get(topic) ?? 0) + 1));
      await listener.subscribeAsync(['/devices/+/lamp/associated'], { qos: 1 });
      const cpu = measureCpu(stack);
      const report = await stack.connectLamps(0, n, P.stallMs);
      const used = cpu();
      const log = stack.recorder.collections.get('activations')!;
      const seconds = (log.lastAt - report.firstAt) / 1000;
      await waitProgress(() => associations.size, n, 10_000);

      const ids = Array.from({ length: n }, (_, i) => lampId(i));
      const [rows] = await stack.query<{ total: string; expected: string; distinct_codes: string }>(
        'SELECT count(*) AS total, count(*) FILTER (WHERE device_id = ANY($1)) AS expected, count(DISTINCT association_code) AS distinct_codes FROM devices',
        [ids],
      );
      const problems: string[] = [];
      if (Number(rows?.total) !== n || Number(rows?.expected) !== n || Number(rows?.distinct_codes) !== n) {
        problems.push(
          `devices table: ${rows?.total} rows, ${rows?.expected} of the ${n} lamps, ${rows?.distinct_codes} distinct association codes`,
        );
      }
      const perDevice = (collection: string, counts: Map<string, number>) => {
        const missing = ids.filter((id) => !counts.has(id)).length;
        const twice = [...counts.values()].filter((c) => c !== 1).length;
        const strangers = [...counts.keys()].filter((id) => !ids.includes(id)).length;
        if (missing || twice || strangers)
          problems.push(`${collection}: ${missing} lamps without one, ${twice} with more than one, ${strangers} for unknown lamps`);
      };
      perDevice('activations', log.byDevice);
      perDevice('devicemonitoring', stack.recorder.collections.get('devicemonitoring')?.byDevice ?? new Map());
      perDevice('association messages', new Map([...associations].map(([topic, count]) => [topic.split('/')[2]!, count])));
      if (problems.length) throw new BenchFailure(`activations of ${fmt(n)} new lamps: ${problems.join('; ')}\n${stack.logs()}`);
      outcome.data.devicesPerSecond = n / seconds;
      outcome.details.push(
        `${fmt(n)} new lamps connecting at once: ${fmt(n / seconds)} devices/s (first bridge connect ` +
          `published → last activations event accepted, ${fmt(seconds, 1)} s); exactly one device row, ` +
          `association message, activations and devicemonitoring event each`,
        cpuDetails(used, n, seconds),
      );
    } finally {
      await listener.endAsync(true).catch(() => {});
      await stack.close();
      recordPeaks(stack, outcome.data);
      outcome.details.push(rssDetails(stack));
    }
    outcome.details.push(...summarizeProfiles('activations'));
  });
}

async function backlog(): Promise<void> {
  await scenario('backlog', async (outcome) => {
    const n = P.backlog;
    const stack = await Stack.start({
      name: 'backlog',
      services,
      workers: 1,
      env: extraEnv,
      validateEvery: P.validateEvery,
      nodeOptions: profileEnv('backlog'),
    });
    try {
      await stack.connectLamps(0, P.lamps, P.stallMs);
      // Workers stopped: the subscriber queues everything in Redis.
      for (const worker of stack.workers) await stop(worker);
      stack.workers.length = 0;
      await sleep(1000);
      const waitKey = `${stack.prefix}:${queueKey(QUEUE_NAMES.lampStates)}:wait`;
      const usedMemory = async () => Number(/used_memory:(\d+)/.exec(await stack.redis.info('memory'))?.[1]);
      const memoryBefore = await usedMemory();
      // Lamp states travel many to a job: what is queued is what the subscriber says Redis took.
      const queuedStates = async () => {
        const metrics = await scrapeMetrics(stack.subscriber!);
        return Number(/^lampi_messages_enqueued_total\{[^}]*kind="lamp-state"[^}]*\} (\d+)/m.exec(metrics)?.[1] ?? 0);
      };
      const queuedBefore = await queuedStates();
      let queued = 0;
      const poller = setInterval(
        () =>
          void queuedStates().then(
            (count) => (queued = count - queuedBefore),
            () => {},
          ),
        50,
      );
      let report: PublishReport;
      const intakeStarted = Date.now();
      try {
        report = await stack.fleet.states({ seqStart: 0, count: n, window: P.window, lamps: P.lamps }, () => queued);
        if (!(await waitProgress(async () => (await queuedStates()) - queuedBefore, n, P.stallMs, stack.running))) {
          throw new BenchFailure(
            `backlog: only ${fmt((await queuedStates()) - queuedBefore)} of ${fmt(n)} lamp states reached the lamp-states queue`,
          );
        }
      } finally {
        clearInterval(poller);
      }
      const intakeSeconds = (Date.now() - intakeStarted) / 1000;
      const memoryAfter = await usedMemory();
      const perEvent = (memoryAfter - memoryBefore) / n;

      // Cross-check from the keys themselves (the shared Redis may have other tenants' data come and go).
      const memoryUsage = async (key: string) => Number((await stack.redis.call('MEMORY', 'USAGE', key, 'SAMPLES', '0')) ?? 0);
      const sampleIds = await stack.redis.lrange(waitKey, 0, 199);
      const jobBytes =
        (await Promise.all(sampleIds.map((id) => memoryUsage(`${stack.prefix}:${queueKey(QUEUE_NAMES.lampStates)}:${id}`)))).reduce(
          (a, b) => a + b,
          0,
        ) / Math.max(1, sampleIds.length);
      const listBytes = await memoryUsage(waitKey);
      let ledgerKeys = 0;
      let ledgerSample: string[] = [];
      let cursor = '0';
      do {
        const [next, keys] = await stack.redis.scan(cursor, 'MATCH', `${stack.prefix}:mqtt-inflight:*`, 'COUNT', 5000);
        cursor = next;
        ledgerKeys += keys.length;
        if (ledgerSample.length < 100) ledgerSample = ledgerSample.concat(keys.slice(0, 100 - ledgerSample.length));
      } while (cursor !== '0');
      const ledgerBytes = (await Promise.all(ledgerSample.map(memoryUsage))).reduce((a, b) => a + b, 0) / Math.max(1, ledgerSample.length);
      const jobs = await stack.redis.llen(waitKey);
      const estimate = (jobBytes * jobs + listBytes + ledgerKeys * ledgerBytes) / n;
      outcome.data.redisBytesPerEvent = perEvent;
      outcome.data.redisBytesPerEventKeys = estimate;
      outcome.details.push(
        `${fmt(n)} lamp states queued with the workers stopped in ${fmt(intakeSeconds, 1)} s ` +
          `(${fmt(n / intakeSeconds)} events/s into Redis): used_memory +${mb(memoryAfter - memoryBefore)} = ${fmt(perEvent)} bytes/event`,
        `from the keys: ${fmt(jobs)} jobs (${fmt(n / jobs, 1)} states each) × ${fmt(jobBytes)} B + wait list ` +
          `${fmt(listBytes)} B + redelivery ledger ${fmt(ledgerKeys)} keys × ${fmt(ledgerBytes)} B = ${fmt(estimate)} bytes/event`,
      );

      // Drain.
      const cpu = measureCpu(stack);
      const base = stack.recorder.lampStates;
      const spawnedAt = Date.now();
      for (let i = 0; i < P.workers[0]!; i++) await stack.startWorker();
      const readyAt = Date.now();
      const drained = await waitProgress(() => stack.recorder.lampStates - base, n, P.stallMs, stack.running);
      await sleep(P.graceMs);
      const used = cpu();
      const check = checkSeqs(stack.recorder.seqs, 0, n);
      const accepted = stack.recorder.lampStates - base;
      const lastAcceptedAt = lastArrival(stack.recorder.seqs, 0, n);
      const counts = Object.fromEntries(
        await Promise.all(
          [QUEUE_NAMES.lampStates, QUEUE_NAMES.keen, QUEUE_NAMES.deadLetter, QUEUE_NAMES.rejected].map(
            async (q) => [q, await stack.jobCounts(q)] as const,
          ),
        ),
      );
      const errorLines = stack.workers.reduce((sum, w) => sum + (w.output().match(/"level":(50|60)/g)?.length ?? 0), 0);
      const errors = [
        counts['lamp-states']!.failed ? `${counts['lamp-states']!.failed} failed lamp-states jobs` : '',
        counts['keen-delivery']!.failed ? `${counts['keen-delivery']!.failed} failed keen-delivery jobs` : '',
        (counts['keen-dead-letter']!.waiting ?? 0) + (counts['keen-dead-letter']!.failed ?? 0) ? 'dead letters' : '',
        (counts['rejected-messages']!.failed ?? 0) + (counts['rejected-messages']!.waiting ?? 0) ? 'rejected messages' : '',
        errorLines ? `${errorLines} error lines in the worker log` : '',
      ].filter(Boolean);
      if (!drained || check.missing || check.duplicated || accepted !== n || errors.length) {
        throw new BenchFailure(
          `${describeLoss('backlog drain', report.published, accepted, check, errors.length ? `; ${errors.join(', ')}` : '')}\n${stack.logs()}`,
        );
      }
      const drainSeconds = (lastAcceptedAt - readyAt) / 1000;
      outcome.data.drainRate = n / drainSeconds;
      outcome.details.push(
        `drain with ${P.workers[0]} worker(s): ${fmt(n / drainSeconds)} events/s (worker ready → last event ` +
          `accepted, ${fmt(drainSeconds, 1)} s; worker start-up took ${fmt((readyAt - spawnedAt) / 1000, 1)} s ` +
          `more); no failed job, no dead letter, no error logged`,
        cpuDetails(used, n, (lastAcceptedAt - spawnedAt) / 1000),
      );
    } finally {
      await stack.close();
      recordPeaks(stack, outcome.data);
      outcome.details.push(rssDetails(stack));
    }
    outcome.details.push(...summarizeProfiles('backlog'));
  });
}

async function yardstickDirect(): Promise<void> {
  await scenario('yardstick-direct', async (outcome) => {
    const stack = await Stack.start({
      name: 'yardstick-a',
      services,
      workers: 0,
      subscriber: false,
      database: false,
      validateEvery: P.validateEvery,
    });
    try {
      const proc = startBenchProcess('yardstick-direct.ts', {
        MQTT_URL: stack.broker.url,
        KEEN_API_URL: stack.recorder.url,
        KEEN_PROJECT_ID: KEEN_PROJECT,
        KEEN_WRITE_KEY: KEEN_WRITE_KEY,
        MQTT_CLIENT_ID: `${stack.prefix}-direct`,
      });
      stack.watch.watch('yardstick-direct', proc.child.pid);
      await waitForLine(proc, 'yardstick ready', STARTUP_MS);
      const cpu = measureCpu(stack);
      const phase = await lampStatePhase(stack, { seqStart: 0, durationMs: P.durationS * 1000, window: P.window });
      const used = cpu();
      await stop(proc, 5000);
      const failure = phaseOk(phase, stack.recorder);
      if (failure) throw new BenchFailure(`${failure}${proc.output() ? `; its log: ${proc.output().slice(-500)}` : ''}`);
      outcome.data.throughput = phase.throughput;
      const wallS = (phase.lastAcceptedAt - phase.report.firstAt) / 1000;
      outcome.details.push(
        `seed design (MQTT callback → one keen-tracking request per event, no queue): ` +
          `${fmt(phase.throughput)} events/s over ${fmt(wallS, 1)} s, ${fmt(phase.report.published)} events, ` +
          `all accepted once; Keen requests ${fmt(phase.requests)}`,
        cpuDetails(used, phase.report.published, wallS),
        rssDetails(stack),
      );
    } finally {
      await stack.close();
    }
  });
}

/** How long a bench process may take to start: minutes, on a machine loaded by other work. */
const STARTUP_MS = 180_000;

/** A sink process (yardstick-queue's drain, raw-ceiling): its progress and checks, over IPC (bench/lib/seqs.ts). */
class Sink {
  progress = { completed: 0, firstAt: 0, lastAt: 0 };
  #onChecked: ((reply: Extract<SinkReply, { type: 'checked' }>) => void) | undefined;

  constructor(readonly proc: ManagedProcess) {
    proc.child.on('message', (reply: SinkReply) => {
      if (reply.type === 'progress') this.progress = reply;
      else this.#onChecked?.(reply);
    });
  }

  async check(command: Omit<SinkCommand, 'type'>): Promise<Extract<SinkReply, { type: 'checked' }>> {
    const answer = new Promise<Extract<SinkReply, { type: 'checked' }>>((resolve) => (this.#onChecked = resolve));
    this.proc.child.send({ type: 'check', ...command } satisfies SinkCommand);
    const timeout = sleep(10_000).then(() => {
      throw new BenchFailure(`${this.proc.child.spawnargs.at(-1)} did not answer a check`);
    });
    return Promise.race([answer, timeout]);
  }
}

interface SinkPhase {
  report: PublishReport;
  throughput: number;
  wallS: number;
  latency: Percentiles;
}

/** Lamp states from the fleet to a sink process; fails unless each arrived exactly once. */
async function sinkPhase(
  stack: Stack,
  sink: Sink,
  watched: ManagedProcess[],
  what: string,
  options: { seqStart: number; count?: number; durationMs?: number; rate?: number; window?: number; warmupMs?: number },
): Promise<SinkPhase> {
  const base = sink.progress.completed;
  const report = await stack.fleet.states({ ...options, lamps: P.lamps }, () => sink.progress.completed - base);
  const drained = await waitProgress(() => sink.progress.completed - base, report.published, P.stallMs, watched);
  await sleep(P.graceMs + 100);
  const to = options.seqStart + report.published;
  const checked = await sink.check({ from: options.seqStart, to, publishedAfter: report.firstAt + (options.warmupMs ?? 0) });
  const completed = sink.progress.completed - base;
  if (!drained || checked.missing || checked.duplicated || completed !== report.published)
    throw new BenchFailure(describeLoss(what, report.published, completed, checked).replace('accepted by Keen', 'arrived'));
  const wallS = (checked.lastAt - report.firstAt) / 1000;
  return { report, throughput: report.published / wallS, wallS, latency: checked.latency };
}

/** µs of CPU per event of the processes the issue-15 ratios compare (all workers together). */
function cpuPerEvent(used: Record<string, number>, events: number): Record<string, number> {
  const us = (seconds: number) => (seconds / events) * 1e6;
  const workers = Object.entries(used).filter(([name]) => name.startsWith('worker'));
  const figures: Record<string, number> = { cpuMosquitto: us(used.mosquitto ?? NaN), cpuRedis: us(used.redis ?? NaN) };
  if (used.subscriber !== undefined) figures.cpuSubscriber = us(used.subscriber);
  if (workers.length) figures.cpuWorker = us(workers.reduce((sum, [, s]) => sum + s, 0));
  return figures;
}

/** The yardstick (b) processes, started and ready. */
async function startQueueYardstick(stack: Stack): Promise<{ sink: Sink; procs: ManagedProcess[] }> {
  const env = { MQTT_URL: stack.broker.url, REDIS_URL: services.redisUrl, QUEUE_PREFIX: stack.prefix };
  const intake = startBenchProcess('yardstick-queue.ts', { ...env, ROLE: 'intake' });
  const drain = startBenchProcess('yardstick-queue.ts', { ...env, ROLE: 'drain' });
  stack.watch.watch('yardstick-intake', intake.child.pid);
  stack.watch.watch('yardstick-drain', drain.child.pid);
  const sink = new Sink(drain);
  await waitForLine(intake, 'yardstick ready', STARTUP_MS);
  await waitProgress(() => (drain.child.connected ? 1 : 0), 1, 30_000);
  return { sink, procs: [intake, drain] };
}

async function startRawCeiling(stack: Stack): Promise<{ sink: Sink; procs: ManagedProcess[] }> {
  const proc = startBenchProcess('raw-ceiling.ts', { MQTT_URL: stack.broker.url, CLIENT_ID: `${stack.prefix}-raw` });
  stack.watch.watch('raw-ceiling', proc.child.pid);
  await waitForLine(proc, 'raw ceiling ready', STARTUP_MS);
  return { sink: new Sink(proc), procs: [proc] };
}

const sinkStack = (name: string) =>
  Stack.start({ name, services, workers: 0, subscriber: false, database: false, validateEvery: P.validateEvery });

/** A scenario of a sink system at max load: its throughput, CPU and RSS; each event must arrive once. */
async function sinkScenario(
  name: string,
  start: (stack: Stack) => Promise<{ sink: Sink; procs: ManagedProcess[] }>,
  what: string,
  arrived: string,
): Promise<void> {
  await scenario(name, async (outcome) => {
    const stack = await sinkStack(name);
    try {
      const { sink, procs } = await start(stack);
      const cpu = measureCpu(stack);
      const phase = await sinkPhase(stack, sink, procs, name, { seqStart: 0, durationMs: P.durationS * 1000, window: P.window });
      const used = cpu();
      Object.assign(outcome.data, { throughput: phase.throughput }, cpuPerEvent(used, phase.report.published));
      outcome.details.push(
        `${what}: ${fmt(phase.throughput)} events/s over ${fmt(phase.wallS, 1)} s, ${fmt(phase.report.published)} events, each ${arrived} once`,
        cpuDetails(used, phase.report.published, phase.wallS),
        rssDetails(stack),
      );
      await Promise.all(procs.map((proc) => stop(proc, 5000)));
    } finally {
      await stack.close();
    }
  });
}

const yardstickQueue = () =>
  sinkScenario(
    'yardstick-queue',
    startQueueYardstick,
    'MQTT callback → queue.add → no-op worker, acknowledged before Redis confirms',
    'completed',
  );
/** Issue 15's raw ceiling: the fleet → the same Mosquitto → a QoS 1 subscriber that only acknowledges. */
const rawCeiling = () =>
  sinkScenario('raw-ceiling', startRawCeiling, 'fleet → Mosquitto → QoS 1 subscriber that only acknowledges', 'arrived');

/** One system of the sweep, started: a phase at an offered rate (0: max load) gives throughput and p99. */
interface SweepSystem {
  phase(seqStart: number, rate: number): Promise<{ published: number; throughput: number; p99: number }>;
  close(): Promise<void>;
}

const SWEEP_SYSTEMS = {
  pipeline: 'pipeline (1 subscriber + 1 worker, publish → Keen)',
  'raw-ceiling': 'raw ceiling (publish → QoS 1 subscriber that only acknowledges)',
  'yardstick-queue': 'yardstick (b) (publish → queue.add → no-op worker)',
  'yardstick-direct': 'yardstick (a) (publish → one Keen request per event)',
} as const;
type SweepSystemName = keyof typeof SWEEP_SYSTEMS;

async function startSweepSystem(name: SweepSystemName): Promise<SweepSystem> {
  const durationMs = P.sweepS * 1000;
  const warmupMs = Math.min(1000, durationMs / 5);
  const offered = (rate: number) => (rate > 0 ? { rate, durationMs } : { window: P.window, durationMs });
  if (name === 'raw-ceiling' || name === 'yardstick-queue') {
    const stack = await sinkStack(`sweep-${name}`);
    try {
      const { sink, procs } = await (name === 'raw-ceiling' ? startRawCeiling(stack) : startQueueYardstick(stack));
      return {
        async phase(seqStart, rate) {
          const phase = await sinkPhase(stack, sink, procs, name, { seqStart, warmupMs, ...offered(rate) });
          return { published: phase.report.published, throughput: phase.throughput, p99: phase.latency.p99 };
        },
        close: async () => {
          await Promise.all(procs.map((proc) => stop(proc, 5000)));
          await stack.close();
        },
      };
    } catch (err) {
      await stack.close();
      throw err;
    }
  }
  const pipeline = name === 'pipeline';
  const stack = await Stack.start({
    name: `sweep-${name}`,
    services,
    workers: pipeline ? 1 : 0,
    subscriber: pipeline,
    database: pipeline,
    env: extraEnv,
    validateEvery: P.validateEvery,
  });
  try {
    let proc: ManagedProcess | undefined;
    if (pipeline) await stack.connectLamps(0, P.lamps, P.stallMs);
    else {
      proc = startBenchProcess('yardstick-direct.ts', {
        MQTT_URL: stack.broker.url,
        KEEN_API_URL: stack.recorder.url,
        KEEN_PROJECT_ID: KEEN_PROJECT,
        KEEN_WRITE_KEY: KEEN_WRITE_KEY,
        MQTT_CLIENT_ID: `${stack.prefix}-direct`,
      });
      await waitForLine(proc, 'yardstick ready', STARTUP_MS);
    }
    return {
      async phase(seqStart, rate) {
        const phase = await lampStatePhase(stack, { seqStart, ...offered(rate) });
        const failure = phaseOk(phase, stack.recorder);
        if (failure) throw new BenchFailure(`${name}: ${failure}`);
        const l = latencyOf(stack.recorder, seqStart, seqStart + phase.report.published, phase.report.firstAt + warmupMs);
        return { published: phase.report.published, throughput: phase.throughput, p99: l.p99 };
      },
      close: async () => {
        if (proc) await stop(proc, 5000);
        await stack.close();
      },
    };
  } catch (err) {
    await stack.close();
    throw err;
  }
}

/** Throughput and p99 latency of the pipeline and the yardsticks at each offered rate (the plot's data). */
async function sweep(): Promise<void> {
  await scenario('sweep', async (outcome) => {
    for (const name of Object.keys(SWEEP_SYSTEMS) as SweepSystemName[]) {
      const system = await startSweepSystem(name);
      try {
        let seqStart = 0;
        const points: string[] = [];
        for (const rate of P.sweepRates) {
          const point = await system.phase(seqStart, rate);
          seqStart += point.published;
          outcome.data[`${name}@${rate}`] = point.throughput;
          outcome.data[`${name}@${rate}:p99`] = point.p99;
          points.push(`${rate ? fmt(rate) : 'max'} → ${fmt(point.throughput)}/s, p99 ${fmt(point.p99)} ms`);
        }
        outcome.details.push(`${SWEEP_SYSTEMS[name]}: ${points.join('; ')}`);
      } finally {
        await system.close();
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

const startedAt = new Date();
const loadBefore = loadAverage();
const machineBefore = systemCpu();
const command = `npm run bench${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(' ')}` : ''}`;
log(`lampi-ingest bench${quick ? ' (--quick: correctness only, figures are not measurements)' : ''}: ${scenarios.join(', ')}`);
log(
  `load average ${loadBefore.join(' ')} on ${cpus().length} cores; Redis ${services.redisUrl}; ` +
    `PostgreSQL ${services.databaseAdminUrl.replace(/:[^:@/]*@/, ':***@')}`,
);

let interrupted = false;
const onSignal = (signal: string) => {
  if (interrupted) process.exit(130);
  interrupted = true;
  process.stderr.write(`\nbench: ${signal}: cleaning up\n`);
  void cleanupAll().finally(() => process.exit(130));
};
process.on('SIGINT', () => onSignal('SIGINT'));
process.on('SIGTERM', () => onSignal('SIGTERM'));

// Round after round rather than a scenario's runs back to back: a spell of load from elsewhere
// on the machine then spoils one run of several scenarios, not the median of one.
for (; round <= P.repeat; round++) {
  for (const name of scenarios) {
    if (name === 'raw-ceiling') await rawCeiling();
    if (name === 'yardstick-direct') await yardstickDirect();
    if (name === 'yardstick-queue') await yardstickQueue();
    if (name === 'throughput') for (const w of P.workers) await throughput(w);
    if (name === 'throughput-cluster') await throughput(CLUSTER_WORKERS, 'cluster');
    if (name === 'latency') await latency();
    if (name === 'sweep') await sweep();
    if (name === 'activations') await activations();
    // Memory per queued event does not vary between runs; a million events take minutes.
    if (name === 'backlog' && round === 1) await backlog();
  }
}
await cleanupAll();

// ---------------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------------

const loadAfter = loadAverage();
const machineAfter = systemCpu();
/** A scenario's runs as one: its figures are the medians of the runs that passed. */
function byName(name: string): (Outcome & { runs: Outcome[] }) | undefined {
  const runs = outcomes.filter((o) => o.scenario === name);
  if (runs.length === 0) return undefined;
  const passed = runs.filter((o) => o.ok);
  const data: Record<string, number> = {};
  for (const key of new Set(passed.flatMap((o) => Object.keys(o.data)))) {
    const values = passed.map((o) => o.data[key]).filter((v): v is number => v !== undefined);
    if (values.length > 0) data[key] = median(values);
  }
  const failure = runs.find((o) => !o.ok)?.failure;
  return { scenario: name, ok: passed.length === runs.length, ...(failure ? { failure } : {}), data, details: [], runs };
}
function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}
/** A median, and the runs it comes from when there were several. */
const figure = (o: Outcome & { runs: Outcome[] }, key: string, show: (n: number) => string = (n) => fmt(n)) =>
  o.runs.length > 1
    ? `${show(o.data[key]!)} (median of ${o.runs.length}: ${o.runs.map((r) => (r.data[key] === undefined ? '-' : show(r.data[key]!))).join(', ')})`
    : show(o.data[key]!);
type Row = [measure: string, result: string, target: string, verdict: string];
const rows: Row[] = [];
const verdict = (ok: boolean) => (quick ? '(quick)' : ok ? 'ok' : 'MISS');
const failed = (o: Outcome | undefined) => (o && !o.ok ? `FAILURE: ${(o.failure ?? '').split('\n')[0]!.slice(0, 160)}` : undefined);

const one = byName(`throughput-${P.workers[0]}w`);
const ya = byName('yardstick-direct');
const yb = byName('yardstick-queue');
for (const w of P.workers) {
  const o = byName(`throughput-${w}w`);
  if (!o) continue;
  const isOne = w === 1;
  rows.push([
    `Throughput, 1 subscriber + ${w} worker${w > 1 ? 's' : ''} (events/s, ${P.durationS} s at max load)`,
    failed(o) ?? figure(o, 'throughput'),
    isOne ? '≥ 8,000' : '',
    o.ok ? (isOne ? verdict(o.data.throughput! >= 8000) : '') : 'FAILURE',
  ]);
}
const onCluster = byName(`throughput-${CLUSTER_WORKERS}w-cluster`);
if (onCluster) {
  const single = byName(`throughput-${CLUSTER_WORKERS}w`);
  rows.push([
    `Throughput on a Redis Cluster (3 primaries, 3 replicas), 1 subscriber + ${CLUSTER_WORKERS} workers (events/s)`,
    (failed(onCluster) ?? figure(onCluster, 'throughput')) +
      (onCluster.ok && single?.ok ? ` (${fmt((onCluster.data.throughput! / single.data.throughput!) * 100)}% of single Redis)` : ''),
    '',
    onCluster.ok ? '' : 'FAILURE',
  ]);
}
/** A row of a yardstick's throughput (no target: the others are measured against it). */
const yardstickRow = (o: (Outcome & { runs: Outcome[] }) | undefined, label: string) => {
  if (o) rows.push([label, failed(o) ?? figure(o, 'throughput'), '', o.ok ? '' : 'FAILURE']);
};
yardstickRow(ya, 'Yardstick (a): seed design, one Keen request per event (events/s)');
yardstickRow(yb, 'Yardstick (b): MQTT → queue.add → no-op worker (events/s)');
const raw = byName('raw-ceiling');
yardstickRow(raw, 'Raw ceiling: fleet → Mosquitto → QoS 1 subscriber that only acknowledges (events/s)');
/** a ÷ b of the runs of the same round (the machine's speed moves between rounds): each, and their median. */
function perRound(a: Outcome & { runs: Outcome[] }, b: Outcome & { runs: Outcome[] }, key: string): number[] {
  return a.runs.flatMap((run) => {
    const other = b.runs.find((o) => o.run === run.run && o.ok);
    return run.ok && other && run.data[key] !== undefined && other.data[key] !== undefined ? [run.data[key]! / other.data[key]!] : [];
  });
}
const pct = (n: number) => `${fmt(n * 100)}%`;
const times = (n: number) => `${fmt(n, 1)}×`;
const medianOf = (values: number[], show: (n: number) => string) =>
  values.length > 1 ? `${show(median(values))} (median of ${values.length}: ${values.map(show).join(', ')})` : show(values[0]!);
if (one && raw) {
  const ratios = perRound(one, raw, 'throughput');
  if (ratios.length)
    rows.push([
      `Throughput (${P.workers[0]} worker) ÷ raw ceiling, same round`,
      medianOf(ratios, pct),
      '≥ 80%',
      verdict(median(ratios) >= 0.8),
    ]);
}
if (one?.ok && one.data.cpuMosquitto !== undefined) {
  const us = (key: string) => fmt(one.data[key] ?? NaN);
  rows.push([
    `CPU per event at max load (${P.workers[0]} worker), µs: subscriber / worker / Redis / Mosquitto`,
    `${us('cpuSubscriber')} / ${us('cpuWorker')} / ${us('cpuRedis')} / ${us('cpuMosquitto')}`,
    '',
    '',
  ]);
  rows.push([
    'Pipeline CPU per event (subscriber + worker + Redis) ÷ Mosquitto’s, same run',
    figure(one, 'pipelineOverBroker', times),
    '≤ 2×',
    verdict(one.data.pipelineOverBroker! <= 2),
  ]);
  rows.push([
    'Subscriber CPU per event ÷ Mosquitto’s, same run',
    figure(one, 'subscriberOverBroker', times),
    '≤ 1×',
    verdict(one.data.subscriberOverBroker! <= 1),
  ]);
}
if (one?.ok && ya?.ok)
  rows.push([
    `Throughput (${P.workers[0]} worker) as a multiple of (a)`,
    `${fmt(one.data.throughput! / ya.data.throughput!, 1)}×`,
    '≥ 5×',
    verdict(one.data.throughput! / ya.data.throughput! >= 5),
  ]);
if (one?.ok && yb?.ok)
  rows.push([
    `Throughput (${P.workers[0]} worker) as a fraction of (b)`,
    `${fmt((one.data.throughput! / yb.data.throughput!) * 100)}%`,
    '≥ 60%',
    verdict(one.data.throughput! / yb.data.throughput! >= 0.6),
  ]);
const lat = byName('latency');
if (lat) {
  for (const rate of P.rates) {
    // Issue 5 set 100 ms at 500/s; issue 15, 50 ms at 2,000/s and 100 ms at 5,000/s.
    const target = ({ 500: 100, 2000: 50, 5000: 100 } as Record<number, number>)[rate];
    const p99 = lat.data[`p99@${rate}`];
    rows.push([
      `Latency publish → Keen at ${fmt(rate)} events/s, p50 / p95 / p99 (ms)`,
      p99 === undefined
        ? (failed(lat) ?? '-')
        : `${fmt(lat.data[`p50@${rate}`]!)} / ${fmt(lat.data[`p95@${rate}`]!)} / ${figure(lat, `p99@${rate}`)}`,
      target ? `p99 ≤ ${target}` : '',
      !lat.ok ? 'FAILURE' : target ? verdict(p99 !== undefined && p99 <= target) : '',
    ]);
  }
}
if (one?.ok)
  rows.push([
    'Keen requests per event at saturation',
    `${fmt(one.data.requestsPerEvent!, 4)} (1 per ${fmt(1 / one.data.requestsPerEvent!)})`,
    '≤ 0.01',
    verdict(one.data.requestsPerEvent! <= 0.01),
  ]);
const low = lat?.data[`requestsPerEvent@${P.rates[0]}`];
if (low !== undefined)
  rows.push([`Keen requests per event at ${fmt(P.rates[0]!)} events/s`, `${fmt(low, 4)} (1 per ${fmt(1 / low, 1)})`, '', '']);
/** The highest of the scenarios' medians (the rule of every target), and the highest single run. */
const peaks = (key: 'subscriberRss' | 'workerRss') => {
  const highest = (found: Array<readonly [string, number]>) => (found.length ? found.reduce((a, b) => (b[1] > a[1] ? b : a)) : undefined);
  const medians = [...new Set(outcomes.map((o) => o.scenario))].flatMap((name) => {
    const value = byName(name)?.data[key];
    return value === undefined ? [] : [[name, value] as const];
  });
  const single = highest(
    outcomes.filter((o) => o.data[key] !== undefined).map((o) => [`${o.scenario}${o.run ? ` run ${o.run}` : ''}`, o.data[key]!] as const),
  );
  const median = highest(medians);
  return median && single ? { median, single } : undefined;
};
for (const [key, who, limitMb] of [
  // Issue 15's targets (issue 5 had 150 and 200 MB).
  ['subscriberRss', 'subscriber', 80],
  ['workerRss', 'worker', 100],
] as const) {
  const peak = peaks(key);
  if (!peak) continue;
  const detail = P.repeat > 1 ? `; highest single run ${mb(peak.single[1])}, ${peak.single[0]}` : '';
  rows.push([
    `Peak RSS, ${who} (highest scenario${P.repeat > 1 ? ' median' : ''})`,
    `${mb(peak.median[1])} (${peak.median[0]}${detail})`,
    `≤ ${limitMb} MB`,
    verdict(peak.median[1] <= limitMb * 1024 * 1024),
  ]);
}
const bl = byName('backlog');
if (bl) {
  const bytes = bl.data.redisBytesPerEvent;
  rows.push([
    `Redis memory per queued event, ${fmt(P.backlog)} backlog (used_memory; from keys)`,
    bytes === undefined ? (failed(bl) ?? '-') : `${fmt(bytes)} B; ${fmt(bl.data.redisBytesPerEventKeys!)} B`,
    '≤ 1,024 B',
    bytes === undefined ? 'FAILURE' : verdict(bytes <= 1024),
  ]);
  rows.push([
    `Backlog drain, ${P.workers[0]} worker (events/s)`,
    failed(bl) ?? fmt(bl.data.drainRate!),
    'no errors',
    bl.ok ? 'ok' : 'FAILURE',
  ]);
}
const act = byName('activations');
if (act)
  rows.push([
    `Activations, ${fmt(P.activations)} new lamps at once (devices/s)`,
    failed(act) ?? figure(act, 'devicesPerSecond'),
    '≥ 1,000',
    act.ok ? verdict(act.data.devicesPerSecond! >= 1000) : 'FAILURE',
  ]);
const sw = byName('sweep');
let sweepPlot: string | undefined;
if (sw) {
  const rateName = (rate: number) => (rate ? fmt(rate) : 'max');
  const series: SweepSeries[] = [];
  for (const [name, label] of Object.entries(SWEEP_SYSTEMS)) {
    const throughputs = P.sweepRates.map((rate) => sw.data[`${name}@${rate}`] ?? NaN);
    const p99s = P.sweepRates.map((rate) => sw.data[`${name}@${rate}:p99`] ?? NaN);
    series.push({ label, throughput: throughputs, p99: p99s });
    rows.push([
      `Sweep: ${label}; events/s and p99 ms at offered ${P.sweepRates.map(rateName).join(', ')}`,
      throughputs.every((t) => !Number.isFinite(t))
        ? (failed(sw) ?? '-')
        : P.sweepRates.map((rate, i) => `${rateName(rate)}: ${fmt(throughputs[i]!)} / ${fmt(p99s[i]!)}`).join('; '),
      '',
      sw.ok ? '' : 'FAILURE',
    ]);
  }
  sweepPlot = sweepSvg(`${command} at ${startedAt.toISOString()}; commit ${commit}`, P.sweepRates, series);
}
const allOk = outcomes.every((o) => o.ok);
rows.push([
  'Correctness: every published event accepted by Keen exactly once',
  allOk
    ? `yes, in all ${outcomes.length} runs`
    : `NO: ${outcomes
        .filter((o) => !o.ok)
        .map((o) => o.scenario)
        .join(', ')}`,
  'no loss, no duplicate',
  allOk ? 'ok' : 'FAILURE',
]);

const header = ['Measure', 'Result', 'Target', ''];
const table = [header, ['---', '---', '---', '---'], ...rows].map((row) => `| ${row.join(' | ')} |`).join('\n');
const busyShare = ((machineAfter.busy - machineBefore.busy) / (machineAfter.total - machineBefore.total)) * 100;
const loadedBefore =
  busyShare > 0 && loadBefore[0]! > cpus().length ? ' (it was already loaded by other work when the run started: figures are low)' : '';
const context = [
  `\`${command}\` at ${startedAt.toISOString()}, ${fmt((Date.now() - startedAt.getTime()) / 1000)} s; ` +
    `commit ${commit}; Node ${process.version}, ${cpus().length} cores.`,
  `Load average ${loadBefore.join(' ')} before, ${loadAfter.join(' ')} after; the machine was ${fmt(busyShare)}% busy over the run${loadedBefore}.`,
  quick
    ? 'QUICK RUN: small counts; only correctness is asserted, the figures are not measurements.'
    : `Max load = ${fmt(P.window)} events in flight (closed loop), ${fmt(P.lamps)} lamps; latency after ${P.warmupS} s warm-up of ${P.latencyS} s per rate.`,
];

log(`\n${table}\n`);
for (const line of context) log(line);

if (!args['no-write']) {
  const dir = path.join(ROOT, 'bench/results');
  mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `${startedAt.toISOString().slice(0, 10)}.md`);
  const details = outcomes.flatMap((o) => [
    `- **${o.scenario}**${o.run ? ` (run ${o.run})` : ''}${o.ok ? '' : ` — FAILURE: ${o.failure}`}`,
    ...o.details.map((d) => `  - ${d.replaceAll('\n', '\n    ')}`),
  ]);
  const section = [
    `## ${startedAt.toISOString().slice(11, 16)} UTC${quick ? ' (quick)' : ''}`,
    '',
    ...context,
    '',
    table,
    '',
    '<details><summary>Details</summary>',
    '',
    ...details,
    '',
    '</details>',
    '',
  ].join('\n');
  if (!existsSync(file))
    writeFileSync(
      file,
      `# Bench results, ${startedAt.toISOString().slice(0, 10)}\n\nEach section is one \`npm run bench\` run (bench/run.ts says what it measures).\n\n`,
    );
  appendFileSync(file, `${section}\n`);
  log(`written to ${path.relative(ROOT, file)}`);
  if (sweepPlot) {
    // One plot a day, the latest sweep's: the README shows it.
    const svg = path.join(dir, `${startedAt.toISOString().slice(0, 10)}-sweep.svg`);
    writeFileSync(svg, sweepPlot);
    log(`plot written to ${path.relative(ROOT, svg)}`);
  }
} else if (sweepPlot) {
  const svg = path.join(tmpdir(), `lampi-bench-sweep-${process.pid}.svg`);
  writeFileSync(svg, sweepPlot);
  log(`plot written to ${svg}`);
}
process.exit(allOk ? 0 : 1);
