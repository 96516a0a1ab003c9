/**
 * The lamp-states stage (the lamp-states queue), as a pure handler: given a job's lamp states and,
 * with UNKNOWN_DEVICE_STATES=reject, which of their lamps the registry knows, what to do with
 * them: the `devicestate` events to send, the states that wait for their lamp's first bridge
 * connect, the rejections (a payload that is no lamp state, `unknown_device`). Each payload's JSON
 * is read here (parseLampState), once per attempt: the subscriber stores it unread. No I/O,
 * deterministic, never throws on data that parseLampStatesJob accepted. lamp-states-worker.ts
 * asks the registry and applies the plan.
 */
import type { Config } from '../../shared/config.js';
import { deviceStateEvent, uniquenessToken } from '../../shared/events.js';
import { jitteredBackoffDelay } from '../../shared/backoff.js';
import type { KeenEventRecord, LampStatesJob, QueuedLampState } from '../../shared/jobs.js';
import { parseLampState } from '../../shared/message.js';
import { stateRejection, type RefusedState, type Rejection } from './rejections.js';

export type UnknownDeviceStates = Config<'worker'>['UNKNOWN_DEVICE_STATES'];

/** The first wait of a state of a lamp we do not know; each next one doubles (the one backoff formula). */
export const UNKNOWN_DEVICE_WAIT_BASE_MS = 500;
/** With `reject`, how often such a state is looked for before it is rejected (the default). */
export const DEFAULT_UNKNOWN_DEVICE_ATTEMPTS = 6;

export interface LampStatesInput {
  /** The lamp-states job's id: the waiting states' job is named after it. */
  jobId: string;
  data: LampStatesJob;
  /**
   * The lamps among the job's (lampsToLookUp) that the registry knows; undefined with
   * UNKNOWN_DEVICE_STATES=record, where every state is recorded as it is.
   */
  known: ReadonlySet<string> | undefined;
  /** How often a state of an unknown lamp is looked for before it is rejected. */
  unknownDeviceAttempts: number;
  /** The jitter of the waiting job's delay (Math.random in the worker). */
  random: () => number;
}

export interface LampStatesPlan {
  /** One `devicestate` event per state recorded, in the job's order. */
  events: KeenEventRecord[];
  /**
   * The states of unknown lamps, in a lamp-states job of their own that waits for their lamp's
   * connect (which can be overtaken: it travels in another queue), so the others need not.
   */
  wait?: { jobId: string; data: LampStatesJob; delayMs: number };
  /** States of lamps still unknown after their waits. */
  rejections: Rejection[];
  /** Later copies of a message id already in the job: the same message, handled once. */
  duplicates: number;
}

/** The lamps the registry is asked about before planning: none with `record`. */
export function lampsToLookUp(data: LampStatesJob, mode: UnknownDeviceStates): string[] {
  return mode === 'reject' ? [...new Set(data.states.map((state) => state.deviceId))] : [];
}

export function planLampStates(input: LampStatesInput): LampStatesPlan {
  const { known } = input;
  const seen = new Set<string>();
  const plan: LampStatesPlan = { events: [], rejections: [], duplicates: 0 };
  const unknown: QueuedLampState[] = [];
  for (const state of input.data.states) {
    if (seen.has(state.messageId)) {
      plan.duplicates += 1;
      continue;
    }
    seen.add(state.messageId);
    // Read before the registry's answer is used: a payload that is no lamp state is refused at once, known lamp or not.
    const parsed = parseLampState(state.payload);
    if (!parsed.ok) {
      plan.rejections.push(stateRejection(parsed.reason, refusedState(state, parsed.detail)));
    } else if (known && !known.has(state.deviceId)) {
      unknown.push(state);
    } else {
      const token = uniquenessToken(state.messageId, 'devicestate');
      plan.events.push({ collection: 'devicestate', event: deviceStateEvent(state.deviceId, parsed.state, state.receivedAt, token) });
    }
  }
  if (unknown.length === 0) return plan;
  const waits = (input.data.waits ?? 0) + 1;
  if (waits < input.unknownDeviceAttempts) {
    plan.wait = {
      jobId: `${input.jobId}-w`,
      data: { kind: 'lamp-states', states: unknown, waits },
      delayMs: jitteredBackoffDelay(waits, UNKNOWN_DEVICE_WAIT_BASE_MS, input.random),
    };
  } else {
    for (const state of unknown) {
      plan.rejections.push(
        stateRejection('unknown_device', refusedState(state, 'lamp state from a device that never connected its bridge')),
      );
    }
  }
  return plan;
}

function refusedState(state: QueuedLampState, detail: string): RefusedState {
  const { messageId, deviceId, receivedAt, topic } = state;
  return {
    messageId,
    deviceId,
    receivedAt,
    detail,
    topic,
    payload: Buffer.from(state.payload, 'utf8'),
  };
}
