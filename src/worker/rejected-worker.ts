/**
 * Rejected messages are recorded as jobs and failed on arrival, with the reason as the failure:
 * the dashboard's Failed list of `rejected-messages` is then the rejection log, and BullMQ
 * keeps only the newest of them (JOB_OPTIONS.rejected), so a flood cannot fill Redis. The
 * record itself (topic and payload as the lamp sent them) is made where the message is refused.
 */
import { UnrecoverableError, type ConnectionOptions, type Queue, type Worker } from 'bullmq';
import type { RejectedMessageJob } from '../shared/jobs.js';
import type { Logger } from '../shared/logger.js';
import { runStage } from './stage-runner.js';

export function createRejectedWorker(
  connection: ConnectionOptions,
  queue: Queue<RejectedMessageJob>,
  logger: Logger,
): Worker<RejectedMessageJob> {
  return runStage({
    queue,
    connection,
    process: async (job) => {
      throw new UnrecoverableError(`${job.data.reason}: ${job.data.detail}`);
    },
    concurrency: 20,
    // Each rejection was logged where it was made; failing its record is the normal path.
    failureLog: 'nobody',
    logger,
  });
}
