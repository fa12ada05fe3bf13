-- Quarantine keeps at most a prefix of each payload, with the size and SHA-256 of the whole, and expires
-- by retention (`pulsewire maintain`). Replayed rows are marked, so a second replay does nothing.
ALTER TABLE quarantine
    ADD COLUMN payload_size   integer,
    ADD COLUMN payload_sha256 bytea,
    ADD COLUMN replayed_at    timestamptz;

-- Rows written before this migration hold their whole payload.
UPDATE quarantine SET payload_size = octet_length(payload), payload_sha256 = sha256(payload);

ALTER TABLE quarantine
    ALTER COLUMN payload_size SET NOT NULL,
    ALTER COLUMN payload_sha256 SET NOT NULL,
    ADD CONSTRAINT quarantine_payload_prefix CHECK (octet_length(payload) <= payload_size);

-- A row written without them (by hand, by an older writer) holds its whole payload.
CREATE FUNCTION quarantine_whole_payload() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.payload_size := coalesce(NEW.payload_size, octet_length(NEW.payload));
    NEW.payload_sha256 := coalesce(NEW.payload_sha256, sha256(NEW.payload));
    RETURN NEW;
END $$;
CREATE TRIGGER quarantine_whole_payload BEFORE INSERT ON quarantine
    FOR EACH ROW WHEN (NEW.payload_size IS NULL OR NEW.payload_sha256 IS NULL)
    EXECUTE FUNCTION quarantine_whole_payload();

-- What replay looks for: rows not replayed yet, by device.
CREATE INDEX quarantine_pending ON quarantine (device_id, quarantine_id) WHERE replayed_at IS NULL;
