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

async function dockerAnswers(): Promise<boolean> {
  try {
    await promisify(execFile)('docker', ['info', '--format', '{{.ServerVersion}}'], { timeout: 5000 });
    return true;
  } catch {
    return false;
  }
}

export async function resolveServices(): Promise<{ urls: ServiceUrls; source: string; stop: () => Promise<void> }> {
  if (process.env.TEST_USE_CONTAINERS !== 'false' && (await dockerAnswers())) {
    const { GenericContainer, Wait } = await import('testcontainers');
    const [redis, postgres, mosquitto] = await Promise.all([
      new GenericContainer('redis:7.4-alpine').withExposedPorts(6379).start(),
      new GenericContainer('postgres:16-alpine')
        .withEnvironment({ POSTGRES_PASSWORD: 'test' })
        .withExposedPorts(5432)
        .withWaitStrategy(Wait.forLogMessage(/ready to accept connections/, 2))
        .start(),
      new GenericContainer('eclipse-mosquitto:2.0')
        .withCommand(['mosquitto', '-c', '/mosquitto-no-auth.conf'])
        .withExposedPorts(1883)
        .start(),
    ]);
    return {
      source: 'testcontainers (Docker engine found)',
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
  const used = Object.entries(fromEnv).filter(([, v]) => v).map(([k]) => k);
  return {
    source: `no Docker engine: ${used.length ? `environment for ${used.join(', ')}, ` : ''}local services for the rest`,
    urls: {
      redis: fromEnv.redis ?? LOCAL.redis,
      postgres: fromEnv.postgres ?? LOCAL.postgres,
      mqtt: fromEnv.mqtt ?? LOCAL.mqtt,
    },
    stop: async () => {},
  };
}
