"""What the pages show of the caller, a device, an alert and an appointment (shared by every page)."""

from __future__ import annotations

from typing import Any

from dashboards.queries import PageRequest, sees_clinical_data, sees_owner_data
from dashboards.types import AConn, Principal
from dashboards.web import page_queries
from relay.views import technical_values
from schemas.catalogue import CATALOGUE

UNITS = {"degC": "°C", "ohm": "Ω", "deg": "°"}
RECENT = PageRequest(limit=20)  # messages and appointments a page shows


async def user_context(conn: AConn, p: Principal, nav: str, title: str) -> dict[str, Any]:
    """What the layout shows of the user: name, org, open alert count for the nav."""
    org_name = await page_queries.org_name(conn, p.org_id)
    counts = await page_queries.open_alert_totals(conn, p)
    return {
        "user": {"display_name": p.display_name, "role": p.role, "org_name": org_name},
        "nav": nav,
        "title": title,
        "open_alerts": counts["red"] + counts["yellow"],
    }


def appointment_view(row: dict[str, Any]) -> dict[str, Any]:
    """An appointment as both sides see it: the slot that is currently on the table."""
    slot = (
        row["proposed_for"]
        if row["status"] in ("proposed", "confirmed") and row["proposed_for"]
        else row["requested_for"]
    )
    status_text = {
        "requested": "Waiting for your provider to confirm.",
        "proposed": "Your provider proposed this time.",
        "confirmed": "Confirmed.",
        "declined": "Declined by your provider.",
        "cancelled": "Cancelled.",
    }[row["status"]]
    return {
        "appointment_id": row["appointment_id"],
        "device_id": row["device_id"],
        "status": row["status"],
        "slot": slot,
        "reason": row["reason"],
        "note": row["note"],
        "status_text": status_text,
    }


def device_view(p: Principal, row: dict[str, Any], counts: dict[str, dict[str, int]]) -> dict[str, Any]:
    """What a page shows of a device; the owner's name only to those who may see it."""
    return {
        "device_id": row["device_id"],
        "kind": row["kind"],
        "model": row["model"],
        "serial": row["serial"],
        "firmware": row["firmware"],
        "online": row["online"],
        "last_seen_at": row["last_seen_at"],
        "owner_name": row["owner_full_name"] if sees_owner_data(p) else None,
        "open_alerts": counts.get(str(row["device_id"]), dict.fromkeys(page_queries.SEVERITIES, 0)),
    }


def sentence(text: str) -> str:
    """First letter up, the rest as written (keeps 'ICD', 'RV')."""
    return text[:1].upper() + text[1:]


def describe_values(values: dict[str, Any]) -> str:
    """'RV lead impedance 3400 Ω, ...' for the first few values of an alert."""
    parts = []
    for key, value in list(values.items())[:3]:
        metric = next((m for kind in CATALOGUE.values() if (m := kind.get(key)) is not None), None)
        if metric is not None and isinstance(value, int | float):
            parts.append(f"{sentence(metric.description)} {value:g} {UNITS.get(metric.unit, metric.unit)}")
        elif isinstance(value, int | float | str):
            parts.append(f"{sentence(key.replace('_', ' '))}: {value}")
    return ", ".join(parts)


def alert_view(p: Principal, row: dict[str, Any]) -> dict[str, Any]:
    """An alert row as the tables (and alerts.js) show it; a vendor gets technical values only."""
    values = dict(row.get("values") or {})
    shown = describe_values(values if sees_clinical_data(p) else technical_values(values))
    return {
        "alert_id": row["alert_id"],
        "device_id": row["device_id"],
        "severity": row["severity"],
        "state": row["state"],
        "title": row["rule_name"],
        "alert_class": row["class"],
        "detail": ("Late: " if row.get("late") else "") + shown,
        "opened_at": row["opened_at"],
    }
