/**
 * Yardstick (b), the raw ceiling of our design on this machine: MQTT → BullMQ `queue.add` → a
 * no-op worker, in two processes like our subscriber and worker, and nothing else: no
 * validation, no redelivery ledger, no registry, no second queue, no Keen. The intake adds a job
 * per message from MQTT.js's message callback, so each message is acknowledged as soon as the
 * callback returns (not after Redis has the job, as ours is): an upper bound, not a design.
 *
 *   ROLE=intake MQTT_URL=... REDIS_URL=... QUEUE_PREFIX=... node --import tsx bench/yardstick-queue.ts
 *   ROLE=drain  REDIS_URL=... QUEUE_PREFIX=... node --import tsx bench/yardstick-queue.ts   (with an IPC channel)
 *
 * The intake prints `yardstick ready` once subscribed. The drain, started by the bench with an IPC
 * channel, speaks bench/lib/seqs.ts's SinkReply: progress every 20 ms, and for a check of
 * [from, to) the sequence numbers not completed exactly once and their publish → completion latency.
 */
import { Queue, Worker } from 'bullmq';
import mqtt from 'mqtt';
import { SeqLog } from './keen-recorder.js';
import { recordSeq, serveSink } from './lib/seqs.js';
import { connectRedis } from '../src/shared/redis.js';

const env = (name: string) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is required`);
  return value;
};

interface RawJob {
  kind: 'lamp-state';
  deviceId: string;
  state: { seq?: number; t?: number };
  receivedAt: string;
}

const LAMP_CHANGED = /^\/?devices\/([0-9a-f]{1,12})\/lamp\/changed$/;
const prefix = env('QUEUE_PREFIX');
const redis = await connectRedis(env('REDIS_URL'), { autoPipelining: true });

if (env('ROLE') === 'intake') {
  const queue = new Queue<RawJob>('lamp-states', { connection: redis, prefix, defaultJobOptions: { removeOnComplete: { count: 1000 } } });
  const client = mqtt.connect(env('MQTT_URL'), { clientId: `${prefix}-intake`, clean: true, protocolVersion: 4 });
  client.on('message', (topic, payload) => {
    const match = LAMP_CHANGED.exec(topic.toLowerCase());
    if (!match) return;
    const job: RawJob = {
      kind: 'lamp-state',
      deviceId: match[1]!,
      state: JSON.parse(payload.toString('utf8')) as RawJob['state'],
      receivedAt: new Date().toISOString(),
    };
    queue.add('lamp-state', job).catch((err: unknown) => process.stderr.write(`yardstick-queue: add failed: ${String(err)}\n`));
  });
  client.on('connect', () => {
    client.subscribe(['/devices/+/lamp/changed', 'devices/+/lamp/changed'], { qos: 1 }, (err) => {
      if (err) throw err;
      process.stdout.write('yardstick ready\n');
    });
  });
  process.on('SIGTERM', () => {
    client.end(
      false,
      {},
      () =>
        void queue
          .close()
          .then(() => redis.quit())
          .finally(() => process.exit(0)),
    );
  });
} else {
  const seqs = new SeqLog();
  let completed = 0;
  let firstAt = 0;
  let lastAt = 0;
  const worker = new Worker<RawJob>(
    'lamp-states',
    async (job) => {
      const { seq, t } = job.data.state;
      if (typeof seq === 'number') recordSeq(seqs, seq, typeof t === 'number' ? t : NaN, Date.now());
    },
    { connection: redis, prefix, concurrency: Number(process.env.WORKER_CONCURRENCY ?? 50) },
  );
  worker.on('completed', () => {
    completed += 1;
    lastAt = Date.now();
    if (completed === 1) firstAt = lastAt;
  });
  serveSink(seqs, () => ({ completed, firstAt, lastAt }));
  process.on('SIGTERM', () => {
    void worker
      .close()
      .then(() => redis.quit())
      .finally(() => process.exit(0));
  });
}
