/**
 * A keen-sink started in-process on port 0 against a fresh database of its own, and the calls a
 * Keen client makes to it over HTTP, for the tests that drive keen-sink from outside.
 */
import type { Logger } from '../../src/shared/logger.js';
import { createLogger } from '../../src/shared/logger.js';
import { startKeenSink, type KeenSink, type KeenSinkOptions } from '../../src/keen-sink/server.js';
import { eventsPath } from '../../src/shared/keen/protocol.js';
import { createTestDatabase, type TestDatabase } from './database.js';

export const PROJECT = 'lampi-test';
export const WRITE_KEY = 'write-key-for-tests';
export const READ_KEY = 'read-key-for-tests';

export interface Reply {
  status: number;
  /** The parsed JSON body, or the text when it is not JSON. */
  body: any;
  text: string;
}

export interface TestSink {
  sink: KeenSink;
  database: TestDatabase;
  http(
    method: string,
    path: string,
    options?: { body?: string | object; key?: string | null; query?: Record<string, string> },
  ): Promise<Reply>;
  record(collection: string, event: unknown): Promise<Reply>;
  recordMany(batch: unknown): Promise<Reply>;
  /** A GET query the way Keen's URLs carry it: structured parameters as JSON strings. */
  query(analysis: string, params: Record<string, unknown>): Promise<Reply>;
  close(): Promise<void>;
}

export async function startTestSink(
  adminUrl: string,
  options: Partial<Pick<KeenSinkOptions, 'maxResultBytes'>> & { logger?: Logger } = {},
): Promise<TestSink> {
  const database = await createTestDatabase(adminUrl, { migrate: false });
  const sink = await startKeenSink({
    databaseUrl: database.url,
    projectId: PROJECT,
    writeKey: WRITE_KEY,
    readKey: READ_KEY,
    port: 0,
    host: '127.0.0.1',
    logger: options.logger ?? createLogger('keen-sink', 'silent'),
    ...(options.maxResultBytes !== undefined ? { maxResultBytes: options.maxResultBytes } : {}),
  });
  const http: TestSink['http'] = async (method, path, { body, key, query } = {}) => {
    const url = new URL(path, sink.url);
    for (const [name, value] of Object.entries(query ?? {})) url.searchParams.set(name, value);
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (key) headers.authorization = key;
    const response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
    });
    const text = await response.text();
    let parsed: unknown = text;
    try {
      parsed = JSON.parse(text);
    } catch {
      // left as text: a test will say so
    }
    return { status: response.status, body: parsed, text };
  };
  return {
    sink,
    database,
    http,
    record: (collection, event) =>
      http('POST', eventsPath(PROJECT, collection), {
        body: typeof event === 'string' ? event : JSON.stringify(event),
        key: WRITE_KEY,
      }),
    recordMany: (batch) =>
      http('POST', eventsPath(PROJECT), { body: typeof batch === 'string' ? batch : JSON.stringify(batch), key: WRITE_KEY }),
    query: (analysis, params) => {
      const query = Object.fromEntries(
        Object.entries(params).map(([name, value]) => [name, typeof value === 'string' ? value : JSON.stringify(value)]),
      );
      return http('GET', `/3.0/projects/${PROJECT}/queries/${analysis}`, { query, key: READ_KEY });
    },
    async close() {
      await sink.close();
      await database.drop();
    },
  };
}
