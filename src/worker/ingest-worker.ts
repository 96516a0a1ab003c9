/**
 * Handles the ingest and bridge-state queues: everything that touches the device registry.
 * Lamp-state events go to Keen from here first; what Keen does not take, and every bridge-state
 * event, leaves through the keen-delivery queue, one job per ingest job, so a Keen retry never
 * repeats database work. Retries are the stage runner's (bridge-state partitions run as ordered stages).
 */
import type { ConnectionOptions, Job, Worker } from 'bullmq';
import { groupBy } from '../shared/collections.js';
import type { Config } from '../shared/config.js';
import { activationEvent, deviceMonitoringEvent, deviceStateEvent, uniquenessToken } from '../shared/events.js';
import {
  parseBridgeStatesJob,
  parseLampStatesJob,
  payloadRecord,
  type BridgeStatesJob,
  type KeenEventRecord,
  type LampStatesJob,
  type RejectedMessageJob,
} from '../shared/jobs.js';
import type { Logger } from '../shared/logger.js';
import type { Metrics } from '../shared/metrics.js';
import { type PipelineQueues } from '../shared/queues.js';
import { jitteredBackoffDelay } from '../shared/backoff.js';
import type { AssociationPublisher } from './association-publisher.js';
import type { KeenBatcher } from './keen/batcher.js';
import type { Activation, BridgeStateOutcome, DeviceRegistry } from './registry/registry.js';
import { runStage } from './stage-runner.js';

type BridgeState = BridgeStatesJob['states'][number];

/** The lamp (or lamps) of a job's states, for its log lines. */
function lampsOf(job: { states: Array<{ deviceId: string }> }): Record<string, unknown> {
  const lamps = [...new Set(job.states.map((state) => state.deviceId))];
  return lamps.length === 1 ? { device_id: lamps[0] } : { device_ids: lamps };
}

export interface IngestWorkerOptions {
  connection: ConnectionOptions;
  /** The stage's queues: the workers take their names and prefix. */
  queues: PipelineQueues;
  registry: DeviceRegistry;
  publisher: AssociationPublisher;
  defaultUser: string;
  /** Lamp-state jobs handled at once by this process. */
  concurrency: number;
  logger: Logger;
  metrics: Metrics;
  /**
   * A lamp state from a lamp the registry does not know: `record` (the default, the seed's way)
   * records it as devicestate at once, like any other; `reject` holds it for the connect that
   * may still be on its way (unknownDeviceAttempts), then rejects it as unknown_device.
   */
  unknownDeviceStates?: Config<'worker'>['UNKNOWN_DEVICE_STATES'];
  /**
   * With `reject`, how often a state of a lamp we do not know is looked for before it is
   * rejected: it can overtake its lamp's first bridge connect, which travels in another queue.
   */
  unknownDeviceAttempts?: number;
  /**
   * Where lamp-state events go to Keen first, before their job completes. What it does not
   * take (an outage, a refusal) goes on in a keen-delivery job, with its retries and dead
   * letters. Without it, every event goes through keen-delivery.
   */
  keen?: Pick<KeenBatcher, 'submit'>;
}

/**
 * A state the worker refuses, recorded as the lamp sent it: the topic and payload its job kept.
 * A job queued before they were kept has neither: the topic is then rebuilt from the device id
 * and the payload left out (what we parsed is not what the lamp sent), and the detail says so.
 */
interface RejectedState {
  id: string;
  deviceId: string;
  receivedAt: string;
  detail: string;
  topic: string | undefined;
  /** Rebuilt from the device id, for a job that kept no topic. */
  usualTopic: string;
  /** undefined: not kept (a lamp state of an older job). */
  payload: Uint8Array | undefined;
}

export async function createIngestWorkers(options: IngestWorkerOptions): Promise<Worker[]> {
  const { queues, registry, publisher, logger, metrics } = options;
  const unknownDeviceAttempts = options.unknownDeviceAttempts ?? 6;

  const sendToKeen = (ingestJobId: string, events: KeenEventRecord[]) =>
    // Named after the ingest job: adding it again when that job is retried is a no-op.
    events.length === 0 ? undefined : queues.keen.add(events[0]!.collection, { events }, { jobId: `${ingestJobId}-keen` });

  const reject = async (rejected: RejectedState) => {
    metrics.messagesRejected.inc({ reason: 'unknown_device' });
    logger.warn(
      { message_id: rejected.id, device_id: rejected.deviceId, reason: 'unknown_device' },
      `message rejected: ${rejected.detail}`,
    );
    const unkept = [rejected.topic === undefined ? 'topic rebuilt' : '', rejected.payload === undefined ? 'payload not kept' : ''].filter(
      Boolean,
    );
    const record: RejectedMessageJob = {
      topic: rejected.topic ?? rejected.usualTopic,
      reason: 'unknown_device',
      detail: unkept.length === 0 ? rejected.detail : `${rejected.detail} (${unkept.join(', ')}: queued by an older subscriber)`,
      deviceId: rejected.deviceId,
      ...(rejected.payload ? payloadRecord(rejected.payload) : {}),
      receivedAt: rejected.receivedAt,
    };
    await queues.rejected.add('unknown_device', record, { jobId: `${rejected.id}-rejected` });
  };

  /** The states of lamps the registry knows; the others wait apart for their lamp's connect, or are rejected. */
  const statesOfKnownLamps = async (job: Job<LampStatesJob>) => {
    const { states } = job.data;
    const known = await registry.knownAmong(states.map((s) => s.deviceId));
    const unknown = states.filter((s) => !known.has(s.deviceId));
    const waits = job.data.waits ?? 0;
    if (unknown.length > 0 && waits + 1 < unknownDeviceAttempts) {
      // The states wait in a job of their own, so the others need not.
      await queues.ingest.add(
        'lamp-states',
        { kind: 'lamp-states', states: unknown, waits: waits + 1 },
        { jobId: `${job.id}-w`, delay: jitteredBackoffDelay(waits + 1, 500) },
      );
    } else {
      for (const s of unknown) {
        await reject({
          id: s.messageId,
          deviceId: s.deviceId,
          receivedAt: s.receivedAt,
          detail: 'lamp state from a device that never connected its bridge',
          topic: s.topic,
          usualTopic: `/devices/${s.deviceId}/lamp/changed`,
          payload: s.payload === undefined ? undefined : Buffer.from(s.payload, 'utf8'),
        });
      }
    }
    return states.filter((s) => known.has(s.deviceId));
  };

  const handleLampStates = async (job: Job<LampStatesJob>) => {
    const recorded = options.unknownDeviceStates === 'reject' ? await statesOfKnownLamps(job) : job.data.states;
    const events = recorded.map((s): KeenEventRecord => ({
      collection: 'devicestate',
      event: deviceStateEvent(s.deviceId, s.state, s.receivedAt, uniquenessToken(s.messageId, 'devicestate')),
    }));
    await sendToKeen(job.id!, await undeliveredOf(events));
  };

  /** A job hop less for each group of lamp states: Keen gets them from here when it can. */
  const undeliveredOf = async (events: KeenEventRecord[]): Promise<KeenEventRecord[]> => {
    const { keen } = options;
    if (!keen || events.length === 0) return events;
    const outcomes = await Promise.allSettled(events.map(({ collection, event }) => keen.submit(collection, event)));
    return events.filter((_, i) => outcomes[i]!.status === 'rejected');
  };

  /**
   * A connect (not the broker's replay of one when we subscribe: that is no new connect, and
   * would cost a locked read per lamp of the fleet at every restart) makes the lamp's retained
   * message say what the registry says now: a claim made on the site, a broker that lost its
   * retained messages.
   */
  const refreshAssociation = async ({ deviceId, messageId, broker }: BridgeState, created: boolean) => {
    try {
      const association = await registry.publishAssociation(deviceId, (message) => publisher.publish(deviceId, message, broker));
      if (!association)
        logger.info({ message_id: messageId, device_id: deviceId }, 'lamp deleted while it connected; no association message sent');
    } catch (err) {
      // A lamp this message created must get its code: its state is retried. A known lamp's
      // message is only refreshed; holding its partition for a broker that is away would delay
      // every lamp behind it, and the bridge's next connect (once the broker is back) refreshes it.
      if (created) throw err;
      logger.warn(
        { message_id: messageId, device_id: deviceId, err: err instanceof Error ? err.message : String(err) },
        'association message not refreshed; the next connect will',
      );
    }
  };

  /** One bridge state: the device row and its bridge state, the association message; returns its Keen events. */
  const handleBridgeState = async (state: BridgeState, activation?: Activation): Promise<KeenEventRecord[]> => {
    const { deviceId, connected, messageId } = state;
    const receivedAt = new Date(state.receivedAt);
    const events: KeenEventRecord[] = [];
    let outcome: BridgeStateOutcome | undefined;
    if (connected) {
      activation ??= (await registry.activate([{ deviceId, messageId, connectedAt: receivedAt }])).get(messageId)!;
      if (activation.created) {
        // Created connected, by this message.
        outcome = 'recorded';
        metrics.devicesCreated.inc();
        events.push({
          collection: 'activations',
          event: activationEvent(deviceId, options.defaultUser, state.receivedAt, uniquenessToken(messageId, 'activations')),
        });
        logger.info({ message_id: messageId, device_id: deviceId }, 'new device activated');
      }
      if (activation.insertedNow) {
        // Nobody knows the code yet, so nobody has claimed the lamp: the code is what the registry says.
        await publisher.publish(deviceId, { associated: false, code: activation.associationCode }, state.broker);
      } else if (activation.created || !state.retained) {
        // A lamp this message created, handled again, may never have got its code: refreshed too.
        await refreshAssociation(state, activation.created);
      }
    }
    outcome ??= await registry.recordBridgeState(deviceId, connected, receivedAt, messageId);
    if (outcome === 'unknown_device') {
      // Its partition runs in order, so no connect of this lamp is still on its way.
      await reject({
        id: messageId,
        deviceId,
        receivedAt: state.receivedAt,
        detail: 'bridge disconnect from a device that never connected',
        topic: state.topic,
        usualTopic: `$SYS/broker/connection/${deviceId}_broker/state`,
        // Parsing let through only the one byte `1` or `0`: this is the payload as sent.
        payload: Buffer.from(connected ? '1' : '0'),
      });
    } else if (outcome === 'unchanged') {
      metrics.bridgeReplaysDropped.inc();
      logger.debug(
        { message_id: messageId, device_id: deviceId, connected, retained: state.retained },
        'bridge state unchanged; not recorded again',
      );
    } else {
      events.push({
        collection: 'devicemonitoring',
        event: deviceMonitoringEvent(deviceId, connected, state.receivedAt, uniquenessToken(messageId, 'devicemonitoring')),
      });
    }
    return events;
  };

  /**
   * A job's lamps are handled in parallel, each lamp's states in order. A state that fails fails
   * the attempt, and the job keeps its place at the head of its partition (an ordered stage):
   * back in the queue, the lamp's next state would overtake it. What this attempt handled is
   * dropped from the job first, its events kept, so the retry goes on where it stopped (a state
   * handled again records nothing again, so its events would not be made again).
   */
  const handleBridgeStates = async (job: Job<BridgeStatesJob>) => {
    const { states } = job.data;
    const events: KeenEventRecord[] = [...(job.data.events ?? [])];
    const handled = new Set<string>();
    const handleLamp = async (lampStates: BridgeState[], activations: Map<string, Activation>) => {
      for (const state of lampStates) {
        events.push(...(await handleBridgeState(state, activations.get(state.messageId))));
        handled.add(state.messageId);
      }
    };
    try {
      const lamps = [...groupBy(states, (state) => state.deviceId).values()];
      // Lamps that open with a connect may be new: they are created together, in one statement.
      const connects = lamps.flatMap((lampStates) => (lampStates[0]?.connected ? [lampStates[0]] : []));
      const activations =
        connects.length === 0
          ? new Map<string, Activation>()
          : await registry.activate(
              connects.map((s) => ({ deviceId: s.deviceId, messageId: s.messageId, connectedAt: new Date(s.receivedAt) })),
            );
      const failed = (await Promise.allSettled(lamps.map((lampStates) => handleLamp(lampStates, activations)))).find(
        (r) => r.status === 'rejected',
      );
      if (failed) throw failed.reason;
      return await sendToKeen(job.id!, events);
    } catch (err) {
      if (handled.size > 0)
        await job.updateData({ kind: 'bridge-states', states: states.filter((s) => !handled.has(s.messageId)), events });
      throw err;
    }
  };

  const stage = { connection: options.connection, logger, metrics };
  return [
    runStage({
      ...stage,
      queue: queues.ingest,
      process: handleLampStates,
      parse: parseLampStatesJob,
      subject: lampsOf,
      concurrency: options.concurrency,
    }),
    ...queues.bridgeState.map((queue) =>
      runStage({ ...stage, queue, process: handleBridgeStates, parse: parseBridgeStatesJob, subject: lampsOf, ordered: true }),
    ),
  ];
}
