/**
 * The lamp-states stage (the lamp-states queue), as a pure handler: given a job's lamp states and,
 * with UNKNOWN_DEVICE_STATES=reject, which of their lamps the registry knows, what to do with
 * them: the `devicestate` events to send, the states that wait for their lamp's first bridge
 * connect, the `unknown_device` rejections. No I/O, deterministic, never throws on data that
 * parseLampStatesJob accepted. lamp-states-worker.ts asks the registry and applies the plan.
 */
import type { Config } from '../../shared/config.js';
import { deviceStateEvent, uniquenessToken } from '../../shared/events.js';
import { jitteredBackoffDelay } from '../../shared/backoff.js';
import type { KeenEventRecord, LampStatesJob } from '../../shared/jobs.js';
import { unknownDeviceRejection, type Rejection } from './rejections.js';

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
  const states = input.data.states.filter((state) => !seen.has(state.messageId) && seen.add(state.messageId));
  const recorded = known ? states.filter((state) => known.has(state.deviceId)) : states;
  const unknown = known ? states.filter((state) => !known.has(state.deviceId)) : [];
  const plan: LampStatesPlan = {
    events: recorded.map((state) => ({
      collection: 'devicestate',
      event: deviceStateEvent(state.deviceId, state.state, state.receivedAt, uniquenessToken(state.messageId, 'devicestate')),
    })),
    rejections: [],
    duplicates: input.data.states.length - states.length,
  };
  if (unknown.length === 0) return plan;
  const waits = (input.data.waits ?? 0) + 1;
  if (waits < input.unknownDeviceAttempts) {
    plan.wait = {
      jobId: `${input.jobId}-w`,
      data: { kind: 'lamp-states', states: unknown, waits },
      delayMs: jitteredBackoffDelay(waits, UNKNOWN_DEVICE_WAIT_BASE_MS, input.random),
    };
  } else {
    plan.rejections = unknown.map((state) =>
      unknownDeviceRejection({
        messageId: state.messageId,
        deviceId: state.deviceId,
        receivedAt: state.receivedAt,
        detail: 'lamp state from a device that never connected its bridge',
        topic: state.topic,
        usualTopic: `/devices/${state.deviceId}/lamp/changed`,
        payload: state.payload === undefined ? undefined : Buffer.from(state.payload, 'utf8'),
      }),
    );
  }
  return plan;
}
