-- Plain PostgreSQL: native range partitioning by day. Partitions are created ahead and dropped
-- by retention in `pulsewire.storage.maintain`; a default partition takes data older than the
-- oldest partition (a late upload), so nothing is ever refused for its age.

CREATE TABLE readings (
    ts        timestamptz NOT NULL,
    device_id text NOT NULL,
    metric    text NOT NULL,
    value     double precision NOT NULL
) PARTITION BY RANGE (ts);
CREATE TABLE readings_default PARTITION OF readings DEFAULT;
-- INCLUDE (value): range queries per device and metric are answered from the index alone.
CREATE INDEX readings_device_metric_ts ON readings (device_id, metric, ts) INCLUDE (value);

CREATE TABLE events (
    ts          timestamptz NOT NULL,
    device_id   text NOT NULL,
    boot_id     text NOT NULL,
    seq         bigint NOT NULL,
    type        text NOT NULL,
    data        jsonb NOT NULL DEFAULT '{}',
    received_at timestamptz NOT NULL DEFAULT now()
) PARTITION BY RANGE (ts);
CREATE TABLE events_default PARTITION OF events DEFAULT;
CREATE INDEX events_device_ts ON events (device_id, ts);

-- One bucketing function for every query; `time_bucket` on TimescaleDB, `date_bin` here,
-- with the same origin so both give the same buckets.
CREATE FUNCTION pw_bucket(bucket interval, ts timestamptz) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN date_bin(bucket, ts, timestamptz '2000-01-01 00:00:00+00');

INSERT INTO pulsewire_meta (key, value) VALUES ('storage', 'native');
