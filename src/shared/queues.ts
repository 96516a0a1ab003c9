/**
 * The queues of the pipeline and how jobs live in them:
 *
 *   subscriber ─┬─▶ lamp-states (many per job) ────────────────────┐
 *               ├─▶ bridge-state-0..7 (ordered, many per job) ────┴─▶ registry worker ──▶ keen-delivery ──▶ Keen
 *               │                                                            │                  │
 *               └─▶ rejected-messages ◀──────────────────────────────────────┘                  └──▶ keen-dead-letter
 *
 * A job is a Redis round trip and several scripts wherever it goes, so messages travel in
 * groups: the subscriber puts the lamp states it took in together into one lamp-states job (and the
 * bridge states into one job per partition), and the registry worker sends a job's lamp-state
 * events to Keen itself, passing on what Keen did not take as one keen-delivery job.
 *
 * Bridge states must be handled in the order they arrived, per lamp: a connect and a
 * disconnect handled the other way round would record the wrong state, and only in order is
 * "the same state again" a reliable sign of a replay. Each lamp hashes to one of
 * BRIDGE_PARTITIONS queues, and each of those runs one job at a time across all workers
 * (BullMQ global concurrency); inside a job, each lamp's states are handled in order, lamps in
 * parallel. Lamp states need no order: their queue runs fully parallel.
 */
import { Queue, type ConnectionOptions, type DefaultJobOptions, type QueueOptions } from 'bullmq';
import type { BridgeStatesJob, DeadLetterJob, KeenDeliveryJob, LampStatesJob, RejectedMessageJob } from './jobs.js';
import { JITTERED_BACKOFF } from './backoff.js';
import { DEFAULT_KEEN_ATTEMPTS } from './config.js';

/** The queues' names: what metrics (the `queue` label), log lines, the dashboard and the dlq CLI show. */
export const QUEUE_NAMES = {
  lampStates: 'lamp-states',
  bridgeState: (partition: number) => `bridge-state-${partition}`,
  keen: 'keen-delivery',
  deadLetter: 'keen-dead-letter',
  rejected: 'rejected-messages',
} as const;

/**
 * The name BullMQ gets for a queue (and so its Redis keys): its name as a Redis Cluster hash tag,
 * BullMQ's documented way onto a cluster. Every key of a queue (`<prefix>:{lamp-states}:wait`,
 * `…:{lamp-states}:<job id>`) then hashes to the same slot, as BullMQ's scripts, which touch
 * several of them at once, require, and each queue has a tag of its own, so the queues spread
 * over the cluster's primaries instead of all sitting on one. The tag is in the name rather than
 * the prefix for that reason (one tagged prefix would put every queue in one slot). A single
 * Redis ignores the braces: one naming for both. Every Queue and Worker of a pipeline queue is
 * opened under this name.
 */
export function queueKey(name: string): string {
  return `{${name}}`;
}

/** A queue of the pipeline: BullMQ's queue `queueKey(label)`, which metrics, logs and the dashboard show as `label`. */
export class PipelineQueue<T> extends Queue<T> {
  constructor(
    readonly label: string,
    opts: QueueOptions,
  ) {
    super(queueKey(label), opts);
  }
}

/** A pipeline queue of any job type, for whoever reports on several (BullMQ's Queue takes any job). */
export type AnyPipelineQueue = Queue & Pick<PipelineQueue<unknown>, 'label'>;

/**
 * A constant, not a setting: producers and consumers must agree on it, or a partition would
 * have no worker. Changing it is a migration (drain the bridge-state queues first).
 */
export const BRIDGE_PARTITIONS = 8;

/** FNV-1a over the id: a lamp always lands in the same partition. */
export function bridgePartition(deviceId: string): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < deviceId.length; i++) hash = Math.imul(hash ^ deviceId.charCodeAt(i), 0x01000193);
  return (hash >>> 0) % BRIDGE_PARTITIONS;
}

const DAY_S = 24 * 3600;

export const JOB_OPTIONS = {
  /**
   * A database or broker outage must outlast retries: 30 attempts reach about two hours. Lamp-state
   * jobs are retried by BullMQ (delayed); a bridge-state job keeps its place at the head of its
   * partition and the partition waits (src/worker/stage-runner.ts), with the same attempts and waits.
   */
  ingest: {
    attempts: 30,
    backoff: { type: JITTERED_BACKOFF, delay: 500 },
    removeOnComplete: { age: 3600, count: 1000 },
    removeOnFail: { age: 14 * DAY_S },
  },
  keen: (attempts: number): DefaultJobOptions => ({
    attempts,
    backoff: { type: JITTERED_BACKOFF, delay: 1000 },
    removeOnComplete: { age: 3600, count: 1000 },
    // Failed deliveries are copied to the dead-letter queue; this copy is only for the trail.
    removeOnFail: { age: 7 * DAY_S, count: 10_000 },
  }),
  /**
   * Dead letters wait for an operator, parked in the Failed list (never removed on failure).
   * Retrying one redrives it into keen-delivery and completes it; the completed copy goes at
   * once, so the same event can be dead-lettered again under the same id if it fails again.
   */
  deadLetter: { removeOnComplete: true, removeOnFail: false },
  /**
   * Rejections are failed on arrival (their reason shows as the failure, with no stack trace:
   * it would show our code, not the message) and the newest 10,000 kept.
   */
  rejected: { attempts: 1, stackTraceLimit: 0, removeOnComplete: true, removeOnFail: { age: 7 * DAY_S, count: 10_000 } },
} satisfies Record<string, DefaultJobOptions | ((n: number) => DefaultJobOptions)>;

export interface PipelineQueues {
  /** Lamp states, in groups. */
  lampStates: PipelineQueue<LampStatesJob>;
  /** Bridge states, partitioned by lamp (see bridgePartition). */
  bridgeState: Array<PipelineQueue<BridgeStatesJob>>;
  /** The partition of this lamp's bridge states. */
  bridgeStateQueueFor(deviceId: string): PipelineQueue<BridgeStatesJob>;
  keen: PipelineQueue<KeenDeliveryJob>;
  deadLetter: PipelineQueue<DeadLetterJob>;
  rejected: PipelineQueue<RejectedMessageJob>;
  close(): Promise<void>;
}

export function openQueues(connection: ConnectionOptions, prefix: string, keenAttempts = DEFAULT_KEEN_ATTEMPTS): PipelineQueues {
  const queues = {
    lampStates: new PipelineQueue<LampStatesJob>(QUEUE_NAMES.lampStates, { connection, prefix, defaultJobOptions: JOB_OPTIONS.ingest }),
    bridgeState: Array.from(
      { length: BRIDGE_PARTITIONS },
      (_, partition) =>
        new PipelineQueue<BridgeStatesJob>(QUEUE_NAMES.bridgeState(partition), {
          connection,
          prefix,
          defaultJobOptions: JOB_OPTIONS.ingest,
        }),
    ),
    keen: new PipelineQueue<KeenDeliveryJob>(QUEUE_NAMES.keen, { connection, prefix, defaultJobOptions: JOB_OPTIONS.keen(keenAttempts) }),
    deadLetter: new PipelineQueue<DeadLetterJob>(QUEUE_NAMES.deadLetter, { connection, prefix, defaultJobOptions: JOB_OPTIONS.deadLetter }),
    rejected: new PipelineQueue<RejectedMessageJob>(QUEUE_NAMES.rejected, { connection, prefix, defaultJobOptions: JOB_OPTIONS.rejected }),
  };
  return {
    ...queues,
    bridgeStateQueueFor(deviceId) {
      return queues.bridgeState[bridgePartition(deviceId)]!;
    },
    async close() {
      await Promise.all(allQueues(this).map((queue) => queue.close()));
    },
  };
}

/** All queues of the pipeline, for whoever reports on them. */
export function allQueues(queues: PipelineQueues): AnyPipelineQueue[] {
  return [queues.lampStates, ...queues.bridgeState, queues.keen, queues.deadLetter, queues.rejected];
}
