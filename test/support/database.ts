import { randomBytes } from 'node:crypto';
import path from 'node:path';
import pg from 'pg';
import { applyMigrations } from '../../src/shared/migrations.js';

export const PRISMA_MIGRATIONS = path.resolve(import.meta.dirname, '../../prisma/migrations');

export interface TestDatabase {
  url: string;
  name: string;
  drop(): Promise<void>;
}

/** A fresh database, migrated unless told otherwise, dropped by `drop()`. */
export async function createTestDatabase(adminUrl: string, { migrate = true } = {}): Promise<TestDatabase> {
  const name = `lampi_test_${randomBytes(4).toString('hex')}`;
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${name}`);
  await admin.end();
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  if (migrate) await applyMigrations({ databaseUrl: url.toString(), directory: PRISMA_MIGRATIONS });
  return {
    url: url.toString(),
    name,
    async drop() {
      const client = new pg.Client({ connectionString: adminUrl });
      await client.connect();
      await client.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await client.end();
    },
  };
}
