/**
 * The lamp-states stage's pure handler (src/worker/stages/lamp-states.ts): which states become
 * `devicestate` events, which wait for their lamp's connect, which are rejected. No Redis, no
 * PostgreSQL: the registry's answer (which lamps it knows) is an input.
 */
import { describe, expect, it } from 'vitest';
import { parseLampStatesJob, type LampStatesJob } from '../../src/shared/jobs.js';
import { lampsToLookUp, planLampStates, type LampStatesInput } from '../../src/worker/stages/lamp-states.js';

const KNOWN = 'b827eb000001';
const STRANGER = 'b827eb00000f';

type LampState = LampStatesJob['states'][number];

const lampState = (deviceId: string, messageId: string, extra: Partial<LampState> = {}): LampState => ({
  messageId,
  deviceId,
  receivedAt: '2026-12-03T12:00:00.000Z',
  topic: `devices/${deviceId}/lamp/changed`,
  payload: '{"on":true,"brightness":0.5}',
  ...extra,
});

const job = (states: LampState[], waits?: number): LampStatesJob => ({
  kind: 'lamp-states',
  states,
  ...(waits === undefined ? {} : { waits }),
});

const input = (data: LampStatesJob, known: ReadonlySet<string> | undefined, extra: Partial<LampStatesInput> = {}): LampStatesInput => ({
  jobId: 'job-1',
  data,
  known,
  unknownDeviceAttempts: 6,
  random: () => 0,
  ...extra,
});

const tokens = (plan: ReturnType<typeof planLampStates>) => plan.events.map((record) => record.event.keen.uniqueness_token);

/** Frozen all the way down: a handler that writes into its input throws on it. */
function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null) {
    for (const child of Object.values(value)) deepFreeze(child);
    Object.freeze(value);
  }
  return value;
}

describe('lamp-states stage: UNKNOWN_DEVICE_STATES=record', () => {
  it('asks the registry nothing and records every state as a devicestate event, in the job order', () => {
    const data = job([lampState(STRANGER, 'm1'), lampState(KNOWN, 'm2', { payload: '{"on":false}' })]);
    expect(lampsToLookUp(data, 'record')).toEqual([]);
    const plan = planLampStates(input(data, undefined));
    expect(plan.events).toEqual([
      {
        collection: 'devicestate',
        event: {
          device_id: STRANGER,
          state: { on: true, brightness: 0.5 },
          keen: {
            timestamp: '2026-12-03T12:00:00.000Z',
            uniqueness_token: 'm1-devicestate',
            addons: [{ name: 'keen:date_time_parser', input: { date_time: 'keen.timestamp' }, output: 'timestamp.info' }],
          },
        },
      },
      {
        collection: 'devicestate',
        event: expect.objectContaining({ device_id: KNOWN, state: { on: false } }),
      },
    ]);
    expect(plan.wait).toBeUndefined();
    expect(plan.rejections).toEqual([]);
    expect(plan.duplicates).toBe(0);
  });

  it('renames property names Keen refuses, and keeps a lamp from replacing device_id or keen', () => {
    const data = job([lampState(KNOWN, 'm1', { payload: JSON.stringify({ 'a.b': 1, $c: 2, device_id: 'forged', keen: 'forged' }) })]);
    const [record] = planLampStates(input(data, undefined)).events;
    expect(record!.event.device_id).toBe(KNOWN);
    expect(record!.event.keen.uniqueness_token).toBe('m1-devicestate');
    expect(record!.event.state).toEqual({ a_b: 1, _c: 2, device_id: 'forged', keen: 'forged' });
  });

  it('handles a message repeated in its job once', () => {
    const data = job([lampState(KNOWN, 'm1'), lampState(KNOWN, 'm2'), lampState(KNOWN, 'm1')]);
    const plan = planLampStates(input(data, undefined));
    expect(tokens(plan)).toEqual(['m1-devicestate', 'm2-devicestate']);
    expect(plan.duplicates).toBe(1);
  });
});

describe('lamp-states stage: UNKNOWN_DEVICE_STATES=reject', () => {
  it('asks the registry about each lamp of the job once', () => {
    const data = job([lampState(KNOWN, 'm1'), lampState(STRANGER, 'm2'), lampState(KNOWN, 'm3')]);
    expect(lampsToLookUp(data, 'reject')).toEqual([KNOWN, STRANGER]);
  });

  it('records the states of known lamps; those of unknown lamps wait apart, in a job named after this one, with the backoff', () => {
    const strangers = [lampState(STRANGER, 'm2'), lampState(STRANGER, 'm4')];
    const data = job([lampState(KNOWN, 'm1'), strangers[0]!, lampState(KNOWN, 'm3'), strangers[1]!]);
    const plan = planLampStates(input(data, new Set([KNOWN])));
    expect(tokens(plan)).toEqual(['m1-devicestate', 'm3-devicestate']);
    // The first wait: 500 ms, jittered between half and all of it.
    expect(plan.wait).toEqual({ jobId: 'job-1-w', data: { kind: 'lamp-states', states: strangers, waits: 1 }, delayMs: 250 });
    expect(planLampStates(input(data, new Set([KNOWN]), { random: () => 1 })).wait!.delayMs).toBe(500);
    expect(plan.rejections).toEqual([]);
    // The waiting job is one the stage takes.
    expect(parseLampStatesJob(plan.wait!.data).ok).toBe(true);
  });

  it('waits longer each time, and rejects the states once their lamp is still unknown after the last wait', () => {
    const data = (waits: number) => job([lampState(STRANGER, 'm1')], waits);
    const third = planLampStates(input(data(2), new Set()));
    expect(third.wait).toMatchObject({ data: { waits: 3 }, delayMs: 1000 });
    expect(third.wait!.jobId).toBe('job-1-w');

    const last = planLampStates(input(data(5), new Set()));
    expect(last.wait).toBeUndefined();
    expect(last.events).toEqual([]);
    expect(last.rejections).toEqual([
      {
        jobId: 'm1-rejected',
        messageId: 'm1',
        deviceId: STRANGER,
        detail: 'lamp state from a device that never connected its bridge',
        record: {
          topic: `devices/${STRANGER}/lamp/changed`,
          reason: 'unknown_device',
          detail: 'lamp state from a device that never connected its bridge',
          deviceId: STRANGER,
          payloadBytes: 28,
          payloadHead: Buffer.from('{"on":true,"brightness":0.5}').toString('base64'),
          receivedAt: '2026-12-03T12:00:00.000Z',
        },
      },
    ]);
  });

  it('rejects at once when a state may be looked for only once', () => {
    const plan = planLampStates(input(job([lampState(STRANGER, 'm1')]), new Set(), { unknownDeviceAttempts: 1 }));
    expect(plan.wait).toBeUndefined();
    expect(plan.rejections.map((rejection) => rejection.jobId)).toEqual(['m1-rejected']);
  });

  it('rejects each state whose payload is no lamp state with its reason, as sent, in either mode, and its neighbours go on', () => {
    const notJson = lampState(KNOWN, 'm1', { payload: '{"on":tru' });
    const array = lampState(KNOWN, 'm2', { payload: '[1,2]' });
    const good = lampState(KNOWN, 'm3', { payload: '\ufeff{"on":false}' });
    const wrongType = lampState(KNOWN, 'm4', { payload: '{"brightness":"high"}' });
    const deep = lampState(KNOWN, 'm5', { payload: `{"a":${'['.repeat(20)}${']'.repeat(20)}}` });
    const nul = lampState(KNOWN, 'm6', { payload: '{"client":"\\u0000"}' });
    for (const known of [undefined, new Set([KNOWN])]) {
      const plan = planLampStates(input(job([notJson, array, good, wrongType, deep, nul]), known));
      // A byte order mark is skipped.
      expect(plan.events.map((record) => [record.event.keen.uniqueness_token, record.event.state])).toEqual([
        ['m3-devicestate', { on: false }],
      ]);
      expect(plan.rejections.map((rejection) => [rejection.jobId, rejection.record.reason])).toEqual([
        ['m1-rejected', 'invalid_json'],
        ['m2-rejected', 'not_an_object'],
        ['m4-rejected', 'invalid_lamp_state'],
        ['m5-rejected', 'too_deeply_nested'],
        ['m6-rejected', 'unstorable_text'],
      ]);
      expect(plan.rejections[0]!.record).toEqual({
        topic: notJson.topic,
        reason: 'invalid_json',
        detail: expect.stringMatching(/^payload is not JSON: /),
        deviceId: KNOWN,
        payloadBytes: 9,
        payloadHead: Buffer.from('{"on":tru').toString('base64'),
        receivedAt: notJson.receivedAt,
      });
      expect(plan.rejections[2]!.record.detail).toMatch(/^brightness: /);
    }
  });

  it('rejects a bad payload of an unknown lamp at once: it does not wait for its lamp', () => {
    const bad = lampState(STRANGER, 'm1', { payload: 'not json' });
    const fine = lampState(STRANGER, 'm2');
    const plan = planLampStates(input(job([bad, fine]), new Set()));
    expect(plan.rejections.map((rejection) => [rejection.jobId, rejection.record.reason])).toEqual([['m1-rejected', 'invalid_json']]);
    expect(plan.wait?.data.states.map((state) => state.messageId)).toEqual(['m2']);
  });

  it('keeps a refused payload exactly, multi-byte text included, and only its first 512 bytes', () => {
    const payload = `{"client":"${'é'.repeat(400)}"}`;
    const [rejection] = planLampStates(input(job([lampState(STRANGER, 'm1', { payload })], 5), new Set())).rejections;
    expect(rejection!.record.payloadBytes).toBe(Buffer.byteLength(payload));
    expect(Buffer.from(rejection!.record.payloadHead!, 'base64')).toEqual(Buffer.from(payload).subarray(0, 512));
  });

  it('with every lamp known, nothing waits and nothing is rejected; a repeated unknown state is rejected once', () => {
    const known = planLampStates(input(job([lampState(KNOWN, 'm1')], 5), new Set([KNOWN])));
    expect([known.wait, known.rejections]).toEqual([undefined, []]);
    const repeated = planLampStates(input(job([lampState(STRANGER, 'm1'), lampState(STRANGER, 'm1')], 5), new Set()));
    expect(repeated.rejections.map((rejection) => rejection.jobId)).toEqual(['m1-rejected']);
    expect(repeated.duplicates).toBe(1);
  });
});

describe('lamp-states stage: any job its parser accepts', () => {
  // Jobs added from the dashboard, as Redis holds them: odd but well-typed values everywhere the parser looks.
  const odd: string[] = [
    JSON.stringify({
      kind: 'lamp-states',
      states: [{ deviceId: 'not-a-mac', receivedAt: '2026', messageId: 'x'.repeat(47), topic: '', payload: '{}' }],
      waits: 1000,
    }),
    JSON.stringify({
      kind: 'lamp-states',
      states: [
        {
          deviceId: '💡',
          receivedAt: 'Thu, 03 Dec 2026 12:00:00 GMT',
          messageId: 'm',
          topic: '',
          payload: `{"${'.'.repeat(300)}":[{"$x":null}],"__proto__":{"polluted":true},"":{"":""}}`,
        },
        { deviceId: '💡', receivedAt: '2026', messageId: 'n', topic: '/', payload: '\u0000' },
        { deviceId: '💡', receivedAt: '2026', messageId: 'o', topic: '/', payload: 'null' },
      ],
    }),
  ];

  it('never throws, in either mode, and is deterministic without touching its input', () => {
    for (const data of odd) {
      const parsed = parseLampStatesJob(JSON.parse(data));
      expect(parsed.ok).toBe(true);
      if (!parsed.ok) continue;
      const frozen = deepFreeze(parsed.data);
      for (const known of [undefined, new Set<string>(), new Set(frozen.states.map((state) => state.deviceId))]) {
        for (const unknownDeviceAttempts of [0, 1, 6, Number.MAX_SAFE_INTEGER]) {
          const run = () => planLampStates(input(frozen, known, { unknownDeviceAttempts }));
          expect(run).not.toThrow();
          expect(run()).toEqual(run());
          const plan = run();
          // Every state goes somewhere: an event, the waiting job, or a rejection.
          expect(plan.events.length + (plan.wait?.data.states.length ?? 0) + plan.rejections.length).toBe(frozen.states.length);
        }
      }
    }
  });

  it('the parser refuses what would make a handler throw: a message id too long for a uniqueness token, a payload that is no text', () => {
    const state = lampState(KNOWN, 'x'.repeat(48));
    expect(parseLampStatesJob(job([state]))).toEqual({ ok: false, reason: 'states[0].messageId: longer than 47 characters' });
    expect(parseLampStatesJob(job([{ ...state, messageId: 'm1', payload: 7 as unknown as string }]))).toEqual({
      ok: false,
      reason: 'states[0].payload: not a string',
    });
    expect(parseLampStatesJob(job([{ ...state, messageId: 'm1', topic: null as unknown as string }]))).toEqual({
      ok: false,
      reason: 'states[0].topic: not a string',
    });
  });
});
