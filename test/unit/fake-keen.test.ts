/**
 * The fake Keen server that every pipeline test trusts: it must speak Keen's wire format,
 * apply Keen's rules and dedupe by uniqueness token, or those tests prove nothing.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { checkEvent } from '../../src/shared/keen/protocol.js';
import { startFakeKeen, type FakeKeen } from '../support/fake-keen.js';

const PROJECT = 'proj_fake';
const KEY = 'wk-fake';
let keen: FakeKeen;

const post = (path: string, body: unknown, key: string | null = KEY) =>
  fetch(`${keen.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(key === null ? {} : { authorization: key }) },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
const ev = (token: string, extra: Record<string, unknown> = {}) => ({
  device_id: 'abc',
  ...extra,
  keen: { timestamp: '2026-11-05T10:00:00.000Z', uniqueness_token: token },
});

beforeAll(async () => {
  keen = await startFakeKeen({ projectId: PROJECT, writeKey: KEY });
});
afterEach(() => keen.clearFaults());
afterAll(() => keen.close());

describe('fake Keen wire format', () => {
  it('single event: 201 {"created":true}, stored with keen.id and created_at', async () => {
    const res = await post(`/3.0/projects/${PROJECT}/events/devicestate`, ev('s-1'));
    expect(res.status).toBe(201);
    expect(await res.json()).toEqual({ created: true });
    const stored = keen.eventsIn('devicestate').find((e) => e.keen.uniqueness_token === 's-1');
    expect(stored).toMatchObject({
      device_id: 'abc',
      keen: { timestamp: '2026-11-05T10:00:00.000Z', id: expect.any(String), created_at: expect.any(String) },
    });
  });

  it('single event: invalid names are a 400 {message, error_code}', async () => {
    const res = await post(`/3.0/projects/${PROJECT}/events/devicestate`, ev('s-2', { $bad: 1 }));
    expect(res.status).toBe(400);
    expect(await res.json()).toEqual({ message: expect.any(String), error_code: 'InvalidPropertyNameError' });
    const coll = await post(`/3.0/projects/${PROJECT}/events/${'c'.repeat(65)}`, ev('s-3'));
    expect(coll.status).toBe(400);
    expect(await coll.json()).toMatchObject({ error_code: 'InvalidCollectionNameError' });
  });

  it('bulk: 200 with per-event results in order', async () => {
    const res = await post(`/3.0/projects/${PROJECT}/events`, {
      devicestate: [ev('b-1'), { ...ev('b-2'), keen: 5 }, ev('b-3')],
      activations: [ev('b-4')],
    });
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({
      devicestate: [
        { success: true },
        { success: false, error: { name: 'InvalidPropertyValueError', description: expect.any(String) } },
        { success: true },
      ],
      activations: [{ success: true }],
    });
  });

  it("refuses each event Keen's rules refuse (src/shared/keen/protocol.ts), with that rule's error, storing the rest", async () => {
    const refused = [
      ev('p-1', { 'a.b': 1 }),
      { ...ev('p-2'), keen: { uniqueness_token: 't'.repeat(65) } },
      { ...ev('p-3'), keen: { timestamp: '2026-02-30T00:00:00Z' } },
      [1, 2],
    ];
    const res = await post(`/3.0/projects/${PROJECT}/events`, { devicestate: [...refused, ev('p-5')] });
    const expected = refused.map((event) => {
      const checked = checkEvent(event);
      if (checked.ok) throw new Error(`the protocol accepts ${JSON.stringify(event)}`);
      return { success: false, error: checked.error };
    });
    expect(await res.json()).toEqual({ devicestate: [...expected, { success: true }] });
    expect(keen.tokens('devicestate').filter((token) => token.startsWith('p-'))).toEqual(['p-5']);
  });

  it('keeps the first event per uniqueness token and collection', async () => {
    const dropped = keen.duplicatesDropped;
    await post(`/3.0/projects/${PROJECT}/events`, { devicestate: [ev('d-1', { n: 1 }), ev('d-1', { n: 2 })], activations: [ev('d-1')] });
    const res = await post(`/3.0/projects/${PROJECT}/events`, { devicestate: [ev('d-1', { n: 3 })] });
    expect(await res.json()).toEqual({ devicestate: [{ success: true }] });
    expect(
      keen
        .eventsIn('devicestate')
        .filter((e) => e.keen.uniqueness_token === 'd-1')
        .map((e) => e.n),
    ).toEqual([1]);
    expect(keen.tokens('activations')).toContain('d-1');
    expect(keen.duplicatesDropped - dropped).toBe(2);
  });

  it('401 for a wrong or missing key, 404 for another project, 400 for bad JSON', async () => {
    for (const key of ['nope', null]) {
      const res = await post(`/3.0/projects/${PROJECT}/events`, { devicestate: [ev('a-1')] }, key);
      expect(res.status).toBe(401);
      expect(await res.json()).toMatchObject({ error_code: 'InvalidApiKeyError' });
    }
    expect((await post(`/3.0/projects/other/events`, { devicestate: [ev('a-2')] })).status).toBe(404);
    expect((await post(`/3.0/projects/${PROJECT}/events`, '{not json')).status).toBe(400);
    expect(keen.tokens('devicestate')).not.toContain('a-1');
  });

  it('applies a fault to exactly the next N requests, logging each', async () => {
    keen.respondWith({ status: 429, body: 'Too Many Requests', headers: { 'retry-after': '3' } }, { times: 2 });
    const statuses: number[] = [];
    for (let i = 0; i < 3; i++) statuses.push((await post(`/3.0/projects/${PROJECT}/events`, { devicestate: [ev(`f-${i}`)] })).status);
    expect(statuses).toEqual([429, 429, 200]);
    expect(keen.requests.slice(-3).map((r) => [r.status, r.fault, r.eventCount])).toEqual([
      [429, 'respond', 1],
      [429, 'respond', 1],
      [200, undefined, 1],
    ]);
    expect(keen.tokens('devicestate')).not.toContain('f-0');
  });

  it('a reset after store records the events but answers nothing', async () => {
    keen.resetConnections({ times: 1, afterStore: true });
    await expect(post(`/3.0/projects/${PROJECT}/events`, { devicestate: [ev('r-1')] })).rejects.toThrow();
    expect(keen.tokens('devicestate')).toContain('r-1');
  });
});
