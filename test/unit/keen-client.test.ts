/**
 * KeenClient against the fake Keen server: what counts as success, and how every failure is
 * classified (retryable or not, status, code, Retry-After), without ever leaking the write key.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { buildKeenEvent, type KeenEvent } from '../../src/shared/events.js';
import { KeenRequestError } from '../../src/shared/keen/errors.js';
import { KeenClient } from '../../src/worker/keen/client.js';
import { startFakeKeen, type FakeKeen } from '../support/fake-keen.js';
import { freePort } from '../support/processes.js';

const PROJECT = 'proj_client_test';
const WRITE_KEY = 'wk-secret-0123456789abcdef';

let keen: FakeKeen;
let client: KeenClient;

const event = (token: string, props: Record<string, unknown> = {}): KeenEvent =>
  buildKeenEvent({ device_id: 'b827eb000001', ...props }, new Date().toISOString(), token);

async function failure(promise: Promise<unknown>): Promise<KeenRequestError> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(KeenRequestError);
  const error = err as KeenRequestError;
  expect(error.message).not.toContain(WRITE_KEY);
  return error;
}

beforeAll(async () => {
  keen = await startFakeKeen({ projectId: PROJECT, writeKey: WRITE_KEY });
  client = new KeenClient({ apiUrl: keen.url, projectId: PROJECT, writeKey: WRITE_KEY, timeoutMs: 2000 });
});
afterAll(() => keen.close());
afterEach(() => keen.clearFaults());

describe('KeenClient.recordEvents', () => {
  it('sends one bulk request and returns a result per event, in order', async () => {
    const before = keen.requests.length;
    const results = await client.recordEvents({
      devicestate: [event('c-1'), event('c-2', { bad: { 'a.b': 1 } }), event('c-3')],
      activations: [event('c-4')],
    });
    expect(results).toEqual({
      devicestate: [
        { success: true },
        { success: false, error: { name: 'InvalidPropertyNameError', description: expect.stringContaining('a.b') } },
        { success: true },
      ],
      activations: [{ success: true }],
    });
    expect(keen.requests.length - before).toBe(1);
    expect(keen.requests.at(-1)).toMatchObject({ kind: 'bulk', eventCount: 4, status: 200 });
    expect(keen.tokens('devicestate')).toEqual(expect.arrayContaining(['c-1', 'c-3']));
    expect(keen.tokens('devicestate')).not.toContain('c-2');
    expect(keen.tokens('activations')).toContain('c-4');
  });

  it('reports Keen validation as per-event errors: collection name, keen envelope', async () => {
    const results = await client.recordEvents({
      $internal: [event('v-1')],
      devicestate: [{ ...event('v-2'), keen: 'not an object' } as unknown as KeenEvent],
    });
    expect(results.$internal?.[0]).toMatchObject({ success: false, error: { name: 'InvalidCollectionNameError' } });
    expect(results.devicestate?.[0]).toMatchObject({ success: false, error: { name: 'InvalidPropertyValueError' } });
  });

  it('accepts an API URL with a trailing slash', async () => {
    const slashed = new KeenClient({ apiUrl: `${keen.url}/`, projectId: PROJECT, writeKey: WRITE_KEY, timeoutMs: 2000 });
    await expect(slashed.recordEvents({ devicestate: [event('slash-1')] })).resolves.toEqual({ devicestate: [{ success: true }] });
    expect(keen.requests.at(-1)?.path).toBe(`/3.0/projects/${PROJECT}/events`);
  });

  it('a wrong write key is a 401 deployment fault that names Keen’s error and not the key', async () => {
    const wrong = new KeenClient({ apiUrl: keen.url, projectId: PROJECT, writeKey: 'not-the-key', timeoutMs: 2000 });
    const err = await failure(wrong.recordEvents({ devicestate: [event('k-1')] }));
    expect(err).toMatchObject({ status: 401, code: 'InvalidApiKeyError', retryable: true, deploymentFault: 'unauthorized' });
    expect(err.message).not.toContain('not-the-key');
    expect(keen.tokens('devicestate')).not.toContain('k-1');
  });

  it.each([
    [402, 'account_blocked'],
    [403, 'forbidden'],
  ])('%i is a deployment fault (%s): retryable once the account or key is put right', async (status, fault) => {
    keen.respondWith({ status, body: { message: `refused with ${status}`, error_code: 'SomeKeenError' } }, { times: 1 });
    const err = await failure(client.recordEvents({ devicestate: [event(`d-${status}`)] }));
    expect(err).toMatchObject({ status, code: 'SomeKeenError', retryable: true, deploymentFault: fault });
  });

  it.each([400, 404, 413])('%i is permanent', async (status) => {
    keen.respondWith({ status, body: { message: `refused with ${status}`, error_code: 'SomeKeenError' } }, { times: 1 });
    const err = await failure(client.recordEvents({ devicestate: [event(`p-${status}`)] }));
    expect(err).toMatchObject({ status, code: 'SomeKeenError', retryable: false });
    expect(err.deploymentFault).toBeUndefined();
    expect(err.message).toContain(`refused with ${status}`);
  });

  it.each([500, 502, 503, 504, 408])('%i is retryable', async (status) => {
    keen.respondWith({ status, body: { message: 'try later', error_code: 'ServiceUnavailableError' } }, { times: 1 });
    const err = await failure(client.recordEvents({ devicestate: [event(`r-${status}`)] }));
    expect(err).toMatchObject({ status, code: 'ServiceUnavailableError', retryable: true });
    expect(err.message).toContain('try later');
  });

  it('a 503 with an HTML body from a proxy is retryable and quotes the body', async () => {
    keen.respondWith(
      { status: 503, body: '<html><body>upstream unavailable</body></html>', headers: { 'content-type': 'text/html' } },
      { times: 1 },
    );
    const err = await failure(client.recordEvents({ devicestate: [event('html-1')] }));
    expect(err).toMatchObject({ status: 503, retryable: true });
    expect(err.code).toBeUndefined();
    expect(err.message).toContain('upstream unavailable');
  });

  it('a 429 with a plain-text body is retryable and carries Retry-After in seconds', async () => {
    keen.respondWith({ status: 429, body: 'Too Many Requests', headers: { 'retry-after': '7' } }, { times: 1 });
    const err = await failure(client.recordEvents({ devicestate: [event('rl-1')] }));
    expect(err).toMatchObject({ status: 429, retryable: true, retryAfterMs: 7000 });
  });

  it('a 429 with an HTTP-date Retry-After', async () => {
    const at = new Date(Date.now() + 30_000);
    keen.respondWith(
      { status: 429, body: { message: 'slow down', error_code: 'RateLimitedError' }, headers: { 'retry-after': at.toUTCString() } },
      { times: 1 },
    );
    const err = await failure(client.recordEvents({ devicestate: [event('rl-2')] }));
    expect(err).toMatchObject({ status: 429, code: 'RateLimitedError', retryable: true });
    // toUTCString drops milliseconds; the wait is whatever is left until that second.
    expect(err.retryAfterMs).toBeGreaterThan(20_000);
    expect(err.retryAfterMs).toBeLessThanOrEqual(30_000);
  });

  it('a 429 without Retry-After has no retryAfterMs', async () => {
    keen.respondWith({ status: 429, body: '' }, { times: 1 });
    const err = await failure(client.recordEvents({ devicestate: [event('rl-3')] }));
    expect(err).toMatchObject({ status: 429, retryable: true });
    expect(err.retryAfterMs).toBeUndefined();
  });

  it('a redirect is not followed and needs a person', async () => {
    keen.respondWith({ status: 301, body: '', headers: { location: 'http://elsewhere.invalid/' } }, { times: 1 });
    const err = await failure(client.recordEvents({ devicestate: [event('redir-1')] }));
    expect(err).toMatchObject({ status: 301, retryable: false });
  });

  it.each([
    ['a body that is not JSON', 'OK'],
    ['an empty body', ''],
    ['a JSON array', '[]'],
    ['results for another collection', JSON.stringify({ other: [{ success: true }] })],
    ['fewer results than events', JSON.stringify({ devicestate: [{ success: true }] })],
    ['more results than events', JSON.stringify({ devicestate: [{ success: true }, { success: true }, { success: true }] })],
    ['an unreadable result', JSON.stringify({ devicestate: [{ success: true }, { ok: 1 }] })],
    ['a failure without an error name', JSON.stringify({ devicestate: [{ success: true }, { success: false }] })],
  ])('a 200 with %s is a retryable failure, never success', async (_what, body) => {
    keen.respondWith({ status: 200, body, headers: { 'content-type': 'application/json' } }, { times: 1 });
    const err = await failure(client.recordEvents({ devicestate: [event('m-1'), event('m-2')] }));
    expect(err).toMatchObject({ status: 200, code: 'MalformedResponse', retryable: true });
  });

  it('a server that never answers times out, retryably', async () => {
    const quick = new KeenClient({ apiUrl: keen.url, projectId: PROJECT, writeKey: WRITE_KEY, timeoutMs: 200 });
    keen.hang({ times: 1 });
    const err = await failure(quick.recordEvents({ devicestate: [event('t-1')] }));
    expect(err).toMatchObject({ code: 'ETIMEDOUT', retryable: true });
    expect(err.status).toBeUndefined();
  });

  it('a server that sends headers and then stalls times out too', async () => {
    const stalling: Server = createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write('{"devicestate":[');
    });
    await new Promise<void>((resolve) => stalling.listen(0, '127.0.0.1', resolve));
    try {
      const port = (stalling.address() as AddressInfo).port;
      const quick = new KeenClient({ apiUrl: `http://127.0.0.1:${port}`, projectId: PROJECT, writeKey: WRITE_KEY, timeoutMs: 200 });
      const err = await failure(quick.recordEvents({ devicestate: [event('t-2')] }));
      expect(err).toMatchObject({ code: 'ETIMEDOUT', retryable: true });
    } finally {
      stalling.closeAllConnections();
      await new Promise((resolve) => stalling.close(resolve));
    }
  });

  it('a reset connection is retryable', async () => {
    keen.resetConnections({ times: 1 });
    const err = await failure(client.recordEvents({ devicestate: [event('x-1')] }));
    expect(err.retryable).toBe(true);
    expect(err.status).toBeUndefined();
    expect(err.message).toMatch(/Keen request failed/);
  });

  it('a refused connection is retryable and says why', async () => {
    const port = await freePort();
    const nowhere = new KeenClient({ apiUrl: `http://127.0.0.1:${port}`, projectId: PROJECT, writeKey: WRITE_KEY, timeoutMs: 2000 });
    const err = await failure(nowhere.recordEvents({ devicestate: [event('x-2')] }));
    expect(err).toMatchObject({ code: 'ECONNREFUSED', retryable: true });
  });

  it('never repeats the write key, even when the server echoes it', async () => {
    keen.respondWith({ status: 403, body: { message: `key ${WRITE_KEY} may not write`, error_code: 'ForbiddenError' } }, { times: 1 });
    const err = await failure(client.recordEvents({ devicestate: [event('leak-1')] }));
    expect(err.message).toContain('key *** may not write');
  });

  it('refuses options it cannot use', () => {
    expect(() => new KeenClient({ apiUrl: 'ftp://x', projectId: PROJECT, writeKey: WRITE_KEY, timeoutMs: 1 })).toThrow(TypeError);
    expect(() => new KeenClient({ apiUrl: keen.url, projectId: PROJECT, writeKey: '', timeoutMs: 1 })).toThrow(TypeError);
    expect(() => new KeenClient({ apiUrl: keen.url, projectId: PROJECT, writeKey: WRITE_KEY, timeoutMs: 0 })).toThrow(TypeError);
  });
});
