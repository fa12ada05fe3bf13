-- A late seq finds the gap holding it with one probe: the stream's gap with the greatest first_seq
-- at or below it (a stream's gaps never overlap). Without it, filling gaps compared every late seq
-- with every gap of its stream.
CREATE INDEX seq_gaps_stream ON seq_gaps (device_id, boot_id, first_seq);
