-- Hourly rollups as a table maintained incrementally (`pulsewire.rollups.refresh`), replacing the
-- view that computed them on read. Same columns as the TimescaleDB continuous aggregate: `sum` and
-- `n` give an average weighted by count, `last_ts` orders the `last` values of several hours.
DROP VIEW IF EXISTS readings_1h;
CREATE TABLE readings_1h (
    bucket    timestamptz NOT NULL,
    device_id text NOT NULL,
    metric    text NOT NULL,
    n         bigint NOT NULL,
    sum       double precision NOT NULL,
    min       double precision NOT NULL,
    max       double precision NOT NULL,
    last      double precision NOT NULL,
    last_ts   timestamptz NOT NULL,
    PRIMARY KEY (device_id, metric, bucket)
);

-- Every hour before `watermark` is rolled up, except the hours a dirty mark names: a reader reads
-- raw rows from the device's earliest dirty hour (or the watermark) on; 1970: nothing rolled yet.
CREATE TABLE readings_rollup_state (
    only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    watermark timestamptz NOT NULL
);
INSERT INTO readings_rollup_state (watermark) VALUES ('1970-01-01 00:00:00+00');

-- Hours written since their rollup, per device: every writer marks them in its own transaction
-- (ingest, a bulk load, a restore alike), as TimescaleDB's invalidation log does.
CREATE TABLE readings_rollup_dirty (
    dirty_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id  text NOT NULL,
    first_hour timestamptz NOT NULL,
    last_hour  timestamptz NOT NULL
);
CREATE INDEX readings_rollup_dirty_device ON readings_rollup_dirty (device_id, first_hour);

-- One row per device a statement wrote (a COPY of a whole batch is one statement), not per reading.
CREATE FUNCTION readings_mark_dirty() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO readings_rollup_dirty (device_id, first_hour, last_hour)
    SELECT device_id, pw_bucket(INTERVAL '1 hour', min(ts)), pw_bucket(INTERVAL '1 hour', max(ts))
    FROM changed GROUP BY device_id;
    RETURN NULL;
END
$$;
CREATE TRIGGER readings_rollup_inserted AFTER INSERT ON readings
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION readings_mark_dirty();
CREATE TRIGGER readings_rollup_deleted AFTER DELETE ON readings
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION readings_mark_dirty();
CREATE TRIGGER readings_rollup_updated AFTER UPDATE ON readings
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION readings_mark_dirty();

-- The hour from which a reader takes raw rows rather than this device's rollups.
CREATE FUNCTION pw_rollup_mark(device text) RETURNS timestamptz LANGUAGE sql STABLE PARALLEL SAFE
    RETURN LEAST((SELECT watermark FROM readings_rollup_state),
                 (SELECT min(first_hour) FROM readings_rollup_dirty WHERE device_id = device));
