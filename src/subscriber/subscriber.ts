/** Wires the subscriber: MQTT connections in, Redis queues out. */
import type { Config } from '../shared/config.js';
import { DependencyWatch } from '../shared/dependency-watch.js';
import type { Logger } from '../shared/logger.js';
import type { Metrics } from '../shared/metrics.js';
import { refreshQueueDepths } from '../shared/metrics.js';
import { brokerSettings, type MqttSettings } from '../shared/mqtt.js';
import { allQueues, openQueues } from '../shared/queues.js';
import { Intake } from './intake.js';
import { openSubscriberConnections } from './connections.js';
import { RedeliveryLedger } from './redeliveries.js';
import { connectRedis, redisWhere } from '../shared/redis.js';

export type SubscriberConfig = Config<'common' | 'mqtt' | 'subscriber'>;

export interface Subscriber {
  /** Each connection the subscriber needs, and whether it is up. */
  readiness(): Promise<Record<string, boolean>>;
  /** Sets the queue depth gauges from Redis (called when metrics are scraped). */
  refreshQueueGauges(): Promise<void>;
  close(): Promise<void>;
}

/** The broker this subscriber reads: BROKER_ID's of MQTT_BROKERS (loadConfig checked it is there), or MQTT_URL's. */
function brokerOf(config: SubscriberConfig): MqttSettings {
  const brokers = brokerSettings(config);
  return brokers.find((b) => b.broker === config.BROKER_ID) ?? brokers[0]!;
}

export async function startSubscriber(config: SubscriberConfig, logger: Logger, metrics: Metrics): Promise<Subscriber> {
  // Many connections each wait on Redis; pipelining their commands saves a write per command.
  const redis = await connectRedis(config, { autoPipelining: true });
  const queues = openQueues(redis, config.QUEUE_PREFIX);
  const watch = new DependencyWatch(logger);
  watch.redis(redis, redisWhere(config), 'MQTT messages stay with the broker, unacknowledged, until it is back');
  watch.bullmq(allQueues(queues));
  const broker = brokerOf(config);
  const intake = new Intake({
    queues,
    ledger: new RedeliveryLedger(redis, config.QUEUE_PREFIX),
    logger,
    metrics,
    ...(broker.broker === undefined ? {} : { broker: broker.broker }),
  });
  // Subscribers of different brokers may share MQTT_CLIENT_ID; their packet ids must not meet in the ledger.
  const sessionOf = (clientId: string) => (broker.broker === undefined ? clientId : `${broker.broker}/${clientId}`);

  const inFlight = new Set<Promise<void>>();
  let closing = false;
  const onMessage = (session: string, message: Parameters<Intake['accept']>[1]) => {
    // After close() starts, messages are left unacknowledged: the broker keeps them for our session.
    if (closing) return new Promise<void>(() => {});
    // The messages of one write share one promise: tracked once, not once per message.
    const handling = intake.accept(sessionOf(session), message);
    if (!inFlight.has(handling)) {
      inFlight.add(handling);
      const done = () => inFlight.delete(handling);
      handling.then(done, done);
    }
    return handling;
  };

  let clients;
  try {
    clients = await openSubscriberConnections({
      mqtt: broker,
      clientIdBase: config.MQTT_CLIENT_ID,
      shareGroup: config.MQTT_SHARE_GROUP,
      connections: config.SUBSCRIBER_CONNECTIONS,
      logger,
      onMessage,
    });
  } catch (err) {
    watch.stop();
    await queues.close();
    redis.disconnect();
    throw err;
  }
  for (const client of clients) watch.mqtt(client, broker.url, 'the broker keeps lamp messages for our sessions until it is back');
  logger.info(
    {
      connections: clients.length,
      share_group: config.MQTT_SHARE_GROUP,
      ...(broker.broker === undefined ? {} : { broker: broker.broker }),
    },
    'subscriber ready',
  );

  return {
    async readiness() {
      return { redis: redis.status === 'ready', mqtt: clients.every((client) => client.connected) };
    },
    // The subscriber reports depths too: with every worker stopped, it is who sees the backlog grow.
    refreshQueueGauges: () => refreshQueueDepths(metrics, allQueues(queues)),
    async close() {
      closing = true;
      watch.stop();
      await Promise.all(inFlight);
      // Let the PUBACKs of finished messages reach the socket before it closes.
      await Promise.all(clients.map((client) => client.endAsync(false)));
      await queues.close();
      await redis.quit();
    },
  };
}
