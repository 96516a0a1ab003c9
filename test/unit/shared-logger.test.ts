import { describe, expect, it } from 'vitest';
import { ConfigError, UsageError } from '../../src/shared/errors.js';
import { createLogger, redactUrl } from '../../src/shared/logger.js';
import { sourceFiles } from '../support/source.js';

const SECRET = 'hunter2-S3CRET';

/** A logger writing JSON lines into memory, and the lines parsed. */
function memoryLogger(level = 'trace') {
  const written: string[] = [];
  const logger = createLogger('test', level, { write: (line: string) => void written.push(line) });
  return {
    logger,
    written,
    records: () => written.map((line) => JSON.parse(line) as Record<string, unknown>),
    last: () => JSON.parse(written.at(-1)!) as Record<string, unknown>,
  };
}

describe('redactUrl', () => {
  it('masks the password in credentials inside a URL and keeps the rest', () => {
    expect(redactUrl('redis://user:secret@host:6379/0')).toBe('redis://user:***@host:6379/0');
    expect(redactUrl('rediss://:secret@host')).toBe('rediss://:***@host');
    expect(redactUrl('postgresql://lampi:p%40ss@db:5432/lampi?sslmode=require')).toBe(
      'postgresql://lampi:***@db:5432/lampi?sslmode=require',
    );
    expect(redactUrl('MQTTS://Ingest:Secret@Broker')).toBe('MQTTS://Ingest:***@Broker');
  });

  it('masks every URL in a longer text', () => {
    expect(redactUrl('tried redis://a:one@h1 then mqtt://b:two@h2, both failed')).toBe(
      'tried redis://a:***@h1 then mqtt://b:***@h2, both failed',
    );
  });

  it('masks all of a password that holds an unencoded @ (URL parsers split at the last @)', () => {
    expect(new URL('redis://u:p@ss@host').password).toBe('p%40ss');
    expect(redactUrl('connect redis://u:p@ss@host failed')).toBe('connect redis://u:***@host failed');
  });

  it('stops at the end of the authority, and handles URLs run together', () => {
    expect(redactUrl('https://u:p@host/path@x')).toBe('https://u:***@host/path@x');
    expect(redactUrl('https://u:p@host?next=a@b')).toBe('https://u:***@host?next=a@b');
    expect(redactUrl('redis://a:one@h1,redis://b:two@h2')).toBe('redis://a:***@h1,redis://b:***@h2');
  });

  it('leaves text without credentials alone', () => {
    for (const text of ['redis://host:6379', 'redis://user@host', 'see https://keen.io/docs', 'mail admin@example.com', 'a:b@c', 'plain']) {
      expect(redactUrl(text)).toBe(text);
    }
  });
});

describe('createLogger', () => {
  it('writes one JSON line per record with name, process, level label, ISO time and message', () => {
    const log = memoryLogger();
    log.logger.info({ device_id: 'abc' }, 'hello');
    expect(log.written).toHaveLength(1);
    expect(log.written[0]!.endsWith('\n')).toBe(true);
    const record = log.last();
    expect(record).toMatchObject({ name: 'test', process: 'test', level: 'info', msg: 'hello', device_id: 'abc' });
    expect(new Date(record.time as string).toISOString()).toBe(record.time);
  });

  it('respects the level', () => {
    const log = memoryLogger('warn');
    log.logger.info('quiet');
    log.logger.warn('loud');
    expect(log.records().map((r) => r.msg)).toEqual(['loud']);
  });

  it('censors passwords, write keys and authorization headers, top level and nested', () => {
    const log = memoryLogger();
    log.logger.info(
      {
        password: SECRET,
        writeKey: SECRET,
        authorization: `Bearer ${SECRET}`,
        mqtt: { password: SECRET },
        keen: { writeKey: SECRET },
        request: { headers: { authorization: `Basic ${SECRET}` } },
        config: { KEEN_WRITE_KEY: SECRET, MQTT_PASSWORD: SECRET, DASHBOARD_PASSWORD: SECRET },
        KEEN_WRITE_KEY: SECRET,
        MQTT_PASSWORD: SECRET,
      },
      'starting',
    );
    const line = log.written[0]!;
    expect(line).not.toContain(SECRET);
    expect(log.last()).toMatchObject({
      password: '***',
      writeKey: '***',
      authorization: '***',
      mqtt: { password: '***' },
      keen: { writeKey: '***' },
      request: { headers: { authorization: '***' } },
      config: { KEEN_WRITE_KEY: '***', MQTT_PASSWORD: '***', DASHBOARD_PASSWORD: '***' },
      KEEN_WRITE_KEY: '***',
      MQTT_PASSWORD: '***',
      msg: 'starting',
    });
  });

  it('masks credentials inside URLs in messages and in format arguments', () => {
    const log = memoryLogger();
    log.logger.warn(`cannot reach redis://default:${SECRET}@redis:6379`);
    log.logger.warn('cannot reach %s (attempt %d)', `postgresql://lampi:${SECRET}@db/lampi`, 3);
    expect(log.written.join('')).not.toContain(SECRET);
    expect(log.records().map((r) => r.msg)).toEqual([
      'cannot reach redis://default:***@redis:6379',
      'cannot reach postgresql://lampi:***@db/lampi (attempt 3)',
    ]);
  });

  it('masks credentials in an error message and stack logged as { err }', () => {
    const log = memoryLogger();
    log.logger.error({ err: new Error(`connect ECONNREFUSED redis://u:${SECRET}@h:6379`) }, 'redis down');
    expect(log.written[0]).not.toContain(SECRET);
    const err = log.last().err as Record<string, unknown>;
    expect(err.type).toBe('Error');
    expect(err.message).toBe('connect ECONNREFUSED redis://u:***@h:6379');
    expect(err.stack).toMatch(/^Error: connect ECONNREFUSED redis:\/\/u:\*\*\*@h:6379\n/);
    expect(log.last().msg).toBe('redis down');
  });

  it('masks credentials when an error is logged without a message (pino then uses the error message as msg)', () => {
    const log = memoryLogger();
    const error = new Error(`cannot connect to mqtt://ingest:${SECRET}@broker:1883`);
    log.logger.error(error);
    log.logger.error({ err: error });
    expect(log.written).toHaveLength(2);
    for (const line of log.written) expect(line).not.toContain(SECRET);
    for (const record of log.records()) {
      expect(record.msg).toBe('cannot connect to mqtt://ingest:***@broker:1883');
      expect((record.err as Record<string, unknown>).message).toBe('cannot connect to mqtt://ingest:***@broker:1883');
    }
  });

  it('logs { err } holding a string or a non-Error value without throwing, masking URL credentials in strings', () => {
    const log = memoryLogger();
    expect(() => log.logger.error({ err: 'ECONNREFUSED' }, 'MQTT error')).not.toThrow();
    expect(() => log.logger.error({ err: `refused by redis://u:${SECRET}@h` }, 'Redis error')).not.toThrow();
    expect(() => log.logger.error({ err: { code: 'E_WEIRD' } }, 'odd')).not.toThrow();
    expect(() => log.logger.error({ err: null }, 'nothing')).not.toThrow();
    expect(() => log.logger.error({ err: 42 }, 'number')).not.toThrow();
    expect(log.written.join('')).not.toContain(SECRET);
    expect(log.records().map((r) => [r.msg, r.err])).toEqual([
      ['MQTT error', 'ECONNREFUSED'],
      ['Redis error', 'refused by redis://u:***@h'],
      ['odd', { code: 'E_WEIRD' }],
      ['nothing', null],
      ['number', 42],
    ]);
  });

  it("logs { err } in one shape: type, message, stack and the error's own fields such as code, beside the message", () => {
    const log = memoryLogger();
    const system = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:6379'), { code: 'ECONNREFUSED', port: 6379 });
    log.logger.error({ err: system, queue: 'lamp-states' }, 'Redis refused the job');
    log.logger.error({ err: new ConfigError('REDIS_URL is required') }, 'invalid configuration');
    const [first, second] = log.records();
    expect(Object.keys(first!.err as object).sort()).toEqual(['code', 'message', 'port', 'stack', 'type']);
    expect(first).toMatchObject({
      msg: 'Redis refused the job',
      queue: 'lamp-states',
      err: { type: 'Error', message: 'connect ECONNREFUSED 127.0.0.1:6379', code: 'ECONNREFUSED', port: 6379 },
    });
    expect((first!.err as { stack: string }).stack).toMatch(/^Error: connect ECONNREFUSED 127\.0\.0\.1:6379\n\s+at /);
    expect(second).toMatchObject({
      msg: 'invalid configuration',
      err: { type: 'ConfigError', message: 'REDIS_URL is required', code: 'LAMPI_CONFIG_INVALID', name: 'ConfigError' },
    });
  });

  it("masks URL passwords anywhere in a logged error: its cause, an AggregateError's errors, its own fields", () => {
    const log = memoryLogger();
    const cause = new Error(`cannot reach redis://default:${SECRET}@redis:6379`);
    log.logger.error({ err: new UsageError('queue unreachable', { cause }) }, 'with a cause');
    const aggregate = new AggregateError(
      [new Error(`refused by postgresql://lampi:${SECRET}@db/lampi`), new Error('second')],
      'all failed',
    );
    log.logger.error({ err: aggregate }, 'aggregate');
    const withField = Object.assign(new Error('connect failed'), {
      url: `mqtt://ingest:${SECRET}@broker:1883`,
      tried: [`redis://u:${SECRET}@h`],
    });
    log.logger.error({ err: withField }, 'own fields');
    const nested = Object.assign(new Error('outer'), { inner: new Error(`inner redis://u:${SECRET}@h`) });
    log.logger.error({ err: nested }, 'nested');
    expect(log.written).toHaveLength(4);
    for (const line of log.written) expect(line).not.toContain(SECRET);
    const [withCause, aggregated, fields, inner] = log.records().map((record) => record.err as Record<string, unknown>);
    expect(withCause!.message).toBe('queue unreachable: cannot reach redis://default:***@redis:6379');
    expect(withCause!.stack).toContain('caused by: Error: cannot reach redis://default:***@redis:6379');
    expect((aggregated!.aggregateErrors as Array<{ message: string }>).map((e) => e.message)).toEqual([
      'refused by postgresql://lampi:***@db/lampi',
      'second',
    ]);
    expect(fields).toMatchObject({ url: 'mqtt://ingest:***@broker:1883', tried: ['redis://u:***@h'] });
    expect(inner!.inner).toMatchObject({ type: 'Error', message: 'inner redis://u:***@h' });
  });

  it('keeps a message given alongside an error', () => {
    const log = memoryLogger();
    log.logger.error(new Error('boom'), 'handling failed');
    log.logger.error({ err: new Error('boom'), msg: 'own message' });
    expect(log.records().map((r) => r.msg)).toEqual(['handling failed', 'own message']);
  });
});

/** A log field `err` holding a description of an error rather than the error itself. */
const DESCRIBED_ERROR = /\berr: (describeError\(|String\(|messageOf\(|[\w.]+\.message\b|\w+ instanceof Error \?)/;

describe('logging an error', () => {
  it('is done one way across src: the error itself as `err`', async () => {
    const offending: string[] = [];
    for (const { relative, text } of await sourceFiles()) {
      text.split('\n').forEach((line, i) => {
        if (DESCRIBED_ERROR.test(line)) offending.push(`src/${relative}:${i + 1}: ${line.trim()}`);
      });
    }
    expect(offending).toEqual([]);
    expect(DESCRIBED_ERROR.test("log.error({ err: describeError(err) }, 'MQTT error')")).toBe(true);
    expect(DESCRIBED_ERROR.test("logger.error({ queue, err: err.message }, 'worker error')")).toBe(true);
    expect(DESCRIBED_ERROR.test("log.error({ err }, 'subscribe failed')")).toBe(false);
  });
});
