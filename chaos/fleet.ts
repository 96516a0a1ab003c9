/**
 * The simulated LAMPI fleet of a chaos run, publishing as lamps' bridges do, QoS 1:
 *
 * - a bridge connect or disconnect: retained `1`/`0` on `$SYS/broker/connection/<id>_broker/state`;
 * - a lamp state: `{color, brightness, on, client, seq}` on `[/]devices/<id>/lamp/changed`, where
 *   `seq` counts that lamp's states from 1, so `device_id` + `seq` names every event.
 *
 * It remembers what it published, and which messages were waiting for their PUBACK when the
 * broker connection dropped: MQTT.js sends those again, and QoS 1 between a lamp and the broker
 * may then deliver them twice. Such duplicates happen before the pipeline and are reported apart.
 */
import mqtt, { type MqttClient } from 'mqtt';

export function lampId(index: number): string {
  return (0xc4_a5_00_00_00_00 + index).toString(16).padStart(12, '0');
}

export function lampStateTopic(index: number): string {
  // Early LAMPI firmware bridges with a leading slash, later firmware without one.
  return `${index % 2 === 0 ? '/' : ''}devices/${lampId(index)}/lamp/changed`;
}

export function bridgeStateTopic(index: number): string {
  return `$SYS/broker/connection/${lampId(index)}_broker/state`;
}

export interface Lamp {
  index: number;
  id: string;
  connected: boolean;
  /** Last lamp-state seq published. */
  seq: number;
  /** Bridge states published (true = connected), in order. */
  bridgeStates: boolean[];
}

export class Fleet {
  readonly lamps = new Map<number, Lamp>();
  /** `<device id>:<seq>` of every lamp state published. */
  readonly published = new Set<string>();
  /** States marked `poison`, which the fake Keen refuses for good. */
  readonly poisoned = new Set<string>();
  /** Messages in flight (no PUBACK yet) when the broker connection dropped. */
  readonly resentRisk = new Set<string>();
  readonly pending = new Set<string>();
  /** When each lamp state was handed to MQTT.js (ms since the epoch), and whether the client was offline then. */
  readonly publishedAt = new Map<string, { at: number; offline: boolean }>();
  acked = 0;
  disconnects = 0;
  private client!: MqttClient;

  constructor(
    private readonly url: string,
    private readonly clientId: string,
  ) {}

  async connect(): Promise<void> {
    // A persistent session, as a bridge has: what was unacknowledged is sent again on reconnect.
    // A Mosquitto bridge reconnects after `restart_timeout`, at least 5 s by default.
    this.client = await mqtt.connectAsync(this.url, {
      clientId: this.clientId,
      clean: false,
      protocolVersion: 4,
      reconnectPeriod: 5000,
      connectTimeout: 10_000,
    });
    this.client.on('close', () => {
      if (this.pending.size > 0) this.disconnects += 1;
      for (const key of this.pending) this.resentRisk.add(key);
    });
    this.client.on('error', () => {});
  }

  lamp(index: number): Lamp {
    let lamp = this.lamps.get(index);
    if (!lamp) {
      lamp = { index, id: lampId(index), connected: false, seq: 0, bridgeStates: [] };
      this.lamps.set(index, lamp);
    }
    return lamp;
  }

  bridge(index: number, connected: boolean): void {
    const lamp = this.lamp(index);
    lamp.connected = connected;
    lamp.bridgeStates.push(connected);
    this.send(`bridge:${lamp.id}:${lamp.bridgeStates.length}`, bridgeStateTopic(index), connected ? '1' : '0', true);
  }

  /** Publishes the lamp's next state; returns its key. */
  state(index: number, { poison = false } = {}): string {
    const lamp = this.lamp(index);
    lamp.seq += 1;
    const seq = lamp.seq;
    const key = `${lamp.id}:${seq}`;
    const payload = {
      color: { h: (seq % 1000) / 1000, s: 1.0 },
      brightness: (seq % 100) / 100,
      on: seq % 3 !== 0,
      client: 'lamp_ui',
      seq,
      ...(poison ? { poison: true } : {}),
    };
    this.published.add(key);
    this.publishedAt.set(key, { at: Date.now(), offline: !this.client.connected });
    if (poison) this.poisoned.add(key);
    this.send(key, lampStateTopic(index), JSON.stringify(payload), false);
    return key;
  }

  private send(key: string, topic: string, payload: string, retain: boolean): void {
    this.pending.add(key);
    this.client.publish(topic, payload, { qos: 1, retain }, (err) => {
      if (err) return; // MQTT.js keeps it in its store and sends it again on reconnect
      this.pending.delete(key);
      this.acked += 1;
    });
  }

  /**
   * Publishes lamp states at `rate` per second, round robin over the lamps `eligible()` returns
   * (lamps whose bridge is down stay quiet), until `count` have been published.
   */
  async runStates(options: {
    rate: number;
    count: number;
    eligible: () => number[];
    onTick?: (published: number) => void;
    poisonAt?: number[];
  }): Promise<void> {
    const { rate, count } = options;
    const poisonAt = new Set(options.poisonAt ?? []);
    const started = Date.now();
    let published = 0;
    let cursor = 0;
    while (published < count) {
      const due = Math.min(count, Math.floor(((Date.now() - started) * rate) / 1000));
      // Catching up after a stall is capped, as a fleet's rate is.
      let burst = Math.min(due - published, rate);
      const lamps = options.eligible();
      while (burst > 0 && lamps.length > 0) {
        const index = lamps[cursor % lamps.length]!;
        cursor += 1;
        this.state(index, { poison: poisonAt.has(published) });
        published += 1;
        burst -= 1;
      }
      options.onTick?.(published);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  }

  /** Waits for every PUBACK. */
  async drain(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.pending.size > 0) {
      if (Date.now() > deadline)
        throw new Error(`${this.pending.size} fleet messages still unacknowledged by the broker after ${timeoutMs} ms`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }

  async close(): Promise<void> {
    await this.client.endAsync(true).catch(() => {});
  }
}
