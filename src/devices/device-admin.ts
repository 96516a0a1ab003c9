/**
 * What an operator does to our own registry (`REGISTRY_SCHEMA=lampi`: the `users` and `devices`
 * tables): read lamps, give a lamp to a user, delete a lamp, bring in a fleet. Each change is
 * one transaction: an import that fails on one row leaves the registry as it was.
 */
import { PrismaPg } from '@prisma/adapter-pg';
import { PrismaClient } from '../generated/prisma/client.js';
import { checkConnection, MISSING_REGISTRY_DATABASE } from '../shared/postgres.js';
import type { FleetRow, RowError } from './fleet-file.js';
import { LampiError, StartupError } from '../shared/errors.js';
import { safeUrl } from '../shared/redact.js';

/** `created_by_message_id` of an imported lamp: never a message id, so no connect counts as its creation. */
export const IMPORTED_BY = 'import';

/** Ids per query: a large fleet stays far below PostgreSQL's 65,535 parameters per statement. */
const CHUNK = 5_000;

export interface DeviceAdminOptions {
  databaseUrl: string;
  /** DEFAULT_USER: the owner of parked lamps. */
  defaultUser: string;
}

export interface LampRecord {
  deviceId: string;
  name: string;
  owner: string;
  ownerActive: boolean;
  /** Owned by the default user: nobody has claimed it. */
  parked: boolean;
  associationCode: string;
  createdAt: Date;
  /** The message whose bridge connect created it, or IMPORTED_BY. */
  createdBy: string;
  /** null: no bridge state recorded since the lamp was imported. */
  bridgeConnected: boolean | null;
  bridgeStateAt: Date | null;
  bridgeStateMessageId: string | null;
}

export interface Claim {
  lamp: LampRecord;
  /** The owner before the claim (the default user for a parked lamp). */
  previousOwner: string;
  userCreated: boolean;
}

export interface KeptRow {
  row: FleetRow;
  /** How the registry's lamp differs from the file's row; empty when they agree. */
  differences: string[];
}

export type ImportResult = { ok: true; added: FleetRow[]; kept: KeptRow[]; usersCreated: string[] } | { ok: false; errors: RowError[] };

/** Lamps of the file were registered by someone else while the import ran: the import rolls back and reports it as a row error. */
export class ImportConflict extends LampiError {
  override name = 'ImportConflict';
  readonly code = 'LAMPI_IMPORT_CONFLICT';
}

const SELECT = {
  deviceId: true,
  name: true,
  associationCode: true,
  createdAt: true,
  createdByMessageId: true,
  bridgeConnected: true,
  bridgeStateAt: true,
  bridgeStateMessageId: true,
  user: { select: { username: true, isActive: true } },
} as const;

export class DeviceAdmin {
  private readonly prisma: InstanceType<typeof PrismaClient>;

  constructor(private readonly options: DeviceAdminOptions) {
    this.prisma = new PrismaClient({
      adapter: new PrismaPg({ connectionString: options.databaseUrl, max: 2, connectionTimeoutMillis: 5_000 }),
    });
  }

  /** One line naming what to fix when PostgreSQL or the registry's tables are not there. */
  async check(): Promise<void> {
    const where = `DATABASE_URL=${safeUrl(this.options.databaseUrl)}`;
    await checkConnection(this.options.databaseUrl, { missingDatabase: MISSING_REGISTRY_DATABASE });
    try {
      await this.prisma.$queryRaw`SELECT 1 FROM devices, users LIMIT 0`;
    } catch {
      throw new StartupError(`the database at ${where} has no devices and users tables: run \`npm run migrate\` first`);
    }
  }

  async list(): Promise<LampRecord[]> {
    const rows = await this.prisma.device.findMany({ select: SELECT, orderBy: { deviceId: 'asc' } });
    return rows.map((row) => this.record(row));
  }

  async show(deviceId: string): Promise<LampRecord | undefined> {
    const row = await this.prisma.device.findUnique({ where: { deviceId }, select: SELECT });
    return row ? this.record(row) : undefined;
  }

  /**
   * The lamp with this code becomes `username`'s; a user of that name is created (active) when
   * there is none. Undefined when no lamp has the code.
   */
  async claim(code: string, username: string): Promise<Claim | undefined> {
    return this.prisma.$transaction(async (tx) => {
      // Locked: a concurrent claim or delete of the same lamp waits for this one.
      const [locked] = await tx.$queryRaw<
        Array<{ device_id: string }>
      >`SELECT device_id FROM devices WHERE association_code = ${code} FOR UPDATE`;
      if (!locked) return undefined;
      const before = (await tx.device.findUnique({ where: { deviceId: locked.device_id }, select: SELECT }))!;
      const existing = await tx.user.findUnique({ where: { username }, select: { id: true } });
      const user =
        existing ?? (await tx.user.upsert({ where: { username }, create: { username, isActive: true }, update: {}, select: { id: true } }));
      const after = await tx.device.update({ where: { deviceId: locked.device_id }, data: { userId: user.id }, select: SELECT });
      return { lamp: this.record(after), previousOwner: before.user.username, userCreated: !existing };
    });
  }

  /** Removes the lamp; its next bridge connect registers it again, parked, with a new code. */
  async delete(deviceId: string): Promise<LampRecord | undefined> {
    const [rows] = await this.prisma.$transaction([
      this.prisma.device.findMany({ where: { deviceId }, select: SELECT }),
      this.prisma.device.deleteMany({ where: { deviceId } }),
    ]);
    return rows[0] ? this.record(rows[0]) : undefined;
  }

  /**
   * Adds the file's lamps that the registry does not have, creating their owners (the default
   * user inactive, as the worker creates it; every other owner active). A lamp the registry
   * already has is kept as registered: an import never overwrites a claim or a code a lamp
   * was told. All of it, or none: any row that cannot be added fails the whole import.
   */
  async import(rows: FleetRow[]): Promise<ImportResult> {
    try {
      return await this.prisma.$transaction(
        async (tx) => {
          const byDevice = new Map<string, { associationCode: string; name: string; owner: string }>();
          const byCode = new Map<string, string>();
          for (const ids of chunks(rows.map((r) => r.deviceId))) {
            for (const d of await tx.device.findMany({
              where: { deviceId: { in: ids } },
              select: { deviceId: true, associationCode: true, name: true, user: { select: { username: true } } },
            })) {
              byDevice.set(d.deviceId, { associationCode: d.associationCode, name: d.name, owner: d.user.username });
            }
          }
          for (const codes of chunks(rows.map((r) => r.code))) {
            for (const d of await tx.device.findMany({
              where: { associationCode: { in: codes } },
              select: { deviceId: true, associationCode: true },
            }))
              byCode.set(d.associationCode, d.deviceId);
          }
          const added: FleetRow[] = [];
          const kept: KeptRow[] = [];
          const errors: RowError[] = [];
          for (const row of rows) {
            const held = byDevice.get(row.deviceId);
            const holder = byCode.get(row.code);
            if (held) {
              const differences = [
                held.owner !== row.owner ? `owner ${held.owner}, the file says ${row.owner}` : '',
                held.associationCode !== row.code ? 'another code than the file' : '',
                row.name !== undefined && held.name !== row.name
                  ? `name ${JSON.stringify(held.name)}, the file says ${JSON.stringify(row.name)}`
                  : '',
              ].filter(Boolean);
              kept.push({ row, differences });
            } else if (holder !== undefined) {
              errors.push({
                line: row.line,
                reason: `its code already belongs to lamp ${holder} in the registry (every lamp's code is its own)`,
              });
            } else {
              added.push(row);
            }
          }
          if (errors.length > 0) return { ok: false, errors };

          const owners = [...new Set(added.map((r) => r.owner))];
          const userIds = new Map<string, number>();
          for (const names of chunks(owners))
            for (const u of await tx.user.findMany({ where: { username: { in: names } }, select: { id: true, username: true } }))
              userIds.set(u.username, u.id);
          const usersCreated = owners.filter((name) => !userIds.has(name));
          for (const names of chunks(usersCreated)) {
            // Another process may create the default user at the same moment: theirs is as good.
            await tx.user.createMany({
              data: names.map((username) => ({ username, isActive: username !== this.options.defaultUser })),
              skipDuplicates: true,
            });
            for (const u of await tx.user.findMany({ where: { username: { in: names } }, select: { id: true, username: true } }))
              userIds.set(u.username, u.id);
          }
          for (const batch of chunks(added)) {
            const inserted = await tx.device.createManyAndReturn({
              data: batch.map((r) => ({
                deviceId: r.deviceId,
                associationCode: r.code,
                userId: userIds.get(r.owner)!,
                createdByMessageId: IMPORTED_BY,
                ...(r.name !== undefined ? { name: r.name } : {}),
              })),
              skipDuplicates: true,
              select: { deviceId: true },
            });
            if (inserted.length < batch.length) {
              const got = new Set(inserted.map((d) => d.deviceId));
              const raced = batch.filter((r) => !got.has(r.deviceId)).map((r) => r.deviceId);
              throw new ImportConflict(
                `${raced.length} lamp${raced.length === 1 ? '' : 's'} ` +
                  `(${raced.slice(0, 5).join(', ')}${raced.length > 5 ? ', …' : ''}) were registered by someone else ` +
                  `while the import ran (is a worker running?): nothing was imported; run the import again, and those ` +
                  `lamps will be kept as registered`,
              );
            }
          }
          return { ok: true, added, kept, usersCreated };
        },
        { timeout: 600_000, maxWait: 10_000 },
      );
    } catch (err) {
      if (err instanceof ImportConflict) return { ok: false, errors: [{ line: 0, reason: err.message }] };
      throw err;
    }
  }

  async close(): Promise<void> {
    await this.prisma.$disconnect();
  }

  private record(row: {
    deviceId: string;
    name: string;
    associationCode: string;
    createdAt: Date;
    createdByMessageId: string;
    bridgeConnected: boolean | null;
    bridgeStateAt: Date | null;
    bridgeStateMessageId: string | null;
    user: { username: string; isActive: boolean };
  }): LampRecord {
    return {
      deviceId: row.deviceId,
      name: row.name,
      owner: row.user.username,
      ownerActive: row.user.isActive,
      parked: row.user.username === this.options.defaultUser,
      associationCode: row.associationCode,
      createdAt: row.createdAt,
      createdBy: row.createdByMessageId,
      bridgeConnected: row.bridgeConnected,
      bridgeStateAt: row.bridgeStateAt,
      bridgeStateMessageId: row.bridgeStateMessageId,
    };
  }
}

function chunks<T>(items: T[]): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += CHUNK) out.push(items.slice(i, i + CHUNK));
  return out;
}
