/** How our processes connect to the broker, and the one line they say when they cannot. */
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import type { Config } from './config.js';
import { isConnectionError } from './dependency-watch.js';
import type { Logger } from './logger.js';
import { StartupError, describeError } from './errors.js';
import { safeUrl } from './redact.js';

export interface MqttSettings {
  url: string;
  username?: string;
  password?: string;
  connectTimeoutMs?: number;
}

export function mqttSettings(config: Config<'mqtt'>): MqttSettings {
  return {
    url: config.MQTT_URL,
    ...(config.MQTT_USERNAME ? { username: config.MQTT_USERNAME } : {}),
    ...(config.MQTT_PASSWORD ? { password: config.MQTT_PASSWORD } : {}),
  };
}

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
  const where = `MQTT_URL=${safeUrl(settings.url)}`;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new StartupError(`cannot reach the MQTT broker at ${where} (no answer in ${timeoutMs} ms): start it or fix MQTT_URL`)),
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
        reject(new StartupError(`the MQTT broker at ${where} refused our credentials: check MQTT_USERNAME and MQTT_PASSWORD`));
      } else {
        reject(new StartupError(`cannot reach the MQTT broker at ${where} (${describeError(err)}): start it or fix MQTT_URL`));
      }
    });
  });
}
