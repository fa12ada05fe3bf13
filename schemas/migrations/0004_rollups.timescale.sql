-- pulsewire:no-transaction
-- Hourly rollups as a continuous aggregate (cannot be created inside a transaction).
CREATE MATERIALIZED VIEW IF NOT EXISTS readings_1h
    WITH (timescaledb.continuous) AS
    SELECT time_bucket(INTERVAL '1 hour', ts, timestamptz '2000-01-01 00:00:00+00') AS bucket,
           device_id, metric,
           avg(value) AS avg, min(value) AS min, max(value) AS max,
           last(value, ts) AS last, count(*) AS n
    FROM readings
    GROUP BY 1, 2, 3
    WITH NO DATA;
SELECT add_continuous_aggregate_policy('readings_1h',
    start_offset => INTERVAL '3 days', end_offset => INTERVAL '1 hour',
    schedule_interval => INTERVAL '30 minutes', if_not_exists => true);
