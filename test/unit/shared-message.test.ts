import { afterEach, describe, expect, it } from 'vitest';
import { deviceStateEvent } from '../../src/shared/events.js';
import { REJECT_REASONS } from '../../src/shared/lamp.js';
import {
  MAX_LAMP_STATE_BYTES,
  MAX_LAMP_STATE_DEPTH,
  parseLampState,
  parseMessage,
  type ParsedLampState,
  type ParsedMessage,
} from '../../src/shared/message.js';

const RECEIVED_AT = '2025-03-04T05:06:07.089Z';
const LAMP_TOPIC = '/devices/b827eb0a1b2c/lamp/changed';
const BRIDGE_TOPIC = '$SYS/broker/connection/b827eb0a1b2c_broker/state';
const utf8 = new TextEncoder();

function parse(topic: string, payload: string | Uint8Array | number[], retain = false): ParsedMessage {
  const bytes = typeof payload === 'string' ? utf8.encode(payload) : Uint8Array.from(payload);
  return parseMessage({ topic, payload: bytes, retain, dup: false }, RECEIVED_AT);
}

/** A lamp-state message read as the pipeline reads it: parseMessage (the subscriber), then parseLampState (the lamp-states stage). */
type LampReading =
  | (ParsedLampState & { ok: true; payload: string })
  | { ok: false; reason: (typeof REJECT_REASONS)[number]; detail: string; deviceId?: string };

function lamp(payload: string | Uint8Array | number[]): LampReading {
  const message = parse(LAMP_TOPIC, payload);
  if (!message.ok) return message;
  const state = parseLampState(message.payload);
  return state.ok ? { ...state, payload: message.payload } : { ...state, deviceId: message.message.deviceId };
}

function expectRejected(result: LampReading | ParsedMessage, reason: (typeof REJECT_REASONS)[number]) {
  expect(result).toMatchObject({ ok: false, reason, deviceId: 'b827eb0a1b2c' });
  if (!result.ok) expect(result.detail.length).toBeGreaterThan(0);
}

function acceptedState(result: LampReading): Record<string, unknown> {
  if (!result.ok) throw new Error(`expected a lamp state, got ${JSON.stringify(result)}`);
  return result.state as Record<string, unknown>;
}

/** `{"a":{"a":…{}…}}` with `levels` objects in all (the root counts as one). */
const nestedObjects = (levels: number) => '{"a":'.repeat(levels - 1) + '{}' + '}'.repeat(levels - 1);
/** An object of exactly `bytes` bytes: `{"pad":"xxx…"}`. */
const objectOfSize = (bytes: number) => `{"pad":"${'x'.repeat(bytes - '{"pad":""}'.length)}"}`;

const PROTOTYPE_KEYS = Object.getOwnPropertyNames(Object.prototype).sort();
const PROTOTYPE_TO_STRING = Object.prototype.toString;

afterEach(() => {
  // Nothing parsed may ever reach the prototype every object shares.
  expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  expect(Object.getOwnPropertyNames(Object.prototype).sort()).toEqual(PROTOTYPE_KEYS);
});

describe('parseMessage: bridge state', () => {
  it('turns payload 1 into a connected job and 0 into a disconnected one, with the receipt time as ISO 8601', () => {
    expect(parse(BRIDGE_TOPIC, '1')).toEqual({
      ok: true,
      message: { kind: 'bridge-state', deviceId: 'b827eb0a1b2c', connected: true, retained: false, receivedAt: '2025-03-04T05:06:07.089Z' },
      payload: '1',
    });
    expect(parse(BRIDGE_TOPIC, '0')).toEqual({
      ok: true,
      message: {
        kind: 'bridge-state',
        deviceId: 'b827eb0a1b2c',
        connected: false,
        retained: false,
        receivedAt: '2025-03-04T05:06:07.089Z',
      },
      payload: '0',
    });
  });

  it('carries the retained flag (a broker replay of the last known state)', () => {
    expect(parse(BRIDGE_TOPIC, '1', true)).toMatchObject({ ok: true, message: { retained: true, connected: true } });
    expect(parse(BRIDGE_TOPIC, '0', true)).toMatchObject({ ok: true, message: { retained: true, connected: false } });
  });

  it('takes the device id from an upper-case topic in lower case', () => {
    expect(parse('$SYS/broker/connection/B827EB0A1B2C_broker/state', '1')).toMatchObject({
      ok: true,
      message: { deviceId: 'b827eb0a1b2c' },
    });
  });

  it('refuses every other payload as invalid_bridge_state', () => {
    const others: Array<string | number[]> = [
      '2',
      '10',
      '01',
      ' 1',
      '1 ',
      '1\n',
      '',
      'true',
      'connected',
      '١',
      [0x01],
      [0x00],
      [0x31, 0x00],
      [0xff],
      [0xc3, 0x28],
    ];
    for (const payload of others) {
      expectRejected(parse(BRIDGE_TOPIC, payload), 'invalid_bridge_state');
    }
  });

  it('checks the topic before the payload', () => {
    expect(parse('$SYS/broker/connection/xyz_broker/state', '1')).toMatchObject({ ok: false, reason: 'invalid_device_id' });
    expect(parse('$SYS/broker/connection/xyz/state', '1')).toMatchObject({ ok: false, reason: 'unrecognized_topic' });
    expect(parse('$SYS/broker/uptime', '1')).toMatchObject({ ok: false, reason: 'unrecognized_topic' });
  });
});

describe('parseMessage and parseLampState: lamp state accepted', () => {
  it('accepts the state LAMPI publishes, kept as sent', () => {
    const sent = { color: { h: 0.44, s: 1.0 }, brightness: 0.47, on: true, client: 'lamp_ui' };
    expect(parse(LAMP_TOPIC, JSON.stringify(sent))).toEqual({
      ok: true,
      message: { kind: 'lamp-state', deviceId: 'b827eb0a1b2c', receivedAt: '2025-03-04T05:06:07.089Z' },
      payload: JSON.stringify(sent),
    });
    expect(parseLampState(JSON.stringify(sent))).toEqual({ ok: true, state: sent });
  });

  it('leaves the JSON to the lamp-states stage: the subscriber stores any text of a lamp within the size limit', () => {
    for (const payload of ['not json', '[]', '{"brightness":"high"}', nestedObjects(40), '{"s":"\\u0000"}']) {
      expect(parse(LAMP_TOPIC, payload), payload).toMatchObject({ ok: true, payload });
      expect(lamp(payload).ok, payload).toBe(false);
    }
  });

  it('gives the payload as text, exactly its bytes: a byte order mark and non-ASCII text kept', () => {
    for (const bytes of [[0xef, 0xbb, 0xbf, ...utf8.encode('{"on":true}')], [...utf8.encode('{"client":"lámpara 💡"}')]]) {
      const result = lamp(bytes);
      expect(result.ok).toBe(true);
      if (result.ok) expect([...Buffer.from(result.payload, 'utf8')]).toEqual(bytes);
    }
    expect(parse(BRIDGE_TOPIC, '1')).toMatchObject({ ok: true, payload: '1' });
  });

  it('accepts both topic shapes', () => {
    expect(parse('devices/b827eb0a1b2c/lamp/changed', '{"on":false}')).toMatchObject({
      ok: true,
      message: { kind: 'lamp-state', deviceId: 'b827eb0a1b2c' },
    });
  });

  it('accepts partial states, boundary values and extra fields (kept, unvalidated)', () => {
    expect(acceptedState(lamp('{}'))).toEqual({});
    expect(acceptedState(lamp('{"on":false}'))).toEqual({ on: false });
    expect(acceptedState(lamp('{"brightness":0}'))).toEqual({ brightness: 0 });
    expect(acceptedState(lamp('{"brightness":1}'))).toEqual({ brightness: 1 });
    expect(acceptedState(lamp('{"color":{"h":0,"s":1}}'))).toEqual({ color: { h: 0, s: 1 } });
    expect(acceptedState(lamp('{"color":{"h":1,"s":0,"v":7}}'))).toEqual({ color: { h: 1, s: 0, v: 7 } });
    expect(acceptedState(lamp('{"on":true,"firmware":"1.2","extra":[1,null,{"x":"y"}]}'))).toEqual({
      on: true,
      firmware: '1.2',
      extra: [1, null, { x: 'y' }],
    });
  });

  it('accepts surrounding whitespace and a UTF-8 byte order mark', () => {
    expect(acceptedState(lamp(' \n{"on":true}\t '))).toEqual({ on: true });
    expect(acceptedState(lamp([0xef, 0xbb, 0xbf, ...utf8.encode('{"on":true}')]))).toEqual({ on: true });
  });

  it('accepts non-ASCII text', () => {
    expect(acceptedState(lamp('{"client":"lámpara 💡"}'))).toEqual({ client: 'lámpara 💡' });
  });

  it('keeps the last of duplicate keys, as JSON.parse does (so a later valid value wins over an earlier invalid one)', () => {
    expect(acceptedState(lamp('{"brightness":"bad","brightness":0.5}'))).toEqual({ brightness: 0.5 });
    expectRejected(lamp('{"brightness":0.5,"brightness":"bad"}'), 'invalid_lamp_state');
  });
});

describe('parseMessage: lamp state size limit (64 KiB)', () => {
  it('is 65536 bytes', () => {
    expect(MAX_LAMP_STATE_BYTES).toBe(65536);
  });

  it('accepts a valid object of exactly 65536 bytes and refuses 65537 as payload_too_large', () => {
    const atLimit = objectOfSize(65536);
    expect(utf8.encode(atLimit).length).toBe(65536);
    expect(lamp(atLimit).ok).toBe(true);
    const over = objectOfSize(65537);
    expect(utf8.encode(over).length).toBe(65537);
    expectRejected(lamp(over), 'payload_too_large');
  });

  it('counts bytes, not characters', () => {
    // 'é' is two bytes in UTF-8: 33000 of them are 33010 characters but 66010 bytes.
    const wide = `{"pad":"${'é'.repeat(33000)}"}`;
    expect(wide.length).toBeLessThan(65536);
    expect(utf8.encode(wide).length).toBeGreaterThan(65536);
    expectRejected(lamp(wide), 'payload_too_large');
  });

  it('refuses an oversized payload before looking at its content', () => {
    expectRejected(lamp(new Uint8Array(65537).fill(0xff)), 'payload_too_large');
  });
});

describe('parseMessage and parseLampState: lamp state refused', () => {
  it('refuses invalid UTF-8 as invalid_utf8', () => {
    const wrap = (bytes: number[]) => [...utf8.encode('{"client":"'), ...bytes, ...utf8.encode('"}')];
    const invalid: Record<string, number[]> = {
      'invalid continuation (C3 28)': [0xc3, 0x28],
      'lone high surrogate encoded (ED A0 80)': [0xed, 0xa0, 0x80],
      'lone low surrogate encoded (ED B0 80)': [0xed, 0xb0, 0x80],
      'overlong slash (C0 AF)': [0xc0, 0xaf],
      'overlong NUL (E0 80 80)': [0xe0, 0x80, 0x80],
      'beyond U+10FFFF (F4 90 80 80)': [0xf4, 0x90, 0x80, 0x80],
      'truncated sequence (E2 82)': [0xe2, 0x82],
      'stray continuation (80)': [0x80],
      'FF byte': [0xff],
    };
    for (const [name, bytes] of Object.entries(invalid)) {
      const result = lamp(wrap(bytes));
      expect(result, name).toMatchObject({ ok: false, reason: 'invalid_utf8' });
    }
  });

  it('refuses what is not JSON as invalid_json', () => {
    for (const payload of [
      '',
      ' ',
      'on',
      '{',
      '{"on":true',
      "{'on':true}",
      '{"on":true,}',
      '{on:true}',
      '{"on":true}{"on":false}',
      'NaN',
      '{"a":NaN}',
      '{"a":Infinity}',
      '{"a":01}',
    ]) {
      expect(lamp(payload), JSON.stringify(payload)).toMatchObject({ ok: false, reason: 'invalid_json', deviceId: 'b827eb0a1b2c' });
    }
  });

  it('refuses JSON that is not an object as not_an_object', () => {
    for (const payload of ['[]', '[{"on":true}]', '"on"', 'null', 'true', '1', '0.5']) {
      expect(lamp(payload), payload).toMatchObject({ ok: false, reason: 'not_an_object', deviceId: 'b827eb0a1b2c' });
    }
  });

  it(`accepts ${MAX_LAMP_STATE_DEPTH} levels of nesting and refuses ${MAX_LAMP_STATE_DEPTH + 1} as too_deeply_nested`, () => {
    expect(MAX_LAMP_STATE_DEPTH).toBe(16);
    expect(lamp(nestedObjects(16)).ok).toBe(true);
    expectRejected(lamp(nestedObjects(17)), 'too_deeply_nested');
    // Arrays are levels too.
    expect(lamp(`{"a":${'['.repeat(15)}${']'.repeat(15)}}`).ok).toBe(true);
    expectRejected(lamp(`{"a":${'['.repeat(16)}${']'.repeat(16)}}`), 'too_deeply_nested');
    // A scalar at the bottom of 16 levels is not a 17th.
    expect(lamp(nestedObjects(16).replace('{}', '{"leaf":1}')).ok).toBe(true);
  });

  it('does not throw on 64 KiB of nesting', () => {
    const half = MAX_LAMP_STATE_BYTES / 2;
    expect(() => lamp('['.repeat(MAX_LAMP_STATE_BYTES))).not.toThrow();
    expect(lamp('['.repeat(MAX_LAMP_STATE_BYTES))).toMatchObject({ ok: false, reason: 'invalid_json' });
    expect(lamp('['.repeat(half) + ']'.repeat(half))).toMatchObject({ ok: false, reason: 'not_an_object' });
    const inner = (MAX_LAMP_STATE_BYTES - '{"a":}'.length) / 2;
    expect(lamp(`{"a":${'['.repeat(inner)}${']'.repeat(inner)}}`)).toMatchObject({ ok: false, reason: 'too_deeply_nested' });
    const objects = Math.floor(MAX_LAMP_STATE_BYTES / '{"a":}'.length);
    expect(lamp(nestedObjects(objects))).toMatchObject({ ok: false, reason: 'too_deeply_nested' });
  });

  it('refuses numbers JSON cannot represent (1e999) anywhere in the state', () => {
    for (const payload of ['{"x":1e999}', '{"x":-1e999}', '{"x":[1,2,1e999]}', '{"a":{"b":{"c":1e400}}}', '{"brightness":1e999}']) {
      expect(lamp(payload), payload).toMatchObject({ ok: false, reason: 'invalid_lamp_state' });
    }
    expect(lamp('{"x":1e308}').ok).toBe(true);
  });

  it('refuses wrong types or ranges for the fields LAMPI sends as invalid_lamp_state, naming the field', () => {
    const cases: Record<string, string> = {
      '{"brightness":"0.5"}': 'brightness',
      '{"brightness":-0.1}': 'brightness',
      '{"brightness":1.01}': 'brightness',
      '{"brightness":null}': 'brightness',
      '{"on":"true"}': 'on',
      '{"on":1}': 'on',
      '{"color":{"h":2,"s":0.5}}': 'color.h',
      '{"color":{"h":0.5,"s":-1}}': 'color.s',
      '{"color":{"h":"0.5","s":0.5}}': 'color.h',
      '{"color":{"h":0.5}}': 'color.s',
      '{"color":[0.5,0.5]}': 'color',
      '{"color":null}': 'color',
      '{"color":"red"}': 'color',
      '{"client":7}': 'client',
      [`{"client":"${'c'.repeat(257)}"}`]: 'client',
    };
    for (const [payload, field] of Object.entries(cases)) {
      const result = lamp(payload);
      expect(result, payload).toMatchObject({ ok: false, reason: 'invalid_lamp_state', deviceId: 'b827eb0a1b2c' });
      if (!result.ok) expect(result.detail.startsWith(`${field}:`), `${payload}: ${result.detail}`).toBe(true);
    }
  });

  it('refuses by topic before looking at the payload', () => {
    expect(parse('devices/xyz/lamp/changed', '{"on":true}')).toMatchObject({ ok: false, reason: 'invalid_device_id' });
    expect(parse('devices/abc/lamp/changed/x', '{"on":true}')).toMatchObject({ ok: false, reason: 'unrecognized_topic' });
  });

  it('only ever uses the known reasons', () => {
    expect([...REJECT_REASONS].sort()).toEqual(
      [
        'unrecognized_topic',
        'invalid_device_id',
        'invalid_bridge_state',
        'payload_too_large',
        'invalid_utf8',
        'invalid_json',
        'not_an_object',
        'too_deeply_nested',
        'unstorable_text',
        'invalid_lamp_state',
        'unknown_device',
      ].sort(),
    );
  });
});

describe('parseLampState: text no Keen can store', () => {
  it('refuses a NUL or a lone surrogate, in any key or value at any depth, as unstorable_text', () => {
    const refused = [
      '{"s":"\\u0000"}',
      '{"s":"\\ud800"}',
      '{"s":"x\\udfff"}',
      '{"s":"\\udc00\\ud800"}',
      '{"a":{"b":[1,{"c":"\\ud83d"}]}}',
      '{"\\u0000":1}',
      '{"a":[{"k\\udbff":1}]}',
    ];
    for (const payload of refused) {
      const result = lamp(payload);
      expect(result, payload).toMatchObject({ ok: false, reason: 'unstorable_text', detail: expect.stringMatching(/NUL|surrogate/) });
    }
    expect(lamp('{"s":"a\\u0000"}')).toMatchObject({ detail: 'the value at s contains a NUL character (\\u0000)' });
  });

  it('accepts escapes of storable text, and raw non-ASCII text without escapes', () => {
    expect(acceptedState(lamp('{"s":"\\u0041\\n","\\u00e9":[{"x":"\\ud83d\\udca1"}]}'))).toEqual({ s: 'A\n', é: [{ x: '💡' }] });
    expect(acceptedState(lamp('{"s":"💡 ok"}'))).toEqual({ s: '💡 ok' });
  });

  it('accepts surrogate pairs and other control characters', () => {
    for (const payload of ['{"s":"\\ud83d\\udca1"}', '{"\\ud83d\\udca1":"\\u0001\\t\\uffff"}', '{"client":"lamp \u{1F4A1}"}']) {
      expect(lamp(payload), payload).toMatchObject({ ok: true });
    }
  });
});

describe('parseLampState: prototype pollution', () => {
  it('keeps __proto__ as an own data property and never touches Object.prototype, through the Keen event too', () => {
    const state = acceptedState(lamp('{"__proto__":{"polluted":1},"on":true}'));
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(Object.getPrototypeOf(state)).toBe(Object.prototype);
    expect(Object.hasOwn(state, '__proto__')).toBe(true);
    expect((state as { polluted?: unknown }).polluted).toBeUndefined();

    const event = deviceStateEvent('b827eb0a1b2c', state, RECEIVED_AT, 'job-devicestate');
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    const nested = event.state as Record<string, unknown>;
    expect(Object.getPrototypeOf(nested)).toBe(Object.prototype);
    expect(Object.getOwnPropertyDescriptor(nested, '__proto__')?.value).toEqual({ polluted: 1 });
    expect(JSON.parse(JSON.stringify(event)).state).toEqual(JSON.parse('{"__proto__":{"polluted":1},"on":true}'));
  });

  it('does not let a constructor or prototype key change anything shared', () => {
    const state = acceptedState(lamp('{"constructor":{"prototype":{"polluted":1}},"prototype":{"polluted":1},"toString":"x"}'));
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(Object.prototype.toString).toBe(PROTOTYPE_TO_STRING);
    expect({}.constructor).toBe(Object);
    deviceStateEvent('b827eb0a1b2c', state, RECEIVED_AT, 't');
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(Object.getOwnPropertyNames(Object.prototype)).not.toContain('polluted');
  });

  it('does not let a __proto__ key smuggle in known fields', () => {
    // The inherited `brightness` must not be read as the lamp's brightness.
    const state = acceptedState(lamp('{"__proto__":{"brightness":"not a number","on":"yes"}}'));
    expect(state.brightness).toBeUndefined();
    expect(state.on).toBeUndefined();
  });
});
