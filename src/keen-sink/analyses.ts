/**
 * Every query keen-sink answers, by the name in its URL (/queries/{name}): the single analyses of
 * query.ts, `multi_analysis` and `funnel`, each answered as Keen's response body. With
 * `include_metadata=true` the body also carries Keen's `execution_metadata`. A query only reads.
 */
import type pg from 'pg';
import { parseFunnel, runFunnel } from './funnel.js';
import { parseMultiAnalysis, runMultiAnalysis } from './multi-analysis.js';
import { ANALYSES, isAnalysis, parseQuery, QueryError, runQuery, Statement, whereSql, type ParsedQuery, type RunOptions } from './query.js';

export const QUERY_NAMES = [...ANALYSES, 'multi_analysis', 'funnel'] as const;

export const isQueryName = (name: string): boolean => (QUERY_NAMES as readonly string[]).includes(name);

/** Keen's `execution_metadata`, for what keen-sink can tell. */
export interface ExecutionMetadata {
  /** Seconds from parsed parameters to the answer. */
  total_processing_time: number;
  /** Events in the queried collections and timeframes, before filters. */
  events_scanned: number;
  /** Distinct properties the query reads from each event (targets, filters, groups, actors). */
  properties_per_event: number;
  total_properties_scanned: number;
}

function includeMetadata(raw: unknown): boolean {
  if (raw === undefined || raw === null || raw === '' || raw === false || raw === 'false') return false;
  if (raw === true || raw === 'true') return true;
  throw new QueryError('InvalidParameterError', 'include_metadata must be true or false.');
}

/** Events a query's collection and timeframe hold: what Keen reports as scanned. */
async function eventsScanned(db: pg.Pool, projectId: string, query: ParsedQuery): Promise<number> {
  const sql = new Statement();
  const where = whereSql(sql, projectId, { ...query, filters: [] });
  const { rows } = await db.query<{ n: string }>(`SELECT count(*) AS n FROM keen_events WHERE ${where}`, sql.values);
  return Number(rows[0]!.n);
}

function propertiesRead(queries: ParsedQuery[]): number {
  const paths = new Set<string>();
  for (const query of queries) {
    for (const path of [
      query.target,
      ...query.filters.map((filter) => filter.path),
      ...query.groupBy.map((group) => group.path),
      ...(query.propertyNames ?? []),
    ]) {
      if (path) paths.add(JSON.stringify(path));
    }
  }
  return paths.size;
}

/** The response body of query `name` with `params`; a bad query throws QueryError (a 400). */
export async function answerQuery(
  db: pg.Pool,
  projectId: string,
  name: string,
  params: Record<string, unknown>,
  options: RunOptions = {},
  now = new Date(),
): Promise<Record<string, unknown>> {
  const started = process.hrtime.bigint();
  const withMetadata = includeMetadata(Object.hasOwn(params, 'include_metadata') ? params.include_metadata : undefined);
  let body: Record<string, unknown>;
  let queries: ParsedQuery[];
  if (name === 'multi_analysis') {
    const parsed = parseMultiAnalysis(params, now);
    queries = parsed.queries;
    body = { result: await runMultiAnalysis(db, projectId, parsed, options) };
  } else if (name === 'funnel') {
    const steps = parseFunnel(params, now);
    queries = steps.map((step) => step.query);
    body = await runFunnel(db, projectId, steps, options);
  } else if (isAnalysis(name)) {
    const parsed = parseQuery(name, params, now);
    queries = [parsed];
    body = { result: await runQuery(db, projectId, parsed, options) };
  } else {
    throw new QueryError('ResourceNotFoundError', `Unknown analysis "${name.slice(0, 40)}".`);
  }
  if (!withMetadata) return body;
  // A multi_analysis reads one collection and timeframe for all its labels: scanned once.
  const scanned = (
    await Promise.all((name === 'multi_analysis' ? queries.slice(0, 1) : queries).map((query) => eventsScanned(db, projectId, query)))
  ).reduce((a, b) => a + b, 0);
  const perEvent = propertiesRead(queries);
  const metadata: ExecutionMetadata = {
    total_processing_time: Number(process.hrtime.bigint() - started) / 1e9,
    events_scanned: scanned,
    properties_per_event: perEvent,
    total_properties_scanned: scanned * perEvent,
  };
  return { ...body, execution_metadata: metadata };
}
