/**
 * A process that cannot start says why in one line naming the setting, and exits 1: no stack
 * trace, no password.
 */
import { describe, expect, inject, it } from 'vitest';
import { freePort, startService } from '../support/processes.js';

const services = inject('services');

async function failure(name: 'subscriber' | 'worker', env: Record<string, string>) {
  const proc = startService(name, { METRICS_PORT: '0', ...env });
  const code = await proc.exited;
  const lines = proc.output().trim().split('\n');
  return { code, lines, output: proc.output() };
}

describe('start-up errors', () => {
  const keen = { KEEN_PROJECT_ID: 'p', KEEN_WRITE_KEY: 'secret-write-key', DATABASE_URL: 'postgresql://postgres@127.0.0.1:5432/postgres' };

  it('names a missing setting', async () => {
    const { code, lines } = await failure('worker', {});
    expect(code).toBe(1);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^worker: invalid configuration: .*DATABASE_URL is required.*KEEN_PROJECT_ID is required.*KEEN_WRITE_KEY is required/);
  });

  it('names an invalid setting', async () => {
    const { code, lines } = await failure('subscriber', { SUBSCRIBER_CONNECTIONS: 'many', MQTT_URL: 'http://broker' });
    expect(code).toBe(1);
    expect(lines).toEqual([expect.stringMatching(/^subscriber: invalid configuration: .*MQTT_URL must be a URL starting with mqtt:\/\/.*SUBSCRIBER_CONNECTIONS/)]);
  });

  it('names REDIS_URL when Redis cannot be reached, without its password', async () => {
    const port = await freePort();
    const { code, lines, output } = await failure('subscriber', { REDIS_URL: `redis://:hunter2@127.0.0.1:${port}` });
    expect(code).toBe(1);
    expect(lines).toEqual([`subscriber: cannot reach Redis at REDIS_URL=redis://:***@127.0.0.1:${port} (ECONNREFUSED): start Redis or fix REDIS_URL`]);
    expect(output).not.toContain('hunter2');
  });

  it('names MQTT_URL when the broker cannot be reached', async () => {
    const port = await freePort();
    const { code, lines } = await failure('subscriber', { REDIS_URL: services.redis, MQTT_URL: `mqtt://127.0.0.1:${port}` });
    expect(code).toBe(1);
    expect(lines).toEqual([expect.stringMatching(new RegExp(`^subscriber: cannot reach the MQTT broker at MQTT_URL=mqtt://127\\.0\\.0\\.1:${port} .*fix MQTT_URL$`))]);
  });

  it('names DATABASE_URL when PostgreSQL cannot be reached, and asks for migrations when tables are missing', async () => {
    const port = await freePort();
    const unreachable = await failure('worker', { ...keen, REDIS_URL: services.redis, DATABASE_URL: `postgresql://lampi:pw@127.0.0.1:${port}/lampi` });
    expect(unreachable.code).toBe(1);
    expect(unreachable.lines).toEqual([expect.stringMatching(/^worker: cannot reach PostgreSQL at DATABASE_URL=postgresql:\/\/lampi:\*\*\*@127\.0\.0\.1:\d+\/lampi .*fix DATABASE_URL$/)]);
    // The admin database exists but has no registry tables.
    const unmigrated = await failure('worker', { ...keen, REDIS_URL: services.redis, DATABASE_URL: services.postgres });
    expect(unmigrated.code).toBe(1);
    expect(unmigrated.lines).toEqual([expect.stringMatching(/has no devices table: run `npm run migrate` first$/)]);
    expect(unreachable.output + unmigrated.output).not.toContain('secret-write-key');
  });
});
