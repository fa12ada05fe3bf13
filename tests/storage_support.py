"""Helpers for the storage tests: write readings, answer readings queries, and the answer computed here.

Values are multiples of 1/4, so every sum is exact in floating point and rollup answers can be
compared with raw answers by equality, not approximately.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from dashboards.queries import AGGREGATES, ReadingsQuery, readings
from pulsewire import rollups
from pulsewire.migrate import Storage

Conn = psycopg.Connection[dict[str, Any]]
ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)  # pw_bucket's origin


@dataclass(frozen=True)
class Reading:
    ts: datetime
    device_id: str
    metric: str
    value: float


def write(conn: Conn, rows: list[Reading]) -> None:
    """COPY the readings in one statement, as ingest does."""
    with (
        conn.transaction(),
        conn.cursor().copy("COPY readings (ts, device_id, metric, value) FROM STDIN") as cp,
    ):
        for r in rows:
            cp.write_row((r.ts, r.device_id, r.metric, r.value))


def series(device_id: str, metric: str, start: datetime, end: datetime, step: timedelta) -> list[Reading]:
    """One reading every `step` in [start, end), values cycling through multiples of 1/4."""
    out, ts, i = [], start, 0
    while ts < end:
        out.append(Reading(ts, device_id, metric, (i * 7 % 41) * 0.25))
        ts, i = ts + step, i + 1
    return out


def expected(rows: list[Reading], q: ReadingsQuery) -> list[tuple[str, datetime, float, int]]:
    """(metric, bucket, value, n) as the query should answer, computed in Python."""
    assert q.bucket is not None
    groups: dict[tuple[str, datetime], list[Reading]] = defaultdict(list)
    for r in rows:
        if r.device_id == q.device_id and r.metric in q.metrics and q.start <= r.ts < q.end:
            groups[(r.metric, ORIGIN + (r.ts - ORIGIN) // q.bucket * q.bucket)].append(r)
    out = []
    for (metric, bucket), members in sorted(groups.items()):
        values = [m.value for m in members]
        value = {
            "avg": sum(values) / len(values),
            "min": min(values),
            "max": max(values),
            "last": max(members, key=lambda m: m.ts).value,
        }[q.agg]
        out.append((metric, bucket, value, len(values)))
    return out


async def answer(db_url: str, q: ReadingsQuery) -> list[tuple[str, datetime, float, int]]:
    """What `dashboards.queries.readings` answers (from rollups when the bucket allows)."""
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True, row_factory=dict_row) as conn:
        rows, _ = await readings(conn, q)
    return [(r["metric"], r["ts"], r["value"], r["n"]) for r in rows]


def raw_answer(conn: Conn, q: ReadingsQuery) -> list[tuple[str, datetime, float, int]]:
    """The same query over raw rows only (how every bucketed query was answered before rollups)."""
    rows = conn.execute(
        f"""SELECT metric, pw_bucket(%(bucket)s, ts) AS ts, {AGGREGATES[q.agg]} AS value, count(*) AS n
            FROM readings WHERE device_id = %(device)s AND metric = ANY(%(metrics)s)
              AND ts >= %(start)s AND ts < %(end)s GROUP BY 1, 2 ORDER BY 1, 2""",
        {"bucket": q.bucket, "device": q.device_id, "metrics": q.metrics, "start": q.start, "end": q.end},
    ).fetchall()
    return [(r["metric"], r["ts"], r["value"], r["n"]) for r in rows]


def job_id(conn: Conn, proc_name: str) -> int:
    """TimescaleDB: the id of the readings policy job named `proc_name`."""
    # The refresh policy belongs to the aggregate's own hypertable; the one aggregate has one.
    row = conn.execute(
        """SELECT job_id FROM timescaledb_information.jobs WHERE proc_name = %(proc)s
             AND (hypertable_name = 'readings' OR %(proc)s = 'policy_refresh_continuous_aggregate')""",
        {"proc": proc_name},
    ).fetchone()
    assert row is not None, f"no {proc_name} job"
    return int(row["job_id"])


def refresh_rollups(conn: Conn, storage: Storage) -> None:
    """Bring the hourly rollups up to date: the refresh policy's job, or the native refresh."""
    if storage == "timescale":
        conn.execute("CALL run_job(%s)", (job_id(conn, "policy_refresh_continuous_aggregate"),))
    else:
        rollups.refresh(conn)
