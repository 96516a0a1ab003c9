/**
 * `docker compose up` for real, as a new user runs it: a fresh `git clone` of this checkout's
 * HEAD, no `.env`, a clean environment (only the host-port variables are set, and only where the
 * host already uses a default port). It checks that the stack comes up healthy; that secrets-init
 * generated the secrets and says where the dashboard login is, and that no secret is in any log;
 * that only the broker's TLS port is published beyond loopback; that a LAMPI-like lamp (a
 * Mosquitto bridge, in the eclipse-mosquitto image, with the generated CA) connects over TLS,
 * gets its retained association message, has its registry row in PostgreSQL and its events at
 * keen-sink; that `--scale worker=3` gives three workers that share the work; and that `down`
 * then `up` keeps the secrets. Everything it starts is removed at the end (`down -v`).
 *
 * Not part of `npm test` (it needs a Docker engine with Compose v2 and takes minutes):
 * `npm run test:docker`. Without an engine or Compose v2 it is skipped, and says why. Where
 * Docker Hub is unreachable, run scripts/docker-standins.sh first (local stand-in images).
 */
import { execFile, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import mqtt from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomDeviceId } from '../support/ids.js';
import { freePort, ROOT, sleep, waitFor } from '../support/processes.js';

/** Why this machine cannot run the check, or undefined when it can. */
function unavailable(): string | undefined {
  const engine = spawnSync('docker', ['info', '--format', '{{.ServerVersion}}'], { encoding: 'utf8', timeout: 10_000 });
  if (engine.error) return `no docker CLI (${engine.error.message})`;
  if (engine.status !== 0) return `no Docker engine answers (DOCKER_HOST=${process.env.DOCKER_HOST ?? 'default'}): start dockerd`;
  const composeVersion = spawnSync('docker', ['compose', 'version', '--short'], { encoding: 'utf8', timeout: 10_000 });
  const version = composeVersion.stdout?.trim() ?? '';
  if (composeVersion.status !== 0 || !/^v?2\./.test(version))
    return (
      `no Compose v2 (\`docker compose version\`: ${version || composeVersion.stderr?.trim() || 'missing'}): ` +
      'install the Docker CLI plugin (README "Running with Docker Compose")'
    );
  return undefined;
}
const reason = unavailable();
if (reason) console.warn(`test/docker/compose-up.test.ts: SKIPPED, Docker cannot run here: ${reason}`);

const run = promisify(execFile);
const PROJECT = 'lampi-compose-check';
const SECRET_FILES = ['mqtt-password', 'dashboard-password', 'postgres-password', 'keen-write-key', 'keen-read-key'];

/** Whether nothing listens on host:port (compose publishes there). */
const portFree = (port: number, host: string) =>
  new Promise<boolean>((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(false));
    server.listen(port, host, () => server.close(() => resolve(true)));
  });

interface PsEntry {
  Service: string;
  Name: string;
  State: string;
  Health: string;
  ExitCode: number;
  Publishers: Array<{ URL: string; TargetPort: number; PublishedPort: number; Protocol: string }> | null;
}

describe.skipIf(reason !== undefined)('docker compose up on a fresh clone with no .env', () => {
  const clone = mkdtempSync(path.join(tmpdir(), 'lampi-compose-clone-'));
  const lampDir = mkdtempSync(path.join(tmpdir(), 'lampi-compose-lamp-'));
  // The lamp's Mosquitto reads its CA after dropping to its own user: a 0700 folder of root's hid it
  // (the TLS handshake then ended with no error on the lamp's side).
  chmodSync(lampDir, 0o755);
  const lampContainer = `${PROJECT}-lamp`;
  const device = randomDeviceId();
  const lampPassword = `lamp-${randomDeviceId()}`;
  // A new user's shell: no variable of ours, only what finds docker and its plugins.
  const env: Record<string, string> = { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? '/root' };
  for (const name of ['DOCKER_HOST', 'DOCKER_CONTEXT', 'DOCKER_CONFIG']) if (process.env[name]) env[name] = process.env[name]!;
  let lampPort = 0;
  let associationCode = '';
  let lamp: mqtt.MqttClient | undefined;

  const docker = async (args: string[], timeoutMs = 120_000) =>
    (await run('docker', args, { cwd: clone, env, timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 })).stdout;
  const compose = (args: string[], timeoutMs?: number) => docker(['compose', '--project-name', PROJECT, ...args], timeoutMs);
  const ps = async (): Promise<PsEntry[]> =>
    (await compose(['ps', '--all', '--format', 'json']))
      .split('\n')
      .filter((line) => line.trim())
      .flatMap((line) => JSON.parse(line) as PsEntry | PsEntry[]);
  /** The last lines of every service's log, for a failure's message. */
  const logs = async () => (await compose(['logs', '--no-color', '--tail', '40']).catch((err: unknown) => String(err))).slice(-20_000);
  const withLogs = async <T>(what: Promise<T>): Promise<T> => {
    try {
      return await what;
    } catch (err) {
      throw new Error(`${err instanceof Error ? err.message : String(err)}\n--- docker compose logs\n${await logs()}`, { cause: err });
    }
  };
  /** `docker compose exec` in a service's container (as its own user), standard output trimmed. */
  const exec = async (service: string, command: string[], index = 1) =>
    (await compose(['exec', '-T', '--index', String(index), service, ...command])).trim();
  const up = (extra: string[] = []) => withLogs(compose(['up', '-d', '--wait', '--wait-timeout', '300', ...extra], 900_000));

  /** The lamp's Mosquitto logs to stderr. */
  const lampLogs = async () =>
    run('docker', ['logs', '--tail', '30', lampContainer], { env }).then(
      (r) => r.stdout + r.stderr,
      (err: unknown) => String(err),
    );
  /** A query on the registry, with psql in the postgres container (PostgreSQL is not published). */
  const registry = (sql: string) => exec('postgres', ['psql', '-U', 'lampi', '-d', 'lampi', '-Atc', sql]);
  const keenReadKey = () => exec('keen-sink', ['cat', '/run/secrets/lampi/keen-read-key']);
  const keenEvents = async (collection: string) => {
    const url = new URL(`http://127.0.0.1:8080/3.0/projects/lampi-local/queries/extraction`);
    url.searchParams.set('event_collection', collection);
    url.searchParams.set('timeframe', 'this_1_days');
    url.searchParams.set('filters', JSON.stringify([{ property_name: 'device_id', operator: 'eq', property_value: device }]));
    const response = await fetch(url, { headers: { Authorization: await keenReadKey() } });
    expect(response.status).toBe(200);
    return ((await response.json()) as { result: Array<Record<string, any>> }).result;
  };
  /** Ingest jobs each worker container has completed (its own /metrics, inside the container). */
  const lampStatesJobsPerWorker = async (workers: number) =>
    Promise.all(
      Array.from({ length: workers }, async (_, i) => {
        const metrics = await exec(
          'worker',
          ['node', '-e', "fetch('http://127.0.0.1:9102/metrics').then((r) => r.text()).then((t) => process.stdout.write(t))"],
          i + 1,
        );
        const line = metrics.split('\n').find((l) => l.startsWith('lampi_jobs_completed_total{queue="lamp-states"'));
        return line ? Number(line.split(' ').at(-1)) : 0;
      }),
    );
  const secretHashes = () =>
    exec('mosquitto', ['sh', '-c', 'cd /run/secrets/lampi && sha256sum ' + [...SECRET_FILES, 'tls/ca.crt'].join(' ')]);

  beforeAll(async () => {
    // The defaults, unless this host already uses them (here a local Mosquitto holds 1883): the
    // documented variables move the broker's ports. The dashboard's and keen-sink's are fixed.
    env.MQTT_PORT = String(process.env.MQTT_PORT ?? ((await portFree(1883, '127.0.0.1')) ? 1883 : await freePort()));
    env.MQTTS_PORT = String(process.env.MQTTS_PORT ?? ((await portFree(8883, '0.0.0.0')) ? 8883 : await freePort()));
    for (const port of [3000, 8080])
      if (!(await portFree(port, '127.0.0.1')))
        throw new Error(
          `port ${port} on 127.0.0.1 is taken: stop what holds it (compose publishes the dashboard on 3000 and keen-sink on 8080)`,
        );
    lampPort = await freePort();
    await run('git', ['clone', '--quiet', ROOT, clone]);
    const head = (await run('git', ['-C', clone, 'log', '-1', '--format=%h %s'])).stdout.trim();
    console.log(`compose check: clone of ${head} in ${clone}; MQTT_PORT=${env.MQTT_PORT} MQTTS_PORT=${env.MQTTS_PORT}`);
  }, 60_000);

  afterAll(async () => {
    await lamp?.endAsync(true).catch(() => {});
    await docker(['rm', '-f', '-v', lampContainer]).catch(() => {});
    if (existsSync(path.join(clone, 'docker-compose.yml'))) await compose(['down', '-v', '--remove-orphans'], 300_000).catch(() => {});
    rmSync(clone, { recursive: true, force: true });
    rmSync(lampDir, { recursive: true, force: true });
  }, 360_000);

  it('comes up healthy with `docker compose up -d --wait`: every service healthy, the one-shots exited 0', async () => {
    expect(existsSync(path.join(clone, '.env'))).toBe(false);
    await up();
    const entries = await ps();
    const byService = Object.fromEntries(entries.map((e) => [e.Service, e]));
    for (const oneShot of ['secrets-init', 'migrate']) expect(byService[oneShot], oneShot).toMatchObject({ State: 'exited', ExitCode: 0 });
    for (const service of ['mosquitto', 'redis', 'postgres', 'keen-sink', 'subscriber', 'worker', 'dashboard'])
      expect(byService[service], service).toMatchObject({ State: 'running', Health: 'healthy' });
  }, 900_000);

  it('secrets-init generated every secret and says where the dashboard login is; the login works; no secret is in any log', async () => {
    const log = await compose(['logs', '--no-color', '--no-log-prefix', 'secrets-init']);
    for (const file of SECRET_FILES) expect(log).toContain(`/run/secrets/lampi/${file}: generated`);
    expect(log).toContain('dashboard login: user admin, password: docker compose exec dashboard cat /run/secrets/lampi/dashboard-password');
    expect(log).toContain('docker compose exec mosquitto cat /run/secrets/lampi/tls/ca.crt');

    // The command the log gives.
    const password = await exec('dashboard', ['cat', '/run/secrets/lampi/dashboard-password']);
    expect(password).toMatch(/^[A-Za-z0-9]{32}$/);
    expect((await fetch('http://127.0.0.1:3000/')).status).toBe(401);
    const auth = `Basic ${Buffer.from(`admin:${password}`).toString('base64')}`;
    expect((await fetch('http://127.0.0.1:3000/', { headers: { Authorization: auth } })).status).toBe(200);

    const secrets = await Promise.all(
      SECRET_FILES.map((file) => exec('dashboard', ['cat', `/run/secrets/lampi/${file}`]).catch(() => undefined)),
    );
    // postgres-password is for postgres (uid 999) and node's group: node reads it too.
    expect(secrets.every((s) => s && s.length >= 32)).toBe(true);
    const everything = await compose(['logs', '--no-color']);
    for (const [i, secret] of secrets.entries()) expect(everything.includes(secret!), `${SECRET_FILES[i]} appears in a log`).toBe(false);
    // And none in any container's environment (they read *_FILE).
    for (const entry of (await ps()).filter((e) => e.State === 'running')) {
      const envOf = (await docker(['inspect', '--format', '{{json .Config.Env}}', entry.Name])).trim();
      for (const secret of secrets) expect(envOf.includes(secret!), `a secret in ${entry.Name}'s environment`).toBe(false);
    }
  }, 120_000);

  it("only the broker's TLS port is published beyond loopback", async () => {
    const published = (await ps()).flatMap((e) =>
      (e.Publishers ?? [])
        .filter((p) => p.PublishedPort > 0)
        .map((p) => ({ service: e.Service, ip: p.URL, target: p.TargetPort, port: p.PublishedPort })),
    );
    const open = published.filter((p) => p.ip !== '127.0.0.1');
    expect(open.length).toBeGreaterThan(0);
    for (const p of open)
      expect(p, 'published beyond loopback').toMatchObject({ service: 'mosquitto', target: 8883, port: Number(env.MQTTS_PORT) });
    expect(
      published
        .filter((p) => p.ip === '127.0.0.1')
        .map((p) => `${p.service}:${p.target}`)
        .sort(),
    ).toEqual(['dashboard:3000', 'keen-sink:8080', 'mosquitto:1883']);
    // `docker port`, as an operator would look: no Redis or PostgreSQL port at all.
    for (const service of ['redis', 'postgres']) {
      const name = (await ps()).find((e) => e.Service === service)!.Name;
      expect((await docker(['port', name])).trim(), service).toBe('');
    }
    expect((await compose(['port', 'mosquitto', '8883'])).trim()).toMatch(new RegExp(`^(0\\.0\\.0\\.0|\\[?::\\]?):${env.MQTTS_PORT}$`));
  }, 60_000);

  it('a LAMPI-like lamp bridges over TLS: it gets its retained association message, its registry row, and its events at keen-sink', async () => {
    // The lamp's login, made with the broker image's mosquitto_passwd (README "Lamps on the broker").
    await compose([
      'run', '--rm', '--no-deps', '-T', '--entrypoint', 'mosquitto_passwd', '-v', `${path.join(clone, 'deploy/mosquitto')}:/lamps`,
      'mosquitto', '-c', '-b', '/lamps/lamps.passwd', device, lampPassword,
    ]); // prettier-ignore
    await compose(['restart', 'mosquitto']);
    await withLogs(
      waitFor(
        'the broker restarted with the lamp',
        async () => /and 1 lamp\(s\) in/.test(await compose(['logs', '--no-color', 'mosquitto'])),
        60_000,
        1000,
      ),
    );
    await up();

    // The lamp: its own Mosquitto with the README's bridge settings, trusting the generated CA only.
    writeFileSync(path.join(lampDir, 'lampi-ca.crt'), await exec('mosquitto', ['cat', '/run/secrets/lampi/tls/ca.crt']));
    writeFileSync(
      path.join(lampDir, 'mosquitto.conf'),
      [
        `listener ${lampPort} 127.0.0.1`,
        'allow_anonymous true',
        'log_dest stderr',
        `connection ${device}_broker`,
        `address 127.0.0.1:${env.MQTTS_PORT}`,
        'bridge_cafile /mosquitto/config/lampi-ca.crt',
        'bridge_insecure false',
        `remote_clientid ${device}_broker`,
        `remote_username ${device}`,
        `remote_password ${lampPassword}`,
        'notifications true',
        `topic lamp/changed out 1 "" /devices/${device}/`,
        `topic lamp/associated in 1 "" /devices/${device}/`,
        '',
      ].join('\n'),
    );
    await docker([
      'run',
      '-d',
      '--name',
      lampContainer,
      '--network',
      'host',
      '-v',
      `${lampDir}:/mosquitto/config:ro`,
      'eclipse-mosquitto:2',
    ]);
    lamp = await waitFor('the lamp broker', () => mqtt.connectAsync(`mqtt://127.0.0.1:${lampPort}`, { reconnectPeriod: 0 }), 30_000, 500);

    const associated = new Promise<{ associated: boolean; code: string }>((resolve) =>
      lamp!.on('message', (topic, payload) => topic === 'lamp/associated' && resolve(JSON.parse(payload.toString()))),
    );
    await lamp.subscribeAsync('lamp/associated', { qos: 1 });
    const association = await withLogs(
      Promise.race([
        associated,
        sleep(60_000).then(async () => {
          throw new Error(`no association message within 60 s; lamp: ${await lampLogs()}`);
        }),
      ]),
    );
    expect(association).toEqual({ associated: false, code: expect.stringMatching(/^[0-9a-f]{32}$/) });
    associationCode = association.code;
    // Through TLS: the broker logged the lamp's bridge on the TLS listener.
    expect(await compose(['logs', '--no-color', 'mosquitto'])).toMatch(new RegExp(`on port 8883[\\s\\S]*as ${device}_broker`));

    const state = { color: { h: 0.5, s: 1 }, brightness: 0.8, on: true, client: 'lamp_ui' };
    await lamp.publishAsync('lamp/changed', JSON.stringify(state), { qos: 1 });

    const row = await registry(`SELECT association_code, bridge_connected FROM devices WHERE device_id = '${device}'`);
    expect(row).toBe(`${association.code}|t`);

    const [activations, monitoring, states] = await withLogs(
      waitFor(
        'activations, devicemonitoring and devicestate at keen-sink',
        async () => {
          const found = await Promise.all(['activations', 'devicemonitoring', 'devicestate'].map(keenEvents));
          return found.every((list) => list.length > 0) ? found : undefined;
        },
        60_000,
        500,
      ),
    );
    expect(activations).toHaveLength(1);
    expect(monitoring).toEqual([expect.objectContaining({ device_id: device, state: 'connected' })]);
    expect(states).toEqual([expect.objectContaining({ device_id: device, state })]);
  }, 300_000);

  it('`docker compose up -d --scale worker=3` runs three healthy workers that share the work', async () => {
    await up(['--scale', 'worker=3']);
    const workers = (await ps()).filter((e) => e.Service === 'worker');
    expect(workers.map((w) => `${w.State}/${w.Health}`)).toEqual(['running/healthy', 'running/healthy', 'running/healthy']);

    const before = await lampStatesJobsPerWorker(3);
    // Spaced out, so that each state is a job of its own and every worker is idle when it comes.
    const count = 60;
    for (let i = 0; i < count; i += 1) {
      await lamp!.publishAsync(
        'lamp/changed',
        JSON.stringify({ color: { h: i / count, s: 1 }, brightness: 0.5, on: true, client: 'lamp_ui' }),
        { qos: 1 },
      );
      await sleep(100);
    }
    await withLogs(
      waitFor(
        `${count + 1} devicestate events at keen-sink`,
        async () => (await keenEvents('devicestate')).length === count + 1,
        90_000,
        1000,
      ),
    );
    const after = await lampStatesJobsPerWorker(3);
    const done = after.map((n, i) => n - before[i]!);
    console.log(`compose check: lamp-states jobs per worker for ${count} states: ${done.join(', ')}`);
    for (const [i, n] of done.entries()) expect(n, `worker ${i + 1} took no job`).toBeGreaterThan(0);
  }, 600_000);

  it('`docker compose down` then `up` again keeps the secrets and the CA', async () => {
    const hashes = await secretHashes();
    await withLogs(compose(['down'], 300_000));
    // Volumes stay: only containers and the network went.
    await up();
    expect(await secretHashes()).toBe(hashes);
    const log = await compose(['logs', '--no-color', '--no-log-prefix', 'secrets-init']);
    for (const file of SECRET_FILES) expect(log).toContain(`/run/secrets/lampi/${file}: kept from an earlier start`);
    expect(log).toContain('TLS certificates kept from an earlier start');
    // The registry survived (same row, same code), and the lamp's bridge logs in again by itself
    // (the broker's log is the new container's).
    const code = await registry(`SELECT association_code FROM devices WHERE device_id = '${device}'`);
    expect(code).toBe(associationCode);
    await withLogs(
      waitFor(
        "the lamp's bridge logged in again",
        async () => (await compose(['logs', '--no-color', 'mosquitto'])).includes(`as ${device}_broker`),
        90_000,
        1000,
      ),
    );
  }, 900_000);
});
