import { describe, expect, it } from 'vitest';
import { parseBridgeStatesJob, parseKeenDeliveryJob, parseLampStatesJob } from '../../src/shared/jobs.js';

const receivedAt = '2026-12-03T12:00:00.000Z';
const bridgeState = {
  kind: 'bridge-state',
  deviceId: 'b827eb000001',
  connected: true,
  retained: false,
  receivedAt,
  messageId: 'm1',
  topic: '$SYS/broker/connection/b827eb000001_broker/state',
};
const lampState = {
  messageId: 'm2',
  deviceId: 'b827eb000001',
  receivedAt,
  topic: 'devices/b827eb000001/lamp/changed',
  payload: '{"on":true}',
};
const keenRecord = {
  collection: 'devicestate',
  event: { device_id: 'b827eb000001', keen: { timestamp: receivedAt, uniqueness_token: 'm2-devicestate' } },
};

/** Whatever comes in, the parsers answer; none of these may throw. */
const hostile: unknown[] = [
  undefined,
  null,
  0,
  'bridge-states',
  [],
  [bridgeState],
  { kind: 'bridge-states', states: null },
  Object.create(null),
];

describe('parseBridgeStatesJob', () => {
  it('takes a job as the subscriber writes it, and one a retry left with no states but its events', () => {
    const job = { kind: 'bridge-states', states: [bridgeState, { ...bridgeState, connected: false, messageId: 'm3' }] };
    expect(parseBridgeStatesJob(job)).toEqual({ ok: true, data: job });
    const leftOver = { kind: 'bridge-states', states: [], events: [keenRecord] };
    expect(parseBridgeStatesJob(leftOver)).toEqual({ ok: true, data: leftOver });
  });

  it('names the first thing wrong', () => {
    // A one-state job as queued before bridge states were grouped.
    expect(parseBridgeStatesJob({ ...bridgeState })).toEqual({ ok: false, reason: "kind: not 'bridge-states'" });
    expect(parseBridgeStatesJob({ kind: 'bridge-states' })).toEqual({ ok: false, reason: 'states: not an array' });
    expect(parseBridgeStatesJob({ kind: 'bridge-states', states: [bridgeState, { ...bridgeState, connected: 1 }] })).toEqual({
      ok: false,
      reason: 'states[1].connected: not a boolean',
    });
    expect(parseBridgeStatesJob({ kind: 'bridge-states', states: [{ ...bridgeState, messageId: '' }] })).toEqual({
      ok: false,
      reason: 'states[0].messageId: not a non-empty string',
    });
    expect(parseBridgeStatesJob({ kind: 'bridge-states', states: [{ ...bridgeState, receivedAt: 'yesterday' }] })).toEqual({
      ok: false,
      reason: 'states[0].receivedAt: not a date',
    });
    expect(
      parseBridgeStatesJob({ kind: 'bridge-states', states: [bridgeState], events: [{ collection: 'devicestate', event: {} }] }),
    ).toEqual({
      ok: false,
      reason: 'events[0].event: keen: not an object',
    });
  });

  it('never throws', () => {
    for (const data of hostile) expect(parseBridgeStatesJob(data).ok).toBe(false);
  });
});

describe('parseLampStatesJob', () => {
  it('takes a job as the subscriber writes it, and one waiting for its lamp', () => {
    const job = { kind: 'lamp-states', states: [lampState] };
    expect(parseLampStatesJob(job)).toEqual({ ok: true, data: job });
    expect(parseLampStatesJob({ ...job, waits: 2 }).ok).toBe(true);
  });

  it('names the first thing wrong', () => {
    expect(parseLampStatesJob({ kind: 'lamp-states', states: [] })).toEqual({ ok: false, reason: 'states: not a non-empty array' });
    expect(parseLampStatesJob({ kind: 'lamp-states', states: [{ ...lampState, payload: { on: true } }] })).toEqual({
      ok: false,
      reason: 'states[0].payload: not a string',
    });
    expect(parseLampStatesJob({ kind: 'lamp-states', states: [lampState], waits: -1 })).toEqual({
      ok: false,
      reason: 'waits: not a count',
    });
    // A lamp state as queued before it travelled as sent only.
    const { topic: _topic, payload: _payload, ...parsedOnly } = lampState;
    expect(parseLampStatesJob({ kind: 'lamp-states', states: [{ ...parsedOnly, kind: 'lamp-state', state: { on: true } }] })).toEqual({
      ok: false,
      reason: 'states[0].topic: not a string',
    });
  });

  it('never throws', () => {
    for (const data of hostile) expect(parseLampStatesJob(data).ok).toBe(false);
  });
});

describe('parseKeenDeliveryJob', () => {
  it('takes a job of events', () => {
    const job = { events: [keenRecord, { ...keenRecord, redrives: { count: 1, lastAt: receivedAt } }] };
    expect(parseKeenDeliveryJob(job)).toEqual({ ok: true, data: job });
  });

  it('names the first thing wrong', () => {
    // One event, as jobs were queued before events were grouped.
    expect(parseKeenDeliveryJob(keenRecord)).toEqual({ ok: false, reason: 'events: not a non-empty array' });
    expect(parseKeenDeliveryJob({ events: [{ ...keenRecord, collection: 'devices' }] })).toEqual({
      ok: false,
      reason: 'events[0].collection: not one of activations, devicemonitoring, devicestate',
    });
    expect(parseKeenDeliveryJob({ events: [{ ...keenRecord, event: { keen: { uniqueness_token: 7 } } }] })).toEqual({
      ok: false,
      reason: 'events[0].event: keen.uniqueness_token: not a non-empty string',
    });
  });

  it('never throws', () => {
    for (const data of [...hostile, { events: [null] }]) expect(parseKeenDeliveryJob(data).ok).toBe(false);
  });
});
