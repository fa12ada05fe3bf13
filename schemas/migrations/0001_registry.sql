-- Registry: organisations, people, devices. Owner PII lives in `owners` only.

CREATE TABLE orgs (
    org_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    kind        text NOT NULL CHECK (kind IN ('provider', 'vendor', 'operator')),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE owners (
    owner_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider_org_id bigint NOT NULL REFERENCES orgs,
    full_name       text NOT NULL,
    birth_date      date,
    email           text,
    phone           text,
    address         text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX owners_provider ON owners (provider_org_id);

CREATE TABLE users (
    user_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email         text NOT NULL UNIQUE CHECK (email = lower(email)),
    display_name  text NOT NULL,
    role          text NOT NULL CHECK (role IN ('provider_staff', 'vendor_staff', 'owner', 'admin')),
    org_id        bigint REFERENCES orgs,
    owner_id      bigint REFERENCES owners,
    password_hash text,
    disabled      boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (role <> 'owner' OR owner_id IS NOT NULL),
    CHECK (role NOT IN ('provider_staff', 'vendor_staff') OR org_id IS NOT NULL)
);

CREATE TABLE api_tokens (
    token_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id      bigint NOT NULL REFERENCES users ON DELETE CASCADE,
    token_hash   bytea NOT NULL UNIQUE,          -- sha256 of the token; the token itself is shown once
    name         text NOT NULL DEFAULT 'api',
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX api_tokens_user ON api_tokens (user_id);

CREATE TABLE devices (
    device_id          text PRIMARY KEY CHECK (device_id ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    kind               text NOT NULL CHECK (kind IN ('implant', 'vehicle')),
    model              text NOT NULL,
    serial             text NOT NULL,
    firmware           text NOT NULL DEFAULT '',
    owner_id           bigint REFERENCES owners,
    provider_org_id    bigint NOT NULL REFERENCES orgs,
    vendor_org_id      bigint NOT NULL REFERENCES orgs,
    mqtt_password_hash text NOT NULL,            -- Mosquitto PBKDF2-SHA512 format, for the broker's password file
    heartbeat_s        integer NOT NULL DEFAULT 86400 CHECK (heartbeat_s > 0),
    created_at         timestamptz NOT NULL DEFAULT now(),
    online             boolean NOT NULL DEFAULT false,
    status_at          timestamptz,
    last_seen_at       timestamptz,
    boot_id            text,
    last_seq           bigint
);
CREATE INDEX devices_provider ON devices (provider_org_id);
CREATE INDEX devices_vendor ON devices (vendor_org_id);
CREATE INDEX devices_owner ON devices (owner_id);

-- Settings of this database that code reads back (storage mode, retention).
CREATE TABLE pulsewire_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
