-- Dashboards: commands to devices, two-way contact with owners, web sessions, the audit log.

-- A command sent to a device over MQTT 5 (correlation data = command_id). Status only moves forward:
-- pending -> sent -> acknowledged -> done | failed, or timed_out when no final reply comes in time.
CREATE TABLE commands (
    command_id   text PRIMARY KEY,
    device_id    text NOT NULL REFERENCES devices ON DELETE CASCADE,
    name         text NOT NULL CHECK (name IN ('request_transmission', 'clear_dtc', 'ping')),
    args         jsonb NOT NULL DEFAULT '{}',
    status       text NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'sent', 'acknowledged', 'done', 'failed', 'timed_out')),
    detail       text NOT NULL DEFAULT '',
    result       jsonb NOT NULL DEFAULT '{}',
    requested_by bigint REFERENCES users ON DELETE SET NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    sent_at      timestamptz,
    acked_at     timestamptz,
    finished_at  timestamptz
);
CREATE INDEX commands_device ON commands (device_id, created_at DESC);
CREATE INDEX commands_open ON commands (created_at) WHERE status IN ('pending', 'sent', 'acknowledged');

-- Provider -> owner messages about a device.
CREATE TABLE messages (
    message_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id   text NOT NULL REFERENCES devices ON DELETE CASCADE,
    owner_id    bigint REFERENCES owners ON DELETE CASCADE,
    sender_id   bigint REFERENCES users ON DELETE SET NULL,
    subject     text NOT NULL DEFAULT '' CHECK (length(subject) <= 200),
    body        text NOT NULL CHECK (length(body) BETWEEN 1 AND 5000),
    created_at  timestamptz NOT NULL DEFAULT now(),
    read_at     timestamptz
);
CREATE INDEX messages_device ON messages (device_id, message_id DESC);

-- Owner appointment requests; the provider confirms, declines or proposes another time.
CREATE TABLE appointments (
    appointment_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id      text NOT NULL REFERENCES devices ON DELETE CASCADE,
    owner_id       bigint NOT NULL REFERENCES owners ON DELETE CASCADE,
    requested_by   bigint REFERENCES users ON DELETE SET NULL,
    requested_for  timestamptz NOT NULL,
    reason         text NOT NULL DEFAULT '' CHECK (length(reason) <= 2000),
    status         text NOT NULL DEFAULT 'requested'
                   CHECK (status IN ('requested', 'proposed', 'confirmed', 'declined', 'cancelled')),
    proposed_for   timestamptz,
    note           text NOT NULL DEFAULT '' CHECK (length(note) <= 2000),
    updated_by     bigint REFERENCES users ON DELETE SET NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX appointments_device ON appointments (device_id, appointment_id DESC);

-- Web login sessions; the cookie carries the id (signed), only its hash is stored.
CREATE TABLE web_sessions (
    session_hash bytea PRIMARY KEY,
    user_id      bigint NOT NULL REFERENCES users ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX web_sessions_expiry ON web_sessions (expires_at);

-- Who did what, through the API or the web pages.
CREATE TABLE audit_log (
    audit_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    user_id     bigint REFERENCES users ON DELETE SET NULL,
    action      text NOT NULL,
    object_type text NOT NULL,
    object_id   text NOT NULL,
    details     jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_object ON audit_log (object_type, object_id, at);
