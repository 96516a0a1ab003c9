/**
 * `npm run chaos [-- --quick] [-- --keep] [-- --redis-fsync always|everysec]`
 *
 * Runs the fault scenario of issue 6 against real processes (see chaos/scenario.ts), prints the
 * figures and anything wrong, and exits 0 only if every check passed. The run directory (logs
 * of every process, Redis/Mosquitto/PostgreSQL data) is kept when a check fails, or with --keep.
 */
import { PROFILES, runChaos } from './scenario.js';

const args = process.argv.slice(2);
const unknown = args.filter((a, i) => !['--quick', '--keep', '--redis-fsync'].includes(a) && args[i - 1] !== '--redis-fsync');
if (unknown.length > 0) {
  process.stderr.write(
    `chaos: unknown option ${unknown.join(' ')}\nusage: npm run chaos [-- --quick] [--keep] [--redis-fsync always|everysec]\n`,
  );
  process.exit(2);
}
const fsyncArg = args.includes('--redis-fsync') ? args[args.indexOf('--redis-fsync') + 1] : 'everysec';
if (fsyncArg !== 'always' && fsyncArg !== 'everysec') {
  process.stderr.write('chaos: --redis-fsync must be always or everysec\n');
  process.exit(2);
}
const profile = PROFILES[args.includes('--quick') ? 'quick' : 'full'];

const result = await runChaos({
  profile,
  redisFsync: fsyncArg,
  keep: args.includes('--keep'),
  log: (line) => process.stdout.write(`${line}\n`),
});

const out: string[] = ['', `==== chaos run (${profile.name}) figures ====`];
for (const [name, value] of Object.entries(result.figures)) out.push(`  ${name}: ${value}`);
out.push('');
if (result.ok) {
  out.push(`CHAOS PASSED: every check held${args.includes('--keep') ? ` (run directory kept: ${result.dir})` : ''}`);
} else {
  out.push(`CHAOS FAILED: ${result.problems.length} problem(s):`);
  for (const problem of result.problems.slice(0, 60)) out.push(`  - ${problem}`);
  if (result.problems.length > 60) out.push(`  ... and ${result.problems.length - 60} more`);
  out.push(`run directory (process logs, data): ${result.dir}`);
}
process.stdout.write(`${out.join('\n')}\n`);
process.exit(result.ok ? 0 : 1);
