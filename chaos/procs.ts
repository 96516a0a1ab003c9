/**
 * The processes a chaos run owns: our services (logged to files, killed by pid), a Redis and a
 * Mosquitto of its own that it restarts on the same port and data directory, and RSS sampling.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, readFileSync, type WriteStream } from 'node:fs';
import { ROOT, waitFor, waitForPort, writeMosquittoConfig } from '../test/support/processes.js';

export interface Proc {
  name: string;
  child: ChildProcess;
  pid: number;
  logFile: string;
  /** Resolves with the exit code, or the signal name. */
  exited: Promise<number | string>;
  /** Set before we kill it on purpose, so its exit is not reported as a crash. */
  expectedExit: boolean;
  /** The last ~256 KB the process printed. */
  tail(): string;
  running(): boolean;
  kill(signal?: NodeJS.Signals): Promise<number | string>;
}

const TAIL_BYTES = 256 * 1024;

function track(name: string, child: ChildProcess, logFile: string, log: WriteStream): Proc {
  let tail = '';
  const onData = (chunk: Buffer) => {
    log.write(chunk);
    tail += chunk.toString();
    if (tail.length > TAIL_BYTES) tail = tail.slice(-TAIL_BYTES / 2);
  };
  child.stdout?.on('data', onData);
  child.stderr?.on('data', onData);
  const exited = new Promise<number | string>((resolve) =>
    child.once('exit', (code, signal) => {
      log.end();
      resolve(code ?? signal ?? -1);
    }),
  );
  const proc: Proc = {
    name,
    child,
    pid: child.pid!,
    logFile,
    exited,
    expectedExit: false,
    tail: () => tail,
    running: () => child.exitCode === null && child.signalCode === null,
    async kill(signal = 'SIGTERM') {
      proc.expectedExit = true;
      if (proc.running()) process.kill(proc.pid, signal);
      return exited;
    },
  };
  return proc;
}

/** One of our entry points (`src/<service>/main.ts`), as `npm run <service>` starts it; output appended to `logFile`. */
export function spawnService(name: string, service: 'subscriber' | 'worker', env: Record<string, string>, logFile: string): Proc {
  const log = createWriteStream(logFile, { flags: 'a' });
  log.write(`\n===== ${name} started ${new Date().toISOString()} =====\n`);
  const child = spawn(process.execPath, ['--import', 'tsx', `src/${service}/main.ts`], {
    cwd: ROOT,
    env: { PATH: process.env.PATH, LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  return track(name, child, logFile, log);
}

export async function waitForLogLine(proc: Proc, msg: string, timeoutMs = 60_000): Promise<void> {
  await waitFor(
    `${proc.name} to log "${msg}"`,
    () => {
      if (proc.tail().includes(`"msg":"${msg}"`)) return true;
      if (!proc.running()) throw new Error(`${proc.name} exited before "${msg}":\n${proc.tail().slice(-4000)}`);
      return false;
    },
    timeoutMs,
    50,
  );
}

/** How many log lines of a (possibly restarted) process carry this pino `msg`. */
export function countLogLines(logFile: string, msg: string): number {
  try {
    const needle = `"msg":"${msg}"`;
    return readFileSync(logFile, 'utf8')
      .split('\n')
      .filter((line) => line.includes(needle)).length;
  } catch {
    return 0;
  }
}

export interface Restartable {
  port: number;
  dir: string;
  url: string;
  proc(): Proc;
  start(): Promise<void>;
  /** SIGKILL (a crash) or SIGTERM (an orderly stop); resolves once it has exited. */
  stop(signal: NodeJS.Signals): Promise<void>;
}

function restartable(
  name: string,
  port: number,
  dir: string,
  url: string,
  logFile: string,
  command: () => [string, string[]],
): Restartable {
  let current: Proc | undefined;
  return {
    port,
    dir,
    url,
    proc: () => current!,
    async start() {
      const log = createWriteStream(logFile, { flags: 'a' });
      log.write(`\n===== ${name} started ${new Date().toISOString()} =====\n`);
      const [cmd, args] = command();
      current = track(name, spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] }), logFile, log);
      await waitForPort(port, 30_000);
    },
    async stop(signal) {
      if (current) await current.kill(signal);
    },
  };
}

/**
 * A Redis configured as docker-compose.yml ships it: AOF on, `appendfsync` as given (compose
 * uses everysec), noeviction. Restarts keep its data (same dir and port).
 */
export function redisServer(port: number, dir: string, logFile: string, appendfsync: 'always' | 'everysec'): Restartable {
  return restartable('redis', port, dir, `redis://127.0.0.1:${port}`, logFile, () => [
    'redis-server',
    [
      '--port',
      String(port),
      '--bind',
      '127.0.0.1',
      '--save',
      '',
      '--appendonly',
      'yes',
      '--appendfsync',
      appendfsync,
      '--dir',
      dir,
      '--maxmemory-policy',
      'noeviction',
    ],
  ]);
}

/** A Mosquitto with persistence and queue limits like deploy/mosquitto/mosquitto.conf (anonymous, loopback only). */
export function mosquittoServer(port: number, dir: string, logFile: string): Restartable {
  const conf = writeMosquittoConfig(port, dir, ['autosave_interval 30', 'max_queued_bytes 0', ''].join('\n'));
  return restartable('mosquitto', port, dir, `mqtt://127.0.0.1:${port}`, logFile, () => ['mosquitto', ['-c', conf]]);
}

/** Resident set size of a process, in bytes, or undefined if it is gone. */
export function rssOf(pid: number): number | undefined {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = /^VmRSS:\s+(\d+) kB/m.exec(status)?.[1];
    return kb === undefined ? undefined : Number(kb) * 1024;
  } catch {
    return undefined;
  }
}
