/**
 * Writes prepared events to PostgreSQL. One statement per request claims the uniqueness tokens
 * and inserts the events whose claim succeeded, so a token and its event are stored together
 * or not at all, and concurrent duplicates leave exactly one event.
 */
import type pg from 'pg';
import { UNIQUENESS_WINDOW_DAYS, type PreparedEvent } from './events.js';

export type StoreOutcome = 'created' | 'duplicate';

const INSERT = `
WITH input AS (
  SELECT e->>'id' AS id,
         e->>'collection' AS collection,
         (e->>'timestamp')::timestamptz AS keen_timestamp,
         (e->>'created_at')::timestamptz AS keen_created_at,
         e->>'token' AS token,
         e->'event' AS event
    FROM jsonb_array_elements($2::jsonb) AS e
),
claimed AS (
  -- Sorted, so two requests claiming overlapping tokens lock them in the same order.
  INSERT INTO keen_uniqueness_tokens AS u (project_id, collection, token, event_id, claimed_at)
  SELECT $1, collection, token, id, keen_created_at FROM input WHERE token IS NOT NULL ORDER BY collection, token
  ON CONFLICT (project_id, collection, token) DO UPDATE
    SET event_id = EXCLUDED.event_id, claimed_at = EXCLUDED.claimed_at
    WHERE u.claimed_at <= EXCLUDED.claimed_at - make_interval(days => $3)
  RETURNING event_id
),
stored AS (
  INSERT INTO keen_events (id, project_id, collection, keen_timestamp, keen_created_at, event)
  SELECT id, $1, collection, keen_timestamp, keen_created_at, event FROM input
   WHERE token IS NULL OR id IN (SELECT event_id FROM claimed)
  RETURNING id
)
SELECT id FROM stored`;

/**
 * Stores `events` (already validated) and says, for each, whether it was stored or was a
 * duplicate of an event stored earlier (or earlier in the same list) with the same token.
 */
export async function storeEvents(db: pg.Pool, projectId: string, events: PreparedEvent[]): Promise<StoreOutcome[]> {
  if (events.length === 0) return [];
  // Within one request the first event with a token wins; later ones never reach the database
  // (ON CONFLICT may not touch the same row twice in one statement).
  const seen = new Set<string>();
  const firstOfToken = events.map((event) => {
    if (event.token === null) return true;
    const key = JSON.stringify([event.collection, event.token]);
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
  const rows = events
    .filter((_, index) => firstOfToken[index])
    .map((event) => ({
      id: event.id,
      collection: event.collection,
      timestamp: event.timestamp.toISOString(),
      created_at: event.createdAt.toISOString(),
      token: event.token,
      event: event.event,
    }));
  const { rows: stored } = await db.query<{ id: string }>(INSERT, [projectId, JSON.stringify(rows), UNIQUENESS_WINDOW_DAYS]);
  const storedIds = new Set(stored.map((row) => row.id));
  return events.map((event) => (storedIds.has(event.id) ? 'created' : 'duplicate'));
}

/** Forgets claims older than the window; they could be taken over anyway, this only bounds the table. */
export async function expireUniquenessTokens(db: pg.Pool): Promise<number> {
  const { rowCount } = await db.query(`DELETE FROM keen_uniqueness_tokens WHERE claimed_at < now() - make_interval(days => $1)`, [UNIQUENESS_WINDOW_DAYS]);
  return rowCount ?? 0;
}
