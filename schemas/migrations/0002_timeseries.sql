-- Time series and the ingest ledger. `readings` and `events` are created by the storage
-- variant (0003_storage.native.sql or 0003_storage.timescale.sql); everything here is common.

-- One row per accepted message: the dedupe key. A redelivery hits the primary key and stores nothing.
CREATE TABLE ingest_log (
    device_id   text NOT NULL,
    boot_id     text NOT NULL,
    seq         bigint NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('telemetry', 'event')),
    n_rows      integer NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, boot_id, seq)
);
CREATE INDEX ingest_log_received ON ingest_log (received_at);

-- Per (device, boot): what we have seen, for gap detection.
CREATE TABLE device_streams (
    device_id  text NOT NULL REFERENCES devices ON DELETE CASCADE,
    boot_id    text NOT NULL,
    max_seq    bigint NOT NULL,
    messages   bigint NOT NULL DEFAULT 0,
    first_at   timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, boot_id)
);

-- Seq ranges not (yet) received: data lost upstream. Filled when a later seq arrives.
CREATE TABLE seq_gaps (
    gap_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id   text NOT NULL,
    boot_id     text NOT NULL,
    first_seq   bigint NOT NULL,   -- first missing seq
    last_seq    bigint NOT NULL,   -- last missing seq
    detected_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX seq_gaps_device ON seq_gaps (device_id, detected_at);

CREATE TABLE quarantine (
    quarantine_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at   timestamptz NOT NULL DEFAULT now(),
    topic         text NOT NULL,
    device_id     text,
    reason        text NOT NULL,
    detail        text NOT NULL DEFAULT '',
    payload       bytea NOT NULL
);
CREATE INDEX quarantine_received ON quarantine (received_at);
CREATE INDEX quarantine_reason ON quarantine (reason);

-- Work for the rule engine: one row per (device, committed batch), written in the batch's
-- transaction, consumed by relay workers. Durable, so a restart neither misses nor repeats.
CREATE TABLE eval_queue (
    eval_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id   text NOT NULL,
    min_ts      timestamptz NOT NULL,
    max_ts      timestamptz NOT NULL,
    enqueued_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX eval_queue_device ON eval_queue (device_id, eval_id);
