/**
 * prisma/migrations against a real PostgreSQL: they create exactly what prisma/schema.prisma
 * describes (checked against the catalog and exercised through the generated client), and the
 * runner behind `npm run migrate` is idempotent, refuses edited migrations, serialises concurrent
 * runs, and fails with one line.
 */
import { execFile } from 'node:child_process';
import { cpSync, mkdtempSync, appendFileSync, readFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { PrismaPg } from '@prisma/adapter-pg';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { Prisma, PrismaClient } from '../../src/generated/prisma/client.js';
import { MIGRATIONS as KEEN_SINK_MIGRATIONS, MIGRATIONS_TABLE as KEEN_SINK_MIGRATIONS_TABLE } from '../../src/keen-sink/server.js';
import { parseQuery, runQuery } from '../../src/keen-sink/query.js';
import { applyMigrations, listMigrations } from '../../src/shared/migrations.js';
import { createTestDatabase, PRISMA_MIGRATIONS, type TestDatabase } from '../support/database.js';
import { DJANGO_MODE_MIGRATIONS, startDjangoSite, type DjangoSite } from '../support/django.js';
import { ROOT } from '../support/processes.js';
import { MigrationError } from '../../src/shared/errors.js';

const services = inject('services');
const SCHEMA = readFileSync(path.join(ROOT, 'prisma/schema.prisma'), 'utf8');

// ---------------------------------------------------------------------------------------------
// What schema.prisma says, read from the file itself (so a field added there without a migration
// fails this test). The reader knows exactly the attributes our schema uses and refuses others.
// ---------------------------------------------------------------------------------------------

interface ExpectedColumn {
  column: string;
  type: string; // as information_schema/format_type spells it
  nullable: boolean;
  default?: string; // as pg_get_expr spells it
  unique: boolean;
  id: boolean;
}
interface ExpectedModel {
  model: string;
  table: string;
  /** The REGISTRY_SCHEMA whose migrations create (or, for Django's tables, whose site has) the table: its doc comment names `REGISTRY_SCHEMA=django`. */
  mode: 'lampi' | 'django';
  columns: ExpectedColumn[];
  indexes: string[][]; // @@index column lists (db names)
  relations: Array<{ columns: string[]; table: string; references: string[] }>;
}

function parseSchema(text: string): ExpectedModel[] {
  const models: ExpectedModel[] = [];
  const blocks = [...text.matchAll(/((?:^\/\/\/.*\n)*)^model\s+(\w+)\s*\{([\s\S]*?)^\}/gm)];
  const columnsOf = new Map<string, Map<string, string>>();
  const tableOf = new Map(blocks.map(([, , name, body]) => [name!, /@@map\("([^"]+)"\)/.exec(body!)?.[1] ?? name!]));
  for (const [, doc, model, body] of blocks) {
    const table = tableOf.get(model!)!;
    const columns: ExpectedColumn[] = [];
    const fieldToColumn = new Map<string, string>();
    const pendingIndexes: string[][] = [];
    const pendingRelations: Array<{ fields: string[]; model: string; references: string[] }> = [];
    for (const raw of body!.split('\n')) {
      const line = raw.replace(/\/\/.*$/, '').trim();
      if (!line) continue;
      if (line.startsWith('@@')) {
        const index = /^@@index\(\[([^\]]+)\]\)$/.exec(line);
        if (index) pendingIndexes.push(index[1]!.split(',').map((f) => f.trim()));
        else if (!/^@@map\("[^"]+"\)$/.test(line)) throw new Error(`schema reader does not know ${line}`);
        continue;
      }
      const m = /^(\w+)\s+(\w+)(\[\]|\?)?\s*(.*)$/.exec(line);
      if (!m) throw new Error(`schema reader cannot read ${line}`);
      const [, field, type, modifier, attrText] = m as unknown as [string, string, string, string | undefined, string];
      if (tableOf.has(type)) {
        const relation = /@relation\(fields:\s*\[([^\]]+)\],\s*references:\s*\[([^\]]+)\]\)/.exec(attrText);
        if (relation)
          pendingRelations.push({
            fields: relation[1]!.split(',').map((s) => s.trim()),
            model: type,
            references: relation[2]!.split(',').map((s) => s.trim()),
          });
        continue; // relation field: no column
      }
      const attrs = [...attrText.matchAll(/@([\w.]+)(\((?:[^()]|\([^()]*\))*\))?/g)].map(([, name, args]) => ({
        name: name!,
        args: args?.slice(1, -1),
      }));
      const column = attrs.find((a) => a.name === 'map')?.args?.replace(/"/g, '') ?? field;
      fieldToColumn.set(field, column);
      const native = attrs.find((a) => a.name.startsWith('db.'));
      const nativeType = native ? `${native.name.slice(3)}${native.args ? `(${native.args})` : ''}` : undefined;
      const pgType =
        nativeType === undefined
          ? (
              {
                Int: 'integer',
                String: 'text',
                Boolean: 'boolean',
                DateTime: 'timestamp(3) without time zone',
                BigInt: 'bigint',
                Float: 'double precision',
              } as Record<string, string>
            )[type]
          : nativeType
              .replace(/^VarChar\((\d+)\)$/, 'character varying($1)')
              .replace(/^Char\((\d+)\)$/, 'character($1)')
              .replace(/^Timestamptz\((\d+)\)$/, 'timestamp($1) with time zone')
              .replace(/^Timestamptz$/, 'timestamp with time zone');
      if (!pgType) throw new Error(`schema reader does not know type ${type}`);
      const def = attrs.find((a) => a.name === 'default')?.args;
      let pgDefault: string | undefined;
      if (def === 'autoincrement()') pgDefault = `nextval('${table}_${column}_seq'::regclass)`;
      else if (def === 'now()') pgDefault = 'CURRENT_TIMESTAMP';
      else if (def === 'true' || def === 'false') pgDefault = def;
      else if (def?.startsWith('"')) pgDefault = `'${JSON.parse(def)}'::${pgType.replace(/\(\d+\)$/, '')}`;
      else if (def !== undefined) throw new Error(`schema reader does not know @default(${def})`);
      for (const a of attrs)
        if (!['id', 'unique', 'default', 'map'].includes(a.name) && !a.name.startsWith('db.'))
          throw new Error(`schema reader does not know @${a.name}`);
      columns.push({
        column,
        type: pgType,
        nullable: modifier === '?',
        default: pgDefault,
        unique: attrs.some((a) => a.name === 'unique'),
        id: attrs.some((a) => a.name === 'id'),
      });
    }
    columnsOf.set(table, fieldToColumn);
    const col = (f: string) => fieldToColumn.get(f) ?? f;
    models.push({
      model: model!,
      table,
      mode: doc!.includes('REGISTRY_SCHEMA=django') ? 'django' : 'lampi',
      columns,
      indexes: pendingIndexes.map((fields) => fields.map(col)),
      relations: pendingRelations.map((r) => ({ columns: r.fields.map(col), table: tableOf.get(r.model)!, references: r.references })),
    });
  }
  // References are field names of the other model: resolve them to its columns.
  for (const m of models) for (const r of m.relations) r.references = r.references.map((f) => columnsOf.get(r.table)?.get(f) ?? f);
  return models;
}

async function withClient<T>(url: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

/** Every column of every table in `public` but Prisma's bookkeeping, as the catalog has it. */
async function catalogColumns(client: pg.Client) {
  const { rows } = await client.query<{ table: string; column: string; type: string; nullable: boolean; default: string | null }>(`
    SELECT c.relname AS table, a.attname AS column, format_type(a.atttypid, a.atttypmod) AS type,
           NOT a.attnotnull AS nullable, pg_get_expr(d.adbin, d.adrelid) AS default
    FROM pg_attribute a
    JOIN pg_class c ON c.oid = a.attrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped AND c.relname <> '_prisma_migrations'
    ORDER BY c.relname, a.attnum`);
  return rows;
}

const run = promisify(execFile);

/** `npm run --silent migrate` as a user runs it; only PATH/HOME plus `env` are passed. */
async function npmMigrate(env: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run('npm', ['run', '--silent', 'migrate'], {
      cwd: ROOT,
      env: { PATH: process.env.PATH!, HOME: process.env.HOME ?? '/tmp', ...env },
      timeout: 60_000,
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout: string; stderr: string };
    return { code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout, stderr: e.stderr };
  }
}

function databaseUrl(name: string): string {
  const url = new URL(services.postgres);
  url.pathname = `/${name}`;
  return url.toString();
}

async function dropDatabase(name: string): Promise<void> {
  await withClient(services.postgres, (c) => c.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`));
}

function knownError(err: unknown): Prisma.PrismaClientKnownRequestError {
  expect(err).toBeInstanceOf(Prisma.PrismaClientKnownRequestError);
  return err as Prisma.PrismaClientKnownRequestError;
}

async function rejection(promise: Promise<unknown>): Promise<Prisma.PrismaClientKnownRequestError> {
  try {
    await promise;
  } catch (err) {
    return knownError(err);
  }
  throw new Error('expected the operation to fail');
}

// ---------------------------------------------------------------------------------------------

describe('migrations create what schema.prisma describes', () => {
  const expected = parseSchema(SCHEMA).filter((m) => m.mode === 'lampi');
  let db: TestDatabase;
  let prisma: PrismaClient;

  beforeAll(async () => {
    db = await createTestDatabase(services.postgres, { migrate: true });
    prisma = new PrismaClient({ adapter: new PrismaPg({ connectionString: db.url }) });
  });
  afterAll(async () => {
    await prisma?.$disconnect();
    await db?.drop();
  });

  it('reads the two models of the schema', () => {
    expect(expected.map((m) => m.table).sort()).toEqual(['devices', 'users']);
    expect(expected.find((m) => m.table === 'devices')!.relations).toEqual([{ columns: ['user_id'], table: 'users', references: ['id'] }]);
  });

  it('has exactly the tables and columns of the schema, with their types, nullability and defaults', async () => {
    const catalog = await withClient(db.url, async (c) => {
      const tables = await c.query<{ table_name: string }>(
        `SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1`,
      );
      return { tables: tables.rows.map((r) => r.table_name), columns: await catalogColumns(c) };
    });
    expect(catalog.tables).toEqual([...expected.map((m) => m.table), '_prisma_migrations'].sort());
    const want = expected
      .flatMap((m) =>
        m.columns.map((c) => ({ table: m.table, column: c.column, type: c.type, nullable: c.nullable, default: c.default ?? null })),
      )
      .sort((a, b) => `${a.table}.${a.column}`.localeCompare(`${b.table}.${b.column}`));
    const got = [...catalog.columns].sort((a, b) => `${a.table}.${a.column}`.localeCompare(`${b.table}.${b.column}`));
    expect(got).toEqual(want);
  });

  it('has exactly the primary keys, unique constraints, indexes and foreign keys of the schema', async () => {
    const { indexes, foreignKeys } = await withClient(db.url, async (c) => {
      const indexes = await c.query<{ table: string; name: string; unique: boolean; primary: boolean; columns: string[] }>(`
        SELECT t.relname AS table, i.relname AS name, x.indisunique AS unique, x.indisprimary AS primary,
               array_agg(a.attname ORDER BY k.ord)::text[] AS columns
        FROM pg_index x
        JOIN pg_class i ON i.oid = x.indexrelid
        JOIN pg_class t ON t.oid = x.indrelid
        JOIN pg_namespace n ON n.oid = t.relnamespace AND n.nspname = 'public'
        CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, ord)
        JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum
        WHERE t.relname <> '_prisma_migrations'
        GROUP BY 1, 2, 3, 4 ORDER BY 2`);
      const foreignKeys = await c.query<{ name: string; definition: string }>(`
        SELECT conname AS name, pg_get_constraintdef(oid) AS definition FROM pg_constraint
        WHERE contype = 'f' AND connamespace = 'public'::regnamespace ORDER BY 1`);
      return { indexes: indexes.rows, foreignKeys: foreignKeys.rows };
    });
    const want = expected
      .flatMap((m) => [
        ...m.columns
          .filter((c) => c.id)
          .map((c) => ({ table: m.table, name: `${m.table}_pkey`, unique: true, primary: true, columns: [c.column] })),
        ...m.columns
          .filter((c) => c.unique)
          .map((c) => ({ table: m.table, name: `${m.table}_${c.column}_key`, unique: true, primary: false, columns: [c.column] })),
        ...m.indexes.map((cols) => ({
          table: m.table,
          name: `${m.table}_${cols.join('_')}_idx`,
          unique: false,
          primary: false,
          columns: cols,
        })),
      ])
      .sort((a, b) => a.name.localeCompare(b.name));
    expect(indexes).toEqual(want);
    // Prisma's defaults for a required relation: ON DELETE RESTRICT ON UPDATE CASCADE.
    expect(foreignKeys).toEqual(
      expected.flatMap((m) =>
        m.relations.map((r) => ({
          name: `${m.table}_${r.columns.join('_')}_fkey`,
          definition: `FOREIGN KEY (${r.columns.join(', ')}) REFERENCES ${r.table}(${r.references.join(', ')}) ON UPDATE CASCADE ON DELETE RESTRICT`,
        })),
      ),
    );
  });

  it('User: autoincrement id, defaults isActive=false and createdAt=now(), unique username (P2002)', async () => {
    const before = Date.now();
    const a = await prisma.user.create({ data: { username: 'alice' } });
    const b = await prisma.user.create({ data: { username: 'bob', isActive: true } });
    expect(a.id).toBeGreaterThan(0);
    expect(b.id).toBe(a.id + 1);
    expect(a.isActive).toBe(false);
    expect(b.isActive).toBe(true);
    expect(a.createdAt).toBeInstanceOf(Date);
    expect(a.createdAt.getTime()).toBeGreaterThanOrEqual(before - 5_000);
    expect(a.createdAt.getTime()).toBeLessThanOrEqual(Date.now() + 5_000);

    const duplicate = await rejection(prisma.user.create({ data: { username: 'alice' } }));
    expect(duplicate.code).toBe('P2002');
    expect(JSON.stringify(duplicate.meta)).toContain('username');

    // VarChar(150): 150 fits, 151 does not (P2000, value too long).
    await prisma.user.create({ data: { username: 'u'.repeat(150) } });
    expect((await rejection(prisma.user.create({ data: { username: 'u'.repeat(151) } }))).code).toBe('P2000');
  });

  it('Device: defaults name="My LAMPI" and createdAt, null bridge state, relation both ways', async () => {
    const owner = await prisma.user.create({ data: { username: 'owner-1' } });
    const device = await prisma.device.create({
      data: { deviceId: 'b827eb000001', associationCode: 'a'.repeat(32), createdByMessageId: 'job-1', user: { connect: { id: owner.id } } },
    });
    expect(device).toMatchObject({
      deviceId: 'b827eb000001',
      name: 'My LAMPI',
      associationCode: 'a'.repeat(32),
      userId: owner.id,
      createdByMessageId: 'job-1',
      bridgeConnected: null,
      bridgeStateAt: null,
      bridgeStateMessageId: null,
    });
    expect(device.createdAt).toBeInstanceOf(Date);

    const withDevices = await prisma.user.findUniqueOrThrow({ where: { username: 'owner-1' }, include: { devices: true } });
    expect(withDevices.devices.map((d) => d.deviceId)).toEqual(['b827eb000001']);
    const withOwner = await prisma.device.findUniqueOrThrow({ where: { associationCode: 'a'.repeat(32) }, include: { user: true } });
    expect(withOwner.user.username).toBe('owner-1');

    // Nullable bridge state round-trips, Timestamptz(3) keeps milliseconds.
    const at = new Date('2026-11-28T10:11:12.345Z');
    const updated = await prisma.device.update({
      where: { deviceId: 'b827eb000001' },
      data: { bridgeConnected: true, bridgeStateAt: at, bridgeStateMessageId: 'job-2', name: 'Kitchen' },
    });
    expect(updated).toMatchObject({ bridgeConnected: true, bridgeStateMessageId: 'job-2', name: 'Kitchen' });
    expect(updated.bridgeStateAt?.toISOString()).toBe(at.toISOString());

    // Reassigning a lamp to another user (the association flow).
    const other = await prisma.user.create({ data: { username: 'owner-2', isActive: true } });
    await prisma.device.update({ where: { deviceId: 'b827eb000001' }, data: { userId: other.id } });
    expect((await prisma.user.findUniqueOrThrow({ where: { id: other.id }, include: { devices: true } })).devices).toHaveLength(1);
  });

  it('the defaults live in the database too, not only in the client (a raw INSERT gets them)', async () => {
    // Prisma's client fills static defaults in itself; SQL written by hand (or another tool) relies on the columns.
    await prisma.$executeRaw`INSERT INTO users (username) VALUES ('raw-user')`;
    const user = await prisma.user.findUniqueOrThrow({ where: { username: 'raw-user' } });
    expect(user.isActive).toBe(false);
    expect(user.createdAt).toBeInstanceOf(Date);
    await prisma.$executeRaw`INSERT INTO devices (device_id, association_code, user_id, created_by_message_id)
      VALUES ('b827eb0000ff', ${'r'.repeat(32)}, ${user.id}, 'job-raw')`;
    const device = await prisma.device.findUniqueOrThrow({ where: { deviceId: 'b827eb0000ff' } });
    expect(device).toMatchObject({ name: 'My LAMPI', bridgeConnected: null, bridgeStateAt: null, bridgeStateMessageId: null });
    expect(device.createdAt).toBeInstanceOf(Date);
  });

  it('Device: duplicate device id and duplicate association code fail with P2002', async () => {
    const owner = await prisma.user.create({ data: { username: 'owner-3' } });
    const base = { associationCode: 'c'.repeat(32), createdByMessageId: 'job-3', userId: owner.id };
    await prisma.device.create({ data: { deviceId: 'b827eb000003', ...base } });

    const sameCode = await rejection(prisma.device.create({ data: { ...base, deviceId: 'b827eb000004' } }));
    expect(sameCode.code).toBe('P2002');
    expect(JSON.stringify(sameCode.meta)).toContain('association_code');

    const sameId = await rejection(prisma.device.create({ data: { ...base, deviceId: 'b827eb000003', associationCode: 'd'.repeat(32) } }));
    expect(sameId.code).toBe('P2002');
  });

  it('Device: column widths VarChar(12) device id, Char(32) code, VarChar(50) name, VarChar(64) message ids', async () => {
    const owner = await prisma.user.create({ data: { username: 'owner-4' } });
    const ok = {
      deviceId: 'b827eb000005',
      associationCode: 'e'.repeat(32),
      createdByMessageId: 'j'.repeat(64),
      userId: owner.id,
      name: 'n'.repeat(50),
    };
    await prisma.device.create({ data: ok });
    const tooLong = [
      { ...ok, deviceId: 'b827eb0000061' },
      { ...ok, deviceId: 'b827eb000007', associationCode: 'f'.repeat(33) },
      { ...ok, deviceId: 'b827eb000008', associationCode: 'g'.repeat(32), name: 'n'.repeat(51) },
      { ...ok, deviceId: 'b827eb000009', associationCode: 'h'.repeat(32), createdByMessageId: 'j'.repeat(65) },
    ];
    for (const data of tooLong) expect((await rejection(prisma.device.create({ data }))).code).toBe('P2000');
    // Char(32) pads a shorter code: the column is fixed-width, as the schema says.
    const short = await prisma.device.create({ data: { ...ok, deviceId: 'b827eb00000a', associationCode: 'short' } });
    expect(short.associationCode).toBe('short'.padEnd(32, ' '));
  });

  it('Device → User foreign key is enforced: no unknown owner, no deleting an owner with lamps (P2003)', async () => {
    const orphan = await rejection(
      prisma.device.create({
        data: { deviceId: 'b827eb00000b', associationCode: 'k'.repeat(32), createdByMessageId: 'job-5', userId: 2_000_000_000 },
      }),
    );
    expect(orphan.code).toBe('P2003');

    const owner = await prisma.user.create({ data: { username: 'owner-5' } });
    await prisma.device.create({
      data: { deviceId: 'b827eb00000c', associationCode: 'm'.repeat(32), createdByMessageId: 'job-6', userId: owner.id },
    });
    expect((await rejection(prisma.user.delete({ where: { id: owner.id } }))).code).toBe('P2003');
    // Deleting the lamp first frees the owner.
    await prisma.device.delete({ where: { deviceId: 'b827eb00000c' } });
    await prisma.user.delete({ where: { id: owner.id } });
  });

  it("records the migration in Prisma's own bookkeeping table with its checksum", async () => {
    const files = await listMigrations(PRISMA_MIGRATIONS);
    const rows = await withClient(
      db.url,
      async (c) =>
        (
          await c.query(
            `SELECT migration_name, checksum, finished_at, rolled_back_at, applied_steps_count FROM _prisma_migrations ORDER BY migration_name`,
          )
        ).rows,
    );
    expect(
      rows.map((r) => ({
        name: r.migration_name,
        checksum: r.checksum,
        done: r.finished_at !== null,
        rolledBack: r.rolled_back_at,
        steps: r.applied_steps_count,
      })),
    ).toEqual(files.map((f) => ({ name: f.name, checksum: f.checksum, done: true, rolledBack: null, steps: 1 })));
  });
});

describe('the migration runner', () => {
  const cleanup: Array<() => Promise<void>> = [];
  afterAll(async () => {
    for (const fn of cleanup.reverse()) await fn().catch(() => {});
  });
  async function freshDatabase(): Promise<TestDatabase> {
    const db = await createTestDatabase(services.postgres, { migrate: false });
    cleanup.push(() => db.drop());
    return db;
  }
  function copyOfMigrations(): string {
    const dir = mkdtempSync(path.join(tmpdir(), 'lampi-migrations-'));
    cpSync(PRISMA_MIGRATIONS, dir, { recursive: true });
    return dir;
  }
  const names = async () => (await listMigrations(PRISMA_MIGRATIONS)).map((m) => m.name);

  it('a second run is a no-op', async () => {
    const db = await freshDatabase();
    const first = await applyMigrations({ databaseUrl: db.url, directory: PRISMA_MIGRATIONS });
    expect(first).toEqual({ applied: await names(), alreadyApplied: [] });
    const second = await applyMigrations({ databaseUrl: db.url, directory: PRISMA_MIGRATIONS });
    expect(second).toEqual({ applied: [], alreadyApplied: await names() });
    const count = await withClient(db.url, async (c) => (await c.query('SELECT count(*)::int AS n FROM _prisma_migrations')).rows[0].n);
    expect(count).toBe((await names()).length);
  });

  it('applies only migrations added since the last run', async () => {
    const db = await freshDatabase();
    const dir = copyOfMigrations();
    await applyMigrations({ databaseUrl: db.url, directory: dir });
    mkdirSync(path.join(dir, '29990101000000_add_note'));
    writeFileSync(path.join(dir, '29990101000000_add_note', 'migration.sql'), 'ALTER TABLE "devices" ADD COLUMN "note" TEXT;\n');
    expect(await applyMigrations({ databaseUrl: db.url, directory: dir })).toEqual({
      applied: ['29990101000000_add_note'],
      alreadyApplied: await names(),
    });
  });

  it("an upgrade from the first migration keeps each lamp's message ids, under the renamed columns", async () => {
    const db = await freshDatabase();
    const [first] = await listMigrations(PRISMA_MIGRATIONS);
    const dir = mkdtempSync(path.join(tmpdir(), 'lampi-migrations-'));
    cpSync(path.join(PRISMA_MIGRATIONS, first!.name), path.join(dir, first!.name), { recursive: true });
    await applyMigrations({ databaseUrl: db.url, directory: dir });
    await withClient(db.url, (c) =>
      c.query(`
        INSERT INTO users (username) VALUES ('owner');
        INSERT INTO devices (device_id, association_code, user_id, created_by_job_id, bridge_state_job_id)
        VALUES ('b827eb000001', '${'a'.repeat(32)}', (SELECT id FROM users), 'm1', 'm2')`),
    );
    await applyMigrations({ databaseUrl: db.url, directory: PRISMA_MIGRATIONS });
    const rows = await withClient(
      db.url,
      async (c) => (await c.query('SELECT created_by_message_id, bridge_state_message_id FROM devices')).rows,
    );
    expect(rows).toEqual([{ created_by_message_id: 'm1', bridge_state_message_id: 'm2' }]);
  });

  it('refuses a migration edited after it was applied (checksum differs), and changes nothing', async () => {
    const db = await freshDatabase();
    const dir = copyOfMigrations();
    await applyMigrations({ databaseUrl: db.url, directory: dir });
    const [first] = await names();
    appendFileSync(path.join(dir, first!, 'migration.sql'), '\n-- an innocent-looking edit\n');
    await expect(applyMigrations({ databaseUrl: db.url, directory: dir })).rejects.toThrow(MigrationError);
    await expect(applyMigrations({ databaseUrl: db.url, directory: dir })).rejects.toThrow(
      `migration ${first} was edited after it was applied (checksum differs)`,
    );
  });

  it('rolls back a failing migration completely and records nothing for it', async () => {
    const db = await freshDatabase();
    const dir = copyOfMigrations();
    mkdirSync(path.join(dir, '29990101000000_broken'));
    writeFileSync(
      path.join(dir, '29990101000000_broken', 'migration.sql'),
      'CREATE TABLE "half_done" (id int);\nALTER TABLE "no_such_table" ADD COLUMN x int;\n',
    );
    await expect(applyMigrations({ databaseUrl: db.url, directory: dir })).rejects.toThrow(
      /migration 29990101000000_broken failed: relation "no_such_table" does not exist/,
    );
    const state = await withClient(db.url, async (c) => ({
      rows: (await c.query('SELECT migration_name FROM _prisma_migrations ORDER BY 1')).rows.map((r) => r.migration_name),
      halfDone: (await c.query(`SELECT to_regclass('public.half_done') AS t`)).rows[0].t,
    }));
    expect(state).toEqual({ rows: await names(), halfDone: null });
  });

  it('two concurrent runners do not both apply: one applies, the other finds it done', async () => {
    const db = await freshDatabase();
    const runs = await Promise.all(Array.from({ length: 4 }, () => applyMigrations({ databaseUrl: db.url, directory: PRISMA_MIGRATIONS })));
    const all = await names();
    expect(runs.flatMap((r) => r.applied).sort()).toEqual(all);
    expect(runs.filter((r) => r.applied.length > 0)).toHaveLength(1);
    for (const r of runs) if (r.applied.length === 0) expect(r.alreadyApplied).toEqual(all);
    const rows = await withClient(db.url, async (c) => (await c.query('SELECT migration_name FROM _prisma_migrations')).rows);
    expect(rows).toHaveLength(all.length);
  });
});

describe("keen-sink's migrations upgrade a store in place", () => {
  let db: TestDatabase;
  let pool: pg.Pool;
  beforeAll(async () => {
    db = await createTestDatabase(services.postgres, { migrate: false });
    pool = new pg.Pool({ connectionString: db.url, max: 2 });
  });
  afterAll(async () => {
    await pool?.end();
    await db?.drop();
  });

  it('a store of the first schema, with events, gets the device_id indexes and a rollup of the events it already holds', async () => {
    const all = await listMigrations(KEEN_SINK_MIGRATIONS);
    expect(all.map((m) => m.name)).toEqual(['20261128120000_keen_events', '20261203120000_keen_query_speed']);
    const first = mkdtempSync(path.join(tmpdir(), 'keen-sink-migrations-'));
    cpSync(path.join(KEEN_SINK_MIGRATIONS, all[0]!.name), path.join(first, all[0]!.name), { recursive: true });
    await applyMigrations({ databaseUrl: db.url, directory: first, table: KEEN_SINK_MIGRATIONS_TABLE });
    // 3 lamps (one event without a device_id) over 3 days, written before the upgrade.
    await pool.query(`
      INSERT INTO keen_events (id, project_id, collection, keen_timestamp, keen_created_at, event)
      SELECT 'e' || g, 'p', 'devicestate', ts, ts,
             CASE WHEN g = 7 THEN '{}'::jsonb ELSE jsonb_build_object('device_id', 'lamp-' || (g % 3)) END
        FROM generate_series(1, 200) AS g, LATERAL (SELECT TIMESTAMPTZ '2026-11-01 00:00:00+00' + g * interval '21 minutes' AS ts) AS t`);
    const upgrade = await applyMigrations({ databaseUrl: db.url, directory: KEEN_SINK_MIGRATIONS, table: KEEN_SINK_MIGRATIONS_TABLE });
    expect(upgrade.applied).toEqual([all[1]!.name]);

    const { rows: indexes } = await pool.query<{ name: string }>(
      `SELECT indexname AS name FROM pg_indexes WHERE tablename = 'keen_events' ORDER BY 1`,
    );
    expect(indexes.map((i) => i.name)).toEqual([
      'keen_events_collection_timestamp_idx',
      'keen_events_device_id_array_idx',
      'keen_events_device_id_idx',
      'keen_events_event_idx',
      'keen_events_pkey',
    ]);
    const { rows: rollup } = await pool.query<{ rows: number; hours: number; values: string[] }>(
      `SELECT count(*)::int AS rows, count(DISTINCT hour)::int AS hours, array_agg(DISTINCT value #>> '{}') AS values FROM keen_property_hours`,
    );
    // 200 events 21 minutes apart, from 00:21 on, touch 71 hours; a row per lamp and hour it was seen.
    const { rows: seen } = await pool.query<{ n: number }>(
      `SELECT count(DISTINCT (event -> 'device_id', date_trunc('hour', keen_timestamp AT TIME ZONE ` +
        `'UTC')))::int AS n FROM keen_events WHERE event ? 'device_id'`,
    );
    expect(rollup[0]!.values).toEqual(['lamp-0', 'lamp-1', 'lamp-2']);
    expect(rollup[0]!.hours).toBe(71);
    expect(rollup[0]!.rows).toBe(seen[0]!.n);
    expect(rollup[0]!.rows).toBeGreaterThan(71);

    // Events written after the upgrade are rolled up too, and answers match the plain SQL.
    await pool.query(`INSERT INTO keen_events (id, project_id, collection, keen_timestamp, keen_created_at, event)
      VALUES ('late', 'p', 'devicestate', '2026-11-10T05:30:00Z', now(), '{"device_id": "lamp-9"}')`);
    const params = {
      event_collection: 'devicestate',
      target_property: 'device_id',
      interval: 'daily',
      timeframe: { start: '2026-11-01T00:00:00Z', end: '2026-11-11T00:00:00Z' },
    };
    const parsed = parseQuery('count_unique', params);
    const fast = (await runQuery(pool, 'p', parsed)) as Array<{ value: number }>;
    expect(fast).toEqual(await runQuery(pool, 'p', parsed, { plain: true }));
    expect(fast.map((day) => day.value)).toEqual([3, 3, 3, 0, 0, 0, 0, 0, 0, 1]);
  });
});

describe('npm run migrate', () => {
  const created: string[] = [];
  afterAll(async () => {
    for (const name of created) await dropDatabase(name).catch(() => {});
  });
  const newName = () => {
    const name = `lampi_test_cli_${Math.random().toString(16).slice(2, 10)}`;
    created.push(name);
    return name;
  };

  it('creates a missing database, applies the migrations one line each, exits 0; then is a no-op', async () => {
    const name = newName();
    const first = await npmMigrate({ DATABASE_URL: databaseUrl(name) });
    expect(first).toMatchObject({ code: 0, stderr: '' });
    const lines = first.stdout.trim().split('\n');
    expect(lines[0]).toBe(`migrate: database "${name}" did not exist: created it`);
    expect(lines.slice(1, -1)).toEqual((await listMigrations(PRISMA_MIGRATIONS)).map((m) => `migrate: applied ${m.name}`));
    expect(lines.at(-1)).toMatch(/^migrate: .* is up to date \(\d+ applied now, 0 already applied\)$/);

    const second = await npmMigrate({ DATABASE_URL: databaseUrl(name) });
    expect(second).toMatchObject({ code: 0, stderr: '' });
    expect(second.stdout.trim()).toMatch(/^migrate: nothing to apply: all \d+ migrations were already applied to /);
  });

  it('two concurrent `npm run migrate` on a missing database: both exit 0, migrations applied once', async () => {
    const name = newName();
    const [a, b] = await Promise.all([npmMigrate({ DATABASE_URL: databaseUrl(name) }), npmMigrate({ DATABASE_URL: databaseUrl(name) })]);
    expect([a.code, b.code, a.stderr, b.stderr]).toEqual([0, 0, '', '']);
    const applied = `${a.stdout}${b.stdout}`.split('\n').filter((l) => l.startsWith('migrate: applied '));
    expect(applied).toEqual((await listMigrations(PRISMA_MIGRATIONS)).map((m) => `migrate: applied ${m.name}`));
  });

  it('unreachable DATABASE_URL: one line naming it (password masked), exit 1', async () => {
    const result = await npmMigrate({ DATABASE_URL: 'postgresql://lampi:hunter2-secret@127.0.0.1:1/lampi' });
    expect(result.code).toBe(1);
    expect(result.stdout).toBe('');
    expect(result.stderr).toBe(
      'migrate: cannot reach PostgreSQL at DATABASE_URL=postgresql://lampi:***@127.0.0.1:1/lampi (ECONNREFUSED): start PostgreSQL or fix DATABASE_URL\n',
    );
    expect(result.stderr).not.toContain('hunter2');
  });

  it('missing DATABASE_URL: one line, exit 1', async () => {
    const result = await npmMigrate({});
    expect(result).toEqual({ code: 1, stdout: '', stderr: 'migrate: invalid configuration: DATABASE_URL is required\n' });
  });

  it('DATABASE_URL that is not a PostgreSQL URL: one line, exit 1', async () => {
    const result = await npmMigrate({ DATABASE_URL: 'mysql://root:pw@127.0.0.1/lampi' });
    expect(result).toEqual({
      code: 1,
      stdout: '',
      stderr: 'migrate: invalid configuration: DATABASE_URL must be a URL starting with postgres:// or postgresql://\n',
    });
  });

  it('an edited migration is refused with one line naming it, exit 1', async () => {
    const name = newName();
    expect((await npmMigrate({ DATABASE_URL: databaseUrl(name) })).code).toBe(0);
    const [first] = await listMigrations(PRISMA_MIGRATIONS);
    // Same as editing the file: the recorded checksum no longer matches it.
    await withClient(databaseUrl(name), (c) =>
      c.query(`UPDATE _prisma_migrations SET checksum = $1 WHERE migration_name = $2`, ['0'.repeat(64), first!.name]),
    );
    const result = await npmMigrate({ DATABASE_URL: databaseUrl(name) });
    expect(result).toEqual({
      code: 1,
      stdout: '',
      stderr: `migrate: migration ${first!.name} was edited after it was applied (checksum differs): restore the file, add a new migration instead\n`,
    });
  });

  it('a migration that fails against the database: one line naming the migration, exit 1', async () => {
    const name = newName();
    await withClient(services.postgres, (c) => c.query(`CREATE DATABASE "${name}"`));
    // A hand-made table in the way: the first migration's CREATE TABLE "users" fails.
    await withClient(databaseUrl(name), (c) => c.query('CREATE TABLE users (id int)'));
    const result = await npmMigrate({ DATABASE_URL: databaseUrl(name) });
    const [first] = await listMigrations(PRISMA_MIGRATIONS);
    expect(result.code).toBe(1);
    expect(result.stdout).toBe('');
    expect(result.stderr).toBe(
      `migrate: migration ${first!.name} failed: relation "users" already exists; nothing of it was ` +
        `applied: fix the database or the migration, then run migrate again\n`,
    );
  });
});

describe("REGISTRY_SCHEMA=django: Django's migrate and prisma/django-migrations give what schema.prisma describes", () => {
  const expected = parseSchema(SCHEMA).filter((m) => m.mode === 'django');
  let site: DjangoSite;
  let djangoTables: string[];
  let prisma: PrismaClient;

  beforeAll(async () => {
    site = await startDjangoSite(services.postgres, services.mqtt);
    djangoTables = await withClient(site.db.url, async (c) =>
      (await c.query<{ t: string }>(`SELECT tablename AS t FROM pg_tables WHERE schemaname = 'public' ORDER BY 1`)).rows.map((r) => r.t),
    );
    await applyMigrations({ databaseUrl: site.db.url, directory: DJANGO_MODE_MIGRATIONS });
    prisma = new PrismaClient({ adapter: new PrismaPg({ connectionString: site.db.url }) });
  });
  afterAll(async () => {
    await prisma?.$disconnect();
    await site?.drop();
  });

  it("reads Django's two tables and our bookkeeping; Django's are the site's, ours are exactly what our migrations add", async () => {
    expect(expected.map((m) => m.table).sort()).toEqual(['auth_user', 'ingest_lamps', 'lampi_lampi']);
    const ours = expected.filter((m) => !djangoTables.includes(m.table)).map((m) => m.table);
    expect(ours).toEqual(['ingest_lamps']);
    const after = await withClient(site.db.url, async (c) =>
      (await c.query<{ t: string }>(`SELECT tablename AS t FROM pg_tables WHERE schemaname = 'public' ORDER BY 1`)).rows.map((r) => r.t),
    );
    expect(after).toEqual([...djangoTables, ...ours, '_prisma_migrations'].sort());
  });

  it("every model has exactly its table's columns, types, nullability and defaults (Django keeps none in the database)", async () => {
    const tables = new Set(expected.map((m) => m.table));
    const columns = (await withClient(site.db.url, catalogColumns)).filter((c) => tables.has(c.table));
    const key = (r: { table: string; column: string }) => `${r.table}.${r.column}`;
    const want = expected.flatMap((m) =>
      m.columns.map((c) => ({ table: m.table, column: c.column, type: c.type, nullable: c.nullable, default: c.default ?? null })),
    );
    expect([...columns].sort((a, b) => key(a).localeCompare(key(b)))).toEqual(want.sort((a, b) => key(a).localeCompare(key(b))));
  });

  it('primary keys, unique columns, indexes and the lamp → user foreign key are there (Django names its own)', async () => {
    const { indexes, foreignKeys } = await withClient(site.db.url, async (c) => ({
      indexes: (
        await c.query<{ table: string; unique: boolean; primary: boolean; columns: string[] }>(`
        SELECT t.relname AS table, x.indisunique AS unique, x.indisprimary AS primary, array_agg(a.attname ORDER BY k.ord)::text[] AS columns
        FROM pg_index x JOIN pg_class t ON t.oid = x.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace AND n.nspname = 'public'
        CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, ord) JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum
        GROUP BY x.indexrelid, 1, 2, 3`)
      ).rows,
      foreignKeys: (
        await c.query<{ table: string; definition: string }>(
          `SELECT conrelid::regclass::text AS table, pg_get_constraintdef(oid) AS definition FROM pg_constraint WHERE contype = 'f'`,
        )
      ).rows,
    }));
    for (const m of expected) {
      const of = indexes.filter((i) => i.table === m.table);
      for (const c of m.columns.filter((c) => c.id))
        expect(of).toContainEqual({ table: m.table, unique: true, primary: true, columns: [c.column] });
      for (const c of m.columns.filter((c) => c.unique))
        expect(of).toContainEqual({ table: m.table, unique: true, primary: false, columns: [c.column] });
      for (const cols of m.indexes) expect(of).toContainEqual({ table: m.table, unique: false, primary: false, columns: cols });
      for (const r of m.relations) {
        expect(foreignKeys.filter((f) => f.table === m.table).map((f) => f.definition)).toContainEqual(
          expect.stringContaining(`FOREIGN KEY (${r.columns.join(', ')}) REFERENCES ${r.table}(${r.references.join(', ')})`),
        );
      }
    }
    // Nothing of ours points at Django's tables: the site deletes lamps without asking us.
    expect(foreignKeys.filter((f) => f.table === 'ingest_lamps')).toEqual([]);
  });

  it('the client writes through the models what Django reads back', async () => {
    const user = await prisma.authUser.create({
      data: {
        username: 'prisma-made',
        password: '!x',
        isSuperuser: false,
        firstName: '',
        lastName: '',
        email: '',
        isStaff: false,
        isActive: true,
        dateJoined: new Date(),
      },
    });
    await prisma.lampi.create({
      data: { deviceId: 'b827eb00d1a0', name: 'Desk', associationCode: 'f'.repeat(32), createdAt: new Date(), userId: user.id },
    });
    await prisma.ingestLamp.create({ data: { deviceId: 'b827eb00d1a0', associationCode: 'f'.repeat(32), bridgeConnected: true } });
    expect(
      await site.python(`l = Lampi.objects.get(device_id='b827eb00d1a0')\nemit([l.name, l.user.username, l.association_code])`),
    ).toEqual(['Desk', 'prisma-made', 'f'.repeat(32)]);
    expect(
      (await prisma.lampi.findUniqueOrThrow({ where: { associationCode: 'f'.repeat(32) }, include: { user: true } })).user.username,
    ).toBe('prisma-made');
  });
});
