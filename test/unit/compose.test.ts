/**
 * docker-compose.yml and the Dockerfile stay true to the code, checked statically (this machine
 * cannot pull images, so compose itself never runs here): every command's entry file exists,
 * every variable a service of ours is given is one that process reads, the values compose gives
 * pass the processes' own validation with no .env at all, no secret is written into the file,
 * only the broker's TLS port faces all interfaces, healthchecks test what they claim, every
 * container has a memory limit, one service builds the image, Redis keeps its jobs, the
 * broker's mounted config is the one with the large queues and TLS, and start-up order holds.
 */
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { loadConfig } from '../../src/shared/config.js';
import { BUILT, ROOT, SECTIONS, entryFile, environmentOf, interpolate, read, variablesReadBy } from '../support/process-settings.js';

interface Service {
  image?: string;
  build?: string | { context: string };
  command?: string[] | string;
  entrypoint?: string[] | string;
  environment?: Record<string, string | number | boolean | null> | string[];
  ports?: Array<string | { published: number | string; target: number }>;
  volumes?: string[];
  depends_on?: Record<string, { condition: string }> | string[];
  healthcheck?: { test: string[] | string; start_period?: string };
  container_name?: string;
  restart?: string;
  deploy?: unknown;
  mem_limit?: string;
  pull_policy?: string;
  user?: string;
}
const compose = parse(read('docker-compose.yml'), { merge: true }) as {
  services: Record<string, Service>;
  volumes?: Record<string, unknown>;
};
const services = compose.services;
const IMAGE = 'lampi-ingest:local';
const ours = Object.entries(services).filter(([, s]) => s.image === IMAGE);

// A fresh clone: no .env at all.
const hostEnv: Record<string, string> = {};
const SECRETS_DIR = '/run/secrets/lampi';

/** A published port, long or short syntax, as { host ip (undefined: all interfaces), host port, container port }. */
function published(port: string | { published: number | string; target: number; host_ip?: string }, env: Record<string, string> = hostEnv) {
  if (typeof port !== 'string') return { ip: port.host_ip, host: String(port.published), target: String(port.target) };
  const parts = interpolate(port, env).split(':');
  const target = parts.pop()!;
  const host = parts.pop() ?? target;
  return { ip: parts[0], host, target };
}

describe('docker-compose.yml', () => {
  it("has the pipeline's services, with the images the project is tested against", () => {
    expect(Object.keys(services).sort()).toEqual([
      'dashboard',
      'keen-sink',
      'migrate',
      'mosquitto',
      'postgres',
      'redis',
      'secrets-init',
      'subscriber',
      'worker',
    ]);
    expect(services.mosquitto!.image).toBe('eclipse-mosquitto:2');
    expect(services.redis!.image).toBe('redis:7.4');
    expect(services.postgres!.image).toBe('postgres:16');
    expect(ours.map(([name]) => name).sort()).toEqual(['dashboard', 'keen-sink', 'migrate', 'secrets-init', 'subscriber', 'worker']);
    expect(existsSync(path.join(ROOT, 'Dockerfile'))).toBe(true);
  });

  it('exactly one service builds the image; the others use it and never try to pull it', () => {
    const builders = Object.entries(services).filter(([, s]) => s.build !== undefined);
    expect(builders.map(([name]) => name)).toEqual(['secrets-init']);
    expect(builders[0]![1].build).toBe('.');
    for (const [name, service] of ours) if (name !== 'secrets-init') expect(service.pull_policy, name).toBe('never');
    // Everything of ours starts after secrets-init has built the image and written the secrets.
    const after = (name: string): string[] =>
      Object.keys((services[name]!.depends_on ?? {}) as Record<string, unknown>).flatMap((dep) => [dep, ...after(dep)]);
    for (const [name] of Object.entries(services))
      if (!['secrets-init', 'redis'].includes(name)) expect(after(name), name).toContain('secrets-init');
  });

  it('every container has a memory limit; Redis has a maxmemory below its own', () => {
    const bytes = (size: string) =>
      Number(/^(\d+)([kmg])b?$/i.exec(size)![1]) *
      { k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[/([kmg])b?$/i.exec(size)![1]!.toLowerCase() as 'k']!;
    for (const [name, service] of Object.entries(services)) expect(service.mem_limit, `${name} has no mem_limit`).toMatch(/\S/);
    const command = (services.redis!.command as string[]).map((part) => interpolate(part, hostEnv));
    const maxmemory = command[command.indexOf('--maxmemory') + 1]!;
    expect(bytes(maxmemory)).toBeLessThan(bytes(interpolate(services.redis!.mem_limit!, hostEnv)));
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

  it.each(ours)(
    "%s: the values compose gives pass the process's own validation, reading the secrets secrets-init writes",
    async (name, service) => {
      // secrets-init's own code writes the volume (a temporary folder standing in for it).
      const { ensureSecrets } = await import('../../src/secrets-init/secrets.js');
      const volume = mkdtempSync(path.join(tmpdir(), 'lampi-compose-secrets-'));
      ensureSecrets(volume, {});
      const env = Object.fromEntries(Object.entries(environmentOf(service, hostEnv)).map(([k, v]) => [k, v.replace(SECRETS_DIR, volume)]));
      const { sections } = variablesReadBy(entryFile(service));
      expect(sections.length, `${name} loads no config section`).toBeGreaterThan(0);
      expect(() => loadConfig(sections, env)).not.toThrow();
    },
  );

  it('no secret is written into the file: passwords and keys come from the secrets volume, or from .env through secrets-init', () => {
    const secretName = /PASSWORD|_KEY$|TOKEN/;
    for (const [name, service] of Object.entries(services)) {
      for (const [key, raw] of Object.entries(service.environment ?? {})) {
        if (!secretName.test(key)) continue;
        const value = String(raw);
        if (key.endsWith('_FILE')) expect(value.startsWith(`${SECRETS_DIR}/`), `${name} ${key}`).toBe(true);
        else expect(value, `${name} ${key} must be \${${key}:-} (empty unless .env sets it)`).toBe(`\${${key}:-}`);
      }
      for (const [key, value] of Object.entries(environmentOf(service, hostEnv))) {
        if (/URL$/.test(key) && /^\w+:\/\//.test(value)) expect(new URL(value).password, `${name} ${key} carries a password`).toBe('');
      }
    }
    // Only secrets-init sees the .env values; it hands them on as files.
    const readers = Object.entries(services).filter(([, s]) =>
      Object.keys(s.environment ?? {}).some((k) => secretName.test(k) && !k.endsWith('_FILE')),
    );
    expect(readers.map(([name]) => name)).toEqual(['secrets-init']);
    const volume = (service: Service) => service.volumes?.find((v) => v.split(':')[1] === SECRETS_DIR);
    expect(volume(services['secrets-init']!)).toBe(`secrets:${SECRETS_DIR}`);
    for (const [name, service] of Object.entries(services)) {
      const files = Object.entries(service.environment ?? {}).filter(([k]) => k.endsWith('_FILE'));
      if (files.length)
        expect(volume(service), `${name} reads ${files[0]![0]} but has no read-only secrets mount`).toBe(`secrets:${SECRETS_DIR}:ro`);
    }
  });

  it('every secret a service reads is one secrets-init writes', async () => {
    const { SECRETS } = await import('../../src/secrets-init/secrets.js');
    const written = new Set(SECRETS.map((s) => `${SECRETS_DIR}/${s.file}`));
    for (const [name, service] of Object.entries(services)) {
      for (const [key, value] of Object.entries(service.environment ?? {})) {
        if (key.endsWith('_FILE')) expect(written.has(String(value)), `${name} ${key}=${value}`).toBe(true);
      }
    }
  });

  it("the broker and our services agree on the MQTT login, and the worker on keen-sink's keys and port", () => {
    const broker = environmentOf(services.mosquitto!, hostEnv);
    for (const name of ['subscriber', 'worker']) {
      const env = environmentOf(services[name]!, hostEnv);
      expect(env.MQTT_USERNAME).toBe(broker.MQTT_USERNAME);
      expect(env.MQTT_PASSWORD_FILE).toBe(broker.MQTT_PASSWORD_FILE);
      expect(env.MQTT_URL).toBe('mqtt://mosquitto:1883');
    }
    const worker = environmentOf(services.worker!, hostEnv);
    const sink = environmentOf(services['keen-sink']!, hostEnv);
    expect(worker.KEEN_API_URL).toBe(`http://keen-sink:${sink.KEEN_SINK_PORT}`);
    expect(sink.KEEN_SINK_PORT).toBe('8080');
    expect(worker.KEEN_PROJECT_ID).toBe(sink.KEEN_PROJECT_ID);
    expect(worker.KEEN_WRITE_KEY_FILE).toBe(sink.KEEN_WRITE_KEY_FILE);
    expect(worker.DATABASE_URL).toBe(environmentOf(services.migrate!, hostEnv).DATABASE_URL);
    expect(worker.POSTGRES_PASSWORD_FILE).toBe(environmentOf(services.postgres!, hostEnv).POSTGRES_PASSWORD_FILE);
    expect(new URL(worker.DATABASE_URL!).host).toBe('postgres:5432');
  });

  it("only the broker's TLS port faces all interfaces; plain MQTT, the dashboard and keen-sink are on loopback unless a *_BIND says otherwise", () => {
    const ports = Object.fromEntries(
      Object.entries(services)
        .filter(([, s]) => s.ports?.length)
        .map(([name, s]) => [name, s.ports!.map((p) => published(p))]),
    );
    expect(ports).toEqual({
      mosquitto: [
        { ip: undefined, host: '8883', target: '8883' },
        { ip: '127.0.0.1', host: '1883', target: '1883' },
      ],
      dashboard: [{ ip: '127.0.0.1', host: '3000', target: '3000' }],
      'keen-sink': [{ ip: '127.0.0.1', host: '8080', target: '8080' }],
    });
    // The documented switches move them.
    const moved = { MQTT_BIND: '0.0.0.0', MQTT_PORT: '11883', MQTTS_PORT: '18883', DASHBOARD_BIND: '0.0.0.0' };
    expect(services.mosquitto!.ports!.map((p) => published(p, moved))).toEqual([
      { ip: undefined, host: '18883', target: '8883' },
      { ip: '0.0.0.0', host: '11883', target: '1883' },
    ]);
    expect(published(services.dashboard!.ports![0]!, moved).ip).toBe('0.0.0.0');
    for (const [name, service] of Object.entries(services)) expect(service.container_name, `${name} has a container_name`).toBeUndefined();
    expect(environmentOf(services.dashboard!, hostEnv).DASHBOARD_PORT).toBe('3000');
  });

  it('healthchecks test what they claim: PostgreSQL over TCP, Redis answering PONG exactly, readiness for our pipeline', () => {
    const test = (name: string) => {
      const t = services[name]!.healthcheck!.test;
      return Array.isArray(t) ? t.slice(1).join(' ') : t;
    };
    expect(test('postgres')).toMatch(/^pg_isready -h 127\.0\.0\.1 /);
    expect(test('redis')).toBe('redis-cli ping | grep -qx PONG');
    expect(test('subscriber')).toContain('http://127.0.0.1:9101/readyz');
    expect(test('worker')).toContain('http://127.0.0.1:9102/readyz');
    expect(test('mosquitto')).toMatch(/^mosquitto_sub .*-u "\$\$MQTT_USERNAME" -P "\$\$\(cat "\$\$MQTT_PASSWORD_FILE"\)"/);
    // A Node process starting on a loaded host is not marked unhealthy before it could be ready
    // (three workers at once on two busy cores took 66 s); the period ends at the first pass.
    for (const name of ['keen-sink', 'subscriber', 'worker', 'dashboard'])
      expect(services[name]!.healthcheck!.start_period, name).toBe('90s');
  });

  it('every compose-only variable (a port, a binding, a size; not a process setting) is documented in .env.example', () => {
    const settings = new Set(Object.values(SECTIONS).flat());
    const used = new Set(
      [
        ...read('docker-compose.yml')
          .replaceAll('$$', '')
          .matchAll(/\$\{([A-Z][A-Z0-9_]*)/g),
      ]
        .map((m) => m[1]!)
        .filter((name) => !settings.has(name)),
    );
    expect(used.size).toBeGreaterThan(5);
    const example = read('.env.example');
    const missing = [...used].filter((name) => !new RegExp(`^# ${name}=`, 'm').test(example));
    expect(missing).toEqual([]);
    // Every line is commented out: no .env is needed, and copying the example changes nothing.
    expect(example.split('\n').filter((line) => line.trim() && !line.startsWith('#'))).toEqual([]);
  });

  it('Redis keeps its jobs: append-only file, fsync every second, and never evicts', () => {
    const command = (services.redis!.command as string[]).map((part) => interpolate(part, hostEnv));
    const option = (name: string) => command[command.indexOf(name) + 1];
    expect(command[0]).toBe('redis-server');
    expect(option('--appendonly')).toBe('yes');
    expect(option('--appendfsync')).toBe('everysec');
    expect(option('--maxmemory-policy')).toBe('noeviction');
    expect(option('--maxmemory')).toBe('256mb');
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
    expect(settings.get('listener')).toEqual(['1883', '8883']);
    // The TLS listener's files are the ones entrypoint.sh copies from MQTT_TLS_DIR.
    for (const key of ['cafile', 'certfile', 'keyfile']) expect(one(key)).toMatch(/^\/mosquitto\/run\/tls\/(ca|server)\.(crt|key)$/);
    expect(environmentOf(mosquitto, hostEnv).MQTT_TLS_DIR).toBe(`${SECRETS_DIR}/tls`);
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
    expect(needs('postgres')).toEqual({ 'secrets-init': { condition: 'service_completed_successfully' } });
    expect(needs('mosquitto')).toEqual({ 'secrets-init': { condition: 'service_completed_successfully' } });
    expect(environmentOf(services.migrate!, hostEnv).MIGRATE_WAIT_SECONDS).toBe('60');
    expect(needs('worker')).toMatchObject({
      migrate: { condition: 'service_completed_successfully' },
      redis: { condition: 'service_healthy' },
      mosquitto: { condition: 'service_healthy' },
    });
    // Keen deliveries retry until keen-sink answers, and with keen.io it need not run at all.
    expect(needs('worker')).not.toHaveProperty('keen-sink');
    expect(needs('subscriber')).toMatchObject({ redis: { condition: 'service_healthy' }, mosquitto: { condition: 'service_healthy' } });
    expect(needs('dashboard')).toMatchObject({ redis: { condition: 'service_healthy' } });
  });

  it('named volumes it mounts are declared', () => {
    const named = Object.values(services).flatMap((s) =>
      (s.volumes ?? []).map((v) => v.split(':')[0]!).filter((src) => !src.startsWith('.') && !src.startsWith('/')),
    );
    for (const volume of named) expect(compose.volumes, `volume ${volume} is not declared`).toHaveProperty(volume);
  });
});

describe('Dockerfile and .dockerignore', () => {
  // Instructions only: the comments mention the same words.
  const dockerfile = read('Dockerfile')
    .split('\n')
    .filter((line) => !line.trimStart().startsWith('#'))
    .join('\n');
  const stages = dockerfile.split(/^(?=FROM )/m).filter((stage) => stage.startsWith('FROM '));
  const runtime = stages.at(-1)!;

  it('multi-stage on Node 22 LTS: the build stages from node:22-bookworm-slim, the runtime Debian slim with its node binary', () => {
    expect(stages.length).toBeGreaterThanOrEqual(2);
    for (const stage of stages.slice(0, -1)) expect(stage).toMatch(/^FROM node:22-bookworm-slim( AS [\w-]+)?\n/);
    // The same Debian release as the node image, and only its binary (no npm, corepack or yarn).
    expect(runtime).toMatch(/^FROM debian:bookworm-slim\n/);
    expect(runtime).toMatch(/^COPY --from=build \/usr\/local\/bin\/node \/usr\/local\/bin\/node$/m);
    // The user the secret files are given to (src/secrets-init/secrets.ts: uid 1000).
    expect(runtime).toMatch(/useradd --uid 1000 --gid node\b/);
    // The code still runs where Node 20 is installed (the machines the tests run on).
    const pkg = JSON.parse(read('package.json')) as { engines: { node: string }; scripts: Record<string, string> };
    expect(pkg.engines.node).toMatch(/^>=20\./);
  });

  it('the build stage installs everything, generates the Prisma client and builds dist/', () => {
    const build = stages[0]!;
    expect(build).toMatch(/^RUN npm ci\b/m);
    expect(build).toMatch(/npm run generate/);
    expect(build).toMatch(/npm run build/);
    // What `npm run generate` needs is in the image before it runs.
    const generate = build.indexOf('npm run generate');
    for (const needed of ['prisma.config.ts', 'COPY prisma', 'COPY scripts', 'package-lock.json']) {
      const at = build.indexOf(needed);
      expect(at, `${needed} must be copied before generate`).toBeGreaterThan(-1);
      expect(at).toBeLessThan(generate);
    }
    const pkg = JSON.parse(read('package.json')) as { scripts: Record<string, string> };
    expect(pkg.scripts.postinstall).toBe('npm run generate');
  });

  it('the runtime stage holds dist/, the SQL, the TLS script and production dependencies only, and runs as a non-root user', () => {
    expect(runtime).toMatch(/^USER node$/m);
    expect(runtime.indexOf('USER node')).toBeGreaterThan(runtime.lastIndexOf('RUN '));
    expect(runtime).not.toMatch(/^COPY (src|tsconfig\.json)\b/m);
    expect(runtime).not.toMatch(/npm (ci|install|run)/);
    const copies = [...runtime.matchAll(/^COPY (?:--from=([\w-]+) )?(\S+)/gm)].map((m) => `${m[1] ?? 'context'}:${m[2]}`);
    expect(copies).toEqual(
      expect.arrayContaining([
        'build:/app/dist',
        'production-dependencies:/app/node_modules',
        'context:prisma/migrations',
        'context:scripts/make-tls-certs.sh',
      ]),
    );
    const deps = stages.find((stage) => /^FROM \S+ AS production-dependencies$/m.test(stage))!;
    expect(deps).toMatch(/npm ci --omit=dev\b/);
    // --omit=dev keeps the lockfile's devOptional packages (the Prisma CLI, TypeScript: @prisma/client's
    // optional peers), 226 MB of the image's layers when measured; the stage removes them.
    expect(deps).toMatch(/p\.devOptional\) require\('fs'\)\.rmSync\(dir/);
    expect(deps).toMatch(/rm -rf node_modules\/tsx\b/);
    // Source maps and TypeScript files, which Node never loads from node_modules.
    expect(deps).toMatch(/find node_modules -type f .*-name '\*\.map' -o -name '\*\.ts'.* -delete/);
    // Every entry point compose runs is one the build makes.
    for (const [, service] of ours) expect(BUILT).toContain(/^dist\/([\w-]+)\//.exec((service.command as string[]).at(-1)!)![1]);
    // secrets-init runs scripts/make-tls-certs.sh, which needs openssl in the image.
    expect(runtime).toMatch(/apt-get install -y --no-install-recommends openssl/);
  });

  it('the build context leaves out node_modules and the generated client (both are made in the image)', () => {
    const ignored = read('.dockerignore')
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l && !l.startsWith('#'));
    // .local: run-local.sh keeps the broker's TLS private keys there.
    expect(ignored).toEqual(expect.arrayContaining(['node_modules', 'src/generated', '.git', '.env', '.local']));
    // Everything the processes run must stay in the context.
    for (const needed of ['src', 'prisma', 'scripts', 'package.json', 'package-lock.json', 'prisma.config.ts'])
      expect(ignored).not.toContain(needed);
  });
});
