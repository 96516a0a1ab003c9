/**
 * One scenario's world: its own Mosquitto, a scratch PostgreSQL database, a queue prefix of its
 * own on the local Redis, the Keen recorder, our real subscriber and worker processes, and the
 * fleet process. Everything is torn down afterwards (queues obliterated, database dropped).
 */
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Queue } from 'bullmq';
import { Cluster, Redis } from 'ioredis';
import pg from 'pg';
import { parse as parseYaml } from 'yaml';
import { applyMigrations } from '../../src/shared/migrations.js';
import { BRIDGE_PARTITIONS, QUEUE_NAMES, queueKey } from '../../src/shared/queues.js';
import { manage, ROOT, startMosquitto, waitFor, type ManagedProcess } from '../../test/support/processes.js';
import type { FleetCommand, FleetReply, PublishReport } from '../fleet.js';
import { startRecorder, type KeenRecorder } from '../keen-recorder.js';
import { pidsMatching, ProcWatch } from './procs.js';

export interface BenchServices {
  redisUrl: string;
  databaseAdminUrl: string;
  /** Seed nodes of a Redis Cluster (REDIS_CLUSTER_NODES): when set, the stack runs on it instead of redisUrl. */
  redisCluster?: { seeds: string; pids: Record<string, number> };
}

export const KEEN_PROJECT = 'bench_project';
export const KEEN_WRITE_KEY = 'bench-write-key';

export class BenchFailure extends Error {
  override name = 'BenchFailure';
}

/** Every process and resource the bench started, so an interrupted run still cleans up. */
const cleanups = new Set<() => Promise<unknown>>();
export async function cleanupAll(): Promise<void> {
  for (const cleanup of [...cleanups].reverse()) await cleanup().catch(() => {});
  cleanups.clear();
}

/** SIGTERM, then SIGKILL if it has not exited after `graceMs`. */
export async function stop(proc: ManagedProcess, graceMs = 20_000): Promise<number | string> {
  if (proc.child.exitCode !== null || proc.child.signalCode !== null) return proc.exited;
  proc.child.kill('SIGTERM');
  const timer = setTimeout(() => proc.child.kill('SIGKILL'), graceMs);
  try {
    return await proc.exited;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * The command docker-compose.yml runs for a service, without its `node`: the bench measures the
 * processes as users run them (compiled, with the same V8 flags).
 */
export function composeCommand(name: 'subscriber' | 'worker'): string[] {
  const compose = parseYaml(readFileSync(path.join(ROOT, 'docker-compose.yml'), 'utf8')) as {
    services: Record<string, { command: string[] }>;
  };
  const [node, ...args] = compose.services[name]!.command;
  if (node !== 'node') throw new Error(`docker-compose.yml: ${name} does not run node`);
  return args;
}

/** Compiles dist/ as the image does (`npm run build`), unless BENCH_ENTRY=tsx runs the sources. */
export function buildEntryPoints(): void {
  if (process.env.BENCH_ENTRY !== 'tsx') execFileSync(process.execPath, ['scripts/build.mjs'], { cwd: ROOT, stdio: 'inherit' });
}

/**
 * Runs one of our processes as docker-compose.yml does (BENCH_ENTRY=tsx: from the sources, as
 * `npm run subscriber|worker` does), plus node options such as --cpu-prof, which NODE_OPTIONS
 * does not allow, and any in BENCH_NODE_OPTIONS (for experiments).
 */
export function startService(name: 'subscriber' | 'worker', env: Record<string, string>, nodeOptions: string[] = []): ManagedProcess {
  const entry = process.env.BENCH_ENTRY === 'tsx' ? ['--import', 'tsx', `src/${name}/main.ts`] : composeCommand(name);
  const extra = process.env.BENCH_NODE_OPTIONS?.split(' ').filter(Boolean) ?? [];
  const child = spawn(process.execPath, [...extra, ...nodeOptions, ...entry], {
    cwd: ROOT,
    env: { PATH: process.env.PATH, LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  return manage(child);
}

/** Waits until a service logs the given message (pino JSON `msg`); fails as soon as it exits. */
export function waitForLog(proc: ManagedProcess, msg: string, timeoutMs = 90_000): Promise<void> {
  return waitForLine(proc, `"msg":"${msg}"`, timeoutMs);
}

/** Starts a bench script (bench/<name>.ts) as its own process, with an IPC channel. */
export function startBenchProcess(script: string, env: Record<string, string>, nodeOptions: string[] = []): ManagedProcess {
  const child = spawn(process.execPath, [...nodeOptions, '--import', 'tsx', path.join('bench', script)], {
    cwd: ROOT,
    env: { PATH: process.env.PATH, ...env },
    stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
  });
  const proc = manage(child);
  cleanups.add(() => stop(proc, 5000));
  return proc;
}

export async function waitForLine(proc: ManagedProcess, line: string, timeoutMs = 60_000): Promise<void> {
  const what = `"${line}" from ${proc.child.spawnargs.at(-1)}`;
  await waitFor(what, () => proc.output().includes(line) || proc.child.exitCode !== null || proc.child.signalCode !== null, timeoutMs, 50);
  if (!proc.output().includes(line))
    throw new BenchFailure(`${proc.child.spawnargs.at(-1)} exited before ${what}:\n${proc.output().slice(-2000)}`);
}

/** The fleet process and a typed way to talk to it. */
export class Fleet {
  readonly proc: ManagedProcess;
  #waiters: Array<{ types: string[]; resolve(reply: FleetReply): void; reject(err: Error): void }> = [];

  private constructor(proc: ManagedProcess) {
    this.proc = proc;
    proc.child.on('message', (reply: FleetReply) => {
      const waiter = this.#waiters.find((w) => w.types.includes(reply.type) || reply.type === 'error');
      if (!waiter) return;
      this.#waiters.splice(this.#waiters.indexOf(waiter), 1);
      if (reply.type === 'error') waiter.reject(new BenchFailure(`fleet: ${reply.message}`));
      else waiter.resolve(reply);
    });
    void proc.exited.then((code) => {
      for (const waiter of this.#waiters.splice(0))
        waiter.reject(new BenchFailure(`fleet exited (${code}):\n${proc.output().slice(-2000)}`));
    });
  }

  static async start(mqttUrl: string, clientId: string, connections = 1): Promise<Fleet> {
    const proc = startBenchProcess('fleet.ts', { MQTT_URL: mqttUrl, FLEET_CLIENT_ID: clientId, FLEET_CONNECTIONS: String(connections) });
    const fleet = new Fleet(proc);
    await fleet.#next(['ready'], 60_000);
    return fleet;
  }

  #next(types: string[], timeoutMs = 24 * 3600_000): Promise<FleetReply> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new BenchFailure(`fleet: no ${types.join('/')} after ${timeoutMs} ms`)), timeoutMs);
      this.#waiters.push({
        types,
        resolve: (reply) => {
          clearTimeout(timer);
          resolve(reply);
        },
        reject: (err) => {
          clearTimeout(timer);
          reject(err);
        },
      });
    });
  }

  send(command: FleetCommand): void {
    if (this.proc.child.connected) this.proc.child.send(command);
  }

  async connect(from: number, count: number): Promise<PublishReport> {
    this.send({ type: 'connect', from, count });
    return (await this.#next(['connected'])) as PublishReport;
  }

  /**
   * Publishes lamp states; while it runs, `accepted()` (events of this scenario accepted
   * downstream so far) is reported to the fleet every 20 ms for its window.
   */
  async states(command: Omit<Extract<FleetCommand, { type: 'states' }>, 'type'>, accepted: () => number): Promise<PublishReport> {
    const ticker = setInterval(() => this.send({ type: 'accepted', n: accepted() }), 20);
    try {
      this.send({ type: 'states', ...command });
      return (await this.#next(['done'])) as PublishReport;
    } finally {
      clearInterval(ticker);
    }
  }

  async close(): Promise<void> {
    this.send({ type: 'close' });
    await stop(this.proc, 5000);
  }
}

/**
 * Waits until `current()` reaches `target`. Gives up (returns false) when it has not moved for
 * `stallMs`, or when one of `watched` exits.
 */
export async function waitProgress(
  current: () => number | Promise<number>,
  target: number,
  stallMs: number,
  watched: ManagedProcess[] = [],
): Promise<boolean> {
  let last = -1;
  let lastChange = Date.now();
  for (;;) {
    const now = await current();
    if (now >= target) return true;
    if (now !== last) {
      last = now;
      lastChange = Date.now();
    }
    const dead = watched.find((proc) => proc.child.exitCode !== null || proc.child.signalCode !== null);
    if (dead)
      throw new BenchFailure(
        `${dead.child.spawnargs.at(-1)} exited (${dead.child.exitCode ?? dead.child.signalCode}) while the bench waited:\n${dead.output().slice(-3000)}`,
      );
    if (Date.now() - lastChange > stallMs) return false;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

export interface StackOptions {
  name: string;
  services: BenchServices;
  /** Worker processes to start (0: none). */
  workers: number;
  subscriber?: boolean;
  /** A scratch database (default true); the yardsticks need none. */
  database?: boolean;
  /** Extra environment for our subscriber and worker processes. */
  env?: Record<string, string>;
  /** Node options (e.g. --cpu-prof) for the subscriber and workers. */
  nodeOptions?: (role: string) => string[] | undefined;
  validateEvery: number;
  fleetConnections?: number;
}

export class Stack {
  readonly prefix: string;
  readonly watch = new ProcWatch();
  readonly redis: Redis | Cluster;
  broker!: Awaited<ReturnType<typeof startMosquitto>>;
  recorder!: KeenRecorder;
  databaseUrl!: string;
  databaseName!: string;
  subscriber: ManagedProcess | undefined;
  workers: ManagedProcess[] = [];
  fleet!: Fleet;
  readonly #options: StackOptions;
  #workerSeq = 0;
  readonly #teardown: Array<() => Promise<unknown>> = [];

  constructor(options: StackOptions) {
    this.#options = options;
    this.prefix = `bench-${options.name}-${randomBytes(3).toString('hex')}`.slice(0, 40);
    const cluster = options.services.redisCluster;
    this.redis = cluster
      ? new Cluster(
          cluster.seeds.split(',').map((node) => ({ host: node.split(':')[0]!, port: Number(node.split(':')[1]) })),
          { lazyConnect: true, redisOptions: { maxRetriesPerRequest: 3 } },
        )
      : new Redis(options.services.redisUrl, { maxRetriesPerRequest: 3, lazyConnect: true });
  }

  static async start(options: StackOptions): Promise<Stack> {
    const stack = new Stack(options);
    const cleanup = () => stack.close();
    cleanups.add(cleanup);
    stack.#teardown.push(async () => cleanups.delete(cleanup));
    try {
      await stack.#start();
    } catch (err) {
      await stack.close();
      throw err;
    }
    return stack;
  }

  async #start(): Promise<void> {
    const options = this.#options;
    await this.redis.connect();
    this.#teardown.push(() => this.redis.quit());
    this.#teardown.push(() => this.#sweepRedis());

    this.broker = await startMosquitto();
    this.#teardown.push(() => stop(this.broker, 5000));
    this.watch.watch('mosquitto', this.broker.child.pid);

    if (options.database !== false) {
      await this.#createDatabase();
      // Backends name their database in their process title: "postgres: ... lampi_bench_xxx ...".
      const needle = ` ${this.databaseName} `;
      this.watch.watchGroup('postgres (our database)', () => pidsMatching(needle));
    }
    this.recorder = await startRecorder({ projectId: KEEN_PROJECT, writeKey: KEEN_WRITE_KEY, validateEvery: options.validateEvery });
    this.#teardown.push(() => this.recorder.close());
    this.watch.watch('bench (recorder)', process.pid);
    if (options.services.redisCluster) {
      for (const [name, pid] of Object.entries(options.services.redisCluster.pids)) this.watch.watch(name, pid);
    } else {
      const redisPid = Number(/process_id:(\d+)/.exec(await this.redis.info('server'))?.[1]);
      if (redisPid && pidsMatching('redis-server').includes(redisPid)) this.watch.watch('redis', redisPid);
    }

    const starting: Array<Promise<void>> = [];
    if (options.subscriber !== false) {
      this.subscriber = startService('subscriber', this.#env({ MQTT_SHARE_GROUP: this.prefix }), options.nodeOptions?.('subscriber'));
      this.#teardown.push(() => stop(this.subscriber!));
      this.watch.watch('subscriber', this.subscriber.child.pid);
      starting.push(waitForLog(this.subscriber, 'subscriber ready', 90_000));
    }
    for (let i = 0; i < options.workers; i++) starting.push(this.startWorker().then(() => {}));
    this.fleet = await Fleet.start(this.broker.url, `${this.prefix}-fleet`, options.fleetConnections ?? 1);
    this.#teardown.push(() => this.fleet.close());
    this.watch.watch('fleet', this.fleet.proc.child.pid);
    await Promise.all(starting);
  }

  #env(extra: Record<string, string> = {}): Record<string, string> {
    return {
      REDIS_URL: this.#options.services.redisUrl,
      ...(this.#options.services.redisCluster ? { REDIS_CLUSTER_NODES: this.#options.services.redisCluster.seeds } : {}),
      QUEUE_PREFIX: this.prefix,
      MQTT_URL: this.broker.url,
      MQTT_CLIENT_ID: this.prefix,
      METRICS_PORT: '0',
      ...extra,
      ...this.#options.env,
    };
  }

  /** Starts one more worker process and waits until it is ready. */
  async startWorker(): Promise<ManagedProcess> {
    this.#workerSeq += 1;
    const name = `worker-${this.#workerSeq}`;
    const worker = startService(
      'worker',
      this.#env({
        DATABASE_URL: this.databaseUrl,
        KEEN_API_URL: this.recorder.url,
        KEEN_PROJECT_ID: KEEN_PROJECT,
        KEEN_WRITE_KEY: KEEN_WRITE_KEY,
      }),
      this.#options.nodeOptions?.(name),
    );
    this.workers.push(worker);
    this.#teardown.push(() => stop(worker));
    this.watch.watch(name, worker.child.pid);
    await waitForLog(worker, 'worker ready', 90_000);
    return worker;
  }

  /** The last lines our processes logged, for a failure's report. */
  logs(lines = 15): string {
    const tail = (proc: ManagedProcess) =>
      proc
        .output()
        .trimEnd()
        .split('\n')
        .slice(-lines)
        .map((line) => (line.length > 300 ? `${line.slice(0, 300)}…` : line))
        .join('\n');
    return [
      ...(this.subscriber ? [['subscriber', this.subscriber] as const] : []),
      ...this.workers.map((w, i) => [`worker ${i + 1}`, w] as const),
    ]
      .map(([name, proc]) => `--- ${name} (last ${lines} lines):\n${tail(proc)}`)
      .join('\n');
  }

  /** Our processes that must stay up while the scenario runs. */
  get running(): ManagedProcess[] {
    return [...(this.subscriber ? [this.subscriber] : []), ...this.workers.filter((w) => !w.child.killed), this.fleet.proc];
  }

  /** Publishes bridge connects for lamps [from, from + count) and waits until the registry has them all. */
  async connectLamps(from: number, count: number, stallMs: number): Promise<PublishReport> {
    const activations = this.recorder.accepted('activations');
    const monitoring = this.recorder.accepted('devicemonitoring');
    const report = await this.fleet.connect(from, count);
    const done = await waitProgress(
      () => Math.min(this.recorder.accepted('activations') - activations, this.recorder.accepted('devicemonitoring') - monitoring),
      count,
      stallMs,
      this.running,
    );
    if (!done) {
      throw new BenchFailure(
        `lamp connects stalled: ${this.recorder.accepted('activations') - activations} activations and ` +
          `${this.recorder.accepted('devicemonitoring') - monitoring} devicemonitoring events of ${count} reached Keen\n${this.logs()}`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
    const extra = [
      this.recorder.accepted('activations') - activations - count,
      this.recorder.accepted('devicemonitoring') - monitoring - count,
    ];
    if (extra.some((n) => n !== 0)) {
      throw new BenchFailure(
        `lamp connects: ${count} lamps connected, but ${count + extra[0]!} activations and ${count + extra[1]!} devicemonitoring events reached Keen`,
      );
    }
    return report;
  }

  async #createDatabase(): Promise<void> {
    const adminUrl = this.#options.services.databaseAdminUrl;
    this.databaseName = `lampi_bench_${randomBytes(4).toString('hex')}`;
    const admin = new pg.Client({ connectionString: adminUrl });
    await admin.connect();
    try {
      await admin.query(`CREATE DATABASE ${this.databaseName}`);
    } finally {
      await admin.end();
    }
    this.#teardown.push(async () => {
      const client = new pg.Client({ connectionString: adminUrl });
      await client.connect();
      try {
        await client.query(`DROP DATABASE IF EXISTS ${this.databaseName} WITH (FORCE)`);
      } finally {
        await client.end();
      }
    });
    const url = new URL(adminUrl);
    url.pathname = `/${this.databaseName}`;
    this.databaseUrl = url.toString();
    await applyMigrations({ databaseUrl: this.databaseUrl, directory: path.join(ROOT, 'prisma/migrations') });
  }

  async query<T extends pg.QueryResultRow>(sql: string, params: unknown[] = []): Promise<T[]> {
    const client = new pg.Client({ connectionString: this.databaseUrl });
    await client.connect();
    try {
      return (await client.query<T>(sql, params)).rows;
    } finally {
      await client.end();
    }
  }

  /** Every queue the pipeline uses, under this stack's prefix. */
  queueNames(): string[] {
    return [
      QUEUE_NAMES.lampStates,
      ...Array.from({ length: BRIDGE_PARTITIONS }, (_, p) => QUEUE_NAMES.bridgeState(p)),
      QUEUE_NAMES.keen,
      QUEUE_NAMES.deadLetter,
      QUEUE_NAMES.rejected,
    ];
  }

  async jobCounts(name: string): Promise<Record<string, number>> {
    const queue = new Queue(queueKey(name), { connection: this.redis, prefix: this.prefix });
    try {
      return await queue.getJobCounts('waiting', 'active', 'delayed', 'failed', 'completed', 'prioritized');
    } finally {
      await queue.close();
    }
  }

  /**
   * Where the time of the last completed lamp states went, from the timestamps BullMQ keeps on
   * the completed jobs it retains (removeOnComplete keeps the newest 1,000 of each queue): per
   * stage p50 / p99 in ms. A lamp-states job whose events Keen took from the registry worker has no
   * keen-delivery job; one whose events went on has both.
   */
  async stageBreakdown(): Promise<Record<string, [number, number]> | undefined> {
    const lampStates = new Queue(queueKey(QUEUE_NAMES.lampStates), { connection: this.redis, prefix: this.prefix });
    const keen = new Queue(queueKey(QUEUE_NAMES.keen), { connection: this.redis, prefix: this.prefix });
    try {
      const [lampStatesJobs, keenJobs] = await Promise.all([
        lampStates.getJobs(['completed'], 0, 999),
        keen.getJobs(['completed'], 0, 999),
      ]);
      const onward = new Map(keenJobs.map((job) => [String(job.id).replace(/-keen$/, ''), job]));
      const stages: Record<string, number[]> = {
        'lamp-states queue wait': [],
        'registry stage, with Keen when it took them': [],
        'keen-delivery queue wait': [],
        'keen-delivery stage': [],
      };
      for (const source of lampStatesJobs) {
        if (!source.processedOn || !source.finishedOn) continue;
        stages['lamp-states queue wait']!.push(source.processedOn - source.timestamp);
        stages['registry stage, with Keen when it took them']!.push(source.finishedOn - source.processedOn);
        const job = onward.get(String(source.id));
        if (!job?.processedOn || !job.finishedOn) continue;
        stages['keen-delivery queue wait']!.push(job.processedOn - job.timestamp);
        stages['keen-delivery stage']!.push(job.finishedOn - job.processedOn);
      }
      const pick = (values: number[], p: number) =>
        values.sort((a, b) => a - b)[Math.min(values.length - 1, Math.ceil((p / 100) * values.length) - 1)]!;
      const measured = Object.entries(stages).filter(([, values]) => values.length > 0);
      if (measured.length === 0) return undefined;
      return Object.fromEntries(measured.map(([name, values]) => [name, [pick(values, 50), pick(values, 99)] as [number, number]]));
    } finally {
      await Promise.all([lampStates.close(), keen.close()]);
    }
  }

  /** Obliterates every queue of the prefix, then removes whatever else it left (the redelivery ledger). */
  async #sweepRedis(): Promise<void> {
    // The yardstick's queue (bench/yardstick-queue.ts) is `lamp-states` itself, without a hash tag.
    for (const name of [...this.queueNames().map(queueKey), 'lamp-states']) {
      const queue = new Queue(name, { connection: this.redis, prefix: this.prefix });
      await queue.obliterate({ force: true }).catch(() => {});
      await queue.close();
    }
    // A cluster's keys are on its primaries, each scanned on its own; UNLINK one key at a time
    // there, as keys of different slots cannot share a command.
    for (const node of this.redis instanceof Cluster ? this.redis.nodes('master') : [this.redis]) {
      let cursor = '0';
      do {
        const [next, keys] = await node.scan(cursor, 'MATCH', `${this.prefix}:*`, 'COUNT', 5000);
        cursor = next;
        if (keys.length > 0)
          await (this.redis instanceof Cluster ? Promise.all(keys.map((key) => node.unlink(key))) : node.unlink(...keys));
      } while (cursor !== '0');
    }
  }

  async close(): Promise<void> {
    this.watch.stop();
    for (const step of this.#teardown.splice(0).reverse())
      await step().catch((err: unknown) => process.stderr.write(`bench: cleanup of ${this.prefix}: ${String(err)}\n`));
  }
}
