/**
 * Where a process spent its CPU, from a V8 .cpuprofile (node --cpu-prof): self time by function,
 * by package or source file, and total (inclusive) time of our own functions.
 *
 *   node --import tsx bench/profile-summary.ts <file.cpuprofile | directory> [--top 25]
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number; columnNumber: number };
  hitCount?: number;
  children?: number[];
}
interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export interface ProfileSummary {
  file: string;
  totalMs: number;
  idleMs: number;
  byFunction: Array<[string, number]>;
  byPlace: Array<[string, number]>;
  /** Inclusive time of functions in src/ (ours), by function. */
  oursInclusive: Array<[string, number]>;
}

/** node_modules/<pkg> (or @scope/pkg), src/<dir>/<file>, node:internal area, or a V8 pseudo-node. */
export function placeOf(url: string, functionName: string): string {
  if (!url) return functionName.startsWith('(') ? functionName : '(native/V8)';
  const modules = /node_modules\/((?:@[^/]+\/)?[^/]+)\/(.*)$/.exec(url);
  if (modules)
    return `${modules[1]}${modules[1] === 'bullmq' || modules[1] === 'ioredis' || modules[1] === 'mqtt' ? `/${modules[2]!.split('/').slice(-1)[0]}` : ''}`;
  if (url.startsWith('node:'))
    return url
      .replace(/^node:(internal\/)?/, 'node:')
      .split('/')
      .slice(0, 2)
      .join('/');
  const src = /\/(src|bench|test)\/(.*)$/.exec(url);
  if (src) return `${src[1]}/${src[2]}`;
  return url;
}

export function summarize(file: string): ProfileSummary {
  const profile = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map(profile.nodes.map((node) => [node.id, node]));
  const parent = new Map<number, number>();
  for (const node of profile.nodes) for (const child of node.children ?? []) parent.set(child, node.id);
  const selfUs = new Map<number, number>();
  profile.samples.forEach((id, i) => selfUs.set(id, (selfUs.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0)));

  const byFunction = new Map<string, number>();
  const byPlace = new Map<string, number>();
  const oursInclusive = new Map<string, number>();
  let totalUs = 0;
  let idleUs = 0;
  for (const [id, us] of selfUs) {
    const node = byId.get(id)!;
    const { functionName, url, lineNumber } = node.callFrame;
    totalUs += us;
    if (functionName === '(idle)') {
      idleUs += us;
      continue;
    }
    const place = placeOf(url, functionName);
    const name = `${functionName || '(anonymous)'} ${place}${url ? `:${lineNumber + 1}` : ''}`;
    byFunction.set(name, (byFunction.get(name) ?? 0) + us);
    byPlace.set(place, (byPlace.get(place) ?? 0) + us);
    // Inclusive time for our own frames: walk up once per distinct frame on the stack.
    const seen = new Set<string>();
    for (let at: number | undefined = id; at !== undefined; at = parent.get(at)) {
      const frame = byId.get(at)!.callFrame;
      if (!/\/src\/(?!generated)/.test(frame.url)) continue;
      const key = `${frame.functionName || '(anonymous)'} ${placeOf(frame.url, frame.functionName)}:${frame.lineNumber + 1}`;
      if (seen.has(key)) continue;
      seen.add(key);
      oursInclusive.set(key, (oursInclusive.get(key) ?? 0) + us);
    }
  }
  const sorted = (map: Map<string, number>) => [...map].sort((a, b) => b[1] - a[1]).map(([k, v]) => [k, v / 1000] as [string, number]);
  return {
    file,
    totalMs: totalUs / 1000,
    idleMs: idleUs / 1000,
    byFunction: sorted(byFunction),
    byPlace: sorted(byPlace),
    oursInclusive: sorted(oursInclusive),
  };
}

export function formatSummary(summary: ProfileSummary, top = 15): string {
  const busy = summary.totalMs - summary.idleMs;
  const pct = (ms: number) => `${((ms / busy) * 100).toFixed(1).padStart(5)}%`;
  const lines = [
    `${path.basename(summary.file)}: ${(summary.totalMs / 1000).toFixed(1)} s profiled, ` +
      `${(busy / 1000).toFixed(1)} s busy (${((busy / summary.totalMs) * 100).toFixed(0)}%)`,
    '  self time by package / file (share of busy time):',
    ...summary.byPlace.slice(0, top).map(([place, ms]) => `    ${pct(ms)}  ${place}`),
    '  self time by function:',
    ...summary.byFunction.slice(0, top).map(([name, ms]) => `    ${pct(ms)}  ${name}`),
    '  inclusive time of our own functions (src/):',
    ...summary.oursInclusive.slice(0, top).map(([name, ms]) => `    ${pct(ms)}  ${name}`),
  ];
  return lines.join('\n');
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values, positionals } = parseArgs({ allowPositionals: true, options: { top: { type: 'string', default: '15' } } });
  const files = positionals.flatMap((p) =>
    statSync(p).isDirectory()
      ? readdirSync(p, { recursive: true })
          .map(String)
          .filter((f) => f.endsWith('.cpuprofile'))
          .map((f) => path.join(p, f))
      : [p],
  );
  if (files.length === 0) {
    process.stderr.write('usage: profile-summary.ts <file.cpuprofile | directory> [--top N]\n');
    process.exit(2);
  }
  for (const file of files) process.stdout.write(`${formatSummary(summarize(file), Number(values.top))}\n\n`);
}
