"""Sequence bookkeeping of ingest: `device_streams` per (device, boot) and the `seq_gaps` between."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg

from pulsewire.db import int_array, text_array

if TYPE_CHECKING:
    from ingest.validate import Event, Telemetry

Conn = psycopg.Connection[dict[str, Any]]


def update_streams(conn: Conn, new: list[Telemetry | Event]) -> int:
    """Advance `device_streams` and record seq gaps; returns the number of gaps recorded."""
    seqs: dict[tuple[str, str], list[int]] = {}
    for m in new:
        seqs.setdefault((m.device_id, m.boot_id), []).append(m.seq)
    if not seqs:
        return 0
    streams = sorted(seqs)
    devs, boots = [s[0] for s in streams], [s[1] for s in streams]
    known = {
        (r["device_id"], r["boot_id"]): int(r["max_seq"])
        for r in conn.execute(
            """SELECT device_id, boot_id, max_seq FROM device_streams
               WHERE (device_id, boot_id) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
               ORDER BY device_id, boot_id FOR UPDATE""",
            (text_array(devs), text_array(boots)),
        )
    }
    gaps: list[tuple[str, str, int, int]] = []
    late: list[tuple[str, str, int]] = []
    for stream in streams:
        found = sorted(seqs[stream])
        top = known.get(stream)
        prev = found[0] - 1 if top is None else top
        for seq in found:
            if seq > prev + 1:
                gaps.append((*stream, prev + 1, seq - 1))
            elif top is not None and seq <= top:
                late.append((*stream, seq))
            prev = max(prev, seq)
    conn.execute(
        """INSERT INTO device_streams (device_id, boot_id, max_seq, messages)
           SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[])
           ON CONFLICT (device_id, boot_id) DO UPDATE SET
             max_seq = GREATEST(device_streams.max_seq, EXCLUDED.max_seq),
             messages = device_streams.messages + EXCLUDED.messages, updated_at = now()""",
        (
            text_array(devs),
            text_array(boots),
            int_array(max(seqs[s]) for s in streams),
            int_array(len(seqs[s]) for s in streams),
        ),
    )
    if gaps:
        conn.execute(
            "INSERT INTO seq_gaps (device_id, boot_id, first_seq, last_seq) "
            "SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[])",
            tuple(list(col) for col in zip(*gaps, strict=True)),
        )
    for key in late:
        _fill_gap(conn, *key)
    return len(gaps)


def _fill_gap(conn: Conn, device_id: str, boot_id: str, seq: int) -> None:
    """A late message arrived: take its seq out of the gap that holds it (rare, so one by one)."""
    rows = conn.execute(
        """DELETE FROM seq_gaps WHERE device_id = %s AND boot_id = %s AND first_seq <= %s AND last_seq >= %s
           RETURNING first_seq, last_seq""",
        (device_id, boot_id, seq, seq),
    ).fetchall()
    for r in rows:
        for low, high in ((int(r["first_seq"]), seq - 1), (seq + 1, int(r["last_seq"]))):
            if low <= high:
                conn.execute(
                    "INSERT INTO seq_gaps (device_id, boot_id, first_seq, last_seq) VALUES (%s, %s, %s, %s)",
                    (device_id, boot_id, low, high),
                )
