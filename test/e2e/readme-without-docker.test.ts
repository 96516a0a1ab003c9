/**
 * The README's "Running without Docker" block, taken from README.md between its markers and run
 * with bash as an operator would paste it: the shipped Mosquitto configuration, migrate,
 * keen-sink, a subscriber and two workers. A lamp's bridge connects and the lamp sends a state;
 * its events must arrive at keen-sink, read back with the read key. Only the services' addresses
 * come from the test (its own Redis, free ports, scratch databases), through the variables the
 * block reads. Every process the block started is in one process group, killed at the end.
 */
import { spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import mqtt from 'mqtt';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { randomDeviceId } from '../support/ids.js';
import { freePort, ROOT, sleep, startRedis, waitFor } from '../support/processes.js';

const services = inject('services');

/** The shell block between the README's markers, without its fence. */
function readmeBlock(): string {
  const readme = readFileSync(path.join(ROOT, 'README.md'), 'utf8');
  const match = /<!-- non-docker:start -->\n```sh\n([\s\S]*?)\n```\n<!-- non-docker:end -->/.exec(readme);
  if (!match) throw new Error('README.md has no ```sh block between <!-- non-docker:start --> and <!-- non-docker:end -->');
  return match[1]!;
}

/** Pids still in a process group. */
function groupMembers(pgid: number): number[] {
  return readdirSync('/proc')
    .filter((entry) => /^\d+$/.test(entry))
    .flatMap((pid) => {
      try {
        // Fields after the command (which is in parentheses): state, ppid, pgrp, ...
        const fields = readFileSync(`/proc/${pid}/stat`, 'utf8')
          .replace(/^.*\) /s, '')
          .split(' ');
        return fields[0] !== 'Z' && Number(fields[2]) === pgid ? [Number(pid)] : [];
      } catch {
        return []; // gone meanwhile
      }
    });
}

describe('README: Running without Docker', () => {
  const suffix = Math.random().toString(16).slice(2, 10);
  const local = mkdtempSync(path.join(tmpdir(), 'lampi-readme-'));
  chmodSync(local, 0o755); // as a folder made in the checkout is: a broker started as root reads it as user mosquitto
  const databases = [`lampi_readme_${suffix}`, `keen_readme_${suffix}`];
  const database = (name: string) => {
    const url = new URL(services.postgres);
    url.pathname = `/${name}`;
    return url.toString();
  };
  const env = {
    MQTT_USERNAME: 'lampi-svc',
    MQTT_PASSWORD: `pw-${suffix}`,
    KEEN_PROJECT_ID: 'readme',
    KEEN_READ_KEY: `read-${suffix}`,
    KEEN_WRITE_KEY: `write-${suffix}`,
  };
  let redis: Awaited<ReturnType<typeof startRedis>>;
  let pgid: number | undefined;
  let ports: { mqtt: number; mqtts: number; sink: number };
  let lamp: mqtt.MqttClient | undefined;

  const logs = () =>
    readdirSync(local)
      .filter((file) => file.endsWith('.log'))
      .map((file) => `--- ${file}\n${readFileSync(path.join(local, file), 'utf8').slice(-3000)}`)
      .join('\n');

  beforeAll(async () => {
    redis = await startRedis({ appendonly: false });
    ports = { mqtt: await freePort(), mqtts: await freePort(), sink: await freePort() };
  });

  afterAll(async () => {
    await lamp?.endAsync(true).catch(() => {});
    if (pgid !== undefined && groupMembers(pgid).length > 0) {
      process.kill(-pgid, 'SIGTERM');
      // The services stop in order on SIGTERM; whatever is left after that is killed.
      for (let i = 0; i < 100 && groupMembers(pgid).length > 0; i += 1) await sleep(100);
      if (groupMembers(pgid).length > 0) process.kill(-pgid, 'SIGKILL');
      await waitFor('every process the block started gone', () => groupMembers(pgid!).length === 0, 5_000);
    }
    await redis?.kill();
    const admin = new pg.Client({ connectionString: services.postgres });
    await admin.connect();
    for (const name of databases) await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    await admin.end();
    rmSync(local, { recursive: true, force: true });
  });

  it("pasted into bash, starts a pipeline that delivers a lamp's events to keen-sink", async () => {
    const block = readmeBlock();
    // What the operator reads is what runs: the block starts every process the section names.
    for (const line of [
      'deploy/mosquitto/run-local.sh',
      'npm run migrate',
      'npm run keen-sink',
      'npm run subscriber',
      'KEEN_API_URL=',
      'KEEN_READ_KEY=',
    ]) {
      expect(block).toContain(line);
    }
    expect(block.match(/npm run worker/g)).toHaveLength(2);

    const shell = spawn('bash', ['-e', '-c', block], {
      cwd: ROOT,
      detached: true, // its own process group: every process it starts stays in it
      stdio: ['ignore', 'pipe', 'pipe'],
      env: {
        PATH: process.env.PATH,
        HOME: process.env.HOME,
        ...env,
        DATABASE_URL: database(databases[0]!),
        KEEN_SINK_DATABASE_URL: database(databases[1]!),
        REDIS_URL: redis.url,
        MQTT_PORT: String(ports.mqtt),
        MQTTS_PORT: String(ports.mqtts),
        KEEN_SINK_PORT: String(ports.sink),
        // Other processes on this machine may hold the default metrics ports.
        METRICS_PORT: '0',
        SECOND_WORKER_METRICS_PORT: '0',
        LOCAL_DIR: local,
      },
    });
    pgid = shell.pid;
    let output = '';
    shell.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    shell.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const code = await new Promise<number | null>((resolve) => shell.once('exit', resolve));
    expect(code, `${output}\n${logs()}`).toBe(0);
    expect(output).toMatch(/^mosquitto \(pid \d+\) listens on port \d+ with deploy\/mosquitto\/mosquitto\.conf/m);
    expect(output).toMatch(/^migrate: .*(applied|up to date)/m);
    expect(output).not.toContain(env.KEEN_READ_KEY);
    // The shipped broker configuration is the one running.
    expect(readFileSync(path.join(local, 'mosquitto/config/mosquitto.conf'), 'utf8')).toMatch(/^max_queued_messages 1000000$/m);

    const ready = (file: string, msg: string) => readFileSync(path.join(local, file), 'utf8').includes(`"msg":"${msg}"`);
    await waitFor(
      'keen-sink, the subscriber and both workers ready',
      () =>
        ready('keen-sink.log', 'keen-sink ready') &&
        ready('subscriber.log', 'subscriber ready') &&
        ready('worker-1.log', 'worker ready') &&
        ready('worker-2.log', 'worker ready'),
      60_000,
      200,
    ).catch((err: unknown) => {
      throw new Error(`${String(err)}\n${logs()}`);
    });
    for (const file of ['worker-1.log', 'worker-2.log'])
      expect(readFileSync(path.join(local, file), 'utf8')).toContain(`"keen_api":"http://127.0.0.1:${ports.sink}/"`);

    // A lamp's bridge connects (the broker's notification, retained) and the lamp sends a state.
    const device = randomDeviceId();
    lamp = await mqtt.connectAsync(`mqtt://127.0.0.1:${ports.mqtt}`, {
      username: env.MQTT_USERNAME,
      password: env.MQTT_PASSWORD,
      reconnectPeriod: 0,
      clientId: `readme-${suffix}`,
    });
    await lamp.publishAsync(`$SYS/broker/connection/${device}_broker/state`, '1', { qos: 1, retain: true });
    await lamp.publishAsync(
      `/devices/${device}/lamp/changed`,
      JSON.stringify({ color: { h: 0.5, s: 1 }, brightness: 0.8, on: true, client: 'lamp_ui' }),
      { qos: 1 },
    );

    const query = async (collection: string) => {
      const url = new URL(`http://127.0.0.1:${ports.sink}/3.0/projects/${env.KEEN_PROJECT_ID}/queries/extraction`);
      url.searchParams.set('event_collection', collection);
      url.searchParams.set('timeframe', 'this_1_days');
      url.searchParams.set('filters', JSON.stringify([{ property_name: 'device_id', operator: 'eq', property_value: device }]));
      const response = await fetch(url, { headers: { Authorization: env.KEEN_READ_KEY } });
      expect(response.status).toBe(200);
      return ((await response.json()) as { result: Array<Record<string, any>> }).result;
    };
    const events = await waitFor(
      'activations, devicemonitoring and devicestate at keen-sink',
      async () => {
        const found = await Promise.all(['activations', 'devicemonitoring', 'devicestate'].map(query));
        return found.every((list) => list.length > 0) ? found : undefined;
      },
      30_000,
      250,
    ).catch((err: unknown) => {
      throw new Error(`${String(err)}\n${logs()}`);
    });
    const [activations, monitoring, states] = events;
    expect(activations).toHaveLength(1);
    expect(monitoring).toEqual([expect.objectContaining({ device_id: device, state: 'connected' })]);
    expect(states).toEqual([
      expect.objectContaining({ device_id: device, state: { color: { h: 0.5, s: 1 }, brightness: 0.8, on: true, client: 'lamp_ui' } }),
    ]);
  });
});
