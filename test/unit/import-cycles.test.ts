/**
 * No import circle in src: a module never imports, through any chain of modules, one that
 * imports it back (type-only imports count: they tie the two files together just the same).
 * The graph is read from the source with a regular expression over `import`/`export ... from`
 * and `import('...')` of relative paths; src/generated (Prisma's client) is a leaf.
 */
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { SRC, sourceFiles } from '../support/source.js';

/** Block comments and line comments out, so an example in a comment is no import. */
function withoutComments(source: string): string {
  return source.replace(/\/\*[\s\S]*?\*\//g, '').replace(/^\s*\/\/.*$/gm, '');
}

const SPECIFIERS = [
  /\b(?:import|export)\b[^;'"`]*?\bfrom\s*['"]([^'"]+)['"]/g, // import x from '...', export { y } from '...'
  /\bimport\s*['"]([^'"]+)['"]/g, // import '...' (for its effects)
  /\bimport\(\s*['"]([^'"]+)['"]\s*\)/g, // import('...')
];

/** The relative modules `source` (the text of `file`) imports, as absolute .ts paths. */
function importsOf(file: string, source: string): string[] {
  const text = withoutComments(source);
  const targets = new Set<string>();
  for (const pattern of SPECIFIERS) {
    for (const match of text.matchAll(pattern)) {
      const specifier = match[1]!;
      if (!specifier.startsWith('.')) continue;
      targets.add(path.resolve(path.dirname(file), specifier).replace(/\.js$/, '.ts'));
    }
  }
  return [...targets];
}

/** Every circle in the graph, each once, as the files in import order starting from its smallest. */
function cyclesIn(graph: Map<string, string[]>): string[][] {
  const cycles = new Map<string, string[]>();
  const state = new Map<string, 'open' | 'done'>();
  const stack: string[] = [];
  const visit = (node: string) => {
    state.set(node, 'open');
    stack.push(node);
    for (const next of graph.get(node) ?? []) {
      if (state.get(next) === 'open') {
        const cycle = stack.slice(stack.indexOf(next));
        const start = cycle.indexOf([...cycle].sort()[0]!);
        const rotated = [...cycle.slice(start), ...cycle.slice(0, start)];
        cycles.set(rotated.join(' -> '), rotated);
      } else if (!state.has(next)) {
        visit(next);
      }
    }
    stack.pop();
    state.set(node, 'done');
  };
  for (const node of [...graph.keys()].sort()) if (!state.has(node)) visit(node);
  return [...cycles.values()];
}

describe('imports in src', () => {
  it('read every kind of relative import, type-only ones included, and nothing in comments or packages', () => {
    const file = path.join(SRC, 'shared', 'a.ts');
    const source = [
      '/** see `import { x } from "./commented.js"` */',
      "// import { y } from './line-comment.js';",
      "import type { IngestMessage } from './jobs.js';",
      "import {\n  parseTopic,\n  type Topic,\n} from './topics.js';",
      "export { safeUrl } from './redact.js';",
      "import './effects.js';",
      "const lazy = await import('../worker/worker.js');",
      "import { pino } from 'pino';",
    ].join('\n');
    expect(
      importsOf(file, source)
        .map((target) => path.relative(SRC, target))
        .sort(),
    ).toEqual(['shared/effects.ts', 'shared/jobs.ts', 'shared/redact.ts', 'shared/topics.ts', 'worker/worker.ts']);
  });

  it('finds a circle when there is one (the check can fail)', () => {
    const graph = new Map([
      ['jobs', ['message', 'events']],
      ['message', ['jobs', 'topics']],
      ['events', []],
      ['topics', ['text']],
      ['text', ['topics']],
      ['lamp', []],
    ]);
    expect(cyclesIn(graph)).toEqual([
      ['jobs', 'message'],
      ['text', 'topics'],
    ]);
    expect(cyclesIn(new Map([['a', ['a']]]))).toEqual([['a']]);
    expect(
      cyclesIn(
        new Map([
          ['jobs', ['lamp']],
          ['message', ['jobs', 'lamp']],
          ['lamp', []],
        ]),
      ),
    ).toEqual([]);
  });

  it('have no circle', async () => {
    const graph = new Map<string, string[]>();
    for (const { file, text } of await sourceFiles()) graph.set(file, importsOf(file, text));
    expect(graph.size).toBeGreaterThan(50);
    expect(graph.get(path.join(SRC, 'shared', 'message.ts'))).toContain(path.join(SRC, 'shared', 'lamp.ts'));
    const cycles = cyclesIn(graph).map((cycle) => cycle.map((file) => path.relative(SRC, file)).join(' -> '));
    expect(cycles).toEqual([]);
  });
});
