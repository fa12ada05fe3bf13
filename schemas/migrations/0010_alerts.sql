-- Alerts: rules, per-(device, rule) evaluation state, alerts with their history, and the relay's
-- outbox (one row per delivery: alert event x audience x channel x endpoint) with every attempt.
-- Default rules are seeded from schemas/rules/defaults.yaml by `pulsewire migrate` (relay.rules).

CREATE TABLE rules (
    rule_id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key             text NOT NULL CHECK (key ~ '^[a-z0-9_]+\.[a-z0-9_.]+$'),
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    device_kind     text NOT NULL CHECK (device_kind IN ('implant', 'vehicle')),
    model           text,
    device_id       text REFERENCES devices ON DELETE CASCADE,
    provider_org_id bigint REFERENCES orgs ON DELETE CASCADE,   -- NULL: a global default
    kind            text NOT NULL CHECK (kind IN ('threshold', 'outside', 'jump', 'drop', 'absence',
                                                  'event', 'count', 'anomaly')),
    params          jsonb NOT NULL DEFAULT '{}',
    severity        text NOT NULL CHECK (severity IN ('red', 'yellow', 'info')),
    class           text NOT NULL CHECK (class IN ('clinical', 'technical')),
    auto_resolve    boolean NOT NULL DEFAULT false,
    enabled         boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
-- One rule per key and scope; a narrower scope (device > model > kind) overrides a wider one.
CREATE UNIQUE INDEX rules_scope ON rules (key, device_kind, coalesce(provider_org_id, 0),
                                          coalesce(model, ''), coalesce(device_id, ''));

-- Per device: the event-time watermark of what has been evaluated, and when data last came in.
CREATE TABLE device_eval_state (
    device_id     text PRIMARY KEY REFERENCES devices ON DELETE CASCADE,
    watermark     timestamptz,              -- event time up to which data was evaluated in order
    last_input_at timestamptz,              -- clock time of the last evaluated batch (absence)
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Per (device, rule key): the durable state machine of the rule (phase, windows, gate values).
CREATE TABLE rule_state (
    device_id  text NOT NULL REFERENCES devices ON DELETE CASCADE,
    rule_key   text NOT NULL,
    state      jsonb NOT NULL DEFAULT '{}',
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, rule_key)
);

CREATE TABLE alerts (
    alert_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id       text NOT NULL REFERENCES devices ON DELETE CASCADE,
    rule_id         bigint REFERENCES rules ON DELETE SET NULL,
    rule_key        text NOT NULL,
    rule_name       text NOT NULL,
    severity        text NOT NULL CHECK (severity IN ('red', 'yellow', 'info')),
    class           text NOT NULL CHECK (class IN ('clinical', 'technical')),
    state           text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'acknowledged', 'resolved')),
    late            boolean NOT NULL DEFAULT false,
    escalated       boolean NOT NULL DEFAULT false,
    provider_org_id bigint NOT NULL REFERENCES orgs,
    vendor_org_id   bigint NOT NULL REFERENCES orgs,
    started_at      timestamptz NOT NULL,   -- event time the condition began
    last_seen_at    timestamptz NOT NULL,   -- event time of the latest evidence
    ended_at        timestamptz,            -- event time the condition cleared
    occurrences     integer NOT NULL DEFAULT 1,
    "values"        jsonb NOT NULL DEFAULT '{}',
    opened_at       timestamptz NOT NULL DEFAULT now(),
    acknowledged_at timestamptz,
    acknowledged_by bigint REFERENCES users ON DELETE SET NULL,
    resolved_at     timestamptz,
    resolved_by     bigint REFERENCES users ON DELETE SET NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
-- One open alert per (device, rule): repeats update it.
CREATE UNIQUE INDEX alerts_one_open ON alerts (device_id, rule_key) WHERE state <> 'resolved';
-- Replaying the same evidence (a restart, an out-of-order batch) never creates a second alert.
CREATE UNIQUE INDEX alerts_fingerprint ON alerts (device_id, rule_key, started_at);
CREATE INDEX alerts_provider ON alerts (provider_org_id, alert_id DESC);
CREATE INDEX alerts_vendor ON alerts (vendor_org_id, alert_id DESC) WHERE class = 'technical';
CREATE INDEX alerts_escalation ON alerts (opened_at) WHERE state = 'open' AND severity = 'red'
    AND NOT escalated AND NOT late;

CREATE TABLE alert_history (
    history_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id   bigint NOT NULL REFERENCES alerts ON DELETE CASCADE,
    at         timestamptz NOT NULL DEFAULT now(),
    action     text NOT NULL CHECK (action IN ('opened', 'updated', 'acknowledged', 'resolved',
                                               'escalated', 'reopened')),
    actor      text NOT NULL,              -- 'system:<worker>' or 'user:<user_id>'
    user_id    bigint REFERENCES users ON DELETE SET NULL,
    detail     jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX alert_history_alert ON alert_history (alert_id, history_id);

-- Webhook endpoints per org; the secret is shown once at creation and kept to sign deliveries.
CREATE TABLE webhooks (
    webhook_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id     bigint NOT NULL REFERENCES orgs ON DELETE CASCADE,
    url        text NOT NULL CHECK (url ~ '^https?://'),
    secret     text NOT NULL,
    enabled    boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhooks_org ON webhooks (org_id) WHERE enabled;

-- E-mail recipients per org, used when settings.smtp_url is set.
CREATE TABLE org_contacts (
    org_id  bigint NOT NULL REFERENCES orgs ON DELETE CASCADE,
    email   text NOT NULL CHECK (email ~ '^[^@\s]+@[^@\s]+$'),
    PRIMARY KEY (org_id, email)
);

-- The outbox is the deliveries ledger: written in the alert's transaction, claimed by relay
-- workers with FOR UPDATE SKIP LOCKED. `body` is the exact JSON that is sent and signed.
CREATE TABLE outbox (
    delivery_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id        bigint NOT NULL REFERENCES alerts ON DELETE CASCADE,
    event           text NOT NULL CHECK (event IN ('opened', 'escalated', 'resolved')),
    audience        text NOT NULL CHECK (audience IN ('provider', 'vendor')),
    org_id          bigint NOT NULL REFERENCES orgs ON DELETE CASCADE,
    channel         text NOT NULL CHECK (channel IN ('webhook', 'mqtt', 'email')),
    webhook_id      bigint REFERENCES webhooks ON DELETE SET NULL,  -- deleted: pending rows go dead
    body            text NOT NULL,
    state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE state = 'pending';
CREATE INDEX outbox_org ON outbox (org_id, delivery_id DESC);

CREATE TABLE delivery_attempts (
    attempt_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id bigint NOT NULL REFERENCES outbox ON DELETE CASCADE,
    at          timestamptz NOT NULL DEFAULT now(),
    worker      text NOT NULL,
    ok          boolean NOT NULL,
    status_code integer,
    error       text,
    duration_ms double precision NOT NULL
);
CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id, attempt_id);
