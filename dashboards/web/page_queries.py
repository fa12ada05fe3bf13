"""Read queries that only the web pages need (summaries for the layout, the fleet and the charts).

Devices come from `queries.scope_sql`, the one place that decides which devices a caller sees;
alerts from `relay.visibility`, the one place that decides which alerts, as for the API and SSE
(a vendor's counts include technical alerts only).
"""

from __future__ import annotations

from typing import Any

from dashboards.queries import readable_metrics, viewer_of
from dashboards.types import AConn, Principal
from relay import visibility
from schemas.catalogue import Metric

CHART_WINDOW = "30 days"
SEVERITIES = ("red", "yellow", "info")


def _visible_alerts(p: Principal) -> tuple[str, dict[str, Any]]:
    # Clinical alerts never reach a vendor (docs/domain.md, "Who may see what").
    return visibility.sql(viewer_of(p))


async def org_name(conn: AConn, org_id: int | None) -> str | None:
    """The name of an org, for the page header."""
    if org_id is None:
        return None
    cur = await conn.execute("SELECT name FROM orgs WHERE org_id = %s", (org_id,))
    row = await cur.fetchone()
    return str(row["name"]) if row else None


async def open_alert_counts(conn: AConn, p: Principal) -> dict[str, dict[str, int]]:
    """Open (not yet acknowledged) alerts per visible device and severity."""
    clause, params = _visible_alerts(p)
    cur = await conn.execute(
        f"""SELECT a.device_id, a.severity, count(*) AS n FROM alerts a
            JOIN devices d ON d.device_id = a.device_id
            WHERE a.state = 'open' AND {clause}
            GROUP BY 1, 2""",
        params,
    )
    counts: dict[str, dict[str, int]] = {}
    for row in await cur.fetchall():
        per_device = counts.setdefault(str(row["device_id"]), dict.fromkeys(SEVERITIES, 0))
        per_device[str(row["severity"])] = int(row["n"])
    return counts


async def open_alert_totals(conn: AConn, p: Principal) -> dict[str, int]:
    """Open alerts the caller sees, by severity."""
    totals = dict.fromkeys(SEVERITIES, 0)
    for per_device in (await open_alert_counts(conn, p)).values():
        for severity, n in per_device.items():
            totals[severity] += n
    return totals


async def chart_metrics(conn: AConn, p: Principal, device: dict[str, Any]) -> list[Metric]:
    """The metrics the caller may see that have readings in the last 30 days, catalogue order."""
    allowed = readable_metrics(p, str(device["kind"]), [])
    # One index probe per catalogue metric (device_id, metric, ts): cheap however many rows exist.
    cur = await conn.execute(
        f"""SELECT m.name FROM unnest(%s::text[]) AS m(name)
            WHERE EXISTS (SELECT 1 FROM readings r WHERE r.device_id = %s AND r.metric = m.name
                          AND r.ts >= now() - interval '{CHART_WINDOW}')""",
        ([m.name for m in allowed], device["device_id"]),
    )
    present = {str(row["name"]) for row in await cur.fetchall()}
    return [m for m in allowed if m.name in present]


async def list_alerts(
    conn: AConn,
    p: Principal,
    *,
    state: str | None,
    device_id: str | None = None,
    alert_id: int | None = None,
    limit: int = 200,
) -> list[dict[str, Any]]:
    """Alerts the caller sees, newest first; of the owner only the id, for the access audit (the
    pages join what they may show)."""
    clause, params = _visible_alerts(p)
    cur = await conn.execute(
        f"""SELECT a.alert_id, a.device_id, a.rule_key, a.rule_name, a.severity, a.class, a.state,
                   a.late, a.escalated, a.occurrences, a."values", a.started_at, a.last_seen_at,
                   a.opened_at, a.acknowledged_at, a.resolved_at, d.owner_id
            FROM alerts a JOIN devices d ON d.device_id = a.device_id
            WHERE {clause}
              AND (%(state)s::text IS NULL OR a.state = %(state)s)
              AND (%(device_id)s::text IS NULL OR a.device_id = %(device_id)s)
              AND (%(alert_id)s::bigint IS NULL OR a.alert_id = %(alert_id)s)
            ORDER BY a.alert_id DESC LIMIT %(limit)s""",
        params | {"state": state, "device_id": device_id, "alert_id": alert_id, "limit": limit},
    )
    return await cur.fetchall()


async def owner_provider_name(conn: AConn, p: Principal) -> str | None:
    """The name of the clinic or garage that cares for the owner who is signed in."""
    if p.owner_id is None:
        return None
    cur = await conn.execute(
        "SELECT g.name FROM owners o JOIN orgs g ON g.org_id = o.provider_org_id WHERE o.owner_id = %s",
        (p.owner_id,),
    )
    row = await cur.fetchone()
    return str(row["name"]) if row else None
