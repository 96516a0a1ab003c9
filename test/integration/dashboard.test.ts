/**
 * The dashboard over HTTP against a real Redis: basic auth on every route but the health
 * checks, Bull Board's Retry as the dead-letter redrive, read-only mode refusing every change,
 * and the refusal to start on a public address without credentials.
 */
import type { Queue, Worker } from 'bullmq';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { startDashboard, type Dashboard, type DashboardConfig } from '../../src/dashboard/dashboard.js';
import { deviceStateEvent } from '../../src/shared/events.js';
import type { DeadLetterJob, RejectedMessageJob } from '../../src/shared/jobs.js';
import { createLogger } from '../../src/shared/logger.js';
import { BRIDGE_PARTITIONS, openQueues, QUEUE_NAMES, queueKey, type PipelineQueues } from '../../src/shared/queues.js';
import { createDeadLettersWorker } from '../../src/worker/stages/dead-letters-worker.js';
import { createRejectedMessagesWorker } from '../../src/worker/stages/rejected-messages-worker.js';
import { randomDeviceId, randomPrefix } from '../support/ids.js';
import { freePort, startService, waitFor } from '../support/processes.js';
import { connectRedis } from '../../src/shared/redis.js';

const services = inject('services');
const logger = createLogger('dashboard-test', 'silent');
const USER = 'operator';
const PASSWORD = 'correct horse battery staple';

const basic = (user: string, password: string) => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
const GOOD = { authorization: basic(USER, PASSWORD) };

function configFor(prefix: string, overrides: Partial<DashboardConfig> = {}): DashboardConfig {
  return {
    REDIS_URL: services.redis,
    REDIS_CLUSTER_NODES: [],
    QUEUE_PREFIX: prefix,
    LOG_LEVEL: 'silent',
    DASHBOARD_PORT: 0,
    DASHBOARD_HOST: '127.0.0.1',
    DASHBOARD_USERNAME: USER,
    DASHBOARD_PASSWORD: PASSWORD,
    DASHBOARD_READ_ONLY: false,
    ...overrides,
  };
}

let seq = 0;
async function parkDeadLetter(
  queues: PipelineQueues,
  error = 'Keen rejected the event: InvalidPropertyNameError: refused',
): Promise<string> {
  seq += 1;
  const token = `${randomPrefix('dash')}-${seq}-devicestate`;
  const data: DeadLetterJob = {
    collection: 'devicestate',
    event: deviceStateEvent(randomDeviceId(), { on: true }, new Date().toISOString(), token),
    sourceJobId: token,
    attemptsMade: 12,
    lastError: { message: error, status: 400 },
    failedAt: new Date().toISOString(),
  };
  await queues.deadLetter.add(data.collection, data, { jobId: token });
  await waitFor(`${token} parked`, async () => (await queues.deadLetter.getJob(token))?.failedReason === error);
  return token;
}

const stateIn = async (queue: Queue, id: string) => (await queue.getJob(id))?.getState() ?? 'missing';

describe('dashboard', () => {
  const prefix = randomPrefix('dash');
  let redis: Redis;
  let queues: PipelineQueues;
  let worker: Worker<DeadLetterJob>;
  let dashboard: Dashboard;
  let readOnly: Dashboard;

  beforeAll(async () => {
    redis = await connectRedis(services.redis);
    queues = openQueues(redis, prefix);
    worker = createDeadLettersWorker({ connection: redis, queues, logger });
    dashboard = await startDashboard(configFor(prefix), logger);
    readOnly = await startDashboard(configFor(prefix, { DASHBOARD_READ_ONLY: true }), logger);
  });
  afterAll(async () => {
    await dashboard?.close();
    await readOnly?.close();
    await worker?.close();
    await queues?.close();
    redis?.disconnect();
  });

  const request = (board: Dashboard, path: string, init: RequestInit = {}) => fetch(new URL(path, board.url), init);

  it('answers /healthz and /readyz without credentials', async () => {
    for (const path of ['/healthz', '/readyz']) {
      const response = await request(dashboard, path);
      expect(response.status, path).toBe(200);
    }
    expect(await (await request(dashboard, '/readyz')).json()).toEqual({ status: 'ready', checks: { redis: true } });
  });

  it('answers 401 with WWW-Authenticate without credentials or with wrong ones', async () => {
    const attempts: Array<Record<string, string>> = [
      {},
      { authorization: basic(USER, 'wrong password') },
      { authorization: basic(USER, `${PASSWORD}x`) },
      { authorization: basic(USER, PASSWORD.slice(0, -1)) },
      { authorization: basic('someone-else', PASSWORD) },
      { authorization: basic('', '') },
      { authorization: `Bearer ${PASSWORD}` },
      { authorization: `Basic ${Buffer.from(`${USER}${PASSWORD}`).toString('base64')}` },
      { authorization: 'Basic !!!' },
    ];
    for (const headers of attempts) {
      for (const [path, method] of [
        ['/', 'GET'],
        ['/api/queues', 'GET'],
        [`/api/queues/${queueKey(QUEUE_NAMES.deadLetter)}/retry/failed`, 'PUT'],
      ] as const) {
        const response = await request(dashboard, path, { method, headers });
        expect(response.status, `${method} ${path} with ${JSON.stringify(headers)}`).toBe(401);
        expect(response.headers.get('www-authenticate')).toBe('Basic realm="LAMPI dashboard", charset="UTF-8"');
      }
    }
  });

  it('serves Bull Board with the right credentials, showing every queue of the pipeline', async () => {
    const page = await request(dashboard, '/', { headers: GOOD });
    expect(page.status).toBe(200);
    expect(await page.text()).toContain('<title>LAMPI ingest</title>');
    const api = await request(dashboard, '/api/queues', { headers: GOOD });
    expect(api.status).toBe(200);
    const body = (await api.json()) as {
      queues: Array<{ name: string; displayName: string; readOnlyMode: boolean; description: string }>;
    };
    expect(body.queues.map((q) => q.displayName).sort()).toEqual(
      [
        QUEUE_NAMES.lampStates,
        ...Array.from({ length: BRIDGE_PARTITIONS }, (_, n) => QUEUE_NAMES.bridgeState(n)),
        QUEUE_NAMES.deadLetter,
        QUEUE_NAMES.keen,
        QUEUE_NAMES.rejected,
      ].sort(),
    );
    for (const queue of body.queues) {
      // Bull Board knows each queue by BullMQ's (hash-tagged) name and shows ours.
      expect(queue.name).toBe(queueKey(queue.displayName));
      expect(queue.readOnlyMode).toBe(false);
      expect(queue.description).toContain(`Redis prefix: ${prefix}.`);
    }
  });

  it("shows a dead letter's error, and its Retry redrives it into keen-delivery with the same id", async () => {
    const id = await parkDeadLetter(queues, 'Keen answered 400: InvalidPropertyNameError');
    const shown = await request(dashboard, `/api/queues/${queueKey(QUEUE_NAMES.deadLetter)}/${encodeURIComponent(id)}`, { headers: GOOD });
    expect(shown.status).toBe(200);
    const { job } = (await shown.json()) as { job: { failedReason: string; data: DeadLetterJob } };
    expect(job.failedReason).toBe('Keen answered 400: InvalidPropertyNameError');
    expect(job.data.event.keen.uniqueness_token).toBe(id);

    const retried = await request(dashboard, `/api/queues/${queueKey(QUEUE_NAMES.deadLetter)}/${encodeURIComponent(id)}/retry`, {
      method: 'PUT',
      headers: GOOD,
    });
    expect(retried.status).toBe(204);
    await waitFor('the event back in keen-delivery', async () => (await stateIn(queues.keen, id)) === 'waiting');
    // Alone in a keen-delivery job named by its token.
    expect((await queues.keen.getJob(id))!.data).toEqual({
      events: [{ collection: 'devicestate', event: job.data.event, redrives: { count: 1, lastAt: expect.any(String) } }],
    });
    await waitFor('the dead letter gone', async () => (await stateIn(queues.deadLetter, id)) === 'missing');
  });

  it('Retry all redrives every parked dead letter', async () => {
    const ids = [await parkDeadLetter(queues), await parkDeadLetter(queues)];
    const retried = await request(dashboard, `/api/queues/${queueKey(QUEUE_NAMES.deadLetter)}/retry/failed`, {
      method: 'PUT',
      headers: GOOD,
    });
    expect(retried.status).toBe(200);
    for (const id of ids) await waitFor(`${id} back in keen-delivery`, async () => (await stateIn(queues.keen, id)) === 'waiting');
  });

  it("shows a rejected message's reason and decoded payload, with no stack trace and no Retry", async () => {
    const rejectedWorker = createRejectedMessagesWorker(redis, queues.rejected, logger);
    try {
      const text = '{"on": tru}';
      const record = (payload: Buffer): RejectedMessageJob => ({
        topic: 'devices/b827eb000001/lamp/changed',
        reason: 'invalid_json',
        detail: 'Unexpected token',
        payloadBytes: payload.length,
        payloadHead: payload.toString('base64'),
        receivedAt: new Date().toISOString(),
      });
      const textId = randomPrefix('rej');
      const binaryId = randomPrefix('rej');
      await queues.rejected.add('invalid_json', record(Buffer.from(text)), { jobId: textId });
      await queues.rejected.add('invalid_json', record(Buffer.from([0xff, 0xfe, 0x00])), { jobId: binaryId });
      await waitFor(
        'both rejections failed',
        async () => (await stateIn(queues.rejected, textId)) === 'failed' && (await stateIn(queues.rejected, binaryId)) === 'failed',
      );

      const shown = async (id: string) => {
        const response = await request(dashboard, `/api/queues/${queueKey(QUEUE_NAMES.rejected)}/${id}`, { headers: GOOD });
        expect(response.status).toBe(200);
        return ((await response.json()) as { job: { failedReason: string; stacktrace: string[]; data: Record<string, unknown> } }).job;
      };
      const job = await shown(textId);
      expect(job.failedReason).toBe('invalid_json: Unexpected token');
      expect(job.stacktrace).toEqual([]);
      expect(job.data).toMatchObject({ payload: text, reason: 'invalid_json', payloadBytes: text.length });
      expect(job.data).not.toHaveProperty('payloadHead');
      expect((await shown(binaryId)).data).toMatchObject({ payloadBase64: Buffer.from([0xff, 0xfe, 0x00]).toString('base64') });

      const api = await request(dashboard, '/api/queues', { headers: GOOD });
      const { queues: listed } = (await api.json()) as { queues: Array<{ name: string; allowRetries: boolean; description: string }> };
      expect(listed.find((q) => q.name === queueKey(QUEUE_NAMES.rejected))).toMatchObject({ allowRetries: false });
      expect(listed.find((q) => q.name === queueKey(QUEUE_NAMES.deadLetter))).toMatchObject({ allowRetries: true });
      // 12 attempts, 1 s base, doubling to the five-minute cap: 9 to 19 minutes.
      expect(listed.find((q) => q.name === queueKey(QUEUE_NAMES.keen))?.description).toContain(
        'tried 12 times (KEEN_ATTEMPTS, the default) over about 9 min to 19 min',
      );
    } finally {
      await rejectedWorker.close();
    }
  });

  it('read-only: every queue is read-only and the server refuses any change with 403', async () => {
    const api = await request(readOnly, '/api/queues', { headers: GOOD });
    expect(api.status).toBe(200);
    const body = (await api.json()) as { queues: Array<{ readOnlyMode: boolean; allowRetries: boolean }> };
    expect(body.queues).toHaveLength(4 + BRIDGE_PARTITIONS);
    for (const queue of body.queues) expect(queue).toMatchObject({ readOnlyMode: true, allowRetries: false });

    const id = await parkDeadLetter(queues);
    const q = queueKey(QUEUE_NAMES.deadLetter);
    const changes: Array<[string, string]> = [
      ['PUT', `/api/queues/${q}/${encodeURIComponent(id)}/retry`],
      ['PUT', `/api/queues/${q}/retry/failed`],
      ['PUT', `/api/queues/${q}/clean/failed`],
      ['PUT', `/api/queues/${q}/${encodeURIComponent(id)}/clean`],
      ['PUT', `/api/queues/${q}/empty`],
      ['PUT', `/api/queues/${q}/obliterate`],
      ['PUT', '/api/queues/pause'],
      ['POST', `/api/queues/${q}/add`],
      ['PATCH', `/api/queues/${q}/${encodeURIComponent(id)}/update-data`],
      ['DELETE', `/api/queues/${q}/${encodeURIComponent(id)}`],
    ];
    for (const [method, path] of changes) {
      const response = await request(readOnly, path, {
        method,
        headers: { ...GOOD, 'content-type': 'application/json' },
        body: method === 'DELETE' ? undefined : '{}',
      });
      expect(response.status, `${method} ${path}`).toBe(403);
      expect(await response.json()).toEqual({ error: 'the dashboard is read-only (DASHBOARD_READ_ONLY=true)' });
    }
    // Credentials are still checked first.
    expect((await request(readOnly, changes[0]![1], { method: 'PUT' })).status).toBe(401);
    expect(await stateIn(queues.deadLetter, id)).toBe('failed');
    expect(await stateIn(queues.keen, id)).toBe('missing');
  });

  it('without credentials on a loopback address it starts, open to this machine only', async () => {
    const open = await startDashboard(configFor(prefix, { DASHBOARD_USERNAME: undefined, DASHBOARD_PASSWORD: undefined }), logger);
    try {
      expect((await request(open, '/api/queues')).status).toBe(200);
    } finally {
      await open.close();
    }
  });
});

describe('dashboard startup', () => {
  const prefix = randomPrefix('dashstart');

  it('refuses to start on 0.0.0.0 without credentials: one line, exit 1', async () => {
    const port = await freePort();
    const proc = startService('dashboard', {
      REDIS_URL: services.redis,
      QUEUE_PREFIX: prefix,
      DASHBOARD_HOST: '0.0.0.0',
      DASHBOARD_PORT: String(port),
    });
    expect(await proc.exited).toBe(1);
    expect(proc.output()).toBe(
      'dashboard: refusing to serve the dashboard on DASHBOARD_HOST=0.0.0.0 without credentials: set ' +
        'DASHBOARD_USERNAME and DASHBOARD_PASSWORD, or bind it to 127.0.0.1\n',
    );
  });

  it('refuses a username without a password, and a read-only flag it cannot read', async () => {
    const half = startService('dashboard', {
      REDIS_URL: services.redis,
      QUEUE_PREFIX: prefix,
      DASHBOARD_USERNAME: USER,
      DASHBOARD_PORT: '0',
    });
    const flag = startService('dashboard', {
      REDIS_URL: services.redis,
      QUEUE_PREFIX: prefix,
      DASHBOARD_READ_ONLY: 'maybe',
      DASHBOARD_PORT: '0',
    });
    expect(await half.exited).toBe(1);
    expect(half.output()).toBe('dashboard: invalid configuration: set both DASHBOARD_USERNAME and DASHBOARD_PASSWORD, or neither\n');
    expect(await flag.exited).toBe(1);
    expect(flag.output()).toBe('dashboard: invalid configuration: DASHBOARD_READ_ONLY must be true or false\n');
  });

  it('starts on 0.0.0.0 with credentials, as npm run dashboard', async () => {
    const port = await freePort();
    const proc = startService('dashboard', {
      REDIS_URL: services.redis,
      QUEUE_PREFIX: prefix,
      DASHBOARD_HOST: '0.0.0.0',
      DASHBOARD_PORT: String(port),
      DASHBOARD_USERNAME: USER,
      DASHBOARD_PASSWORD: PASSWORD,
    });
    try {
      await waitFor(
        'the dashboard listening',
        () =>
          proc.output().includes('"msg":"dashboard listening"') ||
          (proc.child.exitCode !== null ? Promise.reject(new Error(proc.output())) : false),
      );
      expect((await fetch(`http://127.0.0.1:${port}/`)).status).toBe(401);
      expect((await fetch(`http://127.0.0.1:${port}/`, { headers: GOOD })).status).toBe(200);
      expect(proc.output()).not.toContain(PASSWORD);
    } finally {
      expect(await proc.kill()).toBe(0);
    }
  });
});
