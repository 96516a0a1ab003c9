/**
 * The dead-letter queue without a browser:
 *
 *   npm run dlq -- list
 *   npm run dlq -- redrive --all | <job id>...
 *   npm run dlq -- purge --older-than <duration: 30s, 30m, 12h, 7d, 2w>
 *
 * `redrive` retries parked dead letters exactly as Bull Board's Retry button does; the
 * dead-letter worker in every `npm run worker` process then puts each event back into
 * keen-delivery under its uniqueness token. One path for both, run with the worker's own
 * settings. When a worker is running the command waits (up to `--wait`, default 10s) and says
 * which events are back in keen-delivery; without one it says they are queued for redrive.
 *
 * Exit codes: 0 done; 1 bad arguments, no Redis, or a redrive that failed; 2 some named ids
 * are not parked dead letters (not found, or not parked yet).
 *
 * Settings: REDIS_URL and QUEUE_PREFIX.
 */
import type { Job } from 'bullmq';
import { ConfigError, loadConfig } from '../shared/config.js';
import { deviceIdOf, type DeadLetterJob } from '../shared/jobs.js';
import { connectRedis, openQueues, QUEUE_NAMES, StartupError, type PipelineQueues } from '../shared/queues.js';
import { deadLetterReason } from '../worker/dead-letter-worker.js';

const USAGE = 'usage: npm run dlq -- list | redrive [--wait <duration>] (--all | <job id>...) | purge --older-than <duration, e.g. 7d, 12h, 30m>';

class UsageError extends Error {}

const UNITS_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 };

/** `7d`, `12h`, `30m`, `45s`, `2w`, `500ms`. */
export function parseDuration(text: string): number {
  const match = /^(\d+)(ms|s|m|h|d|w)$/.exec(text.trim());
  if (!match) throw new UsageError(`not a duration: ${JSON.stringify(text)} (use a number and one of ms, s, m, h, d, w: 7d, 12h, 30m)`);
  return Number(match[1]) * UNITS_MS[match[2]!]!;
}

const out = (line: string) => process.stdout.write(`${line}\n`);
const err = (line: string) => process.stderr.write(`${line}\n`);
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const oneLine = (text: string, max = 200) => {
  const flat = text.replace(/\s+/g, ' ').trim();
  return flat.length > max ? `${flat.slice(0, max - 1)}…` : flat;
};

const PAGE = 500;

async function* jobsIn(queue: PipelineQueues['deadLetter'], states: Array<'failed' | 'waiting' | 'active' | 'delayed' | 'prioritized' | 'paused'>) {
  for (let start = 0; ; start += PAGE) {
    const page = await queue.getJobs(states, start, start + PAGE - 1, true);
    for (const job of page) if (job) yield job;
    if (page.length < PAGE) return;
  }
}

async function list(queues: PipelineQueues): Promise<number> {
  const rows: string[][] = [];
  const counts = { parked: 0, new: 0, redriving: 0 };
  for (const state of ['failed', 'waiting', 'active', 'delayed', 'prioritized', 'paused'] as const) {
    for await (const job of jobsIn(queues.deadLetter, [state])) {
      const data = job.data;
      let shown: string;
      let error = deadLetterReason(data);
      if (state === 'failed') {
        shown = 'parked';
        if (job.failedReason && job.failedReason !== error) error = `${error} (last redrive failed: ${job.failedReason})`;
      } else {
        shown = job.attemptsMade > 0 ? 'redriving' : 'new';
      }
      counts[shown as keyof typeof counts] += 1;
      rows.push([job.id ?? '?', shown, data.collection ?? '?', deviceIdOf(data) ?? '-', String(data.attemptsMade ?? '?'), data.failedAt ?? '-', oneLine(error)]);
    }
  }
  const where = `${queues.deadLetter.opts.prefix}:${QUEUE_NAMES.deadLetter}`;
  if (rows.length === 0) {
    out(`no dead letters in ${where}`);
    return 0;
  }
  const header = ['ID', 'STATE', 'COLLECTION', 'DEVICE_ID', 'ATTEMPTS', 'FAILED_AT', 'LAST_ERROR'];
  const widths = header.map((h, i) => (i === header.length - 1 ? 0 : Math.max(h.length, ...rows.map((r) => r[i]!.length))));
  for (const row of [header, ...rows]) out(row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i]!))).join('  '));
  const notes = [
    counts.new > 0 ? `, ${counts.new} new (a dead-letter worker parks them when one runs)` : '',
    counts.redriving > 0 ? `, ${counts.redriving} being redriven` : '',
  ].join('');
  out(`${rows.length} dead letter${rows.length === 1 ? '' : 's'} in ${where}: ${counts.parked} parked${notes}`);
  return 0;
}

type Command =
  | { name: 'help' }
  | { name: 'list' }
  | { name: 'redrive'; all: boolean; ids: string[]; waitMs: number }
  | { name: 'purge'; olderThan: string; graceMs: number };

/** Checks every argument before Redis is reached, so a typo fails fast. */
function parseArgs(argv: string[]): Command {
  const [name, ...args] = argv;
  if (name === undefined) throw new UsageError('no command given');
  if (name === '-h' || name === '--help' || name === 'help') return { name: 'help' };
  if (name === 'list') {
    if (args.length > 0) throw new UsageError('list takes no arguments');
    return { name };
  }
  if (name === 'redrive') {
    let all = false;
    let waitMs = 10_000;
    const ids: string[] = [];
    for (let i = 0; i < args.length; i += 1) {
      const arg = args[i]!;
      if (arg === '--all') all = true;
      else if (arg === '--wait') waitMs = parseDuration(args[++i] ?? '');
      else if (arg.startsWith('--wait=')) waitMs = parseDuration(arg.slice('--wait='.length));
      else if (arg.startsWith('-')) throw new UsageError(`unknown option ${arg}`);
      else ids.push(arg);
    }
    if (all === ids.length > 0) throw new UsageError('redrive needs --all or one or more job ids (not both)');
    return { name, all, ids: [...new Set(ids)], waitMs };
  }
  if (name === 'purge') {
    let olderThan: string | undefined;
    for (let i = 0; i < args.length; i += 1) {
      const arg = args[i]!;
      if (arg === '--older-than') olderThan = args[++i];
      else if (arg.startsWith('--older-than=')) olderThan = arg.slice('--older-than='.length);
      else throw new UsageError(`unexpected argument ${arg}`);
    }
    if (olderThan === undefined) throw new UsageError('purge needs --older-than <duration>');
    return { name, olderThan, graceMs: parseDuration(olderThan) };
  }
  throw new UsageError(`unknown command ${JSON.stringify(name)}`);
}

async function redrive(queues: PipelineQueues, { all, ids, waitMs }: { all: boolean; ids: string[]; waitMs: number }): Promise<number> {
  const targets: Job<DeadLetterJob>[] = [];
  let missing = 0;
  if (all) {
    for await (const job of jobsIn(queues.deadLetter, ['failed'])) targets.push(job);
    if (targets.length === 0) {
      out('no parked dead letters to redrive');
      return 0;
    }
  } else {
    for (const id of ids) {
      const job = await queues.deadLetter.getJob(id);
      const state = job ? await job.getState() : 'missing';
      if (job && state === 'failed') targets.push(job);
      else {
        missing += 1;
        err(job ? `${id}: not a parked dead letter (it is ${state}); only parked ones can be redriven` : `${id}: not found in ${QUEUE_NAMES.deadLetter}`);
      }
    }
  }

  const retried: Job<DeadLetterJob>[] = [];
  let failed = 0;
  for (const job of targets) {
    try {
      // Keeps attemptsMade: the dead-letter worker tells an operator's retry from a first run by it.
      await job.retry('failed');
      retried.push(job);
    } catch (e) {
      failed += 1;
      err(`${job.id}: could not retry: ${(e as Error).message}`);
    }
  }

  const workers = retried.length > 0 ? await queues.deadLetter.getWorkersCount() : 0;
  const pending = new Map(retried.map((job) => [job.id!, job]));
  let redriven = 0;
  if (workers > 0) {
    const deadline = Date.now() + waitMs;
    for (;;) {
      for (const [id, job] of pending) {
        const now = await queues.deadLetter.getJob(id);
        const state = now ? await now.getState() : 'removed';
        if (state === 'removed' || state === 'completed') {
          const token = job.data.event?.keen?.uniqueness_token ?? id;
          const delivery = await queues.keen.getJob(token);
          out(`redriven: ${id} -> ${QUEUE_NAMES.keen} job ${token}${delivery ? ` (${await delivery.getState()})` : ''}`);
          redriven += 1;
          pending.delete(id);
        } else if (state === 'failed' && now!.attemptsMade > job.attemptsMade) {
          err(`${id}: redrive failed: ${now!.failedReason}`);
          failed += 1;
          pending.delete(id);
        }
      }
      if (pending.size === 0 || Date.now() >= deadline) break;
      await sleep(100);
    }
  }
  for (const id of pending.keys()) out(`queued for redrive: ${id}`);
  if (pending.size > 0) {
    out(
      workers > 0
        ? `${pending.size} not redriven within ${waitMs} ms; the dead-letter worker will get to them (see \`npm run dlq -- list\`)`
        : `no worker is consuming ${QUEUE_NAMES.deadLetter} now: the redrive happens when one runs (npm run worker)`,
    );
  }
  out(`redrive: ${redriven} redriven, ${pending.size} queued, ${failed} failed, ${missing} not found`);
  return failed > 0 ? 1 : missing > 0 ? 2 : 0;
}

async function purge(queues: PipelineQueues, { olderThan, graceMs }: { olderThan: string; graceMs: number }): Promise<number> {
  // Parked dead letters count from when they were parked, ones no worker has parked yet from
  // when they were dead-lettered; completed ones are redrive records (kept only by older settings).
  const parked = await queues.deadLetter.clean(graceMs, 0, 'failed');
  const unparked = await queues.deadLetter.clean(graceMs, 0, 'wait');
  const done = await queues.deadLetter.clean(graceMs, 0, 'completed');
  const total = parked.length + unparked.length + done.length;
  out(`purged ${total} dead letter${total === 1 ? '' : 's'} older than ${olderThan} (${parked.length} parked, ${unparked.length} not parked yet, ${done.length} already redriven)`);
  return 0;
}

async function main(argv: string[]): Promise<number> {
  const command = parseArgs(argv);
  if (command.name === 'help') {
    out(USAGE);
    return 0;
  }
  const config = loadConfig(['common']);
  const redis = await connectRedis(config.REDIS_URL, { connectTimeoutMs: 5000 });
  const queues = openQueues(redis, config.QUEUE_PREFIX);
  try {
    if (command.name === 'list') return await list(queues);
    if (command.name === 'redrive') return await redrive(queues, command);
    return await purge(queues, command);
  } finally {
    await queues.close();
    redis.disconnect();
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e: unknown) => {
    if (e instanceof UsageError) {
      err(`dlq: ${e.message}`);
      err(USAGE);
    } else if (e instanceof ConfigError || e instanceof StartupError) {
      err(`dlq: ${e.message}`);
    } else {
      err(`dlq: ${(e as Error).stack ?? String(e)}`);
    }
    process.exit(1);
  },
);
