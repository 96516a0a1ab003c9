/**
 * Real processes for tests that need their own: a Redis or Mosquitto to stop and restart, and
 * our subscriber and worker run exactly as `npm run subscriber|worker` runs them.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chownSync, mkdtempSync, writeFileSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';

export const ROOT = path.resolve(import.meta.dirname, '../..');

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
    server.on('error', reject);
  });
}

export async function waitForPort(port: number, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const open = await new Promise<boolean>((resolve) => {
      const socket = connect(port, '127.0.0.1');
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (open) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on port ${port} after ${timeoutMs} ms`);
    await sleep(50);
  }
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export async function waitFor<T>(
  what: string,
  check: () => Promise<T | undefined | false> | T | undefined | false,
  timeoutMs = 30_000,
  everyMs = 100,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value !== undefined && value !== false) return value;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await sleep(everyMs);
  }
}

export interface ManagedProcess {
  child: ChildProcess;
  output: () => string;
  /** Resolves with the exit code (or signal name). */
  exited: Promise<number | string>;
  kill(signal?: NodeJS.Signals): Promise<number | string>;
}

/** Collects a child's output and knows when it exited. */
export function manage(child: ChildProcess): ManagedProcess {
  let output = '';
  child.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const exited = new Promise<number | string>((resolve) => child.once('exit', (code, signal) => resolve(code ?? signal ?? -1)));
  return {
    child,
    output: () => output,
    exited,
    async kill(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
}

/** A Redis of the test's own. With `appendonly`, a restart on the same dir keeps its data. */
export async function startRedis(options: { port?: number; dir?: string; appendonly?: boolean; args?: string[] } = {}) {
  const port = options.port ?? (await freePort());
  const dir = options.dir ?? mkdtempSync(path.join(tmpdir(), 'lampi-redis-'));
  const child = spawn(
    'redis-server',
    [
      '--port',
      String(port),
      '--bind',
      '127.0.0.1',
      '--save',
      '',
      '--appendonly',
      options.appendonly === false ? 'no' : 'yes',
      '--appendfsync',
      'always',
      '--dir',
      dir,
      '--maxmemory-policy',
      'noeviction',
      ...(options.args ?? []),
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const proc = manage(child);
  await waitForPort(port);
  return { ...proc, port, dir, url: `redis://127.0.0.1:${port}` };
}

/**
 * Writes <dir>/mosquitto.conf for a Mosquitto of our own: persistence and queue limits like the
 * one docker-compose.yml ships, anonymous on loopback. Returns its path.
 */
export function writeMosquittoConfig(port: number, dir: string, extraConfig = ''): string {
  const conf = path.join(dir, 'mosquitto.conf');
  // Started as root, Mosquitto drops to the `mosquitto` user: its persistence directory must be
  // that user's, or every save fails ("Permission denied") and a restart loses all sessions.
  const owner = mosquittoUser();
  if (owner) chownSync(dir, owner.uid, owner.gid);
  writeFileSync(
    conf,
    [
      `listener ${port} 127.0.0.1`,
      'allow_anonymous true',
      'persistence true',
      `persistence_location ${dir}/`,
      'max_queued_messages 1000000',
      'max_inflight_messages 100',
      'set_tcp_nodelay true',
      extraConfig,
    ].join('\n'),
  );
  return conf;
}

/** A Mosquitto of the test's own, configured like the one docker-compose.yml ships. */
export async function startMosquitto(options: { port?: number; dir?: string; extraConfig?: string } = {}) {
  const port = options.port ?? (await freePort());
  const dir = options.dir ?? mkdtempSync(path.join(tmpdir(), 'lampi-mosquitto-'));
  const conf = writeMosquittoConfig(port, dir, options.extraConfig);
  const child = spawn('mosquitto', ['-c', conf], { stdio: ['ignore', 'pipe', 'pipe'] });
  const proc = manage(child);
  await waitForPort(port);
  return { ...proc, port, dir, url: `mqtt://127.0.0.1:${port}` };
}

/** Runs one of our entry points as its own process, as `npm run <name>` would. */
export function startService(
  name: 'subscriber' | 'worker' | 'migrate' | 'keen-sink' | 'dashboard',
  env: Record<string, string>,
): ManagedProcess {
  const child = spawn(process.execPath, ['--import', 'tsx', `src/${name}/main.ts`], {
    cwd: ROOT,
    env: { PATH: process.env.PATH, LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  return manage(child);
}

/** Waits until a service logs the given message (pino JSON `msg`). */
export function waitForLog(proc: ManagedProcess, msg: string, timeoutMs = 60_000): Promise<void> {
  return waitFor(
    `"${msg}" in the log`,
    () =>
      proc.output().includes(`"msg":"${msg}"`) ||
      (proc.child.exitCode !== null ? Promise.reject(new Error(`process exited:\n${proc.output()}`)) : false),
    timeoutMs,
    50,
  ).then(() => {});
}

/** What a process started with METRICS_PORT=0 serves on /metrics (the port is read from its log). */
export async function scrapeMetrics(proc: ManagedProcess): Promise<string> {
  const port = /"port":(\d+),[^\n]*"msg":"serving \/metrics/.exec(proc.output())?.[1];
  if (!port) throw new Error('the process has not logged its metrics port');
  const response = await fetch(`http://127.0.0.1:${port}/metrics`);
  return response.text();
}

/** The subscriber's own count of enqueued messages by kind, from its /metrics. */
export async function enqueuedByKind(proc: ManagedProcess): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  for (const [, kind, value] of (await scrapeMetrics(proc)).matchAll(/^lampi_messages_enqueued_total\{kind="([^"]+)"[^}]*\} (\d+)$/gm))
    counts[kind!] = Number(value);
  return counts;
}

/** The uid/gid Mosquitto switches to when started as root; undefined when it will not switch. */
export function mosquittoUser(): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  try {
    return {
      uid: Number(execFileSync('id', ['-u', 'mosquitto']).toString().trim()),
      gid: Number(execFileSync('id', ['-g', 'mosquitto']).toString().trim()),
    };
  } catch {
    return undefined; // no such user: Mosquitto stays root
  }
}
