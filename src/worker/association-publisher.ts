/**
 * Tells a new lamp its association code, the way LAMPI did: a retained message on the lamp's
 * `associated` topic, so a lamp that is offline for a moment still finds it when it returns.
 */
import { hostname } from 'node:os';
import type { MqttClient } from 'mqtt';
import type { Logger } from '../shared/logger.js';
import { firstConnect, openMqttClient, type MqttSettings } from '../shared/mqtt.js';
import { associationTopic } from '../shared/topics.js';

export class AssociationPublisher {
  private constructor(private readonly client: MqttClient) {}

  static async connect(settings: MqttSettings, clientIdBase: string, logger: Logger): Promise<AssociationPublisher> {
    const clientId = `${clientIdBase}-worker-${hostname()}-${process.pid}`.slice(0, 64);
    const client = openMqttClient(settings, { clientId, clean: true }, logger);
    try {
      await firstConnect(client, settings);
    } catch (err) {
      await client.endAsync(true);
      throw err;
    }
    return new AssociationPublisher(client);
  }

  get connected(): boolean {
    return this.client.connected;
  }

  /** Resolves once the broker acknowledged the message (QoS 1). */
  async publishUnassociated(deviceId: string, code: string): Promise<void> {
    if (!this.client.connected) throw new Error('MQTT broker not connected; will retry');
    await this.client.publishAsync(associationTopic(deviceId), JSON.stringify({ associated: false, code }), { qos: 1, retain: true });
  }

  async close(): Promise<void> {
    await this.client.endAsync(false);
  }
}
