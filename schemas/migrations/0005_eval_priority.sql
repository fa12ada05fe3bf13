-- Batches that carry events (a shock, a battery at ERI, a new trouble code) are what pages: the rule
-- engine takes devices with such batches first.
ALTER TABLE eval_queue ADD COLUMN has_events boolean NOT NULL DEFAULT false;
