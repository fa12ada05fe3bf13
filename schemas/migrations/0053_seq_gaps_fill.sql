-- Filling the seq gaps a batch's late messages close, in one statement whose cost follows the late
-- seqs whatever the planner's statistics say. seq_gaps churns: a burst of reordering fills it with
-- thousands of one-seq gaps that the next batch closes, so an ANALYZE taken between two bursts can
-- call it empty. On such statistics the planner once joined every late seq with every gap
-- (quadratic: minutes for 50,000 late seqs). So the fill:
--   * finds each late seq's gap with one probe of seq_gaps_stream (migration 0052): the stream's
--     gap starting closest below it, read backwards in index order, LIMIT 1. A bitmap scan cannot
--     read in order; on statistics that say "one row" it was chosen, and then read and sorted every
--     gap below the seq, once per late seq, so it is disabled for this function;
--   * joins nothing else to seq_gaps: it deletes the gaps by the row addresses the probe read, and
--     cuts their remaining pieces from what the probe read.
-- A gap holding late seqs is replaced by the pieces they leave of it: between consecutive late
-- seqs, and after the last one. A stream's gaps never overlap (ingest/_streams.py).
-- seq_gaps_device offered the planner the same wrong road (all of a device's gaps, then a sort);
-- seq_gaps_stream serves lookups by device as well, so it goes.
DROP INDEX seq_gaps_device;

CREATE FUNCTION fill_seq_gaps(devices text[], boots text[], seqs bigint[]) RETURNS void
LANGUAGE sql SET enable_bitmapscan = off AS $$
WITH found AS (
  SELECT g.*, l.seq FROM unnest(devices, boots, seqs) AS l(device_id, boot_id, seq)
  CROSS JOIN LATERAL (
    SELECT ctid AS addr, gap_id, device_id, boot_id, first_seq, last_seq, detected_at FROM seq_gaps
    WHERE device_id = l.device_id AND boot_id = l.boot_id AND first_seq <= l.seq
    ORDER BY first_seq DESC LIMIT 1
  ) g
  WHERE l.seq <= g.last_seq
), hit AS (
  DELETE FROM seq_gaps WHERE ctid = ANY (ARRAY(SELECT addr FROM found))
), cuts AS (
  SELECT *, lag(seq) OVER (PARTITION BY gap_id ORDER BY seq) AS prev FROM found
), pieces AS (
  SELECT device_id, boot_id, COALESCE(prev + 1, first_seq) AS lo, seq - 1 AS hi, detected_at FROM cuts
  UNION ALL
  SELECT device_id, boot_id, max(seq) + 1, last_seq, detected_at FROM cuts
  GROUP BY gap_id, device_id, boot_id, last_seq, detected_at
)
INSERT INTO seq_gaps (device_id, boot_id, first_seq, last_seq, detected_at)
SELECT device_id, boot_id, lo, hi, detected_at FROM pieces WHERE lo <= hi
$$;
