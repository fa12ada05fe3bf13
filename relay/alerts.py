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


# Open the alert of (device, rule), or update the open one, with its history row, in one
# statement (one round trip on the path of every alert). A new occurrence (another event, a new
# episode) counts and is recorded; the same episode persisting only moves last_seen_at and the
# latest values. Evidence that already made an alert (a replay) conflicts and writes nothing.
_FIRE = """
WITH cur AS (
    SELECT alert_id, last_seen_at FROM alerts
    WHERE device_id = %(device_id)s AND rule_key = %(rule_key)s AND state <> 'resolved'
), opened AS (
    INSERT INTO alerts (device_id, rule_id, rule_key, rule_name, severity, class, late,
                        provider_org_id, vendor_org_id, started_at, last_seen_at, "values")
    SELECT %(device_id)s::text, %(rule_id)s::bigint, %(rule_key)s::text, %(rule_name)s::text,
           %(severity)s::text, %(class)s::text, %(late)s::boolean, %(provider_org_id)s::bigint,
           %(vendor_org_id)s::bigint, %(started_at)s::timestamptz, %(ts)s::timestamptz, %(values)s::jsonb
    WHERE NOT EXISTS (SELECT 1 FROM cur)
    ON CONFLICT DO NOTHING RETURNING alert_id
), updated AS (
    UPDATE alerts a SET last_seen_at = greatest(a.last_seen_at, %(ts)s), "values" = %(values)s,
           occurrences = a.occurrences + (%(started_at)s > cur.last_seen_at)::int, updated_at = now()
    FROM cur WHERE a.alert_id = cur.alert_id
    RETURNING a.alert_id, %(started_at)s > cur.last_seen_at AS again
), logged AS (
    INSERT INTO alert_history (alert_id, action, actor, detail)
    SELECT alert_id, 'opened', %(actor)s, %(opened)s::jsonb FROM opened
    UNION ALL
    SELECT alert_id, 'updated', %(actor)s, %(updated)s::jsonb FROM updated WHERE again
)
SELECT alert_id, 'opened' AS event FROM opened
UNION ALL
SELECT alert_id, 'updated' FROM updated
"""


def fire(
    conn: Conn, device: dict[str, Any], rule: Rule, signal: Fire, *, late: bool, actor: str
) -> tuple[int, str] | None:
    """Open an alert for `signal`, or update the open one; returns (alert_id, 'opened'|'updated').

    None when the same evidence already made an alert (a replay): nothing new is written.
    """
    at = signal.ts.isoformat()
    row = conn.execute(
        _FIRE,
        {
            "device_id": device["device_id"],
            "rule_id": rule.rule_id,
            "rule_key": rule.key,
            "rule_name": rule.name,
            "severity": signal.severity,
            "class": rule.klass,
            "late": late,
            "provider_org_id": device["provider_org_id"],
            "vendor_org_id": device["vendor_org_id"],
            "started_at": signal.started_at,
            "ts": signal.ts,
            "values": Jsonb(signal.values),
            "actor": actor,
            "opened": Jsonb({"late": late, "at": at}),
            "updated": Jsonb({"at": at, "values": signal.values}),
        },
    ).fetchone()
    if row is None:
        return None
    return int(row["alert_id"]), str(row["event"])


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


# Every delivery of one alert event in one statement: per audience (in order), each enabled webhook
# of its org, its MQTT topic, and e-mail when asked for and the org has contacts.
_ENQUEUE = """
INSERT INTO outbox (alert_id, event, audience, org_id, channel, webhook_id, body)
SELECT %(alert_id)s, %(event)s, a.audience, a.org_id, c.channel, c.webhook_id, a.body
FROM unnest(%(audiences)s::text[], %(orgs)s::bigint[], %(bodies)s::text[]) WITH ORDINALITY
     AS a(audience, org_id, body, n)
CROSS JOIN LATERAL (
    SELECT 1 AS k, 'webhook' AS channel, w.webhook_id FROM webhooks w WHERE w.org_id = a.org_id AND w.enabled
    UNION ALL SELECT 2, 'mqtt', NULL
    UNION ALL SELECT 3, 'email', NULL
    WHERE %(email)s AND EXISTS (SELECT 1 FROM org_contacts oc WHERE oc.org_id = a.org_id)
) c
ORDER BY a.n, c.k, c.webhook_id
"""


def enqueue(conn: Conn, alert_id: int, event: str, *, email: bool) -> None:
    """Write the deliveries of one alert event: each audience's view, to each of its channels.

    Clinical alerts go to the provider only; technical ones to the provider and the vendor.
    Resolutions are not e-mailed. One round trip reads the alert; the rest is sent without
    waiting (in a pipeline, it goes with the caller's next sync).
    """
    row = conn.execute(ALERT_SELECT + " WHERE a.alert_id = %s", (alert_id,)).fetchone()
    assert row is not None
    audiences: list[str] = []
    orgs: list[int] = []
    bodies: list[str] = []
    for audience, org_id in (("provider", row["provider_org_id"]), ("vendor", row["vendor_org_id"])):
        view = view_for(row, audience)
        if view is not None:
            audiences.append(audience)
            orgs.append(int(org_id))
            bodies.append(message(event, view))
    params = {
        "alert_id": alert_id,
        "event": event,
        "audiences": audiences,
        "orgs": orgs,
        "bodies": bodies,
        "email": email and event != "resolved",
    }
    conn.execute(_ENQUEUE, params)
    conn.execute(
        "SELECT pg_notify(%s, %s), pg_notify(%s, %s)",
        (OUTBOX_CHANNEL, str(alert_id), ALERTS_CHANNEL, _change(row, event)),
    )


def notify(conn: Conn, row: dict[str, Any], event: str) -> None:
    """Tell SSE subscribers (at commit) that an alert changed; they fetch their own view of it."""
    conn.execute("SELECT pg_notify(%s, %s)", (ALERTS_CHANNEL, _change(row, event)))


def _change(row: dict[str, Any], event: str) -> str:
    """The `pulsewire_alerts` payload: which alert changed how, and whose it is."""
    return json.dumps(
        {
            "alert_id": row["alert_id"],
            "event": event,
            "provider_org_id": row["provider_org_id"],
            "vendor_org_id": row["vendor_org_id"],
            "class": row["class"],
        }
    )
