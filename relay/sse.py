"""Live alert views for the dashboards' SSE stream.

Alert writes notify `pulsewire_alerts` inside their transaction (delivered at commit) with the
alert id and its orgs; each subscriber LISTENs, keeps the notifications meant for its org and
audience, and reads its own view of the alert, so nothing another audience may not see ever
leaves the database for it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from psycopg.rows import dict_row

from pulsewire.errors import DatabaseError
from relay.alerts import ALERTS_CHANNEL
from relay.views import ALERT_SELECT, view_for


def _is_for(note: dict[str, Any], org_id: int, audience: str) -> bool:
    if audience == "provider":
        return bool(note.get("provider_org_id") == org_id)
    return note.get("vendor_org_id") == org_id and note.get("class") == "technical"


async def _connect(database_url: str) -> psycopg.AsyncConnection[dict[str, Any]]:
    try:
        return await psycopg.AsyncConnection.connect(database_url, autocommit=True, row_factory=dict_row)
    except psycopg.Error as exc:
        raise DatabaseError(f"cannot connect to PostgreSQL: {exc}") from exc


async def subscribe(database_url: str, org_id: int, audience: str) -> AsyncIterator[dict[str, Any]]:
    """Yield `{"event": ..., "alert": view}` for every change of the org's alerts, as they commit.

    The first item is `{"event": "ready", "alert": None}`, once LISTEN is in place: every alert that
    commits after it is delivered, so a client can tell "connected" from "listening".
    """
    # Two connections: the notifies generator holds its connection while it runs.
    listener, reader = await _connect(database_url), await _connect(database_url)
    async with listener, reader:
        await listener.execute(f"LISTEN {ALERTS_CHANNEL}")
        yield {"event": "ready", "alert": None}
        async for note in listener.notifies():
            try:
                data = json.loads(note.payload)
            except ValueError:
                continue
            if not _is_for(data, org_id, audience):
                continue
            cur = await reader.execute(ALERT_SELECT + " WHERE a.alert_id = %s", (data["alert_id"],))
            row = await cur.fetchone()
            view = view_for(row, audience) if row is not None else None
            if view is not None:
                yield {"event": data["event"], "alert": view}
