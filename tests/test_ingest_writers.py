"""One worker, several writer connections (`PULSEWIRE_INGEST_WRITERS`, ingest/order.py).

Batches are copied in parallel but claimed and committed in order, so more connections store exactly
what one would: every message once, seq streams advanced in message order (no gap is ever recorded
for a stream that had none, not even for a moment), acks in the order the messages came. A batch
PostgreSQL refuses in part is written again message by message while the next one waits its turn.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from ingest.order import BatchOrder, Restart, Turn
from ingest.validate import Event, Quarantined, Validated, validate
from ingest.writer import BatchOutcome, BatchWriter
from pulsewire.settings import Settings
from tests.fix_db import World
from tests.helpers import round_trips
from tests.ingest_support import Publisher, in_process_statuses, running_ingest, settle, telemetry

Conn = psycopg.Connection[dict[str, Any]]
DEVICES = [f"wr-{i}" for i in range(5)]
PER_DEVICE = 400
CHUNK = 100


def _gap_ids_used(conn: Conn) -> int:
    row = conn.execute("SELECT last_value, is_called FROM seq_gaps_gap_id_seq").fetchone()
    assert row is not None
    return int(row["last_value"]) if row["is_called"] else 0


def _count(conn: Conn, query: str, *params: Any) -> int:
    row = conn.execute(query.encode(), params).fetchone()
    assert row is not None
    return int(next(iter(row.values())) or 0)


def test_three_writers_store_every_message_once_and_record_no_gap(
    world: World, settings: Settings, conn: Conn
) -> None:
    for device in DEVICES:
        world.add_device(device, "vehicle")
    gaps_before = _gap_ids_used(conn)
    # Small batches, so that many are in flight at once across the three connections.
    with running_ingest(settings, "writers", ingest_writers=3, batch_max_rows=40) as service:
        calls = [0, 0, 0]
        for i, writer in enumerate(service._writers):
            write = writer.write

            def counted(items: Sequence[Validated], payloads: Sequence[bytes] | None = None, *,
                        _i: int = i, _write: Any = write, **order: Any) -> BatchOutcome:  # fmt: skip
                calls[_i] += 1
                return _write(items, payloads, **order)  # type: ignore[no-any-return]

            writer.write = counted  # type: ignore[method-assign]
        messages = [
            telemetry(device, seq, [("rpm", 800.0 + seq), ("speed_kmh", 50.0)])
            for seq in range(PER_DEVICE)
            for device in DEVICES
        ]
        with Publisher(settings.mqtt()) as pub:
            for i in range(0, len(messages), CHUNK):
                pub.publish_all(messages[i : i + CHUNK])
        settle(settings, DEVICES[0], [in_process_statuses(service)])
    assert all(calls), f"batches per writer: {calls}"  # all three connections wrote
    for device in DEVICES:
        rows = _count(conn, "SELECT count(*) FROM readings WHERE device_id = %s", device)
        logged = _count(
            conn, "SELECT count(*) FROM ingest_log WHERE device_id = %s AND boot_id = 'b1'", device
        )
        assert (rows, logged) == (2 * PER_DEVICE, PER_DEVICE), device
        stream = conn.execute(
            "SELECT max_seq, messages FROM device_streams WHERE device_id = %s AND boot_id = 'b1'", (device,)
        ).fetchone()
        assert stream is not None and (stream["max_seq"], stream["messages"]) == (PER_DEVICE - 1, PER_DEVICE)
    assert _gap_ids_used(conn) == gaps_before, "a gap was recorded: batches committed out of order"


def test_a_refused_batch_is_isolated_while_the_next_one_waits_its_turn(
    world: World, settings: Settings, conn: Conn
) -> None:
    world.add_device("wr-ref", "vehicle")
    now = datetime.now(UTC)
    kinds = {"wr-ref": "vehicle"}

    def valid(seq: int) -> Validated:
        item = validate(*telemetry("wr-ref", seq, [("rpm", 900.0)]), kinds, now=now, max_future_skew_s=300,
                        retention_days=settings.retention_days)  # fmt: skip
        assert not isinstance(item, Quarantined), item
        return item

    # Batch 0 holds an event PostgreSQL refuses (a NUL in its data, which validation would have
    # caught); batch 1 continues the same stream. Each goes to its own connection at once.
    refused = Event("wr-ref", "b1", 3, now, "dtc_set", {"code": "P0\x00420"})
    batches: list[list[Validated]] = [[valid(0), valid(1), valid(2), refused, valid(4)],
                                      [valid(5), valid(6), valid(7)]]  # fmt: skip
    order = BatchOrder(2)
    committed: list[int] = []
    errors: list[BaseException] = []
    gaps_before = _gap_ids_used(conn)

    def write(number: int) -> None:
        writer = BatchWriter(settings.require_database_url())
        turn = Turn(order, number)
        try:
            while True:
                try:
                    payloads = [f"raw-{number}-{i}".encode() for i in range(len(batches[number]))]
                    writer.write(batches[number], payloads, turn=turn,
                                 on_commit=lambda _out: committed.append(number))  # fmt: skip
                    return
                except Restart:
                    continue
        except BaseException as exc:
            errors.append(exc)
        finally:
            writer.close()

    threads = [threading.Thread(target=write, args=(n,)) for n in (1, 0)]  # the later one starts first
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert committed == [0, 1]
    assert _count(conn, "SELECT count(*) FROM readings WHERE device_id = 'wr-ref'") == 7
    assert (
        _count(conn, "SELECT count(*) FROM quarantine WHERE device_id = 'wr-ref' AND reason = 'db_rejected'")
        == 1
    )
    stream = conn.execute("SELECT max_seq FROM device_streams WHERE device_id = 'wr-ref'").fetchone()
    assert stream is not None and stream["max_seq"] == 7
    # seq 3 went to quarantine: that one gap is real, and the only one recorded.
    assert _gap_ids_used(conn) == gaps_before + 1
    gap = conn.execute("SELECT first_seq, last_seq FROM seq_gaps WHERE device_id = 'wr-ref'").fetchone()
    assert gap is not None and (gap["first_seq"], gap["last_seq"]) == (3, 3)


def test_a_batch_pays_no_round_trip_for_begin_or_commit(world: World, settings: Settings, conn: Conn) -> None:
    """BEGIN goes with the batch's claim and COMMIT with its tail: readings and an event are stored
    in 7 round trips (the claim, two per COPY, two for the tail), 9 before."""
    world.add_device("wr-trips", "vehicle")
    now = datetime.now(UTC)
    kinds = {"wr-trips": "vehicle"}
    raw = [telemetry("wr-trips", 0, [("rpm", 900.0)]), telemetry("wr-trips", 1, [("rpm", 910.0)])]
    items = [validate(*m, kinds, now=now, max_future_skew_s=300, retention_days=7) for m in raw]
    items.append(Event("wr-trips", "b1", 2, now, "dtc_set", {"code": "P0420"}))
    writer = BatchWriter(settings.require_database_url())
    try:
        writer.load_kinds()  # connects
        assert writer._conn is not None
        out: list[BatchOutcome] = []
        assert round_trips(writer._conn, lambda: out.append(writer.write(items))) == 7
    finally:
        writer.close()
    assert (out[0].readings, out[0].events) == (2, 1)
    assert _count(conn, "SELECT count(*) FROM readings WHERE device_id = 'wr-trips'") == 2
    assert _count(conn, "SELECT count(*) FROM eval_queue WHERE device_id = 'wr-trips' AND has_events") == 1


def test_work_that_raises_leaves_nothing_for_the_next_batch_to_commit(settings: Settings, conn: Conn) -> None:
    """A bug in the middle of a batch rolls its transaction back: the next batch's commit must not
    store half of it."""
    conn.execute("CREATE TABLE IF NOT EXISTS writer_half (n int)")
    conn.execute("TRUNCATE writer_half")
    writer = BatchWriter(settings.require_database_url())

    def half(c: Conn) -> None:
        c.execute("BEGIN")
        c.execute("INSERT INTO writer_half VALUES (1)")
        raise ZeroDivisionError("a bug")

    try:
        with pytest.raises(ZeroDivisionError):
            writer._run(half)
        writer._run(lambda c: c.execute("SELECT 1"))  # the next piece of work, and its commit
    finally:
        writer.close()
    assert _count(conn, "SELECT count(*) FROM writer_half") == 0
