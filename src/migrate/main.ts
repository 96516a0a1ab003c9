/**
 * `npm run migrate`: applies prisma/migrations to DATABASE_URL and exits.
 *
 * Success prints one line per migration applied and a summary, exit 0. Any failure prints ONE
 * line (`migrate: <what> : <what to do>`) to stderr and exits 1: no stack trace, and the
 * password in DATABASE_URL is never printed. With MIGRATE_WAIT_SECONDS it first waits that long
 * for PostgreSQL to accept connections (compose starts it beside us), saying so once.
 *
 * A database that does not exist yet is created, as `prisma migrate deploy` does, so a fresh
 * PostgreSQL needs no manual `createdb`. The line saying so names the database, so a typo in
 * DATABASE_URL is visible at once; a user without CREATEDB gets a line telling them to create it.
 *
 * With REGISTRY_SCHEMA=django the database is the LAMPI site's: migrate creates nothing of
 * Django's (not even the database), checks that the site's tables are there, and applies
 * prisma/django-migrations, our own bookkeeping beside them.
 */
import path from 'node:path';
import pg from 'pg';
import { loadConfig } from '../shared/config.js';
import { checkDjangoTables, djangoTablesProblem } from '../shared/django-site.js';
import { connectionProblem, ensureDatabase, oneLine, pgCode, waitForDatabase } from '../shared/postgres.js';
import { applyMigrations } from '../shared/migrations.js';
import { ConfigError, DatabaseSetupError, MigrationError, MigrationRolledBackError, describeError } from '../shared/errors.js';
import { safeUrl } from '../shared/redact.js';

const NAME = 'migrate';
const MIGRATIONS = {
  lampi: path.resolve(import.meta.dirname, '../../prisma/migrations'),
  django: path.resolve(import.meta.dirname, '../../prisma/django-migrations'),
};

/** The LAMPI site's tables must be there before we add ours beside them. */
async function checkSiteDatabase(url: string): Promise<void> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 10_000 });
  client.on('error', () => {});
  try {
    await client.connect();
    const check = await checkDjangoTables(async (sql, values) => (await client.query(sql, values)).rows);
    if (!check.ok) throw new DatabaseSetupError(djangoTablesProblem(check.missing, `DATABASE_URL=${safeUrl(url)}`));
  } catch (err) {
    if (err instanceof DatabaseSetupError) throw err;
    if (pgCode(err) === '3D000') {
      throw new DatabaseSetupError(
        `REGISTRY_SCHEMA=django but there is no database at DATABASE_URL=${safeUrl(url)}: point DATABASE_URL ` +
          `at the LAMPI site's database, where its \`manage.py migrate\` ran`,
      );
    }
    throw connectionProblem(err, url) ?? err;
  } finally {
    await client.end().catch(() => {});
  }
}

async function migrate(): Promise<void> {
  const config = loadConfig(['database', 'common', 'registry', 'migrate']);
  const { DATABASE_URL: url, REGISTRY_SCHEMA: schema, MIGRATE_WAIT_SECONDS: wait } = config;
  const directory = MIGRATIONS[schema];
  await waitForDatabase(url, wait, (reason) => {
    const line = `PostgreSQL at ${safeUrl(url)} is not accepting connections yet (${oneLine(reason)}): waiting up to ${wait}s (MIGRATE_WAIT_SECONDS)`;
    process.stdout.write(`${NAME}: ${line}\n`);
  });
  if (schema === 'django') {
    await checkSiteDatabase(url);
  } else {
    const created = await ensureDatabase(url);
    if (created) process.stdout.write(`${NAME}: database "${created}" did not exist: created it\n`);
  }
  let result;
  try {
    result = await applyMigrations({ databaseUrl: url, directory });
  } catch (err) {
    // The runner applies each migration in a transaction: a failed one left nothing behind.
    if (err instanceof MigrationRolledBackError) {
      throw new DatabaseSetupError(`${err.message}; nothing of it was applied: fix the database or the migration, then run migrate again`);
    }
    if (err instanceof MigrationError) throw err;
    const code = pgCode(err);
    if (code === 'ENOENT')
      throw new DatabaseSetupError(
        `cannot read migrations from ${directory} (ENOENT): run migrate from a complete checkout of the project`,
      );
    throw (
      connectionProblem(err, url) ??
      new DatabaseSetupError(
        `failed against DATABASE_URL=${safeUrl(url)} ` +
          `(${code ? `${code} ` : ''}${oneLine((err as Error).message ?? String(err))}): check that the user ` +
          `may create tables in this database`,
      )
    );
  }
  for (const name of result.applied) process.stdout.write(`${NAME}: applied ${name}\n`);
  const total = result.applied.length + result.alreadyApplied.length;
  process.stdout.write(
    result.applied.length === 0
      ? `${NAME}: nothing to apply: all ${total} migrations were already applied to ${safeUrl(url)}\n`
      : `${NAME}: ${safeUrl(url)} is up to date (${result.applied.length} applied now, ${result.alreadyApplied.length} already applied)\n`,
  );
}

try {
  await migrate();
  process.exit(0);
} catch (err) {
  const line =
    err instanceof ConfigError || err instanceof DatabaseSetupError || err instanceof MigrationError
      ? err.message
      : `failed: ${oneLine(describeError(err))}: see the PostgreSQL log, then run migrate again`;
  process.stderr.write(`${NAME}: ${oneLine(line)}\n`);
  process.exit(1);
}
