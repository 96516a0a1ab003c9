/**
 * Tells a lamp what the registry says of its association, the way LAMPI did: a retained message
 * on the lamp's association topic (ASSOCIATION_TOPIC), so a lamp that is offline for a moment
 * still finds it when it returns.
 */
import { hostname } from 'node:os';
import type { MqttClient } from 'mqtt';
import type { DependencyWatch } from '../shared/dependency-watch.js';
import type { Logger } from '../shared/logger.js';
import { firstConnect, openMqttClient, type MqttSettings } from '../shared/mqtt.js';
import { associationTopic, DEFAULT_ASSOCIATION_TOPIC } from '../shared/topics.js';
import type { Association } from './registry/registry.js';

export class AssociationPublisher {
  private constructor(
    private readonly client: MqttClient,
    private readonly topicTemplate: string,
  ) {}

  /** `topicTemplate`: ASSOCIATION_TOPIC, `{device_id}` standing for the lamp's id (default: the seed's topic). */
  static async connect(
    settings: MqttSettings,
    clientIdBase: string,
    logger: Logger,
    topicTemplate = DEFAULT_ASSOCIATION_TOPIC,
  ): Promise<AssociationPublisher> {
    const clientId = `${clientIdBase}-worker-${hostname()}-${process.pid}`.slice(0, 64);
    const client = openMqttClient(settings, { clientId, clean: true }, logger);
    try {
      await firstConnect(client, settings);
    } catch (err) {
      await client.endAsync(true);
      throw err;
    }
    return new AssociationPublisher(client, topicTemplate);
  }

  /** Losing the broker is reported by the process's watch; meanwhile publishes fail and their jobs retry. */
  reportTo(watch: DependencyWatch, url: string): void {
    watch.mqtt(this.client, url, 'association messages are retried until it is back');
  }

  get connected(): boolean {
    return this.client.connected;
  }

  /** Resolves once the broker acknowledged the message (QoS 1). */
  async publish(deviceId: string, association: Association): Promise<void> {
    if (!this.client.connected) throw new Error('MQTT broker not connected; will retry');
    await this.client.publishAsync(associationTopic(deviceId, this.topicTemplate), JSON.stringify(association), { qos: 1, retain: true });
  }

  async close(): Promise<void> {
    await this.client.endAsync(false);
  }
}
