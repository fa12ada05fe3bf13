"""Sequence bookkeeping of ingest: `device_streams` per (device, boot) and the `seq_gaps` between.

Each batch costs a fixed number of statements, however its messages are spread over streams and
however the shared subscription split a stream across workers: one to create the streams it is the
first to see, one to lock and read the streams' high-water marks, one to advance them, one to record
the new gaps and one to fill the gaps its late messages close. Only the read waits for an answer.

Workers that share a stream take turns on its `device_streams` row (locked until commit), so each
judges gaps against what the others committed before it; a stream seen for the first time is
inserted before it is read, so a second worker seeing it at the same time waits for the first one's
row instead of judging against nothing and recording a gap the first one's messages fill.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg

from pulsewire.db import int_array, text_array

if TYPE_CHECKING:
    from ingest.validate import Event, Telemetry

Conn = psycopg.Connection[dict[str, Any]]
Stream = tuple[str, str]
Gap = tuple[str, str, int, int]
Late = tuple[str, str, int]

# A new stream's row starts just below its first seq: "nothing missing before what we saw".
_CREATE = """
INSERT INTO device_streams (device_id, boot_id, max_seq, messages)
SELECT *, 0 FROM unnest(%s::text[], %s::text[], %s::bigint[])
ON CONFLICT (device_id, boot_id) DO NOTHING
"""
_LOCK = """
SELECT device_id, boot_id, max_seq FROM device_streams
WHERE (device_id, boot_id) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
ORDER BY device_id, boot_id FOR UPDATE
"""
_ADVANCE = """
INSERT INTO device_streams (device_id, boot_id, max_seq, messages)
SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[])
ON CONFLICT (device_id, boot_id) DO UPDATE SET
  max_seq = GREATEST(device_streams.max_seq, EXCLUDED.max_seq),
  messages = device_streams.messages + EXCLUDED.messages, updated_at = now()
"""
_RECORD = """
INSERT INTO seq_gaps (device_id, boot_id, first_seq, last_seq)
SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[])
"""
# Every gap holding a late seq is replaced by the pieces its late seqs leave of it, all at once,
# with one index probe per late seq: `fill_seq_gaps` (migration 0053 says how, and why its plan
# does not depend on the planner's statistics of this churning table).
_FILL = """
SELECT fill_seq_gaps(%s::text[], %s::text[], %s::bigint[])
"""


def update_streams(conn: Conn, new: list[Telemetry | Event]) -> int:
    """Advance `device_streams`, record new seq gaps and fill closed ones; returns the gaps recorded."""
    seqs: dict[Stream, list[int]] = {}
    for m in new:
        seqs.setdefault((m.device_id, m.boot_id), []).append(m.seq)
    if not seqs:
        return 0
    # Sorted: two workers sharing streams lock their rows in the same order and never deadlock.
    streams = sorted(seqs)
    devs, boots = text_array(s[0] for s in streams), text_array(s[1] for s in streams)
    conn.execute(_CREATE, (devs, boots, int_array(min(seqs[s]) - 1 for s in streams)))
    known = {(r["device_id"], r["boot_id"]): int(r["max_seq"]) for r in conn.execute(_LOCK, (devs, boots))}
    gaps, late = judge(seqs, known)
    tops, counts = int_array(max(seqs[s]) for s in streams), int_array(len(seqs[s]) for s in streams)
    conn.execute(_ADVANCE, (devs, boots, tops, counts))
    if gaps:
        conn.execute(_RECORD, _columns(gaps))
    if late:
        conn.execute(_FILL, _columns(late))
    return len(gaps)


def judge(seqs: dict[Stream, list[int]], known: dict[Stream, int]) -> tuple[list[Gap], list[Late]]:
    """The gaps a batch opens above each stream's high-water mark, and its seqs at or below it."""
    gaps: list[Gap] = []
    late: list[Late] = []
    for stream, found in seqs.items():
        top = known.get(stream, min(found) - 1)
        prev = top
        for seq in sorted(found):
            if seq <= top:
                late.append((*stream, seq))
            elif seq > prev + 1:
                gaps.append((*stream, prev + 1, seq - 1))
            prev = max(prev, seq)
    return gaps, late


def _columns(rows: list[Gap] | list[Late]) -> tuple[str, ...]:
    """Rows as one array literal per column (strings first, the rest bigints)."""
    cols = list(zip(*rows, strict=True))
    return (text_array(cols[0]), text_array(cols[1]), *(int_array(c) for c in cols[2:]))
