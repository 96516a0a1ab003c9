/**
 * `npm run migrate`: applies prisma/migrations to DATABASE_URL and exits.
 *
 * Success prints one line per migration applied and a summary, exit 0. Any failure prints ONE
 * line (`migrate: <what> : <what to do>`) to stderr and exits 1: no stack trace, and the
 * password in DATABASE_URL is never printed.
 *
 * A database that does not exist yet is created, as `prisma migrate deploy` does, so a fresh
 * PostgreSQL needs no manual `createdb`. The line saying so names the database, so a typo in
 * DATABASE_URL is visible at once; a user without CREATEDB gets a line telling them to create it.
 */
import path from 'node:path';
import pg from 'pg';
import { ConfigError, loadConfig } from '../shared/config.js';
import { describe, safeUrl } from '../shared/queues.js';
import { applyMigrations, MigrationError } from './runner.js';

const NAME = 'migrate';
const MIGRATIONS = path.resolve(import.meta.dirname, '../../prisma/migrations');
const CONNECT_TIMEOUT_MS = 10_000;

/** A failure the user can act on; its message is the whole line after `migrate: `. */
class MigrateError extends Error {
  override name = 'MigrateError';
}

/** Connection-level errors: the server is not there (or not answering) at all. */
const UNREACHABLE = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ECONNRESET', 'EPIPE']);

function pgCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

/** DATABASE_URL for printing: the password (in the authority or as `?password=`) masked. */
function shown(url: string): string {
  const masked = safeUrl(url);
  try {
    const parsed = new URL(masked);
    if (parsed.searchParams.has('password')) parsed.searchParams.set('password', '***');
    return parsed.toString();
  } catch {
    return masked;
  }
}

function oneLine(text: string): string {
  return text.replace(/\s+/g, ' ').trim();
}

/** Turns an error from connecting with `url` into a line that says what to do. */
function connectionProblem(err: unknown, url: string): MigrateError | undefined {
  const where = `DATABASE_URL=${shown(url)}`;
  const code = pgCode(err);
  const message = err instanceof Error ? err.message : String(err);
  if ((code && UNREACHABLE.has(code)) || /timeout|terminated unexpectedly/i.test(message) || err instanceof AggregateError) {
    return new MigrateError(`cannot reach PostgreSQL at ${where} (${describe(err)}): start PostgreSQL or fix DATABASE_URL`);
  }
  if (code === '28P01' || code === '28000') {
    return new MigrateError(`PostgreSQL refused the login at ${where} (${code} ${oneLine(message)}): fix the user or password in DATABASE_URL`);
  }
  if (code === '57P03') {
    return new MigrateError(`PostgreSQL at ${where} is still starting up (57P03): wait for it to accept connections, then run migrate again`);
  }
  if (/SSL|certificate/i.test(message)) {
    return new MigrateError(`TLS problem connecting to ${where} (${oneLine(message)}): fix sslmode in DATABASE_URL`);
  }
  return undefined;
}

async function connect(url: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: CONNECT_TIMEOUT_MS });
  client.on('error', () => {
    // A dropped connection surfaces as the failing query's error.
  });
  try {
    await client.connect();
    return client;
  } catch (err) {
    await client.end().catch(() => {});
    throw err;
  }
}

/** Makes sure the database named in `url` exists; returns its name if it had to be created. */
async function ensureDatabase(url: string): Promise<string | undefined> {
  try {
    const client = await connect(url);
    await client.end().catch(() => {});
    return undefined;
  } catch (err) {
    if (pgCode(err) !== '3D000') throw connectionProblem(err, url) ?? err;
  }
  const parsed = new URL(url);
  const database = decodeURIComponent(parsed.pathname.replace(/^\//, ''));
  const where = `DATABASE_URL=${shown(url)}`;
  // Same server and credentials, PostgreSQL's maintenance database (template1 if there is none).
  let admin: pg.Client | undefined;
  let lastError: unknown;
  for (const maintenance of ['postgres', 'template1']) {
    parsed.pathname = `/${maintenance}`;
    try {
      admin = await connect(parsed.toString());
      break;
    } catch (err) {
      lastError = err;
    }
  }
  if (!admin) {
    throw new MigrateError(
      `database "${database}" does not exist at ${where} and no maintenance database could be opened to create it (${describe(lastError)}): create it (createdb ${database}) or fix DATABASE_URL`,
    );
  }
  try {
    await admin.query(`CREATE DATABASE "${database.replaceAll('"', '""')}"`);
    return database;
  } catch (err) {
    // 42P04 (or 23505 when both CREATE at the same instant): a concurrent migrate created it meanwhile.
    if (pgCode(err) === '42P04' || pgCode(err) === '23505') return undefined;
    throw new MigrateError(
      `database "${database}" does not exist at ${where} and could not be created (${pgCode(err) ?? ''} ${oneLine((err as Error).message)}): create it (createdb ${database}) or fix DATABASE_URL`,
    );
  } finally {
    await admin.end().catch(() => {});
  }
}

async function migrate(): Promise<void> {
  const { DATABASE_URL: url } = loadConfig(['database', 'common']);
  const created = await ensureDatabase(url);
  if (created) process.stdout.write(`${NAME}: database "${created}" did not exist: created it\n`);
  let result;
  try {
    result = await applyMigrations({ databaseUrl: url, directory: MIGRATIONS });
  } catch (err) {
    if (err instanceof MigrationError) {
      // The runner applies each migration in a transaction: a failed one left nothing behind.
      if (/^migration \S+ failed: /.test(err.message)) {
        throw new MigrateError(`${err.message}; nothing of it was applied: fix the database or the migration, then run migrate again`);
      }
      throw err;
    }
    const code = pgCode(err);
    if (code === 'ENOENT') throw new MigrateError(`cannot read migrations from ${MIGRATIONS} (ENOENT): run migrate from a complete checkout of the project`);
    throw connectionProblem(err, url) ?? new MigrateError(`failed against DATABASE_URL=${shown(url)} (${code ? `${code} ` : ''}${oneLine((err as Error).message ?? String(err))}): check that the user may create tables in this database`);
  }
  for (const name of result.applied) process.stdout.write(`${NAME}: applied ${name}\n`);
  const total = result.applied.length + result.alreadyApplied.length;
  process.stdout.write(
    result.applied.length === 0
      ? `${NAME}: nothing to apply: all ${total} migrations were already applied to ${shown(url)}\n`
      : `${NAME}: ${shown(url)} is up to date (${result.applied.length} applied now, ${result.alreadyApplied.length} already applied)\n`,
  );
}

try {
  await migrate();
  process.exit(0);
} catch (err) {
  const line =
    err instanceof ConfigError || err instanceof MigrateError || err instanceof MigrationError
      ? err.message
      : `failed: ${oneLine(describe(err))}: see the PostgreSQL log, then run migrate again`;
  process.stderr.write(`${NAME}: ${oneLine(line)}\n`);
  process.exit(1);
}
