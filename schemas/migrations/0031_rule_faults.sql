-- A rule that fails on a device is skipped there and its error recorded on it, for its provider to see.
ALTER TABLE rules
    ADD COLUMN last_error    text,
    ADD COLUMN error_count   bigint NOT NULL DEFAULT 0,
    ADD COLUMN last_error_at timestamptz;

-- A device whose evaluation failed as a whole waits until `retry_at` (capped backoff) instead of
-- heading every round: the queue keeps draining for every other device. Kept apart from eval_queue,
-- whose rows must stay untouched (their xmin names the data each batch wrote).
CREATE TABLE eval_retry (
    device_id  text PRIMARY KEY,
    attempts   integer NOT NULL DEFAULT 1,
    retry_at   timestamptz NOT NULL,
    last_error text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
