/** How our processes connect to the broker, and the one line they say when they cannot. */
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { brokerLoginSettings, type Config } from './config.js';
import { isConnectionError } from './dependency-watch.js';
import type { Logger } from './logger.js';
import { MqttLoginError, StartupError, describeError } from './errors.js';
import { safeUrl } from './redact.js';

export interface MqttSettings {
  url: string;
  username?: string;
  password?: string;
  connectTimeoutMs?: number;
  /** Its id in MQTT_BROKERS; absent for the one broker of MQTT_URL. */
  broker?: string;
}

/**
 * Every broker the fleet is on, the default (for jobs that name none) first: those of
 * MQTT_BROKERS, or the one of MQTT_URL.
 */
export function brokerSettings(config: Config<'mqtt'>): MqttSettings[] {
  const listed = config.MQTT_BROKERS ?? [];
  if (listed.length === 0) return [mqttSettings(config)];
  return listed.map((broker) => ({
    url: broker.url,
    broker: broker.id,
    ...(broker.username ? { username: broker.username } : {}),
    ...(broker.password ? { password: broker.password } : {}),
  }));
}

/** The default broker: MQTT_URL's, or the first of MQTT_BROKERS. */
export function mqttSettings(config: Config<'mqtt'>): MqttSettings {
  if ((config.MQTT_BROKERS ?? []).length > 0) return brokerSettings(config)[0]!;
  return {
    url: config.MQTT_URL,
    ...(config.MQTT_USERNAME ? { username: config.MQTT_USERNAME } : {}),
    ...(config.MQTT_PASSWORD ? { password: config.MQTT_PASSWORD } : {}),
  };
}

/** The setting that names a broker's address, and those that hold its login, for one-line errors. */
function settingNames(settings: MqttSettings): { where: string; fix: string; login: string } {
  if (settings.broker === undefined)
    return { where: `MQTT_URL=${safeUrl(settings.url)}`, fix: 'MQTT_URL', login: 'MQTT_USERNAME and MQTT_PASSWORD' };
  const own = brokerLoginSettings(settings.broker);
  return {
    where: `MQTT_BROKERS ${settings.broker}=${safeUrl(settings.url)}`,
    fix: 'MQTT_BROKERS',
    login: `${own.username} and ${own.password} (or MQTT_USERNAME and MQTT_PASSWORD)`,
  };
}

const noLog = (): void => {};

/**
 * A client that reconnects by itself; `clean: false` keeps a persistent session. Losing the
 * broker is said once per process, by its DependencyWatch (each connection's loss and each
 * failed reconnect are debug lines).
 */
export function openMqttClient(settings: MqttSettings, session: { clientId: string; clean: boolean }, logger: Logger): MqttClient {
  const options: IClientOptions = {
    clientId: session.clientId,
    clean: session.clean,
    protocolVersion: 4,
    reconnectPeriod: 1000,
    // With the default (true), MQTT.js silently drops a SUBSCRIBE for a topic it subscribed
    // before when the broker says the session is present. Mosquitto 2.0 restores a session
    // after a restart but not its `$share/...` subscriptions, so the subscriber's own
    // re-subscribe on 'connect' must really be sent (RELIABILITY.md, broker restart).
    resubscribe: false,
    connectTimeout: settings.connectTimeoutMs ?? 10_000,
    // MQTT.js calls its `debug` logger several times per packet, each call a rest-argument
    // array even when debugging is off; `log` is its option to replace it. DEBUG=mqttjs*
    // still turns MQTT.js's own trace on.
    ...(process.env.DEBUG ? {} : { log: noLog }),
    ...(settings.username ? { username: settings.username } : {}),
    ...(settings.password ? { password: settings.password } : {}),
  };
  const client = mqtt.connect(settings.url, options);
  const log = logger.child({ mqtt_client: session.clientId });
  // Before the first CONNACK, firstConnect turns an error into the one start-up line.
  let connectedOnce = false;
  client.once('connect', () => (connectedOnce = true));
  client.on('offline', () => log.debug('MQTT connection lost; reconnecting'));
  client.on('error', (err) => {
    if (!connectedOnce) return;
    if (isConnectionError(err)) log.debug({ err }, 'MQTT reconnect failed');
    else log.error({ err }, 'MQTT error');
  });
  return client;
}

/** Resolves on the first CONNACK; otherwise a StartupError naming the setting to fix. */
export function firstConnect(client: MqttClient, settings: MqttSettings): Promise<void> {
  const timeoutMs = settings.connectTimeoutMs ?? 10_000;
  const { where, fix, login } = settingNames(settings);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new StartupError(`cannot reach the MQTT broker at ${where} (no answer in ${timeoutMs} ms): start it or fix ${fix}`)),
      timeoutMs,
    );
    client.once('connect', () => {
      clearTimeout(timer);
      resolve();
    });
    client.once('error', (err) => {
      clearTimeout(timer);
      const code = (err as { code?: number | string }).code;
      // CONNACK "bad user name or password" / "not authorized", MQTT 3.1.1 and 5.
      if (code === 4 || code === 5 || code === 134 || code === 135) {
        reject(new MqttLoginError(`the MQTT broker at ${where} refused our credentials: check ${login}`));
      } else {
        reject(new StartupError(`cannot reach the MQTT broker at ${where} (${describeError(err)}): start it or fix ${fix}`));
      }
    });
  });
}
