-- The aggregate's own indexes lead with `metric` or with `device_id` alone, so reading one device's
-- metric filtered out every other device's rows of each chunk. Native storage's `readings_1h` has
-- this key as its primary key.
CREATE INDEX IF NOT EXISTS readings_1h_device_metric_bucket ON readings_1h (device_id, metric, bucket);
