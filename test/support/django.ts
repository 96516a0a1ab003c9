/**
 * A real LAMPI site for tests: the small Django project in test/django (the `lampi` app's model
 * and Django's admin) on a database of the test's own, its tables created by Django's own
 * `manage.py migrate`. Python code runs inside the site (`manage.py shell`), so what a test
 * reads back is what the site's ORM sees.
 */
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { createTestDatabase, type TestDatabase } from './database.js';
import { ROOT } from './processes.js';

/** Debian's interpreter: it has python3-django 3.2, python3-paho-mqtt and python3-psycopg2 (a pyenv python3 on PATH may not). */
export const PYTHON = '/usr/bin/python3';
export const DJANGO_SITE = path.join(ROOT, 'test/django');
/** Our own tables beside the site's (`npm run migrate` with REGISTRY_SCHEMA=django). */
export const DJANGO_MODE_MIGRATIONS = path.join(ROOT, 'prisma/django-migrations');

const run = promisify(execFile);

export interface DjangoSite {
  db: TestDatabase;
  /** `manage.py <args>`; rejects (with its output) when it exits non-zero. */
  manage(args: string[]): Promise<{ stdout: string; stderr: string }>;
  /**
   * Runs Python inside the site (models imported: Lampi, User) and returns what it printed as
   * JSON on its last line (`emit(value)` prints it).
   */
  python<T = unknown>(code: string): Promise<T>;
  drop(): Promise<void>;
}

/** A site on a fresh database of its own; `mqttUrl` is the broker its claims publish to. */
export async function startDjangoSite(adminUrl: string, mqttUrl: string, { migrate = true } = {}): Promise<DjangoSite> {
  const db = await createTestDatabase(adminUrl, { migrate: false });
  const broker = new URL(mqttUrl);
  const env = {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    HOME: process.env.HOME ?? '/tmp',
    DATABASE_URL: db.url,
    DJANGO_SETTINGS_MODULE: 'lampisite.settings',
    PYTHONDONTWRITEBYTECODE: '1',
    LAMPI_MQTT_HOST: broker.hostname,
    LAMPI_MQTT_PORT: broker.port || '1883',
  };
  const manage = async (args: string[]) => {
    try {
      return await run(PYTHON, ['manage.py', ...args], { cwd: DJANGO_SITE, env, timeout: 60_000 });
    } catch (err) {
      const e = err as Error & { stdout?: string; stderr?: string };
      throw new Error(`manage.py ${args.join(' ')} failed: ${e.message}\n${e.stdout ?? ''}\n${e.stderr ?? ''}`, { cause: err });
    }
  };
  const site: DjangoSite = {
    db,
    manage,
    async python<T>(code: string) {
      const prelude = [
        'import json',
        'from django.contrib.auth.models import User',
        'from lampi.models import Lampi',
        'def emit(value):',
        '    print(json.dumps(value, default=str))',
        '',
      ].join('\n');
      const { stdout } = await manage(['shell', '-c', prelude + code]);
      const last = stdout.trim().split('\n').at(-1) ?? '';
      return JSON.parse(last === '' ? 'null' : last) as T;
    },
    drop: () => db.drop(),
  };
  if (migrate) {
    try {
      await manage(['migrate', '--no-input', '-v', '0']);
    } catch (err) {
      await db.drop();
      throw err;
    }
  }
  return site;
}
