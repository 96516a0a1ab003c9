/**
 * The operator's path through the dashboard in a real browser: headless Chromium from Debian's
 * `chromium` package (never a browser downloaded from npm), driven by playwright-core.
 *
 * One Keen event of a delivery job is refused by (a fake) Keen and dead-lettered, under its
 * uniqueness token, by the real Keen delivery worker, which delivers the rest of the job; the
 * operator logs in with basic auth, opens keen-dead-letter, sees the event with Keen's error,
 * clicks Retry, and sees the event delivered: stored by Keen once, and completed in
 * keen-delivery in a job whose id is its token. A wrong password gets 401.
 *
 * With a Redis of the test's own killed under an open dashboard, the page says that Redis is
 * unreachable (a banner) instead of loading forever, a page opened meanwhile says so too, and
 * both recover by themselves when Redis is back.
 */
import { existsSync } from 'node:fs';
import type { Worker } from 'bullmq';
import type { Redis } from 'ioredis';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { startDashboard, type Dashboard } from '../../src/dashboard/dashboard.js';
import { deviceStateEvent } from '../../src/shared/events.js';
import { createLogger } from '../../src/shared/logger.js';
import { openQueues, QUEUE_NAMES, queueKey, type PipelineQueues } from '../../src/shared/queues.js';
import { createDeadLettersWorker } from '../../src/worker/stages/dead-letters-worker.js';
import { KeenBatcher } from '../../src/worker/keen/batcher.js';
import { KeenClient } from '../../src/worker/keen/client.js';
import { createKeenDeliveryWorker } from '../../src/worker/stages/keen-delivery-worker.js';
import { startFakeKeen, type FakeKeen } from '../support/fake-keen.js';
import { randomDeviceId, randomPrefix } from '../support/ids.js';
import { startRedis, waitFor } from '../support/processes.js';
import { connectRedis } from '../../src/shared/redis.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];
const USER = 'operator';
const PASSWORD = 'browser-test-password';

const services = inject('services');
const logger = createLogger('dashboard-browser-test', 'silent');

describe('dashboard in a browser', () => {
  const prefix = randomPrefix('browser');
  const deviceId = randomDeviceId();
  const ingestId = randomPrefix('ev');
  const token = `${ingestId}-1-devicestate`;
  const otherToken = `${ingestId}-2-devicestate`;
  /** The delivery job the refused event came in, named as the registry worker names it. */
  const sourceJobId = `${ingestId}-keen`;
  let redis: Redis;
  let queues: PipelineQueues;
  let keen: FakeKeen;
  let batcher: KeenBatcher;
  const workers: Worker[] = [];
  let dashboard: Dashboard;
  let browser: Browser;

  beforeAll(async () => {
    if (!existsSync(CHROMIUM)) {
      throw new Error(
        `headless Chromium not found at ${CHROMIUM}: install Debian's package (apt-get install -y chromium) ` +
          `or set CHROMIUM_PATH; this test never downloads a browser`,
      );
    }
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
    redis = await connectRedis(services.redis);
    queues = openQueues(redis, prefix);
    keen = await startFakeKeen({ projectId: 'browser-project', writeKey: 'browser-write-key' });
    batcher = new KeenBatcher({
      client: new KeenClient({ apiUrl: keen.url, projectId: keen.projectId, writeKey: keen.writeKey, timeoutMs: 2000 }),
      maxEvents: 50,
      lingerMs: 5,
    });
    workers.push(
      createKeenDeliveryWorker({ connection: redis, prefix, queues, batcher, concurrency: 10, logger }),
      createDeadLettersWorker({ connection: redis, queues, logger }),
    );
    dashboard = await startDashboard(
      {
        REDIS_URL: services.redis,
        REDIS_CLUSTER_NODES: [],
        QUEUE_PREFIX: prefix,
        LOG_LEVEL: 'silent',
        DASHBOARD_PORT: 0,
        DASHBOARD_HOST: '127.0.0.1',
        DASHBOARD_USERNAME: USER,
        DASHBOARD_PASSWORD: PASSWORD,
        DASHBOARD_READ_ONLY: false,
      },
      logger,
    );

    // Keen refuses this lamp's events for good: its event is dead-lettered and parked, and the
    // other event of the job is delivered.
    keen.rejectEvents((_collection, event) =>
      event.device_id === deviceId ? { name: 'InvalidPropertyValueError', description: 'brightness out of range' } : undefined,
    );
    const event = deviceStateEvent(deviceId, { on: true, brightness: 0.7 }, new Date().toISOString(), token);
    const other = deviceStateEvent(randomDeviceId(), { on: false }, new Date().toISOString(), otherToken);
    await queues.keen.add(
      'devicestate',
      {
        events: [
          { collection: 'devicestate', event },
          { collection: 'devicestate', event: other },
        ],
      },
      { jobId: sourceJobId },
    );
    await waitFor(
      'the refused event parked as a dead letter',
      async () => (await (await queues.deadLetter.getJob(token))?.getState()) === 'failed',
    );
    await waitFor('the delivery job completed', async () => (await (await queues.keen.getJob(sourceJobId))?.getState()) === 'completed');
    expect(keen.tokens('devicestate')).toEqual([otherToken]);
  });

  afterAll(async () => {
    await browser?.close();
    await dashboard?.close();
    await Promise.all(workers.map((worker) => worker.close()));
    await batcher?.close();
    await keen?.close();
    await queues?.close();
    redis?.disconnect();
  });

  /** A job's card: the nearest element around its id (the card's title) that holds its tabs. */
  const jobCard = (page: Page, id: string) =>
    page.getByText(id, { exact: true }).first().locator('xpath=ancestor::*[.//*[@role="tab"]][1]');

  it('logs in, sees the dead letter with its error, retries it, and sees it delivered', async () => {
    const context = await browser.newContext({ httpCredentials: { username: USER, password: PASSWORD } });
    try {
      const page = await context.newPage();
      const response = await page.goto(new URL(`queue/${queueKey(QUEUE_NAMES.deadLetter)}?status=failed`, dashboard.url).toString());
      expect(response?.status()).toBe(200);

      // The dead letter, why it failed, and the original event.
      await expect.poll(() => page.getByText(token, { exact: true }).count(), { timeout: 15_000 }).toBeGreaterThan(0);
      const card = jobCard(page, token);
      await card.getByText('InvalidPropertyValueError').first().waitFor();
      expect(await card.innerText()).toContain('Keen rejected the event: InvalidPropertyValueError: brightness out of range');
      await card.getByRole('tab', { name: 'Data' }).click();
      await card.getByText(deviceId).first().waitFor();

      // Keen takes the event again (the operator fixed the cause); Retry redrives it.
      keen.clearFaults();
      // Bull Board's job actions are icon buttons named by a tooltip: find the one saying Retry.
      const actions = card.locator('button[type=button]:not([role=tab])');
      const tooltip = page.getByText('Retry', { exact: true });
      let retry: ReturnType<typeof actions.nth> | undefined;
      for (let i = 0; i < (await actions.count()) && !retry; i += 1) {
        await actions.nth(i).hover();
        const shown = await tooltip.waitFor({ state: 'visible', timeout: 2000 }).then(
          () => true,
          () => false,
        );
        if (shown) retry = actions.nth(i);
        await page.mouse.move(0, 0);
      }
      expect(retry, 'the Retry button of the dead letter').toBeDefined();
      await retry!.click();
      const confirm = page.getByRole('alertdialog');
      await expect.poll(() => confirm.innerText(), { timeout: 5000 }).toContain('retry this job');
      await confirm.getByRole('button', { name: 'Confirm' }).click();

      // Delivered: Keen stored it once, under its token, and keen-delivery shows it completed,
      // alone in a job named by its token.
      await waitFor('the event stored by Keen', () => keen.tokens('devicestate').includes(token), 20_000);
      expect(keen.tokens('devicestate').sort()).toEqual([token, otherToken].sort());
      expect(keen.duplicatesDropped).toBe(0);
      await page.goto(new URL(`queue/${queueKey(QUEUE_NAMES.keen)}?status=completed`, dashboard.url).toString());
      await expect.poll(() => page.getByText(token, { exact: true }).count(), { timeout: 15_000 }).toBeGreaterThan(0);
      const redriven = await queues.keen.getJob(token);
      expect(await redriven?.getState()).toBe('completed');
      expect(redriven?.data.events.map((record) => record.event.keen.uniqueness_token)).toEqual([token]);

      // And the dead letter is gone from the dead-letter queue.
      await page.goto(new URL(`queue/${queueKey(QUEUE_NAMES.deadLetter)}?status=failed`, dashboard.url).toString());
      await page.getByText('parked in Failed with the last Keen error', { exact: false }).first().waitFor();
      await expect.poll(() => page.getByText(token, { exact: true }).count(), { timeout: 15_000 }).toBe(0);
    } finally {
      await context.close();
    }
  });

  it('answers a wrong password, or none, with 401', async () => {
    for (const httpCredentials of [{ username: USER, password: 'not-the-password' }, undefined]) {
      const context = await browser.newContext(httpCredentials ? { httpCredentials } : {});
      try {
        const page = await context.newPage();
        const answered = page.waitForResponse((response) => response.url().startsWith(dashboard.url));
        // With wrong credentials Chromium gives up on the page (ERR_INVALID_AUTH_CREDENTIALS)
        // after the server's 401; without any it shows the 401 page.
        const navigation = await page
          .goto(new URL(`queue/${queueKey(QUEUE_NAMES.deadLetter)}`, dashboard.url).toString())
          .catch((err: Error) => err);
        const response = await answered;
        expect(response.status(), `credentials: ${JSON.stringify(httpCredentials)}`).toBe(401);
        expect(response.headers()['www-authenticate']).toMatch(/^Basic realm=/);
        if (navigation instanceof Error) expect(navigation.message).toContain('ERR_INVALID_AUTH_CREDENTIALS');
        else expect(await page.content()).not.toContain(token);
      } finally {
        await context.close();
      }
    }
  });
});

describe('dashboard in a browser while Redis is down', () => {
  let redis: Awaited<ReturnType<typeof startRedis>>;
  let dashboard: Dashboard;
  let browser: Browser;

  beforeAll(async () => {
    if (!existsSync(CHROMIUM))
      throw new Error(
        `headless Chromium not found at ${CHROMIUM}: install Debian's package (apt-get install -y chromium) or set CHROMIUM_PATH`,
      );
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
    redis = await startRedis({ appendonly: false });
    dashboard = await startDashboard(
      {
        REDIS_URL: redis.url,
        REDIS_CLUSTER_NODES: [],
        QUEUE_PREFIX: randomPrefix('browser-outage'),
        LOG_LEVEL: 'silent',
        DASHBOARD_PORT: 0,
        DASHBOARD_HOST: '127.0.0.1',
        DASHBOARD_READ_ONLY: false,
      },
      logger,
    );
  });

  afterAll(async () => {
    await browser?.close();
    await dashboard?.close();
    await redis?.kill('SIGKILL');
  });

  it('shows "Redis is unreachable" in an open page and a new one, never an endless Loading, and recovers', async () => {
    const context = await browser.newContext();
    try {
      const page = await context.newPage();
      await page.goto(new URL(`queue/${queueKey(QUEUE_NAMES.rejected)}`, dashboard.url).toString());
      await page.getByText('Retrying cannot help', { exact: false }).first().waitFor({ timeout: 15_000 });
      const banner = page.locator('#lampi-outage');
      expect(await banner.count()).toBe(0);

      await redis.kill('SIGKILL');
      await banner.waitFor({ timeout: 15_000 });
      expect(await banner.innerText()).toContain('Redis is unreachable');
      const opened = await context.newPage();
      const response = await opened.goto(dashboard.url);
      expect(response?.status()).toBe(503);
      expect(await opened.locator('h1').innerText()).toBe('Redis is unreachable');

      redis = await startRedis({ port: redis.port, appendonly: false });
      await banner.waitFor({ state: 'detached', timeout: 15_000 });
      // The plain page reloads itself into Bull Board.
      await expect.poll(() => opened.title(), { timeout: 15_000 }).toBe('LAMPI ingest');
    } finally {
      await context.close();
    }
  });
});
