-- The seed's queries, fast over millions of events (query.ts, "fast paths"). They name device_id:
-- counts filtered by `device_id` eq, and count_unique / select_unique of device_id per day.
-- Applied in place: the indexes are built and the rollup filled from the events already stored
-- (writes wait while this runs: minutes for millions of events).

-- eq on device_id over a timeframe: one index range per lamp, in time order, within a collection.
-- The GIN index answers eq on any property, but for every collection and all time at once.
CREATE INDEX keen_events_device_id_idx ON keen_events (project_id, collection, (event -> 'device_id'), keen_timestamp);
-- eq also matches an array that holds the value (as Keen's does): the rare events whose device_id
-- is an array are indexed apart, so that half of the filter is an index scan too.
CREATE INDEX keen_events_device_id_array_idx ON keen_events (project_id, collection, keen_timestamp)
  WHERE jsonb_typeof(event -> 'device_id') = 'array';

-- The distinct values of a property seen in each UTC hour: count_unique and select_unique read
-- whole hours here and only the hours an interval boundary cuts from keen_events. A row is
-- never removed (events are never deleted), and is written once however many events it stands for.
CREATE TABLE keen_property_hours (
  project_id  TEXT NOT NULL,
  collection  TEXT NOT NULL,
  -- The property's name (a top-level one), and a value it held, never JSON null.
  property    TEXT NOT NULL,
  value       JSONB NOT NULL,
  -- Start of the UTC hour.
  hour        TIMESTAMPTZ NOT NULL,
  PRIMARY KEY (project_id, collection, property, hour, value)
);

-- Kept by the statement that stores the events, in its transaction, whoever writes them. Sorted,
-- so two statements writing the same rows take their locks in the same order (no deadlock).
CREATE FUNCTION keen_property_hours_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO keen_property_hours (project_id, collection, property, value, hour)
  SELECT DISTINCT project_id, collection, 'device_id', event -> 'device_id',
         date_bin('1 hour', keen_timestamp, TIMESTAMPTZ '2000-01-01 00:00:00+00')
    FROM added WHERE jsonb_typeof(event -> 'device_id') <> 'null'
   ORDER BY 1, 2, 3, 5, 4
  ON CONFLICT DO NOTHING;
  RETURN NULL;
END;
$$;

CREATE TRIGGER keen_property_hours_add AFTER INSERT ON keen_events
  REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION keen_property_hours_add();

INSERT INTO keen_property_hours (project_id, collection, property, value, hour)
SELECT DISTINCT project_id, collection, 'device_id', event -> 'device_id',
       date_bin('1 hour', keen_timestamp, TIMESTAMPTZ '2000-01-01 00:00:00+00')
  FROM keen_events WHERE jsonb_typeof(event -> 'device_id') <> 'null';
