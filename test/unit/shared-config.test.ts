import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/shared/config.js';
import { ConfigError } from '../../src/shared/errors.js';

const WORKER = ['common', 'mqtt', 'database', 'registry', 'worker', 'keen'] as const;
const SUBSCRIBER = ['common', 'mqtt', 'subscriber'] as const;
const WORKER_ENV = {
  DATABASE_URL: 'postgresql://lampi:dbpass@db:5432/lampi',
  KEEN_PROJECT_ID: 'proj_123',
  KEEN_WRITE_KEY: 'wk-0123456789',
};

/** Runs loadConfig expecting a ConfigError, and returns its message. */
function configError(names: readonly Parameters<typeof loadConfig>[0][number][], env: NodeJS.ProcessEnv): string {
  try {
    loadConfig(names, env);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as Error).name).toBe('ConfigError');
    const message = (err as Error).message;
    expect(message, 'one line').not.toMatch(/[\r\n]/);
    return message;
  }
  throw new Error('expected a ConfigError');
}

describe('loadConfig: defaults', () => {
  it('gives the worker every default when only its required settings are set', () => {
    expect(loadConfig(WORKER, WORKER_ENV)).toEqual({
      REDIS_URL: 'redis://127.0.0.1:6379',
      REDIS_CLUSTER_NODES: [],
      REDIS_PASSWORD: undefined,
      QUEUE_PREFIX: 'lampi',
      LOG_LEVEL: 'info',
      MQTT_URL: 'mqtt://127.0.0.1:1883',
      MQTT_USERNAME: undefined,
      MQTT_PASSWORD: undefined,
      MQTT_CLIENT_ID: 'lampi-ingest',
      DATABASE_URL: 'postgresql://lampi:dbpass@db:5432/lampi',
      REGISTRY_SCHEMA: 'lampi',
      DEFAULT_USER: 'parked_device_user',
      ASSOCIATION_TOPIC: '/devices/{device_id}/lamp/associated',
      WORKER_CONCURRENCY: 64,
      UNKNOWN_DEVICE_STATES: 'record',
      KEEN_PROJECT_ID: 'proj_123',
      KEEN_WRITE_KEY: 'wk-0123456789',
      KEEN_API_URL: 'https://api.keen.io',
      KEEN_TIMEOUT_MS: 10_000,
      KEEN_BATCH_SIZE: 500,
      KEEN_LINGER_MS: 20,
      KEEN_ATTEMPTS: 12,
      KEEN_CONCURRENCY: 64,
      KEEN_PAUSE_PROBE_MS: 30_000,
    });
  });

  it('needs nothing at all for the subscriber, and never asks it for Keen or database settings', () => {
    const config = loadConfig(SUBSCRIBER, {});
    expect(config).toMatchObject({ MQTT_SHARE_GROUP: 'lampi-ingest', SUBSCRIBER_CONNECTIONS: 4, MQTT_URL: 'mqtt://127.0.0.1:1883' });
    expect(config).not.toHaveProperty('KEEN_WRITE_KEY');
    expect(config).not.toHaveProperty('DATABASE_URL');
  });

  it('reads only the variables of the sections asked for', () => {
    const config = loadConfig(['common'], { HOME: '/root', KEEN_WRITE_KEY: 'x', QUEUE_PREFIX: 'p' });
    expect(config).toEqual({
      REDIS_URL: 'redis://127.0.0.1:6379',
      REDIS_CLUSTER_NODES: [],
      REDIS_PASSWORD: undefined,
      QUEUE_PREFIX: 'p',
      LOG_LEVEL: 'info',
    });
  });

  it('uses what is set, turning numbers into numbers', () => {
    const config = loadConfig(WORKER, {
      ...WORKER_ENV,
      REDIS_URL: 'rediss://:pw@redis:6380',
      MQTT_URL: 'mqtts://broker:8883',
      MQTT_USERNAME: 'ingest',
      MQTT_PASSWORD: 'mqttpass',
      LOG_LEVEL: 'debug',
      WORKER_CONCURRENCY: '8',
      KEEN_LINGER_MS: '0',
    });
    expect(config).toMatchObject({
      REDIS_URL: 'rediss://:pw@redis:6380',
      MQTT_URL: 'mqtts://broker:8883',
      MQTT_USERNAME: 'ingest',
      MQTT_PASSWORD: 'mqttpass',
      LOG_LEVEL: 'debug',
      WORKER_CONCURRENCY: 8,
      KEEN_LINGER_MS: 0,
    });
  });
});

describe('loadConfig: missing settings', () => {
  it.each(Object.keys(WORKER_ENV))('a worker without %s gets a one-line ConfigError naming it', (name) => {
    const env: NodeJS.ProcessEnv = { ...WORKER_ENV };
    delete env[name];
    const message = configError(WORKER, env);
    expect(message).toBe(`invalid configuration: ${name} is required`);
  });

  it.each(Object.keys(WORKER_ENV))('treats an empty %s as unset', (name) => {
    expect(configError(WORKER, { ...WORKER_ENV, [name]: '' })).toBe(`invalid configuration: ${name} is required`);
  });

  it('names every missing setting on the same line', () => {
    expect(configError(WORKER, {})).toBe(
      'invalid configuration: DATABASE_URL is required; KEEN_PROJECT_ID is required; KEEN_WRITE_KEY is required',
    );
  });

  it('treats an empty setting that has a default as unset, so the default applies', () => {
    const config = loadConfig(WORKER, { ...WORKER_ENV, REDIS_URL: '', LOG_LEVEL: '', WORKER_CONCURRENCY: '', MQTT_PASSWORD: '' });
    expect(config.REDIS_URL).toBe('redis://127.0.0.1:6379');
    expect(config.LOG_LEVEL).toBe('info');
    expect(config.WORKER_CONCURRENCY).toBe(64);
    expect(config.MQTT_PASSWORD).toBeUndefined();
  });
});

describe('loadConfig: invalid settings', () => {
  const invalid: Array<[string, string]> = [
    ['REDIS_URL', 'http://127.0.0.1:6379'],
    ['REDIS_URL', 'not a url'],
    ['MQTT_URL', 'http://broker:1883'],
    ['DATABASE_URL', 'mysql://lampi:dbpass@db/lampi'],
    ['KEEN_API_URL', 'ftp://api.keen.io'],
    ['WORKER_CONCURRENCY', 'many'],
    ['WORKER_CONCURRENCY', '0'],
    ['WORKER_CONCURRENCY', '1.5'],
    ['KEEN_TIMEOUT_MS', '-5'],
    ['KEEN_LINGER_MS', '-1'],
    ['LOG_LEVEL', 'verbose'],
    ['QUEUE_PREFIX', 'a:b'],
    ['MQTT_CLIENT_ID', 'x'.repeat(41)],
    ['KEEN_PROJECT_ID', 'not/a/project'],
    ['DEFAULT_USER', 'u'.repeat(151)],
  ];

  it.each(invalid)('names %s (value %j) in a one-line message', (name, value) => {
    const message = configError(WORKER, { ...WORKER_ENV, [name]: value });
    expect(message.startsWith(`invalid configuration: ${name} `)).toBe(true);
    expect(message).not.toMatch(/is required/);
    // Only the one bad variable is blamed.
    expect(message.split(';')).toHaveLength(1);
  });

  it('says what a URL must look like', () => {
    expect(configError(WORKER, { ...WORKER_ENV, REDIS_URL: 'http://x' })).toBe(
      'invalid configuration: REDIS_URL must be a URL starting with redis:// or rediss://',
    );
    expect(configError(WORKER, { ...WORKER_ENV, DATABASE_URL: 'mysql://x' })).toBe(
      'invalid configuration: DATABASE_URL must be a URL starting with postgres:// or postgresql://',
    );
  });

  it('does not echo secrets (or any value) in the message', () => {
    const secret = 'S3cr3t-Pa55';
    const cases: Record<string, string> = {
      REDIS_URL: `http://user:${secret}@redis:6379`,
      DATABASE_URL: `mysql://lampi:${secret}@db/lampi`,
      MQTT_URL: `http://ingest:${secret}@broker`,
      KEEN_API_URL: `ftp://key:${secret}@api.keen.io`,
      KEEN_PROJECT_ID: `${secret} !`,
      LOG_LEVEL: secret,
      WORKER_CONCURRENCY: secret,
    };
    for (const [name, value] of Object.entries(cases)) {
      const message = configError(WORKER, { ...WORKER_ENV, MQTT_PASSWORD: secret, [name]: value });
      expect(message, name).toContain(name);
      expect(message, name).not.toContain(secret);
    }
  });

  it('reports several problems at once, still on one line', () => {
    const message = configError(WORKER, { KEEN_WRITE_KEY: 'k', KEEN_PROJECT_ID: 'p', WORKER_CONCURRENCY: 'x', LOG_LEVEL: 'loud' });
    expect(message).toContain('DATABASE_URL is required');
    expect(message).toContain('WORKER_CONCURRENCY ');
    expect(message).toContain('LOG_LEVEL ');
    expect(message.split('; ')).toHaveLength(3);
  });
});

describe('comma-separated settings', () => {
  it('split on commas, drop blanks, and name the setting when an item is not valid', () => {
    expect(loadConfig(['secrets'], {}).TLS_SERVER_NAMES).toEqual(['localhost', '127.0.0.1']);
    expect(loadConfig(['secrets'], { TLS_SERVER_NAMES: ' lamps.example.com, ,10.0.0.5 ' }).TLS_SERVER_NAMES).toEqual([
      'lamps.example.com',
      '10.0.0.5',
    ]);
    expect(configError(['secrets'], { TLS_SERVER_NAMES: 'ok.example.com,bad name' })).toMatch(
      /TLS_SERVER_NAMES.*host names or IP addresses/,
    );
    expect(configError(['secrets'], { TLS_SERVER_NAMES: ' , ' })).toMatch(/TLS_SERVER_NAMES.*at least one/);
    expect(loadConfig(['common'], { REDIS_CLUSTER_NODES: 'redis-1:7000, 10.0.0.7:7001' }).REDIS_CLUSTER_NODES).toEqual([
      'redis-1:7000',
      '10.0.0.7:7001',
    ]);
    expect(configError(['common'], { REDIS_CLUSTER_NODES: 'redis-1:7000,redis://redis-2:7001' })).toMatch(/REDIS_CLUSTER_NODES.*host:port/);
  });
});

describe("keen-sink's section", () => {
  const SINK = ['common', 'keenSink'] as const;
  const SINK_ENV = { KEEN_PROJECT_ID: 'lampi', KEEN_WRITE_KEY: 'w', KEEN_READ_KEY: 'r', KEEN_SINK_DATABASE_URL: 'postgresql://h/keen' };

  it('gives every default when only its required settings are set', () => {
    expect(loadConfig(SINK, SINK_ENV)).toEqual({
      REDIS_URL: 'redis://127.0.0.1:6379',
      REDIS_CLUSTER_NODES: [],
      QUEUE_PREFIX: 'lampi',
      LOG_LEVEL: 'info',
      KEEN_SINK_PORT: 8080,
      KEEN_SINK_HOST: '0.0.0.0',
      KEEN_SINK_DATABASE_URL: 'postgresql://h/keen',
      KEEN_PROJECT_ID: 'lampi',
      KEEN_WRITE_KEY: 'w',
      KEEN_READ_KEY: 'r',
      KEEN_SINK_MAX_RESULT_BYTES: 32 * 1024 * 1024,
      KEEN_SINK_CORS_ORIGINS: [],
    });
  });

  it('stores into DATABASE_URL when KEEN_SINK_DATABASE_URL is unset, and says so when both are', () => {
    const { KEEN_SINK_DATABASE_URL: _, ...rest } = SINK_ENV;
    const config = loadConfig(SINK, { ...rest, DATABASE_URL: 'postgresql://h/registry' });
    expect(config.KEEN_SINK_DATABASE_URL).toBe('postgresql://h/registry');
    expect(config).not.toHaveProperty('DATABASE_URL');
    expect(loadConfig(SINK, { ...SINK_ENV, DATABASE_URL: 'postgresql://h/registry' }).KEEN_SINK_DATABASE_URL).toBe('postgresql://h/keen');
    expect(configError(SINK, rest)).toBe('invalid configuration: KEEN_SINK_DATABASE_URL (or DATABASE_URL) is required');
    expect(configError(SINK, { ...rest, DATABASE_URL: 'mysql://h/db' })).toBe(
      'invalid configuration: KEEN_SINK_DATABASE_URL must be a URL starting with postgres:// or postgresql://',
    );
  });

  it('joins POSTGRES_PASSWORD into its database URL, and keeps no other copy', () => {
    const config = loadConfig(SINK, { ...SINK_ENV, KEEN_SINK_DATABASE_URL: 'postgresql://lampi@h/keen', POSTGRES_PASSWORD: 'p@ss' });
    expect(config.KEEN_SINK_DATABASE_URL).toBe('postgresql://lampi:p%40ss@h/keen');
    expect(config).not.toHaveProperty('POSTGRES_PASSWORD');
  });

  it('takes exact origins or * for CORS, and refuses a path', () => {
    expect(
      loadConfig(SINK, { ...SINK_ENV, KEEN_SINK_CORS_ORIGINS: 'https://a.example.com, http://b:8080' }).KEEN_SINK_CORS_ORIGINS,
    ).toEqual(['https://a.example.com', 'http://b:8080']);
    expect(loadConfig(SINK, { ...SINK_ENV, KEEN_SINK_CORS_ORIGINS: '*' }).KEEN_SINK_CORS_ORIGINS).toEqual(['*']);
    expect(configError(SINK, { ...SINK_ENV, KEEN_SINK_CORS_ORIGINS: 'https://a.example.com/app' })).toMatch(
      /^invalid configuration: KEEN_SINK_CORS_ORIGINS must be/,
    );
  });

  it('names each missing key, and a project id that is not one', () => {
    expect(configError(SINK, { KEEN_SINK_DATABASE_URL: 'postgresql://h/keen', KEEN_PROJECT_ID: 'a b' })).toBe(
      'invalid configuration: KEEN_PROJECT_ID a Keen project id (letters, digits, _ or -); KEEN_WRITE_KEY is required; KEEN_READ_KEY is required',
    );
  });
});
