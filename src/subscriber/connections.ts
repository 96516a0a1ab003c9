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
import type { MqttClient } from 'mqtt';
import type { Logger } from '../shared/logger.js';
import { firstConnect, openMqttClient, type MqttSettings } from '../shared/mqtt.js';
import { describe } from '../shared/queues.js';
import { BRIDGE_STATE_TOPIC, LAMP_CHANGED_TOPICS } from '../shared/topics.js';
import type { MqttMessage } from './intake.js';

export interface SubscriberConnectionOptions {
  mqtt: MqttSettings;
  clientIdBase: string;
  shareGroup: string;
  connections: number;
  logger: Logger;
  onMessage(session: string, message: MqttMessage): Promise<void>;
}

export function subscriptionsFor(index: number, shareGroup: string): string[] {
  const lamp = LAMP_CHANGED_TOPICS.map((topic) => `$share/${shareGroup}/${topic}`);
  return index === 0 ? [BRIDGE_STATE_TOPIC, ...lamp] : lamp;
}

export async function openSubscriberConnections(options: SubscriberConnectionOptions): Promise<MqttClient[]> {
  const clients = Array.from({ length: options.connections }, (_, index) => openConnection(options, index));
  try {
    await Promise.all(clients.map((client) => firstConnect(client, options.mqtt)));
  } catch (err) {
    await Promise.all(clients.map((client) => client.endAsync(true).catch(() => {})));
    throw err;
  }
  return clients;
}

function openConnection(options: SubscriberConnectionOptions, index: number): MqttClient {
  const clientId = `${options.clientIdBase}-sub-${index}`;
  const log = options.logger.child({ mqtt_client: clientId });
  // A persistent session: while we are away the broker queues QoS 1 messages for us.
  const client = openMqttClient(options.mqtt, { clientId, clean: false }, options.logger);
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
  return client;
}
