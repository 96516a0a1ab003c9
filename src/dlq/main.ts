/**
 * The dead-letter queue without a browser:
 *
 *   npm run dlq -- list
 *   npm run dlq -- redrive [--wait <duration>] (--all | <job id>...)
 *   npm run dlq -- purge --older-than <duration: 30s, 30m, 12h, 7d, 2w> [--dry-run] [--yes]
 *
 * `list` shows every dead letter with its redrive history. `redrive` retries parked dead
 * letters exactly as Bull Board's Retry button does (the dead-letter worker in every
 * `npm run worker` puts each event back into keen-delivery under its uniqueness token), then
 * waits up to `--wait` (default 30s) for each event's outcome and prints it: delivered, refused
 * again (and why), redrive failed, or still queued (and where). `purge` lists what it would
 * delete, then asks (see purge.ts).
 *
 * Exit codes: 0 done; 1 bad arguments, no Redis, an event refused again or not redriven, or a
 * purge refused; 2 some named ids are not parked dead letters; 3 some redrives had no outcome
 * within --wait.
 *
 * Settings: REDIS_URL (or REDIS_CLUSTER_NODES and REDIS_PASSWORD) and QUEUE_PREFIX.
 */
import { pino } from 'pino';
import { loadConfig } from '../shared/config.js';
import { createLogger, redactUrl } from '../shared/logger.js';
import { openQueues, QUEUE_NAMES, type PipelineQueues } from '../shared/queues.js';
import { err, jobsIn, out, printTable, rowOf, shownState } from './listing.js';
import { purge } from './purge.js';
import { redrive } from './redrive.js';
import { ConfigError, StartupError, UsageError } from '../shared/errors.js';
import { connectRedis } from '../shared/redis.js';

const USAGE =
  'usage: npm run dlq -- list | redrive [--wait <duration>] (--all | <job id>...) | purge --older-than <duration, e.g. 7d, 12h, 30m> [--dry-run] [--yes]';

const UNITS_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 };

/** `7d`, `12h`, `30m`, `45s`, `2w`, `500ms`. */
export function parseDuration(text: string): number {
  const match = /^(\d+)(ms|s|m|h|d|w)$/.exec(text.trim());
  if (!match) throw new UsageError(`not a duration: ${JSON.stringify(text)} (use a number and one of ms, s, m, h, d, w: 7d, 12h, 30m)`);
  return Number(match[1]) * UNITS_MS[match[2]!]!;
}

async function list(queues: PipelineQueues): Promise<number> {
  const rows: string[][] = [];
  const counts = { parked: 0, new: 0, redriving: 0, redriven: 0, everRedriven: 0 };
  for (const state of ['failed', 'waiting', 'active', 'delayed', 'prioritized', 'paused'] as const) {
    for await (const job of jobsIn(queues.deadLetter, [state])) {
      counts[shownState(job, state)] += 1;
      if ((job.data.redrives?.count ?? 0) > 0) counts.everRedriven += 1;
      rows.push(rowOf(job, state));
    }
  }
  const where = `${queues.deadLetter.opts.prefix}:${QUEUE_NAMES.deadLetter}`;
  if (rows.length === 0) {
    out(`no dead letters in ${where}`);
    return 0;
  }
  printTable(rows);
  const notes = [
    counts.new > 0 ? `, ${counts.new} new (a dead-letter worker parks them when one runs)` : '',
    counts.redriving > 0 ? `, ${counts.redriving} being redriven` : '',
    counts.everRedriven > 0 ? `; ${counts.everRedriven} refused again after a redrive` : '',
  ].join('');
  out(`${rows.length} dead letter${rows.length === 1 ? '' : 's'} in ${where}: ${counts.parked} parked${notes}`);
  return 0;
}

type Command =
  | { name: 'help' }
  | { name: 'list' }
  | { name: 'redrive'; all: boolean; ids: string[]; waitMs: number }
  | { name: 'purge'; olderThan: string; graceMs: number; dryRun: boolean; yes: boolean };

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
    let waitMs = 30_000;
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
    let dryRun = false;
    let yes = false;
    for (let i = 0; i < args.length; i += 1) {
      const arg = args[i]!;
      if (arg === '--older-than') olderThan = args[++i];
      else if (arg.startsWith('--older-than=')) olderThan = arg.slice('--older-than='.length);
      else if (arg === '--dry-run') dryRun = true;
      else if (arg === '--yes' || arg === '-y') yes = true;
      else throw new UsageError(`unexpected argument ${arg}`);
    }
    if (olderThan === undefined) throw new UsageError('purge needs --older-than <duration>');
    const graceMs = parseDuration(olderThan);
    if (graceMs === 0)
      throw new UsageError(
        `--older-than ${olderThan} would purge every dead letter, even one dead-lettered a moment ago: give an age above zero`,
      );
    return { name, olderThan, graceMs, dryRun, yes };
  }
  throw new UsageError(`unknown command ${JSON.stringify(name)}`);
}

async function main(argv: string[]): Promise<number> {
  const command = parseArgs(argv);
  if (command.name === 'help') {
    out(USAGE);
    return 0;
  }
  const config = loadConfig(['common']);
  const redis = await connectRedis(config, { connectTimeoutMs: 5000 });
  const queues = openQueues(redis, config.QUEUE_PREFIX);
  try {
    if (command.name === 'list') return await list(queues);
    if (command.name === 'redrive') return await redrive(queues, command);
    // The audit line is written whatever LOG_LEVEL says, to stderr: stdout is the report.
    return await purge(queues, command, createLogger('dlq', 'info', pino.destination({ dest: 2, sync: true })));
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
      err(`dlq: ${redactUrl((e as Error).stack ?? String(e))}`);
    }
    process.exit(1);
  },
);
