/**
 * What each process of ours reads, found from the sources, for the deployment files' tests
 * (docker-compose.yml in compose.test.ts, deploy/kubernetes in kubernetes-manifests.test.ts): the
 * entry file a command runs, the config sections and variable names that process reads, and
 * compose's own interpolation of the values it gives. Read from the code itself, so a deployment
 * file that gives a variable no process reads, or runs an entry point the build does not make,
 * fails its test.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'vitest';
import type { SectionName } from '../../src/shared/config.js';

export const ROOT = path.resolve(import.meta.dirname, '../..');
export const read = (file: string) => readFileSync(path.join(ROOT, file), 'utf8');

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
export const SECTIONS = sharedSections();

/** The image's build (scripts/build.mjs) compiles exactly these entry points to dist/<name>/main.mjs. */
export const BUILT = [
  ...read('scripts/build.mjs')
    .match(/const ENTRIES = \[([^\]]*)\]/)![1]!
    .matchAll(/'([\w-]+)'/g),
].map((m) => m[1]!);

/** `node [V8 flags] dist/<name>/main.mjs` → the source it is built from, src/<name>/main.ts. */
export function entryFile(service: { command?: string[] | string }): string {
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

/** Settings that, unset, take another's value (src/shared/config.ts's FALLBACKS): the process reads that one too. */
const FALLBACKS: Record<string, string> = Object.fromEntries(
  [...(/const FALLBACKS[^=]*= \{([^}]*)\}/.exec(read('src/shared/config.ts'))?.[1] ?? '').matchAll(/(\w+): '(\w+)'/g)].map((m) => [
    m[1]!,
    m[2]!,
  ]),
);

/** What one process of ours reads: the shared sections its main loads, and their fallbacks. */
export function variablesReadBy(entry: string): { sections: SectionName[]; names: Set<string> } {
  const sections = new Set<SectionName>();
  for (const call of read(entry).matchAll(/loadConfig\(\s*\[([^\]]*)\]/g)) {
    for (const name of call[1]!.matchAll(/'(\w+)'/g)) {
      if (!(name[1]! in SECTIONS)) throw new Error(`${entry} loads unknown config section ${name[1]}`);
      sections.add(name[1] as SectionName);
    }
  }
  const settings = [...sections].flatMap((s) => SECTIONS[s]!);
  // Any setting X may also be given as X_FILE (src/shared/config.ts, readSettings).
  const names = new Set([...settings, ...settings.flatMap((name) => FALLBACKS[name] ?? [])].flatMap((name) => [name, `${name}_FILE`]));
  return { sections: [...sections], names };
}

/** Compose's interpolation: `$$`, `${X}`, `${X:-default}`, `${X-default}`, `${X:?message}`. */
export function interpolate(value: string, env: Record<string, string>): string {
  return value.replace(
    /\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}/g,
    (whole, name: string | undefined, op: string | undefined, arg: string | undefined) => {
      if (whole === '$$') return '$';
      const set = env[name!];
      if (op === ':-') return set ? set : arg!;
      if (op === '-') return set ?? arg!;
      if (op === ':?' || op === '?') {
        if (!set) throw new Error(`required variable ${name}: ${arg}`);
        return set;
      }
      return set ?? '';
    },
  );
}

/** A compose service's environment (map or list form), interpolated with `env` as the host's. */
export function environmentOf(
  service: { environment?: Record<string, string | number | boolean | null> | string[] },
  env: Record<string, string>,
): Record<string, string> {
  const raw = service.environment ?? {};
  const entries = Array.isArray(raw)
    ? raw.map((line) => line.split(/=(.*)/s).slice(0, 2) as [string, string])
    : Object.entries(raw).map(([k, v]) => [k, v === null ? '' : String(v)] as [string, string]);
  return Object.fromEntries(entries.map(([k, v]) => [k, interpolate(v, env)]));
}
