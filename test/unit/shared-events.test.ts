import { describe, expect, it } from 'vitest';
import {
  KEEN_COLLECTIONS,
  activationEvent,
  buildKeenEvent,
  deviceMonitoringEvent,
  deviceStateEvent,
  toKeenProperties,
  uniquenessToken,
} from '../../src/shared/events.js';
import { DATE_TIME_PARSER } from '../../src/shared/keen/envelope.js';
import { KEEN_LIMITS } from '../../src/shared/keen/protocol.js';

const AT = '2025-03-04T05:06:07.089Z';
const TOKEN = '0123456789abcdef0123456789abcdef-devicestate';
/** What Keen's date-time parser add-on must look like, written out rather than imported. */
const ADDONS = [{ name: 'keen:date_time_parser', input: { date_time: 'keen.timestamp' }, output: 'timestamp.info' }];
const envelope = (token = TOKEN) => ({ timestamp: AT, uniqueness_token: token, addons: ADDONS });

/** Property names Keen refuses: a `.`, a leading `$`, or more than 256 characters. */
const refusedByKeen = (name: string) => name.includes('.') || name.startsWith('$') || name.length > 256;

function allPropertyNames(value: unknown, names: string[] = []): string[] {
  if (Array.isArray(value)) value.forEach((item) => allPropertyNames(item, names));
  else if (typeof value === 'object' && value !== null) {
    for (const [key, child] of Object.entries(value)) {
      names.push(key);
      allPropertyNames(child, names);
    }
  }
  return names;
}

describe('Keen event shapes', () => {
  it('activations: device_id, user and the envelope, nothing else', () => {
    const event = activationEvent('b827eb0a1b2c', 'alice', AT, 'job1-activations');
    expect(event).toStrictEqual({ device_id: 'b827eb0a1b2c', user: 'alice', keen: envelope('job1-activations') });
    expect(Object.keys(event).sort()).toEqual(['device_id', 'keen', 'user']);
  });

  it('devicemonitoring: service mqttbridge, state connected or disconnected', () => {
    expect(deviceMonitoringEvent('b827eb0a1b2c', true, AT, 't1')).toStrictEqual({
      device_id: 'b827eb0a1b2c',
      service: 'mqttbridge',
      state: 'connected',
      keen: envelope('t1'),
    });
    expect(deviceMonitoringEvent('b827eb0a1b2c', false, AT, 't2')).toStrictEqual({
      device_id: 'b827eb0a1b2c',
      service: 'mqttbridge',
      state: 'disconnected',
      keen: envelope('t2'),
    });
  });

  it('devicestate: the lamp state nested under state', () => {
    const state = { color: { h: 0.44, s: 1.0 }, brightness: 0.47, on: true, client: 'lamp_ui' };
    expect(deviceStateEvent('b827eb0a1b2c', state, AT, TOKEN)).toStrictEqual({ device_id: 'b827eb0a1b2c', state, keen: envelope() });
  });

  it('the envelope: receipt timestamp, the uniqueness token, and the date-time parser add-on reading keen.timestamp', () => {
    const { keen } = deviceStateEvent('a', {}, AT, TOKEN);
    expect(keen.timestamp).toBe(AT);
    expect(keen.uniqueness_token).toBe(TOKEN);
    expect(keen.addons).toHaveLength(1);
    expect(keen.addons[0]!.name).toBe('keen:date_time_parser');
    expect(keen.addons[0]!.input).toEqual({ date_time: 'keen.timestamp' });
    expect(keen.addons[0]!.output).toBe('timestamp.info');
    expect(DATE_TIME_PARSER).toEqual(ADDONS[0]);
  });

  it('survives a JSON round trip unchanged (it is sent as JSON)', () => {
    const event = deviceStateEvent('abc', { on: true, nested: [1, 'two', null, { x: false }] }, AT, TOKEN);
    expect(JSON.parse(JSON.stringify(event))).toStrictEqual(event);
  });

  it('lists the three collections', () => {
    expect([...KEEN_COLLECTIONS].sort()).toEqual(['activations', 'devicemonitoring', 'devicestate']);
  });
});

describe('device data cannot replace our properties', () => {
  it('a state carrying device_id, keen, state, service or user stays nested under state', () => {
    const state = {
      device_id: 'ffffffffffff',
      keen: { timestamp: '1999-01-01T00:00:00.000Z', uniqueness_token: 'forged', addons: [] },
      state: 'forged',
      user: 'mallory',
    };
    const event = deviceStateEvent('b827eb0a1b2c', state, AT, TOKEN);
    expect(event.device_id).toBe('b827eb0a1b2c');
    expect(event.keen).toStrictEqual(envelope());
    expect(Object.keys(event).sort()).toEqual(['device_id', 'keen', 'state']);
    expect(event.state).toStrictEqual(state);
  });

  it('buildKeenEvent always puts our envelope last, over any keen property', () => {
    const event = buildKeenEvent({ device_id: 'abc', keen: { timestamp: 'forged' } }, AT, TOKEN);
    expect(event.keen).toStrictEqual(envelope());
    expect(event.device_id).toBe('abc');
  });

  it('does not modify the state it is given', () => {
    const state = { 'a.b': { $c: 1 }, list: [{ 'd.e': 2 }] };
    const copy = structuredClone(state);
    deviceStateEvent('abc', state, AT, TOKEN);
    expect(state).toStrictEqual(copy);
  });
});

describe('property names Keen refuses are rewritten', () => {
  it('replaces every . and a leading $ with _', () => {
    expect(toKeenProperties({ 'a.b.c': 1, $set: 2, $$x: 3, a$: 4, '.start': 5, 'end.': 6 })).toStrictEqual({
      a_b_c: 1,
      _set: 2,
      _$x: 3,
      a$: 4,
      _start: 5,
      end_: 6,
    });
  });

  it('leaves values alone (only names are rewritten)', () => {
    expect(toKeenProperties({ a: 'x.y', b: '$z', c: ['$', '.'] })).toStrictEqual({ a: 'x.y', b: '$z', c: ['$', '.'] });
  });

  it('rewrites at any depth, including inside arrays and arrays of arrays', () => {
    const state = {
      'l1.a': { 'l2.b': { 'l3.c': { $l4: { 'l5.e': 'deep' } } } },
      list: [{ 'a.b': 1 }, [{ $x: 2 }, [{ 'y.z': 3 }]], 'plain.string', null],
    };
    expect(deviceStateEvent('abc', state, AT, TOKEN).state).toStrictEqual({
      l1_a: { l2_b: { l3_c: { _l4: { l5_e: 'deep' } } } },
      list: [{ a_b: 1 }, [{ _x: 2 }, [{ y_z: 3 }]], 'plain.string', null],
    });
  });

  it('rewrites names made only of refused characters, and the empty name', () => {
    expect(toKeenProperties({ '': 1 })).toStrictEqual({ _: 1 });
    expect(toKeenProperties({ '.': 1 })).toStrictEqual({ _: 1 });
    expect(toKeenProperties({ $: 1 })).toStrictEqual({ _: 1 });
  });

  it('on a collision keeps the name that was already valid and suffixes the rewritten one, losing no data', () => {
    expect(toKeenProperties({ 'a.b': 1, a_b: 2 })).toStrictEqual({ a_b: 2, a_b_1: 1 });
    expect(toKeenProperties({ a_b: 2, 'a.b': 1 })).toStrictEqual({ a_b: 2, a_b_1: 1 });
    expect(toKeenProperties({ $a: 1, _a: 2 })).toStrictEqual({ _a: 2, _a_1: 1 });
    // Suffixes skip names that are already taken, valid or rewritten.
    expect(toKeenProperties({ 'a.b': 1, a_b: 2, a_b_1: 3 })).toStrictEqual({ a_b: 2, a_b_1: 3, a_b_2: 1 });
    expect(toKeenProperties({ '.a': 1, $a: 2, _a: 3 })).toStrictEqual({ _a: 3, _a_1: 1, _a_2: 2 });
    expect(toKeenProperties({ '.': 1, $: 2, '': 3, _: 4 })).toStrictEqual({ _: 4, __1: 1, __2: 2, __3: 3 });
  });

  it('cuts names to 256 characters, and keeps suffixed collisions within 256', () => {
    const n256 = 'k'.repeat(256);
    expect(toKeenProperties({ [n256]: 1 })).toStrictEqual({ [n256]: 1 });
    expect(toKeenProperties({ ['k'.repeat(257)]: 1 })).toStrictEqual({ [n256]: 1 });
    expect(toKeenProperties({ ['.'.repeat(300)]: 1 })).toStrictEqual({ ['_'.repeat(256)]: 1 });

    const collided = toKeenProperties({ [n256]: 0, ['k'.repeat(257)]: 1, ['k'.repeat(300)]: 2 }) as Record<string, number>;
    expect(collided).toStrictEqual({ [n256]: 0, [`${'k'.repeat(254)}_1`]: 1, [`${'k'.repeat(254)}_2`]: 2 });
    for (const name of Object.keys(collided)) expect(name.length).toBeLessThanOrEqual(256);
  });

  it('leaves no refused name anywhere in a hostile state', () => {
    const state = JSON.parse(
      JSON.stringify({
        'a.b': { '$c.d': [{ ['.'.repeat(400)]: { $: [[{ 'x.y': 1, x_y: 2 }]] } }] },
        a_b: 1,
        ['$'.repeat(300)]: 3,
      }),
    );
    const event = JSON.parse(JSON.stringify(deviceStateEvent('abc', state, AT, TOKEN)));
    const names = allPropertyNames(event.state);
    expect(names.length).toBe(allPropertyNames(state).length);
    expect(names.filter(refusedByKeen)).toEqual([]);
  });

  it('keeps __proto__ an own data property at every depth, and JSON.stringify round-trips it', () => {
    const sent = '{"__proto__":{"polluted":1},"a":{"__proto__":{"b.c":2}},"l":[{"__proto__":[3]}],"constructor":{"prototype":4}}';
    const state = JSON.parse(sent) as object;
    const out = deviceStateEvent('abc', state, AT, TOKEN).state as Record<string, unknown>;
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(Object.getPrototypeOf(out)).toBe(Object.prototype);
    expect(Object.getOwnPropertyDescriptor(out, '__proto__')).toMatchObject({ value: { polluted: 1 }, enumerable: true });
    const a = out.a as Record<string, unknown>;
    expect(Object.getPrototypeOf(a)).toBe(Object.prototype);
    expect(Object.getOwnPropertyDescriptor(a, '__proto__')?.value).toStrictEqual({ b_c: 2 });
    const item = (out.l as Array<Record<string, unknown>>)[0]!;
    expect(Object.getOwnPropertyDescriptor(item, '__proto__')?.value).toStrictEqual([3]);

    const text = JSON.stringify(out);
    expect(text).toContain('"__proto__":{"polluted":1}');
    // (Compared as text: toStrictEqual compares `.constructor` by identity, which the own `constructor` key defeats.)
    expect(text).toBe(sent.replace('"b.c"', '"b_c"'));
    expect(JSON.stringify(JSON.parse(text))).toBe(text);
  });
});

describe('uniquenessToken', () => {
  it('is stable: the same job and collection always give the same token (a retry is deduplicated by Keen)', () => {
    const jobId = '0123456789abcdef0123456789abcdef';
    for (const collection of KEEN_COLLECTIONS) {
      expect(uniquenessToken(jobId, collection)).toBe(uniquenessToken(jobId, collection));
      expect(uniquenessToken(jobId, collection)).toBe(`${jobId}-${collection}`);
    }
  });

  it('differs between collections and between jobs', () => {
    const tokens = new Set(['job-1', 'job-2'].flatMap((jobId) => KEEN_COLLECTIONS.map((collection) => uniquenessToken(jobId, collection))));
    expect(tokens.size).toBe(2 * KEEN_COLLECTIONS.length);
  });

  it('is at most 64 characters for our 32-hex-character job ids, in every collection', () => {
    expect(KEEN_LIMITS.uniquenessToken).toBe(64);
    for (const collection of KEEN_COLLECTIONS) {
      expect(uniquenessToken('f'.repeat(32), collection).length).toBeLessThanOrEqual(64);
    }
  });

  it('throws instead of truncating (a cut token could merge two events) once it would pass 64', () => {
    // '-devicemonitoring' is 17 characters: job ids up to 47 fit.
    expect(uniquenessToken('j'.repeat(47), 'devicemonitoring')).toHaveLength(64);
    expect(() => uniquenessToken('j'.repeat(48), 'devicemonitoring')).toThrow(RangeError);
  });
});
