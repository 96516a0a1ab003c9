/**
 * The device registry, as LAMPI keeps it: users own lamps, and a lamp nobody has claimed yet
 * belongs to the default (inactive) user and carries an association code.
 *
 * Every write is idempotent per message: a message handled again (a retried job, or a resend
 * queued twice) finds the rows it wrote itself and carries on as if it had just written them,
 * so side effects that follow a write happen for exactly one message.
 */
import { randomBytes } from 'node:crypto';
import { PrismaPg } from '@prisma/adapter-pg';
import { PrismaClient } from '../../generated/prisma/client.js';

export type BridgeStateOutcome = 'recorded' | 'unchanged' | 'unknown_device';

export interface Activation {
  /** True only for the job that created the device (including retries of that job). */
  created: boolean;
  associationCode: string;
}

export interface ActivationRequest {
  deviceId: string;
  /** The bridge connect's message: it names the row it creates. */
  messageId: string;
  connectedAt: Date;
}

export interface RegistryOptions {
  databaseUrl: string;
  defaultUser: string;
  poolSize?: number;
}

/** The cache only ever learns ids that exist; it is a bound on memory, not on correctness. */
const KNOWN_DEVICE_CACHE_LIMIT = 200_000;

export class DeviceRegistry {
  readonly prisma: InstanceType<typeof PrismaClient>;
  private defaultUserId: Promise<number> | undefined;
  private readonly knownDevices = new Set<string>();

  constructor(private readonly options: RegistryOptions) {
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
    // ON CONFLICT DO NOTHING: concurrent activations of one lamp leave exactly one row.
    const inserted = await this.prisma.device.createManyAndReturn({
      data: requests.map((r) => ({
        deviceId: r.deviceId,
        associationCode: codes.get(r.messageId)!,
        userId,
        createdByJobId: r.messageId,
        bridgeConnected: true,
        bridgeStateAt: r.connectedAt,
        bridgeStateJobId: r.messageId,
      })),
      skipDuplicates: true,
      select: { deviceId: true },
    });
    const created = new Set(inserted.map((row) => row.deviceId));
    const answers = new Map<string, Activation>();
    const existing = requests.filter((r) => !created.has(r.deviceId));
    const rows = existing.length === 0 ? [] : await this.prisma.device.findMany({ where: { deviceId: { in: existing.map((r) => r.deviceId) } }, select: { deviceId: true, associationCode: true, createdByJobId: true } });
    const found = new Map(rows.map((row) => [row.deviceId, row]));
    for (const r of requests) {
      const row = found.get(r.deviceId);
      if (created.has(r.deviceId)) answers.set(r.messageId, { created: true, associationCode: codes.get(r.messageId)! });
      else if (row) answers.set(r.messageId, { created: row.createdByJobId === r.messageId, associationCode: row.associationCode });
      // Nothing inserted and nothing there: the random code collided with another lamp's. Retry.
      else throw new Error(`device ${r.deviceId} was neither created nor found; retrying`);
      this.remember(r.deviceId);
    }
    return answers;
  }

  /**
   * Records a bridge state if it differs from the one we hold: a lamp's bridge states arrive
   * in order (see BRIDGE_PARTITIONS), so the same state twice is a replay, the broker's
   * retained copy after we resubscribe or a second replica's copy, and is not recorded (so the
   * same replay handled twice is still not a change). A state older than the change we hold (a
   * late copy) is not recorded either. One statement, the row locked while it decides, so
   * concurrent workers agree.
   */
  async recordBridgeState(deviceId: string, connected: boolean, receivedAt: Date, messageId: string): Promise<BridgeStateOutcome> {
    const rows = await this.prisma.$queryRaw<Array<{ bridge_state_job_id: string | null; updated: number }>>`
      WITH held AS (
        SELECT bridge_connected, bridge_state_at, bridge_state_job_id FROM devices WHERE device_id = ${deviceId} FOR UPDATE
      ), changed AS (
        UPDATE devices SET bridge_connected = ${connected}, bridge_state_at = ${receivedAt}, bridge_state_job_id = ${messageId}
        WHERE device_id = ${deviceId}
          AND (SELECT bridge_connected IS DISTINCT FROM ${connected} AND (bridge_state_at IS NULL OR bridge_state_at < ${receivedAt}) FROM held)
        RETURNING 1
      )
      SELECT bridge_state_job_id, (SELECT count(*) FROM changed)::int AS updated FROM held`;
    const held = rows[0];
    if (!held) return 'unknown_device';
    // This very message recorded the change we hold: it is being handled again.
    if (held.bridge_state_job_id === messageId || held.updated > 0) return 'recorded';
    return 'unchanged';
  }

  /** Which of these lamps are registered. Lamps already seen cost no query. */
  async knownAmong(deviceIds: Iterable<string>): Promise<Set<string>> {
    const known = new Set<string>();
    const unseen = new Set<string>();
    for (const id of deviceIds) (this.knownDevices.has(id) ? known : unseen).add(id);
    if (unseen.size === 0) return known;
    const found = await this.prisma.device.findMany({ where: { deviceId: { in: [...unseen] } }, select: { deviceId: true } });
    for (const { deviceId } of found) {
      this.remember(deviceId);
      known.add(deviceId);
    }
    return known;
  }

  async close(): Promise<void> {
    await this.prisma.$disconnect();
  }

  private remember(deviceId: string): void {
    if (this.knownDevices.size >= KNOWN_DEVICE_CACHE_LIMIT) this.knownDevices.clear();
    this.knownDevices.add(deviceId);
  }

  private ensureDefaultUser(): Promise<number> {
    this.defaultUserId ??= this.prisma.user
      .upsert({
        where: { username: this.options.defaultUser },
        create: { username: this.options.defaultUser, isActive: false },
        update: {},
        select: { id: true },
      })
      .then((user) => user.id)
      .catch((err: unknown) => {
        this.defaultUserId = undefined;
        throw err;
      });
    return this.defaultUserId;
  }
}
