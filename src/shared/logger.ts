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

const CREDENTIALS_IN_URL = /(\b[a-z][a-z0-9+.-]*:\/\/)([^:@/\s]*):([^@/\s]*)@/gi;

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
          method.apply(
            this,
            args.map((arg) => (typeof arg === 'string' ? redactUrl(arg) : arg)) as Parameters<typeof method>,
          );
        },
      },
      serializers: { err: (err: Error) => ({ ...pino.stdSerializers.err(err), message: redactUrl(err.message), stack: err.stack && redactUrl(err.stack) }) },
    },
    destination,
  );
}
