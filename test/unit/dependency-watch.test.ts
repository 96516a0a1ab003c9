/**
 * The watch's rules on their own: which errors are about the connection, and that polling a
 * dependency reports it gone once and back once, however many checks fail in between (the
 * worker's PostgreSQL). The connection events of real Redis and MQTT clients are covered in
 * test/integration/outages.test.ts.
 */
import { connect, createServer, type Server } from 'node:net';
import { Redis } from 'ioredis';
import { describe, expect, it } from 'vitest';
import { DependencyWatch, isConnectionError } from '../../src/shared/dependency-watch.js';
import { createLogger } from '../../src/shared/logger.js';
import { sleep, waitFor } from '../support/processes.js';

function memoryLogger() {
  const written: string[] = [];
  const logger = createLogger('test', 'debug', { write: (line: string) => void written.push(line) });
  return { logger, records: () => written.map((line) => JSON.parse(line) as Record<string, unknown>) };
}

const listen = (server: Server, port = 0) =>
  new Promise<number>((resolve) => server.listen(port, '127.0.0.1', () => resolve((server.address() as { port: number }).port)));
const reachable = (port: number) =>
  new Promise<void>((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => socket.destroy() && resolve());
    socket.once('error', reject);
  });

describe('isConnectionError', () => {
  it('knows socket failures and closed connections, and nothing else', () => {
    const refused = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:6379'), { code: 'ECONNREFUSED' });
    expect(isConnectionError(refused)).toBe(true);
    expect(isConnectionError(new Error('Connection is closed.'))).toBe(true);
    expect(isConnectionError(Object.assign(new Error('read'), { code: 'ECONNRESET' }))).toBe(true);
    expect(isConnectionError(new AggregateError([refused]))).toBe(true);
    expect(isConnectionError(new Error('ERR unknown command'))).toBe(false);
    expect(isConnectionError(new Error('OOM command not allowed when used memory > maxmemory'))).toBe(false);
    expect(isConnectionError('not even an error')).toBe(false);
  });

  it("knows ioredis giving up on a command while Redis is gone, by the error's class", async () => {
    const server = createServer();
    const port = await listen(server);
    server.close();
    const redis = new Redis({ host: '127.0.0.1', port, maxRetriesPerRequest: 0, retryStrategy: () => 20 });
    redis.on('error', () => {});
    try {
      const err = await redis.get('anything').then(
        () => undefined,
        (e: unknown) => e,
      );
      expect((err as Error).name).toBe('MaxRetriesPerRequestError');
      expect(isConnectionError(err)).toBe(true);
      // Its class, not its text: the same words in another error are not a connection failure.
      expect(isConnectionError(new Error((err as Error).message))).toBe(false);
    } finally {
      redis.disconnect();
    }
  });
});

describe('DependencyWatch.poll', () => {
  it('says once that the dependency is gone and once that it is back, with how long, masking the password', async () => {
    const { logger, records } = memoryLogger();
    let clock = 1_000;
    const watch = new DependencyWatch(logger, () => clock);
    const server = createServer((socket) => socket.destroy());
    const port = await listen(server);
    watch.poll(
      'postgres',
      `postgresql://lampi:secret@127.0.0.1:${port}/lampi`,
      'ingest jobs are retried until it is back',
      () => reachable(port),
      20,
    );
    try {
      await sleep(100);
      expect(records()).toEqual([]);
      await new Promise((resolve) => server.close(resolve));
      await waitFor('the warning', () => watch.isDown('postgres'), 5000, 10);
      // Many failed checks later, still one line.
      await sleep(200);
      clock += 4_000;
      await listen(server, port);
      await waitFor('the line saying it is back', () => !watch.isDown('postgres'), 5000, 10);
      await sleep(100);
    } finally {
      watch.stop();
      server.close();
    }
    expect(records().map(({ level, dependency, msg, downForMs, err }) => ({ level, dependency, msg, downForMs, err }))).toEqual([
      {
        level: 'warn',
        dependency: 'postgres',
        msg: `PostgreSQL is unreachable (postgresql://lampi:***@127.0.0.1:${port}/lampi): ingest jobs are retried until it is back`,
        downForMs: undefined,
        // Refused once the port is closed; reset when a check was connecting as it closed.
        err: expect.objectContaining({ type: 'Error', code: expect.stringMatching(/^ECONN(REFUSED|RESET)$/) }),
      },
      { level: 'info', dependency: 'postgres', msg: 'PostgreSQL is reachable again', downForMs: 4_000, err: undefined },
    ]);
  });
});
