-- A rule that fails on a device is skipped there and its error recorded on it, for its provider to see.
ALTER TABLE rules
    ADD COLUMN last_error    text,
    ADD COLUMN error_count   bigint NOT NULL DEFAULT 0,
    ADD COLUMN last_error_at timestamptz;

-- A device whose evaluation fails as a whole is retried later (capped backoff), not at the head of
-- every round: the queue keeps draining for every other device.
ALTER TABLE eval_queue
    ADD COLUMN attempts   integer NOT NULL DEFAULT 0,
    ADD COLUMN retry_at   timestamptz,
    ADD COLUMN last_error text;
