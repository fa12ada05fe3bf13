"""What the services say to each other through PostgreSQL: NOTIFY channels and the evaluation queue.

The processes never call each other (docs/architecture.md); they meet in the database, and these
names and this write are the contract there, as `schemas.topics` is on the broker:

- `EVAL_CHANNEL`: ingest committed data to evaluate (`queue_evaluation`); relay workers wake up.
  The payload names the batch's devices that sent events (`event_devices` reads it back), so a
  relay evaluates those at once instead of first asking the queue which devices have work.
- `OUTBOX_CHANNEL`: an alert change queued deliveries; relay delivery threads wake up.
- `ALERTS_CHANNEL`: an alert changed (payload: its id, event and orgs); dashboards' streams fan it out.

Notifications are sent inside the writer's transaction, so PostgreSQL delivers them at commit and
only if it commits; every listener also polls, so a lost one costs a poll interval, not the work.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

import psycopg

from pulsewire.db import text_array
from schemas.topics import is_device_id

EVAL_CHANNEL = "pulsewire_eval"
OUTBOX_CHANNEL = "pulsewire_outbox"
ALERTS_CHANNEL = "pulsewire_alerts"

# One row per device: the event-time range a committed batch covered, and whether it held events
# (the relay takes devices with queued events first).
_QUEUE_EVALUATION = (
    "INSERT INTO eval_queue (device_id, min_ts, max_ts, has_events) "
    "SELECT * FROM unnest(%s::text[], %s::timestamptz[], %s::timestamptz[], %s::boolean[])"
)
_NOTIFY_EVAL = "SELECT pg_notify(%s, %s)"
# PostgreSQL refuses payloads of 8,000 bytes or more; the hint is a shortcut, the queue the truth,
# so devices past this are left out of it (the relay still finds them by asking).
_HINT_MAX_BYTES = 4_000

Spans = Mapping[str, tuple[datetime, datetime]]  # device id → (earliest, latest) event time


def queue_evaluation(conn: psycopg.Connection[Any], spans: Spans, with_events: Collection[str]) -> None:
    """Queue each device's range for evaluation and notify the relay, in the caller's transaction.

    Two statements and no result read, so it also runs inside ingest's pipelined batch unchanged.
    """
    if not spans:
        return
    devices = sorted(spans)
    flagged = [d in with_events for d in devices]
    conn.execute(
        _QUEUE_EVALUATION,
        (
            text_array(devices),
            [spans[d][0] for d in devices],
            [spans[d][1] for d in devices],
            flagged,
        ),
    )
    conn.execute(_NOTIFY_EVAL, (EVAL_CHANNEL, _hint([d for d, f in zip(devices, flagged, strict=True) if f])))


def _hint(devices: list[str]) -> str:
    """Space-separated device ids (they contain no spaces), as many as fit the payload limit."""
    taken, size = [], 0
    for device in devices:
        size += len(device) + 1
        if size > _HINT_MAX_BYTES:
            break
        taken.append(device)
    return " ".join(taken)


def event_devices(payload: str) -> list[str]:
    """The devices an `EVAL_CHANNEL` payload names as having sent events (anything else is ignored)."""
    return [d for d in payload.split(" ") if is_device_id(d)]
