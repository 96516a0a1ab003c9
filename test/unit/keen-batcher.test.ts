/**
 * KeenBatcher with the real KeenClient against the fake Keen server: how submits are grouped
 * into bulk requests, and how each submit settles with its own event's outcome.
 */
import { Writable } from 'node:stream';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { buildKeenEvent, type KeenEvent } from '../../src/shared/events.js';
import { createLogger } from '../../src/shared/logger.js';
import { createMetrics } from '../../src/shared/metrics.js';
import { KeenEventRejected, KeenRequestError } from '../../src/shared/keen/errors.js';
import { KeenBatcher } from '../../src/worker/keen/batcher.js';
import { KeenClient } from '../../src/worker/keen/client.js';
import { KeenDeliveryPause } from '../../src/worker/keen/pause.js';
import { startFakeKeen, type FakeKeen } from '../support/fake-keen.js';

const PROJECT = 'proj_batcher_test';
const WRITE_KEY = 'wk-batcher';

let keen: FakeKeen;
let client: KeenClient;
let seq = 0;
const batchers: KeenBatcher[] = [];

const event = (props: Record<string, unknown> = {}): KeenEvent =>
  buildKeenEvent({ device_id: 'b827eb000002', ...props }, new Date().toISOString(), `b-${++seq}`);

function batcher(options: Partial<ConstructorParameters<typeof KeenBatcher>[0]> = {}): KeenBatcher {
  const b = new KeenBatcher({ client, maxEvents: 100, lingerMs: 20, ...options });
  batchers.push(b);
  return b;
}

/** Requests made while `run` runs. */
async function requestsDuring(run: () => Promise<unknown>) {
  const before = keen.requests.length;
  await run();
  return keen.requests.slice(before);
}

beforeAll(async () => {
  keen = await startFakeKeen({ projectId: PROJECT, writeKey: WRITE_KEY });
  client = new KeenClient({ apiUrl: keen.url, projectId: PROJECT, writeKey: WRITE_KEY, timeoutMs: 2000 });
});
afterEach(async () => {
  keen.clearFaults();
  await Promise.all(batchers.splice(0).map((b) => b.close()));
});
afterAll(() => keen.close());

describe('KeenBatcher', () => {
  it('groups concurrent submits into bulk requests of at most maxEvents', async () => {
    const b = batcher({ maxEvents: 100, lingerMs: 50 });
    const events = Array.from({ length: 250 }, () => event());
    const requests = await requestsDuring(() => Promise.all(events.map((e, i) => b.submit(i % 2 ? 'devicestate' : 'activations', e))));
    expect(requests.map((r) => r.eventCount)).toEqual([100, 100, 50]);
    const stored = new Set([...keen.tokens('devicestate'), ...keen.tokens('activations')]);
    for (const e of events) expect(stored.has(e.keen.uniqueness_token)).toBe(true);
  });

  it('sends a partial batch after lingerMs', async () => {
    const b = batcher({ maxEvents: 100, lingerMs: 30 });
    const requests = await requestsDuring(() =>
      Promise.all([b.submit('devicestate', event()), b.submit('devicestate', event()), b.submit('activations', event())]),
    );
    expect(requests.map((r) => r.eventCount)).toEqual([3]);
  });

  it('keeps each request under maxBytes', async () => {
    const b = batcher({ maxEvents: 1000, maxBytes: 5000, lingerMs: 20 });
    const padding = 'x'.repeat(900);
    const events = Array.from({ length: 20 }, () => event({ padding }));
    const size = Buffer.byteLength(JSON.stringify(events[0]));
    const requests = await requestsDuring(() => Promise.all(events.map((e) => b.submit('devicestate', e))));
    const perRequest = Math.floor(5000 / (size + 1));
    expect(requests.length).toBeGreaterThanOrEqual(Math.ceil(20 / perRequest));
    for (const r of requests) expect(r.eventCount).toBeLessThanOrEqual(perRequest);
    expect(requests.reduce((n, r) => n + r.eventCount, 0)).toBe(20);
  });

  it('refuses an event over maxEventBytes without a request', async () => {
    const b = batcher();
    const huge = event({ blob: 'y'.repeat(900_000) });
    let err: unknown;
    const requests = await requestsDuring(() => b.submit('devicestate', huge).catch((e: unknown) => (err = e)));
    expect(requests).toHaveLength(0);
    expect(err).toBeInstanceOf(KeenEventRejected);
    expect(err).toMatchObject({ errorName: 'EventTooLargeError' });
  });

  it('fails only the events Keen refused, each with its own error', async () => {
    const b = batcher();
    keen.rejectEvents((_collection, e) => (e.device_id === 'refused' ? 'InvalidPropertyValueError' : undefined));
    const good = [event(), event()];
    const refused = event({ device_id: 'refused' });
    const badName = event({ state: { 'a.b': 1 } });
    const outcomes = await Promise.allSettled([good[0]!, refused, badName, good[1]!].map((e) => b.submit('devicestate', e)));
    expect(outcomes.map((o) => o.status)).toEqual(['fulfilled', 'rejected', 'rejected', 'fulfilled']);
    const reasons = outcomes.filter((o): o is PromiseRejectedResult => o.status === 'rejected').map((o) => o.reason as KeenEventRejected);
    expect(reasons[0]).toBeInstanceOf(KeenEventRejected);
    expect(reasons[0]!.errorName).toBe('InvalidPropertyValueError');
    expect(reasons[1]!.errorName).toBe('InvalidPropertyNameError');
    expect(keen.tokens('devicestate')).toEqual(expect.arrayContaining(good.map((e) => e.keen.uniqueness_token)));
  });

  it('submitAll: one outcome per event, in order, with those of other submits in the same requests', async () => {
    const b = batcher({ maxEvents: 100, lingerMs: 30 });
    keen.rejectEvents((_collection, e) => (e.device_id === 'refused' ? 'InvalidPropertyValueError' : undefined));
    const job = [event(), event({ device_id: 'refused' }), event({ blob: 'y'.repeat(900_000) }), event()];
    const alone = event();
    const requests = await requestsDuring(async () => {
      const [outcomes] = await Promise.all([
        b.submitAll([...job.map((e) => ({ collection: 'devicestate' as const, event: e })), { collection: 'activations', event: event() }]),
        b.submit('devicestate', alone),
      ]);
      expect(outcomes.map((o) => o.status)).toEqual(['fulfilled', 'rejected', 'rejected', 'fulfilled', 'fulfilled']);
      expect((outcomes[1] as PromiseRejectedResult).reason).toMatchObject({ errorName: 'InvalidPropertyValueError' });
      // Too large for Keen: refused here, without a request.
      expect((outcomes[2] as PromiseRejectedResult).reason).toMatchObject({ errorName: 'EventTooLargeError' });
    });
    expect(requests.map((r) => r.eventCount)).toEqual([5]);
    expect(keen.tokens('devicestate')).toEqual(expect.arrayContaining([job[0]!, job[3]!, alone].map((e) => e.keen.uniqueness_token)));
    expect(await b.submitAll([])).toEqual([]);
  });

  it('submitAll: a failed request fails each of its events with that request’s error, and never rejects', async () => {
    const b = batcher();
    keen.respondWith({ status: 503, body: { message: 'down', error_code: 'ServiceUnavailableError' } }, { times: 1 });
    const outcomes = await b.submitAll([event(), event()].map((e) => ({ collection: 'devicestate' as const, event: e })));
    expect(outcomes.map((o) => o.status)).toEqual(['rejected', 'rejected']);
    const [a, c] = outcomes.map((o) => (o as PromiseRejectedResult).reason as KeenRequestError);
    expect(a).toMatchObject({ status: 503, retryable: true });
    expect(a).toBe(c);
  });

  it('fails every event of a failed request with that request’s error', async () => {
    const b = batcher();
    keen.respondWith({ status: 503, body: { message: 'down', error_code: 'ServiceUnavailableError' } }, { times: 1 });
    const outcomes = await Promise.allSettled([b.submit('devicestate', event()), b.submit('activations', event())]);
    expect(outcomes.map((o) => o.status)).toEqual(['rejected', 'rejected']);
    const [a, c] = outcomes.map((o) => (o as PromiseRejectedResult).reason as KeenRequestError);
    expect(a).toBeInstanceOf(KeenRequestError);
    expect(a).toBe(c);
    expect(a).toMatchObject({ status: 503, retryable: true });
  });

  it('after a 429 sends nothing until Retry-After has passed, refusing submits with the 429', async () => {
    const b = batcher({ lingerMs: 0 });
    keen.respondWith({ status: 429, body: 'Too Many Requests', headers: { 'retry-after': '1' } }, { times: 1 });
    const first = await b.submit('devicestate', event()).catch((e: unknown) => e);
    expect(first).toMatchObject({ status: 429, retryAfterMs: 1000 });
    let second: unknown;
    const requests = await requestsDuring(() => b.submit('devicestate', event()).catch((e: unknown) => (second = e)));
    expect(requests).toHaveLength(0);
    expect(second).toBeInstanceOf(KeenRequestError);
    expect((second as KeenRequestError).status).toBe(429);
    expect((second as KeenRequestError).retryAfterMs).toBeGreaterThan(0);
    expect((second as KeenRequestError).retryAfterMs).toBeLessThanOrEqual(1000);
  });

  it('a 401 pauses sending until the probe interval has passed, logs once a minute, and the first accepted request resumes', async () => {
    let now = 1_000_000;
    let output = '';
    const sink = new Writable({
      write(chunk: Buffer, _enc, done) {
        output += chunk.toString();
        done();
      },
    });
    const lines = (text: string) => output.split('\n').filter((line) => line.includes(text));
    const metrics = createMetrics('pause-test');
    const gauge = async () => {
      const { values } = await metrics.registry.getSingleMetric('lampi_keen_delivery_paused')!.get();
      return values.map((v) => [v.labels.reason, v.value]);
    };
    const logger = createLogger('pause-test', 'info', sink);
    const pause = new KeenDeliveryPause({ probeIntervalMs: 30_000, logger, metrics, now: () => now });
    const b = batcher({ lingerMs: 0, pause });
    expect(await gauge()).toEqual([
      ['unauthorized', 0],
      ['account_blocked', 0],
      ['forbidden', 0],
    ]);
    expect(pause.readiness()).toBe(true);

    keen.respondWith({ status: 401, body: { message: 'The API key is invalid for this project.', error_code: 'InvalidApiKeyError' } });
    const first = await b.submit('devicestate', event()).catch((e: unknown) => e);
    expect(first).toMatchObject({ status: 401, code: 'InvalidApiKeyError', deploymentFault: 'unauthorized', retryAfterMs: 30_000 });
    expect(pause.fault).toBe('unauthorized');
    expect(pause.readiness()).toEqual(expect.stringContaining('KEEN_WRITE_KEY'));
    expect(await gauge()).toEqual([
      ['unauthorized', 1],
      ['account_blocked', 0],
      ['forbidden', 0],
    ]);
    expect(lines('Keen delivery is paused')).toHaveLength(1);

    // Before the probe: refused without a request, saying how long is left.
    now += 29_999;
    let held: unknown;
    expect(await requestsDuring(() => b.submit('devicestate', event()).catch((e: unknown) => (held = e)))).toHaveLength(0);
    expect(held).toMatchObject({ status: 401, deploymentFault: 'unauthorized', retryAfterMs: 1 });

    // The probe is refused too: still paused, and no second line within the minute.
    now += 1;
    expect(await requestsDuring(() => b.submit('devicestate', event()).catch(() => {}))).toHaveLength(1);
    expect(pause.fault).toBe('unauthorized');
    expect(lines('Keen delivery is paused')).toHaveLength(1);
    now += 60_000;
    await b.submit('devicestate', event()).catch(() => {});
    expect(lines('Keen delivery is paused')).toHaveLength(2);
    const line = JSON.parse(lines('Keen delivery is paused')[0]!) as Record<string, unknown>;
    expect(line).toMatchObject({ level: 'error', reason: 'unauthorized', status: 401, code: 'InvalidApiKeyError' });

    keen.clearFaults();
    now += 30_000;
    const resumed = event();
    await b.submit('devicestate', resumed);
    expect(keen.tokens('devicestate')).toContain(resumed.keen.uniqueness_token);
    expect(pause.fault).toBeUndefined();
    expect(pause.readiness()).toBe(true);
    expect(await gauge()).toEqual([
      ['unauthorized', 0],
      ['account_blocked', 0],
      ['forbidden', 0],
    ]);
    expect(lines('Keen delivery resumed')).toHaveLength(1);
    expect(output).not.toContain(WRITE_KEY);
  });

  it('close() sends what is pending, waits for it, and refuses later submits', async () => {
    const b = batcher({ lingerMs: 60_000 });
    let delivered = false;
    const pending = b.submit('devicestate', event()).then(() => (delivered = true));
    expect(b.stats.pending).toBe(1);
    await b.close();
    expect(delivered).toBe(true);
    await pending;
    await expect(b.submit('devicestate', event())).rejects.toThrow(/closed/);
  });

  it('records request and event metrics', async () => {
    const metrics = createMetrics('batcher-test');
    const b = batcher({ metrics });
    keen.rejectEvents((_c, e) => (e.device_id === 'refused' ? 'InvalidPropertyValueError' : undefined));
    await Promise.allSettled([b.submit('devicestate', event()), b.submit('devicestate', event({ device_id: 'refused' }))]);
    const values = async (name: string) => (await metrics.registry.getSingleMetric(name)!.get()).values;
    expect(await values('lampi_keen_events_total')).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ labels: { collection: 'devicestate', outcome: 'accepted' }, value: 1 }),
        expect.objectContaining({ labels: { collection: 'devicestate', outcome: 'rejected' }, value: 1 }),
      ]),
    );
    expect(await values('lampi_keen_responses_total')).toEqual([expect.objectContaining({ labels: { status: '200' }, value: 1 })]);
    const perRequest = await values('lampi_keen_events_per_request');
    expect(perRequest.find((v) => (v as { metricName?: string }).metricName === 'lampi_keen_events_per_request_sum')?.value).toBe(2);
  });
});
