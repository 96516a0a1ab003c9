/**
 * The short form of `npm run chaos` (issue 6), inside `npm test`: the same faults and the same
 * checks as the full run, with fewer events and shorter outages. It runs as a child process,
 * exactly as `npm run chaos -- --quick`, and must exit 0; its report is printed either way.
 */
import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { PROFILES } from '../../chaos/scenario.js';
import { ROOT } from '../support/processes.js';

const quick = PROFILES.quick;
/** Start-up, the fleet's publishing, the slowest recovery (a killed worker's jobs wait for their locks), and room for a busy machine. */
const TIMEOUT_MS = (120 + quick.events / quick.rate + quick.drainTimeoutS + 120) * 1000;

describe('chaos, quick form', () => {
  it(
    'loses nothing, duplicates nothing at Keen, dead-letters only what Keen refuses, registers each lamp once',
    async () => {
      const child = spawn(process.execPath, ['--import', 'tsx', 'chaos/run.ts', '--quick'], {
        cwd: ROOT,
        env: process.env,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let output = '';
      child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
      child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
      // Before vitest gives up, ask the run to stop: it then stops every process and cluster it started.
      const guard = setTimeout(() => child.kill('SIGINT'), TIMEOUT_MS - 30_000);
      const code = await new Promise<number | null>((resolve) => child.once('exit', (exitCode) => resolve(exitCode)));
      clearTimeout(guard);
      // The figures (and any problem) belong in the test log whatever the outcome.
      process.stdout.write(`${output.slice(output.indexOf('==== chaos run'))}\n`);
      expect(output).toContain('CHAOS PASSED');
      expect(code).toBe(0);
    },
    TIMEOUT_MS,
  );
});
