-- Fair delivery claims: relay workers take the orgs with due rows in turn, the oldest due row of
-- each. This index serves both the skip scan over the orgs of pending rows and the claim per org.
CREATE INDEX outbox_pending_org ON outbox (org_id, next_attempt_at, delivery_id) WHERE state = 'pending';
