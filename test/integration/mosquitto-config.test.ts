/**
 * The compose broker's configuration (deploy/mosquitto) run by a real Mosquitto: the entrypoint
 * writes the password file and ACL, our service user may do everything, a lamp only its own
 * topics, nobody gets in anonymously, and an offline session keeps far more than 1000 messages.
 * The TLS listener for lamps runs with certificates from scripts/make-tls-certs.sh: a client that
 * verifies against their CA gets in, one trusting another CA or expecting another name is refused.
 * Only the container paths and the ports are rewritten; every other line is the shipped one.
 */
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, copyFileSync, mkdirSync, mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir, userInfo } from 'node:os';
import path from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { freePort, ROOT, sleep, waitFor, waitForPort } from '../support/processes.js';

const DEPLOY = path.join(ROOT, 'deploy/mosquitto');
const SERVICE = { username: 'lampi-svc', password: 'p:w d$ "x\'' }; // a colon, a space, quotes, a dollar
const LAMP = { id: 'b827eb000001', password: 'lamp-one-pw' };
const OTHER = { id: 'b827eb000002', password: 'lamp-two-pw' };

interface Broker {
  port: number;
  tlsPort: number;
  root: string;
  output: () => string;
  stop(): Promise<void>;
}

function mosquittoUid(): { uid: number; gid: number } | undefined {
  const id = spawnSync('id', ['-u', 'mosquitto']);
  const gid = spawnSync('id', ['-g', 'mosquitto']);
  return id.status === 0 ? { uid: Number(id.stdout.toString()), gid: Number(gid.stdout.toString()) } : undefined;
}

/** Certificates as secrets-init makes them, for `names`; `dir` holds ca.crt, server.crt, server.key. */
function makeCerts(dir: string, ...names: string[]): string {
  const made = spawnSync('sh', [path.join(ROOT, 'scripts/make-tls-certs.sh'), dir, ...names], { encoding: 'utf8' });
  if (made.status !== 0) throw new Error(`make-tls-certs.sh failed: ${made.stderr}`);
  return dir;
}

/** A folder laid out like the container's /mosquitto, with the shipped files in config/ (and the secrets volume's tls/ in secrets/). */
function layout(lampsPasswd?: string): { root: string; conf: string } {
  const root = mkdtempSync(path.join(tmpdir(), 'lampi-mosquitto-conf-'));
  chmodSync(root, 0o755); // mosquitto drops to its own user when started as root
  for (const dir of ['config', 'data', 'run']) mkdirSync(path.join(root, dir), { mode: 0o755 });
  makeCerts(path.join(root, 'secrets/tls'), 'localhost', '127.0.0.1');
  copyFileSync(path.join(DEPLOY, 'acl.template'), path.join(root, 'config/acl.template'));
  if (lampsPasswd !== undefined) writeFileSync(path.join(root, 'config/lamps.passwd'), lampsPasswd);
  const owner = userInfo().uid === 0 ? mosquittoUid() : undefined;
  if (owner) chownSync(path.join(root, 'data'), owner.uid, owner.gid);
  return { root, conf: path.join(root, 'config/mosquitto.conf') };
}

async function startBroker(lampsPasswd?: string, env: Record<string, string> = {}): Promise<Broker> {
  const { root, conf } = layout(lampsPasswd);
  const port = await freePort();
  const tlsPort = await freePort();
  const shipped = readFileSync(path.join(DEPLOY, 'mosquitto.conf'), 'utf8');
  expect(shipped).toMatch(/^listener 1883$/m);
  expect(shipped).toMatch(/^listener 8883$/m);
  writeFileSync(
    conf,
    shipped
      .replaceAll('/mosquitto/', `${root}/`)
      .replace(/^listener 1883$/m, `listener ${port} 127.0.0.1`)
      .replace(/^listener 8883$/m, `listener ${tlsPort} 127.0.0.1`),
  );
  // Our password reaches the broker as in compose: a file in the secrets volume.
  const passwordFile = path.join(root, 'secrets/mqtt-password');
  writeFileSync(passwordFile, SERVICE.password);
  const child = spawn('sh', [path.join(DEPLOY, 'entrypoint.sh'), 'mosquitto', '-c', conf], {
    env: {
      PATH: process.env.PATH,
      MOSQUITTO_CONFIG_DIR: path.join(root, 'config'),
      MOSQUITTO_RUN_DIR: path.join(root, 'run'),
      MQTT_TLS_DIR: path.join(root, 'secrets/tls'),
      MQTT_USERNAME: SERVICE.username,
      MQTT_PASSWORD_FILE: passwordFile,
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (c: Buffer) => (output += c.toString()));
  child.stderr.on('data', (c: Buffer) => (output += c.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  try {
    await Promise.race([
      Promise.all([waitForPort(port), waitForPort(tlsPort)]),
      exited.then(() => Promise.reject(new Error(`broker exited:\n${output}`))),
    ]);
  } catch (err) {
    child.kill();
    throw err;
  }
  return {
    port,
    tlsPort,
    root,
    output: () => output,
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}

function hashed(username: string, password: string): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'lampi-passwd-'));
  const file = path.join(dir, 'p');
  writeFileSync(file, '');
  const result = spawnSync('mosquitto_passwd', ['-b', file, username, password]);
  if (result.status !== 0) throw new Error(`mosquitto_passwd failed: ${result.stderr}`);
  return readFileSync(file, 'utf8');
}

const clients: MqttClient[] = [];
async function connect(
  port: number,
  options: { username?: string; password?: string; clientId?: string; clean?: boolean },
): Promise<MqttClient> {
  const client = await mqtt.connectAsync(`mqtt://127.0.0.1:${port}`, {
    protocolVersion: 4, // a lamp's bridge speaks MQTT 3.1.1
    reconnectPeriod: 0,
    connectTimeout: 5000,
    clientId: options.clientId ?? `t-${Math.random().toString(16).slice(2, 10)}`,
    clean: options.clean ?? true,
    username: options.username,
    password: options.password,
  });
  clients.push(client);
  return client;
}

async function refused(port: number, options: { username?: string; password?: string }): Promise<string> {
  try {
    const client = await connect(port, options);
    await client.endAsync();
  } catch (err) {
    return String((err as Error).message);
  }
  throw new Error('expected the broker to refuse the connection');
}

function collect(client: MqttClient): Array<{ topic: string; payload: string }> {
  const seen: Array<{ topic: string; payload: string }> = [];
  client.on('message', (topic, payload) => seen.push({ topic, payload: payload.toString() }));
  return seen;
}

describe('deploy/mosquitto: the compose broker configuration', () => {
  let broker: Broker;
  beforeAll(async () => {
    // The lamps' file: two lamps, a comment, and a line that tries to take over our service user.
    broker = await startBroker(
      `# lamps\n${hashed(LAMP.id, LAMP.password)}${hashed(OTHER.id, OTHER.password)}${hashed(SERVICE.username, 'taken-over')}`,
    );
  });
  afterAll(async () => {
    await Promise.all(clients.map((c) => c.endAsync(true).catch(() => {})));
    await broker?.stop();
  });

  it('the entrypoint says what it wrote, and the files are private', () => {
    expect(broker.output()).toContain(`service user '${SERVICE.username}' and 2 lamp(s)`);
    for (const file of ['passwd', 'acl']) expect(statSync(path.join(broker.root, 'run', file)).mode & 0o077).toBe(0);
    const passwd = readFileSync(path.join(broker.root, 'run/passwd'), 'utf8');
    expect(passwd).not.toContain(SERVICE.password);
    expect(
      passwd
        .split('\n')
        .filter(Boolean)
        .map((l) => l.split(':')[0]),
    ).toEqual([LAMP.id, OTHER.id, SERVICE.username]);
    expect(readFileSync(path.join(broker.root, 'run/acl'), 'utf8')).toMatch(new RegExp(`^user ${SERVICE.username}$`, 'm'));
  });

  it('refuses anonymous clients, wrong passwords, and a lamps.passwd entry for our service user', async () => {
    expect(await refused(broker.port, {})).toMatch(/Not authorized|not authorised/i);
    expect(await refused(broker.port, { username: LAMP.id, password: 'wrong' })).toMatch(
      /Not authorized|not authorised|Bad username or password/i,
    );
    expect(await refused(broker.port, { username: SERVICE.username, password: 'taken-over' })).toMatch(
      /Not authorized|not authorised|Bad username or password/i,
    );
    const service = await connect(broker.port, SERVICE);
    expect(service.connected).toBe(true);
  });

  it('service user reads everything (shared subscriptions and $SYS too); a lamp publishes only under its own id', async () => {
    const service = await connect(broker.port, SERVICE);
    const seen = collect(service);
    await service.subscribeAsync(['#', '$SYS/broker/connection/+/state'], { qos: 1 });
    const shared = await connect(broker.port, SERVICE);
    const seenShared = collect(shared);
    await shared.subscribeAsync(['$share/lampi/devices/+/lamp/changed', '$share/lampi//devices/+/lamp/changed'], { qos: 1 });

    const lamp = await connect(broker.port, { username: LAMP.id, password: LAMP.password, clientId: `${LAMP.id}_broker` });
    await lamp.publishAsync(`/devices/${LAMP.id}/lamp/changed`, 'own-slash', { qos: 1 });
    await lamp.publishAsync(`devices/${LAMP.id}/lamp/changed`, 'own', { qos: 1 });
    await lamp.publishAsync(`$SYS/broker/connection/${LAMP.id}_broker/state`, '1', { qos: 1, retain: true });
    // Denied publishes are acknowledged (MQTT 3.1.1 cannot say no) and dropped.
    await lamp.publishAsync(`/devices/${OTHER.id}/lamp/changed`, 'DENIED other lamp', { qos: 1 });
    await lamp.publishAsync(`$SYS/broker/connection/${OTHER.id}_broker/state`, 'DENIED other state', { qos: 1 });
    await lamp.publishAsync('some/other/topic', 'DENIED elsewhere', { qos: 1 });
    // With the other lamp's client id, still its own username: the state topic stays closed.
    const spoof = await connect(broker.port, { username: LAMP.id, password: LAMP.password, clientId: `${OTHER.id}_broker` });
    await spoof.publishAsync(`$SYS/broker/connection/${OTHER.id}_broker/state`, 'DENIED spoofed client id', { qos: 1 });
    await lamp.publishAsync(`devices/${LAMP.id}/lamp/changed`, 'sentinel', { qos: 1 });

    await waitFor('the sentinel', () => seen.some((m) => m.payload === 'sentinel'), 10_000);
    await waitFor('the sentinel on the shared subscription', () => seenShared.some((m) => m.payload === 'sentinel'), 10_000);
    await sleep(200);
    expect(seen.map((m) => `${m.topic} ${m.payload}`)).toEqual([
      `/devices/${LAMP.id}/lamp/changed own-slash`,
      `devices/${LAMP.id}/lamp/changed own`,
      `$SYS/broker/connection/${LAMP.id}_broker/state 1`,
      `devices/${LAMP.id}/lamp/changed sentinel`,
    ]);
    expect(seenShared.map((m) => m.payload)).toEqual(['own-slash', 'own', 'sentinel']);
  });

  it("a lamp reads its own association topic, never another lamp's", async () => {
    const lamp = await connect(broker.port, { username: LAMP.id, password: LAMP.password, clientId: `${LAMP.id}_broker` });
    const seen = collect(lamp);
    await lamp.subscribeAsync(['#', `/devices/${OTHER.id}/lamp/associated`, `/devices/${LAMP.id}/lamp/associated`], { qos: 1 });
    const service = await connect(broker.port, SERVICE);
    await service.publishAsync(`/devices/${OTHER.id}/lamp/associated`, 'DENIED other code', { qos: 1 });
    await service.publishAsync(`/devices/${LAMP.id}/lamp/associated`, 'own code', { qos: 1 });
    await waitFor("the lamp's association code", () => seen.some((m) => m.payload === 'own code'), 10_000);
    await sleep(200);
    expect(seen.map((m) => m.payload).filter((p) => p.startsWith('DENIED'))).toEqual([]);
  });

  it("docker-compose.yml's healthcheck for the broker passes against it (and fails with a wrong password)", () => {
    const compose = parse(readFileSync(path.join(ROOT, 'docker-compose.yml'), 'utf8'), { merge: true }) as {
      services: { mosquitto: { healthcheck: { test: string[] } } };
    };
    const [kind, command] = compose.services.mosquitto.healthcheck.test;
    expect(kind).toBe('CMD-SHELL');
    const local = command!.replaceAll('$$', '$').replace('-p 1883', `-p ${broker.port}`);
    const run = (password: string) => {
      const file = path.join(mkdtempSync(path.join(tmpdir(), 'lampi-hc-')), 'pw');
      writeFileSync(file, password);
      return spawnSync('sh', ['-c', local], {
        env: { PATH: process.env.PATH, MQTT_USERNAME: SERVICE.username, MQTT_PASSWORD_FILE: file },
        timeout: 15_000,
      });
    };
    expect(run(SERVICE.password).status).toBe(0);
    expect(run('wrong').status).not.toBe(0);
  });

  it("an offline persistent session keeps 5000 QoS 1 messages (Mosquitto's default drops beyond 1000)", async () => {
    const clientId = 'lampi-svc-queue-test';
    const subscriber = await connect(broker.port, { ...SERVICE, clientId, clean: false });
    await subscriber.subscribeAsync('devices/+/lamp/changed', { qos: 1 });
    await subscriber.endAsync();

    const lamp = await connect(broker.port, { username: LAMP.id, password: LAMP.password, clientId: `${LAMP.id}_broker` });
    const total = 5000;
    const pending: Promise<unknown>[] = [];
    for (let i = 0; i < total; i++) pending.push(lamp.publishAsync(`devices/${LAMP.id}/lamp/changed`, String(i), { qos: 1 }));
    await Promise.all(pending);

    // The queue is delivered right after CONNACK: listen before connecting.
    const received = new Set<string>();
    const back = mqtt.connect(`mqtt://127.0.0.1:${broker.port}`, {
      protocolVersion: 4,
      reconnectPeriod: 0,
      clientId,
      clean: false,
      ...SERVICE,
    });
    clients.push(back);
    back.on('message', (_topic, payload) => received.add(payload.toString()));
    await waitFor(`${total} messages after reconnecting`, () => received.size >= total, 15_000).catch(() => {});
    expect(received.size, 'messages the broker kept for the offline session').toBe(total);
  });
});

describe('deploy/mosquitto: the TLS listener for lamps (certificates from scripts/make-tls-certs.sh)', () => {
  let broker: Broker;
  const tlsClients: MqttClient[] = [];
  beforeAll(async () => {
    broker = await startBroker(hashed(LAMP.id, LAMP.password));
  });
  afterAll(async () => {
    await Promise.all(tlsClients.map((c) => c.endAsync(true).catch(() => {})));
    await broker?.stop();
  });

  /** An MQTT.js client over mqtts, verifying the server against `ca` as a lamp's bridge does (bridge_insecure false). */
  /** `host` is the name the client expects in the certificate; it always connects to 127.0.0.1, where the broker listens. */
  async function connectTls(host: string, ca: string, login: { username: string; password: string }): Promise<MqttClient> {
    const client = await mqtt.connectAsync(`mqtts://127.0.0.1:${broker.tlsPort}`, {
      servername: host,
      protocolVersion: 4,
      reconnectPeriod: 0,
      connectTimeout: 5000,
      ca: readFileSync(ca),
      rejectUnauthorized: true,
      ...login,
    });
    tlsClients.push(client);
    return client;
  }
  async function tlsRefused(host: string, ca: string, login: { username: string; password: string }): Promise<string> {
    try {
      const client = await connectTls(host, ca, login);
      await client.endAsync();
    } catch (err) {
      return String((err as Error).message);
    }
    throw new Error('expected the TLS connection to be refused');
  }

  const ca = () => path.join(broker.root, 'secrets/tls/ca.crt');

  it('a lamp that verifies the broker against the CA logs in and publishes under its own id; by name and by address', async () => {
    const service = await connectTls('127.0.0.1', ca(), SERVICE);
    await service.subscribeAsync(`devices/${LAMP.id}/lamp/changed`, { qos: 1 });
    const seen = collect(service);
    const lamp = await connectTls('localhost', ca(), { username: LAMP.id, password: LAMP.password });
    await lamp.publishAsync(`devices/${LAMP.id}/lamp/changed`, 'over tls', { qos: 1 });
    await waitFor("the lamp's message over TLS", () => seen.some((m) => m.payload === 'over tls'), 5000);
  });

  it('refuses a client that trusts another CA, and one that expects a name the certificate does not carry', async () => {
    const other = makeCerts(mkdtempSync(path.join(tmpdir(), 'lampi-other-ca-')), 'localhost');
    expect(await tlsRefused('127.0.0.1', path.join(other, 'ca.crt'), SERVICE)).toMatch(/self[- ]signed|unable to verify|certificate/i);
    // Same CA, but the certificate is for localhost and 127.0.0.1 only.
    expect(await tlsRefused('broker.example.com', ca(), SERVICE)).toMatch(/altnames|does not match/i);
  });

  it('still needs a login over TLS', async () => {
    expect(await tlsRefused('127.0.0.1', ca(), { username: LAMP.id, password: 'wrong' })).toMatch(
      /Not authorized|Bad username or password/i,
    );
  });
});

describe('deploy/mosquitto/entrypoint.sh refuses to start a broker nobody can use', () => {
  it('without MQTT_PASSWORD: one line, exit 1', async () => {
    const { root } = layout();
    const result = spawnSync('sh', [path.join(DEPLOY, 'entrypoint.sh'), 'true'], {
      env: {
        PATH: process.env.PATH,
        MOSQUITTO_CONFIG_DIR: path.join(root, 'config'),
        MOSQUITTO_RUN_DIR: path.join(root, 'run'),
        MQTT_USERNAME: 'svc',
      },
    });
    expect(result.status).toBe(1);
    expect(result.stderr.toString()).toBe(
      'mosquitto entrypoint: MQTT_PASSWORD is required: set it (and MQTT_USERNAME) for the broker and our services, e.g. in .env\n',
    );
  });

  it('with a clear-text password in lamps.passwd: one line, exit 1', async () => {
    const { root } = layout(`${LAMP.id}:plain-text\n`);
    const result = spawnSync('sh', [path.join(DEPLOY, 'entrypoint.sh'), 'true'], {
      env: {
        PATH: process.env.PATH,
        MOSQUITTO_CONFIG_DIR: path.join(root, 'config'),
        MOSQUITTO_RUN_DIR: path.join(root, 'run'),
        MQTT_USERNAME: 'svc',
        MQTT_PASSWORD: 'pw',
      },
    });
    expect(result.status).toBe(1);
    expect(result.stderr.toString()).toMatch(
      /^mosquitto entrypoint: .*lamps\.passwd has lines that are not hashed: create it with mosquitto_passwd\n$/,
    );
  });
});
