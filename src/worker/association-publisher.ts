/**
 * Tells a new lamp its association code, the way LAMPI did: a retained message on the lamp's
 * `associated` topic, so a lamp that is offline for a moment still finds it when it returns.
 */
import { hostname } from 'node:os';
import mqtt, { type MqttClient } from 'mqtt';
import type { Logger } from '../shared/logger.js';
import { describe, safeUrl, StartupError } from '../shared/queues.js';
import { associationTopic } from '../shared/topics.js';

export interface AssociationPublisherOptions {
  url: string;
  username?: string;
  password?: string;
  clientIdBase: string;
  logger: Logger;
  connectTimeoutMs?: number;
}

export class AssociationPublisher {
  private constructor(private readonly client: MqttClient) {}

  static async connect(options: AssociationPublisherOptions): Promise<AssociationPublisher> {
    const client = mqtt.connect(options.url, {
      clientId: `${options.clientIdBase}-worker-${hostname()}-${process.pid}`.slice(0, 64),
      clean: true,
      protocolVersion: 4,
      reconnectPeriod: 1000,
      connectTimeout: options.connectTimeoutMs ?? 10_000,
      ...(options.username ? { username: options.username } : {}),
      ...(options.password ? { password: options.password } : {}),
    });
    const log = options.logger.child({ mqtt_client: client.options.clientId });
    client.on('offline', () => log.warn('MQTT connection lost; reconnecting'));
    client.on('error', (err) => log.error({ err: describe(err) }, 'MQTT error'));
    const where = `MQTT_URL=${safeUrl(options.url)}`;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new StartupError(`cannot reach the MQTT broker at ${where}: start it or fix MQTT_URL`)), options.connectTimeoutMs ?? 10_000);
      client.once('connect', () => {
        clearTimeout(timer);
        resolve();
      });
      client.once('error', (err) => {
        clearTimeout(timer);
        reject(new StartupError(`the MQTT broker at ${where} refused us (${describe(err)}): check MQTT_URL, MQTT_USERNAME and MQTT_PASSWORD`));
      });
    }).catch(async (err: unknown) => {
      await client.endAsync(true);
      throw err;
    });
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
