/**
 * A private PostgreSQL cluster for a chaos run: `initdb` in a temp dir, `pg_ctl` to start and
 * stop it on a port of its own. PostgreSQL refuses to run as root, so as root the binaries run
 * as the `postgres` user (runuser).
 */
import { execFile } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';

const run = promisify(execFile);

export function findPostgresBin(): string {
  const explicit = process.env.PG_BIN;
  if (explicit) return explicit;
  const base = '/usr/lib/postgresql';
  if (existsSync(base)) {
    const versions = readdirSync(base)
      .filter((v) => existsSync(path.join(base, v, 'bin', 'initdb')))
      .sort((a, b) => Number(b) - Number(a));
    if (versions[0]) return path.join(base, versions[0], 'bin');
  }
  throw new Error('no PostgreSQL binaries found (looked in /usr/lib/postgresql/*/bin): install postgresql or set PG_BIN');
}

export interface PrivatePostgres {
  port: number;
  /** The `lampi` database. */
  url: string;
  adminUrl: string;
  start(): Promise<void>;
  /** `pg_ctl stop -m fast`: open connections are cut, nothing is lost. */
  stop(): Promise<void>;
  logFile: string;
}

export async function createPrivatePostgres(dir: string, port: number): Promise<PrivatePostgres> {
  const bin = findPostgresBin();
  const asRoot = process.getuid?.() === 0;
  const uid = asRoot ? Number((await run('id', ['-u', 'postgres'])).stdout.trim()) : undefined;
  const gid = asRoot ? Number((await run('id', ['-g', 'postgres'])).stdout.trim()) : undefined;
  const dataDir = path.join(dir, 'data');
  const logFile = path.join(dir, 'postgres.log');
  mkdirSync(dir, { recursive: true });
  if (asRoot) {
    // The run directory (mkdtemp: 0700) must let the postgres user through to its own folder.
    chmodSync(path.dirname(dir), 0o711);
    chownSync(dir, uid!, gid!);
    chmodSync(dir, 0o700);
  }
  const pgRun = (tool: string, args: string[]) =>
    asRoot
      ? run('runuser', ['-u', 'postgres', '--', path.join(bin, tool), ...args], { cwd: dir })
      : run(path.join(bin, tool), args, { cwd: dir });

  await pgRun('initdb', ['-D', dataDir, '-A', 'trust', '-U', 'postgres', '-E', 'UTF8', '--locale=C', '--no-sync']);
  const options = `-p ${port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=${dir} -c max_connections=100`;
  const adminUrl = `postgresql://postgres@127.0.0.1:${port}/postgres`;
  const cluster: PrivatePostgres = {
    port,
    url: `postgresql://postgres@127.0.0.1:${port}/lampi`,
    adminUrl,
    logFile,
    async start() {
      await pgRun('pg_ctl', ['-D', dataDir, '-l', logFile, '-o', options, '-w', '-t', '120', 'start']);
    },
    async stop() {
      await pgRun('pg_ctl', ['-D', dataDir, '-m', 'fast', '-w', '-t', '120', 'stop']);
    },
  };
  await cluster.start();
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  await admin.query('CREATE DATABASE lampi');
  await admin.end();
  return cluster;
}
