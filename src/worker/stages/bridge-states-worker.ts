/**
 * The bridge-states stage's workers, one per bridge-state partition (ordered stages): the I/O
 * between the steps of bridge-states.ts. They activate the job's lamps, publish association
 * messages, record each bridge state, and apply what the plans say. A job's lamps are handled
 * in parallel, each lamp's states in order. A state that fails fails the attempt, and the job
 * keeps its place at the head of its partition (the stage runner): what the attempt handled is
 * dropped from the job first and its events kept, so the retry goes on where it stopped.
 */
import type { Job, Worker } from 'bullmq';
import { parseBridgeStatesJob, type BridgeStatesJob, type KeenEventRecord } from '../../shared/jobs.js';
import type { Activation, BridgeStateOutcome } from '../registry/registry.js';
import { runStage } from '../stage-runner.js';
import {
  activationRequest,
  planBridgeStates,
  planConnect,
  planOutcome,
  retryData,
  type AssociationEffect,
  type AssociationMessage,
  type BridgeState,
} from './bridge-states.js';
import { ingestEffects, lampsSubject, type IngestWorkerOptions } from './ingest-effects.js';

export function createBridgeStatesWorkers(options: IngestWorkerOptions): Worker<BridgeStatesJob>[] {
  const { registry, publisher, logger, metrics } = options;
  const effects = ingestEffects(options);

  /** The one way an association message leaves: retained, on the lamp's topic. */
  const publish = (message: AssociationMessage) => publisher.publish(message.deviceId, message.association, message.broker);

  const sendAssociation = async (effect: AssociationEffect, messageId: string) => {
    if (effect.kind === 'publish') return publish(effect.message);
    const { target } = effect;
    try {
      const association = await registry.publishAssociation(target.deviceId, (association) => publish({ ...target, association }));
      if (!association)
        logger.info({ message_id: messageId, device_id: target.deviceId }, 'lamp deleted while it connected; no association message sent');
    } catch (err) {
      // A lamp this message created must get its code: its state is retried. A known lamp's
      // message is only refreshed; holding its partition for a broker that is away would delay
      // every lamp behind it, and the bridge's next connect (once the broker is back) refreshes it.
      if (effect.required) throw err;
      logger.warn({ message_id: messageId, device_id: target.deviceId, err }, 'association message not refreshed; the next connect will');
    }
  };

  /** One bridge state through the registry; returns its Keen events. */
  const handleState = async (state: BridgeState, activation: Activation | undefined): Promise<KeenEventRecord[]> => {
    const { deviceId, messageId, connected } = state;
    const events: KeenEventRecord[] = [];
    let decided: BridgeStateOutcome | undefined;
    if (connected) {
      activation ??= (await registry.activate([activationRequest(state)])).get(messageId)!;
      const connect = planConnect(state, activation, options.defaultUser);
      if (connect.created) {
        metrics.devicesCreated.inc();
        logger.info({ message_id: messageId, device_id: deviceId }, 'new device activated');
      }
      events.push(...connect.events);
      if (connect.association) await sendAssociation(connect.association, messageId);
      decided = connect.outcome;
    }
    const outcome = decided ?? (await registry.recordBridgeState(deviceId, connected, new Date(state.receivedAt), messageId));
    const result = planOutcome(state, outcome);
    if (result.rejection) await effects.reject(result.rejection);
    if (result.replay) {
      metrics.bridgeReplaysDropped.inc();
      logger.debug(
        { message_id: messageId, device_id: deviceId, connected, retained: state.retained },
        'bridge state unchanged; not recorded again',
      );
    }
    events.push(...result.events);
    return events;
  };

  const process = async (job: Job<BridgeStatesJob>) => {
    const plan = planBridgeStates(job.data);
    if (plan.duplicates > 0)
      logger.debug({ job_id: job.id, duplicates: plan.duplicates }, 'bridge states repeated in their job; handled once');
    const handled = new Set<string>();
    /** Each lamp's events, in its states' order; a lamp's list is complete up to its first failed state. */
    const eventsByLamp = plan.lamps.map((): KeenEventRecord[] => []);
    const events = () => [...(job.data.events ?? []), ...eventsByLamp.flat()];
    try {
      const activations = plan.activations.length === 0 ? new Map<string, Activation>() : await registry.activate(plan.activations);
      const lamps = plan.lamps.map(async (states, lamp) => {
        for (const state of states) {
          eventsByLamp[lamp]!.push(...(await handleState(state, activations.get(state.messageId))));
          handled.add(state.messageId);
        }
      });
      const failed = (await Promise.allSettled(lamps)).find((r) => r.status === 'rejected');
      if (failed) throw failed.reason;
      return await effects.queueForKeen(job.id!, events());
    } catch (err) {
      if (handled.size > 0) await job.updateData(retryData(job.data, handled, events()));
      throw err;
    }
  };

  return options.queues.bridgeState.map((queue) =>
    runStage({
      connection: options.connection,
      logger,
      metrics,
      queue,
      process,
      parse: parseBridgeStatesJob,
      subject: lampsSubject,
      ordered: true,
    }),
  );
}
