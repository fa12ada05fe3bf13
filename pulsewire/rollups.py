"""Hourly rollups of readings: how they are kept and how a bucketed query reads them.

`readings_1h` has one row per (hour, device, metric): `n`, `sum`, `min`, `max`, and `last` with
its `last_ts`. Any bucket that is a whole number of hours is a union of whole hours, so `avg`
(sum of sums over sum of counts), `min`, `max`, `last` and `count` over rollups are exact.

- TimescaleDB: a continuous aggregate with real-time aggregation; its policy refreshes it and rows
  after its watermark are read raw by TimescaleDB itself.
- Native PostgreSQL: a table. A trigger marks the hours each statement writes as dirty (in the
  writer's transaction); `refresh` re-rolls dirty hours and rolls every hour before the current
  one, then moves the watermark there. A reader takes rollups before the device's *effective
  watermark* (the watermark, or its earliest dirty hour if older) and raw rows after it, so an
  answer is exact at every moment, whether or not `refresh` has run.

A query range rarely starts and ends on the hour: the part before the first whole hour and the
part after the last one are read raw as well.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from pulsewire.db import connect
from pulsewire.migrate import storage_of

log = logging.getLogger(__name__)

HOUR = timedelta(hours=1)
REFRESH_INTERVAL_S = 60.0  # how often ingest re-rolls dirty hours (each pass is a few statements)
_REFRESH_LOCK = 0x5057_5255  # advisory lock: one refresher at a time
Conn = psycopg.Connection[dict[str, Any]]

# Each aggregate over rollup rows and raw rows alike (a raw row is a rollup of one reading).
ROLLUP_AGGREGATES = {
    "avg": "sum(sum) / sum(n)",
    "min": "min(min)",
    "max": "max(max)",
    "last": "(array_agg(last ORDER BY last_ts DESC))[1]",
}


def uses_rollups(bucket: timedelta | None, start: datetime, end: datetime) -> bool:
    """Whether a bucketed query can read hourly rollups: whole-hour buckets and a whole hour inside."""
    if bucket is None or bucket < HOUR or bucket % HOUR:
        return False
    return _ceil_hour(start) < _floor_hour(end)


def bucketed_sql(agg: str, metric_match: str, group: str, keys: str) -> str:
    """SELECT (metric, ts, value, n) per bucket from rollups, plus raw rows at the edges and the tail.

    Parameters: `device_id`, `start`, `end`, `bucket`, what `metric_match` names, and those of
    `range_params`. Every time bound is a constant, so the planner reads only the partitions or
    chunks each part needs: a bound computed inside the statement (a join or a sub-select) made it
    scan every partition of the raw table for the tail.
    """
    return f"""
        WITH parts AS (
            SELECT metric, bucket AS ts, n, sum, min, max, last, last_ts FROM readings_1h
            WHERE device_id = %(device_id)s AND {metric_match}
              AND bucket >= %(inner_start)s AND bucket < %(rolled_end)s
            UNION ALL
            SELECT metric, ts, 1, value, value, value, value, ts FROM readings
            WHERE device_id = %(device_id)s AND {metric_match} AND ts >= %(start)s AND ts < %(inner_start)s
            UNION ALL
            SELECT metric, ts, 1, value, value, value, value, ts FROM readings
            WHERE device_id = %(device_id)s AND {metric_match} AND ts >= %(rolled_end)s AND ts < %(end)s)
        SELECT {group}, pw_bucket(%(bucket)s, ts) AS ts, {ROLLUP_AGGREGATES[agg]} AS value,
               sum(n)::bigint AS n
        FROM parts GROUP BY {keys} ORDER BY {keys}"""


def mark_sql() -> str:
    """Where the device's rollups end, capped at `inner_end`: parameters `device_id`, `inner_end`.

    `pw_rollup_mark` (migration 0050, per storage) is the hour from which a device's rollups are not
    trusted: its effective watermark on native storage, infinity on TimescaleDB (whose aggregate
    reads the newest hours raw itself). A statement of its own, before the query: a write that marks
    an older hour dirty after it is simply later than the answer.
    """
    return "SELECT LEAST(pw_rollup_mark(%(device_id)s), %(inner_end)s) AS mark"


def range_params(start: datetime, end: datetime, mark: datetime | None = None) -> dict[str, datetime]:
    """The whole hours inside [start, end) (`inner_start`, `inner_end`) and where rollups end
    (`rolled_end`: `mark`, what `mark_sql` answered, kept inside them)."""
    inner_start, inner_end = _ceil_hour(start), _floor_hour(end)
    rolled_end = max(inner_start, min(inner_end, mark or inner_end))
    return {"inner_start": inner_start, "inner_end": inner_end, "rolled_end": rolled_end}


def _floor_hour(ts: datetime) -> datetime:
    return ts.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _ceil_hour(ts: datetime) -> datetime:
    floor = _floor_hour(ts)
    return floor if floor == ts else floor + HOUR


@dataclass
class RefreshReport:
    """What one native refresh did."""

    watermark: datetime | None = None
    rerolled_spans: int = 0
    advanced: bool = False


def refresh(conn: Conn, *, now: datetime | None = None) -> RefreshReport:
    """Native storage: re-roll dirty hours and roll every hour before now's; a no-op on TimescaleDB.

    One transaction: readers see the old rollups and marks or the new ones, never a mix. `conn`
    must be in autocommit mode (the transaction is this function's).
    """
    report = RefreshReport()
    if storage_of(conn) != "native":
        return report
    new_mark = _floor_hour(now or datetime.now(UTC))
    with conn.transaction():
        row = conn.execute("SELECT watermark FROM readings_rollup_state FOR UPDATE").fetchone()
        assert row is not None, "migration 0050 inserts the state row"
        old_mark: datetime = row["watermark"]
        # Only marks this statement sees are taken: a writer committing later keeps its mark.
        marks = conn.execute(
            "DELETE FROM readings_rollup_dirty RETURNING device_id, first_hour, last_hour"
        ).fetchall()
        spans = _merged_spans(marks, min(old_mark, new_mark))
        if spans:
            _reroll_spans(conn, spans)
        if new_mark > old_mark:
            _reroll_all(conn, old_mark, new_mark)
            conn.execute("UPDATE readings_rollup_state SET watermark = %s", (new_mark,))
            report.advanced = True
        report.watermark = max(old_mark, new_mark)
        report.rerolled_spans = len(spans)
    return report


Span = tuple[str, datetime, datetime]


def _merged_spans(marks: list[dict[str, Any]], limit: datetime) -> list[Span]:
    """Each device's dirty hours before `limit` as non-overlapping [first, end) spans."""
    by_device: dict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
    for m in marks:
        first, end = m["first_hour"], min(m["last_hour"] + HOUR, limit)
        if first < end:
            by_device[m["device_id"]].append((first, end))
    spans: list[Span] = []
    for device_id, ranges in by_device.items():
        ranges.sort()
        low, high = ranges[0]
        for first, end in ranges[1:]:
            if first > high:
                spans.append((device_id, low, high))
                low = first
            high = max(high, end)
        spans.append((device_id, low, high))
    return spans


_ROLL = """INSERT INTO readings_1h (bucket, device_id, metric, n, sum, min, max, last, last_ts)
    SELECT pw_bucket(INTERVAL '1 hour', r.ts), r.device_id, r.metric, count(*), sum(r.value),
           min(r.value), max(r.value), (array_agg(r.value ORDER BY r.ts DESC))[1], max(r.ts)
    FROM readings r {join} GROUP BY 1, 2, 3"""


def _reroll_all(conn: Conn, low: datetime, high: datetime) -> None:
    """Recompute the rollup rows of every device in [low, high) from raw rows."""
    conn.execute("DELETE FROM readings_1h WHERE bucket >= %s AND bucket < %s", (low, high))
    window = "WHERE r.ts >= %(low)s AND r.ts < %(high)s"
    conn.execute(_ROLL.format(join=window), {"low": low, "high": high})


_SPANS = (
    "unnest(%(devices)s::text[], %(lows)s::timestamptz[], %(highs)s::timestamptz[]) AS s(device_id, lo, hi)"
)


def _reroll_spans(conn: Conn, spans: list[Span]) -> None:
    """Recompute the rollup rows of these (device, first hour, end) spans from raw rows."""
    params = {"devices": [s[0] for s in spans], "lows": [s[1] for s in spans], "highs": [s[2] for s in spans]}
    conn.execute(
        f"""DELETE FROM readings_1h h USING {_SPANS}
            WHERE h.device_id = s.device_id AND h.bucket >= s.lo AND h.bucket < s.hi""",
        params,
    )
    join = f"JOIN {_SPANS} ON r.device_id = s.device_id AND r.ts >= s.lo AND r.ts < s.hi"
    conn.execute(_ROLL.format(join=join), params)


def expire(conn: Conn, cutoff: datetime) -> int:
    """Native storage: delete rollup rows of hours wholly before `cutoff` (raw retention's); how many."""
    cur = conn.execute("DELETE FROM readings_1h WHERE bucket + INTERVAL '1 hour' <= %s", (cutoff,))
    return max(cur.rowcount, 0)


class Refresher:
    """Ingest's hook: after a commit, `poke()` starts a refresh in the background when one is due.

    The refresh has its own connection and thread, so a batch never waits for it; an advisory lock
    keeps one refresher at a time across workers. Nothing to do on TimescaleDB (its policy does it).
    """

    def __init__(self, url: str, interval_s: float = REFRESH_INTERVAL_S) -> None:
        self._url = url
        self._interval_s = interval_s
        self._due = time.monotonic()
        self._thread: threading.Thread | None = None

    def poke(self) -> None:
        """Start a refresh when the last one finished at least `interval_s` ago."""
        if time.monotonic() < self._due or (self._thread is not None and self._thread.is_alive()):
            return
        self._due = time.monotonic() + self._interval_s
        self._thread = threading.Thread(target=self._run, name="rollup-refresh", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 30.0) -> None:
        """Wait for a running refresh to finish."""
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        try:
            with connect(self._url, autocommit=True) as conn:
                got = conn.execute("SELECT pg_try_advisory_lock(%s) AS got", (_REFRESH_LOCK,)).fetchone()
                if not got or not got["got"]:
                    return
                try:
                    report = refresh(conn)
                finally:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (_REFRESH_LOCK,))
            if report.rerolled_spans or report.advanced:
                log.info("rollups refreshed: %d dirty span(s) re-rolled, watermark %s",
                         report.rerolled_spans, report.watermark)  # fmt: skip
        except (psycopg.Error, OSError) as exc:  # the next poke retries; answers stay exact meanwhile
            log.warning("rollup refresh failed, retrying later: %s", exc)
