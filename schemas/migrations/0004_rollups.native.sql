-- Hourly rollups with the same columns as TimescaleDB's continuous aggregate, computed on read.
CREATE VIEW readings_1h AS
    SELECT pw_bucket(INTERVAL '1 hour', ts) AS bucket,
           device_id, metric,
           avg(value) AS avg, min(value) AS min, max(value) AS max,
           (array_agg(value ORDER BY ts DESC))[1] AS last, count(*) AS n
    FROM readings
    GROUP BY 1, 2, 3;
