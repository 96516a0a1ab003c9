/**
 * The bridge-states stage (the bridge-state partitions), as pure handlers. A bridge state needs
 * the registry twice, so it is planned in steps, with bridge-states-worker.ts asking the
 * registry in between:
 *
 *   1. planBridgeStates: the job's states by lamp, each lamp's in arrival order, and the
 *      connects the registry activates together (each lamp's first state, when a connect);
 *   2. per connect, given the registry's activation, planConnect: the `activations` event of a
 *      lamp this message created, and the association message to send;
 *   3. per state, given the registry's bridge-state outcome, planOutcome: the `devicemonitoring`
 *      event of a change, a replay dropped, or the `unknown_device` rejection of a disconnect.
 *
 * No I/O, deterministic, never throws on data that parseBridgeStatesJob accepted.
 */
import { activationEvent, deviceMonitoringEvent, uniquenessToken } from '../../shared/events.js';
import type { BridgeStatesJob, KeenEventRecord } from '../../shared/jobs.js';
import type { Activation, ActivationRequest, Association, BridgeStateOutcome } from '../registry/registry.js';
import { stateRejection, type Rejection } from './rejections.js';

export type BridgeState = BridgeStatesJob['states'][number];

/** The lamp an association message goes to. */
export interface AssociationTarget {
  deviceId: string;
  /** The broker the lamp is on (MQTT_BROKERS); undefined: the default broker. */
  broker: string | undefined;
}

/** One retained association message: the publisher's one effect. */
export interface AssociationMessage extends AssociationTarget {
  association: Association;
}

export type AssociationEffect =
  /** The lamp was inserted by this very call: nobody knows its code yet, so nobody has claimed it. */
  | { kind: 'publish'; message: AssociationMessage }
  /**
   * The lamp's message is made to say what the registry says now (a claim made on the site, a
   * broker that lost its retained messages), read under the lamp's row lock. `required`: the
   * lamp was created by this message and must get its code, so a failed publish fails the
   * attempt; otherwise it is only a refresh, and the bridge's next connect makes it again.
   */
  | { kind: 'refresh'; target: AssociationTarget; required: boolean };

export interface BridgeStatesPlan {
  /** Each lamp's states, in arrival order; lamps in the order of their first state. */
  lamps: BridgeState[][];
  /** Activated together, in one statement: each lamp's first state, when it is a connect. */
  activations: ActivationRequest[];
  /** Later copies of a message id already in the job: the same message, handled once. */
  duplicates: number;
}

export interface ConnectPlan {
  /** This message created the lamp. */
  created: boolean;
  /** The state's outcome when the activation decides it (a lamp created connected by this message); otherwise the registry records it. */
  outcome: 'recorded' | undefined;
  /** The `activations` event of a lamp this message created. */
  events: KeenEventRecord[];
  association: AssociationEffect | undefined;
}

export interface OutcomePlan {
  /** The `devicemonitoring` event of a recorded change. */
  events: KeenEventRecord[];
  /** A replay of the state the registry holds (the broker's retained copy, a replica's): dropped. */
  replay: boolean;
  /** A disconnect of a lamp the registry does not know. */
  rejection: Rejection | undefined;
}

export function activationRequest(state: BridgeState): ActivationRequest {
  return { deviceId: state.deviceId, messageId: state.messageId, connectedAt: new Date(state.receivedAt) };
}

export function associationTarget(state: BridgeState): AssociationTarget {
  return { deviceId: state.deviceId, broker: state.broker };
}

export function planBridgeStates(data: BridgeStatesJob): BridgeStatesPlan {
  const lamps = new Map<string, BridgeState[]>();
  const seen = new Set<string>();
  for (const state of data.states) {
    if (seen.has(state.messageId)) continue;
    seen.add(state.messageId);
    const lamp = lamps.get(state.deviceId);
    if (lamp) lamp.push(state);
    else lamps.set(state.deviceId, [state]);
  }
  const byLamp = [...lamps.values()];
  return {
    lamps: byLamp,
    activations: byLamp.flatMap((states) => (states[0]!.connected ? [activationRequest(states[0]!)] : [])),
    duplicates: data.states.length - seen.size,
  };
}

/**
 * A connect, once the registry activated its lamp. The broker's replay of a connect when we
 * subscribe is no new connect: it refreshes nothing (that would cost a locked read per lamp of
 * the fleet at every restart), unless the lamp was created by it.
 */
export function planConnect(state: BridgeState, activation: Activation, defaultUser: string): ConnectPlan {
  const target = associationTarget(state);
  let association: AssociationEffect | undefined;
  if (activation.insertedNow) {
    association = { kind: 'publish', message: { ...target, association: { associated: false, code: activation.associationCode } } };
  } else if (activation.created || !state.retained) {
    // A lamp this message created, handled again, may never have got its code: refreshed too.
    association = { kind: 'refresh', target, required: activation.created };
  }
  return {
    created: activation.created,
    outcome: activation.created ? 'recorded' : undefined,
    events: activation.created
      ? [
          {
            collection: 'activations',
            event: activationEvent(state.deviceId, defaultUser, state.receivedAt, uniquenessToken(state.messageId, 'activations')),
          },
        ]
      : [],
    association,
  };
}

/** A state, once the registry recorded it (a lamp created connected by its message: `recorded`). */
export function planOutcome(state: BridgeState, outcome: BridgeStateOutcome): OutcomePlan {
  if (outcome === 'unknown_device') {
    // Its partition runs in order, so no connect of this lamp is still on its way.
    const rejection = stateRejection('unknown_device', {
      messageId: state.messageId,
      deviceId: state.deviceId,
      receivedAt: state.receivedAt,
      detail: state.connected ? 'bridge connect of a device the registry lost' : 'bridge disconnect from a device that never connected',
      topic: state.topic,
      // Parsing let through only the one byte `1` or `0`: this is the payload as sent.
      payload: Buffer.from(state.connected ? '1' : '0'),
    });
    return { events: [], replay: false, rejection };
  }
  if (outcome === 'unchanged') return { events: [], replay: true, rejection: undefined };
  const event = deviceMonitoringEvent(
    state.deviceId,
    state.connected,
    state.receivedAt,
    uniquenessToken(state.messageId, 'devicemonitoring'),
  );
  return { events: [{ collection: 'devicemonitoring', event }], replay: false, rejection: undefined };
}

/**
 * The job's data for its retry after a failed attempt: the states this attempt handled are
 * dropped and their events kept, so the retry goes on where it stopped (a state handled again
 * would record nothing again, so its events would not be made again).
 */
export function retryData(data: BridgeStatesJob, handled: ReadonlySet<string>, events: KeenEventRecord[]): BridgeStatesJob {
  return { kind: 'bridge-states', states: data.states.filter((state) => !handled.has(state.messageId)), events };
}
