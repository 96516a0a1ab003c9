/** Our two processes, started as a user starts them, wired to the test's services. */
import type { ServiceUrls } from './services.js';
import { startService, waitForLog, type ManagedProcess } from './processes.js';

export interface PipelineOptions {
  services: ServiceUrls;
  prefix: string;
  databaseUrl: string;
  keen: { url: string; projectId: string; writeKey: string };
  subscriberConnections?: number;
  workerEnv?: Record<string, string>;
  subscriberEnv?: Record<string, string>;
  /** How long each process may take to say it is ready (a loaded machine starts tsx slowly). */
  readyTimeoutMs?: number;
  /** Where both processes find Redis instead of services.redis, e.g. `{ REDIS_CLUSTER_NODES }`. */
  redisEnv?: Record<string, string>;
}

export interface Pipeline {
  subscriber: ManagedProcess;
  worker: ManagedProcess;
  /** The last lines both processes printed, for a failing test's report. */
  logs(lines?: number): string;
  kill(): Promise<void>;
}

export async function startPipeline(options: PipelineOptions): Promise<Pipeline> {
  const { services, prefix } = options;
  const common = {
    REDIS_URL: services.redis,
    QUEUE_PREFIX: prefix,
    MQTT_URL: services.mqtt,
    MQTT_CLIENT_ID: prefix,
    METRICS_PORT: '0',
    ...options.redisEnv,
  };
  const worker = startService('worker', {
    ...common,
    DATABASE_URL: options.databaseUrl,
    KEEN_API_URL: options.keen.url,
    KEEN_PROJECT_ID: options.keen.projectId,
    KEEN_WRITE_KEY: options.keen.writeKey,
    KEEN_TIMEOUT_MS: '2000',
    ...options.workerEnv,
  });
  const subscriber = startService('subscriber', {
    ...common,
    MQTT_SHARE_GROUP: prefix,
    SUBSCRIBER_CONNECTIONS: String(options.subscriberConnections ?? 2),
    ...options.subscriberEnv,
  });
  const pipeline: Pipeline = {
    subscriber,
    worker,
    logs: (lines = 80) => [subscriber, worker].map((proc) => proc.output().split('\n').slice(-lines).join('\n')).join('\n'),
    async kill() {
      await Promise.all([subscriber.kill('SIGKILL'), worker.kill('SIGKILL')]);
    },
  };
  try {
    await Promise.all([
      waitForLog(worker, 'worker ready', options.readyTimeoutMs),
      waitForLog(subscriber, 'subscriber ready', options.readyTimeoutMs),
    ]);
  } catch (err) {
    await pipeline.kill();
    // What the processes said is the only clue to why one did not start.
    throw new Error(`${err instanceof Error ? err.message : String(err)}\n${pipeline.logs(20)}`, { cause: err });
  }
  return pipeline;
}
