/**
 * The bridge-states stage's pure handlers (src/worker/stages/bridge-states.ts), step by step:
 * the job by lamp and its activations, a connect given the registry's activation, a state given
 * the registry's outcome, and a failed attempt's retry data. The registry's answers are inputs,
 * so no PostgreSQL is needed (the worker's integration tests run them against the real one).
 */
import { describe, expect, it } from 'vitest';
import { parseBridgeStatesJob, type BridgeStatesJob, type KeenEventRecord } from '../../src/shared/jobs.js';
import type { Activation, BridgeStateOutcome } from '../../src/worker/registry/registry.js';
import {
  planBridgeStates,
  planConnect,
  planOutcome,
  retryData,
  type BridgeState,
  type ConnectPlan,
  type OutcomePlan,
} from '../../src/worker/stages/bridge-states.js';

const A = 'b827eb00000a';
const B = 'b827eb00000b';
const C = 'b827eb00000c';
const USER = 'parked_device_user';
const at = (ms: number) => new Date(Date.parse('2026-12-03T12:00:00.000Z') + ms).toISOString();

const bridge = (deviceId: string, connected: boolean, messageId: string, extra: Partial<BridgeState> = {}): BridgeState => ({
  kind: 'bridge-state',
  deviceId,
  connected,
  retained: false,
  receivedAt: at(0),
  messageId,
  topic: `$SYS/broker/connection/${deviceId}_broker/state`,
  ...extra,
});
const job = (states: BridgeState[], events?: KeenEventRecord[]): BridgeStatesJob => ({
  kind: 'bridge-states',
  states,
  ...(events ? { events } : {}),
});

const DATE_TIME_PARSER = { name: 'keen:date_time_parser', input: { date_time: 'keen.timestamp' }, output: 'timestamp.info' } as const;
const NEW_LAMP: Activation = { created: true, insertedNow: true, associationCode: 'c0de' };

describe('bridge-states stage: the job by lamp', () => {
  it("keeps each lamp's states in arrival order, and activates each lamp that opens with a connect, together", () => {
    const states = [
      bridge(A, true, 'm1', { receivedAt: at(0) }),
      bridge(B, false, 'm2', { receivedAt: at(1) }),
      bridge(A, false, 'm3', { receivedAt: at(2) }),
      bridge(C, true, 'm4', { receivedAt: at(3), retained: true }),
      bridge(B, true, 'm5', { receivedAt: at(4) }),
      bridge(A, true, 'm6', { receivedAt: at(5) }),
    ];
    const plan = planBridgeStates(job(states));
    expect(plan.lamps.map((lamp) => lamp.map((state) => state.messageId))).toEqual([['m1', 'm3', 'm6'], ['m2', 'm5'], ['m4']]);
    // B opens with a disconnect: its later connect is activated on its own, in its turn.
    expect(plan.activations).toEqual([
      { deviceId: A, messageId: 'm1', connectedAt: new Date(at(0)) },
      { deviceId: C, messageId: 'm4', connectedAt: new Date(at(3)) },
    ]);
    expect(plan.duplicates).toBe(0);
  });

  it('handles a message repeated in its job once (one activation, one place in its lamp)', () => {
    const first = bridge(A, true, 'm1');
    const plan = planBridgeStates(job([first, bridge(A, false, 'm2'), { ...first }, bridge(B, true, 'm1')]));
    expect(plan.lamps.map((lamp) => lamp.map((state) => state.messageId))).toEqual([['m1', 'm2']]);
    expect(plan.activations.map((request) => request.messageId)).toEqual(['m1']);
    expect(plan.duplicates).toBe(2);
  });

  it('a retry left with no states has no lamps and nothing to activate', () => {
    expect(planBridgeStates(job([]))).toEqual({ lamps: [], activations: [], duplicates: 0 });
  });
});

describe('bridge-states stage: a connect, given the activation', () => {
  it('a lamp this message created: its activations event, and its code published as the registry made it', () => {
    const state = bridge(A, true, 'm1', { receivedAt: at(7) });
    expect(planConnect(state, NEW_LAMP, USER)).toEqual<ConnectPlan>({
      created: true,
      outcome: 'recorded',
      events: [
        {
          collection: 'activations',
          event: { device_id: A, user: USER, keen: { timestamp: at(7), uniqueness_token: 'm1-activations', addons: [DATE_TIME_PARSER] } },
        },
      ],
      association: { kind: 'publish', message: { deviceId: A, broker: undefined, association: { associated: false, code: 'c0de' } } },
    });
  });

  it('the same message handled again (a retry, a resend): the same event, and the message refreshed from the registry, as a must', () => {
    const again: Activation = { created: true, insertedNow: false, associationCode: 'c0de' };
    for (const retained of [false, true]) {
      const plan = planConnect(bridge(A, true, 'm1', { retained }), again, USER);
      expect(plan.created).toBe(true);
      expect(plan.outcome).toBe('recorded');
      expect(plan.events.map((record) => record.event.keen.uniqueness_token)).toEqual(['m1-activations']);
      expect(plan.association).toEqual({ kind: 'refresh', target: { deviceId: A }, required: true });
    }
  });

  it("a known lamp's new connect: no event, its message refreshed if the broker can take it", () => {
    const known: Activation = { created: false, insertedNow: false, associationCode: 'c0de' };
    expect(planConnect(bridge(A, true, 'm2'), known, USER)).toEqual<ConnectPlan>({
      created: false,
      outcome: undefined,
      events: [],
      association: { kind: 'refresh', target: { deviceId: A, broker: undefined }, required: false },
    });
  });

  it("the broker's replay of a known lamp's connect when we subscribe: nothing at all", () => {
    const known: Activation = { created: false, insertedNow: false, associationCode: 'c0de' };
    expect(planConnect(bridge(A, true, 'm3', { retained: true }), known, USER)).toEqual<ConnectPlan>({
      created: false,
      outcome: undefined,
      events: [],
      association: undefined,
    });
  });
});

describe('bridge-states stage: a state, given the outcome', () => {
  const monitoring = (deviceId: string, state: string, token: string, timestamp: string) => ({
    collection: 'devicemonitoring',
    event: { device_id: deviceId, service: 'mqttbridge', state, keen: { timestamp, uniqueness_token: token, addons: [DATE_TIME_PARSER] } },
  });

  it('a recorded change is a devicemonitoring event, connect or disconnect', () => {
    expect(planOutcome(bridge(A, true, 'm1', { receivedAt: at(3) }), 'recorded')).toEqual<OutcomePlan>({
      events: [monitoring(A, 'connected', 'm1-devicemonitoring', at(3))] as KeenEventRecord[],
      replay: false,
      rejection: undefined,
    });
    expect(planOutcome(bridge(A, false, 'm2', { receivedAt: at(4) }), 'recorded').events).toEqual([
      monitoring(A, 'disconnected', 'm2-devicemonitoring', at(4)),
    ]);
  });

  it('a replayed state the registry already holds is dropped: no event', () => {
    for (const retained of [true, false]) {
      expect(planOutcome(bridge(A, true, 'm1', { retained }), 'unchanged')).toEqual<OutcomePlan>({
        events: [],
        replay: true,
        rejection: undefined,
      });
    }
  });

  it('a disconnect of a lamp the registry does not know is rejected, recorded as the broker sent it', () => {
    const topic = `$SYS/broker/connection/${C}_broker/STATE`;
    expect(planOutcome(bridge(C, false, 'm9', { topic, receivedAt: at(9) }), 'unknown_device')).toEqual<OutcomePlan>({
      events: [],
      replay: false,
      rejection: {
        jobId: 'm9-rejected',
        messageId: 'm9',
        deviceId: C,
        detail: 'bridge disconnect from a device that never connected',
        record: {
          topic,
          reason: 'unknown_device',
          detail: 'bridge disconnect from a device that never connected',
          deviceId: C,
          payloadBytes: 1,
          payloadHead: Buffer.from('0').toString('base64'),
          receivedAt: at(9),
        },
      },
    });
  });

  it('a connect whose lamp was deleted between its activation and its state is rejected as what it is, payload 1', () => {
    const { rejection } = planOutcome(bridge(A, true, 'm1'), 'unknown_device');
    expect(rejection!.detail).toBe('bridge connect of a device the registry lost');
    expect(Buffer.from(rejection!.record.payloadHead!, 'base64').toString()).toBe('1');
  });
});

describe('bridge-states stage: a failed attempt', () => {
  it('the retry holds only the states not handled, in order, and the events made so far', () => {
    const states = [bridge(A, true, 'm1'), bridge(B, true, 'm2'), bridge(A, false, 'm3'), bridge(B, false, 'm4')];
    const events = planOutcome(states[0]!, 'recorded').events;
    const retry = retryData(job(states), new Set(['m1', 'm2']), events);
    expect(retry).toEqual({ kind: 'bridge-states', states: [states[2], states[3]], events });
    expect(parseBridgeStatesJob(retry)).toEqual({ ok: true, data: retry });
    // Every state handled: the retry only sends the events.
    expect(retryData(job(states), new Set(['m1', 'm2', 'm3', 'm4']), events).states).toEqual([]);
  });
});

describe('bridge-states stage: any job its parser accepts', () => {
  it('never throws, whatever the registry answers, and is deterministic', () => {
    const data = JSON.parse(
      JSON.stringify({
        kind: 'bridge-states',
        states: [
          {
            kind: 'bridge-state',
            deviceId: 'x',
            connected: true,
            retained: true,
            receivedAt: '2026',
            messageId: 'y'.repeat(47),
            topic: '/',
          },
          {
            kind: 'bridge-state',
            deviceId: '💡',
            connected: false,
            retained: false,
            receivedAt: 'Thu, 03 Dec 2026 12:00:00 GMT',
            messageId: 'z',
            topic: '',
          },
        ],
        events: [],
      }),
    );
    const parsed = parseBridgeStatesJob(data);
    expect(parsed.ok).toBe(true);
    if (!parsed.ok) return;
    const plan = planBridgeStates(parsed.data);
    expect(planBridgeStates(parsed.data)).toEqual(plan);
    const activations: Activation[] = [
      NEW_LAMP,
      { created: true, insertedNow: false, associationCode: '' },
      { created: false, insertedNow: false, associationCode: 'c' },
    ];
    const outcomes: BridgeStateOutcome[] = ['recorded', 'unchanged', 'unknown_device'];
    for (const state of plan.lamps.flat()) {
      for (const activation of activations) expect(planConnect(state, activation, USER)).toEqual(planConnect(state, activation, USER));
      for (const outcome of outcomes) expect(planOutcome(state, outcome)).toEqual(planOutcome(state, outcome));
    }
    expect(parseBridgeStatesJob(job([bridge(A, true, 'y'.repeat(48))]))).toEqual({
      ok: false,
      reason: 'states[0].messageId: longer than 47 characters',
    });
  });
});
