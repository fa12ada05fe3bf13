"""The rule engine: consumes `eval_queue`, one device at a time, in event time, exactly once.

For one device a worker takes a transaction-scoped advisory lock (so one worker evaluates a device
at a time, and another worker moves on to the next device), reads the device's queued batches,
evaluates the data they cover from the durable `rule_state`, and writes alerts, history, outbox
rows, the new state and the deletion of the consumed queue rows in one REPEATABLE READ
transaction. A crash rolls all of it back and the batches are evaluated again; alert fingerprints
(device, rule, started_at) make a replay create nothing twice.

Each rule keeps a watermark (the newest item it has read) in its state. Items past it are
evaluated with the stored state; items before it (out of order) are evaluated on their own, warmed
with the hour before them: a condition that began and ended there becomes a resolved `late` alert.
Any alert whose evidence is older than `late_after_s` is flagged late and never escalated.

Faults stay where they happen (`relay.faults`): a rule that raises on a device has its work for
that device undone (a savepoint) and its error recorded on it, and every other rule goes on; a
device whose evaluation fails as a whole is put back with a delay, and the round goes on.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import psycopg
from psycopg.rows import tuple_row

from pulsewire.db import pipelined
from relay import alerts
from relay.evaluate import Clear, Event, Fire, Item, Sample, Signal, State, relevant, step, stepper
from relay.faults import RuleFault, defer_device, record_rule_faults
from relay.rules import EFFECTIVE_SQL, Rule, usable_rules_of

Conn = psycopg.Connection[dict[str, Any]]
LOCK_CLASS = 0x50570001  # advisory lock namespace: per-device evaluation
_SUSTAINED = ("threshold", "outside", "anomaly")
_WARMUP = timedelta(hours=1)
_WARMUP_ROWS = 5000


@dataclass
class EngineConfig:
    """How the engine judges lateness and which channels it writes."""

    actor: str = "system:relay"
    late_after_s: float = 300.0
    # Items at most this much older than a rule's watermark are fed to it as if in order: a clock
    # a minute fast or a reconnect reorders data by seconds, and re-judging those would only echo
    # the skew. Older ones are re-evaluated on their own (see _evaluate_late).
    reorder_tolerance_s: float = 300.0
    email: bool = False
    # Called after a commit that queued deliveries: a worker's own delivery threads start at once
    # instead of waiting for the `pulsewire_outbox` notification to come back through PostgreSQL.
    on_deliveries: Callable[[], None] | None = None


@dataclass
class Findings:
    """What an evaluation leaves for after its commit: rule faults to record, deliveries to start."""

    faults: list[RuleFault] = field(default_factory=list)
    deliveries: bool = False


@dataclass
class _Batch:
    device: dict[str, Any]
    rules: list[Rule]
    states: dict[str, State]
    cfg: EngineConfig
    now: datetime
    touched: dict[int, str] = field(default_factory=dict)
    loaded: dict[str, str] = field(default_factory=dict)
    faults: list[RuleFault] = field(default_factory=list)
    # Without, a rule's failed write ends the evaluation instead of being undone on its own.
    savepoints: bool = True

    def touch(self, alert_id: int, event: str) -> None:
        # The first event of an alert in this batch decides its delivery: an alert opened and
        # resolved in one batch is delivered once, as opened, with its final (resolved) state.
        self.touched.setdefault(alert_id, event)


# Per device: whether its queued batches hold events, and its oldest batch; then each tenant's
# devices take turns: every tenant's longest-waiting device, then every tenant's second, and so on.
_PENDING = """
WITH queued AS (
    SELECT device_id, bool_or(has_events) AS events, min(eval_id) AS oldest FROM eval_queue q
    WHERE NOT EXISTS (SELECT 1 FROM eval_retry r WHERE r.device_id = q.device_id AND r.retry_at > now())
    GROUP BY device_id
)
SELECT q.device_id, q.events FROM queued q LEFT JOIN devices d ON d.device_id = q.device_id
ORDER BY q.events DESC,
         row_number() OVER (PARTITION BY q.events, d.provider_org_id ORDER BY q.oldest),
         q.oldest
LIMIT %s
"""


class Due(NamedTuple):
    """A device with queued batches, and whether any of them holds events."""

    device_id: str
    events: bool


def pending_devices(conn: Conn, limit: int = 100) -> list[str]:
    """Devices with queued batches: those with events first (events page), tenants taking turns.

    Within each group, every provider org's longest-waiting device comes before any org's second,
    so a tenant with many busy devices (a flood's admitted share among them) cannot queue another
    tenant's alert behind all of them. A device held back after a failed evaluation waits for its
    `retry_at`, new batches included.
    """
    return [due.device_id for due in _pending(conn, limit)]


def _pending(conn: Conn, limit: int) -> list[Due]:
    return [Due(str(r["device_id"]), bool(r["events"])) for r in conn.execute(_PENDING, (limit,))]


def due_devices(conn: Conn, limit: int = 100) -> list[Due]:
    """`pending_devices`, with their events flag, read in a transaction of its own ended by commit.

    In autocommit, the question is one statement. Otherwise it is left at REPEATABLE READ (each
    device's evaluation reads its data, queue rows and state from one snapshot either way).
    """
    _end_transaction(conn)
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    devices = _pending(conn, limit)
    conn.commit()  # read only: a commit costs what a rollback does and keeps the prepared statements
    return devices


def evaluate_pending(conn: Conn, cfg: EngineConfig, limit: int = 100) -> int:
    """One round over the devices with queued work, each in its own transaction; returns batches consumed."""
    return sum(evaluate_one(conn, due.device_id, cfg) for due in due_devices(conn, limit))


def _end_transaction(conn: Conn) -> None:
    """End whatever transaction the connection is in, by commit where it can.

    psycopg forgets its prepared statements on every rollback (a rollback may undo a PREPARE), so an
    engine that rolled back each round would parse and plan every statement of every evaluation.
    """
    status = conn.info.transaction_status
    if status == psycopg.pq.TransactionStatus.INTRANS:
        conn.commit()
    elif status == psycopg.pq.TransactionStatus.INERROR:
        conn.rollback()


def evaluate_one(conn: Conn, device_id: str, cfg: EngineConfig) -> int:
    """One device in its own transaction; its rules' faults recorded after, its own failure contained.

    Returns the batches consumed (0 when another worker holds the device). `conn` is as
    `due_devices` leaves it, or in autocommit.

    The transaction is pipelined (`pulsewire.db.pipelined`): BEGIN goes with the first reads and
    COMMIT with the writes. A first attempt writes each rule's signals without a savepoint of its
    own (two round trips less per rule that fires); if anything in it fails, the device is
    evaluated again with a savepoint per rule, so a fault still stays inside its rule.
    """
    _end_transaction(conn)
    was_autocommit = conn.autocommit
    conn.autocommit = True
    try:
        return _evaluate_one(conn, device_id, cfg)
    finally:
        conn.autocommit = was_autocommit


def _evaluate_one(conn: Conn, device_id: str, cfg: EngineConfig) -> int:
    savepoints = False
    for _ in range(5):
        found = Findings()
        try:
            with pipelined(conn, _BEGIN):
                consumed = evaluate_device(conn, device_id, cfg, found, savepoints=savepoints)
        except psycopg.errors.SerializationFailure:
            continue  # another worker committed this device's state under our snapshot
        except (psycopg.OperationalError, psycopg.InterfaceError):
            raise  # the database, not this device: the service reconnects and retries
        except Exception as exc:
            if not savepoints:  # a rule's write may have failed: again, each rule on its own
                savepoints = True
                continue
            defer_device(conn, device_id, exc)  # this device's data or state: it waits, the round goes on
            return 0
        if found.deliveries and cfg.on_deliveries is not None:
            cfg.on_deliveries()
        record_rule_faults(conn, found.faults)
        return consumed
    return 0


_BEGIN = "BEGIN ISOLATION LEVEL REPEATABLE READ"


def _queued(conn: Conn) -> AbstractContextManager[Any]:
    """Statements sent together: a pipeline, unless the connection is in one already (then they go
    with its next read or its COMMIT, without a sync of their own)."""
    if conn.pgconn.pipeline_status != psycopg.pq.PipelineStatus.OFF:
        return nullcontext()
    return conn.pipeline()


def lock_device(conn: Conn, device_id: str) -> bool:
    """Take the device's evaluation lock for this transaction, or False when another worker has it."""
    row = conn.execute(_LOCK, (LOCK_CLASS, device_id)).fetchone()
    return bool(row and row["got"])


def evaluate_device(
    conn: Conn, device_id: str, cfg: EngineConfig, found: Findings | None = None, *, savepoints: bool = True
) -> int:
    """Evaluate every queued batch of one device in the caller's transaction; returns batches consumed.

    Returns 0 without doing anything when another worker holds the device. A rule that fails is
    skipped for this device, its fault added to `found` for the caller to record once committed.
    Without `savepoints`, a rule whose writes fail is not undone on its own: the exception ends
    the evaluation, and the caller rolls back (and evaluates again with them).
    """
    # Everything a device's evaluation reads first, in one round trip (a pipeline). All of it is
    # read from the transaction's one snapshot, which the lock statement takes; without the lock
    # the rest is simply dropped.
    with _queued(conn):
        lock = conn.execute(_LOCK, (LOCK_CLASS, device_id))
        queued = conn.execute(_QUEUED, {"device": device_id})
        known = conn.execute("SELECT * FROM devices WHERE device_id = %s", (device_id,))
        effective = conn.execute(EFFECTIVE_SQL, (device_id,))
        states = conn.execute("SELECT rule_key, state FROM rule_state WHERE device_id = %s", (device_id,))
    got = lock.fetchone()
    queue = queued.fetchall()
    if not (got and got["got"]) or not queue:
        return 0
    ids = [int(q["eval_id"]) for q in queue]
    device = known.fetchone()
    batch: _Batch | None = None
    hi = max(q["max_ts"] for q in queue)
    if device is not None:
        lo = min(q["min_ts"] for q in queue)
        rules, rule_faults = usable_rules_of(effective.fetchall(), device_id)
        batch = _Batch(
            device,
            rules,
            {r["rule_key"]: dict(r["state"]) for r in states.fetchall()},
            cfg,
            datetime.now(UTC),
            faults=rule_faults,
            savepoints=savepoints,
        )
        _evaluate_range(conn, batch, (lo, hi, sorted({str(q["xid"]) for q in queue})))
        if found is not None:
            found.faults += batch.faults
            found.deliveries = bool(batch.touched)
    with _queued(conn):  # the writes, in one round trip too (results are read only where needed)
        if batch is not None:
            for alert_id, event in batch.touched.items():
                alerts.enqueue(conn, alert_id, event, email=batch.cfg.email)
        conn.execute(_DONE, _done_params(device_id, batch, hi, ids))
    return len(ids)


_LOCK = "SELECT pg_try_advisory_xact_lock(%s, hashtext(%s)) AS got"
# A device held back after a failed evaluation has nothing queued until its `retry_at`, however it
# was handed to us (asking the queue skips it; a notification naming it does not know).
_QUEUED = """
SELECT eval_id, min_ts, max_ts, xmin::text AS xid FROM eval_queue WHERE device_id = %(device)s
  AND NOT EXISTS (SELECT 1 FROM eval_retry r WHERE r.device_id = %(device)s AND r.retry_at > now())
ORDER BY eval_id
"""


def _evaluate_range(conn: Conn, batch: _Batch, span: tuple[datetime, datetime, list[str]]) -> None:
    lo, hi, xids = span
    device_id, rules, stored = batch.device["device_id"], batch.rules, batch.states
    # Serialized copies: states hold nested windows that rules mutate in place.
    batch.loaded = {key: _dump(state) for key, state in stored.items()}
    items = _Indexed(fetch_items(conn, device_id, rules, lo - timedelta(microseconds=1), hi, xids=xids))
    late: dict[str, list[Item]] = {}
    for rule in rules:
        if rule.kind != "absence":
            old = _advance(conn, batch, rule, items)
            if old:
                late[rule.key] = old
    if late:
        _evaluate_late(conn, batch, late)
    _clear_silence(conn, batch, hi)


@contextmanager
def _isolated(conn: Conn, batch: _Batch, rule: Rule, *, savepoint: bool = True) -> Iterator[None]:
    """Run one rule's work for this device; when it raises, undo it and record the fault, and go on.

    Its writes are undone by a savepoint (skipped for pure work, which writes nothing), its state
    and the alerts it touched restored to what they were. Database trouble is not the rule's
    fault and is raised on (the device is retried). In a batch without savepoints, a failure of
    work that writes is raised on too: `evaluate_one` then evaluates the device again with them.
    """
    touched = dict(batch.touched)
    try:
        if savepoint and batch.savepoints:
            with conn.transaction():
                yield
        else:
            yield
    except (psycopg.OperationalError, psycopg.InterfaceError):
        raise
    except Exception as exc:
        if savepoint and not batch.savepoints:
            raise  # writes that no savepoint can undo: the caller evaluates again with savepoints
        batch.touched = touched
        if rule.key in batch.loaded:
            batch.states[rule.key] = json.loads(batch.loaded[rule.key])
        else:
            batch.states.pop(rule.key, None)
        batch.faults.append(RuleFault.of(rule.rule_id, rule.key, batch.device["device_id"], exc))


def _advance(conn: Conn, batch: _Batch, rule: Rule, items: _Indexed) -> list[Item]:
    """Feed the rule the items past its own watermark; return the ones before it (out of order).

    The watermark is per rule (the newest item the rule has read), so a nightly upload whose
    daily summary is stamped earlier than the day's events is still in order for its own rule.
    The rule's steps run first (pure: nothing to undo but its state), then its signals are written.
    """
    signals: list[Signal] = []
    old: list[Item] = []
    before = len(batch.faults)
    with _isolated(conn, batch, rule, savepoint=False):
        state = batch.states.setdefault(rule.key, {})
        mark: float | None = state.get("wm")
        handler, tolerance = stepper(rule), batch.cfg.reorder_tolerance_s
        epochs, every = items.epochs, items.items
        for n in items.read_by(rule):
            ts = epochs[n]
            if mark is not None and ts <= mark - tolerance:
                old.append(every[n])
                continue
            signals += handler(rule, state, every[n])
            mark = ts if mark is None or ts > mark else mark
        if mark is not None:
            state["wm"] = mark
    if len(batch.faults) > before:
        return []  # the rule failed on this device: skipped, late items included
    if signals:
        with _isolated(conn, batch, rule):
            for signal in signals:
                _apply_current(conn, batch, rule, signal)
    return old


class _Indexed:
    """A batch's items in event-time order, with their epoch seconds, indexed by what reads them.

    Each rule then walks only the items it reads, instead of every rule testing every item.
    """

    def __init__(self, items: list[Item]) -> None:
        self.items = items
        self.epochs = [item.ts.timestamp() for item in items]
        self._by_read: dict[tuple[str, str], list[int]] = {}
        for n, item in enumerate(items):
            read = ("event", item.type) if isinstance(item, Event) else ("metric", item.metric)
            self._by_read.setdefault(read, []).append(n)

    def read_by(self, rule: Rule) -> Sequence[int]:
        """Positions of the items `rule` reads, in order."""
        lists = [self._by_read[read] for read in rule.reads if read in self._by_read]
        if len(lists) == 1:
            return lists[0]
        return sorted(n for positions in lists for n in positions)


def fetch_items(
    conn: Conn,
    device_id: str,
    rules: list[Rule],
    after: datetime,
    upto: datetime,
    *,
    limit: int | None = None,
    xids: list[str] | None = None,
) -> list[Item]:
    """Readings and events in (after, upto] that any rule reads, in event-time order.

    With `xids`, only the rows those transactions wrote: ingest writes a batch's rows and its
    eval_queue row in one transaction, so the queue row's xmin names exactly the batch's data
    and data read before (batches overlap in time) is not read again.
    """
    metrics = sorted({m for r in rules for m in r.metrics()})
    types = sorted({t for r in rules for t in r.event_types()})
    tail = f" ORDER BY ts DESC LIMIT {int(limit)}" if limit else " ORDER BY ts"
    own = " AND xmin = ANY(%s::xid[])" if xids is not None else ""
    extra = (xids,) if xids is not None else ()
    with conn.pipeline():  # both reads in one round trip, as plain tuples (thousands of rows)
        readings_cur = conn.cursor(row_factory=tuple_row).execute(
            "SELECT ts, metric, value FROM readings WHERE device_id = %s AND ts > %s AND ts <= %s"
            " AND metric = ANY(%s)" + own + tail,
            (device_id, after, upto, metrics, *extra),
        )
        events_cur = conn.cursor(row_factory=tuple_row).execute(
            "SELECT ts, type, data FROM events WHERE device_id = %s AND ts > %s AND ts <= %s"
            " AND type = ANY(%s)" + own + tail,
            (device_id, after, upto, types, *extra),
        )
    readings, events = readings_cur.fetchall(), events_cur.fetchall()
    items: list[tuple[datetime, int, Item]] = [(ts, 0, Sample(ts, m, float(v))) for ts, m, v in readings]
    items += [(ts, 1, Event(ts, t, dict(data))) for ts, t, data in events]
    # Readings before events at the same instant; sort is stable for equal keys.
    items.sort(key=lambda t: (t[0], t[1]))
    return [t[2] for t in items]


def _replay(rule: Rule, state: State, items: list[Item], sink: Callable[[Rule, Signal], None]) -> None:
    for item in items:
        for signal in step(rule, state, item):
            sink(rule, signal)


def _is_late(batch: _Batch, ts: datetime) -> bool:
    return (batch.now - ts).total_seconds() > batch.cfg.late_after_s


def _apply_current(conn: Conn, batch: _Batch, rule: Rule, signal: Signal) -> None:
    if isinstance(signal, Fire):
        result = alerts.fire(
            conn, batch.device, rule, signal, late=_is_late(batch, signal.ts), actor=batch.cfg.actor
        )
        if result is not None and result[1] == "opened":
            batch.touch(*result)
    else:
        resolved = alerts.auto_resolve(conn, batch.device["device_id"], rule, signal.ts, batch.cfg.actor)
        if resolved is not None:
            batch.touch(resolved, "resolved")


def _evaluate_late(conn: Conn, batch: _Batch, late: dict[str, list[Item]]) -> None:
    """Out-of-order items: per rule, everything it reads between its first and last late item (the
    late ones and those around them it had already read) is evaluated again from a state warmed
    with the hour before. Sustained conditions count only when they began and ended there; alert
    fingerprints keep an episode that was already reported from being reported twice."""
    device_id = batch.device["device_id"]
    lo = min(i.ts for old in late.values() for i in old)
    warm = fetch_items(
        conn, device_id, batch.rules, lo - _WARMUP, lo - timedelta(microseconds=1), limit=_WARMUP_ROWS
    )
    open_episodes: dict[str, Fire] = {}

    def sink(rule: Rule, signal: Signal) -> None:
        if rule.kind not in _SUSTAINED:
            if isinstance(signal, Fire):
                _record_late(conn, batch, rule, signal, None)
        elif isinstance(signal, Fire):
            open_episodes.setdefault(rule.key, signal)
        elif rule.key in open_episodes:
            _record_late(conn, batch, rule, open_episodes.pop(rule.key), signal)

    for rule in batch.rules:
        if rule.key in late:
            with _isolated(conn, batch, rule):
                state: State = {}
                first, last = late[rule.key][0].ts, late[rule.key][-1].ts
                warm_items = [i for i in warm if relevant(rule, i) and i.ts < first]
                _replay(rule, state, warm_items, lambda r, s: None)
                span = fetch_items(conn, device_id, [rule], first - timedelta(microseconds=1), last)
                _replay(rule, state, [i for i in span if relevant(rule, i)], sink)


def _record_late(conn: Conn, batch: _Batch, rule: Rule, fire: Fire, clear: Clear | None) -> None:
    result = alerts.fire(conn, batch.device, rule, fire, late=True, actor=batch.cfg.actor)
    if result is None:
        return
    alert_id, event = result
    if clear is not None and event == "opened":
        conn.execute(
            """UPDATE alerts SET state = 'resolved', ended_at = %s, resolved_at = now()
               WHERE alert_id = %s""",
            (clear.ts, alert_id),
        )
        alerts.history(
            conn,
            alert_id,
            "resolved",
            batch.cfg.actor,
            detail={"auto": True, "late": True, "ended_at": clear.ts.isoformat()},
        )
    if event == "opened":
        batch.touch(alert_id, "opened")


def _clear_silence(conn: Conn, batch: _Batch, hi: datetime) -> None:
    # Data came in: a device that was silent is not any more.
    for rule in batch.rules:
        if rule.kind == "absence" and batch.states.get(rule.key, {}).pop("silent", False):
            with _isolated(conn, batch, rule):
                _apply_current(conn, batch, rule, Clear(hi))


def _dump(state: State) -> str:
    return json.dumps(state, sort_keys=True, default=str)


# What an evaluation leaves, in one statement: the rule states that changed, the device's
# watermark (when the device is known), and the consumed queue rows (and any hold on the device).
_DONE = """
WITH states AS (
    INSERT INTO rule_state (device_id, rule_key, state)
    SELECT %(device)s, key, state::jsonb FROM unnest(%(keys)s::text[], %(states)s::text[]) AS s(key, state)
    ON CONFLICT (device_id, rule_key) DO UPDATE SET state = EXCLUDED.state, updated_at = now()
), mark AS (
    INSERT INTO device_eval_state (device_id, watermark, last_input_at)
    SELECT %(device)s, %(newest)s, now() WHERE %(known)s
    ON CONFLICT (device_id) DO UPDATE SET watermark = greatest(device_eval_state.watermark,
        EXCLUDED.watermark), last_input_at = now(), updated_at = now()
), done AS (
    DELETE FROM eval_queue WHERE eval_id = ANY(%(ids)s)
)
DELETE FROM eval_retry WHERE device_id = %(device)s
"""


def _done_params(device_id: str, batch: _Batch | None, newest: datetime, ids: list[int]) -> dict[str, Any]:
    changed: dict[str, str] = {}
    if batch is not None:
        for key, state in batch.states.items():
            dumped = _dump(state)
            if dumped != batch.loaded.get(key):  # unchanged: no write
                changed[key] = dumped
    return {
        "device": device_id,
        "keys": list(changed),
        "states": list(changed.values()),
        "newest": newest,
        "known": batch is not None,
        "ids": ids,
    }
