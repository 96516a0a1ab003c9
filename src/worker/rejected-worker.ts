/**
 * Rejected messages are recorded as jobs and failed on arrival, with the reason as the failure:
 * the dashboard's Failed list of `rejected-messages` is then the rejection log, and BullMQ
 * keeps only the newest of them (JOB_OPTIONS.rejected), so a flood cannot fill Redis.
 */
import { UnrecoverableError, Worker, type ConnectionOptions } from 'bullmq';
import type { RejectedMessageJob } from '../shared/jobs.js';
import { QUEUE_NAMES } from '../shared/queues.js';

export function createRejectedWorker(connection: ConnectionOptions, prefix: string): Worker<RejectedMessageJob> {
  return new Worker<RejectedMessageJob>(
    QUEUE_NAMES.rejected,
    async (job) => {
      throw new UnrecoverableError(`${job.data.reason}: ${job.data.detail}`);
    },
    { connection, prefix, concurrency: 20, maxStalledCount: 10 },
  );
}
