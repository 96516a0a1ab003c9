/**
 * The rejected-messages stage's worker: each rejection record is failed on arrival, with
 * rejectionFailure (rejected-messages.ts) as the failure, so the dashboard's Failed list of
 * `rejected-messages` is the rejection log; BullMQ keeps only the newest of them
 * (JOB_OPTIONS.rejected), so a flood cannot fill Redis. The record itself (topic and payload as
 * the lamp sent them) is made where the message is refused.
 */
import { UnrecoverableError, type ConnectionOptions, type Worker } from 'bullmq';
import type { RejectedMessageJob } from '../../shared/jobs.js';
import type { Logger } from '../../shared/logger.js';
import type { PipelineQueue } from '../../shared/queues.js';
import { runStage } from '../stage-runner.js';
import { rejectionFailure } from './rejected-messages.js';

export function createRejectedMessagesWorker(
  connection: ConnectionOptions,
  queue: PipelineQueue<RejectedMessageJob>,
  logger: Logger,
): Worker<RejectedMessageJob> {
  return runStage({
    queue,
    connection,
    process: async (job) => {
      throw new UnrecoverableError(rejectionFailure(job.data));
    },
    concurrency: 20,
    // Each rejection was logged where it was made; failing its record is the normal path.
    failureLog: 'nobody',
    logger,
  });
}
