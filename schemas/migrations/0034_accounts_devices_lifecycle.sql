-- Accounts and devices end their working life without losing history: disabled users, expiring
-- API tokens, decommissioned devices.

-- `disabled_at` records when; `disabled` stays as a column every query already reads, now derived,
-- so the two can never disagree.
ALTER TABLE users ADD COLUMN disabled_at timestamptz;
UPDATE users SET disabled_at = created_at WHERE disabled;
ALTER TABLE users DROP COLUMN disabled;
ALTER TABLE users ADD COLUMN disabled boolean GENERATED ALWAYS AS (disabled_at IS NOT NULL) STORED;

-- A token past its expiry is refused like a revoked one (with its own message).
ALTER TABLE api_tokens ADD COLUMN expires_at timestamptz;

-- A decommissioned device keeps its rows (retention decides) but loses its broker login and takes
-- no more commands. There is no way back: the id stays taken.
ALTER TABLE devices ADD COLUMN decommissioned_at timestamptz;

-- Commands are rate-limited per device by counting its recent ones; `commands_device`
-- (device_id, created_at DESC) from 0020 already serves that count, so no new index is needed.
