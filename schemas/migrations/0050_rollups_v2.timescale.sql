-- pulsewire:no-transaction
-- The hourly continuous aggregate again, with what exact answers over several hours need: `sum` and
-- `n` (an average weighted by count) and `last_ts` (which hour's `last` is the latest). Real-time
-- aggregation (materialized_only = false): rows after the materialized watermark are read raw, so
-- the newest hours are always in the answer. The policy refreshes every invalidated hour however old
-- (start_offset NULL): a late upload for last month is in the aggregate after the next run.
DROP MATERIALIZED VIEW IF EXISTS readings_1h;
CREATE MATERIALIZED VIEW readings_1h
    WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
    SELECT time_bucket(INTERVAL '1 hour', ts, timestamptz '2000-01-01 00:00:00+00') AS bucket,
           device_id, metric,
           count(*) AS n, sum(value) AS sum, min(value) AS min, max(value) AS max,
           last(value, ts) AS last, max(ts) AS last_ts
    FROM readings
    GROUP BY 1, 2, 3
    WITH NO DATA;
SELECT add_continuous_aggregate_policy('readings_1h',
    start_offset => NULL, end_offset => INTERVAL '1 hour',
    schedule_interval => INTERVAL '30 minutes', if_not_exists => true);
-- Real-time aggregation reads rows after the materialized watermark itself: every hour is trusted.
CREATE FUNCTION pw_rollup_mark(device text) RETURNS timestamptz LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN timestamptz 'infinity';
