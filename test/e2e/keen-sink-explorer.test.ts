/**
 * keen-sink's explorer in a real browser: headless Chromium from Debian's `chromium` package,
 * driven by playwright-core, against keen-sink on real PostgreSQL. Lamps' events are written
 * through keen-sink's write API; the user logs in with the read key, watches Streams refresh as a
 * new event arrives, runs the seed's own query (select_unique of activations by device_id, this
 * 14 days) from a shared URL and sees the lamps in the table, and draws a daily chart of
 * devicestate in their browser's time zone. A lamp's hostile device id stays text. A page on
 * another, configured origin queries keen-sink with keen-analysis's browser build (CORS); a page
 * on an origin not configured cannot read the answer. Screenshots go to artifacts/screenshots/.
 */
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { createRequire } from 'node:module';
import path from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createLogger } from '../../src/shared/logger.js';
import { intervalBoundaries, parseTimeframe } from '../../src/keen-sink/query.js';
import { startKeenSink, type KeenSink } from '../../src/keen-sink/server.js';
import { parseTimeZone } from '../../src/keen-sink/timezone.js';
import { createTestDatabase, type TestDatabase } from '../support/database.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];
const SCREENSHOTS = path.resolve(import.meta.dirname, '../../artifacts/screenshots');
const PROJECT = 'lampi-explorer';
const WRITE_KEY = 'explorer-write-key';
const READ_KEY = 'explorer-read-key';
const ZONE = 'Europe/Berlin';
const HOSTILE = '<img src=x onerror="window.__planted=1">lamp';
const LAMPS = ['b827eb000001', 'b827eb000002', 'b827eb000003', HOSTILE].sort();
const DAY = 86_400_000;

let database: TestDatabase;
let sink: KeenSink;
let browser: Browser;
const origins: Server[] = [];

async function write(batch: Record<string, object[]>): Promise<void> {
  const response = await fetch(`${sink.url}/3.0/projects/${PROJECT}/events`, {
    method: 'POST',
    headers: { authorization: WRITE_KEY, 'content-type': 'application/json' },
    body: JSON.stringify(batch),
  });
  const results = (await response.json()) as Record<string, Array<{ success: boolean }>>;
  expect(
    Object.values(results)
      .flat()
      .every((result) => result.success),
  ).toBe(true);
}

/** A web page of another origin: serves `html` at / and keen-analysis's browser build. */
async function otherOrigin(html: string): Promise<string> {
  const keenAnalysis = readFileSync(createRequire(import.meta.url).resolve('keen-analysis/dist/keen-analysis.min.js'));
  const server = createServer((req, res) => {
    if (req.url === '/keen-analysis.js') res.writeHead(200, { 'content-type': 'text/javascript' }).end(keenAnalysis);
    else res.writeHead(200, { 'content-type': 'text/html' }).end(html);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  origins.push(server);
  return `http://127.0.0.1:${(server.address() as { port: number }).port}`;
}

const stateTimes: Date[] = [];

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(
      `headless Chromium not found at ${CHROMIUM}: install Debian's package (apt-get install -y chromium) ` +
        `or set CHROMIUM_PATH; this test never downloads a browser`,
    );
  }
  mkdirSync(SCREENSHOTS, { recursive: true });
  database = await createTestDatabase(inject('services').postgres, { migrate: false });
  browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
  const now = Date.now();
  // Lamps activated over the last days; their state changes spread over 10 days, more each day.
  const activations = LAMPS.map((id, i) => ({ device_id: id, keen: { timestamp: new Date(now - (i + 1) * DAY).toISOString() } }));
  const states: object[] = [];
  for (let day = 0; day < 10; day += 1) {
    for (let k = 0; k <= day % 4; k += 1) {
      const time = new Date(now - day * DAY - (k + 1) * 600_000);
      stateTimes.push(time);
      states.push({
        device_id: LAMPS[k % LAMPS.length],
        state: { on: k % 2 === 0, brightness: k / 4 },
        keen: { timestamp: time.toISOString() },
      });
    }
  }
  // Kept for the start: a sink with CORS for the origin of the page that uses keen-analysis.
  sink = await startKeenSink({
    databaseUrl: database.url,
    projectId: PROJECT,
    writeKey: WRITE_KEY,
    readKey: READ_KEY,
    port: 0,
    host: '127.0.0.1',
    logger: createLogger('keen-sink', 'silent'),
  });
  await write({ activations, devicestate: states, devicemonitoring: [{ device_id: LAMPS[0], connected: true }] });
});

afterAll(async () => {
  await browser?.close();
  for (const server of origins) await new Promise((resolve) => server.close(resolve));
  await sink?.close();
  await database?.drop();
});

async function logIn(page: Page) {
  await page.getByLabel('Read key').fill(READ_KEY);
  await page.getByRole('button', { name: 'Log in' }).click();
}

/** The cells of the table shown in the Explorer's Table view, row by row. */
const tableCells = (page: Page) =>
  page
    .locator('#view-table table tbody tr')
    .evaluateAll((rows) => rows.map((row) => [...row.querySelectorAll('td')].map((cell) => cell.textContent)));

describe('keen-sink explorer in a browser', () => {
  it('logs in with the read key, shows Streams refreshing live, and renders planted strings as text', async () => {
    const context = await browser.newContext({ timezoneId: ZONE, viewport: { width: 1280, height: 900 } });
    try {
      const page = await context.newPage();
      const response = await page.goto(`${sink.url}/`);
      expect(response?.status()).toBe(200);
      expect(response?.headers()['content-security-policy']).toContain("script-src 'self'");
      // A wrong key is refused and the page says so.
      await page.getByLabel('Read key').fill('not-the-key');
      await page.getByRole('button', { name: 'Log in' }).click();
      await expect.poll(() => page.locator('#login-error').textContent()).toContain('log in again');
      await logIn(page);

      const streams = page.locator('#streams-list');
      await streams.locator('.stream[data-collection="activations"]').waitFor();
      for (const collection of ['activations', 'devicestate', 'devicemonitoring'])
        await streams.locator(`.stream[data-collection="${collection}"]`).waitFor();
      // The planted markup is shown as text, and did not become an element or run.
      await expect
        .poll(() => streams.locator('.stream[data-collection="activations"]').innerText())
        .toContain(HOSTILE.replaceAll('"', '\\"'));
      expect(await page.locator('#streams-list img').count()).toBe(0);
      expect(await page.evaluate(() => (window as { __planted?: number }).__planted)).toBeUndefined();

      // A new event appears without reloading.
      const marker = `live-${Date.now()}`;
      await write({ devicemonitoring: [{ device_id: marker, connected: false }] });
      await expect
        .poll(() => streams.locator('.stream[data-collection="devicemonitoring"]').innerText(), { timeout: 15_000 })
        .toContain(marker);
      await page.screenshot({ path: path.join(SCREENSHOTS, 'streams.png'), fullPage: true });

      // The key is in this tab, never in the URL.
      expect(page.url()).not.toContain(READ_KEY);
      expect(await page.evaluate(() => sessionStorage.length)).toBe(1);
    } finally {
      await context.close();
    }
  });

  it("runs the seed's query from a shared URL and shows the lamps in the table", async () => {
    const shared = `${sink.url}/?view=explorer&analysis_type=select_unique&event_collection=activations&target_property=device_id&timeframe=this_14_days`;
    const context = await browser.newContext({ timezoneId: ZONE, viewport: { width: 1280, height: 900 } });
    try {
      const page = await context.newPage();
      await page.goto(shared);
      // Whoever opens a shared URL logs in first, then sees the query's answer.
      await logIn(page);
      // Sorted here: PostgreSQL orders by its collation, which need not be code-point order.
      await expect.poll(async () => (await tableCells(page)).map(([lamp]) => lamp).sort(), { timeout: 15_000 }).toEqual(LAMPS);
      expect(await page.locator('#view-table th').allTextContents()).toEqual(['device_id']);
      expect(await page.locator('#view-table img').count()).toBe(0);
      expect(await page.evaluate(() => (window as { __planted?: number }).__planted)).toBeUndefined();
      // The form shows the shared query; the URL still carries it (and no key).
      expect(await page.locator('#analysis_type').inputValue()).toBe('select_unique');
      expect(new URL(page.url()).searchParams.get('target_property')).toBe('device_id');
      expect(page.url()).not.toContain(READ_KEY);
      await page.screenshot({ path: path.join(SCREENSHOTS, 'explorer-select-unique.png'), fullPage: true });

      await page.getByRole('tab', { name: 'JSON' }).click();
      const json = JSON.parse((await page.locator('#view-json').textContent()) ?? '') as { result: string[] };
      expect(json.result.slice().sort()).toEqual(LAMPS);
    } finally {
      await context.close();
    }
  });

  it('draws a daily interval chart of devicestate in the browser time zone', async () => {
    const context = await browser.newContext({ timezoneId: ZONE, viewport: { width: 1280, height: 1000 } });
    try {
      const page = await context.newPage();
      await page.goto(`${sink.url}/?view=explorer`);
      await logIn(page);
      await page.locator('#explorer').waitFor();
      expect(await page.locator('#timezone').inputValue()).toBe(ZONE);
      await page.locator('#analysis_type').selectOption('count');
      await page.locator('#event_collection').fill('devicestate');
      await page.locator('#timeframe').fill('this_14_days');
      await page.locator('#interval').selectOption('daily');
      await page.getByRole('button', { name: 'Add filter' }).click();
      await page.locator('.filter-property').fill('state.brightness');
      await page.locator('.filter-operator').selectOption('gte');
      await page.locator('.filter-value').fill('0');
      await page.getByRole('button', { name: 'Run query' }).click();
      await expect.poll(() => page.locator('#query-status').textContent(), { timeout: 15_000 }).toContain('answered');

      // What Keen's daily count over this_14_days in Berlin is, from the events written.
      const zone = parseTimeZone(ZONE);
      if (!zone.ok) throw new Error(zone.message);
      const boundaries = intervalBoundaries(parseTimeframe('this_14_days', new Date(), zone.zone), 'day', zone.zone);
      const expected = boundaries.slice(0, -1).map((start, i) => stateTimes.filter((t) => t >= start && t < boundaries[i + 1]!).length);
      expect(expected.reduce((a, b) => a + b, 0)).toBe(stateTimes.length);

      await page.getByRole('tab', { name: 'Chart' }).click();
      const drawn = await page.evaluate(() => {
        const chart = (window as unknown as { Chart: { getChart(canvas: HTMLCanvasElement): any } }).Chart.getChart(
          document.getElementById('chart') as HTMLCanvasElement,
        );
        return chart && { type: chart.config.type, labels: chart.data.labels, data: chart.data.datasets[0].data, height: chart.height };
      });
      expect(drawn).toMatchObject({ type: 'line', data: expected });
      expect(drawn.labels).toEqual(boundaries.slice(0, -1).map((d) => d.toISOString()));
      expect(drawn.height).toBeGreaterThan(100);
      const url = new URL(page.url());
      expect(url.searchParams.get('interval')).toBe('daily');
      expect(JSON.parse(url.searchParams.get('filters') ?? '[]')).toEqual([
        { property_name: 'state.brightness', operator: 'gte', property_value: 0 },
      ]);
      await page.screenshot({ path: path.join(SCREENSHOTS, 'explorer-devicestate-daily.png'), fullPage: true });

      await page.getByRole('tab', { name: 'Table' }).click();
      const cells = await tableCells(page);
      expect(cells.map((row) => Number(row[2]))).toEqual(expected);
    } finally {
      await context.close();
    }
  });

  it('lets a page of a configured origin query keen-sink with keen-analysis, and no other', async () => {
    const page = `<!doctype html><script src="/keen-analysis.js"></script><script>
      const client = new KeenAnalysis({ projectId: ${JSON.stringify(PROJECT)}, readKey: ${JSON.stringify(READ_KEY)}, protocol: 'http', host: SINK_HOST });
      client.query('count_unique', { event_collection: 'activations', target_property: 'device_id', timeframe: 'this_14_days' })
        .then((answer) => { document.title = 'result ' + answer.result; }, (err) => { document.title = 'failed ' + (err && (err.message || err.status)); });
    </script>`;
    const allowed = await otherOrigin(page);
    const refused = await otherOrigin(page);
    const corsSink = await startKeenSink({
      databaseUrl: database.url,
      projectId: PROJECT,
      writeKey: WRITE_KEY,
      readKey: READ_KEY,
      port: 0,
      host: '127.0.0.1',
      logger: createLogger('keen-sink', 'silent'),
      corsOrigins: [allowed],
    });
    const context = await browser.newContext();
    try {
      for (const [origin, title] of [
        [allowed, `result ${LAMPS.length}`],
        [refused, /^failed /],
      ] as const) {
        const tab = await context.newPage();
        await tab.addInitScript((host) => Object.assign(window, { SINK_HOST: host }), `127.0.0.1:${corsSink.port}`);
        await tab.goto(origin);
        await expect.poll(() => tab.title(), { timeout: 15_000 }).toMatch(title);
      }
    } finally {
      await context.close();
      await corsSink.close();
    }
  });
});
