/**
 * Hostile input through the real processes (issue 6): a generated corpus of more than 10,000
 * hostile messages, mixed into a stream of valid lamp states, published to a broker of the
 * test's own and handled by `npm run subscriber` and `npm run worker`.
 *
 * - every valid message (hostile-looking ones included: `__proto__`, dotted, `$` and `keen` keys,
 *   a flood from one lamp) reaches Keen once, sanitized, about the lamp that sent it;
 * - every invalid one is counted under the reason its construction intends, by the process whose
 *   reason it is (the subscriber's /metrics for its topic, size and text, the worker's for its
 *   JSON and its lamp), and recorded in the rejected-messages queue;
 * - no process exits, and their memory stays roughly flat;
 * - no Keen event carries a root property other than ours, a `keen.*` field we did not set, or
 *   a device id other than the sender's.
 *
 * The corpus is generated from a fixed seed (printed), so a failure can be replayed.
 */
import { readFileSync } from 'node:fs';
import { Queue } from 'bullmq';
import fc from 'fast-check';
import mqtt from 'mqtt';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type { RejectedMessageJob } from '../../src/shared/jobs.js';
import { REJECT_REASONS, type RejectReason } from '../../src/shared/lamp.js';
import { LAMP_STATE_REJECT_REASONS, MAX_LAMP_STATE_BYTES, parseLampState, parseMessage } from '../../src/shared/message.js';
import { QUEUE_NAMES, queueKey } from '../../src/shared/queues.js';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { startFakeKeen, type FakeKeen, type StoredEvent } from '../support/fake-keen.js';
import { randomPrefix } from '../support/ids.js';
import { freePort, sleep, startMosquitto, startService, waitFor, type ManagedProcess } from '../support/processes.js';

const services = inject('services');
const PROJECT = 'hostileproject';
const WRITE_KEY = 'hostile-write-key-7a1c93e0';
const SEED = Number(process.env.HOSTILE_SEED ?? 20261128);

type Expect = 'valid' | RejectReason | 'not-delivered';
interface Message {
  topic: string;
  payload: Buffer;
  expect: Expect;
  /** What the corpus meant to try, for the report. */
  klass: string;
  /** `<device>:<seq>` of a valid lamp state. */
  key?: string;
}

// ---- the lamps ---------------------------------------------------------------------------------
const LAMPS = ['a1b2c3d4e5f0', 'a1b2c3d4e5f1', 'a1b2c3d4e5f2', 'a1b2c3d4e5f3', 'a1b2c3d4e5f4'];
const FLOOD_LAMP = 'a1b2c3d4e5ff';
const ALL_LAMPS = [...LAMPS, FLOOD_LAMP];
const lampTopic = (id: string, slash: boolean) => `${slash ? '/' : ''}devices/${id}/lamp/changed`;
const bridgeTopic = (id: string) => `$SYS/broker/connection/${id}_broker/state`;

// ---- the corpus --------------------------------------------------------------------------------
function buildCorpus(): { messages: Message[]; flood: Message[] } {
  let sample = 0;
  const draw = <T>(arb: fc.Arbitrary<T>, n: number): T[] => fc.sample(arb, { seed: SEED + sample++, numRuns: n });
  const rand = mulberry32(SEED);
  const pick = <T>(items: readonly T[]): T => items[Math.floor(rand() * items.length)]!;
  const seqs = new Map<string, number>();
  const nextKey = (lamp: string) => {
    const seq = (seqs.get(lamp) ?? 0) + 1;
    seqs.set(lamp, seq);
    return { seq, key: `${lamp}:${seq}` };
  };
  const messages: Message[] = [];
  const lampMsg = (klass: string, expect: Expect, payload: Buffer | string, lamp = pick(LAMPS)) =>
    messages.push({ topic: lampTopic(lamp, rand() < 0.5), payload: Buffer.from(payload), expect, klass });
  /** A valid lamp state carrying a `seq`: `extra` is merged into it as JSON text. */
  const validState = (klass: string, build: (seq: number) => string, lamp = pick(LAMPS)) => {
    const { seq, key } = nextKey(lamp);
    messages.push({ topic: lampTopic(lamp, rand() < 0.5), payload: Buffer.from(build(seq)), expect: 'valid', klass, key });
  };
  const plain = (seq: number) =>
    JSON.stringify({ color: { h: (seq % 100) / 100, s: 1 }, brightness: (seq % 10) / 10, on: seq % 2 === 0, client: 'lamp_ui', seq });

  // Valid lamp states, the stream the hostile messages are mixed into.
  for (let i = 0; i < 1000; i++) validState('valid stream', plain);

  // -- topics: random levels where the device id goes ------------------------------------------
  const idChars = fc.constantFrom(
    ...'ghijklmnopqrstuvwxyzGHIJKLMNOPQRSTUVWXYZ-_.:;,!"\'()[]{}<>=?@ ~`|\\^*&%$é中文🙂Ωß'.split(/(?=[\s\S])/u),
  );
  for (const id of draw(fc.string({ unit: idChars, minLength: 1, maxLength: 40 }), 2000)) {
    messages.push({
      topic: lampTopic(id, rand() < 0.5),
      payload: Buffer.from(plain(1)),
      expect: 'invalid_device_id',
      klass: 'topic: non-hex device id',
    });
  }
  for (const n of draw(fc.integer({ min: 13, max: 400 }), 300)) {
    const id = Array.from({ length: n }, () => pick([...'0123456789abcdef'])).join('');
    messages.push({
      topic: lampTopic(id, rand() < 0.5),
      payload: Buffer.from(plain(1)),
      expect: 'invalid_device_id',
      klass: 'topic: device id too long',
    });
  }
  for (let i = 0; i < 200; i++) {
    messages.push({
      topic: lampTopic('', i % 2 === 0),
      payload: Buffer.from(plain(1)),
      expect: 'invalid_device_id',
      klass: 'topic: empty device id level',
    });
  }
  for (let i = 0; i < 100; i++)
    messages.push({
      topic: '$SYS/broker/connection/_broker/state',
      payload: Buffer.from('1'),
      expect: 'invalid_device_id',
      klass: 'topic: empty bridge id',
    });
  for (let i = 0; i < 100; i++)
    messages.push({
      topic: '$SYS/broker/connection//state',
      payload: Buffer.from('1'),
      expect: 'unrecognized_topic',
      klass: 'topic: empty bridge connection level',
    });
  for (const id of draw(fc.string({ unit: idChars, minLength: 1, maxLength: 30 }), 300)) {
    // A bridge connection that is not `<id>_broker`: another bridge's notifications, not a lamp's.
    messages.push({
      topic: `$SYS/broker/connection/${id}/state`,
      payload: Buffer.from('1'),
      expect: 'unrecognized_topic',
      klass: 'topic: bridge connection not named <id>_broker',
    });
  }
  // Topics nobody subscribed to never reach the subscriber at all.
  for (const levels of draw(fc.array(fc.string({ unit: idChars, minLength: 0, maxLength: 8 }), { minLength: 1, maxLength: 6 }), 400)) {
    messages.push({
      topic: `noise/${levels.join('/')}`,
      payload: Buffer.from('x'),
      expect: 'not-delivered',
      klass: 'topic: random, unsubscribed',
    });
  }
  for (let i = 0; i < 100; i++)
    messages.push({
      topic: `devices/${pick(LAMPS)}/lamp/changed/extra`,
      payload: Buffer.from(plain(1)),
      expect: 'not-delivered',
      klass: 'topic: extra level, unsubscribed',
    });

  // -- payloads: binary and invalid UTF-8 ----------------------------------------------------------
  // Invalid whatever surrounds them: bytes UTF-8 never uses, an overlong form, a surrogate, a code point past U+10FFFF.
  const broken = [[0xff], [0xfe], [0xc0, 0xaf], [0xc1, 0xbf], [0xed, 0xa0, 0x80], [0xf8, 0x88, 0x80, 0x80, 0x80], [0xf4, 0x90, 0x80, 0x80]];
  for (const bytes of draw(fc.uint8Array({ minLength: 0, maxLength: 600 }), 1500)) {
    const at = Math.floor(rand() * (bytes.length + 1));
    lampMsg(
      'payload: binary / invalid UTF-8',
      'invalid_utf8',
      Buffer.concat([Buffer.from(bytes.subarray(0, at)), Buffer.from(pick(broken)), Buffer.from(bytes.subarray(at))]),
    );
  }
  for (const text of draw(fc.string({ unit: 'grapheme', minLength: 0, maxLength: 200 }), 500))
    lampMsg('payload: text that is not JSON', 'invalid_json', `{${text}`);
  lampMsg('payload: empty', 'invalid_json', '');

  // -- payloads: at and over the size limit ------------------------------------------------------
  const padded = (seq: number, bytes: number) => {
    const head = `{"on":true,"seq":${seq},"pad":"`;
    return `${head}${'x'.repeat(bytes - head.length - 2)}"}`;
  };
  for (let i = 0; i < 10; i++) validState('payload: exactly 64 KiB', (seq) => padded(seq, MAX_LAMP_STATE_BYTES));
  for (let i = 0; i < 10; i++) lampMsg('payload: 64 KiB + 1', 'payload_too_large', padded(0, MAX_LAMP_STATE_BYTES + 1));
  for (let i = 0; i < 2; i++) lampMsg('payload: 1 MiB', 'payload_too_large', padded(0, 1024 * 1024));
  for (let i = 0; i < 5; i++)
    lampMsg('payload: 200 KB of binary', 'payload_too_large', Buffer.from(Array.from({ length: 200_000 }, () => Math.floor(rand() * 256))));

  // -- payloads: deeply nested JSON --------------------------------------------------------------
  for (const depth of draw(fc.integer({ min: 17, max: 5000 }), 500)) {
    const open = rand() < 0.5 ? '{"a":' : '[';
    const close = open === '[' ? ']' : '}';
    lampMsg('JSON: nested too deep', 'too_deeply_nested', `{"on":true,"deep":${open.repeat(depth - 1)}1${close.repeat(depth - 1)}}`);
  }
  for (let i = 0; i < 5; i++)
    validState('JSON: nested exactly 16 deep', (seq) => `{"seq":${seq},"deep":${'{"a":'.repeat(15)}1${'}'.repeat(15)}}`);

  // -- payloads: huge numbers --------------------------------------------------------------------
  const infinite = ['1e999', '-1e999', '1e400', `1${'0'.repeat(400)}`, `-${'9'.repeat(500)}`];
  for (let i = 0; i < 300; i++)
    lampMsg(
      'JSON: number beyond float range',
      'invalid_lamp_state',
      `{"on":true,"x":${rand() < 0.5 ? `[[${pick(infinite)}]]` : pick(infinite)}}`,
    );
  for (let i = 0; i < 100; i++)
    lampMsg('JSON: huge brightness', 'invalid_lamp_state', `{"brightness":${pick(['1e308', '2', '1.0000001', '-1e-300'])}}`);
  for (let i = 0; i < 100; i++)
    validState(
      'JSON: large but finite numbers',
      (seq) => `{"seq":${seq},"big":123456789012345678901234567890,"max":1.7976931348623157e308,"tiny":5e-324,"neg":-0}`,
    );

  // -- payloads: repeated keys (the last one wins, as in JSON.parse) -------------------------------
  for (let i = 0; i < 250; i++) lampMsg('JSON: repeated key, last invalid', 'invalid_lamp_state', '{"on":true,"on":"yes"}');
  for (let i = 0; i < 250; i++)
    validState(
      'JSON: repeated keys',
      (seq) => `{"brightness":0.1,"brightness":0.9,"seq":0,"seq":${seq},"__proto__":{},"__proto__":{"x":1}}`,
    );

  // -- payloads: keys aimed at prototypes, Keen's rules and our envelope (valid: sanitized) --------
  const sneaky: Array<(seq: number) => string> = [
    (seq) => `{"seq":${seq},"__proto__":{"polluted":"yes","device_id":"ffffffffffff","keen":{"uniqueness_token":"evil"}}}`,
    (seq) => `{"seq":${seq},"constructor":{"prototype":{"polluted":"yes"}}}`,
    (seq) => `{"seq":${seq},"a.b":1,"a_b":2,"$set":{"x.y":2,"$inc":3},".":4,"$":5,"":6}`,
    (seq) =>
      `{"seq":${seq},"keen":{"timestamp":"1970-01-01T00:00:00.000Z","uniqueness_token":"evil","id":"x","addons":[]},"device_id":"ffffffffffff"}`,
    (seq) => `{"seq":${seq},"toString":1,"hasOwnProperty":"x","valueOf":null,"__defineGetter__":2}`,
    (seq) => `{"seq":${seq},"${'k'.repeat(300)}":1,"${'.'.repeat(300)}":2}`,
    (seq) => `{"seq":${seq},"list":[{"a.b":1},{"$x":[{"keen.id":2}]}],"s":"\\ud83d\\udca1"}`,
  ];
  for (let i = 0; i < 700; i++) validState('keys: __proto__, constructor, dotted, $, keen, long', sneaky[i % sneaky.length]!);
  // Valid UTF-8 and valid JSON, but text no Keen can store: JSON escapes for NUL and lone surrogates.
  const unstorable = [
    '{"s":"\\ud800"}',
    '{"s":"a\\u0000b"}',
    '{"list":[{"deep":"\\udfff"}]}',
    '{"k\\ud800":1}',
    '{"a":{"\\u0000":true}}',
    '{"on":true,"client":"\\udc00\\ud800"}',
  ];
  for (let i = 0; i < 300; i++) lampMsg('JSON: text no Keen can store (NUL, lone surrogate)', 'unstorable_text', pick(unstorable));
  const hostileKey = fc.oneof(
    fc.constantFrom(
      '__proto__',
      'constructor',
      'prototype',
      'keen',
      'keen.id',
      'keen.uniqueness_token',
      'device_id',
      '$where',
      '$',
      '.',
      '..',
      'a.b.c',
      '',
      'toString',
    ),
    fc.string({ unit: fc.constantFrom(...'ab.$_k'.split('')), maxLength: 12 }),
  );
  const hostileValue = fc.letrec((tie) => ({
    value: fc.oneof(
      { depthSize: 'small', withCrossShrink: true },
      fc.jsonValue({ maxDepth: 1 }),
      fc.dictionary(hostileKey, tie('value'), { maxKeys: 4 }),
      fc.array(tie('value'), { maxLength: 3 }),
    ),
  })).value;
  for (const object of draw(fc.dictionary(hostileKey, hostileValue, { maxKeys: 6 }), 800)) {
    validState('keys: generated hostile objects', (seq) => {
      // Written as text so that `__proto__` stays a plain key, as a lamp would send it.
      const body = JSON.stringify(object);
      return body === '{}' ? `{"seq":${seq}}` : `{"seq":${seq},${body.slice(1)}`;
    });
  }

  // -- payloads: not an object, wrong types --------------------------------------------------------
  for (let i = 0; i < 300; i++)
    lampMsg('JSON: not an object', 'not_an_object', pick(['null', '[]', '[1,2]', '"str"', '42', 'true', '[{"on":true}]']));
  const wrongTypes = [
    '{"on":"yes"}',
    '{"brightness":2}',
    '{"brightness":-0.1}',
    '{"color":{"h":"x","s":1}}',
    '{"color":5}',
    `{"client":"${'c'.repeat(300)}"}`,
    '{"color":{"h":1.5,"s":0}}',
    '{"on":1}',
  ];
  for (let i = 0; i < 700; i++) lampMsg('JSON: LAMPI fields of the wrong type or range', 'invalid_lamp_state', pick(wrongTypes));

  // -- bridge states other than 0 and 1 ------------------------------------------------------------
  const bridgeJunk = [
    '',
    '2',
    '10',
    '01',
    'true',
    'connected',
    ' 1',
    '1\n',
    '\u0000',
    '\u0001',
    '٣',
    '-1',
    '1.0',
    '0x1',
    'x'.repeat(70_000),
  ];
  for (let i = 0; i < 1000; i++) {
    const junk = i % 50 === 0 ? Buffer.from([0xff]) : Buffer.from(pick(bridgeJunk));
    messages.push({
      topic: bridgeTopic(pick(ALL_LAMPS)),
      payload: junk,
      expect: 'invalid_bridge_state',
      klass: 'bridge state other than 0/1',
    });
  }

  // -- lamp states from lamps that never connected ---------------------------------------------
  for (let i = 0; i < 20; i++)
    messages.push({
      topic: lampTopic(`dead${String(i).padStart(8, '0')}`, false),
      payload: Buffer.from(plain(1)),
      expect: 'unknown_device',
      klass: 'lamp state from a lamp that never connected',
    });

  shuffle(messages, rand);

  // -- a flood from one lamp: a burst of valid and invalid messages, in one block ------------------
  const flood: Message[] = [];
  for (let i = 0; i < 2000; i++) {
    const { seq, key } = nextKey(FLOOD_LAMP);
    flood.push({
      topic: lampTopic(FLOOD_LAMP, false),
      payload: Buffer.from(plain(seq)),
      expect: 'valid',
      klass: 'flood from one lamp: valid',
      key,
    });
    const [payload, expect] = pick([
      ['{"on":tr', 'invalid_json'],
      [Buffer.from([0xff, 0xfe]), 'invalid_utf8'],
      ['[]', 'not_an_object'],
    ] as const);
    flood.push({ topic: lampTopic(FLOOD_LAMP, true), payload: Buffer.from(payload), expect, klass: 'flood from one lamp: invalid' });
  }
  return { messages, flood };
}

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function shuffle<T>(items: T[], rand: () => number): void {
  for (let i = items.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [items[i], items[j]] = [items[j]!, items[i]!];
  }
}

/** Sums of each labelled series of a counter, from Prometheus text. */
async function scrape(port: number, name: string, label: string): Promise<Map<string, number>> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const out = new Map<string, number>();
  const pattern = new RegExp(`^${name}\\{([^}]*)\\} (\\S+)$`);
  for (const line of text.split('\n')) {
    const match = pattern.exec(line);
    if (!match) continue;
    const value = new RegExp(`${label}="([^"]*)"`).exec(match[1]!)?.[1] ?? '';
    out.set(value, (out.get(value) ?? 0) + Number(match[2]));
  }
  return out;
}

function rss(pid: number): number {
  const kb = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
  return Number(kb ?? 0) * 1024;
}

const sum = (map: Map<string, number>) => [...map.values()].reduce((a, b) => a + b, 0);
const MB = 1024 * 1024;

describe('hostile input through the real subscriber and worker', () => {
  const prefix = randomPrefix('hostile');
  const { messages, flood } = buildCorpus();
  const all = [...messages.slice(0, messages.length / 2), ...flood, ...messages.slice(messages.length / 2)];
  const delivered = all.filter((m) => m.expect !== 'not-delivered');
  const invalid = all.filter((m) => m.expect !== 'valid' && m.expect !== 'not-delivered');
  const valid = all.filter((m) => m.expect === 'valid');
  let broker: Awaited<ReturnType<typeof startMosquitto>>;
  let db: TestDatabase;
  let keen: FakeKeen;
  let subscriber: ManagedProcess;
  let worker: ManagedProcess;
  let ports: { subscriber: number; worker: number };
  const memory: Record<'subscriber' | 'worker', number[]> = { subscriber: [], worker: [] };
  let sampler: NodeJS.Timeout | undefined;

  beforeAll(async () => {
    process.stdout.write(
      `[hostile] seed ${SEED}: ${all.length} messages, ` +
        `${invalid.length + all.filter((m) => m.expect === 'not-delivered').length} hostile ` +
        `(${invalid.length} to be rejected), ${valid.length} valid\n`,
    );
    // A broker of our own: the flood must not meet a shared broker's default queue limit (1000).
    broker = await startMosquitto();
    db = await createTestDatabase(services.postgres);
    keen = await startFakeKeen({ projectId: PROJECT, writeKey: WRITE_KEY });
    ports = { subscriber: await freePort(), worker: await freePort() };
    const common = {
      REDIS_URL: services.redis,
      QUEUE_PREFIX: prefix,
      MQTT_URL: broker.url,
      MQTT_CLIENT_ID: prefix,
      METRICS_HOST: '127.0.0.1',
      LOG_LEVEL: 'error',
    };
    // With the default (record), a stranger's lamp states would be recorded; this run checks that `reject` rejects them.
    worker = startService('worker', {
      ...common,
      METRICS_PORT: String(ports.worker),
      DATABASE_URL: db.url,
      KEEN_API_URL: keen.url,
      KEEN_PROJECT_ID: PROJECT,
      KEEN_WRITE_KEY: WRITE_KEY,
      KEEN_TIMEOUT_MS: '5000',
      UNKNOWN_DEVICE_STATES: 'reject',
    });
    subscriber = startService('subscriber', {
      ...common,
      METRICS_PORT: String(ports.subscriber),
      MQTT_SHARE_GROUP: prefix,
      SUBSCRIBER_CONNECTIONS: '2',
    });
    await Promise.all([
      waitFor('the worker metrics endpoint', () => fetch(`http://127.0.0.1:${ports.worker}/healthz`).then((r) => r.ok), 60_000, 200),
      waitFor(
        'the subscriber metrics endpoint',
        () => fetch(`http://127.0.0.1:${ports.subscriber}/healthz`).then((r) => r.ok),
        60_000,
        200,
      ),
    ]);
  }, 120_000);

  afterAll(async () => {
    clearInterval(sampler);
    await subscriber?.kill('SIGKILL');
    await worker?.kill('SIGKILL');
    await keen?.close();
    await db?.drop();
    await broker?.kill('SIGTERM');
  });

  it('the corpus means what it says: the pure parser agrees with every intended outcome', () => {
    const wrong: string[] = [];
    for (const m of delivered) {
      const parsed = parseMessage({ topic: m.topic, payload: m.payload, retain: false, dup: false }, new Date().toISOString());
      // The subscriber's reader, then (for a lamp state it stores) the lamp-states stage's.
      const read = parsed.ok && parsed.message.kind === 'lamp-state' ? parseLampState(parsed.payload) : parsed;
      // unknown_device is only known to the registry; to the parsers such a message is valid.
      const got = read.ok ? 'valid' : read.reason;
      const want = m.expect === 'unknown_device' ? 'valid' : m.expect;
      if (got !== want && wrong.length < 20)
        wrong.push(
          `${m.klass}: ${JSON.stringify(m.topic.slice(0, 80))} ${JSON.stringify(m.payload.subarray(0, 60).toString())} -> ${got}, meant ${want}`,
        );
    }
    expect(wrong).toEqual([]);
    expect(invalid.length + all.filter((m) => m.expect === 'not-delivered').length).toBeGreaterThanOrEqual(10_000);
  });

  it('delivers every valid message once, rejects every invalid one with its reason, and nothing crashes or grows', async () => {
    const publisher = await mqtt.connectAsync(broker.url, { clientId: `${prefix}-fleet`, clean: true });
    // The lamps connect first, as their bridges do.
    for (const id of ALL_LAMPS) await publisher.publishAsync(bridgeTopic(id), '1', { qos: 1, retain: true });
    const pool = new pg.Pool({ connectionString: db.url, max: 1 });
    await waitFor(
      'the lamps to be registered',
      async () => Number((await pool.query('SELECT count(*) AS n FROM devices')).rows[0].n) === ALL_LAMPS.length,
      60_000,
      200,
    );
    await pool.end();
    await sleep(1000);
    const baseline = { subscriber: rss(subscriber.child.pid!), worker: rss(worker.child.pid!) };
    sampler = setInterval(() => {
      for (const name of ['subscriber', 'worker'] as const) {
        const proc = name === 'subscriber' ? subscriber : worker;
        if (proc.child.exitCode === null) memory[name].push(rss(proc.child.pid!));
      }
    }, 250);

    // Published QoS 1 with a bounded window, in the corpus's order.
    const WINDOW = 500;
    let inFlight = 0;
    for (const m of all) {
      while (inFlight >= WINDOW) await sleep(1);
      inFlight += 1;
      publisher.publish(m.topic, m.payload, { qos: 1 }, () => (inFlight -= 1));
    }
    await waitFor('every PUBACK', () => inFlight === 0, 120_000, 50);
    await publisher.endAsync();

    // Everything the subscriber could receive was received and either enqueued or rejected.
    const lampStates = delivered.filter((m) => m.topic.includes('/lamp/changed')).length;
    let receivedSoFar = 0;
    await waitFor(
      'the subscriber to receive every delivered message',
      async () =>
        (receivedSoFar = sum(await scrape(ports.subscriber, 'lampi_messages_received_total', 'kind'))) >=
        delivered.length + ALL_LAMPS.length,
      300_000,
      500,
    ).catch(async (err: unknown) => {
      const byKind = await scrape(ports.subscriber, 'lampi_messages_received_total', 'kind');
      const byReason = await scrape(ports.subscriber, 'lampi_messages_rejected_total', 'reason');
      throw new Error(
        `${String(err)}: received ${receivedSoFar} of ${delivered.length + ALL_LAMPS.length} (${JSON.stringify(Object.fromEntries(byKind))}); ` +
          `rejected ${JSON.stringify(Object.fromEntries(byReason))}; subscriber log tail:\n${subscriber.output().slice(-3000)}`,
      );
    });
    const expectedKeys = new Set(valid.map((m) => m.key!));
    await waitFor(
      'every valid lamp state at Keen',
      () =>
        keen.eventsIn('devicestate').filter((e) => expectedKeys.has(`${e.device_id}:${(e.state as { seq?: unknown }).seq}`)).length >=
        expectedKeys.size,
      180_000,
      500,
    );
    const unknownDevices = all.filter((m) => m.expect === 'unknown_device').length;
    // A lamp state from an unknown lamp waits for its activation (about 25 s of retries) before it is rejected.
    await waitFor(
      'the worker to reject the lamp states of unknown lamps',
      async () => ((await scrape(ports.worker, 'lampi_messages_rejected_total', 'reason')).get('unknown_device') ?? 0) >= unknownDevices,
      180_000,
      500,
    );
    await sleep(2000);
    clearInterval(sampler);

    // -- rejected with the intended reason, counted by reason, by the process whose reason it is --
    const byStage = (reason: string) => (LAMP_STATE_REJECT_REASONS as readonly string[]).includes(reason);
    const wanted = new Map<string, number>();
    const wantedByWorker = new Map<string, number>();
    for (const m of invalid) {
      if (m.expect === 'unknown_device') continue;
      const counts = byStage(m.expect) ? wantedByWorker : wanted;
      counts.set(m.expect, (counts.get(m.expect) ?? 0) + 1);
    }
    await waitFor(
      'the worker to reject every lamp state that is no lamp state',
      async () => {
        const counted = await scrape(ports.worker, 'lampi_messages_rejected_total', 'reason');
        return [...wantedByWorker].every(([reason, n]) => (counted.get(reason) ?? 0) >= n);
      },
      60_000,
      500,
    );
    const rejected = await scrape(ports.subscriber, 'lampi_messages_rejected_total', 'reason');
    const received = await scrape(ports.subscriber, 'lampi_messages_received_total', 'kind');
    const workerRejected = await scrape(ports.worker, 'lampi_messages_rejected_total', 'reason');
    process.stdout.write(
      `[hostile] subscriber rejected by reason: ${JSON.stringify(Object.fromEntries(rejected))}\n[hostile] ` +
        `received by kind: ${JSON.stringify(Object.fromEntries(received))}\n[hostile] worker rejected: ` +
        `${JSON.stringify(Object.fromEntries(workerRejected))}\n`,
    );
    expect(Object.fromEntries([...rejected].filter(([, n]) => n > 0))).toEqual(Object.fromEntries(wanted));
    expect(received.get('invalid')).toBe(sum(wanted));
    expect(Object.fromEntries([...workerRejected].filter(([, n]) => n > 0))).toEqual(
      Object.fromEntries([...wantedByWorker, ['unknown_device', unknownDevices]]),
    );
    expect(Object.keys(Object.fromEntries(rejected)).every((reason) => (REJECT_REASONS as readonly string[]).includes(reason))).toBe(true);

    // The rejection log (the newest 10,000 are kept): each record with its reason and detail.
    const log = new Queue<RejectedMessageJob>(queueKey(QUEUE_NAMES.rejected), { connection: { url: services.redis }, prefix });
    const records = await log.getJobs(['failed', 'waiting', 'active', 'delayed', 'completed']);
    const failedCount = await log.getFailedCount();
    await log.obliterate({ force: true });
    await log.close();
    expect(failedCount).toBeGreaterThanOrEqual(Math.min(10_000, invalid.length) * 0.95);
    for (const record of records) {
      expect(REJECT_REASONS).toContain(record.data.reason);
      expect(record.data.detail.length).toBeGreaterThan(0);
      expect(record.data.topic.length).toBeLessThanOrEqual(256);
      expect(Buffer.from(record.data.payloadHead!, 'base64').length).toBeLessThanOrEqual(512);
    }

    // -- delivered once, and only what a lamp may say ------------------------------------------
    const states = keen.eventsIn('devicestate');
    const counts = new Map<string, number>();
    for (const event of states)
      counts.set(
        `${event.device_id}:${(event.state as { seq?: unknown }).seq}`,
        (counts.get(`${event.device_id}:${(event.state as { seq?: unknown }).seq}`) ?? 0) + 1,
      );
    expect([...expectedKeys].filter((key) => counts.get(key) !== 1)).toEqual([]);
    expect(states.length).toBe(expectedKeys.size);
    const allEvents: StoredEvent[] = [...keen.events.values()].flat();
    for (const event of allEvents) {
      expect(ALL_LAMPS).toContain(event.device_id);
      expect(Object.keys(event.keen).sort()).toEqual(['addons', 'created_at', 'id', 'timestamp', 'uniqueness_token']);
      expect(event.keen.uniqueness_token).toMatch(/^[0-9a-f]{32}-(activations|devicemonitoring|devicestate)$/);
      expect(Object.getPrototypeOf(event)).toBe(Object.prototype);
    }
    for (const event of states) expect(Object.keys(event).sort()).toEqual(['device_id', 'keen', 'state']);
    // The sneaky keys arrive as plain data, renamed where Keen would refuse them.
    const sneaky = states.find(
      (e) =>
        Object.hasOwn(e.state as object, '__proto__') &&
        (e.state as Record<string, { polluted?: string }>)['__proto__']?.polluted === 'yes',
    );
    expect(sneaky).toBeDefined();
    expect(Object.prototype.hasOwnProperty.call({}, 'polluted')).toBe(false);
    expect(keen.requests.every((r) => r.status === 200)).toBe(true);
    const deadLetters = new Queue(queueKey(QUEUE_NAMES.deadLetter), { connection: { url: services.redis }, prefix });
    expect(await deadLetters.getJobCountByTypes('waiting', 'active', 'delayed', 'failed', 'completed')).toBe(0);
    await deadLetters.close();

    // -- no crash, memory roughly flat -------------------------------------------------------
    expect(subscriber.child.exitCode).toBeNull();
    expect(worker.child.exitCode).toBeNull();
    for (const proc of [subscriber, worker]) expect(proc.output()).not.toMatch(/uncaught|unhandled|FATAL|heap out of memory/i);
    const report = (name: 'subscriber' | 'worker') => {
      const samples = memory[name];
      const peak = Math.max(...samples);
      const end = samples.slice(-4).reduce((a, b) => a + b, 0) / Math.min(4, samples.length);
      process.stdout.write(
        `[hostile] ${name} RSS: ${(baseline[name] / MB).toFixed(0)} MB before, peak ` +
          `${(peak / MB).toFixed(0)} MB, ${(end / MB).toFixed(0)} MB at the end (${samples.length} samples)\n`,
      );
      return { peak, end };
    };
    for (const name of ['subscriber', 'worker'] as const) {
      const { peak, end } = report(name);
      // Roughly flat: the whole corpus (with 1 MiB payloads) may cost some heap, not a leak's worth.
      expect(peak).toBeLessThan(baseline[name] + 400 * MB);
      expect(end).toBeLessThan(baseline[name] + 250 * MB);
    }
    expect(lampStates).toBeGreaterThan(0);
  }, 600_000);
});
