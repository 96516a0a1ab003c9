/**
 * Documents why keen-tracking (5.0.1, Keen's own SDK) is not our transport: a 429 with a
 * plain-text body — what a rate-limiting proxy typically sends — resolves `undefined` instead of
 * rejecting, so a caller takes the lost event for delivered. Our KeenClient rejects with a
 * retryable error on the very same response.
 *
 * Should a future keen-tracking release fix this, the first test fails: then revisit the
 * decision to send through our own KeenClient rather than keen-tracking.
 */
import { createRequire } from 'node:module';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildKeenEvent } from '../../src/shared/events.js';
import { KeenRequestError } from '../../src/shared/keen/errors.js';
import { KeenClient } from '../../src/worker/keen/client.js';
import { startFakeKeen, type FakeKeen } from '../support/fake-keen.js';

/** keen-tracking ships no types; this is the part of its API the test uses. */
interface KeenTrackingClient {
  recordEvent(collection: string, event: object): Promise<unknown>;
}
type KeenTrackingConstructor = new (config: {
  projectId: string;
  writeKey: string;
  protocol: 'http' | 'https';
  host: string;
  nodeRequestConfig?: { port: number };
}) => KeenTrackingClient;
const KeenTracking = createRequire(import.meta.url)('keen-tracking') as KeenTrackingConstructor;

const PROJECT = 'proj_tracking_defects';
const WRITE_KEY = 'wk-tracking';
let keen: FakeKeen;

beforeAll(async () => {
  keen = await startFakeKeen({ projectId: PROJECT, writeKey: WRITE_KEY });
});
afterAll(() => keen.close());

const rateLimited = () => keen.respondWith({ status: 429, body: 'Too Many Requests', headers: { 'retry-after': '30' } }, { times: 1 });
const event = (token: string) => buildKeenEvent({ device_id: 'b827eb0000ff' }, new Date().toISOString(), token);

describe('keen-tracking 5.0.1 defect', () => {
  it('resolves undefined on a 429 with a plain-text body: the event is lost silently', async () => {
    const port = Number(new URL(keen.url).port);
    const tracking = new KeenTracking({
      projectId: PROJECT,
      writeKey: WRITE_KEY,
      protocol: 'http',
      host: '127.0.0.1',
      nodeRequestConfig: { port },
    });

    // Sanity: the same client does record an event when Keen accepts it.
    await expect(tracking.recordEvent('devicestate', event('ok-1'))).resolves.toEqual({ created: true });
    expect(keen.tokens('devicestate')).toContain('ok-1');

    rateLimited();
    const before = keen.requests.length;
    await expect(tracking.recordEvent('devicestate', event('lost-1'))).resolves.toBeUndefined();
    // One request, answered 429, no retry, nothing stored — and no error for the caller.
    expect(keen.requests.slice(before).map((r) => r.status)).toEqual([429]);
    expect(keen.tokens('devicestate')).not.toContain('lost-1');
  });

  it('our KeenClient rejects the same response, retryably, with the Retry-After', async () => {
    const client = new KeenClient({ apiUrl: keen.url, projectId: PROJECT, writeKey: WRITE_KEY, timeoutMs: 2000 });
    rateLimited();
    const err = await client.recordEvents({ devicestate: [event('lost-2')] }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(KeenRequestError);
    expect(err).toMatchObject({ status: 429, retryable: true, retryAfterMs: 30_000 });
  });
});
