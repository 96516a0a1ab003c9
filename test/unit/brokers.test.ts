/**
 * A fleet split over several brokers, as the settings see it: MQTT_BROKERS and its per-broker
 * logins (with the *_FILE form), BROKER_ID for the subscriber, the default broker for jobs that
 * name none, and the bridge-state job's broker field at the stage's door.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { brokerLoginSettings, loadConfig } from '../../src/shared/config.js';
import { ConfigError } from '../../src/shared/errors.js';
import { parseBridgeStatesJob } from '../../src/shared/jobs.js';
import { brokerSettings, mqttSettings } from '../../src/shared/mqtt.js';

const SUBSCRIBER = ['common', 'mqtt', 'subscriber'] as const;
const TWO = 'eu-west=mqtts://a.example.com:8883,us-east=mqtts://b.example.com:8883';

function problem(env: NodeJS.ProcessEnv, names: readonly Parameters<typeof loadConfig>[0][number][] = SUBSCRIBER): string {
  try {
    loadConfig(names, env);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as Error).message;
  }
  throw new Error('expected a ConfigError');
}

describe('MQTT_BROKERS', () => {
  it('without it, the one broker is MQTT_URL, named by no id', () => {
    const config = loadConfig(['mqtt'], { MQTT_URL: 'mqtt://broker:1883', MQTT_USERNAME: 'ingest', MQTT_PASSWORD: 'pw' });
    expect(brokerSettings(config)).toEqual([{ url: 'mqtt://broker:1883', username: 'ingest', password: 'pw' }]);
    expect(mqttSettings(config)).toEqual(brokerSettings(config)[0]);
  });

  it('lists the brokers in order, the first the default; MQTT_URL is then not used', () => {
    const config = loadConfig(['mqtt'], { MQTT_BROKERS: TWO, MQTT_URL: 'mqtt://ignored:1883' });
    expect(brokerSettings(config)).toEqual([
      { broker: 'eu-west', url: 'mqtts://a.example.com:8883' },
      { broker: 'us-east', url: 'mqtts://b.example.com:8883' },
    ]);
    expect(mqttSettings(config).broker).toBe('eu-west');
  });

  it('gives each broker its own login, from MQTT_BROKER_<ID>_* or their _FILE, else the shared one', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'lampi-brokers-'));
    writeFileSync(path.join(dir, 'us-east'), 'file-secret\n');
    expect(brokerLoginSettings('us-east')).toEqual({ username: 'MQTT_BROKER_US_EAST_USERNAME', password: 'MQTT_BROKER_US_EAST_PASSWORD' });
    const config = loadConfig(['mqtt'], {
      MQTT_BROKERS: TWO,
      MQTT_USERNAME: 'ingest',
      MQTT_PASSWORD: 'shared',
      MQTT_BROKER_US_EAST_USERNAME: 'ingest-us',
      MQTT_BROKER_US_EAST_PASSWORD_FILE: path.join(dir, 'us-east'),
    });
    expect(brokerSettings(config).map(({ broker, username, password }) => ({ broker, username, password }))).toEqual([
      { broker: 'eu-west', username: 'ingest', password: 'shared' },
      { broker: 'us-east', username: 'ingest-us', password: 'file-secret' },
    ]);
  });

  it('refuses a malformed list, a repeated id, and a login given twice or unreadable, without showing a secret', () => {
    expect(problem({ MQTT_BROKERS: 'a=http://x' })).toMatch(/^invalid configuration: MQTT_BROKERS must be id=url pairs/);
    expect(problem({ MQTT_BROKERS: 'Big=mqtt://x' })).toMatch(/MQTT_BROKERS must be id=url pairs/);
    expect(problem({ MQTT_BROKERS: 'mqtt://x' })).toMatch(/MQTT_BROKERS must be id=url pairs/);
    expect(problem({ MQTT_BROKERS: 'a=mqtt://x,a=mqtt://y', BROKER_ID: 'a' })).toMatch(/MQTT_BROKERS names a broker id twice/);
    const both = problem({
      MQTT_BROKERS: 'a=mqtt://x',
      BROKER_ID: 'a',
      MQTT_BROKER_A_PASSWORD: 'hunter2',
      MQTT_BROKER_A_PASSWORD_FILE: '/x',
    });
    expect(both).toContain('MQTT_BROKER_A_PASSWORD_FILE and MQTT_BROKER_A_PASSWORD are both set');
    expect(both).not.toContain('hunter2');
    expect(problem({ MQTT_BROKERS: 'a=mqtt://x', BROKER_ID: 'a', MQTT_BROKER_A_PASSWORD_FILE: '/no/such/file' })).toContain(
      'MQTT_BROKER_A_PASSWORD_FILE=/no/such/file cannot be read (ENOENT)',
    );
  });
});

describe('BROKER_ID (subscriber)', () => {
  it('picks the broker the subscriber reads', () => {
    const config = loadConfig(SUBSCRIBER, { MQTT_BROKERS: TWO, BROKER_ID: 'us-east' });
    expect(config.BROKER_ID).toBe('us-east');
  });

  it('is required with MQTT_BROKERS, must be one of them, and means nothing without them', () => {
    expect(problem({ MQTT_BROKERS: TWO })).toBe(
      'invalid configuration: BROKER_ID is required with MQTT_BROKERS: set it to the broker this subscriber reads (eu-west, us-east)',
    );
    expect(problem({ MQTT_BROKERS: TWO, BROKER_ID: 'ap-south' })).toBe(
      'invalid configuration: BROKER_ID=ap-south is not in MQTT_BROKERS (eu-west, us-east)',
    );
    expect(problem({ BROKER_ID: 'eu-west' })).toBe(
      'invalid configuration: BROKER_ID names a broker of MQTT_BROKERS: set MQTT_BROKERS too, or unset BROKER_ID',
    );
  });

  it('is not asked of the worker, which publishes on every broker', () => {
    const config = loadConfig(['mqtt'], { MQTT_BROKERS: TWO });
    expect(brokerSettings(config)).toHaveLength(2);
  });
});

describe('bridge-state jobs: the broker a lamp is on', () => {
  const state = {
    kind: 'bridge-state',
    deviceId: 'b827eb000001',
    connected: true,
    retained: false,
    receivedAt: '2026-12-03T12:00:00.000Z',
    messageId: 'm1',
    topic: '$SYS/broker/connection/b827eb000001_broker/state',
  };

  it('takes states with a broker, and states without one (a single broker, or queued before it was kept)', () => {
    const job = { kind: 'bridge-states', states: [{ ...state, broker: 'us-east' }, state] };
    expect(parseBridgeStatesJob(job)).toEqual({ ok: true, data: job });
  });

  it('refuses a broker that is not a non-empty string', () => {
    expect(parseBridgeStatesJob({ kind: 'bridge-states', states: [{ ...state, broker: '' }] })).toEqual({
      ok: false,
      reason: 'states[0].broker: not a non-empty string',
    });
    expect(parseBridgeStatesJob({ kind: 'bridge-states', states: [{ ...state, broker: 7 }] })).toEqual({
      ok: false,
      reason: 'states[0].broker: not a non-empty string',
    });
  });
});
