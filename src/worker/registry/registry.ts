/**
 * The device registry, as LAMPI keeps it: users own lamps, and a lamp nobody has claimed yet
 * belongs to the default (inactive) user and carries an association code. It lives in our own
 * tables (REGISTRY_SCHEMA=lampi) or in the LAMPI site's own Django tables (django), where our
 * bookkeeping (bridge state, the message that created a lamp) sits beside them in ingest_lamps.
 *
 * Every write is idempotent per message: a message handled again (a retried job, or a resend
 * queued twice) finds the rows it wrote itself and carries on as if it had just written them,
 * so side effects that follow a write happen for exactly one message. In django mode the
 * bookkeeping belongs to one incarnation of a lamp (its row's association code): a lamp deleted
 * on the site and connecting again is created again, a lamp the site had before is adopted.
 */
import { randomBytes } from 'node:crypto';
import { PrismaPg } from '@prisma/adapter-pg';
import { Prisma, PrismaClient } from '../../generated/prisma/client.js';
import { parkedUserRow } from './django-user.js';

export type BridgeStateOutcome = 'recorded' | 'unchanged' | 'unknown_device';

export interface Activation {
  /** True only for the job that created the device (including retries of that job). */
  created: boolean;
  /** Created by this very call: nobody has been told its code yet, so nobody can have claimed it. */
  insertedNow: boolean;
  associationCode: string;
}

export interface ActivationRequest {
  deviceId: string;
  /** The bridge connect's message: it names the row it creates. */
  messageId: string;
  connectedAt: Date;
}

/** What a lamp's retained association message says: its code while parked, or that it is claimed. */
export type Association = { associated: false; code: string } | { associated: true };

export type RegistrySchema = 'lampi' | 'django';

export interface RegistryOptions {
  databaseUrl: string;
  /** Owner of lamps nobody has claimed; a lamp owned by anyone else is claimed. */
  defaultUser: string;
  /** Whose tables the registry is: ours (default `lampi`) or the LAMPI site's (`django`). */
  schema?: RegistrySchema;
  /** PostgreSQL connections (default 10). */
  poolSize?: number;
}

/** Where each schema keeps lamps, their owners, and our bookkeeping of a lamp (lampi mode: on its row). */
const TABLES = {
  lampi: { lamps: Prisma.raw('devices'), users: Prisma.raw('users'), bookkeeping: Prisma.raw('devices') },
  django: { lamps: Prisma.raw('lampi_lampi'), users: Prisma.raw('auth_user'), bookkeeping: Prisma.raw('ingest_lamps') },
} as const;

/** The cache only ever learns ids that exist; it is a bound on memory, not on correctness. */
const KNOWN_DEVICE_CACHE_LIMIT = 200_000;
/** A claim saved on the site waits for our publish under the row lock; a publish that takes longer is abandoned and retried. */
const ASSOCIATION_PUBLISH_TIMEOUT_MS = 15_000;

export class DeviceRegistry {
  readonly prisma: InstanceType<typeof PrismaClient>;
  readonly schema: RegistrySchema;
  private defaultUserId: Promise<number> | undefined;
  private readonly knownDevices = new Set<string>();
  private readonly tables: (typeof TABLES)[RegistrySchema];

  constructor(private readonly options: RegistryOptions) {
    this.schema = options.schema ?? 'lampi';
    this.tables = TABLES[this.schema];
    this.prisma = new PrismaClient({
      adapter: new PrismaPg({ connectionString: options.databaseUrl, max: options.poolSize ?? 10, connectionTimeoutMillis: 10_000 }),
    });
  }

  async ping(): Promise<void> {
    await this.prisma.$queryRaw`SELECT 1`;
  }

  /**
   * Creates the devices that are unknown (at most one request per lamp), in one statement: each
   * owned by the default user, its bridge connected by the request's message. Answers per
   * message id; `created` is true for the message that created its device, however often that
   * message is handled.
   */
  async activate(requests: ActivationRequest[]): Promise<Map<string, Activation>> {
    const userId = await this.ensureDefaultUser();
    const codes = new Map(requests.map((r) => [r.messageId, randomBytes(16).toString('hex')]));
    const inserting =
      this.schema === 'django' ? this.insertSiteLamps(requests, codes, userId) : this.insertDevices(requests, codes, userId);
    const created = new Set(
      await inserting.catch((err: unknown) => {
        // The parked user may be gone (deleted on the site): the retry looks it up again.
        this.defaultUserId = undefined;
        throw err;
      }),
    );
    const answers = new Map<string, Activation>();
    const existing = requests.filter((r) => !created.has(r.deviceId)).map((r) => r.deviceId);
    const { lamps, bookkeeping } = this.tables;
    // The bookkeeping counts only for the incarnation it was written for (the same code).
    const rows =
      existing.length === 0
        ? []
        : await this.prisma.$queryRaw<Array<{ device_id: string; association_code: string; created_by_message_id: string | null }>>`
            SELECT l.device_id, l.association_code, b.created_by_message_id FROM ${lamps} l
            LEFT JOIN ${bookkeeping} b ON b.device_id = l.device_id AND b.association_code = l.association_code
            WHERE l.device_id = ANY(${existing}::text[])`;
    const found = new Map(rows.map((row) => [row.device_id, row]));
    for (const r of requests) {
      const row = found.get(r.deviceId);
      if (created.has(r.deviceId)) answers.set(r.messageId, { created: true, insertedNow: true, associationCode: codes.get(r.messageId)! });
      else if (row)
        answers.set(r.messageId, {
          created: row.created_by_message_id === r.messageId,
          insertedNow: false,
          associationCode: row.association_code,
        });
      // Nothing inserted and nothing there: the random code collided with another lamp's. Retry.
      else throw new Error(`device ${r.deviceId} was neither created nor found; retrying`);
      this.remember(r.deviceId);
    }
    return answers;
  }

  /** Lampi mode: ON CONFLICT DO NOTHING, so concurrent activations of one lamp leave exactly one row. */
  private async insertDevices(requests: ActivationRequest[], codes: Map<string, string>, userId: number): Promise<string[]> {
    const inserted = await this.prisma.device.createManyAndReturn({
      data: requests.map((r) => ({
        deviceId: r.deviceId,
        associationCode: codes.get(r.messageId)!,
        userId,
        createdByMessageId: r.messageId,
        bridgeConnected: true,
        bridgeStateAt: r.connectedAt,
        bridgeStateMessageId: r.messageId,
      })),
      skipDuplicates: true,
      select: { deviceId: true },
    });
    return inserted.map((row) => row.deviceId);
  }

  /**
   * Django mode: the site's row (every column written: Django keeps its defaults in Python) and
   * our bookkeeping of the new incarnation in one statement, so no crash can leave a row we
   * created without the note that we did. Bookkeeping of a deleted incarnation is replaced.
   */
  private async insertSiteLamps(requests: ActivationRequest[], codes: Map<string, string>, userId: number): Promise<string[]> {
    const inserted = await this.prisma.$queryRaw<Array<{ device_id: string }>>`
      WITH input AS (
        SELECT * FROM unnest(${requests.map((r) => r.deviceId)}::text[], ${requests.map((r) => codes.get(r.messageId)!)}::text[],
                             ${requests.map((r) => r.messageId)}::text[], ${requests.map((r) => r.connectedAt.toISOString())}::timestamptz[])
          AS t(device_id, association_code, message_id, connected_at)
      ), inserted AS (
        INSERT INTO lampi_lampi (device_id, name, association_code, created_at, user_id)
        SELECT device_id, 'My LAMPI', association_code, now(), ${userId} FROM input
        ON CONFLICT DO NOTHING
        RETURNING device_id
      ), booked AS (
        INSERT INTO ingest_lamps (device_id, association_code, created_by_message_id, bridge_connected, bridge_state_at, bridge_state_message_id)
        SELECT input.device_id, input.association_code, input.message_id, true, input.connected_at, input.message_id
        FROM inserted JOIN input ON input.device_id = inserted.device_id
        ON CONFLICT (device_id) DO UPDATE SET association_code = EXCLUDED.association_code, created_by_message_id = EXCLUDED.created_by_message_id,
          bridge_connected = EXCLUDED.bridge_connected, bridge_state_at = EXCLUDED.bridge_state_at, bridge_state_message_id = EXCLUDED.bridge_state_message_id
      )
      SELECT device_id FROM inserted`;
    return inserted.map((row) => row.device_id);
  }

  /**
   * Django mode: makes our bookkeeping belong to the lamp's current row. A lamp the site had
   * before we knew it, or deleted and created again itself, starts with no bridge state held and
   * no message that created it. False when the site has no such lamp.
   */
  private async adoptSiteLamp(deviceId: string): Promise<boolean> {
    const rows = await this.prisma.$queryRaw<Array<{ lamps: number }>>`
      WITH lamp AS (SELECT device_id, association_code FROM lampi_lampi WHERE device_id = ${deviceId}),
      adopted AS (
        INSERT INTO ingest_lamps (device_id, association_code) SELECT device_id, association_code FROM lamp
        ON CONFLICT (device_id) DO UPDATE SET association_code = EXCLUDED.association_code,
          created_by_message_id = NULL, bridge_connected = NULL, bridge_state_at = NULL, bridge_state_message_id = NULL
        WHERE ingest_lamps.association_code IS DISTINCT FROM EXCLUDED.association_code
      )
      SELECT count(*)::int AS lamps FROM lamp`;
    return rows[0]!.lamps > 0;
  }

  /**
   * Records a bridge state if it differs from the one we hold: a lamp's bridge states arrive
   * in order (see BRIDGE_PARTITIONS), so the same state twice is a replay, the broker's
   * retained copy after we resubscribe or a second replica's copy, and is not recorded (so the
   * same replay handled twice is still not a change). A state older than the change we hold (a
   * late copy) is not recorded either; a different state stamped in the same millisecond is a
   * change, since it arrived after the one we hold (a bridge that flaps faster than the clock
   * ticks). One statement, the row locked while it decides, so concurrent workers agree.
   */
  async recordBridgeState(deviceId: string, connected: boolean, receivedAt: Date, messageId: string): Promise<BridgeStateOutcome> {
    if (this.schema === 'django' && !(await this.adoptSiteLamp(deviceId))) return 'unknown_device';
    const { bookkeeping } = this.tables;
    const rows = await this.prisma.$queryRaw<Array<{ bridge_state_message_id: string | null; updated: number }>>`
      WITH held AS (
        SELECT bridge_connected, bridge_state_at, bridge_state_message_id FROM ${bookkeeping} WHERE device_id = ${deviceId} FOR UPDATE
      ), changed AS (
        UPDATE ${bookkeeping} SET bridge_connected = ${connected}, bridge_state_at = ${receivedAt}, bridge_state_message_id = ${messageId}
        WHERE device_id = ${deviceId}
          AND (SELECT bridge_connected IS DISTINCT FROM ${connected} AND (bridge_state_at IS NULL OR bridge_state_at <= ${receivedAt}) FROM held)
        RETURNING 1
      )
      SELECT bridge_state_message_id, (SELECT count(*) FROM changed)::int AS updated FROM held`;
    const held = rows[0];
    if (!held) return 'unknown_device';
    // This very message recorded the change we hold: it is being handled again.
    if (held.bridge_state_message_id === messageId || held.updated > 0) return 'recorded';
    return 'unchanged';
  }

  /**
   * Which of these lamps are registered. In lampi mode lamps already seen cost no query; in
   * django mode every call asks, because the site's admin deletes lamps and a cache would hide that.
   */
  async knownAmong(deviceIds: Iterable<string>): Promise<Set<string>> {
    const known = new Set<string>();
    const unseen = new Set<string>();
    for (const id of deviceIds) (this.knownDevices.has(id) ? known : unseen).add(id);
    if (unseen.size === 0) return known;
    const found = await this.prisma.$queryRaw<
      Array<{ device_id: string }>
    >`SELECT device_id FROM ${this.tables.lamps} WHERE device_id = ANY(${[...unseen]}::text[])`;
    for (const { device_id: deviceId } of found) {
      this.remember(deviceId);
      known.add(deviceId);
    }
    return known;
  }

  /**
   * Reads what the lamp's association message must say and hands it to `publish`, the lamp's
   * row share-locked until `publish` resolves: a claim (or a delete) saved meanwhile waits for
   * our message to be on the broker, so the site's own message comes after ours and no older
   * answer overwrites it. Publishes nothing, and returns undefined, when the lamp has no row.
   */
  async publishAssociation(deviceId: string, publish: (association: Association) => Promise<void>): Promise<Association | undefined> {
    const { lamps, users } = this.tables;
    return this.prisma.$transaction(
      async (tx) => {
        const rows = await tx.$queryRaw<Array<{ association_code: string; username: string }>>`
          SELECT l.association_code, u.username FROM ${lamps} l JOIN ${users} u ON u.id = l.user_id WHERE l.device_id = ${deviceId} FOR SHARE OF l`;
        const row = rows[0];
        if (!row) return undefined;
        const association: Association =
          row.username === this.options.defaultUser ? { associated: false, code: row.association_code } : { associated: true };
        await publish(association);
        return association;
      },
      { maxWait: ASSOCIATION_PUBLISH_TIMEOUT_MS, timeout: ASSOCIATION_PUBLISH_TIMEOUT_MS },
    );
  }

  async close(): Promise<void> {
    await this.prisma.$disconnect();
  }

  private remember(deviceId: string): void {
    if (this.schema === 'django') return;
    if (this.knownDevices.size >= KNOWN_DEVICE_CACHE_LIMIT) this.knownDevices.clear();
    this.knownDevices.add(deviceId);
  }

  private ensureDefaultUser(): Promise<number> {
    this.defaultUserId ??= (this.schema === 'django' ? this.ensureParkedSiteUser() : this.ensureParkedUser()).catch((err: unknown) => {
      this.defaultUserId = undefined;
      throw err;
    });
    return this.defaultUserId;
  }

  private async ensureParkedUser(): Promise<number> {
    const user = await this.prisma.user.upsert({
      where: { username: this.options.defaultUser },
      create: { username: this.options.defaultUser, isActive: false },
      update: {},
      select: { id: true },
    });
    return user.id;
  }

  /** Created as Django would create it; ON CONFLICT DO NOTHING on the unique username, so racing workers leave one. */
  private async ensureParkedSiteUser(): Promise<number> {
    const username = this.options.defaultUser;
    await this.prisma.authUser.createMany({ data: [parkedUserRow(username, new Date())], skipDuplicates: true });
    return (await this.prisma.authUser.findUniqueOrThrow({ where: { username }, select: { id: true } })).id;
  }
}
