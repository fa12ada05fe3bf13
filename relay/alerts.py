"""Alert writes: open, update, resolve, acknowledge, escalate; each with its history row, and the
outbox rows of every audience and channel written in the caller's transaction.

Nothing here commits: the caller's transaction holds the alert, its history and its deliveries
together, so a crash leaves either all of them or none. `pulsewire_alerts` and `pulsewire_outbox`
are notified inside the transaction; PostgreSQL delivers the notifications only at commit.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from pulsewire.wire import ALERTS_CHANNEL, OUTBOX_CHANNEL
from relay.evaluate import Fire
from relay.rules import Rule
from relay.views import ALERT_SELECT, message, view_for

Conn = psycopg.Connection[dict[str, Any]]
OPEN_STATES = ("open", "acknowledged")


def history(
    conn: Conn,
    alert_id: int,
    action: str,
    actor: str,
    *,
    user_id: int | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Record one change of an alert."""
    conn.execute(
        "INSERT INTO alert_history (alert_id, action, actor, user_id, detail) VALUES (%s, %s, %s, %s, %s)",
        (alert_id, action, actor, user_id, Jsonb(detail or {})),
    )


def fire(
    conn: Conn, device: dict[str, Any], rule: Rule, signal: Fire, *, late: bool, actor: str
) -> tuple[int, str] | None:
    """Open an alert for `signal`, or update the open one; returns (alert_id, 'opened'|'updated')."""
    current = conn.execute(
        """SELECT alert_id, started_at, last_seen_at FROM alerts
           WHERE device_id = %s AND rule_key = %s AND state <> 'resolved'""",
        (device["device_id"], rule.key),
    ).fetchone()
    if current is not None:
        return _update(conn, current, signal, actor), "updated"
    row = conn.execute(
        """INSERT INTO alerts (device_id, rule_id, rule_key, rule_name, severity, class, late,
                               provider_org_id, vendor_org_id, started_at, last_seen_at, "values")
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT DO NOTHING RETURNING alert_id""",
        (
            device["device_id"],
            rule.rule_id,
            rule.key,
            rule.name,
            signal.severity,
            rule.klass,
            late,
            device["provider_org_id"],
            device["vendor_org_id"],
            signal.started_at,
            signal.ts,
            Jsonb(signal.values),
        ),
    ).fetchone()
    if row is None:
        return None  # the same evidence already made an alert (a replay): nothing new
    alert_id = int(row["alert_id"])
    history(conn, alert_id, "opened", actor, detail={"late": late, "at": signal.ts.isoformat()})
    return alert_id, "opened"


def _update(conn: Conn, current: dict[str, Any], signal: Fire, actor: str) -> int:
    alert_id = int(current["alert_id"])
    # A new occurrence (another event, a new episode) counts and is recorded; the same episode
    # persisting only moves last_seen_at and the latest values.
    new_occurrence = signal.started_at > current["last_seen_at"]
    conn.execute(
        """UPDATE alerts SET last_seen_at = greatest(last_seen_at, %s), "values" = %s,
                  occurrences = occurrences + %s, updated_at = now()
           WHERE alert_id = %s""",
        (signal.ts, Jsonb(signal.values), int(new_occurrence), alert_id),
    )
    if new_occurrence:
        history(
            conn, alert_id, "updated", actor, detail={"at": signal.ts.isoformat(), "values": signal.values}
        )
    return alert_id


def auto_resolve(conn: Conn, device_id: str, rule: Rule, ended_at: datetime, actor: str) -> int | None:
    """Resolve the open alert of (device, rule) because its condition cleared; returns its id."""
    if not rule.auto_resolve:
        return None
    row = conn.execute(
        """UPDATE alerts SET state = 'resolved', ended_at = %s, resolved_at = now(), updated_at = now()
           WHERE device_id = %s AND rule_key = %s AND state <> 'resolved' RETURNING alert_id""",
        (ended_at, device_id, rule.key),
    ).fetchone()
    if row is None:
        return None
    alert_id = int(row["alert_id"])
    history(conn, alert_id, "resolved", actor, detail={"auto": True, "ended_at": ended_at.isoformat()})
    return alert_id


def set_state(conn: Conn, alert_id: int, action: str, user_id: int | None, actor: str) -> bool:
    """Acknowledge or resolve an alert by a person; False when it is not in a state that allows it."""
    if action == "acknowledged":
        query = """UPDATE alerts SET state = 'acknowledged', acknowledged_at = now(), acknowledged_by = %s,
                          updated_at = now() WHERE alert_id = %s AND state = 'open' RETURNING alert_id"""
    else:
        query = """UPDATE alerts SET state = 'resolved', resolved_at = now(), resolved_by = %s,
                          ended_at = coalesce(ended_at, last_seen_at), updated_at = now()
                   WHERE alert_id = %s AND state <> 'resolved' RETURNING alert_id"""
    if conn.execute(query, (user_id, alert_id)).fetchone() is None:
        return False
    history(conn, alert_id, action, actor, user_id=user_id)
    return True


def escalate_due(conn: Conn, after_s: int, actor: str, limit: int = 100) -> list[int]:
    """Flag unacknowledged, current red alerts older than `after_s`; returns their ids.

    The UPDATE re-checks its WHERE under the row lock, so two workers never escalate one alert twice.
    """
    rows = conn.execute(
        """UPDATE alerts SET escalated = true, updated_at = now()
           WHERE alert_id IN (SELECT alert_id FROM alerts
                              WHERE state = 'open' AND severity = 'red' AND NOT escalated AND NOT late
                                AND opened_at < now() - make_interval(secs => %s)
                              ORDER BY opened_at LIMIT %s FOR UPDATE SKIP LOCKED)
           RETURNING alert_id""",
        (after_s, limit),
    ).fetchall()
    ids = [int(r["alert_id"]) for r in rows]
    for alert_id in ids:
        history(conn, alert_id, "escalated", actor, detail={"after_s": after_s})
    return ids


def enqueue(conn: Conn, alert_id: int, event: str, *, email: bool) -> int:
    """Write the deliveries of one alert event: each audience's view, to each of its channels.

    Clinical alerts go to the provider only; technical ones to the provider and the vendor.
    Returns the number of outbox rows written.
    """
    row = conn.execute(ALERT_SELECT + " WHERE a.alert_id = %s", (alert_id,)).fetchone()
    assert row is not None
    written = 0
    audiences = [("provider", row["provider_org_id"]), ("vendor", row["vendor_org_id"])]
    for audience, org_id in audiences:
        view = view_for(row, audience)
        if view is None:
            continue
        body = message(event, view)
        written += _enqueue_channels(
            conn, alert_id, event, audience=audience, org_id=int(org_id), body=body, email=email
        )
    conn.execute("SELECT pg_notify(%s, %s)", (OUTBOX_CHANNEL, str(alert_id)))
    notify(conn, row, event)
    return written


def notify(conn: Conn, row: dict[str, Any], event: str) -> None:
    """Tell SSE subscribers (at commit) that an alert changed; they fetch their own view of it."""
    conn.execute(
        "SELECT pg_notify(%s, %s)",
        (
            ALERTS_CHANNEL,
            json.dumps(
                {
                    "alert_id": row["alert_id"],
                    "event": event,
                    "provider_org_id": row["provider_org_id"],
                    "vendor_org_id": row["vendor_org_id"],
                    "class": row["class"],
                }
            ),
        ),
    )


def _enqueue_channels(
    conn: Conn, alert_id: int, event: str, *, audience: str, org_id: int, body: str, email: bool
) -> int:
    insert = """INSERT INTO outbox (alert_id, event, audience, org_id, channel, webhook_id, body)
                VALUES (%s, %s, %s, %s, %s, %s, %s)"""
    cur = conn.execute(
        """INSERT INTO outbox (alert_id, event, audience, org_id, channel, webhook_id, body)
           SELECT %s, %s, %s, %s, 'webhook', webhook_id, %s FROM webhooks WHERE org_id = %s AND enabled""",
        (alert_id, event, audience, org_id, body, org_id),
    )
    written = max(cur.rowcount, 0)
    conn.execute(insert, (alert_id, event, audience, org_id, "mqtt", None, body))
    written += 1
    has_contacts = conn.execute("SELECT 1 FROM org_contacts WHERE org_id = %s LIMIT 1", (org_id,)).fetchone()
    if email and event != "resolved" and has_contacts:
        conn.execute(insert, (alert_id, event, audience, org_id, "email", None, body))
        written += 1
    return written
