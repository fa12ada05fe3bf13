-- A bad message the broker delivers again (after a worker crashed before its ack, or a reconnect)
-- is one quarantine row, not two: while a row waits for replay, the same payload on the same topic
-- only counts another copy. A replayed row is out of the way, so a replay that fails validation
-- again is quarantined as a new row.
ALTER TABLE quarantine
    ADD COLUMN copies           integer NOT NULL DEFAULT 1 CHECK (copies >= 1),
    ADD COLUMN last_received_at timestamptz;

-- Copies already stored fold into their first row. The topic is hashed for the key: an unknown
-- topic can be longer than an index entry may be.
WITH folded AS (
    SELECT min(quarantine_id) AS keep, count(*) AS n, max(received_at) AS latest,
           payload_sha256, md5(topic) AS topic_md5
    FROM quarantine WHERE replayed_at IS NULL
    GROUP BY payload_sha256, md5(topic) HAVING count(*) > 1
), kept AS (
    UPDATE quarantine q SET copies = f.n, last_received_at = f.latest
    FROM folded f WHERE q.quarantine_id = f.keep
)
DELETE FROM quarantine q USING folded f
WHERE q.replayed_at IS NULL AND q.payload_sha256 = f.payload_sha256 AND md5(q.topic) = f.topic_md5
  AND q.quarantine_id <> f.keep;

CREATE UNIQUE INDEX quarantine_pending_message ON quarantine (payload_sha256, md5(topic))
    WHERE replayed_at IS NULL;
