/**
 * Writes prepared events to PostgreSQL. One statement per request claims the uniqueness tokens
 * and inserts the events whose claim succeeded, so a token and its event are stored together
 * or not at all, and concurrent duplicates leave exactly one event. An event PostgreSQL refuses
 * (which validation should already have caught) is refused alone: the statement is split until
 * it stands by itself, and its neighbours are stored.
 */
import type pg from 'pg';
import { UNIQUENESS_WINDOW_DAYS } from '../shared/keen/protocol.js';
import type { PreparedEvent } from './events.js';

export type StoreOutcome = { status: 'created' } | { status: 'duplicate' } | { status: 'refused'; problem: string };

/**
 * What an event's own content can cause: a data exception (class 22: text, number or date it
 * cannot hold), a program limit (class 54: nesting too deep) or a failed CHECK. Anything else
 * (a lost connection, a timeout) is the server's, and fails the request.
 */
const isDataError = (err: unknown) => {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && (code.startsWith('22') || code.startsWith('54') || code === '23514');
};

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
 * Stores `events` (already validated) and says, for each, whether it was stored, was a
 * duplicate of an event stored earlier (or earlier in the same list) with the same token, or
 * was refused by PostgreSQL. A refusal costs about 2·log2(n) statements, and nothing is stored
 * twice: a failed statement stored nothing, and halves already stored keep their token claims.
 */
export async function storeEvents(db: pg.Pool, projectId: string, events: PreparedEvent[]): Promise<StoreOutcome[]> {
  if (events.length === 0) return [];
  try {
    return await insertEvents(db, projectId, events);
  } catch (err) {
    if (!isDataError(err)) throw err;
    if (events.length === 1) return [{ status: 'refused', problem: `PostgreSQL cannot store this event: ${(err as Error).message}` }];
    const half = Math.ceil(events.length / 2);
    const first = await storeEvents(db, projectId, events.slice(0, half));
    return [...first, ...(await storeEvents(db, projectId, events.slice(half)))];
  }
}

async function insertEvents(db: pg.Pool, projectId: string, events: PreparedEvent[]): Promise<StoreOutcome[]> {
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
  return events.map((event) => ({ status: storedIds.has(event.id) ? 'created' : 'duplicate' }));
}

/** Forgets claims older than the window; they could be taken over anyway, this only bounds the table. */
export async function expireUniquenessTokens(db: pg.Pool): Promise<number> {
  const { rowCount } = await db.query(`DELETE FROM keen_uniqueness_tokens WHERE claimed_at < now() - make_interval(days => $1)`, [
    UNIQUENESS_WINDOW_DAYS,
  ]);
  return rowCount ?? 0;
}
