/**
 * Yardstick (a): the seed's design, ported directly. One MQTT client subscribes to the lamp-state
 * topics; its message callback builds the `devicestate` event and posts it to Keen with one HTTP
 * request through keen-tracking (the seed's SDK), not awaited. No queue, no registry, no batching:
 * MQTT.js acknowledges each message as soon as the callback returns, before Keen has the event.
 *
 *   MQTT_URL=... KEEN_API_URL=http://127.0.0.1:port KEEN_PROJECT_ID=... KEEN_WRITE_KEY=... \
 *     node --import tsx bench/yardstick-direct.ts
 *
 * Prints `yardstick ready` once subscribed. Events carry no uniqueness token (the seed sent none).
 */
import { createRequire } from 'node:module';
import mqtt from 'mqtt';
import { DATE_TIME_PARSER } from '../src/shared/keen/envelope.js';

interface KeenTrackingClient {
  recordEvent(collection: string, event: object): Promise<unknown>;
}
type KeenTrackingConstructor = new (config: {
  projectId: string;
  writeKey: string;
  protocol: 'http' | 'https';
  host: string;
  nodeRequestConfig?: { port: number };
}) => KeenTrackingClient;
const KeenTracking = createRequire(import.meta.url)('keen-tracking') as KeenTrackingConstructor;

const env = (name: string) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is required`);
  return value;
};
const keenUrl = new URL(env('KEEN_API_URL'));
const keen = new KeenTracking({
  projectId: env('KEEN_PROJECT_ID'),
  writeKey: env('KEEN_WRITE_KEY'),
  protocol: keenUrl.protocol === 'https:' ? 'https' : 'http',
  host: keenUrl.hostname,
  nodeRequestConfig: { port: Number(keenUrl.port || (keenUrl.protocol === 'https:' ? 443 : 80)) },
});

// The seed's parse: the lower-cased topic, matched for the device id.
const LAMP_CHANGED = /^\/?devices\/([0-9a-f]{1,12})\/lamp\/changed$/;
let failures = 0;

const client = mqtt.connect(env('MQTT_URL'), {
  clientId: process.env.MQTT_CLIENT_ID ?? `yardstick-direct-${process.pid}`,
  clean: true,
  protocolVersion: 4,
});
client.on('message', (topic, payload) => {
  const match = LAMP_CHANGED.exec(topic.toLowerCase());
  if (!match) return;
  let state: unknown;
  try {
    state = JSON.parse(payload.toString('utf8'));
  } catch {
    return;
  }
  const event = { device_id: match[1], state, keen: { timestamp: new Date().toISOString(), addons: [DATE_TIME_PARSER] } };
  keen.recordEvent('devicestate', event).catch((err: unknown) => {
    failures += 1;
    if (failures <= 5 || failures % 1000 === 0)
      process.stderr.write(`yardstick-direct: Keen request failed (${failures}): ${String(err)}\n`);
  });
});
client.on('connect', () => {
  client.subscribe(['/devices/+/lamp/changed', 'devices/+/lamp/changed'], { qos: 1 }, (err) => {
    if (err) throw err;
    process.stdout.write('yardstick ready\n');
  });
});
client.on('error', (err) => process.stderr.write(`yardstick-direct: MQTT error: ${err.message}\n`));
process.on('SIGTERM', () => {
  client.end(false, {}, () => process.exit(0));
});
