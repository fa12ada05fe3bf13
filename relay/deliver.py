"""Delivery of outbox rows: claim one due row with FOR UPDATE SKIP LOCKED, send it, record the attempt.

The row stays locked while it is being sent, so two workers never send one row at once; the
attempt and the row's new state commit together. A worker killed mid-send holds no lock any more
and its transaction is rolled back: the row is still pending and another worker sends it again
with the same `Idempotency-Key` (at-least-once, deduplicated by the receiver).

Claims are fair per org. A worker takes the orgs that have a due row in turn (the one it served
longest ago first), the oldest due row of each; an org never holds all of a worker's delivery
threads, and one webhook never holds two. So one org's thousands of failing or slow deliveries
cost another org's first attempt at most a claim, never a wait behind them.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from pulsewire.db import pipelined
from relay.channels import Channels, Delivery, Outcome, clean_text

Conn = psycopg.Connection[dict[str, Any]]

# The distinct orgs of pending rows by a skip scan of outbox_pending_org (0030), each kept when
# its oldest row is due: a cost per org, not per row, however long one org's backlog is.
_DUE_ORGS = """
WITH RECURSIVE orgs(org_id) AS (
    (SELECT org_id FROM outbox WHERE state = 'pending' ORDER BY org_id LIMIT 1)
  UNION ALL
    SELECT (SELECT o.org_id FROM outbox o WHERE o.state = 'pending' AND o.org_id > orgs.org_id
            ORDER BY o.org_id LIMIT 1)
    FROM orgs WHERE orgs.org_id IS NOT NULL
)
SELECT org_id FROM orgs
WHERE org_id IS NOT NULL
  AND (SELECT min(o.next_attempt_at) FROM outbox o
       WHERE o.state = 'pending' AND o.org_id = orgs.org_id) <= now()
"""

_CLAIM = """
SELECT o.delivery_id, o.channel, o.org_id, o.body, o.event, o.attempts, o.webhook_id,
       w.url, w.secret, w.enabled AS webhook_enabled
FROM outbox o LEFT JOIN webhooks w ON w.webhook_id = o.webhook_id
WHERE o.org_id = %(org_id)s AND o.state = 'pending' AND o.next_attempt_at <= now()
  AND (o.webhook_id IS NULL OR o.webhook_id <> ALL(%(busy)s))
ORDER BY o.next_attempt_at, o.delivery_id
LIMIT 1
FOR UPDATE OF o SKIP LOCKED
"""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: attempt n waits base_s * 2**(n-1), capped, times [0.5, 1)."""

    max_attempts: int = 8
    base_s: float = 2.0
    cap_s: float = 900.0

    def delay_s(self, attempts: int) -> float:
        """Seconds to wait after `attempts` failed attempts."""
        raw = min(self.cap_s, self.base_s * 2 ** (attempts - 1))
        return float(raw * (0.5 + random.random() / 2))


class InFlight:
    """What one worker's delivery threads are sending now, and whose turn it is next.

    An org may hold `threads - 1` threads at once (at least one stays free for the others), a
    webhook one. `on_release` is called when a send ends, so threads that found only orgs at
    their limit claim again at once.
    """

    def __init__(self, threads: int, on_release: Callable[[], None] = lambda: None) -> None:
        self.org_max = max(1, threads - 1)
        self._on_release = on_release
        self._lock = threading.Lock()
        self._orgs: Counter[int] = Counter()
        self._webhooks: set[int] = set()
        self._served: dict[int, float] = {}

    def turns(self, due_orgs: list[int]) -> list[int]:
        """The due orgs under their limit, the one served longest ago first."""
        with self._lock:
            free = [o for o in due_orgs if self._orgs[o] < self.org_max]
            return sorted(free, key=lambda o: self._served.get(o, 0.0))

    def reserve(self, org_id: int) -> bool:
        """Take a thread for `org_id` if it is under its limit."""
        with self._lock:
            if self._orgs[org_id] >= self.org_max:
                return False
            self._orgs[org_id] += 1
            self._served[org_id] = time.monotonic()
            return True

    def busy_webhooks(self) -> list[int]:
        """Webhooks with a send in flight."""
        with self._lock:
            return list(self._webhooks)

    def start(self, webhook_id: int | None) -> None:
        """Mark a claimed row's webhook busy."""
        if webhook_id is not None:
            with self._lock:
                self._webhooks.add(webhook_id)

    def release(self, org_id: int, webhook_id: int | None, *, sent: bool = True) -> None:
        """Give back the thread of a reservation (and the webhook of its row, if any).

        `on_release` is called only when a send ended (`sent`): a reservation that found nothing to
        claim freed nothing another thread could use, and waking the threads for it made them spin
        on claims while a row of the same org or webhook was being sent.
        """
        with self._lock:
            self._orgs[org_id] -= 1
            if self._orgs[org_id] <= 0:
                del self._orgs[org_id]
            if webhook_id is not None:
                self._webhooks.discard(webhook_id)
        if sent:
            self._on_release()


def deliver_one(
    conn: Conn, channels: Channels, worker: str, policy: RetryPolicy, inflight: InFlight | None = None
) -> bool:
    """Claim, send and record one due delivery; False when none is due. `conn` is in autocommit."""
    flight = inflight or InFlight(threads=1)
    # Three round trips in all: BEGIN with the due orgs, the claim, then the attempt, the row's
    # new state and COMMIT together.
    with pipelined(conn):
        row = _claim(conn, flight)
        if row is None:
            return False
        try:
            started = time.perf_counter()
            outcome = _send(conn, channels, row)
            duration_ms = (time.perf_counter() - started) * 1000
            _record(conn, row, outcome, worker=worker, duration_ms=duration_ms, policy=policy)
        finally:
            flight.release(int(row["org_id"]), row["webhook_id"])
    return True


def _claim(conn: Conn, flight: InFlight) -> dict[str, Any] | None:
    due = [int(r["org_id"]) for r in conn.execute(_DUE_ORGS)]
    for org_id in flight.turns(due):
        if not flight.reserve(org_id):
            continue
        row = conn.execute(_CLAIM, {"org_id": org_id, "busy": flight.busy_webhooks()}).fetchone()
        if row is not None:
            flight.start(row["webhook_id"])
            return row
        flight.release(org_id, None, sent=False)
    return None


def _send(conn: Conn, channels: Channels, row: dict[str, Any]) -> Outcome:
    if row["channel"] == "webhook" and (row["url"] is None or not row["webhook_enabled"]):
        return Outcome(False, None, "webhook deleted or disabled", permanent=True)
    recipients: tuple[str, ...] = ()
    if row["channel"] == "email":
        contacts = conn.execute(
            "SELECT email FROM org_contacts WHERE org_id = %s ORDER BY email", (row["org_id"],)
        ).fetchall()
        recipients = tuple(str(c["email"]) for c in contacts)
    delivery = Delivery(
        delivery_id=int(row["delivery_id"]),
        channel=row["channel"],
        org_id=int(row["org_id"]),
        body=row["body"],
        event=row["event"],
        url=row["url"],
        secret=row["secret"],
        recipients=recipients,
    )
    # `send` turns every failure of the delivery itself into an outcome; what is left to raise
    # here is the database, which ends the round and rolls the claim back.
    return channels.send(delivery)


def _record(
    conn: Conn, row: dict[str, Any], outcome: Outcome, *, worker: str, duration_ms: float, policy: RetryPolicy
) -> None:
    # The error text is the other side's (or a library's) words: one line, no NUL, bounded, so
    # PostgreSQL never refuses the attempt and the row never stays pending without one.
    error = clean_text(outcome.error) if outcome.error is not None else None
    conn.execute(
        """INSERT INTO delivery_attempts (delivery_id, worker, ok, status_code, error, duration_ms)
           VALUES (%s, %s, %s, %s, %s, %s)""",
        (row["delivery_id"], worker, outcome.ok, outcome.status_code, error, duration_ms),
    )
    attempts = int(row["attempts"]) + 1
    if outcome.ok:
        conn.execute(
            """UPDATE outbox SET state = 'delivered', attempts = %s, delivered_at = now(), last_error = NULL
               WHERE delivery_id = %s""",
            (attempts, row["delivery_id"]),
        )
    elif outcome.permanent or attempts >= policy.max_attempts:
        conn.execute(
            "UPDATE outbox SET state = 'dead', attempts = %s, last_error = %s WHERE delivery_id = %s",
            (attempts, error, row["delivery_id"]),
        )
    else:
        conn.execute(
            """UPDATE outbox SET attempts = %s, last_error = %s,
                      next_attempt_at = now() + make_interval(secs => %s)
               WHERE delivery_id = %s""",
            (attempts, error, policy.delay_s(attempts), row["delivery_id"]),
        )
