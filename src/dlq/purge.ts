/**
 * `npm run dlq -- purge`: deletes dead letters older than an age, for good, and only with
 * safeguards: it first lists every dead letter it would delete, `--dry-run` stops there, and
 * otherwise it asks on a terminal (`--yes` answers for scripts; without a terminal and without
 * `--yes` it refuses). It deletes exactly the listed ones (a dead letter redriven or replaced
 * since is left alone) and writes one JSON audit line naming every id it deleted.
 */
import { hostname, userInfo } from 'node:os';
import { createInterface } from 'node:readline/promises';
import type { Job } from 'bullmq';
import type { DeadLetterJob } from '../shared/jobs.js';
import type { Logger } from '../shared/logger.js';
import { QUEUE_NAMES, type PipelineQueues } from '../shared/queues.js';
import { err, jobsIn, out, printTable, rowOf, type DeadLetterState } from './listing.js';

export interface PurgeOptions {
  /** As the operator wrote it (`7d`), for the messages. */
  olderThan: string;
  graceMs: number;
  dryRun: boolean;
  yes: boolean;
}

/** Parked ones count from when they were parked, unparked ones from when they were dead-lettered. */
const PURGEABLE: DeadLetterState[] = ['failed', 'waiting', 'completed'];

async function confirm(question: string): Promise<boolean> {
  const rl = createInterface({ input: process.stdin, output: process.stdout });
  try {
    const answer = await rl.question(question);
    return /^(y|yes)$/i.test(answer.trim());
  } finally {
    rl.close();
  }
}

function who(): string {
  try {
    return userInfo().username;
  } catch {
    return 'unknown';
  }
}

/** Exit code: 0 done (or nothing to do, or a dry run); 1 refused or not confirmed. */
export async function purge(queues: PipelineQueues, options: PurgeOptions, audit: Logger): Promise<number> {
  const cutoff = Date.now() - options.graceMs;
  const candidates: Array<{ job: Job<DeadLetterJob>; state: DeadLetterState }> = [];
  for (const state of PURGEABLE) {
    for await (const job of jobsIn(queues.deadLetter, [state])) {
      const since = state === 'waiting' ? job.timestamp : (job.finishedOn ?? job.timestamp);
      if (since <= cutoff) candidates.push({ job, state });
    }
  }
  const where = `${queues.deadLetter.opts.prefix}:${QUEUE_NAMES.deadLetter}`;
  if (candidates.length === 0) {
    out(`no dead letters older than ${options.olderThan} in ${where}: nothing to purge`);
    return 0;
  }
  const n = candidates.length;
  const plural = n === 1 ? 'dead letter' : 'dead letters';
  printTable(candidates.map(({ job, state }) => rowOf(job, state)));
  if (options.dryRun) {
    out(`dry run: would delete these ${n} ${plural} older than ${options.olderThan} from ${where}; nothing was deleted`);
    return 0;
  }
  if (!options.yes) {
    if (!process.stdin.isTTY) {
      err(
        `dlq: refusing to purge ${n} ${plural} without confirmation: stdin is not a terminal. Add --yes to delete them, or --dry-run to only list them`,
      );
      return 1;
    }
    if (!(await confirm(`delete these ${n} ${plural} for good? Their events will never reach Keen. [y/N] `))) {
      out('nothing deleted');
      return 1;
    }
  }

  const deleted: string[] = [];
  const skipped: string[] = [];
  for (const { job, state } of candidates) {
    const id = job.id!;
    // The one listed, still where it was: not redriven, nor replaced by a newer dead letter.
    const now = await queues.deadLetter.getJob(id);
    const stillThere = now !== undefined && now.timestamp === job.timestamp && (await now.getState()) === state;
    const removed =
      stillThere &&
      (await now.remove().then(
        () => true,
        () => false,
      ));
    (removed ? deleted : skipped).push(id);
  }
  audit.info(
    {
      audit: 'dlq-purge',
      queue: where,
      older_than: options.olderThan,
      deleted_count: deleted.length,
      deleted,
      skipped,
      user: who(),
      host: hostname(),
    },
    'dead letters purged',
  );
  const left = skipped.length > 0 ? `; ${skipped.length} left alone (redriven or changed since listed: ${skipped.join(', ')})` : '';
  out(`purged ${deleted.length} ${deleted.length === 1 ? 'dead letter' : 'dead letters'} older than ${options.olderThan}${left}`);
  return 0;
}
