"""Storage policies do their work: data is moved past them and their effects are checked.

TimescaleDB: the compression, retention and aggregate refresh jobs are run (`CALL run_job`), and
queries still answer from compressed chunks. Native: `maintain` creates and drops day partitions
and keeps the hourly rollups, which a query reads before the watermark and not after.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from dashboards.queries import ReadingsQuery
from pulsewire import rollups
from pulsewire.storage import list_partitions, maintain
from tests.storage_support import answer, expected, job_id, series, write

Conn = psycopg.Connection[dict[str, Any]]
NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
DAY = timedelta(days=1)


@pytest.mark.storage("timescale")
async def test_timescale_policies_compress_drop_and_refresh(db_url: str, conn: Conn) -> None:
    expired = series("p1", "rpm", NOW - 500 * DAY, NOW - 499 * DAY, timedelta(hours=1))
    settled = series("p1", "rpm", NOW - 20 * DAY, NOW - 10 * DAY, timedelta(minutes=10))
    recent = series("p1", "rpm", NOW - 2 * DAY, NOW, timedelta(minutes=10))
    write(conn, expired + settled + recent)
    chunks_before = _chunks(conn)

    conn.execute("CALL run_job(%s)", (job_id(conn, "policy_retention"),))
    left = conn.execute("SELECT count(*) AS n FROM readings WHERE ts < %s", (NOW - 400 * DAY,)).fetchone()
    assert left == {"n": 0}
    assert len(_chunks(conn)) < len(chunks_before)

    conn.execute("CALL run_job(%s)", (job_id(conn, "policy_compression"),))
    chunks = _chunks(conn)
    old = [c for c in chunks if c["range_end"] <= NOW - 7 * DAY]
    assert old and all(c["is_compressed"] for c in old)
    assert not any(c["is_compressed"] for c in chunks if c["range_start"] >= NOW - 2 * DAY)

    mat = _materialized_rows(conn)
    conn.execute("CALL run_job(%s)", (job_id(conn, "policy_refresh_continuous_aggregate"),))
    assert _materialized_rows(conn) > mat
    kept = settled + recent
    for bucket, agg in [(DAY, "avg"), (timedelta(hours=1), "last"), (DAY, "max")]:
        q = ReadingsQuery("p1", ["rpm"], NOW - 30 * DAY, NOW + DAY, bucket, agg)
        assert await answer(db_url, q) == expected(kept, q)  # compressed chunks, materialized hours


def _chunks(conn: Conn) -> list[dict[str, Any]]:
    return conn.execute(
        """SELECT chunk_name, range_start, range_end, is_compressed FROM timescaledb_information.chunks
           WHERE hypertable_name = 'readings' ORDER BY range_start"""
    ).fetchall()


def _materialized_rows(conn: Conn) -> int:
    """Rows the continuous aggregate has materialized (not its real-time part)."""
    row = conn.execute(
        """SELECT format('%I.%I', materialization_hypertable_schema, materialization_hypertable_name) AS t
           FROM timescaledb_information.continuous_aggregates WHERE view_name = 'readings_1h'"""
    ).fetchone()
    assert row is not None
    counted = conn.execute(f"SELECT count(*) AS n FROM {row['t']}").fetchone()
    assert counted is not None
    return int(counted["n"])


@pytest.mark.storage("native")
async def test_native_maintain_keeps_partitions_and_rollups(db_url: str, conn: Conn) -> None:
    day0 = datetime(2026, 1, 10, tzinfo=UTC)
    maintain(conn, retention_days=30, now=day0)
    assert "readings_p20260117" in list_partitions(conn, "readings")
    rows = series("n1", "rpm", day0 - 2 * DAY, day0 + DAY, timedelta(minutes=20))
    write(conn, rows)
    maintain(conn, retention_days=30, now=day0 + 2 * DAY)
    rolled = conn.execute("SELECT count(*) AS n, sum(n) AS readings FROM readings_1h WHERE device_id = 'n1'")
    assert rolled.fetchone() == {"n": 72, "readings": len(rows)}  # every hour, every reading
    assert conn.execute("SELECT count(*) AS n FROM readings_rollup_dirty").fetchone() == {"n": 0}

    later = maintain(conn, retention_days=30, now=day0 + 40 * DAY)
    assert "readings_p20260108" in later.dropped and "readings_p20260219" in later.created
    # Every hour written is past retention now: its rollups went with its partitions.
    assert later.expired_rollup_rows == 72
    assert conn.execute("SELECT count(*) AS n FROM readings_1h").fetchone() == {"n": 0}


@pytest.mark.storage("native")
async def test_native_queries_read_rollups_before_the_watermark_and_raw_rows_after(
    db_url: str, conn: Conn
) -> None:
    start = NOW - 3 * DAY
    rows = series("n2", "rpm", start, NOW, timedelta(minutes=30))
    write(conn, rows)
    rollups.refresh(conn)
    q = ReadingsQuery("n2", ["rpm"], start, NOW, DAY, "max")
    # A rollup row changed by hand shows in the answer: the answer is read from rollups.
    conn.execute("UPDATE readings_1h SET max = 1000 WHERE device_id = 'n2' AND bucket = %s", (start,))
    assert (await answer(db_url, q))[0][2] == 1000
    # Late data for that hour marks it dirty: until the next refresh it is read raw, and exact.
    late = series("n2", "rpm", start + timedelta(minutes=10), start + timedelta(minutes=11), DAY)
    write(conn, late)
    assert await answer(db_url, q) == expected(rows + late, q)
    rollups.refresh(conn)
    assert conn.execute("SELECT count(*) AS n FROM readings_rollup_dirty").fetchone() == {"n": 0}
    assert await answer(db_url, q) == expected(rows + late, q)
