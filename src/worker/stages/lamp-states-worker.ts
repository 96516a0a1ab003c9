/**
 * The lamp-states stage's worker (the lamp-states queue): the I/O around planLampStates
 * (lamp-states.ts). It asks the registry which lamps it knows (only with
 * UNKNOWN_DEVICE_STATES=reject), then applies the plan: the waiting states queued apart, the
 * rejections recorded, the events sent to Keen. Retries are the stage runner's.
 */
import type { Job, Worker } from 'bullmq';
import { parseLampStatesJob, type LampStatesJob } from '../../shared/jobs.js';
import { runStage } from '../stage-runner.js';
import { ingestEffects, lampsSubject, type IngestWorkerOptions } from './ingest-effects.js';
import { DEFAULT_UNKNOWN_DEVICE_ATTEMPTS, lampsToLookUp, planLampStates } from './lamp-states.js';

export function createLampStatesWorker(options: IngestWorkerOptions): Worker<LampStatesJob> {
  const { queues, registry, logger } = options;
  const effects = ingestEffects(options);
  const mode = options.unknownDeviceStates ?? 'record';

  const process = async (job: Job<LampStatesJob>) => {
    const lookUp = lampsToLookUp(job.data, mode);
    const known = mode === 'reject' ? await registry.knownAmong(lookUp) : undefined;
    const plan = planLampStates({
      jobId: job.id!,
      data: job.data,
      known,
      unknownDeviceAttempts: options.unknownDeviceAttempts ?? DEFAULT_UNKNOWN_DEVICE_ATTEMPTS,
      random: Math.random,
    });
    if (plan.duplicates > 0)
      logger.debug({ job_id: job.id, duplicates: plan.duplicates }, 'lamp states repeated in their job; handled once');
    if (plan.wait) await queues.lampStates.add('lamp-states', plan.wait.data, { jobId: plan.wait.jobId, delay: plan.wait.delayMs });
    for (const rejection of plan.rejections) await effects.reject(rejection);
    await effects.queueForKeen(job.id!, await effects.undeliveredOf(plan.events));
  };

  return runStage({
    connection: options.connection,
    logger,
    metrics: options.metrics,
    queue: queues.lampStates,
    process,
    parse: parseLampStatesJob,
    subject: lampsSubject,
    concurrency: options.concurrency,
  });
}
