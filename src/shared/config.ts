import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { ConfigError } from './errors.js';

/**
 * Every setting is read from the environment here and nowhere else. Each process picks the
 * sections it needs, so the subscriber never asks for a Keen key and the worker never for
 * an MQTT share group.
 *
 * Any setting X can instead be given as X_FILE, the path of a file holding the value (as Docker
 * secrets and the postgres image do): a password then never passes through compose's `$`
 * interpolation or sits in a container's environment. One trailing newline is ignored.
 */

const url = (protocols: string[]) =>
  z.string().refine(
    (value) => {
      try {
        return protocols.includes(new URL(value).protocol);
      } catch {
        return false;
      }
    },
    `must be a URL starting with ${protocols.map((p) => `${p}//`).join(' or ')}`,
  );

/** KEEN_ATTEMPTS when it is not set (the dashboard, which does not read it, describes this one). */
export const DEFAULT_KEEN_ATTEMPTS = 12;
/** KEEN_PAUSE_PROBE_MS when it is not set. */
export const DEFAULT_KEEN_PAUSE_PROBE_MS = 30_000;

/** A broker of MQTT_BROKERS: its id (what bridge-state jobs record), URL and, once loaded, its login. */
export interface BrokerEntry {
  id: string;
  url: string;
  username?: string;
  password?: string;
}

const MQTT_URL_PROTOCOLS = ['mqtt:', 'mqtts:', 'tcp:', 'ssl:', 'ws:', 'wss:'];
/** Lower-case letters, digits and `-`, so that its settings' names (MQTT_BROKER_<ID>_PASSWORD) are one-to-one with it. */
const BROKER_ID = /^[a-z0-9][a-z0-9-]{0,31}$/;
const isBrokerUrl = (value: string) => url(MQTT_URL_PROTOCOLS).safeParse(value).success;

/** The settings that hold one broker's own login, e.g. MQTT_BROKER_EU_WEST_PASSWORD for `eu-west`. */
export function brokerLoginSettings(id: string): { username: string; password: string } {
  const name = `MQTT_BROKER_${id.toUpperCase().replaceAll('-', '_')}`;
  return { username: `${name}_USERNAME`, password: `${name}_PASSWORD` };
}

/** KEEN_SINK_MAX_RESULT_BYTES when it is not set: the most one keen-sink answer may hold, as JSON (32 MiB). */
export const DEFAULT_KEEN_SINK_MAX_RESULT_BYTES = 32 * 1024 * 1024;

const positiveInt = (fallback: number) => z.coerce.number().int().positive().default(fallback);
const optionalSecret = z.string().min(1).optional();
const postgresUrl = url(['postgres:', 'postgresql:']);
const keenProjectId = z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, 'a Keen project id (letters, digits, _ or -)');

/** `https://host[:port]` exactly, with no path: what a browser sends as `Origin`. */
function isOrigin(value: string): boolean {
  try {
    const parsed = new URL(value);
    return ['http:', 'https:'].includes(parsed.protocol) && parsed.origin === value;
  } catch {
    return false;
  }
}

/** A comma-separated list (blanks dropped, empty by default) whose every item passes `valid`; otherwise `problem`. */
export const commaList = (valid: (item: string) => boolean, problem: string, fallback = '') =>
  z
    .string()
    .default(fallback)
    .transform((value) =>
      value
        .split(',')
        .map((item) => item.trim())
        .filter(Boolean),
    )
    .refine((items) => items.every(valid), problem);

const sections = {
  common: {
    REDIS_URL: url(['redis:', 'rediss:']).default('redis://127.0.0.1:6379'),
    /** Seed nodes of a Redis Cluster, `host:port,host:port,…`; when set, REDIS_URL is not used. */
    REDIS_CLUSTER_NODES: commaList((node) => /^[A-Za-z0-9.-]+:\d{1,5}$/.test(node), 'must be comma-separated host:port pairs'),
    /** The password of the cluster's nodes, or of REDIS_URL when the URL has none (usually REDIS_PASSWORD_FILE). */
    REDIS_PASSWORD: optionalSecret,
    QUEUE_PREFIX: z
      .string()
      .regex(/^[A-Za-z0-9_-]+$/, 'letters, digits, _ and - only')
      .default('lampi'),
    LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  },
  ops: {
    /** /metrics, /healthz and /readyz. 0 picks a free port (it is logged); each process has its own default. */
    METRICS_PORT: z.coerce.number().int().min(0).max(65535).optional(),
    METRICS_HOST: z.string().min(1).default('0.0.0.0'),
  },
  mqtt: {
    MQTT_URL: url(MQTT_URL_PROTOCOLS).default('mqtt://127.0.0.1:1883'),
    /**
     * A fleet split over several brokers: `id=url,id=url`, the first being the default (jobs
     * that name no broker). When it is set, MQTT_URL is not used.
     */
    MQTT_BROKERS: commaList((item) => {
      const [id = '', ...rest] = item.split('=');
      return BROKER_ID.test(id) && isBrokerUrl(rest.join('='));
    }, 'must be id=url pairs, comma-separated (id: lower-case letters, digits and -, at most 32; url: mqtt:// or mqtts://...)')
      // Unset (or empty) is undefined, not [], so the single-broker configuration reads as before.
      .transform((items) =>
        items.length === 0
          ? undefined
          : items.map((item): BrokerEntry => ({ id: item.slice(0, item.indexOf('=')), url: item.slice(item.indexOf('=') + 1) })),
      )
      .refine((brokers) => brokers === undefined || new Set(brokers.map((b) => b.id)).size === brokers.length, 'names a broker id twice')
      .optional(),
    MQTT_USERNAME: optionalSecret,
    MQTT_PASSWORD: optionalSecret,
    /** Base of the fixed client ids that keep our persistent sessions across restarts. */
    MQTT_CLIENT_ID: z
      .string()
      .regex(/^[A-Za-z0-9_-]{1,40}$/, '1-40 letters, digits, _ or -')
      .default('lampi-ingest'),
  },
  subscriber: {
    /** Lamp-state topics are consumed through `$share/<group>/...` so connections (and replicas) split the load. */
    MQTT_SHARE_GROUP: z
      .string()
      .regex(/^[A-Za-z0-9_-]+$/, 'letters, digits, _ and - only')
      .default('lampi-ingest'),
    /** Connections sharing the lamp-state topics; each may hold the broker's in-flight window unacknowledged. */
    SUBSCRIBER_CONNECTIONS: positiveInt(4),
    /** With MQTT_BROKERS: the one broker this subscriber reads (one subscriber group per broker). */
    BROKER_ID: z.string().regex(BROKER_ID, 'lower-case letters, digits and -, at most 32').optional(),
  },
  database: {
    DATABASE_URL: postgresUrl,
    /** The password of DATABASE_URL's user when the URL has none (usually POSTGRES_PASSWORD_FILE); any characters. */
    POSTGRES_PASSWORD: optionalSecret,
  },
  migrate: {
    /** How long migrate waits for PostgreSQL to accept connections before it gives up; 0 tries once. */
    MIGRATE_WAIT_SECONDS: z.coerce.number().int().min(0).default(0),
  },
  registry: {
    /** `lampi`: our own users and devices tables. `django`: the LAMPI site's own lampi_lampi and auth_user. */
    REGISTRY_SCHEMA: z.enum(['lampi', 'django']).default('lampi'),
    /** Owner of lamps nobody has claimed. */
    DEFAULT_USER: z.string().min(1).max(150).default('parked_device_user'),
    /** Where a lamp listens for its association message; `{device_id}` stands for the lamp's id. */
    ASSOCIATION_TOPIC: z
      .string()
      .refine((t) => t.includes('{device_id}') && !/[+#]/.test(t), 'must contain {device_id} and no MQTT wildcard (+ or #)')
      .default('/devices/{device_id}/lamp/associated'),
  },
  worker: {
    /** Ingest jobs at once; each holds up to 100 lamp states, and waits while Keen takes them. */
    WORKER_CONCURRENCY: positiveInt(64),
    /** A lamp state from a lamp the registry does not know: `record` it as devicestate (the seed's way), or `reject` it. */
    UNKNOWN_DEVICE_STATES: z.enum(['record', 'reject']).default('record'),
  },
  keen: {
    KEEN_PROJECT_ID: keenProjectId,
    KEEN_WRITE_KEY: z.string().min(1),
    KEEN_API_URL: url(['http:', 'https:']).default('https://api.keen.io'),
    KEEN_TIMEOUT_MS: positiveInt(10_000),
    /** Events per bulk request, and how long a partial batch may wait for company. */
    KEEN_BATCH_SIZE: positiveInt(500),
    KEEN_LINGER_MS: z.coerce.number().int().min(0).default(20),
    KEEN_ATTEMPTS: positiveInt(DEFAULT_KEEN_ATTEMPTS),
    /** keen-delivery jobs at once; their events share bulk requests (KEEN_BATCH_SIZE each). */
    KEEN_CONCURRENCY: positiveInt(64),
    /** While Keen refuses the key or the account (401, 402, 403), how often delivery tries again. */
    KEEN_PAUSE_PROBE_MS: positiveInt(DEFAULT_KEEN_PAUSE_PROBE_MS),
  },
  /** keen-sink, the bundled Keen-compatible store, serving one project. */
  keenSink: {
    KEEN_SINK_PORT: z.coerce.number().int().min(0).max(65535).default(8080),
    KEEN_SINK_HOST: z.string().min(1).default('0.0.0.0'),
    /** Where its events are stored (created if missing); DATABASE_URL when unset (see FALLBACKS). */
    KEEN_SINK_DATABASE_URL: postgresUrl,
    /** The password of KEEN_SINK_DATABASE_URL's user when the URL has none. */
    POSTGRES_PASSWORD: optionalSecret,
    KEEN_PROJECT_ID: keenProjectId,
    KEEN_WRITE_KEY: z.string().min(1),
    KEEN_READ_KEY: z.string().min(1),
    /** The most one query's answer may hold, as JSON bytes: bounds the memory a query can take. */
    KEEN_SINK_MAX_RESULT_BYTES: z.coerce.number().int().min(1024).default(DEFAULT_KEEN_SINK_MAX_RESULT_BYTES),
    /** Origins whose web pages may call keen-sink (CORS): exact origins such as https://lamps.example.com, or * for any. */
    KEEN_SINK_CORS_ORIGINS: commaList(
      (origin) => origin === '*' || isOrigin(origin),
      'must be comma-separated origins such as https://lamps.example.com (scheme, host and port only), or *',
    ),
  },
  /** secrets-init (compose): the secrets it writes, each taken from here when set, else kept or generated. */
  secrets: {
    /** The folder (a compose volume) it writes the secret files into. */
    SECRETS_DIR: z.string().min(1).default('/run/secrets/lampi'),
    /** Names and addresses lamps reach the broker by, comma-separated: the TLS certificate's subjectAltName. */
    TLS_SERVER_NAMES: commaList(
      (name) => /^[A-Za-z0-9.:*-]+$/.test(name),
      'must be comma-separated host names or IP addresses',
      'localhost,127.0.0.1',
    ).refine((names) => names.length > 0, 'must name at least one host name or IP address'),
    POSTGRES_PASSWORD: optionalSecret,
    KEEN_WRITE_KEY: optionalSecret,
    KEEN_READ_KEY: optionalSecret,
  },
  dashboard: {
    DASHBOARD_PORT: z.coerce.number().int().min(0).max(65535).default(3000),
    /** Bound to loopback by default; any other address needs DASHBOARD_USERNAME and DASHBOARD_PASSWORD. */
    DASHBOARD_HOST: z.string().min(1).default('127.0.0.1'),
    DASHBOARD_USERNAME: optionalSecret,
    DASHBOARD_PASSWORD: optionalSecret,
    /** true turns off every mutating action (retry, clean, remove, pause, add). */
    DASHBOARD_READ_ONLY: z.stringbool({ error: 'must be true or false' }).default(false),
  },
} as const;

/** A setting that, when unset, takes another's value: keen-sink stores into the registry's database unless told otherwise. */
const FALLBACKS: Readonly<Record<string, string>> = { KEEN_SINK_DATABASE_URL: 'DATABASE_URL' };

/** The PostgreSQL URLs that take POSTGRES_PASSWORD as their user's password. */
const POSTGRES_URLS = ['DATABASE_URL', 'KEEN_SINK_DATABASE_URL'];

type Sections = typeof sections;
export type SectionName = keyof Sections;
type SectionConfig = { [K in SectionName]: z.infer<z.ZodObject<Sections[K]>> };
type UnionToIntersection<U> = (U extends unknown ? (x: U) => void : never) extends (x: infer I) => void ? I : never;
export type Config<S extends SectionName> = UnionToIntersection<SectionConfig[S]>;

/**
 * Reads the named sections from `env`. A missing or invalid setting throws a ConfigError whose
 * message is one line naming the variable and what it must be.
 */
export function loadConfig<S extends SectionName>(names: readonly S[], env: NodeJS.ProcessEnv = process.env): Config<S> {
  const shape = Object.assign({}, ...names.map((name) => sections[name]));
  const keys = Object.keys(shape);
  const fallbacks = keys.flatMap((key) => (Object.hasOwn(FALLBACKS, key) && !keys.includes(FALLBACKS[key]!) ? [FALLBACKS[key]!] : []));
  const { input, problems } = readSettings([...keys, ...fallbacks], env);
  for (const key of keys) if (Object.hasOwn(FALLBACKS, key)) input[key] ??= input[FALLBACKS[key]!];
  const parsed = z.object(shape).safeParse(input);
  const missing = (key: string) => (Object.hasOwn(FALLBACKS, key) ? `${key} (or ${FALLBACKS[key]}) is required` : `${key} is required`);
  if (!parsed.success) problems.push(...settingProblems(parsed.error.issues, input, problems, missing));
  if (parsed.success && 'MQTT_BROKERS' in shape) problems.push(...loadBrokerLogins(parsed.data, env, 'BROKER_ID' in shape));
  if (problems.length > 0) throw new ConfigError(`invalid configuration: ${problems.join('; ')}`);
  const config = parsed.data as Record<string, unknown>;
  const urls = POSTGRES_URLS.filter((key) => typeof config[key] === 'string');
  for (const key of urls) config[key] = withPassword(config[key] as string, config.POSTGRES_PASSWORD as string | undefined);
  // Now part of the URL; no second copy of the password travels through the process.
  if (urls.length > 0) delete config.POSTGRES_PASSWORD;
  return config as Config<S>;
}

/**
 * Gives each broker of MQTT_BROKERS its login: MQTT_BROKER_<ID>_USERNAME and _PASSWORD (or their
 * _FILE), each falling back to MQTT_USERNAME and MQTT_PASSWORD. With the subscriber's section,
 * checks that BROKER_ID names one of them. Returns the problems, one phrase each.
 */
function loadBrokerLogins(config: Record<string, unknown>, env: NodeJS.ProcessEnv, subscriber: boolean): string[] {
  const brokers = (config.MQTT_BROKERS as BrokerEntry[] | undefined) ?? [];
  const brokerId = config.BROKER_ID as string | undefined;
  const problems: string[] = [];
  if (subscriber && brokers.length > 0 && !brokers.some((b) => b.id === brokerId)) {
    const ids = brokers.map((b) => b.id).join(', ');
    problems.push(
      brokerId === undefined
        ? `BROKER_ID is required with MQTT_BROKERS: set it to the broker this subscriber reads (${ids})`
        : `BROKER_ID=${brokerId} is not in MQTT_BROKERS (${ids})`,
    );
  }
  if (subscriber && brokers.length === 0 && brokerId !== undefined)
    problems.push('BROKER_ID names a broker of MQTT_BROKERS: set MQTT_BROKERS too, or unset BROKER_ID');
  for (const broker of brokers) {
    const names = brokerLoginSettings(broker.id);
    const own = readSettings([names.username, names.password], env);
    problems.push(...own.problems);
    const username = own.input[names.username] ?? (config.MQTT_USERNAME as string | undefined);
    const password = own.input[names.password] ?? (config.MQTT_PASSWORD as string | undefined);
    Object.assign(broker, username === undefined ? {} : { username }, password === undefined ? {} : { password });
  }
  return problems;
}

/**
 * The raw values of `keys`: X from the environment, or the contents of the file X_FILE names;
 * empty counts as unset. A file that cannot be read, or X and X_FILE both set, is a problem
 * (one phrase naming the variable), never an exception.
 */
export function readSettings(
  keys: readonly string[],
  env: NodeJS.ProcessEnv,
): { input: Record<string, string | undefined>; problems: string[] } {
  const input: Record<string, string | undefined> = {};
  const problems: string[] = [];
  for (const key of keys) {
    const value = env[key] === '' ? undefined : env[key];
    const file = env[`${key}_FILE`] === '' ? undefined : env[`${key}_FILE`];
    if (value !== undefined && file !== undefined) problems.push(`${key}_FILE and ${key} are both set: set only one`);
    else if (file === undefined) input[key] = value;
    else {
      try {
        input[key] = readFileSync(file, 'utf8').replace(/\r?\n$/, '') || undefined;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code ?? 'error';
        problems.push(`${key}_FILE=${file} cannot be read (${code}): fix the path or the file's permissions`);
      }
    }
  }
  return { input, problems };
}

/**
 * One phrase per setting the schema refused: `X is required` (or `missing(X)`'s own wording)
 * when it is unset, else `X <what is wrong>`. A setting whose X_FILE is among `reported` (it
 * could not be read) was reported already, as the file.
 */
export function settingProblems(
  issues: readonly z.core.$ZodIssue[],
  input: Readonly<Record<string, string | undefined>>,
  reported: readonly string[],
  missing: (key: string) => string = (key) => `${key} is required`,
): string[] {
  const problems: string[] = [];
  for (const issue of issues) {
    const key = String(issue.path[0]);
    if (reported.some((p) => p.startsWith(`${key}_FILE`))) continue;
    problems.push(input[key] === undefined ? missing(key) : `${key} ${issue.message}`);
  }
  return problems;
}

/** `url` with `password` as its user's password, unless the URL carries one already (that one wins). */
export function withPassword(url: string, password: string | undefined): string {
  if (password === undefined) return url;
  const parsed = new URL(url);
  if (parsed.password !== '') return url;
  parsed.password = encodeURIComponent(password);
  return parsed.toString();
}
