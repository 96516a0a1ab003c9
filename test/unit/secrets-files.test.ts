/**
 * Secrets as files: any setting X read from X_FILE (src/shared/config.ts, keen-sink's section too),
 * POSTGRES_PASSWORD joined into DATABASE_URL whatever its characters, and compose's secrets-init
 * (src/secrets-init/secrets.ts) generating, keeping and overriding the files.
 */
import { mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ensureSecrets, generateSecret, SECRETS } from '../../src/secrets-init/secrets.js';
import { loadConfig } from '../../src/shared/config.js';
import { ConfigError } from '../../src/shared/errors.js';

const dir = () => mkdtempSync(path.join(tmpdir(), 'lampi-secrets-test-'));
function file(content: string): string {
  const target = path.join(dir(), 'secret');
  writeFileSync(target, content);
  return target;
}

describe('X_FILE settings', () => {
  it('reads the value from the file, ignoring one trailing newline and keeping every other character', () => {
    const password = 'p$w:d @/"\'x';
    const config = loadConfig(['mqtt', 'dashboard'], { MQTT_PASSWORD_FILE: file(`${password}\n`), DASHBOARD_PASSWORD_FILE: file('dash') });
    expect(config.MQTT_PASSWORD).toBe(password);
    expect(config.DASHBOARD_PASSWORD).toBe('dash');
  });

  it('an unreadable file, or both X and X_FILE, is one line naming the variable', () => {
    const missing = path.join(dir(), 'nope');
    expect(() => loadConfig(['mqtt'], { MQTT_PASSWORD_FILE: missing })).toThrow(
      new ConfigError(
        `invalid configuration: MQTT_PASSWORD_FILE=${missing} cannot be read (ENOENT): fix the path or the file's permissions`,
      ),
    );
    expect(() => loadConfig(['mqtt'], { MQTT_PASSWORD: 'a', MQTT_PASSWORD_FILE: file('b') })).toThrow(
      /MQTT_PASSWORD_FILE and MQTT_PASSWORD are both set: set only one/,
    );
    // A required setting whose file is missing is reported once, as the file.
    const message = (() => {
      try {
        loadConfig(['database'], { DATABASE_URL_FILE: missing });
      } catch (err) {
        return (err as Error).message;
      }
    })();
    expect(message).toBe(
      `invalid configuration: DATABASE_URL_FILE=${missing} cannot be read (ENOENT): fix the path or the file's permissions`,
    );
  });

  it("POSTGRES_PASSWORD(_FILE) becomes DATABASE_URL's password, URL-encoded; a password in the URL wins", () => {
    const config = loadConfig(['database'], {
      DATABASE_URL: 'postgresql://lampi@postgres:5432/lampi',
      POSTGRES_PASSWORD_FILE: file('a$b@c/d:e%f\n'),
    });
    expect(new URL(config.DATABASE_URL).host).toBe('postgres:5432');
    expect(decodeURIComponent(new URL(config.DATABASE_URL).password)).toBe('a$b@c/d:e%f');
    expect(config).not.toHaveProperty('POSTGRES_PASSWORD');
    expect(loadConfig(['database'], { DATABASE_URL: 'postgresql://u:own@h/db', POSTGRES_PASSWORD: 'other' }).DATABASE_URL).toBe(
      'postgresql://u:own@h/db',
    );
  });

  it('keen-sink reads its keys and its database password from files too', () => {
    const config = loadConfig(['common', 'keenSink'], {
      KEEN_PROJECT_ID: 'p',
      KEEN_WRITE_KEY_FILE: file('write\n'),
      KEEN_READ_KEY_FILE: file('read'),
      DATABASE_URL: 'postgresql://lampi@postgres:5432/lampi',
      POSTGRES_PASSWORD_FILE: file('pg$pw'),
    });
    expect(config).toMatchObject({
      KEEN_WRITE_KEY: 'write',
      KEEN_READ_KEY: 'read',
      KEEN_SINK_DATABASE_URL: 'postgresql://lampi:pg%24pw@postgres:5432/lampi',
    });
    expect(() =>
      loadConfig(['common', 'keenSink'], {
        KEEN_PROJECT_ID: 'p',
        KEEN_WRITE_KEY: 'w',
        KEEN_READ_KEY_FILE: '/nonexistent/key',
        DATABASE_URL: 'postgresql://h/db',
      }),
    ).toThrow(/^invalid configuration: KEEN_READ_KEY_FILE=\/nonexistent\/key cannot be read \(ENOENT\)/);
  });
});

describe('secrets-init', () => {
  it('generates what is missing, keeps it on the next start, and a value from the environment wins', () => {
    const folder = dir();
    const first = ensureSecrets(folder, {});
    expect(first.map((o) => o.source)).toEqual(SECRETS.map(() => 'generated'));
    const values = Object.fromEntries(SECRETS.map((s) => [s.file, readFileSync(path.join(folder, s.file), 'utf8')]));
    for (const value of Object.values(values)) expect(value).toMatch(/^[A-Za-z0-9]{32}$/);
    expect(new Set(Object.values(values)).size).toBe(SECRETS.length);
    for (const s of SECRETS) expect(statSync(path.join(folder, s.file)).mode & 0o777).toBe(0o440);

    const second = ensureSecrets(folder, { MQTT_PASSWORD: '' });
    expect(second.map((o) => o.source)).toEqual(SECRETS.map(() => 'kept'));
    for (const s of SECRETS) expect(readFileSync(path.join(folder, s.file), 'utf8')).toBe(values[s.file]);

    const third = ensureSecrets(folder, { POSTGRES_PASSWORD: 'mine $x' });
    expect(third.find((o) => o.variable === 'POSTGRES_PASSWORD')).toEqual({
      file: 'postgres-password',
      variable: 'POSTGRES_PASSWORD',
      source: 'environment',
      changed: true,
    });
    expect(readFileSync(path.join(folder, 'postgres-password'), 'utf8')).toBe('mine $x');
    // What it returns never holds a secret.
    expect(JSON.stringify(third)).not.toContain('mine $x');
    expect(ensureSecrets(folder, { POSTGRES_PASSWORD: 'mine $x' }).find((o) => o.variable === 'POSTGRES_PASSWORD')!.changed).toBe(false);
  });

  it('generated secrets use the whole alphabet evenly (no modulo bias from the 6 bytes above 247)', () => {
    const counts = new Map<string, number>();
    for (let i = 0; i < 400; i++) for (const c of generateSecret()) counts.set(c, (counts.get(c) ?? 0) + 1);
    expect(counts.size).toBe(62);
    // Every character 12,800/62 = 206 times on average; bias toward the first 6 would show as ~2x.
    for (const count of counts.values()) expect(count).toBeLessThan(320);
  });
});
