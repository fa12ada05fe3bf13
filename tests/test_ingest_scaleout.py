"""Ingest scale-out: workers on one shared subscription, each stream split between them.

The broker hands a shared subscription's messages to its workers in turn, so every stream arrives
half at each worker. Nothing is stored twice or left out, no gap stays in `seq_gaps` for a stream
that had none, and the gap bookkeeping costs a fixed number of statements per batch, however many
messages and streams the batch holds. The statements are counted from libpq's own protocol trace.

While both workers run, a gap may stand for a moment: a worker that commits seqs 0, 2, 4 before the
other commits 1, 3 records the gaps at 1 and 3, in the statement that records all of its batch's
gaps, and the other worker's batch fills them in one statement. The first test prints how many such
rows came and went; none is left.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg import pq

from ingest._streams import _FILL, _columns, update_streams
from ingest.service import IngestService
from ingest.validate import Event, Telemetry
from pulsewire.settings import Settings
from tests.fix_db import World
from tests.helpers import plan_sum
from tests.ingest_support import Publisher, in_process_statuses, running_ingest, settle, telemetry

Conn = psycopg.Connection[dict[str, Any]]
# Odd: the broker alternates between the two workers message by message, so each stream is split.
DEVICES = [f"scale-{i}" for i in range(7)]
PER_DEVICE = 400  # within the per-device burst (5,000): nothing is rate limited
CHUNK = 50


def telemetry_count(service: IngestService) -> float:
    return float(service.metrics.messages.labels("telemetry")._value.get())


def gap_ids_used(conn: Conn) -> int:
    """How many seq_gaps rows were ever inserted in this module's database (its identity's position)."""
    row = conn.execute("SELECT last_value, is_called FROM seq_gaps_gap_id_seq").fetchone()
    assert row is not None
    return int(row["last_value"]) if row["is_called"] else 0


def test_two_workers_split_gap_free_streams_without_gaps(
    world: World, settings: Settings, conn: Conn
) -> None:
    for device in DEVICES:
        world.add_device(device, "implant")
    group = secrets.token_hex(4)
    with (
        running_ingest(settings, "scale-a", share_group=group) as a,
        running_ingest(settings, "scale-b", share_group=group) as b,
    ):
        statuses = [in_process_statuses(a), in_process_statuses(b)]
        settle(settings, DEVICES[0], statuses)  # both subscribed
        with Publisher(settings.mqtt()) as pub:
            for start in range(0, PER_DEVICE, CHUNK):
                seqs = range(start, start + CHUNK)
                pub.publish_all(
                    telemetry(d, s, [("heart_rate_bpm", 60.0 + s % 40)]) for s in seqs for d in DEVICES
                )
        settle(settings, DEVICES[0], statuses)
        split = (telemetry_count(a), telemetry_count(b))
    assert sum(split) == len(DEVICES) * PER_DEVICE and min(split) > 0, split
    stored = conn.execute(
        "SELECT device_id, count(*) AS n, count(DISTINCT seq) AS seqs, max(seq) AS top FROM ingest_log"
        " WHERE device_id = ANY(%s) GROUP BY 1 ORDER BY 1",
        (DEVICES,),
    ).fetchall()
    assert [(r["n"], r["seqs"], r["top"]) for r in stored] == [
        (PER_DEVICE, PER_DEVICE, PER_DEVICE - 1)
    ] * len(DEVICES)
    readings = conn.execute(
        "SELECT count(*) AS n FROM readings WHERE device_id = ANY(%s)", (DEVICES,)
    ).fetchone()
    assert readings == {"n": len(DEVICES) * PER_DEVICE}
    streams = conn.execute(
        "SELECT max_seq, messages FROM device_streams WHERE device_id = ANY(%s)", (DEVICES,)
    ).fetchall()
    assert streams == [{"max_seq": PER_DEVICE - 1, "messages": PER_DEVICE}] * len(DEVICES)
    gaps = conn.execute("SELECT * FROM seq_gaps WHERE device_id = ANY(%s)", (DEVICES,)).fetchall()
    assert gaps == []
    print(
        f"\nsplit {split[0]:.0f}/{split[1]:.0f}; gap rows recorded and filled meanwhile: {gap_ids_used(conn)}"
    )


@contextmanager
def statements_sent(conn: Conn) -> Iterator[list[str]]:
    """The statements `conn` sends to the server inside the block, read from libpq's protocol trace."""
    sent: list[str] = []
    with tempfile.TemporaryFile("w+") as trace:
        conn.pgconn.trace(os.dup(trace.fileno()))
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            yield sent
        finally:
            conn.pgconn.untrace()
        trace.seek(0)
        # A frontend line: "F <length> Parse|Query <text...>"; each statement is one of either.
        sent.extend(
            line for line in trace if line.split("\t")[0] == "F" and line.split("\t")[2] in ("Parse", "Query")
        )


NOW = datetime.now(UTC)


def batch(device_ids: list[str], seqs: range) -> list[Telemetry | Event]:
    """Messages as update_streams sees them (it reads only their stream and seq)."""
    return [Telemetry(d, "b1", s, (), b"", NOW, NOW) for d in device_ids for s in seqs]


@pytest.mark.parametrize("devices", [1, 50])
def test_gap_bookkeeping_costs_a_fixed_number_of_statements_per_batch(
    world: World, db_url: str, devices: int
) -> None:
    """Two writers share streams; each batch's statements do not grow with its messages or streams."""
    ids = [f"sb-{devices}-{i}" for i in range(devices)]
    for device in ids:
        world.add_device(device, "implant")
    counts: list[int] = []
    with (
        psycopg.connect(db_url, row_factory=psycopg.rows.dict_row) as one,
        psycopg.connect(db_url, row_factory=psycopg.rows.dict_row) as two,
    ):
        # Worker one takes the even seqs, worker two the odd ones, in growing batches: each batch
        # of one opens gaps that the next batch of two fills, and the reverse.
        for size in (10, 100, 1_000):
            for writer, parity in ((one, 0), (two, 1)):
                base = {10: 0, 100: 10, 1_000: 110}[size] * 2
                seqs = range(base + parity, base + 2 * size, 2)
                with statements_sent(writer) as sent, writer.transaction():
                    update_streams(writer, batch(ids, seqs))
                counts.append(len([s for s in sent if "BEGIN" not in s and "COMMIT" not in s]))
    print(f"\nstatements per batch (10, 100, 1,000 messages a stream, two writers): {counts}")
    assert max(counts) <= 5 and counts[-2:] == counts[:2], counts
    with psycopg.connect(db_url) as c:
        left = c.execute("SELECT count(*) FROM seq_gaps WHERE device_id = ANY(%s)", (ids,)).fetchone()
    assert left == (0,)


def handled(node: dict[str, Any]) -> float:
    """Rows a plan node produced or filtered out, in all its loops: the work it did."""
    removed = sum(float(v) for k, v in node.items() if k.startswith("Rows Removed by"))
    return (removed + float(node["Actual Rows"])) * float(node["Actual Loops"])


def fill_work(conn: Conn, streams: list[str], per_stream: int) -> float:
    """Rows the fill handles per late seq, when each stream has `per_stream` one-seq gaps to close.

    The gaps are inserted after an ANALYZE that saw seq_gaps empty, as autovacuum may leave it
    between two bursts of reordering: the planner then believes the table holds one row. The plan
    of every statement the fill runs, its function's included, comes back from auto_explain.
    """
    conn.execute("INSERT INTO seq_gaps (device_id, boot_id, first_seq, last_seq) VALUES ('x', 'b1', 1, 1)")
    conn.execute("DELETE FROM seq_gaps WHERE device_id = 'x'")
    conn.execute("ANALYZE seq_gaps")
    stats = conn.execute("SELECT reltuples FROM pg_class WHERE relname = 'seq_gaps'").fetchone()
    assert stats == {"reltuples": 0}  # "empty": what the planner believes from here on
    gaps = [(d, "b1", s, s) for s in range(1, 2 * per_stream, 2) for d in streams]  # interleaved
    plans: list[dict[str, Any]] = []

    def explained(notice: psycopg.errors.Diagnostic) -> None:
        plans.append(json.loads((notice.message_primary or "").split("\n", 1)[1]))

    conn.add_notice_handler(explained)
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(
                "INSERT INTO seq_gaps (device_id, boot_id, first_seq, last_seq)"
                " SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[])",
                _columns(gaps),
            )
            conn.execute("LOAD 'auto_explain'")
            for name, value in AUTO_EXPLAIN.items():
                conn.execute(f"SET LOCAL auto_explain.{name} = {value}")
            conn.execute(_FILL, _columns([(d, b, s) for d, b, s, _ in gaps]))
            conn.execute("RESET auto_explain.log_min_duration")
            left = conn.execute("SELECT count(*) AS n FROM seq_gaps WHERE device_id = ANY(%s)", (streams,))
            assert left.fetchone() == {"n": 0}
    finally:
        conn.remove_notice_handler(explained)
    assert plans
    return sum(plan_sum(p["Plan"], handled) for p in plans) / len(gaps)


AUTO_EXPLAIN = {
    "log_min_duration": "0",
    "log_analyze": "on",
    "log_timing": "off",
    "log_nested_statements": "on",
    "log_format": "json",
    "log_level": "notice",
}


def test_filling_gaps_does_the_same_work_per_late_seq_however_many_gaps_on_stale_statistics(
    conn: Conn,
) -> None:
    """On statistics that call seq_gaps empty, closing 4x the gaps is 4x the work, not 16x."""
    streams = [f"stale-{i}" for i in range(20)]
    small, large = fill_work(conn, streams, 200), fill_work(conn, streams, 800)
    print(f"\nrows handled per late seq: {small:.1f} (200 gaps a stream), {large:.1f} (800 gaps a stream)")
    assert large <= 1.5 * small, (small, large)
