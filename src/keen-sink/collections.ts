/**
 * Keen's `GET /3.0/projects/{id}/events`: the project's collections, each with the properties of
 * its latest event and their Keen types ("string", "num", "bool", "list", "null"). Collections are
 * found by skipping through the (project, collection, timestamp) index, one probe per collection,
 * so the answer costs the number of collections, not of events. Only reads.
 */
import type pg from 'pg';
import { eventsPath } from '../shared/keen/protocol.js';

/** A project with more collections than this is answered with the first ones by name. */
export const MAX_COLLECTIONS = 1000;
/** Nested objects are described this deep; deeper ones are reported as "object". */
const MAX_DEPTH = 6;

export interface CollectionSchema {
  name: string;
  properties: Record<string, string>;
  url: string;
}

const LIST = `
WITH RECURSIVE names AS (
  (SELECT collection AS name FROM keen_events WHERE project_id = $1::text ORDER BY collection LIMIT 1)
  UNION ALL
  SELECT (SELECT collection FROM keen_events WHERE project_id = $1::text AND collection > names.name ORDER BY collection LIMIT 1)
    FROM names WHERE names.name IS NOT NULL
)
SELECT name,
       (SELECT event FROM keen_events e WHERE e.project_id = $1::text AND e.collection = names.name ORDER BY keen_timestamp DESC, id DESC LIMIT 1) AS latest
  FROM names WHERE name IS NOT NULL
 LIMIT $2::int`;

function keenType(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'list';
  if (typeof value === 'number') return 'num';
  if (typeof value === 'boolean') return 'bool';
  if (typeof value === 'string') return 'string';
  return 'object';
}

/** Dotted property names of `event` and their types, walking own properties only. */
export function describeProperties(event: unknown): Record<string, string> {
  const out: Record<string, string> = Object.create(null);
  const walk = (value: unknown, prefix: string, depth: number) => {
    for (const key of Object.keys(value as object)) {
      const child = (value as Record<string, unknown>)[key];
      const name = prefix ? `${prefix}.${key}` : key;
      if (child !== null && typeof child === 'object' && !Array.isArray(child) && depth < MAX_DEPTH) walk(child, name, depth + 1);
      else out[name] = keenType(child);
    }
  };
  if (event !== null && typeof event === 'object' && !Array.isArray(event)) walk(event, '', 1);
  return out;
}

export async function listCollections(db: pg.Pool, projectId: string): Promise<CollectionSchema[]> {
  const { rows } = await db.query<{ name: string; latest: unknown }>(LIST, [projectId, MAX_COLLECTIONS]);
  return rows.map((row) => ({
    name: row.name,
    properties: describeProperties(row.latest),
    url: eventsPath(projectId, row.name),
  }));
}
