-- TimescaleDB: hypertables with compression and retention policies (documented API:
-- create_hypertable, ALTER TABLE ... SET (timescaledb.compress ...), add_compression_policy,
-- add_retention_policy). Chosen by the migration runner when the extension can be created.

CREATE TABLE readings (
    ts        timestamptz NOT NULL,
    device_id text NOT NULL,
    metric    text NOT NULL,
    value     double precision NOT NULL
);
SELECT create_hypertable('readings', 'ts', chunk_time_interval => INTERVAL '1 day');
-- INCLUDE (value): range queries per device and metric are answered from the index alone.
CREATE INDEX readings_device_metric_ts ON readings (device_id, metric, ts) INCLUDE (value);
ALTER TABLE readings SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'device_id, metric',
    timescaledb.compress_orderby = 'ts'
);
SELECT add_compression_policy('readings', INTERVAL '7 days');
SELECT add_retention_policy('readings', INTERVAL '400 days');

CREATE TABLE events (
    ts          timestamptz NOT NULL,
    device_id   text NOT NULL,
    boot_id     text NOT NULL,
    seq         bigint NOT NULL,
    type        text NOT NULL,
    data        jsonb NOT NULL DEFAULT '{}',
    received_at timestamptz NOT NULL DEFAULT now()
);
SELECT create_hypertable('events', 'ts', chunk_time_interval => INTERVAL '7 days');
CREATE INDEX events_device_ts ON events (device_id, ts);
SELECT add_retention_policy('events', INTERVAL '400 days');

CREATE FUNCTION pw_bucket(bucket interval, ts timestamptz) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN time_bucket(bucket, ts, timestamptz '2000-01-01 00:00:00+00');

INSERT INTO pulsewire_meta (key, value) VALUES ('storage', 'timescale');
