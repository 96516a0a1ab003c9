import { pino, type Logger } from 'pino';

export type { Logger };

/** Anything that could carry a secret is censored wherever it appears in a log line. */
const REDACT = [
  'password',
  '*.password',
  'writeKey',
  '*.writeKey',
  'authorization',
  '*.authorization',
  '*.headers.authorization',
  'KEEN_WRITE_KEY',
  '*.KEEN_WRITE_KEY',
  'MQTT_PASSWORD',
  '*.MQTT_PASSWORD',
  'DASHBOARD_PASSWORD',
  '*.DASHBOARD_PASSWORD',
];

/** The password runs to the last `@` of the authority, as URL parsers read it: `p@ss` in `u:p@ss@host`. */
const CREDENTIALS_IN_URL = /(\b[a-z][a-z0-9+.-]*:\/\/)([^:@/\s]*):([^/?#\s]*)@/gi;

/** `redis://user:secret@host` becomes `redis://user:***@host`. */
export function redactUrl(text: string): string {
  return text.replace(CREDENTIALS_IN_URL, '$1$2:***@');
}

export function createLogger(name: string, level = 'info', destination?: pino.DestinationStream): Logger {
  return pino(
    {
      name,
      level,
      base: { process: name },
      redact: { paths: REDACT, censor: '***' },
      formatters: { level: (label) => ({ level: label }) },
      timestamp: pino.stdTimeFunctions.isoTime,
      hooks: {
        // Error messages from drivers often echo the connection URL they failed on.
        logMethod(args, method) {
          const redacted: unknown[] = args.map((arg) => (typeof arg === 'string' ? redactUrl(arg) : arg));
          // Given no message, pino copies the error's raw message into `msg`, past the serializer.
          const message = args.length === 1 ? implicitErrorMessage(args[0]) : undefined;
          if (message !== undefined) redacted.push(redactUrl(message));
          method.apply(this, redacted as Parameters<typeof method>);
        },
      },
      serializers: { err: serializeError },
    },
    destination,
  );
}

/**
 * The one way to log an error: `logger.error({ err }, 'what failed')`, with whatever was thrown.
 * pino's serializer gives `err` its type, message and stack (a cause's and an AggregateError's
 * errors included) and the error's own fields (`code`: ours, Node's, PostgreSQL's); every string
 * in it is redacted, so a URL with a password in any of them is masked. Never throws.
 */
function serializeError(err: unknown): unknown {
  if (typeof err === 'string') return redactUrl(err);
  if (typeof err !== 'object' || err === null || typeof (err as Error).message !== 'string') return err;
  return redactStrings(pino.stdSerializers.err(err as Error), new WeakSet());
}

/** Strings in plain objects and arrays (what the serializer makes) redacted; other objects (a Date, a Buffer) kept as they are. */
function redactStrings(value: unknown, seen: WeakSet<object>): unknown {
  if (typeof value === 'string') return redactUrl(value);
  if (typeof value !== 'object' || value === null || seen.has(value)) return value;
  seen.add(value);
  if (Array.isArray(value)) return value.map((item) => redactStrings(item, seen));
  const constructor = (value as { constructor?: unknown }).constructor;
  if (constructor !== Object && constructor !== undefined) return value;
  return Object.fromEntries(Object.entries(value).map(([key, item]) => [key, redactStrings(item, seen)]));
}

/** The message pino would take from `log.error(err)` or `log.error({ err })` when none is given. */
function implicitErrorMessage(arg: unknown): string | undefined {
  if (typeof arg !== 'object' || arg === null) return undefined;
  const source = arg instanceof Error ? arg : (arg as { msg?: unknown }).msg === undefined ? (arg as { err?: unknown }).err : undefined;
  const message = typeof source === 'object' && source !== null ? (source as { message?: unknown }).message : undefined;
  return typeof message === 'string' ? message : undefined;
}
