import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

export interface ServiceUrls {
  redis: string;
  /** An admin connection: tests create their own databases from it. */
  postgres: string;
  mqtt: string;
}

const LOCAL: ServiceUrls = {
  redis: 'redis://127.0.0.1:6379',
  postgres: 'postgresql://postgres@127.0.0.1:5432/postgres',
  mqtt: 'mqtt://127.0.0.1:1883',
};

const IMAGES = { redis: 'redis:7.4-alpine', postgres: 'postgres:16-alpine', mosquitto: 'eclipse-mosquitto:2.0' };

/**
 * Whether to start containers: `TEST_USE_CONTAINERS=true` always (pulling what is missing),
 * `false` never, and unset only when a Docker engine answers AND already has every image. An
 * engine that cannot pull (no registry access) must not turn the suite into pull failures.
 */
async function useContainers(): Promise<{ use: boolean; why: string }> {
  const choice = process.env.TEST_USE_CONTAINERS;
  if (choice === 'false') return { use: false, why: 'TEST_USE_CONTAINERS=false' };
  const docker = (args: string[]) =>
    promisify(execFile)('docker', args, { timeout: 5000 }).then(
      () => true,
      () => false,
    );
  if (choice === 'true') return { use: true, why: 'TEST_USE_CONTAINERS=true' };
  if (!(await docker(['info', '--format', '{{.ServerVersion}}']))) return { use: false, why: 'no Docker engine' };
  // testcontainers also starts its reaper (ryuk) unless told not to: that image must be there too.
  const reaper =
    process.env.TESTCONTAINERS_RYUK_DISABLED === 'true' ? [] : [process.env.RYUK_CONTAINER_IMAGE ?? 'testcontainers/ryuk:0.14.0'];
  const needed = [...Object.values(IMAGES), ...reaper];
  const present = await Promise.all(needed.map((image) => docker(['image', 'inspect', '--format', '{{.Id}}', image])));
  const missing = needed.filter((_, i) => !present[i]);
  if (missing.length)
    return { use: false, why: `Docker engine found but not its images (${missing.join(', ')}; TEST_USE_CONTAINERS=true pulls them)` };
  return { use: true, why: 'Docker engine with the images found' };
}

export async function resolveServices(): Promise<{ urls: ServiceUrls; source: string; stop: () => Promise<void> }> {
  const containers = await useContainers();
  if (containers.use) {
    const { GenericContainer, Wait } = await import('testcontainers');
    const [redis, postgres, mosquitto] = await Promise.all([
      new GenericContainer(IMAGES.redis).withExposedPorts(6379).start(),
      new GenericContainer(IMAGES.postgres)
        .withEnvironment({ POSTGRES_PASSWORD: 'test' })
        .withExposedPorts(5432)
        .withWaitStrategy(Wait.forLogMessage(/ready to accept connections/, 2))
        .start(),
      new GenericContainer(IMAGES.mosquitto).withCommand(['mosquitto', '-c', '/mosquitto-no-auth.conf']).withExposedPorts(1883).start(),
    ]);
    return {
      source: `testcontainers (${containers.why})`,
      urls: {
        redis: `redis://${redis.getHost()}:${redis.getMappedPort(6379)}`,
        postgres: `postgresql://postgres:test@${postgres.getHost()}:${postgres.getMappedPort(5432)}/postgres`,
        mqtt: `mqtt://${mosquitto.getHost()}:${mosquitto.getMappedPort(1883)}`,
      },
      stop: async () => {
        await Promise.all([redis.stop(), postgres.stop(), mosquitto.stop()]);
      },
    };
  }
  const fromEnv = {
    redis: process.env.TEST_REDIS_URL ?? process.env.REDIS_URL,
    postgres: process.env.TEST_DATABASE_ADMIN_URL,
    mqtt: process.env.TEST_MQTT_URL ?? process.env.MQTT_URL,
  };
  const used = Object.entries(fromEnv)
    .filter(([, v]) => v)
    .map(([k]) => k);
  return {
    source: `${containers.why}: ${used.length ? `environment for ${used.join(', ')}, ` : ''}local services for the rest`,
    urls: {
      redis: fromEnv.redis ?? LOCAL.redis,
      postgres: fromEnv.postgres ?? LOCAL.postgres,
      mqtt: fromEnv.mqtt ?? LOCAL.mqtt,
    },
    stop: async () => {},
  };
}
