/**
 * Every error class in src has a stable code of its own and the name of its class: code and
 * tests recognise an error by its class or code, never by its text (src/shared/errors.ts). The
 * classes are found by reading the source, so a new error class without a code fails here.
 */
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { UnrecoverableError } from 'bullmq';
import { describe, expect, it } from 'vitest';
import { LampiError } from '../../src/shared/errors.js';
import { SRC, sourceFiles } from '../support/source.js';

/**
 * Errors whose `code` is the wire's, set per instance: Keen's error_code or the socket's code
 * (KeenRequestError, KeenEventRejected in src/shared/keen/errors.ts) and the error_code that
 * keen-sink answers with (QueryError, HttpError), as Keen's clients read them. They carry no class
 * code; should one get a LAMPI_ code, it is checked like the rest.
 */
const WIRE_CODED = new Set(['KeenRequestError', 'KeenEventRejected', 'QueryError', 'HttpError']);

interface Found {
  file: string;
  name: string;
  exported: boolean;
  abstract: boolean;
}

/** `class X extends <something>Error`, whatever else the line says. */
const ERROR_CLASS = /^(export\s+)?(abstract\s+)?class\s+(\w+)\s+extends\s+(\w*Error)\b/gm;

async function errorClasses(): Promise<Found[]> {
  const found: Found[] = [];
  for (const { relative, text } of await sourceFiles()) {
    for (const match of text.matchAll(ERROR_CLASS)) {
      found.push({ file: relative, name: match[3]!, exported: match[1] !== undefined, abstract: match[2] !== undefined });
    }
  }
  return found;
}

type ErrorClass = new (message: string, options?: ErrorOptions) => Error & { code?: unknown };

async function load(found: Found): Promise<ErrorClass> {
  const module = (await import(pathToFileURL(path.join(SRC, found.file)).href)) as Record<string, unknown>;
  return module[found.name] as ErrorClass;
}

describe('error classes', () => {
  it('are found in the source (the scan itself works)', async () => {
    const names = (await errorClasses()).map((c) => c.name);
    for (const known of ['ConfigError', 'StartupError', 'UsageError', 'MalformedJobError', 'ImportConflict'])
      expect(names).toContain(known);
  });

  it('each has a distinct stable code, its class name as name, and is exported so callers can test for it', async () => {
    const codes = new Map<string, string>();
    for (const found of await errorClasses()) {
      if (found.abstract) continue;
      const where = `${found.name} (src/${found.file})`;
      if (WIRE_CODED.has(found.name)) {
        if (!found.exported) continue;
        const ErrorClass = await load(found);
        let code: unknown;
        try {
          code = new ErrorClass('m', {}).code;
        } catch {
          continue; // its constructor wants more than a message; checked once it has a code
        }
        if (typeof code !== 'string' || !code.startsWith('LAMPI_')) continue;
      }
      expect(found.exported, `${where} is not exported`).toBe(true);
      const ErrorClass = await load(found);
      expect(ErrorClass, `${where} is not exported under its name`).toBeTypeOf('function');
      const error = new ErrorClass('what went wrong, and what to do', {});
      expect(error, where).toBeInstanceOf(Error);
      expect(error.name, `${where}: name`).toBe(found.name);
      expect(error.message).toBe('what went wrong, and what to do');
      expect(error.code, `${where}: code`).toMatch(/^LAMPI_[A-Z0-9_]+$/);
      const code = error.code as string;
      expect(codes.get(code), `${where} has the code ${code} of ${codes.get(code)}`).toBeUndefined();
      codes.set(code, found.name);
      // Ours derive from LampiError, unless a library's class must be the base (BullMQ's, to fail a job for good).
      if (!(error instanceof UnrecoverableError)) expect(error, where).toBeInstanceOf(LampiError);
    }
    expect(codes.size).toBeGreaterThanOrEqual(9);
  });

  it('keep a subclass recognisable as its base, with its own code', async () => {
    const { DatabaseSetupError, StartupError, MigrationError, MigrationRolledBackError } = await import('../../src/shared/errors.js');
    const setup = new DatabaseSetupError('x');
    expect(setup).toBeInstanceOf(StartupError);
    expect(setup.code).not.toBe(new StartupError('x').code);
    const rolledBack = new MigrationRolledBackError('x');
    expect(rolledBack).toBeInstanceOf(MigrationError);
    expect(rolledBack.code).not.toBe(new MigrationError('x').code);
  });
});
