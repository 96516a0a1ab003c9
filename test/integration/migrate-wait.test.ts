/**
 * migrate started before PostgreSQL accepts connections (compose's first start) waits for it
 * (MIGRATE_WAIT_SECONDS), says so once, and succeeds; without the wait it fails at once with one
 * line naming DATABASE_URL. A scratch PostgreSQL (initdb, pg_ctl) on a port of its own opens a
 * few seconds after migrate starts.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createPrivatePostgres, type PrivatePostgres } from '../../chaos/postgres.js';
import { freePort, sleep, startService } from '../support/processes.js';

describe('migrate waits for PostgreSQL (MIGRATE_WAIT_SECONDS)', () => {
  let server: PrivatePostgres;
  beforeAll(async () => {
    server = await createPrivatePostgres(path.join(mkdtempSync(path.join(tmpdir(), 'lampi-migrate-wait-')), 'pg'), await freePort());
    await server.stop();
  }, 120_000);
  afterAll(async () => {
    await server?.stop().catch(() => {});
  });

  it('without a wait, a PostgreSQL that is not up yet fails migrate at once, in one line', async () => {
    const proc = startService('migrate', { DATABASE_URL: server.url });
    expect(await proc.exited).toBe(1);
    expect(proc.output().trim().split('\n')).toEqual([
      expect.stringMatching(/^migrate: cannot reach PostgreSQL at DATABASE_URL=.*: start PostgreSQL or fix DATABASE_URL$/),
    ]);
  });

  it('with MIGRATE_WAIT_SECONDS, migrate started before PostgreSQL applies the migrations once it opens', async () => {
    const proc = startService('migrate', { DATABASE_URL: server.url, MIGRATE_WAIT_SECONDS: '120' });
    // Started only after migrate has found it missing and said it waits.
    for (let i = 0; i < 300 && !proc.output().includes('not accepting connections yet'); i++) await sleep(100);
    expect(proc.output()).toMatch(
      new RegExp(
        /^migrate: PostgreSQL at postgresql:\/\/postgres@127\.0\.0\.1:\d+\/lampi is not accepting connections yet /.source +
          /\(.*\): waiting up to 120s \(MIGRATE_WAIT_SECONDS\)$/.source,
        'm',
      ),
    );
    await sleep(3000);
    expect(proc.child.exitCode, 'migrate still waiting').toBeNull();
    await server.start();
    expect(await proc.exited, proc.output()).toBe(0);
    expect(proc.output()).toMatch(/up to date/);
    expect(proc.output().match(/not accepting connections yet/g)).toHaveLength(1);
    const client = new pg.Client({ connectionString: server.url });
    await client.connect();
    const { rows } = await client.query('SELECT count(*)::int AS n FROM _prisma_migrations WHERE finished_at IS NOT NULL');
    await client.end();
    expect(rows[0].n).toBeGreaterThan(0);
  }, 60_000);
});
