"""The PostgreSQL side of ingest: one transaction per batch, rows by COPY, dedupe by `ingest_log`.

psycopg types stay in this module. `BatchWriter.write(items, payloads)` either commits the whole batch
and returns what it stored, or raises `DatabaseError` having stored nothing (the caller retries the
same batch). Validation should leave PostgreSQL nothing to refuse; when it still refuses a batch for
its data, the batch is written again in one transaction, halved under savepoints until each refused
message stands alone: those are quarantined (`db_rejected`, with the error class) and the rest stored.
Quarantine keeps a prefix of each payload, with the size and SHA-256 of the whole; a message the
broker delivers again while its row waits for replay adds a copy to that row, not a row.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb

from ingest._streams import update_streams
from ingest.order import Turn
from ingest.validate import Event, Quarantined, Status, Telemetry, Validated
from pulsewire import rollups
from pulsewire.db import TRANSIENT_ERRORS, connect, int_array, text_array
from pulsewire.errors import DatabaseError
from pulsewire.storage import maintain
from pulsewire.wire import queue_evaluation
from schemas.payloads import QuarantineReason
from schemas.topics import DEVICE_PREFIX, UplinkKind, uplink

log = logging.getLogger(__name__)

Conn = psycopg.Connection[dict[str, Any]]
Key = tuple[str, str, int]
T = TypeVar("T")
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

    def __init__(
        self,
        url: str,
        *,
        quarantine_payload_max_bytes: int = 4_096,
        refresher: rollups.Refresher | None = None,
    ) -> None:
        self._url = url
        self._conn: Conn | None = None
        self._keep_bytes = quarantine_payload_max_bytes
        self._rollups = refresher or rollups.Refresher(url)

    def close(self) -> None:
        """Close the connection (a later call reconnects)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def load_kinds(self) -> dict[str, str]:
        """The devices in service as {device_id: kind}; a decommissioned one is unknown to ingest.

        The broker refuses a retired device's login; what still arrives from it (sent just before,
        or replayed) is quarantined as `unregistered_device`, and nothing is stored or evaluated.
        """
        query = "SELECT device_id, kind FROM devices WHERE decommissioned_at IS NULL"
        rows = self._run(lambda c: c.execute(query).fetchall())
        return {str(r["device_id"]): str(r["kind"]) for r in rows}

    def write(
        self,
        items: Sequence[Validated],
        payloads: Sequence[bytes] | None = None,
        *,
        turn: Turn | None = None,
        on_commit: Callable[[BatchOutcome], None] = lambda _outcome: None,
    ) -> BatchOutcome:
        """Store a batch in one transaction; DatabaseError means nothing was stored.

        `payloads` (the raw messages, in the same order) are what a refused message is quarantined with.
        With several writers, `turn` is the batch's place in their `BatchOrder` (`ingest.order`), and
        `on_commit` runs once it is committed, before the next batch may commit; `Restart` means
        "write it again", `Abandoned` that the worker stops (nothing stored either way).
        """
        self._rollups.poke()  # what earlier batches committed, rolled up in the background when due
        keep, turn = self._keep_bytes, turn or Turn.alone()
        try:
            try:
                out = self._run(lambda c: _write_batch(c, items, keep, turn))
            except _Refused:
                turn.failed()
                # The common path has no savepoints; only a refused batch pays for them.
                out = self._run(lambda c: _write_isolating(c, items, payloads, keep, turn))
        except _Refused as exc:  # not even as quarantine rows: keep the batch (unacked) and say why
            turn.failed()
            raise DatabaseError(f"database refuses the batch even message by message: {exc.detail}") from exc
        except DatabaseError:
            turn.failed()
            raise
        turn.committed(lambda: on_commit(out))
        return out

    def maintain_storage(self, retention_days: int, quarantine_retention_days: int) -> bool:
        """Run storage maintenance unless another worker is; True when it ran here."""

        def run(conn: Conn) -> bool:
            row = conn.execute("SELECT pg_try_advisory_lock(%s) AS got", (MAINTENANCE_LOCK,)).fetchone()
            if not row or not row["got"]:
                return False
            try:
                report = maintain(conn, retention_days=retention_days,
                                  quarantine_retention_days=quarantine_retention_days)  # fmt: skip
                log.info("storage maintained: %d partition(s) created, %d dropped; %d quarantined expired",
                         len(report.created), len(report.dropped),
                         report.expired_quarantine_rows)  # fmt: skip
                return True
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (MAINTENANCE_LOCK,))

        return self._run(run)

    def _run(self, work: Callable[[Conn], T]) -> T:
        conn = self._conn
        try:
            if conn is None or conn.closed:
                # Autocommit: a batch's BEGIN and COMMIT go with its first and last statements
                # (`_write_batch`); other work opens its own transaction or is one statement.
                conn = self._conn = connect(self._url, autocommit=True)
            result = work(conn)
            conn.commit()  # a transaction the work left open (none when it committed itself)
            return result
        except _DATA_ERRORS as exc:
            if conn is not None:
                self._rollback(conn)
            raise _Refused(_describe(exc)) from exc
        except TRANSIENT_ERRORS as exc:
            self.close()
            raise DatabaseError(f"database unavailable: {exc}") from exc
        except psycopg.Error as exc:
            if conn is not None:
                self._rollback(conn)
            raise DatabaseError(f"database refused the batch: {exc}") from exc
        except Exception:  # `Restart`, `Abandoned` (ingest.order), or a bug
            # Whatever the work left open is undone, so the next batch never commits part of this one.
            if conn is not None:
                self._rollback(conn)
            raise

    def _rollback(self, conn: Conn) -> None:
        try:
            conn.rollback()
        except psycopg.Error:
            self.close()


class _Refused(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


_KINDS: dict[type, UplinkKind] = {Telemetry: "telemetry", Event: "event", Status: "status"}


def _topic_of(item: Telemetry | Event | Status) -> str:
    return uplink(item.device_id, _KINDS[type(item)])


def _describe(exc: psycopg.Error) -> str:
    """The error class, SQLSTATE and first line of a refusal (never the refused value's bytes)."""
    return (
        f"{type(exc).__name__} ({exc.sqlstate or 'client'}): {str(exc).splitlines()[0] if str(exc) else ''}"
    )


def _write_isolating(
    conn: Conn, items: Sequence[Validated], payloads: Sequence[bytes] | None, keep: int, turn: Turn
) -> BatchOutcome:
    """Write `items` in one transaction, each message PostgreSQL refuses quarantined as `db_rejected`.

    Rare, so simple: it waits for every earlier batch to commit, and no later one claims meanwhile.
    """
    turn.claim()
    turn.committing()
    with conn.transaction():
        out, refused = store(conn, items, keep)
        bad: list[Quarantined] = []
        for i, exc in refused:
            item = items[i]
            payload = payloads[i] if payloads is not None else repr(item).encode()
            if isinstance(item, Quarantined):
                # Quarantine rows hold nothing PostgreSQL can refuse; say so loudly if it ever does.
                log.error("quarantine refused a %s row: %s", item.reason, _describe(exc))
                topic, device_id = DEVICE_PREFIX + "unknown", None
            else:
                topic, device_id = _topic_of(item), item.device_id
            bad.append(Quarantined(topic, device_id, QuarantineReason.DB_REJECTED, _describe(exc), payload))
        if bad:
            log.warning("database refused %d message(s); quarantined as db_rejected", len(bad))
            out.add(_write_batch(conn, bad, keep, None))
    return out


def store(
    conn: Conn, items: Sequence[Validated], keep: int, offset: int = 0
) -> tuple[BatchOutcome, list[tuple[int, psycopg.Error]]]:
    """Write `items` inside the caller's transaction, halving under savepoints around refused messages.

    Returns what was stored and the (index, error) of each message PostgreSQL refused on its own.
    """
    try:
        with conn.transaction():  # a savepoint
            return _write_batch(conn, items, keep, None), []
    except _DATA_ERRORS as exc:
        if len(items) == 1:
            return BatchOutcome(), [(offset, exc)]
    half = len(items) // 2
    out, refused = store(conn, items[:half], keep, offset)
    rest, more = store(conn, items[half:], keep, offset + half)
    out.add(rest)
    return out, refused + more


def _write_batch(conn: Conn, items: Sequence[Validated], keep: int, turn: Turn | None) -> BatchOutcome:
    """The batch's statements; with a `turn`, its claim and its tail each wait for the batch before."""
    out = BatchOutcome(messages=len(items))
    unique: dict[Key, Telemetry | Event] = {}
    statuses: dict[str, Status] = {}
    bad: list[Quarantined] = []
    sequenced = 0
    for item in items:
        if isinstance(item, Telemetry | Event):
            unique.setdefault((item.device_id, item.boot_id, item.seq), item)
            sequenced += 1
        elif isinstance(item, Status):
            statuses[item.device_id] = _latest_status(statuses.get(item.device_id), item)
        else:
            bad.append(item)
    # On an idle connection in autocommit, the batch is its own transaction: BEGIN goes with the
    # claim and COMMIT with the tail, no round trip of their own. Otherwise (a savepoint of
    # `store`) it is part of the caller's.
    own = conn.autocommit and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    if turn is not None:
        turn.claim()
    with conn.pipeline():
        if own:
            conn.execute("BEGIN")
        claimed = _claim(conn, unique)
        _store_quarantine(conn, bad, keep, out)
    new = claimed()
    if turn is not None:
        turn.claimed()
    out.duplicates = sequenced - len(new)
    spans = _copy_readings(conn, [m for m in new if isinstance(m, Telemetry)], out)
    _copy_events(conn, [m for m in new if isinstance(m, Event)], spans, out)
    if turn is not None:
        turn.committing()
    # Pipelined: the statements below go out without waiting for each other's answers (only a
    # read of results waits), one round trip instead of six; errors still surface here.
    with conn.pipeline():
        out.gaps = update_streams(conn, new)
        _update_devices(conn, new, statuses)
        out.statuses = len(statuses)
        queue_evaluation(conn, spans, {m.device_id for m in new if isinstance(m, Event)})
        if own:
            conn.execute("COMMIT")
    return out


def _latest_status(old: Status | None, new: Status) -> Status:
    if old is None or old.ts is None or new.ts is None or new.ts >= old.ts:
        return new
    return old


def _claim(conn: Conn, unique: dict[Key, Telemetry | Event]) -> Callable[[], list[Telemetry | Event]]:
    """Record the batch's keys in `ingest_log`; returns what gives the messages not stored before, in
    key order, once the statement's answer is in (in a pipeline: after its sync)."""
    if not unique:
        return list
    # Sorted so that two workers inserting overlapping keys lock them in the same order.
    keys = sorted(unique)
    msgs = [unique[k] for k in keys]
    devices, boots, seqs = zip(*keys, strict=True)
    cursor = conn.cursor(row_factory=tuple_row).execute(
        """INSERT INTO ingest_log (device_id, boot_id, seq, kind, n_rows)
           SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::text[], %s::int[])
           ON CONFLICT DO NOTHING RETURNING device_id, boot_id, seq""",
        (
            text_array(devices), text_array(boots), int_array(seqs),
            text_array(["telemetry" if isinstance(m, Telemetry) else "event" for m in msgs]),
            int_array(len(m.readings) if isinstance(m, Telemetry) else 1 for m in msgs),
        ),
    )  # fmt: skip

    def fresh() -> list[Telemetry | Event]:
        rows = cursor.fetchall()
        if len(rows) == len(keys):  # the common case: nothing was stored before
            return msgs
        stored = set(rows)
        return [unique[k] for k in keys if k in stored]

    return fresh


Spans = dict[str, tuple[datetime, datetime]]


def _widen(spans: Spans, device_id: str, low: datetime, high: datetime) -> None:
    old = spans.get(device_id)
    spans[device_id] = (low, high) if old is None else (min(old[0], low), max(old[1], high))


def _copy_readings(conn: Conn, messages: list[Telemetry], out: BatchOutcome) -> Spans:
    """COPY the readings as the text validation formatted (faster than write_row)."""
    if not messages:
        return {}
    lows: dict[str, datetime] = {}
    highs: dict[str, datetime] = {}
    for m in messages:  # _widen, inlined: once a message
        device_id = m.device_id
        low, high = lows.get(device_id), highs.get(device_id)
        if low is None or m.low < low:
            lows[device_id] = m.low
        if high is None or m.high > high:
            highs[device_id] = m.high
    spans: Spans = {d: (low, highs[d]) for d, low in lows.items()}
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


_QUARANTINE = """
INSERT INTO quarantine (topic, device_id, reason, detail, payload, payload_size, payload_sha256, copies)
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::bytea[], %s::int[], %s::bytea[],
                     %s::int[])
ON CONFLICT (payload_sha256, md5(topic)) WHERE replayed_at IS NULL
DO UPDATE SET copies = quarantine.copies + EXCLUDED.copies, last_received_at = now()
"""


# The key under which messages whose payload is not kept are counted: one row a reason and topic
# (while not replayed), whose size is the first one's and whose empty prefix replay refuses.
_NOT_KEPT = {
    r: hashlib.sha256(f"pulsewire:payload-not-kept:{r.value}".encode()).digest() for r in QuarantineReason
}


def _store_quarantine(conn: Conn, bad: list[Quarantined], keep: int, out: BatchOutcome) -> None:
    """Quarantine rows: the first `keep` bytes of each payload, with the whole's size and SHA-256.

    A message already waiting in the quarantine (the broker delivered it again) adds a copy to its
    row instead of a second row; copies within the batch are folded first. Rows keep the batch's
    order. Two workers adding copies of the same rows in opposite orders can deadlock; PostgreSQL
    then aborts one, and its batch is retried like any other transient failure.
    """
    if not bad:
        return
    rows: dict[tuple[bytes, str], tuple[Quarantined, int]] = {}
    for q in bad:
        digest = hashlib.sha256(q.payload).digest() if q.payload_kept else _NOT_KEPT[q.reason]
        key = (digest, _text(q.topic))
        first, copies = rows.get(key, (q, 0))
        rows[key] = (first, copies + 1)
        out.quarantined[q.reason.value] += 1
    keys = list(rows)  # first appearance: a dict keeps insertion order
    firsts = [rows[k][0] for k in keys]
    conn.execute(
        _QUARANTINE,
        (
            text_array(k[1] for k in keys),
            [q.device_id and _text(q.device_id) for q in firsts],
            text_array(q.reason.value for q in firsts),
            text_array(_text(q.detail) for q in firsts),
            [q.payload[:keep] if q.payload_kept else b"" for q in firsts],
            int_array(len(q.payload) for q in firsts),
            [k[0] for k in keys],
            int_array(rows[k][1] for k in keys),
        ),
    )


def _text(value: str) -> str:
    """Text PostgreSQL stores: a NUL (which it refuses) shown as `\\0`."""
    return value.replace("\x00", "\\0") if "\x00" in value else value


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
