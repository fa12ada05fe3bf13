"""Clock-time work: silent devices (absence rules) and escalation of unacknowledged red alerts.

Safe with any number of workers: a silent device is handled under the same per-device advisory
lock as its evaluation, and escalation re-checks its condition under the alert's row lock.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from relay import alerts
from relay.engine import EngineConfig, lock_device
from relay.evaluate import Fire, silence
from relay.rules import effective_rules

Conn = psycopg.Connection[dict[str, Any]]

# Silence is measured from the newest data in event time (the device's watermark), not from when
# it reached us: a home monitor whose week of backlog arrives at once was still silent for days.
# Devices quiet for at least their own heartbeat (the smallest silence any absence rule allows)
# and without an open absence alert: a cheap pre-filter, the rule decides.
_CANDIDATES = """
SELECT d.device_id, d.heartbeat_s, coalesce(s.watermark, d.created_at) AS last_input_at
FROM devices d LEFT JOIN device_eval_state s ON s.device_id = d.device_id
WHERE coalesce(s.watermark, d.created_at) < now() - make_interval(secs => d.heartbeat_s * %s)
  AND NOT EXISTS (SELECT 1 FROM alerts a JOIN rules r ON r.key = a.rule_key AND r.kind = 'absence'
                  WHERE a.device_id = d.device_id AND a.state <> 'resolved')
ORDER BY d.device_id LIMIT %s
"""
_MIN_FACTOR = 1.0


def check_silences(conn: Conn, cfg: EngineConfig, limit: int = 200) -> list[int]:
    """Open absence alerts for devices silent beyond their rule; returns the new alert ids.

    Each device is handled in its own transaction (the caller's connection is in autocommit).
    """
    opened: list[int] = []
    for cand in conn.execute(_CANDIDATES, (_MIN_FACTOR, limit)).fetchall():
        with conn.transaction():
            if lock_device(conn, cand["device_id"]):
                opened += _silence_device(conn, cand, cfg)
    return opened


def _silence_device(conn: Conn, cand: dict[str, Any], cfg: EngineConfig) -> list[int]:
    device = conn.execute("SELECT * FROM devices WHERE device_id = %s", (cand["device_id"],)).fetchone()
    if device is None:
        return []
    last: datetime = cand["last_input_at"]
    silent_for = (datetime.now(UTC) - last).total_seconds()
    opened = []
    for rule in (r for r in effective_rules(conn, device["device_id"]) if r.kind == "absence"):
        row = conn.execute(
            "SELECT state FROM rule_state WHERE device_id = %s AND rule_key = %s",
            (device["device_id"], rule.key),
        ).fetchone()
        state = dict(row["state"]) if row else {}
        if not silence(rule, state, float(device["heartbeat_s"]), silent_for):
            continue
        values = {"silent_s": round(silent_for), "heartbeat_s": device["heartbeat_s"]}
        result = alerts.fire(
            conn,
            device,
            rule,
            Fire(datetime.now(UTC), last, values, rule.severity),
            late=False,
            actor=cfg.actor,
        )
        conn.execute(
            """INSERT INTO rule_state (device_id, rule_key, state) VALUES (%s, %s, %s)
               ON CONFLICT (device_id, rule_key) DO UPDATE SET state = EXCLUDED.state, updated_at = now()""",
            (device["device_id"], rule.key, Jsonb(state)),
        )
        if result is not None and result[1] == "opened":
            alerts.enqueue(conn, result[0], "opened", email=cfg.email)
            opened.append(result[0])
    return opened


def escalate(conn: Conn, cfg: EngineConfig, after_s: int) -> list[int]:
    """Escalate due red alerts and write their escalation deliveries; returns their ids."""
    with conn.transaction():
        ids = alerts.escalate_due(conn, after_s, cfg.actor)
        for alert_id in ids:
            alerts.enqueue(conn, alert_id, "escalated", email=cfg.email)
    return ids
