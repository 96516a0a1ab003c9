/**
 * Every Prometheus metric the pipeline exports, in one registry per process. Processes only
 * touch the metrics of their own stage; the rest stay at zero and are cheap.
 */
import type { AnyPipelineQueue } from './queues.js';
import { primaries, type RedisClient } from './redis.js';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export function createMetrics(processName: string) {
  const registry = new Registry();
  registry.setDefaultLabels({ process: processName });
  collectDefaultMetrics({ register: registry });
  const registers = [registry];
  return {
    registry,
    messagesReceived: new Counter({
      name: 'lampi_messages_received_total',
      help: 'MQTT messages received',
      labelNames: ['kind'],
      registers,
    }),
    messagesRejected: new Counter({
      name: 'lampi_messages_rejected_total',
      help: 'Messages refused, by reason',
      labelNames: ['reason'],
      registers,
    }),
    messagesEnqueued: new Counter({
      name: 'lampi_messages_enqueued_total',
      help: 'Messages whose job Redis confirmed',
      labelNames: ['kind'],
      registers,
    }),
    redeliveriesDeduplicated: new Counter({
      name: 'lampi_mqtt_redeliveries_deduplicated_total',
      help: 'Redelivered MQTT messages that matched an existing job',
      registers,
    }),
    jobsCompleted: new Counter({ name: 'lampi_jobs_completed_total', help: 'Jobs completed', labelNames: ['queue'], registers }),
    // Attempts and jobs apart: an outage that every job outlives fails many attempts and no job.
    jobAttemptsFailed: new Counter({
      name: 'lampi_job_attempts_failed_total',
      help: 'Job attempts that failed (retried or not)',
      labelNames: ['queue'],
      registers,
    }),
    jobsFailed: new Counter({ name: 'lampi_jobs_failed_total', help: 'Jobs that failed for good', labelNames: ['queue'], registers }),
    devicesCreated: new Counter({ name: 'lampi_devices_created_total', help: 'Devices created on first bridge connect', registers }),
    bridgeReplaysDropped: new Counter({
      name: 'lampi_bridge_state_replays_dropped_total',
      help: 'Bridge states equal to the last recorded one',
      registers,
    }),
    deadLettered: new Counter({
      name: 'lampi_keen_dead_lettered_total',
      help: 'Keen events moved to the dead-letter queue',
      labelNames: ['collection'],
      registers,
    }),
    keenRequestSeconds: new Histogram({
      name: 'lampi_keen_request_duration_seconds',
      help: 'Keen HTTP request latency',
      labelNames: ['outcome'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    }),
    keenResponses: new Counter({
      name: 'lampi_keen_responses_total',
      help: 'Keen responses by HTTP status (or network error)',
      labelNames: ['status'],
      registers,
    }),
    keenEventsPerRequest: new Histogram({
      name: 'lampi_keen_events_per_request',
      help: 'Events sent in one Keen request',
      buckets: [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000],
      registers,
    }),
    keenDeliveryPaused: new Gauge({
      name: 'lampi_keen_delivery_paused',
      help: '1 while Keen refuses the deployment (reason: unauthorized 401, account_blocked 402, forbidden 403) and delivery waits',
      labelNames: ['reason'],
      registers,
    }),
    keenEvents: new Counter({
      name: 'lampi_keen_events_total',
      help: 'Keen events by outcome',
      labelNames: ['collection', 'outcome'],
      registers,
    }),
    queueDepth: new Gauge({ name: 'lampi_queue_jobs', help: 'Jobs per queue and state', labelNames: ['queue', 'state'], registers }),
    redisMemoryUsedRatio: new Gauge({
      name: 'lampi_redis_memory_used_ratio',
      help: 'Redis used_memory / maxmemory (alert at 0.8: at 1 Redis refuses new jobs); 0 when Redis has no maxmemory',
      registers,
    }),
  };
}

export type Metrics = ReturnType<typeof createMetrics>;

const QUEUE_STATES = ['waiting', 'active', 'delayed', 'failed', 'prioritized'] as const;

/** Sets the queue depth gauges from Redis; called when metrics are scraped. */
export async function refreshQueueDepths(metrics: Metrics, queues: AnyPipelineQueue[]): Promise<void> {
  await Promise.all(
    queues.map(async (queue) => {
      const counts = await queue.getJobCounts(...QUEUE_STATES);
      for (const state of QUEUE_STATES) metrics.queueDepth.set({ queue: queue.label, state }, counts[state] ?? 0);
    }),
  );
}

export type RedisMemory = { ok: true; used: number; max: number } | { ok: false; reason: string };

/** used_memory and maxmemory from the text of `INFO memory`; never throws. */
export function parseRedisMemory(info: string): RedisMemory {
  const field = (name: string) => new RegExp(`^${name}:(\\d+)\\r?$`, 'm').exec(info)?.[1];
  const used = field('used_memory');
  const max = field('maxmemory');
  if (used === undefined || max === undefined) return { ok: false, reason: 'INFO memory has no used_memory or maxmemory' };
  return { ok: true, used: Number(used), max: Number(max) };
}

/**
 * Sets lampi_redis_memory_used_ratio from Redis; called when metrics are scraped, like
 * refreshQueueDepths. On a cluster, the fullest primary's: it refuses writes first.
 */
export async function refreshRedisMemory(metrics: Metrics, redis: RedisClient): Promise<void> {
  const ratios = await Promise.all(
    primaries(redis).map(async (node) => {
      const memory = parseRedisMemory(await node.info('memory'));
      // Without maxmemory there is no limit to be near (and noeviction never applies).
      return memory.ok && memory.max > 0 ? memory.used / memory.max : 0;
    }),
  );
  metrics.redisMemoryUsedRatio.set(Math.max(0, ...ratios));
}
