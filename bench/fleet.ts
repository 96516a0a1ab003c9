/**
 * The simulated LAMPI fleet: a process of its own that publishes, QoS 1, what lamps' bridges
 * send to our broker. Driven by the bench over the IPC channel (spawned with an 'ipc' stdio):
 *
 *   → {type: 'connect', from, count}      each lamp's bridge connect: retained `1` on
 *                                          `$SYS/broker/connection/<id>_broker/state`
 *   ← {type: 'connected', ...PublishReport}
 *   → {type: 'states', seqStart, count | durationMs, rate?, window?, lamps}
 *                                          lamp states `{..., seq, t}` on `[/]devices/<id>/lamp/changed`,
 *                                          lamps taken round robin; at `rate` events/s, or as fast as
 *                                          the window allows: no more than `window` events published
 *                                          and not yet accepted downstream (the bench reports
 *                                          `{type: 'accepted', n}` as it goes)
 *   ← {type: 'done', ...PublishReport}     once every message has its PUBACK
 *   → {type: 'close'}
 *
 * `seq` numbers events across a scenario, `t` is the publish time (Date.now()): the Keen recorder
 * uses both to find lost or duplicated events and to measure latency.
 */
import mqtt, { type MqttClient } from 'mqtt';

export interface PublishReport {
  published: number;
  firstAt: number;
  lastAt: number;
  /** When the last PUBACK arrived. */
  ackedAt: number;
  /** Largest gap between the schedule and what was published, at a fixed rate (ms). */
  maxLagMs: number;
}

export type FleetCommand =
  | { type: 'connect'; from: number; count: number }
  | { type: 'states'; seqStart: number; count?: number; durationMs?: number; rate?: number; window?: number; lamps: number }
  | { type: 'accepted'; n: number }
  | { type: 'close' };

export type FleetReply = ({ type: 'connected' | 'done' } & PublishReport) | { type: 'ready' } | { type: 'error'; message: string };

/** The device id of lamp i: 12 hex digits, as a LAMPI's MAC address. */
export function lampId(i: number): string {
  return (0xb8_27_eb_00_00_00 + i).toString(16).padStart(12, '0');
}

export function lampStateTopic(i: number): string {
  // Early firmware bridges with a leading slash, later firmware without: both are in the fleet.
  return `${i % 2 === 0 ? '/' : ''}devices/${lampId(i)}/lamp/changed`;
}

export function bridgeStateTopic(i: number): string {
  return `$SYS/broker/connection/${lampId(i)}_broker/state`;
}

/** What a LAMPI publishes on a change, plus the bench's sequence number and publish time. */
export function lampStatePayload(seq: number, t: number): string {
  const h = (seq % 1000) / 1000;
  return `{"color":{"h":${h},"s":1.0},"brightness":${(seq % 100) / 100},"on":${seq % 3 !== 0},"client":"lamp_ui","seq":${seq},"t":${t}}`;
}

/** PUBACKs outstanding at most: MQTT packet ids are 16 bits, and the broker needs no more to stay busy. */
const MAX_UNACKED = 2000;

async function main(): Promise<void> {
  const url = process.env.MQTT_URL;
  if (!url || !process.send) throw new Error('fleet.ts is started by the bench (MQTT_URL and an IPC channel)');
  const connections = Number(process.env.FLEET_CONNECTIONS ?? 1);
  const clientId = process.env.FLEET_CLIENT_ID ?? `bench-fleet-${process.pid}`;
  const clients: MqttClient[] = await Promise.all(
    Array.from({ length: connections }, (_, i) =>
      mqtt.connectAsync(url, { clientId: `${clientId}-${i}`, clean: true, protocolVersion: 4, reconnectPeriod: 0 }),
    ),
  );
  const send = (reply: FleetReply) => process.send!(reply);

  let accepted = 0;
  let unacked = 0;
  let wake: (() => void) | undefined;
  const wakeUp = () => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  const sleepUntilWoken = (maxMs: number) =>
    new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        wake = undefined;
        resolve();
      }, maxMs);
      wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });

  let failure: Error | undefined;
  const publish = (client: MqttClient, topic: string, payload: string, retain: boolean, onAck: () => void) => {
    unacked += 1;
    client.publish(topic, payload, { qos: 1, retain }, (err) => {
      unacked -= 1;
      if (err) failure ??= err;
      onAck();
      wakeUp();
    });
  };

  const run = async (
    count: number | undefined,
    durationMs: number | undefined,
    next: (i: number) => { client: MqttClient; topic: string; payload: string; retain: boolean },
    rate?: number,
    window?: number,
  ): Promise<PublishReport> => {
    const report: PublishReport = { published: 0, firstAt: 0, lastAt: 0, ackedAt: 0, maxLagMs: 0 };
    const start = Date.now();
    report.firstAt = start;
    const deadline = durationMs !== undefined ? start + durationMs : Infinity;
    const total = count ?? Infinity;
    let acked = 0;
    const onAck = () => {
      acked += 1;
      report.ackedAt = Date.now();
    };
    const baseAccepted = accepted;
    for (;;) {
      const now = Date.now();
      if (report.published >= total || now >= deadline) break;
      if (failure) throw failure;
      let allowed = total - report.published;
      if (rate !== undefined) {
        const due = Math.floor(((now - start) * rate) / 1000) + 1;
        allowed = Math.min(allowed, due - report.published);
        if (allowed > 0) report.maxLagMs = Math.max(report.maxLagMs, ((allowed - 1) * 1000) / rate);
      }
      if (window !== undefined) allowed = Math.min(allowed, window - (report.published - (accepted - baseAccepted)));
      allowed = Math.min(allowed, MAX_UNACKED - unacked, 500);
      if (allowed <= 0) {
        // Wait for a PUBACK, an 'accepted' report or the next tick of the schedule.
        await sleepUntilWoken(rate !== undefined ? 1 : 20);
        continue;
      }
      for (let k = 0; k < allowed; k++) {
        const message = next(report.published);
        publish(message.client, message.topic, message.payload, message.retain, onAck);
        report.published += 1;
      }
      report.lastAt = Date.now();
      // Let the socket write and PUBACKs come in before the next burst.
      await new Promise((resolve) => setImmediate(resolve));
    }
    while (acked < report.published) {
      if (failure) throw failure;
      await sleepUntilWoken(50);
    }
    return report;
  };

  process.on('message', (command: FleetCommand) => {
    if (command.type === 'accepted') {
      accepted = command.n;
      wakeUp();
      return;
    }
    if (command.type === 'close') {
      void Promise.all(clients.map((client) => client.endAsync())).finally(() => process.exit(0));
      return;
    }
    const work =
      command.type === 'connect'
        ? run(command.count, undefined, (i) => {
            const lamp = command.from + i;
            return { client: clients[lamp % clients.length]!, topic: bridgeStateTopic(lamp), payload: '1', retain: true };
          }).then((report) => send({ type: 'connected', ...report }))
        : run(
            command.count,
            command.durationMs,
            (i) => {
              const seq = command.seqStart + i;
              const lamp = seq % command.lamps;
              return {
                client: clients[lamp % clients.length]!,
                topic: lampStateTopic(lamp),
                payload: lampStatePayload(seq, Date.now()),
                retain: false,
              };
            },
            command.rate,
            command.window,
          ).then((report) => send({ type: 'done', ...report }));
    work.catch((err: unknown) => send({ type: 'error', message: String((err as Error)?.stack ?? err) }));
  });
  process.on('disconnect', () => process.exit(0));
  send({ type: 'ready' });
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main().catch((err: unknown) => {
    process.stderr.write(`fleet: ${String((err as Error)?.stack ?? err)}\n`);
    process.exit(1);
  });
}
