/**
 * Tells a lamp what the registry says of its association, the way LAMPI did: a retained message
 * on the lamp's association topic (ASSOCIATION_TOPIC), so a lamp that is offline for a moment
 * still finds it when it returns. The message goes to the broker the lamp is on (the one its
 * bridge state came from): with MQTT_BROKERS the worker holds one connection per broker, each
 * reconnecting on its own, so a broker that is down fails only its own lamps' publishes (their
 * jobs retry) and never delays the others'.
 */
import { hostname } from 'node:os';
import type { MqttClient } from 'mqtt';
import { DependencyWatch } from '../shared/dependency-watch.js';
import { MqttLoginError } from '../shared/errors.js';
import type { Logger } from '../shared/logger.js';
import { firstConnect, openMqttClient, type MqttSettings } from '../shared/mqtt.js';
import { safeUrl } from '../shared/redact.js';
import { associationTopic, DEFAULT_ASSOCIATION_TOPIC } from '../shared/topics.js';
import type { Association } from './registry/registry.js';

interface BrokerConnection {
  settings: MqttSettings;
  client: MqttClient;
}

export class AssociationPublisher {
  /** One watch per broker, so that each outage is said once with its own broker's address. */
  readonly #watches: DependencyWatch[] = [];

  private constructor(
    /** The default broker (jobs that name none) first. */
    private readonly brokers: BrokerConnection[],
    private readonly topicTemplate: string,
  ) {}

  /**
   * `brokers`: one (MQTT_URL's), or those of MQTT_BROKERS, the default first. `topicTemplate`:
   * ASSOCIATION_TOPIC, `{device_id}` standing for the lamp's id (default: the seed's topic).
   *
   * With one broker, an unreachable broker stops the start-up, as before. With several, it is a
   * warning: the other brokers' lamps must not wait for it, and its own client reconnects by
   * itself. A broker that refuses our login stops the start-up either way (a setting to fix).
   */
  static async connect(
    brokers: MqttSettings | readonly MqttSettings[],
    clientIdBase: string,
    logger: Logger,
    topicTemplate = DEFAULT_ASSOCIATION_TOPIC,
  ): Promise<AssociationPublisher> {
    const list = Array.isArray(brokers) ? (brokers as readonly MqttSettings[]) : [brokers as MqttSettings];
    const connections = list.map((settings): BrokerConnection => {
      const id = settings.broker === undefined || list.length === 1 ? '' : `-${settings.broker}`;
      const clientId = `${clientIdBase}-worker${id}-${hostname()}-${process.pid}`.slice(0, 64);
      return { settings, client: openMqttClient(settings, { clientId, clean: true }, logger) };
    });
    const started = await Promise.allSettled(connections.map(({ client, settings }) => firstConnect(client, settings)));
    const refused = started.find(
      (result) => result.status === 'rejected' && (list.length === 1 || result.reason instanceof MqttLoginError),
    );
    if (refused) {
      await Promise.all(connections.map(({ client }) => client.endAsync(true)));
      throw (refused as PromiseRejectedResult).reason;
    }
    started.forEach((result, i) => {
      if (result.status === 'fulfilled') return;
      const { settings } = connections[i]!;
      logger.warn(
        { dependency: 'mqtt', broker: settings.broker, err: result.reason },
        `broker ${settings.broker}=${safeUrl(settings.url)} unreachable at start: its lamps' association messages are retried until it is back`,
      );
    });
    return new AssociationPublisher(connections, topicTemplate);
  }

  /** Losing a broker is reported by a watch of its own; meanwhile its publishes fail and their jobs retry. */
  reportTo(watch: DependencyWatch, logger: Logger): void {
    const consequence = 'association messages are retried until it is back';
    if (this.brokers.length === 1) return watch.mqtt(this.brokers[0]!.client, this.brokers[0]!.settings.url, consequence);
    for (const { client, settings } of this.brokers) {
      const own = new DependencyWatch(logger.child({ broker: settings.broker }));
      own.mqtt(client, settings.url, `its lamps' ${consequence}`);
      this.#watches.push(own);
    }
  }

  /** True when every broker is connected; otherwise which are not. */
  get connected(): boolean | string {
    const down = this.brokers.filter(({ client }) => !client.connected);
    if (down.length === 0) return true;
    return this.brokers.length === 1 ? false : `not connected to broker ${down.map(({ settings }) => settings.broker).join(', ')}`;
  }

  /**
   * Resolves once the lamp's broker acknowledged the message (QoS 1). `broker`: the MQTT_BROKERS
   * id its bridge state came from; none, the default broker.
   */
  async publish(deviceId: string, association: Association, broker?: string): Promise<void> {
    const connection = broker === undefined ? this.brokers[0]! : this.brokers.find((b) => b.settings.broker === broker);
    if (!connection) throw new Error(`the lamp is on broker ${broker}, which is not in this worker's MQTT_BROKERS; will retry`);
    const { client } = connection;
    if (!client.connected) throw new Error(`MQTT broker${broker === undefined ? '' : ` ${broker}`} not connected; will retry`);
    await client.publishAsync(associationTopic(deviceId, this.topicTemplate), JSON.stringify(association), { qos: 1, retain: true });
  }

  async close(): Promise<void> {
    for (const watch of this.#watches) watch.stop();
    await Promise.all(this.brokers.map(({ client }) => client.endAsync(false)));
  }
}
