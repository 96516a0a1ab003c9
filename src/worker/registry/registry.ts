/**
 * The device registry, as LAMPI keeps it: users own lamps, and a lamp nobody has claimed yet
 * belongs to the default (inactive) user and carries an association code.
 *
 * Every write is idempotent per ingest job: a job that is retried (after a crash, or after a
 * later step failed) finds the rows it wrote itself and carries on as if it had just written
 * them, so side effects that follow a write happen for exactly one job.
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

  /** Creates the device if it is unknown, owned by the default user. */
  async activate(deviceId: string, jobId: string): Promise<Activation> {
    const userId = await this.ensureDefaultUser();
    const associationCode = randomBytes(16).toString('hex');
    // ON CONFLICT DO NOTHING: concurrent activations of one lamp leave exactly one row.
    const { count } = await this.prisma.device.createMany({
      data: [{ deviceId, associationCode, userId, createdByJobId: jobId }],
      skipDuplicates: true,
    });
    this.remember(deviceId);
    if (count === 1) return { created: true, associationCode };
    const existing = await this.prisma.device.findUnique({
      where: { deviceId },
      select: { associationCode: true, createdByJobId: true },
    });
    // Nothing inserted and nothing there: the random code collided with another lamp's. Retry.
    if (!existing) throw new Error(`device ${deviceId} was neither created nor found; retrying`);
    return { created: existing.createdByJobId === jobId, associationCode: existing.associationCode };
  }

  /**
   * Records a bridge state if it differs from the one we hold: a lamp's bridge states arrive
   * in order (see BRIDGE_PARTITIONS), so the same state twice is a replay, the broker's
   * retained copy after we resubscribe or a message seen twice. Should a retry reorder them,
   * the held state stays the newest by receipt time, and an older one is not recorded. Row-locked,
   * so concurrent workers agree.
   */
  async recordBridgeState(deviceId: string, connected: boolean, receivedAt: Date, jobId: string): Promise<BridgeStateOutcome> {
    return this.prisma.$transaction(async (tx) => {
      const rows = await tx.$queryRaw<Array<{ bridge_connected: boolean | null; bridge_state_at: Date | null; bridge_state_job_id: string | null }>>`
        SELECT bridge_connected, bridge_state_at, bridge_state_job_id FROM devices WHERE device_id = ${deviceId} FOR UPDATE`;
      const current = rows[0];
      if (!current) return 'unknown_device';
      if (current.bridge_state_job_id === jobId) return 'recorded';
      // Older than the state we hold: a late copy (a second subscriber replica's), not a change.
      if (current.bridge_state_at && current.bridge_state_at >= receivedAt) return 'unchanged';
      await tx.device.update({
        where: { deviceId },
        data: { bridgeConnected: connected, bridgeStateAt: receivedAt, bridgeStateJobId: jobId },
      });
      return current.bridge_connected !== connected ? 'recorded' : 'unchanged';
    });
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
