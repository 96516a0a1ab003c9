/**
 * The raw ceiling (issue 15): the bench fleet → the same Mosquitto → one QoS 1 subscriber that
 * only acknowledges. No parsing beyond reading the bench's `seq` and `t` from the payload's
 * tail (to check that every message arrived once, and its latency), no Redis, no Keen. What no
 * MQTT pipeline on this broker and machine can beat: ours is measured against it in the same run.
 *
 *   MQTT_URL=... CLIENT_ID=... node --import tsx bench/raw-ceiling.ts     (started by the bench, with an IPC channel)
 *
 * Prints `raw ceiling ready` once subscribed; then speaks bench/lib/seqs.ts's SinkReply.
 */
import mqtt from 'mqtt';
import { SeqLog } from './keen-recorder.js';
import { recordSeq, serveSink } from './lib/seqs.js';

const url = process.env.MQTT_URL;
if (!url) throw new Error('MQTT_URL is required');

const SEQ = Buffer.from('"seq":');

/** The integer that starts at `at` in `payload` (ASCII digits). */
function intAt(payload: Buffer, at: number): number {
  let n = 0;
  for (let i = at; i < payload.length; i++) {
    const c = payload[i]!;
    if (c < 48 || c > 57) break;
    n = n * 10 + (c - 48);
  }
  return n;
}

const seqs = new SeqLog();
let completed = 0;
let firstAt = 0;
let lastAt = 0;
// Protocol 3.1.1 and a clean session, as the fleet; MQTT.js sends each PUBACK once the handler returns.
const client = mqtt.connect(url, { clientId: process.env.CLIENT_ID ?? `raw-ceiling-${process.pid}`, clean: true, protocolVersion: 4 });
client.on('message', (_topic, payload) => {
  const now = Date.now();
  completed += 1;
  lastAt = now;
  if (completed === 1) firstAt = now;
  const at = payload.lastIndexOf(SEQ);
  if (at < 0) return;
  const seqAt = at + SEQ.length;
  const tAt = payload.indexOf(44, seqAt) + 5; // ,"t":
  recordSeq(seqs, intAt(payload, seqAt), intAt(payload, tAt), now);
});
client.on('connect', () => {
  client.subscribe(['/devices/+/lamp/changed', 'devices/+/lamp/changed'], { qos: 1 }, (err) => {
    if (err) throw err;
    process.stdout.write('raw ceiling ready\n');
  });
});
serveSink(seqs, () => ({ completed, firstAt, lastAt }));
process.on('SIGTERM', () => client.end(false, {}, () => process.exit(0)));
