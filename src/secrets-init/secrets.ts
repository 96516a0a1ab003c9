/**
 * The compose deployment's secrets, one file each in one folder: a value set in the environment
 * (`.env`) is written and wins; otherwise the file an earlier start wrote is kept; otherwise a
 * random one is generated. So a fresh clone starts with no `.env`, and later starts reuse the
 * same passwords. Never throws for a value: what happened to each secret is returned, and no
 * secret value is ever part of what is returned.
 */
import { randomBytes } from 'node:crypto';
import { chmodSync, chownSync, existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';

export interface SecretSpec {
  /** The file's name in the folder, and the name the services' `*_FILE` variables point at. */
  file: string;
  /** The variable whose value, when set, is written to the file. */
  variable: string;
  /** Who reads it besides root: `uid:gid` (owner and group may read, nobody else). */
  owner: { uid: number; gid: number };
}

export type SecretOutcome = { file: string; variable: string; source: 'environment' | 'kept' | 'generated'; changed: boolean };

/** The app image's `node` user, and the postgres image's `postgres` user (both images' fixed ids). */
const NODE = { uid: 1000, gid: 1000 };
const POSTGRES_AND_NODE = { uid: 999, gid: 1000 };

export const SECRETS: readonly SecretSpec[] = [
  { file: 'mqtt-password', variable: 'MQTT_PASSWORD', owner: NODE },
  { file: 'dashboard-password', variable: 'DASHBOARD_PASSWORD', owner: NODE },
  // Read by the postgres image (as postgres) and by our services (as node, through the group).
  { file: 'postgres-password', variable: 'POSTGRES_PASSWORD', owner: POSTGRES_AND_NODE },
  { file: 'keen-write-key', variable: 'KEEN_WRITE_KEY', owner: NODE },
  { file: 'keen-read-key', variable: 'KEEN_READ_KEY', owner: NODE },
];

/** 32 characters from [A-Za-z0-9] (190 bits): safe in URLs, shells and config files alike. */
export function generateSecret(random: (n: number) => Buffer = randomBytes): string {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
  let out = '';
  while (out.length < 32) {
    for (const byte of random(48)) {
      // 248 = 4 * 62: rejecting the rest keeps every character equally likely.
      if (byte < 248 && out.length < 32) out += alphabet[byte % 62];
    }
  }
  return out;
}

/**
 * Writes every secret in `specs` into `dir`. `values` are the environment's (empty = unset).
 * Ownership is set only when running as root (in compose); otherwise the files are the caller's.
 */
export function ensureSecrets(
  dir: string,
  values: Readonly<Record<string, unknown>>,
  specs: readonly SecretSpec[] = SECRETS,
): SecretOutcome[] {
  const asRoot = process.getuid?.() === 0;
  return specs.map((spec) => {
    const target = path.join(dir, spec.file);
    const previous = existsSync(target) ? readFileSync(target, 'utf8') : undefined;
    const given = typeof values[spec.variable] === 'string' && values[spec.variable] !== '' ? (values[spec.variable] as string) : undefined;
    const value = given ?? previous ?? generateSecret();
    const source = given !== undefined ? 'environment' : previous !== undefined ? 'kept' : 'generated';
    if (value !== previous) {
      // Written beside it and renamed: a service never reads half a file.
      const tmp = `${target}.tmp`;
      writeFileSync(tmp, value, { mode: 0o440 });
      if (asRoot) chownSync(tmp, spec.owner.uid, spec.owner.gid);
      chmodSync(tmp, 0o440);
      renameSync(tmp, target);
    }
    return { file: spec.file, variable: spec.variable, source, changed: previous !== undefined && value !== previous };
  });
}
