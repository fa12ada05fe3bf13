"""The PostgreSQL side of ingest: one transaction per batch, rows by COPY, dedupe by `ingest_log`.

psycopg types stay in this module. `BatchWriter.write(items)` either commits the whole batch and
returns what it stored, or raises `DatabaseError` having stored nothing (the caller retries the same
batch). A batch that PostgreSQL refuses for its data (a NUL in an event's JSON, a device deleted a
moment ago) is split, and the one message that still fails is quarantined instead of stored.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg.types.json import Jsonb

from ingest.validate import Event, Quarantined, Status, Telemetry, Validated
from pulsewire.db import TRANSIENT_ERRORS, connect
from pulsewire.errors import DatabaseError
from pulsewire.storage import maintain
from schemas.payloads import QuarantineReason

log = logging.getLogger(__name__)

Conn = psycopg.Connection[dict[str, Any]]
Key = tuple[str, str, int]
T = TypeVar("T")
NOTIFY_CHANNEL = "pulsewire_eval"
MAINTENANCE_LOCK = 0x5057_4D41  # advisory lock: one storage maintainer at a time
# PostgreSQL refused these rows for what they contain: retrying the same batch cannot help.
_DATA_ERRORS = (psycopg.DataError, psycopg.IntegrityError)


@dataclass
class BatchOutcome:
    """What one committed batch stored."""

    messages: int = 0
    duplicates: int = 0
    readings: int = 0
    events: int = 0
    gaps: int = 0
    statuses: int = 0
    quarantined: Counter[str] = field(default_factory=Counter)

    def add(self, other: BatchOutcome) -> None:
        for name in ("messages", "duplicates", "readings", "events", "gaps", "statuses"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.quarantined.update(other.quarantined)


class BatchWriter:
    """Writes validated batches to one PostgreSQL connection, reconnecting when it is lost."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._conn: Conn | None = None

    def close(self) -> None:
        """Close the connection (a later call reconnects)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def load_kinds(self) -> dict[str, str]:
        """The device registry as {device_id: kind}."""
        rows = self._run(lambda c: c.execute("SELECT device_id, kind FROM devices").fetchall())
        return {str(r["device_id"]): str(r["kind"]) for r in rows}

    def write(self, items: Sequence[Validated]) -> BatchOutcome:
        """Store a batch in one transaction; DatabaseError means nothing was stored."""
        try:
            return self._run(lambda c: _write_batch(c, items))
        except _Refused as refused:
            if len(items) == 1:
                return self._write_refused(items[0], refused.detail)
            # Find the message PostgreSQL refuses: the rest are stored as usual.
            total = BatchOutcome()
            for item in items:
                total.add(self.write([item]))
            return total

    def maintain_storage(self, retention_days: int) -> bool:
        """Run storage maintenance unless another worker is; True when it ran here."""

        def run(conn: Conn) -> bool:
            row = conn.execute("SELECT pg_try_advisory_lock(%s) AS got", (MAINTENANCE_LOCK,)).fetchone()
            conn.commit()
            if not row or not row["got"]:
                return False
            try:
                conn.autocommit = True
                report = maintain(conn, retention_days=retention_days)
                log.info("storage maintained: %d partition(s) created, %d dropped",
                         len(report.created), len(report.dropped))  # fmt: skip
                return True
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (MAINTENANCE_LOCK,))
                conn.autocommit = False

        return self._run(run)

    def _write_refused(self, item: Validated, detail: str) -> BatchOutcome:
        if isinstance(item, Quarantined):
            # Even the quarantine refused it: nothing more we can do than say so and move on.
            log.error("dropping a message PostgreSQL refuses even in quarantine: %s", detail)
            return BatchOutcome(messages=1)
        topic = _topic_of(item)
        payload = f"(refused by the database; parsed form) {item!r}".encode()
        bad = Quarantined(topic, item.device_id, QuarantineReason.INVALID_PAYLOAD, detail, payload)
        return self.write([bad])

    def _run(self, work: Callable[[Conn], T]) -> T:
        conn = self._conn
        try:
            if conn is None or conn.closed:
                conn = self._conn = connect(self._url)
            result = work(conn)
            conn.commit()
            return result
        except _DATA_ERRORS as exc:
            if conn is not None:
                self._rollback(conn)
            raise _Refused(str(exc).splitlines()[0]) from exc
        except TRANSIENT_ERRORS as exc:
            self.close()
            raise DatabaseError(f"database unavailable: {exc}") from exc
        except psycopg.Error as exc:
            if conn is not None:
                self._rollback(conn)
            raise DatabaseError(f"database refused the batch: {exc}") from exc

    def _rollback(self, conn: Conn) -> None:
        try:
            conn.rollback()
        except psycopg.Error:
            self.close()


class _Refused(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _topic_of(item: Telemetry | Event | Status) -> str:
    kind = {Telemetry: "telemetry", Event: "event", Status: "status"}[type(item)]
    return f"pw/v1/dev/{item.device_id}/{kind}"


def _write_batch(conn: Conn, items: Sequence[Validated]) -> BatchOutcome:
    out = BatchOutcome(messages=len(items))
    unique: dict[Key, Telemetry | Event] = {}
    statuses: dict[str, Status] = {}
    bad: list[Quarantined] = []
    for item in items:
        if isinstance(item, Telemetry | Event):
            unique.setdefault((item.device_id, item.boot_id, item.seq), item)
        elif isinstance(item, Status):
            statuses[item.device_id] = _latest_status(statuses.get(item.device_id), item)
        else:
            bad.append(item)
    sequenced = sum(isinstance(i, Telemetry | Event) for i in items)
    new = _claim(conn, unique)
    out.duplicates = sequenced - len(new)
    spans = _copy_readings(conn, [m for m in new if isinstance(m, Telemetry)], out)
    _copy_events(conn, [m for m in new if isinstance(m, Event)], spans, out)
    _copy_quarantine(conn, bad, out)
    # Pipelined: the statements below go out without waiting for each other's answers (only a
    # read of results waits), one round trip instead of six; errors still surface here.
    with conn.pipeline():
        out.gaps = _update_streams(conn, new)
        _update_devices(conn, new, statuses)
        out.statuses = len(statuses)
        _queue_evaluation(conn, spans, {m.device_id for m in new if isinstance(m, Event)})
    return out


def _queue_evaluation(conn: Conn, spans: Spans, with_events: set[str]) -> None:
    if not spans:
        return
    devices = sorted(spans)
    conn.execute(
        "INSERT INTO eval_queue (device_id, min_ts, max_ts, has_events) "
        "SELECT * FROM unnest(%s::text[], %s::timestamptz[], %s::timestamptz[], %s::boolean[])",
        (
            _text_array(devices),
            [spans[d][0] for d in devices],
            [spans[d][1] for d in devices],
            [d in with_events for d in devices],
        ),
    )
    # Delivered at commit, and only if the batch commits.
    conn.execute(f"NOTIFY {NOTIFY_CHANNEL}")


def _latest_status(old: Status | None, new: Status) -> Status:
    if old is None or old.ts is None or new.ts is None or new.ts >= old.ts:
        return new
    return old


def _claim(conn: Conn, unique: dict[Key, Telemetry | Event]) -> list[Telemetry | Event]:
    """Record the batch's keys in `ingest_log`; returns the messages not stored before, in key order."""
    if not unique:
        return []
    # Sorted so that two workers inserting overlapping keys lock them in the same order.
    keys = sorted(unique)
    msgs = [unique[k] for k in keys]
    rows = conn.execute(
        """INSERT INTO ingest_log (device_id, boot_id, seq, kind, n_rows)
           SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::text[], %s::int[])
           ON CONFLICT DO NOTHING RETURNING device_id, boot_id, seq""",
        (
            _text_array(k[0] for k in keys), _text_array(k[1] for k in keys), _int_array(k[2] for k in keys),
            _text_array("telemetry" if isinstance(m, Telemetry) else "event" for m in msgs),
            _int_array(len(m.readings) if isinstance(m, Telemetry) else 1 for m in msgs),
        ),
    ).fetchall()  # fmt: skip
    fresh = {(r["device_id"], r["boot_id"], r["seq"]) for r in rows}
    return [unique[k] for k in keys if k in fresh]


def _text_array(values: Iterable[str]) -> str:
    """A text[] literal, sent as one parameter: psycopg's list dumper costs about 1 us an element."""
    return "{" + ",".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values) + "}"


def _int_array(values: Iterable[int]) -> str:
    """A bigint[]/int[] literal, sent as one parameter."""
    return "{" + ",".join(map(str, values)) + "}"


Spans = dict[str, tuple[datetime, datetime]]


def _widen(spans: Spans, device_id: str, low: datetime, high: datetime) -> None:
    old = spans.get(device_id)
    spans[device_id] = (low, high) if old is None else (min(old[0], low), max(old[1], high))


def _copy_readings(conn: Conn, messages: list[Telemetry], out: BatchOutcome) -> Spans:
    """COPY the readings as the text validation formatted (faster than write_row)."""
    spans: Spans = {}
    if not messages:
        return spans
    for m in messages:
        _widen(spans, m.device_id, m.low, m.high)
    with conn.cursor().copy("COPY readings (ts, device_id, metric, value) FROM STDIN") as copy:
        copy.write(b"".join(m.copy_rows for m in messages))
    out.readings = sum(len(m.readings) for m in messages)
    return spans


def _copy_events(conn: Conn, messages: list[Event], spans: Spans, out: BatchOutcome) -> None:
    if not messages:
        return
    with conn.cursor().copy("COPY events (ts, device_id, boot_id, seq, type, data) FROM STDIN") as copy:
        for m in messages:
            copy.write_row((m.ts, m.device_id, m.boot_id, m.seq, m.type, Jsonb(m.data)))
            _widen(spans, m.device_id, m.ts, m.ts)
    out.events = len(messages)


def _copy_quarantine(conn: Conn, bad: list[Quarantined], out: BatchOutcome) -> None:
    if not bad:
        return
    with conn.cursor().copy("COPY quarantine (topic, device_id, reason, detail, payload) FROM STDIN") as copy:
        for q in bad:
            copy.write_row((q.topic, q.device_id, q.reason.value, q.detail, q.payload))
            out.quarantined[q.reason.value] += 1


def _update_streams(conn: Conn, new: list[Telemetry | Event]) -> int:
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
            (_text_array(devs), _text_array(boots)),
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
            _text_array(devs),
            _text_array(boots),
            _int_array(max(seqs[s]) for s in streams),
            _int_array(len(seqs[s]) for s in streams),
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


def _update_devices(conn: Conn, new: Iterable[Telemetry | Event], statuses: dict[str, Status]) -> None:
    last: dict[str, Telemetry | Event] = {}
    for m in new:
        last[m.device_id] = m
    ids = sorted(set(last) | set(statuses))
    if not ids:
        return
    # Lock in id order first: two workers updating the same devices then never deadlock.
    conn.execute(
        "SELECT 1 FROM devices WHERE device_id = ANY(%s) ORDER BY device_id FOR NO KEY UPDATE", (ids,)
    )
    if last:
        seen = sorted(last)
        conn.execute(
            """UPDATE devices d SET last_seen_at = now(), boot_id = v.boot_id,
                 last_seq = CASE WHEN d.boot_id IS DISTINCT FROM v.boot_id THEN v.seq
                                 ELSE GREATEST(d.last_seq, v.seq) END
               FROM unnest(%s::text[], %s::text[], %s::bigint[]) AS v(device_id, boot_id, seq)
               WHERE d.device_id = v.device_id""",
            (seen, [last[d].boot_id for d in seen], [last[d].seq for d in seen]),
        )
    if statuses:
        held = sorted(statuses)
        conn.execute(
            """UPDATE devices d SET online = v.online, status_at = COALESCE(v.ts, now()), last_seen_at = now()
               FROM unnest(%s::text[], %s::bool[], %s::timestamptz[]) AS v(device_id, online, ts)
               WHERE d.device_id = v.device_id
                 AND (d.status_at IS NULL OR d.status_at <= COALESCE(v.ts, now()))""",
            (held, [statuses[d].online for d in held], [statuses[d].ts for d in held]),
        )
