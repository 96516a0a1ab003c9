/**
 * Rejected messages are recorded as jobs and failed on arrival, with the reason as the failure:
 * the dashboard's Failed list of `rejected-messages` is then the rejection log, and BullMQ
 * keeps only the newest of them (JOB_OPTIONS.rejected), so a flood cannot fill Redis. The
 * record itself (topic and payload as the lamp sent them) is made where the message is refused.
 */
import { UnrecoverableError, Worker, type ConnectionOptions } from 'bullmq';
import type { RejectedMessageJob } from '../shared/jobs.js';
import { isConnectionError } from '../shared/dependency-watch.js';
import type { Logger } from '../shared/logger.js';
import { QUEUE_NAMES } from '../shared/queues.js';

export function createRejectedWorker(connection: ConnectionOptions, prefix: string, logger: Logger): Worker<RejectedMessageJob> {
  const worker = new Worker<RejectedMessageJob>(
    QUEUE_NAMES.rejected,
    async (job) => {
      throw new UnrecoverableError(`${job.data.reason}: ${job.data.detail}`);
    },
    { connection, prefix, concurrency: 20, maxStalledCount: 10 },
  );
  // Without a listener, BullMQ's 'error' (a Redis connection closed under it) ends the process.
  // A connection error is the outage the process's DependencyWatch reports, once.
  worker.on('error', (err) => isConnectionError(err) || logger.error({ err: err.message }, 'rejection log worker error'));
  return worker;
}
