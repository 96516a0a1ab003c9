/**
 * Keen's `multi_analysis`: several analyses of one collection, over the same timeframe, filters,
 * group_by and interval, answered as one result keyed by the caller's labels. Each analysis is an
 * ordinary query (query.ts) and the results are merged in Keen's shape:
 *   no group_by, no interval   {label: value, ...}
 *   interval                   [{value: {label: value}, timeframe}]
 *   group_by                   [{<group names>, label: value, ...}]
 *   both                       [{value: [{<group names>, label: value}], timeframe}]
 * Labels are the caller's strings, so they only ever become own properties of fresh objects.
 */
import type pg from 'pg';
import { DEFAULT_KEEN_SINK_MAX_RESULT_BYTES } from '../shared/config.js';
import {
  isAnalysis,
  isObject,
  parseQuery,
  QueryError,
  runQuery,
  structured,
  type Analysis,
  type ParsedQuery,
  type RunOptions,
} from './query.js';

/** Enough for a dashboard tile; each analysis is one statement. */
export const MAX_ANALYSES = 20;

export interface ParsedMultiAnalysis {
  labels: string[];
  queries: ParsedQuery[];
}

const define = (target: Record<string, unknown>, key: string, value: unknown) =>
  Object.defineProperty(target, key, { value, enumerable: true, writable: true, configurable: true });

export function parseMultiAnalysis(params: Record<string, unknown>, now = new Date()): ParsedMultiAnalysis {
  const analyses = structured('analyses', params.analyses);
  if (!isObject(analyses) || Object.keys(analyses).length === 0) {
    throw new QueryError(
      'MissingRequiredParameterError',
      'multi_analysis needs "analyses": a JSON object of {label: {"analysis_type", "target_property"}}.',
    );
  }
  const labels = Object.keys(analyses);
  if (labels.length > MAX_ANALYSES) throw new QueryError('InvalidParameterError', `multi_analysis takes at most ${MAX_ANALYSES} analyses.`);
  const queries = labels.map((label) => {
    const spec = analyses[label];
    const name = label.slice(0, 80);
    if (!isObject(spec)) throw new QueryError('InvalidParameterError', `analyses["${name}"] must be an object with an "analysis_type".`);
    const type = spec.analysis_type;
    if (typeof type !== 'string' || !isAnalysis(type) || type === 'extraction') {
      throw new QueryError(
        'InvalidParameterError',
        `analyses["${name}"].analysis_type must be one of count, count_unique, select_unique, sum, minimum, maximum, average, median, percentile.`,
      );
    }
    // The label's own settings, over the shared ones (collection, timeframe, filters, groups).
    const own: Record<string, unknown> = {
      ...params,
      analyses: undefined,
      target_property: spec.target_property,
      percentile: spec.percentile,
    };
    return parseQuery(type as Analysis, own, now);
  });
  return { labels, queries };
}

type Grouped = Array<Record<string, unknown>>;

/** Merges per-label grouped results (the same groups, since every label has the same WHERE). */
function mergeGroups(labels: string[], query: ParsedQuery, results: Grouped[]): Grouped {
  const rows = new Map<string, Record<string, unknown>>();
  results.forEach((groups, index) => {
    for (const group of groups) {
      const key = JSON.stringify(query.groupBy.map(({ name }) => group[name]));
      let row = rows.get(key);
      if (!row) {
        row = {};
        for (const { name } of query.groupBy) define(row, name, group[name]);
        rows.set(key, row);
      }
      define(row, labels[index]!, group.result);
    }
  });
  return [...rows.values()];
}

function merge(labels: string[], query: ParsedQuery, results: unknown[]): unknown {
  const single = (values: unknown[]): unknown => {
    if (query.groupBy.length > 0) return mergeGroups(labels, query, values as Grouped[]);
    const out: Record<string, unknown> = {};
    labels.forEach((label, index) => define(out, label, values[index]));
    return out;
  };
  if (!query.intervals) return single(results);
  type Interval = { value: unknown; timeframe: unknown };
  const series = results as Interval[][];
  return series[0]!.map((interval, position) => ({
    value: single(series.map((labelSeries) => labelSeries[position]!.value)),
    timeframe: interval.timeframe,
  }));
}

export async function runMultiAnalysis(
  db: pg.Pool,
  projectId: string,
  parsed: ParsedMultiAnalysis,
  options: RunOptions = {},
): Promise<unknown> {
  // The answer holds every label's result: they share the limit.
  const maxResultBytes = Math.floor((options.maxResultBytes ?? DEFAULT_KEEN_SINK_MAX_RESULT_BYTES) / parsed.queries.length);
  const results = await Promise.all(parsed.queries.map((query) => runQuery(db, projectId, query, { ...options, maxResultBytes })));
  return merge(parsed.labels, parsed.queries[0]!, results);
}
