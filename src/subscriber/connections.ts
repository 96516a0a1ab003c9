/**
 * The MQTT side of the subscriber. MQTT.js hands a connection's messages to `handleMessage`
 * one at a time and sends the PUBACK only when it is told the message is done, so each
 * connection has one message in flight. Throughput therefore comes from several connections
 * sharing the lamp-state topics through `$share/<group>/...`; the broker spreads messages over
 * them (and over any other subscriber replica in the same group).
 *
 * Mosquitto does not deliver `$SYS` topics to shared subscriptions, so bridge states are read
 * by the first connection alone, with a plain subscription; that one also gets the retained
 * replay of every connected lamp's state after it subscribes.
 */
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import type { Logger } from '../shared/logger.js';
import { safeUrl, StartupError, describe } from '../shared/queues.js';
import { BRIDGE_STATE_TOPIC, LAMP_CHANGED_TOPICS } from '../shared/topics.js';
import type { MqttMessage } from './intake.js';

export interface SubscriberConnectionOptions {
  url: string;
  username?: string;
  password?: string;
  clientIdBase: string;
  shareGroup: string;
  connections: number;
  logger: Logger;
  connectTimeoutMs?: number;
  onMessage(session: string, message: MqttMessage): Promise<void>;
}

export function subscriptionsFor(index: number, shareGroup: string): string[] {
  const lamp = LAMP_CHANGED_TOPICS.map((topic) => `$share/${shareGroup}/${topic}`);
  return index === 0 ? [BRIDGE_STATE_TOPIC, ...lamp] : lamp;
}

export async function openSubscriberConnections(options: SubscriberConnectionOptions): Promise<MqttClient[]> {
  const clients = Array.from({ length: options.connections }, (_, index) => openConnection(options, index));
  try {
    await Promise.all(clients.map((client) => firstConnect(client, options)));
  } catch (err) {
    await Promise.all(clients.map((client) => client.endAsync(true).catch(() => {})));
    throw err;
  }
  return clients;
}

function openConnection(options: SubscriberConnectionOptions, index: number): MqttClient {
  const clientId = `${options.clientIdBase}-sub-${index}`;
  const log = options.logger.child({ mqtt_client: clientId });
  const clientOptions: IClientOptions = {
    clientId,
    // A persistent session: while we are away the broker queues QoS 1 messages for us.
    clean: false,
    protocolVersion: 4,
    reconnectPeriod: 1000,
    connectTimeout: options.connectTimeoutMs ?? 10_000,
    ...(options.username ? { username: options.username } : {}),
    ...(options.password ? { password: options.password } : {}),
  };
  const client = mqtt.connect(options.url, clientOptions);
  client.handleMessage = (packet, done) => {
    const message: MqttMessage = {
      topic: packet.topic,
      payload: typeof packet.payload === 'string' ? Buffer.from(packet.payload) : packet.payload,
      retain: packet.retain,
      dup: packet.dup,
      ...(packet.messageId !== undefined ? { messageId: packet.messageId } : {}),
    };
    // The acknowledgement goes out only after `done()`, i.e. after Redis has the job.
    options.onMessage(clientId, message).then(
      () => done(),
      (err: unknown) => log.error({ err }, 'message left unacknowledged: handling failed'),
    );
  };
  const topics = subscriptionsFor(index, options.shareGroup);
  client.on('connect', (connack) => {
    log.info({ session_present: connack.sessionPresent }, 'connected to MQTT broker');
    // Re-subscribing is harmless with a present session and required without one.
    client.subscribe(topics, { qos: 1 }, (err, granted) => {
      if (err) return log.error({ err: describe(err) }, 'subscribe failed');
      const refused = granted?.filter((g) => g.qos === 128).map((g) => g.topic) ?? [];
      if (refused.length > 0) log.error({ topics: refused }, 'broker refused subscriptions: check the ACL for MQTT_USERNAME');
      else log.debug({ topics }, 'subscribed');
    });
  });
  client.on('offline', () => log.warn('MQTT connection lost; reconnecting'));
  client.on('error', (err) => log.error({ err: describe(err) }, 'MQTT error'));
  return client;
}

function firstConnect(client: MqttClient, options: SubscriberConnectionOptions): Promise<void> {
  return new Promise((resolve, reject) => {
    const where = `MQTT_URL=${safeUrl(options.url)}`;
    const timer = setTimeout(
      () => reject(new StartupError(`cannot reach the MQTT broker at ${where} (no answer in ${options.connectTimeoutMs ?? 10_000} ms): start it or fix MQTT_URL`)),
      options.connectTimeoutMs ?? 10_000,
    );
    client.once('connect', () => {
      clearTimeout(timer);
      resolve();
    });
    client.once('error', (err) => {
      clearTimeout(timer);
      const code = (err as { code?: number | string }).code;
      if (code === 4 || code === 5 || code === 134 || code === 135) {
        reject(new StartupError(`the MQTT broker at ${where} refused our credentials: check MQTT_USERNAME and MQTT_PASSWORD`));
      } else {
        reject(new StartupError(`cannot reach the MQTT broker at ${where} (${describe(err)}): start it or fix MQTT_URL`));
      }
    });
  });
}
