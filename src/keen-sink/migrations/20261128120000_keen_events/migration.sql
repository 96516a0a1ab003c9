-- keen-sink's own schema, applied by keen-sink itself with the bookkeeping table
-- _keen_sink_migrations. Events are stored whole as JSONB; the columns beside the JSON copy
-- what queries filter on, so timeframes are index range scans.

CREATE TABLE keen_events (
  -- keen.id, assigned by the sink.
  id              TEXT PRIMARY KEY,
  project_id      TEXT NOT NULL,
  collection      TEXT NOT NULL CHECK (char_length(collection) BETWEEN 1 AND 64 AND collection NOT LIKE '$%'),
  -- keen.timestamp and keen.created_at, also present inside "event".
  keen_timestamp  TIMESTAMPTZ NOT NULL,
  keen_created_at TIMESTAMPTZ NOT NULL,
  event           JSONB NOT NULL CHECK (jsonb_typeof(event) = 'object')
);

-- Every query names a project and a collection and usually a timeframe.
CREATE INDEX keen_events_collection_timestamp_idx ON keen_events (project_id, collection, keen_timestamp);
-- eq filters become containment (event @> '{"device_id": "..."}'), which this index serves.
CREATE INDEX keen_events_event_idx ON keen_events USING GIN (event jsonb_path_ops);

-- keen.uniqueness_token: the first event with a token is kept for 31 days per collection. The
-- primary key makes claiming a token atomic (INSERT .. ON CONFLICT), so concurrent duplicates
-- store one event; a claim older than 31 days may be taken over by a new event.
CREATE TABLE keen_uniqueness_tokens (
  project_id  TEXT NOT NULL,
  collection  TEXT NOT NULL,
  token       TEXT NOT NULL CHECK (char_length(token) <= 64),
  event_id    TEXT NOT NULL,
  claimed_at  TIMESTAMPTZ NOT NULL,
  PRIMARY KEY (project_id, collection, token)
);

-- Expired claims are deleted in the background.
CREATE INDEX keen_uniqueness_tokens_claimed_at_idx ON keen_uniqueness_tokens (claimed_at);
