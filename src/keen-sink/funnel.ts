/**
 * Keen's `funnel`: how many distinct actors (values of each step's `actor_property`) did every
 * step so far. Step n counts the actors of the funnel before it who also did step n (each step
 * with its own collection, timeframe, filters and time zone); an `inverted` step counts those who
 * did NOT do it; an `optional` step is counted but does not narrow the steps after it.
 * `with_actors` returns a step's actors as well. The whole funnel is ONE statement: each step's
 * actors are a CTE, so actors never travel to Node unless asked for.
 * Answer: {result: [counts], steps: [steps with defaults filled], actors?: [list or null]}.
 */
import type pg from 'pg';
import { DEFAULT_KEEN_SINK_MAX_RESULT_BYTES } from '../shared/config.js';
import {
  isObject,
  parseQuery,
  propertyPath,
  QueryError,
  Statement,
  structured,
  whereSql,
  type ParsedQuery,
  type RunOptions,
} from './query.js';

/** Keen's funnels are short; every step is a scan of its own. */
export const MAX_STEPS = 20;

export interface FunnelStep {
  query: ParsedQuery;
  optional: boolean;
  inverted: boolean;
  withActors: boolean;
  /** The step as Keen echoes it back. */
  echo: Record<string, unknown>;
}

const flag = (value: unknown, what: string): boolean => {
  if (value === undefined || value === null || value === false || value === 'false') return false;
  if (value === true || value === 'true') return true;
  throw new QueryError('InvalidParameterError', `${what} must be true or false.`);
};

export function parseFunnel(params: Record<string, unknown>, now = new Date()): FunnelStep[] {
  const steps = structured('steps', params.steps);
  if (!Array.isArray(steps) || steps.length === 0) {
    throw new QueryError(
      'MissingRequiredParameterError',
      'funnel needs "steps": a JSON array of {"event_collection", "actor_property", "timeframe"}.',
    );
  }
  if (steps.length > MAX_STEPS) throw new QueryError('InvalidParameterError', `A funnel has at most ${MAX_STEPS} steps.`);
  return steps.map((step, index) => {
    if (!isObject(step)) throw new QueryError('InvalidParameterError', `steps[${index}] must be an object.`);
    const actor = propertyPath(step.actor_property, `steps[${index}].actor_property`);
    // A step's own timeframe and time zone win over the funnel's.
    const timeframe = step.timeframe ?? params.timeframe;
    const timezone = step.timezone ?? params.timezone;
    const query = parseQuery(
      'count_unique',
      { event_collection: step.event_collection, target_property: step.actor_property, timeframe, timezone, filters: step.filters },
      now,
    );
    const optional = flag(step.optional, `steps[${index}].optional`);
    const inverted = flag(step.inverted, `steps[${index}].inverted`);
    if (index === 0 && (optional || inverted))
      throw new QueryError('InvalidParameterError', 'The first step of a funnel can be neither optional nor inverted.');
    const withActors = flag(step.with_actors, `steps[${index}].with_actors`);
    const echo: Record<string, unknown> = {
      actor_property: actor.join('.'),
      event_collection: query.collection,
      timeframe: timeframe ?? null,
      timezone: timezone ?? null,
      filters: structured('filters', step.filters ?? []),
      optional,
      inverted,
      with_actors: withActors,
    };
    return { query, optional, inverted, withActors, echo };
  });
}

/**
 * `maxActorBytes` bounds each list of actors asked for: a longer list is not built (its column is
 * NULL, its size in b<n>), so an answer never holds more than the limit, however many actors match.
 */
export function buildFunnelSql(
  projectId: string,
  steps: FunnelStep[],
  maxActorBytes = DEFAULT_KEEN_SINK_MAX_RESULT_BYTES,
): { text: string; values: unknown[] } {
  const sql = new Statement();
  const ctes: string[] = [];
  const outputs: string[] = [];
  // The funnel so far: the actors of the last step that was not optional.
  let base: string | undefined;
  steps.forEach((step, index) => {
    const actor = `(event #> ${sql.param(step.query.target, 'text[]')})`;
    ctes.push(
      `did${index} AS (SELECT DISTINCT ${actor} AS actor FROM keen_events WHERE ${whereSql(sql, projectId, step.query)} AND jsonb_typeof(${actor}) <> 'null')`,
    );
    let counted: string;
    if (base === undefined) counted = `SELECT actor FROM did${index}`;
    else if (step.inverted) counted = `SELECT actor FROM ${base} WHERE actor NOT IN (SELECT actor FROM did${index})`;
    else counted = `SELECT actor FROM ${base} WHERE actor IN (SELECT actor FROM did${index})`;
    ctes.push(`step${index} AS (${counted})`);
    if (!step.optional) base = `step${index}`;
    outputs.push(`(SELECT count(*) FROM step${index})::int AS n${index}`);
    if (step.withActors) {
      ctes.push(`bytes${index} AS (SELECT coalesce(sum(octet_length(actor::text) + 1), 0)::bigint AS n FROM step${index})`);
      outputs.push(`(SELECT n FROM bytes${index}) AS b${index}`);
      outputs.push(
        `CASE WHEN (SELECT n FROM bytes${index}) > ${sql.param(maxActorBytes, 'float8')} THEN NULL` +
          ` ELSE (SELECT coalesce(jsonb_agg(actor ORDER BY actor), '[]'::jsonb) FROM step${index}) END AS a${index}`,
      );
    }
  });
  return { text: `WITH ${ctes.join(',\n     ')}\nSELECT ${outputs.join(', ')}`, values: sql.values };
}

export async function runFunnel(
  db: pg.Pool,
  projectId: string,
  steps: FunnelStep[],
  options: RunOptions = {},
): Promise<Record<string, unknown>> {
  const maxBytes = options.maxResultBytes ?? DEFAULT_KEEN_SINK_MAX_RESULT_BYTES;
  // The limit is shared by every list of actors asked for.
  const lists = steps.filter((step) => step.withActors).length;
  const { text, values } = buildFunnelSql(projectId, steps, Math.floor(maxBytes / Math.max(1, lists)));
  const { rows } = await db.query<Record<string, unknown>>(text, values);
  const row = rows[0]!;
  const tooLong = steps.findIndex((step, index) => step.withActors && row[`a${index}`] === null);
  if (tooLong >= 0) {
    throw new QueryError(
      'ResultTooLargeError',
      `The actors of steps[${tooLong}] hold ${String(row[`b${tooLong}`])} bytes, more than this keen-sink's limit ` +
        `(KEEN_SINK_MAX_RESULT_BYTES, shared by the ${lists} step(s) with "with_actors"): ` +
        'ask for the actors of fewer steps, or narrow their timeframe or filters.',
    );
  }
  const answer: Record<string, unknown> = { result: steps.map((_, index) => row[`n${index}`]), steps: steps.map((step) => step.echo) };
  if (steps.some((step) => step.withActors)) answer.actors = steps.map((step, index) => (step.withActors ? row[`a${index}`] : null));
  return answer;
}
