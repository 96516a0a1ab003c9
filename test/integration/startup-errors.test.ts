/**
 * A process that cannot start says why in one line naming the setting, and exits 1: no stack
 * trace, no password.
 */
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { describe, expect, inject, it } from 'vitest';
import { freePort, ROOT, startService } from '../support/processes.js';

const services = inject('services');

async function failure(name: 'subscriber' | 'worker', env: Record<string, string>) {
  const proc = startService(name, { METRICS_PORT: '0', MQTT_CLIENT_ID: `startup-${process.pid}`, ...env });
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
    expect(lines[0]).toMatch(
      /^worker: invalid configuration: .*DATABASE_URL is required.*KEEN_PROJECT_ID is required.*KEEN_WRITE_KEY is required/,
    );
  });

  it('names an invalid setting', async () => {
    const { code, lines } = await failure('subscriber', { SUBSCRIBER_CONNECTIONS: 'many', MQTT_URL: 'http://broker' });
    expect(code).toBe(1);
    expect(lines).toEqual([
      expect.stringMatching(/^subscriber: invalid configuration: .*MQTT_URL must be a URL starting with mqtt:\/\/.*SUBSCRIBER_CONNECTIONS/),
    ]);
  });

  it('names REDIS_URL when Redis cannot be reached, without its password', async () => {
    const port = await freePort();
    const { code, lines, output } = await failure('subscriber', { REDIS_URL: `redis://:hunter2@127.0.0.1:${port}` });
    expect(code).toBe(1);
    expect(lines).toEqual([
      `subscriber: cannot reach Redis at REDIS_URL=redis://:***@127.0.0.1:${port} (ECONNREFUSED): start Redis or fix REDIS_URL`,
    ]);
    expect(output).not.toContain('hunter2');
  });

  it('names MQTT_URL when the broker cannot be reached', async () => {
    const port = await freePort();
    const { code, lines } = await failure('subscriber', { REDIS_URL: services.redis, MQTT_URL: `mqtt://127.0.0.1:${port}` });
    expect(code).toBe(1);
    expect(lines).toEqual([
      expect.stringMatching(
        new RegExp(`^subscriber: cannot reach the MQTT broker at MQTT_URL=mqtt://127\\.0\\.0\\.1:${port} .*fix MQTT_URL$`),
      ),
    ]);
  });

  it('names DATABASE_URL when PostgreSQL cannot be reached, and asks for migrations when tables are missing', async () => {
    const port = await freePort();
    const unreachable = await failure('worker', {
      ...keen,
      REDIS_URL: services.redis,
      DATABASE_URL: `postgresql://lampi:pw@127.0.0.1:${port}/lampi`,
    });
    expect(unreachable.code).toBe(1);
    expect(unreachable.lines).toEqual([
      expect.stringMatching(
        /^worker: cannot reach PostgreSQL at DATABASE_URL=postgresql:\/\/lampi:\*\*\*@127\.0\.0\.1:\d+\/lampi .*fix DATABASE_URL$/,
      ),
    ]);
    // The admin database exists but has no registry tables.
    const unmigrated = await failure('worker', { ...keen, REDIS_URL: services.redis, DATABASE_URL: services.postgres });
    expect(unmigrated.code).toBe(1);
    expect(unmigrated.lines).toEqual([expect.stringMatching(/has no devices table: run `npm run migrate` first$/)]);
    expect(unreachable.output + unmigrated.output).not.toContain('secret-write-key');
  });

  /** The admin URL with another user, database or port: what an operator mistypes. */
  const adminUrl = (change: (url: URL) => void) => {
    const url = new URL(services.postgres);
    change(url);
    return url.toString();
  };

  it('names a PostgreSQL user that does not exist, in the worker, migrate and the devices CLI alike', async () => {
    const url = adminUrl((u) => {
      u.username = 'no_such_lampi_role';
      u.password = 'hunter2';
    });
    const shownUrl = url.replace(':hunter2@', ':***@');
    const expected =
      `PostgreSQL has no role "no_such_lampi_role" at DATABASE_URL=${shownUrl} (28000): fix the user in ` +
      `DATABASE_URL, or create the role (createuser no_such_lampi_role)`;
    const worker = await failure('worker', { ...keen, REDIS_URL: services.redis, DATABASE_URL: url });
    expect(worker.code).toBe(1);
    expect(worker.lines).toEqual([`worker: ${expected}`]);
    const migrate = await npm('migrate', [], { DATABASE_URL: url });
    expect(migrate).toEqual({ code: 1, output: `migrate: ${expected}\n` });
    const devices = await npm('devices', ['list'], { DATABASE_URL: url });
    expect(devices).toEqual({ code: 1, output: `devices: ${expected}\n` });
    expect(worker.output + migrate.output + devices.output).not.toContain('hunter2');
  });

  it('names a database that does not exist, and says that migrate creates it', async () => {
    const url = adminUrl((u) => (u.pathname = '/no_such_lampi_db'));
    const worker = await failure('worker', { ...keen, REDIS_URL: services.redis, DATABASE_URL: url });
    expect(worker.code).toBe(1);
    expect(worker.lines).toEqual([
      `worker: database "no_such_lampi_db" does not exist at DATABASE_URL=${url} (3D000): run \`npm run ` +
        `migrate\` first (it creates the database), or fix the database name in DATABASE_URL`,
    ]);
    const django = await failure('worker', { ...keen, REDIS_URL: services.redis, DATABASE_URL: url, REGISTRY_SCHEMA: 'django' });
    expect(django.lines).toEqual([
      `worker: database "no_such_lampi_db" does not exist at DATABASE_URL=${url} (3D000): point ` +
        `DATABASE_URL at the LAMPI site's database, where its \`manage.py migrate\` ran`,
    ]);
  });

  it('names METRICS_PORT when another process has it, before connecting to anything', async () => {
    const taken = createServer();
    await new Promise<void>((resolve) => taken.listen(0, '0.0.0.0', resolve));
    const { port } = taken.address() as { port: number };
    try {
      // Every service URL is valid: the port is the one problem, and the first one met.
      const env = { REDIS_URL: services.redis, MQTT_URL: services.mqtt, METRICS_PORT: String(port) };
      const expected = (service: string) =>
        `${service}: METRICS_PORT ${port} is in use (another ${service} on this host?): set METRICS_PORT to a free port, or 0 to pick one (it is logged)`;
      const worker = await failure('worker', { ...keen, ...env });
      expect(worker.code).toBe(1);
      expect(worker.lines).toEqual([expected('worker')]);
      const subscriber = await failure('subscriber', env);
      expect(subscriber.code).toBe(1);
      expect(subscriber.lines).toEqual([expected('subscriber')]);
    } finally {
      taken.close();
    }
  });
});

/** `npm run <script>` as an operator runs it; stdout and stderr together. */
function npm(script: string, args: string[], env: Record<string, string>): Promise<{ code: number | null; output: string }> {
  const child = spawn('npm', ['run', '--silent', script, '--', ...args], {
    cwd: ROOT,
    env: { PATH: process.env.PATH, HOME: process.env.HOME, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (c: Buffer) => (output += c.toString()));
  child.stderr.on('data', (c: Buffer) => (output += c.toString()));
  return new Promise((resolve) => child.once('exit', (code) => resolve({ code, output })));
}
