/**
 * The MQTT side of the subscriber. MQTT.js hands a connection's messages to `handleMessage`
 * one at a time and reads the next only after it sends the PUBACK, which would allow one
 * message in flight per connection. We take the acknowledgement over instead: each message is
 * handed to the intake at once and MQTT.js is told not to acknowledge it; its PUBACK is written
 * when Redis has stored it, on the same connection it arrived on, or never (after a reconnect
 * the broker resends it). The broker's in-flight window (`max_inflight_messages`) then bounds
 * the messages waiting per connection, and the intake stores them in groups.
 *
 * Several connections share the lamp-state topics through `$share/<group>/...`; the broker
 * spreads messages over them (and over any other subscriber replica in the same group).
 *
 * Mosquitto does not deliver `$SYS` topics to shared subscriptions, so bridge states are read
 * by the first connection alone, with a plain subscription; that one also gets the retained
 * replay of every connected lamp's state after it subscribes.
 */
import type { MqttClient } from 'mqtt';
import mqttPacket from 'mqtt-packet';
import type { Logger } from '../shared/logger.js';
import type { MqttMessage } from '../shared/message.js';
import { firstConnect, openMqttClient, type MqttSettings } from '../shared/mqtt.js';
import { BRIDGE_STATE_TOPIC, LAMP_CHANGED_TOPICS } from '../shared/topics.js';

export interface SubscriberConnectionOptions {
  mqtt: MqttSettings;
  clientIdBase: string;
  shareGroup: string;
  connections: number;
  logger: Logger;
  onMessage(session: string, message: MqttMessage): Promise<void>;
}

const ACK_IS_OURS = new Error('acknowledged by the subscriber once stored');

/**
 * The messages of a group are stored together and acknowledged in the same turn: corked until
 * the turn ends, their PUBACKs leave in one write, not one system call each.
 */
function writePuback(stream: MqttClient['stream'], packetId: number): void {
  if (!stream.writableCorked) {
    stream.cork();
    process.nextTick(() => stream.uncork());
  }
  stream.write(mqttPacket.generate({ cmd: 'puback', messageId: packetId }));
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
    const packetId = packet.messageId;
    const message: MqttMessage = {
      topic: packet.topic,
      payload: typeof packet.payload === 'string' ? Buffer.from(packet.payload) : packet.payload,
      retain: packet.retain,
      dup: packet.dup,
      ...(packetId !== undefined ? { packetId } : {}),
    };
    const handled = options.onMessage(clientId, message);
    if (packet.qos === 0 || packetId === undefined) {
      // Nothing to acknowledge; waiting still keeps a flood of QoS 0 messages from piling up.
      handled.then(
        () => done(),
        (err: unknown) => log.error({ err }, 'QoS 0 message dropped: handling failed'),
      );
      return;
    }
    const stream = client.stream;
    handled.then(
      () => {
        // Only on the connection the message came on: a packet id means nothing on another.
        if (client.stream !== stream || !client.connected || stream.destroyed) return;
        writePuback(stream, packetId);
      },
      (err: unknown) => log.error({ err }, 'message left unacknowledged: handling failed'),
    );
    // MQTT.js sends no PUBACK for a message whose handler reports an error, and reads on.
    done(ACK_IS_OURS);
  };
  const topics = subscriptionsFor(index, options.shareGroup);
  let reconnect = false;
  client.on('connect', (connack) => {
    // A reconnect is reported once for all connections, by the DependencyWatch.
    log[reconnect ? 'debug' : 'info']({ session_present: connack.sessionPresent }, 'connected to MQTT broker');
    reconnect = true;
    // Re-subscribing is harmless with a present session and required without one.
    client.subscribe(topics, { qos: 1 }, (err, granted) => {
      if (err) return log.error({ err }, 'subscribe failed');
      const refused = granted?.filter((g) => g.qos === 128).map((g) => g.topic) ?? [];
      if (refused.length > 0) log.error({ topics: refused }, 'broker refused subscriptions: check the ACL for MQTT_USERNAME');
      else log.debug({ topics }, 'subscribed');
    });
  });
  return client;
}
