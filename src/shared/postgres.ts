/**
 * Reaching PostgreSQL at start-up, with one line that says what to do when that fails: the one
 * description of a connection failure (wrong password, no such role, no such database, server
 * not reachable, ...) that the worker, migrate, keen-sink and the devices CLI all print. The
 * line names the setting (DATABASE_URL, KEEN_SINK_DATABASE_URL) with its password masked.
 * `ensureDatabase` also creates a database that does not exist yet, as `prisma migrate deploy`
 * does (migrate, keen-sink).
 */
import pg from 'pg';
import { CONNECTION_CODES } from './dependency-watch.js';
import { DatabaseSetupError, describeError } from './errors.js';
import { safeUrl } from './redact.js';

const CONNECT_TIMEOUT_MS = 10_000;

export function pgCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

export function oneLine(text: string): string {
  return text.replace(/\s+/g, ' ').trim();
}

/**
 * What only an error's text tells, the one place here that reads it: node-postgres raises its
 * connect timeout ('timeout expired', 'Connection terminated due to connection timeout'), a
 * connection dropped during start-up ('Connection terminated unexpectedly') and a server without
 * TLS ('The server does not support SSL connections', 'There was an error establishing an SSL
 * connection') as plain Errors with no code, and PostgreSQL gives a missing role the same code
 * and routine (28000, InitializeSessionUserId) as a role that may not log in.
 */
function textOnlyProblem(err: unknown): 'unreachable' | 'no-such-role' | 'tls' | undefined {
  const message = err instanceof Error ? err.message : String(err);
  if (pgCode(err) === undefined && /timeout|terminated unexpectedly/i.test(message)) return 'unreachable';
  if (pgCode(err) === '28000' && /role .* does not exist/i.test(message)) return 'no-such-role';
  if (/does not support SSL|error establishing an SSL connection/i.test(message)) return 'tls';
  return undefined;
}

/** Node's codes for a TLS handshake or certificate that failed (OpenSSL's ERR_SSL_*, Node's ERR_TLS_*, X.509 verification). */
function isTlsError(err: unknown): boolean {
  const code = pgCode(err);
  if (code === undefined) return textOnlyProblem(err) === 'tls';
  return /^ERR_(SSL|TLS)_/.test(code) || /CERT|SELF_SIGNED|UNABLE_TO_(GET|VERIFY|DECRYPT)/.test(code);
}

/** The server is not there (or not answering) at all. */
function isUnreachable(err: unknown): boolean {
  const code = pgCode(err);
  return (code !== undefined && CONNECTION_CODES.has(code)) || textOnlyProblem(err) === 'unreachable' || err instanceof AggregateError;
}

/** PostgreSQL is not there yet, or still starting: worth trying again shortly. */
function isTransient(err: unknown): boolean {
  return isUnreachable(err) || pgCode(err) === '57P03';
}

/** Connects to the database in `url` and hangs up: whether it accepts us, as its error. */
async function connectOnce(url: string): Promise<void> {
  await (await connect(url)).end().catch(() => {});
}

/**
 * Waits up to `seconds` for the server in `url` to accept connections (a container start, where
 * PostgreSQL comes up after us). Returns as soon as it answers, even with an error that is not
 * about being unreachable (no such database, a wrong password): the caller reports those.
 * `onWait` is called once, when the first attempt failed and it starts waiting.
 */
export async function waitForDatabase(url: string, seconds: number, onWait: (reason: string) => void): Promise<void> {
  const deadline = Date.now() + seconds * 1000;
  let waiting = false;
  for (;;) {
    try {
      await connectOnce(url);
      return;
    } catch (err) {
      if (!isTransient(err) || Date.now() >= deadline) return;
      if (!waiting) onWait(describeError(err));
      waiting = true;
    }
    await new Promise((resolve) => setTimeout(resolve, Math.min(1000, Math.max(0, deadline - Date.now()))));
  }
}

/** The user and database a URL names, as PostgreSQL will see them (libpq's defaults when absent). */
function namesIn(url: string): { user: string; database: string } {
  try {
    const parsed = new URL(url);
    const user =
      decodeURIComponent(parsed.username) || parsed.searchParams.get('user') || process.env.PGUSER || process.env.USER || 'postgres';
    return { user, database: decodeURIComponent(parsed.pathname.replace(/^\//, '')) || user };
  } catch {
    return { user: '(unknown)', database: '(unknown)' };
  }
}

/** What to do when the registry's database does not exist: migrate creates it. */
export const MISSING_REGISTRY_DATABASE = 'run `npm run migrate` first (it creates the database), or fix the database name in DATABASE_URL';

/** The same with REGISTRY_SCHEMA=django, where the database is the LAMPI site's and nothing of ours creates it. */
export const MISSING_SITE_DATABASE = "point DATABASE_URL at the LAMPI site's database, where its `manage.py migrate` ran";

export interface ProblemOptions {
  /** The setting that holds the URL, named in the line. */
  setting?: string;
  /** What to do when the database does not exist (3D000); worker and devices CLI: run migrate. */
  missingDatabase?: string;
}

/** Turns an error from connecting with `url` into a line that says what to do, or undefined when it is no connection problem. */
export function connectionProblem(err: unknown, url: string, options: ProblemOptions = {}): DatabaseSetupError | undefined {
  const setting = options.setting ?? 'DATABASE_URL';
  const where = `${setting}=${safeUrl(url)}`;
  const code = pgCode(err);
  const message = err instanceof Error ? err.message : String(err);
  const { user, database } = namesIn(url);
  if (isUnreachable(err)) {
    return new DatabaseSetupError(`cannot reach PostgreSQL at ${where} (${describeError(err)}): start PostgreSQL or fix ${setting}`);
  }
  if (code === '28P01') {
    return new DatabaseSetupError(`PostgreSQL refused the password of user "${user}" at ${where} (28P01): fix the password in ${setting}`);
  }
  if (textOnlyProblem(err) === 'no-such-role') {
    return new DatabaseSetupError(
      `PostgreSQL has no role "${user}" at ${where} (28000): fix the user in ${setting}, or create the role (createuser ${user})`,
    );
  }
  if (code === '28000') {
    return new DatabaseSetupError(
      `PostgreSQL refused the login at ${where} (28000 ${oneLine(message)}): fix the user or password in ${setting}, or allow it in pg_hba.conf`,
    );
  }
  if (code === '3D000') {
    const todo = options.missingDatabase ?? `create it (createdb ${database}) or fix the database name in ${setting}`;
    return new DatabaseSetupError(`database "${database}" does not exist at ${where} (3D000): ${todo}`);
  }
  if (code === '57P03') {
    return new DatabaseSetupError(
      `PostgreSQL at ${where} is still starting up (57P03): wait for it to accept connections, then start again`,
    );
  }
  if (isTlsError(err)) {
    return new DatabaseSetupError(`TLS problem connecting to ${where} (${oneLine(message)}): fix sslmode in ${setting}`);
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

/**
 * Connects once to the database in `url` and hangs up: a process that uses it through another
 * client (Prisma) gets the same line as migrate when it cannot, instead of a driver's message.
 */
export async function checkConnection(url: string, options: ProblemOptions = {}): Promise<void> {
  try {
    await connectOnce(url);
  } catch (err) {
    const setting = options.setting ?? 'DATABASE_URL';
    throw (
      connectionProblem(err, url, options) ??
      new DatabaseSetupError(`cannot connect to PostgreSQL at ${setting}=${safeUrl(url)} (${describeError(err)}): fix ${setting}`)
    );
  }
}

/** Makes sure the database named in `url` exists; returns its name if it had to be created. */
export async function ensureDatabase(url: string, setting = 'DATABASE_URL'): Promise<string | undefined> {
  try {
    await connectOnce(url);
    return undefined;
  } catch (err) {
    if (pgCode(err) !== '3D000') throw connectionProblem(err, url, { setting }) ?? err;
  }
  const parsed = new URL(url);
  const database = decodeURIComponent(parsed.pathname.replace(/^\//, ''));
  const where = `${setting}=${safeUrl(url)}`;
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
    throw new DatabaseSetupError(
      `database "${database}" does not exist at ${where} and no maintenance database could be opened to ` +
        `create it (${describeError(lastError)}): create it (createdb ${database}) or fix ${setting}`,
    );
  }
  try {
    await admin.query(`CREATE DATABASE "${database.replaceAll('"', '""')}"`);
    return database;
  } catch (err) {
    // 42P04 (or 23505 when both CREATE at the same instant): a concurrent migrate created it meanwhile.
    if (pgCode(err) === '42P04' || pgCode(err) === '23505') return undefined;
    throw new DatabaseSetupError(
      `database "${database}" does not exist at ${where} and could not be created (${pgCode(err) ?? ''} ` +
        `${oneLine((err as Error).message)}): create it (createdb ${database}) or fix ${setting}`,
    );
  } finally {
    await admin.end().catch(() => {});
  }
}
