/**
 * What the fleet publishes, and how the seed daemon read a device id out of it: the topic is
 * lower-cased, then matched against the bridge-state and lamp-changed shapes below.
 */

export const BRIDGE_STATE_TOPIC = '$SYS/broker/connection/+/state';
/** Early LAMPI firmware bridges with a leading slash, later firmware without one. */
export const LAMP_CHANGED_TOPICS = ['/devices/+/lamp/changed', 'devices/+/lamp/changed'] as const;

const BRIDGE_STATE = /^\$sys\/broker\/connection\/([^/]*)_broker\/state$/;
const LAMP_CHANGED = /^\/?devices\/([^/]*)\/lamp\/changed$/;
/** The registry stores a lamp's id as up to 12 hex characters (its MAC address). */
const DEVICE_ID = /^[0-9a-f]{1,12}$/;

export type TopicKind = 'bridge-state' | 'lamp-state';

export type ParsedTopic =
  { ok: true; kind: TopicKind; deviceId: string } | { ok: false; reason: 'unrecognized_topic' | 'invalid_device_id'; detail: string };

export function parseTopic(topic: string): ParsedTopic {
  const lower = topic.toLowerCase();
  const bridge = BRIDGE_STATE.exec(lower);
  const lamp = bridge ? null : LAMP_CHANGED.exec(lower);
  const match = bridge ?? lamp;
  if (!match) return { ok: false, reason: 'unrecognized_topic', detail: 'topic is neither a lamp bridge state nor a lamp state change' };
  const deviceId = match[1] ?? '';
  if (!DEVICE_ID.test(deviceId)) {
    return { ok: false, reason: 'invalid_device_id', detail: 'device id must be 1-12 hex characters' };
  }
  return { ok: true, kind: bridge ? 'bridge-state' : 'lamp-state', deviceId };
}

export function isDeviceId(value: string): boolean {
  return DEVICE_ID.test(value);
}

/** The seed's association topic; ASSOCIATION_TOPIC changes it (course firmware without the leading slash). */
export const DEFAULT_ASSOCIATION_TOPIC = '/devices/{device_id}/lamp/associated';

/** Where a lamp listens for its association message, from an ASSOCIATION_TOPIC template. */
export function associationTopic(deviceId: string, template: string = DEFAULT_ASSOCIATION_TOPIC): string {
  return template.replaceAll('{device_id}', deviceId);
}
