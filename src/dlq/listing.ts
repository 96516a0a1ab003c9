/**
 * Reading the dead-letter queue for the `npm run dlq` commands, and printing what was read:
 * every dead letter in a state, page by page, and one table row per dead letter. Reads only.
 */
import type { Job } from 'bullmq';
import { deadLetterReason, deviceIdOf, type DeadLetterJob } from '../shared/jobs.js';
import type { PipelineQueues } from '../shared/queues.js';

export const out = (line: string) => process.stdout.write(`${line}\n`);
export const err = (line: string) => process.stderr.write(`${line}\n`);

export const oneLine = (text: string, max = 200) => {
  const flat = text.replace(/\s+/g, ' ').trim();
  return flat.length > max ? `${flat.slice(0, max - 1)}…` : flat;
};

export type DeadLetterState = 'failed' | 'waiting' | 'active' | 'delayed' | 'prioritized' | 'paused' | 'completed';

const PAGE = 500;

export async function* jobsIn(queue: PipelineQueues['deadLetter'], states: DeadLetterState[]): AsyncGenerator<Job<DeadLetterJob>> {
  for (let start = 0; ; start += PAGE) {
    const page = await queue.getJobs(states, start, start + PAGE - 1, true);
    for (const job of page) if (job) yield job;
    if (page.length < PAGE) return;
  }
}

/** What `list` calls a dead letter in a BullMQ state. */
export function shownState(job: Job<DeadLetterJob>, state: DeadLetterState): 'parked' | 'new' | 'redriving' | 'redriven' {
  if (state === 'failed') return 'parked';
  if (state === 'completed') return 'redriven';
  return job.attemptsMade > 0 ? 'redriving' : 'new';
}

/**
 * The last redrive of a dead letter: a parked one that was redriven and is back was refused
 * again (its LAST_ERROR says why); one whose failure is not Keen's error failed to redrive.
 */
export function lastRedrive(job: Job<DeadLetterJob>, state: DeadLetterState): string {
  const history = job.data.redrives;
  if (state === 'failed' && job.failedReason && job.failedReason !== deadLetterReason(job.data)) {
    const at = job.finishedOn ? `${new Date(job.finishedOn).toISOString()} ` : '';
    return `${at}redrive failed: ${oneLine(job.failedReason, 120)}`;
  }
  if (shownState(job, state) === 'redriving') return 'in progress';
  return history ? `${history.lastAt} refused again` : '-';
}

export const HEADER = ['ID', 'STATE', 'COLLECTION', 'DEVICE_ID', 'ATTEMPTS', 'FAILED_AT', 'REDRIVES', 'LAST_REDRIVE', 'LAST_ERROR'];

export function rowOf(job: Job<DeadLetterJob>, state: DeadLetterState): string[] {
  const data = job.data;
  return [
    job.id ?? '?',
    shownState(job, state),
    data.collection ?? '?',
    deviceIdOf(data) ?? '-',
    String(data.attemptsMade ?? '?'),
    data.failedAt ?? '-',
    String(data.redrives?.count ?? 0),
    lastRedrive(job, state),
    oneLine(deadLetterReason(data)),
  ];
}

/** Columns padded to their widest cell; the last one (the error) runs free. */
export function printTable(rows: string[][]): void {
  const widths = HEADER.map((h, i) => (i === HEADER.length - 1 ? 0 : Math.max(h.length, ...rows.map((r) => r[i]!.length))));
  for (const row of [HEADER, ...rows]) out(row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i]!))).join('  '));
}
