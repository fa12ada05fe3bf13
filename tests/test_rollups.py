"""Readings queries with whole-hour buckets read hourly rollups and give the raw answer, on each storage.

Every answer is checked against the one computed here from the written readings, so the two
storages also give the same answers as each other.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from dashboards.queries import ReadingsQuery
from pulsewire import rollups
from pulsewire.migrate import Storage
from tests.helpers import plan_sum
from tests.storage_support import Reading, answer, expected, raw_answer, refresh_rollups, series, write

Conn = psycopg.Connection[dict[str, Any]]
NOW = datetime.now(UTC).replace(second=0, microsecond=0)
HOUR = timedelta(hours=1)
START = NOW.replace(minute=0) - 50 * HOUR
AGGS = ("avg", "min", "max", "last")
BUCKETS = (HOUR, 3 * HOUR, timedelta(days=1))

pytestmark = pytest.mark.storage("native", "timescale")


@pytest.fixture(scope="module")
def history(db_url: str, storage: Storage) -> list[Reading]:
    """Two metrics of one device every 5 minutes for 50 hours up to now, rolled up; one other device."""
    rows = series("r1", "rpm", START, NOW, timedelta(minutes=5))
    rows += series("r1", "speed_kmh", START, NOW, timedelta(minutes=15))
    rows += series("r2", "rpm", START, NOW, timedelta(minutes=10))
    with psycopg.connect(db_url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        write(conn, rows)
        refresh_rollups(conn, storage)
    return rows


def queries(metrics: list[str]) -> list[ReadingsQuery]:
    """Each aggregate and whole-hour bucket, over a range on the hour and one that is not."""
    ranges = [(START, NOW + HOUR), (START + timedelta(minutes=17), NOW - timedelta(minutes=7))]
    return [
        ReadingsQuery("r1", metrics, start, end, bucket, agg)
        for start, end in ranges
        for bucket in BUCKETS
        for agg in AGGS
    ]


@pytest.mark.parametrize("metrics", [["rpm"], ["rpm", "speed_kmh"]], ids=["one-metric", "two-metrics"])
async def test_rollup_answers_equal_raw_answers(
    db_url: str, conn: Conn, history: list[Reading], metrics: list[str]
) -> None:
    for q in queries(metrics):
        assert rollups.uses_rollups(q.bucket, q.start, q.end)
        got = await answer(db_url, q)
        assert got == expected(history, q), (q.bucket, q.agg, q.start)
        assert got == raw_answer(conn, q)


async def test_the_newest_hour_and_late_data_for_an_old_hour_are_in_the_answer(
    db_url: str, conn: Conn, history: list[Reading], storage: Storage
) -> None:
    late = [
        Reading(START + 5 * HOUR + timedelta(minutes=m, seconds=30), "r1", "rpm", 99.0 + m / 4)
        for m in (1, 59)
    ]
    newest = [Reading(NOW - timedelta(seconds=20), "r1", "rpm", 123.25)]
    write(conn, late + newest)
    refresh_rollups(conn, storage)  # TimescaleDB shows late data for a materialized hour after a refresh
    everything = history + late + newest
    for q in queries(["rpm"]):
        assert await answer(db_url, q) == expected(everything, q), (q.bucket, q.agg)


def test_buckets_that_are_not_whole_hours_read_raw_rows() -> None:
    assert not rollups.uses_rollups(timedelta(minutes=90), START, NOW)
    assert not rollups.uses_rollups(timedelta(minutes=30), START, NOW)
    assert not rollups.uses_rollups(HOUR, START + timedelta(minutes=5), START + timedelta(minutes=65))
    assert rollups.uses_rollups(timedelta(days=1), START, NOW)


def _raw_relations(conn: Conn, storage: Storage) -> set[str]:
    """The partitions (native) or chunks (TimescaleDB) that hold raw readings."""
    if storage == "timescale":
        rows = conn.execute("SELECT c::regclass::text AS name FROM show_chunks('readings') c").fetchall()
        return {str(r["name"]).rsplit(".", 1)[-1] for r in rows}
    rows = conn.execute(
        """SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent = 'readings'::regclass"""
    ).fetchall()
    return {str(r["name"]) for r in rows}


def _rows_read(plan: dict[str, Any], relations: set[str]) -> int:
    """Rows the scans of `relations` returned, over a JSON `EXPLAIN ANALYZE` plan."""

    def own(node: dict[str, Any]) -> float:
        return node["Actual Rows"] * node["Actual Loops"] if node.get("Relation Name") in relations else 0

    return int(plan_sum(plan, own))


def test_a_long_range_reads_raw_rows_only_at_its_edges_and_newest_hours(
    conn: Conn, history: list[Reading], storage: Storage
) -> None:
    """A year of daily buckets reads rollups, and raw rows only for the partial hour it starts with
    and the newest hours. (A bound computed inside the statement once made the planner keep every
    partition and chunk, and the tail read every raw row of the range to keep a hundred.)"""
    end = NOW - timedelta(minutes=7)
    start = end - timedelta(days=365)
    params: dict[str, Any] = {"device_id": "r1", "metric": "rpm", "start": start, "end": end}
    params |= {"bucket": timedelta(days=1)} | rollups.range_params(start, end)
    mark = conn.execute(rollups.mark_sql(), params).fetchone()
    assert mark is not None
    params |= rollups.range_params(start, end, mark["mark"])
    sql = rollups.bucketed_sql("avg", "metric = %(metric)s", "%(metric)s::text AS metric", "2")
    row = conn.execute(("EXPLAIN (ANALYZE, FORMAT JSON) " + sql).encode(), params).fetchone()
    assert row is not None
    read = _rows_read(next(iter(row.values()))[0]["Plan"], _raw_relations(conn, storage))
    in_range = len([r for r in history if r.device_id == "r1" and r.metric == "rpm" and start <= r.ts < end])
    # 5-minute readings: the newest hours (up to three with TimescaleDB's materialization lag) and
    # the late readings of the test before, against 50 hours of them in the range.
    assert in_range >= 500 and read <= 50, (read, in_range)
