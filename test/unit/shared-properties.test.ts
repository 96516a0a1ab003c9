/**
 * Property-based checks of the pure core: whatever a broker delivers, parsing never throws and
 * ends in a message or a known reason; whatever a lamp sends, the Keen event is one Keen accepts,
 * about the right device, with our envelope, and nothing reaches Object.prototype.
 */
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { deviceStateEvent } from '../../src/shared/events.js';
import { DATE_TIME_PARSER } from '../../src/shared/keen/envelope.js';
import { REJECT_REASONS } from '../../src/shared/lamp.js';
import { MAX_LAMP_STATE_BYTES, parseLampState, parseMessage } from '../../src/shared/message.js';
import { parseTopic } from '../../src/shared/topics.js';

const PROTOTYPE_KEYS = Object.getOwnPropertyNames(Object.prototype).sort();
const RECEIVED_AT = '2025-03-04T05:06:07.089Z';
const TOKEN = '0123456789abcdef0123456789abcdef-devicestate';
const encoder = new TextEncoder();

afterAll(() => {
  expect(Object.getOwnPropertyNames(Object.prototype).sort()).toEqual(PROTOTYPE_KEYS);
  expect(({} as Record<string, unknown>).polluted).toBeUndefined();
});

/** Property names Keen refuses: a `.`, a leading `$`, or more than 256 characters. */
const refusedByKeen = (name: string) => name.includes('.') || name.startsWith('$') || name.length > 256;

function propertyNames(value: unknown, names: string[] = []): string[] {
  if (Array.isArray(value)) for (const item of value) propertyNames(item, names);
  else if (typeof value === 'object' && value !== null) {
    for (const [key, child] of Object.entries(value)) {
      names.push(key);
      propertyNames(child, names);
    }
  }
  return names;
}

/**
 * `sent` is what the lamp sent (parsed), `got` what reached Keen (after a JSON round trip):
 * same shape, no entry lost to a rename, scalars unchanged, and valid names kept as they were.
 */
function expectSameData(sent: unknown, got: unknown, path = 'state'): void {
  if (Array.isArray(sent)) {
    expect(Array.isArray(got), path).toBe(true);
    expect((got as unknown[]).length, path).toBe(sent.length);
    sent.forEach((item, i) => expectSameData(item, (got as unknown[])[i], `${path}[${i}]`));
    return;
  }
  if (typeof sent !== 'object' || sent === null) {
    expect(got, path).toBe(sent);
    return;
  }
  expect(typeof got === 'object' && got !== null && !Array.isArray(got), path).toBe(true);
  const gotObject = got as Record<string, unknown>;
  expect(Object.keys(gotObject).length, `${path}: entries`).toBe(Object.keys(sent).length);
  for (const [key, child] of Object.entries(sent)) {
    if (!refusedByKeen(key) && key !== '') {
      expect(Object.hasOwn(gotObject, key), `${path}.${key}`).toBe(true);
      expectSameData(child, gotObject[key], `${path}.${key}`);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Topics

const hexId = (min: number, max: number) => fc.stringMatching(new RegExp(`^[0-9a-fA-F]{${min},${max}}$`));
const level = fc.oneof(
  fc.constantFrom('', '$SYS', '$sys', 'broker', 'connection', 'devices', 'DEVICES', 'lamp', 'changed', 'state', 'associated'),
  fc.constantFrom('abc_broker', 'ABC_BROKER', '_broker', 'b827eb0a1b2c', 'B827EB0A1B2C', '0123456789abc', 'g', '+', '#', ' '),
  hexId(0, 14),
  hexId(0, 14).map((id) => `${id}_broker`),
  fc.string({ maxLength: 6 }),
);
const topicArb = fc.oneof(
  fc.string(),
  fc.string({ unit: 'binary', maxLength: 40 }),
  fc.stringMatching(/^\/?devices\/[0-9a-zA-Z]{0,14}\/lamp\/changed\/?$/),
  fc.stringMatching(/^\$(SYS|sys)\/broker\/connection\/[0-9a-fA-FxX_]{0,16}(_broker)?\/state$/),
  fc.array(level, { maxLength: 7 }).map((levels) => levels.join('/')),
  fc.tuple(fc.boolean(), hexId(1, 12)).map(([slash, id]) => `${slash ? '/' : ''}devices/${id}/lamp/changed`),
  hexId(1, 12).map((id) => `$SYS/broker/connection/${id}_broker/state`),
);

describe('parseTopic (property)', () => {
  it('never throws, and accepts exactly the two shapes with a 1-12 hex id, lower-cased', () => {
    fc.assert(
      fc.property(topicArb, (topic) => {
        const parsed = parseTopic(topic);
        if (!parsed.ok) {
          expect(['unrecognized_topic', 'invalid_device_id']).toContain(parsed.reason);
          return;
        }
        expect(parsed.deviceId).toMatch(/^[0-9a-f]{1,12}$/);
        const lower = topic.toLowerCase();
        if (parsed.kind === 'lamp-state') {
          expect([`/devices/${parsed.deviceId}/lamp/changed`, `devices/${parsed.deviceId}/lamp/changed`]).toContain(lower);
        } else {
          expect(lower).toBe(`$sys/broker/connection/${parsed.deviceId}_broker/state`);
        }
      }),
      { numRuns: 2000 },
    );
  });

  it('reads any 1-12 hex id, in any case, out of both lamp topic shapes and the bridge topic', () => {
    fc.assert(
      fc.property(hexId(1, 12), fc.boolean(), (id, slash) => {
        const deviceId = id.toLowerCase();
        expect(parseTopic(`${slash ? '/' : ''}devices/${id}/lamp/changed`)).toEqual({ ok: true, kind: 'lamp-state', deviceId });
        expect(parseTopic(`$SYS/broker/connection/${id}_broker/state`)).toEqual({ ok: true, kind: 'bridge-state', deviceId });
      }),
    );
  });

  it('refuses ids of 13 or more hex characters', () => {
    fc.assert(
      fc.property(hexId(13, 30), (id) => {
        expect(parseTopic(`devices/${id}/lamp/changed`)).toMatchObject({ ok: false, reason: 'invalid_device_id' });
        expect(parseTopic(`$SYS/broker/connection/${id}_broker/state`)).toMatchObject({ ok: false, reason: 'invalid_device_id' });
      }),
    );
  });
});

// ---------------------------------------------------------------------------------------------
// Messages

const bytesOfLength = (min: number, max: number) =>
  fc.integer({ min, max }).chain((length) => fc.uint8Array({ minLength: length, maxLength: length }));
/** A JSON object of exactly `length` bytes made of arbitrary printable ASCII. */
const objectOfLength = (min: number, max: number) =>
  fc.tuple(fc.integer({ min, max }), fc.integer({ min: 0x20, max: 0x7e })).map(([length, code]) => {
    const fill = code === 0x22 || code === 0x5c ? 'x' : String.fromCharCode(code);
    return encoder.encode(`{"pad":"${fill.repeat(length - 10)}"}`);
  });
const payloadArb = fc.oneof(
  fc.uint8Array({ maxLength: 70 * 1024 }),
  fc.uint8Array({ maxLength: 70 * 1024, size: 'max' }),
  bytesOfLength(MAX_LAMP_STATE_BYTES - 4, MAX_LAMP_STATE_BYTES + 4),
  objectOfLength(MAX_LAMP_STATE_BYTES - 4, MAX_LAMP_STATE_BYTES + 4),
  fc.uint8Array({ maxLength: 3 }),
  fc.constantFrom('0', '1', '2', '10', ' 1', '', '{}', '[]', 'null', '{"on":true}', '{"a":1e999}').map((s) => encoder.encode(s)),
  fc.jsonValue().map((value) => encoder.encode(JSON.stringify(value))),
  fc.string({ unit: 'binary' }).map((s) => encoder.encode(s)),
  fc.integer({ min: 1, max: 40_000 }).map((n) => encoder.encode('['.repeat(n) + ']'.repeat(n))),
  fc.integer({ min: 1, max: 13_000 }).map((n) => encoder.encode('{"a":'.repeat(n) + '{}' + '}'.repeat(n))),
);

const PARSE_REASONS = REJECT_REASONS.filter((reason) => reason !== 'unknown_device');

describe('parseMessage (property)', () => {
  it('never throws, whatever the topic and bytes: a consistent message, or a known reason with a detail', () => {
    fc.assert(
      fc.property(topicArb, payloadArb, fc.boolean(), (topic, payload, retained) => {
        const result = parseMessage({ topic, payload, retain: retained, dup: false }, RECEIVED_AT);
        const parsedTopic = parseTopic(topic);
        if (!result.ok) {
          expect(PARSE_REASONS).toContain(result.reason);
          expect(typeof result.detail).toBe('string');
          expect(result.detail.length).toBeGreaterThan(0);
          if (parsedTopic.ok) expect(result.deviceId).toBe(parsedTopic.deviceId);
          else expect(result.reason).toBe(parsedTopic.reason);
          return;
        }
        expect(parsedTopic.ok).toBe(true);
        if (!parsedTopic.ok) return;
        const { message } = result;
        expect(message.kind).toBe(parsedTopic.kind);
        expect(message.deviceId).toBe(parsedTopic.deviceId);
        expect(message.receivedAt).toBe('2025-03-04T05:06:07.089Z');
        if (message.kind === 'bridge-state') {
          expect(payload).toHaveLength(1);
          expect(message.connected).toBe(payload[0] === 0x31);
          expect([0x30, 0x31]).toContain(payload[0]);
          expect(message.retained).toBe(retained);
        } else {
          expect(payload.length).toBeLessThanOrEqual(MAX_LAMP_STATE_BYTES);
          expect(Buffer.from(result.payload, 'utf8').equals(Buffer.from(payload))).toBe(true);
          const state = parseLampState(result.payload);
          if (state.ok) expect(typeof state.state === 'object' && state.state !== null && !Array.isArray(state.state)).toBe(true);
        }
      }),
      { numRuns: 400 },
    );
  });

  it('refuses every lamp state over 64 KiB, and accepts every valid one at or under it', () => {
    fc.assert(
      fc.property(objectOfLength(MAX_LAMP_STATE_BYTES - 64, MAX_LAMP_STATE_BYTES + 64), (payload) => {
        const result = parseMessage({ topic: 'devices/abc/lamp/changed', payload, retain: false, dup: false }, RECEIVED_AT);
        if (payload.length > MAX_LAMP_STATE_BYTES) expect(result).toMatchObject({ ok: false, reason: 'payload_too_large' });
        else expect(result.ok).toBe(true);
      }),
      { numRuns: 50 },
    );
  });
});

// ---------------------------------------------------------------------------------------------
// Keen events built from arbitrary lamp states

const hostileKey = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom('.', '$', '$set', '$$', 'a.b', '.a', 'a.', '..', '_', '', 'a_b', 'a_b_1', '_a', '_set', '__1') },
  {
    weight: 4,
    arbitrary: fc.constantFrom(
      '__proto__',
      'constructor',
      'prototype',
      'toString',
      'hasOwnProperty',
      'keen',
      'device_id',
      'state',
      'timestamp',
      'polluted',
    ),
  },
  { weight: 2, arbitrary: fc.constantFrom('k'.repeat(255), 'k'.repeat(256), 'k'.repeat(257), '.'.repeat(300), `$${'k'.repeat(256)}`) },
  { weight: 1, arbitrary: fc.string({ unit: fc.constantFrom('k', '.', '$', '_'), minLength: 250, maxLength: 262 }) },
  { weight: 3, arbitrary: fc.string({ unit: fc.constantFrom('a', 'b', '.', '$', '_', '1'), maxLength: 5 }) },
  { weight: 2, arbitrary: fc.string({ maxLength: 8 }) },
  { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 4 }) },
);
const scalar = fc.oneof(
  { weight: 4, arbitrary: fc.constant('null') },
  { weight: 4, arbitrary: fc.boolean().map(String) },
  { weight: 4, arbitrary: fc.double({ noNaN: true, noDefaultInfinity: true }).map((n) => JSON.stringify(n)) },
  { weight: 4, arbitrary: fc.string({ maxLength: 10 }).map((s) => JSON.stringify(s)) },
  // Valid JSON that JavaScript reads as ±Infinity, which JSON.stringify would then send as null.
  { weight: 1, arbitrary: fc.constantFrom('1e999', '-1e999', '1E400') },
);
/** JSON text, written by hand so that keys like __proto__ and duplicate keys reach the parser as sent. */
const { node: jsonText } = fc.letrec<{ node: string; object: string; array: string }>((tie) => ({
  node: fc.oneof({ depthIdentifier: 'json', maxDepth: 5 }, scalar, tie('object'), tie('array')),
  object: fc
    .array(fc.tuple(hostileKey, tie('node')), { maxLength: 6, depthIdentifier: 'json' })
    .map((entries) => `{${entries.map(([key, value]) => `${JSON.stringify(key)}:${value}`).join(',')}}`),
  array: fc.array(tie('node'), { maxLength: 4, depthIdentifier: 'json' }).map((items) => `[${items.join(',')}]`),
}));
const objectText = jsonText.filter((text) => text.startsWith('{'));
const lampStateText = fc.oneof(
  objectText,
  fc.object({ key: hostileKey, maxDepth: 4, values: [fc.jsonValue({ maxDepth: 3 })] }).map((value) => JSON.stringify(value)),
  fc.dictionary(hostileKey, fc.jsonValue({ maxDepth: 4 })).map((value) => JSON.stringify(value)),
  fc
    .tuple(objectText, fc.double({ min: 0, max: 1, noNaN: true }), fc.boolean())
    .map(([rest, brightness, on]) => `{"brightness":${brightness},"on":${on},"color":{"h":0.44,"s":1},"extra":${rest}}`),
);

describe('deviceStateEvent of an accepted lamp state (property)', () => {
  let accepted = 0;
  afterAll(() => {
    // The property must not hold vacuously: most generated states are accepted.
    expect(accepted).toBeGreaterThan(300);
  });

  it('is accepted by Keen, about the topic device, with our envelope, and loses no data', () => {
    fc.assert(
      fc.property(hexId(1, 12), fc.boolean(), lampStateText, (id, slash, text) => {
        const topic = `${slash ? '/' : ''}devices/${id}/lamp/changed`;
        const result = parseMessage({ topic, payload: encoder.encode(text), retain: false, dup: false }, RECEIVED_AT);
        const state = result.ok ? parseLampState(result.payload) : result;
        if (!state.ok) {
          expect(PARSE_REASONS).toContain(state.reason);
          return;
        }
        if (!result.ok || result.message.kind !== 'lamp-state') throw new Error('expected a lamp-state message');
        accepted += 1;

        const event = deviceStateEvent(result.message.deviceId, state.state, result.message.receivedAt, TOKEN);
        const sent = JSON.parse(JSON.stringify(event)) as Record<string, unknown>;

        expect(propertyNames(sent).filter(refusedByKeen)).toEqual([]);
        expect(Object.keys(sent).sort()).toEqual(['device_id', 'keen', 'state']);
        expect(sent.device_id).toBe(id.toLowerCase());
        expect(sent.keen).toStrictEqual({ timestamp: '2025-03-04T05:06:07.089Z', uniqueness_token: TOKEN, addons: [DATE_TIME_PARSER] });
        expectSameData(JSON.parse(text), sent.state);

        expect(Object.getOwnPropertyNames(Object.prototype).sort()).toEqual(PROTOTYPE_KEYS);
        expect(({} as Record<string, unknown>).polluted).toBeUndefined();
      }),
      { numRuns: 500 },
    );
  });
});
