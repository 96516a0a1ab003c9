/**
 * keen-sink's settings. Kept beside the service rather than in src/shared/config.ts because
 * only keen-sink reads them, and one of them (KEEN_SINK_DATABASE_URL) falls back to another
 * variable, which the shared per-section loader does not express. As there, any setting X may be
 * given as X_FILE, and POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE) is the database user's
 * password when the URL has none.
 */
import { z } from 'zod';
import { commaList, loadConfig, readSettings, settingProblems, withPassword } from '../shared/config.js';
import { DEFAULT_MAX_RESULT_BYTES } from './query.js';
import { ConfigError } from '../shared/errors.js';

const postgresUrl = z.string().refine((value) => {
  try {
    return ['postgres:', 'postgresql:'].includes(new URL(value).protocol);
  } catch {
    return false;
  }
}, 'must be a URL starting with postgres:// or postgresql://');

function isOrigin(value: string): boolean {
  try {
    const url = new URL(value);
    return ['http:', 'https:'].includes(url.protocol) && url.origin === value;
  } catch {
    return false;
  }
}

const schema = z.object({
  KEEN_SINK_PORT: z.coerce.number().int().min(0).max(65535).default(8080),
  KEEN_SINK_HOST: z.string().min(1).default('0.0.0.0'),
  KEEN_SINK_DATABASE_URL: postgresUrl,
  KEEN_PROJECT_ID: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, 'a Keen project id (letters, digits, _ or -)'),
  KEEN_WRITE_KEY: z.string().min(1),
  KEEN_READ_KEY: z.string().min(1),
  /** The most one query's answer may hold, as JSON bytes (32 MiB): bounds the memory a query can take. */
  KEEN_SINK_MAX_RESULT_BYTES: z.coerce.number().int().min(1024).default(DEFAULT_MAX_RESULT_BYTES),
  /**
   * Origins whose web pages may call keen-sink (CORS), comma-separated exact origins such as
   * "https://lamps.example.com", or "*" for any. Default: none.
   */
  KEEN_SINK_CORS_ORIGINS: commaList(
    (origin) => origin === '*' || isOrigin(origin),
    'must be comma-separated origins such as https://lamps.example.com (scheme, host and port only), or *',
  ),
});

export type KeenSinkConfig = z.infer<typeof schema> & { LOG_LEVEL: string };

export function loadKeenSinkConfig(env: NodeJS.ProcessEnv = process.env): KeenSinkConfig {
  const { LOG_LEVEL } = loadConfig(['common'], env);
  const { input, problems } = readSettings([...Object.keys(schema.shape), 'DATABASE_URL', 'POSTGRES_PASSWORD'], env);
  input.KEEN_SINK_DATABASE_URL ??= input.DATABASE_URL;
  const parsed = schema.safeParse(input);
  if (!parsed.success) {
    const missing = (key: string) =>
      key === 'KEEN_SINK_DATABASE_URL' ? 'KEEN_SINK_DATABASE_URL (or DATABASE_URL) is required' : `${key} is required`;
    problems.push(...settingProblems(parsed.error.issues, input, problems, missing));
  }
  if (problems.length > 0 || !parsed.success) throw new ConfigError(`invalid configuration: ${problems.join('; ')}`);
  return { ...parsed.data, KEEN_SINK_DATABASE_URL: withPassword(parsed.data.KEEN_SINK_DATABASE_URL, input.POSTGRES_PASSWORD), LOG_LEVEL };
}
