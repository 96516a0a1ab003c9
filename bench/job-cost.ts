/**
 * What one lamp state costs Redis for different job layouts: adds N events through BullMQ and
 * drains them with a no-op worker, and reads Redis's own CPU time (INFO cpu) before and after.
 * Run it against a Redis of its own, or other clients' work is counted too:
 *
 *   redis-server --port 6390 --save '' --appendonly no --daemonize yes
 *   node --import tsx bench/job-cost.ts [--redis redis://127.0.0.1:6390] [--events 20000]
 *
 * Layouts: one lamp state per job (the layout before lamp states were grouped) with the ingest
 * stages' job options (JOB_OPTIONS.ingest); the same with removeOnComplete: true; a minimal job (no
 * options); the worker's connection with ioredis auto-pipelining; and groups of 10 and 100
 * lamp states per job. Node CPU is this process's (producer and no-op worker). A single state is
 * a QueuedLampState; a group is a LampStatesJob as the subscriber writes it.
 */
import { randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';
import { Queue, Worker, type JobsOptions } from 'bullmq';
import { Redis } from 'ioredis';
import type { LampStatesJob, QueuedLampState } from '../src/shared/jobs.js';
import { JOB_OPTIONS } from '../src/shared/queues.js';

const { values } = parseArgs({
  options: { redis: { type: 'string', default: 'redis://127.0.0.1:6390' }, events: { type: 'string', default: '20000' } },
});
const EVENTS = Number(values.events);
const url = new URL(values.redis);
const connection = { host: url.hostname, port: Number(url.port || 6379) };
const admin = new Redis(connection);

const job = (seq: number): QueuedLampState => ({
  messageId: randomUUID().replaceAll('-', ''),
  deviceId: 'b827eb000042',
  receivedAt: new Date().toISOString(),
  topic: '/devices/b827eb000042/lamp/changed',
  payload: JSON.stringify({ color: { h: 0.42, s: 1 }, brightness: 0.5, on: true, client: 'lamp_ui', seq, t: Date.now() }),
});

async function redisCpu(): Promise<number> {
  const info = await admin.info('cpu');
  return Number(/used_cpu_user:([\d.]+)/.exec(info)?.[1]) + Number(/used_cpu_sys:([\d.]+)/.exec(info)?.[1]);
}

async function measure(label: string, perJob: number, opts: JobsOptions, workerAutoPipelining = false): Promise<void> {
  const prefix = `jobcost-${randomUUID().slice(0, 8)}`;
  const producer = new Redis({ ...connection, maxRetriesPerRequest: null, enableAutoPipelining: true });
  const consumer = new Redis({ ...connection, maxRetriesPerRequest: null, enableAutoPipelining: workerAutoPipelining });
  const queue = new Queue('lamp-states', { connection: producer, prefix });
  let done = 0;
  const jobs = Math.ceil(EVENTS / perJob);
  const finished = new Promise<void>((resolve) => {
    const worker = new Worker('lamp-states', async () => {}, { connection: consumer, prefix, concurrency: 50 });
    worker.on('completed', () => {
      done += 1;
      if (done === jobs) void worker.close().then(resolve);
    });
  });
  const cpu0 = await redisCpu();
  const own0 = process.cpuUsage();
  const t0 = Date.now();
  const inFlight = new Set<Promise<unknown>>();
  for (let i = 0; i < jobs; i++) {
    const data: LampStatesJob = { kind: 'lamp-states', states: Array.from({ length: perJob }, (_, k) => job(i * perJob + k)) };
    const added = queue.add(data.kind, data, { ...opts, jobId: randomUUID().replaceAll('-', '') }).finally(() => inFlight.delete(added));
    inFlight.add(added);
    if (inFlight.size >= 200) await Promise.race(inFlight);
  }
  await Promise.all(inFlight);
  await finished;
  const seconds = (Date.now() - t0) / 1000;
  const cpu = (await redisCpu()) - cpu0;
  const own = process.cpuUsage(own0);
  const ownUs = (own.user + own.system) / EVENTS;
  const rate = Math.round(EVENTS / seconds)
    .toLocaleString('en-US')
    .padStart(8);
  process.stdout.write(
    `${label.padEnd(56)} Redis ${((cpu / EVENTS) * 1e6).toFixed(1).padStart(6)} µs + Node (producer and worker) ` +
      `${ownUs.toFixed(1).padStart(6)} µs CPU per event; ${rate} events/s\n`,
  );
  await queue.obliterate({ force: true });
  await queue.close();
  producer.disconnect();
  consumer.disconnect();
}

await measure('1 event/job, JOB_OPTIONS.ingest (ours)', 1, JOB_OPTIONS.ingest);
await measure('1 event/job, ours but removeOnComplete: true', 1, { ...JOB_OPTIONS.ingest, removeOnComplete: true });
await measure('1 event/job, no options', 1, {});
await measure('1 event/job, ours, worker connection auto-pipelined', 1, JOB_OPTIONS.ingest, true);
await measure('10 events/job, JOB_OPTIONS.ingest', 10, JOB_OPTIONS.ingest);
await measure('100 events/job, JOB_OPTIONS.ingest', 100, JOB_OPTIONS.ingest);
admin.disconnect();
