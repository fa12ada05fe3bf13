"""Clock-time work: silent devices (absence rules) and escalation of unacknowledged red alerts.

Safe with any number of workers: a silent device is handled under the same per-device advisory
lock as its evaluation (its silence judged again under that lock), and escalation re-checks its
condition under the alert's row lock. Decommissioned devices are never silent: they were retired.
An absence rule that fails on a device is skipped there and its error recorded on it; a device
that fails as a whole is logged and left for the next tick: neither stops the others, nor escalation.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from relay import alerts
from relay.engine import EngineConfig, lock_device
from relay.evaluate import Fire, silence
from relay.faults import RuleFault, record_rule_faults
from relay.rules import Rule, usable_rules

Conn = psycopg.Connection[dict[str, Any]]
log = logging.getLogger("pulsewire.relay")

# Silence is measured from the newest data in event time (the device's watermark), not from when
# it reached us: a home monitor whose week of backlog arrives at once was still silent for days.
# But not while an upload is under way: mid-backlog the watermark is days old although the device
# is talking to us, and judging it then opens an alert the next batch resolves (a false page).
# An upload is under way while the device has committed data not evaluated yet (eval_queue), or
# had contact (ingest's `last_seen_at`) within UPLOAD_PAUSE_S without saying it went offline.
# Devices quiet for at least their own heartbeat (the smallest silence any absence rule allows)
# and without an open absence alert: a cheap pre-filter, the rule decides.
_SILENT = """
SELECT d.device_id, d.heartbeat_s, coalesce(s.watermark, d.created_at) AS last_input_at
FROM devices d LEFT JOIN device_eval_state s ON s.device_id = d.device_id
WHERE (%(device)s::text IS NULL OR d.device_id = %(device)s)
  AND d.decommissioned_at IS NULL
  AND coalesce(s.watermark, d.created_at) < now() - make_interval(secs => d.heartbeat_s * %(factor)s)
  AND NOT EXISTS (SELECT 1 FROM eval_queue q WHERE q.device_id = d.device_id)
  AND NOT (coalesce(d.last_seen_at > now() - make_interval(secs => %(pause_s)s), false)
           AND (d.online OR d.status_at IS NULL))
  AND NOT EXISTS (SELECT 1 FROM alerts a JOIN rules r ON r.key = a.rule_key AND r.kind = 'absence'
                  WHERE a.device_id = d.device_id AND a.state <> 'resolved')
ORDER BY d.device_id LIMIT %(limit)s
"""
UPLOAD_PAUSE_S = 120.0  # a connected device quiet this long is not uploading anything
_MIN_FACTOR = 1.0


def check_silences(conn: Conn, cfg: EngineConfig, limit: int = 200) -> list[int]:
    """Open absence alerts for devices silent beyond their rule; returns the new alert ids.

    Each device is handled in its own transaction (the caller's connection is in autocommit).
    """
    opened: list[int] = []
    for cand in _silent(conn, None, limit):
        faults: list[RuleFault] = []
        try:
            with conn.transaction():
                if lock_device(conn, cand["device_id"]):
                    # Judged again under the lock: a batch may have been committed or evaluated since.
                    for still in _silent(conn, cand["device_id"], 1):
                        opened += _silence_device(conn, still, cfg, faults)
        except (psycopg.OperationalError, psycopg.InterfaceError):
            raise  # the database, not this device
        except Exception:
            log.exception("silence check of device %s failed; tried again next tick", cand["device_id"])
            continue
        record_rule_faults(conn, faults)
    return opened


def _silent(conn: Conn, device_id: str | None, limit: int) -> list[dict[str, Any]]:
    params = {"device": device_id, "factor": _MIN_FACTOR, "pause_s": UPLOAD_PAUSE_S, "limit": limit}
    return conn.execute(_SILENT, params).fetchall()


def _silence_device(
    conn: Conn, cand: dict[str, Any], cfg: EngineConfig, faults: list[RuleFault]
) -> list[int]:
    device = conn.execute("SELECT * FROM devices WHERE device_id = %s", (cand["device_id"],)).fetchone()
    if device is None:
        return []
    silent_for = (datetime.now(UTC) - cand["last_input_at"]).total_seconds()
    opened = []
    rules, unusable = usable_rules(conn, device["device_id"], kinds=("absence",))
    faults += unusable
    for rule in rules:
        try:
            with conn.transaction():  # a savepoint: a failing rule's writes are undone, alone
                alert_id = _silence_rule(
                    conn, device, rule, last=cand["last_input_at"], silent_for=silent_for, cfg=cfg
                )
        except (psycopg.OperationalError, psycopg.InterfaceError):
            raise
        except Exception as exc:
            faults.append(RuleFault.of(rule.rule_id, rule.key, device["device_id"], exc))
            continue
        if alert_id is not None:
            opened.append(alert_id)
    return opened


def _silence_rule(
    conn: Conn, device: dict[str, Any], rule: Rule, *, last: datetime, silent_for: float, cfg: EngineConfig
) -> int | None:
    """Open this absence rule's alert when the device's silence newly exceeds it; its id, or None."""
    row = conn.execute(
        "SELECT state FROM rule_state WHERE device_id = %s AND rule_key = %s",
        (device["device_id"], rule.key),
    ).fetchone()
    state = dict(row["state"]) if row else {}
    if not silence(rule, state, float(device["heartbeat_s"]), silent_for):
        return None
    values = {"silent_s": round(silent_for), "heartbeat_s": device["heartbeat_s"]}
    result = alerts.fire(
        conn, device, rule, Fire(datetime.now(UTC), last, values, rule.severity), late=False, actor=cfg.actor
    )
    conn.execute(
        """INSERT INTO rule_state (device_id, rule_key, state) VALUES (%s, %s, %s)
           ON CONFLICT (device_id, rule_key) DO UPDATE SET state = EXCLUDED.state, updated_at = now()""",
        (device["device_id"], rule.key, Jsonb(state)),
    )
    if result is None or result[1] != "opened":
        return None
    alerts.enqueue(conn, result[0], "opened", email=cfg.email)
    return result[0]


def escalate(conn: Conn, cfg: EngineConfig, after_s: int) -> list[int]:
    """Escalate due red alerts and write their escalation deliveries; returns their ids."""
    with conn.transaction():
        ids = alerts.escalate_due(conn, after_s, cfg.actor)
        for alert_id in ids:
            alerts.enqueue(conn, alert_id, "escalated", email=cfg.email)
    return ids
