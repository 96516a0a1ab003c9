// Compiles each process's entry point to one ES module under dist/<name>/main.mjs (packages stay
// in node_modules). Production runs these with plain `node`: no TypeScript compiler in memory
// (tsx costs each process about 25 MB of RSS). Development and tests run the sources with tsx.
import { cp, rm } from 'node:fs/promises';
import { build } from 'esbuild';

const ENTRIES = ['secrets-init', 'migrate', 'subscriber', 'worker', 'keen-sink', 'dashboard', 'dlq', 'devices'];

await rm('dist', { recursive: true, force: true });
await build({
  entryPoints: ENTRIES.map((name) => ({ in: `src/${name}/main.ts`, out: `${name}/main` })),
  outdir: 'dist',
  outExtension: { '.js': '.mjs' },
  bundle: true,
  packages: 'external',
  platform: 'node',
  format: 'esm',
  target: 'node20',
  sourcemap: 'linked',
  logLevel: 'warning',
});
// Read at run time next to the code, as in src/ (see MIGRATIONS in src/keen-sink/server.ts).
await cp('src/keen-sink/migrations', 'dist/keen-sink/migrations', { recursive: true });
// The explorer's pages (see src/keen-sink/explorer.ts), served as they are: no build step.
await cp('src/keen-sink/explorer', 'dist/keen-sink/explorer', { recursive: true });
console.log(`built ${ENTRIES.map((name) => `dist/${name}/main.mjs`).join(', ')}`);
