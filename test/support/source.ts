/**
 * Our source as text, for the tests that check a rule over all of it (error codes, import
 * circles, the one way to log an error): every .ts file under src, Prisma's generated client left out.
 */
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';

export const SRC = path.resolve(import.meta.dirname, '../../src');

/** Each source file: its absolute path, its path relative to src, and its text. */
export async function sourceFiles(): Promise<Array<{ file: string; relative: string; text: string }>> {
  const files = [];
  for (const entry of await readdir(SRC, { recursive: true, withFileTypes: true })) {
    const file = path.join(entry.parentPath, entry.name);
    const relative = path.relative(SRC, file);
    if (!entry.isFile() || !file.endsWith('.ts') || relative.split(path.sep)[0] === 'generated') continue;
    files.push({ file, relative, text: await readFile(file, 'utf8') });
  }
  return files.sort((a, b) => a.relative.localeCompare(b.relative));
}
