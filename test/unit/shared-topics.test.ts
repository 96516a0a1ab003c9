import { describe, expect, it } from 'vitest';
import { BRIDGE_STATE_TOPIC, LAMP_CHANGED_TOPICS, associationTopic, isDeviceId, parseTopic } from '../../src/shared/topics.js';

const bridge = (id: string) => `$SYS/broker/connection/${id}_broker/state`;

describe('parseTopic: lamp bridge state', () => {
  it('reads the device id out of $SYS/broker/connection/<id>_broker/state', () => {
    expect(parseTopic(bridge('b827eb0a1b2c'))).toEqual({ ok: true, kind: 'bridge-state', deviceId: 'b827eb0a1b2c' });
  });

  it('lower-cases the whole topic, so upper-case hex ids (and $sys) are accepted as lower-case ids', () => {
    expect(parseTopic(bridge('B827EB0A1B2C'))).toEqual({ ok: true, kind: 'bridge-state', deviceId: 'b827eb0a1b2c' });
    expect(parseTopic('$sys/BROKER/Connection/AbC_BROKER/STATE')).toEqual({ ok: true, kind: 'bridge-state', deviceId: 'abc' });
  });

  it('refuses a bridge name without the _broker suffix as an unrecognized topic', () => {
    expect(parseTopic('$SYS/broker/connection/b827eb0a1b2c/state')).toMatchObject({ ok: false, reason: 'unrecognized_topic' });
    expect(parseTopic('$SYS/broker/connection/b827eb0a1b2c_bridge/state')).toMatchObject({ ok: false, reason: 'unrecognized_topic' });
  });

  it('refuses an empty or non-hex id in front of _broker as an invalid device id', () => {
    expect(parseTopic(bridge(''))).toMatchObject({ ok: false, reason: 'invalid_device_id' });
    expect(parseTopic(bridge('lampg'))).toMatchObject({ ok: false, reason: 'invalid_device_id' });
    // `_broker` greedily ends the id: an id that itself ends in _broker is not hex.
    expect(parseTopic(bridge('abc_broker'))).toMatchObject({ ok: false, reason: 'invalid_device_id' });
  });

  it('ignores every other $SYS topic', () => {
    for (const topic of [
      '$SYS/broker/uptime',
      '$SYS/broker/clients/connected',
      '$SYS/broker/connection/abc_broker/state/extra',
      '$SYS/broker/connection/abc_broker',
      '$SYS/broker/connection/abc_broker/status',
      'SYS/broker/connection/abc_broker/state',
      '/$SYS/broker/connection/abc_broker/state',
      '$SYS/broker/connection//abc_broker/state',
    ]) {
      expect(parseTopic(topic), topic).toMatchObject({ ok: false, reason: 'unrecognized_topic' });
    }
  });

  it('subscribes to the wildcard the parser understands', () => {
    expect(BRIDGE_STATE_TOPIC).toBe('$SYS/broker/connection/+/state');
  });
});

describe('parseTopic: lamp state changed', () => {
  it('accepts both the leading-slash (early firmware) and the slash-less (later firmware) shape', () => {
    expect(parseTopic('/devices/b827eb0a1b2c/lamp/changed')).toEqual({ ok: true, kind: 'lamp-state', deviceId: 'b827eb0a1b2c' });
    expect(parseTopic('devices/b827eb0a1b2c/lamp/changed')).toEqual({ ok: true, kind: 'lamp-state', deviceId: 'b827eb0a1b2c' });
    expect(LAMP_CHANGED_TOPICS).toEqual(['/devices/+/lamp/changed', 'devices/+/lamp/changed']);
  });

  it('lower-cases upper-case hex ids and levels', () => {
    expect(parseTopic('/DEVICES/ABCDEF012345/LAMP/CHANGED')).toEqual({ ok: true, kind: 'lamp-state', deviceId: 'abcdef012345' });
    expect(parseTopic('devices/aBc/Lamp/changed')).toEqual({ ok: true, kind: 'lamp-state', deviceId: 'abc' });
  });

  it('accepts ids of 1 to 12 hex characters and refuses 13', () => {
    for (let length = 1; length <= 12; length += 1) {
      const id = '0123456789abcdef'.repeat(2).slice(0, length);
      expect(parseTopic(`devices/${id}/lamp/changed`), id).toEqual({ ok: true, kind: 'lamp-state', deviceId: id });
      expect(parseTopic(bridge(id)), id).toEqual({ ok: true, kind: 'bridge-state', deviceId: id });
    }
    expect(parseTopic('devices/0123456789abc/lamp/changed')).toMatchObject({ ok: false, reason: 'invalid_device_id' });
    expect(parseTopic(bridge('0123456789abc'))).toMatchObject({ ok: false, reason: 'invalid_device_id' });
  });

  it('refuses non-hex ids', () => {
    for (const id of ['g', 'lamp1', '12:34:56:78:9a:bc', 'b8-27-eb', ' abc', 'abc ', '+', '#', 'ａｂｃ', '0x1f']) {
      expect(parseTopic(`devices/${id}/lamp/changed`), id).toMatchObject({ ok: false, reason: 'invalid_device_id' });
    }
  });

  it('refuses an empty device level as an invalid id', () => {
    expect(parseTopic('devices//lamp/changed')).toMatchObject({ ok: false, reason: 'invalid_device_id' });
    expect(parseTopic('/devices//lamp/changed')).toMatchObject({ ok: false, reason: 'invalid_device_id' });
  });

  it('refuses other empty levels, extra levels and other lamp topics as unrecognized', () => {
    for (const topic of [
      '',
      '/',
      '//devices/abc/lamp/changed',
      'devices/abc//lamp/changed',
      'devices/abc/lamp//changed',
      'devices/abc/lamp/changed/',
      'devices/abc/lamp/changed/extra',
      'x/devices/abc/lamp/changed',
      'devices/abc/def/lamp/changed',
      'devices/abc/lamp',
      'devices/abc/lamp/set_config',
      'devices/abc/lamp/associated',
      '/devices/abc/lamp/associated',
      'devices/abc/lamp/changed\n',
      ' devices/abc/lamp/changed',
      '$share/g/devices/abc/lamp/changed',
    ]) {
      expect(parseTopic(topic), JSON.stringify(topic)).toMatchObject({ ok: false, reason: 'unrecognized_topic' });
    }
  });

  it('gives a detail for every refusal', () => {
    const refused = parseTopic('devices/xyz/lamp/changed');
    expect(refused.ok).toBe(false);
    if (!refused.ok) expect(refused.detail).toMatch(/hex/);
  });
});

describe('isDeviceId', () => {
  it('accepts 1-12 lower-case hex characters only (ids are stored lower-case)', () => {
    expect(isDeviceId('a')).toBe(true);
    expect(isDeviceId('b827eb0a1b2c')).toBe(true);
    expect(isDeviceId('')).toBe(false);
    expect(isDeviceId('b827eb0a1b2c0')).toBe(false);
    expect(isDeviceId('B827EB')).toBe(false);
    expect(isDeviceId('abc\n')).toBe(false);
  });
});

describe('associationTopic', () => {
  it('is where the lamp listens for its association code (leading slash, lamp/associated)', () => {
    expect(associationTopic('b827eb0a1b2c')).toBe('/devices/b827eb0a1b2c/lamp/associated');
  });

  it('is not mistaken for a lamp state change by the parser', () => {
    expect(parseTopic(associationTopic('abc'))).toMatchObject({ ok: false, reason: 'unrecognized_topic' });
  });
});
