"""Delivery of outbox rows: claim one due row with FOR UPDATE SKIP LOCKED, send it, record the attempt.

The row stays locked while it is being sent, so two workers never send one row at once; the
attempt and the row's new state commit together. A worker killed mid-send holds no lock any more
and its transaction is rolled back: the row is still pending and another worker sends it again
with the same `Idempotency-Key` (at-least-once, deduplicated by the receiver).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import psycopg

from relay.channels import Channels, Delivery, Outcome

Conn = psycopg.Connection[dict[str, Any]]

_CLAIM = """
SELECT o.delivery_id, o.channel, o.org_id, o.body, o.event, o.attempts, o.webhook_id,
       w.url, w.secret, w.enabled AS webhook_enabled
FROM outbox o LEFT JOIN webhooks w ON w.webhook_id = o.webhook_id
WHERE o.state = 'pending' AND o.next_attempt_at <= now()
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


def deliver_one(conn: Conn, channels: Channels, worker: str, policy: RetryPolicy) -> bool:
    """Claim, send and record one due delivery; False when none is due. `conn` is in autocommit."""
    with conn.transaction():
        row = conn.execute(_CLAIM).fetchone()
        if row is None:
            return False
        started = time.perf_counter()
        outcome = _send(conn, channels, row)
        duration_ms = (time.perf_counter() - started) * 1000
        _record(conn, row, outcome, worker=worker, duration_ms=duration_ms, policy=policy)
    return True


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
    return channels.send(delivery)


def _record(
    conn: Conn, row: dict[str, Any], outcome: Outcome, *, worker: str, duration_ms: float, policy: RetryPolicy
) -> None:
    conn.execute(
        """INSERT INTO delivery_attempts (delivery_id, worker, ok, status_code, error, duration_ms)
           VALUES (%s, %s, %s, %s, %s, %s)""",
        (row["delivery_id"], worker, outcome.ok, outcome.status_code, outcome.error, duration_ms),
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
            (attempts, outcome.error, row["delivery_id"]),
        )
    else:
        conn.execute(
            """UPDATE outbox SET attempts = %s, last_error = %s,
                      next_attempt_at = now() + make_interval(secs => %s)
               WHERE delivery_id = %s""",
            (attempts, outcome.error, policy.delay_s(attempts), row["delivery_id"]),
        )
