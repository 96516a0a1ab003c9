/**
 * Where Redis's time goes, per BullMQ script and command, for a bench run against a Redis of
 * its own (the shared one has other users' commands in it):
 *
 *   redis-server --port 6390 --save '' --appendonly no --daemonize yes \
 *     --slowlog-log-slower-than 0 --slowlog-max-len 400000
 *   BENCH_REDIS_URL=redis://127.0.0.1:6390 npm run bench -- --scenario throughput --workers 1 --duration 15
 *   node --import tsx bench/redis-profile.ts [--port 6390] [--reset]
 *
 * Reads the slow log (every command, with its duration in µs: the last --slowlog-max-len of them)
 * and INFO commandstats, and names each EVALSHA after the BullMQ script whose SHA1 it carries,
 * with the queue of its first key. Logging every command slows Redis down (by about half): compare
 * the scripts with each other, and take absolute costs from commandstats with the slow log off.
 * --reset clears both afterwards.
 */
import { createHash } from 'node:crypto';
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Redis } from 'ioredis';
import { ROOT } from '../test/support/processes.js';

const { values } = parseArgs({
  options: {
    port: { type: 'string', default: '6390' },
    reset: { type: 'boolean', default: false },
    top: { type: 'string', default: '20' },
  },
});

const scripts = new Map<string, string>();
const dir = path.join(ROOT, 'node_modules/bullmq/dist/esm/scripts');
for (const file of readdirSync(dir).filter((f) => f.endsWith('.js') && f !== 'index.js')) {
  const mod = (await import(path.join(dir, file))) as Record<string, { name?: string; content?: string }>;
  for (const value of Object.values(mod))
    if (value?.content && value.name) scripts.set(createHash('sha1').update(value.content).digest('hex'), value.name);
}

const redis = new Redis(Number(values.port), '127.0.0.1');
const entries = (await redis.call('SLOWLOG', 'GET', '1000000')) as Array<[number, number, number, string[]]>;
const byCommand = new Map<string, { calls: number; us: number }>();
for (const [, , us, args] of entries) {
  let key = String(args[0]).toLowerCase();
  // Commands a script runs are logged too; their time is inside the script's.
  if (key === 'evalsha') {
    const queue =
      String(args[3] ?? '')
        .split(':')
        .at(-2) ?? '?';
    key = `EVALSHA ${scripts.get(String(args[1])) ?? String(args[1]).slice(0, 8)} (${queue})`;
  }
  const entry = byCommand.get(key) ?? { calls: 0, us: 0 };
  entry.calls += 1;
  entry.us += us;
  byCommand.set(key, entry);
}
const scriptsUs = [...byCommand].filter(([k]) => k.startsWith('EVALSHA')).reduce((sum, [, e]) => sum + e.us, 0);
process.stdout.write(`slow log: ${entries.length} entries; scripts ${(scriptsUs / 1e6).toFixed(2)} s\n`);
for (const [key, entry] of [...byCommand].sort((a, b) => b[1].us - a[1].us).slice(0, Number(values.top))) {
  process.stdout.write(
    `${(entry.us / 1e3).toFixed(0).padStart(8)} ms ${String(entry.calls).padStart(8)} calls ` +
      `${(entry.us / entry.calls).toFixed(1).padStart(7)} µs/call  ${key}\n`,
  );
}
const stats = (await redis.info('commandstats')).split('\n').filter((line) => line.startsWith('cmdstat_'));
const parsed = stats.map((line) => ({ line, usec: Number(/usec=(\d+)/.exec(line)?.[1] ?? 0) })).sort((a, b) => b.usec - a.usec);
process.stdout.write('\nINFO commandstats (top 8 by total time):\n');
for (const { line } of parsed.slice(0, 8)) process.stdout.write(`  ${line.trim()}\n`);
if (values.reset) {
  await redis.call('SLOWLOG', 'RESET');
  await redis.config('RESETSTAT');
}
redis.disconnect();
