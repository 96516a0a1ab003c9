/**
 * Applies `prisma/migrations/<timestamp>_<name>/migration.sql` the way `prisma migrate deploy`
 * does, without Prisma's native schema engine (which cannot be installed offline). The
 * bookkeeping table has Prisma's columns and checksums, so `prisma migrate status` run later
 * with internet access agrees about what is applied.
 */
import { createHash, randomUUID } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import pg from 'pg';
import { MigrationError, MigrationRolledBackError } from './errors.js';

export interface MigrationOptions {
  databaseUrl: string;
  /** Folder holding one sub-folder per migration, each with a migration.sql. */
  directory: string;
  /** Bookkeeping table; Prisma's own name by default. */
  table?: string;
}

export interface MigrationResult {
  applied: string[];
  alreadyApplied: string[];
}

/** Same key for every runner of the same table, so two `migrate` processes never interleave. */
function lockKey(table: string): number {
  return createHash('sha256').update(`lampi-migrate:${table}`).digest().readInt32BE(0);
}

export async function listMigrations(directory: string): Promise<Array<{ name: string; sql: string; checksum: string }>> {
  const entries = await readdir(directory, { withFileTypes: true });
  const names = entries
    .filter((e) => e.isDirectory())
    .map((e) => e.name)
    .sort();
  return Promise.all(
    names.map(async (name) => {
      const sql = await readFile(path.join(directory, name, 'migration.sql'), 'utf8');
      return { name, sql, checksum: createHash('sha256').update(sql).digest('hex') };
    }),
  );
}

export async function applyMigrations({
  databaseUrl,
  directory,
  table = '_prisma_migrations',
}: MigrationOptions): Promise<MigrationResult> {
  const migrations = await listMigrations(directory);
  const client = new pg.Client({ connectionString: databaseUrl, connectionTimeoutMillis: 10_000 });
  await client.connect();
  const quoted = `"${table.replaceAll('"', '""')}"`;
  try {
    await client.query('SELECT pg_advisory_lock($1)', [lockKey(table)]);
    await client.query(`CREATE TABLE IF NOT EXISTS ${quoted} (
      "id" VARCHAR(36) PRIMARY KEY NOT NULL,
      "checksum" VARCHAR(64) NOT NULL,
      "finished_at" TIMESTAMPTZ,
      "migration_name" VARCHAR(255) NOT NULL,
      "logs" TEXT,
      "rolled_back_at" TIMESTAMPTZ,
      "started_at" TIMESTAMPTZ NOT NULL DEFAULT now(),
      "applied_steps_count" INTEGER NOT NULL DEFAULT 0
    )`);
    const { rows } = await client.query<{ migration_name: string; checksum: string; finished_at: Date | null }>(
      `SELECT migration_name, checksum, finished_at FROM ${quoted} WHERE rolled_back_at IS NULL`,
    );
    const done = new Map(rows.map((row) => [row.migration_name, row]));
    const result: MigrationResult = { applied: [], alreadyApplied: [] };
    for (const migration of migrations) {
      const previous = done.get(migration.name);
      if (previous?.finished_at) {
        if (previous.checksum !== migration.checksum) {
          throw new MigrationError(
            `migration ${migration.name} was edited after it was applied (checksum differs): restore the file, add a new migration instead`,
          );
        }
        result.alreadyApplied.push(migration.name);
        continue;
      }
      if (previous) {
        throw new MigrationError(
          `migration ${migration.name} failed earlier and is marked unfinished in ${table}: fix the database by hand, then delete that row`,
        );
      }
      await client.query('BEGIN');
      try {
        await client.query(migration.sql);
        await client.query(
          `INSERT INTO ${quoted} (id, checksum, finished_at, migration_name, applied_steps_count, started_at) VALUES ($1, $2, now(), $3, 1, now())`,
          [randomUUID(), migration.checksum, migration.name],
        );
        await client.query('COMMIT');
      } catch (err) {
        await client.query('ROLLBACK');
        throw new MigrationRolledBackError(`migration ${migration.name} failed: ${(err as Error).message}`);
      }
      result.applied.push(migration.name);
    }
    return result;
  } finally {
    await client.end().catch(() => {});
  }
}
