"""What each audience may see of an alert.

Which alerts a viewer sees at all is `relay.visibility`; this module says what they see of one.
The provider (clinic or garage) sees the whole alert, the device and the owner's name. The vendor
sees only technical alerts, as its own minimal object built field by field (never by deleting keys
from the provider's view): alert id, rule, severity, device serial, model, firmware and technical
values. No owner, no device id, no clinical metric, no location.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from relay.visibility import Viewer, sees
from schemas.catalogue import CLINICAL_EVENTS, is_clinical_metric, vendor_event_data

AUDIENCES = ("provider", "vendor")  # the views there are; an admin or owner gets the provider's

# One query shape for every view: the alert with its device and owner.
ALERT_SELECT = """
SELECT a.*, d.kind AS device_kind, d.model, d.serial, d.firmware, d.owner_id,
       o.full_name AS owner_name
FROM alerts a
JOIN devices d ON d.device_id = a.device_id
LEFT JOIN owners o ON o.owner_id = d.owner_id
"""
_SUFFIXES = ("_baseline", "_before")
# Keys of non-event values (engine-made) that may hold a string a vendor may see.
_TECHNICAL_KEYS = frozenset({"event_type", "status", "code", "state", "reason", "count"})


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def provider_view(row: dict[str, Any]) -> dict[str, Any]:
    """The provider's view of an alert row from ALERT_SELECT."""
    return {
        "alert_id": row["alert_id"],
        "rule_key": row["rule_key"],
        "rule_name": row["rule_name"],
        "severity": row["severity"],
        "class": row["class"],
        "state": row["state"],
        "late": row["late"],
        "escalated": row["escalated"],
        "occurrences": row["occurrences"],
        "device": {
            "device_id": row["device_id"],
            "kind": row["device_kind"],
            "model": row["model"],
            "serial": row["serial"],
            "firmware": row["firmware"],
        },
        "owner": {"owner_id": row["owner_id"], "name": row["owner_name"]} if row["owner_id"] else None,
        "values": dict(row["values"]),
        "started_at": _iso(row["started_at"]),
        "last_seen_at": _iso(row["last_seen_at"]),
        "ended_at": _iso(row["ended_at"]),
        "opened_at": _iso(row["opened_at"]),
        "acknowledged_at": _iso(row["acknowledged_at"]),
        "acknowledged_by": row["acknowledged_by"],
        "resolved_at": _iso(row["resolved_at"]),
        "resolved_by": row["resolved_by"],
    }


def technical_values(values: dict[str, Any]) -> dict[str, Any]:
    """Only the values that describe the device: no clinical metric, location or clinical event.

    An event's values are its data: a vendor gets the fields its type whitelists, as on the events API.
    """
    event_type = values.get("event_type")
    if event_type in CLINICAL_EVENTS:
        return {}
    if isinstance(event_type, str):
        data = {k: v for k, v in values.items() if k not in ("event_type", "count")}
        count = values.get("count")  # a count rule's tally, made by the engine
        tally = {"count": count} if isinstance(count, int) and not isinstance(count, bool) else {}
        return {"event_type": event_type, **tally, **vendor_event_data(event_type, data)}
    out: dict[str, Any] = {}
    for key, value in values.items():
        base = next((key[: -len(s)] for s in _SUFFIXES if key.endswith(s)), key)
        if is_clinical_metric(base) or not isinstance(value, int | float | str | bool):
            continue
        if isinstance(value, str) and key not in _TECHNICAL_KEYS:
            continue
        out[key] = value
    return out


def vendor_view(row: dict[str, Any]) -> dict[str, Any]:
    """The vendor's minimal object of an alert it may see (`view_as` checks that first)."""
    return {
        "alert_id": row["alert_id"],
        "rule_key": row["rule_key"],
        "rule_name": row["rule_name"],
        "severity": row["severity"],
        "class": "technical",
        "state": row["state"],
        "late": row["late"],
        "device": {
            "serial": row["serial"],
            "model": row["model"],
            "firmware": row["firmware"],
            "kind": row["device_kind"],
        },
        "values": technical_values(dict(row["values"])),
        "started_at": _iso(row["started_at"]),
        "opened_at": _iso(row["opened_at"]),
        "resolved_at": _iso(row["resolved_at"]),
    }


def view_as(viewer: Viewer, row: dict[str, Any]) -> dict[str, Any] | None:
    """What `viewer` sees of an alert row, or None when it may not see the alert at all."""
    if not sees(viewer, row):
        return None
    return vendor_view(row) if viewer.view == "vendor" else provider_view(row)


def view_for(row: dict[str, Any], audience: str) -> dict[str, Any] | None:
    """The view of the alert's own `audience` org ("provider" or "vendor"), as its webhooks, MQTT
    topic and e-mail carry it; None when that org may not see the alert (a vendor, a clinical one)."""
    return view_as(Viewer(audience, int(row[f"{audience}_org_id"])), row)


def message(event: str, view: dict[str, Any]) -> str:
    """The JSON body sent on every channel: `{"event": ..., "alert": view}`, compact and stable."""
    return json.dumps({"event": event, "alert": view}, separators=(",", ":"), sort_keys=True)
