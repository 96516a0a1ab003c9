/**
 * Our own lamp registry (REGISTRY_SCHEMA=lampi) without the LAMPI site:
 *
 *   npm run devices -- list [--json]
 *   npm run devices -- show <device id> [--json]
 *   npm run devices -- claim <association code> <username>
 *   npm run devices -- delete <device id>
 *   npm run devices -- import <file.csv | file.json>
 *
 * `claim` gives the lamp to the user (created, active, when there is none) and then tells the
 * lamp, as the LAMPI site does: the retained `{"associated": true}` on its ASSOCIATION_TOPIC,
 * QoS 1, once the broker has acknowledged it. `delete` leaves the lamp's retained association
 * message on the broker; its next bridge connect registers it again, parked, with a new code,
 * which replaces that message. `import` adds the lamps of a fleet file all at once or not at all.
 *
 * With REGISTRY_SCHEMA=django the LAMPI site owns the lamps: this command says so and exits 1.
 *
 * Exit codes: 0 done; 1 bad arguments (with the usage line), a bad fleet file, or a service that
 * cannot be reached; 2 the named lamp, code or file does not exist.
 *
 * Settings: DATABASE_URL, REGISTRY_SCHEMA, DEFAULT_USER, ASSOCIATION_TOPIC, MQTT_URL,
 * MQTT_USERNAME, MQTT_PASSWORD, MQTT_CLIENT_ID (claim only reaches the broker).
 */
import { readFile } from 'node:fs/promises';
import { loadConfig, type Config } from '../shared/config.js';
import { createLogger, redactUrl } from '../shared/logger.js';
import { firstConnect, mqttSettings, openMqttClient } from '../shared/mqtt.js';
import { associationTopic } from '../shared/topics.js';
import { parseCommand, USAGE, type DevicesCommand } from './command.js';
import { DeviceAdmin } from './device-admin.js';
import { parseFleetFile } from './fleet-file.js';
import { bridgeText, lampDetails, lampJson, lampTable } from './output.js';
import { ConfigError, StartupError, UsageError, describeError } from '../shared/errors.js';
import { safeUrl } from '../shared/redact.js';
import { withTimeout } from '../shared/timeout.js';

type DevicesConfig = Config<'common' | 'database' | 'registry' | 'mqtt'>;

const PUBLISH_TIMEOUT_MS = 10_000;
/** Bad rows printed before the rest are only counted. */
const ERRORS_SHOWN = 50;

const out = (line: string) => process.stdout.write(`${line}\n`);
const err = (line: string) => process.stderr.write(`devices: ${line}\n`);

async function main(argv: string[]): Promise<number> {
  const parsed = parseCommand(argv);
  if (!parsed.ok) throw new UsageError(parsed.error);
  const command = parsed.command;
  if (command.name === 'help') {
    out(USAGE);
    return 0;
  }
  const config = loadConfig(['common', 'database', 'registry', 'mqtt']);
  if (config.REGISTRY_SCHEMA === 'django') {
    err('REGISTRY_SCHEMA=django: the LAMPI site owns the lamps; list, claim and delete them on the site (its admin), not here');
    return 1;
  }
  if (command.name === 'claim' && command.username === config.DEFAULT_USER) {
    throw new UsageError(
      `${command.username} is DEFAULT_USER, the owner of parked lamps: a lamp is parked again only by deleting it (it then comes back with a new code)`,
    );
  }
  if (command.name === 'import') return importFile(config, command.file);
  return withAdmin(config, (admin) => run(config, admin, command));
}

async function withAdmin(config: DevicesConfig, use: (admin: DeviceAdmin) => Promise<number>): Promise<number> {
  const admin = new DeviceAdmin({ databaseUrl: config.DATABASE_URL, defaultUser: config.DEFAULT_USER });
  try {
    await admin.check();
    return await use(admin);
  } finally {
    await admin.close();
  }
}

async function run(
  config: DevicesConfig,
  admin: DeviceAdmin,
  command: Exclude<DevicesCommand, { name: 'help' | 'import' }>,
): Promise<number> {
  const topicOf = (deviceId: string) => associationTopic(deviceId, config.ASSOCIATION_TOPIC);
  if (command.name === 'list') {
    const lamps = await admin.list();
    if (command.json)
      out(
        JSON.stringify(
          lamps.map((lamp) => lampJson(lamp, topicOf(lamp.deviceId))),
          null,
          2,
        ),
      );
    else lampTable(lamps).forEach(out);
    return 0;
  }
  if (command.name === 'show') {
    const lamp = await admin.show(command.deviceId);
    if (!lamp) return notFound(`no lamp ${command.deviceId} in the registry`);
    if (command.json) out(JSON.stringify(lampJson(lamp, topicOf(lamp.deviceId)), null, 2));
    else lampDetails(lamp, topicOf(lamp.deviceId)).forEach(out);
    return 0;
  }
  if (command.name === 'delete') {
    const lamp = await admin.delete(command.deviceId);
    if (!lamp) return notFound(`no lamp ${command.deviceId} in the registry`);
    out(`deleted lamp ${lamp.deviceId} (owner ${lamp.owner}, bridge ${bridgeText(lamp)})`);
    out(
      `its retained association message stays on ${topicOf(lamp.deviceId)} until its bridge next connects: ` +
        `the lamp is then registered again, parked, with a new code, which replaces that message, and an activations event`,
    );
    if (lamp.bridgeConnected) out("its bridge is connected now: restart the lamp's broker (or its bridge) to register it again now");
    return 0;
  }
  return claim(config, admin, command.code, command.username);
}

/** The broker first: when it cannot be reached, the registry is left as it was. */
async function claim(config: DevicesConfig, admin: DeviceAdmin, code: string, username: string): Promise<number> {
  const settings = { ...mqttSettings(config), connectTimeoutMs: 5_000 };
  const client = openMqttClient(
    settings,
    { clientId: `${config.MQTT_CLIENT_ID}-devices-${process.pid}`.slice(0, 64), clean: true },
    createLogger('devices', 'silent'),
  );
  try {
    await firstConnect(client, settings);
    const claimed = await admin.claim(code, username);
    if (!claimed) return notFound(`no lamp has the association code ${code}`);
    const { lamp } = claimed;
    const topic = associationTopic(lamp.deviceId, config.ASSOCIATION_TOPIC);
    const whose =
      claimed.previousOwner === username ? `was already ${username}'s` : `is now ${username}'s (it was ${claimed.previousOwner}'s)`;
    try {
      await withTimeout(client.publishAsync(topic, JSON.stringify({ associated: true }), { qos: 1, retain: true }), PUBLISH_TIMEOUT_MS);
    } catch (e) {
      throw new StartupError(
        `lamp ${lamp.deviceId} ${whose} in the registry, but the broker at ` +
          `MQTT_URL=${safeUrl(config.MQTT_URL)} did not acknowledge its association message ` +
          `(${describeError(e)}): run the same claim again to send it`,
      );
    }
    out(`claimed: lamp ${lamp.deviceId} ${whose}${claimed.userCreated ? `; user ${username} was created (active)` : ''}`);
    out(`told the lamp: {"associated": true} retained on ${topic}, acknowledged by the broker`);
    return 0;
  } finally {
    await client.endAsync(true).catch(() => {});
  }
}

async function importFile(config: DevicesConfig, file: string): Promise<number> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return notFound(`no file ${file}`);
    err(`cannot read ${file} (${describeError(e)})`);
    return 1;
  }
  const parsed = parseFleetFile(text);
  if (!parsed.ok) return badRows(file, parsed.errors);
  return withAdmin(config, async (admin) => {
    const result = await admin.import(parsed.rows);
    if (!result.ok) return badRows(file, result.errors);
    for (const { row, differences } of result.kept) {
      if (differences.length > 0)
        out(
          `${file} line ${row.line}: lamp ${row.deviceId} is already registered, kept as registered ` +
            `(${differences.join('; ')}); delete it and import again to take the file's`,
        );
    }
    const parked = result.added.filter((row) => row.owner === config.DEFAULT_USER).length;
    const differing = result.kept.filter((kept) => kept.differences.length > 0).length;
    out(
      `imported ${file}: ${parsed.rows.length} lamp${parsed.rows.length === 1 ? '' : 's'}: ` +
        `${result.added.length} added (${result.added.length - parked} claimed, ${parked} parked), ` +
        `${result.usersCreated.length} user${result.usersCreated.length === 1 ? '' : 's'} created; ` +
        `${result.kept.length} already registered, kept as registered` +
        (differing > 0 ? ` (${differing} of them differ from the file, above)` : ''),
    );
    return 0;
  });
}

function badRows(file: string, errors: Array<{ line: number; reason: string }>): number {
  for (const e of errors.slice(0, ERRORS_SHOWN)) err(`${file}${e.line > 0 ? ` line ${e.line}` : ''}: ${e.reason}`);
  if (errors.length > ERRORS_SHOWN) err(`… and ${errors.length - ERRORS_SHOWN} more`);
  err(`nothing imported from ${file}: fix ${errors.length === 1 ? 'this row' : `these ${errors.length} rows`} and run the import again`);
  return 1;
}

function notFound(message: string): number {
  err(message);
  return 2;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e: unknown) => {
    if (e instanceof UsageError) {
      err(e.message);
      process.stderr.write(`${USAGE}\n`);
    } else if (e instanceof ConfigError || e instanceof StartupError) {
      err(e.message);
    } else {
      err(redactUrl((e as Error).stack ?? String(e)));
    }
    process.exit(1);
  },
);
