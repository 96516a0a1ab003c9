/**
 * docker-compose.yml stays true to the code: every command's entry file exists, every variable a
 * service of ours is given is one that process reads, the values compose gives pass the
 * processes' own validation, only the broker and the dashboard are published, Redis keeps its
 * jobs, the broker's mounted config is the one with the large queues, and start-up order holds.
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { loadConfig, type SectionName } from '../../src/shared/config.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const read = (file: string) => readFileSync(path.join(ROOT, file), 'utf8');

interface Service {
  image?: string;
  build?: string | { context: string };
  command?: string[] | string;
  entrypoint?: string[] | string;
  environment?: Record<string, string | number | boolean | null> | string[];
  ports?: Array<string | { published: number | string; target: number }>;
  volumes?: string[];
  depends_on?: Record<string, { condition: string }> | string[];
  healthcheck?: { test: string[] | string };
  container_name?: string;
  restart?: string;
  deploy?: unknown;
}
const compose = parse(read('docker-compose.yml'), { merge: true }) as { services: Record<string, Service>; volumes?: Record<string, unknown> };
const services = compose.services;
const ours = Object.entries(services).filter(([, s]) => s.build !== undefined);

/** Compose's interpolation: `$$`, `${X}`, `${X:-default}`, `${X-default}`, `${X:?message}`. */
function interpolate(value: string, env: Record<string, string>): string {
  return value.replace(/\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}/g, (whole, name: string | undefined, op: string | undefined, arg: string | undefined) => {
    if (whole === '$$') return '$';
    const set = env[name!];
    if (op === ':-') return set ? set : arg!;
    if (op === '-') return set ?? arg!;
    if (op === ':?' || op === '?') {
      if (!set) throw new Error(`required variable ${name}: ${arg}`);
      return set;
    }
    return set ?? '';
  });
}

function environmentOf(service: Service, env: Record<string, string>): Record<string, string> {
  const raw = service.environment ?? {};
  const entries = Array.isArray(raw) ? raw.map((line) => line.split(/=(.*)/s).slice(0, 2) as [string, string]) : Object.entries(raw).map(([k, v]) => [k, v === null ? '' : String(v)] as [string, string]);
  return Object.fromEntries(entries.map(([k, v]) => [k, interpolate(v, env)]));
}

/** The names in each section of src/shared/config.ts, read from its source. */
function sharedSections(): Record<string, string[]> {
  const source = read('src/shared/config.ts');
  const block = /const sections = \{([\s\S]*?)\n\} as const;/.exec(source)?.[1];
  if (!block) throw new Error('cannot find `const sections = {...} as const` in src/shared/config.ts');
  const result: Record<string, string[]> = {};
  let current: string | undefined;
  for (const line of block.split('\n')) {
    const section = /^ {2}(\w+): \{/.exec(line);
    if (section) current = section[1]!;
    const key = /^ {4}([A-Z][A-Z0-9_]*):/.exec(line);
    if (key && current) (result[current] ??= []).push(key[1]!);
  }
  return result;
}
const SECTIONS = sharedSections();

/** The image's build (scripts/build.mjs) compiles exactly these entry points to dist/<name>/main.mjs. */
const BUILT = [...read('scripts/build.mjs').match(/const ENTRIES = \[([^\]]*)\]/)![1]!.matchAll(/'([\w-]+)'/g)].map((m) => m[1]!);

/** `node [V8 flags] dist/<name>/main.mjs` → the source it is built from, src/<name>/main.ts. */
function entryFile(service: Service): string {
  const command = Array.isArray(service.command) ? service.command : (service.command ?? '').split(/\s+/);
  expect(command[0]).toBe('node');
  const script = command.at(-1)!;
  // Anything between is a V8 flag (heap sizes), never a loader: the image runs compiled code.
  for (const flag of command.slice(1, -1)) expect(flag).toMatch(/^--max-(old|semi)-space-size=\d+$/);
  const name = /^dist\/([\w-]+)\/main\.mjs$/.exec(script)?.[1];
  expect(name, `${script} is not a built entry point`).toBeDefined();
  expect(BUILT).toContain(name);
  return `src/${name}/main.ts`;
}

/** What one process of ours reads: the shared sections its main (or its own config.ts) loads, plus its own config.ts's names. */
function variablesReadBy(entry: string): { sections: SectionName[]; names: Set<string> } {
  const dir = path.dirname(entry);
  const sources = ['main.ts', 'config.ts'].map((f) => path.join(dir, f)).filter((f) => existsSync(path.join(ROOT, f))).map(read);
  const sections = new Set<SectionName>();
  for (const source of sources) {
    for (const call of source.matchAll(/loadConfig\(\s*\[([^\]]*)\]/g)) {
      for (const name of call[1]!.matchAll(/'(\w+)'/g)) {
        if (!(name[1]! in SECTIONS)) throw new Error(`${entry} loads unknown config section ${name[1]}`);
        sections.add(name[1] as SectionName);
      }
    }
  }
  const names = new Set([...sections].flatMap((s) => SECTIONS[s]!));
  const own = path.join(dir, 'config.ts');
  if (existsSync(path.join(ROOT, own))) {
    const source = read(own);
    for (const m of source.matchAll(/^\s+([A-Z][A-Z0-9_]*):/gm)) names.add(m[1]!);
    for (const m of source.matchAll(/'([A-Z][A-Z0-9_]{2,})'/g)) names.add(m[1]!); // fallbacks such as value('DATABASE_URL')
  }
  return { sections: [...sections], names };
}

const hostEnv = { MQTT_PASSWORD: 'test-mqtt-password', DASHBOARD_PASSWORD: 'test-dashboard-password' };

describe('docker-compose.yml', () => {
  it('has the pipeline\'s services, with the images the project is tested against', () => {
    expect(Object.keys(services).sort()).toEqual(['dashboard', 'keen-sink', 'migrate', 'mosquitto', 'postgres', 'redis', 'subscriber', 'worker']);
    expect(services.mosquitto!.image).toBe('eclipse-mosquitto:2');
    expect(services.redis!.image).toBe('redis:7.4');
    expect(services.postgres!.image).toBe('postgres:16');
    expect(ours.map(([name]) => name).sort()).toEqual(['dashboard', 'keen-sink', 'migrate', 'subscriber', 'worker']);
    for (const [, service] of ours) expect(service.build).toBe('.');
    expect(existsSync(path.join(ROOT, 'Dockerfile'))).toBe(true);
  });

  it.each(ours)('%s: runs an entry file that exists', (name, service) => {
    const entry = entryFile(service);
    expect(entry).toBe(`src/${name}/main.ts`);
    expect(existsSync(path.join(ROOT, entry)), `${entry} is missing`).toBe(true);
  });

  it.each(ours)('%s: every environment variable it is given is one that process reads', (_name, service) => {
    const { names } = variablesReadBy(entryFile(service));
    const given = Object.keys(environmentOf(service, hostEnv));
    expect(given.length).toBeGreaterThan(0);
    expect(given.filter((key) => !names.has(key))).toEqual([]);
  });

  it.each(ours)('%s: the values compose gives pass the process\'s own validation', async (name, service) => {
    const env = environmentOf(service, hostEnv);
    const { sections } = variablesReadBy(entryFile(service));
    if (name === 'keen-sink') {
      const { loadKeenSinkConfig } = await import('../../src/keen-sink/config.js');
      expect(() => loadKeenSinkConfig(env)).not.toThrow();
    } else {
      expect(sections.length).toBeGreaterThan(0);
      expect(() => loadConfig(sections, env)).not.toThrow();
    }
  });

  it('asks for the secrets that guard published ports, and says where to set them', () => {
    expect(() => environmentOf(services.worker!, {})).toThrow(/required variable MQTT_PASSWORD: set MQTT_PASSWORD .* in \.env/);
    expect(() => environmentOf(services.dashboard!, { MQTT_PASSWORD: 'x' })).toThrow(/required variable DASHBOARD_PASSWORD: set DASHBOARD_PASSWORD in \.env/);
    const example = read('.env.example');
    expect(example).toMatch(/^MQTT_PASSWORD=/m);
    expect(example).toMatch(/^DASHBOARD_PASSWORD=/m);
  });

  it('the broker and our services agree on the MQTT login, and the worker on keen-sink\'s keys and port', () => {
    const broker = environmentOf(services.mosquitto!, hostEnv);
    for (const name of ['subscriber', 'worker']) {
      const env = environmentOf(services[name]!, hostEnv);
      expect(env.MQTT_USERNAME).toBe(broker.MQTT_USERNAME);
      expect(env.MQTT_PASSWORD).toBe(broker.MQTT_PASSWORD);
      expect(env.MQTT_URL).toBe('mqtt://mosquitto:1883');
    }
    const worker = environmentOf(services.worker!, hostEnv);
    const sink = environmentOf(services['keen-sink']!, hostEnv);
    expect(worker.KEEN_API_URL).toBe(`http://keen-sink:${sink.KEEN_SINK_PORT}`);
    expect(sink.KEEN_SINK_PORT).toBe('8080');
    expect(worker.KEEN_PROJECT_ID).toBe(sink.KEEN_PROJECT_ID);
    expect(worker.KEEN_WRITE_KEY).toBe(sink.KEEN_WRITE_KEY);
    expect(worker.DATABASE_URL).toBe(environmentOf(services.migrate!, hostEnv).DATABASE_URL);
    expect(new URL(worker.DATABASE_URL!).host).toBe('postgres:5432');
  });

  it('publishes only the broker (1883), the dashboard (3000) and keen-sink on loopback (8080); nothing else has a host port or a fixed name', () => {
    const published = Object.fromEntries(Object.entries(services).filter(([, s]) => s.ports?.length).map(([name, s]) => [name, s.ports!.map(String)]));
    expect(published).toEqual({ mosquitto: ['1883:1883'], dashboard: ['3000:3000'], 'keen-sink': ['127.0.0.1:8080:8080'] });
    for (const [name, service] of Object.entries(services)) expect(service.container_name, `${name} has a container_name`).toBeUndefined();
    expect(environmentOf(services.dashboard!, hostEnv).DASHBOARD_PORT).toBe('3000');
  });

  it('Redis keeps its jobs: append-only file, fsync every second, and never evicts', () => {
    const command = services.redis!.command as string[];
    const option = (name: string) => command[command.indexOf(name) + 1];
    expect(command[0]).toBe('redis-server');
    expect(option('--appendonly')).toBe('yes');
    expect(option('--appendfsync')).toBe('everysec');
    expect(option('--maxmemory-policy')).toBe('noeviction');
    expect(services.redis!.volumes?.some((v) => v.endsWith(':/data'))).toBe(true);
  });

  it('the broker runs the mounted deploy/mosquitto config: large queues, no Nagle, persistence, logins', () => {
    const mosquitto = services.mosquitto!;
    const mount = mosquitto.volumes!.find((v) => v.split(':')[1] === '/mosquitto/config');
    expect(mount).toBeDefined();
    const hostDir = path.join(ROOT, mount!.split(':')[0]!);
    const command = mosquitto.command as string[];
    const confPath = command[command.indexOf('-c') + 1]!;
    expect(confPath.startsWith('/mosquitto/config/')).toBe(true);
    const confFile = path.join(hostDir, path.relative('/mosquitto/config', confPath));
    expect(existsSync(confFile), `${confFile} is missing`).toBe(true);
    const entrypoint = (mosquitto.entrypoint as string[]).at(-1)!;
    expect(existsSync(path.join(hostDir, path.relative('/mosquitto/config', entrypoint)))).toBe(true);

    const settings = new Map<string, string[]>();
    for (const line of readFileSync(confFile, 'utf8').split('\n')) {
      const m = /^([a-z_]+)\s+(.*?)\s*$/.exec(line.trim());
      if (m && !line.trim().startsWith('#')) settings.set(m[1]!, [...(settings.get(m[1]!) ?? []), m[2]!]);
    }
    const one = (key: string) => settings.get(key)?.at(-1);
    const queued = Number(one('max_queued_messages'));
    const queuedBytes = Number(one('max_queued_bytes') ?? 0);
    // Above Mosquitto's default of 1000, or unlimited (0) with a byte limit.
    expect(queued > 1000 || (queued === 0 && queuedBytes > 0)).toBe(true);
    expect(one('set_tcp_nodelay')).toBe('true');
    expect(one('persistence')).toBe('true');
    expect(settings.get('listener')).toEqual(['1883']);
    expect(one('allow_anonymous')).toBe('false');
    expect(one('password_file')).toBeDefined();
    expect(one('acl_file')).toBeDefined();
    expect(existsSync(path.join(hostDir, 'acl.template'))).toBe(true);
    expect(mosquitto.volumes!.some((v) => v.endsWith(':/mosquitto/data'))).toBe(true);
    expect(one('persistence_location')).toBe('/mosquitto/data/');
  });

  it('every depends_on target exists and can satisfy its condition; start-up order has no cycle', () => {
    const conditions = new Set(['service_started', 'service_healthy', 'service_completed_successfully']);
    const graph = new Map<string, string[]>();
    for (const [name, service] of Object.entries(services)) {
      const deps = Array.isArray(service.depends_on)
        ? Object.fromEntries(service.depends_on.map((d) => [d, { condition: 'service_started' }]))
        : (service.depends_on ?? {});
      graph.set(name, Object.keys(deps));
      for (const [target, { condition }] of Object.entries(deps)) {
        expect(services[target], `${name} depends on missing service ${target}`).toBeDefined();
        expect(conditions.has(condition), `${name} → ${target}: unknown condition ${condition}`).toBe(true);
        if (condition === 'service_healthy') expect(services[target]!.healthcheck, `${target} has no healthcheck`).toBeDefined();
        if (condition === 'service_completed_successfully') expect(services[target]!.restart).toBe('no');
      }
    }
    const visiting = new Set<string>();
    const done = new Set<string>();
    const visit = (name: string) => {
      if (done.has(name)) return;
      if (visiting.has(name)) throw new Error(`depends_on cycle through ${name}`);
      visiting.add(name);
      for (const dep of graph.get(name) ?? []) visit(dep);
      visiting.delete(name);
      done.add(name);
    };
    for (const name of graph.keys()) visit(name);
  });

  it('starts in order: services wait for healthy redis/postgres/mosquitto, the worker for a finished migrate', () => {
    for (const name of ['redis', 'postgres', 'mosquitto']) expect(services[name]!.healthcheck, `${name} has no healthcheck`).toBeDefined();
    const needs = (name: string) => services[name]!.depends_on as Record<string, { condition: string }>;
    expect(needs('migrate')).toEqual({ postgres: { condition: 'service_healthy' } });
    expect(needs('worker')).toMatchObject({ migrate: { condition: 'service_completed_successfully' }, redis: { condition: 'service_healthy' }, mosquitto: { condition: 'service_healthy' } });
    expect(needs('subscriber')).toMatchObject({ redis: { condition: 'service_healthy' }, mosquitto: { condition: 'service_healthy' } });
    expect(needs('dashboard')).toMatchObject({ redis: { condition: 'service_healthy' } });
  });

  it('named volumes it mounts are declared', () => {
    const named = Object.values(services).flatMap((s) => (s.volumes ?? []).map((v) => v.split(':')[0]!).filter((src) => !src.startsWith('.') && !src.startsWith('/')));
    for (const volume of named) expect(compose.volumes, `volume ${volume} is not declared`).toHaveProperty(volume);
  });
});

describe('Dockerfile and .dockerignore', () => {
  // Instructions only: the comments mention the same words.
  const dockerfile = read('Dockerfile').split('\n').filter((line) => !line.trimStart().startsWith('#')).join('\n');
  it('one image: node 20 slim, npm ci, Prisma client generated at install, non-root', () => {
    expect(dockerfile).toMatch(/^FROM node:20-bookworm-slim$/m);
    expect(dockerfile).toMatch(/^RUN npm ci\b/m);
    expect(dockerfile).toMatch(/npm run generate/);
    expect(dockerfile).toMatch(/^USER node$/m);
    // What `npm run generate` needs is in the image before it runs.
    const generate = dockerfile.indexOf('npm run generate');
    for (const needed of ['prisma.config.ts', 'COPY prisma', 'COPY scripts', 'package-lock.json']) {
      const at = dockerfile.indexOf(needed);
      expect(at, `${needed} must be copied before generate`).toBeGreaterThan(-1);
      expect(at).toBeLessThan(generate);
    }
    const pkg = JSON.parse(read('package.json')) as { scripts: Record<string, string> };
    expect(pkg.scripts.postinstall).toBe('npm run generate');
  });

  it('the build context leaves out node_modules and the generated client (both are made in the image)', () => {
    const ignored = read('.dockerignore').split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
    expect(ignored).toEqual(expect.arrayContaining(['node_modules', 'src/generated', '.git', '.env']));
    // Everything the processes run must stay in the context.
    for (const needed of ['src', 'prisma', 'scripts', 'package.json', 'package-lock.json', 'prisma.config.ts']) expect(ignored).not.toContain(needed);
  });
});
