/**
 * Keen's wire protocol (src/shared/keen/), tested once where it lives: the limits, the name
 * rules, the envelope and its add-on, event and request sizes, the endpoints, the error names
 * and what each status means. Every sender and receiver here (the worker, keen-sink, the test
 * fake, the bench's recorder) relies on these rules, so each is pinned with the values Keen
 * documents, written out rather than imported.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { DATE_TIME_PARSER, dateTimeInfo, keenEnvelope } from '../../src/shared/keen/envelope.js';
import {
  deploymentFaultOf,
  KeenEventRejected,
  KeenRequestError,
  parseRetryAfter,
  retryableStatus,
  statusHasRetryAfter,
  statusMayBeOneEvent,
} from '../../src/shared/keen/errors.js';
import {
  checkBulkBody,
  checkCollectionName,
  checkEvent,
  checkEventSize,
  checkPropertyName,
  eventsPath,
  isKeenPropertyName,
  KEEN_LIMITS,
  matchEventsPath,
  parseDateTime,
  type StoreRules,
} from '../../src/shared/keen/protocol.js';

const errorOf = (checked: { ok: boolean; error?: { name: string } }) => (checked.ok ? undefined : checked.error?.name);
const TIMESTAMP = '2026-11-05T10:00:00.000Z';

describe('limits', () => {
  it("are Keen's documented ones", () => {
    expect(KEEN_LIMITS).toEqual({
      eventBytes: 900_000,
      bulkBytes: 10 * 1024 * 1024,
      collectionName: 64,
      propertyName: 256,
      uniquenessToken: 64,
    });
  });

  it('an event of exactly 900,000 bytes passes, one more is EventTooLargeError naming both sizes', () => {
    expect(checkEventSize(900_000)).toEqual({ ok: true, value: 900_000 });
    const over = checkEventSize(900_001);
    expect(over).toMatchObject({ ok: false, error: { name: 'EventTooLargeError' } });
    expect(!over.ok && over.error.description).toMatch(/900000.*900001/);
    expect(errorOf(checkEventSize(11, 10))).toBe('EventTooLargeError');
  });
});

describe('collection names', () => {
  it.each([
    ['', 'empty'],
    ['$system', 'a leading $'],
    ['x'.repeat(65), '65 characters'],
  ])('%j (%s) → InvalidCollectionNameError', (name) => {
    expect(errorOf(checkCollectionName(name))).toBe('InvalidCollectionNameError');
  });

  it('refuses what is not a string, without throwing', () => {
    for (const name of [undefined, null, 5, {}, []]) expect(errorOf(checkCollectionName(name))).toBe('InvalidCollectionNameError');
  });

  it('accepts our collections, 64 characters, and a $ that does not lead', () => {
    for (const name of ['activations', 'devicemonitoring', 'devicestate', 'x'.repeat(64), 'a$b', 'with.dot'])
      expect(checkCollectionName(name)).toEqual({ ok: true, value: name });
  });
});

describe('property names', () => {
  it.each([
    ['a.b', 'a dot'],
    ['$x', 'a leading $'],
    ['p'.repeat(257), '257 characters'],
  ])('%j (%s) is refused', (name) => {
    expect(isKeenPropertyName(name)).toBe(false);
    expect(errorOf(checkPropertyName(name))).toBe('InvalidPropertyNameError');
  });

  it('accepts 256 characters, a $ that does not lead, and __proto__', () => {
    for (const name of ['p'.repeat(256), 'a$', '__proto__', 'device_id']) {
      expect(isKeenPropertyName(name)).toBe(true);
      expect(checkPropertyName(name).ok).toBe(true);
    }
  });

  it('the description quotes the name and where it was found', () => {
    const checked = checkPropertyName('bad.name', 'state.color');
    expect(!checked.ok && checked.error.description).toMatch(/"bad\.name" at state\.color/);
  });

  it('the yes-or-no rule and the checked one agree on any name', () => {
    fc.assert(
      fc.property(fc.string({ unit: fc.constantFrom('a', '.', '$', '_', 'é'), maxLength: 300 }), (name) => {
        expect(isKeenPropertyName(name)).toBe(checkPropertyName(name).ok);
      }),
    );
  });
});

describe('one event', () => {
  it.each([
    ['a dot in a name', { 'a.b': 1 }, 'InvalidPropertyNameError'],
    ['a nested $ name', { nested: { deeper: [{ $x: 1 }] } }, 'InvalidPropertyNameError'],
    ['a 257-character name', { ['p'.repeat(257)]: 1 }, 'InvalidPropertyNameError'],
    ['keen as an array', { keen: [] }, 'InvalidPropertyValueError'],
    ['keen as a number', { keen: 5 }, 'InvalidPropertyValueError'],
    ['a 65-character token', { keen: { uniqueness_token: 't'.repeat(65) } }, 'InvalidPropertyValueError'],
    ['an empty token', { keen: { uniqueness_token: '' } }, 'InvalidPropertyValueError'],
    ['a token that is not a string', { keen: { uniqueness_token: 7 } }, 'InvalidPropertyValueError'],
    ['an unreadable timestamp', { keen: { timestamp: 'yesterday' } }, 'InvalidPropertyValueError'],
    ['a day that does not exist', { keen: { timestamp: '2026-02-30T00:00:00Z' } }, 'InvalidPropertyValueError'],
    ['addons that are not an array', { keen: { addons: {} } }, 'InvalidPropertyValueError'],
    ['an add-on without a name', { keen: { addons: [{ input: {} }] } }, 'InvalidPropertyValueError'],
    ['an array event', [1, 2], 'InvalidEventError'],
    ['a string event', 'event', 'InvalidEventError'],
    ['null', null, 'InvalidEventError'],
    ['an event over 900,000 bytes', { blob: 'z'.repeat(900_000) }, 'EventTooLargeError'],
  ])('%s → %s', (_what, event, error) => {
    expect(errorOf(checkEvent(event))).toBe(error);
  });

  it('accepts what we send: our envelope and its date-time parser, under 900,000 bytes', () => {
    const event = { device_id: 'b827eb0a1b2c', state: { on: true }, keen: keenEnvelope(TIMESTAMP, 'job-devicestate') };
    const checked = checkEvent(event);
    expect(checked).toEqual({
      ok: true,
      value: {
        timestamp: new Date(TIMESTAMP),
        uniquenessToken: 'job-devicestate',
        addons: [{ name: 'keen:date_time_parser', dateTime: { input: 'keen.timestamp', output: 'timestamp.info' } }],
        bytes: Buffer.byteLength(JSON.stringify(event)),
      },
    });
  });

  it('accepts a property name of 256 characters, dots in values, no keen at all, and an add-on it does not know', () => {
    expect(checkEvent({ ['p'.repeat(256)]: 'a.b' })).toMatchObject({ ok: true, value: { addons: [] } });
    expect(checkEvent({ keen: { addons: [{ name: 'keen:ip_to_geo', input: { ip: 'ip' }, output: 'geo' }] } })).toMatchObject({
      ok: true,
      value: { addons: [{ name: 'keen:ip_to_geo' }] },
    });
  });

  it('takes the size the caller measured instead of measuring', () => {
    expect(checkEvent({ a: 1 }, { bytes: 900_001 })).toMatchObject({ ok: false, error: { name: 'EventTooLargeError' } });
    expect(checkEvent({ blob: 'z'.repeat(100) }, { maxBytes: 50 })).toMatchObject({ ok: false, error: { name: 'EventTooLargeError' } });
  });

  it('the date-time parser needs an input and an output outside keen, with valid names', () => {
    const withAddon = (addon: Record<string, unknown>) => ({ keen: { addons: [{ name: 'keen:date_time_parser', ...addon }] } });
    const input = { date_time: 'keen.timestamp' };
    expect(errorOf(checkEvent(withAddon({ output: 'x' })))).toBe('InvalidPropertyValueError');
    expect(errorOf(checkEvent(withAddon({ input: { date_time: '' }, output: 'x' })))).toBe('InvalidPropertyValueError');
    expect(errorOf(checkEvent(withAddon({ input })))).toBe('InvalidPropertyValueError');
    expect(errorOf(checkEvent(withAddon({ input, output: 'keen.info' })))).toBe('InvalidPropertyValueError');
    expect(errorOf(checkEvent(withAddon({ input, output: 'a.$b' })))).toBe('InvalidPropertyNameError');
    expect(checkEvent(withAddon({ input, output: 'when.info' })).ok).toBe(true);
  });

  it('walks own properties only: __proto__ is a name like any other', () => {
    const event = JSON.parse('{"__proto__":{"a.b":1}}') as unknown;
    expect(errorOf(checkEvent(event))).toBe('InvalidPropertyNameError');
    expect(checkEvent(JSON.parse('{"__proto__":{"keen":5}}')).ok).toBe(true);
  });

  it("never overflows the stack: 100,000 levels of nesting are walked, and refused past a store's maxDepth", () => {
    let deep: unknown = 1;
    for (let i = 0; i < 100_000; i++) deep = { a: deep };
    const checked = checkEvent(deep);
    // Keen sets no depth limit; JSON.stringify cannot measure this one, which is said, not thrown.
    expect(checked).toMatchObject({ ok: false, error: { name: 'InvalidEventError' } });
    expect(checkEvent(deep, { rules: { maxDepth: 1000 } })).toMatchObject({ ok: false, error: { name: 'InvalidPropertyValueError' } });
  });

  it("applies a store's own rules to every name and value, after Keen's", () => {
    const rules: StoreRules = {
      name: (name) => (name.includes('!') ? 'must not contain "!"' : undefined),
      value: (value) => (value === 'forbidden' ? 'That value is forbidden' : undefined),
    };
    expect(checkEvent({ ok: [{ fine: 'yes' }] }, { rules }).ok).toBe(true);
    const name = checkEvent({ list: [{ 'a!': 1 }] }, { rules });
    expect(name).toMatchObject({ ok: false, error: { name: 'InvalidPropertyNameError' } });
    expect(!name.ok && name.error.description).toBe('Property names must not contain "!" (at list[0]).');
    const value = checkEvent({ list: [{ a: 'forbidden' }] }, { rules });
    expect(!value.ok && value.error).toEqual({ name: 'InvalidPropertyValueError', description: 'That value is forbidden (at list[0].a).' });
    expect(errorOf(checkCollectionName('a!', rules))).toBe('InvalidCollectionNameError');
    expect(errorOf(checkEvent({ keen: { addons: [{ ...DATE_TIME_PARSER, output: 'x!.info' }] } }, { rules }))).toBe(
      'InvalidPropertyNameError',
    );
  });

  it('never throws, whatever JSON it is given, and a refusal always has a name and a description', () => {
    fc.assert(
      fc.property(fc.jsonValue({ maxDepth: 6 }), (value) => {
        const checked = checkEvent(value);
        if (!checked.ok) {
          expect(checked.error.name).toMatch(/^Invalid|^EventTooLarge/);
          expect(checked.error.description.length).toBeGreaterThan(0);
        }
      }),
    );
  });
});

describe('bulk requests', () => {
  it('an object of collections to arrays of events, as entries', () => {
    expect(checkBulkBody({ a: [1], b: [] })).toEqual({
      ok: true,
      value: [
        ['a', [1]],
        ['b', []],
      ],
    });
  });
  it.each([[[]], ['x'], [null], [{ a: [1], b: 2 }]])('%j is refused whole as InvalidEventError', (body) => {
    expect(errorOf(checkBulkBody(body))).toBe('InvalidEventError');
  });
});

describe('endpoints', () => {
  it('bulk and single-event paths, encoded, and read back decoded', () => {
    expect(eventsPath('proj')).toBe('/3.0/projects/proj/events');
    expect(eventsPath('p j', 'a/b')).toBe('/3.0/projects/p%20j/events/a%2Fb');
    expect(matchEventsPath('/3.0/projects/proj/events')).toEqual({ ok: true, projectId: 'proj' });
    expect(matchEventsPath('/3.0/projects/proj/events/')).toEqual({ ok: true, projectId: 'proj' });
    expect(matchEventsPath(eventsPath('p j', 'a/b'))).toEqual({ ok: true, projectId: 'p j', collection: 'a/b' });
  });
  it('anything else, or a bad percent-encoding, does not match (and does not throw)', () => {
    for (const path of [
      '/',
      '/3.0/projects/proj',
      '/3.0/projects/proj/queries/count',
      '/3.0/projects/proj/events/a/b',
      '/3.0/projects/%E0/events',
    ])
      expect(matchEventsPath(path)).toEqual({ ok: false });
  });
});

describe('date-times', () => {
  it.each([
    ['2026-03-18T15:42:10Z', '2026-03-18T15:42:10.000Z'],
    ['2026-03-18T15:42:10.123+02:00', '2026-03-18T13:42:10.123Z'],
    ['2026-03-18T15:42', '2026-03-18T15:42:00.000Z'],
    ['2024-02-29', '2024-02-29T00:00:00.000Z'],
  ])('%s is %s (no offset: UTC)', (value, iso) => {
    const parsed = parseDateTime(value);
    expect(parsed.ok && parsed.date.toISOString()).toBe(iso);
  });
  it.each(['2026-02-29', '2026-13-01', '2026-01-01T24:00:00Z', '2026-01-01T00:00:00+24:00', 'yesterday', '', '0000-01-01T00:00:00Z'])(
    '%j is refused with a reason',
    (value) => {
      const parsed = parseDateTime(value);
      expect(parsed.ok).toBe(false);
      expect(!parsed.ok && parsed.problem.length).toBeGreaterThan(0);
    },
  );
  it('refuses what is not a string', () => {
    for (const value of [undefined, 5, new Date(), {}]) expect(parseDateTime(value).ok).toBe(false);
  });
});

describe('the envelope and the date-time parser add-on', () => {
  it('is the timestamp, the token and the add-on reading keen.timestamp into timestamp.info', () => {
    expect(keenEnvelope(TIMESTAMP, 't')).toEqual({
      timestamp: TIMESTAMP,
      uniqueness_token: 't',
      addons: [{ name: 'keen:date_time_parser', input: { date_time: 'keen.timestamp' }, output: 'timestamp.info' }],
    });
  });

  it("outputs Keen's fields, in UTC", () => {
    expect(dateTimeInfo(new Date('2026-03-18T15:42:10.007Z'))).toEqual({
      millisecond: 7,
      second: 10,
      minute: 42,
      hour: 15,
      day_of_week: 3,
      day_of_week_string: 'Wednesday',
      day_of_month: 18,
      week: 12,
      month: 3,
      year: 2026,
      timezone_offset: 0,
    });
  });

  it('counts ISO weeks across year ends', () => {
    expect(dateTimeInfo(new Date('2021-01-03T12:00:00Z'))).toMatchObject({ week: 53, year: 2021, day_of_week: 7 });
    expect(dateTimeInfo(new Date('2024-12-30T00:00:00Z'))).toMatchObject({ week: 1, day_of_week: 1, day_of_week_string: 'Monday' });
    expect(dateTimeInfo(new Date('2026-06-15T08:00:00Z'))).toMatchObject({ week: 25, month: 6, day_of_month: 15 });
  });
});

describe('what a status means', () => {
  it('401, 402 and 403 are deployment faults (the key or the account), and a retry can help once it is fixed', () => {
    expect([401, 402, 403].map(deploymentFaultOf)).toEqual(['unauthorized', 'account_blocked', 'forbidden']);
    for (const status of [200, 400, 404, 413, 429, 500, undefined]) expect(deploymentFaultOf(status)).toBeUndefined();
    for (const status of [401, 402, 403]) expect(retryableStatus(status)).toBe(true);
  });

  it('429, 408, 425 and 5xx can be retried; 400, 404, 413 and 3xx cannot', () => {
    for (const status of [408, 425, 429, 500, 502, 503, 504]) expect(retryableStatus(status), String(status)).toBe(true);
    for (const status of [301, 400, 404, 405, 413, 422]) expect(retryableStatus(status), String(status)).toBe(false);
  });

  it('a 500 or a 413 may be one event of a bulk request; a 429 or a 503 says when to come back', () => {
    expect([500, 413, 502, 429, 400, undefined].map(statusMayBeOneEvent)).toEqual([true, true, false, false, false, false]);
    expect([429, 503, 500, 413].map(statusHasRetryAfter)).toEqual([true, true, false, false]);
  });

  it('KeenRequestError carries the status, the code, whether a retry helps and the deployment fault', () => {
    const cause = new Error('underneath');
    const err = new KeenRequestError('Keen answered 401', { status: 401, code: 'InvalidApiKeyError', retryable: true, cause });
    expect(err).toBeInstanceOf(Error);
    expect(err).toMatchObject({
      name: 'KeenRequestError',
      status: 401,
      code: 'InvalidApiKeyError',
      retryable: true,
      deploymentFault: 'unauthorized',
    });
    expect(err.cause).toBe(cause);
    const timeout = new KeenRequestError('timed out', { code: 'ETIMEDOUT', retryable: true });
    expect(timeout.status).toBeUndefined();
    expect(timeout.deploymentFault).toBeUndefined();
    expect(new KeenRequestError('slow down', { status: 429, retryable: true, retryAfterMs: 3000 }).retryAfterMs).toBe(3000);
  });

  it("KeenEventRejected carries Keen's error name and description", () => {
    const err = new KeenEventRejected('InvalidPropertyNameError', 'Property names must not contain "."');
    expect(err).toMatchObject({ name: 'KeenEventRejected', errorName: 'InvalidPropertyNameError' });
    expect(err.message).toBe('Keen rejected the event: InvalidPropertyNameError: Property names must not contain "."');
  });
});

describe('parseRetryAfter', () => {
  const now = Date.parse('2026-11-05T10:00:00Z');
  it.each([
    ['0', 0],
    ['12', 12_000],
    ['1.5', 1500],
    ['Thu, 05 Nov 2026 10:00:30 GMT', 30_000],
    ['Thu, 05 Nov 2026 09:59:00 GMT', 0],
    ['999999', 3600_000],
  ])('%s → %i ms', (value, ms) => {
    expect(parseRetryAfter(value, now)).toBe(ms);
  });
  it.each([null, undefined, '', 'soon', '-5'])('%s → undefined', (value) => {
    expect(parseRetryAfter(value, now)).toBeUndefined();
  });
});
