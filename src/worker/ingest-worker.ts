/**
 * Handles the ingest and bridge-state queues: everything that touches the device registry.
 * What goes to Keen leaves through the keen-delivery queue, so a Keen retry never repeats
 * database work.
 */
import { UnrecoverableError, Worker, type ConnectionOptions, type Job, type Queue } from 'bullmq';
import { activationEvent, deviceMonitoringEvent, deviceStateEvent, uniquenessToken, type KeenCollection, type KeenEvent } from '../shared/events.js';
import type { IngestJob, RejectedMessageJob } from '../shared/jobs.js';
import type { Logger } from '../shared/logger.js';
import type { Metrics } from '../shared/metrics.js';
import { jitteredBackoff, type PipelineQueues } from '../shared/queues.js';
import type { AssociationPublisher } from './association-publisher.js';
import type { DeviceRegistry } from './registry/registry.js';

export interface IngestWorkerOptions {
  connection: ConnectionOptions;
  prefix: string;
  queues: PipelineQueues;
  registry: DeviceRegistry;
  publisher: AssociationPublisher;
  defaultUser: string;
  concurrency: number;
  logger: Logger;
  metrics: Metrics;
  /**
   * A lamp state or a disconnect can overtake its lamp's first bridge connect in the queues.
   * Until this many attempts have found no device, the job waits and tries again; then it is
   * rejected.
   */
  unknownDeviceAttempts?: number;
}

class DeviceNotRegisteredYet extends Error {
  override name = 'DeviceNotRegisteredYet';
}

export async function createIngestWorkers(options: IngestWorkerOptions): Promise<Array<Worker<IngestJob>>> {
  const { queues, registry, publisher, logger, metrics } = options;
  const unknownDeviceAttempts = options.unknownDeviceAttempts ?? 6;

  const sendToKeen = async (job: Job<IngestJob>, collection: KeenCollection, build: (token: string) => KeenEvent) => {
    const token = uniquenessToken(job.id!, collection);
    // The token is the job id too: adding it again after a retry is a no-op.
    await queues.keen.add(collection, { collection, event: build(token) }, { jobId: token });
  };

  const reject = async (job: Job<IngestJob>, reason: 'unknown_device', detail: string) => {
    metrics.messagesRejected.inc({ reason });
    logger.warn({ job_id: job.id, device_id: job.data.deviceId, reason }, `message rejected: ${detail}`);
    const record: RejectedMessageJob = {
      topic: job.data.kind === 'lamp-state' ? `devices/${job.data.deviceId}/lamp/changed` : `$SYS/broker/connection/${job.data.deviceId}_broker/state`,
      reason,
      detail,
      deviceId: job.data.deviceId,
      payloadBytes: 0,
      payloadHead: Buffer.from(JSON.stringify(job.data)).toString('base64'),
      receivedAt: job.data.receivedAt,
    };
    await queues.rejected.add(reason, record, { jobId: `${job.id}-rejected` });
  };

  const process = async (job: Job<IngestJob>) => {
    const data = job.data;
    const log = logger.child({ job_id: job.id, device_id: data.deviceId });
    if (data.kind === 'lamp-state') {
      if (!(await registry.isKnown(data.deviceId))) {
        if (job.attemptsMade + 1 < unknownDeviceAttempts) throw new DeviceNotRegisteredYet(`device ${data.deviceId} is not registered (yet)`);
        return reject(job, 'unknown_device', 'lamp state from a device that never connected its bridge');
      }
      await sendToKeen(job, 'devicestate', (token) => deviceStateEvent(data.deviceId, data.state, data.receivedAt, token));
      return;
    }

    if (data.connected) {
      const activation = await registry.activate(data.deviceId, job.id!);
      if (activation.created) {
        metrics.devicesCreated.inc();
        await publisher.publishUnassociated(data.deviceId, activation.associationCode);
        await sendToKeen(job, 'activations', (token) => activationEvent(data.deviceId, options.defaultUser, data.receivedAt, token));
        log.info('new device activated');
      }
    }
    const outcome = await registry.recordBridgeState(data.deviceId, data.connected, new Date(data.receivedAt), job.id!);
    if (outcome === 'unknown_device') {
      // A disconnect can overtake the connect that registers its lamp, as a lamp state can.
      if (job.attemptsMade + 1 < unknownDeviceAttempts) throw new DeviceNotRegisteredYet(`device ${data.deviceId} is not registered (yet)`);
      return reject(job, 'unknown_device', 'bridge disconnect from a device that never connected');
    }
    if (outcome === 'unchanged') {
      metrics.bridgeReplaysDropped.inc();
      log.debug({ connected: data.connected, retained: data.retained }, 'bridge state unchanged; not recorded again');
      return;
    }
    await sendToKeen(job, 'devicemonitoring', (token) => deviceMonitoringEvent(data.deviceId, data.connected, data.receivedAt, token));
  };

  const settings = {
    backoffStrategy: (...args: Parameters<typeof jitteredBackoff>) => {
      const [attemptsMade, , err] = args;
      // An early lamp state waits a little for its activation; outages back off further.
      return err instanceof DeviceNotRegisteredYet ? Math.min(500 * 2 ** attemptsMade, 10_000) : jitteredBackoff(...args);
    },
  };
  const start = (queue: Queue<IngestJob>, concurrency: number) => {
    const worker = new Worker<IngestJob>(queue.name, process, {
      connection: options.connection,
      prefix: options.prefix,
      concurrency,
      // A worker killed mid-job must not turn its jobs into failures: they are simply redone.
      maxStalledCount: 10,
      settings,
    });
    worker.on('completed', () => metrics.jobsCompleted.inc({ queue: queue.name }));
    worker.on('failed', (job, err) => {
      metrics.jobsFailed.inc({ queue: queue.name });
      const final = job && (err instanceof UnrecoverableError || job.attemptsMade >= (job.opts.attempts ?? 1));
      const level = err instanceof DeviceNotRegisteredYet ? 'debug' : final ? 'error' : 'warn';
      logger[level]({ job_id: job?.id, device_id: job?.data.deviceId, queue: queue.name, attempts: job?.attemptsMade, err: err.message }, final ? 'ingest job failed for good' : 'ingest job failed; will retry');
    });
    worker.on('error', (err) => logger.error({ err: err.message, queue: queue.name }, 'ingest worker error'));
    return worker;
  };
  // One bridge state at a time per partition, across every worker process.
  await Promise.all(queues.bridgeState.map((queue) => queue.setGlobalConcurrency(1)));
  return [start(queues.ingest, options.concurrency), ...queues.bridgeState.map((queue) => start(queue, 1))];
}
